//! `vmcheck run --in-guest`: a host run whose cases vmcheck runs from inside the scenario's
//! initiator, in guest mode, as a user of nixpkgs' test driver runs it (ARCHITECTURE.md, "Guest
//! mode").
//!
//! For each group (a scenario, or a chain's cases) `run_group` boots the machines on the default
//! images as for any run; then [`run`]:
//!
//! 1. puts vmcheck into the group's first initiator: the running binary, stripped, and the
//!    shared libraries `ldd` names with the dynamic loader, on an ext4 image built here
//!    (`mke2fs -d`, as the tools disk) and hot-added as a virtio-blk disk (serial
//!    `vmcheck-in-guest`), mounted read-only at `GUEST_DIR/disk`. The agent's file calls were
//!    measured first: 1.1 MiB/s under TCG, 22 s for the 24 MiB; the disk takes about a second
//!    (ARCHITECTURE.md, "Guest mode");
//! 2. runs there, through the agent, `vmcheck run --local INITIATOR --peer NAME=ADDR ...
//!    --global-timeout S --junit J --out O CASE` (CASE: the group's last case; a chain's earlier
//!    cases come with it), started by that loader so that no library path leaks into the
//!    commands it runs; every other machine is a peer at its test-network address;
//! 3. relays the lines it writes to its stderr (its terminal) to this run's reporter once a
//!    second (the agent's file calls, from the offset read so far), so the host's terminal and
//!    transcript follow it as they follow a host run (less its own console lines, the kernel
//!    log the host has from the serial console already);
//! 4. when it ends, reads its JUnit and copies its `--out` directory (transcript, artifacts,
//!    timeline, report) to `<group's log dir>/in-guest/`; each case's test suite comes back as
//!    a [`GuestCase`] that `run_group` replays into the reporter: the same subtests, times and
//!    verdicts, so the host's JUnit, summary and exit status are those of the in-guest run.
//!
//! Meanwhile the host's watches go on watching every console (the target's too, which the
//! in-guest run cannot see): what they find fails the group's last case that ran.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::Role;
use crate::driver::Driver;
use crate::log;
use crate::report::SubtestResult;
use crate::scenarios::Scenario;
use crate::tools::shell_quote;
use crate::Machine;

/// Where vmcheck, its libraries and its run's files go in the initiator.
pub const GUEST_DIR: &str = "/tmp/vmcheck-in-guest";

/// How long the host waits past the in-guest run's own global timeout for its report.
const REPORT_GRACE: Duration = Duration::from_secs(60);

/// How often the in-guest run's lines are fetched and its end looked for.
const RELAY_PERIOD: Duration = Duration::from_secs(1);

/// One case as the in-guest run reported it (its JUnit test suite).
#[derive(Debug, Clone)]
pub(crate) struct GuestCase {
    /// The case's name.
    pub name: String,
    /// Its subtests as the in-guest run recorded them.
    pub subtests: Vec<SubtestResult>,
    /// Its first failure or error, `None` when it passed.
    pub error: Option<String>,
    /// That error is the harness's (JUnit `<error>`).
    pub harness_error: bool,
    /// How long it took in the guest.
    pub duration: Duration,
}

impl GuestCase {
    /// Records its subtests in `reporter` (as the case's own steps would have) and returns its
    /// result.
    pub fn replay(self, reporter: &crate::report::Reporter) -> Result<()> {
        for s in self.subtests {
            reporter.record_subtest(s);
        }
        match (self.error, self.harness_error) {
            (None, _) => Ok(()),
            (Some(e), true) => Err(crate::machine::HarnessError(e).into()),
            (Some(e), false) => Err(anyhow::anyhow!(e)),
        }
    }
}

/// The machine vmcheck runs in: the first initiator among `nodes`.
pub fn local_machine(nodes: &[crate::config::NodeSpec]) -> Result<&crate::config::NodeSpec> {
    nodes.iter().find(|n| n.role == Role::Initiator).with_context(|| {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        format!("--in-guest runs vmcheck in an initiator, and the machines {names:?} have none")
    })
}

/// Boots `driver`'s machines, runs `cases` inside the first initiator (until `deadline`, plus
/// [`REPORT_GRACE`] for the report) and returns what it reported of each case, in order.
pub(crate) async fn run(
    driver: &Driver,
    cases: &[Scenario],
    deadline: tokio::time::Instant,
) -> Result<Vec<GuestCase>> {
    let nodes = cases[0].nodes();
    let local = driver.machine(&local_machine(nodes)?.name)?;
    driver.start_all().await?;
    let copied = install(driver, &local).await?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let argv = guest_command(driver, &local, cases, left)?;
    log::line(&format!(
        "{}: running the scenario in guest mode: {}",
        local.name(),
        crate::tools::shell_join(&argv)
    ));
    let started = Instant::now();
    let process = local.spawn(&["/bin/sh".into(), "-c".into(), in_shell(&argv)]).await?;
    let stderr = format!("{GUEST_DIR}/stderr.log");
    let mut relay = Relay { own_console: format!("{} # ", local.name()), ..Relay::default() };
    let bound = deadline + REPORT_GRACE;
    let output = loop {
        let ended = process.try_wait().await?;
        relay.fetch(&local, &stderr).await;
        if let Some(out) = ended {
            relay.flush();
            break out;
        }
        if tokio::time::Instant::now() >= bound {
            let partial = process.kill().await;
            relay.fetch(&local, &stderr).await;
            relay.flush();
            bail!(
                "the in-guest run did not end within its global timeout and {REPORT_GRACE:?}; \
                 it was killed (status {})",
                partial.status
            );
        }
        tokio::time::sleep(RELAY_PERIOD).await;
    };
    log::line(&format!(
        "{}: the in-guest run ended with status {} after {:.2} s (vmcheck installed in {:.2} s)",
        local.name(),
        output.status,
        started.elapsed().as_secs_f64(),
        copied.as_secs_f64()
    ));
    copy_out(driver, &local).await;
    if !matches!(output.status, 0 | 1) {
        bail!(
            "the in-guest run ended with status {} (0: passed, 1: failed; anything else: it \
             could not run){}",
            output.status,
            relay.tail()
        );
    }
    let qga = local.qga().await?;
    let junit = qga
        .read_file(&format!("{GUEST_DIR}/junit.xml"))
        .await
        .with_context(|| format!("the in-guest run wrote no JUnit{}", relay.tail()))?;
    let reported = parse_junit(&String::from_utf8_lossy(&junit))?;
    Ok(cases
        .iter()
        .map(|c| {
            reported.iter().find(|r| r.name == c.name()).cloned().unwrap_or_else(|| GuestCase {
                name: c.name().to_string(),
                subtests: Vec::new(),
                error: Some(format!("the in-guest run reported nothing of {}", c.name())),
                harness_error: true,
                duration: Duration::ZERO,
            })
        })
        .collect())
}

/// The id of the disk that carries vmcheck into the initiator (serial `vmcheck-in-guest`).
pub const DISK_ID: &str = "in-guest";

/// Puts vmcheck (stripped) and the libraries it needs into `local`: packed on the host as an
/// ext4 image (`mke2fs -d`, as the tools disk is), hot-added as a virtio-blk disk and mounted
/// read-only at `GUEST_DIR/disk`; returns how long that took from the image's start.
async fn install(driver: &Driver, local: &Machine) -> Result<Duration> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding vmcheck's own binary")?;
    let staged = driver.run_dir().join("in-guest");
    let image = local.disk_path(DISK_ID);
    let (libraries, bytes) = {
        let (exe, staged, image) = (exe.clone(), staged.clone(), image.clone());
        tokio::task::spawn_blocking(move || -> Result<(usize, u64)> {
            crate::images::strip_copy(&exe, &staged.join("vmcheck"))?;
            let mut bytes = std::fs::metadata(staged.join("vmcheck"))?.len();
            let libraries = crate::images::shared_libraries(&exe)?;
            std::fs::create_dir_all(staged.join("lib"))?;
            for lib in &libraries {
                let name = lib.file_name().context("a library without a name")?;
                std::fs::copy(lib, staged.join("lib").join(name))
                    .with_context(|| format!("copying {}", lib.display()))?;
                bytes += std::fs::metadata(lib)?.len();
            }
            crate::images::write_ext4(&staged, &image, "vmcheck-in-guest")?;
            Ok((libraries.len(), bytes))
        })
        .await??
    };
    let image_mib = std::fs::metadata(&image)?.len().div_ceil(1 << 20);
    let dev = local.hot_add_disk(crate::config::DiskSpec::virtio(DISK_ID, image_mib)).await?;
    local
        .succeed(&format!(
            "rm -rf {GUEST_DIR} && mkdir -p {GUEST_DIR}/disk {GUEST_DIR}/out && \
             mount -t ext4 -o ro {dev} {GUEST_DIR}/disk"
        ))
        .await?;
    let took = started.elapsed();
    log::line(&format!(
        "{}: vmcheck and {libraries} libraries ({:.1} MiB) put in on a read-only disk ({dev}, \
         mounted at {GUEST_DIR}/disk) in {:.2} s",
        local.name(),
        bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
    ));
    Ok(took)
}

/// The in-guest run's command line: vmcheck through the copied loader, in guest mode.
fn guest_command(
    driver: &Driver,
    local: &Machine,
    cases: &[Scenario],
    left: Duration,
) -> Result<Vec<String>> {
    let loader = format!("{GUEST_DIR}/disk/lib/{}", loader_name()?);
    let mut argv = vec![
        loader,
        "--argv0".into(),
        "vmcheck".into(),
        "--library-path".into(),
        format!("{GUEST_DIR}/disk/lib"),
        format!("{GUEST_DIR}/disk/vmcheck"),
        "run".into(),
        "--local".into(),
        local.name().to_string(),
    ];
    for m in driver.machines().iter().filter(|m| m.name() != local.name()) {
        argv.push("--peer".into());
        argv.push(format!("{}={}", m.name(), m.address()));
    }
    argv.extend([
        "--global-timeout".into(),
        left.as_secs().max(1).to_string(),
        "--junit".into(),
        format!("{GUEST_DIR}/junit.xml"),
        "--out".into(),
        format!("{GUEST_DIR}/out"),
    ]);
    let last = cases.last().context("no case to run")?;
    argv.push(last.name().to_string());
    Ok(argv)
}

/// The dynamic loader's file name among vmcheck's libraries (`ld-linux-x86-64.so.2`).
fn loader_name() -> Result<String> {
    let exe = std::env::current_exe()?;
    crate::images::shared_libraries(&exe)?
        .iter()
        .filter_map(|l| l.file_name().and_then(|n| n.to_str()))
        .find(|n| n.starts_with("ld-linux"))
        .map(str::to_string)
        .context("ldd names no dynamic loader (ld-linux*) for vmcheck")
}

/// `argv` as a shell line with stderr to the relayed log, and the host's timeout factor.
fn in_shell(argv: &[String]) -> String {
    let factor = std::env::var("VMCHECK_TIMEOUT_FACTOR")
        .map(|f| format!("VMCHECK_TIMEOUT_FACTOR={} ", shell_quote(&f)))
        .unwrap_or_default();
    format!("{factor}exec {} 2>{GUEST_DIR}/stderr.log", crate::tools::shell_join(argv))
}

/// The in-guest run's stderr, read on from where the last read ended, its lines relayed to the
/// log as they complete.
#[derive(Default)]
struct Relay {
    /// `<local> # `: the in-guest run's console lines of its own machine, its kernel log, which
    /// the host has already from the serial console; not relayed twice.
    own_console: String,
    offset: u64,
    partial: String,
    /// The last lines, for an error.
    last: std::collections::VecDeque<String>,
}

impl Relay {
    async fn fetch(&mut self, local: &Machine, path: &str) {
        let Ok(qga) = local.qga().await else { return };
        let Ok(data) = qga.read_file_from(path, self.offset).await else { return };
        self.offset += data.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&data));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.emit(line.trim_end_matches('\n'));
        }
    }

    fn flush(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.emit(&rest);
        }
    }

    fn emit(&mut self, line: &str) {
        if !self.own_console.is_empty() && line.starts_with(&self.own_console) {
            return;
        }
        log::line(line);
        self.last.push_back(line.to_string());
        if self.last.len() > 30 {
            self.last.pop_front();
        }
    }

    /// Its last lines, for an error.
    fn tail(&self) -> String {
        match self.last.is_empty() {
            true => "; it printed nothing".into(),
            false => format!(
                "; its last lines:\n{}",
                self.last.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
            ),
        }
    }
}

/// Copies the in-guest run's `--out` directory to `<driver's log dir>/in-guest/`, file by file
/// over the agent. What cannot be copied is logged, not fatal: the verdict is in the JUnit.
async fn copy_out(driver: &Driver, local: &Machine) {
    let dest = driver.log_dir().join("in-guest");
    let copied = async {
        let listing = local
            .succeed_with_timeout(
                &format!("cd {GUEST_DIR}/out && find . -type f"),
                crate::timeouts::request(),
            )
            .await?;
        let qga = local.qga().await?;
        let mut n = 0;
        for rel in listing.lines().filter_map(|l| l.strip_prefix("./")) {
            let to = dest.join(rel);
            if !Path::new(rel).components().all(|c| matches!(c, std::path::Component::Normal(_))) {
                continue;
            }
            let data = qga.read_file(&format!("{GUEST_DIR}/out/{rel}")).await?;
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&to, data)?;
            n += 1;
        }
        anyhow::Ok(n)
    };
    match copied.await {
        Ok(n) => log::line(&format!(
            "{}: the in-guest run's {n} files (transcript, artifacts, report) copied to {}",
            local.name(),
            dest.display()
        )),
        Err(e) => log::line(&format!(
            "{}: the in-guest run's files were not copied out: {e:#}",
            local.name()
        )),
    }
}

/// The cases of a JUnit report that vmcheck wrote (one test suite per case, one test case per
/// subtest; see `report::junit`).
fn parse_junit(xml: &str) -> Result<Vec<GuestCase>> {
    use quick_junit::{NonSuccessKind, TestCaseStatus};
    let report = quick_junit::Report::deserialize_from_str(xml)
        .map_err(|e| anyhow::anyhow!("the in-guest run's JUnit does not parse: {e}"))?;
    Ok(report
        .test_suites
        .iter()
        .map(|suite| {
            let mut case = GuestCase {
                name: suite.name.to_string(),
                subtests: Vec::new(),
                error: None,
                harness_error: false,
                duration: suite.time.unwrap_or_default(),
            };
            for t in &suite.test_cases {
                let (error, harness) = match &t.status {
                    TestCaseStatus::Success { .. } => (None, false),
                    TestCaseStatus::NonSuccess { kind, message, description, .. } => (
                        Some(
                            description
                                .as_deref()
                                .or(message.as_deref())
                                .unwrap_or("failed")
                                .to_string(),
                        ),
                        *kind == NonSuccessKind::Error,
                    ),
                    TestCaseStatus::Skipped { message, .. } => (
                        Some(format!(
                            "the in-guest run skipped it: {}",
                            message.as_deref().unwrap_or("no reason given")
                        )),
                        true,
                    ),
                };
                if case.error.is_none() {
                    case.error.clone_from(&error);
                    case.harness_error = harness;
                }
                // A skipped case is one test case standing for the case, not a subtest.
                if matches!(t.status, TestCaseStatus::Skipped { .. }) {
                    continue;
                }
                let prefix = format!("allowed in step {}: ", t.name.as_ref() as &str);
                let allowed = t
                    .system_out
                    .as_deref()
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.strip_prefix(prefix.as_str()))
                    .map(str::to_string)
                    .collect();
                case.subtests.push(SubtestResult {
                    name: t.name.to_string(),
                    duration: t.time.unwrap_or_default(),
                    error,
                    harness_error: harness,
                    allowed,
                });
            }
            case
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Reporter;

    /// What a host run's JUnit says comes back from it as it was: subtests, times, verdicts,
    /// allowances, the case's time.
    #[test]
    fn a_runs_junit_reads_back_as_its_cases() {
        let run = Reporter::in_memory();
        let view = run.scenario("chain", false);
        view.record_subtest(SubtestResult {
            name: "attach".into(),
            duration: Duration::from_millis(1500),
            allowed: vec!["WARNING: x (allowed by /x/)".into()],
            ..Default::default()
        });
        view.end_case("tc1", None, false, Duration::from_secs(3), Duration::from_secs(1));
        view.record_subtest(SubtestResult {
            name: "fio".into(),
            duration: Duration::from_secs(2),
            error: Some("fio exited 1\nverify: bad magic".into()),
            ..Default::default()
        });
        view.end_case(
            "tc2",
            Some("fio exited 1".into()),
            false,
            Duration::from_secs(2),
            Duration::ZERO,
        );
        view.end_case("tc3", Some("not run".into()), true, Duration::ZERO, Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        run.write_junit(&path).unwrap();
        let cases = parse_junit(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["tc1", "tc2", "tc3"]);
        let tc1 = &cases[0];
        assert_eq!((tc1.error.as_deref(), tc1.duration), (None, Duration::from_secs(4)));
        assert_eq!(tc1.subtests[0].name, "attach");
        assert_eq!(tc1.subtests[0].duration, Duration::from_millis(1500));
        assert_eq!(tc1.subtests[0].allowed, ["WARNING: x (allowed by /x/)"]);
        let tc2 = &cases[1];
        assert_eq!(tc2.error.as_deref(), Some("fio exited 1\nverify: bad magic"));
        assert!(!tc2.harness_error);
        assert_eq!(tc2.subtests[0].verdict(), "FAILED");
        let tc3 = &cases[2];
        assert!(tc3.harness_error && tc3.subtests[0].name == "test script", "{tc3:?}");
        // Replayed, they make the same JUnit.
        let again = Reporter::in_memory();
        let view = again.scenario("chain", false);
        for c in cases {
            let (name, took) = (c.name.clone(), c.duration);
            let result = c.replay(&view);
            let harness = result.as_ref().err().is_some_and(crate::machine::is_harness_error);
            view.end_case(
                &name,
                result.err().map(|e| format!("{e:#}")),
                harness,
                took,
                Duration::ZERO,
            );
        }
        let path2 = dir.path().join("again.xml");
        again.write_junit(&path2).unwrap();
        let strip_times = |p: &Path| {
            let xml = std::fs::read_to_string(p).unwrap();
            regex::Regex::new(r#" (time|timestamp)="[^"]*""#)
                .unwrap()
                .replace_all(&xml, "")
                .into_owned()
        };
        assert_eq!(strip_times(&path), strip_times(&path2));
    }

    #[test]
    fn the_command_goes_through_the_loader_with_the_timeout_factor() {
        let line = in_shell(&["/tmp/x/lib/ld-linux-x86-64.so.2".into(), "a b".into()]);
        assert!(line.contains("exec /tmp/x/lib/ld-linux-x86-64.so.2 'a b' 2>"), "{line}");
        assert!(loader_name().unwrap().starts_with("ld-linux"));
    }
}
