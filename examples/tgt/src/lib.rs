//! The machines and steps of the tgt scenarios (`tests/vm.rs` runs them through vmcheck's
//! harness): what a storage engineer writes for their own target.

use std::time::Duration;

use anyhow::{bail, Result};
use vmcheck::prelude::*;
use vmcheck::recipe::Recipe;
use vmcheck::scenarios::iscsi;

/// tgt's iSCSI port.
pub const ISCSI_PORT: u16 = 3260;
/// The target's IQN.
pub const IQN: &str = "iqn.2026-12.io.vmcheck.example:tgt";

/// The target machine's guest: vmcheck's base image plus Debian's `tgt` package (unpacked from
/// the archive, never installed on the host) and `tgtd` started at boot. tgtd keeps no state
/// on disk: every target and LUN comes from `tgtadm` in the scenario.
pub fn tgt_recipe() -> Recipe {
    Recipe::new("tgt-target")
        .debian_package("tgt")
        .service("tgtd", "mkdir -p /var/run/tgtd && exec /usr/sbin/tgtd -f")
}

/// The target (`tgt`, with NVMe disks `disk0`.. of 256 MiB) and vmcheck's initiator (open-iscsi,
/// fio).
pub fn machines(disks: usize) -> Vec<NodeSpec> {
    let target = (0..disks)
        .fold(NodeSpec::new("tgt", Role::Target, 1).with_recipe(tgt_recipe()), |n, i| {
            n.with_disk(DiskSpec::nvme(&format!("disk{i}"), 256))
        });
    vec![target, NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768)]
}

/// Runs a tgtadm command on the target; fails with its output when it fails.
pub async fn tgtadm(tgt: &Machine, args: &str) -> Result<String> {
    tgt.succeed(&format!("tgtadm --lld iscsi --mode {args}")).await
}

/// Waits until tgtd answers its admin tool (it starts at boot, beside the agent).
pub async fn wait_for_tgtd(tgt: &Machine) -> Result<()> {
    tgt.wait_until_succeeds("tgtadm --lld iscsi --op show --mode target", Duration::from_secs(30))
        .await
        .map(drop)
}

/// Creates the target with one LUN per disk (`disk0` is LUN 1, tgt's LUN 0 being its
/// controller) and lets every initiator in; returns where the initiator finds it.
pub async fn serve_disks(tgt: &Machine, disks: &[&str]) -> Result<iscsi::Target> {
    tgtadm(tgt, &format!("target --op new --tid 1 --targetname {IQN}")).await?;
    for (i, disk) in disks.iter().enumerate() {
        let dev = tgt.disk_device(disk).await?;
        tgtadm(tgt, &format!("logicalunit --op new --tid 1 --lun {} --backing-store {dev}", i + 1))
            .await?;
    }
    tgtadm(tgt, "target --op bind --tid 1 --initiator-address ALL").await?;
    Ok(iscsi::Target { iqn: IQN.into(), addr: tgt.address(), port: ISCSI_PORT, uri: String::new() })
}

/// tgtd is alive and its admin tool lists the target with `luns` LUNs besides LUN 0.
pub async fn expect_target_answers(tgt: &Machine, luns: usize) -> Result<()> {
    let shown = tgtadm(tgt, "target --op show").await?;
    if !shown.contains(IQN) {
        bail!("tgtadm does not list {IQN}:\n{shown}");
    }
    let listed = shown.matches("LUN: ").count();
    if listed != luns + 1 {
        bail!("expected tgtadm to list {} LUNs (the controller and {luns} disks), it lists {listed}:\n{shown}", luns + 1);
    }
    Ok(())
}
