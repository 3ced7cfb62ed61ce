//! `vmcheck bench`: what the driver costs over bare QEMU, measured, not asserted.
//!
//! - boot until the guest agent answers: vmcheck (`start` + `wait_for_agent`) beside a bare
//!   `qemu-system-x86_64` of the same kernel, initramfs and devices with qemu-ga talked to
//!   directly (`guest-ping` until it answers);
//! - restore from a snapshot until the agent answers (`src/snapshot.rs`) beside a bare
//!   `qemu -incoming file:STATE` of the same state file;
//! - the round trip of `succeed("true")` beside a bare `guest-exec` of `/bin/true` with tight
//!   `guest-exec-status` polling (median and p90);
//! - test-network throughput through the driver's switch beside a direct QEMU-to-QEMU link;
//! - fio_nvme_basic's wall time split into setup, boot, NVMe-oF steps, fio and teardown, its fio
//!   step beside fio's own job runtime;
//! - with `--suite PATTERN..`, those scenarios run with `--jobs 1`, then with `--jobs 2`;
//! - with `--nvmeof`, only this: fio 128 KiB sequential reads at queue depth 16 over NVMe-oF/TCP
//!   through vmcheck's switch, a direct QEMU-to-QEMU link and `vde_switch` (what NixOS tests
//!   use), in the same run, on the same bare VMs (`nvmeof`).
//!
//! Each figure is logged as it is measured and ends up in one table ([`BenchResult::table`]) and,
//! with `--json FILE`, in JSON: vmcheck's figure, its floor (measured in the same run) and the
//! ratio of the two.

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
    /// Exec round trips of each kind (at least 20).
    #[arg(long, default_value_t = 30)]
    pub execs: usize,
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
            || self.transfer_mib == 0
            || self.fio_runs == 0
            || self.fio_secs == 0
            || self.rounds == 0
            || self.networks.is_empty()
        {
            anyhow::bail!(
                "bench needs --boots >= 1, --execs >= 20, --transfer-mib >= 1, --fio-runs >= 1, \
                 --fio-secs >= 1 and --rounds >= 1"
            );
        }
        Ok(())
    }
}

/// One measured figure: vmcheck's, beside its floor where it has one.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Figure {
    pub what: String,
    /// `s`, `ms` or `MiB/s`.
    pub unit: &'static str,
    pub vmcheck: f64,
    /// What the floor is (bare QEMU, the direct link, fio's own runtime, `--jobs 1`).
    pub floor_what: Option<String>,
    pub floor: Option<f64>,
    /// vmcheck / floor.
    pub ratio: Option<f64>,
}

impl Figure {
    pub fn new(what: &str, unit: &'static str, vmcheck: f64, floor: Option<(&str, f64)>) -> Figure {
        Figure {
            what: what.to_string(),
            unit,
            vmcheck,
            floor_what: floor.map(|(w, _)| w.to_string()),
            floor: floor.map(|(_, f)| f),
            ratio: floor.map(|(_, f)| vmcheck / f),
        }
    }

    fn value(&self, v: f64) -> String {
        match self.unit {
            "s" => format!("{v:.2} s"),
            unit => format!("{v:.1} {unit}"),
        }
    }
}

/// What a bench run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub accelerator: String,
    pub figures: Vec<Figure>,
}

impl BenchResult {
    /// The figures as a table: what, vmcheck, floor, ratio.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .figures
            .iter()
            .map(|f| {
                let floor = match (&f.floor_what, f.floor) {
                    (Some(w), Some(v)) => format!("{} ({w})", f.value(v)),
                    _ => "-".into(),
                };
                [
                    f.what.clone(),
                    f.value(f.vmcheck),
                    floor,
                    f.ratio.map_or("-".into(), |r| format!("{r:.3}")),
                ]
            })
            .collect();
        let head = ["what".to_string(), "vmcheck".into(), "floor".into(), "ratio".into()];
        let widths: Vec<usize> = (0..4)
            .map(|c| rows.iter().chain([&head]).map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!("accelerator: {}\n", self.accelerator);
        for row in [&head].into_iter().chain(&rows) {
            let cells: Vec<String> =
                row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// Median and 90th percentile of `samples`, in seconds.
pub fn median_p90(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
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
        // Drain the answers to the other pings.
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), bare.reader.next()).await
        {}
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
            result: BenchResult { accelerator: String::new(), figures: Vec::new() },
        }
    }

    fn line(&mut self, s: String) {
        self.log.line(&s);
    }

    fn figure(&mut self, what: &str, unit: &'static str, vmcheck: f64, floor: Option<(&str, f64)>) {
        self.result.figures.push(Figure::new(what, unit, vmcheck, floor));
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

/// Boot to agent, exec round trip and network throughput, the driver's and bare QEMU's.
async fn machine_api(options: &BenchOptions, reporter: Reporter) -> Result<BenchResult> {
    let mut report = Report::new(&reporter);
    // Boots are measured as boots: no machine starts from a snapshot here.
    let driver_options =
        DriverOptions { reporter: reporter.clone(), fresh_boot: true, ..DriverOptions::default() };
    let driver =
        Driver::new(vec![one_node("bench", 1), one_node("peer", 2)], driver_options).await?;
    report.result.accelerator = driver.accel.map_or("none", |a| a.name()).to_string();
    report.line(format!("accelerator: {}", driver.accel.map_or("none", |a| a.name())));
    let m = driver.machine("bench")?;
    let spec = m.qemu_spec();
    let bare_dir = driver.run_dir().join("bare");
    std::fs::create_dir_all(&bare_dir)?;
    // The same devices as vmcheck's machine; only the QMP monitor is left out.
    let mut bare_spec = spec.clone();
    bare_spec.qga_socket = bare_dir.join("qga.sock");
    // A NIC linked to nothing: QEMU drops what it sends (no socket at the remote path).
    for nic in &mut bare_spec.nics {
        nic.link = NicLink::Unix {
            local: bare_dir.join("net.sock"),
            remote: bare_dir.join("no-switch.sock"),
        };
    }

    // Boot to agent, alternating so that drift in host load hits both alike.
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut bare_vm = None;
    for _ in 0..options.boots {
        let started = Instant::now();
        m.wait_for_agent().await?;
        ours.push(started.elapsed().as_secs_f64());
        m.kill().await;
        // The previous bare VM goes before the next boots: one VM at a time.
        drop(bare_vm.take());
        let (vm, t) = Bare::boot(&bare_spec).await?;
        bare.push(t.as_secs_f64());
        bare_vm = Some(vm);
    }
    let (om, _) = median_p90(&mut ours);
    let (bare_boot, _) = median_p90(&mut bare);
    report.line(format!(
        "boot to agent (median of {}): vmcheck {om:.2} s, bare {bare_boot:.2} s, ratio {:.3}",
        options.boots,
        om / bare_boot
    ));
    report.figure(
        &format!("boot to agent, one VM (median of {})", options.boots),
        "s",
        om,
        Some(("bare QEMU", bare_boot)),
    );

    // Exec round trip: the bare VM is still up; boot ours again beside it.
    let mut bare_vm = bare_vm.context("no bare VM")?;
    // Both VMs get the same settling time after boot and the same warm-up calls: a guest just
    // booted still finishes start-up work (the daemon, the network), which skews the first calls.
    const SETTLE: Duration = Duration::from_secs(5);
    const WARM_UP: usize = 10;
    let (mut ours, mut bare, mut bare_sh) = (Vec::new(), Vec::new(), Vec::new());
    tokio::time::sleep(SETTLE).await;
    for _ in 0..WARM_UP {
        bare_vm.exec(&["/bin/true"]).await?;
    }
    // succeed() runs its command with `sh -c`: this shows what the shell itself costs.
    for _ in 0..options.execs {
        let t = Instant::now();
        bare_vm.exec(&["/bin/sh", "-c", "true"]).await?;
        bare_sh.push(t.elapsed().as_secs_f64());
    }
    for _ in 0..options.execs {
        let t = Instant::now();
        let status = bare_vm.exec(&["/bin/true"]).await?;
        bare.push(t.elapsed().as_secs_f64());
        if status["exitcode"] != 0 {
            bail!("bare /bin/true: {status}");
        }
    }
    drop(bare_vm);
    m.wait_for_agent().await?;
    tokio::time::sleep(SETTLE).await;
    for _ in 0..WARM_UP {
        m.execute("true").await?;
    }
    for _ in 0..options.execs {
        let t = Instant::now();
        m.execute("true").await?;
        ours.push(t.elapsed().as_secs_f64());
    }
    let (om, o90) = median_p90(&mut ours);
    let (bm, b90) = median_p90(&mut bare);
    let (sm, s90) = median_p90(&mut bare_sh);
    report.figure(
        &format!("succeed(\"true\") round trip, median of {}", options.execs),
        "ms",
        om * 1e3,
        Some(("bare guest-exec", bm * 1e3)),
    );
    report.figure(
        &format!("succeed(\"true\") round trip, p90 of {}", options.execs),
        "ms",
        o90 * 1e3,
        Some(("bare guest-exec", b90 * 1e3)),
    );
    report.figure(
        "succeed(\"true\") round trip, median",
        "ms",
        om * 1e3,
        Some(("bare guest-exec of sh -c true", sm * 1e3)),
    );
    report.line(format!(
        "succeed(\"true\") round trip over {} calls: vmcheck median {:.1} ms p90 {:.1} ms; bare guest-exec median {:.1} ms p90 {:.1} ms; ratio {:.3}",
        options.execs,
        om * 1e3,
        o90 * 1e3,
        bm * 1e3,
        b90 * 1e3,
        om / bm
    ));
    report.line(format!(
        "  (bare guest-exec of `sh -c true`: median {:.1} ms p90 {:.1} ms; vmcheck over it: ratio {:.3})",
        sm * 1e3,
        s90 * 1e3,
        om / sm
    ));

    // Throughput: through the switch, then over a direct link between two bare QEMUs.
    let peer = driver.machine("peer")?;
    peer.wait_for_agent().await?;
    let switched = transfer(&m, &peer, options.transfer_mib).await?;
    m.kill().await;
    peer.kill().await;
    let direct = direct_transfer(&driver, options.transfer_mib).await?;
    report.figure(
        &format!("test network, {} MiB over TCP", options.transfer_mib),
        "MiB/s",
        switched,
        Some(("direct QEMU-to-QEMU link", direct)),
    );
    report.line(format!(
        "test network, {} MiB over TCP (busybox httpd, wget): switch {:.1} MiB/s, direct QEMU-to-QEMU link {:.1} MiB/s, ratio {:.3}",
        options.transfer_mib,
        switched,
        direct,
        switched / direct
    ));
    driver.kill_all().await;
    restore_to_agent(&mut report, &reporter, options.boots).await.context("restore to agent")?;
    fio_nvme_basic_split(&mut report, &reporter, bare_boot).await.context("fio_nvme_basic")?;
    if !options.suite.is_empty() {
        suite_jobs(&mut report, &reporter, &options.suite).await?;
    }
    Ok(report.result)
}

/// Restore to agent: vmcheck's start from the machine's snapshot (saved first if there is none)
/// until its agent answers, clock and random seed set, beside a bare `qemu -incoming file:STATE`
/// of the same state file until its agent answers `guest-ping`.
async fn restore_to_agent(report: &mut Report, reporter: &Reporter, boots: usize) -> Result<()> {
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
    let mut bare_spec = m.qemu_spec();
    bare_spec.disks.clear();
    bare_spec.qga_socket = bare_dir.join("qga.sock");
    // A NIC linked to nothing: QEMU drops what it sends (no socket at the remote path).
    for nic in &mut bare_spec.nics {
        nic.link = NicLink::Unix {
            local: bare_dir.join("net.sock"),
            remote: bare_dir.join("no-switch.sock"),
        };
    }
    let mut bare_args = bare_args(&bare_spec)?;
    bare_args.extend(["-incoming".to_string(), format!("file:{}", state.display())]);
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..boots {
        let started = Instant::now();
        m.wait_for_agent().await?;
        ours.push(started.elapsed().as_secs_f64());
        m.kill().await;
        let (vm, t) = Bare::boot_args(&bare_spec, bare_args.clone()).await?;
        bare.push(t.as_secs_f64());
        drop(vm);
    }
    driver.kill_all().await;
    let (om, _) = median_p90(&mut ours);
    let (bm, _) = median_p90(&mut bare);
    report.line(format!("restore to agent (median of {boots}): vmcheck {om:.2} s, bare qemu -incoming {bm:.2} s, ratio {:.3}", om / bm));
    report.figure(
        &format!("restore to agent, one VM (median of {boots})"),
        "s",
        om,
        Some(("bare qemu -incoming", bm)),
    );
    Ok(())
}

/// fio_nvme_basic's wall time in parts: setup (images, accelerator, run directory), boot (both
/// machines at once, beside one bare VM's boot), the NVMe-oF steps before fio, fio (beside
/// fio's own job runtime) and teardown (disconnect, then stopping the machines).
async fn fio_nvme_basic_split(
    report: &mut Report,
    reporter: &Reporter,
    bare_boot: f64,
) -> Result<()> {
    use crate::scenarios::fio_nvme_basic;
    let view = reporter.scenario(fio_nvme_basic::NAME, false);
    let wall = Instant::now();
    let driver = Driver::new(
        fio_nvme_basic::nodes(),
        DriverOptions { reporter: view, fresh_boot: true, ..DriverOptions::default() },
    )
    .await?;
    let setup = wall.elapsed();
    let t = Instant::now();
    let booted = driver.start_all().await;
    let boot = t.elapsed();
    let ran = match booted {
        Ok(()) => fio_nvme_basic::run(&driver).await,
        Err(e) => Err(e),
    };
    let t = Instant::now();
    driver.kill_all().await;
    let stop = t.elapsed();
    let total = wall.elapsed();
    let ran = ran?;
    let steps = driver.subtest_results();
    let took = |part: &str| {
        steps.iter().filter(|s| s.name.contains(part)).map(|s| s.duration).sum::<Duration>()
    };
    let (fio, disconnect) = (took("FIO"), took("disconnect"));
    let nvmeof =
        steps.iter().map(|s| s.duration).sum::<Duration>().saturating_sub(fio + disconnect);
    let job_runtime =
        ran.fio.jobs.iter().map(|j| j.job_runtime).max().context("fio reported no job")? as f64
            / 1e3;
    let secs = |d: Duration| d.as_secs_f64();
    report.line(format!(
        "fio_nvme_basic {:.2} s: setup {:.2} s, boot {:.2} s, NVMe-oF steps {:.2} s, fio {:.2} s (its job ran {job_runtime:.2} s), teardown {:.2} s",
        secs(total),
        secs(setup),
        secs(boot),
        secs(nvmeof),
        secs(fio),
        secs(disconnect + stop)
    ));
    report.figure("fio_nvme_basic: wall", "s", secs(total), None);
    report.figure("fio_nvme_basic: setup (images, accelerator)", "s", secs(setup), None);
    report.figure(
        "fio_nvme_basic: boot (two VMs at once)",
        "s",
        secs(boot),
        Some(("one bare QEMU boot", bare_boot)),
    );
    report.figure("fio_nvme_basic: NVMe-oF steps before fio", "s", secs(nvmeof), None);
    report.figure(
        "fio_nvme_basic: fio step",
        "s",
        secs(fio),
        Some(("fio's job runtime", job_runtime)),
    );
    report.figure(
        "fio_nvme_basic: teardown (disconnect, stop)",
        "s",
        secs(disconnect + stop),
        None,
    );
    Ok(())
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

async fn transfer(from: &crate::Machine, to: &crate::Machine, mib: u64) -> Result<f64> {
    let (serve, fetch) = transfer_commands(mib);
    to.succeed(&serve).await?;
    to.wait_for_open_port(8080, crate::timeouts::request()).await?;
    let t = Instant::now();
    from.succeed(&fetch).await?;
    Ok(mib as f64 / t.elapsed().as_secs_f64())
}

/// The same transfer between two bare QEMUs whose NICs point at each other.
async fn direct_transfer(driver: &Driver, mib: u64) -> Result<f64> {
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
    let (mut va, _) = Bare::boot(&a).await?;
    let (mut vb, _) = Bare::boot(&b).await?;
    let (serve, fetch) = transfer_commands(mib);
    let served = vb.exec(&["/bin/sh", "-c", &serve]).await?;
    if served["exitcode"] != 0 {
        bail!("direct link: serving failed: {served}");
    }
    let t = Instant::now();
    let status = va.exec(&["/bin/sh", "-c", &fetch]).await?;
    if status["exitcode"] != 0 {
        bail!("direct link: the transfer failed: {status}");
    }
    Ok(mib as f64 / t.elapsed().as_secs_f64())
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
    Ok(report.result)
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
            figures: vec![
                Figure::new("boot to agent", "s", 7.5, Some(("bare QEMU", 5.0))),
                Figure::new("round trip", "ms", 15.25, Some(("bare guest-exec", 12.2))),
                Figure::new("setup", "s", 0.123, None),
            ],
        };
        assert_eq!(result.figures[0].ratio, Some(1.5));
        let table = result.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "accelerator: tcg");
        assert!(lines[1].starts_with("what") && lines[1].ends_with("ratio"), "{table}");
        assert!(
            lines[2].contains("7.50 s")
                && lines[2].contains("5.00 s (bare QEMU)")
                && lines[2].ends_with("1.500"),
            "{table}"
        );
        assert!(
            lines[3].contains("15.2 ms")
                && lines[3].contains("12.2 ms (bare guest-exec)")
                && lines[3].ends_with("1.250"),
            "{table}"
        );
        assert!(lines[4].contains("0.12 s") && lines[4].trim_end().ends_with('-'), "{table}");
        // The columns line up: every row's vmcheck figure starts where the heading's does.
        let col = lines[1].find("vmcheck").unwrap();
        assert!(
            lines[2..].iter().all(|l| l[col..].starts_with(|c: char| c.is_ascii_digit())),
            "{table}"
        );
        let json: Value = serde_json::to_value(&result).unwrap();
        assert_eq!(
            json["figures"][0],
            json!({"what": "boot to agent", "unit": "s", "vmcheck": 7.5, "floor_what": "bare QEMU", "floor": 5.0, "ratio": 1.5})
        );
        assert_eq!(json["figures"][2]["ratio"], Value::Null);
    }
}
