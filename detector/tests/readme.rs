//! The README documents every `[detector]` key the code has, with its default.

use blockwatch_detector::DetectorConfig;

#[test]
fn every_detector_key_is_in_the_readme_table() {
    let readme = include_str!("../../README.md");
    let keys = serde_json::to_value(DetectorConfig::default()).expect("the config serialises");
    let keys = keys.as_object().expect("an object");
    assert!(!keys.is_empty());
    for (key, value) in keys {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("README has no row for [detector] key {key}"));
        let default = row.split('|').nth(2).unwrap_or("").trim().replace(' ', "");
        let want = value.to_string();
        let want = want.trim_end_matches(".0");
        assert_eq!(default, want, "README default of {key}: {row}");
    }
}
