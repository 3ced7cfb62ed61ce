//! fio as the plans use it: the "FIO integrity" job, run in the background while a disk is
//! pulled, and its outcome judged the plans' way: clean (no error, no verify failure, I/O in both
//! directions), or failed with a typed error (the errno fio stopped on), never just an exit code.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::log;
use crate::machine::{GuestProcess, Machine};
use crate::timeline::FioSeries;
use crate::timeouts;
use crate::tools::fio::{Direction, Fio, FioReport, Rw, Verify};

/// How long fio runs before a fault, a removal or a lifecycle step lands on it: past its start,
/// doing I/O, with blocks written and verified.
pub const SETTLE: Duration = Duration::from_secs(3);
/// fio's run time where it only has to finish clean (before or after a fault, on the devices
/// a fault did not touch).
pub const FIO_CLEAN_SECS: u64 = 8;
/// A target disk of the plans that share, pull or cut one: room for the integrity job's 64 MiB
/// and, in the lifecycle chain, data beyond it.
pub const DISK_MIB: u64 = 256;

/// The plans' integrity job (SPDK's `default_integrity.job`: 4 KiB random writes through libaio
/// with O_DIRECT, every block verified), sized for TCG: queue depth 8 instead of 512, crc32c
/// instead of md5, verified as it goes: every 16 blocks written are read back (`verify_backlog`),
/// so even a slow run (four fio jobs on one TCG guest write ~50 blocks/s each) reads back what
/// it wrote, and a run cut short has verified nearly all of it (a time-based job gets no final
/// verify pass). Over the first 64 MiB of the device, for `runtime_secs`.
pub fn integrity_job(device: &str, runtime_secs: u64) -> Fio {
    Fio::new()
        .thread(true)
        .ioengine("libaio")
        .direct(true)
        .bs("4k")
        .iodepth(8)
        .rw(Rw::RandWrite)
        .verify(Verify::Crc32c)
        .opt("verify_backlog", 16)
        .do_verify(true)
        .size("64m")
        .time_based(true)
        .runtime_secs(runtime_secs)
        // A device that is gone must fail the job, not become a new file in /dev.
        .opt("allow_file_create", 0)
        .numjobs(1)
        .group_reporting(true)
        .name("integrity")
        .filename(device)
}

/// How a finished fio run went.
#[derive(Debug, Clone)]
pub struct FioOutcome {
    /// The machine fio ran on.
    pub machine: String,
    /// The device it ran against.
    pub device: String,
    /// fio's exit status.
    pub status: i32,
    /// `None` when fio printed no JSON report (it could not start the job at all).
    pub report: Option<FioReport>,
    /// What fio printed on stderr.
    pub stderr: String,
    /// Stopped by [`FioRun::stop`] before its run time was up (fio then exits 128).
    pub stopped: bool,
}

/// fio's exit status after SIGINT ("fio: terminating on signal 2"), whatever its jobs did.
const FIO_INTERRUPTED: i32 = 128;

/// The error a failed fio run stopped on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FioFailure {
    /// The errno of the job (from the JSON report), or of fio's own message when it printed no
    /// report; 0 when neither names one.
    pub errno: i32,
    /// fio's own words for it (`io_u error ...`, `file:filesetup.c ...`).
    pub message: String,
}

impl FioOutcome {
    /// The run in a few lines, for messages: exit status, fio's summary, its last stderr lines.
    pub fn describe(&self) -> String {
        let summary = self
            .report
            .as_ref()
            .map(FioReport::summary_line)
            .unwrap_or_else(|| "no JSON report".into());
        format!(
            "fio on {}:{} exited {}: {summary}\nstderr:\n{}",
            self.machine,
            self.device,
            self.status,
            tail(&self.stderr, 15)
        )
    }

    /// The plans' "finished status: write and read should be successful": exit 0, no job error,
    /// no verify failure, and both writes and verifying reads done.
    pub fn expect_clean(&self) -> Result<&FioReport> {
        let Some(report) = &self.report else {
            bail!("expected a clean fio run; {}", self.describe())
        };
        let problems = report.problems();
        let status_ok = self.status == 0 || (self.stopped && self.status == FIO_INTERRUPTED);
        if !status_ok || !problems.is_empty() {
            bail!("expected a clean fio run, got problems {problems:?}; {}", self.describe());
        }
        if report.io_bytes(Direction::Write) == 0 || report.io_bytes(Direction::Read) == 0 {
            bail!(
                "expected fio to write and read back (verify), but it moved no data one way; {}",
                self.describe()
            );
        }
        log::line(&format!("{}: {} (clean)", self.machine, report.summary_line()));
        Ok(report)
    }

    /// The plans' "FIO returns an error": a non-zero exit with the errno it stopped on. A verify
    /// failure is not this error (data was corrupted, not cut off) and fails the expectation.
    pub fn expect_error(&self) -> Result<FioFailure> {
        if self.status == 0 {
            bail!("expected fio to fail, but it exited 0; {}", self.describe());
        }
        if let Some(report) = &self.report {
            if report.verify_failures() > 0 {
                bail!("fio failed on verify (corrupt data), not on I/O; {}", self.describe());
            }
        }
        let from_job =
            self.report.as_ref().and_then(|r| r.jobs.iter().map(|j| j.error).find(|e| *e != 0));
        // fio's own line for the error; else its first message (a JSON report's warnings too).
        let messages = self
            .stderr
            .lines()
            .chain(self.report.iter().flat_map(|r| r.messages.iter().map(String::as_str)));
        let mut message = self
            .stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if message.is_empty() {
            message =
                messages.map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().to_string();
        }
        // With allow_file_create=0, fio's word for a path that does not exist names no errno.
        let missing = message.contains("file creation disallowed").then_some(ENOENT);
        let errno = from_job.or_else(|| errno_in_message(&message)).or(missing).unwrap_or(0);
        if errno == 0 && message.is_empty() {
            bail!("fio failed without naming an error; {}", self.describe());
        }
        let failure = FioFailure { errno, message };
        let text = std::io::Error::from_raw_os_error(failure.errno).kind();
        log::line(&format!(
            "{}: fio on {} failed as expected: errno {} ({text}): {}",
            self.machine, self.device, failure.errno, failure.message
        ));
        Ok(failure)
    }
}

/// fio's interval logs (`--write_iops_log`, `--write_lat_log`, `--log_avg_msec=1000`, in the
/// guest's `/tmp`) for one run: read back when it ends, they become the scenario's timeline
/// series ([`crate::timeline`]). [`FioRun`] adds them to every run; a scenario that runs fio in
/// the foreground adds them itself.
pub struct IntervalLogs {
    /// Where fio writes them in the guest (`PREFIX_iops.N.log`, `PREFIX_lat.N.log`).
    prefix: String,
    device: String,
    /// When the run was started (fio's time 0 is placed there on the timeline).
    spawned: Instant,
    /// The scenario's reporter, whose timeline gets the series.
    reporter: Option<crate::report::Reporter>,
}

impl IntervalLogs {
    /// `job` with the interval logs asked for, and what reads them back: start the job right
    /// after (its start is taken as now).
    pub fn add_to(job: &Fio, device: &str) -> (Fio, IntervalLogs) {
        let prefix = format!("/tmp/vmcheck-fio-{}", uuid::Uuid::new_v4().simple());
        let logged = job
            .clone()
            .opt("write_iops_log", &prefix)
            .opt("write_lat_log", &prefix)
            .opt("log_avg_msec", 1000)
            .opt("log_unix_epoch", 1);
        let logs = IntervalLogs {
            prefix,
            device: device.to_string(),
            spawned: Instant::now(),
            reporter: log::current(),
        };
        (logged, logs)
    }

    /// Reads fio's interval logs back from the guest (and removes them there) onto the
    /// scenario's timeline, their guest times moved to the host's clock by the guest's clock
    /// offset, read now. A machine that cannot answer loses the series, not the run.
    pub async fn record(self, m: &Machine, status: i32, report: Option<&FioReport>) {
        let ended = Instant::now();
        let Some(reporter) = self.reporter else { return };
        let reporter = &reporter;
        let report_ms = report.map(|r| r.timestamp_ms).filter(|ms| *ms > 0);
        let (offset, bound) = match guest_clock_offset(m).await {
            Ok(o) => o,
            Err(e) => {
                log::line(&format!("{}: fio's interval logs not read: {e:#}", m.name()));
                return;
            }
        };
        let p = &self.prefix;
        let cmd = format!(
            "for f in {p}_iops.*.log {p}_lat.*.log; do [ -e \"$f\" ] && echo \"== $f\" && cat \"$f\"; done; rm -f {p}_*.log; true"
        );
        let text = match m.execute_with_timeout(&cmd, timeouts::request()).await {
            Ok(out) => out.stdout,
            Err(e) => {
                log::line(&format!("{}: fio's interval logs not read: {e:#}", m.name()));
                return;
            }
        };
        let template = FioSeries {
            machine: m.name().to_string(),
            device: self.device.clone(),
            started: reporter.seconds(self.spawned),
            guest_clock_offset: offset,
            time_bound: bound,
            ended: reporter.seconds(ended),
            status,
            ..FioSeries::default()
        };
        // The guest's Unix time at the timeline's start.
        let zero = reporter.started_unix() + offset;
        let template =
            FioSeries { exited: report_ms.map(|ms| ms as f64 / 1000.0 - zero), ..template };
        for series in crate::timeline::series_from_logs(&text, p, &template, zero) {
            log::line(&format!(
                "{}: fio's series of {}: {} interval(s), guest clock {offset:+.3} s off the host's, times within {:.3} s",
                m.name(),
                series.label(),
                series.write_iops.len().max(series.read_iops.len()),
                series.time_bound
            ));
            reporter.add_fio_series(series);
        }
    }
}

/// fio running in the background on a guest.
pub struct FioRun {
    process: GuestProcess,
    device: String,
    /// The job's `--runtime`, for the progress line.
    runtime: Option<Duration>,
    /// fio's interval logs, read back onto the timeline once, when it ends.
    logs: std::sync::Mutex<Option<IntervalLogs>>,
    /// Whether [`FioRun::stop`] interrupted it.
    stopped: std::sync::atomic::AtomicBool,
}

impl FioRun {
    /// Starts `job` on `machine` (on `device`, for messages) and returns at once. fio also
    /// writes its IOPS and latency once a second (`--write_iops_log`, `--write_lat_log`,
    /// `--log_avg_msec=1000`, in the guest's `/tmp`): read back when it ends, they become the
    /// scenario's timeline series ([`crate::timeline`]).
    pub async fn start(machine: &Machine, job: &Fio, device: &str) -> Result<FioRun> {
        let (logged, logs) = IntervalLogs::add_to(job, device);
        let process = machine.spawn(&logged.argv()).await?;
        Ok(FioRun {
            process,
            device: device.to_string(),
            runtime: job.runtime(),
            logs: std::sync::Mutex::new(Some(logs)),
            stopped: Default::default(),
        })
    }

    /// Waits for fio to end, at most `timeouts::command()` (far longer than any run time here).
    pub async fn wait(&self) -> Result<FioOutcome> {
        let wait = self.process.wait(timeouts::command());
        let out = match self.runtime {
            Some(runtime) => {
                crate::progress::fio(self.process.machine(), &self.device, runtime, wait).await?
            }
            None => wait.await?,
        };
        let report = FioReport::parse_with_stderr(&out.stdout, &out.stderr).ok();
        let logs = self.logs.lock().unwrap().take();
        if let Some(logs) = logs {
            logs.record(self.process.machine(), out.status, report.as_ref()).await;
        }
        Ok(FioOutcome {
            machine: self.process.machine().name().to_string(),
            device: self.device.clone(),
            status: out.status,
            report,
            stderr: out.stderr,
            stopped: self.stopped.load(std::sync::atomic::Ordering::SeqCst),
        })
    }

    /// Stops fio before its run time is up, as Ctrl-C would: fio ends its jobs, reports what
    /// they did and exits 128, which [`FioOutcome::expect_clean`] then takes as clean when the
    /// report shows no error. For a run meant to last exactly as long as a step takes: start it
    /// with a run time longer than the step can take, stop it when the step is done.
    pub async fn stop(&self) -> Result<FioOutcome> {
        if !self.is_running().await? {
            bail!("fio ended before it was stopped; {}", self.wait().await?.describe());
        }
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.process.interrupt().await?;
        self.wait().await
    }

    /// Whether fio still runs.
    pub async fn is_running(&self) -> Result<bool> {
        Ok(self.process.try_wait().await?.is_none())
    }

    /// Waits until fio has done some I/O (its run is under way, so a removal hits it mid-flight):
    /// `settle` after start, checking it did not end early.
    pub async fn settle(&self, settle: Duration) -> Result<()> {
        tokio::time::sleep(settle).await;
        if !self.is_running().await? {
            let outcome = self.wait().await?;
            bail!("fio ended before the step it was meant to run under; {}", outcome.describe());
        }
        Ok(())
    }
}

/// The guest's wall clock less the host's, in seconds, and the bound of that measure (half the
/// round trip of the agent's `guest-get-time` between two host readings). The machine a
/// guest-mode driver runs on has the driver's own clock: no offset, no error.
async fn guest_clock_offset(m: &Machine) -> Result<(f64, f64)> {
    if m.backend() == crate::machine::Backend::Local {
        return Ok((0.0, 0.0));
    }
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    let qga = m.qga().await?;
    let before = unix();
    let guest_ns =
        tokio::time::timeout(timeouts::request(), qga.execute(qapi::qga::guest_get_time {}))
            .await
            .map_err(|_| {
                anyhow::anyhow!("guest-get-time did not answer within {:?}", timeouts::request())
            })??;
    let after = unix();
    Ok((guest_ns as f64 / 1e9 - (before + after) / 2.0, (after - before) / 2.0))
}

/// Runs `job` to its end on `machine`.
pub async fn run_fio(machine: &Machine, job: &Fio, device: &str) -> Result<FioOutcome> {
    FioRun::start(machine, job, device).await?.wait().await
}

/// No such file or directory.
pub const ENOENT: i32 = 2;

/// The errno in fio's messages: `err=5/...` or `error=Input/output error` style.
fn errno_in_message(message: &str) -> Option<i32> {
    let rest = message.split("err=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: i32, report: Option<&str>, stderr: &str) -> FioOutcome {
        FioOutcome {
            machine: "initiator".into(),
            device: "/dev/nvme1n1".into(),
            status,
            report: report.map(|r| FioReport::parse(r).unwrap()),
            stderr: stderr.into(),
            stopped: false,
        }
    }

    /// fio stopped by SIGINT (`FioRun::stop`), real output of fio 3.33 and 3.38 running the
    /// integrity job on a file (`tools/testdata/capture_fio.sh`): clean only when stopped.
    #[test]
    fn a_stopped_run_is_clean_with_status_128_and_only_then() {
        for text in [
            include_str!("../tools/testdata/fio-3.33_integrity_sigint.stdout"),
            include_str!("../tools/testdata/fio-3.38_integrity_sigint.stdout"),
        ] {
            let mut o = outcome(FIO_INTERRUPTED, Some(text), "");
            let e = o.expect_clean().unwrap_err().to_string();
            assert!(e.contains("exited 128"), "{e}");
            o.stopped = true;
            let report = o.expect_clean().unwrap();
            assert!(report.messages.iter().any(|m| m.contains("terminating on signal 2")));
            o.status = 1;
            assert!(o.expect_clean().is_err(), "a stopped run must still exit 128");
        }
    }

    #[test]
    fn the_integrity_job_writes_randomly_and_verifies() {
        let argv = integrity_job("/dev/nvme1n1", 10).argv();
        for want in [
            "--rw=randwrite",
            "--verify=crc32c",
            "--do_verify=1",
            "--direct=1",
            "--filename=/dev/nvme1n1",
            "--runtime=10",
            "--allow_file_create=0",
        ] {
            assert!(argv.iter().any(|a| a == want), "{want} missing from {argv:?}");
        }
    }

    #[test]
    fn a_run_that_cannot_open_its_file_is_an_error_with_its_errno() {
        let o = outcome(1, None, "fio: pid=0, err=2/file:filesetup.c:805, func=open(/dev/nvme1n1), error=No such file or directory\n");
        let f = o.expect_error().unwrap();
        assert_eq!(f.errno, 2);
        assert!(o.expect_clean().is_err());
    }

    #[test]
    fn a_device_that_is_gone_is_enoent() {
        // fio 3.33 with allow_file_create=0 on a path that does not exist (seen in the VMs).
        let o = outcome(1, None, "fio: file creation disallowed by allow_file_create=0\n");
        assert_eq!(o.expect_error().unwrap().errno, ENOENT);
    }

    #[test]
    fn a_zero_exit_is_not_the_expected_error() {
        let o = outcome(0, None, "");
        assert!(o.expect_error().unwrap_err().to_string().contains("exited 0"));
    }

    #[test]
    fn a_failure_that_names_no_error_is_refused() {
        let o = outcome(1, None, "");
        assert!(o.expect_error().is_err());
    }
}
