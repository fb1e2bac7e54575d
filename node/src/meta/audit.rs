//! The node's audit log on disk: the `audit` column family of the metadata RocksDB.
//!
//! Audit records are this node's own: they are written here by `crate::audit`'s writer, never
//! proposed to Raft, never in a snapshot (snapshots hold only the `state` column family), and
//! never copied to another node. Each node answers for what it saw; `clusterctl audit` asks
//! every member and merges.
//!
//! Layout (`audit` column family):
//!
//! ```text
//! key                                              value (postcard)
//! <time ms: u64 big-endian> <seq: u32 big-endian>  Stored::V1(AuditRecord)
//! ```
//!
//! Invariants:
//! - Keys only grow: a record gets the time of its event, or the last key's time when the
//!   clock stepped back, and a sequence number that orders records of the same millisecond.
//!   Key order is therefore the order in which records were written.
//! - [`AuditEvent`] variants are only ever appended (postcard encodes a variant by its
//!   index); a change to a variant's fields adds a `Stored` version.
//! - Writes pass the [`WriteGate`] like every metadata write: on a full disk they wait.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamily, DB, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::command::Stored;
use super::write_gate::WriteGate;
use super::{CF_AUDIT, MetaError, decode, encode};

/// Key length: time (8 bytes) and sequence (4 bytes).
const KEY_LEN: usize = 12;

/// One audited event as this node recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it happened, ms since the epoch (this node's clock).
    pub time_ms: u64,
    /// The node that recorded it.
    pub node: u64,
    /// That node's region.
    pub region: String,
    /// Who: a login name, an admin caller (`cluster`, `cert:…`); `None` for anonymous.
    pub identity: Option<String>,
    /// The client's address, when known.
    pub address: Option<IpAddr>,
    /// What happened.
    pub event: AuditEvent,
}

/// What a delete removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteKind {
    /// A manifest, by digest.
    Manifest,
    /// A tag (a manifest DELETE by tag).
    Tag,
    /// A blob's link into the repository.
    Blob,
}

impl DeleteKind {
    /// The name in exports and `clusterctl audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteKind::Manifest => "manifest",
            DeleteKind::Tag => "tag",
            DeleteKind::Blob => "blob",
        }
    }
}

/// The kinds of audited events. New kinds are appended at the end, never inserted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    /// A password login at the token endpoint succeeded.
    LoginSucceeded,
    /// Credentials were refused (a wrong password, a bad token, too many failures).
    LoginFailed {
        /// Why.
        reason: String,
    },
    /// A registry token was issued.
    TokenIssued {
        /// What it grants (space-separated `type:name:actions`; empty: nothing).
        scope: String,
    },
    /// A manifest was pushed.
    Push {
        /// The repository.
        repository: String,
        /// The manifest's digest.
        digest: String,
        /// The tag it was pushed as, if any.
        tag: Option<String>,
    },
    /// A manifest, a tag or a blob was deleted.
    Delete {
        /// The repository.
        repository: String,
        /// What was deleted.
        kind: DeleteKind,
        /// The digest or tag.
        reference: String,
    },
    /// An admin change through the cluster endpoint (a membership change, a policy, …).
    AdminChange {
        /// The call, e.g. `PromoteNode`.
        what: String,
        /// What it changed, e.g. `node 4` or a repository pattern.
        target: String,
        /// `ok`, or why it failed.
        outcome: String,
    },
    /// A client address was refused by the network rules.
    NetworkDenied {
        /// The repository asked for, if any.
        repository: Option<String>,
    },
    /// Records were dropped because the audit writer could not keep up.
    Dropped {
        /// How many since the last such record.
        count: u64,
    },
}

impl AuditEvent {
    /// The event's name: `login_succeeded`, `push`, …
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::LoginSucceeded => "login_succeeded",
            AuditEvent::LoginFailed { .. } => "login_failed",
            AuditEvent::TokenIssued { .. } => "token_issued",
            AuditEvent::Push { .. } => "push",
            AuditEvent::Delete { .. } => "delete",
            AuditEvent::AdminChange { .. } => "admin_change",
            AuditEvent::NetworkDenied { .. } => "network_denied",
            AuditEvent::Dropped { .. } => "dropped",
        }
    }

    /// The event's own fields, by name, in a fixed order (absent optional fields left out).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            AuditEvent::LoginSucceeded => Vec::new(),
            AuditEvent::LoginFailed { reason } => vec![("reason", reason.clone())],
            AuditEvent::TokenIssued { scope } => vec![("scope", scope.clone())],
            AuditEvent::Push {
                repository,
                digest,
                tag,
            } => {
                let mut f = vec![
                    ("repository", repository.clone()),
                    ("digest", digest.clone()),
                ];
                if let Some(t) = tag {
                    f.push(("tag", t.clone()));
                }
                f
            }
            AuditEvent::Delete {
                repository,
                kind,
                reference,
            } => vec![
                ("repository", repository.clone()),
                ("kind", kind.as_str().to_string()),
                ("reference", reference.clone()),
            ],
            AuditEvent::AdminChange {
                what,
                target,
                outcome,
            } => vec![
                ("what", what.clone()),
                ("target", target.clone()),
                ("outcome", outcome.clone()),
            ],
            AuditEvent::NetworkDenied { repository } => repository
                .iter()
                .map(|r| ("repository", r.clone()))
                .collect(),
            AuditEvent::Dropped { count } => vec![("count", count.to_string())],
        }
    }
}

/// Which records a query returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records at or after this time (ms since the epoch); 0: all.
    pub since_ms: u64,
    /// Only records of this identity.
    pub identity: Option<String>,
    /// At most this many (the newest ones).
    pub limit: usize,
}

/// The audit column family: appends, queries, pruning. Cheap to clone.
#[derive(Clone)]
pub struct AuditStore {
    db: Arc<DB>,
    gate: WriteGate,
    /// Time and sequence of the last key written.
    last: Arc<Mutex<(u64, u32)>>,
}

/// Opens (creating) the file the audit log is exported to, for appending: the export of
/// `audit.export`, kept beside the store that owns the records.
pub fn open_export_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl std::fmt::Debug for AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStore").finish_non_exhaustive()
    }
}

fn key(time_ms: u64, seq: u32) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&time_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn parse_key(k: &[u8]) -> Option<(u64, u32)> {
    let k: &[u8; KEY_LEN] = k.try_into().ok()?;
    let (t, s) = k.split_at(8);
    Some((
        u64::from_be_bytes(t.try_into().ok()?),
        u32::from_be_bytes(s.try_into().ok()?),
    ))
}

/// The key after `last` for an event at `time_ms`: never smaller than `last`.
fn next_key(last: (u64, u32), time_ms: u64) -> (u64, u32) {
    match last {
        (t, _) if time_ms > t => (time_ms, 0),
        (t, u32::MAX) => (t + 1, 0),
        (t, s) => (t, s + 1),
    }
}

fn audit_cf(db: &DB) -> &ColumnFamily {
    db.cf_handle(CF_AUDIT).expect("audit column family")
}

impl AuditStore {
    /// The store over `db`, continuing after its last key.
    pub(super) fn open(db: Arc<DB>, gate: WriteGate) -> Result<AuditStore, MetaError> {
        let last = match db.iterator_cf(audit_cf(&db), IteratorMode::End).next() {
            Some(item) => {
                let (k, _) = item.map_err(MetaError::db("read audit log"))?;
                parse_key(&k).ok_or_else(|| MetaError::Invalid {
                    what: "audit key",
                    reason: format!("{} bytes, expected {KEY_LEN}", k.len()),
                })?
            }
            None => (0, 0),
        };
        Ok(AuditStore {
            db,
            gate,
            last: Arc::new(Mutex::new(last)),
        })
    }

    /// Appends records, in order, in one write (after the write gate lets it through).
    pub async fn append(&self, records: Vec<AuditRecord>) -> Result<(), MetaError> {
        if records.is_empty() {
            return Ok(());
        }
        self.gate.wait_for_room().await.map_err(|e| MetaError::Io {
            op: "write audit records",
            source: e,
        })?;
        let (db, last) = (self.db.clone(), self.last.clone());
        tokio::task::spawn_blocking(move || {
            let cf = audit_cf(&db);
            let mut last = last.lock().expect("audit key lock");
            let mut next = *last;
            let mut batch = WriteBatch::default();
            for r in &records {
                next = next_key(next, r.time_ms);
                batch.put_cf(cf, key(next.0, next.1), encode(&Stored::V1(r)));
            }
            db.write(batch)
                .map_err(MetaError::db("write audit records"))?;
            *last = next;
            Ok(())
        })
        .await
        .map_err(MetaError::Task)?
    }

    /// The newest records matching `q`, oldest first. A record that does not decode is
    /// skipped (and logged).
    pub async fn query(&self, q: AuditQuery) -> Result<Vec<AuditRecord>, MetaError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            if q.limit == 0 {
                return Ok(out);
            }
            for item in db.iterator_cf(audit_cf(&db), IteratorMode::End) {
                let (k, v) = item.map_err(MetaError::db("read audit log"))?;
                if parse_key(&k).is_some_and(|(t, _)| t < q.since_ms) {
                    break;
                }
                let record = match decode::<Stored<AuditRecord>>("audit record", &v) {
                    Ok(Stored::V1(r)) => r,
                    Err(e) => {
                        tracing::warn!(key = %hex::encode(&k), error = %e, "skipped an audit record");
                        continue;
                    }
                };
                let wanted = record.time_ms >= q.since_ms
                    && q.identity
                        .as_deref()
                        .is_none_or(|i| record.identity.as_deref() == Some(i));
                if wanted {
                    out.push(record);
                    if out.len() == q.limit {
                        break;
                    }
                }
            }
            out.reverse();
            Ok(out)
        })
        .await
        .map_err(MetaError::Task)?
    }

    /// Deletes every record keyed before `before_ms`.
    pub async fn prune(&self, before_ms: u64) -> Result<(), MetaError> {
        self.gate.wait_for_room().await.map_err(|e| MetaError::Io {
            op: "prune audit records",
            source: e,
        })?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(audit_cf(&db), key(0, 0), key(before_ms, 0));
            db.write(batch)
                .map_err(MetaError::db("prune audit records"))
        })
        .await
        .map_err(MetaError::Task)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time_ms: u64, identity: Option<&str>) -> AuditRecord {
        AuditRecord {
            time_ms,
            node: 1,
            region: "r1".into(),
            identity: identity.map(str::to_string),
            address: Some("10.0.0.9".parse().unwrap()),
            event: AuditEvent::LoginSucceeded,
        }
    }

    #[test]
    fn keys_only_grow() {
        assert_eq!(next_key((0, 0), 5), (5, 0));
        assert_eq!(next_key((5, 0), 5), (5, 1));
        // The clock stepped back: the record keeps its order after the last one.
        assert_eq!(next_key((9, 3), 5), (9, 4));
        assert_eq!(next_key((9, u32::MAX), 9), (10, 0));
        assert!(key(5, 1) < key(5, 2) && key(5, u32::MAX) < key(6, 0));
        assert_eq!(parse_key(&key(7, 3)), Some((7, 3)));
        assert_eq!(parse_key(b"short"), None);
    }

    #[tokio::test]
    async fn records_come_back_newest_last_filtered_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, _, store, _) = super::super::open_closable(dir.path()).unwrap();
        store
            .append(vec![record(100, Some("ann")), record(200, None)])
            .await
            .unwrap();
        // Same millisecond, and a clock that stepped back: both keep their order.
        store
            .append(vec![record(300, Some("bob")), record(300, Some("ann"))])
            .await
            .unwrap();
        store.append(vec![record(250, Some("ann"))]).await.unwrap();
        let all = |since_ms, identity: Option<&str>, limit| AuditQuery {
            since_ms,
            identity: identity.map(str::to_string),
            limit,
        };
        let times = |rs: Vec<AuditRecord>| rs.iter().map(|r| r.time_ms).collect::<Vec<_>>();
        assert_eq!(
            times(store.query(all(0, None, 100)).await.unwrap()),
            [100, 200, 300, 300, 250]
        );
        let ann = store.query(all(0, Some("ann"), 100)).await.unwrap();
        assert_eq!(times(ann.clone()), [100, 300, 250]);
        assert!(ann.iter().all(|r| r.identity.as_deref() == Some("ann")));
        assert_eq!(
            times(store.query(all(0, None, 2)).await.unwrap()),
            [300, 250]
        );
        assert_eq!(
            times(store.query(all(200, None, 100)).await.unwrap()),
            [200, 300, 300, 250]
        );
        assert!(store.query(all(0, None, 0)).await.unwrap().is_empty());

        store.prune(250).await.unwrap();
        assert_eq!(
            times(store.query(all(0, None, 100)).await.unwrap()),
            [300, 300, 250]
        );
        // A store opened again continues after the last key.
        drop(store);
        let (_, _, _, store, _) = super::super::open_closable(dir.path()).unwrap();
        assert_eq!(*store.last.lock().unwrap(), (300, 2));
    }
}
