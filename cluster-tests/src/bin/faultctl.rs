//! `faultctl`: sets the test faults of one berth node built with the `fault-injection` feature
//! (the `Faults` gRPC service), for benchmarks and by-hand experiments; the tests call the same
//! functions (`cluster_tests::admin`) directly.
//!
//! ```text
//! faultctl --endpoint HOST:PORT links [PEER=DELAY_MS[/BYTES_PER_SEC]]...   (none: clear)
//! faultctl --endpoint HOST:PORT partition [PEER]...                        (none: heal)
//! ```
//!
//! Links apply to the connections this node dials to each peer, both directions; set them on
//! both ends of a pair for a symmetric link.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use cluster_tests::LinkSpec;
use cluster_tests::admin::{set_links, set_partition};

const USAGE: &str = "usage: faultctl --endpoint HOST:PORT links [PEER=DELAY_MS[/BYTES_PER_SEC]]...\n       faultctl --endpoint HOST:PORT partition [PEER]...";

fn parse_link(arg: &str) -> Result<(u64, LinkSpec), String> {
    let bad = || format!("bad link {arg:?}: want PEER=DELAY_MS[/BYTES_PER_SEC]");
    let (peer, rest) = arg.split_once('=').ok_or_else(bad)?;
    let (delay, bandwidth) = match rest.split_once('/') {
        Some((d, b)) => (d, Some(b.parse::<u64>().map_err(|_| bad())?)),
        None => (rest, None),
    };
    let peer = peer.parse::<u64>().map_err(|_| bad())?;
    let delay = Duration::from_millis(delay.parse::<u64>().map_err(|_| bad())?);
    Ok((peer, LinkSpec { delay, bandwidth }))
}

fn run(args: &[String]) -> Result<(), String> {
    let [flag, endpoint, command, rest @ ..] = args else {
        return Err(USAGE.to_string());
    };
    if flag != "--endpoint" {
        return Err(USAGE.to_string());
    }
    match command.as_str() {
        "links" => {
            let links = rest
                .iter()
                .map(|a| parse_link(a))
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            set_links(endpoint, &links)
        }
        "partition" => {
            let peers = rest
                .iter()
                .map(|p| p.parse::<u64>().map_err(|_| format!("bad peer id {p:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            set_partition(endpoint, peers)
        }
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_with_and_without_a_bandwidth() {
        let (peer, l) = parse_link("3=50").unwrap();
        assert_eq!(
            (peer, l.delay, l.bandwidth),
            (3, Duration::from_millis(50), None)
        );
        let (peer, l) = parse_link("2=150/262144").unwrap();
        assert_eq!(
            (peer, l.delay, l.bandwidth),
            (2, Duration::from_millis(150), Some(262144))
        );
        assert!(parse_link("2").is_err());
        assert!(parse_link("x=1").is_err());
        assert!(parse_link("2=1/fast").is_err());
    }
}
