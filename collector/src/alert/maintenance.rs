//! Maintenance windows: the `[[maintenance]]` ones of the config, and those added through the
//! API (`POST /v1/maintenance`), kept in the store so they outlive a restart. Sinks ask
//! [`Maintenance::covering`] for each event; a change through the API applies to the next
//! event each sink looks at.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::Serialize;

use super::{EventView, Window};
use crate::store::Reader;

/// Most windows the API keeps (past it, a `POST` is refused until some are deleted).
pub const MAX_API_WINDOWS: usize = 1000;
/// Most targets, or regions, one window names.
pub const MAX_NAMES: usize = 200;
/// Longest reason kept.
pub const MAX_REASON: usize = 500;

/// A window as listed: where it comes from, and its id when the API may delete it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `config` or `api`.
    pub source: &'static str,
    /// It covers this moment.
    pub active: bool,
    #[serde(flatten)]
    pub window: Window,
}

/// Why a window was not added or removed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("{0}")]
    Invalid(String),
    #[error("no maintenance window {0:?} was added through the API")]
    NotFound(String),
    #[error("{MAX_API_WINDOWS} maintenance windows are kept already; delete some first")]
    Full,
    #[error("the store: {0}")]
    Store(String),
}

/// Every window the sinks honour.
pub struct Maintenance {
    config: Vec<Window>,
    api: RwLock<BTreeMap<String, Window>>,
    store: Option<Reader>,
}

impl Maintenance {
    /// The config's windows only (`alert test`, the unit tests).
    pub fn fixed(config: Vec<Window>) -> Maintenance {
        Maintenance { config, api: RwLock::new(BTreeMap::new()), store: None }
    }

    /// The config's windows and those the store keeps. Blocking.
    pub fn open(config: Vec<Window>, store: Reader) -> Result<Maintenance, MaintenanceError> {
        let mut api = BTreeMap::new();
        for (id, json) in store.maintenance_windows().map_err(|e| MaintenanceError::Store(e.to_string()))? {
            match serde_json::from_slice::<Window>(&json) {
                Ok(w) => {
                    api.insert(id, w);
                }
                Err(e) => tracing::error!(id, error = %e, "a stored maintenance window is unreadable; ignored"),
            }
        }
        Ok(Maintenance { config, api: RwLock::new(api), store: Some(store) })
    }

    /// The reason of the first window that covers the event, if one does.
    pub fn covering(&self, e: &EventView) -> Option<String> {
        if let Some(w) = self.config.iter().find(|w| w.covers(e)) {
            return Some(w.reason.clone());
        }
        let api = self.api.read().unwrap_or_else(|p| p.into_inner());
        api.values().find(|w| w.covers(e)).map(|w| w.reason.clone())
    }

    /// Every window, the config's first.
    pub fn list(&self) -> Vec<Listed> {
        let now = blockwatch_proto::time::now();
        let active = |w: &Window| w.span().is_some_and(|(a, b)| (a..b).contains(&now));
        let mut out: Vec<Listed> = self
            .config
            .iter()
            .map(|w| Listed { id: None, source: "config", active: active(w), window: w.clone() })
            .collect();
        let api = self.api.read().unwrap_or_else(|p| p.into_inner());
        out.extend(api.iter().map(|(id, w)| Listed {
            id: Some(id.clone()),
            source: "api",
            active: active(w),
            window: w.clone(),
        }));
        out
    }

    /// Checks a window (the body of `POST /v1/maintenance`, as in the config), keeps it
    /// durably and returns its id. Blocking.
    pub fn add(&self, w: Window) -> Result<Listed, MaintenanceError> {
        let mut problems = w.problems(0).into_iter().map(|p| p.replacen("maintenance[0]: ", "", 1)).collect::<Vec<_>>();
        for (what, names) in [("targets", &w.targets), ("regions", &w.regions)] {
            if names.len() > MAX_NAMES {
                problems.push(format!("{what}: at most {MAX_NAMES}"));
            }
            for n in names {
                if let Err(rule) = blockwatch_proto::id::check(n) {
                    problems.push(format!("{what}: {n:?}: {rule}"));
                }
            }
        }
        if w.reason.chars().count() > MAX_REASON {
            problems.push(format!("reason: at most {MAX_REASON} characters"));
        }
        if !problems.is_empty() {
            return Err(MaintenanceError::Invalid(problems.join("; ")));
        }
        let mut api = self.api.write().unwrap_or_else(|p| p.into_inner());
        if api.len() >= MAX_API_WINDOWS {
            return Err(MaintenanceError::Full);
        }
        let id = loop {
            let id = format!("mw-{:012x}", fastrand::u64(..) >> 16);
            if !api.contains_key(&id) {
                break id;
            }
        };
        if let Some(store) = &self.store {
            let json = serde_json::to_vec(&w).unwrap_or_default();
            store.put_maintenance(&id, &json).map_err(|e| MaintenanceError::Store(e.to_string()))?;
        }
        api.insert(id.clone(), w.clone());
        let now = blockwatch_proto::time::now();
        let active = w.span().is_some_and(|(a, b)| (a..b).contains(&now));
        tracing::info!(id, start = %w.start, end = %w.end, targets = ?w.targets, regions = ?w.regions,
            reason = %w.reason, "maintenance window added");
        Ok(Listed { id: Some(id), source: "api", active, window: w })
    }

    /// Removes a window the API added. Blocking.
    pub fn remove(&self, id: &str) -> Result<(), MaintenanceError> {
        let mut api = self.api.write().unwrap_or_else(|p| p.into_inner());
        if !api.contains_key(id) {
            return Err(MaintenanceError::NotFound(id.chars().take(64).collect()));
        }
        if let Some(store) = &self.store {
            store.delete_maintenance(id).map_err(|e| MaintenanceError::Store(e.to_string()))?;
        }
        api.remove(id);
        tracing::info!(id, "maintenance window removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(targets: &[&str]) -> Window {
        Window {
            start: "2026-01-01T00:00:00Z".into(),
            end: "2026-01-01T01:00:00Z".into(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            regions: Vec::new(),
            reason: "upgrade".into(),
        }
    }

    #[test]
    fn windows_added_are_honoured_listed_and_removed() {
        let m = Maintenance::fixed(Vec::new());
        let line = serde_json::json!({"kind": "block_started", "target": "openai", "region": "hk",
            "detected_at": "2026-01-01T00:30:00Z"});
        let e = EventView::parse(1, &line.to_string()).unwrap();
        assert_eq!(m.covering(&e), None);
        let added = m.add(new(&["openai"])).unwrap();
        assert_eq!(m.covering(&e).as_deref(), Some("upgrade"));
        assert_eq!(m.list().len(), 1);
        let id = added.id.unwrap();
        assert!(matches!(m.remove("mw-nope"), Err(MaintenanceError::NotFound(_))));
        m.remove(&id).unwrap();
        assert_eq!(m.covering(&e), None);
    }

    #[test]
    fn bad_windows_are_refused_naming_the_fault() {
        let m = Maintenance::fixed(Vec::new());
        let mut w = new(&["bad name!"]);
        w.end = "2025-01-01T00:00:00Z".into();
        let err = m.add(w).unwrap_err().to_string();
        assert!(err.contains("start must be before end") && err.contains("\"bad name!\""), "{err}");
        let mut w = new(&[]);
        w.start = "noon".into();
        assert!(m.add(w).unwrap_err().to_string().contains("RFC 3339"));
    }
}
