//! `vmcheck bench`: what the driver costs over bare QEMU, measured, not asserted.
//!
//! Every figure with a floor is measured in rounds: in each, vmcheck's measurement and the
//! floor's, one right after the other, vmcheck first in even rounds and the floor first in odd
//! ones, so that a drift in the host's load hits both alike. A figure is the median over its
//! rounds with the smallest and largest round beside it, its ratio the median of the per-round
//! ratios ([`Figure`]). The figures:
//!
//! - boot until the guest agent answers, one VM at a time: vmcheck (`start` + `wait_for_agent`)
//!   beside a bare `qemu-system-x86_64` of the same command line less QMP, with qemu-ga talked to
//!   directly (`guest-ping` until it answers);
//! - the round trip of `succeed("true")` beside a bare `guest-exec` of `/bin/true` and of
//!   `sh -c true`, with tight `guest-exec-status` polling (per round the median and p90 of
//!   `--execs` calls; both VMs up, the calls alternating between vmcheck's VM and the bare one),
//!   and beside `/bin/true` run in vmcheck's own VM through its agent client, without a shell
//!   (the two VMs differ from round to round by a few per cent: this floor has none of that);
//! - test-network throughput through the driver's switch beside a direct QEMU-to-QEMU link;
//! - restore from a snapshot until the agent answers (`src/snapshot.rs`), clock and random seed
//!   sent, beside a bare `qemu -incoming file:STATE` of the same state file; and until a first
//!   command has run on it (`succeed("true")`, beside a bare `guest-exec` of `/bin/true`): the
//!   first process a restored guest starts is slow under TCG, and vmcheck's restore leaves its
//!   clock's `hwclock` to run before the next command ([`crate::Machine::wait_for_agent`]);
//! - fio_nvme_basic's two machines booting at once beside two bare QEMUs booting at once;
//! - fio_nvme_basic from its snapshots as `vmcheck run` runs it (this binary, a process of its
//!   own), its wall time in parts read from the run's timeline: process start, driver set-up,
//!   restore, disks plugged, NVMe-oF steps, fio's step beside fio's own job runtime, the
//!   disconnect step and the teardown to the process's exit;
//! - with `--suite PATTERN..`, those scenarios run with `--jobs 1`, then with `--jobs 2`;
//! - with `--nvmeof`, only this: fio 128 KiB sequential reads at queue depth 16 over NVMe-oF/TCP
//!   through vmcheck's switch, a direct QEMU-to-QEMU link and `vde_switch` (what NixOS tests
//!   use), in the same run, on the same bare VMs (`nvmeof`).
//!
//! Each figure is logged as it is measured and ends up in one table ([`BenchResult::table`]) and,
//! with `--json FILE`, in JSON: vmcheck's figure, its floor (measured in the same run), the
//! ratio, their spreads and the per-round values; with when the run started and the host's
//! load before and after ([`Taken`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::config::{NodeSpec, Role};
use crate::driver::{Driver, DriverOptions};
use crate::poll::{Pace, Polled};
use crate::qapi_stream::JsonReader;
use crate::qemu::{Console, NicLink, QemuProcess, QemuSpec};
use crate::report::Reporter;

/// Options of a bench run: `vmcheck bench`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Boots of each kind.
    #[arg(long, default_value_t = 3)]
    pub boots: usize,
    /// Exec round trips of each kind per round (at least 20).
    #[arg(long, default_value_t = 30)]
    pub execs: usize,
    /// Rounds of exec round trips: in each, `--execs` calls of each kind (vmcheck's `succeed`,
    /// the bare VM's `/bin/true` and `sh -c true`, vmcheck's VM's `/bin/true` through its agent
    /// client), vmcheck's VM and the bare one in turn.
    #[arg(long, default_value_t = 5)]
    pub exec_rounds: usize,
    /// MiB sent over the test network each way.
    #[arg(long, default_value_t = 32)]
    pub transfer_mib: u64,
    /// Only the NVMe-oF network benchmark: fio 128k sequential reads, iodepth 16, through
    /// vmcheck's switch, a direct QEMU-to-QEMU link and vde_switch.
    #[arg(long)]
    pub nvmeof: bool,
    /// With --nvmeof: fio runs per network per round.
    #[arg(long, default_value_t = 3)]
    pub fio_runs: usize,
    /// With --nvmeof: seconds of each fio run.
    #[arg(long, default_value_t = 10)]
    pub fio_secs: u64,
    /// With --nvmeof: rounds over the networks (interleaved, so host-load drift hits all).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// With --nvmeof: the networks compared, in each round's order (`switch-no-wait`: the
    /// switch dropping for a full peer instead of queueing).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "switch,direct,vde")]
    pub networks: Vec<Network>,
    /// Also time these scenarios (names or patterns) with --jobs 1 and with --jobs 2.
    #[arg(long, num_args = 1.., value_name = "PATTERN")]
    pub suite: Vec<String>,
}

impl BenchOptions {
    /// Refuses options that would measure nothing.
    pub fn check(&self) -> Result<()> {
        if self.boots == 0
            || self.execs < 20
            || self.exec_rounds == 0
            || self.transfer_mib == 0
            || self.fio_runs == 0
            || self.fio_secs == 0
            || self.rounds == 0
            || self.networks.is_empty()
        {
            anyhow::bail!(
                "bench needs --boots >= 1, --execs >= 20, --exec-rounds >= 1, --transfer-mib >= 1, \
                 --fio-runs >= 1, --fio-secs >= 1 and --rounds >= 1"
            );
        }
        Ok(())
    }
}

/// The smallest and largest of the per-round values of a figure.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        let min = values.iter().copied().reduce(f64::min)?;
        let max = values.iter().copied().reduce(f64::max)?;
        Some(Spread { min, max })
    }
}

/// One measured figure: vmcheck's, beside its floor where it has one, over rounds.
///
/// A figure is measured in rounds, each a vmcheck measurement and a floor measurement taken one
/// right after the other (their order alternating from round to round), so that drift in the
/// host's load hits both alike. `vmcheck` and `floor` are the medians of the per-round values,
/// `ratio` the median of the per-round ratios (each round's vmcheck value over the same round's
/// floor); the spreads are the smallest and largest per-round values, and the per-round values
/// themselves are kept (`vmcheck_rounds`, `floor_rounds`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Figure {
    pub what: String,
    /// `s`, `ms` or `MiB/s`.
    pub unit: &'static str,
    /// The median over rounds.
    pub vmcheck: f64,
    /// What the floor is (bare QEMU, the direct link, fio's own runtime, `--jobs 1`).
    pub floor_what: Option<String>,
    /// The floor's median over rounds.
    pub floor: Option<f64>,
    /// The median of the per-round ratios vmcheck / floor.
    pub ratio: Option<f64>,
    /// How many rounds.
    pub rounds: usize,
    pub vmcheck_spread: Option<Spread>,
    pub floor_spread: Option<Spread>,
    pub ratio_spread: Option<Spread>,
    /// Each round's vmcheck value.
    pub vmcheck_rounds: Vec<f64>,
    /// Each round's floor value (as many as `vmcheck_rounds`, or none).
    pub floor_rounds: Vec<f64>,
}

impl Figure {
    /// A figure measured once.
    pub fn new(what: &str, unit: &'static str, vmcheck: f64, floor: Option<(&str, f64)>) -> Figure {
        Figure::rounds(what, unit, vec![vmcheck], floor.map(|(w, f)| (w, vec![f])))
    }

    /// A figure measured in rounds: vmcheck's value in each, and the floor's in the same rounds.
    ///
    /// # Panics
    ///
    /// When there are no rounds, or the floor has another number of rounds than vmcheck.
    pub fn rounds(
        what: &str,
        unit: &'static str,
        vmcheck: Vec<f64>,
        floor: Option<(&str, Vec<f64>)>,
    ) -> Figure {
        assert!(!vmcheck.is_empty(), "{what}: no rounds");
        let (floor_what, floor_rounds) = match floor {
            Some((w, f)) => {
                assert_eq!(f.len(), vmcheck.len(), "{what}: a floor value per round");
                (Some(w.to_string()), f)
            }
            None => (None, Vec::new()),
        };
        let ratios: Vec<f64> = floor_rounds.iter().zip(&vmcheck).map(|(f, v)| v / f).collect();
        Figure {
            what: what.to_string(),
            unit,
            vmcheck: median(&vmcheck),
            floor_what,
            floor: (!floor_rounds.is_empty()).then(|| median(&floor_rounds)),
            ratio: (!ratios.is_empty()).then(|| median(&ratios)),
            rounds: vmcheck.len(),
            vmcheck_spread: Spread::of(&vmcheck),
            floor_spread: Spread::of(&floor_rounds),
            ratio_spread: Spread::of(&ratios),
            vmcheck_rounds: vmcheck,
            floor_rounds,
        }
    }

    fn value(&self, v: f64) -> String {
        match self.unit {
            "s" => format!("{v:.2} s"),
            unit => format!("{v:.1} {unit}"),
        }
    }

    /// `value (min..max)`, the spread only with more than one round.
    fn with_spread(&self, v: f64, spread: Option<Spread>, digits: usize) -> String {
        let number = |x: f64| match self.unit {
            "s" => format!("{x:.2}"),
            _ => format!("{x:.digits$}"),
        };
        let head = if digits == 3 { format!("{v:.3}") } else { self.value(v) };
        match spread {
            Some(s) if self.rounds > 1 => format!("{head} ({}..{})", number(s.min), number(s.max)),
            _ => head,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// When and where a bench ran: what a reader needs to judge its figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Taken {
    /// When the run started (UTC, RFC 3339).
    pub started: String,
    /// The host's CPUs.
    pub cpus: usize,
    /// The host's load averages (1, 5, 15 minutes) when the run started and when it ended.
    pub load_before: String,
    pub load_after: String,
    /// How long the run took, in seconds.
    pub seconds: f64,
    #[serde(skip)]
    started_at: Option<Instant>,
}

impl Taken {
    fn now() -> Taken {
        Taken {
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            cpus: std::thread::available_parallelism().map(usize::from).unwrap_or(0),
            load_before: load_average(),
            started_at: Some(Instant::now()),
            ..Taken::default()
        }
    }
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// What a bench run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub accelerator: String,
    /// When, on how many CPUs and under what load.
    pub taken: Taken,
    pub figures: Vec<Figure>,
}

impl BenchResult {
    /// The figures as a table: what, rounds, vmcheck, floor, ratio (each a median over rounds,
    /// with the smallest and largest per-round value), and what the floor is.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 6]> = self
            .figures
            .iter()
            .map(|f| {
                let floor = match f.floor {
                    Some(v) => f.with_spread(v, f.floor_spread, 1),
                    None => "-".into(),
                };
                [
                    f.what.clone(),
                    f.rounds.to_string(),
                    f.with_spread(f.vmcheck, f.vmcheck_spread, 1),
                    floor,
                    f.ratio.map_or("-".into(), |r| f.with_spread(r, f.ratio_spread, 3)),
                    f.floor_what.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let head = ["what", "rounds", "vmcheck", "floor", "ratio", "floor is"].map(String::from);
        let widths: Vec<usize> = (0..head.len())
            .map(|c| rows.iter().chain([&head]).map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let t = &self.taken;
        let mut out = format!(
            "accelerator: {}; started {}, {} CPUs, load {} at the start, {} at the end, {:.0} s\n",
            self.accelerator, t.started, t.cpus, t.load_before, t.load_after, t.seconds
        );
        out.push_str(
            "each figure: the median over rounds (smallest..largest round); ratio: the median of the per-round ratios\n",
        );
        for row in [&head].into_iter().chain(&rows) {
            let cells: Vec<String> =
                row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// Median and 90th percentile of `samples` (the nearest rank).
pub fn median_p90(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (median(samples), at(0.9))
}

/// The bare command line: vmcheck's own, less the QMP monitor (whose wait=on holds QEMU until a
/// client connects).
fn bare_args(spec: &QemuSpec) -> Result<Vec<String>> {
    let args = spec.kernel_boot_args()?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let pair = args.get(i + 1).map(String::as_str).unwrap_or("");
        if (args[i] == "-chardev" && pair.contains("id=qmp0"))
            || (args[i] == "-mon" && pair.contains("qmp0"))
        {
            i += 2;
            continue;
        }
        out.push(args[i].clone());
        i += 1;
    }
    Ok(out)
}

/// A bare QEMU with a raw agent connection.
struct Bare {
    _process: QemuProcess,
    reader: JsonReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Bare {
    async fn boot(spec: &QemuSpec) -> Result<(Bare, Duration)> {
        Bare::boot_args(spec, bare_args(spec)?).await
    }

    /// Boots `spec` with the command line `args`.
    async fn boot_args(spec: &QemuSpec, args: Vec<String>) -> Result<(Bare, Duration)> {
        let _ = std::fs::remove_file(&spec.qga_socket);
        for nic in &spec.nics {
            if let NicLink::Unix { local, .. } = &nic.link {
                let _ = std::fs::remove_file(local);
            }
        }
        let mut cmd = tokio::process::Command::new(&spec.qemu);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        crate::qemu::inherit_fds(&mut cmd, spec.inherited_fds());
        let started = Instant::now();
        let child = crate::process::spawn(cmd).await?;
        let process = QemuProcess::adopt(
            child,
            Console::new(&spec.name, None, crate::log::current().unwrap_or_default()),
        );
        let stream = crate::qmp::connect_unix(&spec.qga_socket, crate::timeouts::request()).await?;
        let (r, w) = stream.into_split();
        let bare = Bare { _process: process, reader: JsonReader::new(r), writer: w };
        // guest-ping every 100 ms; pings written before the agent runs are answered when it starts.
        let bare = tokio::sync::Mutex::new(bare);
        let answered =
            crate::poll::until(crate::timeouts::boot(), Pace::every(Duration::ZERO), |_| async {
                let mut bare = bare.lock().await;
                bare.send(json!({"execute": "guest-ping"})).await?;
                match tokio::time::timeout(Duration::from_millis(100), bare.reader.next()).await {
                    Ok(reply) => reply.map(|_| Some(())),
                    Err(_) => Ok(None),
                }
            })
            .await?;
        if let Polled::TimedOut(waited) = answered {
            bail!("bare boot: no agent answer in {waited:?}");
        }
        let mut bare = bare.into_inner();
        let boot = started.elapsed();
        // Skip the answers to the other pings: up to the answer of a guest-sync of our own.
        let id = std::process::id() as u64 + started.elapsed().subsec_nanos() as u64;
        bare.send(json!({"execute": "guest-sync", "arguments": {"id": id}})).await?;
        let synced = async {
            loop {
                if bare.reader.next().await?.get("return") == Some(&json!(id)) {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        };
        tokio::time::timeout(crate::timeouts::request(), synced)
            .await
            .context("bare boot: no answer to guest-sync")??;
        Ok((bare, boot))
    }

    async fn send(&mut self, v: Value) -> Result<()> {
        let mut line = serde_json::to_vec(&v)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    async fn call(&mut self, v: Value) -> Result<Value> {
        self.send(v).await?;
        let reply = self.reader.next().await?;
        reply.get("return").cloned().with_context(|| format!("agent error: {reply}"))
    }

    /// guest-exec of argv, then guest-exec-status as fast as answers come.
    async fn exec(&mut self, argv: &[&str]) -> Result<Value> {
        self.exec_polling(argv, Duration::ZERO).await
    }

    /// guest-exec of argv, then guest-exec-status every `poll` (a long command measured in
    /// the guest must not share its vCPU with an agent answering polls).
    async fn exec_polling(&mut self, argv: &[&str], poll: Duration) -> Result<Value> {
        let pid = self
            .call(json!({"execute": "guest-exec", "arguments": {"path": argv[0], "arg": &argv[1..], "capture-output": true}}))
            .await?["pid"]
            .clone();
        // Back to back when `poll` is zero; bounded like every wait of the driver.
        let pace = if poll.is_zero() {
            Pace::every(poll).after_tight(crate::timeouts::command())
        } else {
            Pace::every(poll)
        };
        let this = tokio::sync::Mutex::new(self);
        let polled = crate::poll::until(crate::timeouts::command(), pace, |_| async {
            let status = this
                .lock()
                .await
                .call(json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}))
                .await?;
            Ok((status["exited"] == true).then_some(status))
        })
        .await?;
        match polled {
            Polled::Done(status) => Ok(status),
            Polled::TimedOut(waited) => bail!("bare exec of {argv:?}: not ended after {waited:?}"),
        }
    }

    /// `sh -c cmd`, which must exit 0; its stdout.
    async fn sh(&mut self, cmd: &str, poll: Duration) -> Result<String> {
        let status = self.exec_polling(&["/bin/sh", "-c", cmd], poll).await?;
        let text = |key: &str| {
            use base64::Engine;
            let data = status[key].as_str().unwrap_or_default();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default(),
            )
            .into_owned()
        };
        if status["exitcode"] != 0 {
            bail!(
                "`{cmd}` exited {}:\nstdout:\n{}\nstderr:\n{}",
                status["exitcode"],
                text("out-data"),
                text("err-data")
            );
        }
        Ok(text("out-data"))
    }
}

fn one_node(name: &str, host: u8) -> NodeSpec {
    NodeSpec::new(name, Role::Target, host)
}

/// The bench's report: each line is logged as it comes; the figures are kept for the table.
struct Report {
    log: Reporter,
    result: BenchResult,
}

impl Report {
    fn new(log: &Reporter) -> Report {
        Report {
            log: log.clone(),
            result: BenchResult {
                accelerator: String::new(),
                taken: Taken::now(),
                figures: Vec::new(),
            },
        }
    }

    fn line(&mut self, s: String) {
        self.log.line(&s);
    }

    /// Logs `figure` as a line and keeps it for the table.
    fn add(&mut self, f: Figure) {
        let mut line =
            format!("{}: vmcheck {}", f.what, f.with_spread(f.vmcheck, f.vmcheck_spread, 1));
        if let (Some(w), Some(v), Some(r)) = (&f.floor_what, f.floor, f.ratio) {
            line.push_str(&format!(
                ", {w} {}, ratio {}",
                f.with_spread(v, f.floor_spread, 1),
                f.with_spread(r, f.ratio_spread, 3)
            ));
        }
        self.line(line);
        self.result.figures.push(f);
    }

    fn figure(&mut self, what: &str, unit: &'static str, vmcheck: f64, floor: Option<(&str, f64)>) {
        self.add(Figure::new(what, unit, vmcheck, floor));
    }

    fn finish(mut self) -> BenchResult {
        self.result.taken.load_after = load_average();
        self.result.taken.seconds =
            self.result.taken.started_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.result
    }
}

/// Whether vmcheck's measurement comes first in round `round`: in even rounds it does, in odd
/// ones the floor's does, so neither always follows the other (ABBA ABBA ...).
fn vmcheck_first(round: usize) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    }
}

/// Runs the benchmark; the figures it measured.
pub async fn run(options: &BenchOptions) -> Result<BenchResult> {
    // The bench's reporter: console lines would break into the numbers.
    let reporter = Reporter::new();
    reporter.set_echo_console(false);
    if options.nvmeof {
        return crate::log::scope(reporter.clone(), nvmeof(options, reporter)).await;
    }
    crate::log::scope(reporter.clone(), machine_api(options, reporter)).await
}

/// A bare VM's command line and sockets beside a machine's: the same devices, only QMP left
/// out, its agent socket and NICs in `dir` under `tag` (each NIC linked to nothing: QEMU drops
/// what it sends, there is no socket at the remote path).
fn bare_beside(spec: &QemuSpec, dir: &std::path::Path, tag: &str) -> QemuSpec {
    let mut bare = spec.clone();
    bare.qga_socket = dir.join(format!("{tag}-qga.sock"));
    for (i, nic) in bare.nics.iter_mut().enumerate() {
        nic.link = NicLink::Unix {
            local: dir.join(format!("{tag}-net{i}.sock")),
            remote: dir.join("no-switch.sock"),
        };
    }
    bare
}

/// Reads `paths` through, so that the host's page cache holds them: the first of two compared
/// starts would otherwise read its kernel, initramfs or saved state from the disk alone.
fn read_through(paths: &[&std::path::Path]) {
    for p in paths {
        if let Ok(mut f) = std::fs::File::open(p) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    }
}

/// The kernel, initramfs and tools disk a kernel boot of `spec` reads.
fn boot_files(spec: &QemuSpec) -> Vec<&std::path::Path> {
    match &spec.boot {
        crate::qemu::Boot::Kernel { kernel, initrd, tools, .. } => {
            [Some(kernel), Some(initrd), tools.as_ref()]
                .into_iter()
                .flatten()
                .map(|p| p.as_path())
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Boot to agent, exec round trip and network throughput, the driver's and bare QEMU's, each
/// pair interleaved round by round; then restores, two boots at once and fio_nvme_basic's
/// parts.
async fn machine_api(options: &BenchOptions, reporter: Reporter) -> Result<BenchResult> {
    let mut report = Report::new(&reporter);
    // The machines' own lines (every succeed() logs two) stay out of the bench's output.
    let quiet = Reporter::in_memory();
    quiet.set_echo_console(false);
    // Boots are measured as boots: no machine starts from a snapshot here.
    let driver_options =
        DriverOptions { reporter: quiet.clone(), fresh_boot: true, ..DriverOptions::default() };
    let driver =
        Driver::new(vec![one_node("bench", 1), one_node("peer", 2)], driver_options).await?;
    let accel = driver.accel.map_or("none", |a| a.name());
    report.result.accelerator = accel.to_string();
    report.line(format!(
        "accelerator: {accel}; load {} on {} CPUs",
        report.result.taken.load_before, report.result.taken.cpus
    ));
    let m = driver.machine("bench")?;
    let bare_dir = driver.run_dir().join("bare");
    std::fs::create_dir_all(&bare_dir)?;
    let bare_spec = bare_beside(&m.qemu_spec(), &bare_dir, "bench");

    // Boot to agent, one VM at a time, vmcheck's and the bare one in turn.
    read_through(&boot_files(&bare_spec));
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for round in 0..options.boots {
        for vmcheck in vmcheck_first(round) {
            if vmcheck {
                let started = Instant::now();
                m.wait_for_agent().await?;
                ours.push(started.elapsed().as_secs_f64());
                m.kill().await;
            } else {
                let (vm, t) = Bare::boot(&bare_spec).await?;
                bare.push(t.as_secs_f64());
                drop(vm);
            }
        }
    }
    report.add(Figure::rounds(
        "boot to agent, one VM",
        "s",
        ours,
        Some(("bare QEMU, the same command line", bare)),
    ));

    // Exec round trip: vmcheck's machine and a bare VM of the same command line, both up.
    let (mut bare_vm, _) = Bare::boot(&bare_spec).await?;
    m.wait_for_agent().await?;
    // Both VMs get the same settling time after boot and the same warm-up calls: a guest just
    // booted still finishes start-up work (the daemon, the network), which skews the first calls.
    const SETTLE: Duration = Duration::from_secs(5);
    const WARM_UP: usize = 10;
    tokio::time::sleep(SETTLE).await;
    for _ in 0..WARM_UP {
        m.succeed("true").await?;
        bare_vm.exec(&["/bin/true"]).await?;
        bare_vm.exec(&["/bin/sh", "-c", "true"]).await?;
    }
    // Per kind (vmcheck's succeed, bare /bin/true, bare sh -c true, and vmcheck's VM asked for
    // /bin/true through its agent client, no shell): each round's median and p90. The calls
    // alternate between the two VMs: succeed, bare /bin/true, the agent's /bin/true, bare
    // sh -c true, and so on, so that every call finds its VM idle for exactly one call of the
    // other's and meets the same host load. In blocks of one kind the p90 ratio moved from 0.75
    // to 1.39 between the rounds of one run; in a rotation of three kinds where vmcheck's VM was
    // idle twice as long before each of its calls as the bare VM, the median ratio was 1.15 to
    // 1.31 in every round (1.16 in all), against 0.99 to 1.13 (1.02) with the VMs taking turns.
    // The last kind is a floor without the other VM's round-to-round difference: what is left
    // over it is the shell's start (about 5 %) and the client's wrapping of the command.
    let agent = m.qga().await?;
    let mut rounds: [Vec<(f64, f64)>; 4] = Default::default();
    for _ in 0..options.exec_rounds {
        let mut samples: [Vec<f64>; 4] = Default::default();
        for _ in 0..options.execs {
            for kind in [0, 1, 3, 2] {
                let t = Instant::now();
                match kind {
                    0 => drop(m.succeed("true").await?),
                    1 => {
                        let status = bare_vm.exec(&["/bin/true"]).await?;
                        if status["exitcode"] != 0 {
                            bail!("bare /bin/true: {status}");
                        }
                    }
                    3 => {
                        let out = agent.exec(&["/bin/true"], crate::timeouts::command()).await?;
                        if out.status != 0 {
                            bail!("/bin/true through the agent client: {out:?}");
                        }
                    }
                    _ => drop(bare_vm.exec(&["/bin/sh", "-c", "true"]).await?),
                }
                samples[kind].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        for (kind, samples) in samples.iter_mut().enumerate() {
            rounds[kind].push(median_p90(samples));
        }
    }
    drop(bare_vm);
    let n = options.execs;
    // Each floor beside succeed's median, then its p90: the bare VM's /bin/true; its `sh -c
    // true` (what `succeed` runs: its own floor); /bin/true in the same VM through the agent
    // client (the VMs' difference out: what is left is the shell's start and the client's
    // wrapping of the command).
    let floors = [
        (1, "bare guest-exec of /bin/true"),
        (2, "bare guest-exec of sh -c true"),
        (3, "the same VM's agent: /bin/true, no shell"),
    ];
    type Pick = fn(&(f64, f64)) -> f64;
    let stats: [(&str, Pick); 2] = [("median", |r| r.0), ("p90", |r| r.1)];
    for (kind, floor) in floors {
        for (what, pick) in stats {
            let of = |k: usize| rounds[k].iter().map(pick).collect::<Vec<f64>>();
            report.add(Figure::rounds(
                &format!("succeed(\"true\") round trip, {what} of {n}"),
                "ms",
                of(0),
                Some((floor, of(kind))),
            ));
        }
    }

    // Throughput: through the switch between vmcheck's machines, and over a direct link
    // between two bare QEMUs, all four up; the transfers in turn.
    let peer = driver.machine("peer")?;
    peer.wait_for_agent().await?;
    let mib = options.transfer_mib;
    let (serve, fetch) = transfer_commands(mib);
    peer.succeed(&serve).await?;
    peer.wait_for_open_port(8080, crate::timeouts::request()).await?;
    let (mut va, mut vb) = direct_pair(&driver).await?;
    let served = vb.exec(&["/bin/sh", "-c", &serve]).await?;
    if served["exitcode"] != 0 {
        bail!("direct link: serving failed: {served}");
    }
    let (mut switched, mut direct) = (Vec::new(), Vec::new());
    for round in 0..options.boots {
        for vmcheck in vmcheck_first(round) {
            let t = Instant::now();
            if vmcheck {
                m.succeed(&fetch).await?;
                switched.push(mib as f64 / t.elapsed().as_secs_f64());
            } else {
                let status = va.exec(&["/bin/sh", "-c", &fetch]).await?;
                if status["exitcode"] != 0 {
                    bail!("direct link: the transfer failed: {status}");
                }
                direct.push(mib as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    drop((va, vb));
    driver.kill_all().await;
    report.add(Figure::rounds(
        &format!("test network, {mib} MiB over TCP"),
        "MiB/s",
        switched,
        Some(("direct QEMU-to-QEMU link", direct)),
    ));
    drop(driver);
    restore_to_agent(&mut report, &quiet, options.boots).await.context("restore to agent")?;
    two_boots_at_once(&mut report, &quiet, options.boots).await.context("two boots at once")?;
    fio_nvme_basic_split(&mut report, options.boots).await.context("fio_nvme_basic")?;
    if !options.suite.is_empty() {
        suite_jobs(&mut report, &reporter, &options.suite).await?;
    }
    Ok(report.finish())
}

/// Restore to agent: vmcheck's start from the machine's snapshot (saved first if there is none)
/// until its agent answers, clock and random seed sent, beside a bare `qemu -incoming file:STATE`
/// of the same state file until its agent answers `guest-ping`; and each until a first command
/// has run on it; one VM at a time, in turn.
async fn restore_to_agent(report: &mut Report, reporter: &Reporter, rounds: usize) -> Result<()> {
    let driver = Driver::new(
        vec![one_node("bench", 1)],
        DriverOptions { reporter: reporter.clone(), ..DriverOptions::default() },
    )
    .await?;
    let m = driver.machine("bench")?;
    if m.snapshot_state().is_none() {
        // Saves the snapshot when the cache has none.
        m.wait_for_agent().await?;
        m.kill().await;
    }
    let Some(state) = m.snapshot_state() else {
        report.line(
            "restore to agent: not measured (fresh boots asked for, or no snapshot could be saved)"
                .into(),
        );
        return Ok(());
    };
    let bare_dir = driver.run_dir().join("bare");
    std::fs::create_dir_all(&bare_dir)?;
    let mut bare_spec = bare_beside(&m.qemu_spec(), &bare_dir, "bench");
    bare_spec.disks.clear();
    let mut bare_args = bare_args(&bare_spec)?;
    bare_args.extend(["-incoming".to_string(), format!("file:{}", state.display())]);
    let mut files = boot_files(&bare_spec);
    files.push(&state);
    read_through(&files);
    // Until the agent answers; and until a first command has run, the first process the
    // restored guest starts (which vmcheck's restore leaves its clock's hwclock to run before).
    let (mut ours, mut bare, mut ours_first, mut bare_first) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for vmcheck in vmcheck_first(round) {
            if vmcheck {
                let started = Instant::now();
                m.wait_for_agent().await?;
                ours.push(started.elapsed().as_secs_f64());
                m.succeed("true").await?;
                ours_first.push(started.elapsed().as_secs_f64());
                m.kill().await;
            } else {
                let started = Instant::now();
                let (mut vm, t) = Bare::boot_args(&bare_spec, bare_args.clone()).await?;
                bare.push(t.as_secs_f64());
                let status = vm.exec(&["/bin/true"]).await?;
                if status["exitcode"] != 0 {
                    bail!("bare /bin/true after a restore: {status}");
                }
                bare_first.push(started.elapsed().as_secs_f64());
                drop(vm);
            }
        }
    }
    driver.kill_all().await;
    report.add(Figure::rounds(
        "restore to agent, one VM",
        "s",
        ours,
        Some(("bare qemu -incoming of the same state", bare)),
    ));
    report.add(Figure::rounds(
        "restore to a first succeed(\"true\"), one VM",
        "s",
        ours_first,
        Some(("the same, then a guest-exec of /bin/true", bare_first)),
    ));
    Ok(())
}

/// fio_nvme_basic's two machines booted at once (fresh boots, `start_all`), beside two bare
/// QEMUs of the same command lines booted at once, in turn.
async fn two_boots_at_once(report: &mut Report, reporter: &Reporter, rounds: usize) -> Result<()> {
    use crate::scenarios::fio_nvme_basic;
    let driver = Driver::new(
        fio_nvme_basic::nodes(),
        DriverOptions { reporter: reporter.clone(), fresh_boot: true, ..DriverOptions::default() },
    )
    .await?;
    let dir = driver.run_dir().join("bare");
    std::fs::create_dir_all(&dir)?;
    let specs: Vec<QemuSpec> =
        driver.machines().iter().map(|m| bare_beside(&m.qemu_spec(), &dir, m.name())).collect();
    // The disks of the command line: the bare VMs use vmcheck's files (never both at once).
    for disk in specs.iter().flat_map(|s| s.disks.iter()) {
        if !disk.path.exists() {
            let size = driver
                .machines()
                .iter()
                .flat_map(|m| m.disks())
                .find(|d| d.id == disk.id)
                .map_or(0, |d| d.size_mib << 20);
            std::fs::File::create(&disk.path)?.set_len(size)?;
        }
    }
    read_through(&specs.iter().flat_map(boot_files).collect::<Vec<_>>());
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for vmcheck in vmcheck_first(round) {
            let started = Instant::now();
            if vmcheck {
                driver.start_all().await?;
                ours.push(started.elapsed().as_secs_f64());
                driver.kill_all().await;
            } else {
                let vms = futures::future::try_join_all(specs.iter().map(Bare::boot)).await?;
                bare.push(started.elapsed().as_secs_f64());
                drop(vms);
            }
        }
    }
    report.add(Figure::rounds(
        "boot to agent, two VMs at once (fio_nvme_basic's)",
        "s",
        ours,
        Some(("two bare QEMUs at once", bare)),
    ));
    Ok(())
}

/// One `vmcheck run fio_nvme_basic` in parts, from its timeline (seconds).
#[derive(Debug, Clone, Default)]
struct Split {
    wall: f64,
    process_start: f64,
    setup: f64,
    restore: f64,
    disks: f64,
    nvmeof: f64,
    fio_step: f64,
    fio_job: f64,
    disconnect: f64,
    teardown: f64,
}

impl Split {
    /// The parts of a run that took `wall` seconds from its spawn at `spawned_unix`, from its
    /// timeline and fio's job runtime (seconds).
    fn of(
        timeline: &crate::timeline::Timeline,
        spawned_unix: f64,
        wall: f64,
        fio_job: f64,
    ) -> Result<Split> {
        use crate::timeline::EventKind;
        let find = |kind: EventKind, text: &str| {
            timeline.events.iter().find(|e| e.kind == kind && e.text.contains(text)).map(|e| e.t)
        };
        let last = |kind: EventKind, text: &str| {
            timeline
                .events
                .iter()
                .filter(|e| e.kind == kind && e.text.contains(text))
                .map(|e| e.t)
                .reduce(f64::max)
        };
        let need = |t: Option<f64>, what: &str| {
            t.with_context(|| format!("the timeline has no event {what:?}"))
        };
        let ready = need(find(EventKind::Note, crate::driver::DRIVER_READY), "driver ready")?;
        let restored = need(last(EventKind::Power, crate::machine::RESTORED), "restored")?;
        let up = need(find(EventKind::Note, crate::driver::MACHINES_UP), "machines up")?;
        let fio_start = need(find(EventKind::SubtestStart, "FIO"), "the fio step's start")?;
        let fio_end = need(find(EventKind::SubtestEnd, "FIO"), "the fio step's end")?;
        let disc_start =
            need(find(EventKind::SubtestStart, "disconnect"), "the disconnect step's start")?;
        let disc_end =
            need(find(EventKind::SubtestEnd, "disconnect"), "the disconnect step's end")?;
        let zero = timeline.started_unix - spawned_unix;
        Ok(Split {
            wall,
            process_start: zero,
            setup: ready,
            restore: restored - ready,
            disks: up - restored,
            nvmeof: fio_start - up,
            fio_step: fio_end - fio_start,
            fio_job,
            disconnect: disc_end - disc_start,
            // From the disconnect step's end to the process's exit.
            teardown: wall - zero - disc_end,
        })
    }
}

/// fio_nvme_basic as `vmcheck run` runs it, from its machines' snapshots: this binary run as a
/// process, `runs` times, each run's wall time in parts read from its timeline
/// (`timeline.json` under `--out`), fio's step beside fio's own job runtime.
async fn fio_nvme_basic_split(report: &mut Report, runs: usize) -> Result<()> {
    use crate::scenarios::fio_nvme_basic;
    let exe = std::env::current_exe().context("finding this binary")?;
    let work = tempfile::Builder::new().prefix("vmcheck-bench-").tempdir()?;
    // From snapshots: a first run saves any that are missing, and is not counted.
    let missing = {
        let quiet = Reporter::in_memory();
        let driver = Driver::new(
            fio_nvme_basic::nodes(),
            DriverOptions { reporter: quiet, ..DriverOptions::default() },
        )
        .await?;
        driver.machines().iter().any(|m| m.snapshot_state().is_none())
    };
    if missing {
        report.line(
            "fio_nvme_basic: saving its machines' snapshots first (a run not counted)".into(),
        );
        run_vmcheck(&exe, &work.path().join("first")).await?;
    }
    // A run that did not restore both machines (a snapshot refused, or the agent too slow after a
    // restore on a loaded host: the machine booted instead) is not from snapshots: reported, not
    // counted, and another made in its place, at most `runs` more.
    let machines = fio_nvme_basic::nodes().len();
    let mut splits = Vec::new();
    for attempt in 0..runs * 2 {
        if splits.len() == runs {
            break;
        }
        let out = work.path().join(format!("run{attempt}"));
        let spawned_unix = unix_now();
        let started = Instant::now();
        let log = run_vmcheck(&exe, &out).await?;
        let wall = started.elapsed().as_secs_f64();
        let dir = out.join(fio_nvme_basic::NAME);
        let timeline: crate::timeline::Timeline = serde_json::from_str(
            &std::fs::read_to_string(dir.join("timeline.json")).context("its timeline.json")?,
        )?;
        let restored = timeline
            .events
            .iter()
            .filter(|e| {
                e.kind == crate::timeline::EventKind::Power
                    && e.text.starts_with(crate::machine::RESTORED)
            })
            .count();
        if restored < machines {
            let why: Vec<&str> =
                log.lines().filter(|l| l.contains("snapshot") || l.contains("booted")).collect();
            report.line(format!(
                "fio_nvme_basic run {}: {restored} of {machines} machines restored, not counted:\n  {}",
                attempt + 1,
                why.join("\n  ")
            ));
            continue;
        }
        let fio = crate::tools::fio::FioReport::parse(
            &std::fs::read_to_string(dir.join("fio.json")).context("its fio.json")?,
        )?;
        let job = fio.jobs.iter().map(|j| j.job_runtime).max().context("fio reported no job")?
            as f64
            / 1e3;
        let split = Split::of(&timeline, spawned_unix, wall, job)?;
        report.line(format!("fio_nvme_basic run {}: {split:.2?}", attempt + 1));
        splits.push(split);
    }
    if splits.is_empty() {
        bail!("no run of {} restored both its machines", fio_nvme_basic::NAME);
    }
    let col = |f: fn(&Split) -> f64| splits.iter().map(f).collect::<Vec<f64>>();
    let name = "fio_nvme_basic from snapshots";
    let job = ("fio's job runtime", col(|s| s.fio_job));
    report.add(Figure::rounds(&format!("{name}: wall"), "s", col(|s| s.wall), Some(job.clone())));
    report.add(Figure::rounds(
        &format!("{name}: overhead (wall less fio's job)"),
        "s",
        col(|s| s.wall - s.fio_job),
        None,
    ));
    type Part = fn(&Split) -> f64;
    let parts: [(&str, Part); 8] = [
        ("process start", |s| s.process_start),
        ("driver set-up (images checked)", |s| s.setup),
        ("restore (two VMs at once)", |s| s.restore),
        ("disks plugged", |s| s.disks),
        ("NVMe-oF steps before fio", |s| s.nvmeof),
        ("fio's start and end (its step less its job)", |s| s.fio_step - s.fio_job),
        ("disconnect step", |s| s.disconnect),
        ("teardown (after the last step, to exit)", |s| s.teardown),
    ];
    for (part, f) in parts {
        report.add(Figure::rounds(&format!("{name}: {part}"), "s", col(f), None));
    }
    report.add(Figure::rounds(&format!("{name}: fio step"), "s", col(|s| s.fio_step), Some(job)));
    Ok(())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `vmcheck run --out OUT fio_nvme_basic` with this binary, which must pass; its terminal output
/// goes to `OUT.log`, and is returned.
async fn run_vmcheck(exe: &std::path::Path, out: &std::path::Path) -> Result<String> {
    use crate::scenarios::fio_nvme_basic;
    let log = out.with_extension("log");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("run")
        .arg("--out")
        .arg(out)
        .arg(fio_nvme_basic::NAME)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?.try_clone()?);
    let mut child = crate::process::spawn(cmd).await?;
    let bound = crate::timeouts::global();
    let status = match tokio::time::timeout(bound, child.wait()).await {
        Ok(status) => status?,
        Err(_) => bail!("`vmcheck run {}` did not end within {bound:?}", fio_nvme_basic::NAME),
    };
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        bail!(
            "`vmcheck run {}` exited {status}; its last lines:\n{}",
            fio_nvme_basic::NAME,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(std::fs::read_to_string(&log).unwrap_or_default())
}

/// The wall time of the scenarios `patterns` with `--jobs 2`, beside `--jobs 1`; every scenario
/// must pass both times (a failed run's time says nothing).
async fn suite_jobs(report: &mut Report, reporter: &Reporter, patterns: &[String]) -> Result<()> {
    let suite = crate::scenarios::builtin();
    let chosen = suite.select(patterns)?;
    let mut walls = Vec::new();
    for jobs in [1, 2] {
        let run = Reporter::new();
        run.set_echo_console(false);
        let options = crate::scenarios::RunOptions {
            jobs,
            driver: DriverOptions { reporter: run.clone(), ..DriverOptions::default() },
            ..Default::default()
        };
        let started = Instant::now();
        let outcomes = suite.run(&chosen, &options).await;
        let wall = started.elapsed().as_secs_f64();
        if let Some(failed) = outcomes.iter().find(|o| o.error.is_some()) {
            bail!(
                "with --jobs {jobs}, {} failed: {}",
                failed.name,
                failed.error.as_deref().unwrap_or_default()
            );
        }
        reporter.line(&format!("{} scenario(s) with --jobs {jobs}: {wall:.1} s", outcomes.len()));
        walls.push(wall);
    }
    report.figure(
        &format!("{} scenario(s), --jobs 2", chosen.len()),
        "s",
        walls[1],
        Some(("--jobs 1", walls[0])),
    );
    Ok(())
}

/// A throughput run: the receiver serves a file of `mib` MiB over HTTP (busybox httpd), the
/// sender fetches it and counts the bytes, so a transfer that broke off cannot pass for a fast one.
fn transfer_commands(mib: u64) -> (String, String) {
    (
        format!("mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/f bs=1M count={mib} 2>/dev/null && httpd -p 8080 -h /tmp/www"),
        format!("test $(wget -q -O - http://192.0.2.2:8080/f | wc -c) -eq {}", mib << 20),
    )
}

/// Two bare QEMUs of the bench's machines whose NICs point at each other.
async fn direct_pair(driver: &Driver) -> Result<(Bare, Bare)> {
    let dir = driver.run_dir().join("direct");
    std::fs::create_dir_all(&dir)?;
    let mut a = driver.machine("bench")?.qemu_spec();
    let mut b = driver.machine("peer")?.qemu_spec();
    for (spec, n) in [(&mut a, "a"), (&mut b, "b")] {
        spec.qga_socket = dir.join(format!("{n}-qga.sock"));
        spec.control = None;
    }
    a.nics[0].link =
        NicLink::Unix { local: dir.join("a-net.sock"), remote: dir.join("b-net.sock") };
    b.nics[0].link =
        NicLink::Unix { local: dir.join("b-net.sock"), remote: dir.join("a-net.sock") };
    let (va, _) = Bare::boot(&a).await?;
    let (vb, _) = Bare::boot(&b).await?;
    Ok((va, vb))
}

/// The networks the NVMe-oF benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Network {
    Switch,
    Direct,
    Vde,
    /// vmcheck's switch dropping a frame when its peer's queue is full, as it did before it
    /// queued ([`crate::network::BACKLOG`]): kept to show what the backlog is worth.
    SwitchNoWait,
}

impl Network {
    fn name(self) -> &'static str {
        match self {
            Network::Switch => "vmcheck switch",
            Network::Direct => "direct link",
            Network::Vde => "vde_switch",
            Network::SwitchNoWait => "switch, no queue",
        }
    }
}

const BENCH_NQN: &str = "nqn.2019-05.io.vmcheck:bench";

/// fio 128 KiB sequential reads, queue depth 16, over NVMe-oF/TCP between a target and an
/// initiator, through each network in turn; every network boots the same two bare VMs (the
/// driver's images and command lines, less QMP), only the netdev differs. The namespace is a
/// file in the target's RAM (nvmet buffered I/O), so the network, not a disk, is measured.
async fn nvmeof(options: &BenchOptions, reporter: Reporter) -> Result<BenchResult> {
    let mut report = Report::new(&reporter);
    let vde = if options.networks.contains(&Network::Vde) {
        which::which("vde_switch")
            .context("vde_switch is not on PATH (Debian: apt-get install vde2)")?
    } else {
        std::path::PathBuf::new()
    };
    let nodes = vec![
        NodeSpec::new("target", Role::Target, 1),
        NodeSpec::new("initiator", Role::Initiator, 2).with_memory(768),
    ];
    let driver = Driver::new(nodes, DriverOptions { reporter, ..DriverOptions::default() }).await?;
    report.result.accelerator = driver.accel.map_or("none", |a| a.name()).to_string();
    report.line(format!(
        "accelerator: {}; fio 128k sequential read, iodepth 16, libaio, direct, {} s per run, {} run(s) per network per round, {} round(s)",
        driver.accel.map_or("none", |a| a.name()),
        options.fio_secs,
        options.fio_runs,
        options.rounds
    ));
    let mut samples: Vec<(Network, Vec<f64>)> =
        options.networks.iter().map(|n| (*n, Vec::new())).collect();
    for round in 0..options.rounds {
        for (network, got) in samples.iter_mut() {
            let dir = driver.run_dir().join(format!("bench-{round}-{network:?}"));
            std::fs::create_dir_all(&dir)?;
            let (runs, counters) = nvmeof_runs(&driver, *network, &dir, &vde, options)
                .await
                .with_context(|| format!("over the {}", network.name()))?;
            report.line(format!(
                "round {}: {}: {} MiB/s",
                round + 1,
                network.name(),
                runs.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ")
            ));
            if let Some(c) = counters {
                report.line(c.trim_end().to_string());
            }
            got.extend(runs);
        }
    }
    let mut medians = std::collections::HashMap::new();
    for (network, got) in &mut samples {
        let n = got.len();
        let (min, max) = (
            got.iter().copied().fold(f64::INFINITY, f64::min),
            got.iter().copied().fold(0.0, f64::max),
        );
        let (median, _) = median_p90(got);
        medians.insert(*network, median);
        report.line(format!(
            "{:<16} median {median:>7.1} MiB/s (min {min:.1}, max {max:.1}, {n} runs)",
            network.name()
        ));
    }
    let what = "NVMe-oF fio 128k seqread iodepth 16, median";
    let pairs = [
        (Network::Switch, Network::Direct, "direct QEMU-to-QEMU link"),
        (Network::Switch, Network::Vde, "vde_switch"),
        (Network::SwitchNoWait, Network::Direct, "direct QEMU-to-QEMU link"),
    ];
    for (a, b, floor) in pairs {
        if let (Some(&x), Some(&y)) = (medians.get(&a), medians.get(&b)) {
            report.line(format!("{} / {} = {:.3}", a.name(), b.name(), x / y));
            report.figure(&format!("{what}, {}", a.name()), "MiB/s", x, Some((floor, y)));
        }
    }
    driver.kill_all().await;
    Ok(report.finish())
}

/// Boots the target and initiator on `network`, shares the RAM file, connects, and runs fio
/// (one warm-up, then `fio_runs`); read MiB/s of each run.
async fn nvmeof_runs(
    driver: &Driver,
    network: Network,
    dir: &std::path::Path,
    vde: &std::path::Path,
    options: &BenchOptions,
) -> Result<(Vec<f64>, Option<String>)> {
    let mut t = driver.machine("target")?.qemu_spec();
    let mut i = driver.machine("initiator")?.qemu_spec();
    for (spec, n) in [(&mut t, "target"), (&mut i, "initiator")] {
        spec.qga_socket = dir.join(format!("{n}-qga.sock"));
        spec.control = None;
        spec.nics.truncate(1);
    }
    // Kept alive until the runs end.
    let mut _switch = None;
    let mut _vde = None;
    let vde_dir = dir.join("vde");
    match network {
        Network::Switch | Network::SwitchNoWait => {
            let backlog = if network == Network::Switch { crate::network::BACKLOG } else { 0 };
            let sw = crate::network::Switch::start_with(1, backlog)?;
            for (spec, n) in [(&mut t, "target"), (&mut i, "initiator")] {
                let (qemu_end, switch_end) = crate::network::Switch::socket_pair()?;
                spec.nics[0].link =
                    NicLink::Fd(crate::qemu::NicFd(std::sync::Arc::new(qemu_end.into())));
                sw.add_port(n, switch_end);
            }
            _switch = Some(sw);
        }
        Network::Direct => {
            t.nics[0].link = NicLink::Unix {
                local: dir.join("target-net.sock"),
                remote: dir.join("initiator-net.sock"),
            };
            i.nics[0].link = NicLink::Unix {
                local: dir.join("initiator-net.sock"),
                remote: dir.join("target-net.sock"),
            };
        }
        Network::Vde => {
            let mut cmd = tokio::process::Command::new(vde);
            // Its stdin stays open (piped, held by the child handle): vde_switch quits at EOF there.
            cmd.arg("--sock")
                .arg(&vde_dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true);
            _vde = Some(cmd.spawn().context("starting vde_switch")?);
            let started = Instant::now();
            while !vde_dir.join("ctl").exists() {
                if started.elapsed() > Duration::from_secs(10) {
                    bail!("vde_switch made no {} in 10 s", vde_dir.join("ctl").display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let args = |spec: &QemuSpec| -> Result<Vec<String>> {
        let mut a = bare_args(spec)?;
        if network == Network::Vde {
            for w in a.iter_mut().filter(|w| w.starts_with("dgram,id=")) {
                *w = format!("vde,id={},sock={}", spec.nics[0].netdev_id(), vde_dir.display());
            }
        }
        Ok(a)
    };
    let (ta, ia) = (args(&t)?, args(&i)?);
    let ((mut tv, _), (mut iv, _)) =
        tokio::try_join!(Bare::boot_args(&t, ta), Bare::boot_args(&i, ia))?;
    // The QEMUs hold their socket pair ends now: the driver's copies close.
    for spec in [&mut t, &mut i] {
        spec.nics[0].link = NicLink::Unlinked;
    }
    let poll = Duration::from_millis(250);
    let traddr = t.nics[0].address;
    tv.sh(
        &format!(
            "set -e; dd if=/dev/zero of=/tmp/bench.img bs=1M count=128 2>/dev/null; cd /sys/kernel/config/nvmet; s=subsystems/{BENCH_NQN}; mkdir $s; \
             echo 1 > $s/attr_allow_any_host; mkdir $s/namespaces/1; echo /tmp/bench.img > $s/namespaces/1/device_path; \
             echo 1 > $s/namespaces/1/buffered_io; echo 1 > $s/namespaces/1/enable; p=ports/1; mkdir $p; echo tcp > $p/addr_trtype; \
             echo ipv4 > $p/addr_adrfam; echo {traddr} > $p/addr_traddr; echo 4420 > $p/addr_trsvcid; \
             ln -s /sys/kernel/config/nvmet/$s $p/subsystems/{BENCH_NQN}"
        ),
        poll,
    )
    .await
    .context("sharing the RAM file on the target")?;
    let t = crate::timeouts::nvme();
    let dev = iv
        .sh(
            &format!(
                "set -e; nvme connect -t tcp -a {traddr} -s 4420 -n {BENCH_NQN} --keep-alive-tmo={} --ctrl-loss-tmo={}; \
                 for n in $(seq 100); do for b in /sys/block/nvme*; do [ \"$(cat $b/device/subsysnqn 2>/dev/null)\" = {BENCH_NQN} ] \
                 && [ \"$(cat $b/hidden 2>/dev/null)\" != 1 ] && echo /dev/${{b##*/}} && exit 0; done; sleep 0.1; done; exit 1",
                t.keep_alive_tmo, t.ctrl_loss_tmo
            ),
            poll,
        )
        .await
        .context("connecting the initiator")?;
    let dev = dev.trim().to_string();
    let job = |secs: u64| {
        crate::tools::fio::Fio::new()
            .name("seqread")
            .filename(&dev)
            .rw(crate::tools::fio::Rw::Read)
            .bs("128k")
            .iodepth(16)
            .ioengine("libaio")
            .direct(true)
            .time_based(true)
            .runtime_secs(secs)
            .command_line()
    };
    iv.sh(&job(3), poll).await.context("warm-up fio")?;
    let cpu_before = switch_cpu_secs();
    let timed = Instant::now();
    let mut runs = Vec::new();
    for _ in 0..options.fio_runs {
        let out = iv.sh(&job(options.fio_secs), poll).await?;
        let report = crate::tools::fio::FioReport::parse(&out).context("fio's report")?;
        if !report.problems().is_empty() {
            bail!("fio: {:?}", report.problems());
        }
        runs.push(report.bw_kib(crate::tools::fio::Direction::Read) as f64 / 1024.0);
    }
    let cpu = switch_cpu_secs() - cpu_before;
    // What the switch costs: its threads' CPU time over the runs' wall time.
    let counters = _switch.map(|s| {
        format!(
            "{}  switch threads: {:.1} % of a core during the runs",
            s.report(),
            100.0 * cpu / timed.elapsed().as_secs_f64()
        )
    });
    Ok((runs, counters))
}

/// CPU seconds (user and system) of this process's switch threads (`switch-*`), from
/// /proc/self/task/*/stat in USER_HZ (100 on Linux x86).
fn switch_cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) else { continue };
        if !comm.starts_with("switch-") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        ticks += fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_render_as_a_table_and_json_with_their_ratio() {
        let result = BenchResult {
            accelerator: "tcg".into(),
            taken: Taken {
                started: "2026-12-04T16:00:00Z".into(),
                cpus: 2,
                load_before: "0.10 0.20 0.30".into(),
                load_after: "1.00 0.50 0.40".into(),
                seconds: 120.0,
                started_at: None,
            },
            figures: vec![
                Figure::new("boot to agent", "s", 7.5, Some(("bare QEMU", 5.0))),
                Figure::rounds(
                    "round trip",
                    "ms",
                    vec![15.25, 14.0, 16.0],
                    Some(("bare guest-exec", vec![12.2, 14.0, 12.8])),
                ),
                Figure::new("setup", "s", 0.123, None),
            ],
        };
        assert_eq!(result.figures[0].ratio, Some(1.5));
        let table = result.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with(
                "accelerator: tcg; started 2026-12-04T16:00:00Z, 2 CPUs, load 0.10 0.20 0.30"
            ),
            "{table}"
        );
        assert!(lines[2].starts_with("what") && lines[2].ends_with("floor is"), "{table}");
        assert!(
            lines[3].contains("7.50 s")
                && lines[3].contains("5.00 s")
                && lines[3].contains("1.500")
                && lines[3].ends_with("bare QEMU"),
            "{table}"
        );
        // Medians over the rounds, the smallest and largest round beside them; the ratio is the
        // median of the per-round ratios (1.250, 1.000, 1.250).
        assert!(
            lines[4].contains("15.2 ms (14.0..16.0)")
                && lines[4].contains("12.8 ms (12.2..14.0)")
                && lines[4].contains("1.250 (1.000..1.250)")
                && lines[4].ends_with("bare guest-exec"),
            "{table}"
        );
        assert!(lines[5].contains("0.12 s") && lines[5].trim_end().ends_with('-'), "{table}");
        // The columns line up: every row's vmcheck figure starts where the heading's does.
        let col = lines[2].find("vmcheck").unwrap();
        assert!(
            lines[3..].iter().all(|l| l[col..].starts_with(|c: char| c.is_ascii_digit())),
            "{table}"
        );
        let json: Value = serde_json::to_value(&result).unwrap();
        assert_eq!(
            json["figures"][0],
            json!({"what": "boot to agent", "unit": "s", "vmcheck": 7.5, "floor_what": "bare QEMU",
                   "floor": 5.0, "ratio": 1.5, "rounds": 1,
                   "vmcheck_spread": {"min": 7.5, "max": 7.5}, "floor_spread": {"min": 5.0, "max": 5.0},
                   "ratio_spread": {"min": 1.5, "max": 1.5},
                   "vmcheck_rounds": [7.5], "floor_rounds": [5.0]})
        );
        assert_eq!(json["figures"][1]["ratio_spread"], json!({"min": 1.0, "max": 1.25}));
        assert_eq!(json["figures"][2]["ratio"], Value::Null);
        assert_eq!(json["taken"]["load_after"], "1.00 0.50 0.40");
    }

    #[test]
    fn medians_take_the_middle_and_rounds_alternate() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(vmcheck_first(0), [true, false]);
        assert_eq!(vmcheck_first(1), [false, true]);
    }

    #[test]
    fn a_run_is_split_by_its_timeline() {
        use crate::timeline::{Event, EventKind, Timeline};
        let ev = |t: f64, kind: EventKind, text: &str| Event {
            t,
            kind,
            machine: None,
            text: text.into(),
            failed: false,
        };
        let timeline = Timeline {
            scenario: "fio_nvme_basic".into(),
            started_unix: 1000.25,
            events: vec![
                ev(0.5, EventKind::Note, crate::driver::DRIVER_READY),
                ev(0.8, EventKind::Power, "restored from snapshot aaaa"),
                ev(0.9, EventKind::Power, "restored from snapshot bbbb"),
                ev(1.4, EventKind::Note, crate::driver::MACHINES_UP),
                ev(1.5, EventKind::SubtestStart, "the bdev of the target should be listed"),
                ev(2.5, EventKind::SubtestStart, "should be able to run FIO with verify=crc32"),
                ev(18.0, EventKind::SubtestEnd, "should be able to run FIO with verify=crc32"),
                ev(18.0, EventKind::SubtestStart, "should be able to disconnect from the target"),
                ev(18.5, EventKind::SubtestEnd, "should be able to disconnect from the target"),
            ],
            fio: Vec::new(),
        };
        let s = Split::of(&timeline, 1000.0, 19.25, 15.0).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(s.process_start, 0.25), "{s:?}");
        assert!(close(s.setup, 0.5) && close(s.restore, 0.4) && close(s.disks, 0.5), "{s:?}");
        assert!(close(s.nvmeof, 1.1) && close(s.fio_step, 15.5) && close(s.disconnect, 0.5));
        assert!(close(s.teardown, 0.5), "{s:?}");
        let mut partial = timeline.clone();
        partial.events.retain(|e| e.kind != EventKind::Power);
        let e = Split::of(&partial, 1000.0, 19.25, 15.0).unwrap_err();
        assert!(e.to_string().contains("restored"), "{e}");
    }
}
