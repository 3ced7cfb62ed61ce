mod common;
use std::time::Duration;
use vmcheck::config::{DiskSpec, NodeSpec, Role};
use vmcheck::target::proto;
use vmcheck::tools::iscsi::Iscsiadm;

async fn show(m: &vmcheck::machine::Machine, cmd: &str) -> String {
    let out = m.execute(cmd).await.unwrap();
    let s = format!("### {} $ {cmd}\n[rc {}]\n{}\n[stderr]\n{}\n", m.name(), out.status, out.stdout, out.stderr);
    eprintln!("{s}");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/tmp/iscsi-explore/log.txt")
        .and_then(|mut f| std::io::Write::write_all(&mut f, s.as_bytes()))
        .unwrap();
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explore() {
    let d = common::driver(vec![
        NodeSpec::new("target", Role::Target, 1).with_disk(DiskSpec::nvme("disk0", 128)),
        NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768),
    ])
    .await;
    d.start_all().await.unwrap();
    let t = &d.machine("target").unwrap();
    let i = &d.machine("initiator").unwrap();
    show(t, "ls /sys/kernel/config/target /sys/kernel/config/target/core; lsmod | grep target").await;
    show(i, "ps; cat /etc/iscsi/initiatorname.iscsi; lsmod | grep -E 'iscsi|sd_mod'").await;
    let mut c = t.target_client().await.unwrap();
    eprintln!("{:?}", c.health(proto::HealthRequest {}).await.unwrap().into_inner());
    let dev = t.disk_device("disk0").await.unwrap();
    let bdev = c.create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev}") }).await.unwrap().into_inner();
    let share = c
        .share_bdev(proto::ShareBdevRequest { name: bdev.name.clone(), protocol: proto::ShareProtocol::Iscsi as i32, ..Default::default() })
        .await;
    eprintln!("{share:?}");
    let share = share.unwrap().into_inner();
    show(t, "cd /sys/kernel/config/target; find . -maxdepth 6 | grep -v statistics | head -80; ls -l iscsi/*/tpgt_1/lun/lun_0/").await;
    show(i, &Iscsiadm::discover("192.0.2.1", 3260)).await;
    show(i, &Iscsiadm::login(&share.iqn, "192.0.2.1", 3260)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    show(i, "iscsiadm -m session").await;
    show(i, &Iscsiadm::sessions()).await;
    show(i, "lsblk -b").await;
    show(i, "fio --name=w --filename=/dev/sda --rw=randwrite --bs=4k --size=16M --direct=1 --ioengine=libaio --verify=crc32 --output-format=json > /tmp/f.json; echo rc $?; tail -5 /tmp/f.json").await;
    // background fio, then hot-remove
    show(i, "setsid sh -c 'fio --name=w --filename=/dev/sda --rw=randwrite --bs=4k --iodepth=8 --direct=1 --ioengine=libaio --verify=crc32 --time_based --runtime=120 --size=64M --output-format=json > /tmp/bg.json 2>/tmp/bg.err; echo $? > /tmp/bg.rc' </dev/null >/dev/null 2>&1 &").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let qmp = t.qmp().await.unwrap();
    let mark = qmp.event_count();
    t.qmp_raw("device_del", serde_json::json!({"id": "disk0"})).await.unwrap();
    qmp.wait_for_event(mark, Duration::from_secs(60), |e| e.name == "DEVICE_DELETED" && e.data["device"] == "disk0").await.unwrap();
    eprintln!("DEVICE_DELETED at {:?}", std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(8)).await;
    show(i, "cat /tmp/bg.rc; tail -c 600 /tmp/bg.err; lsblk -b; iscsiadm -m session -P 3 | grep -E 'State|disk'").await;
    show(t, "dmesg | tail -20; ls /sys/kernel/config/target/core/iblock_0/").await;
    // Step 2: the daemon removes the share of the faulted bdev.
    let r = c.unshare_bdev(proto::UnshareBdevRequest { name: bdev.name.clone() }).await;
    eprintln!("unshare: {r:?}");
    show(t, "find /sys/kernel/config/target | head; dmesg | tail -5").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        show(i, "cat /tmp/bg.rc; tail -c 300 /tmp/bg.err; lsblk -b; iscsiadm -m session -P 3 | grep -E 'State|disk'; dmesg | tail -8")
            .await;
    }
    show(i, &Iscsiadm::logout(&share.iqn, "192.0.2.1", 3260)).await;
    show(i, "lsblk -b; iscsiadm -m session; echo rc $?").await;
    show(i, "grep -c . /tmp/bg.json; grep -E '\"error\"|err' /tmp/bg.json | head").await;
}
