//! Media errors in a machine's disks, injected from the host at run time, while the guest uses
//! the disk, and cleared again, without restarting anything.
//!
//! How: every disk is two named block nodes in QEMU, a `raw` node `drive-<id>` (what the device
//! is attached to) over a `file` node `file-<id>`, the same whether the disk came at a cold boot
//! (`-blockdev`, [`crate::qemu::Disk::args`]) or was hot-added (`blockdev-add`, also after a
//! restore from the snapshot store). An injection adds a `blkdebug` node `fault-<id>` over the
//! file node with the fault's rules (`blockdev-add`) and points the raw node's `file` at it
//! (`blockdev-reopen`); clearing points it back and deletes the blkdebug node. QEMU cannot change
//! a blkdebug node's rules once it exists, hence a new node per fault. Both commands are stable
//! QMP in QEMU 7.2 and 10 (`blockdev-reopen` since 6.1; blkdebug's `iotype` since 4.1); this was
//! tried against QEMU 10 only (7.2 cannot be installed beside it here).
//!
//! The guest sees what the device makes of a failed request: QEMU's `nvme` device completes it
//! with an NVMe error status (Unrecovered Read Error, Write Fault; no DNR bit), a virtio-blk
//! device follows its `rerror`/`werror` policy ([`crate::config::DiskSpec::with_werror`]):
//! `report` returns an I/O error, `stop` pauses the VM (QMP `BLOCK_IO_ERROR` then `STOP`, run
//! state `io-error`) and retries the request on `cont`.
//!
//! A fault lives in one QEMU process: a restart, a restore or a migration starts without it.

use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Result;
use qapi::qmp::{
    BlkdebugEvent, BlkdebugIOType, BlkdebugInjectErrorOptions, BlkdebugSetStateOptions,
};
use serde_json::json;

use super::Machine;
use crate::log;
use crate::qmp::Qmp;

/// Which operations of the disk fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOps {
    /// Reads fail.
    Reads,
    /// Writes fail.
    Writes,
    /// Reads and writes fail.
    Both,
}

/// The most sectors a fault's range may span: blkdebug matches a rule by one sector, so a range
/// is a rule per 512-byte sector (any request that overlaps the range covers one of them).
pub const MAX_FAULT_SECTORS: u64 = 4096;

/// The most operations a fault may let pass first: blkdebug counts them with a state per
/// operation.
pub const MAX_FAULT_AFTER: u32 = 10_000;

/// Bytes per sector, as blkdebug and QEMU's block layer count them.
pub const SECTOR_BYTES: u64 = 512;

/// EIO, blkdebug's default errno.
pub const EIO: i32 = 5;

/// A media fault: which operations fail, where, from when, how often, with which error.
///
/// ```
/// use vmcheck::machine::{FaultOps, MediaFault};
/// // Reads of the second MiB fail with EIO until cleared.
/// let f = MediaFault::reads().sectors(2048..4096);
/// assert_eq!(f.ops, FaultOps::Reads);
/// // The first 32 writes anywhere pass, then every write fails.
/// let g = MediaFault::writes().after(32);
/// assert_eq!(g.after, Some(32));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFault {
    /// The operations that fail.
    pub ops: FaultOps,
    /// The 512-byte sectors an operation must touch to fail, at most [`MAX_FAULT_SECTORS`];
    /// `None`: anywhere on the disk.
    pub sectors: Option<Range<u64>>,
    /// The first N operations of the kind `ops` names (anywhere on the disk) pass; the fault
    /// starts with the next. `None`: from the first. Counted from the injection.
    pub after: Option<u32>,
    /// The first matching operation fails and the fault is then spent (it stays injected, doing
    /// nothing, until cleared); `false`: every matching operation fails until cleared. Not with
    /// a range (blkdebug would spend a rule per sector, not the fault).
    pub once: bool,
    /// The errno the block layer gets (EIO by default; ENOSPC meets a `werror=enospc` policy).
    pub errno: i32,
}

impl MediaFault {
    fn new(ops: FaultOps) -> Self {
        MediaFault { ops, sectors: None, after: None, once: false, errno: EIO }
    }
    /// Reads fail, anywhere, every time, with EIO.
    pub fn reads() -> Self {
        Self::new(FaultOps::Reads)
    }
    /// Writes fail, anywhere, every time, with EIO.
    pub fn writes() -> Self {
        Self::new(FaultOps::Writes)
    }
    /// Reads and writes fail, anywhere, every time, with EIO.
    pub fn both() -> Self {
        Self::new(FaultOps::Both)
    }
    /// Only operations that touch these 512-byte sectors fail.
    pub fn sectors(mut self, range: Range<u64>) -> Self {
        self.sectors = Some(range);
        self
    }
    /// The first `n` operations pass.
    pub fn after(mut self, n: u32) -> Self {
        self.after = Some(n);
        self
    }
    /// Only the first matching operation fails.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }
    /// Fails with `errno` instead of EIO.
    pub fn errno(mut self, errno: i32) -> Self {
        self.errno = errno;
        self
    }

    /// Refuses a fault blkdebug cannot do or that means nothing on a disk of `disk_sectors`
    /// sectors: an empty range or one past the end, a range above [`MAX_FAULT_SECTORS`], `once`
    /// with a range, `after` above [`MAX_FAULT_AFTER`], an errno that is not one.
    pub fn check(&self, disk_sectors: u64) -> Result<(), String> {
        if let Some(r) = &self.sectors {
            if r.start >= r.end {
                return Err(format!("the sector range {r:?} is empty"));
            }
            if r.end > disk_sectors {
                return Err(format!(
                    "the sector range {r:?} goes past the disk's end ({disk_sectors} sectors)"
                ));
            }
            if r.end - r.start > MAX_FAULT_SECTORS {
                return Err(format!(
                    "the sector range {r:?} spans {} sectors; at most {MAX_FAULT_SECTORS} (blkdebug \
                     needs a rule per sector); leave the range out for the whole disk",
                    r.end - r.start
                ));
            }
            if self.once {
                return Err(
                    "`once` with a sector range: blkdebug would spend one rule per sector, \
                            not the fault; use one or the other"
                        .into(),
                );
            }
        }
        if self.after.is_some_and(|n| n > MAX_FAULT_AFTER) {
            return Err(format!("after {:?} operations: at most {MAX_FAULT_AFTER}", self.after));
        }
        if !(1..4096).contains(&self.errno) {
            return Err(format!("errno {} is not an errno (1..4095)", self.errno));
        }
        Ok(())
    }

    /// blkdebug's events and I/O types for the fault's operations. The I/O type keeps a rule off
    /// flushes (which a `blockdev-reopen` does, and which would fail a fault's clearing).
    fn kinds(&self) -> Vec<(BlkdebugEvent, BlkdebugIOType)> {
        let read = (BlkdebugEvent::read_aio, BlkdebugIOType::read);
        let write = (BlkdebugEvent::write_aio, BlkdebugIOType::write);
        match self.ops {
            FaultOps::Reads => vec![read],
            FaultOps::Writes => vec![write],
            FaultOps::Both => vec![read, write],
        }
    }

    /// The `blockdev-add` arguments of the blkdebug node `node` over `image`: an `inject-error`
    /// rule per kind (and per sector of a range), and for `after` N a chain of `set-state` rules
    /// (state 1 -> 2 -> ... -> N+1 on each counted operation) with the error rules in state N+1.
    pub fn blkdebug_options(&self, node: &str, image: &str) -> serde_json::Value {
        let state = self.after.map(|n| i64::from(n) + 1);
        let sectors: Vec<Option<i64>> = match &self.sectors {
            Some(r) => r.clone().map(|s| Some(s as i64)).collect(),
            None => vec![None],
        };
        let mut inject = Vec::new();
        let mut set_state = Vec::new();
        for (event, iotype) in self.kinds() {
            for sector in &sectors {
                inject.push(BlkdebugInjectErrorOptions {
                    event,
                    iotype: Some(iotype),
                    errno: Some(i64::from(self.errno)),
                    sector: *sector,
                    state,
                    once: Some(self.once),
                    immediately: None,
                });
            }
            if let Some(n) = self.after {
                set_state.extend((1..=i64::from(n)).map(|s| BlkdebugSetStateOptions {
                    event,
                    state: Some(s),
                    new_state: s + 1,
                }));
            }
        }
        let mut options = json!({
            "driver": "blkdebug",
            "node-name": node,
            "image": image,
            // Discards pass on to the image as they did without the fault.
            "discard": "unmap",
            "inject-error": inject,
        });
        if !set_state.is_empty() {
            options["set-state"] = json!(set_state);
        }
        options
    }
}

impl std::fmt::Display for MediaFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops = match self.ops {
            FaultOps::Reads => "read",
            FaultOps::Writes => "write",
            FaultOps::Both => "read and write",
        };
        write!(f, "{ops} errors (errno {})", self.errno)?;
        match &self.sectors {
            Some(r) => write!(f, " on sectors {}..{}", r.start, r.end)?,
            None => write!(f, " anywhere")?,
        }
        if let Some(n) = self.after {
            write!(f, " after {n} operations")?;
        }
        f.write_str(if self.once { ", once" } else { ", until cleared" })
    }
}

/// The blkdebug node of disk `id`'s fault: `fault-<id>`.
pub fn fault_node(id: &str) -> String {
    format!("fault-{id}")
}

/// A fault as injected: into which QEMU process (its monitor), and what.
pub(super) struct Injected {
    qmp: Weak<Qmp>,
    fault: MediaFault,
}

impl Machine {
    /// The fault injected into disk `id` of the QEMU process running now, if any (one of an
    /// earlier process, before a restart or migration, is gone with it).
    fn injected(&self, id: &str, qmp: &Arc<Qmp>) -> Option<MediaFault> {
        let mut faults = self.inner.media_faults.lock().unwrap();
        faults.retain(|_, f| f.qmp.upgrade().is_some_and(|q| Arc::ptr_eq(&q, qmp)));
        faults.get(id).map(|f| f.fault.clone())
    }

    /// Makes I/O to disk `id` fail as `fault` says, from now until [`Machine::clear_media_error`]
    /// (see the module doc for how, and what the guest sees). Refuses an unknown disk, a fault
    /// that [`MediaFault::check`] refuses, and a second fault on a disk that has one. Logged with
    /// the time.
    pub async fn inject_media_error(&self, id: &str, fault: &MediaFault) -> Result<()> {
        self.host_only("inject_media_error (QEMU's block layer over QMP)")?;
        let disk = self.disk(id)?;
        fault.check(disk.size_mib * (1 << 20) / SECTOR_BYTES).map_err(|why| {
            self.error(format!("media fault on disk {id} refused: {why}"), format!("{fault:?}"))
        })?;
        let qmp = self.qmp().await?;
        if let Some(active) = self.injected(id, &qmp) {
            return Err(self.error(
                format!("disk {id} already has a media fault ({active})"),
                "clear it first (clear_media_error)",
            ));
        }
        let qemu_disk = self.qemu_disk(&disk);
        let (node, file, raw) = (fault_node(id), qemu_disk.file_node(), qemu_disk.drive_id());
        qmp.execute_raw("blockdev-add", fault.blkdebug_options(&node, &file)).await.map_err(
            |e| {
                self.error(
                    format!("blockdev-add of the blkdebug node {node} was refused"),
                    format!("{e:#}"),
                )
            },
        )?;
        if let Err(e) = qmp.execute_raw("blockdev-reopen", reopen(&raw, &node)).await {
            let _ = qmp.execute_raw("blockdev-del", json!({ "node-name": node })).await;
            return Err(self.error(
                format!("blockdev-reopen of {raw} over {node} was refused"),
                format!("{e:#}"),
            ));
        }
        self.inner
            .media_faults
            .lock()
            .unwrap()
            .insert(id.to_string(), Injected { qmp: Arc::downgrade(&qmp), fault: fault.clone() });
        log::line(&format!("{}: disk {id}: media fault injected: {fault} ({node})", self.name()));
        log::event(
            crate::timeline::EventKind::MediaFault,
            self.name(),
            &format!("{id}: media fault {fault}"),
        );
        Ok(())
    }

    /// Removes disk `id`'s media fault: its I/O reaches the image again. Refuses a disk without
    /// one. Logged with the time.
    pub async fn clear_media_error(&self, id: &str) -> Result<()> {
        self.host_only("clear_media_error (QEMU's block layer over QMP)")?;
        let disk = self.disk(id)?;
        let qmp = self.qmp().await?;
        let Some(fault) = self.injected(id, &qmp) else {
            return Err(self.error(
                format!("disk {id} has no media fault to clear"),
                "inject_media_error puts one; a restart or migration drops it",
            ));
        };
        let qemu_disk = self.qemu_disk(&disk);
        let (node, file, raw) = (fault_node(id), qemu_disk.file_node(), qemu_disk.drive_id());
        qmp.execute_raw("blockdev-reopen", reopen(&raw, &file)).await.map_err(|e| {
            self.error(
                format!("blockdev-reopen of {raw} back onto {file} was refused"),
                format!("{e:#}"),
            )
        })?;
        self.inner.media_faults.lock().unwrap().remove(id);
        qmp.execute_raw("blockdev-del", json!({ "node-name": node })).await.map_err(|e| {
            self.error(
                format!("blockdev-del of the blkdebug node {node} was refused"),
                format!("{e:#}"),
            )
        })?;
        log::line(&format!("{}: disk {id}: media fault cleared ({fault})", self.name()));
        log::event(
            crate::timeline::EventKind::MediaFault,
            self.name(),
            &format!("{id}: media fault cleared"),
        );
        Ok(())
    }

    /// The media fault disk `id` has now, if any.
    pub async fn media_error(&self, id: &str) -> Result<Option<MediaFault>> {
        self.host_only("media_error (QEMU's block layer)")?;
        self.disk(id)?;
        let qmp = self.qmp().await?;
        Ok(self.injected(id, &qmp))
    }

    /// Waits, at most `timeout`, for QEMU's `BLOCK_IO_ERROR` on disk `id` among the QMP events
    /// from `mark` on (`Qmp::event_count` before the I/O that fails). When its action is `stop`,
    /// also waits for the `STOP` event and checks that `query-status` says `io-error`. Returns
    /// the event.
    pub async fn wait_for_block_io_error(
        &self,
        id: &str,
        mark: usize,
        timeout: Duration,
    ) -> Result<qapi::qmp::BLOCK_IO_ERROR> {
        self.host_only("wait_for_block_io_error (QMP BLOCK_IO_ERROR)")?;
        let disk = self.disk(id)?;
        let node = self.qemu_disk(&disk).drive_id();
        let qmp = self.qmp().await?;
        let started = Instant::now();
        let event = qmp
            .wait_for_event(mark, timeout, |e| {
                e.name == "BLOCK_IO_ERROR"
                    && serde_json::from_value::<qapi::qmp::BLOCK_IO_ERROR>(e.data.clone())
                        .is_ok_and(|d| d.node_name.as_deref() == Some(node.as_str()))
            })
            .await
            .map_err(|e| {
                let seen: Vec<String> = qmp
                    .events_since(mark)
                    .iter()
                    .map(|e| format!("{} {}", e.name, e.data))
                    .collect();
                self.timeout_error(
                    format!("waiting for BLOCK_IO_ERROR on disk {id} (node {node})"),
                    format!("{e:#}; events since: {seen:?}"),
                    started.elapsed(),
                )
            })?;
        let data: qapi::qmp::BLOCK_IO_ERROR = serde_json::from_value(event.data.clone())?;
        log::line(&format!(
            "{}: BLOCK_IO_ERROR on disk {id}: {:?} {:?} ({}) at {:.3}",
            self.name(),
            data.operation,
            data.action,
            data.reason,
            event.timestamp
        ));
        if data.action == qapi::qmp::BlockErrorAction::stop {
            let left = timeout.saturating_sub(started.elapsed());
            self.wait_event(&qmp, mark, "STOP", left).await?;
            let status = self.run_state().await?;
            if status.running || status.status != qapi::qmp::RunState::io_error {
                return Err(self.error(
                    format!(
                        "disk {id}'s error stopped the VM, but query-status does not say io-error"
                    ),
                    format!("query-status: {status:?}"),
                ));
            }
            log::line(&format!("{}: paused on the I/O error (io-error)", self.name()));
        }
        Ok(data)
    }
}

/// `blockdev-reopen` of the raw node `raw` with `file` as its file child (every other option as
/// the disk was made: `discard=unmap`; a reopen resets what it does not name).
fn reopen(raw: &str, file: &str) -> serde_json::Value {
    json!({ "options": [{ "driver": "raw", "node-name": raw, "discard": "unmap", "file": file }] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_checked_against_the_disk() {
        let sectors = 64 * 2048;
        assert!(MediaFault::reads().check(sectors).is_ok());
        assert!(MediaFault::reads().sectors(10..10).check(sectors).unwrap_err().contains("empty"));
        assert!(MediaFault::reads()
            .sectors(sectors - 1..sectors + 1)
            .check(sectors)
            .unwrap_err()
            .contains("past the disk's end"));
        assert!(MediaFault::reads()
            .sectors(0..MAX_FAULT_SECTORS + 1)
            .check(sectors)
            .unwrap_err()
            .contains("at most"));
        assert!(MediaFault::reads().sectors(0..8).once().check(sectors).is_err());
        assert!(MediaFault::writes().after(MAX_FAULT_AFTER + 1).check(sectors).is_err());
        assert!(MediaFault::writes().errno(0).check(sectors).is_err());
        assert!(MediaFault::both().after(3).once().errno(28).check(sectors).is_ok());
    }

    #[test]
    fn a_range_is_a_rule_per_sector_of_its_kind() {
        let o = MediaFault::reads().sectors(8..12).blkdebug_options("fault-d0", "file-d0");
        assert_eq!(o["driver"], "blkdebug");
        assert_eq!(o["image"], "file-d0");
        let rules = o["inject-error"].as_array().unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[0],
            json!({"event": "read_aio", "iotype": "read", "errno": 5, "sector": 8, "once": false})
        );
        assert_eq!(rules[3]["sector"], 11);
        assert!(o.get("set-state").is_none());
    }

    #[test]
    fn after_n_counts_states_and_both_kinds_fail() {
        let o = MediaFault::both().after(2).once().blkdebug_options("fault-d0", "file-d0");
        let rules = o["inject-error"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules
            .iter()
            .all(|r| r["state"] == 3 && r["once"] == true && r.get("sector").is_none()));
        assert_eq!(rules[1]["event"], "write_aio");
        assert_eq!(rules[1]["iotype"], "write");
        let states = o["set-state"].as_array().unwrap();
        assert_eq!(states.len(), 4);
        assert_eq!(states[0], json!({"event": "read_aio", "state": 1, "new_state": 2}));
        assert_eq!(states[3], json!({"event": "write_aio", "state": 2, "new_state": 3}));
    }

    #[test]
    fn a_fault_says_what_it_is() {
        assert_eq!(
            MediaFault::reads().sectors(2048..4096).to_string(),
            "read errors (errno 5) on sectors 2048..4096, until cleared"
        );
        assert_eq!(
            MediaFault::writes().after(32).once().to_string(),
            "write errors (errno 5) anywhere after 32 operations, once"
        );
    }
}
