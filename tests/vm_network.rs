//! Two machines on the test network: they reach each other, the network can be cut, and an
//! initiator reads and writes an nvmet subsystem configured by hand on the target.

mod common;

use std::time::Duration;

const NQN: &str = "nqn.2024-01.io.vmcheck:by-hand";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_and_nvmet_by_hand() {
    let (_d, target, initiator) = common::target_and_initiator(&[("disk0", 64)]).await;

    assert!(target.succeed("ip -4 addr show").await.unwrap().contains("192.0.2.1/24"));
    initiator.succeed("ping -c 2 -W 10 192.0.2.1").await.unwrap();
    target.succeed("ping -c 2 -W 10 192.0.2.2").await.unwrap();
    // A cut link drops every frame; unblocking restores it.
    initiator.block().await.unwrap();
    initiator.fail("ping -c 2 -W 2 192.0.2.1").await.unwrap();
    initiator.unblock().await.unwrap();
    initiator
        .wait_until_succeeds("ping -c 1 -W 2 192.0.2.1", Duration::from_secs(30))
        .await
        .unwrap();

    // nvmet by hand, through configfs.
    let dev = target.disk_device("disk0").await.unwrap();
    assert!(dev.starts_with("/dev/nvme"), "target disk: {dev:?}");
    target
        .succeed(&format!(
            "set -e; cd /sys/kernel/config/nvmet; mkdir subsystems/{NQN}; echo 1 > subsystems/{NQN}/attr_allow_any_host; \
             mkdir subsystems/{NQN}/namespaces/1; echo {dev} > subsystems/{NQN}/namespaces/1/device_path; \
             echo 1 > subsystems/{NQN}/namespaces/1/enable; mkdir ports/1; echo tcp > ports/1/addr_trtype; echo ipv4 > ports/1/addr_adrfam; \
             echo 192.0.2.1 > ports/1/addr_traddr; echo 4420 > ports/1/addr_trsvcid; ln -s /sys/kernel/config/nvmet/subsystems/{NQN} ports/1/subsystems/{NQN}"
        ))
        .await
        .unwrap();
    let t = vmcheck::timeouts::nvme();
    initiator
        .succeed(&format!(
            "nvme connect -t tcp -a 192.0.2.1 -s 4420 -n {NQN} --keep-alive-tmo={} --ctrl-loss-tmo={} --reconnect-delay={}",
            t.keep_alive_tmo, t.ctrl_loss_tmo, t.reconnect_delay
        ))
        .await
        .unwrap();
    initiator.wait_for_file("/dev/nvme0n1", Duration::from_secs(30)).await.unwrap();
    let size = initiator.succeed("cat /sys/block/nvme0n1/size").await.unwrap();
    assert_eq!(size.trim(), (64 * 2048).to_string(), "the initiator sees the 64 MiB disk");
    // Write a pattern through NVMe/TCP, read it back, and read it on the target's own disk.
    initiator
        .succeed(
            "head -c 4194304 /dev/urandom > /tmp/pattern; dd if=/tmp/pattern of=/dev/nvme0n1 bs=1M oflag=direct conv=fsync 2>/dev/null",
        )
        .await
        .unwrap();
    let written = initiator.succeed("md5sum < /tmp/pattern").await.unwrap();
    let read = initiator
        .succeed("dd if=/dev/nvme0n1 bs=1M count=4 iflag=direct 2>/dev/null | md5sum")
        .await
        .unwrap();
    assert_eq!(written, read);
    let on_target = target
        .succeed(&format!("dd if={dev} bs=1M count=4 iflag=direct 2>/dev/null | md5sum"))
        .await
        .unwrap();
    assert_eq!(written, on_target);
    initiator.succeed(&format!("nvme disconnect -n {NQN}")).await.unwrap();
    initiator.wait_until_fails("test -e /dev/nvme0n1", Duration::from_secs(30)).await.unwrap();
}
