//! One function per command: connect, call, render, print.
//!
//! Owns the order of output: in human mode progress lines as they arrive and one `ok: …`
//! line at the end; in `--json` mode one JSON object per line. Errors are returned, not
//! printed: `main.rs` prints them (stderr, and a `{"ok":false,…}` line in `--json` mode)
//! and picks the exit status. The auth commands are [`crate::run_auth`]'s, the lifecycle
//! commands [`crate::run_lifecycle`]'s, `webhooks` [`crate::run_webhooks`]'s; the passwords
//! `--password-stdin` asks for are read here, before connecting.

use std::io::{BufRead, Write};
use std::time::Duration;

use berth_proto::admin::{ReplicationPolicy, ReplicationPolicyEntry};

use crate::change::Change;
use crate::cli::{Action, Cli, Login};
use crate::client::{AdminConn, Credentials};
use crate::error::Error;
use crate::render;
use serde_json::Value;

/// Prints `json` (with `--json`) or `text`.
pub(crate) fn print(
    out: &mut dyn Write,
    json: bool,
    value: Value,
    text: &str,
) -> Result<(), Error> {
    if json {
        writeln!(out, "{value}")?;
    } else {
        write!(out, "{text}")?;
    }
    Ok(())
}

/// Prints the answer of a change: `value` with `"ok": true`, or `ok: <what>` and `text`.
pub(crate) fn print_change(
    out: &mut dyn Write,
    json: bool,
    mut value: Value,
    what: &str,
    text: &str,
) -> Result<(), Error> {
    value["ok"] = true.into();
    print(out, json, value, &format!("ok: {what}\n{text}"))
}

/// Reads `count` passwords from `input`, one per line (the line ending is not part of it).
/// [`Error::Input`] when a line is missing or empty.
pub fn read_passwords(input: &mut dyn BufRead, count: usize) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(count);
    for n in 1..=count {
        let mut line = String::new();
        input
            .read_line(&mut line)
            .map_err(|e| Error::Input(format!("failed to read a password from stdin: {e}")))?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err(Error::Input(format!(
                "--password-stdin: expected {count} password line(s) on stdin, line {n} is \
                 missing or empty"
            )));
        }
        out.push(password);
    }
    Ok(out)
}

/// The call's credentials and the new password of the command, from the login and the
/// stdin lines: the `--user` password first (when it is read from stdin), then the new one.
fn credentials(
    login: Login,
    takes_password: bool,
    input: &mut dyn BufRead,
) -> Result<(Option<Credentials>, Option<String>), Error> {
    let reads_login = matches!(login, Login::User { password: None, .. });
    let mut lines = read_passwords(
        input,
        usize::from(reads_login) + usize::from(takes_password),
    )?
    .into_iter();
    let credentials = match login {
        Login::None => None,
        Login::Token(token) => Some(Credentials::Bearer(token)),
        Login::User { name, password } => Some(Credentials::Basic {
            user: name,
            password: match password {
                Some(p) => p,
                None => lines.next().unwrap_or_default(),
            },
        }),
    };
    Ok((credentials, lines.next()))
}

/// Runs the parsed command against `cli.endpoint`, writing its output to `out`; passwords
/// come from stdin.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    let action = cli.action();
    if let Action::Certs(command) = &action {
        return crate::certs::run(command, out);
    }
    let tls = cli.tls().map_err(Error::Certs)?;
    let login = cli.login().map_err(Error::Input)?;
    let takes_password = matches!(&action, Action::Auth(a) if a.takes_password());
    let (credentials, password) = credentials(login, takes_password, &mut std::io::stdin().lock())?;
    let mut conn = AdminConn::connect(
        &cli.endpoint,
        tls.as_ref(),
        credentials.as_ref(),
        cli.timeout(),
    )
    .await?;
    match action {
        // Handled above, without a connection.
        Action::Certs(_) => {}
        Action::Auth(a) => crate::run_auth::run(&mut conn, a, password, cli.json, out).await?,
        Action::Lifecycle(a) => crate::run_lifecycle::run(&mut conn, a, cli.json, out).await?,
        Action::Webhooks(a) => crate::run_webhooks::run(&mut conn, a, cli.json, out).await?,
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
        Action::Audit(args) => {
            crate::audit::run(cli, &mut conn, credentials.as_ref(), &args, out).await?
        }
        Action::GcRun { dry_run, wait } => {
            gc_run(&mut conn, cli.endpoint.addr(), dry_run, wait, cli.json, out).await?
        }
        Action::GcStatus => {
            let status = conn.gc_status().await?;
            if cli.json {
                writeln!(out, "{}", render::gc_status_json(&status))?;
            } else {
                write!(out, "{}", render::gc_status_text(&status))?;
            }
        }
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

/// Pause between two polls of `gc run --wait`.
const GC_POLL: Duration = Duration::from_secs(1);

/// `gc run`: starts a pass on the answering node (`endpoint`) and prints its number and how to
/// follow it; with `wait` follows it instead, polling `GcStatus` (a progress line per change
/// in human mode) until it ends or the deadline, and prints its report. A report with an
/// error is [`Error::GcFailed`]; a pass not followed to its end is [`Error::GcNotFollowed`].
async fn gc_run(
    conn: &mut AdminConn,
    endpoint: &str,
    dry_run: bool,
    wait: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let mut report = conn.gc_run(dry_run, false).await?;
    let id = report.id;
    if !wait {
        if json {
            writeln!(out, "{}", render::gc_report_json(&report))?;
        } else {
            writeln!(out, "{}", render::gc_started_text(&report, endpoint))?;
        }
        return Ok(());
    }
    let mut last_line = String::new();
    while report.finished_ms == 0 {
        if !json {
            let line = render::gc_progress_text(&report);
            if line != last_line {
                writeln!(out, "{line}")?;
                out.flush()?;
                last_line = line;
            }
        }
        if tokio::time::Instant::now() + GC_POLL >= conn.deadline() {
            return Err(Error::GcNotFollowed {
                id,
                waited: Some(started.elapsed().min(conn.timeout())),
            });
        }
        tokio::time::sleep(GC_POLL).await;
        report = match conn.gc_status().await?.last {
            Some(last) if last.id == id => last,
            _ => return Err(Error::GcNotFollowed { id, waited: None }),
        };
    }
    if json {
        writeln!(out, "{}", render::gc_report_json(&report))?;
    } else {
        write!(out, "{}", render::gc_report_text(&report))?;
    }
    if report.error.is_empty() {
        Ok(())
    } else {
        Err(Error::GcFailed {
            id,
            error: report.error,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_one_per_line() {
        let mut input: &[u8] = b"first\r\nsecond\nthird\n";
        assert_eq!(
            read_passwords(&mut input, 2).unwrap(),
            vec!["first".to_owned(), "second".to_owned()]
        );
        let mut short: &[u8] = b"only\n";
        assert!(matches!(
            read_passwords(&mut short, 2),
            Err(Error::Input(m)) if m.contains("line 2")
        ));
        let mut none: &[u8] = b"";
        assert!(read_passwords(&mut none, 0).unwrap().is_empty());
    }

    #[test]
    fn the_login_password_comes_before_the_new_one() {
        let user = |password: Option<&str>| Login::User {
            name: "admin".into(),
            password: password.map(str::to_owned),
        };
        let basic = |p: &str| {
            Some(Credentials::Basic {
                user: "admin".into(),
                password: p.into(),
            })
        };
        let mut input: &[u8] = b"adminpw\nnewpw\n";
        assert_eq!(
            credentials(user(None), true, &mut input).unwrap(),
            (basic("adminpw"), Some("newpw".into()))
        );
        let mut input: &[u8] = b"newpw\n";
        assert_eq!(
            credentials(user(Some("fromenv")), true, &mut input).unwrap(),
            (basic("fromenv"), Some("newpw".into()))
        );
        let mut input: &[u8] = b"";
        assert_eq!(
            credentials(Login::Token("t".into()), false, &mut input).unwrap(),
            (Some(Credentials::Bearer("t".into())), None)
        );
        assert_eq!(
            credentials(Login::None, false, &mut input).unwrap(),
            (None, None)
        );
    }
}
