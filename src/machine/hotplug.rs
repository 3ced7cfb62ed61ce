//! Disk hot-plug on the machine API: a disk's PCI address as the guest sees it, hot-remove both
//! ways the test plans allow (QMP `device_del` from the host, or the guest's own
//! `/sys/bus/pci/devices/BDF/remove`), and hot-add (QMP `blockdev-add` + `device_add`). Each
//! waits for its effect in the guest (the block device appearing or going), with a timeout.
//!
//! The machine keeps the list of disks plugged in now: a hot-added disk is there at the next cold
//! start and a disk removed with `device_del` is not, as with a real machine. A disk removed by
//! the guest stays in QEMU (the guest only forgot it), so a reset of the guest finds it again.

use std::time::Instant;

use anyhow::{anyhow, Result};
use serde_json::json;

use super::Machine;
use crate::config::DiskSpec;
use crate::log;
use crate::timeouts;

impl Machine {
    /// The PCI address (`0000:00:05.0`) of disk `id` as the guest sees it, checked against where
    /// QEMU says it put the device (`query-pci`): a disagreement is an error.
    pub async fn pci_address(&self, id: &str) -> Result<String> {
        self.host_only("PCI addresses (matched against QMP query-pci)")?;
        let disk = self.disk(id)?;
        // One line per NVMe controller and virtio disk: PCI address, serial.
        let cmd = "for c in /sys/class/nvme/*; do [ -e $c/device ] && echo $(basename $(readlink -f $c/device)) $(cat $c/serial); done; \
                   for b in /sys/block/vd*; do [ -e $b/serial ] && echo $(basename $(readlink -f $b/device/..)) $(cat $b/serial); done; true";
        let listing = self.succeed(cmd).await?;
        let guest = pci_address_by_serial(&listing, &disk.serial).ok_or_else(|| {
            self.error(
                format!("the guest shows no PCI device for disk {id} (serial {})", disk.serial),
                listing.clone(),
            )
        })?;
        let host = self.qemu_pci_address(id).await?;
        if guest != host {
            return Err(self.error(
                format!("disk {id}: the guest sees it at {guest}, QEMU placed it at {host}"),
                format!("guest listing (address, serial):\n{listing}"),
            ));
        }
        log::line(&format!("{}: disk {id} is at PCI {guest}", self.name()));
        Ok(guest)
    }

    /// Where QEMU placed device `id` on the PCI bus (`query-pci`).
    pub async fn qemu_pci_address(&self, id: &str) -> Result<String> {
        self.host_only("PCI addresses (QMP query-pci)")?;
        let buses = self.qmp().await?.execute(qapi::qmp::query_pci {}).await?;
        buses
            .iter()
            .flat_map(|b| b.devices.iter())
            .find(|d| d.qdev_id == id)
            .map(|d| format!("0000:{:02x}:{:02x}.{}", d.bus, d.slot, d.function))
            .ok_or_else(|| {
                self.error(format!("QEMU has no PCI device {id:?}"), "query-pci does not list it")
            })
    }

    /// Hot-removes disk `id` from the host side: QMP `device_del`, then waits for QEMU's
    /// `DEVICE_DELETED` event (the guest acknowledged the ACPI eject) and for the block device to
    /// leave the guest.
    pub async fn hot_remove_disk(&self, id: &str) -> Result<()> {
        self.host_only("hot_remove_disk (QMP device_del)")?;
        let disk = self.disk(id)?;
        log::nested(&format!("{}: hot-removing disk {id} (QMP device_del)", self.name()), async {
            let qmp = self.qmp().await?;
            let mark = qmp.event_count();
            qmp.execute(qapi::qmp::device_del { id: id.to_string() }).await.map_err(|e| {
                self.error(format!("device_del {id} was refused"), format!("{e:#}"))
            })?;
            log::event(
                crate::timeline::EventKind::HotRemove,
                self.name(),
                &format!("device_del {id}"),
            );
            let started = Instant::now();
            qmp.wait_for_event(mark, timeouts::hotplug(), |e| {
                e.name == "DEVICE_DELETED"
                    && serde_json::from_value::<qapi::qmp::DEVICE_DELETED>(e.data.clone())
                        .is_ok_and(|d| d.device.as_deref() == Some(id))
            })
            .await
            .map_err(|e| {
                self.timeout_error(
                    format!("waiting for DEVICE_DELETED of {id}"),
                    format!("{e:#}"),
                    started.elapsed(),
                )
            })?;
            // Its block nodes (-blockdev or blockdev-add) outlive the device: delete them, a
            // media fault's node first (it holds the file node), so nothing of the disk is left
            // and a disk of the same id can be added again. Either may not exist.
            let qemu_disk = self.qemu_disk(&disk);
            for node in [super::faults::fault_node(id), qemu_disk.drive_id()] {
                let _ = qmp.execute_raw("blockdev-del", json!({ "node-name": node })).await;
            }
            self.set_disks(|d| d.retain(|d| d.id != id));
            self.wait_for_block_device(&disk.serial, false, timeouts::hotplug()).await?;
            log::line(&format!(
                "{}: disk {id} removed after {:.2} s",
                self.name(),
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        })
        .await
    }

    /// Hot-removes disk `id` from inside the guest: `echo 1 > /sys/bus/pci/devices/BDF/remove`,
    /// as SPDK's hot-plug tests do on their host. Returns the PCI address it removed.
    pub async fn guest_remove_disk(&self, id: &str) -> Result<String> {
        self.host_only("guest_remove_disk (the PCI address matched against QMP query-pci)")?;
        let disk = self.disk(id)?;
        let bdf = self.pci_address(id).await?;
        log::nested(
            &format!("{}: hot-removing disk {id} from the guest (PCI {bdf})", self.name()),
            async {
                log::event(
                    crate::timeline::EventKind::HotRemove,
                    self.name(),
                    &format!("sysfs remove {id} ({bdf})"),
                );
                self.succeed(&format!("echo 1 > /sys/bus/pci/devices/{bdf}/remove")).await?;
                self.wait_for_block_device(&disk.serial, false, timeouts::hotplug()).await?;
                Ok(bdf)
            },
        )
        .await
    }

    /// Hot-adds `disk` (a new raw image in the run directory): QMP `blockdev-add` and
    /// `device_add`, then waits for its block device in the guest and returns its `/dev` node.
    pub async fn hot_add_disk(&self, disk: DiskSpec) -> Result<String> {
        self.host_only("hot_add_disk (QMP blockdev-add, device_add)")?;
        if self.disk(&disk.id).is_ok() {
            return Err(self.error(
                format!("a disk {} is plugged in already", disk.id),
                "give the new disk another id",
            ));
        }
        log::nested(
            &format!("{}: hot-adding disk {} ({} MiB)", self.name(), disk.id, disk.size_mib),
            async {
                let qmp = self.qmp().await?;
                self.attach_disk(&qmp, &disk).await?;
                log::event(
                    crate::timeline::EventKind::HotAdd,
                    self.name(),
                    &format!("device_add {}", disk.id),
                );
                self.set_disks(|d| d.push(disk.clone()));
                let dev =
                    self.wait_for_block_device(&disk.serial, true, timeouts::hotplug()).await?;
                dev.ok_or_else(|| anyhow!("disk {} appeared without a device node", disk.id))
            },
        )
        .await
    }
}

impl Machine {
    /// Attaches `disk` in QEMU (its image created if need be): `blockdev-add` of its image and
    /// `device_add` in its PCI slot. Does not wait for the guest.
    pub(super) async fn attach_disk(&self, qmp: &crate::qmp::Qmp, disk: &DiskSpec) -> Result<()> {
        let path = self.create_disk_file(disk)?;
        disk.check()
            .map_err(|e| self.error(format!("disk {} is refused", disk.id), format!("{e:#}")))?;
        let qemu_disk = self.qemu_disk(disk);
        let node = qemu_disk.drive_id();
        // The same named nodes as a cold boot's -blockdev (qemu::Disk::args).
        qmp.execute_raw(
            "blockdev-add",
            json!({"driver": "raw", "node-name": node, "discard": "unmap",
                   "file": {"driver": "file", "filename": path.display().to_string(),
                            "node-name": qemu_disk.file_node()}}),
        )
        .await
        .map_err(|e| {
            self.error(format!("blockdev-add of {} was refused", disk.id), format!("{e:#}"))
        })?;
        let driver = qemu_disk.device_model();
        let mut arguments: serde_json::Map<String, serde_json::Value> =
            [("drive".to_string(), json!(node)), ("serial".to_string(), json!(disk.serial))]
                .into_iter()
                .collect();
        if let Some(slot) = qemu_disk.pci_slot {
            arguments.insert("addr".to_string(), json!(format!("0x{slot:02x}")));
        }
        for (property, value) in qemu_disk.error_policies() {
            arguments.insert(property.to_string(), json!(value));
        }
        let added = qmp
            .execute(qapi::qmp::device_add {
                bus: None,
                id: Some(disk.id.clone()),
                driver: driver.to_string(),
                arguments: arguments.into_iter().collect(),
            })
            .await;
        if let Err(e) = added {
            let _ = qmp.execute_raw("blockdev-del", json!({ "node-name": node })).await;
            return Err(self.error(
                format!("device_add of {} ({driver}) was refused", disk.id),
                format!("{e:#}"),
            ));
        }
        Ok(())
    }
}

/// The PCI address in lines of "address serial" whose serial is `serial`.
pub fn pci_address_by_serial(listing: &str, serial: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let (bdf, rest) = line.trim().split_once(' ')?;
        (rest.trim() == serial).then(|| bdf.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_found_by_serial() {
        let listing = "0000:00:05.0 vmcheck-disk0\n0000:00:06.0 vmcheck-disk1\nctl nqn.2019-05.io.vmcheck:x\n";
        assert_eq!(
            pci_address_by_serial(listing, "vmcheck-disk1").as_deref(),
            Some("0000:00:06.0")
        );
        assert_eq!(pci_address_by_serial(listing, "vmcheck-disk"), None);
        assert_eq!(pci_address_by_serial("", "vmcheck-disk0"), None);
    }
}
