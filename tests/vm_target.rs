//! The storage target daemon in a real target VM: the whole life of a share seen from a real
//! initiator, the bad-request table against real nvmet (and configfs exactly as before after
//! it), a backing disk hot-removed under the daemon, and an empty controller that an
//! initiator connects to before namespaces are hot-attached and hot-detached.

mod common;

use std::time::Duration;

use vmcheck::target::conformance::{bad_request_table, run_bad_request_table, TableParams};
use vmcheck::target::proto;
use vmcheck::tools::fio::{Fio, FioReport};
use vmcheck::tools::nvme::{DiscoveryLog, FabricsOptions, Nvme};

const NVMET_DIRS: &str = "ls /sys/kernel/config/nvmet/subsystems /sys/kernel/config/nvmet/ports /sys/kernel/config/nvmet/hosts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_daemon_in_a_real_vm() {
    let (_d, target, initiator) = common::target_and_initiator(&[("disk0", 128)]).await;
    let mut client = target.target_client().await.unwrap();
    let health = client.health(proto::HealthRequest {}).await.unwrap().into_inner();
    assert!(!health.version.is_empty() && health.nvmet, "{health:?}");
    let empty_nvmet = target.succeed(NVMET_DIRS).await.unwrap();

    // create -> share -> discover, connect, fio verify -> unshare -> destroy.
    let dev = target.disk_device("disk0").await.unwrap();
    let bdev = client
        .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev}") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bdev.num_blocks * u64::from(bdev.blk_size), 128 << 20);
    let share = client
        .share_bdev(proto::ShareBdevRequest {
            name: bdev.name.clone(),
            protocol: proto::ShareProtocol::Nvmf as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(share.uri.starts_with("nvmf://192.0.2.1:4420/"), "{share:?}");
    let discovered = DiscoveryLog::parse(
        &initiator.succeed(&Nvme::discover("192.0.2.1", 4420).command_line()).await.unwrap(),
    )
    .unwrap();
    assert!(discovered.find(&share.nqn).is_some(), "{discovered:?}");
    initiator
        .succeed(
            &Nvme::connect("192.0.2.1", 4420, &share.nqn)
                .options(FabricsOptions::scaled_timeouts())
                .command_line(),
        )
        .await
        .unwrap();
    let ns = initiator
        .wait_until_succeeds("ls /dev/nvme*n1 | head -n1 | grep .", Duration::from_secs(30))
        .await
        .unwrap();
    let job = Fio::seed_randrw_verify(ns.trim(), 5);
    let out = initiator.execute(&job.command_line()).await.unwrap();
    let fio = FioReport::parse_with_stderr(&out.stdout, &out.stderr).unwrap();
    assert!(out.status == 0 && fio.problems().is_empty(), "{:?} {}", fio.problems(), out.stderr);
    initiator.succeed(&Nvme::disconnect(&share.nqn)).await.unwrap();
    client.unshare_bdev(proto::UnshareBdevRequest { name: bdev.name.clone() }).await.unwrap();
    client.destroy_bdev(proto::DestroyBdevRequest { name: bdev.name.clone() }).await.unwrap();
    assert!(client
        .list_bdevs(proto::ListBdevsRequest {})
        .await
        .unwrap()
        .into_inner()
        .bdevs
        .is_empty());
    assert_eq!(
        target.succeed(NVMET_DIRS).await.unwrap(),
        empty_nvmet,
        "configfs holds nothing after unshare"
    );

    // Malformed and out-of-order requests, each with its code; configfs exactly as before.
    let params = TableParams::default();
    let outcomes = run_bad_request_table(&mut client, &params).await.unwrap();
    let bad =
        bad_request_table(&params).into_iter().filter(|c| c.expect != tonic::Code::Ok).count();
    assert!(bad >= 30, "only {bad} bad requests in the table");
    assert_eq!(outcomes.len(), bad_request_table(&params).len());
    assert_eq!(
        target.succeed(NVMET_DIRS).await.unwrap(),
        empty_nvmet,
        "configfs holds nothing after the table"
    );

    // The backing disk vanishes (hot-removed): the daemon keeps answering, the bdev is faulted.
    let bdev = client
        .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev}") })
        .await
        .unwrap()
        .into_inner();
    client
        .share_bdev(proto::ShareBdevRequest {
            name: bdev.name.clone(),
            protocol: proto::ShareProtocol::Nvmf as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let qmp = target.qmp().await.unwrap();
    let mark = qmp.event_count();
    target.qmp_raw("device_del", serde_json::json!({"id": "disk0"})).await.unwrap();
    qmp.wait_for_event(mark, Duration::from_secs(60), |e| {
        e.name == "DEVICE_DELETED" && e.data["device"] == "disk0"
    })
    .await
    .unwrap();
    target.wait_until_fails(&format!("test -e {dev}"), Duration::from_secs(30)).await.unwrap();
    // The daemon notices by itself and withdraws the namespace; the subsystem stays.
    target
        .wait_for_console_text(
            &format!("hot-remove: {dev} vanished.*removed from namespace 1"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let share_nqn = bdevs_share_nqn(&mut client).await;
    assert_eq!(
        target.succeed(&ns_dirs(&share_nqn)).await.unwrap().trim(),
        "",
        "namespace 1 left configfs"
    );
    client.health(proto::HealthRequest {}).await.unwrap();
    let bdevs = client.list_bdevs(proto::ListBdevsRequest {}).await.unwrap().into_inner().bdevs;
    assert_eq!(bdevs.len(), 1);
    assert_eq!((bdevs[0].state.as_str(), bdevs[0].claimed), ("faulted", false), "{bdevs:?}");
    client.unshare_bdev(proto::UnshareBdevRequest { name: bdev.name.clone() }).await.unwrap();
    client.destroy_bdev(proto::DestroyBdevRequest { name: bdev.name.clone() }).await.unwrap();
    assert_eq!(target.succeed(NVMET_DIRS).await.unwrap(), empty_nvmet);
}

/// The initiator's namespaces as `(block device, namespace uuid)`, multipath path nodes
/// (`nvme0c0n1`) left out. The uuid is the bdev's, so a test knows which bdev it sees.
async fn initiator_namespaces(m: &vmcheck::machine::Machine) -> Vec<(String, String)> {
    let cmd = "for d in /sys/block/nvme*; do [ -e $d ] || continue; n=${d##*/}; case $n in *c*) continue;; esac; \
               echo $n $(cat $d/uuid); done";
    let out = m.succeed(cmd).await.unwrap();
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, u)| (n.to_string(), u.trim().to_string()))
        .collect()
}

/// Waits (bounded) until the initiator's namespace uuids are exactly `uuids` (any order).
async fn wait_for_namespaces(
    m: &vmcheck::machine::Machine,
    uuids: &[&str],
    timeout: Duration,
) -> Vec<(String, String)> {
    let started = std::time::Instant::now();
    let mut want: Vec<&str> = uuids.to_vec();
    want.sort();
    loop {
        let seen = initiator_namespaces(m).await;
        let mut got: Vec<&str> = seen.iter().map(|(_, u)| u.as_str()).collect();
        got.sort();
        if got == want {
            return seen;
        }
        assert!(
            started.elapsed() < timeout,
            "after {timeout:?} the initiator sees {seen:?}, not namespaces {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ns_dirs(nqn: &str) -> String {
    format!("ls /sys/kernel/config/nvmet/subsystems/{nqn}/namespaces")
}

/// SPDK's hot-attach/hot-detach prerequisites: an empty controller an initiator connects to
/// first; namespaces attached and detached while it is connected show up and go away there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_controller_hot_attach_and_detach() {
    let (_d, target, initiator) =
        common::target_and_initiator(&[("disk0", 64), ("disk1", 64)]).await;
    let mut client = target.target_client().await.unwrap();
    let nqn = "nqn.2019-05.io.vmcheck:ctrlr1";
    let made = client
        .create_subsystem(proto::CreateSubsystemRequest {
            nqn: nqn.into(),
            port: None,
            allowed_hosts: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.uri, format!("nvmf://192.0.2.1:4420/{nqn}"));
    assert_eq!(target.succeed(&ns_dirs(nqn)).await.unwrap().trim(), "", "no namespace yet");

    // The initiator connects to the empty controller: a controller, no namespace.
    initiator
        .succeed(
            &Nvme::connect("192.0.2.1", 4420, nqn)
                .options(FabricsOptions::scaled_timeouts())
                .command_line(),
        )
        .await
        .unwrap();
    let ctrls = initiator.succeed("cat /sys/class/nvme/nvme*/subsysnqn").await.unwrap();
    assert!(ctrls.lines().any(|l| l.trim() == nqn), "{ctrls}");
    assert!(initiator_namespaces(&initiator).await.is_empty());

    // Hot attach two disks: each appears on the initiator (namespace-change AEN, rescan).
    let mut uuids = Vec::new();
    for (id, nsid) in [("disk0", 1), ("disk1", 2)] {
        let dev = target.disk_device(id).await.unwrap();
        let bdev = client
            .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev}") })
            .await
            .unwrap()
            .into_inner();
        let ns = client
            .add_namespace(proto::AddNamespaceRequest {
                nqn: nqn.into(),
                bdev: bdev.name.clone(),
                nsid: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((ns.nsid, ns.enabled), (nsid, true));
        uuids.push((bdev.name, bdev.uuid));
    }
    let seen =
        wait_for_namespaces(&initiator, &[&uuids[0].1, &uuids[1].1], Duration::from_secs(30)).await;
    let (disk1_dev, _) = seen.iter().find(|(_, u)| *u == uuids[1].1).unwrap();
    let job = Fio::seed_randrw_verify(&format!("/dev/{disk1_dev}"), 3);
    let out = initiator.execute(&job.command_line()).await.unwrap();
    let fio = FioReport::parse_with_stderr(&out.stdout, &out.stderr).unwrap();
    assert!(out.status == 0 && fio.problems().is_empty(), "{:?} {}", fio.problems(), out.stderr);

    // Hot detach namespace 1 while connected: gone on the initiator, the other stays.
    client
        .remove_namespace(proto::RemoveNamespaceRequest {
            nqn: nqn.into(),
            nsid: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for_namespaces(&initiator, &[&uuids[1].1], Duration::from_secs(30)).await;
    assert_eq!(target.succeed(&ns_dirs(nqn)).await.unwrap().trim(), "2");
    let bdevs = client.list_bdevs(proto::ListBdevsRequest {}).await.unwrap().into_inner().bdevs;
    assert!(!bdevs.iter().find(|b| b.name == uuids[0].0).unwrap().claimed, "{bdevs:?}");

    // Destroying the controller takes namespace 2 and the port along.
    initiator.succeed(&Nvme::disconnect(nqn)).await.unwrap();
    client.destroy_subsystem(proto::DestroySubsystemRequest { nqn: nqn.into() }).await.unwrap();
    assert_eq!(
        target
            .succeed(NVMET_DIRS)
            .await
            .unwrap()
            .split_whitespace()
            .filter(|w| !w.ends_with(':'))
            .count(),
        0
    );
    for (name, _) in &uuids {
        client.destroy_bdev(proto::DestroyBdevRequest { name: name.clone() }).await.unwrap();
    }
}

/// SPDK's split on a kernel target: the daemon writes a GPT on the target's NVMe disk, the
/// kernel's partitions become bdevs, and an initiator sees each as a namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_disk_served_to_an_initiator() {
    let (_d, target, initiator) = common::target_and_initiator(&[("disk0", 64)]).await;
    let mut client = target.target_client().await.unwrap();
    let dev = target.disk_device("disk0").await.unwrap();
    let base = client
        .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev}") })
        .await
        .unwrap()
        .into_inner();
    let splits = client
        .split_bdev(proto::SplitBdevRequest {
            name: base.name.clone(),
            split_count: 2,
            split_size_mb: None,
        })
        .await
        .unwrap()
        .into_inner()
        .bdevs;
    let names: Vec<String> = splits.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, [format!("aio://{dev}p1"), format!("aio://{dev}p2")]);
    assert!(splits.iter().all(|b| b.num_blocks * u64::from(b.blk_size) == 31 << 20), "{splits:?}");
    // The kernel's partitions, as the GPT says.
    let sizes = target
        .succeed(&format!(
            "cat /sys/class/block/{0}p1/size /sys/class/block/{0}p2/size",
            dev.trim_start_matches("/dev/")
        ))
        .await
        .unwrap();
    assert_eq!(sizes.split_whitespace().collect::<Vec<_>>(), ["63488", "63488"]);

    let nqn = "nqn.2019-05.io.vmcheck:split";
    client
        .create_subsystem(proto::CreateSubsystemRequest {
            nqn: nqn.into(),
            port: None,
            allowed_hosts: vec![],
        })
        .await
        .unwrap();
    for b in &splits {
        client
            .add_namespace(proto::AddNamespaceRequest {
                nqn: nqn.into(),
                bdev: b.name.clone(),
                nsid: None,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    initiator
        .succeed(
            &Nvme::connect("192.0.2.1", 4420, nqn)
                .options(FabricsOptions::scaled_timeouts())
                .command_line(),
        )
        .await
        .unwrap();
    let seen = wait_for_namespaces(
        &initiator,
        &[&splits[0].uuid, &splits[1].uuid],
        Duration::from_secs(30),
    )
    .await;
    // fio with verify on each split at once: the two halves of one disk do not overlap.
    let jobs: Vec<String> = seen
        .iter()
        .map(|(n, _)| Fio::seed_randrw_verify(&format!("/dev/{n}"), 3).command_line())
        .collect();
    let out = initiator.execute(&format!("({}) & ({}) & wait", jobs[0], jobs[1])).await.unwrap();
    assert_eq!(out.status, 0, "{}", out.stderr);

    // Unsplit waits for the namespaces to go; afterwards the disk is whole again.
    let err = client
        .unsplit_bdev(proto::UnsplitBdevRequest { name: base.name.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    initiator.succeed(&Nvme::disconnect(nqn)).await.unwrap();
    client.destroy_subsystem(proto::DestroySubsystemRequest { nqn: nqn.into() }).await.unwrap();
    client.unsplit_bdev(proto::UnsplitBdevRequest { name: base.name.clone() }).await.unwrap();
    target.wait_until_fails(&format!("test -e {dev}p1"), Duration::from_secs(10)).await.unwrap();
    client.destroy_bdev(proto::DestroyBdevRequest { name: base.name.clone() }).await.unwrap();
}

/// The guest's PCI address (`0000:00:05.0`) of the NVMe controller with the serial of `disk`.
async fn pci_address(m: &vmcheck::machine::Machine, serial: &str) -> String {
    let cmd = format!(
        "for c in /sys/class/nvme/nvme*; do [ \"$(echo $(cat $c/serial))\" = {serial} ] && basename $(readlink -f $c/device); done; true"
    );
    let out = m.succeed(&cmd).await.unwrap();
    let bdf = out.trim().to_string();
    assert!(
        bdf.matches(':').count() == 2 && bdf.contains('.'),
        "no PCI address for serial {serial}: {out:?}"
    );
    bdf
}

/// SPDK's hot-remove, both ways the plans allow: an NVMe disk of the target VM removed by QMP
/// `device_del` (its two splits are namespaces of an empty controller) and another removed by
/// the guest's `/sys/bus/pci/devices/BDF/remove` (a ShareBdev share). The daemon withdraws
/// every namespace the disks backed, the connected initiator sees them go, the controllers
/// stay, ListBdevs says faulted, the console says what happened, and gRPC keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_removed_disks_leave_every_namespace() {
    let (_d, target, initiator) =
        common::target_and_initiator(&[("disk0", 64), ("disk1", 64)]).await;
    let mut client = target.target_client().await.unwrap();
    let dev0 = target.disk_device("disk0").await.unwrap();
    let dev1 = target.disk_device("disk1").await.unwrap();
    let disk0 = client
        .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev0}") })
        .await
        .unwrap()
        .into_inner();
    let splits = client
        .split_bdev(proto::SplitBdevRequest {
            name: disk0.name.clone(),
            split_count: 2,
            split_size_mb: None,
        })
        .await
        .unwrap()
        .into_inner()
        .bdevs;
    let nqn = "nqn.2019-05.io.vmcheck:ctrlr1";
    client
        .create_subsystem(proto::CreateSubsystemRequest {
            nqn: nqn.into(),
            port: None,
            allowed_hosts: vec![],
        })
        .await
        .unwrap();
    for b in &splits {
        client
            .add_namespace(proto::AddNamespaceRequest {
                nqn: nqn.into(),
                bdev: b.name.clone(),
                nsid: None,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let disk1 = client
        .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev1}") })
        .await
        .unwrap()
        .into_inner();
    let share = client
        .share_bdev(proto::ShareBdevRequest { name: disk1.name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for n in [nqn, share.nqn.as_str()] {
        initiator
            .succeed(
                &Nvme::connect("192.0.2.1", 4420, n)
                    .options(FabricsOptions::scaled_timeouts())
                    .command_line(),
            )
            .await
            .unwrap();
    }
    wait_for_namespaces(
        &initiator,
        &[&splits[0].uuid, &splits[1].uuid, &disk1.uuid],
        Duration::from_secs(30),
    )
    .await;

    // QMP device_del of disk0: both splits' namespaces go; disk1's stays.
    let qmp = target.qmp().await.unwrap();
    let mark = qmp.event_count();
    target.qmp_raw("device_del", serde_json::json!({"id": "disk0"})).await.unwrap();
    qmp.wait_for_event(mark, Duration::from_secs(60), |e| {
        e.name == "DEVICE_DELETED" && e.data["device"] == "disk0"
    })
    .await
    .unwrap();
    target
        .wait_for_console_text(
            &format!("hot-remove: {dev0}p2 vanished.*removed from namespace 2 of {nqn}"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    wait_for_namespaces(&initiator, &[&disk1.uuid], Duration::from_secs(30)).await;
    assert_eq!(
        target.succeed(&ns_dirs(nqn)).await.unwrap().trim(),
        "",
        "both namespaces left configfs"
    );
    client.health(proto::HealthRequest {}).await.unwrap();
    let bdevs = client.list_bdevs(proto::ListBdevsRequest {}).await.unwrap().into_inner().bdevs;
    let state = |name: &str| {
        bdevs.iter().find(|b| b.name == name).map(|b| (b.state.as_str(), b.claimed)).unwrap()
    };
    assert_eq!(state(&splits[0].name), ("faulted", false), "{bdevs:?}");
    assert_eq!(state(&splits[1].name), ("faulted", false), "{bdevs:?}");
    assert_eq!(state(&disk0.name), ("faulted", true), "still claimed by its splits: {bdevs:?}");
    assert_eq!(state(&disk1.name), ("online", true), "{bdevs:?}");
    // The controller stays, connected and empty, as SPDK keeps a controller whose bdev went.
    let ctrls = initiator.succeed("cat /sys/class/nvme/nvme*/subsysnqn").await.unwrap();
    assert!(ctrls.lines().any(|l| l.trim() == nqn), "{ctrls}");

    // The guest removes disk1's PCI function itself: the share's namespace goes too.
    let bdf = pci_address(&target, "vmcheck-disk1").await;
    target.succeed(&format!("echo 1 > /sys/bus/pci/devices/{bdf}/remove")).await.unwrap();
    target
        .wait_for_console_text(
            &format!("hot-remove: {dev1} vanished.*removed from namespace 1 of {}", share.nqn),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    wait_for_namespaces(&initiator, &[], Duration::from_secs(30)).await;
    let bdevs = client.list_bdevs(proto::ListBdevsRequest {}).await.unwrap().into_inner().bdevs;
    assert!(bdevs.iter().all(|b| b.state == "faulted"), "{bdevs:?}");
    let err = client
        .add_namespace(proto::AddNamespaceRequest {
            nqn: nqn.into(),
            bdev: splits[0].name.clone(),
            nsid: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("hot-removed"), "{err:?}");

    // Clean-up still works, and leaves configfs empty.
    for n in [nqn, share.nqn.as_str()] {
        initiator.succeed(&Nvme::disconnect(n)).await.unwrap();
    }
    client.destroy_subsystem(proto::DestroySubsystemRequest { nqn: nqn.into() }).await.unwrap();
    client.unshare_bdev(proto::UnshareBdevRequest { name: disk1.name.clone() }).await.unwrap();
    client.unsplit_bdev(proto::UnsplitBdevRequest { name: disk0.name.clone() }).await.unwrap();
    for name in [&disk0.name, &disk1.name] {
        client.destroy_bdev(proto::DestroyBdevRequest { name: name.clone() }).await.unwrap();
    }
    assert_eq!(
        target
            .succeed(NVMET_DIRS)
            .await
            .unwrap()
            .split_whitespace()
            .filter(|w| !w.ends_with(':'))
            .count(),
        0
    );
}

/// The NQN of the one bdev's share (from its share URI).
async fn bdevs_share_nqn(client: &mut vmcheck::target::client::TargetClient) -> String {
    let bdevs = client.list_bdevs(proto::ListBdevsRequest {}).await.unwrap().into_inner().bdevs;
    bdevs[0].share_uri.rsplit('/').next().unwrap().to_string()
}
