//! Default images without Nix: a Debian kernel, and per [`Recipe`] an initramfs and a read-only
//! tools disk, assembled from the host's packages (and Debian packages the recipe names) into a
//! content-addressed cache (`$VMCHECK_CACHE`, default `~/.cache/vmcheck`).
//!
//! The kernel package is fetched with `apt-get download` and unpacked with `dpkg -x`, never
//! installed; its bzImage's xz payload is unpacked once into `vmlinux`, which QEMU boots through
//! the kernel's PVH entry point (no decompression in the guest, which costs seconds under TCG).
//! Each initramfs holds only what boot needs: busybox (init, shell), the guest agent with its
//! libraries, the kernel modules (the base's and the recipe's) with their dependencies in load
//! order, the recipe's text files and services. The rest (lsblk; the recipe's host files and
//! Debian packages) with the libraries `ldd` names go onto an ext4 image (`mke2fs -d`, no root
//! needed) that the guest mounts read-only at `/tools`; the initramfs holds a symlink at each
//! such file's usual path into `/tools`. An image is rebuilt only when the hash of its inputs
//! changes: everything in the recipe, resolved (see [`Images::ensure`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::recipe::{KernelSource, Recipe};

/// Bump when the layout of an image changes, so every cached image is rebuilt.
const BUILDER_VERSION: &str = "vmcheck-images-5";
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

const RC: &str = include_str!("images/rc.sh");
const QGA: &str = include_str!("images/qga.sh");
const INITTAB: &str = include_str!("images/inittab");
const SERVICE: &str = include_str!("images/service.sh");

/// Host tools the builder runs, with the Debian package that provides each.
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg", "dpkg"),
    ("dpkg-query", "dpkg"),
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
/// On the tools disk, for every recipe.
const COMMON_BINARIES: &[(&str, &str)] = &[("/usr/bin/lsblk", "util-linux")];

/// Every image's modules. ext4 needs a crc32c for the tools disk's metadata checksums ("Cannot load crc32c driver" and
/// no /tools without one): crc32c_generic, since a TCG CPU may lack SSE4.2 for crc32c-intel.
const COMMON_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "virtio_blk",
    "virtio_balloon",
    "nvme",
    "crc32c_generic",
    "ext4",
];

/// Where the guest mounts the tools disk; the serial by which it finds it.
pub const TOOLS_MOUNT: &str = "/tools";
/// The serial of the tools disk, by which `rc.sh` finds it.
pub const TOOLS_SERIAL: &str = "vmcheck-tools";

/// A kernel, the initramfs and the tools disk of one recipe, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The recipe's name.
    pub name: String,
    /// The uncompressed `vmlinux` with a PVH entry point, else the bzImage.
    pub kernel: PathBuf,
    /// The initramfs (uncompressed newc cpio).
    pub initrd: PathBuf,
    /// A raw ext4 image, attached read-only (`QemuSpec::tools_disk_args`), mounted at `/tools`.
    pub tools: PathBuf,
    /// The inputs' hash: the name of the image in the cache.
    pub hash: String,
}

/// The image builder and its cache.
#[derive(Debug, Clone)]
pub struct Images {
    /// Where images, kernels and unpacked Debian packages are kept.
    pub cache_dir: PathBuf,
    /// Print what is being done (to stderr).
    pub verbose: bool,
    /// Fetch and unpack a kernel or Debian package the cache lacks (the default); without it a
    /// missing one is [`NotCached`] ([`Images::find`]).
    pub fetch: bool,
}

/// A kernel or Debian package an image needs is not in the cache, and [`Images::fetch`] is off.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not in the cache")]
pub struct NotCached(pub String);

/// A Debian package unpacked in the cache.
#[derive(Debug, Clone)]
struct Deb {
    package: String,
    version: String,
    /// What `dpkg -x` left (documentation removed).
    root: PathBuf,
}

impl Images {
    /// The default cache: `$VMCHECK_CACHE`, else the user's cache directory.
    pub fn from_env() -> Result<Images> {
        let cache_dir = match std::env::var_os("VMCHECK_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => dirs::cache_dir()
                .ok_or_else(|| anyhow!("no user cache directory; set VMCHECK_CACHE"))?
                .join("vmcheck"),
        };
        Ok(Images { cache_dir, verbose: true, fetch: true })
    }

    fn say(&self, what: &str) {
        if self.verbose {
            crate::progress::write_stderr(format!("images: {what}\n").as_bytes());
        }
    }

    /// Builds (or finds in the cache) the image of `recipe` (a [`Recipe`], or a
    /// [`crate::config::Role`] for its predefined recipe).
    ///
    /// The image is named by the hash of everything that decides its contents: the builder's
    /// version and scripts, the recipe's name, the kernel (package and version, or the file's
    /// content hash), each Debian package with its version (those unpacked for missing
    /// libraries too), each host file's guest path and content hash, the host libraries (path,
    /// size, mtime), the modules in load order, each text file's path and content hash, each
    /// service's name, mode and command line, and the forwarded ports. Two recipes that differ
    /// in anything get two images, and so two snapshot keys (the key holds the image paths).
    pub fn ensure(&self, recipe: impl Into<Recipe>) -> Result<Image> {
        self.ensure_held(recipe).map(|(image, _)| image)
    }

    /// [`Images::ensure`], and the image held in use (against `vmcheck cache prune`, see
    /// `crate::cache`) while the hold lives: what a driver does.
    pub(crate) fn ensure_held(
        &self,
        recipe: impl Into<Recipe>,
    ) -> Result<(Image, crate::cache::Hold)> {
        let recipe = self.with_built_daemon(recipe.into())?;
        recipe.check()?;
        let name = recipe.name().to_string();
        match self.ensure_checked(&recipe, true) {
            Ok(Some((image, Some(hold)))) => Ok((image, hold)),
            Ok(_) => Err(anyhow!("the image was neither found nor built")),
            Err(e) => Err(e.context(format!("building the image of recipe {name}"))),
        }
    }

    /// The image of `recipe` if the cache has it up to date, without building it, fetching
    /// anything or marking it used (`vmcheck cache` asks which images the suite's recipes boot).
    pub fn find(&self, recipe: impl Into<Recipe>) -> Result<Option<Image>> {
        let recipe = self.with_built_daemon(recipe.into())?;
        recipe.check()?;
        let name = recipe.name().to_string();
        let looking = Images { fetch: false, ..self.clone() };
        match looking.ensure_checked(&recipe, false) {
            Ok(found) => Ok(found.map(|(image, _)| image)),
            // Without its kernel or packages the image cannot be there.
            Err(e) if e.chain().any(|c| c.is::<NotCached>()) => Ok(None),
            Err(e) => Err(e.context(format!("looking up the image of recipe {name}"))),
        }
    }

    /// The image, held when `build` (and built when missing); `None` when missing and not
    /// `build`.
    fn ensure_checked(
        &self,
        recipe: &Recipe,
        build: bool,
    ) -> Result<Option<(Image, Option<crate::cache::Hold>)>> {
        let name = recipe.name();
        fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("creating cache {}", self.cache_dir.display()))?;
        // One builder at a time per cache; a second run waits, then finds the image built.
        let _lock = lock_file(&self.cache_dir.join("lock"))?;
        check_host_tools()?;
        let kernel = self.ensure_kernel(recipe.kernel())?;
        let inputs = self.inputs(recipe, &kernel)?;
        let hash = inputs.hash();
        let dir = self.cache_dir.join("images").join(format!("{name}-{}", &hash[..16]));
        let image = Image {
            name: name.to_string(),
            kernel: kernel.boot_image().to_path_buf(),
            initrd: dir.join("initrd"),
            tools: dir.join("tools.img"),
            hash: hash.clone(),
        };
        if image.initrd.exists() && image.tools.exists() {
            if !build {
                return Ok(Some((image, None)));
            }
            self.say(&format!("{name} image up to date ({})", &hash[..16]));
            // Held under the cache's lock, which a prune of images takes: never half-removed.
            let hold = crate::cache::hold(&dir)?;
            return Ok(Some((image, Some(hold))));
        }
        if !build {
            return Ok(None);
        }
        self.say(&format!(
            "building the {name} image ({} boot files, {} tools files, {} Debian packages, kernel {})",
            inputs.files.len(),
            inputs.tools.len() + inputs.own.len(),
            inputs.debs.len(),
            kernel.version
        ));
        let staging = tempfile::Builder::new().prefix(".staging-").tempdir_in(&self.cache_dir)?;
        let root = staging.path().join("root");
        let tools_root = staging.path().join("tools");
        assemble(&root, &tools_root, &inputs, &kernel)?;
        let out = staging.path().join("initrd");
        write_cpio(&root, &out)?;
        let tools_out = staging.path().join("tools.img");
        write_ext4(&tools_root, &tools_out, TOOLS_SERIAL)?;
        let size = fs::metadata(&out)?.len();
        let tools_size = fs::metadata(&tools_out)?.len();
        fs::create_dir_all(dir.parent().unwrap_or(&self.cache_dir))?;
        let tmp_dir = staging.path().join("out");
        fs::create_dir(&tmp_dir)?;
        fs::rename(&out, tmp_dir.join("initrd"))?;
        fs::rename(&tools_out, tmp_dir.join("tools.img"))?;
        fs::write(tmp_dir.join("inputs.txt"), inputs.describe())?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp_dir, &dir)
            .with_context(|| format!("moving the image into {}", dir.display()))?;
        self.say(&format!(
            "{name} image built: {} (initramfs {:.1} MiB, tools disk {:.1} MiB)",
            dir.display(),
            size as f64 / 1048576.0,
            tools_size as f64 / 1048576.0
        ));
        let hold = crate::cache::hold(&dir)?;
        // Written: keep the cache under its bound (never removing an image a run holds).
        match crate::cache::bound(&self.cache_dir, true) {
            Ok(Some(pruned)) => self.say(&crate::cache::bound_summary(&pruned)),
            Ok(None) => {}
            Err(e) => self.say(&format!("cache: not kept under its bound: {e:#}")),
        }
        Ok(Some((image, Some(hold))))
    }

    /// The recipe's kernel: a package downloaded and unpacked once per version, or a host file
    /// unpacked once per content hash.
    fn ensure_kernel(&self, source: &KernelSource) -> Result<Kernel> {
        let (dir, label) = match source {
            KernelSource::Default => {
                let (package, version) = self.resolve_kernel()?;
                (self.unpack_kernel_package(&package, &version)?, format!("{package}={version}"))
            }
            KernelSource::Package(package) => {
                let version = self
                    .candidate_version(package)
                    .with_context(|| format!("the kernel package {package}"))?;
                (self.unpack_kernel_package(package, &version)?, format!("{package}={version}"))
            }
            KernelSource::File(path) => {
                let hash = file_sha256(path)
                    .with_context(|| format!("the kernel file {}", path.display()))?;
                (
                    self.unpack_kernel_file(path, &hash)?,
                    format!("file {} sha256 {hash}", path.display()),
                )
            }
        };
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
                    self.say(&format!(
                        "no vmlinux from {}: {e:#}; booting the bzImage",
                        vmlinuz.display()
                    ));
                    "no"
                }
            };
            if pvh == "no" {
                let _ = fs::remove_file(&vmlinux);
            }
            fs::write(&pvh_marker, pvh)?;
        }
        let pvh = fs::read_to_string(&pvh_marker)?.trim() == "yes";
        let modules = dir.join("lib/modules").join(&kver);
        Ok(Kernel {
            vmlinux: pvh.then_some(vmlinux),
            vmlinuz,
            modules: modules.is_dir().then_some(modules),
            version: kver,
            package: label,
        })
    }

    /// `kernel/<package>_<version>`: the package as `dpkg -x` left it, `done` holding the
    /// kernel version.
    fn unpack_kernel_package(&self, package: &str, version: &str) -> Result<PathBuf> {
        let dir = self.cache_dir.join("kernel").join(format!("{package}_{version}"));
        if !dir.join("done").exists() && !self.fetch {
            return Err(NotCached(format!("the kernel {package} {version}")).into());
        }
        if !dir.join("done").exists() {
            self.say(&format!("fetching {package} {version} (apt-get download, dpkg -x)"));
            let work = tempfile::Builder::new().prefix(".kernel-").tempdir_in(&self.cache_dir)?;
            let deb = apt_download(package, version, work.path())?;
            self.unpack_kernel_deb(&deb, &work.path().join("x"), &dir)?;
        }
        Ok(dir)
    }

    /// `kernel/file-<hash>`: a kernel `.deb` unpacked as a package is, or a bare kernel image
    /// (no modules; its version is `file`).
    fn unpack_kernel_file(&self, path: &Path, hash: &str) -> Result<PathBuf> {
        let dir = self.cache_dir.join("kernel").join(format!("file-{}", &hash[..16]));
        if !dir.join("done").exists() && !self.fetch {
            return Err(NotCached(format!("the kernel {}", path.display())).into());
        }
        if !dir.join("done").exists() {
            let work = tempfile::Builder::new().prefix(".kernel-").tempdir_in(&self.cache_dir)?;
            let unpacked = work.path().join("x");
            let mut head = [0u8; 8];
            let n = std::io::Read::read(&mut fs::File::open(path)?, &mut head)?;
            if head[..n] == *b"!<arch>\n" {
                self.say(&format!("unpacking the kernel package {}", path.display()));
                self.unpack_kernel_deb(path, &unpacked, &dir)?;
            } else {
                self.say(&format!("using the kernel image {} (no modules)", path.display()));
                fs::create_dir_all(unpacked.join("boot"))?;
                fs::copy(path, unpacked.join("boot/vmlinuz-file"))?;
                fs::write(unpacked.join("done"), "file")?;
                fs::create_dir_all(dir.parent().unwrap())?;
                let _ = fs::remove_dir_all(&dir);
                fs::rename(&unpacked, &dir)?;
            }
        }
        Ok(dir)
    }

    fn unpack_kernel_deb(&self, deb: &Path, unpacked: &Path, dir: &Path) -> Result<()> {
        run(Command::new("dpkg").arg("-x").arg(deb).arg(unpacked))?;
        let kver = single_dir_name(&unpacked.join("lib/modules"))
            .with_context(|| format!("{} is not a kernel package", deb.display()))?;
        run(Command::new("depmod").arg("-b").arg(unpacked).arg(&kver))?;
        fs::write(unpacked.join("done"), &kver)?;
        fs::create_dir_all(dir.parent().unwrap())?;
        let _ = fs::remove_dir_all(dir);
        fs::rename(unpacked, dir)?;
        Ok(())
    }

    /// The kernel package and version apt offers. Asking apt-cache costs about a second, so the
    /// answer is kept until apt's package lists change (`apt-get update` rewrites them).
    fn resolve_kernel(&self) -> Result<(String, String)> {
        let wanted = std::env::var("VMCHECK_KERNEL_PACKAGE").ok();
        let lists = apt_lists_mtime();
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

    /// apt's candidate version of `package`, kept (as the kernel's) until the lists change.
    fn candidate_version(&self, package: &str) -> Result<String> {
        let lists = apt_lists_mtime();
        let key = format!("{lists:?}");
        let memo = self.cache_dir.join("apt").join(format!("{package}.candidate"));
        if let Ok(text) = fs::read_to_string(&memo) {
            if let Some((k, version)) = text.trim_end().split_once('\n') {
                if k == key && lists.is_some() {
                    return Ok(version.to_string());
                }
            }
        }
        let version = package_candidate_version(package)?;
        let _ = fs::create_dir_all(memo.parent().unwrap());
        let _ = fs::write(&memo, format!("{key}\n{version}\n"));
        Ok(version)
    }

    /// `debs/<package>_<version>/root`: the package as `dpkg -x` left it, without
    /// `/usr/share/{doc,man,info}`.
    fn ensure_deb(&self, package: &str) -> Result<Deb> {
        let version = self
            .candidate_version(package)
            .with_context(|| format!("the Debian package {package}"))?;
        let dir = self.cache_dir.join("debs").join(format!("{package}_{version}"));
        if !dir.join("done").exists() && !self.fetch {
            return Err(NotCached(format!("the Debian package {package} {version}")).into());
        }
        if !dir.join("done").exists() {
            self.say(&format!("fetching {package} {version} (apt-get download, dpkg -x)"));
            let work = tempfile::Builder::new().prefix(".deb-").tempdir_in(&self.cache_dir)?;
            let deb = apt_download(package, &version, work.path())?;
            let out = work.path().join("out");
            fs::create_dir_all(&out)?;
            run(Command::new("dpkg").arg("-x").arg(&deb).arg(out.join("root")))?;
            for docs in ["usr/share/doc", "usr/share/man", "usr/share/info"] {
                let _ = fs::remove_dir_all(out.join("root").join(docs));
            }
            fs::write(out.join("done"), &version)?;
            fs::create_dir_all(dir.parent().unwrap())?;
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&out, &dir)?;
        }
        Ok(Deb { package: package.to_string(), version, root: dir.join("root") })
    }

    /// The recipe's Debian packages unpacked, and the host libraries their ELF files need; a
    /// library neither the host nor the unpacked packages have makes the packages' `Depends`
    /// that the host lacks unpacked too (module documentation of [`crate::recipe`]).
    ///
    /// Asking `ldd` about every ELF file costs seconds for a big package, so the answer (the
    /// dependencies unpacked, the host libraries) is kept until the packages' versions, apt's
    /// lists or the host's installed packages (`/var/lib/dpkg/status`) change.
    fn ensure_debs(&self, packages: &[String]) -> Result<(Vec<Deb>, BTreeSet<PathBuf>)> {
        let mut debs = Vec::new();
        for p in packages {
            debs.push(self.ensure_deb(p)?);
        }
        if debs.is_empty() {
            return Ok((debs, BTreeSet::new()));
        }
        let dpkg_status = fs::metadata("/var/lib/dpkg/status").ok().and_then(|m| m.modified().ok());
        let mut key = format!("{BUILDER_VERSION}\n{:?}\n{dpkg_status:?}\n", apt_lists_mtime());
        for d in &debs {
            key += &format!("{} {}\n", d.package, d.version);
        }
        let memo = self
            .cache_dir
            .join("debs")
            .join(format!("resolved-{}", &sha256_hex(key.as_bytes())[..16]));
        if let Ok(text) = fs::read_to_string(&memo) {
            if dpkg_status.is_some() {
                let mut libs = BTreeSet::new();
                for line in text.lines() {
                    match line.split_once(' ') {
                        Some(("deb", p)) => debs.push(self.ensure_deb(p)?),
                        Some(("lib", path)) => {
                            libs.insert(PathBuf::from(path));
                        }
                        _ => {}
                    }
                }
                return Ok((debs, libs));
            }
        }
        let requested = debs.len();
        let (debs, libs) = self.resolve_debs(debs)?;
        let mut text = String::new();
        for d in &debs[requested..] {
            text += &format!("deb {}\n", d.package);
        }
        for l in &libs {
            text += &format!("lib {}\n", l.display());
        }
        let _ = fs::write(&memo, text);
        Ok((debs, libs))
    }

    fn resolve_debs(&self, mut debs: Vec<Deb>) -> Result<(Vec<Deb>, BTreeSet<PathBuf>)> {
        // Packages whose Depends were followed; the dependencies unpacked for a missing library
        // (whose own Depends are followed next, if the library is still missing).
        let mut followed = BTreeSet::new();
        let mut pulled: Vec<String> = Vec::new();
        loop {
            let (host_libs, missing) = deb_libraries(&debs)?;
            if missing.is_empty() {
                return Ok((debs, host_libs));
            }
            // Follow the Depends of the packages that miss a library (and of the dependencies
            // unpacked for them): unpack those the host lacks.
            let mut to_follow: Vec<String> = missing.iter().map(|m| m.package.clone()).collect();
            to_follow.extend(pulled.iter().cloned());
            let mut added = false;
            for package in to_follow {
                if !followed.insert(package.clone()) {
                    continue;
                }
                let version = debs
                    .iter()
                    .find(|d| d.package == package)
                    .map(|d| d.version.clone())
                    .expect("an unpacked package");
                let text = output(
                    Command::new("apt-cache").args(["depends", &format!("{package}={version}")]),
                )?;
                for group in parse_depends(&text) {
                    if group
                        .iter()
                        .any(|p| debs.iter().any(|d| &d.package == p) || host_has_package(p))
                    {
                        continue;
                    }
                    let Some(first) = group.first() else { continue };
                    self.say(&format!("{package} needs a library the host lacks: unpacking its dependency {first}"));
                    debs.push(
                        self.ensure_deb(first)
                            .with_context(|| format!("a dependency of {package}"))?,
                    );
                    pulled.push(first.clone());
                    added = true;
                }
            }
            if !added {
                let m = &missing[0];
                bail!(
                    "{} (of the Debian package {}) needs the library {}, which neither the host nor the unpacked Debian packages ({}) \
                     provide; install it on the host or add the Debian package that holds it (.debian_package(...))",
                    m.file.display(),
                    m.package,
                    m.library,
                    debs.iter().map(|d| d.package.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }

    /// Everything that decides what the image holds.
    /// The shared libraries `ldd` names for the host binary `path` (remembered, see
    /// [`Images::memo`]; a remembered library that is gone is asked again).
    fn libraries(&self, path: &Path) -> Result<Vec<PathBuf>> {
        let libs = self
            .memo(path, Fact::Libraries, || shared_libraries(path).map(Remembered::Libraries))?
            .libraries()?;
        if libs.iter().all(|l| l.exists()) {
            return Ok(libs);
        }
        let libs = shared_libraries(path)?;
        self.remember(path, Fact::Libraries, Remembered::Libraries(libs.clone()));
        Ok(libs)
    }

    /// A fact about the host file `path` (its content hash, or its libraries), computed by
    /// `compute` once and remembered in `host-files.json` of the cache while the file keeps its
    /// size, mtime and inode (and, for libraries, while `/etc/ld.so.cache` keeps its own): each
    /// run used to hash every recipe file again (the target daemon alone is about 60 MiB, 0.3 s)
    /// and ask `ldd` about each binary.
    fn memo(
        &self,
        path: &Path,
        fact: Fact,
        compute: impl FnOnce() -> Result<Remembered>,
    ) -> Result<Remembered> {
        let stamp = memo_stamp(path, fact);
        if let Some(stamp) = &stamp {
            let found = read_memo(&self.cache_dir).remove(&memo_key(path, fact));
            if let Some(entry) = found.filter(|e| &e.stamp == stamp) {
                return Ok(entry.value);
            }
        }
        let value = compute()?;
        self.remember(path, fact, value.clone());
        Ok(value)
    }

    fn remember(&self, path: &Path, fact: Fact, value: Remembered) {
        let Some(stamp) = memo_stamp(path, fact) else { return };
        let mut memo = read_memo(&self.cache_dir);
        // One entry per file and fact: a file that changed replaces its entry.
        memo.insert(memo_key(path, fact), MemoEntry { stamp, value });
        // Written aside and renamed: a reader never sees half a file; of two runs writing at
        // once one's entry may be lost, and is computed again next time.
        let file = self.cache_dir.join(MEMO_FILE);
        let written = tempfile::NamedTempFile::new_in(&self.cache_dir).and_then(|mut tmp| {
            serde_json::to_writer(&mut tmp, &memo)?;
            tmp.persist(&file).map(drop).map_err(|e| e.error)
        });
        if let Err(e) = written {
            self.say(&format!("{} not written: {e}", file.display()));
        }
    }

    fn inputs(&self, recipe: &Recipe, kernel: &Kernel) -> Result<Inputs> {
        let mut files = BTreeSet::new();
        files.insert(PathBuf::from(BUSYBOX.0));
        require_file(BUSYBOX.0, BUSYBOX.1)?;
        for (path, package) in BOOT_BINARIES {
            require_file(path, package)?;
            files.insert(PathBuf::from(path));
            files.extend(self.libraries(Path::new(path))?);
        }
        let mut tools = BTreeSet::new();
        for (path, package) in COMMON_BINARIES {
            require_file(path, package)?;
            tools.insert(PathBuf::from(path));
            tools.extend(self.libraries(Path::new(path))?);
        }
        let mut own = BTreeMap::new();
        for f in recipe.host_files() {
            let hash = self
                .memo(&f.host, Fact::Sha256, || file_sha256(&f.host).map(Remembered::Sha256))
                .with_context(|| format!("reading the host file {}", f.host.display()))?
                .sha256()?;
            if is_elf(&f.host) {
                tools.extend(self.libraries(&f.host)?);
            }
            own.insert(crate::recipe::normalize(&f.guest), (f.host.clone(), hash));
        }
        let (debs, deb_libs) = self.ensure_debs(recipe.debian_packages())?;
        tools.extend(deb_libs);
        let modules = match &kernel.modules {
            Some(dir) => {
                let mut wanted: Vec<&str> = COMMON_MODULES.to_vec();
                wanted.extend(recipe.modules().iter().map(String::as_str));
                module_load_order(dir, &wanted).with_context(|| format!("the kernel {}", kernel.package))?
            }
            None if recipe.modules().is_empty() => Vec::new(),
            None => bail!(
                "the kernel {} is a bare kernel image without modules, and the recipe loads {}; give a kernel .deb instead",
                kernel.package,
                recipe.modules().join(", ")
            ),
        };
        let tools = tools_only(&files, tools);
        Ok(Inputs {
            recipe: recipe.clone(),
            kernel: format!("{} {}", kernel.package, kernel.boot_image().display()),
            files,
            tools,
            own,
            debs,
            modules,
        })
    }
}

#[derive(Debug)]
struct Kernel {
    vmlinuz: PathBuf,
    /// The unpacked kernel, when it has a PVH entry point.
    vmlinux: Option<PathBuf>,
    /// `lib/modules/<version>`; none for a bare kernel image.
    modules: Option<PathBuf>,
    version: String,
    /// `package=version`, or the kernel file and its hash.
    package: String,
}

impl Kernel {
    fn boot_image(&self) -> &Path {
        self.vmlinux.as_deref().unwrap_or(&self.vmlinuz)
    }
}

#[derive(Debug)]
struct Inputs {
    recipe: Recipe,
    kernel: String,
    /// Host files copied into the initramfs as they are (binaries and libraries).
    files: BTreeSet<PathBuf>,
    /// Host files for the tools disk at their host paths (none of them also in `files`).
    tools: BTreeSet<PathBuf>,
    /// The recipe's host files: guest path -> (host path, content hash).
    own: BTreeMap<String, (PathBuf, String)>,
    /// Debian packages, the recipe's and the dependencies unpacked for them.
    debs: Vec<Deb>,
    /// Module paths relative to the modules directory, in load order.
    modules: Vec<String>,
}

impl Inputs {
    /// Host libraries are identified by path, size and mtime (hashing 80 MB of libraries on
    /// every run would cost more than it saves); the recipe's host files, text files and
    /// services, and the scripts by content; Debian packages by name and version.
    fn describe(&self) -> String {
        let r = &self.recipe;
        let mut s = format!("{BUILDER_VERSION}\nrecipe {}\nkernel {}\n", r.name(), self.kernel);
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
        for d in &self.debs {
            s += &format!("deb {} {}\n", d.package, d.version);
        }
        for m in &self.modules {
            s += &format!("module {m}\n");
        }
        for f in r.files() {
            s += &format!(
                "text {} {}\n",
                crate::recipe::normalize(&f.path),
                sha256_hex(f.contents.as_bytes())
            );
        }
        for svc in r.services() {
            s += &format!(
                "service {} {} {}\n",
                svc.name,
                if svc.respawn { "respawn" } else { "once" },
                sha256_hex(svc.command.as_bytes())
            );
        }
        for p in r.forward_ports() {
            s += &format!("forward {p}\n");
        }
        for script in [RC, QGA, INITTAB, SERVICE] {
            s += &format!("script {}\n", sha256_hex(script.as_bytes()));
        }
        s
    }

    fn hash(&self) -> String {
        sha256_hex(self.describe().as_bytes())
    }
}

/// Lays out the guest's root file system under `root` and the tools disk's under `tools_root`.
fn assemble(root: &Path, tools_root: &Path, inputs: &Inputs, kernel: &Kernel) -> Result<()> {
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/vmcheck/services",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "var",
        "lib/modules",
        "tools",
    ] {
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
    // Debian packages first: a host file the recipe names at the same path replaces theirs.
    // Their files never replace what the initramfs holds (busybox's applets, which rc.sh runs
    // before /tools is mounted): such a file is reached at /tools/PATH.
    let mut deb_paths = BTreeSet::new();
    for deb in &inputs.debs {
        run(Command::new("cp")
            .arg("-a")
            .arg("--remove-destination")
            .arg(deb.root.join("."))
            .arg(tools_root))
        .with_context(|| {
            format!("copying the Debian package {} onto the tools disk", deb.package)
        })?;
        let mut paths = Vec::new();
        collect_paths(&deb.root, &deb.root, &mut paths)?;
        for p in paths {
            if !deb.root.join(&p).symlink_metadata()?.is_dir() {
                deb_paths.insert(format!("/{p}"));
            }
        }
    }
    for guest in &deb_paths {
        // A path through a link of the initramfs (/var/run) stays on the tools disk only.
        let Ok(link) = image_path(root, guest) else { continue };
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(format!("{TOOLS_MOUNT}{guest}"), &link)?;
    }
    for file in &inputs.tools {
        copy_host_file(file, &image_path(tools_root, &file.to_string_lossy())?)?;
    }
    for (guest, (host, _)) in &inputs.own {
        let dest = image_path(tools_root, guest)?;
        let _ = fs::remove_file(&dest);
        if is_elf(host) {
            strip_copy(host, &dest)?;
        } else {
            copy_host_file(host, &dest)?;
        }
    }
    let guest_paths = inputs
        .tools
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .chain(inputs.own.keys().cloned());
    for (link, target) in tools_links(guest_paths) {
        let link = image_path(root, &link)?;
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        if link.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            bail!("{} is a directory in the guest; a file cannot go there", link.display());
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)?;
    }
    let mut order = String::new();
    if let Some(modules_dir) = &kernel.modules {
        for m in &inputs.modules {
            let dest = root.join("lib/modules").join(&kernel.version).join(m);
            fs::create_dir_all(dest.parent().unwrap())?;
            fs::copy(modules_dir.join(m), &dest)?;
            order += &format!("{}/{m}\n", kernel.version);
        }
    }
    fs::write(root.join("etc/vmcheck/modules"), order)?;
    write_script(&root.join("etc/vmcheck/rc"), RC)?;
    write_script(&root.join("etc/vmcheck/qga"), QGA)?;
    write_script(&root.join("etc/vmcheck/service"), SERVICE)?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    // The recipe's text files: real files in the initramfs, written last, so they win.
    for f in inputs.recipe.files() {
        let path = image_path(root, &f.path)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            bail!("the recipe's file {} is a directory in the guest", f.path);
        }
        let _ = fs::remove_file(&path);
        fs::write(&path, &f.contents)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    }
    let mut inittab = INITTAB.to_string();
    for svc in inputs.recipe.services() {
        fs::write(
            root.join(format!("etc/vmcheck/services/{}.cmd", svc.name)),
            format!("{}\n", svc.command),
        )?;
        let (action, mode) = if svc.respawn { ("respawn", "respawn") } else { ("once", "once") };
        inittab += &format!("::{action}:/etc/vmcheck/service {} {mode}\n", svc.name);
    }
    fs::write(root.join("etc/inittab"), inittab)?;
    Ok(())
}

/// A library `ldd` found nowhere.
#[derive(Debug)]
struct MissingLibrary {
    /// The package that holds `file`.
    package: String,
    /// The file's path in the guest.
    file: PathBuf,
    library: String,
}

/// The ELF files of the unpacked packages asked `ldd` what they need: the host libraries among
/// the answers, and each library found nowhere.
fn deb_libraries(debs: &[Deb]) -> Result<(BTreeSet<PathBuf>, Vec<MissingLibrary>)> {
    let mut lib_dirs = Vec::new();
    for deb in debs {
        for d in ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib"] {
            if deb.root.join(d).is_dir() {
                lib_dirs.push(deb.root.join(d).to_string_lossy().into_owned());
            }
        }
    }
    let library_path = lib_dirs.join(":");
    let mut host = BTreeSet::new();
    let mut missing = Vec::new();
    for deb in debs {
        let mut paths = Vec::new();
        collect_paths(&deb.root, &deb.root, &mut paths)?;
        for p in paths {
            let file = deb.root.join(&p);
            let Ok(m) = file.symlink_metadata() else { continue };
            if !m.is_file() || !is_elf(&file) {
                continue;
            }
            let out = Command::new("ldd")
                .arg(&file)
                .env("LD_LIBRARY_PATH", &library_path)
                .output()
                .with_context(|| format!("running ldd {}", file.display()))?;
            if !out.status.success() {
                continue; // static, or not a program ldd can read
            }
            let (found, not_found) = parse_ldd_lenient(&String::from_utf8_lossy(&out.stdout));
            for lib in found {
                if !debs.iter().any(|d| lib.starts_with(&d.root)) {
                    host.insert(lib);
                }
            }
            for lib in not_found {
                missing.push(MissingLibrary {
                    package: deb.package.clone(),
                    file: PathBuf::from(format!("/{p}")),
                    library: lib,
                });
            }
        }
    }
    Ok((host, missing))
}

/// `apt-cache depends` output: the `Depends` and `Pre-Depends` groups, each the alternatives in
/// order (virtual packages, in `<>`, left out; `:any` dropped).
fn parse_depends(text: &str) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        let t = line.trim_start();
        let (alt, rest) = match t.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let Some(name) =
            rest.strip_prefix("Depends: ").or_else(|| rest.strip_prefix("PreDepends: "))
        else {
            continue;
        };
        let name = name.trim();
        let continues = open;
        open = alt;
        if !continues {
            groups.push(Vec::new());
        }
        if !name.starts_with('<') {
            groups
                .last_mut()
                .expect("a group")
                .push(name.split(':').next().unwrap_or(name).to_string());
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

fn host_has_package(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_download(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    run(Command::new("apt-get")
        .args(["download", &format!("{package}={version}")])
        .current_dir(dir))
    .with_context(|| {
        format!("downloading {package}; is the package list current? (apt-get update)")
    })?;
    fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))
}

fn apt_lists_mtime() -> Option<std::time::SystemTime> {
    fs::metadata("/var/lib/apt/lists").ok().and_then(|m| m.modified().ok())
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Where the facts about host files are remembered, in the cache ([`Images::memo`]).
const MEMO_FILE: &str = "host-files.json";

/// What is remembered about a host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    Sha256,
    Libraries,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Remembered {
    Sha256(String),
    Libraries(Vec<PathBuf>),
}

impl Remembered {
    fn sha256(self) -> Result<String> {
        match self {
            Remembered::Sha256(h) => Ok(h),
            other => Err(anyhow!("{MEMO_FILE}: expected a hash, found {other:?}")),
        }
    }
    fn libraries(self) -> Result<Vec<PathBuf>> {
        match self {
            Remembered::Libraries(l) => Ok(l),
            other => Err(anyhow!("{MEMO_FILE}: expected libraries, found {other:?}")),
        }
    }
}

/// A remembered fact and what says the file is still the one it is about.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MemoEntry {
    stamp: String,
    value: Remembered,
}

fn memo_key(path: &Path, fact: Fact) -> String {
    format!("{fact:?} {}", path.display())
}

/// What says `path` is the same file: its size, mtime (ns) and inode; for its libraries, also
/// `/etc/ld.so.cache`'s. `None` when the file cannot be looked at (then nothing is remembered).
fn memo_stamp(path: &Path, fact: Fact) -> Option<String> {
    let stamp = |p: &Path| {
        fs::metadata(p)
            .ok()
            .map(|m| format!("{}:{}.{}:{}", m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
    };
    let file = stamp(path)?;
    Some(match fact {
        Fact::Sha256 => file,
        Fact::Libraries => {
            format!(
                "{file} ld.so.cache {}",
                stamp(Path::new("/etc/ld.so.cache")).unwrap_or_default()
            )
        }
    })
}

/// The remembered facts; none when the file is missing or unreadable.
fn read_memo(cache_dir: &Path) -> BTreeMap<String, MemoEntry> {
    fs::read(cache_dir.join(MEMO_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn is_elf(path: &Path) -> bool {
    let mut head = [0u8; 4];
    fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).is_ok()
        && head == *b"\x7fELF"
}

/// Where the guest path `guest` is under `root` (the staging initramfs or tools disk), refused
/// when a directory on the way is a symlink: the image's links (`/var/run` -> `/run`, a
/// package's) point into the guest, and followed on the host they would write outside `root`.
fn image_path(root: &Path, guest: &str) -> Result<PathBuf> {
    let normalized = crate::recipe::normalize(guest);
    let rel = normalized.trim_start_matches('/');
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        if at.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "the guest path {guest} goes through the link /{} of the image; name the path it points to",
                at.strip_prefix(root)?.display()
            );
        }
    }
    Ok(root.join(rel))
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

/// Packs `dir` as a read-only ext4 image labelled `label` with `mke2fs -d` (no root, no journal:
/// nothing writes it), just big enough.
pub(crate) fn write_ext4(dir: &Path, out: &Path, label: &str) -> Result<()> {
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
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-b",
            "4096",
            "-L",
            label,
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(dir)
        .arg(out)
        .arg(format!("{kib}k")))
    .with_context(|| format!("building the ext4 image {}", out.display()))
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
    let u32_at =
        |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at =
        |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (Some(ptype), Some(offset), Some(size)) =
            (u32_at(ph), u64_at(ph + 8), u64_at(ph + 0x20))
        else {
            return false;
        };
        if ptype != 4 {
            continue;
        }
        let mut at = offset;
        while at + 12 <= offset + size {
            let (Some(namesz), Some(descsz), Some(ntype)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
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
    let dep_text = fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules_dir.display()))?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    module_order_from(&dep_text, &builtin, wanted)
}

fn module_order_from(dep_text: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    // Indexed once, each line's dependencies split only when visited: a scan of modules.dep's
    // ~4,000 lines per wanted module made this 40 ms of every run's set-up.
    let mut deps: HashMap<&str, &str> = HashMap::new();
    let mut paths: HashMap<String, &str> = HashMap::new();
    for (m, d) in dep_text.lines().filter_map(|l| l.split_once(':')) {
        let m = m.trim();
        deps.insert(m, d);
        paths.entry(module_name(m)).or_insert(m);
    }
    let is_builtin = |name: &str| builtin.lines().any(|p| module_name(p) == name.replace('-', "_"));
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit<'a>(
        m: &'a str,
        deps: &HashMap<&'a str, &'a str>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m) {
            return;
        }
        for d in deps.get(m).map(|d| d.split_whitespace()).into_iter().flatten() {
            visit(d, deps, seen, order);
        }
        order.push(m.to_string());
    }
    for name in wanted {
        match paths.get(&name.replace('-', "_")) {
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
pub(crate) fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries make ldd fail with "not a dynamic executable".
        return Ok(Vec::new());
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

/// `ldd` output: the libraries found (with the loader), and the names of those not found.
fn parse_ldd_lenient(text: &str) -> (Vec<PathBuf>, Vec<String>) {
    let mut libs = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            missing.push(line.split_whitespace().next().unwrap_or(line).to_string());
            continue;
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    (libs, missing)
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

/// Copies a host file to `dest` (replacing what is there, never writing through a link),
/// following links at the source, keeping its mode.
fn copy_host_file(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    if dest.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(dest)?;
    }
    fs::copy(src, dest).with_context(|| format!("copying {} into the image", src.display()))?;
    Ok(())
}

/// Copies the project's own binary without its debug info: image size costs boot time (and,
/// for `--in-guest`, copy time). Without `strip` on the host it is copied as it is. Mode 0755.
pub(crate) fn strip_copy(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let stripped = which::which("strip").is_ok()
        && Command::new("strip")
            .arg("-o")
            .arg(dest)
            .arg(src)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
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
    let missing: Vec<_> =
        BUILD_TOOLS.iter().filter(|(tool, _)| which::which(tool).is_err()).collect();
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
        .ok_or_else(|| {
            anyhow!("apt-cache knows no kernel behind {KERNEL_META_PACKAGE}; run: apt-get update")
        })
}

fn package_candidate_version(package: &str) -> Result<String> {
    let text = output(Command::new("apt-cache").args(["policy", package]))?;
    text.lines().filter_map(|l| l.trim().strip_prefix("Candidate: ")).find(|v| *v != "(none)").map(str::to_string).ok_or_else(|| {
        anyhow!("apt knows no Debian package {package} (apt-cache policy shows no candidate): check the name, or run apt-get update")
    })
}

fn single_dir_name(dir: &Path) -> Result<String> {
    let names: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one kernel version under {}, found {names:?}", dir.display()),
    }
}

/// The host path [`Recipe::target`] names when [`find_target_daemon`] finds no daemon: the image
/// builder builds it from vmcheck's source ([`Images::build_target_daemon`]).
pub const DAEMON_FROM_SOURCE: &str = "<vmcheck-target, built from vmcheck's source>";

impl Images {
    /// `recipe`, with the daemon built where it names [`DAEMON_FROM_SOURCE`].
    fn with_built_daemon(&self, recipe: Recipe) -> Result<Recipe> {
        if !recipe.host_files().iter().any(|f| f.host.as_os_str() == DAEMON_FROM_SOURCE) {
            return Ok(recipe);
        }
        let built = self.build_target_daemon()?;
        Ok(recipe.replace_host_file(Path::new(DAEMON_FROM_SOURCE), &built))
    }

    /// Builds `vmcheck-target` from the source of the vmcheck crate this program was compiled
    /// with (a path or git dependency: cargo has the whole checkout, the daemon's package in
    /// `daemon/` with it), for a crate that depends on vmcheck and so has no vmcheck binaries of
    /// its own. The build goes to vmcheck's own `target/` when its checkout is writable (a path
    /// dependency: what `cargo build` there made is reused), else to `<cache>/target-daemon`.
    /// cargo decides whether anything is to do: the first build takes minutes, later ones about
    /// a second.
    pub fn build_target_daemon(&self) -> Result<PathBuf> {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"));
        let writable =
            |dir: &Path| nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok();
        let in_cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| dirs::home_dir().map(|h| h.join(".cargo")));
        let target_dir = match in_cargo_home {
            Some(home) if source.starts_with(&home) => self.cache_dir.join("target-daemon"),
            _ if writable(source) => source.join("target"),
            _ => self.cache_dir.join("target-daemon"),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = source.join("daemon").join("Cargo.toml");
        if !manifest.is_file() {
            bail!(
                "vmcheck's source in {} has no daemon/Cargo.toml (vmcheck-target's package): depend on vmcheck by path or git, or set VMCHECK_TARGET_BIN",
                source.display()
            );
        }
        self.say(&format!(
            "building vmcheck-target from {} into {} (cargo build --manifest-path {})",
            source.display(),
            target_dir.display(),
            manifest.display()
        ));
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir);
        if source.join("Cargo.lock").is_file() {
            cmd.arg("--locked");
        }
        run(&mut cmd).with_context(|| {
            format!("building the target daemon from vmcheck's source in {} (or set VMCHECK_TARGET_BIN)", source.display())
        })?;
        let built = target_dir.join("debug").join("vmcheck-target");
        if !built.is_file() {
            bail!("cargo built vmcheck-target, but {} is not there", built.display());
        }
        Ok(built)
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
    [dir.join("vmcheck-target"), dir.parent()?.join("vmcheck-target")]
        .into_iter()
        .find(|p| p.is_file())
}

fn lock_file(path: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))
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
    fn a_host_files_hash_is_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images { cache_dir: dir.path().to_path_buf(), verbose: false, fetch: false };
        let file = dir.path().join("tool");
        fs::write(&file, "one").unwrap();
        let computed = std::cell::Cell::new(0);
        let hash = || {
            images
                .memo(&file, Fact::Sha256, || {
                    computed.set(computed.get() + 1);
                    file_sha256(&file).map(Remembered::Sha256)
                })
                .unwrap()
                .sha256()
                .unwrap()
        };
        let first = hash();
        assert_eq!((hash(), computed.get()), (first.clone(), 1), "remembered");
        // Another content (and length): asked again, and the entry replaced.
        fs::write(&file, "two!").unwrap();
        let second = hash();
        assert_ne!(second, first);
        assert_eq!((hash(), computed.get()), (second, 2));
        assert_eq!(read_memo(dir.path()).len(), 1);
    }

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
        assert!(module_order_from(DEP, "kernel/fs/configfs/configfs.ko\n", &["configfs"])
            .unwrap()
            .is_empty());
        let err = module_order_from(DEP, "", &["nvmet"]).unwrap_err();
        assert!(err.to_string().contains("nvmet"), "{err}");
    }

    #[test]
    fn tools_disk_holds_what_the_initramfs_lacks_and_is_linked_from_the_usual_paths() {
        let boot: BTreeSet<PathBuf> = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/sbin/qemu-ga"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let tools: BTreeSet<PathBuf> = [
            "/usr/bin/fio",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libaio.so.1",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let only = tools_only(&boot, tools);
        assert_eq!(
            only,
            ["/lib/x86_64-linux-gnu/libaio.so.1", "/usr/bin/fio"]
                .iter()
                .map(PathBuf::from)
                .collect()
        );
        let links = tools_links(
            only.iter()
                .map(|p| p.to_string_lossy().into_owned())
                .chain(["/usr/bin/vmcheck-target".to_string()]),
        );
        assert_eq!(
            links,
            [
                (
                    "/lib/x86_64-linux-gnu/libaio.so.1".to_string(),
                    "/tools/lib/x86_64-linux-gnu/libaio.so.1".to_string()
                ),
                ("/usr/bin/fio".to_string(), "/tools/usr/bin/fio".to_string()),
                (
                    "/usr/bin/vmcheck-target".to_string(),
                    "/tools/usr/bin/vmcheck-target".to_string()
                ),
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
        assert!(has_pvh_note(&elf_with_notes(&[
            (b"GNU\0", 3, b"abcd"),
            (b"Xen\0", 18, &[0, 0, 0, 1])
        ])));
        assert!(!has_pvh_note(&elf_with_notes(&[(b"Xen\0", 17, &[1, 2, 3, 4])])));
        assert!(!has_pvh_note(b"MZ not an elf"));
        let mut truncated = elf_with_notes(&[(b"Xen\0", 18, &[0, 0, 0, 1])]);
        truncated.truncate(130);
        assert!(!has_pvh_note(&truncated));
    }

    fn inputs_of(recipe: Recipe) -> Inputs {
        Inputs {
            recipe,
            kernel: "linux-image-x=1 /k/vmlinux".into(),
            files: BTreeSet::new(),
            tools: BTreeSet::new(),
            own: BTreeMap::new(),
            debs: Vec::new(),
            modules: Vec::new(),
        }
    }

    #[test]
    fn everything_in_a_recipe_changes_the_image_hash() {
        let base = Recipe::new("r");
        let mut variants: Vec<Inputs> = [
            base.clone(),
            base.clone().named("s"),
            base.clone().file("/etc/a", "1"),
            base.clone().file("/etc/a", "2"),
            base.clone().file("/etc/b", "1"),
            base.clone().service("s", "x"),
            base.clone().service("s", "y"),
            base.clone().service_once("s", "x"),
            base.clone().service("t", "x"),
            base.clone().forward_port(10124),
        ]
        .into_iter()
        .map(inputs_of)
        .collect();
        // What the recipe resolves to: the kernel, host files by guest path and content,
        // Debian packages by version, modules in load order.
        let resolved = |f: &dyn Fn(&mut Inputs)| {
            let mut i = inputs_of(base.clone());
            f(&mut i);
            i
        };
        variants.push(resolved(&|i| i.kernel = "linux-image-x=2 /k/vmlinux".into()));
        variants.push(resolved(&|i| {
            i.own.insert("/usr/bin/d".into(), ("/h/d".into(), "aa".into()));
        }));
        variants.push(resolved(&|i| {
            i.own.insert("/usr/bin/d".into(), ("/h/d".into(), "bb".into()));
        }));
        variants.push(resolved(&|i| {
            i.own.insert("/usr/bin/e".into(), ("/h/d".into(), "aa".into()));
        }));
        let deb = |version: &str| Deb {
            package: "tgt".into(),
            version: version.into(),
            root: "/c/debs/tgt/root".into(),
        };
        variants.push(resolved(&|i| i.debs.push(deb("1"))));
        variants.push(resolved(&|i| i.debs.push(deb("2"))));
        variants.push(resolved(&|i| i.modules = vec!["kernel/a.ko".into(), "kernel/b.ko".into()]));
        variants.push(resolved(&|i| i.modules = vec!["kernel/b.ko".into(), "kernel/a.ko".into()]));
        let hashes: BTreeSet<String> = variants.iter().map(Inputs::hash).collect();
        assert_eq!(hashes.len(), variants.len(), "two different inputs share a hash");
        // The same inputs, the same hash; a host file's host path is not content.
        assert_eq!(inputs_of(base.clone()).hash(), inputs_of(base.clone()).hash());
        let mut moved = resolved(&|i| {
            i.own.insert("/usr/bin/d".into(), ("/h/d".into(), "aa".into()));
        });
        moved.own.insert("/usr/bin/d".into(), ("/elsewhere/d".into(), "aa".into()));
        assert_eq!(moved.hash(), variants[11].hash());
    }

    #[test]
    fn nothing_is_written_through_a_link_of_the_image() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/run", root.path().join("run-link")).unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        assert_eq!(image_path(root.path(), "/etc//x").unwrap(), root.path().join("etc/x"));
        let e = image_path(root.path(), "/run-link/x").unwrap_err().to_string();
        assert!(e.contains("/run-link/x") && e.contains("link /run-link"), "{e}");
        // The last component may be a link: it is replaced, not written through.
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("etc/h")).unwrap();
        let src = root.path().join("src");
        fs::write(&src, "mine").unwrap();
        copy_host_file(&src, &image_path(root.path(), "/etc/h").unwrap()).unwrap();
        assert_eq!(fs::read_to_string(root.path().join("etc/h")).unwrap(), "mine");
        assert!(!root.path().join("etc/h").symlink_metadata().unwrap().file_type().is_symlink());
    }

    #[test]
    fn depends_groups_are_parsed() {
        let text = "tgt\n  PreDepends: init-system-helpers\n  Depends: libaio1\n |Depends: libsystemd0\n  Depends: libelogind0\n    libelogind0\n  Depends: <perl:any>\n    perl\n  Depends: libfoo:any\n  Suggests: tgt-rbd\n";
        assert_eq!(
            parse_depends(text),
            [
                vec!["init-system-helpers".to_string()],
                vec!["libaio1".into()],
                vec!["libsystemd0".into(), "libelogind0".into()],
                vec!["libfoo".into()]
            ]
        );
    }

    #[test]
    fn ldd_output_is_parsed_leniently_for_packages() {
        let (found, missing) = parse_ldd_lenient(
            "\tlibtgt.so.1 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n",
        );
        assert_eq!(found, [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")]);
        assert_eq!(missing, ["libtgt.so.1"]);
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibnvme.so.1 => /lib/x86_64-linux-gnu/libnvme.so.1 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libnvme.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
