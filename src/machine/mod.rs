//! The machine API a scenario calls (names follow the NixOS test driver where one exists).
//!
//! Every wait has a timeout; a failed wait or command names what was expected, what happened,
//! for how long, and shows the machine's last console lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use crate::accel::Accel;
use crate::config::{BalloonSpec, DiskSpec, NodeSpec, Role, TEST_SUBNET_LEN};
use crate::log;
use crate::network::{Link, LinkCounters, Switch};
use crate::poll::{self, Polled};
use crate::qemu::{Balloon, Boot, Console, ControlNic, Disk, DiskKind, Nic, NicLink, QemuProcess, QemuSpec};
use crate::qga::{ExecOutput, ExecTimeout, MemoryStats, Qga};
use crate::qmp::Qmp;
use crate::timeouts;
use crate::tools::shell_quote;

/// Console lines shown with an error.
pub const ERROR_CONSOLE_LINES: usize = 20;

/// What every machine of a run shares.
pub struct MachineEnv {
    pub run_dir: PathBuf,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub switches: HashMap<u32, Arc<Switch>>,
    /// Per-machine console logs and command lines go here.
    pub log_dir: PathBuf,
    /// The run's sinks: the console threads log here, whatever task they run on.
    pub reporter: crate::report::Reporter,
    /// Saved machine states to start from (`None`: every start boots, `--fresh-boot`).
    pub snapshots: Option<Arc<crate::snapshot::Store>>,
}

/// What a start from the snapshot store leaves to do once the agent answers
/// ([`Machine::wait_for_agent`]).
enum Pending {
    /// Restored: make the guest differ where it must, then plug the disks.
    Restored { key: crate::snapshot::Key, started: Instant },
    /// Booted disk-less to build a snapshot: save it, resume, then plug the disks.
    Build { build: crate::snapshot::Build, started: Instant },
}

/// A failure of the machine API, with the console tail that explains it.
#[derive(Debug, thiserror::Error)]
#[error("{machine}: {what}\n{detail}\nlast {} console lines of {machine}:\n{console}", ERROR_CONSOLE_LINES)]
pub struct MachineError {
    pub machine: String,
    pub what: String,
    pub detail: String,
    pub console: String,
    /// Set when the error is a wait that ran out of time.
    pub timed_out: Option<Duration>,
    /// The harness or the machine broke (QEMU would not start or died, the agent stopped
    /// answering), rather than the system under test misbehaving: reported as an error, not a
    /// failure.
    pub harness: bool,
}

/// One QEMU process of the machine. A migration or a restore replaces it (src/lifecycle.rs).
pub(crate) struct Running {
    pub(crate) process: QemuProcess,
    pub(crate) qmp: Arc<Qmp>,
    pub(crate) qga: Arc<Qga>,
    /// (guest port, loopback port) of each forward of the control NIC.
    pub(crate) forwards: Vec<(u16, u16)>,
}

/// A machine of a test. Cheap to clone; clones share the machine.
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeSpec,
    boot: Boot,
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
}

impl Machine {
    pub fn new(node: NodeSpec, boot: Boot, env: Arc<MachineEnv>) -> Result<Machine> {
        crate::config::validate_machine_name(&node.name)?;
        let dir = env.run_dir.join(&node.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let console = Console::new(&node.name, Some(&env.log_dir.join(format!("{}.console.log", node.name))), env.reporter.clone());
        let disks = std::sync::Mutex::new(node.disks.clone());
        let balloon = std::sync::Mutex::new(node.balloon);
        Ok(Machine {
            inner: Arc::new(Inner {
                node,
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
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.node.name
    }
    pub fn role(&self) -> Role {
        self.inner.node.role
    }
    pub fn console(&self) -> &Arc<Console> {
        &self.inner.console
    }
    /// The machine's address on the test network (as configured, `--config` included).
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
    pub(crate) fn set_disks(&self, change: impl FnOnce(&mut Vec<DiskSpec>)) {
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
        let free = crate::qemu::DISK_PCI_SLOTS.into_iter().find(|s| !slots.values().any(|t| t == s))?;
        slots.insert(id.to_string(), free);
        Some(free)
    }
    /// The host file behind disk `id`.
    pub fn disk_path(&self, id: &str) -> PathBuf {
        self.inner.dir.join(format!("{id}.img"))
    }

    /// The QEMU description this machine boots with.
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
            boot: self.inner.boot.clone(),
            memory_mib: node.memory_mib,
            cpus: node.cpus,
            disks,
            nics,
            control: (!node.forward_ports.is_empty()).then(|| ControlNic { guest_ports: node.forward_ports.clone() }),
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
    pub(crate) fn set_balloon_spec(&self, b: BalloonSpec) {
        *self.inner.balloon.lock().unwrap() = b;
    }
    /// The machine's state directory in the run directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }
    pub(crate) fn env(&self) -> &Arc<MachineEnv> {
        &self.inner.env
    }
    /// The QEMU process slot: a migration holds it for writing while it swaps processes, so no
    /// agent or QMP request starts on a process that is about to go.
    pub(crate) fn running_slot(&self) -> &tokio::sync::RwLock<Option<Running>> {
        &self.inner.running
    }
    /// A new generation number for a QEMU process of this machine.
    pub(crate) fn next_generation(&self) -> u32 {
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
            pci_slot: matches!(self.inner.boot, Boot::Kernel { .. }).then(|| self.disk_slot(&d.id)).flatten(),
        }
    }

    /// A [`MachineError`] with the current console tail.
    pub fn error(&self, what: impl Into<String>, detail: impl Into<String>) -> anyhow::Error {
        self.make_error(what.into(), detail.into(), None)
    }

    pub(crate) fn timeout_error(&self, what: String, detail: String, waited: Duration) -> anyhow::Error {
        self.make_error(what, detail, Some(waited))
    }

    /// A [`MachineError`] that says the machine or the harness broke (see its `harness`).
    pub fn harness_error(&self, what: impl Into<String>, detail: impl Into<String>) -> anyhow::Error {
        let mut e = self.make_error(what.into(), detail.into(), None);
        if let Some(m) = e.downcast_mut::<MachineError>() {
            m.harness = true;
        }
        e
    }

    fn make_error(&self, what: String, detail: String, timed_out: Option<Duration>) -> anyhow::Error {
        let tail = self.inner.console.tail(ERROR_CONSOLE_LINES);
        let console = if tail.is_empty() {
            "  (no console output)".to_string()
        } else {
            tail.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
        };
        MachineError { machine: self.name().to_string(), what, detail, console, timed_out, harness: false }.into()
    }

    /// Starts QEMU (a no-op when it runs). Disks are created on first start and kept across
    /// restarts.
    pub async fn start(&self) -> Result<()> {
        Box::pin(self.start_inner()).await
    }

    async fn start_inner(&self) -> Result<()> {
        let mut running = self.inner.running.write().await;
        if let Some(r) = running.as_ref() {
            if r.process.exited().is_none() {
                return Ok(());
            }
        }
        *running = None;
        let spec = self.qemu_spec();
        for disk in self.disks() {
            self.create_disk_file(&disk)?;
        }
        log::line(&format!("{}: starting vm", self.name()));
        *self.inner.pending.lock().await = None;
        if let Some((r, pending)) = self.start_from_store(&spec).await? {
            *running = Some(r);
            *self.inner.pending.lock().await = Some(pending);
            return Ok(());
        }
        *running = Some(self.launch(&spec).await?);
        Ok(())
    }

    /// The state file of this machine's snapshot as it would start now (disk-less), if the store
    /// has a usable one.
    pub fn snapshot_state(&self) -> Option<PathBuf> {
        let (store, key) = self.snapshot_key(&self.qemu_spec())?;
        store.find(&key).ok().flatten()
    }

    /// The snapshot store and this machine's key in it, for a machine that may use one.
    fn snapshot_key(&self, spec: &QemuSpec) -> Option<(Arc<crate::snapshot::Store>, crate::snapshot::Key)> {
        let store = self.inner.env.snapshots.clone()?;
        let mut base = spec.clone();
        base.disks.clear();
        let key = store.key(&base)?;
        Some((store, key))
    }

    /// Starts the machine disk-less from its snapshot, or boots it disk-less to build one; `None`
    /// when it should boot as usual (no store, or another run is building this snapshot).
    async fn start_from_store(&self, spec: &QemuSpec) -> Result<Option<(Running, Pending)>> {
        let Some((store, key)) = self.snapshot_key(spec) else { return Ok(None) };
        let mut base = spec.clone();
        base.disks.clear();
        let name = self.name();
        match store.find(&key) {
            Ok(Some(state)) => {
                let started = Instant::now();
                let mut incoming = base.clone();
                incoming.extra_args.extend(["-incoming", "defer", "-S"].map(String::from));
                let dest = self.launch(&incoming).await?;
                let uri = format!("file:{}", state.display());
                let restored = async {
                    self.incoming(&dest, &uri, "restoring from snapshot").await?;
                    let mark = dest.qmp.event_count();
                    dest.qmp
                        .execute(qapi::qmp::cont {})
                        .await
                        .map_err(|e| self.error("QMP cont after restore was refused", format!("{e:#}")))?;
                    self.wait_event(&dest.qmp, mark, "RESUME", timeouts::request()).await.map(drop)
                }
                .await;
                match restored {
                    Ok(()) => return Ok(Some((dest, Pending::Restored { key, started }))),
                    Err(e) => {
                        let _ = dest.process.kill().await;
                        let why = e.to_string().lines().next().unwrap_or_default().to_string();
                        log::line(&format!("{name}: snapshot {} was refused by QEMU ({why}): deleting it, booting afresh", key.short()));
                        store.discard(&key)?;
                    }
                }
            }
            Ok(None) => {}
            Err(why) => {
                log::line(&format!("{name}: snapshot {} is unusable ({why:#}): deleting it, booting afresh", key.short()));
                store.discard(&key)?;
            }
        }
        match store.try_build(&key)? {
            Some(build) => {
                log::line(&format!("{name}: no snapshot {}: booting without disks to save one", key.short()));
                let started = Instant::now();
                let r = self.launch(&base).await?;
                Ok(Some((r, Pending::Build { build, started })))
            }
            None => {
                log::line(&format!("{name}: another run is saving snapshot {}: booting afresh", key.short()));
                Ok(None)
            }
        }
    }

    /// Starts a QEMU process of this machine from `spec` and connects QMP (a boot, a restore
    /// or a snapshot restore); the caller puts it in the running slot. Its NICs get fresh socket
    /// pairs whose switch ends are plugged in at once: the switch ports follow this process,
    /// keeping their link state.
    pub(crate) async fn launch(&self, spec: &QemuSpec) -> Result<Running> {
        let (running, ports) = self.launch_unplugged(spec).await?;
        self.plug(ports);
        Ok(running)
    }

    /// [`Machine::launch`] leaving the switch ends of the NICs' socket pairs unplugged (a
    /// migration target, plugged in at switchover by [`Machine::plug`]); until then nothing
    /// reads or writes them.
    pub(crate) async fn launch_unplugged(&self, spec: &QemuSpec) -> Result<(Running, Vec<(u32, std::os::unix::net::UnixDatagram)>)> {
        let mut spec = spec.clone();
        let mut ports = Vec::new();
        for nic in &mut spec.nics {
            if self.inner.env.switches.contains_key(&nic.vlan) {
                let (qemu_end, switch_end) = crate::network::Switch::socket_pair()?;
                nic.link = NicLink::Fd(crate::qemu::NicFd(Arc::new(qemu_end.into())));
                ports.push((nic.vlan, switch_end));
            }
        }
        let running = self.launch_linked(&spec).await;
        // QEMU holds its ends now (or failed to start): the driver's copies close here, so the
        // switch sees a port's peer gone when that QEMU exits.
        drop(spec);
        Ok((running?, ports))
    }

    /// Plugs the switch ends of a QEMU's socket pairs in, as that machine's ports.
    pub(crate) fn plug(&self, ports: Vec<(u32, std::os::unix::net::UnixDatagram)>) {
        for (vlan, sock) in ports {
            if let Some(sw) = self.inner.env.switches.get(&vlan) {
                sw.add_port(self.name(), sock);
            }
        }
    }

    async fn launch_linked(&self, spec: &QemuSpec) -> Result<Running> {
        let _ = std::fs::remove_file(&spec.qmp_socket);
        let _ = std::fs::remove_file(&spec.qga_socket);
        self.inner.console.reopen();
        let shared = self.inner.env.run_dir.join("shared");
        std::fs::create_dir_all(&shared)?;
        let process = QemuProcess::start(spec, &self.inner.dir, &shared, self.inner.console.clone(), Some(&self.inner.env.log_dir)).await?;
        let pid = process.pid;
        let _ = std::fs::write(self.inner.dir.join("qemu.pid"), pid.to_string());
        // QEMU waits for the QMP connection before it runs the guest.
        let qmp = tokio::select! {
            q = Qmp::connect(&spec.qmp_socket, timeouts::request()) => q,
            _ = process.wait(timeouts::request()) => Err(anyhow!("QEMU exited: {}", process.exited().unwrap_or_default())),
        };
        let qmp = match qmp {
            Ok(q) => Arc::new(q),
            Err(e) => {
                let _ = process.kill().await;
                return Err(self.harness_error("QEMU did not start", format!("{e:#}\nQEMU stderr:\n{}", process.stderr())));
            }
        };
        let mut forwards = Vec::new();
        for &guest in spec.control.iter().flat_map(|c| c.guest_ports.iter()) {
            let host = hostfwd_port(&qmp, guest)
                .await
                .map_err(|e| self.harness_error(format!("reading the forward of port {guest}"), format!("{e:#}")))?;
            forwards.push((guest, host));
        }
        log::line(&format!("{}: {QEMU_RUNNING}{pid})", self.name()));
        crate::lifecycle::log_qmp_events(self, &qmp, pid);
        Ok(Running { process, qmp, qga: Arc::new(Qga::new(&spec.qga_socket)), forwards })
    }

    /// Creates the raw image of `disk` unless it exists (its data survives restarts).
    pub(crate) fn create_disk_file(&self, disk: &DiskSpec) -> Result<PathBuf> {
        let path = self.disk_path(&disk.id);
        if !path.exists() {
            let f = std::fs::File::create(&path).with_context(|| format!("creating disk {}", path.display()))?;
            f.set_len(disk.size_mib << 20)?;
        }
        Ok(path)
    }

    async fn with_running<T>(&self, f: impl FnOnce(&Running) -> T) -> Result<T> {
        let running = self.inner.running.read().await;
        match running.as_ref() {
            Some(r) if r.process.exited().is_none() => Ok(f(r)),
            Some(r) => Err(self.harness_error(
                "the machine is not running",
                format!("QEMU exited: {}\n{}", r.process.exited().unwrap_or_default(), r.process.stderr()),
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
    /// Whether QEMU runs.
    pub async fn is_up(&self) -> bool {
        self.with_running(|_| ()).await.is_ok()
    }

    /// The guest ports this machine forwards to loopback (its `forward_ports`).
    pub fn forward_ports(&self) -> &[u16] {
        &self.inner.node.forward_ports
    }

    /// Where the driver reaches guest TCP port `guest_port` (a loopback forward of this run).
    pub async fn forwarded_addr(&self, guest_port: u16) -> Result<SocketAddr> {
        let forwards = self.with_running(|r| r.forwards.clone()).await?;
        let (_, host) = forwards.iter().find(|(g, _)| *g == guest_port).ok_or_else(|| {
            self.error(format!("no forward of guest port {guest_port}"), format!("this machine forwards {:?}", self.forward_ports()))
        })?;
        Ok(SocketAddr::from(([127, 0, 0, 1], *host)))
    }

    /// Waits until the machine has booted and its guest agent answers.
    ///
    /// After a start from the snapshot store it also finishes that start: a restored guest gets
    /// the host's clock and fresh random bytes, a freshly booted one is saved as the snapshot;
    /// then the plugged disks are hot-added and awaited in the guest. A restore whose agent does
    /// not answer within `timeouts::restore()` (or whose fix-up fails) deletes the snapshot and
    /// boots the machine afresh.
    pub async fn wait_for_agent(&self) -> Result<()> {
        self.start().await?;
        let mut pending = self.inner.pending.lock().await;
        match pending.take() {
            None => {
                drop(pending);
                self.sync_agent(timeouts::boot()).await
            }
            Some(Pending::Restored { key, started }) => {
                let restored = async {
                    self.sync_agent(timeouts::restore()).await?;
                    let fixing = Instant::now();
                    self.after_restore().await?;
                    Ok::<_, anyhow::Error>(fixing.elapsed())
                }
                .await;
                match restored {
                    Ok(fixing) => {
                        log::line(&format!(
                            "{}: restored from snapshot {} in {:.2} s (clock and random seed: {:.2} s)",
                            self.name(),
                            key.short(),
                            started.elapsed().as_secs_f64(),
                            fixing.as_secs_f64()
                        ));
                        self.plug_disks().await
                    }
                    Err(e) => {
                        let why = e.to_string().lines().next().unwrap_or_default().to_string();
                        log::line(&format!(
                            "{}: restore from snapshot {} failed ({why}): deleting it, booting afresh",
                            self.name(),
                            key.short()
                        ));
                        if let Some(store) = &self.inner.env.snapshots {
                            store.discard(&key)?;
                        }
                        self.kill().await;
                        let spec = self.qemu_spec();
                        let started = Instant::now();
                        {
                            let mut running = self.inner.running.write().await;
                            *running = Some(self.launch(&spec).await?);
                        }
                        self.sync_agent(timeouts::boot()).await?;
                        log::line(&format!("{}: booted in {:.2} s", self.name(), started.elapsed().as_secs_f64()));
                        Ok(())
                    }
                }
            }
            Some(Pending::Build { build, started }) => {
                self.sync_agent(timeouts::boot()).await?;
                let booted = started.elapsed().as_secs_f64();
                log::line(&format!("{}: booted in {booted:.2} s", self.name()));
                let short = build.key.short().to_string();
                // A guest whose clock runs ahead of the host's (seen under TCG when the kernel
                // calibrated its TSC on starved vCPUs) would hand that clock to every restore.
                let uptime = self.guest_uptime().await?;
                if !clock_is_plausible(uptime, booted) {
                    log::line(&format!(
                        "{}: snapshot {short} not saved: the guest's clock ran {uptime:.1} s in {booted:.1} s of the host's",
                        self.name()
                    ));
                    drop(build);
                    return self.plug_disks().await;
                }
                let saving = Instant::now();
                match self.save_snapshot(build, booted).await {
                    Ok(bytes) => log::line(&format!(
                        "{}: saved snapshot {short} ({:.1} MiB) in {:.2} s",
                        self.name(),
                        bytes as f64 / 1048576.0,
                        saving.elapsed().as_secs_f64()
                    )),
                    Err(e) => log::line(&format!("{}: snapshot {short} not saved: {e:#}", self.name())),
                }
                self.plug_disks().await
            }
        }
    }

    /// Seconds since the guest's kernel started (`/proc/uptime`, the guest's monotonic clock).
    async fn guest_uptime(&self) -> Result<f64> {
        let text = self.succeed("cat /proc/uptime").await?;
        text.split_whitespace().next().and_then(|t| t.parse().ok()).ok_or_else(|| anyhow!("{}: /proc/uptime said {text:?}", self.name()))
    }

    /// Saves the running, disk-less machine as a snapshot (migration to its file) and resumes it.
    async fn save_snapshot(&self, build: crate::snapshot::Build, boot_secs: f64) -> Result<u64> {
        let qmp = self.qmp().await?;
        crate::lifecycle::enable_migration_events(&qmp).await?;
        let mark = qmp.event_count();
        let uri = format!("file:{}", build.state_path().display());
        let saved = async {
            qmp.execute(qapi::qmp::migrate { uri: Some(uri.clone()), channels: None, detach: None, resume: None })
                .await
                .map_err(|e| anyhow!("QMP migrate to {uri} was refused: {e:#}"))?;
            self.wait_migration(&qmp, mark, "saving the snapshot").await
        }
        .await;
        // Completed, the source stops (postmigrate); failed, it may run on already. The
        // MIGRATION event comes before the run state leaves finish-migrate, when `cont` is refused
        // ("Migration is not finalized yet").
        let settled = poll::until(timeouts::request(), timeouts::SOCKET_POLL, |_| async {
            let status = qmp.execute(qapi::qmp::query_status {}).await?;
            Ok((serde_json::to_value(status.status)? != serde_json::json!("finish-migrate")).then_some(status.running))
        })
        .await?;
        let Polled::Done(running) = settled else {
            return Err(self.harness_error("the machine stayed in finish-migrate after saving the snapshot", format!("{saved:?}")));
        };
        if !running {
            let mark = qmp.event_count();
            qmp.execute(qapi::qmp::cont {})
                .await
                .map_err(|e| self.harness_error("QMP cont after saving the snapshot was refused", format!("{e:#}")))?;
            self.wait_event(&qmp, mark, "RESUME", timeouts::request()).await?;
        }
        saved?;
        let store = self.inner.env.snapshots.clone().ok_or_else(|| anyhow!("no snapshot store"))?;
        store.finish(build, boot_secs)
    }

    /// What a restored guest must not share with the snapshot: its clock (set to the host's) and
    /// its random state (fresh bytes from the host mixed into `/dev/urandom`).
    async fn after_restore(&self) -> Result<()> {
        let qga = self.qga().await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i64;
        qga.execute_raw("guest-set-time", serde_json::json!({ "time": now })).await.map_err(|e| anyhow!("guest-set-time: {e:#}"))?;
        let mut seed = [0u8; 64];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
        qga.write_file("/dev/urandom", &seed).await
    }

    /// Hot-adds every plugged disk (a machine from the snapshot store starts without them), each
    /// in its slot, and waits until the guest shows each.
    async fn plug_disks(&self) -> Result<()> {
        let disks = self.disks();
        if disks.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let qmp = self.qmp().await?;
        for d in &disks {
            self.attach_disk(&qmp, d).await?;
        }
        for d in &disks {
            self.wait_for_block_device(&d.serial, true, timeouts::hotplug()).await?;
        }
        log::line(&format!("{}: {} disk(s) plugged in {:.2} s", self.name(), disks.len(), started.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Waits until the agent answers (`guest-sync-delimited`), at most `timeout`.
    async fn sync_agent(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let (qga, exited) = {
            let running = self.inner.running.read().await;
            let r = running.as_ref().expect("started above");
            (r.qga.clone(), r.process.exited_signal())
        };
        let result = tokio::select! {
            r = qga.sync(timeout) => r,
            s = exited => Err(anyhow!("QEMU exited ({s}) before the agent answered")),
        };
        result.map_err(|e| self.harness_error(format!("the guest agent did not answer within {timeout:?}"), format!("{e:#}")))?;
        log::line(&format!("{}: agent answered after {:.2} s", self.name(), started.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Runs `cmd` with `sh -c`; waits at most `timeout`, then kills every process it started
    /// (by the tag they inherit).
    pub async fn execute_with_timeout(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput> {
        Box::pin(self.execute_inner(cmd, timeout)).await
    }

    async fn execute_inner(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput> {
        let qga = self.qga().await?;
        let argv = ["/bin/sh", "-c", cmd];
        match qga.exec(&argv, timeout).await {
            Ok(out) => Ok(out),
            Err(e) => match e.downcast_ref::<ExecTimeout>() {
                Some(t) => Err(self.timeout_error(
                    format!("command did not finish within {timeout:?}: {cmd}"),
                    format!("it was killed; its output so far:\nstdout:\n{}\nstderr:\n{}", t.stdout, t.stderr),
                    timeout,
                )),
                None => Err(self.harness_error(format!("could not run: {cmd}"), format!("{e:#}"))),
            },
        }
    }

    /// Starts `argv` in the guest and returns at once: a background command (fio during a
    /// hot-remove, say). Its processes carry a tag, so [`GuestProcess::kill`] ends them all.
    pub async fn spawn(&self, argv: &[String]) -> Result<GuestProcess> {
        let label = crate::tools::shell_join(argv);
        log::line(&format!("{}: spawned: {label}", self.name()));
        let qga = self.qga().await?;
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let exec = qga.exec_start(&args).await.map_err(|e| self.harness_error(format!("could not start: {label}"), format!("{e:#}")))?;
        Ok(GuestProcess { machine: self.clone(), exec, label, started: Instant::now(), done: tokio::sync::Mutex::new(None) })
    }

    /// Runs `cmd`; its exit status and output, whatever the status.
    pub async fn execute(&self, cmd: &str) -> Result<ExecOutput> {
        self.execute_with_timeout(cmd, timeouts::command()).await
    }

    /// Runs `cmd`, which must exit 0; returns its stdout.
    pub async fn succeed(&self, cmd: &str) -> Result<String> {
        self.succeed_with_timeout(cmd, timeouts::command()).await
    }

    pub async fn succeed_with_timeout(&self, cmd: &str, timeout: Duration) -> Result<String> {
        log::nested(&format!("{}: must succeed: {cmd}", self.name()), async {
            let out = self.execute_with_timeout(cmd, timeout).await?;
            if out.status != 0 {
                return Err(self.error(
                    format!("command failed with status {}: {cmd}", out.status),
                    format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr),
                ));
            }
            Ok(out.stdout)
        })
        .await
    }

    /// Runs `cmd`, which must exit non-zero; returns its stdout and stderr.
    pub async fn fail(&self, cmd: &str) -> Result<ExecOutput> {
        log::nested(&format!("{}: must fail: {cmd}", self.name()), async {
            let out = self.execute(cmd).await?;
            if out.status == 0 {
                return Err(self.error(format!("command succeeded but should have failed: {cmd}"), format!("stdout:\n{}", out.stdout)));
            }
            Ok(out)
        })
        .await
    }

    /// Retries `cmd` until it exits 0; returns its stdout.
    pub async fn wait_until_succeeds(&self, cmd: &str, timeout: Duration) -> Result<String> {
        let out = self.retry(&format!("waiting for success: {cmd}"), cmd, timeout, |o| o.status == 0).await?;
        Ok(out.stdout)
    }

    /// Retries `cmd` until it exits non-zero.
    pub async fn wait_until_fails(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput> {
        self.retry(&format!("waiting for failure: {cmd}"), cmd, timeout, |o| o.status != 0).await
    }

    async fn retry(&self, label: &str, cmd: &str, timeout: Duration, done: impl Fn(&ExecOutput) -> bool) -> Result<ExecOutput> {
        log::nested(&format!("{}: {label}", self.name()), async {
            let last = std::sync::Mutex::new(None);
            let polled = poll::until(timeout, timeouts::GUEST_POLL, |left| {
                let (last, done) = (&last, &done);
                async move {
                    match self.execute_with_timeout(cmd, left).await {
                        Ok(out) if done(&out) => Ok(Some(out)),
                        Ok(out) => {
                            *last.lock().unwrap() = Some(out);
                            Ok(None)
                        }
                        // The command itself outlived the time left: that is this wait's end.
                        Err(e) if is_timeout(&e) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
            match polled {
                Polled::Done(out) => Ok(out),
                Polled::TimedOut(waited) => {
                    let detail = match last.into_inner().unwrap() {
                        Some(ExecOutput { status, stdout, stderr, .. }) => {
                            format!("last attempt: status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")
                        }
                        None => "no attempt finished".into(),
                    };
                    Err(self.timeout_error(format!("{label}: gave up after {timeout:?}"), detail, waited))
                }
            }
        })
        .await
    }

    /// The guest's block device (`/dev/...`) of the disk `id` of this machine's spec, found by
    /// its serial: device names depend on probe order and image kind, serials do not.
    pub async fn disk_device(&self, id: &str) -> Result<String> {
        let disk = self.disk(id)?;
        let found = self.wait_for_block_device(&disk.serial, true, timeouts::request()).await?;
        Ok(found.unwrap_or_default())
    }

    /// Waits until the guest shows (`present`) or no longer shows a block device with serial
    /// `serial`; returns its `/dev` node when present.
    pub async fn wait_for_block_device(&self, serial: &str, present: bool, timeout: Duration) -> Result<Option<String>> {
        // One line per block device: name, hidden flag, serial (NVMe pads serials with spaces;
        // `echo $s` drops them). The choice is made on the host, by `block_device_by_serial`.
        let cmd = "for b in /sys/block/*; do s=$(cat $b/device/serial 2>/dev/null || cat $b/serial 2>/dev/null); \
                   echo ${b##*/} $(cat $b/hidden 2>/dev/null || echo 0) $s; done";
        let listing = std::sync::Mutex::new(String::new());
        let polled = poll::until(timeout, timeouts::GUEST_POLL, |_| {
            let listing = &listing;
            async move {
                let now = self.execute_with_timeout(cmd, timeouts::request()).await?.stdout;
                let found = block_device_by_serial(&now, serial);
                *listing.lock().unwrap() = now;
                Ok((found.is_some() == present).then_some(found))
            }
        })
        .await?;
        match polled {
            Polled::Done(found) => Ok(found),
            Polled::TimedOut(waited) => {
                let what = if present { "to appear" } else { "to go away" };
                Err(self.timeout_error(
                    format!("waited {timeout:?} for the block device with serial {serial:?} {what}"),
                    format!("/sys/block shows (name, hidden, serial):\n{}", listing.into_inner().unwrap()),
                    waited,
                ))
            }
        }
    }

    /// Waits until `path` exists in the guest.
    pub async fn wait_for_file(&self, path: &str, timeout: Duration) -> Result<()> {
        self.wait_until_succeeds(&format!("test -e {}", shell_quote(path)), timeout).await.map(drop)
    }

    /// Waits until something in the guest listens on TCP `port` (read from /proc/net/tcp*).
    pub async fn wait_for_open_port(&self, port: u16, timeout: Duration) -> Result<()> {
        let cmd = format!("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == \"0A\" && $2 ~ /:{port:04X}$/ {{ found = 1 }} END {{ exit !found }}'");
        self.wait_until_succeeds(&cmd, timeout).await.map(drop)
    }

    /// Waits for console text matching `regex` that no earlier wait consumed; returns the match.
    /// A machine restored from a snapshot prints nothing of its boot: for what the kernel said
    /// at boot, use [`Machine::wait_for_kernel_message`].
    pub async fn wait_for_console_text(&self, regex: &str, timeout: Duration) -> Result<String> {
        let re = regex::Regex::new(regex).with_context(|| format!("bad regular expression {regex:?}"))?;
        let started = Instant::now();
        log::nested(&format!("{}: waiting for console text /{regex}/", self.name()), async {
            self.inner
                .console
                .wait_for(&re, timeout)
                .await
                .map_err(|e| self.timeout_error(format!("waiting for console text /{regex}/"), format!("{e:#}"), started.elapsed()))
        })
        .await
    }

    /// Waits until the guest kernel's log (`dmesg`) has a line matching `regex`; returns the
    /// line. Unlike the console, the kernel's ring buffer survives a restore from a snapshot:
    /// what the kernel said at the boot the state was saved from is still there, while the
    /// console of a restored machine never shows it.
    pub async fn wait_for_kernel_message(&self, regex: &str, timeout: Duration) -> Result<String> {
        let re = regex::Regex::new(regex).with_context(|| format!("bad regular expression {regex:?}"))?;
        log::nested(&format!("{}: waiting for kernel message /{regex}/", self.name()), async {
            let last = std::sync::Mutex::new(String::new());
            let polled = poll::until(timeout, timeouts::GUEST_POLL, |_| {
                let (last, re) = (&last, &re);
                async move {
                    let log = self.succeed_with_timeout("dmesg", timeouts::request()).await?;
                    let found = log.lines().find(|l| re.is_match(l)).map(str::to_string);
                    *last.lock().unwrap() = log;
                    Ok(found)
                }
            })
            .await?;
            match polled {
                Polled::Done(line) => Ok(line),
                Polled::TimedOut(waited) => {
                    let log = last.into_inner().unwrap();
                    let tail: Vec<_> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                    Err(self.timeout_error(
                        format!("waited {timeout:?} for a kernel message matching /{regex}/"),
                        format!("the last {} lines of dmesg:\n{}", tail.len(), tail.join("\n")),
                        waited,
                    ))
                }
            }
        })
        .await
    }

    /// Whether the console ever showed text matching `regex`.
    pub fn console_contains(&self, regex: &str) -> Result<bool> {
        let re = regex::Regex::new(regex).with_context(|| format!("bad regular expression {regex:?}"))?;
        Ok(self.inner.console.contains(&re))
    }

    /// Powers the guest off cleanly: waits for QEMU's SHUTDOWN event (a guest-initiated
    /// poweroff) and for QEMU to exit. `start` boots the machine again.
    pub async fn shutdown(&self) -> Result<()> {
        log::nested(&format!("{}: shutting down", self.name()), async {
            let qga = self.qga().await?;
            let qmp = self.qmp().await?;
            let mark = qmp.event_count();
            self.fire_and_forget(&qga, "poweroff").await;
            let started = Instant::now();
            let event = qmp
                .wait_for_event(mark, timeouts::shutdown(), |e| e.name == "SHUTDOWN")
                .await
                .map_err(|e| self.timeout_error("waiting for the SHUTDOWN event".into(), format!("{e:#}"), started.elapsed()))?;
            if event.data["guest"] != serde_json::json!(true) {
                return Err(self.error("the SHUTDOWN was not the guest's poweroff", format!("event data: {}", event.data)));
            }
            self.wait_for_exit(timeouts::shutdown()).await
        })
        .await
    }

    /// Reboots the guest and waits until its agent answers again.
    pub async fn reboot(&self) -> Result<()> {
        log::nested(&format!("{}: rebooting", self.name()), async {
            let qmp = self.qmp().await?;
            let qga = self.qga().await?;
            let mark = qmp.event_count();
            self.fire_and_forget(&qga, "reboot").await;
            let started = Instant::now();
            qmp.wait_for_event(mark, timeouts::shutdown(), |e| e.name == "RESET")
                .await
                .map_err(|e| self.timeout_error("waiting for the guest to reset".into(), format!("{e:#}"), started.elapsed()))?;
            self.wait_for_agent().await
        })
        .await
    }

    /// Simulates a sudden power failure: QEMU quits at once. `start` boots the machine again.
    pub async fn crash(&self) -> Result<()> {
        log::nested(&format!("{}: crashing", self.name()), async {
            let qmp = self.qmp().await?;
            let _ = qmp.execute(qapi::qmp::quit {}).await;
            self.wait_for_exit(timeouts::quit()).await
        })
        .await
    }

    /// Ends QEMU at once, without asking the guest (cleanup).
    pub async fn kill(&self) {
        let running = self.inner.running.write().await.take();
        if let Some(r) = running {
            let _ = r.process.kill().await;
        }
    }

    async fn fire_and_forget(&self, qga: &Qga, cmd: &str) {
        // The agent dies with the guest; the command's answer may never come.
        let _ = qga
            .execute(qapi::qga::guest_exec {
                path: "/bin/sh".into(),
                arg: Some(vec!["-c".into(), cmd.into()]),
                env: None,
                input_data: None,
                capture_output: None,
            })
            .await;
    }

    async fn wait_for_exit(&self, timeout: Duration) -> Result<()> {
        let mut running = self.inner.running.write().await;
        let Some(r) = running.as_ref() else { return Ok(()) };
        match r.process.wait(timeout).await {
            Ok(_) => {
                *running = None;
                Ok(())
            }
            Err(e) => Err(self.timeout_error("waiting for QEMU to exit".into(), format!("{e:#}"), timeout)),
        }
    }

    /// Runs a raw QMP command (by name, with JSON arguments).
    pub async fn qmp_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        self.qmp().await?.execute_raw(name, arguments).await
    }

    /// The guest's memory figures.
    pub async fn memory_stats(&self) -> Result<MemoryStats> {
        self.qga().await?.memory_stats().await
    }

    /// Cuts this machine off the test network (both directions, every vlan), as a pulled cable
    /// would.
    pub async fn block(&self) -> Result<()> {
        log::line(&format!("{}: network blocked", self.name()));
        self.change_links(|l| l.up = false)
    }

    /// Reconnects this machine to the test network.
    pub async fn unblock(&self) -> Result<()> {
        log::line(&format!("{}: network unblocked", self.name()));
        self.change_links(|l| l.up = true)
    }

    /// Cuts this machine's link on `vlan` only (its other vlans keep working).
    pub fn link_down(&self, vlan: u32) -> Result<()> {
        self.change_link(vlan, |l| l.up = false)
    }

    /// Restores this machine's link on `vlan`.
    pub fn link_up(&self, vlan: u32) -> Result<()> {
        self.change_link(vlan, |l| l.up = true)
    }

    /// Drops a share (0.0 to 1.0) of the frames on every link of this machine, each direction.
    pub fn set_loss(&self, share: f64) -> Result<()> {
        self.change_links(|l| l.loss = share)
    }

    /// Delays every frame on this machine's links by `delay`, varied by up to `jitter` either
    /// way (frames keep their order), each direction.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) -> Result<()> {
        self.change_links(|l| {
            l.delay = delay;
            l.jitter = jitter;
        })
    }

    /// Caps this machine's links at `bytes_per_sec` each direction; `None` lifts the cap.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) -> Result<()> {
        self.change_links(|l| l.rate = bytes_per_sec)
    }

    /// Every link of this machine back to up and clean (no loss, delay or cap).
    pub fn clear_link_faults(&self) -> Result<()> {
        self.change_links(|l| *l = Link::default())
    }

    /// Changes this machine's links on every vlan it is on (up, loss, delay, jitter, cap); each
    /// change is logged and takes effect on the next frame.
    pub fn change_links(&self, change: impl Fn(&mut Link)) -> Result<()> {
        for v in &self.inner.node.vlans {
            self.change_link(*v, &change)?;
        }
        Ok(())
    }

    /// Changes this machine's link on `vlan`.
    pub fn change_link(&self, vlan: u32, change: impl FnOnce(&mut Link)) -> Result<()> {
        let sw = self.inner.env.switches.get(&vlan).ok_or_else(|| {
            self.error(format!("no test network vlan {vlan}"), format!("this machine is on vlans {:?}", self.inner.node.vlans))
        })?;
        sw.set_link(self.name(), change).map(drop)
    }

    /// This machine's link on `vlan` now, and its frame counts.
    pub fn link(&self, vlan: u32) -> Option<(Link, LinkCounters)> {
        let sw = self.inner.env.switches.get(&vlan)?;
        Some((sw.link(self.name())?, sw.counters(self.name())?))
    }

    /// The switches of the run (every vlan), for faults between machines
    /// ([`crate::network::partition`]).
    pub fn switches(&self) -> Vec<Arc<Switch>> {
        self.inner.env.switches.values().cloned().collect()
    }

    /// This machine's address on `vlan` ([`crate::network::vlan_address`]).
    pub fn address_on(&self, vlan: u32) -> std::net::Ipv4Addr {
        crate::network::vlan_address(self.inner.node.address, vlan)
    }
}

/// Whether a guest that has been up `guest_secs` (its own monotonic clock) after `host_secs` of
/// the host's, counted from before QEMU started, keeps time: the guest's clock starts later, so
/// it may not be ahead, beyond a small allowance.
pub fn clock_is_plausible(guest_secs: f64, host_secs: f64) -> bool {
    guest_secs <= host_secs * 1.05 + 1.0
}

/// The `/dev` node of the block device whose serial is `serial`, from lines of "name hidden
/// serial". Native NVMe multipath (QEMU >= 8 marks its controllers multi-controller capable)
/// adds a hidden per-path node (`nvme0c0n1`) with the same serial as the namespace's block
/// device (`nvme0n1`): hidden nodes cannot be opened, so they are never the answer.
pub fn block_device_by_serial(listing: &str, serial: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (name, hidden) = (words.next()?, words.next()?);
        let found = words.collect::<Vec<_>>().join(" ");
        (hidden == "0" && found == serial).then(|| format!("/dev/{name}"))
    })
}

/// A command running in the background in a guest ([`Machine::spawn`]).
pub struct GuestProcess {
    machine: Machine,
    exec: crate::qga::GuestExec,
    label: String,
    started: Instant,
    /// Its output once seen: the agent reports an end only once.
    done: tokio::sync::Mutex<Option<ExecOutput>>,
}

impl GuestProcess {
    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Its output if it has ended, `None` while it runs.
    pub async fn try_wait(&self) -> Result<Option<ExecOutput>> {
        let mut done = self.done.lock().await;
        if done.is_none() {
            // The guest's agent keeps its commands across a migration or a restore; the request
            // goes to the QEMU process of now, under the slot's read lock so a migration does not
            // swap the process while it is in flight (the agent reports an end only once).
            let running = self.machine.inner.running.read().await;
            let qga = match running.as_ref() {
                Some(r) => r.qga.clone(),
                None => return Err(self.machine.error(format!("asking whether it ended: {}", self.label), "the machine is not running")),
            };
            *done = qga
                .exec_status(&self.exec)
                .await
                .map_err(|e| self.machine.error(format!("asking whether it ended: {}", self.label), format!("{e:#}")))?;
        }
        Ok(done.clone())
    }

    /// Waits at most `timeout` for it to end; on a timeout it is killed and the error shows what
    /// it printed so far.
    pub async fn wait(&self, timeout: Duration) -> Result<ExecOutput> {
        match poll::until(timeout, timeouts::BACKGROUND_POLL, |_| self.try_wait()).await? {
            Polled::Done(out) => {
                log::line(&format!(
                    "{}: ended with status {} after {:.2} s: {}",
                    self.machine.name(),
                    out.status,
                    self.started.elapsed().as_secs_f64(),
                    self.label
                ));
                Ok(out)
            }
            Polled::TimedOut(waited) => {
                let partial = self.kill().await;
                Err(self.machine.timeout_error(
                    format!("background command did not end within {timeout:?}: {}", self.label),
                    format!("it was killed; its output so far:\nstdout:\n{}\nstderr:\n{}", partial.stdout, partial.stderr),
                    waited,
                ))
            }
        }
    }

    /// Kills it and every process it started; returns what it printed.
    pub async fn kill(&self) -> ExecOutput {
        let mut done = self.done.lock().await;
        if let Some(out) = done.as_ref() {
            return out.clone();
        }
        let out = match self.machine.qga().await {
            Ok(qga) => qga.exec_kill(&self.exec).await,
            Err(e) => ExecOutput { status: -1, signal: None, stdout: String::new(), stderr: format!("{e:#}") },
        };
        *done = Some(out.clone());
        out
    }
}

/// How the log announces a machine's QEMU process: `<machine>: QEMU running (pid N)`.
const QEMU_RUNNING: &str = "QEMU running (pid ";

/// The QEMU process ids a driver's log announced (tests use them to check nothing survives).
pub fn logged_qemu_pids<'a>(log: impl IntoIterator<Item = &'a str>) -> Vec<u32> {
    log.into_iter().filter_map(|l| l.split_once(QEMU_RUNNING).and_then(|(_, r)| r.trim_end_matches(')').parse().ok())).collect()
}

/// Whether an error says the harness or a machine broke (not the system under test): a
/// [`MachineError`] marked so, or a [`HarnessError`], anywhere in its chain.
pub fn is_harness_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<MachineError>().is_some_and(|m| m.harness) || c.downcast_ref::<HarnessError>().is_some())
}

/// A harness failure outside any machine: the run could not be set up, or it did not finish.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HarnessError(pub String);

/// Whether an error is a wait or command that ran out of time.
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<MachineError>().is_some_and(|m| m.timed_out.is_some())
}

/// The loopback port QEMU bound for `hostfwd=tcp:127.0.0.1:0-:guest_port` (from `info usernet`).
async fn hostfwd_port(qmp: &Qmp, guest_port: u16) -> Result<u16> {
    let text = qmp.execute(qapi::qmp::human_monitor_command { command_line: "info usernet".into(), cpu_index: None }).await?;
    parse_usernet_port(&text, guest_port).ok_or_else(|| anyhow!("no forward to guest port {guest_port} in `info usernet`:\n{text}"))
}

/// Finds the host port of a `HOST_FORWARD` line whose guest port is `guest_port`.
fn parse_usernet_port(text: &str, guest_port: u16) -> Option<u16> {
    text.lines().filter(|l| l.contains("HOST_FORWARD")).find_map(|l| {
        // "  TCP[HOST_FORWARD]  13  127.0.0.1  40591  198.51.100.15  10124  0  0"
        let fields: Vec<&str> = l.split_whitespace().collect();
        let (host, guest) = (fields.get(3)?.parse::<u16>().ok()?, fields.get(5)?.parse::<u16>().ok()?);
        (guest == guest_port).then_some(host)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_guest_clock_ahead_of_the_host_is_refused() {
        // A normal boot: the kernel starts after QEMU, so the guest is behind.
        assert!(clock_is_plausible(3.6, 4.2));
        assert!(clock_is_plausible(4.9, 4.2));
        // Seen in a CI run: 328 s of guest uptime 25 s after the start.
        assert!(!clock_is_plausible(328.0, 25.5));
        assert!(!clock_is_plausible(12.0, 8.0));
    }

    use super::*;

    #[test]
    fn usernet_forward_port_is_found() {
        let text = "Hub -1 (ctl):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  TCP[HOST_FORWARD]  13       127.0.0.1 40591  198.51.100.15 10124     0     0\n";
        assert_eq!(parse_usernet_port(text, 10124), Some(40591));
        assert_eq!(parse_usernet_port(text, 22), None);
    }

    #[test]
    fn a_disk_is_found_by_serial_with_and_without_nvme_multipath() {
        // QEMU 7.2: no multipath, one node per namespace.
        let qemu7 = "nvme0n1 0 vmcheck-disk0\nnvme1n1 0 vmcheck-disk1\nvda 0 vmcheck-boot\n";
        assert_eq!(block_device_by_serial(qemu7, "vmcheck-disk0").as_deref(), Some("/dev/nvme0n1"));
        assert_eq!(block_device_by_serial(qemu7, "vmcheck-disk1").as_deref(), Some("/dev/nvme1n1"));
        assert_eq!(block_device_by_serial(qemu7, "vmcheck-boot").as_deref(), Some("/dev/vda"));
        // QEMU 10.0 (real listing of the target VM): the hidden path node sorts first.
        let qemu10 = "nvme0c0n1 1 vmcheck-disk0\nnvme0n1 0 vmcheck-disk0\nnvme1c1n1 1 vmcheck-disk1\nnvme1n1 0 vmcheck-disk1\n";
        assert_eq!(block_device_by_serial(qemu10, "vmcheck-disk0").as_deref(), Some("/dev/nvme0n1"));
        assert_eq!(block_device_by_serial(qemu10, "vmcheck-disk1").as_deref(), Some("/dev/nvme1n1"));
        // Serials are compared whole: a prefix is not a match; no serial, no device.
        assert_eq!(block_device_by_serial(qemu10, "vmcheck-disk"), None);
        assert_eq!(block_device_by_serial("loop0 0\nram0 0\n", "vmcheck-disk0"), None);
    }

    #[test]
    fn logged_pids_are_found() {
        assert_eq!(logged_qemu_pids(["target: QEMU running (pid 42)", "target # boot", "initiator: QEMU running (pid 7)"]), [42, 7]);
    }

    #[test]
    fn words_are_quoted_for_sh() {
        assert_eq!(shell_quote("/dev/nvme0n1"), "/dev/nvme0n1");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
