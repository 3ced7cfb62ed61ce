//! The main job on real VMs, asserting its typed results (not only that it passed), on machines
//! booted afresh: CI restores every other scenario's machines from saved states built before the
//! tests (`vmcheck images build --snapshots`), as a user's later runs do, and this test keeps the
//! first run's path, a cold boot, covered.

mod common;

use vmcheck::scenarios::fio_nvme_basic::{self, FIO_RUNTIME_SECS};
use vmcheck::tools::fio::Direction;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_nvme_basic_end_to_end() {
    let options = vmcheck::driver::DriverOptions { fresh_boot: true, ..Default::default() };
    let d = vmcheck::driver::Driver::new(fio_nvme_basic::nodes(), options).await.unwrap();
    let report = fio_nvme_basic::run(&d).await.unwrap();
    d.kill_all().await;

    assert_eq!(report.bdevs.len(), 1);
    let bdev = &report.bdevs[0];
    assert!(bdev.name.starts_with("aio:///dev/nvme"), "{bdev:?}");
    assert_eq!(bdev.num_blocks * u64::from(bdev.blk_size), 512 << 20);
    assert!(report.share.uri.starts_with("nvmf://192.0.2.1:4420/"), "{:?}", report.share);
    assert!(report.discovery.find(&report.share.nqn).is_some_and(|r| r.traddr == "192.0.2.1"));
    assert_eq!(report.connected.devices.len(), 1);
    assert_eq!(report.connected.devices[0].device_path, report.device);
    assert_eq!(report.lsblk.find(&report.device).map(|b| b.size), Some(512 << 20));

    let fio = &report.fio;
    assert!(fio.problems().is_empty(), "{:?}", fio.problems());
    assert_eq!(fio.errors(), 0);
    assert_eq!(fio.verify_failures(), 0);
    assert!(
        fio.iops(Direction::Read) > 0.0 && fio.iops(Direction::Write) > 0.0,
        "{}",
        fio.summary_line()
    );
    assert!(fio.io_bytes(Direction::Read) > 0 && fio.io_bytes(Direction::Write) > 0);
    let runtime_ms = fio.jobs[0].read.runtime.max(fio.jobs[0].write.runtime);
    assert!(runtime_ms >= (FIO_RUNTIME_SECS - 1) * 1000, "fio ran {runtime_ms} ms");
    assert!(report.after_disconnect.devices.is_empty());
    let names: Vec<_> =
        d.subtest_results().into_iter().map(|s| (s.name, s.error.is_none())).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names.iter().all(|(_, ok)| *ok), "{names:?}");
}
