//! Media errors in the storage under test (issue 22, item 3): a disk of the target VM starts
//! failing I/O while an initiator uses it over NVMe-oF, injected from the host through QEMU's
//! block layer (a blkdebug node put under the disk at run time, [`Machine::inject_media_error`])
//! and cleared again, nothing restarted. Each step is a subtest; the assertions are what a
//! serious target must do:
//!
//! - `media_error_read_eio`: reads of a range of one namespace's backing disk fail. The
//!   initiator's fio verify pass on that namespace must end in an I/O error at the first bad
//!   block (data before it verified, no verify failure: a bad read is never passed off as
//!   data), soon, as an error status rather than a lost command (the initiator's controller
//!   stays live, no timeout, no reset). The other namespace verifies clean, the target's daemon
//!   answers and lists the bdev online (a media error is not a vanished device: the namespace
//!   stays), and once the fault is cleared the same verify pass is clean.
//! - `media_error_werror_stop`: the backing disk is virtio-blk with `werror=stop`; writes start
//!   failing mid-run of fio with verify. The target VM must pause (QMP `BLOCK_IO_ERROR`, action
//!   stop, then `STOP`, run state `io-error`) with the initiator's fio held, not failed; once the
//!   fault is cleared and the VM resumed, QEMU retries the held writes and fio with verify must
//!   finish clean.
//!
//! Why the host's block layer and not device-mapper in the target: QEMU 10 changes a disk's
//! block graph at run time (`blockdev-add` of a blkdebug node, `blockdev-reopen`), so the fault
//! sits below the target's whole stack, its kernel's NVMe driver included, as a failing disk
//! would; and `werror`/`rerror` are policies of the host's device model, which only a host-side
//! fault reaches.
//!
//! How the error travels (Linux 6.1 in both VMs): QEMU's nvme device completes a failed read
//! with Unrecovered Read Error, no DNR bit; the target kernel's NVMe driver retries it
//! (`nvme_core.max_retries`, 5) and then fails the bio as a critical medium error; nvmet turns
//! that into an NVMe status for the initiator, whose driver retries too and then fails the read
//! to fio. Every hop is an error status: nothing waits for a timeout.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::FutureExt;

use super::nvmeof::{self, Share, NVMF_PORT};
use super::workload::{integrity_job, run_fio, FioOutcome, FioRun};
use super::Scenario;
use crate::config::{DiskSpec, NodeSpec, OnError, Role};
use crate::driver::Driver;
use crate::log;
use crate::machine::{Machine, MediaFault, SECTOR_BYTES};
use crate::target::client::TargetClient;
use crate::target::proto;
use crate::target::service::STATE_ONLINE;
use crate::timeouts;
use crate::tools::fio::{Direction, Fio, Rw, Verify};
use crate::tools::nvme::{parse_controllers, Controller, CONTROLLERS};

/// The target's disks here: small, the data is a few MiB.
const DISK_MIB: u64 = 64;
/// What the read scenario writes and verifies on each namespace.
const DATA_MIB: u64 = 4;
/// The bad sectors of the read scenario: the second MiB.
const BAD_SECTORS: std::ops::Range<u64> = 2048..4096;
// The bad range lies inside the data written, with good data before it.
const _: () = assert!(BAD_SECTORS.start > 0 && BAD_SECTORS.end * SECTOR_BYTES <= DATA_MIB << 20);
/// Writes the werror scenario lets pass before the disk fails: fio is well under way then.
const WRITES_BEFORE_FAULT: u32 = 64;
/// fio's run in the werror scenario (time-based: it runs on after the pause).
const FIO_SECS: u64 = 15;
/// ENODATA: Linux's errno for a critical medium error (`BLK_STS_MEDIUM`).
const ENODATA: i32 = 61;

/// The media-error scenarios.
pub fn scenarios() -> Vec<Scenario> {
    let all = vec![
        Scenario::new(
            "media_error_read_eio",
            "media errors: reads of one namespace's disk fail (QEMU blkdebug, at run time); fio verify there \
             ends in an I/O error, never bad data; the other namespace stays clean; the target stays up; \
             after clearing, reads verify clean",
            |d| read_eio(d).boxed(),
        )
        .machines(vec![
            NodeSpec::new("target", Role::Target, 1)
                .with_disk(DiskSpec::nvme("disk0", DISK_MIB))
                .with_disk(DiskSpec::nvme("disk1", DISK_MIB)),
            initiator(),
        ]),
        Scenario::new(
            "media_error_werror_stop",
            "media errors with werror=stop: writes to the target's disk fail mid-fio; the target VM pauses \
             (BLOCK_IO_ERROR, STOP); after clearing and resuming, fio with verify finishes clean",
            |d| werror_stop(d).boxed(),
        )
        .machines(vec![
            NodeSpec::new("target", Role::Target, 1).with_disk(
                DiskSpec::virtio("disk0", DISK_MIB)
                    .with_werror(OnError::stop)
                    .with_rerror(OnError::report),
            ),
            initiator(),
        ]),
    ];
    all.into_iter().map(host_only).collect()
}

/// Why each media-error plan needs the host: guest mode refuses it, with the reason.
fn host_only(s: Scenario) -> Scenario {
    let why = match s.name() {
        "media_error_werror_stop" => {
            "media errors under the target's disk (QEMU's block layer over QMP) and the target \
             VM's pause (werror=stop)"
        }
        _ => "media errors under the target's disk (QEMU's block layer over QMP)",
    };
    s.host_only(why)
}

fn initiator() -> NodeSpec {
    NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768)
}

/// Sequential 4 KiB writes over the first [`DATA_MIB`] MiB, each block with a crc32c header;
/// with `verify_only`, the same job reads them back and checks them instead.
fn data_job(device: &str, verify_only: bool) -> Fio {
    let job = Fio::new()
        .thread(true)
        .ioengine("libaio")
        .direct(true)
        .bs("4k")
        .iodepth(4)
        .rw(Rw::Write)
        .verify(Verify::Crc32c)
        .size(&format!("{DATA_MIB}m"))
        .opt("allow_file_create", 0)
        .group_reporting(true)
        .name("media")
        .filename(device);
    if verify_only {
        job.verify_only(true)
    } else {
        job.do_verify(false)
    }
}

/// A verify pass that must be clean: exit 0, no error, every byte read back and checked.
fn expect_verified(outcome: &FioOutcome) -> Result<()> {
    let Some(report) = &outcome.report else {
        bail!(
            "fio on {} printed no report (exit {}): {}",
            outcome.device,
            outcome.status,
            outcome.stderr
        );
    };
    let read = report.io_bytes(Direction::Read);
    if outcome.status != 0 || !report.problems().is_empty() || read < DATA_MIB << 20 {
        bail!(
            "expected fio to read back and verify {DATA_MIB} MiB of {} cleanly; exit {}, read {read} bytes, \
             problems {:?}; stderr:\n{}",
            outcome.device,
            outcome.status,
            report.problems(),
            outcome.stderr
        );
    }
    log::line(&format!("{}: {} (verified clean)", outcome.device, report.summary_line()));
    Ok(())
}

/// The byte offset of fio's first failed I/O (`... read offset=1048576, buflen=4096`).
fn failed_offset(outcome: &FioOutcome) -> Option<u64> {
    let text = outcome
        .report
        .iter()
        .flat_map(|r| r.messages.iter().cloned())
        .chain(outcome.stderr.lines().map(str::to_string))
        .find(|l| l.contains("offset="))?;
    let rest = text.split("offset=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The kernel's line for a medium error on `/dev/nvmeXnY`, which it names after the path
/// (`nvmeXcZnY`) under native multipath.
fn medium_error_line(dev: &str) -> String {
    let name = dev.trim_start_matches("/dev/");
    let path = match name.rsplit_once('n') {
        Some((ctrl, ns)) if ctrl.starts_with("nvme") => format!(r"{ctrl}(c\d+)?n{ns}"),
        _ => regex::escape(name),
    };
    format!(r"critical medium error, dev {path},")
}

/// The initiator's controllers of `nqn`.
async fn controllers(vm: &Machine, nqn: &str) -> Result<Vec<Controller>> {
    let out = vm.execute_with_timeout(CONTROLLERS, timeouts::request()).await?.stdout;
    Ok(parse_controllers(&out).into_iter().filter(|c| c.nqn == nqn).collect())
}

/// The bdev the daemon lists under `name`, which must be online.
fn expect_online(bdevs: &[proto::Bdev], name: &str) -> Result<()> {
    let Some(b) = bdevs.iter().find(|b| b.name == name) else {
        let names: Vec<_> = bdevs.iter().map(|b| b.name.as_str()).collect();
        bail!("the daemon no longer lists bdev {name}; it lists {names:?}");
    };
    if b.state != STATE_ONLINE || !b.claimed {
        bail!(
            "bdev {name} is {} (claimed: {} by {:?}); expected online in its namespace",
            b.state,
            b.claimed,
            b.claimed_by
        );
    }
    log::line(&format!("the daemon lists {name}: {}, claimed by {}", b.state, b.claimed_by));
    Ok(())
}

/// Starts the machines, shares `disks` as namespaces 1.. of one subsystem, connects the
/// initiator; returns the daemon's client, the share, the bdevs and the namespaces' devices.
async fn share_and_connect(
    d: &Driver,
    target: &Machine,
    vm: &Machine,
    disks: &[&str],
) -> Result<(TargetClient, Share, Vec<String>, Vec<String>)> {
    d.start_all().await?;
    let mut client = target.target_client().await?;
    let (share, bdevs) = d
        .subtest(&format!("share {} as namespaces of one subsystem", disks.join(" and ")), async {
            let mut bdevs = Vec::new();
            for disk in disks {
                bdevs.push(nvmeof::create_disk_bdev(target, &mut client, disk).await?.name);
            }
            let share = nvmeof::share_bdev(target, &mut client, &bdevs[0], None, NVMF_PORT).await?;
            for bdev in &bdevs[1..] {
                let req = proto::AddNamespaceRequest {
                    nqn: share.nqn.clone(),
                    bdev: bdev.clone(),
                    ..Default::default()
                };
                client.add_namespace(req).await.with_context(|| format!("AddNamespace {bdev}"))?;
            }
            Ok((share, bdevs))
        })
        .await?;
    let devices = d
        .subtest("connect the initiator", async {
            nvmeof::connect(vm, &share).await?;
            let mut devices = Vec::new();
            for nsid in 1..=disks.len() as u32 {
                devices.push(
                    nvmeof::wait_for_namespace(vm, &share.nqn, nsid, timeouts::hotplug()).await?,
                );
            }
            Ok(devices)
        })
        .await?;
    Ok((client, share, bdevs, devices))
}

async fn read_eio(d: &Driver) -> Result<()> {
    let (target, vm) = (d.machine("target")?, d.machine("initiator")?);
    let (mut client, share, bdevs, devices) =
        share_and_connect(d, &target, &vm, &["disk0", "disk1"]).await?;
    let (bad, good) = (devices[0].as_str(), devices[1].as_str());
    d.subtest(&format!("write {DATA_MIB} MiB with checksums on both namespaces"), async {
        let (a, b) = (
            FioRun::start(&vm, &data_job(bad, false), bad).await?,
            FioRun::start(&vm, &data_job(good, false), good).await?,
        );
        for run in [a, b] {
            let outcome = run.wait().await?;
            let report =
                outcome.report.as_ref().filter(|r| outcome.status == 0 && r.problems().is_empty());
            if report.is_none_or(|r| r.io_bytes(Direction::Write) < DATA_MIB << 20) {
                bail!(
                    "writing the data failed on {}: exit {}; {}",
                    outcome.device,
                    outcome.status,
                    outcome.stderr
                );
            }
        }
        Ok(())
    })
    .await?;
    let fault = MediaFault::reads().sectors(BAD_SECTORS);
    d.subtest(
        &format!("inject {fault} into disk0 (namespace 1)"),
        target.inject_media_error("disk0", &fault),
    )
    .await?;
    d.subtest("bad fault requests are refused with the reason", async {
        let refusals = [
            (
                "a second fault on disk0",
                target.inject_media_error("disk0", &MediaFault::writes()).await,
                "already has a media fault",
            ),
            (
                "a fault on an unknown disk",
                target.inject_media_error("disk9", &fault).await,
                "no disk \"disk9\"",
            ),
            (
                "a range past the end",
                target
                    .inject_media_error(
                        "disk1",
                        &MediaFault::reads().sectors(DISK_MIB * 2048 - 8..DISK_MIB * 2048 + 8),
                    )
                    .await,
                "past the disk's end",
            ),
            (
                "clearing disk1, which has none",
                target.clear_media_error("disk1").await,
                "no media fault to clear",
            ),
        ];
        for (what, result, reason) in refusals {
            match result {
                Ok(()) => bail!("{what} was accepted"),
                Err(e) if format!("{e:#}").contains(reason) => {
                    log::line(&format!("{what}: refused ({reason})"))
                }
                Err(e) => bail!("{what} was refused without saying {reason:?}: {e:#}"),
            }
        }
        match target.media_error("disk0").await? {
            Some(f) if f == fault => Ok(()),
            other => bail!("disk0's fault should be in place, unchanged; it is {other:?}"),
        }
    })
    .await?;
    let bad_bytes = BAD_SECTORS.start * SECTOR_BYTES..BAD_SECTORS.end * SECTOR_BYTES;
    d.subtest("fio verify on namespace 1 ends in an I/O error at the bad blocks, never bad data", async {
        let io_timeout: u64 = vm
            .succeed("cat /sys/module/nvme_core/parameters/io_timeout")
            .await?
            .trim()
            .parse()
            .context("nvme_core io_timeout")?;
        let started = Instant::now();
        let outcome = run_fio(&vm, &data_job(bad, true), bad).await?;
        let took = started.elapsed();
        // expect_error refuses a zero exit and a verify failure: the bad blocks must neither
        // pass nor come back as wrong data.
        let failure = outcome.expect_error()?;
        if failure.errno != ENODATA && failure.errno != crate::machine::EIO {
            bail!("expected EIO or ENODATA (a critical medium error), fio stopped on errno {}: {}", failure.errno, failure.message);
        }
        let offset = failed_offset(&outcome);
        if !offset.is_some_and(|o| bad_bytes.contains(&o)) {
            bail!("expected the first failed read inside the bad range {bad_bytes:?}, fio says offset {offset:?}: {}", failure.message);
        }
        let read = outcome.report.as_ref().map_or(0, |r| r.io_bytes(Direction::Read));
        if read < bad_bytes.start {
            bail!("expected the {} bytes before the bad range read and verified, fio read {read}", bad_bytes.start);
        }
        // An error status, not a lost command: well within one I/O timeout, the controller live.
        if took >= Duration::from_secs(io_timeout) {
            bail!("the error took {:.1} s to reach fio: a timeout (io_timeout {io_timeout} s), not an error status", took.as_secs_f64());
        }
        let ctrls = controllers(&vm, &share.nqn).await?;
        if ctrls.len() != 1 || ctrls[0].state != "live" {
            bail!("expected the initiator's controller of {} to stay live, got {ctrls:?}", share.nqn);
        }
        log::line(&format!(
            "fio stopped on errno {} at offset {offset:?} after {:.1} s, {read} bytes verified before it; the controller stayed live",
            failure.errno,
            took.as_secs_f64()
        ));
        Ok(())
    })
    .await?;
    d.subtest("the target's kernel saw a medium error on disk0", async {
        let dev = target.disk_device("disk0").await?;
        target
            .wait_for_kernel_message(&medium_error_line(&dev), timeouts::request())
            .await
            .map(drop)
    })
    .await?;
    d.subtest("fio verify on namespace 2 is clean", async {
        expect_verified(&run_fio(&vm, &data_job(good, true), good).await?)
    })
    .await?;
    d.subtest("the target stays up and lists both bdevs online", async {
        let listed = nvmeof::expect_target_alive(&target, &mut client).await?;
        for bdev in &bdevs {
            expect_online(&listed, bdev)?;
        }
        nvmeof::wait_for_namespace(&vm, &share.nqn, 1, timeouts::request()).await.map(drop)
    })
    .await?;
    d.subtest("clear the fault: fio verify on namespace 1 is clean", async {
        target.clear_media_error("disk0").await?;
        expect_verified(&run_fio(&vm, &data_job(bad, true), bad).await?)
    })
    .await
}

async fn werror_stop(d: &Driver) -> Result<()> {
    let (target, vm) = (d.machine("target")?, d.machine("initiator")?);
    let (mut client, share, bdevs, devices) =
        share_and_connect(d, &target, &vm, &["disk0"]).await?;
    let device = devices[0].as_str();
    let fault = MediaFault::writes().after(WRITES_BEFORE_FAULT);
    let mark = target.qmp().await?.event_count();
    d.subtest(
        &format!("inject {fault} into disk0 (werror=stop)"),
        target.inject_media_error("disk0", &fault),
    )
    .await?;
    let fio = d
        .subtest("run fio integrity with verify on the namespace", async {
            FioRun::start(&vm, &integrity_job(device, FIO_SECS), device).await
        })
        .await?;
    d.subtest("the target VM pauses on the write error (BLOCK_IO_ERROR, STOP, io-error)", async {
        let event = target.wait_for_block_io_error("disk0", mark, timeouts::hotplug()).await?;
        if event.operation != qapi::qmp::IoOperationType::write
            || event.action != qapi::qmp::BlockErrorAction::stop
        {
            bail!("expected a write error that stops the VM, QEMU says {event:?}");
        }
        Ok(())
    })
    .await?;
    d.subtest("the initiator's fio is held, not failed", async {
        // Over a few seconds of pause: the initiator must wait for the target, not fail the I/O.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if !fio.is_running().await? {
            bail!(
                "fio ended while the target was paused; {:?}",
                fio.wait().await?.expect_clean().err()
            );
        }
        Ok(())
    })
    .await?;
    d.subtest("clear the fault and resume the target", async {
        target.clear_media_error("disk0").await?;
        target.resume().await
    })
    .await?;
    d.subtest("fio with verify finishes clean", async {
        let outcome = fio.wait().await?;
        outcome.expect_clean()?;
        let ctrls = controllers(&vm, &share.nqn).await?;
        if ctrls.len() != 1 || ctrls[0].state != "live" {
            bail!("expected the initiator's controller of {} live, got {ctrls:?}", share.nqn);
        }
        Ok(())
    })
    .await?;
    d.subtest("the target stays up and lists the bdev online", async {
        let listed = nvmeof::expect_target_alive(&target, &mut client).await?;
        expect_online(&listed, &bdevs[0])
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_names_the_offset_it_failed_at() {
        let o = FioOutcome {
            machine: "initiator".into(),
            device: "/dev/nvme1n1".into(),
            status: 1,
            report: None,
            stderr: "fio: io_u error on file /dev/nvme1n1: No data available: read offset=1048576, buflen=4096\n".into(),
            stopped: false,
        };
        assert_eq!(failed_offset(&o), Some(1 << 20));
    }

    #[test]
    fn a_medium_error_is_matched_on_the_path_device() {
        let re = regex::Regex::new(&medium_error_line("/dev/nvme0n1")).unwrap();
        assert!(re.is_match("critical medium error, dev nvme0c0n1, sector 2056 op 0x0:(READ)"));
        assert!(re.is_match("critical medium error, dev nvme0n1, sector 8"));
        assert!(!re.is_match("critical medium error, dev nvme0n11, sector 8"));
        assert!(!re.is_match("critical medium error, dev nvme10n1, sector 8"));
    }

    #[test]
    fn the_bad_range_is_inside_the_data() {
        assert!(MediaFault::reads().sectors(BAD_SECTORS).check(DISK_MIB * 2048).is_ok());
    }
}
