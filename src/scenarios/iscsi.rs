//! iSCSI steps scenarios share, the twin of `nvmeof.rs`: share a bdev as an iSCSI target of
//! the target daemon (LIO), add a LUN to it, discover, log in, find a LUN's SCSI disk on the
//! initiator (open-iscsi), and the initiator's side of a removal. Disks are found by (IQN, LUN)
//! from `iscsiadm -m session -P 3`, never by a guessed `sdX` name.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::nvmeof;
use crate::log;
use crate::machine::Machine;
use crate::poll::{self, Polled};
use crate::target::client::TargetClient;
use crate::target::proto;
use crate::timeouts;
use crate::tools::iscsi::{DiscoveredTarget, Iscsiadm, ScsiDisk, Session, EXIT_NO_OBJECTS};

/// An iSCSI target an initiator can reach: where and under which IQN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The target's IQN.
    pub iqn: String,
    /// The target's address on the test network.
    pub addr: Ipv4Addr,
    /// The iSCSI port.
    pub port: u16,
    /// `iscsi://addr:port/iqn/0`.
    pub uri: String,
}

/// Shares `bdev` as LUN 0 of a new iSCSI target (the daemon's default IQN and port 3260).
pub async fn share_bdev(target: &Machine, client: &mut TargetClient, bdev: &str) -> Result<Target> {
    let req = proto::ShareBdevRequest {
        name: bdev.into(),
        protocol: proto::ShareProtocol::Iscsi as i32,
        ..Default::default()
    };
    let reply = client
        .share_bdev(req)
        .await
        .with_context(|| format!("ShareBdev {bdev} over iSCSI"))?
        .into_inner();
    log::line(&format!("shared {bdev} as {}", reply.uri));
    let port = crate::target::lio::DEFAULT_ISCSI_PORT;
    Ok(Target { iqn: reply.iqn, addr: target.address(), port, uri: reply.uri })
}

/// Adds `bdev` to `t` as its next LUN (AddNamespace with the IQN); returns the LUN.
pub async fn add_lun(client: &mut TargetClient, t: &Target, bdev: &str) -> Result<u32> {
    let req =
        proto::AddNamespaceRequest { iqn: t.iqn.clone(), bdev: bdev.into(), ..Default::default() };
    let lun = client
        .add_namespace(req)
        .await
        .with_context(|| format!("AddNamespace {bdev} to {}", t.iqn))?
        .into_inner()
        .nsid;
    log::line(&format!("{bdev} is LUN {lun} of {}", t.iqn));
    Ok(lun)
}

/// SendTargets discovery at `addr:port`: the targets it lists, none when it finds none.
pub async fn discover(vm: &Machine, addr: Ipv4Addr, port: u16) -> Result<Vec<DiscoveredTarget>> {
    let out = vm
        .execute_with_timeout(&Iscsiadm::discover(&addr.to_string(), port), timeouts::request())
        .await?;
    // iscsiadm exits 21 (no objects) after a discovery that found no target. A refused
    // connection is no target either: LIO's portals go with the daemon's last target.
    if out.status == EXIT_NO_OBJECTS || (out.status != 0 && out.stderr.contains("No portals found"))
    {
        return Ok(Vec::new());
    }
    if out.status != 0 && out.stderr.contains("Connection refused") {
        log::line(&format!(
            "{}: no portal listens at {addr}:{port}: no target is served there",
            vm.name()
        ));
        return Ok(Vec::new());
    }
    if out.status != 0 {
        return Err(vm.error(
            format!("iscsiadm discovery at {addr}:{port} exited {}", out.status),
            out.stderr,
        ));
    }
    Ok(DiscoveredTarget::parse_all(&out.stdout)?)
}

/// Discovers `t` (discovery must list it) and logs in to it.
pub async fn login(vm: &Machine, t: &Target) -> Result<()> {
    let listed = discover(vm, t.addr, t.port).await?;
    if DiscoveredTarget::find(&listed, &t.iqn).is_none() {
        bail!("discovery at {}:{} does not list {}: {listed:?}", t.addr, t.port, t.iqn);
    }
    vm.succeed(&Iscsiadm::login(&t.iqn, &t.addr.to_string(), t.port)).await.map(drop)
}

/// The initiator's iSCSI disks now: (target IQN, disk).
pub async fn disks(vm: &Machine) -> Result<Vec<(String, ScsiDisk)>> {
    let listing =
        vm.succeed_with_timeout(&Iscsiadm::sessions_or_none(), timeouts::request()).await?;
    Ok(Session::parse_all(&listing)?
        .into_iter()
        .flat_map(|s| s.disks.into_iter().map(move |d| (s.iqn.clone(), d)))
        .collect())
}

/// Waits until LUN `lun` of `iqn` has a SCSI disk on `vm` (the login's scan is asynchronous);
/// returns its block device.
pub async fn wait_for_disk(vm: &Machine, iqn: &str, lun: u32, timeout: Duration) -> Result<String> {
    let seen = std::sync::Mutex::new(Vec::new());
    let polled = poll::until(timeout, timeouts::GUEST_POLL, |_| async {
        let found = disks(vm).await?;
        let dev =
            found.iter().find(|(t, d)| t == iqn && d.lun == u64::from(lun)).map(|(_, d)| d.path());
        *seen.lock().unwrap() = found;
        Ok(dev)
    })
    .await?;
    match polled {
        Polled::Done(dev) => {
            log::line(&format!("{}: LUN {lun} of {iqn} is {dev}", vm.name()));
            Ok(dev)
        }
        Polled::TimedOut(_) => Err(vm.error(
            format!("LUN {lun} of {iqn} got no disk within {timeout:?}"),
            format!("the initiator's iSCSI disks (iqn, disk): {:?}", seen.into_inner().unwrap()),
        )),
    }
}

/// Waits for the disks of `luns` (ascending) of `iqn` on `vm` and makes their names follow
/// LUN order (LUN 0 `sda`, LUN 1 `sdb`); returns their devices in the order of `luns`.
///
/// A login's scan adds the LUNs in order, but sd probes each disk asynchronously and names it
/// when its probe runs, so LUN 1 is sometimes `sda`. A test that pulls one LUN and reboots must
/// know which name the survivor gets back (the lowest free one). Names out of order are put
/// right by deleting those disks and scanning their LUNs back one at a time
/// (`/sys/class/scsi_host/hostN/scan`), each disk named before the next scan.
pub async fn name_in_lun_order(
    vm: &Machine,
    iqn: &str,
    luns: &[u32],
    timeout: Duration,
) -> Result<Vec<String>> {
    let mut devices = Vec::new();
    for lun in luns {
        devices.push(wait_for_disk(vm, iqn, *lun, timeout).await?);
    }
    if in_name_order(&devices) {
        return Ok(devices);
    }
    log::line(&format!(
        "{}: LUNs {luns:?} of {iqn} were named {devices:?}; deleting them and scanning them back \
         one at a time",
        vm.name()
    ));
    let listing =
        vm.succeed_with_timeout(&Iscsiadm::sessions_or_none(), timeouts::request()).await?;
    let sessions = Session::parse_all(&listing)?;
    let session = Session::find(&sessions, iqn)
        .with_context(|| format!("{} has no session with {iqn}: {sessions:?}", vm.name()))?;
    let host = session
        .host
        .with_context(|| format!("the session with {iqn} on {} has no SCSI host", vm.name()))?;
    for disk in session.disks.iter().filter(|d| luns.iter().any(|l| u64::from(*l) == d.lun)) {
        vm.succeed_with_timeout(&disk.delete_command(), timeouts::hotplug()).await?;
    }
    devices.clear();
    for lun in luns {
        vm.succeed_with_timeout(
            &format!("echo '- - {lun}' > /sys/class/scsi_host/host{host}/scan"),
            timeouts::hotplug(),
        )
        .await?;
        devices.push(wait_for_disk(vm, iqn, *lun, timeout).await?);
    }
    if !in_name_order(&devices) {
        return Err(vm.error(
            format!(
                "LUNs {luns:?} of {iqn} are still named out of order after a scan one at a time"
            ),
            format!("their disks: {devices:?}"),
        ));
    }
    Ok(devices)
}

/// Whether sd names (`/dev/sdb`, `/dev/sdaa`) are in the order sd hands them out.
fn in_name_order(devices: &[String]) -> bool {
    devices.windows(2).all(|w| (w[0].len(), &w[0]) < (w[1].len(), &w[1]))
}

/// The disk of LUN `lun` of `iqn` is gone from `vm`: no session shows it, and lsblk does not
/// list `device` (the name it had).
pub async fn expect_no_disk(vm: &Machine, iqn: &str, lun: u32, device: &str) -> Result<()> {
    let found = disks(vm).await?;
    if let Some((_, d)) = found.iter().find(|(t, d)| t == iqn && d.lun == u64::from(lun)) {
        return Err(vm.error(
            format!("LUN {lun} of {iqn} still has disk {} ({})", d.name, d.state),
            format!("iSCSI disks: {found:?}"),
        ));
    }
    if let Some((t, d)) = found.iter().find(|(_, d)| d.path() == device) {
        return Err(vm.error(
            format!("{device} is now LUN {} of {t}", d.lun),
            "the removed disk's name was given to another disk",
        ));
    }
    nvmeof::expect_gone_from_lsblk(vm, &[device]).await
}

/// The initiator's side of a removal, as os-brick's `disconnect_volume` does it: Linux keeps
/// the SCSI disk of a LUN the target withdrew (failing I/O, or transport-offline when the whole
/// target went) for as long as the session lives, so
/// - when discovery still lists the target (it serves other LUNs), the vanished LUN's SCSI
///   device is deleted (`/sys/block/sdX/device/delete`) and the session stays for the others;
/// - when discovery no longer lists it (its last LUN went with it), the initiator logs out
///   and forgets the node record, and the session's disks go with the session.
///
/// Then waits until the disk has left. Returns what it did, for the log.
pub async fn remove_vanished(
    vm: &Machine,
    t: &Target,
    lun: u32,
    device: &str,
) -> Result<&'static str> {
    let listed = discover(vm, t.addr, t.port).await?;
    let found = disks(vm).await?;
    let disk = found
        .iter()
        .find(|(iqn, d)| *iqn == t.iqn && d.lun == u64::from(lun))
        .map(|(_, d)| d.clone())
        .with_context(|| {
            format!("LUN {lun} of {} has no disk on {} to remove: {found:?}", t.iqn, vm.name())
        })?;
    if disk.path() != device {
        bail!("LUN {lun} of {} is {}, not {device}", t.iqn, disk.path());
    }
    let done = if DiscoveredTarget::find(&listed, &t.iqn).is_some() {
        vm.succeed_with_timeout(&disk.delete_command(), timeouts::hotplug()).await?;
        "deleted the SCSI device; the session stays"
    } else {
        let portal = t.addr.to_string();
        vm.succeed_with_timeout(&Iscsiadm::logout(&t.iqn, &portal, t.port), timeouts::hotplug())
            .await?;
        vm.succeed_with_timeout(
            &Iscsiadm::delete_node(&t.iqn, &portal, t.port),
            timeouts::request(),
        )
        .await?;
        "logged out of the vanished target"
    };
    let gone = poll::until(timeouts::hotplug(), timeouts::GUEST_POLL, |_| async {
        let listed = nvmeof::lsblk(vm).await?;
        Ok(listed.find(device).is_none().then_some(()))
    })
    .await?;
    if let Polled::TimedOut(_) = gone {
        return Err(vm.error(
            format!("{device} is still in lsblk after the initiator {done}"),
            format!("{:?}", disks(vm).await),
        ));
    }
    log::line(&format!("{}: LUN {lun} of {} ({device}): {done}", vm.name(), t.iqn));
    Ok(done)
}

/// After a reboot: waits for iscsid, discovers at each target's portal and logs in to each of
/// `targets` that discovery lists; a target discovery no longer lists (it went with its last
/// LUN) is left out, as an initiator's automatic login would.
pub async fn relogin(vm: &Machine, targets: &[&Target]) -> Result<()> {
    vm.wait_until_succeeds("pidof iscsid", timeouts::request()).await?;
    for t in targets {
        let listed = discover(vm, t.addr, t.port).await?;
        if DiscoveredTarget::find(&listed, &t.iqn).is_none() {
            log::line(&format!(
                "{}: discovery no longer lists {}; not logging in",
                vm.name(),
                t.iqn
            ));
            continue;
        }
        vm.succeed(&Iscsiadm::login(&t.iqn, &t.addr.to_string(), t.port)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::in_name_order;

    #[test]
    fn sd_names_are_ordered_by_length_then_letters() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(in_name_order(&names(&["/dev/sda", "/dev/sdb"])));
        assert!(in_name_order(&names(&["/dev/sdz", "/dev/sdaa"])));
        assert!(!in_name_order(&names(&["/dev/sdb", "/dev/sda"])));
        assert!(!in_name_order(&names(&["/dev/sdaa", "/dev/sdz"])));
        assert!(in_name_order(&names(&["/dev/sda"])));
    }
}
