//! What stands behind a bdev: a kernel block device (geometry from sysfs) or a RAM-backed file.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::uri::BdevUri;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// nvmet serves a file with the file's block size, capped at 4 KiB (`io-cmd-file.c`).
const MAX_FILE_BLOCK: u64 = 4096;

/// Size in blocks of a bdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub num_blocks: u64,
    pub blk_size: u32,
}

/// Where block devices are looked up and malloc files are made; both replaceable for tests.
#[derive(Debug, Clone)]
pub struct Backing {
    sysfs: PathBuf,
    malloc_dir: PathBuf,
    /// Where device nodes are: to say what a name that is not a block device is, and to write
    /// partition tables.
    dev_dir: PathBuf,
    /// Tests: disks are image files in `dev_dir`, and re-reading a partition table makes the
    /// partitions' sysfs entries and nodes here instead of in the kernel.
    fake_kernel: bool,
}

impl Backing {
    /// `sysfs` is the sysfs mount (`/sys`); `malloc_dir` should be on tmpfs.
    pub fn new(sysfs: impl Into<PathBuf>, malloc_dir: impl Into<PathBuf>) -> Self {
        Backing {
            sysfs: sysfs.into(),
            malloc_dir: malloc_dir.into(),
            dev_dir: "/dev".into(),
            fake_kernel: false,
        }
    }

    /// Tests: device nodes somewhere else than `/dev`.
    pub fn with_dev_dir(mut self, dev_dir: impl Into<PathBuf>) -> Self {
        self.dev_dir = dev_dir.into();
        self
    }

    /// Tests: see the `fake_kernel` field.
    pub fn with_fake_kernel(mut self) -> Self {
        self.fake_kernel = true;
        self
    }

    /// Whether `dev` is a partition (sysfs has a `partition` attribute for those).
    pub fn is_partition(&self, dev: &str) -> bool {
        self.sysfs_dir(dev).join("partition").exists()
    }

    /// Writes a partition table (or wipes one) on the disk `dev` and has the kernel re-read it.
    /// `parts` are the partitions the table holds, as (name, first byte, bytes).
    pub fn write_partition_table(
        &self,
        dev: &str,
        writes: &[(u64, Vec<u8>)],
        parts: &[(String, u64, u64)],
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let node = self.dev_dir.join(dev);
        let fail = |what: &str, err: &dyn std::fmt::Display| {
            Error::Internal(format!("{what} /dev/{dev}: {err}"))
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&node)
            .map_err(|e| fail("opening", &e))?;
        for (at, bytes) in writes {
            file.write_all_at(bytes, *at)
                .map_err(|e| fail("writing the partition table of", &e))?;
        }
        file.sync_all().map_err(|e| fail("syncing", &e))?;
        if self.fake_kernel {
            return self.fake_rescan(dev, parts);
        }
        nix::ioctl_none!(blkrrpart, 0x12, 95);
        // SAFETY: BLKRRPART takes no argument; the descriptor is an open block device.
        unsafe { blkrrpart(std::os::fd::AsRawFd::as_raw_fd(&file)) }.map_err(|errno| {
            let hint = if errno == nix::errno::Errno::EBUSY {
                " (a partition of it is open, e.g. in a namespace)"
            } else {
                ""
            };
            Error::FailedPrecondition(format!(
                "re-reading the partition table of /dev/{dev} (BLKRRPART): {errno}{hint}"
            ))
        })?;
        Ok(())
    }

    /// Whether the kernel shows the partition `dev`: in sysfs and as a device node.
    pub fn partition_ready(&self, dev: &str) -> bool {
        self.sysfs_dir(dev).exists() && self.dev_dir.join(dev).exists()
    }

    /// What the kernel would do on BLKRRPART, for tests: partitions of the old table go, those
    /// of the new one come (sysfs entry with its size, and an empty node).
    fn fake_rescan(&self, dev: &str, parts: &[(String, u64, u64)]) -> Result<()> {
        let io = |e: io::Error| Error::Internal(format!("fake rescan of {dev}: {e}"));
        for n in 1..=super::split::MAX_SPLITS as usize {
            let name = super::split::partition_name(dev, n);
            let _ = fs::remove_dir_all(self.sysfs_dir(&name));
            let _ = fs::remove_file(self.dev_dir.join(&name));
        }
        for (name, _, bytes) in parts {
            let dir = self.sysfs_dir(name);
            fs::create_dir_all(&dir).map_err(io)?;
            fs::write(dir.join("size"), format!("{}\n", bytes / SECTOR)).map_err(io)?;
            fs::write(dir.join("partition"), "1\n").map_err(io)?;
            fs::create_dir_all(self.sysfs.join("class/block").join(dev).join("queue"))
                .map_err(io)?;
            // A partition's queue is its disk's: one level up, as in sysfs.
            let queue = self.sysfs_dir(dev).join("queue/logical_block_size");
            if !queue.exists() {
                fs::write(&queue, "512\n").map_err(io)?;
            }
            fs::write(self.dev_dir.join(name), "").map_err(io)?;
        }
        Ok(())
    }

    /// The path nvmet opens (namespace `device_path`).
    pub fn device_path(&self, uri: &BdevUri) -> PathBuf {
        match uri {
            BdevUri::Aio { dev } => Path::new("/dev").join(dev),
            BdevUri::Malloc { name, .. } => self.malloc_dir.join(name),
        }
    }

    /// Whether the backing is still there: a hot-removed disk leaves sysfs at once.
    pub fn present(&self, uri: &BdevUri) -> bool {
        match uri {
            BdevUri::Aio { dev } => self.sysfs_dir(dev).exists(),
            BdevUri::Malloc { .. } => self.device_path(uri).is_file(),
        }
    }

    /// Files need buffered I/O in nvmet: tmpfs refuses O_DIRECT before Linux 6.6.
    pub fn buffered_io(uri: &BdevUri) -> bool {
        matches!(uri, BdevUri::Malloc { .. })
    }

    /// Inspects a block device, or makes a malloc file; the bdev's geometry.
    pub fn open(&self, uri: &BdevUri) -> Result<Geometry> {
        match uri {
            BdevUri::Aio { dev } => self.block_device(dev),
            BdevUri::Malloc { size_mb, .. } => self.make_malloc(&self.device_path(uri), *size_mb),
        }
    }

    /// Undoes [`Backing::open`]: a malloc file is deleted (its RAM freed).
    pub fn release(&self, uri: &BdevUri) -> Result<()> {
        match uri {
            BdevUri::Aio { .. } => Ok(()),
            BdevUri::Malloc { .. } => {
                let path = self.device_path(uri);
                match fs::remove_file(&path) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => Err(Error::Internal(
                        format!("removing malloc file {}: {err}", path.display()),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// The whole disks sysfs shows with a serial, as (name, serial, bytes), sorted by name: the
    /// serial from `device/serial` (NVMe: the controller's, padded with spaces) or `serial`
    /// (virtio-blk), trimmed. Partitions and hidden multipath path nodes are left out.
    pub fn disks(&self) -> Vec<(String, String, u64)> {
        let Ok(entries) = fs::read_dir(self.sysfs.join("class/block")) else { return Vec::new() };
        let mut disks: Vec<(String, String, u64)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let dir = e.path();
                let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
                if dir.join("partition").exists() || read("hidden").is_some_and(|h| h.trim() == "1")
                {
                    return None;
                }
                let serial = read("device/serial").or_else(|| read("serial"))?.trim().to_string();
                let sectors: u64 = read("size")?.trim().parse().ok()?;
                (!serial.is_empty()).then(|| (name, serial, sectors.saturating_mul(SECTOR)))
            })
            .collect();
        disks.sort();
        disks
    }

    /// Malloc files already there, e.g. from an earlier run of the daemon.
    pub fn malloc_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.malloc_dir) else { return Vec::new() };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        files
    }

    fn sysfs_dir(&self, dev: &str) -> PathBuf {
        self.sysfs.join("class/block").join(dev)
    }

    fn block_device(&self, dev: &str) -> Result<Geometry> {
        let dir = self.sysfs_dir(dev);
        // The fake sysfs keeps partitions beside their disk, not inside it.
        let parent_queue = (self.fake_kernel && self.is_partition(dev)).then(|| {
            let disk = dev.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('p');
            self.sysfs_dir(disk).join("queue")
        });
        if !dir.exists() {
            // Something of that name that is not a block device: say what it is.
            let node = self.dev_dir.join(dev);
            if let Some(kind) =
                node.symlink_metadata().ok().and_then(|meta| not_a_block_device(&meta))
            {
                return Err(Error::InvalidArgument(format!(
                    "/dev/{dev} is {kind}, not a block device"
                )));
            }
            return Err(Error::NotFound(format!(
                "block device /dev/{dev} not found ({} is missing)",
                dir.display()
            )));
        }
        let sectors: u64 = read_number(&dir.join("size"))?;
        // A partition has no queue/ of its own; its parent disk's is one level up.
        let queue = match parent_queue {
            Some(queue) => queue,
            None if dir.join("queue").exists() => dir.join("queue"),
            None => dir.join("../queue"),
        };
        let blk_size: u32 = read_number(&queue.join("logical_block_size"))?;
        if sectors == 0 {
            return Err(Error::FailedPrecondition(format!("block device /dev/{dev} has size 0")));
        }
        if blk_size < SECTOR as u32 || !blk_size.is_power_of_two() {
            return Err(Error::Internal(format!(
                "block device /dev/{dev} reports logical block size {blk_size}"
            )));
        }
        let bytes = sectors.checked_mul(SECTOR).ok_or_else(|| {
            Error::Internal(format!("block device /dev/{dev} reports {sectors} sectors"))
        })?;
        Ok(Geometry { num_blocks: bytes / u64::from(blk_size), blk_size })
    }

    fn make_malloc(&self, path: &Path, size_mb: u64) -> Result<Geometry> {
        let internal = |what: &str, err: &dyn std::fmt::Display| {
            Error::Internal(format!("{what} {}: {err}", path.display()))
        };
        fs::create_dir_all(&self.malloc_dir)
            .map_err(|e| internal("creating the directory of", &e))?;
        let bytes = size_mb * MIB;
        // The file is sparse: without this check a too-large bdev fails only on write.
        let fs_stat = nix::sys::statvfs::statvfs(&self.malloc_dir)
            .map_err(|e| internal("statvfs for", &e))?;
        let free = fs_stat.blocks_available().saturating_mul(fs_stat.fragment_size());
        if bytes > free {
            return Err(Error::InvalidArgument(format!(
                "size_mb={size_mb} does not fit: {} MiB free in {}",
                free / MIB,
                self.malloc_dir.display()
            )));
        }
        let file = match fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(format!(
                    "malloc file {} exists already (left from an earlier run?)",
                    path.display()
                )));
            }
            Err(err) => return Err(internal("creating", &err)),
        };
        let geometry = file.set_len(bytes).and_then(|()| file.metadata()).map(|meta| {
            let blk_size = meta.blksize().clamp(SECTOR, MAX_FILE_BLOCK) as u32;
            Geometry { num_blocks: bytes / u64::from(blk_size), blk_size }
        });
        geometry.map_err(|err| {
            let _ = fs::remove_file(path);
            internal("sizing", &err)
        })
    }
}

/// What a device node is, when it is not a block device.
fn not_a_block_device(meta: &fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    Some(if t.is_block_device() {
        return None;
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a regular file"
    })
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path)
        .map_err(|err| Error::Internal(format!("reading {}: {err}", path.display())))?;
    text.trim().parse().map_err(|_| {
        Error::Internal(format!("{} holds {:?}, not a number", path.display(), text.trim()))
    })
}

/// A fake sysfs for tests: `class/block/<dev>/{size, queue/logical_block_size}` (and `serial`
/// with [`fake_serial`]).
pub fn fake_block_device(sysfs: &Path, dev: &str, bytes: u64, blk_size: u32) -> io::Result<()> {
    let dir = sysfs.join("class/block").join(dev);
    fs::create_dir_all(dir.join("queue"))?;
    fs::write(dir.join("size"), format!("{}\n", bytes / SECTOR))?;
    fs::write(dir.join("queue/logical_block_size"), format!("{blk_size}\n"))
}

/// Tests: gives a fake block device (see [`fake_block_device`]) a serial, as virtio-blk shows it.
pub fn fake_serial(sysfs: &Path, dev: &str, serial: &str) -> io::Result<()> {
    fs::write(sysfs.join("class/block").join(dev).join("serial"), format!("{serial}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn setup() -> (tempfile::TempDir, Backing) {
        let dir = tempfile::tempdir().unwrap();
        let backing = Backing::new(dir.path().join("sys"), dir.path().join("malloc"));
        (dir, backing)
    }

    #[test]
    fn block_device_geometry_comes_from_sysfs() {
        let (dir, backing) = setup();
        fake_block_device(&dir.path().join("sys"), "vdb", 64 * MIB, 4096).unwrap();
        let uri = BdevUri::Aio { dev: "vdb".into() };
        assert_eq!(backing.open(&uri).unwrap(), Geometry { num_blocks: 16384, blk_size: 4096 });
        assert!(backing.present(&uri));
        assert_eq!(backing.device_path(&uri), Path::new("/dev/vdb"));
        fs::remove_dir_all(dir.path().join("sys/class/block/vdb")).unwrap();
        assert!(!backing.present(&uri));
    }

    #[test]
    fn missing_or_empty_block_devices_are_refused() {
        let (dir, backing) = setup();
        let err = backing.open(&BdevUri::Aio { dev: "vdz".into() }).unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.to_string().contains("/dev/vdz"), "{err}");
        fake_block_device(&dir.path().join("sys"), "vdc", 0, 512).unwrap();
        let err = backing.open(&BdevUri::Aio { dev: "vdc".into() }).unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    }

    /// `aio:///dev/null` exists but is not a block device: INVALID_ARGUMENT saying what it is.
    #[test]
    fn a_node_that_is_not_a_block_device_says_what_it_is() {
        let (dir, backing) = setup();
        let err = backing.open(&BdevUri::Aio { dev: "null".into() }).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert_eq!(err.to_string(), "/dev/null is a character device, not a block device");
        let dev = dir.path().join("dev");
        fs::create_dir_all(dev.join("subdir")).unwrap();
        fs::write(dev.join("file"), "").unwrap();
        std::os::unix::fs::symlink("file", dev.join("link")).unwrap();
        let backing = backing.with_dev_dir(&dev);
        for (name, kind) in
            [("subdir", "a directory"), ("file", "a regular file"), ("link", "a symbolic link")]
        {
            let err = backing.open(&BdevUri::Aio { dev: name.into() }).unwrap_err();
            assert_eq!(
                (err.code(), err.to_string()),
                (Code::InvalidArgument, format!("/dev/{name} is {kind}, not a block device"))
            );
        }
        assert_eq!(
            backing.open(&BdevUri::Aio { dev: "absent".into() }).unwrap_err().code(),
            Code::NotFound
        );
    }

    #[test]
    fn malloc_files_are_made_sized_and_released() {
        let (_dir, backing) = setup();
        let uri = BdevUri::Malloc { name: "m0".into(), size_mb: 4 };
        let geometry = backing.open(&uri).unwrap();
        assert_eq!(u64::from(geometry.blk_size) * geometry.num_blocks, 4 * MIB);
        assert_eq!(fs::metadata(backing.device_path(&uri)).unwrap().len(), 4 * MIB);
        assert!(backing.present(&uri));
        assert_eq!(backing.open(&uri).unwrap_err().code(), Code::AlreadyExists);
        assert_eq!(backing.malloc_files().len(), 1);
        backing.release(&uri).unwrap();
        assert!(!backing.present(&uri));
        assert!(backing.malloc_files().is_empty());
    }

    #[test]
    fn malloc_larger_than_free_space_is_refused() {
        let (dir, backing) = setup();
        let stat = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        if stat.blocks_available() * stat.fragment_size() >= crate::target::uri::MAX_MALLOC_MB * MIB
        {
            return; // a filesystem this large cannot show the refusal
        }
        let err = backing
            .open(&BdevUri::Malloc {
                name: "big".into(),
                size_mb: crate::target::uri::MAX_MALLOC_MB,
            })
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains("size_mb=1048576"), "{err}");
        assert!(backing.malloc_files().is_empty());
    }
}
