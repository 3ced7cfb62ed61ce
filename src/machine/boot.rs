//! Starting a machine: a boot, or a start from the snapshot store (a restore, or a disk-less
//! boot that saves the snapshot); the launch of one QEMU process (its NICs' socket pairs, QMP,
//! the control NIC's forwards); the wait for the guest agent, which also finishes a start from
//! the store (a restored guest's clock and random seed, the disks plugged in).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::{Backend, Machine, Pending, Running};
use crate::config::DiskSpec;
use crate::log;
use crate::poll::{self, Polled};
use crate::qemu::{NicLink, QemuProcess, QemuSpec};
use crate::qga::Qga;
use crate::qmp::Qmp;
use crate::timeouts;

impl Machine {
    /// Starts QEMU (a no-op when it runs). Disks are created on first start and kept across
    /// restarts. In guest mode nothing starts (the machines run already): the local machine's
    /// kernel log becomes its console, a peer is named with its address.
    pub async fn start(&self) -> Result<()> {
        match self.backend() {
            Backend::Qemu => Box::pin(self.start_inner()).await,
            _ => {
                self.start_guest();
                Ok(())
            }
        }
    }

    /// A guest-mode machine's start, once: the local machine's console follows its kernel log.
    fn start_guest(&self) {
        if self.inner.guest_started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let name = self.name();
        match self.backend() {
            Backend::Local => {
                log::line(&format!("{name}: the machine this driver runs on (guest mode)"));
                if let Err(e) = super::local::follow_kernel_log(self.console()) {
                    log::line(&format!(
                        "{name}: kernel messages are not watched ({e:#}): its splats are found \
                         only by the dmesg read at each case's end, if at all"
                    ));
                }
            }
            _ => log::line(&format!("{name}: a peer at {} (guest mode)", self.address())),
        }
    }

    /// A guest-mode machine's wait: the local one is there; a peer that runs the target daemon
    /// (it declares the daemon's port) is ready once the daemon answers `Health` at its address.
    async fn wait_for_guest(&self) -> Result<()> {
        self.start_guest();
        if self.backend() == Backend::Peer
            && self.forward_ports().contains(&crate::target::GRPC_PORT)
        {
            let started = Instant::now();
            self.target_client().await?;
            log::line(&format!(
                "{}: its target daemon answers at {}:{} ({:.2} s)",
                self.name(),
                self.address(),
                crate::target::GRPC_PORT,
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }

    async fn start_inner(&self) -> Result<()> {
        let mut running = self.inner.running.write().await;
        if let Some(r) = running.as_ref() {
            if r.process.exited().is_none() {
                return Ok(());
            }
        }
        *running = None;
        self.power_action();
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
    fn snapshot_key(
        &self,
        spec: &QemuSpec,
    ) -> Option<(Arc<crate::snapshot::Store>, crate::snapshot::Key)> {
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
        // Held against `vmcheck cache prune` from before the look-up until the driver ends.
        store.hold(&key)?;
        match store.find(&key) {
            Ok(Some(state)) => {
                let started = Instant::now();
                let mut incoming = base.clone();
                incoming.extra_args.extend(["-incoming", "defer", "-S"].map(String::from));
                let dest = self.launch(&incoming).await?;
                let uri = format!("file:{}", state.display());
                let restored = self.incoming(&dest, &uri, "restoring from snapshot").await;
                // The disks go in while the restored guest is still paused: it finds them as it
                // resumes and probes them (about 0.5 s under TCG) while the host waits for its
                // agent, where it was plugged only once the agent had answered.
                let plugging = Instant::now();
                if restored.is_ok() {
                    for d in &self.disks() {
                        if let Err(e) = self.attach_disk(&dest.qmp, d).await {
                            let _ = dest.process.kill().await;
                            return Err(e);
                        }
                    }
                }
                let resumed = async {
                    restored?;
                    let mark = dest.qmp.event_count();
                    dest.qmp.execute(qapi::qmp::cont {}).await.map_err(|e| {
                        self.error("QMP cont after restore was refused", format!("{e:#}"))
                    })?;
                    self.wait_event(&dest.qmp, mark, "RESUME", timeouts::request()).await.map(drop)
                }
                .await;
                match resumed {
                    Ok(()) => {
                        let pending = Pending::Restored { key, started, plugging };
                        return Ok(Some((dest, pending)));
                    }
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
                log::line(&format!(
                    "{name}: snapshot {} is unusable ({why:#}): deleting it, booting afresh",
                    key.short()
                ));
                store.discard(&key)?;
            }
        }
        match store.try_build(&key)? {
            Some(build) => {
                log::line(&format!(
                    "{name}: no snapshot {}: booting without disks to save one",
                    key.short()
                ));
                let started = Instant::now();
                let r = self.launch(&base).await?;
                Ok(Some((r, Pending::Build { build, started })))
            }
            None => {
                log::line(&format!(
                    "{name}: another run is saving snapshot {}: booting afresh",
                    key.short()
                ));
                Ok(None)
            }
        }
    }

    /// Starts a QEMU process of this machine from `spec` and connects QMP (a boot, a restore
    /// or a snapshot restore); the caller puts it in the running slot. Its NICs get fresh socket
    /// pairs whose switch ends are plugged in at once: the switch ports follow this process,
    /// keeping their link state.
    pub(super) async fn launch(&self, spec: &QemuSpec) -> Result<Running> {
        let (running, ports) = self.launch_unplugged(spec).await?;
        self.plug(ports);
        Ok(running)
    }

    /// [`Machine::launch`] leaving the switch ends of the NICs' socket pairs unplugged (a
    /// migration target, plugged in at switchover by [`Machine::plug`]); until then nothing
    /// reads or writes them.
    pub(super) async fn launch_unplugged(
        &self,
        spec: &QemuSpec,
    ) -> Result<(Running, Vec<(u32, std::os::unix::net::UnixDatagram)>)> {
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
    pub(super) fn plug(&self, ports: Vec<(u32, std::os::unix::net::UnixDatagram)>) {
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
        let process = QemuProcess::start(
            spec,
            &self.inner.dir,
            &shared,
            self.inner.console.clone(),
            Some(&self.inner.env.log_dir),
        )
        .await?;
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
                return Err(self.harness_error(
                    "QEMU did not start",
                    format!("{e:#}\nQEMU stderr:\n{}", process.stderr()),
                ));
            }
        };
        let mut forwards = Vec::new();
        for &guest in spec.control.iter().flat_map(|c| c.guest_ports.iter()) {
            let host = hostfwd_port(&qmp, guest).await.map_err(|e| {
                self.harness_error(format!("reading the forward of port {guest}"), format!("{e:#}"))
            })?;
            forwards.push((guest, host));
        }
        log::line(&format!("{}: {QEMU_RUNNING}{pid})", self.name()));
        super::power::log_qmp_events(self, &qmp, pid);
        Ok(Running { process, qmp, qga: Arc::new(Qga::new(&spec.qga_socket)), forwards })
    }

    /// Creates the raw image of `disk` unless it exists (its data survives restarts).
    pub(super) fn create_disk_file(&self, disk: &DiskSpec) -> Result<PathBuf> {
        let path = self.disk_path(&disk.id);
        if !path.exists() {
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating disk {}", path.display()))?;
            f.set_len(disk.size_mib << 20)?;
        }
        Ok(path)
    }

    /// Waits until the machine has booted and its guest agent answers.
    ///
    /// After a start from the snapshot store it also finishes that start: a restored guest gets
    /// the host's clock and fresh random bytes (sent ahead of any later request, not waited for:
    /// the guest's `hwclock` may still run when this returns, and the next request waits for it),
    /// a freshly booted one is saved as the snapshot; then the plugged disks are hot-added and
    /// awaited in the guest. A restore whose agent does not answer within `timeouts::restore()`
    /// (or whose fix-up cannot be sent) deletes the snapshot and boots the machine afresh.
    pub async fn wait_for_agent(&self) -> Result<()> {
        let waited = match self.backend() {
            Backend::Qemu => self.wait_for_agent_inner().await,
            _ => self.wait_for_guest().await,
        };
        if waited.is_ok() {
            // Up: the watches may poll it, and a watched service's death is news again.
            self.inner.power.steady();
        }
        waited
    }

    async fn wait_for_agent_inner(&self) -> Result<()> {
        self.start().await?;
        let doing = match self.inner.pending.lock().await.as_ref() {
            None => "booting",
            Some(Pending::Restored { .. }) => "restoring from snapshot",
            Some(Pending::Build { .. }) => "booting to save a snapshot",
        };
        // At a terminal, a live line per machine while it comes up.
        let _line = crate::progress::spinner(format!("{}: {doing}", self.name()));
        crate::progress::quietly(self.wait_for_agent_started()).await?;
        self.start_event_queue().await;
        Ok(())
    }

    async fn wait_for_agent_started(&self) -> Result<()> {
        let mut pending = self.inner.pending.lock().await;
        match pending.take() {
            None => {
                drop(pending);
                self.sync_agent(timeouts::boot()).await
            }
            Some(Pending::Restored { key, started, plugging }) => {
                let restored = async {
                    self.sync_agent(timeouts::restore()).await?;
                    let fixing = Instant::now();
                    self.after_restore().await?;
                    Ok::<_, anyhow::Error>(fixing.elapsed())
                }
                .await;
                match restored {
                    Ok(fixing) => {
                        log::event(
                            crate::timeline::EventKind::Power,
                            self.name(),
                            &format!("{RESTORED} {}", key.short()),
                        );
                        log::line(&format!(
                            "{}: restored from snapshot {} in {:.2} s (clock and random seed sent in {:.2} s)",
                            self.name(),
                            key.short(),
                            started.elapsed().as_secs_f64(),
                            fixing.as_secs_f64()
                        ));
                        self.wait_for_disks(plugging).await
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
                        log::line(&format!(
                            "{}: booted in {:.2} s",
                            self.name(),
                            started.elapsed().as_secs_f64()
                        ));
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
                // Every restore would carry this boot's kernel log: a splat in it (seen in a CI
                // replay: a soft lockup in the boot's W+X page-table walk, the vCPUs starved by
                // an overloaded host) would fail every later run that restores the snapshot. Not
                // saved; this run's own watches judge the splat, and the next run boots afresh.
                let dmesg = self.succeed("dmesg").await?;
                if let Some(splat) = self.console_watch().splats_in(&dmesg).first() {
                    log::line(&format!(
                        "{}: snapshot {short} not saved: its boot logged {}",
                        self.name(),
                        splat.what
                    ));
                    drop(build);
                    return self.plug_disks().await;
                }
                self.warm_up().await;
                let saving = Instant::now();
                match self.save_snapshot(build, booted).await {
                    Ok(bytes) => log::line(&format!(
                        "{}: saved snapshot {short} ({:.1} MiB) in {:.2} s",
                        self.name(),
                        bytes as f64 / 1048576.0,
                        saving.elapsed().as_secs_f64()
                    )),
                    Err(e) => {
                        log::line(&format!("{}: snapshot {short} not saved: {e:#}", self.name()))
                    }
                }
                self.plug_disks().await
            }
        }
    }

    /// Runs the recipe's warm-up script ([`crate::recipe::Recipe::warm_up`]) if the guest has
    /// one, before its snapshot is saved. A failure is logged: the snapshot is only slower.
    async fn warm_up(&self) {
        let path = crate::recipe::WARM_UP_PATH;
        let started = Instant::now();
        let cmd = format!("if [ -f {path} ]; then sh {path} >/dev/null 2>&1; echo ran; fi");
        match self.execute_with_timeout(&cmd, timeouts::request()).await {
            Ok(out) if out.stdout.trim() == "ran" => log::line(&format!(
                "{}: warm-up ({path}) ran in {:.2} s",
                self.name(),
                started.elapsed().as_secs_f64()
            )),
            Ok(_) => {}
            Err(e) => log::line(&format!("{}: warm-up ({path}) failed: {e:#}", self.name())),
        }
    }

    /// Seconds since the guest's kernel started (`/proc/uptime`, the guest's monotonic clock).
    async fn guest_uptime(&self) -> Result<f64> {
        let text = self.succeed("cat /proc/uptime").await?;
        text.split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow!("{}: /proc/uptime said {text:?}", self.name()))
    }

    /// Saves the running, disk-less machine as a snapshot (migration to its file) and resumes it.
    async fn save_snapshot(&self, build: crate::snapshot::Build, boot_secs: f64) -> Result<u64> {
        let qmp = self.qmp().await?;
        super::power::enable_migration_events(&qmp).await?;
        let saved = self.migrate_to_file(&qmp, &build.state_path(), "saving the snapshot").await;
        // Completed, the source stops (postmigrate); failed, it may run on already. The
        // MIGRATION event comes before the run state leaves finish-migrate, when `cont` is refused
        // ("Migration is not finalized yet").
        let settled = poll::until(timeouts::request(), timeouts::SOCKET_POLL, |_| async {
            let status = qmp.execute(qapi::qmp::query_status {}).await?;
            Ok((serde_json::to_value(status.status)? != serde_json::json!("finish-migrate"))
                .then_some(status.running))
        })
        .await?;
        let Polled::Done(running) = settled else {
            return Err(self.harness_error(
                "the machine stayed in finish-migrate after saving the snapshot",
                format!("{saved:?}"),
            ));
        };
        if !running {
            let mark = qmp.event_count();
            qmp.execute(qapi::qmp::cont {}).await.map_err(|e| {
                self.harness_error(
                    "QMP cont after saving the snapshot was refused",
                    format!("{e:#}"),
                )
            })?;
            self.wait_event(&qmp, mark, "RESUME", timeouts::request()).await?;
        }
        saved?;
        let store = self.inner.env.snapshots.clone().ok_or_else(|| anyhow!("no snapshot store"))?;
        store.finish(build, boot_secs)
    }

    /// What a restored guest must not share with the snapshot: its clock (set to the host's,
    /// `guest-set-time`) and its random state (fresh bytes from the host mixed into
    /// `/dev/urandom`).
    ///
    /// Nothing of it is waited for: all is sent ahead (`Qga::send_ahead`): the clock set (first,
    /// since it is set to the time it was sent at), `/dev/urandom` opened, and once the
    /// opening's answer is read, the bytes written and the file closed. The agent runs them
    /// before any later request, so every guest command after the restore (and the target
    /// daemon's first gRPC call: [`Machine::target_client`] settles them first) sees the guest's
    /// clock set and the bytes mixed in, and a failure among them fails that command. What it
    /// saves: the first requests after a restore are slow under TCG, every code path they take
    /// translated afresh: `guest-set-time`, whose qemu-ga runs `hwclock -w`, the first process
    /// the guest starts, about 0.2 s, and the opening about 0.1 s; the host meanwhile plugs
    /// disks in, restores the other machines, talks to the daemon. Last, where the recipe has a
    /// warm-up script, it is started in the background (never waited for, `nice -n 19` in the
    /// guest), so that its tools' code is translated again before a step needs it.
    async fn after_restore(&self) -> Result<()> {
        use crate::qga::Ahead;
        use base64::Engine;
        let qga = self.qga().await?;
        let mut seed = [0u8; 64];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
        let seed = base64::engine::general_purpose::STANDARD.encode(seed);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i64;
        let open = serde_json::json!({ "path": "/dev/urandom", "mode": "w" });
        // The clock first: it is set to the time it was sent at, so nothing may queue before it.
        let mut ahead = vec![
            Ahead::new("guest-set-time", serde_json::json!({ "time": now })),
            Ahead::new("guest-file-open", open).then(move |handle| {
                vec![
                    Ahead::new(
                        "guest-file-write",
                        serde_json::json!({ "handle": handle, "buf-b64": seed }),
                    ),
                    // Closing flushes what was written.
                    Ahead::new("guest-file-close", serde_json::json!({ "handle": handle })),
                ]
            }),
        ];
        // The warm-up again, in the background at the lowest priority: the page cache came back
        // warm with the state, but TCG translates every code path afresh after a restore, and
        // the machine is mostly idle while the host plugs disks in and drives the other
        // machines. Measured on a restored initiator: a first fio job 1.23 s, the next 0.66 s.
        // Only where the recipe has one: on a machine without, the shell that finds none is a
        // process started on a vCPU that is probing the disks just plugged.
        if self.has_warm_up() {
            ahead.push(Ahead::detached_exec(&format!(
                "[ -f {path} ] || exit 0; command -v nice >/dev/null && exec nice -n 19 sh {path} >/dev/null 2>&1; exec sh {path} >/dev/null 2>&1",
                path = crate::recipe::WARM_UP_PATH
            )));
        }
        qga.send_ahead(ahead).await
    }

    /// Whether the guest may have a warm-up script: its recipe writes one (vmcheck's images),
    /// or the machine runs a start script (a NixOS image, whose files vmcheck does not know).
    fn has_warm_up(&self) -> bool {
        let node = &self.inner.node;
        node.start_script.is_some()
            || node.recipe().files().iter().any(|f| f.path == crate::recipe::WARM_UP_PATH)
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
        self.wait_for_disks(started).await
    }

    /// Waits until the guest shows each plugged disk, hot-added since `started`.
    async fn wait_for_disks(&self, started: Instant) -> Result<()> {
        let disks = self.disks();
        if disks.is_empty() {
            return Ok(());
        }
        for d in &disks {
            self.wait_for_block_device(&d.serial, true, timeouts::hotplug()).await?;
        }
        let plugged = format!("{} disk(s) plugged", disks.len());
        log::event(crate::timeline::EventKind::HotAdd, self.name(), &plugged);
        log::line(&format!(
            "{}: {plugged} in {:.2} s",
            self.name(),
            started.elapsed().as_secs_f64()
        ));
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
        result.map_err(|e| {
            self.harness_error(
                format!("the guest agent did not answer within {timeout:?}"),
                format!("{e:#}"),
            )
        })?;
        log::line(&format!(
            "{}: agent answered after {:.2} s",
            self.name(),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// Whether a guest that has been up `guest_secs` (its own monotonic clock) after `host_secs` of
/// the host's, counted from before QEMU started, keeps time: the guest's clock starts later, so
/// it may not be ahead, beyond a small allowance.
pub fn clock_is_plausible(guest_secs: f64, host_secs: f64) -> bool {
    guest_secs <= host_secs * 1.05 + 1.0
}

/// The power event on a scenario's timeline when a machine restored from its snapshot has its
/// agent answering, clock and random seed set (`restored from snapshot KEY`); its disks are
/// plugged in after it.
pub const RESTORED: &str = "restored from snapshot";

/// How the log announces a machine's QEMU process: `<machine>: QEMU running (pid N)`.
const QEMU_RUNNING: &str = "QEMU running (pid ";

/// The QEMU process ids a driver's log announced (tests use them to check nothing survives).
pub fn logged_qemu_pids<'a>(log: impl IntoIterator<Item = &'a str>) -> Vec<u32> {
    log.into_iter()
        .filter_map(|l| {
            l.split_once(QEMU_RUNNING).and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
        })
        .collect()
}

/// The loopback port QEMU bound for `hostfwd=tcp:127.0.0.1:0-:guest_port` (from `info usernet`).
async fn hostfwd_port(qmp: &Qmp, guest_port: u16) -> Result<u16> {
    let text = qmp
        .execute(qapi::qmp::human_monitor_command {
            command_line: "info usernet".into(),
            cpu_index: None,
        })
        .await?;
    parse_usernet_port(&text, guest_port)
        .ok_or_else(|| anyhow!("no forward to guest port {guest_port} in `info usernet`:\n{text}"))
}

/// Finds the host port of a `HOST_FORWARD` line whose guest port is `guest_port`.
fn parse_usernet_port(text: &str, guest_port: u16) -> Option<u16> {
    text.lines().filter(|l| l.contains("HOST_FORWARD")).find_map(|l| {
        // "  TCP[HOST_FORWARD]  13  127.0.0.1  40591  198.51.100.15  10124  0  0"
        let fields: Vec<&str> = l.split_whitespace().collect();
        let (host, guest) =
            (fields.get(3)?.parse::<u16>().ok()?, fields.get(5)?.parse::<u16>().ok()?);
        (guest == guest_port).then_some(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_clock_ahead_of_the_host_is_refused() {
        // A normal boot: the kernel starts after QEMU, so the guest is behind.
        assert!(clock_is_plausible(3.6, 4.2));
        assert!(clock_is_plausible(4.9, 4.2));
        // Seen in a CI run: 328 s of guest uptime 25 s after the start.
        assert!(!clock_is_plausible(328.0, 25.5));
        assert!(!clock_is_plausible(12.0, 8.0));
    }

    #[test]
    fn usernet_forward_port_is_found() {
        let text = "Hub -1 (ctl):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  TCP[HOST_FORWARD]  13       127.0.0.1 40591  198.51.100.15 10124     0     0\n";
        assert_eq!(parse_usernet_port(text, 10124), Some(40591));
        assert_eq!(parse_usernet_port(text, 22), None);
    }

    #[test]
    fn logged_pids_are_found() {
        assert_eq!(
            logged_qemu_pids([
                "target: QEMU running (pid 42)",
                "target # boot",
                "initiator: QEMU running (pid 7)"
            ]),
            [42, 7]
        );
    }
}
