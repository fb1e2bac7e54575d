//! One function per command: connect, call, render, print.
//!
//! Owns the order of output: in human mode progress lines as they arrive and one `ok: …`
//! line at the end; in `--json` mode one JSON object per line. Errors are returned, not
//! printed: `main.rs` prints them (stderr, and a `{"ok":false,…}` line in `--json` mode)
//! and picks the exit status.

use std::io::Write;
use std::time::Duration;

use berth_proto::admin::{ReplicationPolicy, ReplicationPolicyEntry};

use crate::change::Change;
use crate::cli::{Action, Cli};
use crate::client::AdminConn;
use crate::error::Error;
use crate::render;

/// Runs the parsed command against `cli.endpoint`, writing its output to `out`.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    let action = cli.command.action();
    if let Action::Certs(command) = &action {
        return crate::certs::run(command, out);
    }
    let tls = cli.tls().map_err(Error::Certs)?;
    let mut conn = AdminConn::connect(&cli.endpoint, tls.as_ref(), cli.timeout()).await?;
    match action {
        // Handled above, without a connection.
        Action::Certs(_) => {}
        Action::Status => {
            let status = conn.status().await?;
            if cli.json {
                writeln!(out, "{}", render::status_json(&status))?;
            } else {
                write!(out, "{}", render::status_text(&status))?;
            }
        }
        Action::ListNodes => {
            let status = conn.status().await?;
            if cli.json {
                writeln!(out, "{}", render::members_json(&status.members))?;
            } else {
                write!(out, "{}", render::members_text(&status.members))?;
            }
        }
        Action::Change(change) => apply(&mut conn, &change, cli.json, out).await?,
        Action::Audit(args) => crate::audit::run(cli, &mut conn, &args, out).await?,
        Action::ReplicationStatus {
            reference,
            wait,
            verbose,
        } => replication_status(&mut conn, &reference, wait, verbose, cli.json, out).await?,
        Action::PolicyGet(pattern) => {
            let policies = conn.get_policy(&pattern).await?;
            if cli.json {
                writeln!(out, "{}", render::policies_json(&policies))?;
            } else {
                write!(out, "{}", render::policies_text(&policies))?;
            }
        }
        Action::PolicySet {
            pattern,
            regions,
            on_demand,
        } => {
            let entry = ReplicationPolicyEntry {
                pattern,
                policy: Some(ReplicationPolicy { regions, on_demand }),
            };
            let stored = conn.set_policy(entry).await?;
            if cli.json {
                let mut v = render::policy_json(&stored);
                v["ok"] = true.into();
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{}", render::policy_set_text(&stored))?;
            }
        }
        Action::PolicyClear(pattern) => {
            conn.clear_policy(&pattern).await?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"ok": true, "pattern": pattern})
                )?;
            } else {
                writeln!(out, "ok: policy of {pattern} cleared")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Pause between two polls of `replication status --wait`.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `replication status`: one answer, or with `wait` polls until complete (a progress line per
/// change in human mode) or the deadline. Prints the last answer either way; an incomplete one
/// is [`Error::NotReplicated`].
async fn replication_status(
    conn: &mut AdminConn,
    reference: &str,
    wait: bool,
    verbose: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let mut last_line = String::new();
    let answer = loop {
        let answer = conn.replication_status(reference, verbose).await?;
        if answer.complete || !wait {
            break answer;
        }
        if !json {
            let line = format!("waiting: {}", render::pending_summary(&answer));
            if line != last_line {
                writeln!(out, "{line}")?;
                out.flush()?;
                last_line = line;
            }
        }
        if tokio::time::Instant::now() + WAIT_POLL >= conn.deadline() {
            break answer;
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    if json {
        writeln!(out, "{}", render::replication_json(&answer))?;
    } else {
        write!(out, "{}", render::replication_text(&answer))?;
    }
    if answer.complete {
        return Ok(());
    }
    Err(Error::NotReplicated {
        reference: reference.to_owned(),
        pending: render::pending_summary(&answer),
        waited: wait.then(|| started.elapsed().min(conn.timeout())),
    })
}

/// Runs a membership change, printing each progress message as it arrives.
async fn apply(
    conn: &mut AdminConn,
    change: &Change,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let done = conn
        .apply(change, |progress| {
            if json {
                writeln!(out, "{}", render::progress_json(progress))?;
            } else if !progress.done {
                // The final message becomes the `ok: …` line below.
                writeln!(out, "{}", render::progress_text(progress))?;
            }
            out.flush()?;
            Ok(())
        })
        .await?;
    if json {
        writeln!(out, "{}", render::outcome_json(change, &done))?;
    } else {
        writeln!(out, "{}", render::outcome_text(change, &done))?;
    }
    Ok(())
}
