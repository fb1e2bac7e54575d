//! Output of the lifecycle commands (`repos`, `soft-delete`, `retention`, `namespaces`,
//! `purge`): pure functions from the admin proto messages to tables, `key: value` lines and
//! JSON, with the conventions of [`crate::render`] (tables with an upper-case header, `-` for
//! an empty field; JSON field for field with snake_case names; `ok` on the object of a
//! change). Times are RFC 3339 in UTC for humans and ms since the epoch in JSON; a limit that
//! is not set is `none` for humans and 0 in JSON.

use berth_proto::admin::{
    Attributes, AttributesEntry, DeletedManifests, Namespace, Namespaces, PurgeReport,
    RepositoryAttributes, RestoreManifestResponse, RetentionPolicies, SoftDeleteSettings,
};
use serde_json::{Value, json};

use crate::cli_auth::format_time;
use crate::render::{Align, Table, or_dash, plural, yes_no};

/// The four switches, in `--…-enabled` order.
fn switches(a: &Attributes) -> [(&'static str, bool); 4] {
    [
        ("write", a.write_enabled),
        ("delete", a.delete_enabled),
        ("read", a.read_enabled),
        ("list", a.list_enabled),
    ]
}

fn attributes_json(a: &Attributes) -> Value {
    json!({
        "write_enabled": a.write_enabled,
        "delete_enabled": a.delete_enabled,
        "read_enabled": a.read_enabled,
        "list_enabled": a.list_enabled,
    })
}

/// `REPO`, `REPO:TAG` or `REPO@DIGEST` (`tag` and `digest` empty when not given).
pub fn reference(repository: &str, tag: &str, digest: &str) -> String {
    match (tag, digest) {
        ("", "") => repository.to_owned(),
        (tag, "") => format!("{repository}:{tag}"),
        (_, digest) => format!("{repository}@{digest}"),
    }
}

/// `repos update` for humans:
///
/// ```text
/// ok: attributes of app:v1 updated
/// write-enabled: no
/// delete-enabled: yes
/// read-enabled: yes
/// list-enabled: yes
/// ```
pub fn attributes_updated_text(e: &AttributesEntry) -> String {
    let mut out = format!(
        "ok: attributes of {} updated\n",
        reference(&e.repository, &e.tag, &e.digest)
    );
    for (name, on) in switches(&e.attributes.unwrap_or_default()) {
        out.push_str(&format!("{name}-enabled: {}\n", yes_no(on)));
    }
    out
}

/// `repos update --json`: the entry, with `ok`.
pub fn attributes_entry_json(e: &AttributesEntry) -> Value {
    json!({
        "ok": true,
        "repository": e.repository,
        "tag": e.tag,
        "digest": e.digest,
        "attributes": attributes_json(&e.attributes.unwrap_or_default()),
    })
}

/// `repos show` for humans: the repository's own attributes, then a table of the tags and
/// manifests with attributes set (or that there are none).
pub fn repository_attributes_text(r: &RepositoryAttributes) -> String {
    let mut out = format!("repository: {}\n", r.repository);
    for (name, on) in switches(&r.attributes.unwrap_or_default()) {
        out.push_str(&format!("{name}-enabled: {}\n", yes_no(on)));
    }
    if r.entries.is_empty() {
        out.push_str("no tag or manifest has attributes set\n");
        return out;
    }
    let rows = r
        .entries
        .iter()
        .map(|e| {
            let a = e.attributes.unwrap_or_default();
            let mut row = vec![if e.tag.is_empty() {
                format!("@{}", e.digest)
            } else {
                format!(":{}", e.tag)
            }];
            row.extend(switches(&a).into_iter().map(|(_, on)| yes_no(on)));
            row
        })
        .collect();
    let table = Table {
        columns: vec![
            ("TAG/MANIFEST", Align::Left),
            ("WRITE", Align::Left),
            ("DELETE", Align::Left),
            ("READ", Align::Left),
            ("LIST", Align::Left),
        ],
        rows,
    };
    out.push_str(&table.render());
    out
}

/// `repos show --json`.
pub fn repository_attributes_json(r: &RepositoryAttributes) -> Value {
    json!({
        "repository": r.repository,
        "attributes": attributes_json(&r.attributes.unwrap_or_default()),
        "entries": r.entries.iter().map(|e| json!({
            "tag": e.tag,
            "digest": e.digest,
            "attributes": attributes_json(&e.attributes.unwrap_or_default()),
        })).collect::<Vec<_>>(),
    })
}

/// `repos deleted` for humans: one row per soft-deleted manifest.
pub fn deleted_text(repository: &str, d: &DeletedManifests) -> String {
    if d.manifests.is_empty() {
        return format!("no soft-deleted manifests in {repository}\n");
    }
    let rows = d
        .manifests
        .iter()
        .map(|m| {
            vec![
                m.digest.clone(),
                or_dash(&m.tags.join(",")),
                format_time(m.deleted_ms),
                format_time(m.expires_ms),
            ]
        })
        .collect();
    Table {
        columns: vec![
            ("DIGEST", Align::Left),
            ("TAGS", Align::Left),
            ("DELETED", Align::Left),
            ("RESTORABLE UNTIL", Align::Left),
        ],
        rows,
    }
    .render()
}

/// `repos deleted --json`.
pub fn deleted_json(d: &DeletedManifests) -> Value {
    json!({
        "manifests": d.manifests.iter().map(|m| json!({
            "repository": m.repository,
            "digest": m.digest,
            "tags": m.tags,
            "deleted_ms": m.deleted_ms,
            "expires_ms": m.expires_ms,
        })).collect::<Vec<_>>(),
    })
}

/// `repos restore` for humans.
pub fn restored_text(r: &RestoreManifestResponse) -> String {
    match r.tag.as_str() {
        "" => format!(
            "ok: {}@{} restored with the tags it had\n",
            r.repository, r.digest
        ),
        tag => format!("ok: {}@{} restored as {tag}\n", r.repository, r.digest),
    }
}

/// `repos restore --json`.
pub fn restored_json(r: &RestoreManifestResponse) -> Value {
    json!({"ok": true, "repository": r.repository, "digest": r.digest, "tag": r.tag})
}

/// `soft-delete show|set|off` for humans.
pub fn soft_delete_text(s: &SoftDeleteSettings) -> String {
    match s.retention_days {
        0 => "soft delete: off (deletes are final)\n".to_owned(),
        d => format!(
            "soft delete: on; a deleted manifest stays restorable for {}\n",
            plural(u64::from(d), "day")
        ),
    }
}

/// `soft-delete … --json`.
pub fn soft_delete_json(s: &SoftDeleteSettings) -> Value {
    json!({"enabled": s.retention_days > 0, "retention_days": s.retention_days})
}

/// `retention list` (and what `set` and `clear` leave) for humans.
pub fn retention_text(p: &RetentionPolicies) -> String {
    if p.policies.is_empty() {
        return "no retention policies\n".to_owned();
    }
    Table {
        columns: vec![("PATTERN", Align::Left), ("UNTAGGED DAYS", Align::Right)],
        rows: p
            .policies
            .iter()
            .map(|e| vec![e.pattern.clone(), e.untagged_days.to_string()])
            .collect(),
    }
    .render()
}

/// `retention … --json`.
pub fn retention_json(p: &RetentionPolicies) -> Value {
    json!({
        "policies": p.policies.iter().map(|e| json!({
            "pattern": e.pattern,
            "untagged_days": e.untagged_days,
        })).collect::<Vec<_>>(),
    })
}

/// A limit for humans: `none` for 0.
fn limit(n: u64) -> String {
    if n == 0 {
        "none".to_owned()
    } else {
        n.to_string()
    }
}

/// `used of limit`, or `used` alone when there is no limit.
fn used_of(used: u64, max: u64) -> String {
    if max == 0 {
        used.to_string()
    } else {
        format!("{used} of {max}")
    }
}

/// `namespaces get|set` for humans: `key: value` lines.
pub fn namespace_text(n: &Namespace) -> String {
    format!(
        "namespace: {}\nbytes: {}\nrepositories: {}\npulls-per-sec: {}\npushes-per-sec: {}\n",
        n.namespace,
        used_of(n.used_bytes, n.quota_bytes),
        used_of(n.repositories, n.max_repositories),
        limit(u64::from(n.pulls_per_sec)),
        limit(u64::from(n.pushes_per_sec)),
    )
}

/// `namespaces get|set --json`: `Namespace` field for field.
pub fn namespace_json(n: &Namespace) -> Value {
    json!({
        "namespace": n.namespace,
        "quota_bytes": n.quota_bytes,
        "max_repositories": n.max_repositories,
        "pulls_per_sec": n.pulls_per_sec,
        "pushes_per_sec": n.pushes_per_sec,
        "used_bytes": n.used_bytes,
        "repositories": n.repositories,
    })
}

/// `namespaces list` for humans: one row per namespace, usage against its limits.
pub fn namespaces_text(n: &Namespaces) -> String {
    if n.namespaces.is_empty() {
        return "no namespaces\n".to_owned();
    }
    Table {
        columns: vec![
            ("NAMESPACE", Align::Left),
            ("BYTES USED", Align::Right),
            ("QUOTA", Align::Right),
            ("REPOS", Align::Right),
            ("MAX REPOS", Align::Right),
            ("PULLS/S", Align::Right),
            ("PUSHES/S", Align::Right),
        ],
        rows: n
            .namespaces
            .iter()
            .map(|n| {
                vec![
                    n.namespace.clone(),
                    n.used_bytes.to_string(),
                    limit(n.quota_bytes),
                    n.repositories.to_string(),
                    limit(n.max_repositories),
                    limit(u64::from(n.pulls_per_sec)),
                    limit(u64::from(n.pushes_per_sec)),
                ]
            })
            .collect(),
    }
    .render()
}

/// `namespaces list --json`.
pub fn namespaces_json(n: &Namespaces) -> Value {
    json!({"namespaces": n.namespaces.iter().map(namespace_json).collect::<Vec<_>>()})
}

/// `purge` for humans: counts, then what was deleted and what was skipped (and why).
///
/// ```text
/// purge: deleted 2 tags and 1 untagged manifest, skipped 1
/// deleted tag app:v2 (sha256:…)
/// deleted manifest app@sha256:…
/// skipped app:v1: the tag is locked
/// ```
pub fn purge_text(r: &PurgeReport) -> String {
    let (prefix, verb) = if r.dry_run {
        ("purge (dry run, nothing was deleted)", "would delete")
    } else {
        ("purge", "deleted")
    };
    let (tags, manifests, skipped) = purge_totals(r);
    let mut out = format!(
        "{prefix}: {verb} {} and {}, skipped {skipped}\n",
        plural(tags, "tag"),
        plural(manifests, "untagged manifest"),
    );
    for t in &r.tags {
        out.push_str(&format!(
            "{verb} tag {}:{} ({})\n",
            t.repository, t.tag, t.digest
        ));
    }
    more(&mut out, tags, r.tags.len(), "tags");
    for m in &r.manifests {
        out.push_str(&format!("{verb} manifest {}@{}\n", m.repository, m.digest));
    }
    more(&mut out, manifests, r.manifests.len(), "manifests");
    for s in &r.skipped {
        out.push_str(&format!("skipped {}: {}\n", s.what, s.why));
    }
    more(&mut out, skipped, r.skipped.len(), "skipped items");
    out
}

/// The totals of a purge report (a server that sends none: the lists' lengths).
fn purge_totals(r: &PurgeReport) -> (u64, u64, u64) {
    let total = |t: u64, listed: usize| t.max(listed as u64);
    (
        total(r.tags_total, r.tags.len()),
        total(r.manifests_total, r.manifests.len()),
        total(r.skipped_total, r.skipped.len()),
    )
}

/// "… and N more" when a list was cut.
fn more(out: &mut String, total: u64, listed: usize, what: &str) {
    if total > listed as u64 {
        out.push_str(&format!(
            "… and {} more {what} (not listed)\n",
            total - listed as u64
        ));
    }
}

/// `purge --json`: the report field for field, with the counts and `ok`.
pub fn purge_json(r: &PurgeReport) -> Value {
    json!({
        "ok": true,
        "dry_run": r.dry_run,
        "deleted_tags": purge_totals(r).0,
        "deleted_manifests": purge_totals(r).1,
        "skipped_count": purge_totals(r).2,
        "tags": r.tags.iter().map(|t| json!({
            "repository": t.repository,
            "tag": t.tag,
            "digest": t.digest,
        })).collect::<Vec<_>>(),
        "manifests": r.manifests.iter().map(|m| json!({
            "repository": m.repository,
            "digest": m.digest,
        })).collect::<Vec<_>>(),
        "skipped": r.skipped.iter().map(|s| json!({"what": s.what, "why": s.why})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::admin::{
        DeletedManifest, PurgeSkipped, PurgedManifest, PurgedTag, RetentionPolicyEntry,
    };

    fn locked() -> Attributes {
        Attributes {
            write_enabled: false,
            delete_enabled: true,
            read_enabled: true,
            list_enabled: true,
        }
    }

    #[test]
    fn an_update_names_its_target_and_lists_the_switches() {
        let e = AttributesEntry {
            repository: "app".into(),
            tag: "v1".into(),
            digest: String::new(),
            attributes: Some(locked()),
        };
        assert_eq!(
            attributes_updated_text(&e),
            "ok: attributes of app:v1 updated\nwrite-enabled: no\ndelete-enabled: yes\n\
             read-enabled: yes\nlist-enabled: yes\n"
        );
        let j = attributes_entry_json(&e);
        assert_eq!(j["ok"], true);
        assert_eq!(j["attributes"]["write_enabled"], false);
        assert_eq!(j["tag"], "v1");
    }

    #[test]
    fn show_tables_tags_and_manifests() {
        let r = RepositoryAttributes {
            repository: "app".into(),
            attributes: Some(Attributes {
                write_enabled: true,
                ..locked()
            }),
            entries: vec![
                AttributesEntry {
                    repository: "app".into(),
                    tag: "v1".into(),
                    digest: String::new(),
                    attributes: Some(locked()),
                },
                AttributesEntry {
                    repository: "app".into(),
                    tag: String::new(),
                    digest: "sha256:ab".into(),
                    attributes: Some(locked()),
                },
            ],
        };
        let text = repository_attributes_text(&r);
        assert!(
            text.starts_with("repository: app\nwrite-enabled: yes\n"),
            "{text}"
        );
        assert!(
            text.contains("TAG/MANIFEST  WRITE  DELETE  READ  LIST\n"),
            "{text}"
        );
        assert!(
            text.contains(":v1           no     yes     yes   yes\n"),
            "{text}"
        );
        assert!(text.contains("@sha256:ab    no"), "{text}");
        let none = RepositoryAttributes {
            entries: vec![],
            ..r.clone()
        };
        assert!(
            repository_attributes_text(&none).ends_with("no tag or manifest has attributes set\n")
        );
        assert_eq!(
            repository_attributes_json(&r)["entries"][1]["digest"],
            "sha256:ab"
        );
    }

    #[test]
    fn deleted_manifests_show_tags_and_times() {
        let d = DeletedManifests {
            manifests: vec![DeletedManifest {
                repository: "app".into(),
                digest: "sha256:ab".into(),
                tags: vec!["v1".into(), "latest".into()],
                deleted_ms: 0,
                expires_ms: 86_400_000,
            }],
        };
        let text = deleted_text("app", &d);
        assert!(text.starts_with("DIGEST     TAGS       DELETED"), "{text}");
        assert!(
            text.contains("v1,latest  1970-01-01T00:00:00Z  1970-01-02T00:00:00Z"),
            "{text}"
        );
        assert_eq!(
            deleted_text("app", &DeletedManifests::default()),
            "no soft-deleted manifests in app\n"
        );
        assert_eq!(deleted_json(&d)["manifests"][0]["expires_ms"], 86_400_000);
        let r = RestoreManifestResponse {
            repository: "app".into(),
            digest: "sha256:ab".into(),
            tag: String::new(),
        };
        assert_eq!(
            restored_text(&r),
            "ok: app@sha256:ab restored with the tags it had\n"
        );
        assert_eq!(restored_json(&r)["ok"], true);
    }

    #[test]
    fn soft_delete_and_retention() {
        assert_eq!(
            soft_delete_text(&SoftDeleteSettings { retention_days: 7 }),
            "soft delete: on; a deleted manifest stays restorable for 7 days\n"
        );
        assert!(soft_delete_text(&SoftDeleteSettings::default()).contains("off"));
        assert_eq!(
            soft_delete_json(&SoftDeleteSettings::default())["enabled"],
            false
        );
        let p = RetentionPolicies {
            policies: vec![RetentionPolicyEntry {
                pattern: "**".into(),
                untagged_days: 30,
            }],
        };
        assert_eq!(
            retention_text(&p),
            "PATTERN  UNTAGGED DAYS\n**                  30\n"
        );
        assert_eq!(
            retention_text(&RetentionPolicies::default()),
            "no retention policies\n"
        );
        assert_eq!(retention_json(&p)["policies"][0]["untagged_days"], 30);
    }

    #[test]
    fn namespaces_show_usage_against_limits() {
        let n = Namespace {
            namespace: "team".into(),
            quota_bytes: 100_000,
            max_repositories: 2,
            pulls_per_sec: 0,
            pushes_per_sec: 5,
            used_bytes: 1234,
            repositories: 1,
        };
        assert_eq!(
            namespace_text(&n),
            "namespace: team\nbytes: 1234 of 100000\nrepositories: 1 of 2\npulls-per-sec: none\n\
             pushes-per-sec: 5\n"
        );
        let list = Namespaces {
            namespaces: vec![n.clone()],
        };
        assert_eq!(
            namespaces_text(&list),
            "NAMESPACE  BYTES USED   QUOTA  REPOS  MAX REPOS  PULLS/S  PUSHES/S\n\
             team             1234  100000      1          2     none         5\n"
        );
        assert_eq!(namespaces_json(&list)["namespaces"][0]["used_bytes"], 1234);
        assert_eq!(namespace_json(&n)["pulls_per_sec"], 0);
    }

    #[test]
    fn purge_reports_counts_deletions_and_skips() {
        let r = PurgeReport {
            dry_run: false,
            tags: vec![PurgedTag {
                repository: "app".into(),
                tag: "v2".into(),
                digest: "sha256:b".into(),
            }],
            manifests: vec![PurgedManifest {
                repository: "app".into(),
                digest: "sha256:c".into(),
            }],
            skipped: vec![PurgeSkipped {
                what: "app:v1".into(),
                why: "the tag is locked".into(),
            }],
            tags_total: 1,
            manifests_total: 1,
            skipped_total: 1,
        };
        assert_eq!(
            purge_text(&r),
            "purge: deleted 1 tag and 1 untagged manifest, skipped 1\n\
             deleted tag app:v2 (sha256:b)\ndeleted manifest app@sha256:c\n\
             skipped app:v1: the tag is locked\n"
        );
        let dry = PurgeReport {
            dry_run: true,
            ..r.clone()
        };
        assert!(
            purge_text(&dry)
                .starts_with("purge (dry run, nothing was deleted): would delete 1 tag")
        );
        let j = purge_json(&r);
        assert_eq!(
            (j["deleted_tags"].clone(), j["skipped_count"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(j["skipped"][0]["what"], "app:v1");
        // A cut list says how many were left out, and the counts are the totals.
        let cut = PurgeReport {
            tags_total: 1001,
            ..r.clone()
        };
        assert!(
            purge_text(&cut).contains("deleted 1001 tags")
                && purge_text(&cut).contains("… and 1000 more tags (not listed)\n"),
            "{}",
            purge_text(&cut)
        );
        assert_eq!(purge_json(&cut)["deleted_tags"], 1001);
    }
}
