//! The hot-remove test plan (../shared/seeds/000, SPDK vhost "Hot remove", vhost-blk TC1-5):
//! an NVMe disk of the storage target is pulled while initiators run fio with verify on it.
//!
//! In vmcheck the "vhost" is the target VM running `vmcheck-target`, a "blk controller" is an
//! NVMe-oF subsystem of it, the "NVMe disk" is an emulated NVMe disk of the target VM, and the
//! "VMs" are initiator VMs connected over NVMe-oF/TCP. Each plan step is a subtest named after
//! it; the plan's expected results are the assertions:
//! - the target does not crash and keeps answering gRPC;
//! - fio with verify on the removed disk stops with an I/O error (typed: the errno fio stopped
//!   on), and fails again ("run error") after the initiator reboots;
//! - fio on a disk that was not removed finishes clean, before and after reboots;
//! - the removed disk's device is gone from the VM's lsblk, before and after the reboot (not a
//!   step of the blk plan, but of its scsi twin, and what the issue asks of every removal).
//!
//! The disk is pulled both ways SPDK's hot-plug tests allow: from inside the target
//! (`echo 1 > /sys/bus/pci/devices/BDF/remove`, TC1 and TC3) and with QMP `device_del` from the
//! host (TC2, TC4, TC5). The target withdraws a vanished disk's bdevs from every namespace (as
//! SPDK's bdev hot-remove does), so after a reboot the removed disk's subsystem has no namespace
//! and fio on the device the VM had fails to open it.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::FutureExt;

use super::nvmeof::{self, Share, NVMF_PORT};
use super::workload::{integrity_job, run_fio, FioRun, ENOENT};
use super::Scenario;
use crate::config::{DiskSpec, NodeSpec, Role};
use crate::driver::Driver;
use crate::log;
use crate::machine::Machine;
use crate::target::client::TargetClient;
use crate::target::proto;

/// fio's run time under a removal: long enough that the removal lands mid-run.
const FIO_UNDER_REMOVAL_SECS: u64 = 30;
/// fio's run time where it must finish clean.
const FIO_CLEAN_SECS: u64 = 8;
/// How long fio runs before the disk is pulled.
const SETTLE: Duration = Duration::from_secs(3);
const DISK_MIB: u64 = 256;

/// How the disk is pulled.
#[derive(Clone, Copy)]
enum Removal {
    /// `echo 1 > /sys/bus/pci/devices/BDF/remove` in the target.
    Guest,
    /// QMP `device_del` from the host.
    Qmp,
}

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, description, nodes, run| Scenario { name, description, nodes, run, hidden: false, chain: None };
    vec![
        s(
            "hotremove_blk_tc1",
            "hot remove: one subsystem, one NVMe bdev; pull the disk (guest sysfs); the target keeps working",
            target_only,
            |d| tc1(d).boxed(),
        ),
        s(
            "hotremove_blk_tc2",
            "hot remove: one disk, one VM under fio; pull the disk (QMP); fio fails, and again after reboot",
            one_disk_one_vm,
            |d| tc2(d).boxed(),
        ),
        s(
            "hotremove_blk_tc3",
            "hot remove: two subsystems, one VM on the first under fio; pull the first disk (guest sysfs)",
            two_disks_one_vm,
            |d| tc3(d).boxed(),
        ),
        s(
            "hotremove_blk_tc4",
            "hot remove: two disks, two VMs under fio; pull the first disk (QMP); the other VM's fio stays clean",
            two_disks_two_vms,
            |d| tc4(d).boxed(),
        ),
        s(
            "hotremove_blk_tc5",
            "hot remove: one disk split in two, one half per subsystem and VM, both under fio; pull the disk (QMP)",
            one_disk_two_vms,
            |d| tc5(d).boxed(),
        ),
    ]
}

fn target(disks: &[&str]) -> NodeSpec {
    disks.iter().fold(NodeSpec::new("target", Role::Target, 1), |n, id| n.with_disk(DiskSpec::nvme(id, DISK_MIB)))
}
fn vm(name: &str, host: u8) -> NodeSpec {
    NodeSpec::new(name, Role::Initiator, host).with_memory(768)
}
fn target_only() -> Vec<NodeSpec> {
    vec![target(&["disk0"])]
}
fn one_disk_one_vm() -> Vec<NodeSpec> {
    vec![target(&["disk0"]), vm("vm1", 2)]
}
fn two_disks_one_vm() -> Vec<NodeSpec> {
    vec![target(&["disk0", "disk1"]), vm("vm1", 2)]
}
fn one_disk_two_vms() -> Vec<NodeSpec> {
    vec![target(&["disk0"]), vm("vm1", 2), vm("vm2", 3)]
}
fn two_disks_two_vms() -> Vec<NodeSpec> {
    vec![target(&["disk0", "disk1"]), vm("vm1", 2), vm("vm2", 3)]
}

/// "Start vhost with N blk controllers" and "add NVMe bdevs": one subsystem per disk, each
/// sharing that disk's bdev; returns the shares in disk order.
async fn start_controllers(d: &Driver, target: &Machine, client: &mut TargetClient, disks: &[&str]) -> Result<Vec<Share>> {
    let what = match disks.len() {
        1 => "start the target with one subsystem and add one NVMe bdev".to_string(),
        n => format!("start the target with {n} subsystems and add the NVMe bdevs"),
    };
    d.subtest(&what, async {
        let mut shares = Vec::new();
        for disk in disks {
            let bdev = nvmeof::create_disk_bdev(target, client, disk).await?;
            shares.push(nvmeof::share_bdev(target, client, &bdev.name, None, NVMF_PORT).await?);
        }
        Ok(shares)
    })
    .await
}

/// "Run VM, attach to controller": connect and find the namespace's device.
async fn attach(d: &Driver, vm: &Machine, share: &Share) -> Result<String> {
    d.subtest(&format!("run {}, attach to {}", vm.name(), share.nqn), nvmeof::connect_namespace(vm, share, 1)).await
}

async fn pci_address(d: &Driver, target: &Machine, disk: &str) -> Result<String> {
    d.subtest(&format!("check the PCI address (bus:device.function) of NVMe {disk}"), target.pci_address(disk)).await
}

async fn hot_remove(d: &Driver, target: &Machine, disk: &str, how: Removal) -> Result<()> {
    let step = match how {
        Removal::Guest => format!("hot remove NVMe {disk} (sysfs remove in the target)"),
        Removal::Qmp => format!("hot remove NVMe {disk} (QMP device_del)"),
    };
    d.subtest(&step, async {
        match how {
            Removal::Guest => target.guest_remove_disk(disk).await.map(drop),
            Removal::Qmp => target.hot_remove_disk(disk).await,
        }
    })
    .await
}

/// "The vhost doesn't crash and still works properly": the daemon answers, and every bdev it
/// still serves is listed.
async fn target_still_works(d: &Driver, target: &Machine, client: &mut TargetClient) -> Result<()> {
    d.subtest("the target does not crash and still works", async {
        let bdevs = nvmeof::expect_target_alive(target, client).await?;
        log::line(&format!("the target answers; it lists {} bdev(s)", bdevs.len()));
        if !target.is_up().await {
            bail!("the target VM is not running");
        }
        Ok(())
    })
    .await
}

/// fio on `device` must stop with an I/O error after the removal.
async fn expect_interrupted(d: &Driver, run: &FioRun, vm: &Machine) -> Result<()> {
    d.subtest(&format!("check fio on {} returns an interrupted-operation error", vm.name()), async {
        let outcome = run.wait().await?;
        outcome.expect_error().map(drop)
    })
    .await
}

/// The removed disk's namespace leaves the VM (the target withdrew it) and lsblk no longer lists
/// its device.
async fn expect_gone(d: &Driver, vm: &Machine, share: &Share, device: &str) -> Result<()> {
    d.subtest(&format!("check the removed device {device} is gone from lsblk on {}", vm.name()), async {
        nvmeof::wait_for_no_namespace(vm, &share.nqn, None, crate::timeouts::hotplug()).await?;
        nvmeof::expect_gone_from_lsblk(vm, &[device]).await
    })
    .await
}

/// After a reboot and reconnect: the removed disk has no device on the VM, and fio integrity
/// on the device it had fails to run (ENOENT: fio may not create files).
async fn expect_run_error_after_reboot(d: &Driver, vm: &Machine, share: &Share, device: &str) -> Result<()> {
    expect_gone(d, vm, share, device).await?;
    d.subtest(&format!("run fio integrity on the removed disk on {}: a run error", vm.name()), async {
        let outcome = run_fio(vm, &integrity_job(device, FIO_CLEAN_SECS), device).await?;
        let failure = outcome.expect_error()?;
        if failure.errno != ENOENT {
            bail!("expected fio to fail with ENOENT on the vanished {device}, it failed with {failure:?}");
        }
        Ok(())
    })
    .await
}

/// Reboots `vms` together and reconnects each to its shares.
async fn reboot_and_reconnect(d: &Driver, vms: &[(&Machine, &[&Share])]) -> Result<()> {
    let names: Vec<_> = vms.iter().map(|(m, _)| m.name()).collect();
    d.subtest(&format!("reboot {}", names.join(" and ")), async {
        futures::future::try_join_all(vms.iter().map(|(m, _)| m.reboot())).await?;
        for (m, shares) in vms {
            for share in *shares {
                // The removed disk's subsystem may have no namespace left: connecting still works.
                nvmeof::connect(m, share).await?;
            }
        }
        Ok(())
    })
    .await
}

async fn tc1(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let target = d.machine("target")?;
    let mut client = target.target_client().await?;
    start_controllers(d, &target, &mut client, &["disk0"]).await?;
    pci_address(d, &target, "disk0").await?;
    hot_remove(d, &target, "disk0", Removal::Guest).await?;
    target_still_works(d, &target, &mut client).await
}

async fn tc2(d: &Driver) -> Result<()> {
    one_vm_loses_its_disk(d, &["disk0"], "run fio integrity on the NVMe disk", Removal::Qmp).await
}

async fn tc3(d: &Driver) -> Result<()> {
    one_vm_loses_its_disk(d, &["disk0", "disk1"], "run fio integrity on the first NVMe disk", Removal::Guest).await
}

/// TC2 and TC3: one VM on the first of `disks`' subsystems runs fio integrity; that disk is
/// pulled; fio fails; the device is gone; after a reboot fio fails to run; the target works.
async fn one_vm_loses_its_disk(d: &Driver, disks: &[&str], fio_step: &str, how: Removal) -> Result<()> {
    d.start_all().await?;
    let (target, vm1) = (d.machine("target")?, d.machine("vm1")?);
    let mut client = target.target_client().await?;
    let shares = start_controllers(d, &target, &mut client, disks).await?;
    let device = attach(d, &vm1, &shares[0]).await?;
    let fio = d
        .subtest(fio_step, async {
            let run = FioRun::start(&vm1, &integrity_job(&device, FIO_UNDER_REMOVAL_SECS), &device).await?;
            run.settle(SETTLE).await?;
            Ok(run)
        })
        .await?;
    pci_address(d, &target, disks[0]).await?;
    hot_remove(d, &target, disks[0], how).await?;
    expect_interrupted(d, &fio, &vm1).await?;
    expect_gone(d, &vm1, &shares[0], &device).await?;
    reboot_and_reconnect(d, &[(&vm1, &[&shares[0]])]).await?;
    expect_run_error_after_reboot(d, &vm1, &shares[0], &device).await?;
    target_still_works(d, &target, &mut client).await
}

async fn tc4(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm1, vm2) = (d.machine("target")?, d.machine("vm1")?, d.machine("vm2")?);
    let mut client = target.target_client().await?;
    let shares = start_controllers(d, &target, &mut client, &["disk0", "disk1"]).await?;
    let dev1 = attach(d, &vm1, &shares[0]).await?;
    let dev2 = attach(d, &vm2, &shares[1]).await?;
    let (fio1, fio2) = d
        .subtest("run fio integrity on both NVMe disks", async {
            // vm2's run must end clean while vm1's disk is pulled: it is shorter than vm1's.
            let fio1 = FioRun::start(&vm1, &integrity_job(&dev1, FIO_UNDER_REMOVAL_SECS), &dev1).await?;
            let fio2 = FioRun::start(&vm2, &integrity_job(&dev2, FIO_UNDER_REMOVAL_SECS / 2), &dev2).await?;
            fio1.settle(SETTLE).await?;
            Ok((fio1, fio2))
        })
        .await?;
    pci_address(d, &target, "disk0").await?;
    hot_remove(d, &target, "disk0", Removal::Qmp).await?;
    expect_interrupted(d, &fio1, &vm1).await?;
    expect_gone(d, &vm1, &shares[0], &dev1).await?;
    d.subtest("check fio finished on the not-removed disk: writes and reads succeeded", async {
        fio2.wait().await?.expect_clean().map(drop)
    })
    .await?;
    reboot_and_reconnect(d, &[(&vm1, &[&shares[0]]), (&vm2, &[&shares[1]])]).await?;
    d.subtest("run fio integrity on the not-removed disk: writes and reads succeed", async {
        let dev2 = nvmeof::wait_for_namespace(&vm2, &shares[1].nqn, 1, crate::timeouts::hotplug()).await?;
        run_fio(&vm2, &integrity_job(&dev2, FIO_CLEAN_SECS), &dev2).await?.expect_clean().map(drop)
    })
    .await?;
    expect_run_error_after_reboot(d, &vm1, &shares[0], &dev1).await?;
    target_still_works(d, &target, &mut client).await
}

/// TC5: "two blk controllers, one split NVMe bdev": the disk is split in two, each half shared by
/// a subsystem of its own, one VM on each (the plan's steps speak of both VMs).
async fn tc5(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (target, vm1, vm2) = (d.machine("target")?, d.machine("vm1")?, d.machine("vm2")?);
    let mut client = target.target_client().await?;
    let shares = d
        .subtest("start the target with two subsystems and add one split NVMe bdev", async {
            let disk = nvmeof::create_disk_bdev(&target, &mut client, "disk0").await?;
            let splits = client
                .split_bdev(proto::SplitBdevRequest { name: disk.name.clone(), split_count: 2, split_size_mb: None })
                .await
                .with_context(|| format!("SplitBdev {}", disk.name))?
                .into_inner()
                .bdevs;
            if splits.len() != 2 || splits.iter().any(|s| s.split_base != disk.name) {
                bail!("expected two splits of {}, got {splits:?}", disk.name);
            }
            let mut shares = Vec::new();
            for split in &splits {
                shares.push(nvmeof::share_bdev(&target, &mut client, &split.name, None, NVMF_PORT).await?);
            }
            Ok(shares)
        })
        .await?;
    let dev1 = attach(d, &vm1, &shares[0]).await?;
    let dev2 = attach(d, &vm2, &shares[1]).await?;
    let (fio1, fio2) = d
        .subtest("run fio integrity on both NVMe disks in the VMs", async {
            let fio1 = FioRun::start(&vm1, &integrity_job(&dev1, FIO_UNDER_REMOVAL_SECS), &dev1).await?;
            let fio2 = FioRun::start(&vm2, &integrity_job(&dev2, FIO_UNDER_REMOVAL_SECS), &dev2).await?;
            fio1.settle(SETTLE).await?;
            fio2.settle(Duration::ZERO).await?;
            Ok((fio1, fio2))
        })
        .await?;
    pci_address(d, &target, "disk0").await?;
    hot_remove(d, &target, "disk0", Removal::Qmp).await?;
    expect_interrupted(d, &fio1, &vm1).await?;
    expect_interrupted(d, &fio2, &vm2).await?;
    expect_gone(d, &vm1, &shares[0], &dev1).await?;
    expect_gone(d, &vm2, &shares[1], &dev2).await?;
    reboot_and_reconnect(d, &[(&vm1, &[&shares[0]]), (&vm2, &[&shares[1]])]).await?;
    expect_run_error_after_reboot(d, &vm1, &shares[0], &dev1).await?;
    expect_run_error_after_reboot(d, &vm2, &shares[1], &dev2).await?;
    target_still_works(d, &target, &mut client).await
}
