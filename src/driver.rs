//! The driver: a run's machines, its run directory, `start_all`, subtests with timings (recorded
//! in the run's [`Reporter`]).
//!
//! Each run lives in its own temporary directory (`$TMPDIR/vmcheck-run-<pid>-XXXX`): sockets,
//! disks, console logs. It is removed at the end unless `keep_state` is set; directories of runs
//! whose driver was killed (`kill -9` leaves no chance to clean) are removed by the next run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::accel::{self, Accel};
use crate::config::NodeSpec;
use crate::images::{Image, Images};
use crate::log;
use crate::machine::{Machine, MachineEnv};
use crate::network::Switch;
use crate::qemu::Boot;
use crate::report::Reporter;
pub use crate::report::{summary_table, SubtestResult};
use crate::watch::{Condition, Findings, HealthError, PollStats};

/// The note on a scenario's timeline when its driver is set up (images checked, accelerator
/// chosen, run directory made): the end of a run's set-up (`vmcheck bench` splits runs by it).
pub const DRIVER_READY: &str = "driver ready";
/// The note on a scenario's timeline when [`Driver::start_all`] has every machine up (booted or
/// restored, its disks plugged in).
pub const MACHINES_UP: &str = "machines up";

/// Kernel parameters of the default images: serial console, quiet boot (serial output is slow
/// under TCG; the guest raises the console log level once it is up), reboot on panic. The
/// crypto self-tests are skipped (`cryptomgr.notests`, and the KDF's own test, which does not
/// heed it): under TCG they cost about 0.8 s of every boot. The guest's clock source is added
/// beside these: [`crate::accel::guest_clock_params`] (the TSC at the host's measured rate under
/// TCG, else the HPET).
pub const DEFAULT_KERNEL_PARAMS: &str =
    "console=ttyS0,115200 quiet panic=1 mitigations=off random.trust_cpu=on no_timer_check \
     8250.nr_uarts=1 cryptomgr.notests initcall_blacklist=crypto_kdf108_init";

/// Where a run's logs go: `--out DIR`, else `logs/` in the run directory `run_dir`; created.
fn log_dir(options: &DriverOptions, run_dir: &Path) -> Result<PathBuf> {
    let dir = match &options.out_dir {
        Some(d) => d.clone(),
        None => run_dir.join("logs"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// How a run is set up.
#[derive(Debug, Clone, Default)]
pub struct DriverOptions {
    /// Keep the run directory (disks, sockets, logs) after the run.
    pub keep_state: bool,
    /// Keep console logs, command lines and tool output here.
    pub out_dir: Option<PathBuf>,
    /// Where the run's lines go and its subtests are recorded (a fresh one on stderr by default).
    pub reporter: Reporter,
    /// Boot every machine, never start one from a saved state (`--fresh-boot`; also
    /// `VMCHECK_FRESH_BOOT=1`). See `src/snapshot.rs`.
    pub fresh_boot: bool,
    /// Guest mode: the driver runs inside one of the machines and reaches the others by
    /// address; no QEMU, no image, no switch (`vmcheck run --local M --peer N=ADDR`).
    pub guest: Option<GuestMode>,
}

/// Where a guest-mode driver's machines are (`vmcheck run --local MACHINE --peer NAME[=ADDR]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestMode {
    /// The scenario's machine this process runs on: its commands are local processes.
    pub local: String,
    /// Every other machine of the scenario, by name, with the address it is reached at (its
    /// target daemon's gRPC, NVMe-oF, iSCSI), which replaces the scenario's own.
    pub peers: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
}

impl GuestMode {
    /// Checks that `nodes` are exactly the local machine and the peers (no machine left
    /// unplaced, no unknown name); the error says which.
    pub fn check(&self, nodes: &[NodeSpec]) -> Result<()> {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        if !names.contains(&self.local.as_str()) {
            bail!(
                "--local {}: the scenario has no such machine; its machines: {names:?}",
                self.local
            );
        }
        if self.peers.contains_key(&self.local) {
            bail!("{} is --local, so it cannot be a --peer too", self.local);
        }
        let unplaced: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| *n != self.local && !self.peers.contains_key(*n))
            .collect();
        if !unplaced.is_empty() {
            bail!(
                "guest mode reaches every other machine by address: name {} with --peer NAME[=ADDR]",
                unplaced.join(", ")
            );
        }
        Ok(())
    }
}

/// Whether `VMCHECK_FRESH_BOOT` asks for fresh boots (any value but empty or `0`).
pub fn fresh_boot_from_env() -> bool {
    std::env::var("VMCHECK_FRESH_BOOT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Awaited with a subtest's name before the subtest runs (the REPL's `step` pauses there); an
/// error stops the test before that subtest.
pub type SubtestGate =
    Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// Awaited with the driver, a failed subtest's name and its error, before
/// [`Driver::subtest`] returns that error: `--pause-on-failure` opens the REPL there, on the
/// machines as the failure left them. It is not called again while it runs.
pub type FailureHook = Arc<
    dyn for<'a> Fn(&'a Driver, &'a str, &'a anyhow::Error) -> futures::future::BoxFuture<'a, ()>
        + Send
        + Sync,
>;

/// A run: its machines and everything they share.
pub struct Driver {
    machines: Vec<Machine>,
    env: Arc<MachineEnv>,
    /// Removed when the driver is dropped, unless kept.
    _run_dir: Option<tempfile::TempDir>,
    reporter: Reporter,
    started: Instant,
    gate: Mutex<Option<SubtestGate>>,
    on_failure: Mutex<Option<FailureHook>>,
    /// What the watches saw; the allowances of steps; the polled invariants (`crate::watch`).
    findings: Arc<Findings>,
    allowances: Mutex<Vec<(String, regex::Regex)>>,
    watches: Mutex<Vec<Watch>>,
    /// The images this driver boots, held against `vmcheck cache prune` while it lives.
    _cache_holds: Vec<crate::cache::Hold>,
    /// The accelerator the machines run under (KVM when its probe passed, else TCG); `None` in
    /// guest mode, which starts no QEMU.
    pub accel: Option<Accel>,
    /// The machines whose dmesg the last [`Driver::unreported_findings`] read and kept.
    dmesg_kept: Mutex<Vec<String>>,
}

/// A polled invariant: its task, and what its polls cost.
struct Watch {
    name: String,
    period: Duration,
    stats: Arc<Mutex<PollStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for w in self.watches.lock().unwrap().iter() {
            w.task.abort();
        }
    }
}

impl Driver {
    /// Builds (or finds) the images, probes the accelerator, creates the run directory, the
    /// switches and the machines. Nothing is started.
    pub async fn new(nodes: Vec<NodeSpec>, options: DriverOptions) -> Result<Driver> {
        log::scope(options.reporter.clone(), Driver::set_up(nodes, options)).await
    }

    async fn set_up(nodes: Vec<NodeSpec>, options: DriverOptions) -> Result<Driver> {
        if nodes.is_empty() {
            bail!("a test needs at least one machine");
        }
        let mut names = std::collections::HashSet::new();
        for n in &nodes {
            crate::config::validate_machine_name(&n.name)?;
            if !names.insert(n.name.clone()) {
                bail!("two machines are named {}", n.name);
            }
            for disk in &n.disks {
                disk.check().with_context(|| format!("machine {}", n.name))?;
            }
        }
        if let Some(guest) = options.guest.clone() {
            return Driver::set_up_guest(nodes, guest, options);
        }
        let (qemu, qemu_version) = crate::qemu::find_qemu_with_version()?;
        let images = Images::from_env()?;
        let images_started = Instant::now();
        // One image per distinct recipe (keyed by the recipe as JSON).
        let mut recipe_images: HashMap<String, Image> = HashMap::new();
        let mut cache_holds = Vec::new();
        for recipe in nodes.iter().filter(|n| n.start_script.is_none()).map(|n| n.recipe()) {
            let key = serde_json::to_string(&recipe)?;
            if let std::collections::hash_map::Entry::Vacant(slot) = recipe_images.entry(key) {
                let images = images.clone();
                let (image, hold) =
                    tokio::task::spawn_blocking(move || images.ensure_held(recipe)).await??;
                slot.insert(image);
                cache_holds.push(hold);
            }
        }
        // The probe boots a real kernel: a default image's, else the one a start script boots.
        log::line(&format!("images ready in {:.2} s", images_started.elapsed().as_secs_f64()));
        let probe_kernel = recipe_images.values().next().map(|i| i.kernel.clone()).or_else(|| {
            nodes
                .iter()
                .filter_map(|n| n.start_script.as_deref())
                .find_map(accel::start_script_kernel)
        });
        let accel = accel::choose(&qemu, probe_kernel.as_deref(), Some(&images.cache_dir)).await?;
        remove_stale_run_dirs();
        let run_dir = tempfile::Builder::new()
            .prefix(&format!("vmcheck-run-{}-", std::process::id()))
            .tempdir()
            .context("creating the run directory")?;
        let path = run_dir.path().to_path_buf();
        log::line(&format!("run directory: {} (accelerator: {})", path.display(), accel.name()));
        let log_dir = log_dir(&options, &path)?;
        let mut switches = HashMap::new();
        for vlan in nodes.iter().flat_map(|n| n.vlans.iter().copied()) {
            if let std::collections::hash_map::Entry::Vacant(e) = switches.entry(vlan) {
                e.insert(Arc::new(Switch::start(vlan)?));
            }
        }
        let reporter = options.reporter.clone();
        let snapshots = if options.fresh_boot || fresh_boot_from_env() || recipe_images.is_empty() {
            None
        } else {
            Some(Arc::new(crate::snapshot::Store::with_version(&images.cache_dir, qemu_version)))
        };
        let findings = Arc::new(Findings::default());
        let env = Arc::new(MachineEnv {
            run_dir: path,
            qemu,
            accel,
            switches,
            log_dir,
            reporter: reporter.clone(),
            snapshots,
            findings: findings.clone(),
        });
        // Off the runtime's threads: a first run after the host's boot measures the host's TSC
        // for 100 ms.
        let cache_dir = images.cache_dir.clone();
        let clock =
            tokio::task::spawn_blocking(move || accel::guest_clock_params(accel, Some(&cache_dir)))
                .await
                .context("choosing the guest's clock source")?;
        let kernel_params = format!("{DEFAULT_KERNEL_PARAMS} {clock}");
        let mut machines = Vec::new();
        for node in nodes {
            let boot = match &node.start_script {
                Some(script) => {
                    Boot::StartScript { path: script.clone(), kernel_params: String::new() }
                }
                None => {
                    let image = &recipe_images[&serde_json::to_string(&node.recipe())?];
                    Boot::Kernel {
                        kernel: image.kernel.clone(),
                        initrd: image.initrd.clone(),
                        tools: Some(image.tools.clone()),
                        append: kernel_params.clone(),
                    }
                }
            };
            machines.push(Machine::new(node, boot, env.clone())?);
        }
        let driver = Driver::assemble(
            machines,
            env,
            (run_dir, options.keep_state),
            reporter,
            findings,
            (cache_holds, Some(accel)),
        );
        // The target's daemon: its console line is instant; a poll of its pid and exits is the
        // backstop that catches a restart the console did not show.
        for m in &driver.machines {
            if m.console_watch().services().iter().any(|s| s == crate::watch::TARGET_DAEMON) {
                driver.watch_daemon(m);
            }
        }
        driver.reporter.event(crate::timeline::EventKind::Note, None, DRIVER_READY);
        Ok(driver)
    }

    /// The driver of `machines`, in both modes; the run directory is kept (and said so) when
    /// asked.
    fn assemble(
        machines: Vec<Machine>,
        env: Arc<MachineEnv>,
        (run_dir, keep): (tempfile::TempDir, bool),
        reporter: Reporter,
        findings: Arc<Findings>,
        (cache_holds, accel): (Vec<crate::cache::Hold>, Option<Accel>),
    ) -> Driver {
        let run_dir = if keep {
            let kept = run_dir.keep();
            log::line(&format!("keeping the run directory {}", kept.display()));
            None
        } else {
            Some(run_dir)
        };
        Driver {
            machines,
            env,
            _run_dir: run_dir,
            reporter,
            started: Instant::now(),
            gate: Mutex::new(None),
            on_failure: Mutex::new(None),
            findings,
            allowances: Mutex::default(),
            watches: Mutex::default(),
            _cache_holds: cache_holds,
            accel,
            dmesg_kept: Mutex::default(),
        }
    }

    /// Polls the target daemon of `m` ([`Condition::ServiceSteady`]) until the driver ends.
    fn watch_daemon(&self, m: &Machine) {
        self.watch(
            &format!("{} on {} keeps running", crate::watch::TARGET_DAEMON, m.name()),
            crate::watch::DAEMON_WATCH_PERIOD,
            Condition::ServiceSteady {
                machine: m.clone(),
                service: crate::watch::TARGET_DAEMON.to_string(),
            },
        );
    }

    /// Guest mode's set-up: a run directory for the logs, and the machines as they are (the
    /// local one, and peers at their addresses); no image, QEMU, accelerator or switch. A peer
    /// that runs the target daemon (it declares the daemon's port) has its daemon polled over
    /// gRPC, the console being the host's.
    fn set_up_guest(
        nodes: Vec<NodeSpec>,
        guest: GuestMode,
        options: DriverOptions,
    ) -> Result<Driver> {
        guest.check(&nodes)?;
        remove_stale_run_dirs();
        let run_dir = tempfile::Builder::new()
            .prefix(&format!("vmcheck-run-{}-", std::process::id()))
            .tempdir()
            .context("creating the run directory")?;
        let path = run_dir.path().to_path_buf();
        log::line(&format!(
            "run directory: {} (guest mode: this is {}; {})",
            path.display(),
            guest.local,
            match guest.peers.is_empty() {
                true => "no peers".to_string(),
                false => guest
                    .peers
                    .iter()
                    .map(|(n, a)| format!("{n} at {a}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        ));
        let log_dir = log_dir(&options, &path)?;
        let findings = Arc::new(Findings::default());
        let reporter = options.reporter.clone();
        let env = Arc::new(MachineEnv {
            run_dir: path,
            qemu: PathBuf::new(),
            accel: Accel::Tcg,
            switches: HashMap::new(),
            log_dir,
            reporter: reporter.clone(),
            snapshots: None,
            findings: findings.clone(),
        });
        let mut machines = Vec::new();
        for mut node in nodes {
            let backend = match guest.peers.get(&node.name) {
                Some(addr) => {
                    node.address = *addr;
                    crate::machine::Backend::Peer
                }
                None => crate::machine::Backend::Local,
            };
            machines.push(Machine::guest(node, backend, env.clone())?);
        }
        let driver = Driver::assemble(
            machines,
            env,
            (run_dir, options.keep_state),
            reporter,
            findings,
            (Vec::new(), None),
        );
        for m in &driver.machines {
            let daemon = m.forward_ports().contains(&crate::target::GRPC_PORT);
            if daemon && m.backend() == crate::machine::Backend::Peer {
                driver.watch_daemon(m);
            }
        }
        Ok(driver)
    }

    /// Every machine of the run, in the order the scenario declared them.
    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// The machine named `name`.
    pub fn machine(&self, name: &str) -> Result<Machine> {
        self.machines.iter().find(|m| m.name() == name).cloned().ok_or_else(|| {
            let known: Vec<_> = self.machines.iter().map(Machine::name).collect();
            anyhow!("no machine named {name:?}; this test has {known:?}")
        })
    }

    /// Keeps `text` as `name` among the run's artifacts (`--out DIR`, else the run directory's
    /// logs): raw tool output, for a person reading a failure later.
    pub fn artifact(&self, name: &str, text: &str) {
        let path = self.env.log_dir.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            self.reporter.line(&format!("could not keep {}: {e}", path.display()));
        }
    }

    /// The run's reporter: its sinks (the REPL switches the console echo there) and record.
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Where the run keeps console logs, command lines and artifacts (`--out DIR`, else the run
    /// directory's `logs/`).
    pub fn log_dir(&self) -> &Path {
        &self.env.log_dir
    }

    /// The run directory (`$TMPDIR/vmcheck-run-<pid>-XXXX`): sockets, disk files, logs without `--out`.
    pub fn run_dir(&self) -> &Path {
        &self.env.run_dir
    }

    /// Starts every machine and waits until every agent answers, all at once: the machines'
    /// starts (QEMU launched, a snapshot loaded) and their waits overlap.
    pub async fn start_all(&self) -> Result<()> {
        let start = self.reporter.nested("start all VMs", async {
            // wait_for_agent starts the machine first.
            let waits = self.machines.iter().map(|m| m.wait_for_agent());
            for r in futures::future::join_all(waits).await {
                r?;
            }
            self.reporter.event(crate::timeline::EventKind::Note, None, MACHINES_UP);
            Ok(())
        });
        log::scope(self.reporter.clone(), start).await
    }

    /// Runs one subtest: logs its name and time, records its outcome for the summary and JUnit.
    pub async fn subtest<T>(
        &self,
        name: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate(name.to_string()).await?;
        }
        let started = Instant::now();
        self.reporter.event(crate::timeline::EventKind::SubtestStart, None, name);
        // Raced against the watches: a kernel splat or a broken invariant fails the step now.
        let (result, allowed) = log::scope(
            self.reporter.clone(),
            self.reporter.nested(&format!("subtest: {name}"), self.watched(name, f)),
        )
        .await;
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        let harness_error = result.as_ref().err().is_some_and(crate::machine::is_harness_error);
        self.reporter.record_subtest(SubtestResult {
            name: name.to_string(),
            duration: started.elapsed(),
            error,
            harness_error,
            allowed,
        });
        if let Err(e) = &result {
            self.failed(name, e).await;
        }
        result.with_context(|| format!("subtest {name:?} failed"))
    }

    /// Runs the failure hook, if one is set, taken out meanwhile: a subtest that fails inside
    /// it (the REPL's `run`) does not call it again.
    async fn failed(&self, name: &str, error: &anyhow::Error) {
        let hook = self.on_failure.lock().unwrap().take();
        if let Some(hook) = hook {
            hook(self, name, error).await;
            *self.on_failure.lock().unwrap() = Some(hook);
        }
    }

    /// Sets (or clears) the hook awaited when a subtest fails ([`FailureHook`]).
    pub fn set_failure_hook(&self, hook: Option<FailureHook>) {
        *self.on_failure.lock().unwrap() = hook;
    }

    /// Runs step `name` against the watches: the first finding (not allowed for this step) while
    /// it runs ends it with a [`HealthError`]. Returns its result and what was allowed.
    async fn watched<T>(
        &self,
        name: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> (Result<T>, Vec<String>) {
        // Findings from here on are this step's (those taken already are skipped).
        let from = self.findings.len();
        let mut allowed = Vec::new();
        tokio::pin!(f);
        let result = loop {
            tokio::select! {
                r = &mut f => break r,
                (i, finding) = self.findings.next(from) => {
                    self.findings.take(i);
                    self.mark(&finding);
                    match self.allowance(name, &finding) {
                        Some(note) => allowed.push(note),
                        None => {
                            return (Err(HealthError { finding, step_error: None }.into()), allowed)
                        }
                    }
                }
            }
        };
        // What began during the step and ended with it (a splat's last lines come after).
        for finding in self.findings.take_rest(from).await {
            self.mark(&finding);
            match self.allowance(name, &finding) {
                Some(note) => allowed.push(note),
                None => {
                    let step_error = result.err().map(|e| format!("{e:#}"));
                    return (Err(HealthError { finding, step_error }.into()), allowed);
                }
            }
        }
        (result, allowed)
    }

    /// The note of an allowance of step `step` that covers `finding`, logged.
    fn allowance(&self, step: &str, finding: &crate::watch::Finding) -> Option<String> {
        let allowances = self.allowances.lock().unwrap();
        let (_, re) = allowances.iter().find(|(s, re)| {
            s == step
                && finding.kind == crate::watch::FindingKind::Splat
                && re.is_match(&finding.detail)
        })?;
        let note = format!(
            "{} (allowed by /{re}/)",
            finding.to_string().lines().next().unwrap_or_default()
        );
        self.reporter.line(&format!("allowed in step {step:?}: {note}"));
        Some(note)
    }

    /// Allows a kernel splat whose text matches `pattern` while step `step` runs: what a plan
    /// expects is not a finding. The allowance is shown with the step in the report (each splat
    /// it covered: "allowed: ..."). A bad pattern is an error.
    pub fn allow_kernel_message(&self, step: &str, pattern: &str) -> Result<()> {
        let re = regex::Regex::new(pattern)
            .with_context(|| format!("bad regular expression {pattern:?}"))?;
        self.allowances.lock().unwrap().push((step.to_string(), re));
        Ok(())
    }

    /// Declares a condition that must hold while the scenario runs (nixpkgs'
    /// `polling_condition`): it is polled every `period` from now until the driver ends, each
    /// poll bounded by `timeouts::request()`; the first time it does not hold, the step running
    /// then fails (or the scenario, at its end, when no step ran). A poll is skipped while its
    /// machine is not steady (a deliberate start, reboot, restore... under way, or down), and
    /// discarded when such an action began during it; a poll that the harness could not make
    /// (a harness error) proves nothing and is skipped too. What the polls cost is logged when
    /// the scenario ends ([`Driver::watch_costs`]).
    ///
    /// In guest mode a condition that runs commands (`ProcessAlive`, `Succeeds`) on a peer
    /// cannot be polled (commands run only on the local machine): declaring one is a finding at
    /// once, which fails the scenario, rather than an invariant that silently never holds or
    /// breaks.
    pub fn watch(&self, name: &str, period: Duration, condition: Condition) {
        if let Condition::ProcessAlive { machine, .. } | Condition::Succeeds { machine, .. } =
            &condition
        {
            if machine.backend() == crate::machine::Backend::Peer {
                self.findings.push(crate::watch::Finding {
                    kind: crate::watch::FindingKind::Invariant,
                    machine: Some(machine.name().to_string()),
                    what: format!("{name}: cannot be polled in guest mode"),
                    detail: format!(
                        "it runs commands on {}, a peer of this guest-mode driver, and commands \
                         run only on the machine the driver runs on; declare the scenario \
                         host_only, or watch what the local machine or the daemon's gRPC can tell",
                        machine.name()
                    ),
                    at: Instant::now(),
                });
                return;
            }
        }
        let stats = Arc::new(Mutex::new(PollStats::default()));
        let findings = self.findings.clone();
        let machines = self.machines.clone();
        let (task_name, task_stats) = (name.to_string(), stats.clone());
        let task = tokio::spawn(async move {
            let baseline = crate::watch::Baseline::default();
            loop {
                tokio::time::sleep(period).await;
                // A check of its own (no machine named) runs whatever the machines do; what it
                // saw is discarded below when a deliberate action began meanwhile.
                if condition.machine().is_some_and(|m| !m.is_steady()) {
                    task_stats.lock().unwrap().skipped += 1;
                    continue;
                }
                let epochs: Vec<u64> = machines.iter().map(Machine::power_epoch).collect();
                let started = Instant::now();
                let polled = tokio::time::timeout(
                    crate::timeouts::request(),
                    crate::watch::poll(&condition, &baseline),
                )
                .await;
                let took = started.elapsed();
                let moved = machines.iter().map(Machine::power_epoch).ne(epochs.iter().copied());
                let (what, detail) = match polled {
                    _ if moved => {
                        task_stats.lock().unwrap().skipped += 1;
                        continue;
                    }
                    Ok(crate::watch::Polled::Unknown) => {
                        task_stats.lock().unwrap().skipped += 1;
                        continue;
                    }
                    Ok(crate::watch::Polled::Holds) => {
                        task_stats.lock().unwrap().add(took);
                        continue;
                    }
                    Ok(crate::watch::Polled::Broken(what, detail)) => (what, detail),
                    Err(_) => (
                        format!("the check did not end within {:?}", crate::timeouts::request()),
                        String::new(),
                    ),
                };
                task_stats.lock().unwrap().add(took);
                findings.push(crate::watch::Finding {
                    kind: crate::watch::FindingKind::Invariant,
                    machine: condition.machine().map(|m| m.name().to_string()),
                    what: format!("{task_name}: {what}"),
                    detail,
                    at: Instant::now(),
                });
                // Reported once; the scenario fails.
                return;
            }
        });
        self.watches.lock().unwrap().push(Watch { name: name.to_string(), period, stats, task });
    }

    /// Watches the recipe service `service` of `machine` as the target's daemon is watched:
    /// its exit (the console line, instant) outside a deliberate power action fails the step
    /// running then, with its last lines.
    pub fn watch_service(&self, machine: &str, service: &str) -> Result<()> {
        self.machine(machine)?.console_watch().watch_service(service);
        Ok(())
    }

    /// What each polled invariant cost so far: one line each (polls, period, mean and longest
    /// poll, polls skipped).
    pub fn watch_costs(&self) -> Vec<String> {
        self.watches
            .lock()
            .unwrap()
            .iter()
            .map(|w| {
                let s = w.stats.lock().unwrap().clone();
                let mean = if s.polls > 0 { s.total / s.polls as u32 } else { Duration::ZERO };
                format!(
                    "watch {:?}: {} poll(s) every {:?}, {:.1} ms each on average (longest {:.1} ms, {:.2} s in all), {} skipped",
                    w.name,
                    s.polls,
                    w.period,
                    mean.as_secs_f64() * 1e3,
                    s.max.as_secs_f64() * 1e3,
                    s.total.as_secs_f64(),
                    s.skipped
                )
            })
            .collect()
    }

    /// Stops polling the invariants (the scenario is over).
    pub fn stop_watches(&self) {
        for w in self.watches.lock().unwrap().iter() {
            w.task.abort();
        }
    }

    /// Every finding of the watches not yet reported by a step (it appeared between steps, or
    /// outside any), after waiting for open splat blocks to end; each is reported once.
    ///
    /// Each steady machine's kernel log (`dmesg`) is read first: a splat there that its console
    /// never showed (early boot under `quiet`, or a boot before this run, for a machine restored
    /// from a snapshot) is a finding too.
    pub async fn unreported_findings(&self) -> Vec<crate::watch::Finding> {
        // Every steady machine's dmesg at once; each is also kept among the run's logs, so that
        // the end of the run (`keep_logs`) need not read it again.
        let scanned = self.machines.iter().filter(|m| m.is_steady()).map(|m| async move {
            let out = m.execute_with_timeout("dmesg", crate::timeouts::request()).await.ok()?;
            let kept = m.keep_dmesg(&out.stdout).is_ok();
            Some((m, out.stdout, kept))
        });
        let mut kept = Vec::new();
        for (m, dmesg, was_kept) in futures::future::join_all(scanned).await.into_iter().flatten() {
            for finding in m.console_watch().unseen_splats(&dmesg) {
                self.findings.push(finding);
            }
            if was_kept {
                kept.push(m.name().to_string());
            }
        }
        *self.dmesg_kept.lock().unwrap() = kept;
        let rest = self.findings.take_rest(0).await;
        for finding in &rest {
            self.mark(finding);
        }
        rest
    }

    /// Keeps each running machine's dmesg among the run's logs ([`crate::machine::keep_logs`]),
    /// but for those the last [`Driver::unreported_findings`] has just kept.
    pub async fn keep_logs(&self) {
        let kept = std::mem::take(&mut *self.dmesg_kept.lock().unwrap());
        let rest: Vec<Machine> =
            self.machines.iter().filter(|m| !kept.iter().any(|k| k == m.name())).cloned().collect();
        crate::machine::keep_logs(&rest).await;
    }

    /// Marks what a watch found on the scenario's timeline, at the time it was seen.
    fn mark(&self, finding: &crate::watch::Finding) {
        let text = finding.to_string();
        let text = text.lines().next().unwrap_or_default();
        let kind = crate::timeline::EventKind::Kernel;
        self.reporter.event_at(finding.at, kind, finding.machine.as_deref(), text);
    }

    /// Sets (or clears) the gate every subtest passes before it runs.
    pub fn set_subtest_gate(&self, gate: Option<SubtestGate>) {
        *self.gate.lock().unwrap() = gate;
    }

    /// The subtests run so far, with their outcomes.
    pub fn subtest_results(&self) -> Vec<SubtestResult> {
        self.reporter.subtests()
    }

    /// Time since the driver was set up.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops every machine at once (no clean shutdown: the test is over), and keeps the test
    /// network's per-link counters and fault events as `network.txt`. In guest mode the
    /// machines are not this driver's to stop, and the test network is not its to count:
    /// nothing happens.
    pub async fn kill_all(&self) {
        if self.accel.is_none() {
            return;
        }
        log::scope(self.reporter.clone(), async {
            for m in &self.machines {
                m.kill().await;
            }
        })
        .await;
        self.artifact(
            "network.txt",
            &crate::network::report(self.env.switches.values().map(|s| &**s)),
        );
    }

    /// Whether this driver runs in guest mode (no QEMU: a local machine and peers).
    pub fn is_guest_mode(&self) -> bool {
        self.accel.is_none()
    }

    /// The subtest table printed at the end of a run.
    pub fn summary(&self, test: &str) -> String {
        summary_table(test, &self.subtest_results(), self.elapsed())
    }
}

/// Removes `vmcheck-run-<pid>-*` directories of drivers that no longer run.
fn remove_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("vmcheck-run-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !crate::process::is_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::machine::Backend;

    /// A guest-mode driver here: this process's machine is local, the target a peer at an
    /// address where nothing answers. What each cannot do fails at once, naming what and why.
    #[tokio::test]
    async fn a_guest_mode_driver_runs_locally_and_refuses_the_hosts_operations() {
        let tmp = tempfile::tempdir().unwrap();
        let guest = GuestMode {
            local: "initiator".into(),
            peers: [("target".to_string(), std::net::Ipv4Addr::new(192, 0, 2, 99))].into(),
        };
        let nodes = vec![
            NodeSpec::new("target", Role::Target, 1),
            NodeSpec::new("initiator", Role::Initiator, 2),
        ];
        let options = DriverOptions {
            guest: Some(guest),
            out_dir: Some(tmp.path().to_path_buf()),
            reporter: Reporter::in_memory(),
            ..Default::default()
        };
        let d = Driver::new(nodes, options).await.unwrap();
        assert!(d.is_guest_mode() && d.accel.is_none());
        let (local, peer) = (d.machine("initiator").unwrap(), d.machine("target").unwrap());
        assert_eq!((local.backend(), peer.backend()), (Backend::Local, Backend::Peer));
        assert_eq!(peer.address(), std::net::Ipv4Addr::new(192, 0, 2, 99), "--peer's address");
        assert_eq!(
            peer.tcp_addr(crate::target::GRPC_PORT).await.unwrap().to_string(),
            "192.0.2.99:10124"
        );
        assert_eq!(local.succeed("echo $((6 * 7))").await.unwrap(), "42\n");
        let e = format!("{:#}", local.reboot().await.unwrap_err());
        assert!(
            e.contains("reboot (power, through QEMU) needs the host")
                && e.contains("the machine this guest-mode driver runs on"),
            "{e}"
        );
        assert!(crate::machine::is_harness_error(
            &local.hot_add_disk(crate::config::DiskSpec::nvme("d", 1)).await.unwrap_err()
        ));
        let e = format!("{:#}", local.block().await.unwrap_err());
        assert!(e.contains("the host's switch"), "{e}");
        let e = format!("{:#}", peer.succeed("true").await.unwrap_err());
        assert!(
            e.contains("running `true`: this machine is a peer")
                && e.contains("reached at 192.0.2.99"),
            "{e}"
        );
        let e = format!("{:#}", peer.qmp().await.err().unwrap());
        assert!(e.contains("QEMU's monitor and guest agent needs the host"), "{e}");
        // An invariant that needs a peer's commands is a finding at once, not a silent pass.
        d.watch(
            "sleep runs",
            Duration::from_secs(1),
            Condition::ProcessAlive { machine: peer.clone(), name: "sleep".into() },
        );
        let found = d.unreported_findings().await;
        assert!(
            found.len() == 1
                && found[0].what.contains("sleep runs: cannot be polled in guest mode"),
            "{found:?}"
        );
        // Not this driver's to stop: the local machine (this process's) goes on.
        d.kill_all().await;
        assert_eq!(local.succeed("echo still").await.unwrap(), "still\n");
        // Every machine must be placed.
        let bad = GuestMode { local: "initiator".into(), peers: Default::default() };
        let e = bad
            .check(&[
                NodeSpec::new("target", Role::Target, 1),
                NodeSpec::new("initiator", Role::Initiator, 2),
            ])
            .unwrap_err();
        assert!(e.to_string().contains("name target with --peer"), "{e}");
    }
}
