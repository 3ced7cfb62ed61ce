//! tgt, Debian's user-space iSCSI target, tested with vmcheck from a crate of its own: two
//! scenarios, run by `cargo nextest run` through vmcheck's harness.
//!
//! - `tgt_fio_verify`: one NVMe disk of the target VM served by tgtd as LUN 1; the initiator logs
//!   in and fio with verify on it finishes clean.
//! - `tgt_hotremove_tc3`: the SPDK hot-remove plan's test case 3 shape: two disks served as LUNs
//!   1 and 2 of one target, fio with verify on both, the second disk pulled from under tgtd (QMP
//!   `device_del` on the target VM): fio on LUN 2 fails with an I/O error (never a verify
//!   failure), tgtd still answers its admin tool, fio on LUN 1 finishes clean.

use anyhow::Result;
use futures::FutureExt;
use vmcheck::prelude::*;
use vmcheck::scenarios::iscsi;
use vmcheck::scenarios::workload::{integrity_job, run_fio, FioRun, FIO_CLEAN_SECS, SETTLE};
use vmcheck::timeouts;
use vmcheck_example_tgt::{expect_target_answers, machines, serve_disks, wait_for_tgtd, IQN};

/// fio's run time under the removal: long enough that the removal lands mid-run (it lands
/// after [`SETTLE`], about 3 s in), and the other LUN's job runs to its end.
const FIO_UNDER_REMOVAL_SECS: u64 = 15;

async fn fio_verify(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (tgt, initiator) = (d.machine("tgt")?, d.machine("initiator")?);
    d.subtest("tgtd answers tgtadm", wait_for_tgtd(&tgt)).await?;
    let target = d.subtest("serve disk0 as LUN 1", serve_disks(&tgt, &["disk0"])).await?;
    let dev = d
        .subtest("log in; LUN 1 is a disk", async {
            iscsi::login(&initiator, &target).await?;
            iscsi::wait_for_disk(&initiator, IQN, 1, timeouts::hotplug()).await
        })
        .await?;
    d.subtest("fio with verify on LUN 1 finishes clean", async {
        run_fio(&initiator, &integrity_job(&dev, FIO_CLEAN_SECS), &dev)
            .await?
            .expect_clean()
            .map(drop)
    })
    .await?;
    d.subtest("tgtd still lists the target and its LUN", expect_target_answers(&tgt, 1)).await
}

async fn hotremove_tc3(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let (tgt, initiator) = (d.machine("tgt")?, d.machine("initiator")?);
    d.subtest("tgtd answers tgtadm", wait_for_tgtd(&tgt)).await?;
    let target = d
        .subtest(
            "serve disk0 and disk1 as LUNs 1 and 2 of one target",
            serve_disks(&tgt, &["disk0", "disk1"]),
        )
        .await?;
    let (dev1, dev2) = d
        .subtest("log in; LUNs 1 and 2 are disks", async {
            iscsi::login(&initiator, &target).await?;
            let dev1 = iscsi::wait_for_disk(&initiator, IQN, 1, timeouts::hotplug()).await?;
            Ok((dev1, iscsi::wait_for_disk(&initiator, IQN, 2, timeouts::hotplug()).await?))
        })
        .await?;
    let (fio1, fio2) = d
        .subtest("run fio with verify on both LUNs", async {
            let fio1 =
                FioRun::start(&initiator, &integrity_job(&dev1, FIO_UNDER_REMOVAL_SECS), &dev1)
                    .await?;
            let fio2 =
                FioRun::start(&initiator, &integrity_job(&dev2, FIO_UNDER_REMOVAL_SECS), &dev2)
                    .await?;
            fio1.settle(SETTLE).await?;
            fio2.settle(SETTLE).await?;
            Ok((fio1, fio2))
        })
        .await?;
    d.subtest("hot remove disk1 from under tgtd (QMP device_del)", tgt.hot_remove_disk("disk1"))
        .await?;
    d.subtest("fio on LUN 2 fails with an I/O error", async {
        let failure = fio2.wait().await?.expect_error()?;
        vmcheck::log::line(&format!("fio on LUN 2: {failure:?}"));
        Ok(())
    })
    .await?;
    d.subtest("tgtd still answers and lists the target", expect_target_answers(&tgt, 2)).await?;
    d.subtest("fio on LUN 1 finishes clean", async { fio1.wait().await?.expect_clean().map(drop) })
        .await
}

fn main() -> std::process::ExitCode {
    let suite = Suite::new()
        .with(Scenario::new("tgt_fio_verify", "tgt serves one NVMe disk over iSCSI; fio with verify passes", |d| fio_verify(d).boxed()).machines(machines(1)))
        .with(
            Scenario::new(
                "tgt_hotremove_tc3",
                "tgt serves two disks as LUNs 1 and 2; one pulled under fio: its fio fails with EIO, tgtd answers, the other LUN's fio is clean",
                |d| hotremove_tc3(d).boxed(),
            )
            .machines(machines(2))
            .after(["tgt_fio_verify"]),
        );
    vmcheck::harness::main(suite)
}
