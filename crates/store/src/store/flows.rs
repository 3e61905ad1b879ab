//! Network flow records (`network_flow`): one row per flow the sandbox's
//! network engine saw end or refused.
//!
//! Invariants:
//! - At most [`StoreOptions::flow_retention`](crate::StoreOptions) rows are
//!   kept per sandbox, the newest by insertion; a batch is inserted and
//!   trimmed in one transaction.
//! - Flow rows are a log, not state: their commit skips its own sync
//!   (`Durability::Implied`), like metric samples.

use super::{clamp, sandbox_id, Durability, Store};
use crate::StoreError;
use rusqlite::params;
use serde::Serialize;
use std::time::Duration;

/// One flow as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    /// When the flow started, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// How long it lasted.
    pub duration_ms: u64,
    /// `tcp`, `udp` or `icmp`.
    pub protocol: String,
    /// `outbound` (the guest connected) or `inbound` (a published port).
    pub direction: String,
    /// The guest's end (`IP:PORT`).
    pub guest: String,
    /// The other end as the guest addressed it (`IP:PORT`).
    pub remote: String,
    /// The name the guest resolved for the remote, or the DNS question.
    pub name: Option<String>,
    /// Whether the policy allowed it.
    pub allowed: bool,
    /// The rule or profile that decided.
    pub decided_by: String,
    /// Payload bytes from the guest.
    pub bytes_from_guest: u64,
    /// Payload bytes to the guest.
    pub bytes_to_guest: u64,
    /// How it ended.
    pub close: String,
}

const FLOW_COLUMNS: &str = "started_at_ms, duration_ms, protocol, direction, guest, remote, name, allowed, \
     decided_by, bytes_from_guest, bytes_to_guest, close";

impl Store {
    /// Stores `rows` for `sandbox` and drops its rows beyond the newest
    /// `flow_retention`.
    pub fn insert_flows(&self, sandbox: &str, rows: &[FlowRow]) -> Result<(), StoreError> {
        self.insert_flows_within(sandbox, rows, self.opts.retry_budget)
    }

    /// [`Store::insert_flows`], giving up ([`StoreError::Busy`]) once the
    /// database has been busy for `budget` (at most the retry budget), so
    /// flow records never hold up the run's final write for long.
    pub fn insert_flows_within(&self, sandbox: &str, rows: &[FlowRow], budget: Duration) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let keep = i64::try_from(self.opts.flow_retention).unwrap_or(i64::MAX);
        let budget = budget.min(self.opts.retry_budget);
        self.write_within(budget, Durability::Implied, "record network flows", |tx| {
            let sid = sandbox_id(tx, sandbox)?;
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO network_flow (sandbox_id, {FLOW_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))?;
            for r in rows {
                insert.execute(params![
                    sid,
                    r.started_at_ms,
                    clamp(r.duration_ms),
                    r.protocol,
                    r.direction,
                    r.guest,
                    r.remote,
                    r.name,
                    r.allowed,
                    r.decided_by,
                    clamp(r.bytes_from_guest),
                    clamp(r.bytes_to_guest),
                    r.close
                ])?;
            }
            tx.execute(
                "DELETE FROM network_flow WHERE sandbox_id = ?1 AND id IN (\
                 SELECT id FROM network_flow WHERE sandbox_id = ?1 ORDER BY id DESC LIMIT -1 OFFSET ?2)",
                params![sid, keep],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` flows of `sandbox` (only refused ones when
    /// `denied_only`), oldest first.
    pub fn flows(&self, sandbox: &str, denied_only: bool, limit: usize) -> Result<Vec<FlowRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let filter = if denied_only { "AND allowed = 0" } else { "" };
        let sql = format!(
            "SELECT {FLOW_COLUMNS} FROM (SELECT * FROM network_flow WHERE sandbox_id = ?1 {filter} \
             ORDER BY id DESC LIMIT ?2) ORDER BY id"
        );
        self.read("read network flows", |c| {
            let sid = sandbox_id(c, sandbox)?;
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![sid, limit], |r| {
                Ok(FlowRow {
                    started_at_ms: r.get(0)?,
                    duration_ms: r.get(1)?,
                    protocol: r.get(2)?,
                    direction: r.get(3)?,
                    guest: r.get(4)?,
                    remote: r.get(5)?,
                    name: r.get(6)?,
                    allowed: r.get(7)?,
                    decided_by: r.get(8)?,
                    bytes_from_guest: r.get(9)?,
                    bytes_to_guest: r.get(10)?,
                    close: r.get(11)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn row(i: u64, allowed: bool) -> FlowRow {
        FlowRow {
            started_at_ms: 1_000 + i as i64,
            duration_ms: i,
            protocol: "tcp".into(),
            direction: "outbound".into(),
            guest: "10.0.2.15:40000".into(),
            remote: format!("10.0.2.2:{}", 8000 + i),
            name: Some("host.alcove.internal".into()),
            allowed,
            decided_by: "profile host".into(),
            bytes_from_guest: i * 10,
            bytes_to_guest: i * 20,
            close: "closed".into(),
        }
    }

    #[test]
    fn flows_round_trip_are_bounded_and_filter_denied() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions { flow_retention: 3, ..StoreOptions::default() };
        let store = Store::open_with(&dir.path().join("a.db"), opts).unwrap();
        store.create_sandbox("a", "{}").unwrap();
        store.insert_flows("a", &[row(1, true), row(2, false), row(3, true)]).unwrap();
        store.insert_flows("a", &[row(4, true), row(5, false)]).unwrap();
        let all = store.flows("a", false, 100).unwrap();
        assert_eq!(all, vec![row(3, true), row(4, true), row(5, false)]);
        assert_eq!(store.flows("a", true, 100).unwrap(), vec![row(5, false)]);
        assert_eq!(store.flows("a", false, 1).unwrap(), vec![row(5, false)]);
        assert!(matches!(store.insert_flows("nope", &[row(1, true)]), Err(StoreError::NoSuchSandbox(_))));
        store.delete_sandbox("a").unwrap();
        store.create_sandbox("a", "{}").unwrap();
        assert!(store.flows("a", false, 100).unwrap().is_empty(), "flows outlived their sandbox");
    }

    #[test]
    fn a_bad_protocol_is_refused_by_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db")).unwrap();
        store.create_sandbox("a", "{}").unwrap();
        let bad = FlowRow { protocol: "sctp".into(), ..row(1, true) };
        assert!(store.insert_flows("a", &[bad]).is_err());
        assert!(store.flows("a", false, 10).unwrap().is_empty());
    }
}
