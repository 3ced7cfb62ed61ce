//! The machine API a scenario calls (names follow the NixOS test driver where one exists).
//!
//! Every wait has a timeout; a failed wait or command names what was expected, what happened,
//! for how long, and shows the machine's last console lines.
//!
//! [`Machine`] is one handle; its methods are spread over the pieces of this module, each a
//! child module that uses the handle's private state (no other module of the crate sees it):
//!
//! - this file: the handle and its state (`MachineEnv`, the QEMU process slot), the errors
//!   ([`MachineError`], [`HarnessError`], [`is_harness_error`], [`is_timeout`]), the accessors
//!   (name, disks, the QEMU description, QMP and agent clients, forwards);
//! - `boot.rs`: start (a boot, or a start from the snapshot store), the launch of a QEMU
//!   process, the wait for the agent and what a restored machine does then;
//! - `exec.rs`: guest commands (execute, succeed, fail, spawn and [`GuestProcess`]), the waits
//!   on the guest (commands, block devices, files, open and closed ports, console text, kernel
//!   messages, systemd units on NixOS machines), `systemctl`, and `retry`;
//! - `files.rs`: files from the host into the guest and back (`copy_from_host`,
//!   `copy_from_machine`), over the guest agent in chunks;
//! - `power.rs`: shutdown, `wait_for_shutdown`, reboot, crash, kill, pause and resume, save and
//!   restore, live migration, a start with extra QEMU arguments, the human monitor
//!   (`send_monitor_command`), QMP events (`wait_for_qmp_event`), and the per-test logs
//!   ([`keep_logs`]);
//! - `memory.rs`: the virtio balloon and the guest's memory figures;
//! - `hotplug.rs`: disk hot-add and hot-remove, PCI addresses;
//! - `links.rs`: the test network's faults on a machine's links, and partitions between
//!   machines ([`partition`], [`heal`]);
//! - `faults.rs`: media errors in a disk, injected and cleared at run time through QEMU's block
//!   layer ([`MediaFault`], `inject_media_error`, `clear_media_error`), and the wait for QEMU's
//!   `BLOCK_IO_ERROR` (with the pause a `werror=stop` disk makes);
//! - `local.rs`: the guest mode's machine that the driver runs on ([`Backend::Local`]): its
//!   commands as local processes, its kernel log as its console.
//!
//! A machine has a [`Backend`]: a QEMU process this driver starts (a host run), or, in guest
//! mode (the driver runs inside one of the scenario's machines), the machine the driver runs on
//! ([`Backend::Local`]) or another one reached by its address ([`Backend::Peer`]). What a
//! backend cannot do (QMP, the agent, the switch, power, hot-plug on a local or peer machine;
//! commands on a peer) fails at once with a harness error that names the operation and why.
//!
//! The dependencies go one way: this module uses [`crate::network`] (the switches), never the
//! other way round.

mod boot;
mod exec;
mod faults;
mod files;
mod hotplug;
mod links;
mod local;
mod memory;
mod power;

pub use boot::{clock_is_plausible, logged_qemu_pids, RESTORED};
pub use exec::{block_device_by_serial, GuestProcess};
pub use faults::{
    fault_node, FaultOps, MediaFault, EIO, MAX_FAULT_AFTER, MAX_FAULT_SECTORS, SECTOR_BYTES,
};
pub use files::CHUNK as FILE_CHUNK;
pub use hotplug::pci_address_by_serial;
pub use links::{heal, partition};
pub use memory::{balloon_timeout, stat_matches, BalloonStats, BALLOON_POLL, BALLOON_QOM_PATH};
pub use power::{keep_logs, MigrationReport, SavedState};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::accel::Accel;
use crate::config::{BalloonSpec, DiskSpec, NodeSpec, Role, TEST_SUBNET_LEN};
use crate::network::Switch;
use crate::qemu::{
    Balloon, Boot, Console, ControlNic, Disk, DiskKind, Nic, NicLink, QemuProcess, QemuSpec,
};
use crate::qga::Qga;
use crate::qmp::Qmp;

/// Console lines shown with an error.
pub const ERROR_CONSOLE_LINES: usize = 20;

/// What every machine of a run shares.
pub(crate) struct MachineEnv {
    pub run_dir: PathBuf,
    /// The host's QEMU and accelerator (guest mode starts no QEMU: an empty path and TCG, never
    /// read, as every QEMU operation refuses a local or peer machine first).
    pub qemu: PathBuf,
    pub accel: Accel,
    pub switches: HashMap<u32, Arc<Switch>>,
    /// Per-machine console logs and command lines go here.
    pub log_dir: PathBuf,
    /// The run's sinks: the console threads log here, whatever task they run on.
    pub reporter: crate::report::Reporter,
    /// Saved machine states to start from (`None`: every start boots, `--fresh-boot`).
    pub snapshots: Option<Arc<crate::snapshot::Store>>,
    /// What the run's watches saw (`crate::watch`).
    pub findings: Arc<crate::watch::Findings>,
}

/// What a start from the snapshot store leaves to do once the agent answers
/// ([`Machine::wait_for_agent`]).
enum Pending {
    /// Restored, its disks hot-added (at `plugging`) before it resumed: make the guest differ
    /// where it must, then wait for the disks.
    Restored { key: crate::snapshot::Key, started: Instant, plugging: Instant },
    /// Booted disk-less to build a snapshot: save it, resume, then plug the disks.
    Build { build: crate::snapshot::Build, started: Instant },
}

/// A failure of the machine API, with the console tail that explains it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{machine}: {what}\n{detail}\nlast {} console lines of {machine}:\n{console}",
    ERROR_CONSOLE_LINES
)]
pub struct MachineError {
    /// The machine's name.
    pub machine: String,
    /// What failed, in one line.
    pub what: String,
    /// The details: a command's output, what a wait saw last.
    pub detail: String,
    /// The last [`ERROR_CONSOLE_LINES`] lines of its serial console.
    pub console: String,
    /// Set when the error is a wait that ran out of time.
    pub timed_out: Option<Duration>,
    /// The harness or the machine broke (QEMU would not start or died, the agent stopped
    /// answering), rather than the system under test misbehaving: reported as an error, not a
    /// failure.
    pub harness: bool,
}

/// One QEMU process of the machine. A migration or a restore replaces it (power.rs).
struct Running {
    process: QemuProcess,
    qmp: Arc<Qmp>,
    qga: Arc<Qga>,
    /// (guest port, loopback port) of each forward of the control NIC.
    forwards: Vec<(u16, u16)>,
}

/// Where a machine is and how the driver reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A QEMU process the driver starts on the host: every operation of the API.
    Qemu,
    /// Guest mode: the machine the driver itself runs on. Commands are local processes (same
    /// typed results, timeouts and tags as the agent's), its console is the kernel's log
    /// (`/dev/kmsg`); QMP, the agent, the switch and power are the host's and refused.
    Local,
    /// Guest mode: another machine of the scenario, reached by its address only (the target
    /// daemon's gRPC, NVMe-oF, iSCSI). A target's disks are found through its daemon
    /// (`ListDisks`); commands, console waits and everything of the host are refused.
    Peer,
}

impl Backend {
    /// How an error names it: "a QEMU machine", "the local machine", "a peer".
    fn describe(self) -> &'static str {
        match self {
            Backend::Qemu => "a QEMU machine of this driver",
            Backend::Local => "the machine this guest-mode driver runs on",
            Backend::Peer => "a peer of this guest-mode driver, reached by its address only",
        }
    }
}

/// A machine of a test. Cheap to clone; clones share the machine.
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeSpec,
    backend: Backend,
    /// How QEMU boots it (`None` for a local or peer machine: no QEMU).
    boot: Option<Boot>,
    env: Arc<MachineEnv>,
    dir: PathBuf,
    console: Arc<Console>,
    running: tokio::sync::RwLock<Option<Running>>,
    /// The disks plugged in now: the spec's, plus hot-added ones, less hot-removed ones. A
    /// cold start (after shutdown or crash) boots with these, as a real machine would.
    disks: std::sync::Mutex<Vec<DiskSpec>>,
    /// The balloon plugged in now (hot-plug changes it; a cold start and a migration target
    /// boot with it).
    balloon: std::sync::Mutex<BalloonSpec>,
    /// Counts QEMU processes of this machine: a migration target's sockets are named after it.
    generation: std::sync::atomic::AtomicU32,
    /// The PCI slot of each plugged disk (kept while it is plugged, freed when it is removed).
    slots: std::sync::Mutex<HashMap<String, u8>>,
    /// Set by a start from the snapshot store, done by the next wait for the agent.
    pending: tokio::sync::Mutex<Option<Pending>>,
    /// How far `wait_for_qmp_event` has read the events of which QMP connection (a new QEMU
    /// process starts from its first event).
    qmp_events_read: std::sync::Mutex<Option<(std::sync::Weak<Qmp>, usize)>>,
    /// The media fault of each disk that has one, with the QEMU process it is in (faults.rs).
    media_faults: std::sync::Mutex<HashMap<String, faults::Injected>>,
    /// Whether a deliberate power action is under way (the watches ignore what it ends).
    power: Arc<crate::watch::PowerState>,
    /// The console's watch: kernel splats, watched services.
    watch: Arc<crate::watch::ConsoleWatch>,
    /// A guest-mode machine was started (its kernel log followed, its address logged).
    guest_started: std::sync::atomic::AtomicBool,
}

impl Machine {
    pub(crate) fn new(node: NodeSpec, boot: Boot, env: Arc<MachineEnv>) -> Result<Machine> {
        Machine::with_backend(node, Backend::Qemu, Some(boot), env)
    }

    /// A machine of guest mode: the local one or a peer (its `node.address` the one to reach).
    pub(crate) fn guest(node: NodeSpec, backend: Backend, env: Arc<MachineEnv>) -> Result<Machine> {
        Machine::with_backend(node, backend, None, env)
    }

    fn with_backend(
        node: NodeSpec,
        backend: Backend,
        boot: Option<Boot>,
        env: Arc<MachineEnv>,
    ) -> Result<Machine> {
        crate::config::validate_machine_name(&node.name)?;
        let dir = env.run_dir.join(&node.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let console = Console::new(
            &node.name,
            Some(&env.log_dir.join(format!("{}.console.log", node.name))),
            env.reporter.clone(),
        );
        let power = Arc::new(crate::watch::PowerState::default());
        let watch = Arc::new(crate::watch::ConsoleWatch::new(
            &node.name,
            env.findings.clone(),
            power.clone(),
        ));
        // The target's daemon is watched wherever the machine's recipe runs it (its console
        // line on a QEMU machine; a peer's daemon is polled over gRPC instead, see
        // `Driver::new`).
        if backend == Backend::Qemu
            && node.start_script.is_none()
            && node.recipe().services().iter().any(|s| s.name == crate::watch::TARGET_DAEMON)
        {
            watch.watch_service(crate::watch::TARGET_DAEMON);
        }
        console.set_watch(watch.clone());
        let disks = std::sync::Mutex::new(node.disks.clone());
        let balloon = std::sync::Mutex::new(node.balloon);
        Ok(Machine {
            inner: Arc::new(Inner {
                node,
                backend,
                boot,
                env,
                dir,
                console,
                running: tokio::sync::RwLock::new(None),
                disks,
                balloon,
                generation: std::sync::atomic::AtomicU32::new(0),
                slots: std::sync::Mutex::new(HashMap::new()),
                pending: tokio::sync::Mutex::new(None),
                qmp_events_read: std::sync::Mutex::new(None),
                media_faults: std::sync::Mutex::new(HashMap::new()),
                power,
                watch,
                guest_started: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The console's watch (kernel splats, watched services; `crate::watch`).
    pub fn console_watch(&self) -> &Arc<crate::watch::ConsoleWatch> {
        &self.inner.watch
    }

    /// Whether the machine is up and in no deliberate power action (start, reboot, shutdown,
    /// crash, kill, save, restore, migration): the watches poll only such a machine.
    pub fn is_steady(&self) -> bool {
        self.inner.power.is_steady()
    }

    /// Counts the deliberate power actions begun so far: a poll that saw it change discards
    /// what it saw.
    pub fn power_epoch(&self) -> u64 {
        self.inner.power.epoch()
    }

    /// A deliberate power action begins: what it ends (services) is not a finding until the
    /// agent answers again.
    fn power_action(&self) {
        self.inner.power.begin();
    }

    /// Where the machine is: a QEMU process of this driver, or (guest mode) the local machine or
    /// a peer.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Fails, naming `operation` and why, unless the machine is a QEMU process of this driver:
    /// what only the host can do (QMP, the agent, the switch, power, hot-plug).
    pub(crate) fn host_only(&self, operation: &str) -> Result<()> {
        match self.inner.backend {
            Backend::Qemu => Ok(()),
            other => Err(self.harness_error(
                format!("{operation} needs the host, and this machine is {}", other.describe()),
                "guest mode reaches the host's side of a machine (QEMU, its monitor and agent, \
                 the test network's switch) for no machine; declare the scenario \
                 `.host_only(..)` and run it on the host",
            )),
        }
    }

    /// Fails, naming `operation`, on a peer: commands and console waits run only on the
    /// machine the driver runs on (or a QEMU machine's agent).
    pub(crate) fn not_peer(&self, operation: &str) -> Result<()> {
        match self.inner.backend {
            Backend::Peer => Err(self.peer_error(operation)),
            _ => Ok(()),
        }
    }

    /// The error of `operation` on a peer (see [`Machine::not_peer`]).
    pub(crate) fn peer_error(&self, operation: &str) -> anyhow::Error {
        self.harness_error(
            format!("{operation}: this machine is {}", Backend::Peer.describe()),
            format!(
                "a guest-mode driver runs commands only on the machine it runs on; {} is \
                 reached at {} by its services (gRPC, NVMe-oF, iSCSI)",
                self.name(),
                self.address()
            ),
        )
    }

    /// The machine's name, as its [`NodeSpec`] gave it.
    pub fn name(&self) -> &str {
        &self.inner.node.name
    }
    /// Its role, from its [`NodeSpec`].
    pub fn role(&self) -> Role {
        self.inner.node.role
    }
    /// Its serial console, captured line by line (see [`Console`]).
    pub fn console(&self) -> &Arc<Console> {
        &self.inner.console
    }
    /// The machine's address on the test network (as configured, `--config` included; a peer's
    /// as `--peer NAME=ADDR` gave it or the resolver found it).
    pub fn address(&self) -> std::net::Ipv4Addr {
        self.inner.node.address
    }
    /// The disks plugged in now (see [`Machine::disk`]).
    pub fn disks(&self) -> Vec<DiskSpec> {
        self.inner.disks.lock().unwrap().clone()
    }
    /// The disk `id` plugged in now; the error lists the ones there are.
    pub fn disk(&self, id: &str) -> Result<DiskSpec> {
        let disks = self.inner.disks.lock().unwrap();
        disks.iter().find(|d| d.id == id).cloned().ok_or_else(|| {
            let known: Vec<_> = disks.iter().map(|d| d.id.as_str()).collect();
            self.error(format!("no disk {id:?}"), format!("this machine has {known:?}"))
        })
    }
    fn set_disks(&self, change: impl FnOnce(&mut Vec<DiskSpec>)) {
        let mut disks = self.inner.disks.lock().unwrap();
        change(&mut disks);
        // A removed disk frees its PCI slot.
        self.inner.slots.lock().unwrap().retain(|id, _| disks.iter().any(|d| &d.id == id));
    }

    /// The PCI slot of disk `id`: the one it has, else the lowest free one (`None` when all are
    /// taken: QEMU then chooses).
    fn disk_slot(&self, id: &str) -> Option<u8> {
        let mut slots = self.inner.slots.lock().unwrap();
        if let Some(s) = slots.get(id) {
            return Some(*s);
        }
        let free =
            crate::qemu::DISK_PCI_SLOTS.into_iter().find(|s| !slots.values().any(|t| t == s))?;
        slots.insert(id.to_string(), free);
        Some(free)
    }
    /// The host file behind disk `id`.
    pub fn disk_path(&self, id: &str) -> PathBuf {
        self.inner.dir.join(format!("{id}.img"))
    }

    /// The QEMU description this machine boots with (a guest-mode machine has none: its boot
    /// is then an empty start script, which nothing starts).
    pub fn qemu_spec(&self) -> QemuSpec {
        let node = &self.inner.node;
        let nics = node
            .vlans
            .iter()
            .filter(|v| self.inner.env.switches.contains_key(v))
            .map(|&vlan| Nic {
                vlan,
                mac: crate::qemu::test_mac(vlan, node.address),
                // A second vlan gets a subnet of its own, so each NIC is routed by itself.
                address: crate::network::vlan_address(node.address, vlan),
                prefix_len: TEST_SUBNET_LEN,
                link: NicLink::Unlinked,
            })
            .collect();
        let disks = self.disks().iter().map(|d| self.qemu_disk(d)).collect();
        QemuSpec {
            name: node.name.clone(),
            qemu: self.inner.env.qemu.clone(),
            accel: self.inner.env.accel,
            boot: self.inner.boot.clone().unwrap_or(Boot::StartScript {
                path: PathBuf::new(),
                kernel_params: String::new(),
            }),
            memory_mib: node.memory_mib,
            cpus: node.cpus,
            disks,
            nics,
            control: (!node.forward_ports.is_empty())
                .then(|| ControlNic { guest_ports: node.forward_ports.clone() }),
            qmp_socket: self.inner.dir.join("qmp.sock"),
            qga_socket: self.inner.dir.join("qga.sock"),
            balloon: match *self.inner.balloon.lock().unwrap() {
                BalloonSpec::None => None,
                BalloonSpec::Plain => Some(Balloon { deflate_on_oom: false }),
                BalloonSpec::DeflateOnOom => Some(Balloon { deflate_on_oom: true }),
            },
            kernel_params: node.kernel_params.clone(),
            extra_args: Vec::new(),
        }
    }

    /// The balloon plugged in now.
    pub fn balloon_spec(&self) -> BalloonSpec {
        *self.inner.balloon.lock().unwrap()
    }
    fn set_balloon_spec(&self, b: BalloonSpec) {
        *self.inner.balloon.lock().unwrap() = b;
    }
    /// The machine's state directory in the run directory.
    fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }
    fn env(&self) -> &Arc<MachineEnv> {
        &self.inner.env
    }
    /// The QEMU process slot: a migration holds it for writing while it swaps processes, so no
    /// agent or QMP request starts on a process that is about to go.
    fn running_slot(&self) -> &tokio::sync::RwLock<Option<Running>> {
        &self.inner.running
    }
    /// A new generation number for a QEMU process of this machine.
    fn next_generation(&self) -> u32 {
        self.inner.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// How disk `d` of this machine is attached in QEMU.
    pub fn qemu_disk(&self, d: &DiskSpec) -> Disk {
        Disk {
            id: d.id.clone(),
            path: self.disk_path(&d.id),
            serial: d.serial.clone(),
            kind: if d.virtio { DiskKind::VirtioBlk } else { DiskKind::Nvme },
            // A NixOS start script places devices of its own before ours: QEMU chooses there.
            pci_slot: matches!(self.inner.boot, Some(Boot::Kernel { .. }))
                .then(|| self.disk_slot(&d.id))
                .flatten(),
            rerror: d.rerror,
            werror: d.werror,
        }
    }

    /// A [`MachineError`] with the current console tail.
    pub fn error(&self, what: impl Into<String>, detail: impl Into<String>) -> anyhow::Error {
        self.make_error(what.into(), detail.into(), None)
    }

    pub(crate) fn timeout_error(
        &self,
        what: String,
        detail: String,
        waited: Duration,
    ) -> anyhow::Error {
        self.make_error(what, detail, Some(waited))
    }

    /// A [`MachineError`] that says the machine or the harness broke (see its `harness`).
    pub fn harness_error(
        &self,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) -> anyhow::Error {
        let mut e = self.make_error(what.into(), detail.into(), None);
        if let Some(m) = e.downcast_mut::<MachineError>() {
            m.harness = true;
        }
        e
    }

    fn make_error(
        &self,
        what: String,
        detail: String,
        timed_out: Option<Duration>,
    ) -> anyhow::Error {
        let tail = self.inner.console.tail(ERROR_CONSOLE_LINES);
        let console = if tail.is_empty() {
            "  (no console output)".to_string()
        } else {
            tail.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
        };
        MachineError {
            machine: self.name().to_string(),
            what,
            detail,
            console,
            timed_out,
            harness: false,
        }
        .into()
    }

    async fn with_running<T>(&self, f: impl FnOnce(&Running) -> T) -> Result<T> {
        self.host_only("QEMU's monitor and guest agent")?;
        let running = self.inner.running.read().await;
        match running.as_ref() {
            Some(r) if r.process.exited().is_none() => Ok(f(r)),
            Some(r) => Err(self.harness_error(
                "the machine is not running",
                format!(
                    "QEMU exited: {}\n{}",
                    r.process.exited().unwrap_or_default(),
                    r.process.stderr()
                ),
            )),
            None => Err(self.harness_error("the machine is not running", "start it first")),
        }
    }

    /// The QMP monitor.
    pub async fn qmp(&self) -> Result<Arc<Qmp>> {
        self.with_running(|r| r.qmp.clone()).await
    }
    /// The guest agent.
    pub async fn qga(&self) -> Result<Arc<Qga>> {
        self.with_running(|r| r.qga.clone()).await
    }
    /// The QEMU process id while it runs.
    pub async fn pid(&self) -> Option<u32> {
        self.with_running(|r| r.process.pid).await.ok()
    }
    /// Whether QEMU runs (guest mode: the local machine always is; a peer is not this
    /// driver's to tell).
    pub async fn is_up(&self) -> bool {
        match self.inner.backend {
            Backend::Qemu => self.with_running(|_| ()).await.is_ok(),
            Backend::Local => true,
            Backend::Peer => false,
        }
    }

    /// The guest ports this machine forwards to loopback (its `forward_ports`).
    pub fn forward_ports(&self) -> &[u16] {
        &self.inner.node.forward_ports
    }

    /// Where the driver reaches the machine's TCP port `port`: a QEMU machine's loopback forward
    /// ([`Machine::forwarded_addr`]), a peer's address, the local machine's loopback.
    pub async fn tcp_addr(&self, port: u16) -> Result<SocketAddr> {
        match self.inner.backend {
            Backend::Qemu => self.forwarded_addr(port).await,
            Backend::Local => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
            Backend::Peer => Ok(SocketAddr::from((self.address(), port))),
        }
    }

    /// Where the driver reaches guest TCP port `guest_port` (a loopback forward of this run).
    pub async fn forwarded_addr(&self, guest_port: u16) -> Result<SocketAddr> {
        let forwards = self.with_running(|r| r.forwards.clone()).await?;
        let (_, host) = forwards.iter().find(|(g, _)| *g == guest_port).ok_or_else(|| {
            self.error(
                format!("no forward of guest port {guest_port}"),
                format!("this machine forwards {:?}", self.forward_ports()),
            )
        })?;
        Ok(SocketAddr::from(([127, 0, 0, 1], *host)))
    }

    /// Waits until something in the guest listens on TCP `guest_port`, then returns where the
    /// driver reaches it: for a client of the guest's own control plane (any tonic client of
    /// the user's proto, say), which would otherwise meet a reset from the forward and no
    /// reason. Fails naming the port when nothing listens within `timeout`, or when the machine
    /// does not forward it (`Recipe::forward_port`).
    pub async fn wait_for_forwarded_port(
        &self,
        guest_port: u16,
        timeout: std::time::Duration,
    ) -> Result<SocketAddr> {
        let addr = self.forwarded_addr(guest_port).await?;
        self.wait_for_open_port(guest_port, timeout).await.with_context(|| {
            format!("nothing in {} listens on the forwarded TCP port {guest_port}", self.name())
        })?;
        Ok(addr)
    }

    /// Runs a raw QMP command (by name, with JSON arguments).
    pub async fn qmp_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        self.qmp().await?.execute_raw(name, arguments).await
    }
}

/// Whether an error says the harness or a machine broke (not the system under test): a
/// [`MachineError`] marked so, or a [`HarnessError`], anywhere in its chain.
pub fn is_harness_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<MachineError>().is_some_and(|m| m.harness)
            || c.downcast_ref::<HarnessError>().is_some()
    })
}

/// A harness failure outside any machine: the run could not be set up, or it did not finish.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HarnessError(pub String);

/// Whether an error is a wait or command that ran out of time.
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<MachineError>().is_some_and(|m| m.timed_out.is_some())
}
