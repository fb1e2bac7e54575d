//! Scenario 25 — the dashboard and alert rules of `deploy/` against a real Prometheus (Debian's
//! `prometheus` package) scraping a real cluster (issue 12):
//!
//! 1. `promtool check rules` passes on `deploy/prometheus/alerts.yml`, `promtool test rules`
//!    on its unit tests `alerts_test.yml`, and `promtool check config` on the example
//!    `prometheus.yml` and on the configuration this test writes;
//! 2. three nodes in three regions take a push and serve pulls; Prometheus scrapes each node's
//!    `/metrics` every second and sees all three targets `up`; the alert rules load and
//!    evaluate without error;
//! 3. every metric family the dashboard (`deploy/grafana/berth.json`) or the rules reference
//!    has at least one series in Prometheus (a read-through is made to happen: repositories
//!    `s25/**` are on demand in region r3, and node 3 serves a pull) — except the few in
//!    [`ONLY_AFTER_AN_EVENT`], which only get a series once something happens that this
//!    scenario does not do. prometheus-client (0.26) leaves a family without series out of
//!    `/metrics` altogether, no `# TYPE` line either, so for those the test checks that the
//!    node's metrics module registers the name ([`registered`]);
//! 4. every query of the dashboard (its Grafana variables replaced) is valid PromQL that
//!    Prometheus answers;
//! 5. on this healthy cluster no alert is firing or pending (BerthDiskNearlyFull aside: it
//!    measures the test machine's disk).
//!
//! Skipped, printing why, when `prometheus` or `promtool` is not installed — unless
//! `BERTH_REQUIRE_CLIENT_TOOLS` names `prometheus` (scripts/test does wherever the binaries are
//! installed); then it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_tests::clients;
use cluster_tests::prometheus::{self, Prometheus, family_of, metric_names};
use cluster_tests::replication::{ctl, wait_for_blob_files};
use cluster_tests::{ClusterBuilder, random_layer, wait_until};

const TEST: &str = "s25_prometheus";
/// How long all three targets may take to be scraped `up`.
const TARGETS_UP_WITHIN: Duration = Duration::from_secs(60);
/// How long the referenced series may take to appear once the targets are up (replication
/// between regions and peer probes happen in the background).
const SERIES_WITHIN: Duration = Duration::from_secs(60);
/// How long the alert rules may take to be evaluated once.
const RULES_WITHIN: Duration = Duration::from_secs(30);
/// How long alerts may stay pending on the healthy cluster.
const ALERTS_QUIET_WITHIN: Duration = Duration::from_secs(30);
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);
/// How long the replicator may take to copy the image to r2.
const REPLICATED_WITHIN: Duration = Duration::from_secs(60);
const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// Families that have no series until something happens that this scenario does not do, with
/// why. The node must still register them ([`registered`]).
const ONLY_AFTER_AN_EVENT: &[(&str, &str)] = &[
    (
        "berth_webhook_deliveries_total",
        "labelled by webhook: no webhook is defined here",
    ),
    (
        "berth_webhook_delivery_duration_seconds",
        "labelled by webhook: no webhook is defined here",
    ),
    (
        "berth_webhook_backlog_events",
        "labelled by webhook: no webhook is defined here",
    ),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-tests sits in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// Whether the node's metrics module (`node/src/metrics.rs`, or the files of a
/// `node/src/metrics/` directory) registers `family`: a string literal naming it without the
/// `berth_` prefix the registry adds, without a counter's `_total`, and possibly without a
/// unit suffix given apart (`register_with_unit`).
fn registered(root: &Path, family: &str) -> bool {
    let src = root.join("node/src");
    let mut text = std::fs::read_to_string(src.join("metrics.rs")).unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir(src.join("metrics")) {
        for f in dir.flatten() {
            text.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
        }
    }
    let Some(name) = family_of(family).strip_prefix("berth_") else {
        return false;
    };
    let mut candidates = vec![name.to_string()];
    if let Some((base, _unit)) = name.rsplit_once('_') {
        candidates.push(base.to_string());
    }
    candidates
        .iter()
        .any(|c| text.contains(&format!("\"{c}\"")))
}

/// Every query of a Grafana dashboard (panel targets and annotations), with the dashboard's
/// variables replaced by what they stand for at query time.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    expr.to_string(),
                ));
            }
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), expr.to_string()));
        }
    }
    out.into_iter()
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            (title, expr)
        })
        .collect()
}

/// The configuration this test runs Prometheus with: the shipped rules, a job "berth" with one
/// target per node, scraped every second.
fn scrape_config(rules: &Path, targets: &[String]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - \"{}\"\n\
         scrape_configs:\n  - job_name: berth\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: [{}]\n",
        rules.display(),
        targets.join(", ")
    )
}

/// Names of the rules not yet evaluated healthy; panics on a rule that failed to evaluate.
fn unhealthy_rules(p: &Prometheus) -> Result<(), String> {
    let data = p.api("/api/v1/rules", &[])?;
    let mut pending = Vec::new();
    let mut count = 0;
    for g in data["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            count += 1;
            match r["health"].as_str() {
                Some("ok") => {}
                Some("err") => panic!("rule {} failed to evaluate: {}", r["name"], r["lastError"]),
                _ => pending.push(r["name"].to_string()),
            }
        }
    }
    if count == 0 {
        Err("no rules loaded".to_string())
    } else if pending.is_empty() {
        Ok(())
    } else {
        Err(format!("not evaluated yet: {pending:?}"))
    }
}

/// The `berth_…` sample names that have at least one series of job "berth" now.
fn names_with_series(p: &Prometheus) -> BTreeSet<String> {
    p.must_query(r#"count by (__name__) ({__name__=~"berth_.+", job="berth"})"#)
        .iter()
        .filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_string))
        .collect()
}

/// Whether `family` (as [`metric_names`] gives it) has a series among `present` sample names:
/// the name itself, a counter's `_total` or a histogram's `_count`.
fn has_series(present: &BTreeSet<String>, family: &str) -> bool {
    let base = family_of(family);
    [
        base.to_string(),
        format!("{base}_total"),
        format!("{base}_count"),
    ]
    .iter()
    .any(|n| present.contains(n))
}

#[test]
fn prometheus_scrapes_every_node_and_the_dashboard_and_rules_hold() {
    if !clients::ready(TEST, "prometheus", prometheus::available()) {
        return;
    }
    let root = repo_root();
    let deploy = root.join("deploy/prometheus");
    let alerts = deploy.join("alerts.yml");
    let dashboard_path = root.join("deploy/grafana/berth.json");

    // 1. The shipped files, by promtool.
    prometheus::must_promtool(&deploy, &["check", "rules", "alerts.yml"]);
    prometheus::must_promtool(&deploy, &["test", "rules", "alerts_test.yml"]);
    prometheus::must_promtool(&deploy, &["check", "config", "prometheus.yml"]);

    // What the dashboard and the rules reference.
    let dashboard_text = read(&dashboard_path);
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", dashboard_path.display()));
    let mut referenced = metric_names(&dashboard_text);
    referenced.extend(metric_names(&read(&alerts)));
    for (name, why) in ONLY_AFTER_AN_EVENT {
        eprintln!("{TEST}: {name} need not have a series ({why}); it must be registered");
        assert!(
            referenced.contains(*name),
            "{name} is excused from having a series but nothing references it: drop it from \
             ONLY_AFTER_AN_EVENT"
        );
    }

    // 2. A cluster with traffic, and Prometheus scraping it. Region r3 keeps only what is
    // pulled there, so node 3's pull reads the blobs through from another region.
    let c = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .build();
    ctl(
        &c,
        1,
        &["policy", "set", "s25/**", "--on-demand", "r3"],
        CTL_TIMEOUT,
    )
    .assert_success();
    let image = c.must_push_image(
        1,
        "s25/scraped",
        "v1",
        &[random_layer(256 * 1024), random_layer(4096)],
    );
    // The replicator copies the image to r2 before anything is pulled there (a pull first
    // would copy it through read-through, and no replication lag would be observed).
    wait_for_blob_files(&c, 2, &image, REPLICATED_WITHIN);
    for id in c.ids() {
        c.wait_for_image(id, &image, VISIBLE_WITHIN);
        c.must_pull_image(id, "s25/scraped", "v1", &image);
    }
    let targets: Vec<String> = c
        .ids()
        .iter()
        .map(|&id| c.node(id).url().trim_start_matches("http://").to_string())
        .collect();
    let p = Prometheus::start(&scrape_config(&alerts, &targets));
    let urls: BTreeSet<String> = targets
        .iter()
        .map(|t| format!("http://{t}/metrics"))
        .collect();
    p.wait_for_targets_up(&urls, TARGETS_UP_WITHIN);
    wait_until("every alert rule to be evaluated", RULES_WITHIN, || {
        unhealthy_rules(&p)
    });

    // 3. A series for every referenced family, waiting for background work to produce them.
    let excused: BTreeSet<&str> = ONLY_AFTER_AN_EVENT.iter().map(|(n, _)| *n).collect();
    let required: Vec<&String> = referenced
        .iter()
        .filter(|n| !excused.contains(n.as_str()))
        .collect();
    let missing = |present: &BTreeSet<String>| -> Vec<String> {
        required
            .iter()
            .filter(|n| !has_series(present, n))
            .map(|n| n.to_string())
            .collect()
    };
    let mut failures = Vec::new();
    if let Err(last) = cluster_tests::wait::try_wait_until(SERIES_WITHIN, || {
        let m = missing(&names_with_series(&p));
        if m.is_empty() {
            Ok(())
        } else {
            Err(m.join(" "))
        }
    }) {
        failures.push(format!(
            "no series in Prometheus after {SERIES_WITHIN:?} for these referenced families: {last}"
        ));
    }
    // The registration check must hold for the families that do have series, or it proves
    // nothing for the others.
    let present = names_with_series(&p);
    for family in required.iter().filter(|n| has_series(&present, n)) {
        assert!(
            registered(&root, family),
            "{family} has series but registered() does not find it in node/src/metrics.rs"
        );
    }
    let unregistered: Vec<&str> = excused
        .iter()
        .copied()
        .filter(|n| !registered(&root, n))
        .collect();
    if !unregistered.is_empty() {
        failures.push(format!(
            "not registered in node/src/metrics.rs: {}",
            unregistered.join(" ")
        ));
    }

    // 4. Every dashboard query is answered.
    for (title, expr) in dashboard_queries(&dashboard) {
        if let Err(e) = p.api("/api/v1/query", &[("query", &expr)]) {
            failures.push(format!("dashboard panel {title:?}: {e}"));
        }
    }

    // 5. A healthy cluster sets off no alert, not even a pending one (peer probes and the
    // first scrapes may take a few seconds to settle) — but BerthDiskNearlyFull, which
    // measures the disk of the machine the test runs on (alerts_test.yml tests it).
    if let Err(last) = cluster_tests::wait::try_wait_until(ALERTS_QUIET_WITHIN, || {
        let alerts: Vec<String> = p
            .must_query(r#"ALERTS{alertname!="BerthDiskNearlyFull"}"#)
            .iter()
            .map(|a| a["metric"].to_string())
            .collect();
        if alerts.is_empty() {
            Ok(())
        } else {
            Err(alerts.join(" "))
        }
    }) {
        failures.push(format!("alerts on a healthy cluster: {last}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
