//! The policy of the real-client tests (`support/tools.rs`): a client that is unavailable
//! skips its test with a printed reason, unless `BERTH_REQUIRE_CLIENT_TOOLS` requires it, and
//! then the test fails. Checked on the decision itself, with made-up probes, so that these
//! tests hold on any machine.

mod support;

use support::tools::{CLIENTS, Decision, decide, ready, required_clients};

fn missing(why: &str) -> Result<(), String> {
    Err(why.to_string())
}

#[test]
fn every_client_present_runs_whatever_is_required() {
    for value in [None, Some(""), Some("0"), Some("1"), Some("docker,podman")] {
        let probes = [("docker", Ok(())), ("podman", Ok(()))];
        assert_eq!(decide(value, &probes), Ok(Decision::Run), "{value:?}");
    }
}

#[test]
fn a_missing_client_skips_with_its_reason_when_not_required() {
    let probes = [("docker", missing("docker info failed")), ("umoci", Ok(()))];
    for value in [None, Some(""), Some("0"), Some("podman, oras")] {
        match decide(value, &probes) {
            Ok(Decision::Skip(why)) => {
                assert!(why.contains("docker: docker info failed"), "{why}");
                assert!(why.contains("BERTH_REQUIRE_CLIENT_TOOLS"), "{why}");
            }
            other => panic!("{value:?}: want a skip, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_client_fails_when_required_by_name_or_by_one() {
    let probes = [
        ("skopeo", Ok(())),
        ("containerd", missing("no containerd answers")),
    ];
    for value in [
        "1",
        "all",
        "containerd",
        "docker,containerd",
        "skopeo containerd",
    ] {
        let e = decide(Some(value), &probes).expect_err(value);
        assert!(e.contains("containerd: no containerd answers"), "{e}");
        assert!(e.contains(value), "{e}");
    }
}

#[test]
fn a_required_missing_client_fails_even_when_another_missing_one_is_optional() {
    // The optional one comes first: the required one must still fail the test.
    let probes = [
        ("skopeo", missing("not installed")),
        ("umoci", missing("not installed")),
    ];
    let e = decide(Some("umoci"), &probes).expect_err("umoci is required");
    assert!(e.contains("umoci"), "{e}");
    assert!(
        !e.contains("skopeo"),
        "only the required one is blamed: {e}"
    );
}

#[test]
fn an_unknown_client_name_fails_instead_of_skipping() {
    let e = required_clients(Some("dokcer")).expect_err("a typo");
    assert!(e.contains("dokcer"), "{e}");
    assert!(decide(Some("docker,dokcer"), &[("docker", Ok(()))]).is_err());
    assert_eq!(required_clients(Some("1")).unwrap(), CLIENTS.to_vec());
    assert_eq!(
        required_clients(Some(" docker, ,oras ")).unwrap(),
        vec!["docker", "oras"]
    );
}

#[test]
#[should_panic(expected = "required by BERTH_REQUIRE_CLIENT_TOOLS")]
fn ready_panics_for_a_required_missing_client() {
    // SAFETY: nextest runs each test in a process of its own; under `cargo test` the other
    // tests of this binary read no environment while this one runs.
    unsafe { std::env::set_var("BERTH_REQUIRE_CLIENT_TOOLS", "oras") };
    ready("policy", &[("oras", missing("no venv"))]);
}
