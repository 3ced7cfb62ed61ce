//! Recipes (`src/recipe.rs`) as a user on another project writes them: a machine booted from a
//! recipe derived from the initiator with a real Debian package (tgt, never installed on the
//! host), a text file and services, one of which dies; tgt from a recipe serving two LUNs whose
//! names `iscsi::name_in_lun_order` puts back in LUN order; and the errors of bad recipes.

mod common;

use std::time::Duration;

use common::{driver, err_text};
use vmcheck::config::{DiskSpec, NodeSpec, Role};
use vmcheck::images::Images;
use vmcheck::recipe::{service_exits, Recipe};
use vmcheck::scenarios::iscsi;
use vmcheck::scenarios::workload::{integrity_job, run_fio};
use vmcheck::timeouts;
use vmcheck::tools::iscsi::{Iscsiadm, Session};

const BOOT_WAIT: Duration = Duration::from_secs(60);

fn with_tgt() -> Recipe {
    Recipe::initiator()
        .named("with-tgt")
        .debian_package("tgt")
        // sg_inq needs libsgutils2, which the host lacks: the package's Depends brings it.
        .debian_package("sg3-utils")
        .file("/etc/recipe-test/greeting", "hello from the recipe\n")
        .service("tgtd", "/usr/sbin/tgtd -f")
        .service("dies", "echo dying-service-says-goodbye; exit 3")
        .service_once("once", "echo ran-once; exit 5")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_recipe_boots_with_its_package_file_and_services() {
    let node = NodeSpec::new("tgthost", Role::Initiator, 1).with_recipe(with_tgt());
    assert!(node.forward_ports.is_empty());
    let d = driver(vec![node]).await;
    d.start_all().await.unwrap();
    let m = d.machine("tgthost").unwrap();

    // The text file is there, as written.
    assert_eq!(
        m.succeed("cat /etc/recipe-test/greeting").await.unwrap(),
        "hello from the recipe\n"
    );
    // The package's binaries are at their usual paths, on the tools disk.
    assert_eq!(
        m.succeed("readlink /usr/sbin/tgtadm").await.unwrap().trim(),
        "/tools/usr/sbin/tgtadm"
    );
    // The service runs and answers: a target created through tgtadm is listed back.
    m.wait_until_succeeds("tgtadm --lld iscsi --op show --mode target", BOOT_WAIT).await.unwrap();
    m.succeed(
        "test -s /run/vmcheck/services/tgtd.pid && kill -0 $(cat /run/vmcheck/services/tgtd.pid)",
    )
    .await
    .unwrap();
    m.succeed("tgtadm --lld iscsi --op new --mode target --tid 1 -T iqn.2024-01.io.vmcheck:recipe")
        .await
        .unwrap();
    let listed = m.succeed("tgtadm --lld iscsi --op show --mode target").await.unwrap();
    assert!(listed.contains("iqn.2024-01.io.vmcheck:recipe"), "{listed}");
    assert!(service_exits(&m, "tgtd").await.unwrap().is_empty(), "tgtd never exited");
    // A library the host lacks came from the package's dependency, and the binary runs.
    m.succeed("test -e /usr/lib/x86_64-linux-gnu/libsgutils2-1.46.so.2 && sg_inq -V")
        .await
        .unwrap();
    // The base recipe's tools and service are still there.
    m.succeed("nvme version && fio --version && kill -0 $(cat /run/vmcheck/services/iscsid.pid)")
        .await
        .unwrap();

    // A service that dies is reported on the console with its last lines, its exits are
    // counted, and it is restarted.
    m.wait_for_console_text(
        r"vmcheck: service dies exited with status 3 \(restarting in 1 s\)",
        BOOT_WAIT,
    )
    .await
    .unwrap();
    assert!(m.console_contains(r"vmcheck: \| dying-service-says-goodbye").unwrap());
    assert!(m.console_contains(r"dies: dying-service-says-goodbye").unwrap());
    m.wait_until_succeeds("test $(wc -l < /run/vmcheck/services/dies.exits) -ge 2", BOOT_WAIT)
        .await
        .unwrap();
    let exits = service_exits(&m, "dies").await.unwrap();
    assert!(exits.len() >= 2 && exits.iter().all(|s| *s == 3), "{exits:?}");
    // A service run once ends once and stays ended. (It ended at boot: on a machine restored
    // from a snapshot that was before this run's console began, so the guest's record says.)
    m.wait_until_succeeds("test -s /run/vmcheck/services/once.exits", BOOT_WAIT).await.unwrap();
    assert_eq!(service_exits(&m, "once").await.unwrap(), [5]);
    assert_eq!(m.succeed("cat /run/vmcheck/services/once.log").await.unwrap(), "ran-once\n");
}

/// What a storage engineer on another project writes: Debian's tgt as the target, from a recipe
/// that starts empty, serving an NVMe disk of its VM over iSCSI to vmcheck's initiator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tgt_from_a_recipe_serves_an_nvme_disk_over_iscsi() {
    const IQN: &str = "iqn.2026-12.io.vmcheck.test:tgt";
    let recipe = Recipe::new("tgt-target")
        .debian_package("tgt")
        .service("tgtd", "mkdir -p /var/run/tgtd && exec /usr/sbin/tgtd -f");
    let target = NodeSpec::new("tgt", Role::Target, 1)
        .with_recipe(recipe)
        .with_disk(DiskSpec::nvme("disk0", 256));
    assert!(target.forward_ports.is_empty(), "the recipe forwards nothing, whatever the role");
    let d =
        driver(vec![target, NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768)]).await;
    d.start_all().await.unwrap();
    let (tgt, initiator) = (d.machine("tgt").unwrap(), d.machine("initiator").unwrap());

    tgt.wait_until_succeeds("tgtadm --lld iscsi --op show --mode target", BOOT_WAIT).await.unwrap();
    let dev = tgt.disk_device("disk0").await.unwrap();
    for args in [
        format!("--op new --mode target --tid 1 --targetname {IQN}"),
        format!("--op new --mode logicalunit --tid 1 --lun 1 --backing-store {dev}"),
        // A second, file-backed LUN: the two disks' names are put in LUN order below.
        "--op new --mode logicalunit --tid 1 --lun 2 --backing-store /tmp/lun2".to_string(),
        "--op bind --mode target --tid 1 --initiator-address ALL".to_string(),
    ] {
        if args.contains("/tmp/lun2") {
            tgt.succeed("dd if=/dev/zero of=/tmp/lun2 bs=1M count=16 2>/dev/null").await.unwrap();
        }
        tgt.succeed(&format!("tgtadm --lld iscsi {args}")).await.unwrap();
    }
    let served =
        iscsi::Target { iqn: IQN.into(), addr: tgt.address(), port: 3260, uri: String::new() };
    iscsi::login(&initiator, &served).await.unwrap();
    // Names against LUN order, as sd's asynchronous probes sometimes give them: both disks
    // deleted, LUN 2 scanned back first. name_in_lun_order puts them right.
    let host = iscsi_host(&initiator, IQN).await;
    for lun in [1, 2] {
        iscsi::wait_for_disk(&initiator, IQN, lun, timeouts::hotplug()).await.unwrap();
    }
    for (_, disk) in iscsi::disks(&initiator).await.unwrap() {
        initiator.succeed(&disk.delete_command()).await.unwrap();
    }
    for lun in [2, 1] {
        initiator
            .succeed(&format!("echo '- - {lun}' > /sys/class/scsi_host/host{host}/scan"))
            .await
            .unwrap();
        iscsi::wait_for_disk(&initiator, IQN, lun, timeouts::hotplug()).await.unwrap();
    }
    let disks = iscsi::disks(&initiator).await.unwrap();
    let reversed = [1, 2].map(|lun| disks.iter().find(|(_, d)| d.lun == lun).unwrap().1.path());
    assert_eq!(reversed, ["/dev/sdb", "/dev/sda"], "the set-up should name LUN 2 first");
    let named =
        iscsi::name_in_lun_order(&initiator, IQN, &[1, 2], timeouts::hotplug()).await.unwrap();
    assert_eq!(named, ["/dev/sda", "/dev/sdb"]);
    let disk = named[0].clone();
    let outcome = run_fio(&initiator, &integrity_job(&disk, 10), &disk).await.unwrap();
    let report = outcome.expect_clean().unwrap();
    assert!(report.jobs.iter().any(|j| j.write.io_kbytes > 0), "fio wrote nothing: {report:?}");
    assert!(service_exits(&tgt, "tgtd").await.unwrap().is_empty(), "tgtd never exited");
}

/// The SCSI host number of `iqn`'s session on `m`.
async fn iscsi_host(m: &vmcheck::machine::Machine, iqn: &str) -> u32 {
    let listing = m.succeed(&Iscsiadm::sessions()).await.unwrap();
    let sessions = Session::parse_all(&listing).unwrap();
    Session::find(&sessions, iqn).and_then(|s| s.host).expect("the session has a SCSI host")
}

#[test]
fn recipes_get_their_own_images_and_bad_ones_are_named() {
    let images = Images { verbose: false, ..Images::from_env().unwrap() };
    let base = images.ensure(Recipe::initiator()).unwrap();
    // A text file more is another image (and so another snapshot key: the key holds its paths).
    let more = images.ensure(Recipe::initiator().file("/etc/x", "1\n")).unwrap();
    let other = images.ensure(Recipe::initiator().file("/etc/x", "2\n")).unwrap();
    assert_ne!(base.hash, more.hash);
    assert_ne!(more.hash, other.hash);
    assert_ne!(more.initrd, other.initrd);
    assert_eq!(
        images.ensure(Recipe::initiator().file("/etc/x", "1\n")).unwrap(),
        more,
        "the same recipe is the same image"
    );
    // A service command differs: another image.
    let svc = |cmd: &str| images.ensure(Recipe::new("svc").service("s", cmd)).unwrap().hash;
    assert_ne!(svc("sleep 1"), svc("sleep 2"));

    // A package whose binaries need a library the host lacks (sg3-utils: libsgutils2, not
    // installed here) gets the dependency that holds it unpacked too, and nothing else.
    assert!(!host_has("libsgutils2-1.46-2"), "this test wants a host without libsgutils2");
    let sg = images.ensure(Recipe::new("sg").debian_package("sg3-utils")).unwrap();
    let inputs = std::fs::read_to_string(sg.initrd.with_file_name("inputs.txt")).unwrap();
    let debs: Vec<&str> = inputs
        .lines()
        .filter(|l| l.starts_with("deb "))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(debs, ["sg3-utils", "libsgutils2-1.46-2"], "{inputs}");

    let e = err_text(images.ensure(Recipe::new("bad").debian_package("vmcheck-no-such-package")));
    assert!(e.contains("vmcheck-no-such-package") && e.contains("recipe bad"), "{e}");
    let e = err_text(images.ensure(Recipe::new("bad").kernel_module("vmcheck_no_such_module")));
    assert!(e.contains("vmcheck_no_such_module"), "{e}");
    let e = err_text(images.ensure(Recipe::new("bad").host_binary("/usr/bin/vmcheck-not-here")));
    assert!(e.contains("/usr/bin/vmcheck-not-here") && e.contains("not there"), "{e}");
    let e = err_text(images.ensure(Recipe::new("bad").service("a", "true").service("a", "false")));
    assert!(e.contains("two services are named a"), "{e}");
    let e = err_text(images.ensure(Recipe::new("bad").kernel_package("linux-image-vmcheck-none")));
    assert!(e.contains("linux-image-vmcheck-none"), "{e}");
    // A guest path through a link of the image (/var/run -> /run) would write on the host.
    let e = err_text(images.ensure(Recipe::new("bad").file("/var/run/x", "y\n")));
    assert!(e.contains("/var/run/x") && e.contains("link /var/run"), "{e}");
    // A bare kernel image brings no modules: asking for one is an error that says so.
    let vmlinuz = cached_vmlinuz(&images.cache_dir);
    let e = err_text(
        images.ensure(Recipe::new("bare").kernel_file(&vmlinuz).kernel_module("nvme-tcp")),
    );
    assert!(e.contains("without modules") && e.contains("nvme-tcp"), "{e}");
}

fn host_has(package: &str) -> bool {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

/// The bzImage of the default kernel, unpacked in the cache by the images built above.
fn cached_vmlinuz(cache: &std::path::Path) -> std::path::PathBuf {
    let kernels = std::fs::read_dir(cache.join("kernel"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("boot"));
    kernels
        .filter_map(|boot| std::fs::read_dir(boot).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .expect("a kernel in the cache")
}
