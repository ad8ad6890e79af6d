//! The fault harness's short run (`blockwatch_tests::faults`): kill -9s of the collector and
//! of agents, a partition with a block inside it, a stopped collector and a stopped agent,
//! crashed exports. Nothing completed is lost or stored twice, the agents' memory stays
//! bounded, one stopped stream does not hold up the others, and the live events equal a replay.

use blockwatch_tests::faults::{Options, run};

#[test]
fn kills_partition_and_stops_lose_nothing_and_live_equals_replay() {
    let dir = tempfile::tempdir().unwrap();
    let s = run(dir.path(), &Options::short());
    println!("{}", s.table());
    // A failing run's files stay for a look.
    let _dir = if s.blocks_detected == 0 || !s.live_equals_replay {
        println!("files kept in {}", dir.keep().display());
        None
    } else {
        Some(dir)
    };
    assert_eq!((s.lost, s.duplicates_stored), (0, 0), "every completed result stored exactly once");
    assert!(s.sent > 500 && s.stored == s.sent, "{} completed, {} stored", s.sent, s.stored);
    assert!(s.live_equals_replay, "live events differ from the replay");
    assert!(s.blocks_detected >= 1, "the block inside the partition is detected");
    assert!(s.late_after_partition > 0, "the partition delayed results");
    assert!(
        s.agent_rss_growth_kib < 8 * 1024,
        "agent RSS grew {} KiB while the collector was stopped",
        s.agent_rss_growth_kib
    );
    let (while_stopped, probed) = s.others_while_one_stopped;
    assert!(
        while_stopped * 2 >= probed,
        "a stopped agent held up the others: {while_stopped} stored of {probed} probed"
    );
}
