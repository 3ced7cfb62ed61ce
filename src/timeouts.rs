//! Every timeout of the driver and of the guest tools it runs, scaled from one place.
//!
//! The base values are chosen for TCG on two shared cores (the slow case this project runs on);
//! `VMCHECK_TIMEOUT_FACTOR` scales all of them (e.g. 0.5 on a fast KVM machine, 3 on a loaded one).

use std::time::Duration;

use crate::poll::Pace;

/// Between tries of a guest-side wait (`wait_until_succeeds`, a device appearing): each try is
/// a guest command, which costs the guest's vCPU under TCG.
pub const GUEST_POLL: Pace = Pace::every(Duration::from_millis(250));
/// A block device appearing or going (a disk hot-added or removed, the guest probing it): soon at
/// first, since a hot-added NVMe disk shows within a few hundred ms under TCG, then from 25 ms
/// doubling to [`GUEST_POLL`]'s 250 ms. Each try is one guest shell without child processes.
pub const BLOCK_DEVICE_POLL: Pace =
    Pace::backoff(Duration::from_millis(25), Duration::from_millis(250));
/// Between looks at a background command (fio runs for seconds).
pub const BACKGROUND_POLL: Pace = Pace::every(Duration::from_millis(200));
/// A foreground guest command's end: back to back for 30 ms (`true` ends within that under TCG,
/// its p90 too), then from 1 ms doubling to 16 ms, and past 0.32 s a twentieth of the time
/// waited, up to 100 ms: each try is a guest-exec-status, whose answer takes guest vCPU and host
/// CPU from the command (back to back for 100 ms made fio_nvme_basic's nvme-cli steps about
/// 0.07 s slower each), and at a steady 16 ms a long command that waits cost its machine and the
/// driver about a fifth of a host core in tries alone (a `sleep 10` in a guest: QEMU and vmcheck
/// 28.6 CPU ticks a second against 9.5 idle; now 13).
pub const EXEC_POLL: Pace = Pace::backoff(Duration::from_millis(1), Duration::from_millis(16))
    .after_tight(Duration::from_millis(30))
    .stretch_to(Duration::from_millis(100));
/// One connection attempt to the target daemon (its whole wait is the caller's).
pub const DAEMON_ATTEMPT: Duration = Duration::from_secs(5);
/// A killed guest command's record.
pub const REAP_POLL: Pace = Pace::every(Duration::from_millis(20));
/// The target daemon while it starts: from 50 ms doubling to 1 s.
pub const DAEMON_POLL: Pace = Pace::backoff(Duration::from_millis(50), Duration::from_secs(1));
/// A unix socket its server has not created yet (QMP, the agent's chardev).
pub const SOCKET_POLL: Pace = Pace::every(Duration::from_millis(5));

/// The factor every timeout is multiplied by: `VMCHECK_TIMEOUT_FACTOR`, default 1.
pub fn factor() -> f64 {
    std::env::var("VMCHECK_TIMEOUT_FACTOR")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f > 0.0)
        .unwrap_or(1.0)
}

fn secs(base: f64) -> Duration {
    Duration::from_secs_f64(base * factor())
}

/// From QEMU start until the guest agent answers.
pub fn boot() -> Duration {
    secs(180.0)
}
/// A guest command run by `succeed`/`execute` when the caller gives none.
pub fn command() -> Duration {
    secs(600.0)
}
/// One QMP or guest-agent request (not a guest command's run time).
pub fn request() -> Duration {
    secs(30.0)
}
/// A hot-plug's effect: the guest acknowledging an eject (DEVICE_DELETED) and its block device
/// coming or going.
pub fn hotplug() -> Duration {
    secs(60.0)
}
/// A whole scenario (or chain), unless `--global-timeout` or the Nix configuration says.
pub fn global() -> Duration {
    secs(3600.0)
}
/// For the console and stderr of an exited QEMU to drain.
pub fn drain() -> Duration {
    Duration::from_secs(2)
}
/// For a killed guest command's last output.
pub fn reap() -> Duration {
    secs(1.0)
}
/// From `shutdown` until QEMU has exited.
pub fn shutdown() -> Duration {
    secs(60.0)
}
/// From the start of a restore from a snapshot until the agent answers; past it the snapshot is
/// deleted and the machine boots afresh (a restore answers within about a second under TCG).
pub fn restore() -> Duration {
    secs(20.0)
}
/// Until a QEMU that was asked to quit has exited, before it is killed.
pub fn quit() -> Duration {
    secs(10.0)
}
/// Each step of the KVM probe: where KVM works, both take well under a second; under TCG the
/// kernel step would take about 6 s, so a hanging KVM is told apart within a few seconds.
pub fn kvm_probe() -> Duration {
    Duration::from_secs(4)
}

/// NVMe-oF timeouts for `nvme connect` under TCG. The kernel's 5 s keep-alive was seen to expire
/// while an initiator was still connecting; these leave room for slow guest time.
pub struct NvmeTimeouts {
    /// `nvme connect --keep-alive-tmo`, in seconds.
    pub keep_alive_tmo: u32,
    /// `nvme connect --ctrl-loss-tmo`, in seconds.
    pub ctrl_loss_tmo: u32,
    /// `nvme connect --reconnect-delay`, in seconds.
    pub reconnect_delay: u32,
}

/// The NVMe-oF timeouts for this run: 30 s, 120 s and 2 s, scaled by [`factor`] and rounded up.
pub fn nvme() -> NvmeTimeouts {
    let f = factor();
    let s = |base: f64| (base * f).ceil().max(1.0) as u32;
    NvmeTimeouts { keep_alive_tmo: s(30.0), ctrl_loss_tmo: s(120.0), reconnect_delay: s(2.0) }
}
