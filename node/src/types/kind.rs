//! The broad classes of failure every layer's error enum reports through its `kind()`.
//!
//! Adapters turn a kind into a wire answer in one table each: `api/error.rs` (OCI code and
//! HTTP status) and `rpc/status.rs` (gRPC code). A layer below them names a kind, never a
//! status code.

/// The broad class of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The thing asked for does not exist.
    NotFound,
    /// The request is malformed or inconsistent.
    Invalid,
    /// The request is well formed but cannot be satisfied in the current state (for example
    /// it reached a node that does not lead, or a membership change is not allowed now).
    Conflict,
    /// The cluster cannot serve this now; retry later.
    Unavailable,
    /// It did not finish in time (it may still complete).
    Timeout,
    /// A resource of this node is used up (disk space, upload sessions): the request was
    /// refused and changed nothing; retry later or elsewhere.
    Exhausted,
    /// A bug or a local storage failure.
    Internal,
}
