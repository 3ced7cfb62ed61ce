//! Recipes: what a guest built without Nix holds, declared from Rust.
//!
//! A [`Recipe`] lists what [`crate::images::Images::ensure`] puts into a machine's image on top
//! of the base every image has (busybox as init and shell, the guest agent, `lsblk`, the virtio,
//! NVMe and ext4 modules, `rc.sh`: section 4 of ARCHITECTURE.md): a kernel, Debian packages,
//! host binaries and files, kernel modules, text files, services started at boot, and the guest
//! ports the driver forwards to loopback. vmcheck's own two machines are recipes written with
//! this same API ([`Recipe::target`], [`Recipe::initiator`]); another project declares its own
//! and boots it with [`crate::config::NodeSpec::with_recipe`]:
//!
//! ```no_run
//! use vmcheck::config::{NodeSpec, Role};
//! use vmcheck::recipe::Recipe;
//!
//! let recipe = Recipe::initiator()
//!     .named("with-tgt")
//!     .debian_package("tgt")
//!     .file("/etc/tgt/conf.d/empty.conf", "# no targets at boot\n")
//!     .service("tgtd", "/usr/sbin/tgtd -f");
//! let node = NodeSpec::new("storage", Role::Initiator, 3).with_recipe(recipe);
//! ```
//!
//! Building a recipe never changes the host: Debian packages are fetched with `apt-get download`
//! and unpacked with `dpkg -x` into the cache. Bad input is an error that names what is wrong:
//! [`Recipe::check`] finds what can be found without building (a host file that is not there, two
//! services with one name, a relative guest path); `ensure` the rest (a Debian package apt does
//! not know, a module the kernel lacks, a library no one provides).
//!
//! ## Shared libraries of Debian packages
//!
//! A package's files go into the image as `dpkg -x` leaves them. Every ELF file among them is
//! asked `ldd` (with the unpacked packages' library directories on `LD_LIBRARY_PATH`) what it
//! needs: a library the unpacked packages hold is there already; one the host has is copied from
//! the host, as for host binaries. When a library is found nowhere, the `Depends` and
//! `Pre-Depends` of the package that misses it (and then of the dependencies unpacked for it)
//! that are not installed on the host are unpacked too, and `ldd` asked again, until nothing is
//! missing; a library still missing when nothing is left to unpack is an error naming the file,
//! its package and the library. So a package's dependencies that the host already has are
//! taken from the host (the guest runs the host's libraries, as it does for every host binary),
//! and nothing more than what the binaries need is fetched.
//!
//! ## Services
//!
//! A service is a shell command line that busybox init starts after `rc.sh` (so the tools disk
//! is mounted and the test network is up). [`Recipe::service`] restarts it one second after it
//! exits; [`Recipe::service_once`] runs it once. Its stdout and stderr reach the console (each
//! line prefixed with the service's name), and so the run's console log, and
//! `/run/vmcheck/services/NAME.log` in the guest. While it runs its pid is in
//! `/run/vmcheck/services/NAME.pid`; each exit appends the status to
//! `/run/vmcheck/services/NAME.exits` and logs `vmcheck: service NAME exited with status N` on
//! the console with its last ten lines. [`service_exits`] reads the exits from the host side.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Role;

/// Where the guest keeps the state of the recipe's services (pid, log, exits).
pub const SERVICE_STATE_DIR: &str = "/run/vmcheck/services";

/// The recipe's warm-up script in the guest ([`Recipe::warm_up`]): one command line a line.
pub const WARM_UP_PATH: &str = "/etc/vmcheck/warm-up";

/// The kernel a recipe boots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelSource {
    /// `$VMCHECK_KERNEL_PACKAGE`, else the package behind Debian's `linux-image-amd64`.
    #[default]
    Default,
    /// A Debian kernel package by name (`linux-image-6.1.0-28-amd64`), fetched with apt.
    Package(String),
    /// A kernel file on the host: a kernel `.deb` (`make bindeb-pkg`, with its modules), or a
    /// bare `bzImage`/`vmlinux`, which brings no modules (what the base needs must be built in).
    File(PathBuf),
}

/// A host file that goes into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFile {
    /// The file on the host.
    pub host: PathBuf,
    /// Where the guest sees it (absolute).
    pub guest: String,
}

/// A text file the recipe writes into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Where the guest sees it (absolute).
    pub path: String,
    /// Its text.
    pub contents: String,
}

/// A command line busybox init runs at boot (see the module documentation for the contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The service's name: a file name in the guest and the prefix of its console lines.
    pub name: String,
    /// A shell command line (run with `sh`); it should stay in the foreground (its exit is
    /// reported once its output is closed, which a child it leaves running holds back).
    pub command: String,
    /// Started again one second after it exits (true), or run once.
    pub respawn: bool,
}

/// What a default-image guest holds beyond the base: built with methods, built into an image by
/// [`crate::images::Images::ensure`]. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    name: String,
    #[serde(default)]
    kernel: KernelSource,
    #[serde(default)]
    debian_packages: Vec<String>,
    #[serde(default)]
    host_files: Vec<HostFile>,
    #[serde(default)]
    kernel_modules: Vec<String>,
    #[serde(default)]
    files: Vec<GuestFile>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    forward_ports: Vec<u16>,
    /// What went wrong while the recipe was declared, reported by [`Recipe::check`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
}

/// The target daemon's script: `--traddr` from the first `vmcheck.net` address.
const TARGET_SH: &str = include_str!("images/target.sh");
const ISCSID_SH: &str = include_str!("images/iscsid.sh");
const ISCSID_CONF: &str = include_str!("images/iscsid.conf");

/// nvmet for NVMe-oF; LIO (core, the block backstore, the iSCSI fabric) for iSCSI. Both iSCSI
/// ends allocate a crc32c hash for every connection (digests or not) and fail the login without
/// one: crc32c_generic, since a TCG CPU may lack SSE4.2 for crc32c-intel.
const TARGET_MODULES: &[&str] = &[
    "configfs",
    "nvmet",
    "nvmet-tcp",
    "crc32c_generic",
    "target_core_mod",
    "target_core_iblock",
    "iscsi_target_mod",
];
/// nvme-tcp for NVMe-oF; the iSCSI initiator (libiscsi and scsi_transport_iscsi come as its
/// dependencies) and SCSI disks.
const INITIATOR_MODULES: &[&str] =
    &["nvme-tcp", "crc32c_generic", "iscsi_tcp", "libiscsi", "scsi_transport_iscsi", "sd_mod"];
const INITIATOR_BINARIES: &[&str] =
    &["/usr/sbin/nvme", "/usr/bin/fio", "/usr/sbin/iscsiadm", "/usr/sbin/iscsid"];

impl Recipe {
    /// An empty recipe named `name`: the base image and the default kernel, nothing more. The
    /// name shows in the image's cache directory and in logs; it need not be unique (the cache
    /// key is the whole recipe).
    pub fn new(name: &str) -> Recipe {
        Recipe {
            name: name.to_string(),
            kernel: KernelSource::Default,
            debian_packages: Vec::new(),
            host_files: Vec::new(),
            kernel_modules: Vec::new(),
            files: Vec::new(),
            services: Vec::new(),
            forward_ports: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// vmcheck's storage target: nvmet and LIO modules, the `vmcheck-target` daemon (found by
    /// [`crate::images::find_target_daemon`]: `$VMCHECK_TARGET_BIN`, else beside the running
    /// executable; in a crate that depends on vmcheck, neither: then the image builder builds
    /// it from vmcheck's source with cargo, once) at `/usr/bin/vmcheck-target`, run as a
    /// service, its gRPC port forwarded.
    pub fn target() -> Recipe {
        let daemon = crate::images::find_target_daemon()
            .unwrap_or_else(|| PathBuf::from(crate::images::DAEMON_FROM_SOURCE));
        Recipe::new("target")
            .kernel_modules(TARGET_MODULES)
            .host_file(daemon, "/usr/bin/vmcheck-target")
            .file("/etc/vmcheck/target", TARGET_SH)
            .service("vmcheck-target", "sh /etc/vmcheck/target")
            .forward_port(crate::target::GRPC_PORT)
    }

    /// vmcheck's initiator: nvme-tcp and the iSCSI initiator modules, nvme-cli, fio and
    /// open-iscsi from the host, `iscsid` as a service with vmcheck's `iscsid.conf`; the tools
    /// run once before its snapshot is saved ([`Recipe::warm_up`]).
    pub fn initiator() -> Recipe {
        let mut recipe = Recipe::new("initiator").kernel_modules(INITIATOR_MODULES);
        for binary in INITIATOR_BINARIES {
            recipe = recipe.host_binary(binary);
        }
        recipe
            .file("/etc/iscsi/iscsid.conf", ISCSID_CONF)
            .file("/etc/vmcheck/iscsid", ISCSID_SH)
            .service("iscsid", "sh /etc/vmcheck/iscsid")
            .warm_up("fio --version")
            .warm_up("nvme version")
            .warm_up("iscsiadm --version")
            .warm_up("lsblk --version")
    }

    /// The predefined recipe of `role`.
    pub fn for_role(role: Role) -> Recipe {
        match role {
            Role::Target => Recipe::target(),
            Role::Initiator => Recipe::initiator(),
        }
    }

    /// The same recipe under another name (to derive one from a predefined recipe).
    pub fn named(mut self, name: &str) -> Recipe {
        self.name = name.to_string();
        self
    }

    /// Boots the Debian kernel package `package` (fetched with apt) instead of the default.
    pub fn kernel_package(mut self, package: &str) -> Recipe {
        self.kernel = KernelSource::Package(package.to_string());
        self
    }

    /// Boots the kernel in the host file `path`: a kernel `.deb`, or a bare kernel image (which
    /// brings no modules: [`Recipe::kernel_module`] is then an error, and what the base loads as
    /// modules, virtio and ext4 among them, must be built in).
    pub fn kernel_file(mut self, path: impl Into<PathBuf>) -> Recipe {
        self.kernel = KernelSource::File(path.into());
        self
    }

    /// Unpacks the Debian package `package` (apt's candidate version) into the guest, with the
    /// shared libraries its binaries need (see the module documentation). Nothing is installed
    /// on the host, and no maintainer script runs.
    pub fn debian_package(mut self, package: &str) -> Recipe {
        self.debian_packages.push(package.to_string());
        self
    }

    /// Copies the host executable `path` to the same path in the guest, with the shared
    /// libraries `ldd` names.
    pub fn host_binary(self, path: impl AsRef<Path>) -> Recipe {
        let path = path.as_ref();
        let guest = path.to_string_lossy().into_owned();
        self.host_file(path, &guest)
    }

    /// Copies the host file `host` to `guest` in the guest (read-only, on the tools disk). An ELF
    /// file is copied without its debug information and brings the shared libraries `ldd` names.
    pub fn host_file(mut self, host: impl Into<PathBuf>, guest: &str) -> Recipe {
        self.host_files.push(HostFile { host: host.into(), guest: guest.to_string() });
        self
    }

    /// Loads the kernel module `name` at boot, after the modules it depends on (`modules.dep`).
    pub fn kernel_module(mut self, name: &str) -> Recipe {
        self.kernel_modules.push(name.to_string());
        self
    }

    /// [`Recipe::kernel_module`] for each of `names`, in order.
    pub fn kernel_modules(self, names: &[&str]) -> Recipe {
        names.iter().fold(self, |r, m| r.kernel_module(m))
    }

    /// Writes `contents` to `path` in the guest (mode 0644, in the initramfs, so writable at
    /// run time). Run a script with `sh PATH`.
    pub fn file(mut self, path: &str, contents: &str) -> Recipe {
        self.files.push(GuestFile { path: path.to_string(), contents: contents.to_string() });
        self
    }

    /// Starts `command_line` (with `sh`) at boot as the service `name`, and again one second
    /// after each exit. Its exits are logged and counted (see the module documentation).
    pub fn service(mut self, name: &str, command_line: &str) -> Recipe {
        self.services.push(Service {
            name: name.to_string(),
            command: command_line.to_string(),
            respawn: true,
        });
        self
    }

    /// Runs `command_line` once at boot as the service `name`: not restarted when it exits.
    pub fn service_once(mut self, name: &str, command_line: &str) -> Recipe {
        self.services.push(Service {
            name: name.to_string(),
            command: command_line.to_string(),
            respawn: false,
        });
        self
    }

    /// Runs `command_line` (with `sh`, output discarded, failures ignored) once before the
    /// machine's snapshot is saved (ARCHITECTURE.md section 15), so that every restore starts
    /// with the files it read in the guest's page cache: a tool's binary and libraries, read
    /// from the tools disk at its first run otherwise. fio, with its 60 shared libraries (about
    /// 30 MiB of them read), took 2 to 3 s longer to start from a cold page cache under TCG. The
    /// lines go to [`WARM_UP_PATH`] in the guest, and so into the image's hash: a changed
    /// warm-up saves the snapshots again. After each restore the script runs once more, in the
    /// background at the lowest priority: TCG translates every code path afresh after a
    /// restore (a restored initiator's first short fio job took 1.23 s, the next 0.66 s).
    pub fn warm_up(mut self, command_line: &str) -> Recipe {
        let line = format!("{command_line}\n");
        match self.files.iter_mut().find(|f| f.path == WARM_UP_PATH) {
            Some(f) => f.contents.push_str(&line),
            None => self.files.push(GuestFile { path: WARM_UP_PATH.into(), contents: line }),
        }
        self
    }

    /// Forwards the guest's TCP port `port` to a loopback port of the run
    /// ([`crate::Machine::forwarded_addr`]); the machine then has the control NIC.
    pub fn forward_port(mut self, port: u16) -> Recipe {
        self.forward_ports.push(port);
        self
    }

    /// The recipe with the host file at `from` taken from `to` instead.
    pub(crate) fn replace_host_file(mut self, from: &Path, to: &Path) -> Recipe {
        for f in &mut self.host_files {
            if f.host == from {
                f.host = to.to_path_buf();
            }
        }
        self
    }

    /// The recipe's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel it boots.
    pub fn kernel(&self) -> &KernelSource {
        &self.kernel
    }

    /// The Debian packages it unpacks, as declared.
    pub fn debian_packages(&self) -> &[String] {
        &self.debian_packages
    }

    /// The host files (binaries included) it copies.
    pub fn host_files(&self) -> &[HostFile] {
        &self.host_files
    }

    /// The kernel modules it loads, as declared (their dependencies come on top).
    pub fn modules(&self) -> &[String] {
        &self.kernel_modules
    }

    /// The text files it writes.
    pub fn files(&self) -> &[GuestFile] {
        &self.files
    }

    /// Its services, in the order init starts them.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The guest ports the driver forwards.
    pub fn forward_ports(&self) -> &[u16] {
        &self.forward_ports
    }

    /// What can be checked without building: the name, the paths, the services, the ports, and
    /// that every host file is there. Every problem found is named, all in one error.
    pub fn check(&self) -> Result<()> {
        let mut problems = self.problems.clone();
        if !plain_name(&self.name) {
            problems.push(format!(
                "the name {:?} must be letters, digits, '-', '_' and '.', at most 64",
                self.name
            ));
        }
        if let KernelSource::File(path) = &self.kernel {
            if !path.is_file() {
                problems.push(format!("the kernel file {} is not there", path.display()));
            }
        }
        if let KernelSource::Package(p) = &self.kernel {
            if !debian_name(p) {
                problems.push(format!("{p:?} is not a Debian package name"));
            }
        }
        for p in &self.debian_packages {
            if !debian_name(p) {
                problems.push(format!("{p:?} is not a Debian package name"));
            }
        }
        let mut seen = BTreeSet::new();
        for p in &self.debian_packages {
            if !seen.insert(p) {
                problems.push(format!("the Debian package {p} is named twice"));
            }
        }
        let mut guest_paths = BTreeSet::new();
        let mut guest_path = |path: &str, what: &str, problems: &mut Vec<String>| {
            if let Err(e) = check_guest_path(path) {
                problems.push(format!("{what}: {e}"));
            } else if !guest_paths.insert(normalize(path)) {
                problems.push(format!("{what}: the guest path {path} is declared twice"));
            }
        };
        for f in &self.host_files {
            guest_path(&f.guest, &format!("host file {}", f.host.display()), &mut problems);
            if f.host.as_os_str() == crate::images::DAEMON_FROM_SOURCE {
                continue; // Built by the image builder.
            }
            match std::fs::metadata(&f.host) {
                Ok(m) if m.is_file() => {}
                Ok(_) => problems
                    .push(format!("the host file {} is not a regular file", f.host.display())),
                Err(e) => {
                    problems.push(format!("the host file {} is not there ({e})", f.host.display()))
                }
            }
        }
        for f in &self.files {
            guest_path(&f.path, "file", &mut problems);
        }
        let mut names = BTreeSet::new();
        for s in &self.services {
            if !plain_name(&s.name) {
                problems.push(format!(
                    "the service name {:?} must be letters, digits, '-', '_' and '.', at most 64",
                    s.name
                ));
            }
            if !names.insert(s.name.as_str()) {
                problems.push(format!("two services are named {}", s.name));
            }
            if s.command.trim().is_empty() {
                problems.push(format!("the service {} has an empty command line", s.name));
            }
        }
        for m in &self.kernel_modules {
            if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                problems.push(format!("{m:?} is not a kernel module name"));
            }
        }
        let mut ports = BTreeSet::new();
        for p in &self.forward_ports {
            if *p == 0 {
                problems.push("port 0 cannot be forwarded".to_string());
            } else if !ports.insert(p) {
                problems.push(format!("port {p} is forwarded twice"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("recipe {}: {}", self.name, problems.join("; "))
        }
    }
}

impl From<Role> for Recipe {
    /// The predefined recipe of the role ([`Recipe::for_role`]).
    fn from(role: Role) -> Recipe {
        Recipe::for_role(role)
    }
}

impl From<&Recipe> for Recipe {
    fn from(recipe: &Recipe) -> Recipe {
        recipe.clone()
    }
}

/// The exit statuses of the service `name` on `machine` so far, oldest first (empty while it has
/// never exited). A status is the shell's: 128 + N for a death by signal N.
pub async fn service_exits(machine: &crate::Machine, name: &str) -> Result<Vec<i32>> {
    if !plain_name(name) {
        bail!("{name:?} is not a service name");
    }
    let text = machine
        .succeed(&format!("cat {SERVICE_STATE_DIR}/{name}.exits 2>/dev/null || true"))
        .await?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse::<i32>().with_context(|| format!("service {name}: exit status {l:?}"))
        })
        .collect()
}

/// A name that is safe as a file name and a word in a shell line.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Debian policy: lower case letters, digits, '+', '-', '.', at least two, a letter or digit first.
fn debian_name(name: &str) -> bool {
    name.len() >= 2
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

fn check_guest_path(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        bail!("the guest path {path:?} is not absolute");
    }
    if path.split('/').any(|c| c == "..") {
        bail!("the guest path {path:?} holds '..'");
    }
    if normalize(path) == "/" {
        bail!("the guest path {path:?} is the root");
    }
    if path.contains('\n') || path.contains('\0') {
        bail!("the guest path {path:?} holds a newline or NUL");
    }
    Ok(())
}

/// `/a//b/./c/` -> `/a/b/c`.
pub(crate) fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing_file() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"data").unwrap();
        f
    }

    #[test]
    fn the_predefined_recipes_are_what_the_roles_were() {
        let initiator = Recipe::initiator();
        assert_eq!(initiator.name(), "initiator");
        assert!(initiator.forward_ports().is_empty());
        assert_eq!(
            initiator.services().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["iscsid"]
        );
        assert!(initiator
            .host_files()
            .iter()
            .any(|f| f.guest == "/usr/bin/fio" && f.host == Path::new("/usr/bin/fio")));
        assert!(initiator.modules().iter().any(|m| m == "nvme-tcp"));
        let target = Recipe::target();
        assert_eq!(target.forward_ports(), [crate::target::GRPC_PORT]);
        assert_eq!(target.services()[0].name, "vmcheck-target");
        assert!(target.services()[0].respawn);
        assert!(target.modules().iter().any(|m| m == "nvmet-tcp"));
        assert_eq!(Recipe::from(Role::Initiator), initiator);
    }

    #[test]
    fn a_derived_recipe_keeps_its_base_and_adds_to_it() {
        let r = Recipe::initiator()
            .named("with-tgt")
            .debian_package("tgt")
            .service("tgtd", "/usr/sbin/tgtd -f")
            .file("/etc/x", "y\n");
        assert_eq!(r.name(), "with-tgt");
        assert_eq!(r.debian_packages(), ["tgt"]);
        assert_eq!(r.services().len(), 2);
        assert_eq!(
            r.files().last().unwrap(),
            &GuestFile { path: "/etc/x".into(), contents: "y\n".into() }
        );
        assert_ne!(r, Recipe::initiator());
        // A recipe survives JSON (it is part of NodeSpec), and an old shape reads with defaults.
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Recipe>(&json).unwrap(), r);
        let minimal: Recipe = serde_json::from_str(r#"{"name":"m"}"#).unwrap();
        assert_eq!(minimal, Recipe::new("m"));
    }

    #[test]
    fn a_good_recipe_passes_the_check() {
        let f = existing_file();
        Recipe::new("mine")
            .debian_package("tgt")
            .host_file(f.path(), "/etc/mine.conf")
            .host_binary("/bin/sh")
            .kernel_module("nvme-tcp")
            .file("/etc/motd", "hi\n")
            .service("a", "sleep 1")
            .service_once("b", "true")
            .forward_port(8080)
            .check()
            .unwrap();
    }

    #[test]
    fn bad_input_is_named_not_a_panic() {
        let err = |r: Recipe| format!("{:#}", r.check().unwrap_err());
        let e = err(Recipe::new("r").service("d", "true").service("d", "false"));
        assert!(e.contains("two services are named d"), "{e}");
        let e = err(Recipe::new("r").host_binary("/no/such/binary"));
        assert!(e.contains("/no/such/binary") && e.contains("not there"), "{e}");
        let e = err(Recipe::new("r").host_file("/etc", "/x"));
        assert!(e.contains("not a regular file"), "{e}");
        let e = err(Recipe::new("r").file("etc/relative", ""));
        assert!(e.contains("not absolute"), "{e}");
        let e = err(Recipe::new("r").file("/etc/../x", ""));
        assert!(e.contains("'..'"), "{e}");
        let e = err(Recipe::new("r").file("/etc/a", "").file("/etc//a", ""));
        assert!(e.contains("declared twice"), "{e}");
        let e = err(Recipe::new("r").debian_package("No Such"));
        assert!(e.contains("not a Debian package name"), "{e}");
        let e = err(Recipe::new("r").kernel_module("nvme tcp"));
        assert!(e.contains("not a kernel module name"), "{e}");
        let e = err(Recipe::new("r").forward_port(80).forward_port(80));
        assert!(e.contains("forwarded twice"), "{e}");
        let e = err(Recipe::new("r").service("a/b", "true"));
        assert!(e.contains("service name"), "{e}");
        let e = err(Recipe::new("has space"));
        assert!(e.contains("the name"), "{e}");
        let e = err(Recipe::new("r").kernel_file("/no/such/vmlinuz"));
        assert!(e.contains("/no/such/vmlinuz"), "{e}");
        // Several problems, one error naming each.
        let e = err(Recipe::new("r").service("d", "").host_binary("/no/a"));
        assert!(e.contains("empty command line") && e.contains("/no/a"), "{e}");
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize("/a//b/./c/"), "/a/b/c");
        assert_eq!(normalize("/"), "/");
    }
}
