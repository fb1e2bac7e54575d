//! Scenario 14: a returning node copies from the nearest holder, not from the origin.
//!
//! Three regions, one node each (node N in rN). The link between r1 and r2 is slow (150 ms
//! each way, 256 KiB/s), the others are plain loopback. Node 2 is down while an image is pushed
//! at r1 and replicated to r3. When node 2 returns, its replicator measures its peers first and
//! fetches every blob from r3: the bytes it counts per source (`berth_replication_bytes_total`
//! at node 2) all come from node 3, none from node 1 behind the slow link.

use std::time::Duration;

use cluster_tests::replication::{metric_sum, wait_for_blob_files};
use cluster_tests::wait::try_wait_until;
use cluster_tests::{ClusterBuilder, READY_TIMEOUT, random_layer};

/// How long replication may take (from r3, over loopback, it takes well under a second).
const REPLICATED: Duration = Duration::from_secs(60);
const COPIED_BYTES: &str = "berth_replication_bytes_total";

#[test]
fn a_returning_node_copies_from_the_fast_third_region_not_the_slow_origin() {
    let mut cluster = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .build();
    cluster.set_link(1, 2, Duration::from_millis(150), Some(256 * 1024));
    cluster.kill(2);

    let layer_size = 2 * 1024 * 1024;
    let image = cluster.must_push_image(1, "near/app", "v1", &[random_layer(layer_size)]);
    wait_for_blob_files(&cluster, 3, &image, REPLICATED);

    cluster.restart(2);
    cluster.wait_for_ready(2, READY_TIMEOUT);
    wait_for_blob_files(&cluster, 2, &image, REPLICATED);

    // The counter moves once the copy is recorded, a moment after its file is in place.
    let counted =
        |from: &str| metric_sum(&cluster, 2, COPIED_BYTES, &[("from", from), ("to", "2")]);
    let _ = try_wait_until(Duration::from_secs(10), || {
        if counted("3") + counted("1") >= layer_size as f64 {
            Ok(())
        } else {
            Err("not counted yet".to_string())
        }
    });
    let (from_r3, from_r1) = (counted("3"), counted("1"));
    assert!(
        from_r3 >= layer_size as f64,
        "node 2 counted {from_r3} bytes from node 3 (and {from_r1} from node 1); the layer has \
         {layer_size}; node 2's log:\n{}",
        cluster.node(2).stderr()
    );
    assert_eq!(
        from_r1, 0.0,
        "node 2 copied {from_r1} bytes from node 1 behind the slow link"
    );
    cluster.must_pull_image(2, "near/app", "v1", &image);
}
