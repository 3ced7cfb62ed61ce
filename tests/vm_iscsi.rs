//! iSCSI sharing in real VMs: the target daemon exports an NVMe disk of the target VM through
//! LIO, the initiator discovers it, logs in, sees a SCSI disk of the right size, runs fio with
//! verify=crc32 and logs out. Then the hot-remove of the "vhost scsi" plan
//! (../shared/seeds/000, TC1-2): the NVMe disk is removed under fio (QMP device_del), fio fails
//! with EIO, the daemon keeps answering, and the disk leaves the initiator's lsblk, also after
//! the initiator reboots.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use vmcheck::config::{DiskSpec, NodeSpec, Role};
use vmcheck::driver::Driver;
use vmcheck::log;
use vmcheck::machine::Machine;
use vmcheck::target::proto;
use vmcheck::tools::fio::{Fio, FioReport};
use vmcheck::tools::iscsi::{DiscoveredTarget, Iscsiadm, ScsiDisk, Session};
use vmcheck::tools::lsblk::Lsblk;
use vmcheck::tools::shell_quote;

const TARGET_ADDR: &str = "192.0.2.1";
const PORT: u16 = 3260;
const DISK_MIB: u64 = 256;
const LIO_DIRS: &str = "cd /sys/kernel/config/target && ls . core; ls iscsi 2>/dev/null; true";
/// How long a login's disk, or a logout's absence of it, may take to show (SCSI scan under TCG).
const SCAN: Duration = Duration::from_secs(60);
/// EIO: what fio's job reports when the target answers the removed disk's I/O with an error.
const EIO: i32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_share_fio_and_hot_remove() {
    let d = common::driver(vec![
        NodeSpec::new("target", Role::Target, 1).with_disk(DiskSpec::nvme("disk0", DISK_MIB)),
        NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768),
    ])
    .await;
    if let Err(e) = run(&d).await {
        panic!("{e:#}");
    }
}

async fn run(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let target = d.machine("target")?;
    let initiator = d.machine("initiator")?;
    let mut client = target.target_client().await?;
    let health = client.health(proto::HealthRequest {}).await?.into_inner();
    ensure!(health.lio, "the daemon sees no LIO configfs: {health:?}");
    let empty_lio = target.succeed(LIO_DIRS).await?;

    let dev = target.disk_device("disk0").await?;
    let bdev = client
        .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev}") })
        .await?
        .into_inner();

    let share = d
        .subtest("the bdev should be shared over iSCSI", async {
            let share = share_iscsi(&mut client, &bdev.name).await?;
            let expected = format!("iscsi://{TARGET_ADDR}:{PORT}/{}/0", share.iqn);
            ensure!(
                share.uri == expected && share.iqn.starts_with("iqn.2019-05.io.vmcheck:"),
                "{share:?}"
            );
            let listed = client.list_bdevs(proto::ListBdevsRequest {}).await?.into_inner().bdevs;
            ensure!(
                listed
                    .iter()
                    .any(|b| b.name == bdev.name && b.claimed && b.claimed_by == "iSCSI Target"),
                "{listed:?}"
            );
            Ok(share)
        })
        .await?;

    let disk = d
        .subtest(
            "the initiator should discover the target, log in and see a disk of the right size",
            async {
                let discovered = DiscoveredTarget::parse_all(
                    &initiator.succeed(&Iscsiadm::discover(TARGET_ADDR, PORT)).await?,
                )?;
                let found = DiscoveredTarget::find(&discovered, &share.iqn)
                    .with_context(|| format!("{} not in {discovered:?}", share.iqn))?;
                ensure!(found.addr == TARGET_ADDR && found.port == PORT, "{found:?}");
                login_and_find_disk(&initiator, &share.iqn).await
            },
        )
        .await?;

    d.subtest("fio with verify=crc32 should pass on the SCSI disk", async {
        let out =
            initiator.execute(&Fio::seed_randrw_verify(&disk.path(), 5).command_line()).await?;
        let report = FioReport::parse_with_stderr(&out.stdout, &out.stderr)
            .with_context(|| format!("fio exited {}", out.status))?;
        log::line(&report.summary_line());
        ensure!(
            out.status == 0 && report.problems().is_empty(),
            "fio: {:?}\n{}",
            report.problems(),
            out.stderr
        );
        Ok(())
    })
    .await?;

    d.subtest("logout should take the disk away, unshare should leave LIO as it was", async {
        initiator.succeed(&Iscsiadm::logout(&share.iqn, TARGET_ADDR, PORT)).await?;
        wait_disk_gone(&initiator, &disk).await?;
        ensure!(sessions(&initiator).await?.is_empty(), "a session is left after logout");
        client.unshare_bdev(proto::UnshareBdevRequest { name: bdev.name.clone() }).await?;
        ensure!(
            target.succeed(LIO_DIRS).await? == empty_lio,
            "LIO configfs still holds something after unshare"
        );
        Ok(())
    })
    .await?;

    // Hot remove (plan "vhost scsi" TC2 with one VM): share again, fio under way, disk pulled.
    let share = share_iscsi(&mut client, &bdev.name).await?;
    initiator.succeed(&Iscsiadm::discover(TARGET_ADDR, PORT)).await?;
    let disk = login_and_find_disk(&initiator, &share.iqn).await?;
    let fio = Fio::seed_randrw_verify(&disk.path(), 120)
        .opt("rw", "randwrite")
        .opt("iodepth", 8)
        .time_based(true);
    // In the background, by its own session leader, its results in files.
    initiator
        .succeed(&format!(
            "setsid sh -c {} </dev/null >/dev/null 2>&1 &",
            shell_quote(&format!(
                "{} >/tmp/hr.json 2>/tmp/hr.err; echo $? >/tmp/hr.rc",
                fio.command_line()
            ))
        ))
        .await?;
    initiator.wait_until_succeeds("pidof fio", Duration::from_secs(30)).await?;
    // fio writes for a few seconds first: the removal hits I/O in flight.
    tokio::time::sleep(Duration::from_secs(3)).await;

    d.subtest("the NVMe disk should be hot-removed from the target (QMP device_del)", async {
        let qmp = target.qmp().await?;
        let mark = qmp.event_count();
        target.qmp_raw("device_del", serde_json::json!({"id": "disk0"})).await?;
        qmp.wait_for_event(mark, Duration::from_secs(60), |e| {
            e.name == "DEVICE_DELETED" && e.data["device"] == "disk0"
        })
        .await?;
        target.wait_until_fails(&format!("test -e {dev}"), Duration::from_secs(30)).await?;
        Ok(())
    })
    .await?;

    d.subtest("fio on the removed disk should fail with an I/O error", async {
        let rc = initiator.wait_until_succeeds("cat /tmp/hr.rc", Duration::from_secs(90)).await?;
        let out = initiator.succeed("cat /tmp/hr.json").await?;
        let err = initiator.succeed("cat /tmp/hr.err").await?;
        let report = FioReport::parse_with_stderr(&out, &err)?;
        log::line(&format!(
            "fio exited {}: {}; {:?}",
            rc.trim(),
            report.summary_line(),
            report.problems()
        ));
        ensure!(rc.trim() != "0", "fio exited 0 on a removed disk");
        ensure!(
            report.jobs.iter().any(|j| j.error == EIO),
            "fio's job error is not EIO: {:?}",
            report.problems()
        );
        ensure!(
            !report.jobs.iter().any(|j| j.verify_failed()),
            "a verify failure, not an I/O error: {:?}",
            report.problems()
        );
        Ok(())
    })
    .await?;

    d.subtest("the daemon should remove the iSCSI target by itself; the bdev faulted; unshare still succeeds", async {
        client.health(proto::HealthRequest {}).await?;
        let bdevs = client.list_bdevs(proto::ListBdevsRequest {}).await?.into_inner().bdevs;
        ensure!(bdevs.len() == 1 && bdevs[0].state == "faulted", "{bdevs:?}");
        // The daemon's monitor (every 200 ms) withdrew the vanished device: its LUN, and with
        // its only LUN the target and the backstore. Nobody unshared yet.
        let started = std::time::Instant::now();
        let mut lio = target.succeed(LIO_DIRS).await?;
        while lio != empty_lio && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            lio = target.succeed(LIO_DIRS).await?;
        }
        ensure!(lio == empty_lio, "10 s after the removal LIO configfs still holds the removed disk's target:\n{lio}");
        // The share is still the daemon's until UnshareBdev, which finds nothing left to remove.
        let listed = client.list_bdevs(proto::ListBdevsRequest {}).await?.into_inner().bdevs;
        ensure!(listed[0].share_uri == share.uri && !listed[0].claimed, "{listed:?}");
        client.unshare_bdev(proto::UnshareBdevRequest { name: bdev.name.clone() }).await?;
        let listed = client.list_bdevs(proto::ListBdevsRequest {}).await?.into_inner().bdevs;
        ensure!(listed[0].share_uri.is_empty(), "{listed:?}");
        ensure!(target.succeed(LIO_DIRS).await? == empty_lio, "LIO configfs changed by the unshare");
        Ok(())
    })
    .await?;

    d.subtest("the removed disk should leave the initiator's lsblk", async {
        // The session fails (connection closed, re-login refused: no such target); iscsid
        // retries forever and the kernel keeps the disk, transport-offline. The initiator's
        // side of a removal, as os-brick or a CSI node plugin does it: log out of a target
        // that discovery no longer lists.
        let failed = initiator
            .wait_until_succeeds(
                &format!(
                    "{} | grep -q 'Session State: FAILED' && {}",
                    Iscsiadm::sessions(),
                    Iscsiadm::sessions()
                ),
                SCAN,
            )
            .await?;
        d.artifact("iscsiadm-session-failed.txt", &failed);
        let session = Session::parse_all(&failed)?;
        log::line(&format!("after the removal:\n{failed}"));
        let state =
            session.first().map(|s| (&s.state, &s.iscsid_state, s.disk(0).map(|d| &d.state)));
        log::line(&format!("session and disk state: {state:?}"));
        let discovered = initiator.execute(&Iscsiadm::discover(TARGET_ADDR, PORT)).await?;
        let listed = DiscoveredTarget::parse_all(&discovered.stdout).unwrap_or_default();
        ensure!(
            DiscoveredTarget::find(&listed, &share.iqn).is_none(),
            "discovery still lists {}: {listed:?}",
            share.iqn
        );
        ensure!(
            lsblk_has(&initiator, &disk.name).await?,
            "the disk went by itself: update the report"
        );
        initiator.succeed(&Iscsiadm::logout(&share.iqn, TARGET_ADDR, PORT)).await?;
        initiator.succeed(&Iscsiadm::delete_node(&share.iqn, TARGET_ADDR, PORT)).await?;
        wait_disk_gone(&initiator, &disk).await
    })
    .await?;

    d.subtest("after the initiator reboots, the disk stays gone and fio on it fails", async {
        initiator.reboot().await?;
        initiator.wait_until_succeeds("pidof iscsid", Duration::from_secs(30)).await?;
        ensure!(
            !lsblk_has(&initiator, &disk.name).await?,
            "{} is back after the reboot",
            disk.name
        );
        ensure!(sessions(&initiator).await?.is_empty(), "a session came back after the reboot");
        // allow_file_create=0: fio must not write a regular file where the disk was.
        let out = initiator
            .execute(&format!(
                "{} --allow_file_create=0",
                Fio::seed_randrw_verify(&disk.path(), 5).size("16M").command_line()
            ))
            .await?;
        ensure!(out.status != 0, "fio on the removed disk exited 0");
        ensure!(
            out.stderr.contains("file creation disallowed"),
            "fio failed otherwise: {}",
            out.stderr
        );
        client.health(proto::HealthRequest {}).await?;
        client.destroy_bdev(proto::DestroyBdevRequest { name: bdev.name.clone() }).await?;
        Ok(())
    })
    .await?;
    Ok(())
}

async fn share_iscsi(
    client: &mut vmcheck::target::client::TargetClient,
    name: &str,
) -> Result<proto::ShareBdevReply> {
    let req = proto::ShareBdevRequest {
        name: name.into(),
        protocol: proto::ShareProtocol::Iscsi as i32,
        ..Default::default()
    };
    Ok(client.share_bdev(req).await.context("ShareBdev ISCSI")?.into_inner())
}

async fn sessions(m: &Machine) -> Result<Vec<Session>> {
    Ok(Session::parse_all(&m.succeed(&Iscsiadm::sessions_or_none()).await?)?)
}

/// Logs in and waits for the session's LUN 0 disk; checks its size in lsblk.
async fn login_and_find_disk(initiator: &Machine, iqn: &str) -> Result<ScsiDisk> {
    initiator.succeed(&Iscsiadm::login(iqn, TARGET_ADDR, PORT)).await?;
    let listing = initiator
        .wait_until_succeeds(
            &format!(
                "{} | grep -q 'Attached scsi disk' && {}",
                Iscsiadm::sessions(),
                Iscsiadm::sessions()
            ),
            SCAN,
        )
        .await?;
    let sessions = Session::parse_all(&listing)?;
    let session = Session::find(&sessions, iqn)
        .with_context(|| format!("no session of {iqn}: {sessions:?}"))?;
    ensure!(session.state == "LOGGED_IN", "{session:?}");
    let disk = session.disk(0).with_context(|| format!("no disk for LUN 0: {session:?}"))?.clone();
    ensure!(disk.name.starts_with("sd"), "{disk:?}");
    let lsblk = Lsblk::parse(&initiator.succeed(Lsblk::command()).await?)?;
    let seen =
        lsblk.find(&disk.path()).with_context(|| format!("lsblk does not show {}", disk.name))?;
    ensure!(
        seen.size == DISK_MIB << 20,
        "lsblk shows {} with {} bytes, expected {DISK_MIB} MiB",
        disk.name,
        seen.size
    );
    log::line(&format!("logged in to {iqn}: {} ({} bytes)", disk.path(), seen.size));
    Ok(disk)
}

async fn lsblk_has(m: &Machine, name: &str) -> Result<bool> {
    let lsblk = Lsblk::parse(&m.succeed(Lsblk::command()).await?)?;
    Ok(lsblk.find(&format!("/dev/{name}")).is_some())
}

async fn wait_disk_gone(m: &Machine, disk: &ScsiDisk) -> Result<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < SCAN {
        if !lsblk_has(m, &disk.name).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("{} is still in lsblk after {SCAN:?}", disk.name)
}
