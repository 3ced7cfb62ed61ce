//! Default images without Nix: a Debian kernel, and per role an initramfs and a read-only tools
//! disk, assembled from the host's packages into a content-addressed cache (`$VMCHECK_CACHE`,
//! default `~/.cache/vmcheck`).
//!
//! The kernel package is fetched with `apt-get download` and unpacked with `dpkg -x`, never
//! installed; its bzImage's xz payload is unpacked once into `vmlinux`, which QEMU boots through
//! the kernel's PVH entry point (no decompression in the guest, which costs seconds under TCG).
//! Each initramfs holds only what boot needs: busybox (init, shell), the guest agent with its
//! libraries, the role's kernel modules with their dependencies in load order. The role's tools
//! (lsblk; nvme-cli, fio, open-iscsi; the project's own `vmcheck-target`) with the libraries `ldd`
//! names go onto an ext4 image (`mke2fs -d`, no root needed) that the guest mounts read-only at
//! `/tools`; the initramfs holds a symlink at each tool's and library's usual path into `/tools`.
//! An image is rebuilt only when the hash of its inputs changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::config::Role;

/// Bump when the layout of an image changes, so every cached image is rebuilt.
const BUILDER_VERSION: &str = "vmcheck-images-4";
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

const RC: &str = include_str!("images/rc.sh");
const QGA: &str = include_str!("images/qga.sh");
const TARGET: &str = include_str!("images/target.sh");
const INITTAB: &str = include_str!("images/inittab");
const ISCSID: &str = include_str!("images/iscsid.sh");
const ISCSID_CONF: &str = include_str!("images/iscsid.conf");

/// Host tools the builder runs, with the Debian package that provides each.
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg", "dpkg"),
    ("depmod", "kmod"),
    ("cpio", "cpio"),
    ("ldd", "libc-bin"),
    ("mke2fs", "e2fsprogs"),
    ("xz", "xz-utils"),
];

/// Files that go into the guest, with their Debian package.
const BUSYBOX: (&str, &str) = ("/bin/busybox", "busybox-static");
/// In the initramfs: the agent must answer without the tools disk.
const BOOT_BINARIES: &[(&str, &str)] = &[("/usr/sbin/qemu-ga", "qemu-guest-agent")];
/// On the tools disk, for every role.
const COMMON_BINARIES: &[(&str, &str)] = &[("/usr/bin/lsblk", "util-linux")];
const INITIATOR_BINARIES: &[(&str, &str)] =
    &[("/usr/sbin/nvme", "nvme-cli"), ("/usr/bin/fio", "fio"), ("/usr/sbin/iscsiadm", "open-iscsi"), ("/usr/sbin/iscsid", "open-iscsi")];

/// ext4 reads the tools disk (crc32c_generic, for its metadata checksums, is in both roles).
const COMMON_MODULES: &[&str] = &["virtio_pci", "virtio_net", "virtio_console", "virtio_blk", "virtio_balloon", "nvme", "ext4"];
/// nvmet for NVMe-oF; LIO (core, the block backstore, the iSCSI fabric) for iSCSI. Both iSCSI
/// ends allocate a crc32c hash for every connection (digests or not) and fail the login without
/// one: crc32c_generic, since a TCG CPU may lack SSE4.2 for crc32c-intel.
const TARGET_MODULES: &[&str] =
    &["configfs", "nvmet", "nvmet-tcp", "crc32c_generic", "target_core_mod", "target_core_iblock", "iscsi_target_mod"];
/// nvme-tcp for NVMe-oF; the iSCSI initiator (libiscsi and scsi_transport_iscsi come as its
/// dependencies) and SCSI disks.
const INITIATOR_MODULES: &[&str] = &["nvme-tcp", "crc32c_generic", "iscsi_tcp", "libiscsi", "scsi_transport_iscsi", "sd_mod"];

/// Where the guest mounts the tools disk; the serial by which it finds it.
pub const TOOLS_MOUNT: &str = "/tools";
pub const TOOLS_SERIAL: &str = "vmcheck-tools";

/// A kernel, the initramfs and the tools disk of one role, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub role: Role,
    /// The uncompressed `vmlinux` with a PVH entry point, else the package's bzImage.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A raw ext4 image, attached read-only (`QemuSpec::tools_disk_args`), mounted at `/tools`.
    pub tools: PathBuf,
    /// The inputs' hash: the name of the image in the cache.
    pub hash: String,
}

/// The image builder and its cache.
#[derive(Debug, Clone)]
pub struct Images {
    pub cache_dir: PathBuf,
    /// The in-guest target daemon to put into the target image.
    pub target_daemon: Option<PathBuf>,
    /// Print what is being done (to stderr).
    pub verbose: bool,
}

impl Images {
    /// The default cache: `$VMCHECK_CACHE`, else the user's cache directory.
    pub fn from_env() -> Result<Images> {
        let cache_dir = match std::env::var_os("VMCHECK_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => dirs::cache_dir().ok_or_else(|| anyhow!("no user cache directory; set VMCHECK_CACHE"))?.join("vmcheck"),
        };
        Ok(Images { cache_dir, target_daemon: find_target_daemon(), verbose: true })
    }

    fn say(&self, what: &str) {
        if self.verbose {
            eprintln!("images: {what}");
        }
    }

    /// Builds (or finds in the cache) the image of `role`.
    pub fn ensure(&self, role: Role) -> Result<Image> {
        fs::create_dir_all(&self.cache_dir).with_context(|| format!("creating cache {}", self.cache_dir.display()))?;
        // One builder at a time per cache; a second run waits, then finds the image built.
        let _lock = lock_file(&self.cache_dir.join("lock"))?;
        check_host_tools()?;
        let kernel = self.ensure_kernel()?;
        let inputs = self.inputs(role, &kernel)?;
        let hash = inputs.hash();
        let dir = self.cache_dir.join("images").join(format!("{}-{}", role, &hash[..16]));
        let image = Image {
            role,
            kernel: kernel.boot_image().to_path_buf(),
            initrd: dir.join("initrd"),
            tools: dir.join("tools.img"),
            hash: hash.clone(),
        };
        if image.initrd.exists() && image.tools.exists() {
            self.say(&format!("{role} image up to date ({})", &hash[..16]));
            return Ok(image);
        }
        self.say(&format!(
            "building the {role} image ({} boot files, {} tools files, kernel {})",
            inputs.files.len(),
            inputs.tools.len() + inputs.own.len(),
            kernel.version
        ));
        let staging = tempfile::Builder::new().prefix(".staging-").tempdir_in(&self.cache_dir)?;
        let root = staging.path().join("root");
        let tools_root = staging.path().join("tools");
        assemble(&root, &tools_root, role, &inputs, &kernel)?;
        let out = staging.path().join("initrd");
        write_cpio(&root, &out)?;
        let tools_out = staging.path().join("tools.img");
        write_ext4(&tools_root, &tools_out)?;
        let size = fs::metadata(&out)?.len();
        let tools_size = fs::metadata(&tools_out)?.len();
        fs::create_dir_all(dir.parent().unwrap_or(&self.cache_dir))?;
        let tmp_dir = staging.path().join("out");
        fs::create_dir(&tmp_dir)?;
        fs::rename(&out, tmp_dir.join("initrd"))?;
        fs::rename(&tools_out, tmp_dir.join("tools.img"))?;
        fs::write(tmp_dir.join("inputs.txt"), inputs.describe())?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp_dir, &dir).with_context(|| format!("moving the image into {}", dir.display()))?;
        self.say(&format!(
            "{role} image built: {} (initramfs {:.1} MiB, tools disk {:.1} MiB)",
            dir.display(),
            size as f64 / 1048576.0,
            tools_size as f64 / 1048576.0
        ));
        Ok(image)
    }

    /// The kernel package, downloaded and unpacked once per version.
    fn ensure_kernel(&self) -> Result<Kernel> {
        let (package, version) = self.resolve_kernel()?;
        let dir = self.cache_dir.join("kernel").join(format!("{package}_{version}"));
        if !dir.join("done").exists() {
            self.say(&format!("fetching {package} {version} (apt-get download, dpkg -x)"));
            fs::create_dir_all(dir.parent().unwrap())?;
            let work = tempfile::Builder::new().prefix(".kernel-").tempdir_in(&self.cache_dir)?;
            run(Command::new("apt-get").args(["download", &format!("{package}={version}")]).current_dir(work.path()))
                .with_context(|| format!("downloading {package}; is the package list current? (apt-get update)"))?;
            let deb = fs::read_dir(work.path())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?;
            let unpacked = work.path().join("x");
            run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
            let kver = single_dir_name(&unpacked.join("lib/modules"))?;
            run(Command::new("depmod").arg("-b").arg(&unpacked).arg(&kver))?;
            fs::write(unpacked.join("done"), &kver)?;
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&unpacked, &dir)?;
        }
        let kver = fs::read_to_string(dir.join("done"))?.trim().to_string();
        let vmlinuz = dir.join(format!("boot/vmlinuz-{kver}"));
        // The bzImage unpacked once on the host: booted through PVH, the guest skips
        // decompressing it (about 3 s under TCG). A kernel without PVH boots as a bzImage.
        let vmlinux = dir.join(format!("boot/vmlinux-{kver}"));
        let pvh_marker = dir.join("pvh");
        if !pvh_marker.exists() {
            let pvh = match extract_vmlinux(&vmlinuz, &vmlinux) {
                Ok(true) => "yes",
                Ok(false) => "no",
                Err(e) => {
                    self.say(&format!("no vmlinux from {}: {e:#}; booting the bzImage", vmlinuz.display()));
                    "no"
                }
            };
            if pvh == "no" {
                let _ = fs::remove_file(&vmlinux);
            }
            fs::write(&pvh_marker, pvh)?;
        }
        let pvh = fs::read_to_string(&pvh_marker)?.trim() == "yes";
        Ok(Kernel {
            vmlinux: pvh.then_some(vmlinux),
            vmlinuz,
            modules: dir.join("lib/modules").join(&kver),
            version: kver,
            package: format!("{package}={version}"),
        })
    }

    /// The kernel package and version apt offers. Asking apt-cache costs about a second, so the
    /// answer is kept until apt's package lists change (`apt-get update` rewrites them).
    fn resolve_kernel(&self) -> Result<(String, String)> {
        let wanted = std::env::var("VMCHECK_KERNEL_PACKAGE").ok();
        let lists = fs::metadata("/var/lib/apt/lists").ok().and_then(|m| m.modified().ok());
        let key = format!("{wanted:?} {lists:?}");
        let memo = self.cache_dir.join("kernel-resolution");
        if let Ok(text) = fs::read_to_string(&memo) {
            let lines: Vec<&str> = text.lines().collect();
            if let [k, package, version] = lines.as_slice() {
                if *k == key && lists.is_some() {
                    return Ok((package.to_string(), version.to_string()));
                }
            }
        }
        let package = match wanted {
            Some(p) => p,
            None => resolve_kernel_package()?,
        };
        let version = package_candidate_version(&package)?;
        let _ = fs::write(&memo, format!("{key}\n{package}\n{version}\n"));
        Ok((package, version))
    }

    /// Everything that decides what the image holds.
    fn inputs(&self, role: Role, kernel: &Kernel) -> Result<Inputs> {
        let mut binaries: Vec<(&str, &str)> = COMMON_BINARIES.to_vec();
        if role == Role::Initiator {
            binaries.extend_from_slice(INITIATOR_BINARIES);
        }
        let mut files = BTreeSet::new();
        files.insert(PathBuf::from(BUSYBOX.0));
        require_file(BUSYBOX.0, BUSYBOX.1)?;
        for (path, package) in BOOT_BINARIES {
            require_file(path, package)?;
            files.insert(PathBuf::from(path));
            files.extend(shared_libraries(Path::new(path))?);
        }
        let mut tools = BTreeSet::new();
        for (path, package) in &binaries {
            require_file(path, package)?;
            tools.insert(PathBuf::from(path));
            tools.extend(shared_libraries(Path::new(path))?);
        }
        let mut own = BTreeMap::new();
        if role == Role::Target {
            let daemon = self.target_daemon.clone().ok_or_else(|| {
                anyhow!("the target image needs the vmcheck-target binary: build it (cargo build --bins) or set VMCHECK_TARGET_BIN")
            })?;
            let data = fs::read(&daemon).with_context(|| format!("reading {}", daemon.display()))?;
            tools.extend(shared_libraries(&daemon)?);
            own.insert("/usr/bin/vmcheck-target".to_string(), (daemon, hex::encode(Sha256::digest(&data))));
        }
        let mut modules = COMMON_MODULES.to_vec();
        modules.extend_from_slice(if role == Role::Target { TARGET_MODULES } else { INITIATOR_MODULES });
        let modules = module_load_order(&kernel.modules, &modules)?;
        let tools = tools_only(&files, tools);
        Ok(Inputs { role, kernel: format!("{} {}", kernel.package, kernel.boot_image().display()), files, tools, own, modules })
    }
}

#[derive(Debug)]
struct Kernel {
    vmlinuz: PathBuf,
    /// The unpacked kernel, when it has a PVH entry point.
    vmlinux: Option<PathBuf>,
    modules: PathBuf,
    version: String,
    package: String,
}

impl Kernel {
    fn boot_image(&self) -> &Path {
        self.vmlinux.as_deref().unwrap_or(&self.vmlinuz)
    }
}

#[derive(Debug)]
struct Inputs {
    role: Role,
    kernel: String,
    /// Host files copied into the initramfs as they are (binaries and libraries).
    files: BTreeSet<PathBuf>,
    /// Host files for the tools disk (none of them also in `files`).
    tools: BTreeSet<PathBuf>,
    /// The project's own files: guest path -> (host path, content hash).
    own: BTreeMap<String, (PathBuf, String)>,
    /// Module paths relative to the modules directory, in load order.
    modules: Vec<String>,
}

impl Inputs {
    /// Host files are identified by path, size and mtime (hashing 80 MB of libraries on every run
    /// would cost more than it saves); the project's own files and scripts by content.
    fn describe(&self) -> String {
        let mut s = format!("{BUILDER_VERSION}\nrole {}\nkernel {}\n", self.role, self.kernel);
        for (kind, set) in [("file", &self.files), ("tool", &self.tools)] {
            for f in set {
                let m = fs::metadata(f).ok();
                let (size, mtime) = m.map(|m| (m.size(), m.mtime())).unwrap_or_default();
                s += &format!("{kind} {} {size} {mtime}\n", f.display());
            }
        }
        for (guest, (_, hash)) in &self.own {
            s += &format!("own {guest} {hash}\n");
        }
        for m in &self.modules {
            s += &format!("module {m}\n");
        }
        for script in [RC, QGA, TARGET, INITTAB, ISCSID, ISCSID_CONF] {
            s += &format!("script {}\n", hex::encode(Sha256::digest(script)));
        }
        s
    }

    fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.describe()))
    }
}

/// Lays out the guest's root file system under `root` and the tools disk's under `tools_root`.
fn assemble(root: &Path, tools_root: &Path, role: Role, inputs: &Inputs, kernel: &Kernel) -> Result<()> {
    for dir in
        ["bin", "sbin", "usr/bin", "usr/sbin", "etc/vmcheck", "proc", "sys", "dev", "run", "tmp", "root", "var", "lib/modules", "tools"]
    {
        fs::create_dir_all(root.join(dir))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    for file in &inputs.files {
        copy_host_file(file, &root.join(file.strip_prefix("/").unwrap_or(file)))?;
    }
    // Busybox applets as symlinks, made here rather than with `busybox --install` at every boot.
    let list = output(Command::new(BUSYBOX.0).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = root.join(applet);
        if link.exists() || link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(BUSYBOX.0, &link)?;
    }
    std::os::unix::fs::symlink(BUSYBOX.0, root.join("init"))?;
    fs::create_dir_all(tools_root)?;
    for file in &inputs.tools {
        copy_host_file(file, &tools_root.join(file.strip_prefix("/").unwrap_or(file)))?;
    }
    for (guest, (host, _)) in &inputs.own {
        strip_copy(host, &tools_root.join(guest.trim_start_matches('/')))?;
    }
    let guest_paths = inputs.tools.iter().map(|p| p.to_string_lossy().into_owned()).chain(inputs.own.keys().cloned());
    for (link, target) in tools_links(guest_paths) {
        let link = root.join(link.trim_start_matches('/'));
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)?;
    }
    let mut order = String::new();
    for m in &inputs.modules {
        let dest = root.join("lib/modules").join(&kernel.version).join(m);
        fs::create_dir_all(dest.parent().unwrap())?;
        fs::copy(kernel.modules.join(m), &dest)?;
        order += &format!("{}/{m}\n", kernel.version);
    }
    fs::write(root.join("etc/vmcheck/modules"), order)?;
    write_script(&root.join("etc/vmcheck/rc"), RC)?;
    write_script(&root.join("etc/vmcheck/qga"), QGA)?;
    let mut inittab = INITTAB.to_string();
    if role == Role::Target {
        write_script(&root.join("etc/vmcheck/target"), TARGET)?;
        inittab += "::respawn:/etc/vmcheck/target\n";
    }
    if role == Role::Initiator {
        write_script(&root.join("etc/vmcheck/iscsid"), ISCSID)?;
        fs::create_dir_all(root.join("etc/iscsi"))?;
        fs::write(root.join("etc/iscsi/iscsid.conf"), ISCSID_CONF)?;
        inittab += "::respawn:/etc/vmcheck/iscsid\n";
    }
    fs::write(root.join("etc/inittab"), inittab)?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    Ok(())
}

/// The tools disk's files that the initramfs does not already hold.
fn tools_only(boot: &BTreeSet<PathBuf>, tools: BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    tools.into_iter().filter(|t| !boot.contains(t)).collect()
}

/// For each guest path on the tools disk, the symlink the initramfs holds there: (`/usr/bin/fio`,
/// `/tools/usr/bin/fio`). The links dangle until `rc.sh` mounts the disk.
fn tools_links(guest_paths: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
    guest_paths
        .into_iter()
        .map(|p| {
            let rel = p.trim_start_matches('/').to_string();
            (format!("/{rel}"), format!("{TOOLS_MOUNT}/{rel}"))
        })
        .collect()
}

/// The size in KiB of an ext4 image that holds `bytes` of files in `files` files: each file
/// rounded up to 4 KiB blocks, a quarter more for metadata, and 4 MiB of slack.
fn ext4_size_kib(bytes: u64, files: u64) -> u64 {
    let data = bytes.div_ceil(4096) * 4 + files * 4;
    data + data / 4 + 4096
}

/// Packs `dir` as a read-only ext4 image with `mke2fs -d` (no root, no journal: nothing writes it).
fn write_ext4(dir: &Path, out: &Path) -> Result<()> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut paths = Vec::new();
    collect_paths(dir, dir, &mut paths)?;
    for p in &paths {
        let m = dir.join(p).symlink_metadata()?;
        bytes += m.len();
        files += 1;
    }
    let kib = ext4_size_kib(bytes, files);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-b", "4096", "-L", TOOLS_SERIAL, "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(out)
        .arg(format!("{kib}k")))
    .context("building the tools disk")
}

/// Unpacks the xz payload of the bzImage `vmlinuz` into `vmlinux`. True when the result is an
/// ELF kernel with a PVH entry point (QEMU then boots it directly).
fn extract_vmlinux(vmlinuz: &Path, vmlinux: &Path) -> Result<bool> {
    let data = fs::read(vmlinuz)?;
    let Some(start) = data.windows(6).position(|w| w == XZ_MAGIC) else {
        return Ok(false);
    };
    let out = fs::File::create(vmlinux)?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .context("running xz")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let payload = data[start..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let result = child.wait_with_output()?;
    // xz stops reading after the stream: the rest of the bzImage is left unread.
    let _ = writer.join();
    if !result.status.success() {
        bail!("xz failed: {}", String::from_utf8_lossy(&result.stderr).trim());
    }
    Ok(has_pvh_note(&fs::read(vmlinux)?))
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// Whether `elf` is a 64-bit little-endian ELF with the Xen note `XEN_ELFNOTE_PHYS32_ENTRY`
/// (18), the PVH entry point QEMU's `-kernel` uses for an ELF kernel.
fn has_pvh_note(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (Some(ptype), Some(offset), Some(size)) = (u32_at(ph), u64_at(ph + 8), u64_at(ph + 0x20)) else {
            return false;
        };
        if ptype != 4 {
            continue;
        }
        let mut at = offset;
        while at + 12 <= offset + size {
            let (Some(namesz), Some(descsz), Some(ntype)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) else {
                return false;
            };
            let name = elf.get(at + 12..at + 12 + namesz).unwrap_or_default();
            if name == b"Xen\0" && ntype == 18 {
                return true;
            }
            at += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    false
}

/// Packs `root` as an uncompressed newc cpio: under TCG the guest unpacks a compressed initramfs
/// slower than QEMU loads the bigger file (see the note in README's benchmark section).
fn write_cpio(root: &Path, out: &Path) -> Result<()> {
    let mut list = Vec::new();
    collect_paths(root, root, &mut list)?;
    list.sort();
    let file = fs::File::create(out)?;
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .context("running cpio")?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        for p in &list {
            writeln!(stdin, "{p}")?;
        }
    }
    let result = child.wait_with_output()?;
    if !result.status.success() {
        bail!("cpio failed: {}", String::from_utf8_lossy(&result.stderr));
    }
    Ok(())
}

fn collect_paths(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let rel = path.strip_prefix(root).expect("below root");
        out.push(rel.to_string_lossy().into_owned());
        if path.symlink_metadata()?.is_dir() {
            collect_paths(root, &path, out)?;
        }
    }
    Ok(())
}

/// The modules `wanted` and all they depend on, dependencies first, from `modules.dep`.
pub fn module_load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep_text =
        fs::read_to_string(modules_dir.join("modules.dep")).with_context(|| format!("reading {}/modules.dep", modules_dir.display()))?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    module_order_from(&dep_text, &builtin, wanted)
}

fn module_order_from(dep_text: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let deps: BTreeMap<&str, Vec<&str>> =
        dep_text.lines().filter_map(|l| l.split_once(':')).map(|(m, d)| (m.trim(), d.split_whitespace().collect())).collect();
    let by_name = |name: &str| -> Option<&str> {
        let want = name.replace('-', "_");
        deps.keys().copied().find(|p| module_name(p) == want)
    };
    let is_builtin = |name: &str| builtin.lines().any(|p| module_name(p) == name.replace('-', "_"));
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit<'a>(m: &'a str, deps: &BTreeMap<&'a str, Vec<&'a str>>, seen: &mut BTreeSet<&'a str>, order: &mut Vec<String>) {
        if !seen.insert(m) {
            return;
        }
        for d in deps.get(m).map(Vec::as_slice).unwrap_or_default() {
            visit(d, deps, seen, order);
        }
        order.push(m.to_string());
    }
    for name in wanted {
        match by_name(name) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if is_builtin(name) => {}
            None => bail!("kernel module {name} is neither in modules.dep nor built in"),
        }
    }
    Ok(order)
}

/// `kernel/drivers/nvme/host/nvme-tcp.ko` -> `nvme_tcp` (the kernel treats - and _ alike).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The shared libraries `ldd` says `binary` needs, with the dynamic loader.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries make ldd fail with "not a dynamic executable".
        return Ok(Vec::new());
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            bail!("a library is missing on the host: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Copies a host file to `dest`, following links, keeping its mode.
fn copy_host_file(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(src, dest).with_context(|| format!("copying {} into the image", src.display()))?;
    Ok(())
}

/// Copies the project's own binary without its debug info: image size costs boot time.
fn strip_copy(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let stripped =
        which::which("strip").is_ok() && Command::new("strip").arg("-o").arg(dest).arg(src).status().map(|s| s.success()).unwrap_or(false);
    if !stripped {
        fs::copy(src, dest)?;
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn require_file(path: &str, package: &str) -> Result<()> {
    if !Path::new(path).exists() {
        bail!("{path} is missing on the host; install it with: apt-get install -y {package}");
    }
    Ok(())
}

fn check_host_tools() -> Result<()> {
    let missing: Vec<_> = BUILD_TOOLS.iter().filter(|(tool, _)| which::which(tool).is_err()).collect();
    if !missing.is_empty() {
        let tools: Vec<_> = missing.iter().map(|(t, _)| *t).collect();
        let packages: BTreeSet<_> = missing.iter().map(|(_, p)| *p).collect();
        bail!(
            "the image builder needs {} on the host; install with: apt-get install -y {}",
            tools.join(", "),
            packages.into_iter().collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

/// `linux-image-amd64` is a meta package; the kernel is the package it depends on.
fn resolve_kernel_package() -> Result<String> {
    let text = output(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("apt-cache knows no kernel behind {KERNEL_META_PACKAGE}; run: apt-get update"))
}

fn package_candidate_version(package: &str) -> Result<String> {
    let text = output(Command::new("apt-cache").args(["policy", package]))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .find(|v| *v != "(none)")
        .map(str::to_string)
        .ok_or_else(|| anyhow!("apt has no candidate for {package}; run: apt-get update"))
}

fn single_dir_name(dir: &Path) -> Result<String> {
    let names: Vec<_> = fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one kernel version under {}, found {names:?}", dir.display()),
    }
}

/// Where the in-guest daemon is: `$VMCHECK_TARGET_BIN`, else beside this executable (cargo puts
/// both binaries in one directory; tests run from its `deps/` subdirectory).
pub fn find_target_daemon() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VMCHECK_TARGET_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("vmcheck-target"), dir.parent()?.join("vmcheck-target")].into_iter().find(|p| p.is_file())
}

fn lock_file(path: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/nvme/host/nvme-tcp.ko: kernel/drivers/nvme/host/nvme-fabrics.ko kernel/drivers/nvme/host/nvme-core.ko kernel/lib/crc64.ko\n\
kernel/drivers/nvme/host/nvme-fabrics.ko: kernel/drivers/nvme/host/nvme-core.ko\n\
kernel/drivers/nvme/host/nvme-core.ko: kernel/lib/crc64.ko\n\
kernel/lib/crc64.ko:\n";

    #[test]
    fn modules_come_after_their_dependencies() {
        let order = module_order_from(DEP, "", &["nvme_tcp", "nvme-core"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/lib/crc64.ko",
                "kernel/drivers/nvme/host/nvme-core.ko",
                "kernel/drivers/nvme/host/nvme-fabrics.ko",
                "kernel/drivers/nvme/host/nvme-tcp.ko"
            ]
        );
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_named() {
        assert!(module_order_from(DEP, "kernel/fs/configfs/configfs.ko\n", &["configfs"]).unwrap().is_empty());
        let err = module_order_from(DEP, "", &["nvmet"]).unwrap_err();
        assert!(err.to_string().contains("nvmet"), "{err}");
    }

    #[test]
    fn tools_disk_holds_what_the_initramfs_lacks_and_is_linked_from_the_usual_paths() {
        let boot: BTreeSet<PathBuf> = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/sbin/qemu-ga"].iter().map(PathBuf::from).collect();
        let tools: BTreeSet<PathBuf> =
            ["/usr/bin/fio", "/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libaio.so.1"].iter().map(PathBuf::from).collect();
        let only = tools_only(&boot, tools);
        assert_eq!(only, ["/lib/x86_64-linux-gnu/libaio.so.1", "/usr/bin/fio"].iter().map(PathBuf::from).collect());
        let links = tools_links(only.iter().map(|p| p.to_string_lossy().into_owned()).chain(["/usr/bin/vmcheck-target".to_string()]));
        assert_eq!(
            links,
            [
                ("/lib/x86_64-linux-gnu/libaio.so.1".to_string(), "/tools/lib/x86_64-linux-gnu/libaio.so.1".to_string()),
                ("/usr/bin/fio".to_string(), "/tools/usr/bin/fio".to_string()),
                ("/usr/bin/vmcheck-target".to_string(), "/tools/usr/bin/vmcheck-target".to_string()),
            ]
        );
    }

    #[test]
    fn tools_disk_size_leaves_room_for_metadata() {
        // 100 MiB in 80 files: 102400 KiB of blocks + 320 KiB, a quarter more, 4 MiB of slack.
        assert_eq!(ext4_size_kib(100 << 20, 80), (102400 + 320) * 5 / 4 + 4096);
        // Partial blocks round up.
        assert_eq!(ext4_size_kib(1, 1), 4 + 4 + 2 + 4096);
    }

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[(&[u8], u32, &[u8])]) -> Vec<u8> {
        let mut note = Vec::new();
        for (name, ntype, desc) in notes {
            note.extend((name.len() as u32).to_le_bytes());
            note.extend((desc.len() as u32).to_le_bytes());
            note.extend(ntype.to_le_bytes());
            note.extend(*name);
            note.resize(note.len().div_ceil(4) * 4, 0);
            note.extend(*desc);
            note.resize(note.len().div_ceil(4) * 4, 0);
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&4u32.to_le_bytes());
        elf[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        elf[64 + 0x20..64 + 0x28].copy_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend(note);
        elf
    }

    #[test]
    fn pvh_entry_note_is_found() {
        assert!(has_pvh_note(&elf_with_notes(&[(b"GNU\0", 3, b"abcd"), (b"Xen\0", 18, &[0, 0, 0, 1])])));
        assert!(!has_pvh_note(&elf_with_notes(&[(b"Xen\0", 17, &[1, 2, 3, 4])])));
        assert!(!has_pvh_note(b"MZ not an elf"));
        let mut truncated = elf_with_notes(&[(b"Xen\0", 18, &[0, 0, 0, 1])]);
        truncated.truncate(130);
        assert!(!has_pvh_note(&truncated));
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibnvme.so.1 => /lib/x86_64-linux-gnu/libnvme.so.1 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [PathBuf::from("/lib/x86_64-linux-gnu/libnvme.so.1"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
