//! Notices backing devices that vanish (a hot-removed NVMe disk, a PCI device removed in the
//! guest, a partition whose disk went) and has the service withdraw them.
//!
//! Polling, not a uevent netlink socket: the check is the same `Backing::present` that
//! ListBdevs reports (the device's sysfs entry), so the two never disagree; nothing is missed
//! when the netlink buffer overruns or the daemon restarts between events; and the unit tests
//! drive it with a fake sysfs. SPDK's own NVMe hotplug is a poller too (`bdev_nvme_set_hotplug`,
//! 100 ms by default). A poll stats one sysfs path per bdev, negligible even under TCG, and
//! the [`DEFAULT_PERIOD`] is short next to the seconds an initiator takes to act on the AEN.

use std::sync::Arc;
use std::time::Duration;

use super::service::TargetService;

/// How often the daemon looks for vanished devices.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(200);

/// Polls every `period` until the task is dropped or aborted.
pub fn spawn(service: Arc<TargetService>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Each withdrawal logs itself (to the console in the target VM).
            service.reap_vanished().await;
        }
    })
}
