//! The kernel's LIO SCSI target through configfs: a block device exported as LUN 0 of an iSCSI
//! target, made in an order the kernel accepts, taken down in reverse, rolled back on failure.
//!
//! Layout (kernel `drivers/target/target_core_configfs.c`, `iscsi/iscsi_target_configfs.c`):
//! `core/iblock_<n>/<dev>/{control, udev_path, enable}` is the backstore (one HBA per device);
//! `iscsi/<iqn>/tpgt_1/{enable, attrib/*, np/<addr>:<port>/, lun/lun_0/<link> -> core/iblock_<n>/<dev>}`
//! the export. The `iscsi` fabric group appears on `mkdir` (the module must be loaded).
//!
//! Access is demo mode (`generate_node_acls=1`): any initiator may log in, read-write, without
//! CHAP; the test network carries only the project's VMs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use tracing::{info, warn};

use super::configfs::{ConfigFs, GroupLayout, Undo};
use super::error::{ConfigfsContext, Error, Result};
use super::limits::Deadline;
use super::uri::quoted;

/// `/sys/kernel/config/target` itself (made by target_core_mod).
pub const ROOT_LAYOUT: GroupLayout = GroupLayout {
    subdirs: &["core"],
    attrs: &[("version", "Target Engine Core ConfigFS Infrastructure")],
    removable_when: None,
};
const FABRIC: GroupLayout = GroupLayout {
    subdirs: &["discovery_auth"],
    attrs: &[("lio_version", ""), ("cpus_allowed_list", "")],
    removable_when: None,
};
const HBA: GroupLayout = GroupLayout {
    subdirs: &[],
    attrs: &[("hba_info", ""), ("hba_mode", "0")],
    removable_when: None,
};
const DEVICE: GroupLayout = GroupLayout {
    subdirs: &["attrib", "pr", "wwn", "alua", "statistics"],
    attrs: &[("control", ""), ("udev_path", ""), ("enable", "0"), ("info", ""), ("alias", "")],
    removable_when: None,
};
const TARGET: GroupLayout =
    GroupLayout { subdirs: &["fabric_statistics"], attrs: &[], removable_when: None };
const TPG_ATTRIBS: [(&str, &str); 4] = [
    ("generate_node_acls", "1"),
    ("demo_mode_write_protect", "0"),
    ("authentication", "0"),
    ("cache_dynamic_acls", "1"),
];
const TPG: GroupLayout = GroupLayout {
    subdirs: &["acls", "attrib", "auth", "lun", "np", "param"],
    attrs: &[
        ("enable", "0"),
        ("dynamic_sessions", ""),
        ("rtpi", "1"),
        ("attrib/generate_node_acls", "0"),
        ("attrib/demo_mode_write_protect", "1"),
        ("attrib/authentication", "0"),
        ("attrib/cache_dynamic_acls", "0"),
    ],
    // The emulation checks sessions were cut (TPG disabled) before the group goes.
    removable_when: Some(("enable", "0")),
};
const NP: GroupLayout = GroupLayout { subdirs: &[], attrs: &[("iser", "0")], removable_when: None };
const LUN: GroupLayout =
    GroupLayout { subdirs: &["statistics"], attrs: &[("alua_tg_pt_gp", "")], removable_when: None };

pub const FABRIC_DIR: &str = "iscsi";
pub const TPGT: &str = "tpgt_1";
pub const LUN_0: &str = "lun_0";
/// The highest LUN a share takes (256 per target, as SPDK's iSCSI target; Linux's iscsi_tcp
/// scans up to 512).
pub const MAX_LUN: u32 = 255;
pub const DEFAULT_ISCSI_PORT: u16 = 3260;
/// RFC 7143 3.2.6.1: an iSCSI name is at most 223 bytes.
pub const MAX_IQN_LEN: usize = 223;

/// `iqn.yyyy-mm.<reverse domain>[:<name>]`, lower case as RFC 3722's stringprep leaves it;
/// a configfs directory name, so no '/'.
static IQN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[a-z0-9.:_-]+)?$")
        .expect("valid regex")
});

/// Checks an IQN given by a caller; `what` says which field it came from.
pub fn validate_iqn(what: &str, iqn: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("{what} {}: {why}", quoted(iqn))));
    if iqn.len() > MAX_IQN_LEN {
        return bad(&format!("longer than {MAX_IQN_LEN} bytes"));
    }
    if !IQN_RE.is_match(iqn) {
        return bad("not an IQN of the form iqn.yyyy-mm.reverse.domain[:name] (lower-case letters, digits, '.', '-', ':', '_')");
    }
    Ok(())
}

/// An iSCSI target with one LUN.
#[derive(Debug, Clone)]
pub struct IscsiShareSpec {
    pub iqn: String,
    /// The block device LUN 0 serves (iblock).
    pub device_path: PathBuf,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// A LUN taken away by [`Lio::remove_luns_backed_by`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedLun {
    pub iqn: String,
    pub lun: u32,
    /// Whether the target went with it (its last LUN).
    pub target_removed: bool,
}

/// LIO's configfs tree.
#[derive(Debug)]
pub struct Lio {
    fs: ConfigFs,
}

impl Lio {
    pub fn new(fs: ConfigFs) -> Self {
        Lio { fs }
    }

    pub fn fs(&self) -> &ConfigFs {
        &self.fs
    }

    /// Whether target_core_mod is loaded and configfs mounted.
    pub fn available(&self) -> bool {
        self.fs.exists(Path::new("core"))
    }

    fn require_available(&self) -> Result<()> {
        if self.available() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "LIO configfs {} is missing: are target_core_mod and iscsi_target_mod loaded and configfs mounted?",
            self.fs.root().join("core").display()
        )))
    }

    pub fn target_exists(&self, iqn: &str) -> bool {
        self.fs.exists(&target_dir(iqn))
    }

    /// Backstore, target, portal, LUN 0, demo-mode attributes, then enable. All or nothing: a
    /// failure or the deadline passing between steps rolls back what was made.
    pub fn share(&self, spec: &IscsiShareSpec, deadline: &Deadline) -> Result<()> {
        self.require_available()?;
        deadline.check("before the iSCSI share started")?;
        let iqn = spec.iqn.as_str();
        if self.target_exists(iqn) {
            return Err(Error::AlreadyExists(format!("iSCSI target {iqn} exists already")));
        }
        let mut undo = Undo::new(&self.fs, "LIO");
        if !self.fs.exists(Path::new(FABRIC_DIR)) {
            undo.make_group(Path::new(FABRIC_DIR), &FABRIC)
                .context(|| "creating the iscsi fabric (is iscsi_target_mod loaded?)".into())?;
        }
        let hba = self.free_hba()?;
        let dev = hba.join(device_name(iqn));
        let path = spec.device_path.to_string_lossy();
        undo.make_group(&hba, &HBA)
            .context(|| format!("creating backstore HBA {}", hba.display()))?;
        undo.make_group(&dev, &DEVICE)
            .context(|| format!("creating backstore {}", dev.display()))?;
        undo.write(&dev.join("control"), &format!("udev_path={path}"))
            .context(|| format!("setting the backstore device to {path}"))?;
        undo.write(&dev.join("udev_path"), &path)
            .context(|| format!("setting udev_path {path}"))?;
        // iblock opens the device here: a vanished or busy device fails at this step.
        undo.write(&dev.join("enable"), "1")
            .context(|| format!("enabling backstore {} on {path}", dev.display()))?;
        deadline.check(&format!("after backstore {} was made", dev.display()))?;
        let tpg = tpg_dir(iqn);
        undo.make_group(&target_dir(iqn), &TARGET)
            .context(|| format!("creating iSCSI target {iqn}"))?;
        undo.make_group(&tpg, &TPG).context(|| format!("creating {TPGT} of {iqn}"))?;
        for (attr, value) in TPG_ATTRIBS {
            undo.write(&tpg.join("attrib").join(attr), value)
                .context(|| format!("setting {attr}={value} on {iqn}"))?;
        }
        let lun = tpg.join("lun").join(LUN_0);
        undo.make_group(&lun, &LUN).context(|| format!("creating {LUN_0} of {iqn}"))?;
        undo.symlink(&dev, &lun.join(device_name(iqn)))
            .context(|| format!("linking {LUN_0} of {iqn} to {path}"))?;
        deadline.check(&format!("before the portal of {iqn} was made"))?;
        let portal = format!("{}:{}", spec.addr, spec.port);
        // The portal binds here: a busy or foreign address fails at this step.
        undo.make_group(&tpg.join("np").join(&portal), &NP)
            .context(|| format!("creating portal {portal} of {iqn}"))?;
        deadline.check(&format!("before enabling {iqn}"))?;
        undo.write_reverting(&tpg.join("enable"), "1", "0")
            .context(|| format!("enabling {iqn}"))?;
        undo.commit();
        Ok(())
    }

    /// Hot attach of a LUN: `device` as LUN `lun` of an existing target, on a backstore of its
    /// own (SPDK's vhost_scsi_controller_add_target). In demo mode LIO maps it to every session
    /// at once and queues REPORTED LUNS DATA HAS CHANGED on their other LUNs. All or nothing,
    /// with the deadline checked between the backstore and the LUN.
    pub fn add_lun(&self, iqn: &str, lun: u32, device: &Path, deadline: &Deadline) -> Result<()> {
        self.require_available()?;
        deadline.check("before the LUN was added")?;
        if !self.target_exists(iqn) {
            return Err(Error::NotFound(format!("iSCSI target {iqn} is not in configfs")));
        }
        if self.lun_exists(iqn, lun) {
            return Err(Error::AlreadyExists(format!("LUN {lun} of {iqn} exists already")));
        }
        let mut undo = Undo::new(&self.fs, "LIO");
        let hba = self.free_hba()?;
        let name = format!("{}_lun{lun}", device_name(iqn));
        let dev = hba.join(&name);
        let path = device.to_string_lossy();
        undo.make_group(&hba, &HBA)
            .context(|| format!("creating backstore HBA {}", hba.display()))?;
        undo.make_group(&dev, &DEVICE)
            .context(|| format!("creating backstore {}", dev.display()))?;
        undo.write(&dev.join("control"), &format!("udev_path={path}"))
            .context(|| format!("setting the backstore device to {path}"))?;
        undo.write(&dev.join("udev_path"), &path)
            .context(|| format!("setting udev_path {path}"))?;
        undo.write(&dev.join("enable"), "1")
            .context(|| format!("enabling backstore {} on {path}", dev.display()))?;
        deadline.check(&format!("after backstore {} was made", dev.display()))?;
        let dir = lun_dir(iqn, lun);
        undo.make_group(&dir, &LUN).context(|| format!("creating LUN {lun} of {iqn}"))?;
        undo.symlink(&dev, &dir.join(&name))
            .context(|| format!("linking LUN {lun} of {iqn} to {path}"))?;
        undo.commit();
        Ok(())
    }

    /// Hot detach of a LUN, with its backstore; the target and its sessions stay.
    pub fn remove_lun_of(&self, iqn: &str, lun: u32) -> Result<()> {
        self.require_available()?;
        if !self.lun_exists(iqn, lun) {
            return Err(Error::NotFound(format!("LUN {lun} of {iqn} not found")));
        }
        self.remove_lun(iqn, &format!("lun_{lun}"))
    }

    pub fn lun_exists(&self, iqn: &str, lun: u32) -> bool {
        self.fs.exists(&lun_dir(iqn, lun))
    }

    /// The lowest LUN from 1 that the target does not use.
    pub fn free_lun(&self, iqn: &str) -> Result<u32> {
        (1..=MAX_LUN).find(|lun| !self.lun_exists(iqn, *lun)).ok_or_else(|| {
            Error::FailedPrecondition(format!("{iqn} has all LUNs 1..={MAX_LUN} in use"))
        })
    }

    /// Takes a target down: disabled (sessions end), LUNs, portals, the target, then the
    /// backstores its LUNs used, and the fabric group when no target is left. Stops at the
    /// first failure; a retry continues from there.
    pub fn unshare(&self, iqn: &str) -> Result<()> {
        self.require_available()?;
        if !self.target_exists(iqn) {
            return Err(Error::NotFound(format!("iSCSI target {iqn} is not in configfs")));
        }
        let tpg = tpg_dir(iqn);
        if self.fs.exists(&tpg) {
            self.fs.write(&tpg.join("enable"), "0").context(|| format!("disabling {iqn}"))?;
            for lun in
                self.fs.list(&tpg.join("lun")).context(|| format!("listing LUNs of {iqn}"))?
            {
                self.remove_lun(iqn, &lun)?;
            }
            for portal in
                self.fs.list(&tpg.join("np")).context(|| format!("listing portals of {iqn}"))?
            {
                self.fs
                    .remove_group(&tpg.join("np").join(&portal), &NP)
                    .context(|| format!("removing portal {portal} of {iqn}"))?;
            }
            self.fs.remove_group(&tpg, &TPG).context(|| format!("removing {TPGT} of {iqn}"))?;
        }
        self.fs
            .remove_group(&target_dir(iqn), &TARGET)
            .context(|| format!("removing iSCSI target {iqn}"))?;
        // The fabric group goes with its last target, so configfs is as it was before the first
        // share; a kernel that refuses is no failure of this unshare.
        let left =
            self.fs.list(Path::new(FABRIC_DIR)).context(|| "listing iSCSI targets".into())?;
        if !left.iter().any(|name| is_target_name(name)) {
            if let Err(err) = self.fs.remove_group(Path::new(FABRIC_DIR), &FABRIC) {
                warn!("leaving the empty iscsi fabric group: {err}");
            }
        }
        Ok(())
    }

    /// Hot-remove: every LUN whose backstore is `device` goes (SPDK removes a hot-removed bdev
    /// from every LUN it is in). A target left without LUNs is removed whole, which ends its
    /// sessions: LIO would otherwise answer on a phantom LUN 0 (a write-protected stand-in).
    /// Returns what was removed; a device in no LUN is no error.
    pub fn remove_luns_backed_by(&self, device: &Path) -> Result<Vec<RemovedLun>> {
        if !self.available() || !self.fs.exists(Path::new(FABRIC_DIR)) {
            return Ok(Vec::new());
        }
        let wanted = device.to_string_lossy();
        let mut removed = Vec::new();
        for target in self.targets()? {
            let tpg = tpg_dir(&target.iqn);
            let mut lost = Vec::new();
            for lun in &target.luns {
                if lun.udev_path == wanted {
                    self.remove_lun(&target.iqn, &format!("lun_{}", lun.lun))?;
                    lost.push(lun.lun);
                }
            }
            if lost.is_empty() {
                continue;
            }
            let empty = self
                .fs
                .list(&tpg.join("lun"))
                .context(|| format!("listing LUNs of {}", target.iqn))?
                .is_empty();
            if empty {
                self.unshare(&target.iqn)?;
            }
            info!(iqn = %target.iqn, luns = ?lost, target_removed = empty, device = %wanted, "removed LUNs of a vanished device");
            removed.extend(lost.into_iter().map(|lun| RemovedLun {
                iqn: target.iqn.clone(),
                lun,
                target_removed: empty,
            }));
        }
        Ok(removed)
    }

    /// Every iSCSI target with its LUNs and portals, whoever made it.
    pub fn targets(&self) -> Result<Vec<TargetState>> {
        if !self.fs.exists(Path::new(FABRIC_DIR)) {
            return Ok(Vec::new());
        }
        let mut targets = Vec::new();
        for iqn in self.fs.list(Path::new(FABRIC_DIR)).context(|| "listing iSCSI targets".into())? {
            let tpg = tpg_dir(&iqn);
            if !self.fs.exists(&tpg) {
                continue; // discovery_auth, lio_version, or a target without tpgt_1
            }
            let mut luns = Vec::new();
            for name in
                self.fs.list(&tpg.join("lun")).context(|| format!("listing LUNs of {iqn}"))?
            {
                let Some(lun) = name.strip_prefix("lun_").and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let backstore = self.lun_backstore(&tpg.join("lun").join(&name))?;
                let udev_path = match &backstore {
                    Some(dev) => self
                        .fs
                        .read(&dev.join("udev_path"))
                        .context(|| format!("reading the device of {name} of {iqn}"))?,
                    None => String::new(),
                };
                luns.push(LunState { lun, backstore, udev_path });
            }
            luns.sort_by_key(|l| l.lun);
            targets.push(TargetState {
                portals: self
                    .fs
                    .list(&tpg.join("np"))
                    .context(|| format!("listing portals of {iqn}"))?,
                enabled: self
                    .fs
                    .read(&tpg.join("enable"))
                    .context(|| format!("reading enable of {iqn}"))?
                    == "1",
                luns,
                iqn,
            });
        }
        Ok(targets)
    }

    /// The backstores in `core/`, for the leftover report.
    pub fn backstores(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        if !self.available() {
            return Ok(out);
        }
        for hba in self.fs.list(Path::new("core")).context(|| "listing LIO backstores".into())? {
            let dir = Path::new("core").join(&hba);
            if !hba.starts_with("iblock_")
                && !hba.starts_with("fileio_")
                && !hba.starts_with("rd_mcp_")
                && !hba.starts_with("pscsi_")
            {
                continue; // alua and other non-HBA groups
            }
            for dev in self.fs.list(&dir).context(|| format!("listing {hba}"))? {
                if self.fs.exists(&dir.join(&dev).join("enable")) {
                    out.push(dir.join(dev));
                }
            }
        }
        Ok(out)
    }

    /// Unlinks and removes a LUN, then the backstore behind it and its HBA when nothing else
    /// uses them.
    fn remove_lun(&self, iqn: &str, name: &str) -> Result<()> {
        let lun = tpg_dir(iqn).join("lun").join(name);
        let backstore = self.lun_backstore(&lun)?;
        for link in self.fs.list(&lun).context(|| format!("listing {name} of {iqn}"))? {
            if self.is_link(&lun.join(&link)) {
                self.fs
                    .unlink(&lun.join(&link))
                    .context(|| format!("unlinking {name} of {iqn}"))?;
            }
        }
        self.fs.remove_group(&lun, &LUN).context(|| format!("removing {name} of {iqn}"))?;
        if let Some(dev) = backstore {
            if !self.backstore_in_use(&dev)? {
                self.fs
                    .remove_group(&dev, &DEVICE)
                    .context(|| format!("removing backstore {}", dev.display()))?;
                if let Some(hba) = dev.parent() {
                    if self
                        .fs
                        .list(hba)
                        .context(|| format!("listing {}", hba.display()))?
                        .iter()
                        .all(|e| HBA.attrs.iter().any(|a| a.0 == e))
                    {
                        self.fs
                            .remove_group(hba, &HBA)
                            .context(|| format!("removing backstore HBA {}", hba.display()))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn backstore_in_use(&self, dev: &Path) -> Result<bool> {
        Ok(self
            .targets()?
            .iter()
            .flat_map(|t| &t.luns)
            .any(|l| l.backstore.as_deref() == Some(dev)))
    }

    /// The backstore a LUN links to, relative to the root.
    fn lun_backstore(&self, lun: &Path) -> Result<Option<PathBuf>> {
        for entry in self.fs.list(lun).context(|| format!("listing {}", lun.display()))? {
            let abs = self.fs.root().join(lun).join(&entry);
            if let Ok(target) = std::fs::read_link(&abs) {
                // The kernel's links are relative (../../../../core/...); emulated ones absolute.
                let resolved = if target.is_absolute() {
                    target
                } else {
                    abs.parent().unwrap_or(&abs).join(target)
                };
                let canonical = std::fs::canonicalize(&resolved).unwrap_or(resolved);
                let root = std::fs::canonicalize(self.fs.root())
                    .unwrap_or_else(|_| self.fs.root().to_path_buf());
                return Ok(canonical.strip_prefix(&root).ok().map(Path::to_path_buf));
            }
        }
        Ok(None)
    }

    fn is_link(&self, rel: &Path) -> bool {
        self.fs.root().join(rel).symlink_metadata().is_ok_and(|m| m.file_type().is_symlink())
    }

    /// One HBA per backstore, the lowest free `iblock_<n>`.
    fn free_hba(&self) -> Result<PathBuf> {
        let used = self.fs.list(Path::new("core")).context(|| "listing LIO backstores".into())?;
        (0..u32::MAX)
            .map(|n| format!("iblock_{n}"))
            .find(|name| !used.contains(name))
            .map(|name| Path::new("core").join(name))
            .ok_or_else(|| Error::FailedPrecondition("no free iblock HBA index".into()))
    }
}

/// The backstore's name: the IQN's name part, which is unique among this daemon's shares.
fn device_name(iqn: &str) -> String {
    iqn.rsplit(':').next().unwrap_or(iqn).replace('.', "_")
}

/// iSCSI names (RFC 7143 4.2.7.1): what in the fabric group is a target, not an attribute.
fn is_target_name(name: &str) -> bool {
    ["iqn.", "eui.", "naa."].iter().any(|p| name.starts_with(p))
}

fn target_dir(iqn: &str) -> PathBuf {
    Path::new(FABRIC_DIR).join(iqn)
}

fn tpg_dir(iqn: &str) -> PathBuf {
    target_dir(iqn).join(TPGT)
}

fn lun_dir(iqn: &str, lun: u32) -> PathBuf {
    tpg_dir(iqn).join("lun").join(format!("lun_{lun}"))
}

/// An iSCSI target as configfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    pub iqn: String,
    pub enabled: bool,
    /// `addr:port` of each portal.
    pub portals: Vec<String>,
    pub luns: Vec<LunState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunState {
    pub lun: u32,
    /// `core/<hba>/<dev>`, relative to the root.
    pub backstore: Option<PathBuf>,
    /// The block device behind it.
    pub udev_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::configfs::Op;
    use nix::errno::Errno;

    const IQN: &str = "iqn.2019-05.io.vmcheck:test";

    fn fake() -> (tempfile::TempDir, Lio) {
        let dir = tempfile::tempdir().unwrap();
        let fs = ConfigFs::emulated(dir.path().join("target"), &ROOT_LAYOUT).unwrap();
        (dir, Lio::new(fs))
    }

    fn spec(iqn: &str, dev: &str) -> IscsiShareSpec {
        IscsiShareSpec {
            iqn: iqn.into(),
            device_path: dev.into(),
            addr: Ipv4Addr::new(192, 0, 2, 1),
            port: 3260,
        }
    }

    fn empty() -> Vec<String> {
        vec!["d core".into(), "f version = Target Engine Core ConfigFS Infrastructure".into()]
    }

    #[test]
    fn share_writes_the_kernel_layout_and_unshare_removes_it_all() {
        let (_dir, lio) = fake();
        lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).unwrap();
        let tree = lio.fs().dump();
        let tpg = "iscsi/iqn.2019-05.io.vmcheck:test/tpgt_1";
        for line in [
            "f core/iblock_0/test/control = udev_path=/dev/nvme0n1",
            "f core/iblock_0/test/udev_path = /dev/nvme0n1",
            "f core/iblock_0/test/enable = 1",
            &format!("f {tpg}/attrib/generate_node_acls = 1"),
            &format!("f {tpg}/attrib/demo_mode_write_protect = 0"),
            &format!("f {tpg}/attrib/authentication = 0"),
            &format!("f {tpg}/attrib/cache_dynamic_acls = 1"),
            &format!("d {tpg}/np/192.0.2.1:3260"),
            &format!("l {tpg}/lun/lun_0/test -> core/iblock_0/test"),
            &format!("f {tpg}/enable = 1"),
        ] {
            assert!(tree.iter().any(|l| l == line), "missing {line:?} in {tree:#?}");
        }
        let targets = lio.targets().unwrap();
        assert_eq!(
            targets,
            [TargetState {
                iqn: IQN.into(),
                enabled: true,
                portals: vec!["192.0.2.1:3260".into()],
                luns: vec![LunState {
                    lun: 0,
                    backstore: Some("core/iblock_0/test".into()),
                    udev_path: "/dev/nvme0n1".into()
                }],
            }]
        );
        assert_eq!(lio.backstores().unwrap(), [PathBuf::from("core/iblock_0/test")]);
        assert_eq!(
            lio.share(&spec(IQN, "/dev/nvme1n1"), &Deadline::none()).unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        lio.unshare(IQN).unwrap();
        assert_eq!(lio.fs().dump(), empty());
        assert_eq!(lio.unshare(IQN).unwrap_err().code(), tonic::Code::NotFound);
    }

    #[test]
    fn two_targets_share_the_fabric_and_get_their_own_backstores() {
        let (_dir, lio) = fake();
        let other = "iqn.2019-05.io.vmcheck:other";
        lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).unwrap();
        lio.share(&spec(other, "/dev/nvme1n1"), &Deadline::none()).unwrap();
        assert_eq!(
            lio.backstores().unwrap(),
            [PathBuf::from("core/iblock_0/test"), PathBuf::from("core/iblock_1/other")]
        );
        lio.unshare(IQN).unwrap();
        assert!(lio.fs().exists(Path::new("iscsi")), "still used by {other}");
        assert_eq!(lio.targets().unwrap().len(), 1);
        lio.unshare(other).unwrap();
        assert_eq!(lio.fs().dump(), empty());
    }

    /// A fault at each step of a share leaves the tree exactly as it was.
    #[test]
    fn a_failure_at_any_step_of_a_share_is_rolled_back() {
        let steps: &[(Op, &str)] = &[
            (Op::Mkdir, "core/iblock_1"),
            (Op::Mkdir, "core/iblock_1/test"),
            (Op::Write, "iblock_1/test/control"),
            (Op::Write, "iblock_1/test/udev_path"),
            (Op::Write, "iblock_1/test/enable"),
            (Op::Mkdir, &format!("iscsi/{IQN}")),
            (Op::Mkdir, "tpgt_1"),
            (Op::Write, "generate_node_acls"),
            (Op::Write, "demo_mode_write_protect"),
            (Op::Write, "attrib/authentication"),
            (Op::Write, "cache_dynamic_acls"),
            (Op::Mkdir, "lun/lun_0"),
            (Op::Symlink, "lun_0/test"),
            (Op::Mkdir, "np/192.0.2.1:3260"),
            (Op::Write, "tpgt_1/enable"),
        ];
        for (op, suffix) in steps {
            let (_dir, lio) = fake();
            // Something else is there already and must survive the rollback untouched.
            lio.share(&spec("iqn.2019-05.io.vmcheck:keep", "/dev/nvme1n1"), &Deadline::none())
                .unwrap();
            let before = lio.fs().dump();
            assert!(lio.fs().inject_fault(*op, suffix, Errno::EADDRINUSE as i32));
            let err = lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).expect_err(suffix);
            assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{op:?} {suffix}: {err}");
            assert!(
                err.to_string().contains(suffix),
                "{op:?} {suffix}: message names the path: {err}"
            );
            assert_eq!(lio.fs().dump(), before, "after a fault on {op:?} {suffix}");
        }
    }

    /// The deadline passing at each of a share's checks leaves the tree as it was, and a share
    /// with enough time left goes through.
    #[test]
    fn a_deadline_passing_at_any_step_of_a_share_is_rolled_back() {
        let mut checks = 0;
        loop {
            let (_dir, lio) = fake();
            lio.share(&spec("iqn.2019-05.io.vmcheck:keep", "/dev/nvme1n1"), &Deadline::none())
                .unwrap();
            let before = lio.fs().dump();
            match lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::after_checks(checks)) {
                Err(err) => {
                    assert_eq!(
                        err.code(),
                        tonic::Code::DeadlineExceeded,
                        "after {checks} checks: {err}"
                    );
                    assert!(err.to_string().contains("nothing was changed"), "{err}");
                    assert_eq!(lio.fs().dump(), before, "after {checks} checks");
                }
                Ok(()) => {
                    assert_eq!(checks, 4, "an iSCSI share has 4 deadline checks");
                    break;
                }
            }
            checks += 1;
        }
    }

    #[test]
    fn a_failure_making_the_fabric_is_rolled_back_and_named() {
        let (_dir, lio) = fake();
        lio.fs().inject_fault(Op::Write, "tpgt_1/enable", Errno::EINVAL as i32);
        let err = lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{err}");
        assert_eq!(lio.fs().dump(), empty(), "the fabric group made by this share went too");
        lio.fs().inject_fault(Op::Mkdir, "iscsi", Errno::ENOENT as i32);
        let err = lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).unwrap_err();
        assert!(err.to_string().contains("iscsi_target_mod"), "{err}");
    }

    #[test]
    fn a_failed_unshare_can_be_retried() {
        let (_dir, lio) = fake();
        lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).unwrap();
        lio.fs().inject_fault(Op::Rmdir, "np/192.0.2.1:3260", Errno::EBUSY as i32);
        assert!(lio.unshare(IQN).is_err());
        assert!(lio.target_exists(IQN));
        lio.unshare(IQN).unwrap();
        assert_eq!(lio.fs().dump(), empty());
    }

    #[test]
    fn luns_of_a_vanished_device_are_removed_with_their_emptied_targets() {
        let (_dir, lio) = fake();
        let other = "iqn.2019-05.io.vmcheck:other";
        lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).unwrap();
        lio.share(&spec(other, "/dev/nvme1n1"), &Deadline::none()).unwrap();
        assert!(lio.remove_luns_backed_by(Path::new("/dev/nvme9n1")).unwrap().is_empty());
        let removed = lio.remove_luns_backed_by(Path::new("/dev/nvme0n1")).unwrap();
        assert_eq!(removed, [RemovedLun { iqn: IQN.into(), lun: 0, target_removed: true }]);
        assert!(!lio.target_exists(IQN));
        assert_eq!(
            lio.backstores().unwrap(),
            [PathBuf::from("core/iblock_1/other")],
            "the vanished device's backstore went too"
        );
        assert!(lio.target_exists(other));
        assert!(
            lio.remove_luns_backed_by(Path::new("/dev/nvme0n1")).unwrap().is_empty(),
            "a second call finds nothing"
        );
    }

    #[test]
    fn missing_lio_is_a_failed_precondition_and_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let lio = Lio::new(ConfigFs::kernel(dir.path().join("absent")));
        assert!(!lio.available());
        assert!(lio.targets().unwrap().is_empty());
        assert!(lio.remove_luns_backed_by(Path::new("/dev/nvme0n1")).unwrap().is_empty());
        let err = lio.share(&spec(IQN, "/dev/nvme0n1"), &Deadline::none()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("target_core_mod"), "{err}");
    }

    #[test]
    fn iqn_validation() {
        for good in [
            IQN,
            "iqn.2004-10.com.ubuntu:01:abcdef",
            "iqn.1993-08.org.debian:01:1234",
            "iqn.2024-12.a",
        ] {
            validate_iqn("iqn", good).unwrap();
        }
        let long = format!("iqn.2019-05.io.vmcheck:{}", "x".repeat(MAX_IQN_LEN));
        for bad in [
            "",
            "iqn",
            "iqn.19-05.io.x",
            "iqn.2019-13.io.x",
            "iqn.2019-05.io.x:",
            "iqn.2019-05.io.x:a/b",
            "iqn.2019-05.io.x:A",
            "nqn.2019-05.io.x",
            &long,
        ] {
            let err = validate_iqn("iqn", bad).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(&quoted(bad)), "{err}");
        }
    }

    /// ShareBdev/UnshareBdev over ISCSI through the gRPC service, on an emulated configfs.
    mod service {
        use super::*;
        use crate::target::backing::{fake_block_device, Backing};
        use crate::target::nvmet::{self, Nvmet};
        use crate::target::proto::{self, target_server::Target};
        use crate::target::service::{TargetService, Traddr, CLAIMED_BY_ISCSI, IQN_PREFIX};
        use tonic::{Code, Request};

        struct Fx {
            dir: tempfile::TempDir,
            svc: TargetService,
        }

        fn fx() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let nvmet = Nvmet::new(
                ConfigFs::emulated(dir.path().join("nvmet"), &nvmet::ROOT_LAYOUT).unwrap(),
            );
            let lio =
                Lio::new(ConfigFs::emulated(dir.path().join("target"), &ROOT_LAYOUT).unwrap());
            let backing = Backing::new(dir.path().join("sys"), dir.path().join("malloc"));
            fake_block_device(&dir.path().join("sys"), "nvme0n1", 64 << 20, 512).unwrap();
            let svc =
                TargetService::new(nvmet, backing, Traddr::Fixed(Ipv4Addr::new(192, 0, 2, 1)))
                    .with_lio(lio);
            Fx { dir, svc }
        }

        const BDEV: &str = "aio:///dev/nvme0n1";

        fn iscsi(name: &str) -> proto::ShareBdevRequest {
            proto::ShareBdevRequest {
                name: name.into(),
                protocol: proto::ShareProtocol::Iscsi as i32,
                ..Default::default()
            }
        }

        async fn share(
            fx: &Fx,
            req: proto::ShareBdevRequest,
        ) -> Result<proto::ShareBdevReply, tonic::Status> {
            fx.svc.share_bdev(Request::new(req)).await.map(|r| r.into_inner())
        }

        async fn create(fx: &Fx, uri: &str) -> proto::Bdev {
            fx.svc
                .create_bdev(Request::new(proto::CreateBdevRequest { uri: uri.into() }))
                .await
                .unwrap()
                .into_inner()
        }

        async fn unshare(fx: &Fx, name: &str) -> Result<(), tonic::Status> {
            fx.svc
                .unshare_bdev(Request::new(proto::UnshareBdevRequest { name: name.into() }))
                .await
                .map(drop)
        }

        async fn destroy(fx: &Fx, name: &str) -> Result<(), tonic::Status> {
            fx.svc
                .destroy_bdev(Request::new(proto::DestroyBdevRequest { name: name.into() }))
                .await
                .map(drop)
        }

        #[tokio::test]
        async fn share_list_unshare_destroy() {
            let fx = fx();
            let health =
                fx.svc.health(Request::new(proto::HealthRequest {})).await.unwrap().into_inner();
            assert!(health.lio && health.nvmet, "{health:?}");
            let bdev = create(&fx, BDEV).await;
            let reply = share(&fx, iscsi(BDEV)).await.unwrap();
            let iqn = format!("{IQN_PREFIX}{}", bdev.uuid);
            assert_eq!(reply.iqn, iqn);
            assert_eq!(reply.uri, format!("iscsi://192.0.2.1:3260/{iqn}/0"));
            assert!(reply.nqn.is_empty());
            let listed = fx
                .svc
                .list_bdevs(Request::new(proto::ListBdevsRequest {}))
                .await
                .unwrap()
                .into_inner()
                .bdevs;
            assert_eq!(
                (listed[0].claimed, listed[0].claimed_by.as_str(), listed[0].share_uri.as_str()),
                (true, CLAIMED_BY_ISCSI, reply.uri.as_str())
            );
            let lio = fx.svc.lio();
            assert_eq!(lio.targets().unwrap()[0].luns[0].udev_path, "/dev/nvme0n1");
            assert!(fx.svc.nvmet().state().unwrap().is_empty(), "nothing in nvmet");
            let again = share(&fx, iscsi(BDEV)).await.unwrap_err();
            assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
            let busy = destroy(&fx, BDEV).await.unwrap_err();
            assert_eq!(busy.code(), Code::FailedPrecondition);
            assert!(busy.message().contains(&format!("LUN 0 of {iqn}")), "{busy:?}");
            unshare(&fx, BDEV).await.unwrap();
            assert_eq!(lio.fs().dump(), tests_empty());
            assert_eq!(unshare(&fx, BDEV).await.unwrap_err().code(), Code::FailedPrecondition);
            destroy(&fx, BDEV).await.unwrap();
        }

        fn tests_empty() -> Vec<String> {
            super::empty()
        }

        #[tokio::test]
        async fn bad_requests_name_the_value_and_touch_nothing() {
            let fx = fx();
            create(&fx, BDEV).await;
            create(&fx, "malloc:///m0?size_mb=8").await;
            let before = fx.svc.lio().fs().dump();
            let cases: Vec<(proto::ShareBdevRequest, Code, &str)> = vec![
                (
                    proto::ShareBdevRequest {
                        nqn: Some("nqn.2019-05.io.x:a".into()),
                        ..iscsi(BDEV)
                    },
                    Code::InvalidArgument,
                    "nqn.2019-05.io.x:a",
                ),
                (
                    proto::ShareBdevRequest {
                        allowed_hosts: vec!["nqn.2019-05.io.x:h".into()],
                        ..iscsi(BDEV)
                    },
                    Code::InvalidArgument,
                    "allowed_hosts",
                ),
                (
                    proto::ShareBdevRequest {
                        iqn: Some("iqn.2019-05.io.x:A B".into()),
                        ..iscsi(BDEV)
                    },
                    Code::InvalidArgument,
                    "A B",
                ),
                (
                    proto::ShareBdevRequest { port: Some(0), ..iscsi(BDEV) },
                    Code::InvalidArgument,
                    "port 0",
                ),
                (
                    proto::ShareBdevRequest { port: Some(70000), ..iscsi(BDEV) },
                    Code::InvalidArgument,
                    "port 70000",
                ),
                (
                    proto::ShareBdevRequest {
                        iqn: Some("iqn.2019-05.io.x:a".into()),
                        ..proto::ShareBdevRequest { name: BDEV.into(), ..Default::default() }
                    },
                    Code::InvalidArgument,
                    "iqn.2019-05.io.x:a",
                ),
                (iscsi("aio:///dev/nvme9n1"), Code::NotFound, "nvme9n1"),
                (iscsi("malloc:///m0?size_mb=8"), Code::FailedPrecondition, "malloc"),
            ];
            for (req, code, needle) in cases {
                let err = share(&fx, req.clone()).await.expect_err(&format!("{req:?}"));
                assert_eq!(err.code(), code, "{req:?}: {err:?}");
                assert!(err.message().contains(needle), "{req:?}: {err:?} should name {needle}");
            }
            std::fs::remove_dir_all(fx.dir.path().join("sys/class/block/nvme0n1")).unwrap();
            let gone = share(&fx, iscsi(BDEV)).await.unwrap_err();
            assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
            assert!(gone.message().contains("faulted"), "{gone:?}");
            assert_eq!(fx.svc.lio().fs().dump(), before);
        }

        #[tokio::test]
        async fn a_kernel_refusal_rolls_back_and_the_bdev_stays_unshared() {
            let fx = fx();
            create(&fx, BDEV).await;
            fx.svc.lio().fs().inject_fault(
                crate::target::configfs::Op::Mkdir,
                "np/192.0.2.1:3260",
                Errno::EADDRINUSE as i32,
            );
            let err = share(&fx, iscsi(BDEV)).await.unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert!(err.message().contains("192.0.2.1:3260"), "{err:?}");
            assert_eq!(fx.svc.lio().fs().dump(), tests_empty());
            share(&fx, iscsi(BDEV)).await.unwrap();
        }

        /// The daemon's hot-remove (reap_vanished, as the monitor calls it) takes the LUN and its
        /// target away by itself; the bdev is faulted, still listed as shared, and UnshareBdev
        /// afterwards succeeds and forgets the share.
        #[tokio::test]
        async fn hot_remove_takes_the_iscsi_target_away_and_unshare_still_succeeds() {
            let fx = fx();
            create(&fx, BDEV).await;
            let reply = share(&fx, iscsi(BDEV)).await.unwrap();
            assert!(fx.svc.reap_vanished().await.is_empty(), "nothing vanished yet");
            assert!(fx.svc.lio().target_exists(&reply.iqn));
            std::fs::remove_dir_all(fx.dir.path().join("sys/class/block/nvme0n1")).unwrap();
            let report = fx.svc.reap_vanished().await;
            assert_eq!(report.len(), 1, "{report:?}");
            assert!(
                report[0].contains(&format!("removed from LUN 0 of {}", reply.iqn)),
                "{report:?}"
            );
            assert!(!fx.svc.lio().target_exists(&reply.iqn), "the daemon removed the target");
            assert_eq!(fx.svc.lio().fs().dump(), tests_empty(), "backstore and fabric went too");
            assert!(fx.svc.reap_vanished().await.is_empty(), "each removal is reported once");
            let listed = fx
                .svc
                .list_bdevs(Request::new(proto::ListBdevsRequest {}))
                .await
                .unwrap()
                .into_inner()
                .bdevs;
            assert_eq!(
                (listed[0].state.as_str(), listed[0].share_uri.as_str()),
                ("faulted", reply.uri.as_str()),
                "{listed:?}"
            );
            unshare(&fx, BDEV).await.unwrap();
            destroy(&fx, BDEV).await.unwrap();
        }

        /// An iSCSI share is a ShareBdev-made entry: DestroySubsystem refuses its IQN, and its
        /// IQN cannot be reused by another share.
        #[tokio::test]
        async fn destroy_subsystem_refuses_an_iqn_and_names_unshare() {
            let fx = fx();
            create(&fx, BDEV).await;
            let reply = share(&fx, iscsi(BDEV)).await.unwrap();
            let destroy_sub = |nqn: String| {
                fx.svc.destroy_subsystem(Request::new(proto::DestroySubsystemRequest { nqn }))
            };
            let err = destroy_sub(reply.iqn.clone()).await.unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            assert!(
                err.message().contains("UnshareBdev") && err.message().contains(BDEV),
                "{err:?}"
            );
            assert!(fx.svc.lio().target_exists(&reply.iqn), "refused, so untouched");
            let unknown = destroy_sub("iqn.2019-05.io.vmcheck:nobody".into()).await.unwrap_err();
            assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
            fake_block_device(&fx.dir.path().join("sys"), "nvme1n1", 64 << 20, 512).unwrap();
            create(&fx, "aio:///dev/nvme1n1").await;
            let dup = share(
                &fx,
                proto::ShareBdevRequest {
                    iqn: Some(reply.iqn.clone()),
                    ..iscsi("aio:///dev/nvme1n1")
                },
            )
            .await
            .unwrap_err();
            assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
            let long = share(
                &fx,
                proto::ShareBdevRequest { iqn: Some("i".repeat(MAX_IQN_LEN + 1)), ..iscsi(BDEV) },
            )
            .await
            .unwrap_err();
            assert_eq!(long.code(), Code::InvalidArgument);
            assert_eq!(long.message(), "iqn is 224 bytes long; the limit is 223 bytes");
            unshare(&fx, BDEV).await.unwrap();
            assert_eq!(fx.svc.lio().fs().dump(), tests_empty());
        }

        /// The request's deadline holds for an iSCSI share: passed, nothing is made.
        #[tokio::test]
        async fn a_passed_deadline_makes_no_iscsi_share() {
            let fx = fx();
            create(&fx, BDEV).await;
            let mut req = Request::new(iscsi(BDEV));
            req.metadata_mut().insert("grpc-timeout", "1n".parse().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(1));
            let err = fx.svc.share_bdev(req).await.unwrap_err();
            assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
            assert_eq!(fx.svc.lio().fs().dump(), tests_empty());
            let listed = fx
                .svc
                .list_bdevs(Request::new(proto::ListBdevsRequest {}))
                .await
                .unwrap()
                .into_inner()
                .bdevs;
            assert!(!listed[0].claimed && listed[0].share_uri.is_empty(), "{listed:?}");
        }

        fn add_lun(iqn: &str, bdev: &str, lun: Option<u32>) -> proto::AddNamespaceRequest {
            proto::AddNamespaceRequest {
                iqn: iqn.into(),
                bdev: bdev.into(),
                nsid: lun,
                ..Default::default()
            }
        }

        fn remove_lun(iqn: &str, lun: u32) -> proto::RemoveNamespaceRequest {
            proto::RemoveNamespaceRequest { iqn: iqn.into(), nsid: lun, ..Default::default() }
        }

        const BDEV1: &str = "aio:///dev/nvme1n1";

        /// A second LUN on an iSCSI share (AddNamespace with iqn): its own backstore, claimed as
        /// "LUN 1 of <iqn>"; refused while taken; removed by RemoveNamespace or with the target.
        #[tokio::test]
        async fn a_second_lun_comes_and_goes() {
            let fx = fx();
            fake_block_device(&fx.dir.path().join("sys"), "nvme1n1", 64 << 20, 512).unwrap();
            create(&fx, BDEV).await;
            let b1 = create(&fx, BDEV1).await;
            let reply = share(&fx, iscsi(BDEV)).await.unwrap();
            let lio = fx.svc.lio();
            let ns = fx
                .svc
                .add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, None)))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (ns.nsid, ns.bdev.as_str(), ns.device_path.as_str(), ns.device_uuid.as_str()),
                (1, BDEV1, "/dev/nvme1n1", b1.uuid.as_str())
            );
            let luns: Vec<_> = lio.targets().unwrap()[0]
                .luns
                .iter()
                .map(|l| (l.lun, l.udev_path.clone()))
                .collect();
            assert_eq!(luns, [(0, "/dev/nvme0n1".to_string()), (1, "/dev/nvme1n1".to_string())]);
            let listed = fx
                .svc
                .list_bdevs(Request::new(proto::ListBdevsRequest {}))
                .await
                .unwrap()
                .into_inner()
                .bdevs;
            let b1 = listed.iter().find(|b| b.name == BDEV1).unwrap();
            assert_eq!(
                (b1.claimed_by.as_str(), b1.share_uri.as_str()),
                (CLAIMED_BY_ISCSI, ""),
                "a LUN, not a share"
            );
            let busy = destroy(&fx, BDEV1).await.unwrap_err();
            assert!(busy.message().contains(&format!("LUN 1 of {}", reply.iqn)), "{busy:?}");
            let again = fx
                .svc
                .add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, Some(2))))
                .await
                .unwrap_err();
            assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
            let lun0 =
                fx.svc.remove_namespace(Request::new(remove_lun(&reply.iqn, 0))).await.unwrap_err();
            assert_eq!(lun0.code(), Code::FailedPrecondition, "{lun0:?}");
            assert!(
                lun0.message().contains("UnshareBdev") && lun0.message().contains(BDEV),
                "{lun0:?}"
            );
            fx.svc.remove_namespace(Request::new(remove_lun(&reply.iqn, 1))).await.unwrap();
            assert_eq!(lio.targets().unwrap()[0].luns.len(), 1);
            assert_eq!(lio.backstores().unwrap().len(), 1, "LUN 1's backstore went with it");
            let gone =
                fx.svc.remove_namespace(Request::new(remove_lun(&reply.iqn, 1))).await.unwrap_err();
            assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
            // Unshare takes LUNs added later with the target and frees their bdevs.
            fx.svc.add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, Some(7)))).await.unwrap();
            unshare(&fx, BDEV).await.unwrap();
            assert_eq!(lio.fs().dump(), tests_empty());
            destroy(&fx, BDEV1).await.unwrap();
        }

        /// A hot-removed LUN 1 goes alone: the target keeps LUN 0 and its sessions; the other way
        /// round LUN 1 stays; the target goes with its last LUN.
        #[tokio::test]
        async fn hot_remove_takes_only_the_vanished_lun() {
            let fx = fx();
            fake_block_device(&fx.dir.path().join("sys"), "nvme1n1", 64 << 20, 512).unwrap();
            create(&fx, BDEV).await;
            create(&fx, BDEV1).await;
            let reply = share(&fx, iscsi(BDEV)).await.unwrap();
            fx.svc.add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, None))).await.unwrap();
            std::fs::remove_dir_all(fx.dir.path().join("sys/class/block/nvme1n1")).unwrap();
            let report = fx.svc.reap_vanished().await;
            assert!(
                report.len() == 1
                    && report[0].contains(&format!("removed from LUN 1 of {}", reply.iqn)),
                "{report:?}"
            );
            let t = &fx.svc.lio().targets().unwrap()[0];
            assert_eq!((t.luns.len(), t.luns[0].lun, t.enabled), (1, 0, true));
            let refused = fx
                .svc
                .add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, None)))
                .await
                .unwrap_err();
            assert!(
                refused.code() == Code::FailedPrecondition
                    && refused.message().contains("hot-removed"),
                "{refused:?}"
            );
            std::fs::remove_dir_all(fx.dir.path().join("sys/class/block/nvme0n1")).unwrap();
            fx.svc.reap_vanished().await;
            assert!(!fx.svc.lio().target_exists(&reply.iqn), "the target went with its last LUN");
            let after = fx
                .svc
                .add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, None)))
                .await
                .unwrap_err();
            assert!(
                after.code() == Code::FailedPrecondition && after.message().contains("UnshareBdev"),
                "{after:?}"
            );
            unshare(&fx, BDEV).await.unwrap();
            assert_eq!(fx.svc.lio().fs().dump(), tests_empty());
        }

        /// A LUN the kernel refuses, or one whose deadline passes between the backstore and the
        /// LUN, leaves nothing behind and the bdev free.
        #[tokio::test]
        async fn a_refused_or_late_lun_is_rolled_back() {
            let fx = fx();
            fake_block_device(&fx.dir.path().join("sys"), "nvme1n1", 64 << 20, 512).unwrap();
            create(&fx, BDEV).await;
            create(&fx, BDEV1).await;
            let reply = share(&fx, iscsi(BDEV)).await.unwrap();
            let before = fx.svc.lio().fs().dump();
            let name = reply.iqn.rsplit(':').next().unwrap().to_string();
            fx.svc.lio().fs().inject_fault(
                crate::target::configfs::Op::Symlink,
                &format!("lun_1/{name}_lun1"),
                Errno::ENODEV as i32,
            );
            let err = fx
                .svc
                .add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, None)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            assert_eq!(fx.svc.lio().fs().dump(), before, "rolled back");
            let late = fx.svc.lio().add_lun(
                &reply.iqn,
                1,
                Path::new("/dev/nvme1n1"),
                &Deadline::after_checks(1),
            );
            assert_eq!(late.unwrap_err().code(), Code::DeadlineExceeded);
            assert_eq!(
                fx.svc.lio().fs().dump(),
                before,
                "a deadline between the steps rolls back too"
            );
            let mut req = Request::new(add_lun(&reply.iqn, BDEV1, None));
            req.metadata_mut().insert("grpc-timeout", "1n".parse().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(1));
            assert_eq!(fx.svc.add_namespace(req).await.unwrap_err().code(), Code::DeadlineExceeded);
            let listed = fx
                .svc
                .list_bdevs(Request::new(proto::ListBdevsRequest {}))
                .await
                .unwrap()
                .into_inner()
                .bdevs;
            assert!(!listed.iter().find(|b| b.name == BDEV1).unwrap().claimed, "{listed:?}");
            fx.svc.add_namespace(Request::new(add_lun(&reply.iqn, BDEV1, None))).await.unwrap();
        }

        /// The hot-remove path took the target away: unshare still succeeds and forgets it.
        #[tokio::test]
        async fn unshare_after_the_luns_were_removed_for_a_vanished_device() {
            let fx = fx();
            create(&fx, BDEV).await;
            share(&fx, iscsi(BDEV)).await.unwrap();
            let removed = fx.svc.lio().remove_luns_backed_by(Path::new("/dev/nvme0n1")).unwrap();
            assert_eq!(removed.len(), 1);
            unshare(&fx, BDEV).await.unwrap();
            destroy(&fx, BDEV).await.unwrap();
            assert_eq!(fx.svc.lio().fs().dump(), tests_empty());
        }
    }
}
