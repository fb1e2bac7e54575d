//! Decoders of the unversioned Raft storage written before format 1 (ADR 011), used only to
//! upgrade it: log entries, vote, committed and purged ids were plain postcard of openraft's
//! types, and [`NodeInfo`] inside membership had no version (its fields are those of
//! [`NodeInfoV1`]). Snapshot files of format 1 carry such membership too (`snapshot.rs`).
//!
//! Nothing here writes the old format; tests keep their own encoder of it.

use std::collections::BTreeMap;

use openraft::alias::{CommittedLeaderIdOf, EntryOf, LogIdOf, SnapshotMetaOf, VoteOf};
use openraft::storage::SnapshotMeta;
use openraft::{Entry, EntryPayload, Membership, StoredMembership};

use super::command::{Command, Stored};
use super::{MetaError, NodeId, NodeInfo, NodeInfoV1, TypeConfig, decode, encode};

type Clid = CommittedLeaderIdOf<TypeConfig>;

/// A log entry as written before format 1.
pub(super) type LegacyEntry = Entry<Clid, EntryPayload<Command, NodeId, NodeInfoV1>>;
/// Applied membership as written before format 1 (inside `Stored::V1`).
pub(super) type LegacyStoredMembership = StoredMembership<Clid, NodeId, NodeInfoV1>;
/// Snapshot metadata as written in snapshot files of format 1.
pub(super) type LegacySnapshotMeta = SnapshotMeta<Clid, NodeId, NodeInfoV1>;

fn membership(
    m: &Membership<NodeId, NodeInfoV1>,
) -> Result<Membership<NodeId, NodeInfo>, MetaError> {
    let nodes: BTreeMap<NodeId, NodeInfo> = m
        .nodes()
        .map(|(id, n)| (*id, NodeInfo::from(n.clone())))
        .collect();
    Membership::new(m.get_joint_config().clone(), nodes).map_err(|e| MetaError::Invalid {
        what: "legacy membership",
        reason: e.to_string(),
    })
}

fn stored_membership(
    m: &LegacyStoredMembership,
) -> Result<openraft::alias::StoredMembershipOf<TypeConfig>, MetaError> {
    Ok(StoredMembership::new(
        *m.log_id(),
        membership(m.membership())?,
    ))
}

/// A log entry written before format 1, as an entry of this build.
pub(super) fn entry(b: &[u8]) -> Result<EntryOf<TypeConfig>, MetaError> {
    let e: LegacyEntry = decode("legacy log entry", b)?;
    let payload = match e.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Normal(c) => EntryPayload::Normal(c),
        EntryPayload::Membership(m) => EntryPayload::Membership(membership(&m)?),
    };
    Ok(Entry {
        log_id: e.log_id,
        payload,
    })
}

/// The vote written before format 1, re-encoded in format 1.
pub(super) fn vote(b: &[u8]) -> Result<Vec<u8>, MetaError> {
    let v: VoteOf<TypeConfig> = decode("legacy vote", b)?;
    Ok(encode(&Stored::V1(v)))
}

/// The committed log id written before format 1, re-encoded in format 1.
pub(super) fn committed(b: &[u8]) -> Result<Vec<u8>, MetaError> {
    let v: Option<LogIdOf<TypeConfig>> = decode("legacy committed log id", b)?;
    Ok(encode(&Stored::V1(v)))
}

/// The purged log id written before format 1, re-encoded in format 1.
pub(super) fn purged(b: &[u8]) -> Result<Vec<u8>, MetaError> {
    let v: LogIdOf<TypeConfig> = decode("legacy purged log id", b)?;
    Ok(encode(&Stored::V1(v)))
}

/// The applied membership written before format 1, re-encoded with versioned node infos.
pub(super) fn applied_membership(b: &[u8]) -> Result<Vec<u8>, MetaError> {
    let Stored::V1(m) = decode::<Stored<LegacyStoredMembership>>("legacy membership", b)?;
    Ok(encode(&Stored::V1(stored_membership(&m)?)))
}

/// Snapshot metadata of a format-1 snapshot file.
pub(super) fn snapshot_meta(b: &[u8]) -> Result<SnapshotMetaOf<TypeConfig>, MetaError> {
    let m: LegacySnapshotMeta = decode("legacy snapshot meta", b)?;
    Ok(SnapshotMeta {
        last_log_id: m.last_log_id,
        last_membership: stored_membership(&m.last_membership)?,
    })
}
