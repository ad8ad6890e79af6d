//! Retention: results received longer ago than `retention` leave the store, every hour (the
//! first pass a minute after start). Blocks, events and the timelines' index stay. With an
//! archive, a result leaves only once the archive holds its day.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::Reader;

/// How often retention runs.
pub const EVERY: Duration = Duration::from_secs(3600);
/// The first pass, after start-up has settled.
const FIRST: Duration = Duration::from_secs(60);

/// Deletes results older than `keep` until `stop` turns true; with `archived`, only those
/// the archive holds (started before the end of its last whole day).
pub async fn run(store: Reader, keep: Duration, archived: bool, mut stop: watch::Receiver<bool>) {
    let mut next = tokio::time::Instant::now() + FIRST;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        next += EVERY;
        let cutoff = blockwatch_proto::time::now() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let reader = store.clone();
        let delete = move || {
            let before = match archived {
                false => None,
                true => Some(reader.archived_through()?.map_or(i64::MIN, |d| (d + 1) * crate::archive::DAY)),
            };
            reader.delete_results_before(cutoff, before)
        };
        match tokio::task::spawn_blocking(delete).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                deleted = n,
                before = %blockwatch_proto::time::format_rfc3339(cutoff),
                "retention: deleted old results"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention: cannot delete old results"),
            Err(_) => return,
        }
    }
}
