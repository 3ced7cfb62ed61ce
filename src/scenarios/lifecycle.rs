//! VM lifecycle scenarios after VM Test Bench (../shared/seeds/004): save and restore an
//! initiator at a quiet moment, pause it during fio, live-migrate it during fio; and the balloon
//! plan's storage row, the balloon in a loop while fio with verify runs over NVMe-oF.
//!
//! One chain ("lifecycle") on one target and one initiator: the cases share the boots and the
//! NVMe-oF connection (a case run alone sets it up). fio is the integrity job (random writes,
//! every block verified); "clean" is the typed outcome: exit 0, no error, no verify failure, I/O
//! both ways.

use std::time::Duration;

use anyhow::{bail, Result};
use futures::FutureExt;

use super::balloon::{evict_or_enlarge, GUEST_MIB};
use super::nvmeof::{self, NVMF_PORT};
use super::workload::{integrity_job, run_fio, FioRun, DISK_MIB, FIO_CLEAN_SECS, SETTLE};
use super::{Scenario, ScriptFn};
use crate::config::{DiskSpec, NodeSpec, Role};
use crate::driver::Driver;
use crate::log;
use crate::machine::Machine;

/// Where the save/restore data lies on the shared disk: past the integrity job's 64 MiB.
const DATA_OFFSET_MIB: u64 = 192;
const DATA_MIB: u64 = 16;

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, description, script: ScriptFn| {
        Scenario::new(name, description, script).machines(nodes()).chain("lifecycle")
    };
    let all = vec![
        s(
            "lifecycle_save_restore",
            "save an initiator to a file at a quiet moment and restore it: data written before reads back, fio with verify passes",
            |d| save_restore(d).boxed(),
        ),
        s("lifecycle_pause_fio", "pause an initiator during fio with verify, resume it: fio finishes clean", |d| pause_fio(d).boxed()),
        s("lifecycle_migrate_fio", "live-migrate an initiator while fio with verify runs over NVMe-oF: fio finishes clean", |d| {
            migrate_fio(d).boxed()
        }),
        s("balloon_fio", "balloon: evict and enlarge in a loop while the guest runs fio with verify over NVMe-oF", |d| {
            balloon_fio(d).boxed()
        }),
    ];
    all.into_iter().map(host_only).collect()
}

/// Why each lifecycle case needs the host: guest mode refuses it, with the reason.
fn host_only(s: Scenario) -> Scenario {
    let why = match s.name() {
        "lifecycle_save_restore" => "saves an initiator's QEMU to a file and restores it",
        "lifecycle_pause_fio" => "pauses and resumes an initiator (QMP stop, cont)",
        "lifecycle_migrate_fio" => "live-migrates an initiator to a second QEMU",
        _ => "the virtio balloon (QMP)",
    };
    s.host_only(why)
}

fn nodes() -> Vec<NodeSpec> {
    vec![
        NodeSpec::new("target", Role::Target, 1).with_disk(DiskSpec::nvme("disk0", DISK_MIB)),
        NodeSpec::new("vm1", Role::Initiator, 2).with_memory(GUEST_MIB),
    ]
}

/// The machines, with the initiator connected to the target's disk; returns the initiator and
/// its namespace's device. An earlier case of the chain has connected it already.
async fn connected(d: &Driver) -> Result<(Machine, String)> {
    d.start_all().await?;
    let (target, vm1) = (d.machine("target")?, d.machine("vm1")?);
    if let Some((dev, _, _)) =
        nvmeof::namespaces(&vm1).await?.into_iter().find(|(_, _, nsid)| *nsid == 1)
    {
        return Ok((vm1, dev));
    }
    let dev = d
        .subtest("share the target's disk over NVMe-oF and connect the initiator", async {
            let mut client = target.target_client().await?;
            let bdev = nvmeof::create_disk_bdev(&target, &mut client, "disk0").await?;
            let share =
                nvmeof::share_bdev(&target, &mut client, &bdev.name, None, NVMF_PORT).await?;
            nvmeof::connect_namespace(&vm1, &share, 1).await
        })
        .await?;
    Ok((vm1, dev))
}

async fn boot_id(vm: &Machine) -> Result<String> {
    Ok(vm.succeed("cat /proc/sys/kernel/random/boot_id").await?.trim().to_string())
}

async fn uptime_secs(vm: &Machine) -> Result<f64> {
    let text = vm.succeed("cat /proc/uptime").await?;
    text.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| vm.error("unreadable /proc/uptime", text))
}

/// The sha256 of the data region, read from the target through the initiator's page cache
/// dropped first.
async fn data_hash(vm: &Machine, dev: &str) -> Result<String> {
    let out = vm
        .succeed(&format!(
            "echo 3 > /proc/sys/vm/drop_caches; dd if={dev} bs=1M skip={DATA_OFFSET_MIB} count={DATA_MIB} 2>/dev/null | sha256sum"
        ))
        .await?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_string())
}

async fn save_restore(d: &Driver) -> Result<()> {
    let (vm1, dev) = connected(d).await?;
    let written = d
        .subtest("write data over NVMe-oF before the save", async {
            let out = vm1
                .succeed(&format!(
                    "head -c {} /dev/urandom > /tmp/before-save && dd if=/tmp/before-save of={dev} bs=1M seek={DATA_OFFSET_MIB} conv=fsync 2>/dev/null \
                     && sha256sum < /tmp/before-save && rm /tmp/before-save",
                    DATA_MIB << 20
                ))
                .await?;
            let hash = out.split_whitespace().next().unwrap_or_default().to_string();
            if hash.len() != 64 || data_hash(&vm1, &dev).await? != hash {
                bail!("the data does not read back before the save: {out}");
            }
            Ok(hash)
        })
        .await?;
    let (id, uptime) = (boot_id(&vm1).await?, uptime_secs(&vm1).await?);
    let saved = d
        .subtest("save the initiator at a quiet moment (migration to a file)", async {
            let saved = vm1.save_state().await?;
            if vm1.is_up().await {
                bail!("QEMU still runs after the save");
            }
            if saved.bytes < 1 << 20 {
                bail!("the saved state is {} bytes: not a machine", saved.bytes);
            }
            Ok(saved)
        })
        .await?;
    d.subtest("restore the initiator: the same boot goes on", async {
        vm1.restore_state(&saved).await?;
        let (id2, uptime2) = (boot_id(&vm1).await?, uptime_secs(&vm1).await?);
        if id2 != id || uptime2 < uptime {
            bail!("the restored guest is not the saved one: boot id {id} -> {id2}, uptime {uptime} -> {uptime2} s");
        }
        Ok(())
    })
    .await?;
    d.subtest("data written before the save reads back after the restore", async {
        let read = data_hash(&vm1, &dev).await?;
        if read != written {
            bail!("sha256 of the data region is {read}, {written} was written before the save");
        }
        Ok(())
    })
    .await?;
    d.subtest("fio with verify over NVMe-oF passes after the restore", async {
        run_fio(&vm1, &integrity_job(&dev, FIO_CLEAN_SECS), &dev).await?.expect_clean().map(drop)
    })
    .await
}

async fn start_fio(d: &Driver, vm: &Machine, dev: &str, secs: u64) -> Result<FioRun> {
    d.subtest(&format!("run fio integrity ({secs} s) over NVMe-oF"), async {
        let run = FioRun::start(vm, &integrity_job(dev, secs), dev).await?;
        run.settle(SETTLE).await?;
        Ok(run)
    })
    .await
}

async fn pause_fio(d: &Driver) -> Result<()> {
    let (vm1, dev) = connected(d).await?;
    let fio = start_fio(d, &vm1, &dev, 15).await?;
    d.subtest("pause the initiator during fio (stop), hold it 5 s", async {
        vm1.pause().await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = vm1.run_state().await?;
        if s.running {
            bail!("the initiator runs again by itself: {:?}", s.status);
        }
        Ok(())
    })
    .await?;
    d.subtest("resume the initiator (cont): fio finishes with no error", async {
        vm1.resume().await?;
        fio.wait().await?.expect_clean().map(drop)
    })
    .await
}

async fn migrate_fio(d: &Driver) -> Result<()> {
    let (vm1, dev) = connected(d).await?;
    let id = boot_id(&vm1).await?;
    let fio = start_fio(d, &vm1, &dev, 20).await?;
    d.subtest("live-migrate the initiator while fio runs", async {
        let pid = vm1.pid().await;
        let report = vm1.migrate().await?;
        if vm1.pid().await == pid {
            bail!("the initiator runs in the same QEMU process after the migration");
        }
        if !fio.is_running().await? {
            bail!(
                "fio ended during the migration; it was meant to run through it (downtime {} ms)",
                report.downtime_ms
            );
        }
        Ok(())
    })
    .await?;
    d.subtest("fio finishes clean after the migration, in the same boot", async {
        fio.wait().await?.expect_clean()?;
        if boot_id(&vm1).await? != id {
            bail!("the initiator rebooted");
        }
        Ok(())
    })
    .await
}

/// balloon_fio's fio run time: a bound the loop never reaches (it takes 15-45 s under TCG); fio
/// is stopped when the loop is done.
const BALLOON_FIO_BOUND_SECS: u64 = 600;

async fn balloon_fio(d: &Driver) -> Result<()> {
    let (vm1, dev) = connected(d).await?;
    // fio runs as long as the loop does, however long the host takes: started with a run time
    // no loop reaches, stopped when the loop is done (a fixed 40 s run ended first once, on a
    // host loaded three times over).
    let fio = d
        .subtest("run fio integrity over NVMe-oF, until the balloon loop is done", async {
            let job = integrity_job(&dev, BALLOON_FIO_BOUND_SECS);
            let run = FioRun::start(&vm1, &job, &dev).await?;
            run.settle(SETTLE).await?;
            Ok(run)
        })
        .await?;
    d.subtest("balloon memory in a loop while fio runs (512, 384, 640, 448, 768 MiB)", async {
        for mib in [512, 384, 640, 448, GUEST_MIB] {
            evict_or_enlarge(&vm1, mib).await?;
        }
        if !fio.is_running().await? {
            bail!(
                "fio ended before the balloon loop did: the loop did not run under fio throughout; {}",
                fio.wait().await?.describe()
            );
        }
        log::line("the balloon loop ran under fio");
        Ok(())
    })
    .await?;
    d.subtest("fio with verify finishes clean (no verify failure)", async {
        fio.stop().await?.expect_clean().map(drop)
    })
    .await
}
