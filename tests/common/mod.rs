//! Shared set-up of the VM tests: real QEMU machines on the default images, under TCG here.
#![allow(dead_code)]

use std::time::Duration;

use vmcheck::config::{DiskSpec, NodeSpec, Role};
use vmcheck::driver::{Driver, DriverOptions};
use vmcheck::Machine;

/// A driver for `nodes` on the default images (built on first use into the user's cache).
pub async fn driver(nodes: Vec<NodeSpec>) -> Driver {
    Driver::new(nodes, DriverOptions::default()).await.expect("setting up the run")
}

/// A target with NVMe disks of `disks` (id, MiB) and an initiator, both started and answering.
pub async fn target_and_initiator(disks: &[(&str, u64)]) -> (Driver, Machine, Machine) {
    let target = disks.iter().fold(NodeSpec::new("target", Role::Target, 1), |n, (id, mib)| {
        n.with_disk(DiskSpec::nvme(id, *mib))
    });
    let d =
        driver(vec![target, NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768)]).await;
    d.start_all().await.unwrap();
    let (target, initiator) = (d.machine("target").unwrap(), d.machine("initiator").unwrap());
    (d, target, initiator)
}

pub const SHORT: Duration = Duration::from_secs(3);

/// The error text of a result that must be an error.
pub fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => format!("{e:#}"),
    }
}
