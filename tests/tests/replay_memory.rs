//! `replay` keeps memory bounded by the number of (agent, target) lanes, not by the length of
//! the trace: feeding the same fleet eight times longer leaves its peak RSS where it was.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use blockwatch_sim::{Family, Params, generate};
use blockwatch_tests::*;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// True when replay has read and handled everything fed to it so far: it has read at least
/// `fed` bytes and is asleep. Replay runs on one thread and writes to /dev/null here, so once
/// it has started on its input it sleeps only in a read of an empty stdin.
fn caught_up(pid: u32, fed: usize) -> bool {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("proc io");
    let read: usize =
        io.lines().find_map(|l| l.strip_prefix("rchar:")).and_then(|v| v.trim().parse().ok()).expect("rchar");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    read >= fed && state == Some('S')
}

#[test]
fn replay_memory_does_not_grow_with_trace_length() {
    let trace = generate(&Params::new(Family::GeoBlock, 60, 3, 7));
    let span = trace.end - trace.start;
    let mut child = Command::new(bin("blockwatch-collector"))
        .args(["replay", "--input", "-", "--output", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replay");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin");
    // Copy k: the same fleet and targets, k trace lengths later, with fresh probe ids.
    let copy = |k: i64| trace.shifted(k * span, &format!("d{k}-")).to_jsonl();
    let mut fed = 0;
    let mut feed = |k: i64| {
        let text = copy(k);
        input.write_all(text.as_bytes()).expect("feed");
        input.flush().unwrap();
        fed += text.len();
        fed
    };
    let fed_one = feed(1);
    wait_for("replay to take in one copy", Duration::from_secs(30), || caught_up(pid, fed_one).then_some(()));
    let after_one = peak_rss_kib(pid);
    let fed_all = (2..=8).map(&mut feed).last().unwrap();
    wait_for("replay to take in eight copies", Duration::from_secs(60), || caught_up(pid, fed_all).then_some(()));
    let after_eight = peak_rss_kib(pid);
    drop(input);
    let out = child.wait_with_output().expect("replay ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "peak RSS after 1 copy {after_one} KiB, after 8 copies {after_eight} KiB ({} lines each)",
        trace.records.len()
    );
    assert!(after_eight <= after_one + 1024, "replay grew from {after_one} KiB to {after_eight} KiB over 8x the trace");
}
