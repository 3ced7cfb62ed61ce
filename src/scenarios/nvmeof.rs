//! NVMe-oF steps every scenario shares: make a bdev of a target disk, share it, discover,
//! connect, find the namespace's block device on the initiator, disconnect. Addresses come from
//! the machines (their configured test-network address), never from constants.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::log;
use crate::machine::Machine;
use crate::poll::{self, Polled};
use crate::target::client::TargetClient;
use crate::target::proto;
use crate::timeouts;
use crate::tools::lsblk::Lsblk;
use crate::tools::nvme::{DiscoveryLog, FabricsOptions, Nvme};

/// The NVMe-oF/TCP port shares use unless a scenario picks another.
pub const NVMF_PORT: u16 = 4420;

/// A subsystem an initiator can reach: where and under which NQN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The subsystem's NQN.
    pub nqn: String,
    /// The target's address on the test network.
    pub addr: Ipv4Addr,
    /// The NVMe-oF/TCP port.
    pub port: u16,
    /// `nvmf://addr:port/nqn`.
    pub uri: String,
}

/// Makes an `aio://` bdev of the target's disk `disk_id` (found by serial); returns its name.
pub async fn create_disk_bdev(
    target: &Machine,
    client: &mut TargetClient,
    disk_id: &str,
) -> Result<proto::Bdev> {
    let dev = disk_device_from_daemon(target, client, disk_id).await?;
    let bdev = client
        .create_bdev(proto::CreateBdevRequest { uri: format!("aio://{dev}") })
        .await
        .context("CreateBdev")?
        .into_inner();
    log::line(&format!(
        "bdev {} ({} blocks of {} bytes) on disk {disk_id}",
        bdev.name, bdev.num_blocks, bdev.blk_size
    ));
    Ok(bdev)
}

/// The target's disk `disk_id` as its daemon lists it (`ListDisks`, by serial): one gRPC call,
/// where the guest's own listing is a guest command (a process started under TCG, about 0.1 s
/// on a one-vCPU target). A disk the daemon does not list (still being probed) is waited for
/// in the guest, as [`Machine::disk_device`] does.
async fn disk_device_from_daemon(
    target: &Machine,
    client: &mut TargetClient,
    disk_id: &str,
) -> Result<String> {
    let serial = target.disk(disk_id)?.serial;
    let listed =
        client.list_disks(proto::ListDisksRequest {}).await.context("ListDisks")?.into_inner();
    match crate::target::client::disk_node(&listed.disks, &serial) {
        Some(dev) => Ok(dev),
        None => target.disk_device(disk_id).await,
    }
}

/// Shares `bdev` over NVMe-oF/TCP on the target's address and `port`, under `nqn` (the daemon's
/// default NQN when `None`).
pub async fn share_bdev(
    target: &Machine,
    client: &mut TargetClient,
    bdev: &str,
    nqn: Option<&str>,
    port: u16,
) -> Result<Share> {
    let reply = client
        .share_bdev(proto::ShareBdevRequest {
            name: bdev.to_string(),
            protocol: proto::ShareProtocol::Nvmf as i32,
            nqn: nqn.map(str::to_string),
            port: Some(port.into()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("ShareBdev {bdev}"))?
        .into_inner();
    log::line(&format!("shared {bdev} as {}", reply.uri));
    Ok(Share { nqn: reply.nqn, addr: target.address(), port, uri: reply.uri })
}

/// `nvme discover` from the initiator; the log must list `share`.
pub async fn discover(initiator: &Machine, share: &Share) -> Result<DiscoveryLog> {
    let out = initiator
        .succeed(&Nvme::discover(&share.addr.to_string(), share.port).command_line())
        .await?;
    let log = DiscoveryLog::parse(&out)?;
    if log.find(&share.nqn).is_none() {
        bail!(
            "the discovery log of {}:{} does not list {}: {log:?}",
            share.addr,
            share.port,
            share.nqn
        );
    }
    Ok(log)
}

/// `nvme connect` to `share` with the TCG-scaled timeouts.
pub async fn connect(initiator: &Machine, share: &Share) -> Result<()> {
    let cmd = Nvme::connect(&share.addr.to_string(), share.port, &share.nqn)
        .options(FabricsOptions::scaled_timeouts())
        .command_line();
    initiator.succeed(&cmd).await.map(drop)
}

/// Connects to `share` and waits for namespace `nsid`; returns its block device.
pub async fn connect_namespace(initiator: &Machine, share: &Share, nsid: u32) -> Result<String> {
    connect(initiator, share).await?;
    wait_for_namespace(initiator, &share.nqn, nsid, timeouts::hotplug()).await
}

/// `nvme disconnect -n nqn`; waits until no block device of that subsystem is left.
pub async fn disconnect(initiator: &Machine, nqn: &str) -> Result<()> {
    initiator.succeed(&Nvme::disconnect(nqn)).await?;
    wait_for_no_namespace(initiator, nqn, None, timeouts::hotplug()).await
}

/// One line per NVMe block device the guest can open: name, subsystem NQN, nsid. Hidden
/// multipath path nodes are left out (their head node is the device). Shell builtins only (no
/// process per file read).
const NAMESPACES: &str = "for b in /sys/block/nvme*; do [ -e $b ] || continue; h=0; read -r h 2>/dev/null <$b/hidden; \
                          [ \"$h\" = 1 ] && continue; q=-; n=0; read -r q 2>/dev/null <$b/device/subsysnqn; \
                          read -r n 2>/dev/null <$b/nsid; echo ${b##*/} ${q:--} ${n:-0}; done; true";

/// The initiator's NVMe namespaces now: (device, subsystem NQN, nsid).
pub async fn namespaces(initiator: &Machine) -> Result<Vec<(String, String, u32)>> {
    Ok(parse_namespaces(
        &initiator.execute_with_timeout(NAMESPACES, timeouts::request()).await?.stdout,
    ))
}

/// Parses the lines of the listing [`namespaces`] runs.
pub fn parse_namespaces(listing: &str) -> Vec<(String, String, u32)> {
    listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, nqn, nsid) = (w.next()?, w.next()?, w.next()?.parse().ok()?);
            Some((format!("/dev/{name}"), nqn.to_string(), nsid))
        })
        .collect()
}

/// Waits until namespace `nsid` of subsystem `nqn` has a block device on the initiator.
pub async fn wait_for_namespace(
    initiator: &Machine,
    nqn: &str,
    nsid: u32,
    timeout: Duration,
) -> Result<String> {
    let seen = std::sync::Mutex::new(Vec::new());
    let polled = poll::until(timeout, timeouts::GUEST_POLL, |_| async {
        let found = namespaces(initiator).await?;
        let dev =
            found.iter().find(|(_, n, id)| n == nqn && *id == nsid).map(|(dev, _, _)| dev.clone());
        *seen.lock().unwrap() = found;
        Ok(dev)
    })
    .await?;
    match polled {
        Polled::Done(dev) => {
            log::line(&format!("{}: namespace {nsid} of {nqn} is {dev}", initiator.name()));
            Ok(dev)
        }
        Polled::TimedOut(_) => Err(initiator.error(
            format!("namespace {nsid} of {nqn} did not appear within {timeout:?}"),
            format!(
                "the initiator has these namespaces (device, nqn, nsid): {:?}",
                seen.into_inner().unwrap()
            ),
        )),
    }
}

/// Waits until subsystem `nqn` shows no block device on the initiator (only namespace `nsid`
/// when given).
pub async fn wait_for_no_namespace(
    initiator: &Machine,
    nqn: &str,
    nsid: Option<u32>,
    timeout: Duration,
) -> Result<()> {
    let left = std::sync::Mutex::new(Vec::new());
    let polled = poll::until(timeout, timeouts::GUEST_POLL, |_| async {
        let found = namespaces(initiator).await?;
        let still: Vec<_> = found
            .into_iter()
            .filter(|(_, n, id)| n == nqn && nsid.is_none_or(|want| *id == want))
            .collect();
        let gone = still.is_empty();
        *left.lock().unwrap() = still;
        Ok(gone.then_some(()))
    })
    .await?;
    match polled {
        Polled::Done(()) => Ok(()),
        Polled::TimedOut(_) => Err(initiator.error(
            format!("{nqn} still shows {:?} after {timeout:?}", left.into_inner().unwrap()),
            "expected its namespace to be gone",
        )),
    }
}

/// lsblk on the machine, typed; kept as an artifact by the caller if it wants.
pub async fn lsblk(machine: &Machine) -> Result<Lsblk> {
    Ok(Lsblk::parse(&machine.succeed(Lsblk::command()).await?)?)
}

/// The plan's "removed devices are gone from lsblk": none of `devices` is listed.
pub async fn expect_gone_from_lsblk(machine: &Machine, devices: &[&str]) -> Result<()> {
    let listed = lsblk(machine).await?;
    let still: Vec<_> = devices.iter().filter(|d| listed.find(d).is_some()).collect();
    if !still.is_empty() {
        let all: Vec<String> = listed.iter().map(|d| d.path()).collect();
        return Err(
            machine.error(format!("lsblk still lists {still:?}"), format!("lsblk shows {all:?}"))
        );
    }
    Ok(())
}

/// The plans' "the target doesn't crash and still works": the daemon answers Health and
/// ListBdevs.
pub async fn expect_target_alive(
    target: &Machine,
    client: &mut TargetClient,
) -> Result<Vec<proto::Bdev>> {
    client
        .health(proto::HealthRequest {})
        .await
        .map_err(|e| target.error("the target daemon does not answer Health", format!("{e}")))?;
    let bdevs = client
        .list_bdevs(proto::ListBdevsRequest {})
        .await
        .map_err(|e| target.error("the target daemon does not answer ListBdevs", format!("{e}")))?
        .into_inner()
        .bdevs;
    Ok(bdevs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_read_from_sysfs_lines() {
        let listing =
            "nvme1n1 nqn.2019-05.io.vmcheck:a 1\nnvme1n2 nqn.2019-05.io.vmcheck:a 2\nnvme2n1 nqn.2019-05.io.vmcheck:b 1\nbad line\n";
        let ns = parse_namespaces(listing);
        assert_eq!(ns.len(), 3);
        assert_eq!(ns[1], ("/dev/nvme1n2".to_string(), "nqn.2019-05.io.vmcheck:a".to_string(), 2));
        assert!(parse_namespaces("").is_empty());
    }
}
