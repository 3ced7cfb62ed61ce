//! Saved machine states (src/snapshot.rs) against real VMs: the first start saves the snapshot,
//! a truncated one is refused and rebuilt (the run still passes), the next start restores it with
//! the disks hot-added, the guest clock set and the plugged-disk list deciding what is attached.

mod common;

use serde_json::Value;
use vmcheck::config::{DiskSpec, NodeSpec, Role};
use vmcheck::driver::{Driver, DriverOptions};
use vmcheck::report::Reporter;

/// One target with two NVMe disks; a kernel parameter of its own gives it a snapshot key no
/// other test or run shares.
fn nodes(token: &str) -> Vec<NodeSpec> {
    vec![NodeSpec::new("snap", Role::Target, 1)
        .with_disk(DiskSpec::nvme("disk0", 64))
        .with_disk(DiskSpec::nvme("disk1", 64))
        .with_kernel_param(&format!("vmcheck.test={token}"))]
}

/// Starts the machine in a driver of its own, checks both disks are there, and returns the
/// driver's log.
async fn start(token: &str) -> (Driver, String) {
    let reporter = Reporter::in_memory();
    let d = Driver::new(
        nodes(token),
        DriverOptions { reporter: reporter.clone(), ..DriverOptions::default() },
    )
    .await
    .unwrap();
    d.start_all().await.unwrap();
    let m = d.machine("snap").unwrap();
    for id in ["disk0", "disk1"] {
        let dev = m.disk_device(id).await.unwrap();
        assert!(dev.starts_with("/dev/nvme"), "{id}: {dev}");
        // Cold boot and hot-add place the disks in the same fixed slots.
        let slot = if id == "disk0" { "0000:00:08.0" } else { "0000:00:09.0" };
        assert_eq!(m.pci_address(id).await.unwrap(), slot);
    }
    let log = reporter.terminal_text();
    (d, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_saved_checked_rebuilt_and_restored() {
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );

    // First start: no snapshot, the machine boots disk-less, is saved, gets its disks.
    let (d, log) = start(&token).await;
    assert!(
        log.contains("booting without disks to save one") && log.contains("saved snapshot"),
        "{log}"
    );
    let m = d.machine("snap").unwrap();
    let state = m.snapshot_state().expect("a snapshot was saved");
    d.kill_all().await;
    drop(d);

    // A truncated state file is refused before QEMU sees it; the machine boots, is saved again.
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&state).unwrap().set_len(len / 2).unwrap();
    let (d, log) = start(&token).await;
    assert!(log.contains("is unusable") && log.contains("saved snapshot"), "{log}");
    assert!(!log.contains("restored from snapshot"), "{log}");
    d.kill_all().await;
    drop(d);

    // A state file that keeps its length but not its content is refused by QEMU: deleted and
    // rebuilt too.
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[..4].copy_from_slice(b"JUNK");
    std::fs::write(&state, &bytes).unwrap();
    let (d, log) = start(&token).await;
    assert!(log.contains("refused by QEMU") && log.contains("saved snapshot"), "{log}");
    d.kill_all().await;
    drop(d);

    // Now it restores: the agent answers, the clock is the host's, the disks are hot-added.
    let (d, log) = start(&token).await;
    assert!(log.contains("restored from snapshot"), "{log}");
    let m = d.machine("snap").unwrap();
    // The restore sent the clock ahead without waiting for it: the agent's first answer after
    // it already has the host's time, to within its round trip.
    let unix_ns = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as i64
    };
    let before = unix_ns();
    let guest_ns = m.qga().await.unwrap().execute_raw("guest-get-time", Value::Null).await.unwrap();
    let after = unix_ns();
    let off = guest_ns.as_i64().unwrap() - (before + after) / 2;
    assert!(off.abs() < 1_000_000_000, "guest clock {off} ns off the host's");
    let guest: i64 = m.succeed("date +%s").await.unwrap().trim().parse().unwrap();
    let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    assert!((guest - host).abs() <= 5, "guest clock {guest}, host {host}");

    // A restart after a hot-remove restores again and brings back only the plugged disk.
    // (In a subtest, so the machine API's lines reach the driver's reporter.)
    d.subtest("hot-remove disk1, shut down, start again", async {
        m.hot_remove_disk("disk1").await?;
        m.shutdown().await?;
        m.wait_for_agent().await
    })
    .await
    .unwrap();
    assert!(m.disk_device("disk0").await.is_ok());
    let listing = m.succeed("cat /sys/class/nvme/*/serial").await.unwrap();
    assert!(!listing.contains("disk1"), "{listing}");
    let log = d.reporter().terminal_text();
    assert_eq!(log.matches("restored from snapshot").count(), 2, "{log}");
    d.kill_all().await;

    // Leave no snapshot of this token behind.
    let _ = std::fs::remove_dir_all(state.parent().unwrap());
}
