//! The detector over every labelled sample trace, scored by the project's scorer
//! (`shared/eval/score.py`), must meet the goals.

use std::path::PathBuf;

use blockwatch_tests::*;

#[test]
fn samples_meet_the_goals() {
    let eval = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/eval");
    assert!(eval.join("score.py").exists(), "no scorer at {}", eval.display());
    let out = std::process::Command::new(eval.join("check-detector"))
        .arg(bin("blockwatch-collector"))
        .arg("--json")
        .output()
        .expect("run check-detector");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scorer json");
    let s = &v["summary"];
    let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("no {k} in {s}"));
    println!("{s}");
    assert!(f("precision") >= 0.98, "{s}");
    assert!(f("recall") >= 0.98, "{s}");
    assert!(f("delay_median") <= 2.0, "{s}");
    assert!(f("delay_p95") <= 6.0, "{s}");
    assert!(f("onset_err_median") <= 0.5, "{s}");
    assert!(f("end_recall") >= 0.95, "{s}");
    assert_eq!(f("end_false"), 0.0, "{s}");
}
