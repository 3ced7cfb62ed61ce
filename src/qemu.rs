//! The QEMU process: a command line built from a typed machine description, start and stop, and
//! the serial console captured line by line.
//!
//! The driver's plumbing (QMP, guest agent, serial console, test NICs, disks) is one list of
//! arguments, [`QemuSpec::plumbing_args`], used unchanged for both default images (appended to
//! the kernel boot) and NixOS start scripts (passed in `QEMU_OPTS`), so the guest contract is the
//! same on both.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{watch, Notify};

use crate::accel::Accel;

/// How the machine boots.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// A kernel and initramfs (the default images), with the role's read-only tools disk.
    Kernel {
        /// The kernel image (`-kernel`).
        kernel: PathBuf,
        /// The initramfs (`-initrd`).
        initrd: PathBuf,
        /// The role's read-only tools disk, if it has one.
        tools: Option<PathBuf>,
        /// The kernel command line (`-append`).
        append: String,
    },
    /// A NixOS `run-<name>-vm` script; it brings its own kernel, memory and CPUs.
    StartScript {
        /// The script.
        path: PathBuf,
        /// Kernel parameters added to the script's own.
        kernel_params: String,
    },
}

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// Its own emulated NVMe controller.
    Nvme,
    /// Virtio-blk (`virtio-blk-pci`).
    VirtioBlk,
}

/// A disk: a raw image file on the host, attached as `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// The QEMU device id (`-device id=`), also the name a scenario uses for the disk.
    pub id: String,
    /// The raw image file on the host.
    pub path: PathBuf,
    /// The serial number the guest sees (how a scenario finds the disk's block device).
    pub serial: String,
    /// How it is attached.
    pub kind: DiskKind,
    /// Its PCI slot on the root bus (`addr=`), the same at a cold boot and when hot-added after
    /// a restore ([`DISK_PCI_SLOTS`]); `None` lets QEMU choose.
    pub pci_slot: Option<u8>,
    /// The device's read error policy (`rerror=`), virtio-blk only; `None`: QEMU's default.
    pub rerror: Option<crate::config::OnError>,
    /// The device's write error policy (`werror=`), virtio-blk only; `None`: QEMU's default.
    pub werror: Option<crate::config::OnError>,
}

/// The PCI slots disks take, lowest free first (a disk keeps its slot while it is plugged). The
/// NICs and the agent's virtio-serial take the slots below 0x08 in command-line order; 0x1d is
/// kept for a read-only tools disk and 0x1e is the balloon's ([`BALLOON_PCI_SLOT`]).
pub const DISK_PCI_SLOTS: std::ops::RangeInclusive<u8> = 0x08..=0x1c;

impl Disk {
    /// The `-blockdev` and `-device` arguments of a cold boot. The block nodes are the ones a
    /// hot-add makes (`Machine::attach_disk`): a `raw` node [`Disk::drive_id`] over a `file`
    /// node [`Disk::file_node`], both named, so a media fault is put between them the same way
    /// whichever way the disk came (`Machine::inject_media_error`).
    pub fn args(&self) -> Vec<String> {
        vec!["-blockdev".into(), self.blockdev_arg(), "-device".into(), self.device_arg()]
    }
    /// The disk's format (`raw`) node, which its device is attached to: `drive-<id>`.
    pub fn drive_id(&self) -> String {
        format!("drive-{}", self.id)
    }
    /// The disk's protocol (`file`) node, under its format node: `file-<id>`.
    pub fn file_node(&self) -> String {
        format!("file-{}", self.id)
    }
    /// Writeback caching (`cache.direct=off`, `cache.no-flush=off`) is `-blockdev`'s default,
    /// as it was `-drive cache=writeback`'s; `discard` is inherited by the inline file node.
    fn blockdev_arg(&self) -> String {
        format!(
            "driver=raw,node-name={},discard=unmap,file.driver=file,file.filename={},file.node-name={}",
            self.drive_id(),
            self.path.display(),
            self.file_node()
        )
    }
    /// The device's error policies as `(property, value)`: `rerror`, `werror` where set.
    pub fn error_policies(&self) -> Vec<(&'static str, String)> {
        let name = |p: crate::config::OnError| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let mut v = Vec::new();
        if let Some(p) = self.rerror {
            v.push(("rerror", name(p)));
        }
        if let Some(p) = self.werror {
            v.push(("werror", name(p)));
        }
        v
    }
    /// The QEMU device model.
    pub fn device_model(&self) -> &'static str {
        match self.kind {
            DiskKind::Nvme => "nvme",
            DiskKind::VirtioBlk => "virtio-blk-pci",
        }
    }
    fn device_arg(&self) -> String {
        let addr = self.pci_slot.map(|s| format!(",addr=0x{s:02x}")).unwrap_or_default();
        let policies: String =
            self.error_policies().iter().map(|(k, v)| format!(",{k}={v}")).collect();
        format!(
            "{},id={},drive={},serial={}{addr}{policies}",
            self.device_model(),
            self.id,
            self.drive_id(),
            self.serial
        )
    }
}

/// A NIC on a test network: a datagram link to the switch.
#[derive(Debug, Clone, PartialEq)]
pub struct Nic {
    /// The test network (VLAN) the NIC is on; one switch per VLAN.
    pub vlan: u32,
    /// The NIC's MAC address.
    pub mac: String,
    /// The guest's IPv4 address on this network.
    pub address: Ipv4Addr,
    /// The prefix length of `address`.
    pub prefix_len: u8,
    /// How its frames leave QEMU.
    pub link: NicLink,
}

/// How a NIC's frames leave QEMU (`-netdev dgram`).
#[derive(Debug, Clone, PartialEq)]
pub enum NicLink {
    /// Not linked yet: [`crate::machine::Machine`] gives each QEMU it starts a fresh socket pair.
    Unlinked,
    /// QEMU's end of a connected socket pair (the switch holds the other), inherited by the
    /// QEMU process as this fd number (`local.type=fd`); the driver closes its copy once QEMU runs.
    Fd(NicFd),
    /// QEMU binds `local` and sends to `remote` (the benchmark's QEMU-to-QEMU link).
    Unix {
        /// The socket path QEMU binds.
        local: PathBuf,
        /// The peer's socket path.
        remote: PathBuf,
    },
}

/// A socket the QEMU process inherits; equal when it is the same descriptor.
#[derive(Debug, Clone)]
pub struct NicFd(pub Arc<std::os::fd::OwnedFd>);

impl PartialEq for NicFd {
    fn eq(&self, o: &Self) -> bool {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd() == o.0.as_raw_fd()
    }
}

impl QemuSpec {
    /// The fds of the NICs' socket pairs, which the QEMU child must inherit.
    pub fn inherited_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.nics
            .iter()
            .filter_map(|n| match &n.link {
                NicLink::Fd(fd) => Some(fd.0.as_raw_fd()),
                _ => None,
            })
            .collect()
    }
}

impl Nic {
    /// The `-netdev` id: `vlan<N>`.
    pub fn netdev_id(&self) -> String {
        format!("vlan{}", self.vlan)
    }
}

/// A user-mode NIC that only forwards loopback ports to guest ports (the machine's
/// `forward_ports`, such as the target daemon's gRPC port).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNic {
    /// The guest ports forwarded from host loopback ports.
    pub guest_ports: Vec<u16>,
}

/// The control network: documentation addresses (RFC 5737 TEST-NET-2), inside QEMU only.
pub const CONTROL_NET: &str = "198.51.100.0/24";
/// The guest's address on the control network.
pub const CONTROL_GUEST_ADDR: &str = "198.51.100.15";
/// The control NIC's MAC address.
pub const CONTROL_MAC: &str = "52:54:00:ff:00:01";

/// A typed description of one QEMU machine.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuSpec {
    /// The machine's name (logs, sockets, `-name`).
    pub name: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The accelerator (KVM or TCG).
    pub accel: Accel,
    /// How it boots.
    pub boot: Boot,
    /// Guest memory in MiB (ignored by a start script, which brings its own).
    pub memory_mib: u64,
    /// Virtual CPUs (ignored by a start script).
    pub cpus: u32,
    /// Disks attached at boot.
    pub disks: Vec<Disk>,
    /// NICs on test networks.
    pub nics: Vec<Nic>,
    /// The control NIC, if any ports are forwarded.
    pub control: Option<ControlNic>,
    /// The QMP socket's path on the host.
    pub qmp_socket: PathBuf,
    /// The guest agent's socket path on the host.
    pub qga_socket: PathBuf,
    /// The balloon device, if any.
    pub balloon: Option<Balloon>,
    /// Extra guest kernel parameters, after the driver's own.
    pub kernel_params: Vec<String>,
    /// Extra QEMU arguments, appended last.
    pub extra_args: Vec<String>,
}

/// The virtio balloon device (`virtio-balloon-pci`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balloon {
    /// `deflate-on-oom=on`: the guest may take pages back when it runs out of memory.
    pub deflate_on_oom: bool,
}

/// The balloon's QEMU device id (QOM path `/machine/peripheral/balloon0`).
pub const BALLOON_ID: &str = "balloon0";
/// The balloon sits in a fixed PCI slot, at boot and when hot-plugged: a migration target then
/// places it where the source has it, whatever was plugged and unplugged before.
pub const BALLOON_PCI_SLOT: &str = "0x1e";

impl Balloon {
    /// The `-device` argument.
    pub fn device_arg(&self) -> String {
        let oom = if self.deflate_on_oom { "on" } else { "off" };
        format!("virtio-balloon-pci,id={BALLOON_ID},addr={BALLOON_PCI_SLOT},deflate-on-oom={oom}")
    }
}

/// Makes the child of `cmd` inherit `fds` (the NICs' socket pair ends) under the same numbers:
/// their close-on-exec flag is cleared in the child only, between fork and exec, so no other
/// child of this process inherits them.
pub fn inherit_fds(cmd: &mut tokio::process::Command, fds: Vec<std::os::fd::RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The oldest QEMU the driver works with: `-netdev dgram` (the test network's links) came in 7.2.
pub const MIN_QEMU_VERSION: (u32, u32) = (7, 2);

/// Finds `qemu-system-x86_64` on PATH and checks its version; the error says what to install.
pub fn find_qemu() -> Result<PathBuf> {
    Ok(find_qemu_with_version()?.0)
}

/// [`find_qemu`], with the first line of its `--version` (part of every snapshot's key): one
/// run of it serves both.
pub(crate) fn find_qemu_with_version() -> Result<(PathBuf, String)> {
    check_host_arch(std::env::consts::ARCH)?;
    let qemu = which::which("qemu-system-x86_64").map_err(|_| {
        anyhow::anyhow!("qemu-system-x86_64 is not on PATH; install it with: bash .ci/setup (QEMU from bookworm-backports)")
    })?;
    let text = version_text(&qemu)?;
    check_version_text(&qemu, &text)?;
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    Ok((qemu, line))
}

/// The machines are x86_64 throughout (QEMU's `pc` machine, `ttyS0`, the KVM probe's x86 boot
/// sector, amd64 default images built from the host's own binaries), so the driver runs on
/// x86_64 hosts only; elsewhere it says so instead of failing later in a less clear way.
pub fn check_host_arch(arch: &str) -> Result<()> {
    if arch != "x86_64" {
        bail!(
            "vmcheck runs on x86_64 Linux hosts only (its machines are x86_64: QEMU machine pc, console ttyS0, \
             amd64 images); this host is {arch}"
        );
    }
    Ok(())
}

/// Runs `qemu --version` and refuses a QEMU older than [`MIN_QEMU_VERSION`].
pub fn check_qemu_version(qemu: &Path) -> Result<(u32, u32, u32)> {
    check_version_text(qemu, &version_text(qemu)?)
}

/// What `qemu --version` prints.
fn version_text(qemu: &Path) -> Result<String> {
    let out = std::process::Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", qemu.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The version `text` (from `qemu --version`) names, refused when older than
/// [`MIN_QEMU_VERSION`].
fn check_version_text(qemu: &Path, text: &str) -> Result<(u32, u32, u32)> {
    let version = parse_qemu_version(text)
        .with_context(|| format!("{} --version printed no version: {text:?}", qemu.display()))?;
    let (major, minor) = MIN_QEMU_VERSION;
    if (version.0, version.1) < (major, minor) {
        bail!(
            "{} is QEMU {}.{}.{}; vmcheck needs QEMU {major}.{minor} or newer (for -netdev dgram). \
             On Debian 12: bash .ci/setup installs QEMU 10.0 from bookworm-backports",
            qemu.display(),
            version.0,
            version.1,
            version.2
        );
    }
    Ok(version)
}

/// The version in `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)`.
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let word = rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// The MAC of a machine's NIC on a vlan: 52:54:00 (QEMU's prefix), 12, vlan, host byte.
pub fn test_mac(vlan: u32, address: Ipv4Addr) -> String {
    format!("52:54:00:12:{:02x}:{:02x}", vlan & 0xff, address.octets()[3])
}

impl QemuSpec {
    /// Kernel parameters the default images' init reads: name, role, and the NIC addresses.
    pub fn guest_kernel_params(&self) -> String {
        let mut nets: Vec<String> =
            self.nics.iter().map(|n| format!("{},{}/{}", n.mac, n.address, n.prefix_len)).collect();
        if self.control.is_some() {
            nets.push(format!("{CONTROL_MAC},{CONTROL_GUEST_ADDR}/24"));
        }
        let mut params = format!("vmcheck.name={} vmcheck.net={}", self.name, nets.join(";"));
        for p in &self.kernel_params {
            params += &format!(" {p}");
        }
        params
    }

    /// The arguments that connect the machine to the driver, for either kind of boot.
    pub fn plumbing_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &[&str]| a.extend(s.iter().map(|s| s.to_string()));
        // The agent's socket is created before QMP's, whose wait=on holds QEMU until the driver
        // has connected: no event is missed and the agent socket already exists.
        push(&[
            "-chardev",
            &format!("socket,id=qga0,path={},server=on,wait=off", self.qga_socket.display()),
        ]);
        push(&["-device", "virtio-serial-pci,id=vserial0"]);
        push(&[
            "-device",
            "virtserialport,bus=vserial0.0,chardev=qga0,name=org.qemu.guest_agent.0,id=qga-port",
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=qmp0,path={},server=on,wait=on", self.qmp_socket.display()),
        ]);
        push(&["-mon", "chardev=qmp0,mode=control"]);
        push(&["-chardev", "stdio,id=console0,signal=off"]);
        push(&["-serial", "chardev:console0"]);
        for nic in &self.nics {
            let link = match &nic.link {
                NicLink::Fd(fd) => {
                    use std::os::fd::AsRawFd;
                    format!("local.type=fd,local.str={}", fd.0.as_raw_fd())
                }
                NicLink::Unix { local, remote } => {
                    format!(
                        "local.type=unix,local.path={},remote.type=unix,remote.path={}",
                        local.display(),
                        remote.display()
                    )
                }
                // QEMU refuses it with the netdev's name: a spec started without its links.
                NicLink::Unlinked => "local.type=fd,local.str=unlinked".to_string(),
            };
            push(&["-netdev", &format!("dgram,id={},{link}", nic.netdev_id())]);
            push(&[
                "-device",
                &format!(
                    "virtio-net-pci,netdev={},mac={},id=nic-{}",
                    nic.netdev_id(),
                    nic.mac,
                    nic.netdev_id()
                ),
            ]);
        }
        for disk in &self.disks {
            a.extend(disk.args());
        }
        if let Some(balloon) = &self.balloon {
            a.extend(["-device".to_string(), balloon.device_arg()]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// The `hostfwd` user-mode options of the control NIC.
    fn control_netdev_opts(&self, c: &ControlNic) -> String {
        let forwards: Vec<String> =
            c.guest_ports.iter().map(|p| format!("hostfwd=tcp:127.0.0.1:0-:{p}")).collect();
        format!("net={CONTROL_NET},restrict=on,{}", forwards.join(","))
    }

    /// The whole command line of a kernel boot.
    pub fn kernel_boot_args(&self) -> Result<Vec<String>> {
        let Boot::Kernel { kernel, initrd, tools, append } = &self.boot else {
            bail!("{}: not a kernel boot", self.name);
        };
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("{},debug-threads=on", self.name),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-M".into(),
            "pc".into(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
        ];
        a.extend(self.accel.qemu_args());
        // qboot instead of SeaBIOS: the kernel is loaded from fw_cfg without an option ROM's
        // detour; it installs QEMU's ACPI tables (PCI hot-plug) as SeaBIOS does.
        a.extend(["-bios".into(), "qboot.rom".into()]);
        a.extend([
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
        ]);
        a.extend(["-append".into(), format!("{} {append}", self.guest_kernel_params())]);
        if let Some(c) = &self.control {
            a.extend(["-netdev".into(), format!("user,id=ctl,{}", self.control_netdev_opts(c))]);
            a.extend([
                "-device".into(),
                format!("virtio-net-pci,netdev=ctl,mac={CONTROL_MAC},id=nic-ctl"),
            ]);
        }
        if let Some(tools) = tools {
            a.extend(tools_disk_args(tools));
        }
        a.extend(self.plumbing_args());
        Ok(a)
    }

    /// The process to run: QEMU itself, or the NixOS start script with the plumbing in its
    /// environment.
    pub fn command(&self, state_dir: &Path, shared_dir: &Path) -> Result<tokio::process::Command> {
        match &self.boot {
            Boot::Kernel { .. } => {
                let mut cmd = tokio::process::Command::new(&self.qemu);
                cmd.args(self.kernel_boot_args()?);
                Ok(cmd)
            }
            Boot::StartScript { path, kernel_params } => {
                let mut plumbing = self.plumbing_args();
                // The script asks for accel=kvm:tcg; a later -machine accel= overrides it with the
                // probe's verdict (KVM can exist and hang).
                plumbing.extend(["-machine".to_string(), format!("accel={}", self.accel.name())]);
                // The script's -nographic would put a monitor on stdio, which is the console.
                plumbing.extend(["-monitor".to_string(), "none".to_string()]);
                // run-<name>-vm splits $QEMU_OPTS on white space.
                if let Some(bad) = plumbing.iter().find(|a| a.chars().any(char::is_whitespace)) {
                    bail!("{}: QEMU argument {bad:?} holds white space; use a run directory without spaces", self.name);
                }
                let mut cmd = tokio::process::Command::new(path);
                cmd.env("QEMU_OPTS", plumbing.join(" "))
                    .env(
                        "QEMU_KERNEL_PARAMS",
                        format!("console=ttyS0 {} {kernel_params}", self.guest_kernel_params()),
                    )
                    .env("TMPDIR", state_dir)
                    .env("USE_TMPDIR", "1")
                    .env("SHARED_DIR", shared_dir)
                    .current_dir(state_dir);
                if let Some(c) = &self.control {
                    cmd.env("QEMU_NET_OPTS", self.control_netdev_opts(c));
                }
                Ok(cmd)
            }
        }
    }
}

/// Console lines kept for error messages.
const CONSOLE_TAIL: usize = 200;
/// Console text kept for `wait_for_console_text` and `console_contains`.
const CONSOLE_HISTORY_BYTES: usize = 8 << 20;

#[derive(Default)]
struct ConsoleState {
    tail: VecDeque<String>,
    history: String,
    /// Bytes dropped from the front of `history`.
    dropped: usize,
    /// Absolute offset up to which `wait_for_console_text` has consumed.
    cursor: usize,
    closed: bool,
}

/// A machine's serial console: every line, echoed and logged, kept for waits and errors.
pub struct Console {
    name: String,
    /// Where its lines are logged (the capture runs on a task of its own, outside the driver's
    /// log scope).
    reporter: crate::report::Reporter,
    state: Mutex<ConsoleState>,
    changed: Notify,
    log: Mutex<Option<std::fs::File>>,
    /// Gets every line too (kernel splats, watched services' deaths: `crate::watch`).
    watch: std::sync::OnceLock<Arc<crate::watch::ConsoleWatch>>,
}

impl Console {
    /// A console for machine `name`, appending to `log_path` when given; every line also goes to
    /// `reporter` (the transcript; the terminal too when console output is on).
    pub fn new(
        name: &str,
        log_path: Option<&Path>,
        reporter: crate::report::Reporter,
    ) -> Arc<Console> {
        let log = log_path
            .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
        Arc::new(Console {
            name: name.to_string(),
            reporter,
            state: Mutex::default(),
            changed: Notify::new(),
            log: Mutex::new(log),
            watch: std::sync::OnceLock::new(),
        })
    }

    /// Feeds every line from now on to `watch` as well (set once, by the machine).
    pub fn set_watch(&self, watch: Arc<crate::watch::ConsoleWatch>) {
        let _ = self.watch.set(watch);
    }

    /// Adds one line, as the capture of a QEMU's serial console does (the guest-mode local
    /// machine's kernel log comes this way too).
    pub(crate) fn push_line(&self, line: String) {
        self.push(line);
    }

    fn push(&self, line: String) {
        self.reporter.console_line(&self.name, &line);
        if let Some(f) = self.log.lock().unwrap().as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
        }
        if let Some(w) = self.watch.get() {
            w.line(&line);
        }
        let mut s = self.state.lock().unwrap();
        s.history.push_str(&line);
        s.history.push('\n');
        if s.history.len() > CONSOLE_HISTORY_BYTES {
            let cut = s.history.len() - CONSOLE_HISTORY_BYTES / 2;
            let cut = (cut..s.history.len())
                .find(|i| s.history.is_char_boundary(*i))
                .unwrap_or(s.history.len());
            s.history.drain(..cut);
            s.dropped += cut;
        }
        s.tail.push_back(line);
        if s.tail.len() > CONSOLE_TAIL {
            s.tail.pop_front();
        }
        drop(s);
        self.changed.notify_waiters();
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.changed.notify_waiters();
    }

    /// Open again for the next QEMU of the same machine (a start after a shutdown, a restore, a
    /// migration target): the console outlives each process, its waits must not see "closed".
    pub fn reopen(&self) {
        self.state.lock().unwrap().closed = false;
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.tail.iter().skip(s.tail.len().saturating_sub(n)).cloned().collect()
    }

    /// Whether the console has ever shown text matching `re` (within the kept history).
    pub fn contains(&self, re: &regex::Regex) -> bool {
        re.is_match(&self.state.lock().unwrap().history)
    }

    /// Waits for console text matching `re` that no earlier wait consumed; returns the match.
    pub async fn wait_for(&self, re: &regex::Regex, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            {
                let mut s = self.state.lock().unwrap();
                let from = s.cursor.saturating_sub(s.dropped).min(s.history.len());
                if let Some(m) = re.find(&s.history[from..]) {
                    let text = m.as_str().to_string();
                    s.cursor = s.dropped + from + m.end();
                    return Ok(text);
                }
                if s.closed {
                    bail!("the console closed (QEMU exited) before text matching /{re}/ appeared");
                }
            }
            if tokio::time::timeout_at(deadline.into(), changed).await.is_err() {
                bail!("no console text matching /{re}/ within {timeout:?}");
            }
        }
    }

    /// Every console line from now on, until the machine stops (for the REPL's `console`).
    pub fn follow(&self) -> (usize, &Notify) {
        let s = self.state.lock().unwrap();
        (s.dropped + s.history.len(), &self.changed)
    }

    /// Console text from absolute offset `from`; returns the text and the new offset.
    pub fn text_since(&self, from: usize) -> (String, usize) {
        let s = self.state.lock().unwrap();
        let start = from.saturating_sub(s.dropped).min(s.history.len());
        (s.history[start..].to_string(), s.dropped + s.history.len())
    }
}

/// Reads lines from `reader` into `console` until end of stream.
async fn capture_lines(reader: impl AsyncRead + Unpin, sink: impl Fn(String)) {
    let mut lines = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                sink(clean_console_line(&line));
            }
        }
    }
}

/// Drops the line ending, carriage returns and terminal escape sequences.
pub fn clean_console_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A running QEMU (or start script) and its console.
pub struct QemuProcess {
    /// The process id.
    pub pid: u32,
    /// Its serial console.
    pub console: Arc<Console>,
    stderr: Arc<Mutex<String>>,
    exit: watch::Receiver<Option<String>>,
    /// Owns the child: aborting it drops the child, which kills it.
    waiter: tokio::task::JoinHandle<()>,
    _stdin: Option<tokio::process::ChildStdin>,
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        // SIGKILL now, not when the runtime gets round to dropping the aborted task.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.waiter.abort();
    }
}

impl QemuProcess {
    /// Starts the machine's process; the console is captured from its stdout.
    pub async fn start(
        spec: &QemuSpec,
        state_dir: &Path,
        shared_dir: &Path,
        console: Arc<Console>,
        log_dir: Option<&Path>,
    ) -> Result<QemuProcess> {
        let mut cmd = spec.command(state_dir, shared_dir)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(dir) = log_dir {
            let line = command_line_text(&cmd);
            let _ = std::fs::write(dir.join(format!("{}.cmdline", spec.name)), line);
        }
        inherit_fds(&mut cmd, spec.inherited_fds());
        let child = crate::process::spawn(cmd)
            .await
            .with_context(|| format!("{}: starting QEMU", spec.name))?;
        Ok(Self::adopt(child, console))
    }

    /// Takes over a spawned child: captures its stdout as the console, keeps its stderr, and
    /// watches for its exit.
    pub fn adopt(mut child: tokio::process::Child, console: Arc<Console>) -> QemuProcess {
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        let out_console = console.clone();
        let console_task = match child.stdout.take() {
            Some(stdout) => tokio::spawn(capture_lines(stdout, move |l| out_console.push(l))),
            None => tokio::spawn(async {}),
        };
        let err_buf = stderr.clone();
        let name = console.name.clone();
        let stderr_task = match child.stderr.take() {
            Some(pipe) => tokio::spawn(capture_lines(pipe, move |l| {
                tracing::debug!(machine = %name, "qemu stderr: {l}");
                let mut b = err_buf.lock().unwrap();
                if b.len() < 64 * 1024 {
                    b.push_str(&l);
                    b.push('\n');
                }
            })),
            None => tokio::spawn(async {}),
        };
        let (exit_tx, exit) = watch::channel(None);
        let console_for_exit = console.clone();
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            // Let the console and stderr drain before the exit is announced.
            let _ = tokio::time::timeout(crate::timeouts::drain(), async {
                let _ = console_task.await;
                let _ = stderr_task.await;
            })
            .await;
            console_for_exit.close();
            let text = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = exit_tx.send(Some(text));
        });
        QemuProcess { pid, console, stderr, exit, waiter, _stdin: stdin }
    }

    /// The exit status text, once the process has exited.
    pub fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// What QEMU wrote to stderr (its error messages).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the process to exit; Err on timeout.
    pub async fn wait(&self, timeout: Duration) -> Result<String> {
        match tokio::time::timeout(timeout, self.exited_signal()).await {
            Ok(status) => Ok(status),
            Err(_) => bail!("QEMU (pid {}) still running after {timeout:?}", self.pid),
        }
    }

    /// A future that resolves, with the exit status, when the process exits; it borrows nothing.
    pub fn exited_signal(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.exit.clone();
        async move {
            let status = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "unknown (waiter gone)".to_string(),
            };
            status
        }
    }

    /// Kills the process at once and waits for it.
    pub async fn kill(&self) -> Result<String> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.wait(crate::timeouts::quit()).await
    }
}

/// The command as a shell line, for the per-machine log.
fn command_line_text(cmd: &tokio::process::Command) -> String {
    let std = cmd.as_std();
    let mut s = String::new();
    for (k, v) in std.get_envs() {
        let _ = write!(
            s,
            "{}={:?} ",
            k.to_string_lossy(),
            v.map(|v| v.to_string_lossy().into_owned()).unwrap_or_default()
        );
    }
    let _ = write!(s, "{}", std.get_program().to_string_lossy());
    for a in std.get_args() {
        let _ = write!(s, " '{}'", a.to_string_lossy().replace('\'', "'\\''"));
    }
    s.push('\n');
    s
}

/// The PCI slot of the tools disk: fixed, so hot-plugged devices (QEMU takes the lowest free
/// slot) and the balloon (0x1e) never move it, and the command line stays a function of the
/// machine description.
pub const TOOLS_DISK_SLOT: &str = "0x1d";

/// The read-only tools disk of a default image (`images::Image::tools`): a virtio-blk disk with
/// serial `vmcheck-tools`, which `rc.sh` mounts at `/tools`.
pub fn tools_disk_args(path: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id=drive-vmcheck-tools,file={},format=raw,readonly=on", path.display()),
        "-device".into(),
        format!("virtio-blk-pci,id=vmcheck-tools,drive=drive-vmcheck-tools,serial={},addr={TOOLS_DISK_SLOT}", crate::images::TOOLS_SERIAL),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> QemuSpec {
        QemuSpec {
            name: "target".into(),
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            boot: Boot::Kernel {
                kernel: "/k/vmlinuz".into(),
                initrd: "/k/initrd".into(),
                tools: Some("/k/tools.img".into()),
                append: "console=ttyS0 quiet".into(),
            },
            memory_mib: 512,
            cpus: 1,
            disks: vec![Disk {
                id: "disk0".into(),
                path: "/run/d0.img".into(),
                serial: "vmcheck-disk0".into(),
                kind: DiskKind::Nvme,
                pci_slot: None,
                rerror: None,
                werror: None,
            }],
            nics: vec![Nic {
                vlan: 1,
                mac: test_mac(1, Ipv4Addr::new(192, 0, 2, 1)),
                address: Ipv4Addr::new(192, 0, 2, 1),
                prefix_len: 24,
                link: NicLink::Unix {
                    local: "/run/net/target-1.sock".into(),
                    remote: "/run/net/switch-1.sock".into(),
                },
            }],
            control: Some(ControlNic { guest_ports: vec![10124] }),
            qmp_socket: "/run/target/qmp.sock".into(),
            qga_socket: "/run/target/qga.sock".into(),
            balloon: Some(Balloon { deflate_on_oom: false }),
            kernel_params: vec!["module_blacklist=virtio_balloon".into()],
            extra_args: vec!["-rtc".into(), "base=utc".into()],
        }
    }

    #[test]
    fn a_disk_error_policy_is_a_device_property() {
        let mut s = spec();
        s.disks[0].kind = DiskKind::VirtioBlk;
        s.disks[0].werror = Some(crate::config::OnError::stop);
        s.disks[0].rerror = Some(crate::config::OnError::report);
        let args = s.kernel_boot_args().unwrap();
        assert_eq!(
            after(&args, "-device", "drive-disk0"),
            Some("virtio-blk-pci,id=disk0,drive=drive-disk0,serial=vmcheck-disk0,rerror=report,werror=stop")
        );
    }

    fn after<'a>(args: &'a [String], flag: &str, containing: &str) -> Option<&'a str> {
        args.windows(2).find(|w| w[0] == flag && w[1].contains(containing)).map(|w| w[1].as_str())
    }

    #[test]
    fn kernel_boot_command_line() {
        let args = spec().kernel_boot_args().unwrap();
        assert_eq!(after(&args, "-m", ""), Some("512"));
        assert_eq!(after(&args, "-cpu", ""), Some(crate::accel::TCG_CPU));
        assert_eq!(
            after(&args, "-device", "nvme"),
            Some("nvme,id=disk0,drive=drive-disk0,serial=vmcheck-disk0")
        );
        // The nodes a hot-add makes, named alike, so a media fault goes between them either way.
        assert_eq!(
            after(&args, "-blockdev", "drive-disk0"),
            Some("driver=raw,node-name=drive-disk0,discard=unmap,file.driver=file,file.filename=/run/d0.img,file.node-name=file-disk0")
        );
        assert_eq!(
            after(&args, "-netdev", "dgram"),
            Some("dgram,id=vlan1,local.type=unix,local.path=/run/net/target-1.sock,remote.type=unix,remote.path=/run/net/switch-1.sock")
        );
        // A socket pair's end: QEMU takes the fd it inherits.
        let mut with_fd = spec();
        let (end, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = std::os::fd::OwnedFd::from(end);
        let n = std::os::fd::AsRawFd::as_raw_fd(&fd);
        with_fd.nics[0].link = NicLink::Fd(NicFd(Arc::new(fd)));
        assert_eq!(with_fd.inherited_fds(), vec![n]);
        let args = with_fd.kernel_boot_args().unwrap();
        assert_eq!(
            after(&args, "-netdev", "dgram"),
            Some(format!("dgram,id=vlan1,local.type=fd,local.str={n}").as_str())
        );
        assert_eq!(
            after(&args, "-device", "virtio-net-pci,netdev=vlan1"),
            Some("virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:01,id=nic-vlan1")
        );
        assert_eq!(
            after(&args, "-netdev", "user"),
            Some("user,id=ctl,net=198.51.100.0/24,restrict=on,hostfwd=tcp:127.0.0.1:0-:10124")
        );
        let append = after(&args, "-append", "").unwrap();
        assert!(
            append.starts_with("vmcheck.name=target vmcheck.net=52:54:00:12:01:01,192.0.2.1/24;52:54:00:ff:00:01,198.51.100.15/24"),
            "{append}"
        );
        assert!(append.ends_with("console=ttyS0 quiet"));
        assert!(append.contains("/24 module_blacklist=virtio_balloon "), "{append}");
        assert_eq!(
            after(&args, "-device", "virtio-balloon"),
            Some("virtio-balloon-pci,id=balloon0,addr=0x1e,deflate-on-oom=off")
        );
        assert_eq!(
            after(&args, "-drive", "vmcheck-tools"),
            Some("if=none,id=drive-vmcheck-tools,file=/k/tools.img,format=raw,readonly=on")
        );
        assert_eq!(
            after(&args, "-device", "vmcheck-tools"),
            Some("virtio-blk-pci,id=vmcheck-tools,drive=drive-vmcheck-tools,serial=vmcheck-tools,addr=0x1d")
        );
        assert_eq!(after(&args, "-bios", ""), Some("qboot.rom"));
        assert_eq!(args.last().map(String::as_str), Some("base=utc"));
        // The agent's chardev exists before QMP's wait=on blocks QEMU.
        let qga = args.iter().position(|a| a.contains("id=qga0")).unwrap();
        let qmp = args.iter().position(|a| a.contains("id=qmp0")).unwrap();
        assert!(qga < qmp);
    }

    #[test]
    fn start_script_gets_plumbing_in_environment() {
        let mut s = spec();
        s.boot = Boot::StartScript {
            path: "/nix/store/x/bin/run-target-vm".into(),
            kernel_params: String::new(),
        };
        let cmd = s.command(Path::new("/run/target"), Path::new("/run/shared")).unwrap();
        let env: std::collections::HashMap<_, _> = cmd
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                (k.to_string_lossy().into_owned(), v.unwrap().to_string_lossy().into_owned())
            })
            .collect();
        assert!(env["QEMU_OPTS"].contains("-mon chardev=qmp0,mode=control"));
        assert!(!env["QEMU_OPTS"].contains("-kernel"));
        assert!(
            env["QEMU_OPTS"].ends_with("-machine accel=tcg -monitor none"),
            "{}",
            env["QEMU_OPTS"]
        );
        assert_eq!(
            env["QEMU_NET_OPTS"],
            "net=198.51.100.0/24,restrict=on,hostfwd=tcp:127.0.0.1:0-:10124"
        );
        assert!(env["QEMU_KERNEL_PARAMS"].contains("vmcheck.name=target"));
        assert_eq!(env["USE_TMPDIR"], "1");
        s.qmp_socket = "/tmp/with space/qmp.sock".into();
        assert!(s.command(Path::new("/r"), Path::new("/s")).is_err());
    }

    #[test]
    fn console_lines_are_cleaned() {
        assert_eq!(clean_console_line("\x1b[0;32mOK\x1b[0m done\r\n"), "OK done");
        assert_eq!(
            clean_console_line("[    6.5] nvme nvme0: new ctrl\n"),
            "[    6.5] nvme nvme0: new ctrl"
        );
    }

    #[tokio::test]
    async fn console_wait_consumes_matches() {
        let c = Console::new("m", None, crate::report::Reporter::in_memory());
        c.push("booting".into());
        c.push("login: ready 1".into());
        c.push("login: ready 2".into());
        let re = regex::Regex::new(r"ready \d").unwrap();
        assert_eq!(c.wait_for(&re, Duration::from_millis(10)).await.unwrap(), "ready 1");
        assert_eq!(c.wait_for(&re, Duration::from_millis(10)).await.unwrap(), "ready 2");
        let err = c.wait_for(&re, Duration::from_millis(10)).await.unwrap_err();
        assert!(err.to_string().contains("within"), "{err}");
        assert!(c.contains(&re));
        assert_eq!(c.tail(2), ["login: ready 1", "login: ready 2"]);
    }

    #[test]
    fn only_x86_64_hosts_are_accepted() {
        check_host_arch("x86_64").unwrap();
        let err = check_host_arch("aarch64").unwrap_err().to_string();
        assert!(err.contains("x86_64 Linux hosts only") && err.contains("aarch64"), "{err}");
    }

    #[test]
    fn qemu_versions_are_read_and_old_ones_named() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"
            ),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7+deb12u18)"),
            Some((7, 2, 0))
        );
        assert_eq!(parse_qemu_version("QEMU emulator version 8.1\n"), Some((8, 1, 0)));
        assert_eq!(parse_qemu_version("nothing here"), None);
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu-system-x86_64");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6)'\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = check_qemu_version(&fake).unwrap_err().to_string();
        assert!(err.contains("QEMU 6.2.0") && err.contains("needs QEMU 7.2 or newer"), "{err}");
    }
}
