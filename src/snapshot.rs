//! Saved machine states: the first run of a default image boots each machine until its agent
//! answers and saves that state; later runs restore it instead of booting.
//!
//! A snapshot holds the machine WITHOUT its disks: QEMU's emulated `nvme` device cannot be
//! migrated ("State blocked by non-migratable device"), and almost every scenario has NVMe disks.
//! So a machine that may use a snapshot always starts disk-less (restored, or booted to build the
//! snapshot) and gets the disks it has plugged now hot-added (each in its own fixed PCI slot, the
//! same as a cold boot gives it), once its agent answers. The disks' contents therefore never meet
//! a snapshot: a restore over disks with data (a restart within a scenario) is as consistent as a
//! cold boot.
//!
//! The key is the SHA-256 of `qemu --version` and the machine's disk-less QEMU command line with
//! the run's own paths (sockets) left out: image files (content-addressed paths), memory, CPUs,
//! NICs and their MACs, control NIC, balloon, kernel parameters, extra arguments. A snapshot
//! lives in `$VMCHECK_CACHE/snapshots/<key>/` (`state`, the migration stream, and `meta.json`).
//! It is built in a staging directory beside it and renamed into place, under an exclusive
//! `flock` on `<key>.lock`: a run that finds the lock taken boots its machine afresh and builds
//! nothing. On use the meta is checked (QEMU version, key, inputs, the state file's length); a
//! snapshot that fails the check, that QEMU refuses, or whose guest does not answer soon after
//! the restore is deleted and the machine boots afresh (and builds it again).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::qemu::{Boot, NicLink, QemuSpec};

/// Where the snapshots of a cache live, and the QEMU they were made with.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub qemu_version: String,
    /// The snapshots this store's driver uses, held against `vmcheck cache prune` until the
    /// store is dropped (with the driver), by key.
    held: Arc<Mutex<HashMap<String, crate::cache::Hold>>>,
}

/// What `meta.json` says of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub key: String,
    pub qemu_version: String,
    /// The key's command line, one argument a line.
    pub inputs: String,
    pub state_bytes: u64,
    /// Seconds from the start of the boot until the agent answered, when it was built.
    pub boot_secs: f64,
}

/// A snapshot's key and the text it was hashed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub key: String,
    pub inputs: String,
}

impl Key {
    /// The first 16 hex digits, for the log.
    pub fn short(&self) -> &str {
        &self.key[..16]
    }
}

/// A snapshot being built: holds the key's lock and the staging directory.
pub struct Build {
    pub key: Key,
    _lock: nix::fcntl::Flock<fs::File>,
    staging: tempfile::TempDir,
}

impl Build {
    /// Where the migration stream is written.
    pub fn state_path(&self) -> PathBuf {
        self.staging.path().join("state")
    }
}

impl Store {
    /// The store of `cache_dir` for a QEMU whose `--version` said `qemu_version`.
    pub fn with_version(cache_dir: &Path, qemu_version: String) -> Store {
        Store { dir: cache_dir.join("snapshots"), qemu_version, held: Arc::default() }
    }

    /// Holds the snapshot of `key` (there or not yet) in use until this store is dropped, so
    /// that no prune removes it meanwhile; records the use. Called before `find`.
    pub fn hold(&self, key: &Key) -> Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if !held.contains_key(&key.key) {
            held.insert(key.key.clone(), crate::cache::hold(&self.path(key))?);
        }
        Ok(())
    }

    /// The key of a machine's disk-less spec; `None` for a machine that cannot have a snapshot
    /// (a NixOS start script, whose command line vmcheck does not build).
    pub fn key(&self, spec: &QemuSpec) -> Option<Key> {
        let inputs = key_inputs(spec)?;
        let mut h = Sha256::new();
        h.update(self.qemu_version.as_bytes());
        h.update(b"\n");
        h.update(inputs.as_bytes());
        Some(Key { key: hex::encode(h.finalize()), inputs })
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(&key.key)
    }

    /// The state file of a complete snapshot of `key`: `Ok(None)` when there is none, an error
    /// saying why when there is one that must not be trusted.
    pub fn find(&self, key: &Key) -> Result<Option<PathBuf>> {
        let dir = self.path(key);
        if !dir.exists() {
            return Ok(None);
        }
        let meta: Meta = fs::read(dir.join("meta.json"))
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice(&b).map_err(anyhow::Error::from))
            .context("meta.json is unreadable")?;
        if meta.key != key.key || meta.inputs != key.inputs {
            return Err(anyhow!("meta.json names other inputs (key {})", meta.key));
        }
        if meta.qemu_version != self.qemu_version {
            return Err(anyhow!(
                "made by {:?}, this is {:?}",
                meta.qemu_version,
                self.qemu_version
            ));
        }
        let state = dir.join("state");
        let bytes = fs::metadata(&state).map(|m| m.len()).context("the state file is missing")?;
        if bytes != meta.state_bytes {
            return Err(anyhow!(
                "the state file has {bytes} bytes, meta.json says {}",
                meta.state_bytes
            ));
        }
        Ok(Some(state))
    }

    /// Starts building `key`, unless another run holds its lock (then `None`: boot without one).
    pub fn try_build(&self, key: &Key) -> Result<Option<Build>> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let lock_path = self.dir.join(format!("{}.lock", key.key));
        let file =
            fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(anyhow!("locking {}: {e}", lock_path.display())),
        };
        // Holding the lock, any staging directory of this key is a dead run's (kill -9).
        let prefix = format!(".staging-{}-", &key.key[..16]);
        for entry in fs::read_dir(&self.dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let staging = tempfile::Builder::new().prefix(&prefix).tempdir_in(&self.dir)?;
        Ok(Some(Build { key: key.clone(), _lock: lock, staging }))
    }

    /// Deletes the snapshot of `key` (it failed a check or a restore). Only under its lock, so
    /// no other run is renaming a new one into place meanwhile: a run that cannot take the lock
    /// leaves it (the run holding the lock replaces it).
    pub fn discard(&self, key: &Key) -> Result<()> {
        match self.try_build(key)? {
            Some(build) => self.discard_locked(&build),
            None => Ok(()),
        }
    }

    fn discard_locked(&self, build: &Build) -> Result<()> {
        let dir = self.path(&build.key);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    /// Puts a built snapshot in place: writes the meta, then renames the staging directory.
    pub fn finish(&self, build: Build, boot_secs: f64) -> Result<u64> {
        let state_bytes =
            fs::metadata(build.state_path()).context("the state file was not written")?.len();
        let meta = Meta {
            key: build.key.key.clone(),
            qemu_version: self.qemu_version.clone(),
            inputs: build.key.inputs.clone(),
            state_bytes,
            boot_secs,
        };
        fs::write(build.staging.path().join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
        self.discard_locked(&build)?;
        let staging = build.staging.path().to_path_buf();
        fs::rename(&staging, self.path(&build.key))
            .with_context(|| format!("renaming {} into place", staging.display()))?;
        // The directory moved: keep the TempDir from deleting anything (its path is gone).
        let _ = build.staging.keep();
        // Written: keep the cache under its bound (never removing a snapshot a run holds).
        let cache_dir = self.dir.parent().unwrap_or(&self.dir);
        match crate::cache::bound(cache_dir, false) {
            Ok(Some(pruned)) => crate::log::line(&crate::cache::bound_summary(&pruned)),
            Ok(None) => {}
            Err(e) => crate::log::line(&format!("cache: not kept under its bound: {e:#}")),
        }
        Ok(state_bytes)
    }
}

/// The text a snapshot's key is hashed from: the disk-less kernel-boot command line, one argument
/// a line, with the run's socket paths replaced by placeholders.
pub fn key_inputs(spec: &QemuSpec) -> Option<String> {
    if !matches!(spec.boot, Boot::Kernel { .. }) {
        return None;
    }
    let mut s = spec.clone();
    s.disks.clear();
    s.qmp_socket = PathBuf::from("@qmp");
    s.qga_socket = PathBuf::from("@qga");
    // The NICs' links (fds of this process, or paths) are the run's: the key sees placeholders
    // (as it did when NICs were linked by socket paths, so earlier snapshots keep their keys).
    for nic in &mut s.nics {
        nic.link = NicLink::Unix {
            local: PathBuf::from(format!("@nic-{}", nic.vlan)),
            remote: PathBuf::from(format!("@switch-{}", nic.vlan)),
        };
    }
    let args = s.kernel_boot_args().ok()?;
    Some(args.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::{Disk, DiskKind, Nic, NicLink};

    fn spec(run: &str) -> QemuSpec {
        QemuSpec {
            name: "target".into(),
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel: crate::accel::Accel::Tcg,
            boot: Boot::Kernel {
                kernel: "/c/images/target-ab/vmlinuz".into(),
                initrd: "/c/images/target-ab/initrd".into(),
                tools: Some("/c/images/target-ab/tools.img".into()),
                append: "quiet".into(),
            },
            memory_mib: 512,
            cpus: 1,
            disks: vec![Disk {
                id: "disk0".into(),
                path: format!("{run}/disk0.img").into(),
                serial: "s0".into(),
                kind: DiskKind::Nvme,
                pci_slot: Some(8),
                rerror: None,
                werror: None,
            }],
            nics: vec![Nic {
                vlan: 1,
                mac: "52:54:00:12:01:01".into(),
                address: "192.168.1.1".parse().unwrap(),
                prefix_len: 24,
                link: NicLink::Unix {
                    local: format!("{run}/net/target-vlan1.sock").into(),
                    remote: format!("{run}/net/switch-vlan1.sock").into(),
                },
            }],
            control: None,
            qmp_socket: format!("{run}/qmp.sock").into(),
            qga_socket: format!("{run}/qga.sock").into(),
            balloon: None,
            kernel_params: vec![],
            extra_args: vec![],
        }
    }

    fn store() -> Store {
        Store::with_version(Path::new("/nonexistent"), "QEMU emulator version 10.0.2".into())
    }

    #[test]
    fn the_key_ignores_run_paths_and_disks_but_not_the_machine() {
        let s = store();
        let a = s.key(&spec("/tmp/run-a")).unwrap();
        let mut other_run = spec("/tmp/run-b");
        other_run.disks.clear();
        assert_eq!(a, s.key(&other_run).unwrap());
        assert!(!a.inputs.contains("/tmp/run-a"), "{}", a.inputs);
        let mut more_memory = spec("/tmp/run-a");
        more_memory.memory_mib = 1024;
        assert_ne!(a.key, s.key(&more_memory).unwrap().key);
        let mut other_mac = spec("/tmp/run-a");
        other_mac.nics[0].mac = "52:54:00:12:01:02".into();
        assert_ne!(a.key, s.key(&other_mac).unwrap().key);
        // Another recipe is another content-addressed image directory, so another key.
        for (initrd, tools) in [
            ("/c/images/with-tgt-cd/initrd", "/c/images/target-ab/tools.img"),
            ("/c/images/target-ab/initrd", "/c/images/with-tgt-cd/tools.img"),
        ] {
            let mut other_image = spec("/tmp/run-a");
            other_image.boot = Boot::Kernel {
                kernel: "/c/images/target-ab/vmlinuz".into(),
                initrd: initrd.into(),
                tools: Some(tools.into()),
                append: "quiet".into(),
            };
            assert_ne!(a.key, s.key(&other_image).unwrap().key, "{initrd} {tools}");
        }
        let newer = Store { qemu_version: "QEMU emulator version 10.1.0".into(), ..store() };
        assert_ne!(a.key, newer.key(&spec("/tmp/run-a")).unwrap().key);
        let mut script = spec("/tmp/run-a");
        script.boot =
            Boot::StartScript { path: "/nix/run-vm".into(), kernel_params: String::new() };
        assert_eq!(s.key(&script), None);
    }

    #[test]
    fn a_snapshot_is_found_only_when_complete() {
        let cache = tempfile::tempdir().unwrap();
        let s = Store::with_version(cache.path(), store().qemu_version);
        let key = s.key(&spec("/r")).unwrap();
        assert!(s.find(&key).unwrap().is_none());
        let build = s.try_build(&key).unwrap().unwrap();
        // A second builder of the same key does not get the lock.
        assert!(s.try_build(&key).unwrap().is_none());
        // A dead run's staging directory of the same key is removed by the next builder.
        let dead = s.dir.join(format!(".staging-{}-dead", &key.key[..16]));
        fs::create_dir_all(&dead).unwrap();
        fs::write(build.state_path(), b"QEVM....").unwrap();
        // Nothing is visible before it is finished.
        assert!(s.find(&key).unwrap().is_none());
        assert_eq!(s.finish(build, 1.0).unwrap(), 8);
        let state = s.find(&key).unwrap().unwrap();
        drop(s.try_build(&key).unwrap().unwrap());
        assert!(!dead.exists());
        // A truncated state file is refused, with the reason.
        fs::write(&state, b"QE").unwrap();
        let e = s.find(&key).unwrap_err();
        assert!(format!("{e:#}").contains("2 bytes"), "{e:#}");
        s.discard(&key).unwrap();
        assert!(s.find(&key).unwrap().is_none());
        // Garbage meta is refused too.
        fs::create_dir_all(s.dir.join(&key.key)).unwrap();
        fs::write(s.dir.join(&key.key).join("meta.json"), b"{").unwrap();
        assert!(s.find(&key).is_err());
        // Only the lock files and nothing half-built are left after a discard.
        s.discard(&key).unwrap();
        let left: Vec<_> = fs::read_dir(&s.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [format!("{}.lock", key.key)]);
    }

    #[test]
    fn a_snapshot_a_driver_holds_survives_a_prune() {
        let cache = tempfile::tempdir().unwrap();
        let policy = crate::cache::Policy { max_bytes: Some(0), ..Default::default() };
        let prune = || crate::cache::prune(cache.path(), &policy, None, false).unwrap();
        let s = Store::with_version(cache.path(), store().qemu_version);
        let key = s.key(&spec("/r")).unwrap();
        // As a machine's start does: hold the key, look it up, build it.
        s.hold(&key).unwrap();
        assert!(s.find(&key).unwrap().is_none());
        let build = s.try_build(&key).unwrap().unwrap();
        fs::write(build.state_path(), b"QEVM....").unwrap();
        s.finish(build, 1.0).unwrap();
        // A bound of 0 bytes would remove everything: the held snapshot stays, said to be held.
        let pruned = prune();
        assert!(pruned.removed.is_empty(), "{pruned:?}");
        assert_eq!(pruned.held.len(), 1);
        assert!(s.find(&key).unwrap().is_some());
        let listed = crate::cache::list(cache.path()).unwrap();
        assert!(listed[0].in_use && listed[0].bytes > 0, "{listed:?}");
        // A second store (another run) holding it too; dropping the first does not free it.
        let other = Store::with_version(cache.path(), store().qemu_version);
        other.hold(&key).unwrap();
        drop(s);
        assert!(prune().removed.is_empty());
        // Nobody holds it: it goes.
        drop(other);
        let pruned = prune();
        assert_eq!(pruned.removed.len(), 1, "{pruned:?}");
        let s = Store::with_version(cache.path(), store().qemu_version);
        assert!(s.find(&key).unwrap().is_none());
        assert!(!crate::cache::use_file(&s.path(&key)).exists());
    }
}
