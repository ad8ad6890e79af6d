//! The README's first command: the demo detects its block, on loopback, with no false alarm,
//! and notifies a webhook receiver of it.

use blockwatch_tests::*;

#[test]
fn the_demo_detects_its_block() {
    let out = run(&bin("blockwatch-demo"), &["--duration", "20s", "--interval", "1s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("*** block_started: target openai in region hk"), "{stdout}");
    assert!(stdout.contains("Result: the block of openai in hk was detected"), "{stdout}");
    assert!(stdout.contains("; 0 false alarm(s)."), "{stdout}");
    // The collector's webhook sink delivered it, signed, to the demo's receiver.
    assert!(stdout.contains("--> webhook receiver got block_started for openai in hk"), "{stdout}");
    assert!(stdout.contains("Notified: the block reached the webhook receiver, signed and verified."), "{stdout}");
}
