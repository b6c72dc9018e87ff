//! Three nodes, lossy network, partitions and restarts: safety and convergence.
mod common;

use std::time::Duration;

#[test]
fn three_nodes_under_faults() {
    common::chaos(&[1, 2, 3], common::seed(), Duration::from_secs(10), 3000);
}
