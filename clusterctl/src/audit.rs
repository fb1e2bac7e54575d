//! `clusterctl audit`: every member's audit log, merged by time.
//!
//! Each node keeps its own audit log (logins, tokens issued, pushes, deletes, admin changes,
//! network refusals), so the command asks the endpoint for the members (`Status`), then asks
//! every member for its records (`Audit`) at once, each on its own connection to its cluster
//! address under the command's deadline. A member that does not answer is reported after the
//! records (a line per member), not fatal. The records are merged by time and the newest
//! `--limit` are printed, oldest first: a table, or with `--json` one JSON object per line
//! (the shape of the nodes' own export), then one `{"node":…,"error":…}` line per member that
//! did not answer.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::admin::{AuditRecord, AuditRequest, AuditResponse, Member};
use clap::Args;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{Cli, parse_endpoint};
use crate::client::AdminConn;
use crate::error::Error;
use crate::render::{Align, Table};

/// Default `--limit`.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `--limit` (what a node returns at most).
pub const MAX_LIMIT: u32 = 10_000;

/// `clusterctl audit …`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct AuditArgs {
    /// Only records since then: a duration back from now (`90s`, `15m`, `12h`, `7d`, `2w`,
    /// or combined, `1h30m`) or an RFC 3339 time (`2026-11-30T06:00:00Z`). Default: all.
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only records of this identity (a login name, or an admin caller such as `cluster`).
    #[arg(long, value_name = "NAME", value_parser = parse_identity)]
    pub identity: Option<String>,
    /// The newest records to show, across the cluster (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT, value_parser = parse_limit)]
    pub limit: u32,
}

/// The start of `--since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before the command runs.
    Ago(Duration),
    /// This time, ms since the epoch.
    At(u64),
}

impl Since {
    /// The start in ms since the epoch, for a command running at `now_ms`.
    pub fn ms(self, now_ms: u64) -> u64 {
        match self {
            Since::Ago(d) => now_ms.saturating_sub(d.as_millis() as u64),
            Since::At(ms) => ms,
        }
    }
}

/// Parses `--since`: a duration of whole numbers with units `s`, `m`, `h`, `d`, `w` (e.g.
/// `1h30m`), or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return u64::try_from(ms)
            .map(Since::At)
            .map_err(|_| "the time is before 1970".to_string());
    }
    let bad = || "expected a duration like 15m, 12h, 7d or 1h30m, or an RFC 3339 time".to_string();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or("the duration is too long")?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Since::Ago(Duration::from_secs(total)))
}

/// Parses `--identity`: a non-empty name without spaces.
pub fn parse_identity(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err("expected a name without spaces".into());
    }
    Ok(s.to_owned())
}

/// Parses `--limit`: 1 to [`MAX_LIMIT`].
pub fn parse_limit(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_LIMIT}")),
    }
}

/// What each member answered.
#[derive(Debug)]
pub struct Answers {
    /// The members that answered, with their answers.
    pub answered: Vec<(Member, AuditResponse)>,
    /// The members that did not, with the reason.
    pub failed: Vec<(Member, String)>,
}

/// Runs `audit` over `conn`'s member list.
pub async fn run(
    cli: &Cli,
    conn: &mut AdminConn,
    credentials: Option<&crate::client::Credentials>,
    args: &AuditArgs,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let request = AuditRequest {
        since_ms: args.since.map_or(0, |s| s.ms(now_ms)),
        identity: args.identity.clone().unwrap_or_default(),
        limit: args.limit,
    };
    let status = conn.status().await?;
    let tls = cli.tls().map_err(Error::Certs)?;
    let deadline = conn.deadline();
    let me = status
        .members
        .iter()
        .find(|m| m.id == status.node_id)
        .cloned()
        .unwrap_or_else(|| Member {
            id: status.node_id,
            cluster_addr: cli.endpoint.to_string(),
            ..Member::default()
        });
    let own = async { conn.audit(request.clone()).await.map_err(|e| e.to_string()) };
    let asks = status
        .members
        .iter()
        .filter(|m| m.id != status.node_id)
        .map(|m| {
            let (request, tls) = (request.clone(), tls.clone());
            let credentials = credentials.cloned();
            async move {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let answer = match parse_endpoint(&m.cluster_addr) {
                    Ok(endpoint) => match AdminConn::connect(
                        &endpoint,
                        tls.as_ref(),
                        credentials.as_ref(),
                        left,
                    )
                    .await
                    {
                        Ok(mut member) => member.audit(request).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(format!("bad cluster address {:?}: {e}", m.cluster_addr)),
                };
                (m.clone(), answer)
            }
        });
    let (own, others) = tokio::join!(own, futures::future::join_all(asks));
    let mut answers = Answers {
        answered: Vec::new(),
        failed: Vec::new(),
    };
    for (m, answer) in std::iter::once((me, own)).chain(others) {
        match answer {
            Ok(a) => answers.answered.push((m, a)),
            Err(e) => answers.failed.push((m, e)),
        }
    }
    let records = merge(&answers, args.limit as usize);
    if cli.json {
        for r in &records {
            writeln!(out, "{}", record_json(r))?;
        }
        for (m, e) in &answers.failed {
            writeln!(
                out,
                "{}",
                json!({"node": m.id, "cluster_addr": m.cluster_addr, "error": e})
            )?;
        }
    } else {
        write!(out, "{}", records_text(&records))?;
        for line in notes(&answers) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// Every answer's records, ordered by time (then node), the newest `limit` of them.
pub fn merge(answers: &Answers, limit: usize) -> Vec<AuditRecord> {
    let mut all: Vec<AuditRecord> = answers
        .answered
        .iter()
        .flat_map(|(_, a)| a.records.iter().cloned())
        .collect();
    all.sort_by_key(|r| (r.time_ms, r.node_id));
    let skip = all.len().saturating_sub(limit);
    all.split_off(skip)
}

/// A record as one JSON object: `time`, `time_ms`, `node`, `region`, `identity` (null:
/// anonymous), `address` (null: unknown), `event`, then the event's fields.
pub fn record_json(r: &AuditRecord) -> Value {
    let or_null = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let mut v = json!({
        "time": time_text(r.time_ms),
        "time_ms": r.time_ms,
        "node": r.node_id,
        "region": r.region,
        "identity": or_null(&r.identity),
        "address": or_null(&r.address),
        "event": r.event,
    });
    for f in &r.fields {
        v[f.key.as_str()] = f.value.clone().into();
    }
    v
}

/// The records as a table: TIME, NODE, REGION, IDENTITY, ADDRESS, EVENT, DETAIL (the event's
/// fields as `key=value`).
pub fn records_text(records: &[AuditRecord]) -> String {
    let columns = vec![
        ("TIME", Align::Left),
        ("NODE", Align::Right),
        ("REGION", Align::Left),
        ("IDENTITY", Align::Left),
        ("ADDRESS", Align::Left),
        ("EVENT", Align::Left),
        ("DETAIL", Align::Left),
    ];
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows = records
        .iter()
        .map(|r| {
            let detail: Vec<String> = r
                .fields
                .iter()
                .map(|f| format!("{}={}", f.key, quote(&f.value)))
                .collect();
            vec![
                time_text(r.time_ms),
                r.node_id.to_string(),
                dash(&r.region),
                if r.identity.is_empty() {
                    "(anonymous)".to_owned()
                } else {
                    r.identity.clone()
                },
                dash(&r.address),
                r.event.clone(),
                dash(&detail.join(" ")),
            ]
        })
        .collect();
    Table { columns, rows }.render()
}

/// Lines after the table: members that did not answer, and members that dropped records.
pub fn notes(answers: &Answers) -> Vec<String> {
    let mut lines: Vec<String> = answers
        .failed
        .iter()
        .map(|(m, e)| format!("node {} ({}) did not answer: {e}", m.id, m.cluster_addr))
        .collect();
    for (m, a) in &answers.answered {
        if a.dropped > 0 {
            lines.push(format!(
                "node {} dropped {} audit records since it started (its audit writer was behind)",
                m.id, a.dropped
            ));
        }
    }
    lines
}

/// A value as shown in DETAIL: quoted when it is empty or holds spaces.
fn quote(v: &str) -> String {
    if v.is_empty() || v.contains(char::is_whitespace) {
        format!("{v:?}")
    } else {
        v.to_owned()
    }
}

/// ms since the epoch as RFC 3339 UTC with milliseconds (`2026-11-30T06:00:00.250Z`, as the
/// nodes' export writes it).
pub fn time_text(ms: u64) -> String {
    let format = time::format_description::parse_borrowed::<1>(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z",
    );
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    match (format, t) {
        (Ok(f), Ok(t)) => t.format(&f).unwrap_or_else(|_| ms.to_string()),
        _ => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::admin::AuditField;

    use super::*;

    fn record(time_ms: u64, node_id: u64, event: &str, fields: &[(&str, &str)]) -> AuditRecord {
        AuditRecord {
            time_ms,
            node_id,
            region: format!("r{node_id}"),
            identity: if event == "network_denied" {
                String::new()
            } else {
                "ann".into()
            },
            address: "10.0.0.7".into(),
            event: event.into(),
            fields: fields
                .iter()
                .map(|(k, v)| AuditField {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    fn member(id: u64) -> Member {
        Member {
            id,
            cluster_addr: format!("10.0.0.{id}:7000"),
            ..Member::default()
        }
    }

    #[test]
    fn since_takes_durations_and_rfc3339_times() {
        assert_eq!(parse_since("90s"), Ok(Since::Ago(Duration::from_secs(90))));
        assert_eq!(
            parse_since("1h30m"),
            Ok(Since::Ago(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_since("2w"),
            Ok(Since::Ago(Duration::from_secs(14 * 86_400)))
        );
        assert_eq!(
            parse_since("2026-11-30T06:00:00Z"),
            Ok(Since::At(1_796_018_400_000))
        );
        assert_eq!(
            parse_since("2026-11-30T07:00:00.5+01:00"),
            Ok(Since::At(1_796_018_400_500))
        );
        for bad in ["", "5", "m", "5x", "1h30", "yesterday", "2026-11-30"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Since::Ago(Duration::from_secs(1)).ms(5000), 4000);
        assert_eq!(Since::Ago(Duration::from_secs(9)).ms(5000), 0);
        assert_eq!(Since::At(7).ms(5000), 7);
    }

    #[test]
    fn limits_and_identities_are_checked() {
        assert_eq!(parse_limit("1"), Ok(1));
        assert_eq!(parse_limit("10000"), Ok(10_000));
        assert!(parse_limit("0").is_err() && parse_limit("10001").is_err());
        assert!(parse_identity("ci-bot").is_ok());
        assert!(parse_identity("").is_err() && parse_identity("a b").is_err());
    }

    #[test]
    fn answers_merge_by_time_keeping_the_newest() {
        let answer = |records| AuditResponse {
            node_id: 0,
            records,
            dropped: 0,
        };
        let answers = Answers {
            answered: vec![
                (
                    member(1),
                    answer(vec![
                        record(100, 1, "login_succeeded", &[]),
                        record(300, 1, "push", &[]),
                    ]),
                ),
                (
                    member(2),
                    answer(vec![
                        record(200, 2, "login_failed", &[]),
                        record(300, 2, "delete", &[]),
                    ]),
                ),
            ],
            failed: vec![(member(3), "cannot reach 10.0.0.3:7000".into())],
        };
        let merged = merge(&answers, 3);
        let order: Vec<(u64, u64)> = merged.iter().map(|r| (r.time_ms, r.node_id)).collect();
        assert_eq!(order, [(200, 2), (300, 1), (300, 2)]);
        assert_eq!(merge(&answers, 100).len(), 4);
        assert_eq!(
            notes(&answers),
            ["node 3 (10.0.0.3:7000) did not answer: cannot reach 10.0.0.3:7000"]
        );
    }

    #[test]
    fn records_render_as_a_table_and_as_json_lines() {
        let push = record(
            1_796_018_400_250,
            2,
            "push",
            &[
                ("repository", "team/app"),
                ("digest", "sha256:ab"),
                ("tag", "v1"),
            ],
        );
        let denied = record(1_796_018_401_000, 1, "network_denied", &[]);
        let text = records_text(&[push.clone(), denied.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                      NODE  REGION  IDENTITY     ADDRESS   EVENT           DETAIL"
        );
        assert_eq!(
            lines[1],
            "2026-11-30T06:00:00.250Z     2  r2      ann          10.0.0.7  push            \
             repository=team/app digest=sha256:ab tag=v1"
        );
        assert!(lines[2].ends_with("network_denied  -"), "{}", lines[2]);
        assert!(lines[2].contains("(anonymous)"), "{}", lines[2]);
        let v = record_json(&push);
        assert_eq!(
            v,
            json!({
                "time": "2026-11-30T06:00:00.250Z",
                "time_ms": 1_796_018_400_250u64,
                "node": 2,
                "region": "r2",
                "identity": "ann",
                "address": "10.0.0.7",
                "event": "push",
                "repository": "team/app",
                "digest": "sha256:ab",
                "tag": "v1",
            })
        );
        assert_eq!(record_json(&denied)["identity"], Value::Null);
    }
}
