//! Output: pure functions from admin proto messages to tables, lines and JSON.
//!
//! No IO and no gRPC calls: everything takes the proto structs (or an [`Error`]) and returns
//! a `String` or a `serde_json::Value`, so it is tested without a server.
//!
//! - Tables have a header row of upper-case names, columns separated by two spaces, text
//!   left-aligned, numbers right-aligned, no trailing spaces; an empty field shows as `-`.
//! - Fields of an unreachable member other than its membership (id, role, addresses,
//!   placement) are not meaningful and show as `-`; the status table then gets a trailing
//!   `ERROR` column with the reason.
//! - JSON mirrors the proto messages with their snake_case field names; the final object of
//!   a command that reports success or failure has `ok`.

use berth_proto::admin::{
    GcReport, GcStatusResponse, Member, Progress, ReplicationPolicies, ReplicationPolicyEntry,
    ReplicationStatusResponse, StatusResponse,
};
use serde_json::{Value, json};

use crate::change::Change;
use crate::error::{Error, code_name};

/// `status` for humans: a header line, then one row per member, ordered by id.
pub fn status_text(status: &StatusResponse) -> String {
    let mut columns = vec![
        ("ID", Align::Right),
        ("ROLE", Align::Left),
        ("URL", Align::Left),
        ("CLUSTER ADDR", Align::Left),
        ("REGION", Align::Left),
        ("ZONE", Align::Left),
        ("TERM", Align::Right),
        ("LAST LOG", Align::Right),
        ("APPLIED", Align::Right),
        ("LAG", Align::Right),
        ("RTT MS", Align::Right),
        ("REACHABLE", Align::Left),
    ];
    let any_unreachable = status.members.iter().any(|m| !m.reachable);
    if any_unreachable {
        columns.push(("ERROR", Align::Left));
    }
    let rows = by_id(&status.members)
        .into_iter()
        .map(|m| {
            let raft = |n: u64| {
                if m.reachable {
                    n.to_string()
                } else {
                    "-".into()
                }
            };
            let mut row = vec![
                m.id.to_string(),
                or_dash(&m.role),
                or_dash(&m.url),
                or_dash(&m.cluster_addr),
                or_dash(&m.region),
                or_dash(&m.zone),
                raft(m.term),
                raft(m.last_log_index),
                raft(m.applied_index),
                raft(m.lag),
                rtt(m.rtt_ms),
                yes_no(m.reachable),
            ];
            if any_unreachable {
                row.push(match (m.reachable, m.error.trim()) {
                    (true, _) => String::new(),
                    (false, "") => "-".into(),
                    (false, error) => error.to_owned(),
                });
            }
            row
        })
        .collect();
    format!(
        "{}\n{}",
        status_header(status),
        Table { columns, rows }.render()
    )
}

/// The first line of `status`: who answered, whom it knows as leader, and its Raft position.
pub fn status_header(status: &StatusResponse) -> String {
    let leader = match status.leader_id {
        0 => "none known".to_owned(),
        id => format!("node {id}"),
    };
    format!(
        "node {} answered; leader: {leader}; term: {}; last log: {}; applied: {}",
        status.node_id, status.term, status.last_log_index, status.applied_index
    )
}

/// `nodes list` for humans: one row per member, ordered by id.
pub fn members_text(members: &[Member]) -> String {
    let columns = vec![
        ("ID", Align::Right),
        ("ROLE", Align::Left),
        ("URL", Align::Left),
        ("CLUSTER ADDR", Align::Left),
        ("REGION", Align::Left),
        ("ZONE", Align::Left),
        ("REACHABLE", Align::Left),
    ];
    let rows = by_id(members)
        .into_iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                or_dash(&m.role),
                or_dash(&m.url),
                or_dash(&m.cluster_addr),
                or_dash(&m.region),
                or_dash(&m.zone),
                yes_no(m.reachable),
            ]
        })
        .collect();
    Table { columns, rows }.render()
}

/// `status --json`: `StatusResponse` field for field, members in the server's order.
pub fn status_json(status: &StatusResponse) -> Value {
    json!({
        "node_id": status.node_id,
        "term": status.term,
        "leader_id": status.leader_id,
        "last_log_index": status.last_log_index,
        "applied_index": status.applied_index,
        "members": members_json(&status.members),
    })
}

/// `nodes list --json`: an array of members, each `Member` field for field.
pub fn members_json(members: &[Member]) -> Value {
    Value::Array(members.iter().map(member_json).collect())
}

/// One `Member` as JSON, field for field.
pub fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id,
        "role": m.role,
        "url": m.url,
        "cluster_addr": m.cluster_addr,
        "region": m.region,
        "zone": m.zone,
        "reachable": m.reachable,
        "term": m.term,
        "last_log_index": m.last_log_index,
        "applied_index": m.applied_index,
        "lag": m.lag,
        "rtt_ms": m.rtt_ms,
        "error": m.error,
    })
}

/// One progress line for humans: the message, then `matched/target` when the server gave a
/// target (`catching up: 1200/5000`).
pub fn progress_text(progress: &Progress) -> String {
    let message = progress.message.trim();
    match (message, progress.target_index) {
        ("", 0) => "in progress".to_owned(),
        (message, 0) => message.to_owned(),
        ("", target) => format!("{}/{target}", progress.matched_index),
        (message, target) => format!("{message}: {}/{target}", progress.matched_index),
    }
}

/// One progress message as a JSON line, field for field.
pub fn progress_json(progress: &Progress) -> Value {
    json!({
        "message": progress.message,
        "done": progress.done,
        "matched_index": progress.matched_index,
        "target_index": progress.target_index,
    })
}

/// The last line of a successful change: `ok: ` and the server's final message, or a
/// default such as `ok: node 4 added as a learner` when that message is empty.
pub fn outcome_text(change: &Change, done: &Progress) -> String {
    format!("ok: {}", outcome_message(change, done))
}

/// The last JSON line of a successful change:
/// `{"ok":true,"operation":"add_node","node_id":4,"message":"…"}`.
pub fn outcome_json(change: &Change, done: &Progress) -> Value {
    json!({
        "ok": true,
        "operation": change.name(),
        "node_id": change.node_id(),
        "message": outcome_message(change, done),
    })
}

/// The JSON line of any failure: `{"ok":false,"error":"…","code":"FAILED_PRECONDITION"}`;
/// `error` is the same text as on stderr without the `clusterctl: ` prefix.
pub fn error_json(err: &Error) -> Value {
    json!({
        "ok": false,
        "error": err.to_string(),
        "code": code_name(err.code()),
    })
}

/// `replication status` for humans: a header line, one row per region, and with `--verbose`
/// one row per blob.
pub fn replication_text(r: &ReplicationStatusResponse) -> String {
    let mut out = format!(
        "node {} answered (applied index {}); {} manifest(s); replication {}\n",
        r.node_id,
        r.applied_index,
        r.manifests,
        if r.complete { "complete" } else { "incomplete" }
    );
    if r.stale {
        out.push_str(&format!(
            "warning: node {} could not catch up with the leader; this is its own view ({})\n",
            r.node_id, r.stale_reason
        ));
    }
    let regions = Table {
        columns: vec![
            ("REGION", Align::Left),
            ("COMPLETE", Align::Left),
            ("PENDING BLOBS", Align::Right),
            ("PENDING BYTES", Align::Right),
            ("OLDEST PENDING", Align::Right),
        ],
        rows: r
            .regions
            .iter()
            .map(|g| {
                vec![
                    or_dash(&g.region),
                    yes_no(g.complete),
                    g.pending_blobs.to_string(),
                    g.pending_bytes.to_string(),
                    if g.pending_blobs == 0 {
                        "-".to_owned()
                    } else {
                        format!("{:.1}s", g.oldest_pending_age_ms as f64 / 1000.0)
                    },
                ]
            })
            .collect(),
    };
    out.push_str(&regions.render());
    if !r.blobs.is_empty() {
        let ids = |v: &[u64]| match v {
            [] => "-".to_owned(),
            v => v.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        };
        let blobs = Table {
            columns: vec![
                ("BLOB", Align::Left),
                ("SIZE", Align::Right),
                ("HOLDERS", Align::Left),
                ("PLACED ON", Align::Left),
            ],
            rows: r
                .blobs
                .iter()
                .map(|b| {
                    vec![
                        b.digest.clone(),
                        b.size.to_string(),
                        ids(&b.holders),
                        ids(&b.wanted),
                    ]
                })
                .collect(),
        };
        out.push('\n');
        out.push_str(&blobs.render());
    }
    out
}

/// `replication status --json`: top-level `complete`, `regions` keyed by region name (each
/// with `complete`, `pending_blobs`, `pending_bytes`, `oldest_pending_age_ms`), and `blobs`
/// with `--verbose`.
pub fn replication_json(r: &ReplicationStatusResponse) -> Value {
    let regions: serde_json::Map<String, Value> = r
        .regions
        .iter()
        .map(|g| {
            (
                g.region.clone(),
                json!({
                    "complete": g.complete,
                    "pending_blobs": g.pending_blobs,
                    "pending_bytes": g.pending_bytes,
                    "oldest_pending_age_ms": g.oldest_pending_age_ms,
                }),
            )
        })
        .collect();
    let blobs: Vec<Value> = r
        .blobs
        .iter()
        .map(|b| {
            json!({
                "digest": b.digest,
                "size": b.size,
                "holders": b.holders,
                "wanted": b.wanted,
            })
        })
        .collect();
    json!({
        "complete": r.complete,
        "node_id": r.node_id,
        "applied_index": r.applied_index,
        "manifests": r.manifests,
        "stale": r.stale,
        "stale_reason": r.stale_reason,
        "regions": regions,
        "blobs": blobs,
    })
}

/// What is pending, region by region: `r2: 1 blob (5 bytes), r3: 2 blobs (10 bytes)`.
pub fn pending_summary(r: &ReplicationStatusResponse) -> String {
    let parts: Vec<String> = r
        .regions
        .iter()
        .filter(|g| !g.complete)
        .map(|g| {
            format!(
                "{}: {} blob{} ({} bytes)",
                g.region,
                g.pending_blobs,
                if g.pending_blobs == 1 { "" } else { "s" },
                g.pending_bytes
            )
        })
        .collect();
    if parts.is_empty() {
        "nothing pending".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `replication policy get` for humans: one row per pattern; `all` for every region.
pub fn policies_text(p: &ReplicationPolicies) -> String {
    if p.policies.is_empty() {
        return "no replication policies: every region holds a copy of every image\n".to_owned();
    }
    Table {
        columns: vec![
            ("PATTERN", Align::Left),
            ("REGIONS", Align::Left),
            ("ON DEMAND", Align::Left),
        ],
        rows: p
            .policies
            .iter()
            .map(|e| {
                let (regions, on_demand) = policy_cells(e);
                vec![e.pattern.clone(), regions, on_demand]
            })
            .collect(),
    }
    .render()
}

fn policy_cells(e: &ReplicationPolicyEntry) -> (String, String) {
    let p = e.policy.clone().unwrap_or_default();
    let regions = if p.regions.is_empty() {
        "all".to_owned()
    } else {
        p.regions.join(",")
    };
    let on_demand = if p.on_demand.is_empty() {
        "-".to_owned()
    } else {
        p.on_demand.join(",")
    };
    (regions, on_demand)
}

/// One policy as JSON: `{"pattern","regions","on_demand"}` (`regions` empty: every region).
pub fn policy_json(e: &ReplicationPolicyEntry) -> Value {
    let p = e.policy.clone().unwrap_or_default();
    json!({
        "pattern": e.pattern,
        "regions": p.regions,
        "on_demand": p.on_demand,
    })
}

/// `replication policy get --json`: `{"policies":[…]}`.
pub fn policies_json(p: &ReplicationPolicies) -> Value {
    json!({ "policies": p.policies.iter().map(policy_json).collect::<Vec<_>>() })
}

/// The line after `policy set`: `ok: policy of eu/** set: regions r1,r2; on demand -`.
pub fn policy_set_text(e: &ReplicationPolicyEntry) -> String {
    let (regions, on_demand) = policy_cells(e);
    format!(
        "ok: policy of {} set: regions {regions}; on demand {on_demand}",
        e.pattern
    )
}

/// A garbage collection report for humans: a headline (which pass, running, finished or
/// stopped early, what it freed or, dry, would free), then the per-node table when it
/// collected anything, and the error when it has one:
///
/// ```text
/// garbage collection pass #3 finished in 1.2s: freed 2 blobs (3072 bytes) of 2 candidates
/// NODE  BLOBS  BYTES
///    1      2   3072
/// ```
pub fn gc_report_text(r: &GcReport) -> String {
    let state = match (r.finished_ms, r.error.trim()) {
        (0, _) => "running".to_owned(),
        (end, "") => format!("finished in {}", elapsed(r.started_ms, end)),
        (end, _) => format!("stopped early after {}", elapsed(r.started_ms, end)),
    };
    let mut out = format!("{} #{} {state}: {}\n", gc_pass(r), r.id, gc_freed(r));
    if r.dry_run {
        out.push_str("dry run: nothing was removed\n");
    }
    if r.counted {
        out.push_str("it first built the reference counts\n");
    }
    if r.retention_deleted + r.retention_skipped + r.recycled_purged > 0 {
        let verb = if r.dry_run { "would delete" } else { "deleted" };
        out.push_str(&format!(
            "retention {verb} {} untagged manifest(s) ({} left: locked); {} soft-deleted \
             manifest(s) left the recycle bin\n",
            r.retention_deleted, r.retention_skipped, r.recycled_purged
        ));
    }
    if !r.per_node.is_empty() {
        let mut nodes: Vec<_> = r.per_node.iter().collect();
        nodes.sort_by_key(|n| n.node_id);
        let table = Table {
            columns: vec![
                ("NODE", Align::Right),
                ("BLOBS", Align::Right),
                ("BYTES", Align::Right),
            ],
            rows: nodes
                .into_iter()
                .map(|n| {
                    vec![
                        n.node_id.to_string(),
                        n.blobs.to_string(),
                        n.bytes.to_string(),
                    ]
                })
                .collect(),
        };
        out.push_str(&table.render());
    }
    let error = r.error.trim();
    if !error.is_empty() {
        out.push_str(&format!("error: {error}\n"));
    }
    out
}

/// One progress line of `gc run --wait`:
/// `pass #3: 2 candidates, freed 1 blob (1024 bytes) so far`.
pub fn gc_progress_text(r: &GcReport) -> String {
    format!("pass #{}: {}", r.id, gc_freed(r))
}

/// What `gc run` without `--wait` prints: which pass started where, and how to follow it.
pub fn gc_started_text(r: &GcReport, endpoint: &str) -> String {
    format!(
        "started {} #{} at {endpoint}; follow it with `clusterctl --endpoint {endpoint} gc \
         status` (or use `gc run --wait`)",
        gc_pass(r),
        r.id
    )
}

/// A report as JSON, `GcReport` field for field (`per_node` an array of `node_id`, `blobs`,
/// `bytes`), with `ok`: false when it has an error.
pub fn gc_report_json(r: &GcReport) -> Value {
    json!({
        "ok": r.error.is_empty(),
        "id": r.id,
        "dry_run": r.dry_run,
        "started_ms": r.started_ms,
        "finished_ms": r.finished_ms,
        "candidates": r.candidates,
        "blobs": r.blobs,
        "bytes": r.bytes,
        "per_node": r.per_node.iter().map(|n| json!({
            "node_id": n.node_id,
            "blobs": n.blobs,
            "bytes": n.bytes,
        })).collect::<Vec<_>>(),
        "counted": r.counted,
        "retention_deleted": r.retention_deleted,
        "retention_skipped": r.retention_skipped,
        "recycled_purged": r.recycled_purged,
        "error": r.error,
    })
}

/// `gc status` for humans: who answered, its current or last pass (or that it has run
/// none), and what its reaper removed.
pub fn gc_status_text(s: &GcStatusResponse) -> String {
    let mut out = format!("node {} answered\n", s.node_id);
    match &s.last {
        Some(r) => out.push_str(&gc_report_text(r)),
        None => out.push_str("no garbage collection has run on this node since it started\n"),
    }
    out.push_str(&format!(
        "reaper: removed {} ({} bytes) since the node started\n",
        plural(s.reaper_removed_files, "blob file"),
        s.reaper_removed_bytes
    ));
    out
}

/// `gc status --json`: `GcStatusResponse` field for field; `last` is null when no pass ran.
pub fn gc_status_json(s: &GcStatusResponse) -> Value {
    json!({
        "node_id": s.node_id,
        "last": s.last.as_ref().map(gc_report_json),
        "reaper_removed_files": s.reaper_removed_files,
        "reaper_removed_bytes": s.reaper_removed_bytes,
    })
}

/// `garbage collection pass` or `dry garbage collection pass`.
fn gc_pass(r: &GcReport) -> &'static str {
    if r.dry_run {
        "dry garbage collection pass"
    } else {
        "garbage collection pass"
    }
}

/// `freed 2 blobs (3072 bytes) of 2 candidates`, `would free …` when dry, `… so far` while
/// it runs.
fn gc_freed(r: &GcReport) -> String {
    format!(
        "{} {} ({} bytes) of {}{}",
        if r.dry_run { "would free" } else { "freed" },
        plural(r.blobs, "blob"),
        r.bytes,
        plural(r.candidates, "candidate"),
        if r.finished_ms == 0 { " so far" } else { "" }
    )
}

/// `1 blob`, `2 blobs`.
pub(crate) fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The time from `start_ms` to `end_ms` in seconds to one decimal: `1.2s`.
fn elapsed(start_ms: u64, end_ms: u64) -> String {
    format!("{:.1}s", end_ms.saturating_sub(start_ms) as f64 / 1000.0)
}

fn outcome_message(change: &Change, done: &Progress) -> String {
    match done.message.trim() {
        "" => change.done_text(),
        message => message.to_owned(),
    }
}

fn by_id(members: &[Member]) -> Vec<&Member> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    sorted
}

pub(crate) fn or_dash(s: &str) -> String {
    match s.trim() {
        "" => "-".to_owned(),
        s => s.to_owned(),
    }
}

/// A round trip in milliseconds to one decimal; `-` when not measured (0: the answering node
/// itself, or a member it has not probed yet).
fn rtt(ms: f64) -> String {
    if ms > 0.0 {
        format!("{ms:.1}")
    } else {
        "-".into()
    }
}

pub(crate) fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// How a column's cells are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A text table: a header row and rows of cells, rendered with aligned columns.
pub(crate) struct Table {
    pub(crate) columns: Vec<(&'static str, Align)>,
    pub(crate) rows: Vec<Vec<String>>,
}

impl Table {
    /// Each column as wide as its widest cell (in chars), two spaces between columns,
    /// trailing spaces trimmed, one `\n` after every line.
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<&str> = self.columns.iter().map(|(h, _)| *h).collect();
        let mut out = String::new();
        for row in std::iter::once(header).chain(
            self.rows
                .iter()
                .map(|r| r.iter().map(String::as_str).collect()),
        ) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(&self.columns)
                .map(|((cell, &width), (_, align))| match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str, reachable: bool) -> Member {
        Member {
            id,
            url: format!("http://10.0.0.{id}:5000"),
            cluster_addr: format!("10.0.0.{id}:7000"),
            region: if id == 3 { "us-east" } else { "eu-west" }.into(),
            zone: format!("z{id}"),
            role: role.into(),
            reachable,
            term: if reachable { 7 } else { 0 },
            last_log_index: if reachable { 5000 - (id - 1) * 100 } else { 0 },
            applied_index: if reachable { 5000 - (id - 1) * 100 } else { 0 },
            lag: if reachable { (id - 1) * 100 } else { 0 },
            // Measured by node 2, the one that answers in these tests.
            rtt_ms: if id == 1 { 0.42 } else { 0.0 },
            error: if reachable {
                String::new()
            } else {
                "connection refused".into()
            },
        }
    }

    fn three_members() -> StatusResponse {
        StatusResponse {
            node_id: 2,
            term: 7,
            leader_id: 1,
            last_log_index: 4900,
            applied_index: 4900,
            // Out of order on purpose: the table sorts by id.
            members: vec![
                member(2, "voter", true),
                member(1, "leader", true),
                member(3, "learner", false),
            ],
        }
    }

    #[test]
    fn status_table_aligns_columns_and_shows_unreachable_members() {
        let text = status_text(&three_members());
        let expected = "\
node 2 answered; leader: node 1; term: 7; last log: 4900; applied: 4900
ID  ROLE     URL                   CLUSTER ADDR   REGION   ZONE  TERM  LAST LOG  APPLIED  LAG  RTT MS  REACHABLE  ERROR
 1  leader   http://10.0.0.1:5000  10.0.0.1:7000  eu-west  z1       7      5000     5000    0     0.4  yes
 2  voter    http://10.0.0.2:5000  10.0.0.2:7000  eu-west  z2       7      4900     4900  100       -  yes
 3  learner  http://10.0.0.3:5000  10.0.0.3:7000  us-east  z3       -         -        -    -       -  no         connection refused
";
        assert_eq!(text, expected);
    }

    #[test]
    fn status_table_without_unreachable_members_has_no_error_column() {
        let mut status = three_members();
        status.members[2] = member(3, "learner", true);
        status.leader_id = 0;
        let text = status_text(&status);
        assert!(text.starts_with("node 2 answered; leader: none known; term: 7"));
        assert!(!text.contains("ERROR"));
        let header = text.lines().nth(1).unwrap();
        assert!(header.ends_with("REACHABLE"));
        // Every line is as long as the header or shorter only by the trimmed "yes" padding.
        for line in text.lines().skip(2) {
            assert!(line.ends_with("yes"), "{line:?}");
            assert_eq!(line.len(), header.len() - "REACHABLE".len() + "yes".len());
        }
    }

    #[test]
    fn empty_fields_show_as_dash() {
        let mut m = member(5, "", true);
        m.url.clear();
        let text = members_text(&[m]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["5", "-", "-", "10.0.0.5:7000", "eu-west", "z5", "yes"]
        );
    }

    #[test]
    fn nodes_table_lists_membership_only() {
        let text = members_text(&three_members().members);
        let expected = "\
ID  ROLE     URL                   CLUSTER ADDR   REGION   ZONE  REACHABLE
 1  leader   http://10.0.0.1:5000  10.0.0.1:7000  eu-west  z1    yes
 2  voter    http://10.0.0.2:5000  10.0.0.2:7000  eu-west  z2    yes
 3  learner  http://10.0.0.3:5000  10.0.0.3:7000  us-east  z3    no
";
        assert_eq!(text, expected);
    }

    #[test]
    fn status_json_mirrors_the_response() {
        let value = status_json(&three_members());
        assert_eq!(value["node_id"], 2);
        assert_eq!(value["term"], 7);
        assert_eq!(value["leader_id"], 1);
        assert_eq!(value["last_log_index"], 4900);
        assert_eq!(value["applied_index"], 4900);
        let members = value["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(
            members[2],
            json!({
                "id": 3, "role": "learner", "url": "http://10.0.0.3:5000",
                "cluster_addr": "10.0.0.3:7000", "region": "us-east", "zone": "z3",
                "reachable": false, "term": 0, "last_log_index": 0, "applied_index": 0,
                "lag": 0, "rtt_ms": 0.0, "error": "connection refused",
            })
        );
        assert_eq!(members_json(&three_members().members), value["members"]);
    }

    #[test]
    fn progress_lines_show_the_index_when_there_is_a_target() {
        let p = |message: &str, matched, target| Progress {
            message: message.into(),
            done: false,
            matched_index: matched,
            target_index: target,
        };
        assert_eq!(
            progress_text(&p("catching up", 1200, 5000)),
            "catching up: 1200/5000"
        );
        assert_eq!(
            progress_text(&p("adding node 4 as a learner", 0, 0)),
            "adding node 4 as a learner"
        );
        assert_eq!(progress_text(&p("", 3, 9)), "3/9");
        assert_eq!(progress_text(&p("", 0, 0)), "in progress");
        assert_eq!(
            progress_json(&p("catching up", 1200, 5000)),
            json!({"message": "catching up", "done": false, "matched_index": 1200, "target_index": 5000})
        );
    }

    #[test]
    fn outcome_uses_the_server_message_or_a_default() {
        let add = Change::Add(berth_proto::admin::AddNodeRequest {
            id: 4,
            ..Default::default()
        });
        let silent = Progress {
            done: true,
            ..Default::default()
        };
        assert_eq!(outcome_text(&add, &silent), "ok: node 4 added as a learner");
        let said = Progress {
            message: "node 4 is a learner at index 5000".into(),
            done: true,
            ..Default::default()
        };
        assert_eq!(
            outcome_text(&add, &said),
            "ok: node 4 is a learner at index 5000"
        );
        assert_eq!(
            outcome_json(&Change::Remove { id: 3 }, &silent),
            json!({"ok": true, "operation": "remove_node", "node_id": 3, "message": "node 3 removed"})
        );
    }

    fn replication(complete_r3: bool) -> ReplicationStatusResponse {
        use berth_proto::admin::{BlobReplication, RegionReplication};
        let region = |name: &str, complete: bool| RegionReplication {
            region: name.into(),
            complete,
            pending_blobs: if complete { 0 } else { 2 },
            pending_bytes: if complete { 0 } else { 2048 },
            oldest_pending_age_ms: if complete { 0 } else { 1500 },
        };
        ReplicationStatusResponse {
            node_id: 2,
            complete: complete_r3,
            regions: vec![region("r1", true), region("r3", complete_r3)],
            blobs: vec![BlobReplication {
                digest: "sha256:ab".into(),
                size: 1024,
                holders: vec![1],
                wanted: vec![1, 3],
            }],
            manifests: 1,
            stale: false,
            stale_reason: String::new(),
            applied_index: 40,
        }
    }

    #[test]
    fn replication_status_as_table_and_json() {
        let text = replication_text(&replication(false));
        let expected = "\
node 2 answered (applied index 40); 1 manifest(s); replication incomplete
REGION  COMPLETE  PENDING BLOBS  PENDING BYTES  OLDEST PENDING
r1      yes                   0              0               -
r3      no                    2           2048            1.5s

BLOB       SIZE  HOLDERS  PLACED ON
sha256:ab  1024  1        1,3
";
        assert_eq!(text, expected);
        let v = replication_json(&replication(false));
        assert_eq!(v["complete"], false);
        assert_eq!(
            v["regions"]["r3"],
            json!({"complete": false, "pending_blobs": 2, "pending_bytes": 2048, "oldest_pending_age_ms": 1500})
        );
        assert_eq!(v["regions"]["r1"]["complete"], true);
        assert_eq!(v["blobs"][0]["wanted"], json!([1, 3]));
        assert_eq!(
            pending_summary(&replication(false)),
            "r3: 2 blobs (2048 bytes)"
        );
        assert_eq!(pending_summary(&replication(true)), "nothing pending");
    }

    #[test]
    fn policies_as_table_and_json() {
        use berth_proto::admin::ReplicationPolicy;
        let entry = |pattern: &str, regions: &[&str], on_demand: &[&str]| ReplicationPolicyEntry {
            pattern: pattern.into(),
            policy: Some(ReplicationPolicy {
                regions: regions.iter().map(|r| r.to_string()).collect(),
                on_demand: on_demand.iter().map(|r| r.to_string()).collect(),
            }),
        };
        let all = ReplicationPolicies {
            policies: vec![
                entry("**", &[], &["r3"]),
                entry("eu/**", &["r1", "r2"], &[]),
            ],
        };
        assert_eq!(
            policies_text(&all),
            "\
PATTERN  REGIONS  ON DEMAND
**       all      r3
eu/**    r1,r2    -
"
        );
        assert_eq!(
            policies_json(&all)["policies"][1],
            json!({"pattern": "eu/**", "regions": ["r1", "r2"], "on_demand": []})
        );
        assert!(policies_text(&ReplicationPolicies::default()).starts_with("no replication"));
        assert_eq!(
            policy_set_text(&entry("eu/**", &["r1", "r2"], &[])),
            "ok: policy of eu/** set: regions r1,r2; on demand -"
        );
    }

    fn gc_report(dry_run: bool, error: &str) -> GcReport {
        use berth_proto::admin::GcNodeFreed;
        let freed = |node_id, blobs, bytes| GcNodeFreed {
            node_id,
            blobs,
            bytes,
        };
        GcReport {
            id: 3,
            dry_run,
            started_ms: 1_000,
            finished_ms: 2_250,
            candidates: 3,
            blobs: 2,
            bytes: 3072,
            // Out of order on purpose: the table sorts by node id. A dry run has none.
            per_node: if dry_run {
                vec![]
            } else {
                vec![freed(2, 1, 1024), freed(1, 2, 3072)]
            },
            counted: false,
            error: error.into(),
            retention_deleted: 0,
            retention_skipped: 0,
            recycled_purged: 0,
        }
    }

    #[test]
    fn a_gc_report_says_what_retention_and_the_recycle_bin_did() {
        let mut r = gc_report(false, "");
        r.per_node.clear();
        (r.retention_deleted, r.retention_skipped, r.recycled_purged) = (4, 1, 2);
        assert!(
            gc_report_text(&r).ends_with(
                "retention deleted 4 untagged manifest(s) (1 left: locked); 2 soft-deleted \
                 manifest(s) left the recycle bin\n"
            ),
            "{}",
            gc_report_text(&r)
        );
        let v = gc_report_json(&r);
        assert_eq!(
            (v["retention_deleted"].clone(), v["recycled_purged"].clone()),
            (json!(4), json!(2))
        );
        r.dry_run = true;
        assert!(gc_report_text(&r).contains("retention would delete 4"));
    }

    #[test]
    fn gc_report_shows_what_was_freed_per_node() {
        assert_eq!(
            gc_report_text(&gc_report(false, "")),
            "\
garbage collection pass #3 finished in 1.2s: freed 2 blobs (3072 bytes) of 3 candidates
NODE  BLOBS  BYTES
   1      2   3072
   2      1   1024
"
        );
        let mut first = gc_report(false, "");
        first.counted = true;
        first.blobs = 1;
        first.candidates = 1;
        first.per_node.clear();
        assert_eq!(
            gc_report_text(&first),
            "\
garbage collection pass #3 finished in 1.2s: freed 1 blob (3072 bytes) of 1 candidate
it first built the reference counts
"
        );
        let v = gc_report_json(&gc_report(false, ""));
        assert_eq!(v["ok"], true);
        assert_eq!(v["blobs"], 2);
        assert_eq!(v["bytes"], 3072);
        assert_eq!(v["finished_ms"], 2250);
        assert_eq!(
            v["per_node"][1],
            json!({"node_id": 1, "blobs": 2, "bytes": 3072})
        );
    }

    #[test]
    fn a_dry_gc_report_says_would_free() {
        assert_eq!(
            gc_report_text(&gc_report(true, "")),
            "\
dry garbage collection pass #3 finished in 1.2s: would free 2 blobs (3072 bytes) of 3 candidates
dry run: nothing was removed
"
        );
        assert_eq!(gc_report_json(&gc_report(true, ""))["dry_run"], true);
    }

    #[test]
    fn a_gc_report_with_an_error_says_it_stopped_early() {
        let text = gc_report_text(&gc_report(true, "the reference counts are not built yet"));
        assert_eq!(
            text,
            "\
dry garbage collection pass #3 stopped early after 1.2s: would free 2 blobs (3072 bytes) of 3 candidates
dry run: nothing was removed
error: the reference counts are not built yet
"
        );
        let text = gc_report_text(&gc_report(false, "no quorum"));
        assert!(
            text.starts_with("garbage collection pass #3 stopped early"),
            "{text}"
        );
        assert!(
            text.ends_with("   2      1   1024\nerror: no quorum\n"),
            "{text}"
        );
        let v = gc_report_json(&gc_report(false, "no quorum"));
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "no quorum");
    }

    #[test]
    fn a_running_gc_pass_shows_what_it_did_so_far() {
        let mut r = gc_report(false, "");
        r.finished_ms = 0;
        r.blobs = 1;
        r.bytes = 1024;
        r.per_node.clear();
        assert_eq!(
            gc_progress_text(&r),
            "pass #3: freed 1 blob (1024 bytes) of 3 candidates so far"
        );
        assert_eq!(
            gc_report_text(&r),
            "garbage collection pass #3 running: freed 1 blob (1024 bytes) of 3 candidates so far\n"
        );
        r.dry_run = true;
        assert_eq!(
            gc_started_text(&r, "10.0.0.1:7000"),
            "started dry garbage collection pass #3 at 10.0.0.1:7000; follow it with \
             `clusterctl --endpoint 10.0.0.1:7000 gc status` (or use `gc run --wait`)"
        );
    }

    #[test]
    fn gc_status_shows_the_last_pass_and_the_reaper() {
        let none = GcStatusResponse {
            node_id: 2,
            last: None,
            reaper_removed_files: 1,
            reaper_removed_bytes: 1024,
        };
        assert_eq!(
            gc_status_text(&none),
            "\
node 2 answered
no garbage collection has run on this node since it started
reaper: removed 1 blob file (1024 bytes) since the node started
"
        );
        assert_eq!(
            gc_status_json(&none),
            json!({"node_id": 2, "last": null, "reaper_removed_files": 1, "reaper_removed_bytes": 1024})
        );
        let last = GcStatusResponse {
            last: Some(gc_report(false, "")),
            reaper_removed_files: 0,
            reaper_removed_bytes: 0,
            ..none
        };
        let text = gc_status_text(&last);
        assert!(
            text.starts_with("node 2 answered\ngarbage collection pass #3 finished"),
            "{text}"
        );
        assert!(text.ends_with("reaper: removed 0 blob files (0 bytes) since the node started\n"));
        assert_eq!(gc_status_json(&last)["last"]["id"], 3);
    }

    #[test]
    fn error_json_keeps_the_code() {
        let err = Error::Rpc {
            what: "remove node 1".into(),
            status: tonic::Status::failed_precondition("cannot remove the last voter"),
        };
        assert_eq!(
            error_json(&err),
            json!({
                "ok": false,
                "error": "failed to remove node 1: refused: cannot remove the last voter",
                "code": "FAILED_PRECONDITION",
            })
        );
    }
}
