//! Keeping leadership in a preferred region (`raft.preferred_leader_region`, ADR 012): the
//! leader's region is where writes commit fastest, so an operator names the region where
//! most pushes happen.
//!
//! A worker on every node checks, every [`RegionPreference::check_every`], whether this node
//! leads from outside the preferred region; if it has led for a while (a settled leadership,
//! not one a moment old) and a voter of the preferred region is up to date — it acknowledged
//! a heartbeat within an election timeout and has replicated everything committed — it hands
//! leadership to that voter (openraft's transfer-leader; the nearest one by measured RTT when
//! several qualify). It never moves leadership out of the preferred region, so it cannot
//! flap: at most one hand-over per leadership outside the region, and after a hand-over that
//! did not take, it waits a cool-down before trying again. Without a preference, or with no
//! healthy voter in that region, leadership stays where elections put it.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::meta::NodeId;

/// The preference and the pace of its checks.
#[derive(Debug, Clone)]
pub struct RegionPreference {
    /// The region leadership should be in.
    pub region: String,
    /// How often the leader checks.
    pub check_every: Duration,
    /// How long a leadership must have lasted before it is handed over.
    pub settle: Duration,
    /// How long after a hand-over before another may be tried.
    pub cool_down: Duration,
    /// A voter that acknowledged no heartbeat within this is not a candidate.
    pub heartbeat_within: Duration,
}

impl RegionPreference {
    /// The pace derived from the election timeout: a check every timeout (at least 1 s), a
    /// leadership settled after two checks, a cool-down of five.
    pub fn new(region: String, election_timeout_max: Duration) -> RegionPreference {
        let check_every = election_timeout_max.max(Duration::from_secs(1));
        RegionPreference {
            region,
            check_every,
            settle: check_every * 2,
            cool_down: check_every * 5,
            heartbeat_within: election_timeout_max,
        }
    }
}

/// A voter that could take over, as the leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    pub id: NodeId,
    pub region: String,
    /// Last log index it replicated.
    pub matched: Option<u64>,
    /// Since its last heartbeat acknowledgement.
    pub heard: Option<Duration>,
    /// Measured round trip from the leader.
    pub rtt: Option<Duration>,
}

/// The voter to hand leadership to, if any: in the preferred region, heard from within
/// `heartbeat_within`, replicated up to `committed`; the one that replicated most, then the
/// nearest, then the lowest id.
pub(super) fn choose(
    pref: &RegionPreference,
    committed: u64,
    candidates: &[Candidate],
) -> Option<NodeId> {
    candidates
        .iter()
        .filter(|c| c.region == pref.region)
        .filter(|c| c.heard.is_some_and(|h| h <= pref.heartbeat_within))
        .filter(|c| c.matched.is_some_and(|m| m >= committed))
        .min_by_key(|c| {
            (
                std::cmp::Reverse(c.matched),
                c.rtt.unwrap_or(Duration::MAX),
                c.id,
            )
        })
        .map(|c| c.id)
}

impl Cluster {
    /// The voters other than this node as handover candidates, and the committed index.
    fn handover_candidates(&self) -> (u64, Vec<Candidate>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let replication: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let heard: BTreeMap<NodeId, Option<Duration>> = m
            .heartbeat
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|(id, at)| (*id, at.as_ref().map(|at| at.elapsed())))
                    .collect()
            })
            .unwrap_or_default();
        let committed = m.cluster_committed.as_ref().map_or(0, |l| l.index);
        let candidates = membership
            .voter_ids()
            .filter(|id| *id != self.node_id)
            .filter_map(|id| {
                let info = membership.get_node(&id)?;
                Some(Candidate {
                    id,
                    region: info.region.clone(),
                    matched: replication.get(&id).copied().flatten(),
                    heard: heard.get(&id).copied().flatten(),
                    rtt: None,
                })
            })
            .collect::<Vec<_>>();
        let candidates = candidates
            .into_iter()
            .map(|mut c| {
                c.rtt = self.peer_view(c.id).and_then(|v| v.rtt);
                c
            })
            .collect();
        (committed, candidates)
    }

    /// This node's region, as the membership records it.
    fn my_region(&self) -> Option<String> {
        self.member(self.node_id).map(|i| i.region)
    }
}

/// Runs the preference check (see the module docs) until `stop`.
pub async fn run_region_preference(
    cluster: Cluster,
    pref: RegionPreference,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(pref.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The term this node leads in, and since when (as this worker first saw it).
    let mut leading: Option<(u64, tokio::time::Instant)> = None;
    let mut last_handover: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !cluster.is_leader() {
            leading = None;
            continue;
        }
        let term = cluster.node_status().term;
        let since = match leading {
            Some((t, since)) if t == term => since,
            _ => {
                let now = tokio::time::Instant::now();
                leading = Some((term, now));
                now
            }
        };
        if cluster.my_region().as_deref() == Some(pref.region.as_str())
            || since.elapsed() < pref.settle
            || last_handover.is_some_and(|at| at.elapsed() < pref.cool_down)
        {
            continue;
        }
        let (committed, candidates) = cluster.handover_candidates();
        let Some(to) = choose(&pref, committed, &candidates) else {
            tracing::debug!(
                region = %pref.region,
                "no up-to-date voter in the preferred leader region; keeping leadership"
            );
            continue;
        };
        tracing::info!(
            to,
            region = %pref.region,
            "handing leadership to a voter of the preferred leader region"
        );
        last_handover = Some(tokio::time::Instant::now());
        if let Err(e) = cluster.raft.trigger().transfer_leader(to).await {
            tracing::warn!(to, error = %e, "failed to hand leadership over");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn pref() -> RegionPreference {
        RegionPreference::new("r1".to_string(), 300 * MS)
    }

    fn cand(id: NodeId, region: &str, matched: Option<u64>, heard_ms: Option<u64>) -> Candidate {
        Candidate {
            id,
            region: region.to_string(),
            matched,
            heard: heard_ms.map(Duration::from_millis),
            rtt: None,
        }
    }

    #[test]
    fn pace_follows_the_election_timeout() {
        let p = RegionPreference::new("r".into(), Duration::from_secs(3));
        assert_eq!(p.check_every, Duration::from_secs(3));
        assert_eq!(p.settle, Duration::from_secs(6));
        assert_eq!(pref().check_every, Duration::from_secs(1));
    }

    #[test]
    fn only_an_up_to_date_voter_of_the_region_is_chosen() {
        let p = pref();
        let cs = [
            cand(2, "r2", Some(100), Some(10)),
            cand(3, "r1", Some(90), Some(10)),
        ];
        // Node 3 lags the committed index.
        assert_eq!(choose(&p, 100, &cs), None);
        assert_eq!(choose(&p, 90, &cs), Some(3));
        // Not heard from lately.
        let cs = [cand(3, "r1", Some(100), Some(5000))];
        assert_eq!(choose(&p, 100, &cs), None);
        let cs = [cand(3, "r1", Some(100), None)];
        assert_eq!(choose(&p, 100, &cs), None);
    }

    #[test]
    fn the_most_replicated_then_nearest_voter_wins() {
        let p = pref();
        let mut a = cand(3, "r1", Some(100), Some(10));
        let mut b = cand(4, "r1", Some(101), Some(10));
        assert_eq!(choose(&p, 100, &[a.clone(), b.clone()]), Some(4));
        b.matched = Some(100);
        a.rtt = Some(50 * MS);
        b.rtt = Some(5 * MS);
        assert_eq!(choose(&p, 100, &[a, b]), Some(4));
    }
}
