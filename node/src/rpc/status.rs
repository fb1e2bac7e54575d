//! The one table from error kinds to gRPC codes, and the conversions of every error that
//! reaches a gRPC answer (`Peer`, `Admin`, and the `Raft` service of `cluster/raft_service.rs`)
//! into a `tonic::Status` through it. No service picks a code by hand: each error says its
//! [`ErrorKind`] and [`code`] turns that into a code, as `api/error.rs` does for HTTP. The
//! one exception is a refused credential ([`AuthError`]), whose codes (UNAUTHENTICATED,
//! PERMISSION_DENIED) have no `ErrorKind`: they are mapped here too, next to the table.

use berth_proto::LEADER_ID_HEADER;
use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::auth::manage::ManageError;
use crate::cluster::{
    ClusterError, LeaderWriteError, MembershipError, PeerError, RaftServiceError,
};
use crate::gc::GcError;
use crate::lifecycle::LifecycleError;
use crate::types::ErrorKind;
use crate::webhooks::WebhookError;

/// The gRPC code of each kind of error.
pub(crate) fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::Conflict => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Exhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    }
}

/// A status of `kind` with `message`.
pub(crate) fn status(kind: ErrorKind, message: impl Into<String>) -> Status {
    Status::new(code(kind), message)
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Status {
        status(e.kind(), e.to_string())
    }
}

/// Not leading is [`ErrorKind::Conflict`], with the leader this node knows of in the
/// `LEADER_ID_HEADER` metadata, so the caller can go there.
impl From<LeaderWriteError> for Status {
    fn from(e: LeaderWriteError) -> Status {
        let mut s = status(e.kind(), e.to_string());
        if let LeaderWriteError::NotLeader(Some(id)) = e {
            s.metadata_mut().insert(
                LEADER_ID_HEADER,
                id.to_string().parse().expect("digits are valid metadata"),
            );
        }
        s
    }
}

impl From<MembershipError> for Status {
    fn from(e: MembershipError) -> Status {
        status(e.kind(), e.to_string())
    }
}

impl From<PeerError> for Status {
    fn from(e: PeerError) -> Status {
        status(e.kind(), e.to_string())
    }
}

/// A lock or a namespace limit that refuses the change is [`ErrorKind::Conflict`]
/// (FAILED_PRECONDITION).
impl From<LifecycleError> for Status {
    fn from(e: LifecycleError) -> Status {
        status(e.kind(), e.to_string())
    }
}

/// A webhook name taken is [`ErrorKind::Conflict`] (FAILED_PRECONDITION).
impl From<WebhookError> for Status {
    fn from(e: WebhookError) -> Status {
        status(e.kind(), e.to_string())
    }
}

/// A pass already running is [`ErrorKind::Conflict`] (FAILED_PRECONDITION). `GcError` has no
/// `kind()` of its own yet: the match is exhaustive so that a new variant picks its kind here.
impl From<GcError> for Status {
    fn from(e: GcError) -> Status {
        let kind = match &e {
            GcError::Running(_) => ErrorKind::Conflict,
        };
        status(kind, e.to_string())
    }
}

impl From<ManageError> for Status {
    fn from(e: ManageError) -> Status {
        status(e.kind(), e.to_string())
    }
}

/// A refused admin call: no or bad credentials are UNAUTHENTICATED, an identity that may not
/// is PERMISSION_DENIED, too many failed logins RESOURCE_EXHAUSTED.
impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        let code = match &e {
            AuthError::Unauthorized(_) | AuthError::InsufficientScope(_) => Code::Unauthenticated,
            AuthError::Denied(_) => Code::PermissionDenied,
            AuthError::TooManyRequests(_) => code(ErrorKind::Exhausted),
            AuthError::Unavailable(_) => code(ErrorKind::Unavailable),
        };
        Status::new(code, e.to_string())
    }
}

impl From<RaftServiceError> for Status {
    fn from(e: RaftServiceError) -> Status {
        // The source (e.g. the file error of a snapshot) belongs in the message.
        let message = match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        };
        status(e.kind(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table, and that no two kinds share a code (a caller can tell them apart).
    #[test]
    fn every_kind_has_its_own_code() {
        let table = [
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::Invalid, Code::InvalidArgument),
            (ErrorKind::Conflict, Code::FailedPrecondition),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::Timeout, Code::DeadlineExceeded),
            (ErrorKind::Exhausted, Code::ResourceExhausted),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, expected) in table {
            assert_eq!(code(kind), expected, "{kind:?}");
        }
        let codes: std::collections::HashSet<_> = table.iter().map(|(k, _)| code(*k)).collect();
        assert_eq!(codes.len(), table.len());
    }

    /// Errors of every layer that reaches a gRPC answer keep their code and message.
    #[test]
    fn errors_convert_through_the_table() {
        let cases: Vec<(Status, Code)> = vec![
            (
                ClusterError::NoQuorum {
                    reason: "no leader".into(),
                }
                .into(),
                Code::Unavailable,
            ),
            (ClusterError::Start("x".into()).into(), Code::Internal),
            (
                LeaderWriteError::NotLeader(None).into(),
                Code::FailedPrecondition,
            ),
            (
                MembershipError::Invalid("bad".into()).into(),
                Code::InvalidArgument,
            ),
            (
                MembershipError::Refused("no".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                MembershipError::Unavailable("down".into()).into(),
                Code::Unavailable,
            ),
            (
                MembershipError::Timeout("slow".into()).into(),
                Code::DeadlineExceeded,
            ),
            (PeerError::Partitioned(3).into(), Code::Unavailable),
            (PeerError::NotMember(4).into(), Code::NotFound),
            (PeerError::NoLeader.into(), Code::Unavailable),
            (
                RaftServiceError::SnapshotStream("empty snapshot stream").into(),
                Code::InvalidArgument,
            ),
            (
                RaftServiceError::Raft("stopped".into()).into(),
                Code::Unavailable,
            ),
            (
                RaftServiceError::SnapshotStalled(std::time::Duration::from_secs(30)).into(),
                Code::DeadlineExceeded,
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(s.code(), expected, "{s:?}");
            assert!(!s.message().is_empty());
        }
        let s: Status = MembershipError::Refused("the last voter cannot leave".into()).into();
        assert_eq!(s.message(), "the last voter cannot leave");
    }

    /// Refused credentials and refused auth changes get the codes clusterctl tells apart.
    #[test]
    fn auth_refusals_have_their_codes() {
        let cases: Vec<(Status, Code)> = vec![
            (
                AuthError::Unauthorized("x".into()).into(),
                Code::Unauthenticated,
            ),
            (AuthError::Denied("x".into()).into(), Code::PermissionDenied),
            (
                AuthError::TooManyRequests(std::time::Duration::from_secs(3)).into(),
                Code::ResourceExhausted,
            ),
            (AuthError::Unavailable("x".into()).into(), Code::Unavailable),
            (
                ManageError::Invalid("x".into()).into(),
                Code::InvalidArgument,
            ),
            (ManageError::NotFound("x".into()).into(), Code::NotFound),
            (
                ManageError::Exists("x".into()).into(),
                Code::FailedPrecondition,
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(s.code(), expected, "{s:?}");
        }
    }

    /// A write that reached a follower names the leader for the caller to retry at.
    #[test]
    fn not_leader_carries_the_leader_id() {
        let s: Status = LeaderWriteError::NotLeader(Some(7)).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.metadata().get(LEADER_ID_HEADER).unwrap(), "7");
        let s: Status = LeaderWriteError::NotLeader(None).into();
        assert!(s.metadata().get(LEADER_ID_HEADER).is_none());
    }
}
