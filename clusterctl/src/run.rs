//! One function per command: connect, call, render, print.
//!
//! Owns the order of output: in human mode progress lines as they arrive and one `ok: …`
//! line at the end; in `--json` mode one JSON object per line. Errors are returned, not
//! printed: `main.rs` prints them (stderr, and a `{"ok":false,…}` line in `--json` mode)
//! and picks the exit status.

use std::io::Write;

use crate::change::Change;
use crate::cli::{Action, Cli};
use crate::client::AdminConn;
use crate::error::Error;
use crate::render;

/// Runs the parsed command against `cli.endpoint`, writing its output to `out`.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    let mut conn = AdminConn::connect(&cli.endpoint, cli.timeout()).await?;
    match cli.command.action() {
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
    }
    out.flush()?;
    Ok(())
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
