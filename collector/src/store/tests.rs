use super::*;
use blockwatch_proto::Outcome;

fn result(id: &str) -> ProbeResult {
    let mut r = ProbeResult {
        probe_id: id.into(),
        agent_id: "a1".into(),
        region: "eu".into(),
        target_id: "openai".into(),
        started_at: Some(blockwatch_proto::time::to_timestamp(1_000)),
        ..Default::default()
    };
    r.set_outcome(Outcome::Ok);
    r
}

/// How many `cells` index entries the target `openai` has, in every region.
fn index_entries(store: &Store) -> usize {
    let mut n = 0;
    store
        .cell_entries("openai", None, i64::MIN, i64::MAX, |_, _, _, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

fn ids(store: &Store) -> Vec<String> {
    store.results().map(|r| r.unwrap().result.unwrap().probe_id).collect()
}

#[tokio::test]
async fn stores_once_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let out = store.write_results(vec![result("a1/1"), result("a1/2"), result("a1/1")], 5).await.unwrap();
    assert_eq!(out.stored, 2);
    assert_eq!(out.duplicates, vec!["a1/1".to_string()]);
    let out = store.write_results(vec![result("a1/2"), result("a1/3")], 6).await.unwrap();
    assert_eq!(out.stored, 1);
    assert_eq!(out.duplicates, vec!["a1/2".to_string()]);
    store.event_log().append(&["{\"kind\":\"x\"}".into()], Some(2)).unwrap();
    store.close();

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&store), ["a1/1", "a1/2", "a1/3"]);
    let out = store.write_results(vec![result("a1/3"), result("a1/4")], 7).await.unwrap();
    assert_eq!((out.stored, out.duplicates.len()), (1, 1));
    assert_eq!(ids(&store), ["a1/1", "a1/2", "a1/3", "a1/4"]);
    let stored: Vec<_> = store.results().map(|r| r.unwrap()).collect();
    assert_eq!(stored[3].received_at.unwrap(), blockwatch_proto::time::to_timestamp(7));
    let mut log = store.event_log();
    assert_eq!(store.detector_processed().unwrap(), Some(2));
    log.append(&["{\"kind\":\"y\"}".into(), "{\"kind\":\"z\"}".into()], None).unwrap();
    assert_eq!(store.detector_processed().unwrap(), Some(2), "the collector's own events keep the figure");
    let events: Vec<_> = store.events().map(|e| e.unwrap()).collect();
    assert_eq!(events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(store.events_after(2).map(|e| e.unwrap().1).collect::<Vec<_>>(), ["{\"kind\":\"z\"}"]);
    store.close();
}

#[tokio::test]
async fn concurrent_writers_never_store_an_id_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    // Writer w writes ids (7i + w) % 100 for i in 0..50: together they cover p/0..p/99, each
    // id by several writers.
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let batch = (0..50).map(|i| result(&format!("p/{}", (i * 7 + w) % 100))).collect();
            store.write_results(batch, w).await.unwrap().stored
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 100, "writers reported {total} results stored");
    assert_eq!(store.result_count().unwrap(), 100);
    let all = ids(&store);
    assert_eq!(all.len(), 100, "{all:?}");
    let unique: std::collections::BTreeSet<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), all.len(), "an id stored twice: {all:?}");
    let want: Vec<String> = (0..100).map(|i| format!("p/{i}")).collect();
    assert_eq!(unique, want.iter().map(String::as_str).collect(), "every id stored");
    store.close();
}

#[tokio::test]
async fn the_feed_sees_store_order_with_receive_times_that_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    let store = Store::open_feeding(dir.path(), Some(tx), 0).unwrap();
    let mut tasks = Vec::new();
    for w in 0..6i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let batch = (0..20).map(|i| result(&format!("w{w}/{i}"))).collect();
            // Writers stamp out of order on purpose.
            store.write_results(batch, 100 - w).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored: Vec<StoredResult> = store.results().map(|r| r.unwrap()).collect();
    store.close();
    let fed: Vec<StoredResult> = rx.iter().flatten().collect();
    assert_eq!(fed, stored);
    let times: Vec<i64> =
        fed.iter().map(|s| blockwatch_proto::time::from_timestamp(s.received_at.as_ref().unwrap())).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[tokio::test]
async fn close_stops_the_writer_while_other_handles_live_and_receive_times_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.write_results(vec![result("a1/1")], 1_000).await.unwrap();
    let straggler = store.clone();
    assert!(straggler.accepting().is_ok(), "an open store is ready");
    let t = std::time::Instant::now();
    store.close();
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "close waited for another handle");
    // Readiness (`/readyz`) asks this: a closed store is not ready, and says so.
    assert!(matches!(straggler.accepting(), Err(StoreError::Closed)));
    assert!(matches!(straggler.write_results(vec![result("a1/2")], 2_000).await, Err(StoreError::Closed)));
    drop(straggler);

    // A clock behind the last stored receive time does not make times go backwards.
    let store = Store::open(dir.path()).unwrap();
    store.write_results(vec![result("a1/3")], 10).await.unwrap();
    let times: Vec<_> = store.results().map(|r| r.unwrap().received_at.unwrap()).collect();
    assert_eq!(times, [blockwatch_proto::time::to_timestamp(1_000); 2]);
    store.close();
}

/// Retention deletes the results received before the cutoff and their dedupe entries; the
/// index the timelines read stays, the events stay, the newest result always stays, and a
/// reopened store goes on numbering after it.
#[tokio::test]
async fn retention_deletes_old_results_and_keeps_the_index_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let old: Vec<ProbeResult> = (0..25_000).map(|i| result(&format!("a1/old/{i}"))).collect();
    store.write_results(old, 1_000).await.unwrap();
    store.write_results(vec![result("a1/new/1"), result("a1/new/2")], 9_000).await.unwrap();
    store.event_log().append(&["{\"kind\":\"block_started\"}".into()], Some(25_002)).unwrap();
    let cells_before = index_entries(&store);
    assert_eq!(store.delete_results_before(5_000, None).unwrap(), 25_000);
    assert_eq!(ids(&store), ["a1/new/1", "a1/new/2"]);
    assert_eq!(store.seq_of("a1/old/7").unwrap(), None, "its dedupe entry went with it");
    assert_eq!(store.seq_of("a1/new/1").unwrap(), Some(25_001));
    assert_eq!(index_entries(&store), cells_before, "the timelines' index stays");
    assert_eq!(store.events().count(), 1);
    assert_eq!(store.delete_results_before(5_000, None).unwrap(), 0, "nothing more is that old");
    // Everything is old now, but the newest result stays.
    assert_eq!(store.delete_results_before(i64::MAX, None).unwrap(), 1);
    assert_eq!(ids(&store), ["a1/new/2"]);
    store.close();
    let store = Store::open(dir.path()).unwrap();
    store.write_results(vec![result("a1/after")], 10_000).await.unwrap();
    assert_eq!(store.seq_of("a1/after").unwrap(), Some(25_003), "numbering goes on after the newest");
    store.close();
}

/// Writes queued one after another by one task are stored in that order, though they are
/// awaited together (so the writer commits them in groups): a JetStream consumer relies on it
/// to store the stream in stream order. (Awaiting the writes themselves together, with
/// `try_join_all`, stored a few dozen of 1 000 out of place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_in_turn_are_stored_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut want = Vec::new();
    for round in 0..5i64 {
        let mut queued = Vec::new();
        for i in 0..1000 {
            let id = format!("a1/{round}-{i}");
            queued.push(store.queue_results(vec![result(&id)], round * 1000 + i).await.unwrap());
            want.push(id);
        }
        for q in queued {
            assert_eq!(q.outcome().await.unwrap().stored, 1);
        }
    }
    assert_eq!(ids(&store), want);
}
