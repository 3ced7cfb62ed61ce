//! The hot-remove test plan (../shared/seeds/000, SPDK vhost "Hot remove", vhost-blk TC1-5 and
//! vhost-scsi TC1-4): an NVMe disk of the storage target is pulled while initiators run fio
//! with verify on it.
//!
//! In vmcheck the "vhost" is the target VM running `vmcheck-target`, the "NVMe disk" is an
//! emulated NVMe disk of the target VM, and the "VMs" are initiator VMs. A "blk controller" is an
//! NVMe-oF subsystem (NVMe-oF/TCP, nvme-cli), a "scsi controller" an iSCSI target of LIO
//! (open-iscsi), with the bdevs as its LUNs. Both plans run the same steps ([`Fabric`] says
//! which). Each plan step is a subtest named after it; the plan's expected results are the
//! assertions:
//! - the target does not crash and keeps answering gRPC;
//! - fio with verify on the removed disk stops with an I/O error (typed: the errno fio stopped
//!   on), and fails again ("run error") after the initiator reboots;
//! - fio on a disk that was not removed finishes clean, before and after reboots;
//! - the removed disk's device is gone from the VM's lsblk, before and after the reboot (not a
//!   step of the blk plan, but of its scsi twin, and what the issue asks of every removal).
//!
//! The iSCSI initiator needs one step the NVMe-oF one does not: Linux keeps the SCSI disk of a
//! LUN the target withdrew for as long as the session lives (failing I/O, or transport-offline
//! when the whole target went). So each scsi case has the initiator's side of the removal as a
//! step of its own, done as os-brick does it ([`iscsi::remove_vanished`]).
//!
//! The disk is pulled both ways SPDK's hot-plug tests allow: from inside the target
//! (`echo 1 > /sys/bus/pci/devices/BDF/remove`, TC1 and TC3) and with QMP `device_del` from the
//! host (TC2, TC4, TC5). The target withdraws a vanished disk's bdevs from every namespace (as
//! SPDK's bdev hot-remove does), so after a reboot the removed disk's subsystem has no namespace
//! and fio on the device the VM had fails to open it. Over iSCSI a target left without LUNs goes
//! whole, so discovery no longer lists it and the rebooted VM does not log in to it.
//!
//! The scsi cases, where the plan is silent, follow SPDK's `scsi_hotremove.sh`:
//! - TC1 is blk TC1 over iSCSI (the target pulls its own disk).
//! - TC2 ("two scsi controllers, one split NVMe bdev", "both VMs") is blk TC5's shape: the disk
//!   split in two, each half LUN 0 of its own target, one VM on each, both fio runs fail.
//! - TC3 ("add both NVMe bdevs to the scsi controller", one VM) is one target with both disks,
//!   LUN 0 (ShareBdev) and LUN 1 (AddNamespace with the IQN); the VM runs fio on both. The plan's
//!   second controller would stay empty and is left out. LUN 1's disk is pulled (see
//!   [`ONE_CONTROLLER_ONE_VM`] for why not LUN 0); fio on it fails, on LUN 0 it stays clean.
//! - TC4 is blk TC4's shape: a target per disk, a VM on each ("reboot both VMs"; SPDK runs two),
//!   the first disk pulled by QMP, the other VM's fio clean before and after the reboot.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::FutureExt;

use super::nvmeof::{self, Share, NVMF_PORT};
use super::workload::{integrity_job, run_fio, FioRun, DISK_MIB, ENOENT, FIO_CLEAN_SECS, SETTLE};
use super::{iscsi, Scenario, ScriptFn};
use crate::config::{DiskSpec, NodeSpec, Role};
use crate::driver::Driver;
use crate::log;
use crate::machine::Machine;
use crate::poll::{self, Polled};
use crate::target::client::TargetClient;
use crate::target::proto;
use crate::target::service::{CLAIMED_BY_SPLIT, STATE_FAULTED};

/// fio's run time under a removal: long enough that the removal lands mid-run.
const FIO_UNDER_REMOVAL_SECS: u64 = 30;

/// How the disk is pulled.
#[derive(Clone, Copy)]
enum Removal {
    /// `echo 1 > /sys/bus/pci/devices/BDF/remove` in the target.
    Guest,
    /// QMP `device_del` from the host.
    Qmp,
}

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, description, nodes: fn() -> Vec<NodeSpec>, script: ScriptFn| {
        Scenario::new(name, description, script).machines(nodes())
    };
    let all = vec![
        s(
            "hotremove_blk_tc1",
            "hot remove: one subsystem, one NVMe bdev; pull the disk (guest sysfs); the target keeps working",
            target_only,
            |d| tc1(d, Fabric::Nvmf).boxed(),
        ),
        s(
            "hotremove_blk_tc2",
            "hot remove: one disk, one VM under fio; pull the disk (QMP); fio fails, and again after reboot",
            one_disk_one_vm,
            |d| one_vm_loses_its_disk(d, &["disk0"], "run fio integrity on the NVMe disk", Removal::Qmp).boxed(),
        ),
        s(
            "hotremove_blk_tc3",
            "hot remove: two subsystems, one VM on the first under fio; pull the first disk (guest sysfs)",
            two_disks_one_vm,
            |d| one_vm_loses_its_disk(d, &["disk0", "disk1"], "run fio integrity on the first NVMe disk", Removal::Guest).boxed(),
        ),
        s(
            "hotremove_blk_tc4",
            "hot remove: two disks, two VMs under fio; pull the first disk (QMP); the other VM's fio stays clean",
            two_disks_two_vms,
            |d| one_of_two_removed(d, Fabric::Nvmf, &TWO_CONTROLLERS_TWO_VMS).boxed(),
        ),
        s(
            "hotremove_blk_tc5",
            "hot remove: one disk split in two, one half per subsystem and VM, both under fio; pull the disk (QMP)",
            one_disk_two_vms,
            |d| split_disk_two_vms(d, Fabric::Nvmf).boxed(),
        ),
        s(
            "hotremove_scsi_tc1",
            "hot remove over iSCSI: one iSCSI target, one NVMe bdev as its LUN; pull the disk (guest sysfs); the target keeps working",
            target_only,
            |d| tc1(d, Fabric::Iscsi).boxed(),
        ),
        s(
            "hotremove_scsi_tc2",
            "hot remove over iSCSI: one disk split in two, one half per iSCSI target and VM, both under fio; pull the disk (QMP)",
            one_disk_two_vms,
            |d| split_disk_two_vms(d, Fabric::Iscsi).boxed(),
        ),
        s(
            "hotremove_scsi_tc3",
            "hot remove over iSCSI: one target with both disks as LUNs 0 and 1, one VM under fio on both; pull LUN 1's disk (guest sysfs)",
            two_disks_one_vm,
            |d| one_of_two_removed(d, Fabric::Iscsi, &ONE_CONTROLLER_ONE_VM).boxed(),
        ),
        s(
            "hotremove_scsi_tc4",
            "hot remove over iSCSI: two targets, two VMs under fio; pull the first disk (QMP); the other VM's fio stays clean",
            two_disks_two_vms,
            |d| one_of_two_removed(d, Fabric::Iscsi, &TWO_CONTROLLERS_TWO_VMS).boxed(),
        ),
    ];
    all.into_iter().map(host_only).collect()
}

/// Every hot-remove plan needs the host: guest mode refuses it, with this reason.
fn host_only(s: Scenario) -> Scenario {
    s.host_only(
        "pulls a disk out of the target VM (QMP device_del, or the target's sysfs at the PCI \
         address QMP query-pci gives)",
    )
}

fn target(disks: &[&str]) -> NodeSpec {
    disks.iter().fold(NodeSpec::new("target", Role::Target, 1), |n, id| {
        n.with_disk(DiskSpec::nvme(id, DISK_MIB))
    })
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

/// Which plan: the vhost-blk one over NVMe-oF, or the vhost-scsi one over iSCSI.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fabric {
    Nvmf,
    Iscsi,
}

impl Fabric {
    /// What the plan's "controller" is here.
    fn controller(self) -> &'static str {
        match self {
            Fabric::Nvmf => "subsystem",
            Fabric::Iscsi => "iSCSI target",
        }
    }

    /// A new controller with `bdev` as its first namespace or LUN.
    async fn share(self, target: &Machine, client: &mut TargetClient, bdev: &str) -> Result<Ctrl> {
        Ok(match self {
            Fabric::Nvmf => {
                Ctrl::Nvmf(nvmeof::share_bdev(target, client, bdev, None, NVMF_PORT).await?)
            }
            Fabric::Iscsi => Ctrl::Iscsi(iscsi::share_bdev(target, client, bdev).await?),
        })
    }
}

/// A plan's controller: an NVMe-oF subsystem or an iSCSI target.
#[derive(Clone, Debug)]
enum Ctrl {
    Nvmf(Share),
    Iscsi(iscsi::Target),
}

impl Ctrl {
    fn name(&self) -> &str {
        match self {
            Ctrl::Nvmf(share) => &share.nqn,
            Ctrl::Iscsi(t) => &t.iqn,
        }
    }

    /// The id of the bdev it was made with: namespace 1, or LUN 0.
    fn first_id(&self) -> u32 {
        match self {
            Ctrl::Nvmf(_) => 1,
            Ctrl::Iscsi(_) => 0,
        }
    }

    /// Adds `bdev` as the next namespace or LUN; returns its id.
    async fn add(&self, client: &mut TargetClient, bdev: &str) -> Result<u32> {
        match self {
            Ctrl::Nvmf(share) => {
                let req = proto::AddNamespaceRequest {
                    nqn: share.nqn.clone(),
                    bdev: bdev.into(),
                    ..Default::default()
                };
                Ok(client
                    .add_namespace(req)
                    .await
                    .with_context(|| format!("AddNamespace {bdev} to {}", share.nqn))?
                    .into_inner()
                    .nsid)
            }
            Ctrl::Iscsi(t) => iscsi::add_lun(client, t, bdev).await,
        }
    }

    /// `nvme connect`, or iSCSI discovery and login.
    async fn connect(&self, vm: &Machine) -> Result<()> {
        match self {
            Ctrl::Nvmf(share) => nvmeof::connect(vm, share).await,
            Ctrl::Iscsi(t) => iscsi::login(vm, t).await,
        }
    }

    /// Waits for namespace or LUN `id`'s block device on `vm`.
    async fn find_disk(&self, vm: &Machine, id: u32) -> Result<String> {
        match self {
            Ctrl::Nvmf(share) => {
                nvmeof::wait_for_namespace(vm, &share.nqn, id, crate::timeouts::hotplug()).await
            }
            Ctrl::Iscsi(t) => {
                iscsi::wait_for_disk(vm, &t.iqn, id, crate::timeouts::hotplug()).await
            }
        }
    }
}

/// A disk of a controller as a VM sees it: namespace id or LUN, and the block device.
#[derive(Clone, Debug)]
struct VmDisk {
    ctrl: Ctrl,
    id: u32,
    device: String,
}

/// "Start vhost with N controllers" and "add NVMe bdevs": one controller per disk, each made
/// with that disk's bdev; returns them in disk order.
async fn start_controllers(
    d: &Driver,
    fabric: Fabric,
    target: &Machine,
    client: &mut TargetClient,
    disks: &[&str],
) -> Result<Vec<Ctrl>> {
    let what = match disks.len() {
        1 => format!("start the target with one {} and add one NVMe bdev", fabric.controller()),
        n => format!("start the target with {n} {}s and add the NVMe bdevs", fabric.controller()),
    };
    d.subtest(&what, async {
        let mut ctrls = Vec::new();
        for disk in disks {
            let bdev = nvmeof::create_disk_bdev(target, client, disk).await?;
            ctrls.push(fabric.share(target, client, &bdev.name).await?);
        }
        Ok(ctrls)
    })
    .await
}

/// "Add both NVMe bdevs to the controller": one controller made with the first disk's bdev, the
/// others added to it (namespaces 2.., or LUNs 1..); returns it and the ids in disk order.
async fn start_one_controller(
    d: &Driver,
    fabric: Fabric,
    target: &Machine,
    client: &mut TargetClient,
    disks: &[&str],
) -> Result<(Ctrl, Vec<u32>)> {
    d.subtest(
        &format!("start the target with one {} and add both NVMe bdevs to it", fabric.controller()),
        async {
            let first = nvmeof::create_disk_bdev(target, client, disks[0]).await?;
            let ctrl = fabric.share(target, client, &first.name).await?;
            let mut ids = vec![ctrl.first_id()];
            for disk in &disks[1..] {
                let bdev = nvmeof::create_disk_bdev(target, client, disk).await?;
                ids.push(ctrl.add(client, &bdev.name).await?);
            }
            Ok((ctrl, ids))
        },
    )
    .await
}

/// "Run VM, attach to controller": connect and find the block device of each of `ids`.
async fn attach(d: &Driver, vm: &Machine, ctrl: &Ctrl, ids: &[u32]) -> Result<Vec<VmDisk>> {
    d.subtest(&format!("run {}, attach to {}", vm.name(), ctrl.name()), async {
        ctrl.connect(vm).await?;
        let devices = match ctrl {
            // Several LUNs on one VM: names in LUN order, so a reboot after one is pulled
            // gives the survivor its own name back, never the pulled one's.
            Ctrl::Iscsi(t) if ids.len() > 1 => {
                iscsi::name_in_lun_order(vm, &t.iqn, ids, crate::timeouts::hotplug()).await?
            }
            _ => {
                let mut devices = Vec::new();
                for id in ids {
                    devices.push(ctrl.find_disk(vm, *id).await?);
                }
                devices
            }
        };
        Ok(ids
            .iter()
            .zip(devices)
            .map(|(id, device)| VmDisk { ctrl: ctrl.clone(), id: *id, device })
            .collect())
    })
    .await
}

async fn pci_address(d: &Driver, target: &Machine, disk: &str) -> Result<String> {
    d.subtest(
        &format!("check the PCI address (bus:device.function) of NVMe {disk}"),
        target.pci_address(disk),
    )
    .await
}

/// "Run the command to hot remove NVMe disk": the disk leaves the target VM, and the step ends
/// when the daemon has withdrawn its bdevs from every namespace or LUN (its monitor polls; the
/// initiators' next steps act on what the target did, as a control plane's would).
async fn hot_remove(
    d: &Driver,
    target: &Machine,
    client: &mut TargetClient,
    disk: &str,
    how: Removal,
) -> Result<()> {
    let step = match how {
        Removal::Guest => format!("hot remove NVMe {disk} (sysfs remove in the target)"),
        Removal::Qmp => format!("hot remove NVMe {disk} (QMP device_del)"),
    };
    d.subtest(&step, async {
        match how {
            Removal::Guest => target.guest_remove_disk(disk).await.map(drop)?,
            Removal::Qmp => target.hot_remove_disk(disk).await?,
        }
        wait_withdrawn(target, client).await
    })
    .await
}

/// Waits until no faulted bdev is still in a namespace or LUN (a split disk's own bdev stays
/// claimed by its splits).
async fn wait_withdrawn(target: &Machine, client: &mut TargetClient) -> Result<()> {
    let base = client.clone();
    let held = &std::sync::Mutex::new(Vec::new());
    let polled = poll::until(crate::timeouts::hotplug(), crate::timeouts::DAEMON_POLL, |_| {
        let mut c = base.clone();
        async move {
            let bdevs = nvmeof::expect_target_alive(target, &mut c).await?;
            let still: Vec<_> = bdevs
                .into_iter()
                .filter(|b| {
                    b.state == STATE_FAULTED && b.claimed && b.claimed_by != CLAIMED_BY_SPLIT
                })
                .map(|b| format!("{} ({})", b.name, b.claimed_by))
                .collect();
            let done = still.is_empty();
            *held.lock().unwrap() = still;
            Ok(done.then_some(()))
        }
    })
    .await?;
    match polled {
        Polled::Done(()) => Ok(()),
        Polled::TimedOut(_) => Err(target.error(
            "the daemon did not withdraw the removed disk's bdevs",
            format!("still claimed: {:?}", held.lock().unwrap().clone()),
        )),
    }
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
    d.subtest(
        &format!("check fio on {} returns an interrupted-operation error", vm.name()),
        async {
            let outcome = run.wait().await?;
            outcome.expect_error().map(drop)
        },
    )
    .await
}

/// The initiator's side of the removal, where it has one: an iSCSI initiator deletes the
/// withdrawn LUN's disk or logs out of the vanished target ([`iscsi::remove_vanished`]). An
/// NVMe-oF initiator drops the namespace by itself (the target's AEN).
async fn initiator_removes(d: &Driver, vm: &Machine, disk: &VmDisk) -> Result<()> {
    let Ctrl::Iscsi(t) = &disk.ctrl else { return Ok(()) };
    let step = format!(
        "the initiator {} removes the vanished LUN {} ({}) as os-brick does",
        vm.name(),
        disk.id,
        disk.device
    );
    d.subtest(&step, iscsi::remove_vanished(vm, t, disk.id, &disk.device)).await.map(drop)
}

/// The removed disk's namespace or LUN has left the VM and lsblk no longer lists its device.
async fn expect_gone(d: &Driver, vm: &Machine, disk: &VmDisk) -> Result<()> {
    d.subtest(
        &format!("check the removed device {} is gone from lsblk on {}", disk.device, vm.name()),
        async {
            match &disk.ctrl {
                Ctrl::Nvmf(share) => {
                    nvmeof::wait_for_no_namespace(vm, &share.nqn, None, crate::timeouts::hotplug())
                        .await?;
                    nvmeof::expect_gone_from_lsblk(vm, &[&disk.device]).await
                }
                Ctrl::Iscsi(t) => iscsi::expect_no_disk(vm, &t.iqn, disk.id, &disk.device).await,
            }
        },
    )
    .await
}

/// After a reboot and reconnect: the removed disk has no device on the VM, and fio integrity
/// on the device it had fails to run (ENOENT: fio may not create files).
async fn expect_run_error_after_reboot(d: &Driver, vm: &Machine, disk: &VmDisk) -> Result<()> {
    expect_gone(d, vm, disk).await?;
    let device = &disk.device;
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

/// Reboots `vms` together and reconnects each to its controllers: NVMe-oF connects to every
/// one (a subsystem without namespaces still takes a connection); iSCSI logs in to those that
/// discovery still lists.
async fn reboot_and_reconnect(d: &Driver, vms: &[(&Machine, &[&Ctrl])]) -> Result<()> {
    let names: Vec<_> = vms.iter().map(|(m, _)| m.name()).collect();
    d.subtest(&format!("reboot {}", names.join(" and ")), async {
        futures::future::try_join_all(vms.iter().map(|(m, _)| m.reboot())).await?;
        for (m, ctrls) in vms {
            let mut targets = Vec::new();
            for ctrl in *ctrls {
                match ctrl {
                    Ctrl::Nvmf(share) => nvmeof::connect(m, share).await?,
                    Ctrl::Iscsi(t) => targets.push(t),
                }
            }
            if !targets.is_empty() {
                iscsi::relogin(m, &targets).await?;
            }
        }
        Ok(())
    })
    .await
}

async fn tc1(d: &Driver, fabric: Fabric) -> Result<()> {
    d.start_all().await?;
    let target = d.machine("target")?;
    let mut client = target.target_client().await?;
    start_controllers(d, fabric, &target, &mut client, &["disk0"]).await?;
    pci_address(d, &target, "disk0").await?;
    hot_remove(d, &target, &mut client, "disk0", Removal::Guest).await?;
    target_still_works(d, &target, &mut client).await
}

/// blk TC2 and TC3: one VM on the first of `disks`' subsystems runs fio integrity; that disk is
/// pulled; fio fails; the device is gone; after a reboot fio fails to run; the target works.
async fn one_vm_loses_its_disk(
    d: &Driver,
    disks: &[&str],
    fio_step: &str,
    how: Removal,
) -> Result<()> {
    d.start_all().await?;
    let (target, vm1) = (d.machine("target")?, d.machine("vm1")?);
    let mut client = target.target_client().await?;
    let ctrls = start_controllers(d, Fabric::Nvmf, &target, &mut client, disks).await?;
    let disk = attach(d, &vm1, &ctrls[0], &[1]).await?.remove(0);
    let fio = d
        .subtest(fio_step, async {
            let run = FioRun::start(
                &vm1,
                &integrity_job(&disk.device, FIO_UNDER_REMOVAL_SECS),
                &disk.device,
            )
            .await?;
            run.settle(SETTLE).await?;
            Ok(run)
        })
        .await?;
    pci_address(d, &target, disks[0]).await?;
    hot_remove(d, &target, &mut client, disks[0], how).await?;
    expect_interrupted(d, &fio, &vm1).await?;
    expect_gone(d, &vm1, &disk).await?;
    reboot_and_reconnect(d, &[(&vm1, &[&ctrls[0]])]).await?;
    expect_run_error_after_reboot(d, &vm1, &disk).await?;
    target_still_works(d, &target, &mut client).await
}

/// Where the two disks of [`one_of_two_removed`] go.
struct TwoDisks {
    /// Both disks in one controller (as its namespaces or LUNs), or one controller each.
    one_controller: bool,
    /// The VM that runs fio on each disk.
    vms: [&'static str; 2],
    /// Which of the two is pulled.
    removed: usize,
    how: Removal,
}

/// blk TC4 and scsi TC4: a controller per disk, a VM on each; the first disk pulled by QMP.
const TWO_CONTROLLERS_TWO_VMS: TwoDisks =
    TwoDisks { one_controller: false, vms: ["vm1", "vm2"], removed: 0, how: Removal::Qmp };
/// scsi TC3: one iSCSI target with both disks (LUN 0 and LUN 1), one VM on both; LUN 1's disk
/// pulled by the target itself. Not LUN 0: with LUN 0 gone and LUN 1 served, LIO answers on
/// LUN 0 with its read-only 32 KiB stand-in (reads of zeros where fio verifies), and after the
/// reboot the survivor would get the removed disk's `sda`, so "fio on the removed disk" would
/// hit the other one.
const ONE_CONTROLLER_ONE_VM: TwoDisks =
    TwoDisks { one_controller: true, vms: ["vm1", "vm1"], removed: 1, how: Removal::Guest };

/// fio integrity on two disks; one is pulled; fio on it fails, the other's finishes clean;
/// the removed device is gone; after the reboot fio on the other is clean again and on the
/// removed one fails to run; the target works.
async fn one_of_two_removed(d: &Driver, fabric: Fabric, lay: &TwoDisks) -> Result<()> {
    const DISKS: [&str; 2] = ["disk0", "disk1"];
    d.start_all().await?;
    let target = d.machine("target")?;
    let vms = [d.machine(lay.vms[0])?, d.machine(lay.vms[1])?];
    let mut client = target.target_client().await?;
    let (ctrls, disks) = if lay.one_controller {
        let (ctrl, ids) = start_one_controller(d, fabric, &target, &mut client, &DISKS).await?;
        let disks = attach(d, &vms[0], &ctrl, &ids).await?;
        (vec![ctrl], disks)
    } else {
        let ctrls = start_controllers(d, fabric, &target, &mut client, &DISKS).await?;
        let mut disks = attach(d, &vms[0], &ctrls[0], &[ctrls[0].first_id()]).await?;
        disks.extend(attach(d, &vms[1], &ctrls[1], &[ctrls[1].first_id()]).await?);
        (ctrls, disks)
    };
    let (r, k) = (lay.removed, 1 - lay.removed);
    let (removed, kept) = (&disks[r], &disks[k]);
    let (fio_removed, fio_kept) = d
        .subtest("run fio integrity on both NVMe disks", async {
            // The kept disk's run must end clean while the other is pulled: it is the shorter.
            let fio_r = FioRun::start(
                &vms[r],
                &integrity_job(&removed.device, FIO_UNDER_REMOVAL_SECS),
                &removed.device,
            )
            .await?;
            let fio_k = FioRun::start(
                &vms[k],
                &integrity_job(&kept.device, FIO_UNDER_REMOVAL_SECS / 2),
                &kept.device,
            )
            .await?;
            fio_r.settle(SETTLE).await?;
            Ok((fio_r, fio_k))
        })
        .await?;
    pci_address(d, &target, DISKS[r]).await?;
    hot_remove(d, &target, &mut client, DISKS[r], lay.how).await?;
    expect_interrupted(d, &fio_removed, &vms[r]).await?;
    initiator_removes(d, &vms[r], removed).await?;
    expect_gone(d, &vms[r], removed).await?;
    d.subtest("check fio finished on the not-removed disk: writes and reads succeeded", async {
        fio_kept.wait().await?.expect_clean().map(drop)
    })
    .await?;
    if lay.one_controller {
        reboot_and_reconnect(d, &[(&vms[0], &[&ctrls[0]])]).await?;
    } else {
        reboot_and_reconnect(d, &[(&vms[0], &[&ctrls[0]]), (&vms[1], &[&ctrls[1]])]).await?;
    }
    d.subtest("run fio integrity on the not-removed disk: writes and reads succeed", async {
        let dev = kept.ctrl.find_disk(&vms[k], kept.id).await?;
        run_fio(&vms[k], &integrity_job(&dev, FIO_CLEAN_SECS), &dev).await?.expect_clean().map(drop)
    })
    .await?;
    expect_run_error_after_reboot(d, &vms[r], removed).await?;
    target_still_works(d, &target, &mut client).await
}

/// blk TC5 and scsi TC2: "two controllers, one split NVMe bdev": the disk is split in two, each
/// half the first bdev of a controller of its own, one VM on each (the plans' steps speak of
/// both VMs).
async fn split_disk_two_vms(d: &Driver, fabric: Fabric) -> Result<()> {
    d.start_all().await?;
    let (target, vm1, vm2) = (d.machine("target")?, d.machine("vm1")?, d.machine("vm2")?);
    let mut client = target.target_client().await?;
    let ctrls = d
        .subtest(
            &format!(
                "start the target with two {}s and add one split NVMe bdev",
                fabric.controller()
            ),
            async {
                let disk = nvmeof::create_disk_bdev(&target, &mut client, "disk0").await?;
                let splits = client
                    .split_bdev(proto::SplitBdevRequest {
                        name: disk.name.clone(),
                        split_count: 2,
                        split_size_mb: None,
                    })
                    .await
                    .with_context(|| format!("SplitBdev {}", disk.name))?
                    .into_inner()
                    .bdevs;
                if splits.len() != 2 || splits.iter().any(|s| s.split_base != disk.name) {
                    bail!("expected two splits of {}, got {splits:?}", disk.name);
                }
                let mut ctrls = Vec::new();
                for split in &splits {
                    ctrls.push(fabric.share(&target, &mut client, &split.name).await?);
                }
                Ok(ctrls)
            },
        )
        .await?;
    let disk1 = attach(d, &vm1, &ctrls[0], &[ctrls[0].first_id()]).await?.remove(0);
    let disk2 = attach(d, &vm2, &ctrls[1], &[ctrls[1].first_id()]).await?.remove(0);
    let (fio1, fio2) = d
        .subtest("run fio integrity on both NVMe disks in the VMs", async {
            let fio1 = FioRun::start(
                &vm1,
                &integrity_job(&disk1.device, FIO_UNDER_REMOVAL_SECS),
                &disk1.device,
            )
            .await?;
            let fio2 = FioRun::start(
                &vm2,
                &integrity_job(&disk2.device, FIO_UNDER_REMOVAL_SECS),
                &disk2.device,
            )
            .await?;
            fio1.settle(SETTLE).await?;
            fio2.settle(Duration::ZERO).await?;
            Ok((fio1, fio2))
        })
        .await?;
    pci_address(d, &target, "disk0").await?;
    hot_remove(d, &target, &mut client, "disk0", Removal::Qmp).await?;
    expect_interrupted(d, &fio1, &vm1).await?;
    expect_interrupted(d, &fio2, &vm2).await?;
    initiator_removes(d, &vm1, &disk1).await?;
    initiator_removes(d, &vm2, &disk2).await?;
    expect_gone(d, &vm1, &disk1).await?;
    expect_gone(d, &vm2, &disk2).await?;
    reboot_and_reconnect(d, &[(&vm1, &[&ctrls[0]]), (&vm2, &[&ctrls[1]])]).await?;
    expect_run_error_after_reboot(d, &vm1, &disk1).await?;
    expect_run_error_after_reboot(d, &vm2, &disk2).await?;
    target_still_works(d, &target, &mut client).await
}
