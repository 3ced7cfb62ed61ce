//! Health watches: what fails a scenario at the moment it happens, even when no later step would
//! notice it.
//!
//! - **Kernel splats**, in every scenario, on every machine: each serial console line goes
//!   through [`ConsoleWatch::line`], which looks for what a kernel engineer never lets pass
//!   ([`SPLATS`]: `WARNING:` with a call trace, `BUG:`, `kernel BUG at`, `Oops`, a general
//!   protection fault, UBSAN, lockdep, hung tasks, soft and hard lockups, RCU stalls, a panic) and
//!   collects the whole block: the kernel lines until the `---[ end` marker, the next splat,
//!   [`SPLAT_MAX_LINES`] lines, or [`SPLAT_QUIET`] without a further kernel line. Kernel lines
//!   are told from the rest (services, `rc.sh`) by their printk time stamp (`[   12.345678] `).
//! - **Watched services**: `vmcheck: service NAME exited with status N (...); its last lines:`
//!   (`src/images/service.sh`) for a watched service ([`TARGET_DAEMON`] on every machine whose
//!   recipe runs it; more with `Driver::watch_service`), with the lines that follow. Deliberate
//!   power actions (start, reboot, shutdown, crash, kill, save, restore, migration) end services
//!   legitimately: from the action's start until the machine's agent answers again, such lines
//!   are ignored ([`PowerState`]). The target daemon is also polled ([`Condition::ServiceSteady`],
//!   every [`DAEMON_WATCH_PERIOD`]), which catches a restart the console did not show.
//! - **Invariants** (nixpkgs' `polling_condition`): a [`Condition`] the driver polls every period
//!   while the scenario runs, each poll bounded by `timeouts::request()`.
//!
//! What a watch sees is a [`Finding`] in the driver's [`Findings`]. `Driver::subtest` races each
//! step against them: a finding fails the step running at that moment, as a failure (the system
//! under test misbehaved), with the splat or the service's last lines. A finding outside any step
//! fails the scenario when it ends (`run_group`). A step may allow a named pattern
//! (`Driver::allow_kernel_message`); what was allowed is shown with the step in the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::future::BoxFuture;
use regex::Regex;
use tokio::sync::Notify;

/// The target's daemon: the service of [`crate::recipe::Recipe::target`], watched on every
/// machine whose recipe runs it.
pub const TARGET_DAEMON: &str = "vmcheck-target";

/// How often the target daemon's pid and exit count are polled (the console line is instant;
/// the poll is the backstop). One poll is one short guest command.
pub const DAEMON_WATCH_PERIOD: Duration = Duration::from_secs(5);

/// A splat block without its end marker is complete after this long without a further kernel
/// line.
pub const SPLAT_QUIET: Duration = Duration::from_secs(2);

/// A splat block is cut after this many lines.
pub const SPLAT_MAX_LINES: usize = 120;

/// A service's last lines follow its exit line at once; this long without one ends the block.
const SERVICE_QUIET: Duration = Duration::from_secs(1);

/// What starts a kernel splat: (kind, pattern on the message after the time stamp). A `WARNING:`
/// counts only with a call trace (`Call Trace:` or `RIP:` in its block).
pub const SPLATS: &[(&str, &str)] = &[
    ("warning", r"^WARNING: "),
    ("bug", r"\bBUG: "),
    ("bug", r"^kernel BUG at "),
    ("oops", r"^Oops\b"),
    // The kernel's own; a user process's ("traps: sh[1] general protection fault ip:...") is not.
    ("general protection fault", r"^general protection fault"),
    ("ubsan", r"^UBSAN: "),
    ("lockdep", r"possible (recursive|circular) locking|inconsistent lock state|lock inversion"),
    ("hung task", r"^INFO: task .* blocked for more than \d+ seconds"),
    ("rcu stall", r"rcu: INFO: rcu_\w+ (self-)?detected stall|rcu_\w+ detected stalls on"),
    ("hard lockup", r"Watchdog detected hard LOCKUP"),
    ("panic", r"^Kernel panic - not syncing"),
];

/// What kind of thing a watch saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A kernel splat on a machine's console.
    Splat,
    /// A watched service exited (or restarted) outside a deliberate power action.
    ServiceExit,
    /// A declared invariant did not hold.
    Invariant,
}

/// What a watch saw that fails the scenario (unless allowed).
#[derive(Debug, Clone)]
pub struct Finding {
    /// What it is.
    pub kind: FindingKind,
    /// The machine it happened on (for an invariant: the one its condition names, if any).
    pub machine: Option<String>,
    /// One line: the splat's first line, the service's exit line, the invariant's name and why.
    pub what: String,
    /// The splat block, the service's last lines, or the invariant's failure.
    pub detail: String,
    /// When the watch saw it.
    pub at: Instant,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            FindingKind::Splat => "kernel splat",
            FindingKind::ServiceExit => "watched service died",
            FindingKind::Invariant => "invariant broken",
        };
        match &self.machine {
            Some(m) => write!(f, "{kind} on {m}: {}", self.what)?,
            None => write!(f, "{kind}: {}", self.what)?,
        }
        if !self.detail.is_empty() {
            write!(f, "\n{}", self.detail)?;
        }
        Ok(())
    }
}

/// The error of a step (or a scenario) that a watch failed: a failure of the system under test,
/// not a harness error.
#[derive(Debug, thiserror::Error)]
#[error("{finding}{}", step_error.as_ref().map(|e| format!("\nthe step itself also failed: {e}")).unwrap_or_default())]
pub struct HealthError {
    /// What the watch saw.
    pub finding: Finding,
    /// The step's own error, when it failed as well.
    pub step_error: Option<String>,
}

struct Entry {
    finding: Finding,
    /// Its block ended (end marker, line cap, or the next non-continuation line).
    closed: bool,
    /// The last line added to its block.
    last: Instant,
    quiet: Duration,
    /// A `WARNING:` needs a call trace to count.
    needs_trace: bool,
    /// Reported by a step, allowed, or reported at the scenario's end.
    taken: bool,
}

impl Entry {
    fn complete(&self, now: Instant) -> bool {
        self.closed || now.duration_since(self.last) >= self.quiet
    }
    fn counts(&self) -> bool {
        !self.needs_trace
            || self.finding.detail.contains("Call Trace:")
            || self.finding.detail.contains("RIP:")
    }
}

/// Every finding of a run's watches, in the order they were seen. Shared by the driver and
/// each machine's [`ConsoleWatch`].
#[derive(Default)]
pub struct Findings {
    entries: Mutex<Vec<Entry>>,
    changed: Notify,
}

impl Findings {
    /// How many findings were started so far (the mark a step starts from).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    /// Whether none was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn open(&self, finding: Finding, quiet: Duration, needs_trace: bool) -> usize {
        let mut e = self.entries.lock().unwrap();
        e.push(Entry {
            last: finding.at,
            finding,
            closed: false,
            quiet,
            needs_trace,
            taken: false,
        });
        let i = e.len() - 1;
        drop(e);
        self.changed.notify_waiters();
        i
    }

    /// Adds a finding that is complete as it is (an invariant's).
    pub fn push(&self, finding: Finding) {
        let i = self.open(finding, Duration::ZERO, false);
        self.close(i);
    }

    fn append(&self, i: usize, line: &str) {
        let mut e = self.entries.lock().unwrap();
        let entry = &mut e[i];
        entry.finding.detail.push('\n');
        entry.finding.detail.push_str(line);
        entry.last = Instant::now();
    }

    fn close(&self, i: usize) {
        self.entries.lock().unwrap()[i].closed = true;
        self.changed.notify_waiters();
    }

    /// Waits for the first complete finding that counts from index `from` on, not yet taken;
    /// returns its index and the finding (not marked taken).
    pub async fn next(&self, from: usize) -> (usize, Finding) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut wake: Option<Instant> = None;
            {
                let now = Instant::now();
                let e = self.entries.lock().unwrap();
                for (i, entry) in e.iter().enumerate().skip(from) {
                    if entry.taken {
                        continue;
                    }
                    if entry.complete(now) {
                        if entry.counts() {
                            return (i, entry.finding.clone());
                        }
                    } else {
                        let at = entry.last + entry.quiet;
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                    }
                }
            }
            match wake {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), changed).await;
                }
                None => changed.await,
            }
        }
    }

    /// Marks finding `i` as dealt with.
    pub fn take(&self, i: usize) {
        self.entries.lock().unwrap()[i].taken = true;
    }

    /// Every finding from `from` on that counts and was not taken, after waiting (at most until
    /// each is complete) for the blocks still open; marks them taken.
    pub async fn take_rest(&self, from: usize) -> Vec<Finding> {
        loop {
            let wait = {
                let now = Instant::now();
                let e = self.entries.lock().unwrap();
                e.iter()
                    .skip(from)
                    .filter(|x| !x.taken && !x.complete(now))
                    .map(|x| (x.last + x.quiet).saturating_duration_since(now))
                    .max()
            };
            match wait {
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(10))).await,
                None => break,
            }
        }
        let mut e = self.entries.lock().unwrap();
        e.iter_mut()
            .skip(from)
            .filter(|x| !x.taken && x.counts())
            .map(|x| {
                x.taken = true;
                x.finding.clone()
            })
            .collect()
    }
}

/// Whether a machine is in a deliberate power action, shared by the machine and its console
/// watch: from an action's start until its agent answers again, the machine is not steady.
#[derive(Default)]
pub struct PowerState {
    steady: AtomicBool,
    /// Counts the actions begun: a poll that saw it change discards its result.
    epoch: AtomicU64,
}

impl PowerState {
    /// A deliberate action begins (start, reboot, shutdown, crash, kill, save, restore,
    /// migration).
    pub fn begin(&self) {
        self.steady.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
    /// The machine's agent answered: it is up and steady.
    pub fn steady(&self) {
        self.steady.store(true, Ordering::SeqCst);
    }
    /// Up, and in no deliberate action.
    pub fn is_steady(&self) -> bool {
        self.steady.load(Ordering::SeqCst)
    }
    /// The number of actions begun so far.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

enum Block {
    Kernel(usize),
    Service(usize, usize),
}

/// One machine's console watch: fed every console line, it turns splats and watched services'
/// deaths into findings.
pub struct ConsoleWatch {
    machine: String,
    services: Mutex<Vec<String>>,
    findings: Arc<Findings>,
    power: Arc<PowerState>,
    open: Mutex<Option<Block>>,
    /// The first line of each splat seen, from its time stamp on (a splat in `dmesg` that the
    /// console never showed is told by it).
    seen: Mutex<std::collections::HashSet<String>>,
}

fn stamp() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\[\s*\d+\.\d+\] ").unwrap())
}

fn splat_starts() -> &'static [(&'static str, Regex)] {
    static RE: std::sync::OnceLock<Vec<(&'static str, Regex)>> = std::sync::OnceLock::new();
    RE.get_or_init(|| SPLATS.iter().map(|(k, p)| (*k, Regex::new(p).unwrap())).collect())
}

fn service_exit() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"vmcheck: service (\S+) exited with status (\S+) \((.*)\); its last lines:")
            .unwrap()
    })
}

/// The kernel's message in a console line (after the printk time stamp, which may follow other
/// output on the same line), or `None` for a line that is not the kernel's.
pub fn kernel_message(line: &str) -> Option<&str> {
    stamp().find(line).map(|m| &line[m.end()..])
}

/// The kind of splat a kernel message starts, if it starts one.
pub fn splat_kind(message: &str) -> Option<&'static str> {
    splat_starts().iter().find(|(_, re)| re.is_match(message)).map(|(k, _)| *k)
}

impl ConsoleWatch {
    /// A watch for machine `machine`, adding to `findings`.
    pub fn new(machine: &str, findings: Arc<Findings>, power: Arc<PowerState>) -> ConsoleWatch {
        ConsoleWatch {
            machine: machine.to_string(),
            services: Mutex::default(),
            findings,
            power,
            open: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    /// Every splat in `log` (the kernel's log, `dmesg`, in the console's format), whether or
    /// not this console showed it; nothing is marked as seen.
    pub fn splats_in(&self, log: &str) -> Vec<Finding> {
        self.scan(log).into_iter().map(|x| x.finding).collect()
    }

    fn scan(&self, log: &str) -> Vec<Entry> {
        let findings = Arc::new(Findings::default());
        let power = Arc::new(PowerState::default());
        let scan = ConsoleWatch::new(&self.machine, findings.clone(), power);
        for line in log.lines() {
            scan.line(line);
        }
        let mut e = findings.entries.lock().unwrap();
        e.drain(..).filter(|x| x.counts()).collect()
    }

    /// The splats in `log` (the kernel's log, `dmesg`, in the console's format) whose first line
    /// this console never showed: those of early boot, when the console level is still the
    /// `quiet` one (a `WARNING:` is not printed then), or of a boot before this run's console
    /// began (a machine restored from a snapshot: snapshots are not saved from a boot that
    /// logged one, see `Machine::start`).
    pub fn unseen_splats(&self, log: &str) -> Vec<Finding> {
        let mut seen = self.seen.lock().unwrap();
        self.scan(log)
            .into_iter()
            .filter(|x| {
                // Each once: a chain's next case reads the same log again.
                let first = x.finding.detail.lines().next().unwrap_or_default();
                let from = stamp().find(first).map_or(0, |m| m.start());
                seen.insert(first[from..].to_string())
            })
            .map(|mut x| {
                x.finding.what =
                    format!("{} (in dmesg only: the console never showed it)", x.finding.what);
                x.finding
            })
            .collect()
    }

    /// Watches the service `name` from now on.
    pub fn watch_service(&self, name: &str) {
        let mut s = self.services.lock().unwrap();
        if !s.iter().any(|x| x == name) {
            s.push(name.to_string());
        }
    }

    /// The services watched.
    pub fn services(&self) -> Vec<String> {
        self.services.lock().unwrap().clone()
    }

    /// One console line.
    pub fn line(&self, line: &str) {
        let mut open = self.open.lock().unwrap();
        let now = Instant::now();
        let kernel = kernel_message(line);
        // Continue (or end) the open block.
        match *open {
            Some(Block::Kernel(i)) => {
                let stale = {
                    let e = self.findings.entries.lock().unwrap();
                    e[i].complete(now)
                };
                if stale || kernel.is_some_and(|m| splat_kind(m).is_some()) {
                    // Over, or the next splat begins (an Oops then its panic: two findings).
                    self.findings.close(i);
                    *open = None;
                } else if let Some(msg) = kernel {
                    self.findings.append(i, line);
                    let lines =
                        self.findings.entries.lock().unwrap()[i].finding.detail.lines().count();
                    if msg.starts_with("---[ end") || lines >= SPLAT_MAX_LINES {
                        self.findings.close(i);
                        *open = None;
                    }
                    return;
                } else {
                    // Not the kernel's: interleaved output, neither part of the block nor its end.
                    return self.service_line(line, &mut open);
                }
            }
            Some(Block::Service(i, n)) => {
                if let Some(rest) = line.strip_prefix("vmcheck: | ") {
                    self.findings.append(i, rest);
                    *open = if n + 1 >= 10 {
                        self.findings.close(i);
                        None
                    } else {
                        Some(Block::Service(i, n + 1))
                    };
                    return;
                }
                self.findings.close(i);
                *open = None;
            }
            None => {}
        }
        if let Some(msg) = kernel {
            if let Some(kind) = splat_kind(msg) {
                let from = stamp().find(line).map_or(0, |m| m.start());
                self.seen.lock().unwrap().insert(line[from..].to_string());
                let i = self.findings.open(
                    Finding {
                        kind: FindingKind::Splat,
                        machine: Some(self.machine.clone()),
                        what: format!("{kind}: {}", msg.trim()),
                        detail: line.to_string(),
                        at: now,
                    },
                    SPLAT_QUIET,
                    kind == "warning",
                );
                *open = Some(Block::Kernel(i));
                return;
            }
        }
        self.service_line(line, &mut open);
    }

    fn service_line(&self, line: &str, open: &mut Option<Block>) {
        let Some(c) = service_exit().captures(line) else { return };
        let name = &c[1];
        if !self.services.lock().unwrap().iter().any(|s| s == name) {
            return;
        }
        if !self.power.is_steady() {
            // A reboot, shutdown or crash ends services on purpose.
            return;
        }
        if open.is_some() {
            // A kernel block is open: the service's block would mix with it; report the exit
            // line alone.
            self.findings.push(self.service_finding(line, &c));
            return;
        }
        let i = self.findings.open(self.service_finding(line, &c), SERVICE_QUIET, false);
        *open = Some(Block::Service(i, 0));
    }

    fn service_finding(&self, line: &str, c: &regex::Captures) -> Finding {
        Finding {
            kind: FindingKind::ServiceExit,
            machine: Some(self.machine.clone()),
            what: format!("the service {} exited with status {} ({})", &c[1], &c[2], &c[3]),
            detail: line.to_string(),
            at: Instant::now(),
        }
    }
}

/// A condition that must hold while a scenario runs ([`crate::driver::Driver::watch`]).
#[derive(Clone)]
pub enum Condition {
    /// A process named `name` (`pidof`) runs on `machine`.
    ProcessAlive {
        /// The machine.
        machine: crate::Machine,
        /// The process name as `pidof` takes it.
        name: String,
    },
    /// `command` exits 0 on `machine`.
    Succeeds {
        /// The machine.
        machine: crate::Machine,
        /// A shell command line.
        command: String,
    },
    /// The target daemon on `machine` answers its gRPC `Health` call.
    TargetHealthy {
        /// The target machine.
        machine: crate::Machine,
    },
    /// The recipe service `service` on `machine` keeps running: the same pid and no new exit
    /// (`/run/vmcheck/services/`) since the machine was last started (the daemon's backstop).
    /// On a guest-mode peer, whose files the driver cannot read, the target daemon itself is
    /// asked instead: it must answer `Health`, and its uptime must not start again (a restart).
    ServiceSteady {
        /// The machine.
        machine: crate::Machine,
        /// The service's name.
        service: String,
    },
    /// Any check: `Ok` when the condition holds.
    Check(Arc<dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync>),
}

impl Condition {
    /// A condition from a closure (`Ok` when it holds).
    pub fn check<F, Fut>(f: F) -> Condition
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        Condition::Check(Arc::new(move || Box::pin(f())))
    }

    /// The machine the condition is about, if it names one.
    pub fn machine(&self) -> Option<&crate::Machine> {
        match self {
            Condition::ProcessAlive { machine, .. }
            | Condition::Succeeds { machine, .. }
            | Condition::TargetHealthy { machine }
            | Condition::ServiceSteady { machine, .. } => Some(machine),
            Condition::Check(_) => None,
        }
    }
}

/// What a poll of a condition found.
pub(crate) enum Polled {
    /// It holds.
    Holds,
    /// It does not: why, and what to show.
    Broken(String, String),
    /// Nothing to conclude (the machine is not steady, or the harness could not ask).
    Unknown,
}

/// The state a [`Condition::ServiceSteady`] compares against.
#[derive(Default)]
pub(crate) struct Baseline {
    /// (power epoch, pid, exits) of the service, read from its files.
    service: Mutex<Option<(u64, String, usize)>>,
    /// A peer's daemon: when it started (host seconds since the epoch, from its uptime).
    daemon_started: Mutex<Option<f64>>,
    /// A peer's daemon: the client of the last poll, kept while it answers (a poll is then one
    /// `Health` call, not a new connection).
    daemon_client: Mutex<Option<crate::target::client::TargetClient>>,
}

/// How far a peer daemon's start, reckoned from whole seconds of uptime and a round trip, may
/// move without being a restart.
const DAEMON_START_SLACK_SECS: f64 = 2.5;

/// Polls `condition` once (the caller bounds it in time).
pub(crate) async fn poll(condition: &Condition, baseline: &Baseline) -> Polled {
    let harness = |e: &anyhow::Error| crate::machine::is_harness_error(e);
    match condition {
        Condition::ProcessAlive { machine, name } => {
            match machine
                .execute_with_timeout(
                    &format!("pidof {}", crate::tools::shell_quote(name)),
                    crate::timeouts::request(),
                )
                .await
            {
                Ok(o) if o.status == 0 => Polled::Holds,
                Ok(o) => Polled::Broken(
                    format!("no process {name} runs"),
                    format!("pidof exited {}: {}{}", o.status, o.stdout, o.stderr),
                ),
                Err(e) if harness(&e) => Polled::Unknown,
                Err(e) => Polled::Broken(format!("pidof {name} did not answer"), format!("{e:#}")),
            }
        }
        Condition::Succeeds { machine, command } => {
            match machine.execute_with_timeout(command, crate::timeouts::request()).await {
                Ok(o) if o.status == 0 => Polled::Holds,
                Ok(o) => Polled::Broken(
                    format!("`{command}` exited {}", o.status),
                    format!("stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr),
                ),
                Err(e) if harness(&e) => Polled::Unknown,
                Err(e) => Polled::Broken(format!("`{command}` did not finish"), format!("{e:#}")),
            }
        }
        Condition::TargetHealthy { machine } => {
            let answer = async {
                let addr = machine.tcp_addr(crate::target::GRPC_PORT).await?;
                // connect ends with a Health call; one attempt's time, no retries for minutes.
                crate::target::client::connect(addr, crate::timeouts::DAEMON_ATTEMPT).await?;
                anyhow::Ok(())
            };
            match answer.await {
                Ok(()) => Polled::Holds,
                Err(e) if harness(&e) => Polled::Unknown,
                Err(e) => Polled::Broken(
                    "the target daemon did not answer Health".into(),
                    format!("{e:#}"),
                ),
            }
        }
        Condition::ServiceSteady { machine, .. }
            if machine.backend() == crate::machine::Backend::Peer =>
        {
            peer_daemon_steady(machine, baseline).await
        }
        Condition::ServiceSteady { machine, service } => {
            let dir = crate::recipe::SERVICE_STATE_DIR;
            let epoch = machine.power_epoch();
            // Read through the agent's file calls: no guest process to start (a shell and its
            // pipeline cost ~150 ms of a TCG guest). A missing file is an empty one (no exit
            // yet; between two runs of the service). The local machine's are read directly.
            let local = machine.backend() == crate::machine::Backend::Local;
            let qga = match local {
                true => None,
                false => match machine.qga().await {
                    Ok(qga) => Some(qga),
                    Err(_) => return Polled::Unknown,
                },
            };
            let read = |name: String| {
                let qga = qga.clone();
                async move {
                    let path = format!("{dir}/{name}");
                    match qga {
                        Some(qga) => qga
                            .read_file(&path)
                            .await
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default(),
                        None => std::fs::read_to_string(&path).unwrap_or_default(),
                    }
                }
            };
            let exits = read(format!("{service}.exits")).await.lines().count();
            let pid = read(format!("{service}.pid")).await.trim().to_string();
            let known = baseline.service.lock().unwrap().clone();
            match known {
                Some((e, was, before)) if e == epoch => {
                    if exits <= before && (pid.is_empty() || pid == was) {
                        return Polled::Holds;
                    }
                    let log = machine
                        .execute_with_timeout(
                            &format!("tail -n 20 {dir}/{service}.log"),
                            crate::timeouts::request(),
                        )
                        .await
                        .map(|o| o.stdout)
                        .unwrap_or_default();
                    let now = if pid.is_empty() { "none" } else { &pid };
                    Polled::Broken(
                        format!(
                            "the service {service} restarted (pid {was}, now {now}; {exits} exit(s), {before} before)"
                        ),
                        format!("its last lines ({dir}/{service}.log):\n{log}"),
                    )
                }
                _ => {
                    // The first look since the machine was (re)started: the baseline, once the
                    // service runs.
                    if !pid.is_empty() {
                        *baseline.service.lock().unwrap() = Some((epoch, pid, exits));
                    }
                    Polled::Holds
                }
            }
        }
        Condition::Check(f) => match f().await {
            Ok(()) => Polled::Holds,
            Err(e) if harness(&e) => Polled::Unknown,
            Err(e) => Polled::Broken(
                e.to_string().lines().next().unwrap_or("failed").to_string(),
                format!("{e:#}"),
            ),
        },
    }
}

/// A guest-mode peer's target daemon keeps running: it answers `Health` at the peer's address,
/// and the start its uptime gives stays where the first poll put it.
async fn peer_daemon_steady(machine: &crate::Machine, baseline: &Baseline) -> Polled {
    let kept = baseline.daemon_client.lock().unwrap().take();
    let asked = async {
        let addr = machine.tcp_addr(crate::target::GRPC_PORT).await?;
        let mut client = match kept {
            Some(client) => client,
            None => crate::target::client::connect(addr, crate::timeouts::DAEMON_ATTEMPT).await?,
        };
        let reply = client.health(crate::target::proto::HealthRequest {}).await?.into_inner();
        *baseline.daemon_client.lock().unwrap() = Some(client);
        anyhow::Ok((addr, reply.uptime_secs))
    };
    let (addr, uptime) = match asked.await {
        Ok(answer) => answer,
        Err(e) => {
            return Polled::Broken(
                format!("the target daemon of {} does not answer Health", machine.name()),
                format!("{e:#}"),
            )
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let started = now - uptime as f64;
    let mut known = baseline.daemon_started.lock().unwrap();
    match *known {
        Some(was) if started > was + DAEMON_START_SLACK_SECS => Polled::Broken(
            format!("the target daemon of {} restarted", machine.name()),
            format!(
                "at {addr} it reports {uptime} s of uptime where {:.0} s were due (it answered \
                 before): it started again (its console and service files are the host's, which \
                 a guest-mode driver sees neither of)",
                now - was
            ),
        ),
        Some(_) => Polled::Holds,
        None => {
            *known = Some(started);
            Polled::Holds
        }
    }
}

/// What a watch's polls cost: their number and time.
#[derive(Debug, Default, Clone)]
pub struct PollStats {
    /// Polls made (skipped ones not counted).
    pub polls: u64,
    /// Their total time.
    pub total: Duration,
    /// The longest.
    pub max: Duration,
    /// Polls skipped: the machine was not steady, or the harness could not ask.
    pub skipped: u64,
}

impl PollStats {
    pub(crate) fn add(&mut self, took: Duration) {
        self.polls += 1;
        self.total += took;
        self.max = self.max.max(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> (ConsoleWatch, Arc<Findings>) {
        let findings = Arc::new(Findings::default());
        let power = Arc::new(PowerState::default());
        power.steady();
        let w = ConsoleWatch::new("m", findings.clone(), power);
        w.watch_service(TARGET_DAEMON);
        (w, findings)
    }

    const WARN: &str = "[   41.123456] ------------[ cut here ]------------
[   41.123460] WARNING: CPU: 0 PID: 123 at drivers/nvme/target/core.c:1200 nvmet_foo+0x12/0x30 [nvmet]
[   41.123470] Modules linked in: nvmet_tcp nvmet
vmcheck-target: 2026-12-04T12:00:00Z  INFO something interleaved
[   41.123480] RIP: 0010:nvmet_foo+0x12/0x30 [nvmet]
[   41.123490] Call Trace:
[   41.123491]  <TASK>
[   41.123492]  nvmet_bar+0x1/0x2 [nvmet]
[   41.123493]  </TASK>
[   41.123494] ---[ end trace 0000000000000000 ]---
[   41.200000] nvme nvme0: something after";

    #[tokio::test]
    async fn a_warning_with_its_trace_is_one_finding_up_to_the_end_marker() {
        let (w, f) = watch();
        for l in WARN.lines() {
            w.line(l);
        }
        let (i, finding) = tokio::time::timeout(Duration::from_secs(1), f.next(0)).await.unwrap();
        assert_eq!(i, 0);
        assert_eq!(finding.kind, FindingKind::Splat);
        assert!(
            finding.what.starts_with("warning: WARNING: CPU: 0 PID: 123 at drivers/nvme"),
            "{}",
            finding.what
        );
        assert!(
            finding.detail.contains("Call Trace:") && finding.detail.contains("---[ end trace")
        );
        assert!(!finding.detail.contains("interleaved") && !finding.detail.contains("after"));
    }

    #[tokio::test]
    async fn a_warning_without_a_call_trace_and_ordinary_messages_are_not_splats() {
        let (w, f) = watch();
        for l in [
            "[    3.1] WARNING: Underflow in clocksource 'hpet' observed, time update ignored.",
            "[    5.0] blk_update_request: I/O error, dev nvme0n1, sector 2048 op 0x1:(WRITE)",
            "[    5.1] Buffer I/O error on dev nvme0n1, logical block 256, lost async page write",
            "vmcheck-target: WARNING: BUG: this is the daemon's own output, not the kernel's",
            "iscsid: Oops",
        ] {
            w.line(l);
        }
        assert!(f.take_rest(0).await.is_empty());
    }

    #[tokio::test]
    async fn a_soft_lockup_ends_after_a_quiet_time_and_a_hung_task_is_found() {
        let (w, f) = watch();
        w.line("[   60.000001] watchdog: BUG: soft lockup - CPU#0 stuck for 5s! [swapper/0:0]");
        w.line("[   60.000002] Call Trace:");
        let started = Instant::now();
        let (_, finding) = f.next(0).await;
        assert!(started.elapsed() >= SPLAT_QUIET - Duration::from_millis(100));
        assert!(finding.what.contains("soft lockup"), "{}", finding.what);
        f.take(0);
        w.line("[  200.1] INFO: task dd:321 blocked for more than 2 seconds.");
        let rest = f.take_rest(1).await;
        assert_eq!(rest.len(), 1);
        assert!(rest[0].what.starts_with("hung task: INFO: task dd:321"), "{}", rest[0].what);
    }

    #[tokio::test]
    async fn a_watched_service_death_is_found_with_its_last_lines_unless_deliberate() {
        let (w, f) = watch();
        let lines = [
            "vmcheck: service vmcheck-target exited with status 137 (restarting in 1 s); its last lines:",
            "vmcheck: | serving on 10124",
            "vmcheck: | last words",
            "vmcheck: service vmcheck-target starting",
        ];
        for l in lines {
            w.line(l);
        }
        let rest = f.take_rest(0).await;
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(rest[0].kind, FindingKind::ServiceExit);
        assert!(rest[0].what.contains("vmcheck-target exited with status 137"));
        assert!(
            rest[0].detail.ends_with("its last lines:\nserving on 10124\nlast words"),
            "{}",
            rest[0].detail
        );
        // An unwatched service, and a watched one during a reboot, are not findings.
        w.line("vmcheck: service iscsid exited with status 1 (restarting in 1 s); its last lines:");
        w.power.begin();
        w.line(lines[0]);
        assert!(f.take_rest(1).await.is_empty());
    }

    #[test]
    fn a_splat_only_in_dmesg_is_found_once_and_one_the_console_showed_is_not() {
        let (w, _) = watch();
        let lockup = "[   60.000001] watchdog: BUG: soft lockup - CPU#0 stuck for 5s! [sh:1]";
        w.line(&format!("iscsid: partial{lockup}"));
        let hung = "[   60.2] INFO: task dd:321 blocked for more than 2 seconds.";
        let dmesg = format!("{WARN}\n{lockup}\n[   60.1] Call Trace:\n{hung}");
        let unseen = w.unseen_splats(&dmesg);
        assert_eq!(unseen.len(), 2, "{unseen:?}");
        // A splat right after one the console showed is one of its own.
        assert!(unseen[1].what.contains("INFO: task dd:321"), "{:?}", unseen[1]);
        assert!(
            unseen[0].what.contains("WARNING: CPU: 0 PID: 123")
                && unseen[0].what.contains("dmesg only")
        );
        assert!(w.unseen_splats(&dmesg).is_empty(), "reported once");
        // The check before a snapshot is saved sees every splat, shown or not, and marks none.
        let all = w.splats_in(&dmesg);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[1].what.contains("soft lockup") && !all[1].what.contains("dmesg only"));
        assert_eq!(w.splats_in(&dmesg).len(), 3);
        assert!(w.splats_in("[    1.0] x86/mm: Checked W+X mappings: passed\n").is_empty());
    }

    #[test]
    fn kernel_lines_are_told_by_their_time_stamp() {
        assert_eq!(kernel_message("[   12.345678] BUG: x"), Some("BUG: x"));
        assert_eq!(kernel_message("tgtd: hello[ 1.5] WARNING: y"), Some("WARNING: y"));
        assert_eq!(kernel_message("vmcheck: machine is up"), None);
        assert_eq!(splat_kind("Kernel panic - not syncing: sysrq triggered crash"), Some("panic"));
        assert_eq!(
            splat_kind("rcu: INFO: rcu_sched self-detected stall on CPU"),
            Some("rcu stall")
        );
        assert_eq!(splat_kind("Oops: 0002 [#1] PREEMPT SMP NOPTI"), Some("oops"));
        assert_eq!(splat_kind("nvme nvme0: I/O 12 QID 1 timeout, aborting"), None);
        assert_eq!(
            splat_kind("general protection fault, probably for non-canonical address 0xdead: 0000 [#1] PREEMPT SMP NOPTI"),
            Some("general protection fault")
        );
        assert_eq!(
            splat_kind("traps: sh[12] general protection fault ip:4011 sp:7ffd error:0 in sh"),
            None
        );
    }
}
