//! The virtio balloon on the machine API: the balloon's size (QMP `balloon`, `query-balloon`,
//! `BALLOON_CHANGE`), the guest's memory as the agent reads it, the balloon's statistics (QOM
//! `guest-stats-polling-interval` and `guest-stats`), and hot-plug and hot-unplug of the device.
//! Each call waits for its effect with a timeout; QEMU's refusals stay typed
//! ([`crate::qmp::QmpError`] with its error class).
//!
//! Sizes are what QMP speaks: the balloon's "actual" is the memory the guest is left with, in
//! bytes; [`Machine::balloon`] takes MiB.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::Machine;
use crate::config::BalloonSpec;
use crate::log;
use crate::poll::{self, Pace, Polled};
use crate::qemu::{Balloon, BALLOON_ID};
use crate::qga::MemoryStats;
use crate::qmp::QmpError;
use crate::timeouts;

/// The balloon's QOM path.
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";

/// Between looks at the balloon's size (a QMP request, nothing in the guest).
pub const BALLOON_POLL: Pace = Pace::every(Duration::from_millis(250));

/// How long a balloon change may take: the guest hands over 256 pages a request, and under TCG
/// some hundreds of MiB take seconds. 60 s times [`timeouts::factor`].
pub fn balloon_timeout() -> Duration {
    Duration::from_secs_f64(60.0 * timeouts::factor())
}

/// The balloon driver's statistics (`guest-stats`), in bytes; `None` where the guest reports
/// none (-1).
#[derive(Debug, Clone, PartialEq)]
pub struct BalloonStats {
    /// Seconds since the epoch of the guest's last report; 0 before the first.
    pub last_update: i64,
    /// `stat-total-memory`.
    pub total_memory: Option<u64>,
    /// `stat-free-memory`.
    pub free_memory: Option<u64>,
    /// `stat-available-memory`.
    pub available_memory: Option<u64>,
    /// Every statistic as QEMU returned it.
    pub raw: Value,
}

impl BalloonStats {
    /// Reads the value of the balloon's `guest-stats` property (a `qom-get`); never fails,
    /// missing figures are `None`.
    pub fn parse(v: &Value) -> BalloonStats {
        let stat = |name: &str| v["stats"][name].as_i64().filter(|n| *n >= 0).map(|n| n as u64);
        BalloonStats {
            last_update: v["last-update"].as_i64().unwrap_or(0),
            total_memory: stat("stat-total-memory"),
            free_memory: stat("stat-free-memory"),
            available_memory: stat("stat-available-memory"),
            raw: v.clone(),
        }
    }
}

/// tp-qemu's tolerance for a balloon statistic against /proc/meminfo: within 10 % or 150 MiB.
pub fn stat_matches(stat_bytes: u64, meminfo_bytes: u64) -> bool {
    let diff = stat_bytes.abs_diff(meminfo_bytes);
    diff <= 150 << 20 || (diff as f64) <= 0.10 * meminfo_bytes as f64
}

impl Machine {
    /// The balloon's size as QEMU reports it (`query-balloon` actual, bytes). Without a balloon
    /// this is QEMU's `DeviceNotActive` error, typed.
    pub async fn balloon_actual(&self) -> Result<u64> {
        self.host_only("the virtio balloon (QMP)")?;
        let info = self.qmp().await?.execute(qapi::qmp::query_balloon {}).await?;
        Ok(info.actual as u64)
    }

    /// Asks for a balloon target of `mib` MiB (QMP `balloon`) without waiting; a refusal is the
    /// typed [`QmpError`].
    pub async fn balloon_request(&self, mib: u64) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        log::line(&format!("{}: balloon target {mib} MiB", self.name()));
        log::event(
            crate::timeline::EventKind::Balloon,
            self.name(),
            &format!("balloon target {mib} MiB"),
        );
        self.balloon_request_bytes((mib << 20) as i64).await
    }

    /// QMP `balloon` with a raw value in bytes (zero and negative values included).
    pub async fn balloon_request_bytes(&self, bytes: i64) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        self.qmp().await?.execute(qapi::qmp::balloon { value: bytes }).await.map(drop)
    }

    /// Sets the balloon to `mib` MiB and waits until `query-balloon` reports exactly that and
    /// QEMU has announced it (`BALLOON_CHANGE`); returns the guest's memory afterwards.
    pub async fn balloon(&self, mib: u64) -> Result<MemoryStats> {
        self.host_only("the virtio balloon (QMP)")?;
        log::nested(&format!("{}: balloon to {mib} MiB", self.name()), async {
            let qmp = self.qmp().await?;
            let before = self.balloon_actual().await?;
            let mark = qmp.event_count();
            self.balloon_request(mib).await.map_err(|e| {
                self.error(format!("QMP balloon {mib} MiB was refused"), format!("{e:#}"))
            })?;
            self.wait_for_balloon(mib << 20, before != mib << 20, mark, balloon_timeout()).await?;
            self.memory_stats().await
        })
        .await
    }

    /// Waits until `query-balloon` says `bytes`; with `announced`, also for the BALLOON_CHANGE
    /// event (after event `mark`) carrying it (QEMU sends none when nothing changed).
    pub async fn wait_for_balloon(
        &self,
        bytes: u64,
        announced: bool,
        mark: usize,
        timeout: Duration,
    ) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        let started = Instant::now();
        let last = std::sync::atomic::AtomicU64::new(0);
        let polled = poll::until(timeout, BALLOON_POLL, |_| async {
            let now = self.balloon_actual().await?;
            last.store(now, std::sync::atomic::Ordering::Relaxed);
            Ok((now == bytes).then_some(()))
        })
        .await?;
        if let Polled::TimedOut(waited) = polled {
            let last = last.load(std::sync::atomic::Ordering::Relaxed);
            return Err(self.timeout_error(
                format!("waiting for the balloon to reach {} MiB", bytes >> 20),
                format!("query-balloon still says {} bytes ({} MiB)", last, last >> 20),
                waited,
            ));
        }
        if announced {
            let qmp = self.qmp().await?;
            // QEMU rate-limits BALLOON_CHANGE to one a second; the last value comes at the end.
            let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(5));
            qmp.wait_for_event(mark, left, |e| {
                e.name == "BALLOON_CHANGE" && e.data["actual"].as_u64() == Some(bytes)
            })
            .await
            .map_err(|e| {
                let seen: Vec<Value> = qmp
                    .events_since(mark)
                    .into_iter()
                    .filter(|e| e.name == "BALLOON_CHANGE")
                    .map(|e| e.data)
                    .collect();
                self.error(
                    format!("query-balloon says {bytes} bytes, but no BALLOON_CHANGE announced it"),
                    format!("{e:#}; BALLOON_CHANGE events since the request: {seen:?}"),
                )
            })?;
        }
        log::line(&format!(
            "{}: balloon at {} MiB after {:.2} s",
            self.name(),
            bytes >> 20,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Asks the guest to report balloon statistics every `secs` seconds (0 stops it).
    pub async fn set_balloon_stats_interval(&self, secs: u32) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        self.qmp()
            .await?
            .execute(qapi::qmp::qom_set {
                path: BALLOON_QOM_PATH.into(),
                property: "guest-stats-polling-interval".into(),
                value: json!(secs),
            })
            .await
            .map(drop)
    }

    /// The balloon statistics QEMU holds now.
    pub async fn balloon_stats(&self) -> Result<BalloonStats> {
        self.host_only("the virtio balloon (QMP)")?;
        let v = self
            .qmp()
            .await?
            .execute(qapi::qmp::qom_get {
                path: BALLOON_QOM_PATH.into(),
                property: "guest-stats".into(),
            })
            .await?;
        Ok(BalloonStats::parse(&v))
    }

    /// Waits for a statistics report newer than `after` (a `last_update`).
    pub async fn wait_for_balloon_stats(
        &self,
        after: i64,
        timeout: Duration,
    ) -> Result<BalloonStats> {
        self.host_only("the virtio balloon (QMP)")?;
        let last = std::sync::Mutex::new(Value::Null);
        let polled = poll::until(timeout, BALLOON_POLL, |_| async {
            let s = self.balloon_stats().await?;
            *last.lock().unwrap() = s.raw.clone();
            Ok((s.last_update > after && s.total_memory.is_some()).then_some(s))
        })
        .await?;
        match polled {
            Polled::Done(s) => Ok(s),
            Polled::TimedOut(waited) => Err(self.timeout_error(
                "waiting for a balloon statistics report".into(),
                format!("guest-stats: {}", last.lock().unwrap()),
                waited,
            )),
        }
    }

    /// Whether the guest's virtio_balloon driver has a device bound.
    pub async fn guest_balloon_bound(&self) -> Result<bool> {
        let out = self
            .execute("ls /sys/bus/virtio/drivers/virtio_balloon/ 2>/dev/null | grep -q '^virtio'")
            .await?;
        Ok(out.status == 0)
    }

    async fn wait_for_guest_balloon(&self, bound: bool, timeout: Duration) -> Result<()> {
        let polled = poll::until(timeout, timeouts::GUEST_POLL, |_| async {
            Ok((self.guest_balloon_bound().await? == bound).then_some(()))
        })
        .await?;
        if let Polled::TimedOut(waited) = polled {
            let what = if bound { "bind" } else { "let go of" };
            let listing =
                self.execute("ls -l /sys/bus/virtio/drivers/virtio_balloon/ 2>&1").await?.stdout;
            return Err(self.timeout_error(
                format!("waiting for virtio_balloon to {what} the device"),
                listing,
                waited,
            ));
        }
        Ok(())
    }

    /// Hot-plugs a balloon device with id `id` (QMP `device_add`), without waiting for the
    /// guest: QEMU refuses a second balloon, and the refusal is the typed [`QmpError`].
    pub async fn device_add_balloon(&self, id: &str, balloon: Balloon) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        // device_add checks JSON types: the slot is a string, deflate-on-oom a boolean.
        let arguments = [
            ("addr".to_string(), json!(crate::qemu::BALLOON_PCI_SLOT)),
            ("deflate-on-oom".to_string(), json!(balloon.deflate_on_oom)),
        ]
        .into_iter()
        .collect();
        self.qmp()
            .await?
            .execute(qapi::qmp::device_add {
                bus: None,
                id: Some(id.to_string()),
                driver: "virtio-balloon-pci".into(),
                arguments,
            })
            .await
            .map(drop)
    }

    /// Hot-plugs the balloon and waits until the guest's driver has bound it and QEMU answers
    /// `query-balloon`.
    pub async fn hot_add_balloon(&self, balloon: Balloon) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        log::event(crate::timeline::EventKind::Balloon, self.name(), "balloon plugged");
        log::nested(&format!("{}: hot-plugging the balloon", self.name()), async {
            self.device_add_balloon(BALLOON_ID, balloon).await.map_err(|e| {
                self.error("device_add of the balloon was refused", format!("{e:#}"))
            })?;
            self.set_balloon_spec(if balloon.deflate_on_oom {
                BalloonSpec::DeflateOnOom
            } else {
                BalloonSpec::Plain
            });
            self.wait_for_guest_balloon(true, timeouts::hotplug()).await?;
            self.balloon_actual().await.map(drop)
        })
        .await
    }

    /// Hot-unplugs the balloon (QMP `device_del`): waits for DEVICE_DELETED, for the guest's
    /// driver to let it go, and for `query-balloon` to say `DeviceNotActive`.
    pub async fn hot_remove_balloon(&self) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        log::event(crate::timeline::EventKind::Balloon, self.name(), "balloon unplugged");
        log::nested(&format!("{}: hot-unplugging the balloon", self.name()), async {
            let qmp = self.qmp().await?;
            let mark = qmp.event_count();
            qmp.execute(qapi::qmp::device_del { id: BALLOON_ID.into() }).await.map_err(|e| {
                self.error("device_del of the balloon was refused", format!("{e:#}"))
            })?;
            let started = Instant::now();
            qmp.wait_for_event(mark, timeouts::hotplug(), |e| {
                e.name == "DEVICE_DELETED" && e.data["device"] == BALLOON_ID
            })
            .await
            .map_err(|e| {
                self.timeout_error(
                    "waiting for DEVICE_DELETED of the balloon".into(),
                    format!("{e:#}"),
                    started.elapsed(),
                )
            })?;
            self.set_balloon_spec(BalloonSpec::None);
            self.wait_for_guest_balloon(false, timeouts::hotplug()).await?;
            self.expect_no_balloon().await
        })
        .await
    }

    /// `query-balloon` must be refused with `DeviceNotActive`.
    pub async fn expect_no_balloon(&self) -> Result<()> {
        self.host_only("the virtio balloon (QMP)")?;
        match self.balloon_actual().await {
            Ok(actual) => Err(self.error(
                "expected no balloon device",
                format!("query-balloon answers {actual} bytes"),
            )),
            Err(e) => match e.downcast_ref::<QmpError>() {
                Some(q) if q.class == qapi::ErrorClass::DeviceNotActive => Ok(()),
                _ => Err(self.error(
                    "expected query-balloon to fail with DeviceNotActive",
                    format!("{e:#}"),
                )),
            },
        }
    }
}

impl Machine {
    /// The guest's memory figures.
    pub async fn memory_stats(&self) -> Result<MemoryStats> {
        match self.backend() {
            super::Backend::Local => MemoryStats::parse(&std::fs::read_to_string("/proc/meminfo")?),
            super::Backend::Peer => Err(self.peer_error("memory_stats")),
            super::Backend::Qemu => self.qga().await?.memory_stats().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_read_and_compared_with_tp_qemus_tolerance() {
        let v = json!({"stats": {"stat-total-memory": 700u64 << 20, "stat-free-memory": 500u64 << 20, "stat-available-memory": -1},
                       "last-update": 1700000000});
        let s = BalloonStats::parse(&v);
        assert_eq!(
            (s.last_update, s.total_memory, s.free_memory, s.available_memory),
            (1700000000, Some(700 << 20), Some(500 << 20), None)
        );
        assert_eq!(BalloonStats::parse(&json!({})).last_update, 0);
        assert!(stat_matches(700 << 20, 560 << 20)); // 140 MiB apart
        assert!(stat_matches(4000 << 20, 3700 << 20)); // 7.5 %
        assert!(!stat_matches(700 << 20, 540 << 20)); // 160 MiB and 30 %
    }
}
