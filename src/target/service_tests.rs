//! Service-level tests: the service's own methods over an emulated configfs, a fake sysfs and a
//! temporary malloc directory. No network, no VM.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use nix::errno::Errno;
use tonic::Code;

use super::backing::{fake_block_device, fake_serial, Backing};
use super::configfs::{ConfigFs, Op};
use super::conformance::{
    bad_request_table, run_bad_request_table, Call, Reply, TableParams, TargetApi,
};
use super::limits::Deadline;
use super::nvmet::{NamespaceSpec, Nvmet, ShareSpec, ROOT_LAYOUT};
use super::proto;
use super::service::{TargetService, Traddr, CLAIMED_BY, NQN_PREFIX, STATE_FAULTED, STATE_ONLINE};

const TRADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const EMPTY_TREE: [&str; 3] = ["d hosts", "d ports", "d subsystems"];

struct Fixture {
    dir: tempfile::TempDir,
    svc: TargetService,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fs = ConfigFs::emulated(dir.path().join("nvmet"), &ROOT_LAYOUT).unwrap();
        Self::with(dir, fs)
    }

    fn with(dir: tempfile::TempDir, fs: ConfigFs) -> Self {
        let backing = Backing::new(dir.path().join("sys"), dir.path().join("malloc"));
        let svc = TargetService::new(Nvmet::new(fs), backing, Traddr::Fixed(TRADDR));
        Fixture { dir, svc }
    }

    /// Disks are image files in a fake /dev, and partition tables are re-read by a fake kernel.
    fn with_fake_disks() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fs = ConfigFs::emulated(dir.path().join("nvmet"), &ROOT_LAYOUT).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        let backing = Backing::new(dir.path().join("sys"), dir.path().join("malloc"))
            .with_dev_dir(dir.path().join("dev"))
            .with_fake_kernel();
        let svc = TargetService::new(Nvmet::new(fs), backing, Traddr::Fixed(TRADDR));
        Fixture { dir, svc }
    }

    /// The fake /dev node of a disk (an image file).
    fn image(&self, dev: &str) -> PathBuf {
        self.dir.path().join("dev").join(dev)
    }

    fn sysfs(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn add_disk(&self, dev: &str, mib: u64) {
        fake_block_device(&self.sysfs(), dev, mib << 20, 512).unwrap();
        if self.image(dev).parent().unwrap().exists() {
            std::fs::File::create(self.image(dev)).unwrap().set_len(mib << 20).unwrap();
        }
    }

    /// The disk and its partitions leave sysfs, as on a hot-remove.
    fn pull_disk(&self, dev: &str) {
        for entry in std::fs::read_dir(self.sysfs().join("class/block")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.starts_with(dev) {
                std::fs::remove_dir_all(self.sysfs().join("class/block").join(name)).unwrap();
            }
        }
    }

    fn tree(&self) -> Vec<String> {
        self.svc.nvmet().fs().dump()
    }

    fn malloc_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("malloc")).map_or(0, |d| d.count())
    }

    async fn call(&self, call: Call) -> Result<Reply, tonic::Status> {
        (&self.svc).call(call).await
    }

    async fn create(&self, uri: &str) -> Result<proto::Bdev, tonic::Status> {
        match self.call(Call::CreateBdev(proto::CreateBdevRequest { uri: uri.into() })).await? {
            Reply::Bdev(bdev) => Ok(bdev),
            other => panic!("CreateBdev replied {other:?}"),
        }
    }

    async fn share(
        &self,
        req: proto::ShareBdevRequest,
    ) -> Result<proto::ShareBdevReply, tonic::Status> {
        match self.call(Call::ShareBdev(req)).await? {
            Reply::Shared(reply) => Ok(reply),
            other => panic!("ShareBdev replied {other:?}"),
        }
    }

    async fn unshare(&self, name: &str) -> Result<Reply, tonic::Status> {
        self.call(Call::UnshareBdev(proto::UnshareBdevRequest { name: name.into() })).await
    }

    async fn destroy(&self, name: &str) -> Result<Reply, tonic::Status> {
        self.call(Call::DestroyBdev(proto::DestroyBdevRequest { name: name.into() })).await
    }

    async fn bdevs(&self) -> Vec<proto::Bdev> {
        match self.call(Call::ListBdevs).await.unwrap() {
            Reply::Bdevs(reply) => reply.bdevs,
            other => panic!("ListBdevs replied {other:?}"),
        }
    }

    async fn subsystems(&self) -> Vec<proto::Subsystem> {
        match self.call(Call::ListSubsystems).await.unwrap() {
            Reply::Subsystems(reply) => reply.subsystems,
            other => panic!("ListSubsystems replied {other:?}"),
        }
    }
}

fn share_req(name: &str) -> proto::ShareBdevRequest {
    proto::ShareBdevRequest { name: name.into(), ..Default::default() }
}

#[tokio::test]
async fn bad_request_table_gets_its_codes_and_leaves_configfs_as_it_was() {
    let fx = Fixture::new();
    let table = bad_request_table(&TableParams::default());
    let bad = table.iter().filter(|c| c.expect != Code::Ok).count();
    assert!(bad >= 30, "the table has only {bad} bad requests");
    // Someone else's share is there all along and must come through untouched.
    fx.add_disk("vdb", 64);
    fx.create("aio:///dev/vdb").await.unwrap();
    fx.share(share_req("aio:///dev/vdb")).await.unwrap();
    let before = fx.tree();

    let mut api = &fx.svc;
    let outcomes = match run_bad_request_table(&mut api, &TableParams::default()).await {
        Ok(outcomes) => outcomes,
        Err(err) => panic!("{err:#}"),
    };
    assert_eq!(outcomes.len(), table.len());
    assert_eq!(fx.tree(), before, "configfs holds exactly what it held before the table");
    assert_eq!(fx.malloc_files(), 0, "the table's malloc files are gone");

    fx.unshare("aio:///dev/vdb").await.unwrap();
    fx.destroy("aio:///dev/vdb").await.unwrap();
    assert_eq!(fx.tree(), EMPTY_TREE);
}

#[tokio::test]
async fn create_share_hot_attach_detach_unshare_destroy() {
    let fx = Fixture::new();
    fx.add_disk("vdb", 512);
    let aio = fx.create("aio:///dev/vdb").await.unwrap();
    assert_eq!(
        (aio.name.as_str(), aio.num_blocks, aio.blk_size),
        ("aio:///dev/vdb", 1_048_576, 512)
    );
    assert_eq!(
        (aio.claimed, aio.claimed_by.as_str(), aio.state.as_str()),
        (false, "", STATE_ONLINE)
    );
    // The uuid is derived from the name: stable across daemon restarts.
    let restarted = Fixture::new();
    restarted.add_disk("vdb", 1);
    assert_eq!(aio.uuid, restarted.create("aio:///dev/vdb").await.unwrap().uuid);
    let malloc = fx.create("malloc:///m0?size_mb=8").await.unwrap();
    assert_eq!(malloc.num_blocks * u64::from(malloc.blk_size), 8 << 20);

    let shared = fx.share(share_req("aio:///dev/vdb")).await.unwrap();
    assert_eq!(shared.nqn, format!("{NQN_PREFIX}{}", aio.uuid));
    assert_eq!(shared.uri, format!("nvmf://192.0.2.1:4420/{}", shared.nqn));
    let listed = fx.bdevs().await;
    let vdb = listed.iter().find(|b| b.name == "aio:///dev/vdb").unwrap();
    assert_eq!(
        (vdb.claimed, vdb.claimed_by.as_str(), vdb.share_uri.as_str()),
        (true, CLAIMED_BY, shared.uri.as_str())
    );

    // Hot attach m0 into the live subsystem, then detach it.
    let ns = match fx
        .call(Call::AddNamespace(proto::AddNamespaceRequest {
            nqn: shared.nqn.clone(),
            bdev: malloc.name.clone(),
            nsid: None,
            ..Default::default()
        }))
        .await
        .unwrap()
    {
        Reply::Namespace(ns) => ns,
        other => panic!("{other:?}"),
    };
    assert_eq!((ns.nsid, ns.bdev.as_str(), ns.enabled), (2, malloc.name.as_str(), true));
    let subsystems = fx.subsystems().await;
    assert_eq!(subsystems.len(), 1);
    let s = &subsystems[0];
    assert_eq!(
        (s.nqn.as_str(), s.shared_bdev.as_str(), s.allow_any_host),
        (shared.nqn.as_str(), "aio:///dev/vdb", true)
    );
    let namespaces: Vec<(u32, &str, &str)> =
        s.namespaces.iter().map(|n| (n.nsid, n.bdev.as_str(), n.device_path.as_str())).collect();
    let m0_path = fx.dir.path().join("malloc/m0");
    assert_eq!(
        namespaces,
        [(1, "aio:///dev/vdb", "/dev/vdb"), (2, malloc.name.as_str(), m0_path.to_str().unwrap())]
    );
    assert_eq!(
        s.ports,
        [proto::Port {
            id: 1,
            trtype: "tcp".into(),
            adrfam: "ipv4".into(),
            traddr: "192.0.2.1".into(),
            trsvcid: 4420
        }]
    );
    assert!(
        fx.tree().iter().any(|l| l.ends_with("namespaces/2/buffered_io = 1")),
        "files are served with buffered I/O"
    );
    fx.call(Call::RemoveNamespace(proto::RemoveNamespaceRequest {
        nqn: shared.nqn.clone(),
        nsid: 2,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(!fx.bdevs().await.iter().find(|b| b.name == malloc.name).unwrap().claimed);

    // A second share on the same port reuses nvmet port 1; another port makes port 2.
    let on_4420 = fx.share(share_req(&malloc.name)).await.unwrap();
    assert!(on_4420.uri.starts_with("nvmf://192.0.2.1:4420/"));
    fx.add_disk("vdc", 16);
    fx.create("aio:///dev/vdc").await.unwrap();
    let custom = proto::ShareBdevRequest {
        nqn: Some("nqn.2019-05.io.vmcheck:custom".into()),
        port: Some(4421),
        allowed_hosts: vec![
            "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000000a".into()
        ],
        ..share_req("aio:///dev/vdc")
    };
    assert_eq!(
        fx.share(custom).await.unwrap().uri,
        "nvmf://192.0.2.1:4421/nqn.2019-05.io.vmcheck:custom"
    );
    let ports: Vec<u32> =
        fx.subsystems().await.iter().flat_map(|s| s.ports.iter().map(|p| p.id)).collect();
    assert_eq!(ports, [1, 1, 2]);

    for name in ["aio:///dev/vdb", &malloc.name, "aio:///dev/vdc"] {
        fx.unshare(name).await.unwrap();
        fx.destroy(name).await.unwrap();
    }
    assert!(fx.bdevs().await.is_empty());
    assert_eq!(fx.tree(), EMPTY_TREE);
    assert_eq!(fx.malloc_files(), 0);
}

#[tokio::test]
async fn a_vanished_device_is_faulted_and_the_daemon_keeps_answering() {
    let fx = Fixture::new();
    fx.add_disk("nvme1n1", 64);
    let name = "aio:///dev/nvme1n1";
    fx.create(name).await.unwrap();
    fx.share(share_req(name)).await.unwrap();
    fx.pull_disk("nvme1n1");

    let bdev = fx.bdevs().await.remove(0);
    assert_eq!((bdev.state.as_str(), bdev.claimed), (STATE_FAULTED, true));
    assert_eq!(fx.subsystems().await.len(), 1, "still listed while shared");
    fx.unshare(name).await.unwrap();
    let err = fx.share(share_req(name)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(name) && err.message().contains("/dev/nvme1n1"), "{err:?}");
    fx.destroy(name).await.unwrap();

    // Gone before creation: not found, naming the device.
    let err = fx.create(name).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("/dev/nvme1n1"), "{err:?}");
    assert_eq!(fx.tree(), EMPTY_TREE);
}

#[tokio::test]
async fn a_share_that_fails_halfway_leaves_nothing_behind() {
    let fx = Fixture::new();
    let name = "malloc:///m1?size_mb=4";
    fx.create(name).await.unwrap();
    let before = fx.tree();
    // Where nvmet-tcp binds: the link of the subsystem into the port.
    assert!(fx.svc.nvmet().fs().inject_fault(
        Op::Symlink,
        "ports/1/subsystems/nqn.2019-05.io.vmcheck:halfway",
        Errno::EADDRNOTAVAIL as i32
    ));
    let err = fx
        .share(proto::ShareBdevRequest {
            nqn: Some("nqn.2019-05.io.vmcheck:halfway".into()),
            ..share_req(name)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("port 1") && err.message().contains("192.0.2.1:4420"),
        "{err:?}"
    );
    assert_eq!(fx.tree(), before);
    let bdev = fx.bdevs().await.remove(0);
    assert!(!bdev.claimed && bdev.share_uri.is_empty());
    // Nothing stale blocks the retry.
    fx.share(proto::ShareBdevRequest {
        nqn: Some("nqn.2019-05.io.vmcheck:halfway".into()),
        ..share_req(name)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn leftover_state_is_reported_listed_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nvmet");
    let leftover = "nqn.2019-05.io.vmcheck:leftover";
    {
        let earlier = Nvmet::new(ConfigFs::emulated(&root, &ROOT_LAYOUT).unwrap());
        let ns = NamespaceSpec {
            nsid: 1,
            device_path: "/dev/vdz".into(),
            device_uuid: uuid::Uuid::nil(),
            buffered_io: false,
        };
        earlier
            .share(
                &ShareSpec {
                    nqn: leftover.into(),
                    allowed_hosts: vec![],
                    namespace: Some(ns),
                    traddr: TRADDR,
                    trsvcid: 4420,
                },
                &Deadline::none(),
            )
            .unwrap();
    }
    let fx = Fixture::with(dir, ConfigFs::emulated(&root, &ROOT_LAYOUT).unwrap());
    let report = fx.svc.leftovers().unwrap();
    assert!(
        report.contains(leftover) && report.contains("/dev/vdz") && report.contains("port 1"),
        "{report}"
    );

    let Reply::Subsystems(all) = fx.call(Call::ListSubsystems).await.unwrap() else {
        panic!("ListSubsystems")
    };
    assert_eq!(all.ports.iter().map(|p| (p.id, p.trsvcid)).collect::<Vec<_>>(), [(1, 4420)]);
    let listed = fx.subsystems().await;
    assert_eq!(
        (
            listed[0].nqn.as_str(),
            listed[0].shared_bdev.as_str(),
            listed[0].namespaces[0].bdev.as_str()
        ),
        (leftover, "", "")
    );
    fx.create("malloc:///m2?size_mb=4").await.unwrap();
    let add = Call::AddNamespace(proto::AddNamespaceRequest {
        nqn: leftover.into(),
        bdev: "malloc:///m2?size_mb=4".into(),
        nsid: None,
        ..Default::default()
    });
    assert_eq!(fx.call(add).await.unwrap_err().code(), Code::FailedPrecondition);
    let clash = proto::ShareBdevRequest {
        nqn: Some(leftover.into()),
        ..share_req("malloc:///m2?size_mb=4")
    };
    assert_eq!(fx.share(clash).await.unwrap_err().code(), Code::AlreadyExists);
    // Its port is reused for a share on the same address.
    assert_eq!(
        fx.share(share_req("malloc:///m2?size_mb=4")).await.unwrap().uri.split('/').nth(2),
        Some("192.0.2.1:4420")
    );
    fx.unshare("malloc:///m2?size_mb=4").await.unwrap();
    assert!(fx.svc.nvmet().subsystem_exists(leftover));
    assert_eq!(fx.svc.nvmet().state().unwrap().ports.len(), 1, "the leftover still uses its port");
}

#[tokio::test]
async fn health_reports_nvmet_and_version() {
    let fx = Fixture::new();
    let reply =
        proto::target_server::Target::health(&fx.svc, tonic::Request::new(proto::HealthRequest {}))
            .await
            .unwrap()
            .into_inner();
    assert!(reply.nvmet);
    assert_eq!(reply.version, env!("CARGO_PKG_VERSION"));

    let dir = tempfile::tempdir().unwrap();
    let without =
        Fixture::with(tempfile::tempdir().unwrap(), ConfigFs::kernel(dir.path().join("absent")));
    let reply = proto::target_server::Target::health(
        &without.svc,
        tonic::Request::new(proto::HealthRequest {}),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(!reply.nvmet);
    without.create("malloc:///m3?size_mb=1").await.unwrap();
    let err = without.share(share_req("malloc:///m3?size_mb=1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("nvmet module"), "{err:?}");
    assert!(without.subsystems().await.is_empty());
}

/// ListDisks: whole disks with serials (virtio-blk's `serial`, NVMe's controller serial padded
/// with spaces), by name; no partitions, no hidden multipath path nodes, nothing without a serial.
#[tokio::test]
async fn disks_are_listed_with_their_serials() {
    let fx = Fixture::new();
    let sys = fx.sysfs();
    fx.add_disk("vdb", 64);
    fake_serial(&sys, "vdb", "vmcheck-disk1").unwrap();
    fx.add_disk("nvme0n1", 512);
    let controller = sys.join("class/block/nvme0n1/device");
    std::fs::create_dir_all(&controller).unwrap();
    std::fs::write(controller.join("serial"), "vmcheck-disk0       \n").unwrap();
    // The hidden path node of the same namespace, a partition, a disk without a serial.
    fx.add_disk("nvme0c0n1", 512);
    fake_serial(&sys, "nvme0c0n1", "vmcheck-disk0").unwrap();
    std::fs::write(sys.join("class/block/nvme0c0n1/hidden"), "1\n").unwrap();
    fx.add_disk("vdb1", 32);
    fake_serial(&sys, "vdb1", "vmcheck-disk1").unwrap();
    std::fs::write(sys.join("class/block/vdb1/partition"), "1\n").unwrap();
    fx.add_disk("loop0", 8);
    let reply = proto::target_server::Target::list_disks(
        &fx.svc,
        tonic::Request::new(proto::ListDisksRequest {}),
    )
    .await
    .unwrap()
    .into_inner();
    let disks: Vec<_> =
        reply.disks.iter().map(|d| (d.name.as_str(), d.serial.as_str(), d.size_bytes)).collect();
    assert_eq!(
        disks,
        [("nvme0n1", "vmcheck-disk0", 512 << 20), ("vdb", "vmcheck-disk1", 64 << 20)]
    );
}

/// Requests race; the lock makes exactly one share and one create win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_serialised() {
    let fx = std::sync::Arc::new(Fixture::new());
    let name = "malloc:///race?size_mb=1";
    let creates: Vec<_> = (0..8)
        .map(|_| {
            let fx = fx.clone();
            tokio::spawn(async move { fx.create(name).await.map(|_| ()).map_err(|s| s.code()) })
        })
        .collect();
    let mut codes = Vec::new();
    for task in creates {
        codes.push(task.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| c.is_ok()).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| matches!(c, Ok(()) | Err(Code::AlreadyExists))), "{codes:?}");

    let shares: Vec<_> = (0..8)
        .map(|_| {
            let fx = fx.clone();
            tokio::spawn(async move {
                fx.share(share_req(name)).await.map(|_| ()).map_err(|s| s.code())
            })
        })
        .collect();
    let mut codes = Vec::new();
    for task in shares {
        codes.push(task.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| c.is_ok()).count(), 1, "{codes:?}");
    assert_eq!(fx.svc.nvmet().state().unwrap().subsystems.len(), 1);
}

fn with_timeout<T>(message: T, timeout: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("grpc-timeout", timeout.parse().unwrap());
    req
}

/// A request whose grpc-timeout has passed changes nothing and says so; one with time left
/// goes through.
#[tokio::test]
async fn a_passed_deadline_changes_nothing() {
    use proto::target_server::Target;
    let fx = Fixture::new();
    let name = "malloc:///late?size_mb=4";
    let err = Target::create_bdev(
        &fx.svc,
        with_timeout(proto::CreateBdevRequest { uri: name.into() }, "1n"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("nothing was changed"), "{err:?}");
    assert!(fx.bdevs().await.is_empty());
    assert_eq!(fx.malloc_files(), 0);

    Target::create_bdev(
        &fx.svc,
        with_timeout(proto::CreateBdevRequest { uri: name.into() }, "20S"),
    )
    .await
    .unwrap();
    let before = fx.tree();
    let err = Target::share_bdev(&fx.svc, with_timeout(share_req(name), "1u")).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(fx.tree(), before);
    assert!(!fx.bdevs().await[0].claimed);
    let err = Target::share_bdev(&fx.svc, with_timeout(share_req(name), "soon")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"soon\""), "{err:?}");
    Target::share_bdev(&fx.svc, with_timeout(share_req(name), "20S")).await.unwrap();
    let err = Target::unshare_bdev(
        &fx.svc,
        with_timeout(proto::UnshareBdevRequest { name: name.into() }, "1n"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        fx.bdevs().await[0].claimed,
        "a removal whose deadline passed before it started did not start"
    );
}

/// A request waiting for the lock past its deadline gives up without touching anything.
#[tokio::test]
async fn a_deadline_passing_while_another_request_holds_the_lock() {
    use proto::target_server::Target;
    let fx = Fixture::new();
    let held = fx.svc.hold_lock_for_tests().await;
    let req =
        with_timeout(proto::CreateBdevRequest { uri: "malloc:///queued?size_mb=1".into() }, "200m");
    let err = Target::create_bdev(&fx.svc, req).await.unwrap_err();
    drop(held);
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("waiting for another request"), "{err:?}");
    assert!(fx.bdevs().await.is_empty());
}

fn create_subsys(nqn: &str) -> Call {
    Call::CreateSubsystem(proto::CreateSubsystemRequest {
        nqn: nqn.into(),
        port: None,
        allowed_hosts: vec![],
    })
}

fn add_ns(nqn: &str, bdev: &str) -> Call {
    Call::AddNamespace(proto::AddNamespaceRequest {
        nqn: nqn.into(),
        bdev: bdev.into(),
        nsid: None,
        ..Default::default()
    })
}

/// An empty controller: linked into its port with no namespace, namespaces come and go, and
/// destroying it takes its namespaces and (unused) port along.
#[tokio::test]
async fn empty_controllers_take_namespaces_and_go_with_them() {
    let fx = Fixture::new();
    let ctrlr = "nqn.2019-05.io.vmcheck:ctrlr1";
    let Reply::Subsystem(made) = fx.call(create_subsys(ctrlr)).await.unwrap() else {
        panic!("CreateSubsystem")
    };
    assert_eq!(
        (made.nqn.as_str(), made.uri.as_str()),
        (ctrlr, "nvmf://192.0.2.1:4420/nqn.2019-05.io.vmcheck:ctrlr1")
    );
    let tree = fx.tree();
    assert!(
        tree.contains(&format!("l ports/1/subsystems/{ctrlr} -> subsystems/{ctrlr}")),
        "linked into port 1: {tree:#?}"
    );
    assert!(
        tree.contains(&format!("d subsystems/{ctrlr}/namespaces"))
            && !tree.iter().any(|l| l.contains("namespaces/1")),
        "{tree:#?}"
    );
    let listed = fx.subsystems().await;
    assert_eq!(
        (listed[0].own, listed[0].shared_bdev.as_str(), listed[0].namespaces.len()),
        (true, "", 0)
    );

    // A second empty controller on the same port shares the nvmet port.
    fx.call(create_subsys("nqn.2019-05.io.vmcheck:ctrlr2")).await.unwrap();
    assert_eq!(fx.svc.nvmet().state().unwrap().ports.len(), 1);

    fx.add_disk("nvme0n1", 64);
    fx.create("aio:///dev/nvme0n1").await.unwrap();
    fx.create("malloc:///m5?size_mb=4").await.unwrap();
    let Reply::Namespace(ns) = fx.call(add_ns(ctrlr, "aio:///dev/nvme0n1")).await.unwrap() else {
        panic!("AddNamespace")
    };
    assert_eq!((ns.nsid, ns.enabled), (1, true), "the first namespace of an empty controller is 1");
    let Reply::Namespace(ns) = fx.call(add_ns(ctrlr, "malloc:///m5?size_mb=4")).await.unwrap()
    else {
        panic!("AddNamespace")
    };
    assert_eq!(ns.nsid, 2);
    let bdevs = fx.bdevs().await;
    assert!(
        bdevs.iter().all(|b| b.claimed && b.share_uri.is_empty()),
        "claimed, not shared: {bdevs:?}"
    );
    // Namespace 1 of an empty controller is not a share: it can be detached.
    fx.call(Call::RemoveNamespace(proto::RemoveNamespaceRequest {
        nqn: ctrlr.into(),
        nsid: 1,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(!fx.tree().iter().any(|l| l.contains(&format!("{ctrlr}/namespaces/1"))));
    let err = fx.destroy("malloc:///m5?size_mb=4").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("namespace 2 of nqn.2019-05.io.vmcheck:ctrlr1"), "{err:?}");

    fx.call(Call::DestroySubsystem(proto::DestroySubsystemRequest { nqn: ctrlr.into() }))
        .await
        .unwrap();
    assert!(fx.bdevs().await.iter().all(|b| !b.claimed), "its namespaces went with it");
    assert_eq!(fx.svc.nvmet().state().unwrap().ports.len(), 1, "ctrlr2 still uses the port");
    fx.call(Call::DestroySubsystem(proto::DestroySubsystemRequest {
        nqn: "nqn.2019-05.io.vmcheck:ctrlr2".into(),
    }))
    .await
    .unwrap();
    fx.destroy("malloc:///m5?size_mb=4").await.unwrap();
    fx.destroy("aio:///dev/nvme0n1").await.unwrap();
    assert_eq!(fx.tree(), EMPTY_TREE);
}

/// A CreateSubsystem that fails at the link (where nvmet-tcp binds) or whose deadline passed
/// leaves nothing behind, and is not remembered as made.
#[tokio::test]
async fn a_failed_create_subsystem_leaves_nothing() {
    use proto::target_server::Target;
    let fx = Fixture::new();
    let ctrlr = "nqn.2019-05.io.vmcheck:ctrlr3";
    fx.svc.nvmet().fs().inject_fault(
        Op::Symlink,
        &format!("ports/1/subsystems/{ctrlr}"),
        Errno::EADDRINUSE as i32,
    );
    let err = fx.call(create_subsys(ctrlr)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(ctrlr) && err.message().contains("192.0.2.1:4420"), "{err:?}");
    assert_eq!(fx.tree(), EMPTY_TREE);
    let req =
        proto::CreateSubsystemRequest { nqn: ctrlr.into(), port: None, allowed_hosts: vec![] };
    let err = Target::create_subsystem(&fx.svc, with_timeout(req, "1n")).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(fx.tree(), EMPTY_TREE);
    let err = fx
        .call(Call::DestroySubsystem(proto::DestroySubsystemRequest { nqn: ctrlr.into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    fx.call(create_subsys(ctrlr)).await.unwrap();
}

fn split(name: &str, split_count: u32) -> Call {
    Call::SplitBdev(proto::SplitBdevRequest { name: name.into(), split_count, split_size_mb: None })
}

fn gpt_signature(fx: &Fixture, dev: &str) -> Vec<u8> {
    std::fs::read(fx.image(dev)).unwrap()[512..520].to_vec()
}

/// A disk split in two: a GPT on the disk, two aio bdevs of its partitions, the disk claimed
/// by "split"; splits go into namespaces; unsplit wipes the table and takes the splits away.
#[tokio::test]
async fn a_disk_splits_into_partition_bdevs_and_back() {
    let fx = Fixture::with_fake_disks();
    fx.add_disk("nvme0n1", 64);
    let base = "aio:///dev/nvme0n1";
    fx.create(base).await.unwrap();
    let Reply::Splits(made) = fx.call(split(base, 2)).await.unwrap() else { panic!("SplitBdev") };
    let names: Vec<&str> = made.bdevs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["aio:///dev/nvme0n1p1", "aio:///dev/nvme0n1p2"]);
    for b in &made.bdevs {
        assert_eq!(
            (b.num_blocks * u64::from(b.blk_size), b.split_base.as_str(), b.claimed),
            (31 << 20, base, false),
            "{b:?}"
        );
    }
    assert_eq!(gpt_signature(&fx, "nvme0n1"), b"EFI PART");
    let listed = fx.bdevs().await;
    let disk = listed.iter().find(|b| b.name == base).unwrap();
    assert_eq!((disk.claimed, disk.claimed_by.as_str()), (true, "split"));

    // The disk is claimed by its splits; a split goes only with all of them.
    for (call, needle) in [
        (Call::ShareBdev(share_req(base)), "is split into 2 bdevs; UnsplitBdev first"),
        (split(base, 2), "split already into 2"),
        (split("aio:///dev/nvme0n1p1", 2), "is a split of aio:///dev/nvme0n1"),
        (Call::DestroyBdev(proto::DestroyBdevRequest { name: base.into() }), "is split into 2"),
        (
            Call::DestroyBdev(proto::DestroyBdevRequest { name: "aio:///dev/nvme0n1p2".into() }),
            "use UnsplitBdev on aio:///dev/nvme0n1",
        ),
        (
            Call::CreateBdev(proto::CreateBdevRequest { uri: "aio:///dev/nvme0n1p1".into() }),
            "exists already",
        ),
    ] {
        let err = fx.call(call.clone()).await.unwrap_err();
        assert!(
            matches!(err.code(), Code::FailedPrecondition | Code::AlreadyExists),
            "{call:?}: {err:?}"
        );
        assert!(err.message().contains(needle), "{call:?}: {err:?}");
    }

    let ctrlr = "nqn.2019-05.io.vmcheck:ctrlr5";
    fx.call(create_subsys(ctrlr)).await.unwrap();
    fx.call(add_ns(ctrlr, "aio:///dev/nvme0n1p2")).await.unwrap();
    assert!(fx
        .tree()
        .contains(&format!("f subsystems/{ctrlr}/namespaces/1/device_path = /dev/nvme0n1p2")));
    let unsplit = Call::UnsplitBdev(proto::UnsplitBdevRequest { name: base.into() });
    let err = fx.call(unsplit.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("aio:///dev/nvme0n1p2 is in use as namespace 1 of"), "{err:?}");
    assert_eq!(gpt_signature(&fx, "nvme0n1"), b"EFI PART", "a refused unsplit leaves the table");
    fx.call(Call::DestroySubsystem(proto::DestroySubsystemRequest { nqn: ctrlr.into() }))
        .await
        .unwrap();
    fx.call(unsplit).await.unwrap();
    assert_eq!(fx.bdevs().await.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), [base]);
    assert_eq!(gpt_signature(&fx, "nvme0n1"), [0; 8], "the table is wiped");
    assert!(
        !fx.sysfs().join("class/block/nvme0n1p1").exists(),
        "the kernel dropped the partitions"
    );
    fx.destroy(base).await.unwrap();
    assert_eq!(fx.tree(), EMPTY_TREE);
}

/// Splits of the SPDK sizes, refused splits, and a split whose deadline passed: no table.
#[tokio::test]
async fn splits_that_cannot_be_made_leave_the_disk_whole() {
    use proto::target_server::Target;
    let fx = Fixture::with_fake_disks();
    fx.add_disk("vdb", 64);
    fx.create("aio:///dev/vdb").await.unwrap();
    let sized = proto::SplitBdevRequest {
        name: "aio:///dev/vdb".into(),
        split_count: 2,
        split_size_mb: Some(40),
    };
    let err = fx.call(Call::SplitBdev(sized)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("/dev/vdb") || err.message().contains("vdb (64 MiB"), "{err:?}");
    let req = proto::SplitBdevRequest {
        name: "aio:///dev/vdb".into(),
        split_count: 4,
        split_size_mb: None,
    };
    let err = Target::split_bdev(&fx.svc, with_timeout(req, "1n")).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(gpt_signature(&fx, "vdb"), [0; 8]);
    assert_eq!(fx.bdevs().await.len(), 1);
    let sized = proto::SplitBdevRequest {
        name: "aio:///dev/vdb".into(),
        split_count: 3,
        split_size_mb: Some(8),
    };
    let Reply::Splits(made) = fx.call(Call::SplitBdev(sized)).await.unwrap() else {
        panic!("SplitBdev")
    };
    let names: Vec<&str> = made.bdevs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["aio:///dev/vdb1", "aio:///dev/vdb2", "aio:///dev/vdb3"]);
    assert!(made.bdevs.iter().all(|b| b.num_blocks * u64::from(b.blk_size) == 8 << 20));
}

/// SPDK's hot-remove: the disk behind a share, and behind two splits in an empty controller,
/// vanishes. The daemon withdraws every namespace it backed (controllers stay), marks the
/// bdevs faulted for good, and keeps answering; clean-up works afterwards.
#[tokio::test]
async fn a_hot_removed_disk_is_withdrawn_from_every_namespace() {
    let fx = Fixture::with_fake_disks();
    fx.add_disk("nvme0n1", 64);
    fx.add_disk("nvme1n1", 64);
    fx.add_disk("nvme2n1", 64);
    let base = "aio:///dev/nvme0n1";
    fx.create(base).await.unwrap();
    fx.call(split(base, 2)).await.unwrap();
    fx.create("aio:///dev/nvme1n1").await.unwrap();
    fx.create("aio:///dev/nvme2n1").await.unwrap();
    let ctrlr = "nqn.2019-05.io.vmcheck:ctrlr1";
    fx.call(create_subsys(ctrlr)).await.unwrap();
    for bdev in ["aio:///dev/nvme0n1p1", "aio:///dev/nvme0n1p2", "aio:///dev/nvme2n1"] {
        fx.call(add_ns(ctrlr, bdev)).await.unwrap();
    }
    let shared = fx.share(share_req("aio:///dev/nvme1n1")).await.unwrap();
    assert!(fx.svc.reap_vanished().await.is_empty(), "nothing vanished yet");

    fx.pull_disk("nvme0n1");
    fx.pull_disk("nvme1n1");
    let report = fx.svc.reap_vanished().await;
    assert_eq!(
        report,
        [
            "hot-remove: /dev/nvme0n1 vanished; bdev aio:///dev/nvme0n1 is faulted, it was in no namespace".to_string(),
            format!("hot-remove: /dev/nvme0n1p1 vanished; bdev aio:///dev/nvme0n1p1 is faulted, removed from namespace 1 of {ctrlr}"),
            format!("hot-remove: /dev/nvme0n1p2 vanished; bdev aio:///dev/nvme0n1p2 is faulted, removed from namespace 2 of {ctrlr}"),
            format!("hot-remove: /dev/nvme1n1 vanished; bdev aio:///dev/nvme1n1 is faulted, removed from namespace 1 of {}", shared.nqn),
        ]
    );
    assert!(fx.svc.reap_vanished().await.is_empty(), "each removal is reported once");
    // configfs: only nvme2n1's namespace is left; both subsystems and the port stay.
    let namespaces: Vec<String> = fx
        .tree()
        .into_iter()
        .filter(|l| l.starts_with("d subsystems/") && l.contains("/namespaces/"))
        .collect();
    assert_eq!(namespaces, [format!("d subsystems/{ctrlr}/namespaces/3")]);
    let subsystems = fx.subsystems().await;
    assert_eq!(subsystems.len(), 2);
    assert!(subsystems.iter().all(|s| s.own && s.ports.len() == 1), "{subsystems:?}");
    let bdevs = fx.bdevs().await;
    let state = |name: &str| {
        bdevs.iter().find(|b| b.name == name).map(|b| (b.state.clone(), b.claimed)).unwrap()
    };
    for name in ["aio:///dev/nvme0n1p1", "aio:///dev/nvme0n1p2", "aio:///dev/nvme1n1"] {
        assert_eq!(state(name), (STATE_FAULTED.to_string(), false), "{name}");
    }
    assert_eq!(state(base), (STATE_FAULTED.to_string(), true), "still claimed by its splits");
    assert_eq!(state("aio:///dev/nvme2n1"), (STATE_ONLINE.to_string(), true));
    assert_eq!(
        bdevs.iter().find(|b| b.name == "aio:///dev/nvme1n1").unwrap().share_uri,
        shared.uri,
        "the share (controller) stays"
    );

    // The daemon answers, and a removed bdev stays faulted even if the name comes back.
    proto::target_server::Target::health(&fx.svc, tonic::Request::new(proto::HealthRequest {}))
        .await
        .unwrap();
    fx.add_disk("nvme0n1", 64);
    fx.svc
        .backing_for_tests()
        .write_partition_table("nvme0n1", &[], &[("nvme0n1p1".into(), 1 << 20, 1 << 20)])
        .unwrap();
    let err = fx.call(add_ns(ctrlr, "aio:///dev/nvme0n1p1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("hot-removed"), "{err:?}");
    let err = fx.destroy("aio:///dev/nvme1n1").await.unwrap_err();
    assert!(err.message().contains("unshare it first"), "{err:?}");

    // Clean-up: unshare, destroy the controller, unsplit (no disk to wipe), destroy.
    fx.unshare("aio:///dev/nvme1n1").await.unwrap();
    fx.call(Call::DestroySubsystem(proto::DestroySubsystemRequest { nqn: ctrlr.into() }))
        .await
        .unwrap();
    fx.call(Call::UnsplitBdev(proto::UnsplitBdevRequest { name: base.into() })).await.unwrap();
    for name in [base, "aio:///dev/nvme1n1", "aio:///dev/nvme2n1"] {
        fx.destroy(name).await.unwrap();
    }
    assert_eq!(fx.tree(), EMPTY_TREE);
    // Created again, a returning disk is a new, online bdev.
    fx.add_disk("nvme1n1", 64);
    assert_eq!(fx.create("aio:///dev/nvme1n1").await.unwrap().state, STATE_ONLINE);
}

/// The monitor task notices a vanished disk by itself, within a few poll periods.
#[tokio::test]
async fn the_monitor_withdraws_a_vanished_disk_by_itself() {
    let fx = std::sync::Arc::new(Fixture::with_fake_disks());
    fx.add_disk("vdb", 16);
    fx.create("aio:///dev/vdb").await.unwrap();
    let shared = fx.share(share_req("aio:///dev/vdb")).await.unwrap();
    let svc = std::sync::Arc::new(TargetService::new(
        Nvmet::new(ConfigFs::emulated(fx.dir.path().join("nvmet"), &ROOT_LAYOUT).unwrap()),
        Backing::new(fx.sysfs(), fx.dir.path().join("malloc")),
        Traddr::Fixed(TRADDR),
    ));
    // The daemon's monitor over a second service on the same configfs and sysfs: it made
    // nothing, so it withdraws nothing, and must not disturb the first one's share.
    let idle = super::monitor::spawn(svc.clone(), std::time::Duration::from_millis(10));
    let watched = std::sync::Arc::clone(&fx);
    let monitor = tokio::spawn(async move {
        loop {
            watched.svc.reap_vanished().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    fx.pull_disk("vdb");
    let ns = format!("subsystems/{}/namespaces/1", shared.nqn);
    let started = std::time::Instant::now();
    while fx.tree().iter().any(|l| l.contains(&ns)) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "namespace 1 still there after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    monitor.abort();
    idle.abort();
    assert_eq!(fx.bdevs().await[0].state, STATE_FAULTED);
    assert!(fx.svc.nvmet().subsystem_exists(&shared.nqn), "the controller stays");
}

/// A split whose deadline passes after the table was written wipes it again: no GPT, no
/// partitions, no split bdevs, and the disk can be split afterwards.
#[tokio::test]
async fn a_split_failing_after_the_table_was_written_wipes_it() {
    let fx = Fixture::with_fake_disks();
    fx.add_disk("nvme3n1", 32);
    fx.create("aio:///dev/nvme3n1").await.unwrap();
    let req = proto::SplitBdevRequest {
        name: "aio:///dev/nvme3n1".into(),
        split_count: 2,
        split_size_mb: None,
    };
    let err = fx.svc.split_bdev(req.clone(), Deadline::after_checks(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.to_string().contains("after the kernel made the partitions"), "{err}");
    assert_eq!(gpt_signature(&fx, "nvme3n1"), [0; 8], "the table is wiped");
    assert!(!fx.sysfs().join("class/block/nvme3n1p1").exists(), "the partitions are gone");
    let bdevs = fx.bdevs().await;
    assert_eq!((bdevs.len(), bdevs[0].claimed), (1, false), "{bdevs:?}");
    fx.svc.split_bdev(req, Deadline::none()).await.unwrap();
    assert_eq!(gpt_signature(&fx, "nvme3n1"), b"EFI PART");
}
