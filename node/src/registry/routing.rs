//! Regional endpoints: which node should answer a client's blob GET, when not this one.
//!
//! Two optional rules (`[routing]`, both off by default):
//! - `client_regions` maps client address ranges (CIDR) to regions. A blob GET from a client
//!   of another region is redirected to a node of that region: one that holds the blob if any,
//!   else the nearest reachable one.
//! - `redirect_missing`: a blob GET at a node without the blob is redirected to the nearest
//!   reachable holder instead of being read through.
//!
//! With both on, a client of region R asking a node of another region for a blob no node of R
//! holds is not sent to R (that node would send it back): the rule of missing blobs decides.
//! So every chain of redirects ends at a node that serves: one of the client's region, or a
//! holder. Manifests are never redirected (they are served from every node's metadata).
//! Nothing here does IO: it reads the membership this node knows.

use std::net::IpAddr;

use super::BlobLocation;
use crate::cluster::Cluster;
use crate::meta::NodeId;

/// An address range: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x:y::z/n` (a bare address is a range of one).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|e| format!("{s:?} is not an address range: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn masked(addr: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        addr >> (width - prefix)
    }
}

/// Client address ranges and their regions; the longest matching prefix wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRegions {
    ranges: Vec<(Cidr, String)>,
}

impl ClientRegions {
    /// Parses entries of the form `CIDR=region` (e.g. `10.1.0.0/16=eu`).
    ///
    /// Errors: every malformed entry, one message each.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<ClientRegions, Vec<String>> {
        let mut ranges = Vec::new();
        let mut problems = Vec::new();
        for e in entries {
            let e = e.as_ref();
            let Some((cidr, region)) = e.split_once('=') else {
                problems.push(format!("{e:?} must be CIDR=region"));
                continue;
            };
            let region = region.trim();
            if region.is_empty() {
                problems.push(format!("{e:?}: the region is empty"));
                continue;
            }
            match Cidr::parse(cidr.trim()) {
                Ok(c) => ranges.push((c, region.to_string())),
                Err(p) => problems.push(p),
            }
        }
        if problems.is_empty() {
            Ok(ClientRegions { ranges })
        } else {
            Err(problems)
        }
    }

    /// The region of a client address, if a range names it.
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        self.ranges
            .iter()
            .filter(|(c, _)| c.contains(ip))
            .max_by_key(|(c, _)| c.prefix)
            .map(|(_, r)| r.as_str())
    }

    /// Whether no range is set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// The `[routing]` settings.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// Client address ranges and their regions.
    pub client_regions: ClientRegions,
    /// Redirect a blob GET this node cannot serve from its disk to the nearest holder.
    pub redirect_missing: bool,
}

impl Routing {
    /// The base URL (`NodeInfo.url`) of the node a blob GET from `client` should go to, or
    /// `None` to serve it here (see the module docs).
    pub(super) fn redirect(
        &self,
        cluster: &Cluster,
        client: Option<IpAddr>,
        location: &BlobLocation,
    ) -> Option<String> {
        let me = cluster.node_id();
        let url = |n: NodeId| cluster.reachable_member(n).ok().map(|i| i.url);
        if let Some(region) = client.and_then(|ip| self.client_regions.region_of(ip))
            && cluster.member(me).is_some_and(|i| i.region != region)
        {
            let there: Vec<NodeId> = cluster
                .order_by_nearness(
                    cluster
                        .members()
                        .into_iter()
                        .filter(|m| m.info.region == region && m.id != me)
                        .map(|m| m.id),
                )
                .into_iter()
                .filter(|n| cluster.reachable_member(*n).is_ok())
                .collect();
            let holder_there = there.iter().find(|n| location.holders.contains(n)).copied();
            let target = match holder_there {
                Some(h) => Some(h),
                // That region lacks it: a node there would send the client on to a holder.
                None if self.redirect_missing => None,
                None => there.first().copied(),
            };
            if let Some(url) = target.and_then(url) {
                return Some(url);
            }
        }
        // A client the map places in this node's region was sent here on purpose (another
        // region's node redirected it, or it is local): sending it on to a holder elsewhere
        // could send it back here again (a holder recorded here whose file is gone), so it is
        // read through instead.
        let mapped_here = client
            .and_then(|ip| self.client_regions.region_of(ip))
            .is_some_and(|region| cluster.member(me).is_some_and(|i| i.region == region));
        if self.redirect_missing && !location.local && !mapped_here {
            return location.holders.iter().find_map(|h| url(*h));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_match_by_prefix() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped IPv6");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("192.0.2.1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(
            !Cidr::parse("127.0.0.1/32")
                .unwrap()
                .contains(ip("127.0.0.2"))
        );
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn the_longest_prefix_names_the_region() {
        let m =
            ClientRegions::parse(&["10.0.0.0/8=eu", "10.9.0.0/16=us", "::1/128 = local"]).unwrap();
        assert_eq!(m.region_of(ip("10.1.2.3")), Some("eu"));
        assert_eq!(m.region_of(ip("10.9.2.3")), Some("us"));
        assert_eq!(m.region_of(ip("::1")), Some("local"));
        assert_eq!(m.region_of(ip("192.168.0.1")), None);
        assert!(ClientRegions::default().is_empty());
    }

    #[test]
    fn malformed_entries_are_all_reported() {
        let problems =
            ClientRegions::parse(&["10.0.0.0/33=eu", "10.0.0.0/8=", "nonsense", "x/8=eu"])
                .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("prefix length"), "{problems:?}");
        assert!(problems[1].contains("region is empty"), "{problems:?}");
        assert!(problems[2].contains("CIDR=region"), "{problems:?}");
    }
}
