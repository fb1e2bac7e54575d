//! The one error type of `clusterctl`, and the words it uses for gRPC codes.
//!
//! Every error keeps the gRPC code it stands for ([`Error::code`]), so `--json` output can
//! report it and callers can tell a refusal from an outage. `Display` is the line printed
//! after `clusterctl: ` on stderr: lowercase,
//! `failed to <verb> <object>: <word>: <server message>`, where the word comes from
//! [`code_word`]. Usage errors are not here: clap
//! reports them before anything runs (exit status 2).

use std::time::Duration;

use tonic::Code;

/// Everything that can go wrong once the arguments parsed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the endpoint could be made (refused, DNS, TLS, …).
    #[error("cannot reach {endpoint}: {}", error_chain(source))]
    Connect {
        /// The endpoint as the user gave it (`host:port`).
        endpoint: String,
        /// The transport's reason.
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection was not made before the command's deadline.
    #[error("cannot reach {endpoint}: no connection within {}", secs(*after))]
    ConnectTimedOut {
        /// The endpoint as the user gave it (`host:port`).
        endpoint: String,
        /// The command's whole timeout.
        after: Duration,
    },
    /// The server answered the call, or ended its stream, with an error status.
    #[error("failed to {what}: {}", status_text(status))]
    Rpc {
        /// What was attempted, e.g. `promote node 4`.
        what: String,
        /// The server's status; its code and message are shown.
        #[source]
        status: tonic::Status,
    },
    /// The command's deadline (`--timeout`) passed before the answer came.
    #[error(
        "failed to {what}: timed out after {}{}",
        secs(*after),
        if *may_complete { " (the change may still complete; check `clusterctl status`)" } else { "" }
    )]
    TimedOut {
        /// What was attempted.
        what: String,
        /// The command's whole timeout.
        after: Duration,
        /// Whether the server may still carry the operation out (membership changes).
        may_complete: bool,
    },
    /// A membership stream ended without a `done` message and without an error status.
    #[error("failed to {what}: the server ended the stream before the operation finished")]
    Incomplete {
        /// What was attempted.
        what: String,
    },
    /// Replication is not complete (the status was printed), or did not complete within
    /// `--timeout` with `--wait`.
    #[error(
        "replication of {} is not complete{}: {pending}",
        if reference.is_empty() { "every image" } else { reference },
        match waited { Some(d) => format!(" after waiting {}", secs(*d)), None => String::new() }
    )]
    NotReplicated {
        /// The reference (empty: everything).
        reference: String,
        /// What is pending, e.g. `r3: 2 blobs (2048 bytes)`.
        pending: String,
        /// How long `--wait` waited, when it did.
        waited: Option<Duration>,
    },
    /// A garbage collection pass stopped early (its report, with the error, was printed).
    #[error("garbage collection pass #{id} stopped early: {error}")]
    GcFailed {
        /// The pass's number on the node that ran it.
        id: u64,
        /// Why, as the node reported it.
        error: String,
    },
    /// `gc run --wait` stopped following a pass before it ended: `--timeout` passed, or the
    /// node no longer reports it (it restarted).
    #[error(
        "garbage collection pass #{id} {}; see `clusterctl gc status`",
        match waited {
            Some(d) => format!("had not finished after waiting {} (it goes on)", secs(*d)),
            None => "is no longer reported by the node (did it restart?)".to_owned(),
        }
    )]
    GcNotFollowed {
        /// The pass's number.
        id: u64,
        /// How long it was followed, when `--timeout` ended it; `None`: the node's status
        /// names no such pass any more.
        waited: Option<Duration>,
    },
    /// `webhooks ping` did not get a 2xx answer (the delivery was printed).
    #[error("webhook {name} did not answer the ping with 2xx: {outcome}")]
    PingFailed {
        /// The webhook.
        name: String,
        /// What came back instead: `HTTP 500`, or the error.
        outcome: String,
    },
    /// A certificate file could not be read, made or written (`certs`, `--ca/--cert/--key`).
    #[error("{0}")]
    Certs(String),
    /// Local input that cannot be used: a password not readable from stdin, an expiry in
    /// the past, credentials that cannot be sent.
    #[error("{0}")]
    Input(String),
    /// An identity is of the other kind than the command (`users show` of a token).
    #[error("{name} is a {actual}, not a {expected}: use `clusterctl {actual}s …`")]
    WrongKind {
        /// The login name.
        name: String,
        /// What it is: `user` or `token`.
        actual: &'static str,
        /// What the command handles.
        expected: &'static str,
    },
    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("failed to write output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// The gRPC code this error stands for: the server's code for [`Error::Rpc`],
    /// `UNAVAILABLE` when the endpoint cannot be reached, `DEADLINE_EXCEEDED` for timeouts,
    /// `UNKNOWN` for an unfinished stream or an output failure.
    pub fn code(&self) -> Code {
        match self {
            Error::Connect { .. } | Error::ConnectTimedOut { .. } => Code::Unavailable,
            Error::Rpc { status, .. } => status.code(),
            Error::TimedOut { .. } => Code::DeadlineExceeded,
            Error::NotReplicated {
                waited: Some(_), ..
            } => Code::DeadlineExceeded,
            Error::NotReplicated { waited: None, .. } => Code::FailedPrecondition,
            Error::Incomplete { .. } | Error::Output(_) => Code::Unknown,
            Error::Certs(_) | Error::Input(_) => Code::InvalidArgument,
            Error::WrongKind { .. } => Code::FailedPrecondition,
            Error::GcFailed { .. } => Code::Aborted,
            Error::GcNotFollowed {
                waited: Some(_), ..
            } => Code::DeadlineExceeded,
            Error::GcNotFollowed { waited: None, .. } => Code::Unknown,
            Error::PingFailed { .. } => Code::Aborted,
        }
    }

    /// The process exit status for this error: always 1 (2 is left to usage errors).
    pub fn exit_status(&self) -> u8 {
        1
    }

    /// Whether the command already printed its answer (an incomplete replication status, the
    /// report of a failed garbage collection pass, a failed ping's delivery): in `--json` mode no error line follows
    /// it, so stdout stays one JSON document.
    pub fn answer_printed(&self) -> bool {
        matches!(
            self,
            Error::NotReplicated { .. } | Error::GcFailed { .. } | Error::PingFailed { .. }
        )
    }
}

/// The word printed for a gRPC code: `refused`, `unavailable`, `timed out`,
/// `invalid request`, and for the other codes their name in lowercase words
/// (`not found`, `unimplemented`, …).
pub fn code_word(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid request",
        Code::DeadlineExceeded => "timed out",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "refused",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The canonical gRPC name of a code (`FAILED_PRECONDITION`), as `--json` reports it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `<word>: <message>`, or just the word when the server sent no message.
fn status_text(status: &tonic::Status) -> String {
    let word = code_word(status.code());
    match status.message().trim() {
        "" => word.to_owned(),
        message => format!("{word}: {message}"),
    }
}

/// An error and its sources joined with `: ` (tonic's transport error alone says only
/// "transport error"; the reason is in its sources). Repeated texts are skipped.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// A duration for humans: `10s`, `1.5s`.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: Code, message: &str) -> Error {
        Error::Rpc {
            what: "promote node 4".into(),
            status: tonic::Status::new(code, message),
        }
    }

    #[test]
    fn rpc_errors_name_the_code_in_words() {
        let cases = [
            (Code::FailedPrecondition, "refused"),
            (Code::Unavailable, "unavailable"),
            (Code::DeadlineExceeded, "timed out"),
            (Code::InvalidArgument, "invalid request"),
            (Code::NotFound, "not found"),
            (Code::Unimplemented, "unimplemented"),
            (Code::Internal, "internal"),
        ];
        for (code, word) in cases {
            let err = rpc(code, "node 4 is not a learner");
            assert_eq!(
                err.to_string(),
                format!("failed to promote node 4: {word}: node 4 is not a learner")
            );
            assert_eq!(err.code(), code);
            assert_eq!(err.exit_status(), 1);
        }
    }

    #[test]
    fn rpc_error_without_message_shows_only_the_word() {
        assert_eq!(
            rpc(Code::Unavailable, "").to_string(),
            "failed to promote node 4: unavailable"
        );
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }

    #[test]
    fn timeouts_say_whether_the_change_may_still_complete() {
        let change = Error::TimedOut {
            what: "add node 4".into(),
            after: Duration::from_secs(300),
            may_complete: true,
        };
        assert_eq!(change.code(), Code::DeadlineExceeded);
        assert!(
            change
                .to_string()
                .starts_with("failed to add node 4: timed out after 300s (the change may still")
        );
        let status = Error::TimedOut {
            what: "get the cluster status".into(),
            after: Duration::from_millis(1500),
            may_complete: false,
        };
        assert_eq!(
            status.to_string(),
            "failed to get the cluster status: timed out after 1.5s"
        );
    }

    #[test]
    fn incomplete_replication_names_what_is_pending() {
        let now = Error::NotReplicated {
            reference: "a:1".into(),
            pending: "r3: 2 blobs (2048 bytes)".into(),
            waited: None,
        };
        assert_eq!(
            now.to_string(),
            "replication of a:1 is not complete: r3: 2 blobs (2048 bytes)"
        );
        assert!(now.answer_printed());
        let waited = Error::NotReplicated {
            reference: String::new(),
            pending: "r2: 1 blob (5 bytes)".into(),
            waited: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            waited.to_string(),
            "replication of every image is not complete after waiting 60s: r2: 1 blob (5 bytes)"
        );
        assert_eq!(waited.code(), Code::DeadlineExceeded);
        assert_eq!(waited.exit_status(), 1);
    }

    #[test]
    fn gc_errors_say_which_pass_and_what_to_do() {
        let failed = Error::GcFailed {
            id: 3,
            error: "no quorum".into(),
        };
        assert_eq!(
            failed.to_string(),
            "garbage collection pass #3 stopped early: no quorum"
        );
        assert!(failed.answer_printed());
        assert_eq!(failed.code(), Code::Aborted);
        let waited = Error::GcNotFollowed {
            id: 3,
            waited: Some(Duration::from_secs(600)),
        };
        assert_eq!(
            waited.to_string(),
            "garbage collection pass #3 had not finished after waiting 600s (it goes on); \
             see `clusterctl gc status`"
        );
        assert_eq!(waited.code(), Code::DeadlineExceeded);
        assert!(!waited.answer_printed());
        let lost = Error::GcNotFollowed {
            id: 3,
            waited: None,
        };
        assert!(lost.to_string().contains("no longer reported"), "{lost}");
        assert_eq!(lost.exit_status(), 1);
    }

    #[test]
    fn connect_timeout_says_cannot_reach() {
        let err = Error::ConnectTimedOut {
            endpoint: "10.0.0.1:7000".into(),
            after: Duration::from_secs(10),
        };
        assert_eq!(
            err.to_string(),
            "cannot reach 10.0.0.1:7000: no connection within 10s"
        );
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[test]
    fn error_chain_joins_sources_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&err), "transport error: connection refused");
    }
}
