//! `clusterctl`: the operator CLI for a berth cluster.
//!
//! It speaks only the admin contract of `berth-proto` (`berth.admin.v1`) to one member's
//! cluster address; it never depends on `berth-node`. The layers point down:
//!
//! - [`cli`]: the command line (clap) and client-side argument validation; [`cli_auth`] the
//!   same for `users`, `tokens`, `scope-maps`, `roles` and `auth`; [`cli_lifecycle`] for
//!   `repos`, `soft-delete`, `retention`, `namespaces` and `purge`; [`cli_webhooks`] for
//!   `webhooks`;
//! - [`run`]: one function per command, gluing the client to the renderer; [`run_auth`] for
//!   the auth commands; [`run_lifecycle`] for the lifecycle commands; [`run_webhooks`] for
//!   `webhooks`;
//! - [`client`]: the gRPC calls, with the overall deadline and the credentials applied;
//! - [`render`]: pure functions from proto messages to tables, lines and JSON;
//!   [`render_auth`] for the auth commands, [`render_lifecycle`] for the lifecycle ones,
//!   [`render_webhooks`] for `webhooks`;
//! - [`certs`]: `certs init|issue`, a development cluster CA and its certificates;
//! - [`audit`]: `audit`, every member's audit log merged by time;
//! - [`change`]: the membership changes and how messages name them;
//! - [`error`]: the one error type, which keeps the gRPC code.
//!
//! `main.rs` only parses the arguments, calls [`run::run`] and maps the error to an exit
//! status (0 success, 1 failed or refused, 2 usage).

pub mod audit;
pub mod certs;
pub mod change;
pub mod cli;
pub mod cli_auth;
pub mod cli_lifecycle;
pub mod cli_webhooks;
pub mod client;
pub mod error;
pub mod render;
pub mod render_auth;
pub mod render_lifecycle;
pub mod render_webhooks;
pub mod run;
pub mod run_auth;
pub mod run_lifecycle;
pub mod run_webhooks;

pub use error::Error;
