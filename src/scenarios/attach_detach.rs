//! The hot-attach and hot-detach test plan (../shared/seeds/001, SPDK vhost "hotattach and
//! hotdetach"): NVMe disks are attached to and detached from controllers that initiators are
//! using, while fio runs with verify.
//!
//! A "controller" is an NVMe-oF subsystem of the target (`ctrlr-1` .. `ctrlr-8`, made empty with
//! CreateSubsystem, as the plan's "vhost with 8 empty controllers"); attaching an NVMe disk is
//! AddNamespace of a bdev on one of the target's emulated NVMe disks, detaching is
//! RemoveNamespace. Initiators are connected before anything is attached and see namespaces come
//! and go through the Namespace Attribute Changed event. The plan chains its cases ("the device
//! attached in test case 1"), so each of the two lists is a chain: its cases run in order on one
//! boot.
//!
//! Decided where the plan is silent or unclear:
//! - 8 emulated NVMe disks of 64 MiB stand for the plan's 16 (it allows fewer, split); the
//!   cases use 4 (attach) and 7 (detach).
//! - Hot-detach starts with one disk attached to each of ctrlr-5..8, as SPDK's hot-detach
//!   set-up does; the plan's prerequisites say only which VM uses which controller.
//! - Hot-detach TC4 says "detach NVMe from Ctrl1" but checks that the fio on the detached device
//!   failed, which runs on ctrlr-5's device: the disk detached is ctrlr-5's.
//! - "VMs did not crash" is checked as: every VM's agent answers, and every fio run that was not
//!   on a detached device finished clean.
//! - Hot-attach's vm2 is connected to ctrlr-3 and ctrlr-4 in TC4, where the plan first uses it
//!   ("attach NVMe to Ctrl3/VM2"), not in the prerequisites (both VMs still boot there): cases
//!   1-3 then run commands on vm1 alone, so they run in guest mode too (a guest-mode driver
//!   runs commands only on the machine it runs on, ARCHITECTURE.md "Guest mode"). TC4 reboots
//!   the VMs, which only the host can, and hot-detach runs fio on both VMs from its set-up on:
//!   those are host-only.

use anyhow::{bail, Context, Result};
use futures::FutureExt;

use super::nvmeof::{self, Share, NVMF_PORT};
use super::workload::{integrity_job, run_fio, FioRun, SETTLE};
use super::{Scenario, ScriptFn};
use crate::config::{DiskSpec, NodeSpec, Role};
use crate::driver::Driver;
use crate::log;
use crate::machine::Machine;
use crate::target::client::TargetClient;
use crate::target::proto;
use crate::timeouts;

const DISKS: usize = 8;
/// Eight disks, each attached and run: smaller than the other plans' disks (64 MiB is what the
/// integrity job covers).
const ATTACH_DISK_MIB: u64 = 64;
/// fio's run time while a disk is attached or detached under it.
const FIO_DURING_SECS: u64 = 15;
/// fio's run time where it only has to pass: shorter than elsewhere, as the chains run it on up
/// to eight devices, several times.
const FIO_SHORT_SECS: u64 = 6;

pub fn scenarios() -> Vec<Scenario> {
    let attach = |name, description, script: ScriptFn| {
        Scenario::new(name, description, script).machines(nodes()).chain("hotattach")
    };
    let detach = |name, description, script: ScriptFn| {
        Scenario::new(name, description, script).machines(nodes()).chain("hotdetach")
    };
    let guest_cannot = |s: Scenario| {
        match s.name() {
        "hotattach_tc4" => {
            s.host_only("connects vm2 beside vm1 and reboots both VMs (power): a guest-mode driver runs commands only where it runs, and cannot reboot")
        }
        name if name.starts_with("hotdetach") => s.host_only(
            "runs fio on both initiators (vm1 and vm2) from its set-up on, and TC4 reboots them: a guest-mode driver runs commands only where it runs",
        ),
        _ => s,
    }
    };
    let all = vec![
        attach("hotattach_tc1", "hot attach: attach an NVMe disk to ctrlr-1 (vm1); fio integrity on it", |d| attach_tc1(d).boxed()),
        attach("hotattach_tc2", "hot attach: during fio on it, attach another NVMe disk to ctrlr-1; fio on both", |d| {
            attach_tc2(d).boxed()
        }),
        attach("hotattach_tc3", "hot attach: during fio, attach an NVMe disk to ctrlr-2; fio on all", |d| attach_tc3(d).boxed()),
        attach("hotattach_tc4", "hot attach: during fio, attach to ctrlr-3 (vm2); fio on all, reboot, fio again", |d| {
            attach_tc4(d).boxed()
        }),
        detach("hotdetach_tc1", "hot detach: during fio on all devices, detach ctrlr-5's disk; it is gone, its fio failed", |d| {
            detach_tc1(d).boxed()
        }),
        detach("hotdetach_tc2", "hot detach: attach to ctrlr-5, fio on it, detach during fio; fio failed, device gone", |d| {
            detach_tc2(d).boxed()
        }),
        detach("hotdetach_tc3", "hot detach: attach to ctrlr-5, detach it idle while fio runs on the others; no fio fails", |d| {
            detach_tc3(d).boxed()
        }),
        detach("hotdetach_tc4", "hot detach: detach ctrlr-5's disk under fio beside fio everywhere; reboot; the rest in place", |d| {
            detach_tc4(d).boxed()
        }),
    ];
    all.into_iter().map(guest_cannot).collect()
}

fn nodes() -> Vec<NodeSpec> {
    let target = (0..DISKS).fold(NodeSpec::new("target", Role::Target, 1), |n, i| {
        n.with_disk(DiskSpec::nvme(&format!("disk{i}"), ATTACH_DISK_MIB))
    });
    vec![
        target,
        NodeSpec::new("vm1", Role::Initiator, 2).with_memory(768),
        NodeSpec::new("vm2", Role::Initiator, 3).with_memory(768),
    ]
}

/// The NQN of controller `n` (1-based, as the plan counts).
fn ctrlr(n: u32) -> String {
    format!("nqn.2019-05.io.vmcheck:ctrlr-{n}")
}

/// Which VM uses which controllers: the attach list's, then the detach list's.
fn vm_controllers(chain_detach: bool) -> [(&'static str, [u32; 2]); 2] {
    if chain_detach {
        [("vm1", [5, 6]), ("vm2", [7, 8])]
    } else {
        [("vm1", [1, 2]), ("vm2", [3, 4])]
    }
}

/// A namespace an initiator sees: which VM, which controller, which nsid, which device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Device {
    vm: String,
    nqn: String,
    nsid: u32,
    dev: String,
}

/// The chain's machines and the target's gRPC handle, rebuilt by each case.
struct Rig {
    target: Machine,
    client: TargetClient,
    vms: Vec<Machine>,
    detach: bool,
    /// The VMs connected to their controllers so far (hot-attach's vm2 joins in TC4).
    joined: Vec<&'static str>,
}

impl Rig {
    async fn new(d: &Driver, detach: bool, joined: &[&'static str]) -> Result<Rig> {
        let target = d.machine("target")?;
        let client = target.target_client().await?;
        let vms = vec![d.machine("vm1")?, d.machine("vm2")?];
        Ok(Rig { target, client, vms, detach, joined: joined.to_vec() })
    }

    /// The controllers of the VMs connected so far.
    fn joined_controllers(&self) -> Vec<(&'static str, [u32; 2])> {
        vm_controllers(self.detach).into_iter().filter(|(vm, _)| self.joined.contains(vm)).collect()
    }

    /// Connects `vm` to its two controllers, which must show no namespace yet.
    async fn join(&mut self, vm: &'static str) -> Result<()> {
        let (_, ctrls) = vm_controllers(self.detach)
            .into_iter()
            .find(|(v, _)| *v == vm)
            .context("no such VM")?;
        for n in ctrls {
            nvmeof::connect(self.vm(vm)?, &self.share(n)).await?;
        }
        self.joined.push(vm);
        let devices = self.devices().await?;
        if devices.iter().any(|d| d.vm == vm) {
            bail!("the controllers of {vm} are empty, yet it sees {devices:?}");
        }
        Ok(())
    }

    /// Reboots both VMs together and connects each again to its controllers (a reboot drops
    /// every NVMe-oF connection).
    async fn reboot_and_reconnect(&self) -> Result<()> {
        futures::future::try_join_all(self.vms.iter().map(Machine::reboot)).await?;
        for (vm, ctrls) in self.joined_controllers() {
            for n in ctrls {
                nvmeof::connect(self.vm(vm)?, &self.share(n)).await?;
            }
        }
        Ok(())
    }

    fn vm(&self, name: &str) -> Result<&Machine> {
        self.vms.iter().find(|m| m.name() == name).context("no such VM")
    }

    fn share(&self, n: u32) -> Share {
        Share { nqn: ctrlr(n), addr: self.target.address(), port: NVMF_PORT, uri: String::new() }
    }

    /// The namespaces of the chain's controllers that each VM connected so far sees now.
    async fn devices(&self) -> Result<Vec<Device>> {
        let mut out = Vec::new();
        for (vm, ctrls) in self.joined_controllers() {
            let nqns: Vec<String> = ctrls.iter().map(|n| ctrlr(*n)).collect();
            for (dev, nqn, nsid) in nvmeof::namespaces(self.vm(vm)?).await? {
                if nqns.contains(&nqn) {
                    out.push(Device { vm: vm.to_string(), nqn, nsid, dev });
                }
            }
        }
        Ok(out)
    }

    /// Attaches the next unused NVMe disk of the target to controller `n` and waits until the
    /// VM using that controller sees it.
    async fn attach(&mut self, n: u32) -> Result<Device> {
        let used: Vec<String> = self
            .client
            .list_bdevs(proto::ListBdevsRequest {})
            .await?
            .into_inner()
            .bdevs
            .into_iter()
            .map(|b| b.name)
            .collect();
        let mut free = None;
        for i in 0..DISKS {
            let id = format!("disk{i}");
            let dev = self.target.disk_device(&id).await?;
            if !used.contains(&format!("aio://{dev}")) {
                free = Some(id);
                break;
            }
        }
        let disk = free.context("every NVMe disk of the target is in use")?;
        let bdev = nvmeof::create_disk_bdev(&self.target, &mut self.client, &disk).await?;
        let ns = self
            .client
            .add_namespace(proto::AddNamespaceRequest {
                nqn: ctrlr(n),
                bdev: bdev.name.clone(),
                nsid: None,
                ..Default::default()
            })
            .await
            .with_context(|| format!("AddNamespace {} to ctrlr-{n}", bdev.name))?
            .into_inner();
        let vm = vm_controllers(self.detach)
            .iter()
            .find(|(_, c)| c.contains(&n))
            .map(|(vm, _)| *vm)
            .context("no VM uses it")?;
        let dev = nvmeof::wait_for_namespace(self.vm(vm)?, &ctrlr(n), ns.nsid, timeouts::hotplug())
            .await?;
        log::line(&format!(
            "{disk} attached to ctrlr-{n} as namespace {}: {vm} sees {dev}",
            ns.nsid
        ));
        Ok(Device { vm: vm.to_string(), nqn: ctrlr(n), nsid: ns.nsid, dev })
    }

    /// Detaches `device` on the target (RemoveNamespace).
    async fn detach(&mut self, device: &Device) -> Result<()> {
        self.client
            .remove_namespace(proto::RemoveNamespaceRequest {
                nqn: device.nqn.clone(),
                nsid: device.nsid,
                ..Default::default()
            })
            .await
            .with_context(|| format!("RemoveNamespace {} {}", device.nqn, device.nsid))?;
        Ok(())
    }

    /// Starts fio integrity on each of `devices`.
    async fn start_fio(&self, devices: &[Device], secs: u64) -> Result<Vec<FioRun>> {
        let mut runs = Vec::new();
        for d in devices {
            runs.push(FioRun::start(self.vm(&d.vm)?, &integrity_job(&d.dev, secs), &d.dev).await?);
        }
        if let Some(first) = runs.first() {
            first.settle(SETTLE).await?;
        }
        Ok(runs)
    }

    /// fio integrity on every one of `devices` at once, each finishing clean.
    async fn fio_all_clean(&self, devices: &[Device]) -> Result<()> {
        if devices.is_empty() {
            bail!("no device to run fio on");
        }
        let runs = futures::future::try_join_all(devices.iter().map(|d| async move {
            run_fio(self.vm(&d.vm)?, &integrity_job(&d.dev, FIO_SHORT_SECS), &d.dev).await
        }))
        .await?;
        for r in &runs {
            r.expect_clean()?;
        }
        Ok(())
    }

    /// The plan's "vhost or VMs did not crash": the daemon and every VM's agent answer.
    async fn nothing_crashed(&mut self) -> Result<()> {
        nvmeof::expect_target_alive(&self.target, &mut self.client).await?;
        for vm in self.vms.iter().filter(|vm| self.joined.contains(&vm.name())) {
            vm.succeed("true").await.with_context(|| format!("{} does not answer", vm.name()))?;
        }
        Ok(())
    }

    /// The plan's "detached device is gone from VM": no namespace (nqn, nsid) and lsblk does
    /// not list its device.
    async fn gone(&self, device: &Device) -> Result<()> {
        let vm = self.vm(&device.vm)?;
        nvmeof::wait_for_no_namespace(vm, &device.nqn, Some(device.nsid), timeouts::hotplug())
            .await?;
        // A device name is reused by the next namespace: check lsblk only while none replaced it.
        if !self.devices().await?.iter().any(|d| d.dev == device.dev) {
            nvmeof::expect_gone_from_lsblk(vm, &[&device.dev]).await?;
        }
        Ok(())
    }
}

/// The VMs a case of the chain finds connected: hot-attach's vm2 joins in TC4.
fn joined_at_start(detach: bool) -> &'static [&'static str] {
    if detach {
        &["vm1", "vm2"]
    } else {
        &["vm1"]
    }
}

/// The chain's set-up: 8 empty controllers, and each VM of the case connected to its two
/// (hot-attach: vm1; hot-detach: both).
async fn prerequisites(d: &Driver, detach: bool) -> Result<Rig> {
    d.start_all().await?;
    let mut b = Rig::new(d, detach, &[]).await?;
    d.subtest("run the target with 8 empty controllers", async {
        for n in 1..=8 {
            b.client
                .create_subsystem(proto::CreateSubsystemRequest {
                    nqn: ctrlr(n),
                    port: Some(NVMF_PORT.into()),
                    allowed_hosts: Vec::new(),
                })
                .await
                .with_context(|| format!("CreateSubsystem ctrlr-{n}"))?;
        }
        let subsystems = b
            .client
            .list_subsystems(proto::ListSubsystemsRequest {})
            .await?
            .into_inner()
            .subsystems;
        let empty = subsystems
            .iter()
            .filter(|s| s.nqn.contains(":ctrlr-") && s.namespaces.is_empty())
            .count();
        if empty != 8 {
            bail!("expected 8 empty controllers, the target lists {subsystems:?}");
        }
        Ok(())
    })
    .await?;
    let joining: Vec<String> = vm_controllers(detach)
        .iter()
        .filter(|(vm, _)| joined_at_start(detach).contains(vm))
        .map(|(vm, c)| format!("{vm} with ctrlr-{} and ctrlr-{}", c[0], c[1]))
        .collect();
    d.subtest(&format!("run VMs: {}", joining.join(", ")), async {
        for vm in joined_at_start(detach) {
            b.join(vm).await?;
        }
        Ok(())
    })
    .await?;
    Ok(b)
}

/// Rebuilds the chain's handle for a later case (the machines run on from the earlier case).
async fn resume(d: &Driver, detach: bool) -> Result<Rig> {
    Rig::new(d, detach, joined_at_start(detach)).await
}

async fn attach_tc1(d: &Driver) -> Result<()> {
    let mut b = prerequisites(d, false).await?;
    let dev = d.subtest("attach NVMe to ctrlr-1", b.attach(1)).await?;
    d.subtest("run fio integrity on the attached device", b.fio_all_clean(&[dev])).await
}

/// "During fio attach NVMe to ctrlr-n; run fio integrity on all devices": fio on everything
/// attached so far, an attach under it, that fio clean, then fio on all devices clean.
async fn attach_during_fio(d: &Driver, b: &mut Rig, n: u32) -> Result<()> {
    let before = b.devices().await?;
    let runs = d
        .subtest(
            "run fio integrity on the devices attached so far",
            b.start_fio(&before, FIO_DURING_SECS),
        )
        .await?;
    d.subtest(&format!("during fio, attach NVMe to ctrlr-{n}"), b.attach(n)).await?;
    d.subtest("fio under the attach finished clean", async {
        for r in &runs {
            r.wait().await?.expect_clean()?;
        }
        Ok(())
    })
    .await?;
    let all = b.devices().await?;
    if all.len() != before.len() + 1 {
        bail!("expected {} devices after the attach, the VMs see {all:?}", before.len() + 1);
    }
    d.subtest(&format!("run fio integrity on all {} devices", all.len()), b.fio_all_clean(&all))
        .await
}

async fn attach_tc2(d: &Driver) -> Result<()> {
    let mut b = resume(d, false).await?;
    attach_during_fio(d, &mut b, 1).await
}

async fn attach_tc3(d: &Driver) -> Result<()> {
    let mut b = resume(d, false).await?;
    attach_during_fio(d, &mut b, 2).await
}

async fn attach_tc4(d: &Driver) -> Result<()> {
    let mut b = resume(d, false).await?;
    d.subtest("run vm2 with ctrlr-3 and ctrlr-4", b.join("vm2")).await?;
    attach_during_fio(d, &mut b, 3).await?;
    let before: Vec<(String, String, u32)> =
        b.devices().await?.into_iter().map(|x| (x.vm, x.nqn, x.nsid)).collect();
    d.subtest("reboot VMs", async {
        b.reboot_and_reconnect().await?;
        // Every namespace comes back on its controller.
        for (vm, nqn, nsid) in &before {
            nvmeof::wait_for_namespace(b.vm(vm)?, nqn, *nsid, timeouts::hotplug()).await?;
        }
        Ok(())
    })
    .await?;
    let all = b.devices().await?;
    d.subtest(
        &format!("run fio integrity again on all {} devices", all.len()),
        b.fio_all_clean(&all),
    )
    .await
}

/// Hot-detach's set-up beyond the controllers: one NVMe disk on each of ctrlr-5..8.
async fn detach_prerequisites(d: &Driver) -> Result<Rig> {
    let mut b = prerequisites(d, true).await?;
    d.subtest("attach an NVMe disk to each of ctrlr-5..8", async {
        for n in 5..=8 {
            b.attach(n).await?;
        }
        Ok(())
    })
    .await?;
    Ok(b)
}

/// The device of ctrlr-5 (the one the cases detach).
async fn ctrlr5_device(b: &Rig) -> Result<Device> {
    b.devices().await?.into_iter().find(|x| x.nqn == ctrlr(5)).context("ctrlr-5 has no device")
}

async fn detach_tc1(d: &Driver) -> Result<()> {
    let mut b = detach_prerequisites(d).await?;
    let all = b.devices().await?;
    let runs = d
        .subtest(
            &format!("run fio on all {} devices", all.len()),
            b.start_fio(&all, FIO_DURING_SECS),
        )
        .await?;
    let victim = ctrlr5_device(&b).await?;
    d.subtest("detach NVMe from ctrlr-5 during fio", b.detach(&victim)).await?;
    detached_checks(d, &mut b, &all, &runs, &victim, true).await
}

/// After a detach under fio: nothing crashed; the fio on the detached device stopped with an
/// error (when it ran one); every other fio finished clean; the device is gone.
async fn detached_checks(
    d: &Driver,
    b: &mut Rig,
    ran_on: &[Device],
    runs: &[FioRun],
    victim: &Device,
    victim_had_fio: bool,
) -> Result<()> {
    d.subtest("check the target and VMs did not crash", b.nothing_crashed()).await?;
    d.subtest("check the detached device is gone from the VM", b.gone(victim)).await?;
    if victim_had_fio {
        d.subtest("check the fio job on the detached device stopped and failed", async {
            let i = ran_on
                .iter()
                .position(|x| x == victim)
                .context("no fio ran on the detached device")?;
            runs[i].wait().await?.expect_error().map(drop)
        })
        .await?;
    }
    let others: Vec<_> = ran_on.iter().zip(runs).filter(|(x, _)| *x != victim).collect();
    if !others.is_empty() {
        d.subtest("check the other fio jobs did not fail", async {
            for (_, run) in others {
                run.wait().await?.expect_clean()?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

async fn detach_tc2(d: &Driver) -> Result<()> {
    let mut b = resume(d, true).await?;
    let dev = d.subtest("attach NVMe to ctrlr-5", b.attach(5)).await?;
    let runs = d
        .subtest(
            "run fio on the device of ctrlr-5",
            b.start_fio(std::slice::from_ref(&dev), FIO_DURING_SECS),
        )
        .await?;
    d.subtest("detach NVMe from ctrlr-5 during fio traffic", b.detach(&dev)).await?;
    detached_checks(d, &mut b, std::slice::from_ref(&dev), &runs, &dev, true).await
}

async fn detach_tc3(d: &Driver) -> Result<()> {
    let mut b = resume(d, true).await?;
    let dev = d.subtest("attach NVMe to ctrlr-5", b.attach(5)).await?;
    let others: Vec<Device> = b.devices().await?.into_iter().filter(|x| *x != dev).collect();
    let runs = d
        .subtest(
            &format!("run fio integrity on all devices but that one ({})", others.len()),
            b.start_fio(&others, FIO_DURING_SECS),
        )
        .await?;
    d.subtest("detach NVMe without traffic while fio runs on the others", b.detach(&dev)).await?;
    detached_checks(d, &mut b, &others, &runs, &dev, false).await
}

async fn detach_tc4(d: &Driver) -> Result<()> {
    let mut b = resume(d, true).await?;
    let dev = d.subtest("attach NVMe to ctrlr-5", b.attach(5)).await?;
    let victim_run = d
        .subtest(
            "run fio on the device of ctrlr-5",
            b.start_fio(std::slice::from_ref(&dev), FIO_DURING_SECS),
        )
        .await?;
    let others: Vec<Device> = b.devices().await?.into_iter().filter(|x| *x != dev).collect();
    let other_runs = d
        .subtest(
            "run separate fio integrity on all other devices (all VMs)",
            b.start_fio(&others, FIO_DURING_SECS),
        )
        .await?;
    d.subtest("detach NVMe from ctrlr-5 during fio traffic", b.detach(&dev)).await?;
    let mut ran_on = vec![dev.clone()];
    ran_on.extend(others.iter().cloned());
    let runs: Vec<FioRun> = victim_run.into_iter().chain(other_runs).collect();
    detached_checks(d, &mut b, &ran_on, &runs, &dev, true).await?;
    let remaining: Vec<(String, String, u32)> =
        others.iter().map(|x| (x.vm.clone(), x.nqn.clone(), x.nsid)).collect();
    d.subtest("reboot VMs", b.reboot_and_reconnect()).await?;
    d.subtest("check that all other devices are in place", async {
        for (vm, nqn, nsid) in &remaining {
            nvmeof::wait_for_namespace(b.vm(vm)?, nqn, *nsid, timeouts::hotplug()).await?;
        }
        Ok(())
    })
    .await?;
    d.subtest("check the detached device is gone from the VM after the reboot", async {
        let now = b.devices().await?;
        if now.iter().any(|x| x.nqn == dev.nqn && x.nsid == dev.nsid) {
            bail!("the detached namespace {} of {} is back: {now:?}", dev.nsid, dev.nqn);
        }
        let expected: std::collections::BTreeSet<_> = remaining.iter().cloned().collect();
        let seen: std::collections::BTreeSet<_> =
            now.iter().map(|x| (x.vm.clone(), x.nqn.clone(), x.nsid)).collect();
        if seen != expected {
            bail!("after the reboot the VMs see {seen:?}, expected exactly {expected:?}");
        }
        let lsblk_devices: Vec<String> =
            nvmeof::lsblk(b.vm(&dev.vm)?).await?.iter().map(|x| x.path()).collect();
        for x in now.iter().filter(|x| x.vm == dev.vm) {
            if !lsblk_devices.contains(&x.dev) {
                bail!("lsblk on {} does not list {} ({:?})", x.vm, x.dev, lsblk_devices);
            }
        }
        Ok(())
    })
    .await?;
    let all = b.devices().await?;
    d.subtest(
        &format!("run fio integrity on all {} remaining devices", all.len()),
        b.fio_all_clean(&all),
    )
    .await
}
