//! A detector restored from a snapshot carries on exactly as the one it was taken of: on a
//! generated trace of every family (and the 30-region day), cut at several points, the events
//! after the cut and the final state are the same as without the cut.

use blockwatch_sim as sim;

use blockwatch_detector::{Detector, DetectorConfig, Event, SnapshotError};
use blockwatch_proto::Outcome;

use sim::{FAMILIES, Family, Params, Trace, generate};

fn feed(d: &mut Detector, trace: &Trace, range: std::ops::Range<usize>, out: &mut Vec<Event>) {
    for r in &trace.records[range] {
        let outcome = Outcome::from_name(r.outcome).expect("generator outcomes are known");
        d.observe(&r.observation(outcome), out);
    }
}

fn lines(events: &[Event]) -> Vec<String> {
    events.iter().map(Event::to_json_line).collect()
}

fn check_cuts(trace: &Trace) {
    let n = trace.records.len();
    let mut whole = Detector::new(DetectorConfig::default());
    let mut expected = Vec::new();
    feed(&mut whole, trace, 0..n, &mut expected);
    let end_state = whole.snapshot();
    for cut in [1, n / 3, n / 2, n - 1] {
        let mut first = Detector::new(DetectorConfig::default());
        let mut events = Vec::new();
        feed(&mut first, trace, 0..cut, &mut events);
        let bytes = first.snapshot();
        drop(first);
        let mut second = Detector::restore(DetectorConfig::default(), &bytes).expect("own snapshot restores");
        assert_eq!(second.snapshot(), bytes, "{}: restoring changes nothing", trace.name);
        feed(&mut second, trace, cut..n, &mut events);
        assert_eq!(lines(&events), lines(&expected), "{}: events with a restore after {cut} of {n}", trace.name);
        assert!(second.snapshot() == end_state, "{}: the final state differs after a restore at {cut}", trace.name);
    }
}

#[test]
fn a_restored_detector_carries_on_as_the_original_in_every_family() {
    for (i, fam) in FAMILIES.iter().enumerate() {
        check_cuts(&generate(&Params::new(*fam, 60, 3, 900 + i as u64)));
    }
}

#[test]
fn a_restored_detector_carries_on_through_a_day_of_a_big_fleet() {
    let trace = generate(&Params::new(Family::Fleet, 60, 2, 7));
    check_cuts(&trace);
    let bytes = {
        let mut d = Detector::new(DetectorConfig::default());
        feed(&mut d, &trace, 0..trace.records.len(), &mut Vec::new());
        d.snapshot()
    };
    println!("a day of {} results: snapshot of {} KiB", trace.records.len(), bytes.len() / 1024);
}

#[test]
fn a_snapshot_of_another_configuration_version_or_damaged_is_refused() {
    let trace = generate(&Params::new(Family::GeoBlock, 60, 3, 5));
    let mut d = Detector::new(DetectorConfig::default());
    feed(&mut d, &trace, 0..trace.records.len(), &mut Vec::new());
    let bytes = d.snapshot();

    let other = DetectorConfig { lane_history: 64, ..DetectorConfig::default() };
    assert_eq!(Detector::restore(other, &bytes).err(), Some(SnapshotError::OtherConfig));
    assert_eq!(Detector::restore(DetectorConfig::default(), b"").err(), Some(SnapshotError::NotASnapshot));
    assert_eq!(Detector::restore(DetectorConfig::default(), b"{\"not\":1}").err(), Some(SnapshotError::NotASnapshot));

    let mut newer = bytes.clone();
    newer[4] = newer[4].wrapping_add(1);
    assert!(matches!(Detector::restore(DetectorConfig::default(), &newer), Err(SnapshotError::OtherVersion { .. })));

    // Every truncation, and a byte flipped at many places: refused or whole, never a panic;
    // what is taken up is a working detector.
    for len in (0..bytes.len()).step_by(7) {
        assert!(Detector::restore(DetectorConfig::default(), &bytes[..len]).is_err(), "truncated at {len}");
    }
    let mut flipped = 0;
    for at in (12..bytes.len()).step_by(13) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        match Detector::restore(DetectorConfig::default(), &damaged) {
            Ok(mut d) => feed(&mut d, &trace, 0..trace.records.len(), &mut Vec::new()),
            Err(SnapshotError::Damaged(_) | SnapshotError::OtherConfig | SnapshotError::OtherVersion { .. }) => {
                flipped += 1
            }
            Err(e) => panic!("byte {at} flipped: {e}"),
        }
    }
    assert!(flipped > 0, "some damage is recognised");
}
