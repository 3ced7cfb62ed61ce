//! fio: a job builder that renders a command line, and a parser of fio's JSON report.
//!
//! Written against fio 3.33 (Debian 12). How fio reports a failed verify, found by corrupting a
//! file written with `--verify=crc32` and reading it back with `--verify_only` (see
//! `testdata/README.md`):
//! - the job's `error` in the JSON is `EILSEQ` (84); fio uses that errno for every verify
//!   mismatch (bad checksum, bad header, bad pattern) and exits with status 1;
//! - with `--continue_on_error=verify` (or `all`) the job also carries `total_err` and
//!   `first_error`, fio keeps going and exits 0, but `error` is still 84;
//! - a job that stops on an error prints `fio: pid=N, err=84/file:io_u.c:2152, func=..., error=...`
//!   on stdout, before the JSON (so stdout is not pure JSON; the parser allows for that);
//! - one stderr line per bad block: `crc32: verify failed at file F offset N, ...` or
//!   `verify: bad magic header 5858, wanted acca at file F offset N, ...`. These are not in the
//!   JSON: to count failed blocks, merge stderr into the output ([`Fio::stderr_to_stdout`]) or
//!   pass it to [`FioReport::parse_with_stderr`].

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::{de_f64, de_u64, extract_json, shell_join, ParseError};

/// fio's errno for a verify mismatch.
pub const EILSEQ: i32 = 84;

/// fio's `rw` (`readwrite`) option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rw {
    /// `read`: sequential reads.
    Read,
    /// `write`: sequential writes.
    Write,
    /// `trim`: sequential trims.
    Trim,
    /// `randread`: random reads.
    RandRead,
    /// `randwrite`: random writes.
    RandWrite,
    /// `randtrim`: random trims.
    RandTrim,
    /// Sequential mixed reads and writes (`rw`).
    ReadWrite,
    /// Random mixed reads and writes (`randrw`).
    RandRw,
    /// `trimwrite`: trim a block, then write it.
    TrimWrite,
}

impl Rw {
    /// fio's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Trim => "trim",
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::RandTrim => "randtrim",
            Rw::ReadWrite => "rw",
            Rw::RandRw => "randrw",
            Rw::TrimWrite => "trimwrite",
        }
    }
}

/// fio's `verify` option: how written blocks are checked when read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// `md5`.
    Md5,
    /// `crc64`.
    Crc64,
    /// `crc32c`.
    Crc32c,
    /// `crc32`.
    Crc32,
    /// `crc16`.
    Crc16,
    /// `crc7`.
    Crc7,
    /// `xxhash`.
    Xxhash,
    /// `sha1`.
    Sha1,
    /// `sha256`.
    Sha256,
    /// `sha512`.
    Sha512,
    /// Only the header (offset, sequence number) is checked.
    Meta,
    /// The data must match `verify_pattern`.
    Pattern,
}

impl Verify {
    /// fio's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verify::Md5 => "md5",
            Verify::Crc64 => "crc64",
            Verify::Crc32c => "crc32c",
            Verify::Crc32 => "crc32",
            Verify::Crc16 => "crc16",
            Verify::Crc7 => "crc7",
            Verify::Xxhash => "xxhash",
            Verify::Sha1 => "sha1",
            Verify::Sha256 => "sha256",
            Verify::Sha512 => "sha512",
            Verify::Meta => "meta",
            Verify::Pattern => "pattern",
        }
    }
}

/// fio's `continue_on_error` option: which errors a job survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContinueOnError {
    /// `none`: stop at the first error.
    None,
    /// `read`: survive read errors.
    Read,
    /// `write`: survive write errors.
    Write,
    /// `io`: survive read and write errors.
    Io,
    /// `verify`: survive verify mismatches.
    Verify,
    /// `all`: survive every error.
    All,
}

impl ContinueOnError {
    /// fio's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContinueOnError::None => "none",
            ContinueOnError::Read => "read",
            ContinueOnError::Write => "write",
            ContinueOnError::Io => "io",
            ContinueOnError::Verify => "verify",
            ContinueOnError::All => "all",
        }
    }
}

/// A fio job, rendered as `fio --key=value ... --output-format=json`.
///
/// Options are rendered in the order they were first set; setting one again replaces its value
/// in place. Options before `--name` are global to fio, those after it belong to the job; either
/// works for a single job. The output format is always JSON because that is what
/// [`FioReport::parse`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fio {
    options: Vec<(String, Option<String>)>,
    stderr_to_stdout: bool,
}

impl Fio {
    /// A job with no options set (fio's defaults, JSON output).
    pub fn new() -> Self {
        Self::default()
    }

    /// The job of mayastor's fio_nvme_basic test: 4 KiB random reads and writes at queue depth 1
    /// through libaio with O_DIRECT, every block checked with crc32, for `runtime_secs` seconds
    /// (or until the device has been covered once, whichever comes first).
    pub fn seed_randrw_verify(filename: &str, runtime_secs: u64) -> Self {
        Fio::new()
            .thread(true)
            .ioengine("libaio")
            .direct(true)
            .bs("4k")
            .iodepth(1)
            .rw(Rw::RandRw)
            .verify(Verify::Crc32)
            .numjobs(1)
            .group_reporting(true)
            .runtime_secs(runtime_secs)
            .name("job")
            .filename(filename)
    }

    /// Set `--key=value`, replacing an earlier value of the same key. `output-format` is ignored:
    /// the report is always JSON.
    pub fn opt(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.set(key, Some(value.to_string()));
        self
    }

    /// Set a bare `--key` (fio's set-only options such as `verify_only`).
    pub fn flag(mut self, key: &str) -> Self {
        self.set(key, None);
        self
    }

    fn set(&mut self, key: &str, value: Option<String>) {
        let key = key.trim_start_matches('-');
        match self.options.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.options.push((key.to_string(), value)),
        }
    }

    fn set_bool(self, key: &str, on: bool) -> Self {
        self.opt(key, u8::from(on))
    }

    /// `--name`: the job's name; options after it belong to the job.
    pub fn name(self, name: &str) -> Self {
        self.opt("name", name)
    }
    /// `--filename`: the file or block device to do I/O on.
    pub fn filename(self, path: &str) -> Self {
        self.opt("filename", path)
    }
    /// `--rw`: the I/O pattern.
    pub fn rw(self, rw: Rw) -> Self {
        self.opt("rw", rw.as_str())
    }
    /// Block size in fio's notation: `4k`, `512`, `1M`.
    pub fn bs(self, bs: &str) -> Self {
        self.opt("bs", bs)
    }
    /// `--iodepth`: I/Os in flight.
    pub fn iodepth(self, depth: u32) -> Self {
        self.opt("iodepth", depth)
    }
    /// `--ioengine`: `libaio`, `io_uring`, `psync`, ...
    pub fn ioengine(self, engine: &str) -> Self {
        self.opt("ioengine", engine)
    }
    /// `--direct`: O_DIRECT, bypassing the page cache.
    pub fn direct(self, on: bool) -> Self {
        self.set_bool("direct", on)
    }
    /// `--numjobs`: clones of the job.
    pub fn numjobs(self, n: u32) -> Self {
        self.opt("numjobs", n)
    }
    /// `--runtime` in seconds.
    pub fn runtime_secs(self, secs: u64) -> Self {
        self.opt("runtime", secs)
    }
    /// Keep going for the whole runtime even after the region has been covered.
    pub fn time_based(self, on: bool) -> Self {
        self.set_bool("time_based", on)
    }
    /// Size of the region to cover in fio's notation: `64M`, `1G`, `50%`.
    pub fn size(self, size: &str) -> Self {
        self.opt("size", size)
    }
    /// `--verify`: check written blocks when they are read back.
    pub fn verify(self, verify: Verify) -> Self {
        self.opt("verify", verify.as_str())
    }
    /// Stop the job at the first verify mismatch.
    pub fn verify_fatal(self, on: bool) -> Self {
        self.set_bool("verify_fatal", on)
    }
    /// Run the verify phase after writing (fio's default when `verify` is set).
    pub fn do_verify(self, on: bool) -> Self {
        self.set_bool("do_verify", on)
    }
    /// Do not write: only read back and check what an earlier run with the same options wrote.
    pub fn verify_only(self, on: bool) -> Self {
        self.set_bool("verify_only", on)
    }
    /// `--thread`: clones are threads, not processes.
    pub fn thread(self, on: bool) -> Self {
        self.set_bool("thread", on)
    }
    /// `--group_reporting`: one entry in `jobs` for all clones.
    pub fn group_reporting(self, on: bool) -> Self {
        self.set_bool("group_reporting", on)
    }
    /// `--continue_on_error`: which errors the job survives.
    pub fn continue_on_error(self, which: ContinueOnError) -> Self {
        self.opt("continue_on_error", which.as_str())
    }

    /// Append ` 2>&1` to [`Fio::command_line`] so that fio's verify messages reach the parser
    /// through a stdout-only channel such as `machine.succeed`.
    pub fn stderr_to_stdout(mut self, on: bool) -> Self {
        self.stderr_to_stdout = on;
        self
    }

    /// The value of `--key`, if set (`Some("")` for a bare flag).
    pub fn option(&self, key: &str) -> Option<&str> {
        let (_, value) = self.options.iter().find(|(k, _)| k == key.trim_start_matches('-'))?;
        Some(value.as_deref().unwrap_or(""))
    }

    /// `--runtime` as a duration, if set in seconds.
    pub fn runtime(&self) -> Option<std::time::Duration> {
        self.option("runtime")?.parse().ok().map(std::time::Duration::from_secs)
    }

    /// The argument vector, starting with `fio`, for running without a shell. A job without a
    /// name gets `--name=job` (fio runs nothing without one).
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec!["fio".to_string()];
        for (key, value) in &self.options {
            if key == "output-format" {
                continue;
            }
            argv.push(match value {
                Some(v) => format!("--{key}={v}"),
                None => format!("--{key}"),
            });
        }
        if !self.options.iter().any(|(k, _)| k == "name") {
            argv.push("--name=job".to_string());
        }
        argv.push("--output-format=json".to_string());
        argv
    }

    /// The command line for a shell, each argument quoted where needed.
    pub fn command_line(&self) -> String {
        let mut line = shell_join(&self.argv());
        if self.stderr_to_stdout {
            line.push_str(" 2>&1");
        }
        line
    }
}

impl fmt::Display for Fio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.command_line())
    }
}

/// One of fio's I/O directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Trims.
    Trim,
}

/// fio's JSON report (`--output-format=json`), plus the lines around it.
#[derive(Clone, Debug, Deserialize)]
pub struct FioReport {
    /// `fio version`.
    #[serde(rename = "fio version", default)]
    pub fio_version: String,
    /// When fio wrote the report, seconds since the epoch.
    #[serde(default)]
    pub timestamp: u64,
    /// The same in milliseconds (the guest's wall clock).
    #[serde(default)]
    pub timestamp_ms: u64,
    /// When fio wrote the report, as text.
    #[serde(default)]
    pub time: String,
    /// `global options`: the options given before `--name`.
    #[serde(rename = "global options", default)]
    pub global_options: BTreeMap<String, String>,
    /// One entry per job (or per group with `group_reporting`).
    pub jobs: Vec<FioJob>,
    /// `disk_util`: the kernel's counters for the disks the jobs touched.
    #[serde(default)]
    pub disk_util: Vec<DiskUtil>,
    /// Lines of the output that are not the JSON (warnings, and stderr if it was merged or
    /// passed to [`FioReport::parse_with_stderr`]).
    #[serde(skip)]
    pub messages: Vec<String>,
}

/// One entry of `jobs`: a job, or a group of jobs with `group_reporting`.
#[derive(Clone, Debug, Deserialize)]
pub struct FioJob {
    /// `jobname`.
    #[serde(rename = "jobname")]
    pub name: String,
    /// The job's reporting group.
    #[serde(default)]
    pub groupid: u32,
    /// The errno the job stopped with (or the first one it survived), 0 when it ran clean.
    #[serde(default)]
    pub error: i32,
    /// `job options`: the job's own options.
    #[serde(rename = "job options", default)]
    pub options: BTreeMap<String, String>,
    /// Reads.
    #[serde(default)]
    pub read: FioDirStats,
    /// Writes.
    #[serde(default)]
    pub write: FioDirStats,
    /// Trims.
    #[serde(default)]
    pub trim: FioDirStats,
    /// fsync/fdatasync latencies, when the job synced.
    #[serde(default)]
    pub sync: Option<FioSyncStats>,
    /// Present with `unified_rw_reporting=both`.
    #[serde(default)]
    pub mixed: Option<FioDirStats>,
    /// Milliseconds.
    #[serde(default, deserialize_with = "de_u64")]
    pub job_runtime: u64,
    /// Percent.
    #[serde(default, deserialize_with = "de_f64")]
    pub usr_cpu: f64,
    /// System CPU, percent.
    #[serde(default, deserialize_with = "de_f64")]
    pub sys_cpu: f64,
    /// Context switches.
    #[serde(default, deserialize_with = "de_u64")]
    pub ctx: u64,
    /// Major page faults.
    #[serde(default, deserialize_with = "de_u64")]
    pub majf: u64,
    /// Minor page faults.
    #[serde(default, deserialize_with = "de_u64")]
    pub minf: u64,
    /// Errors survived; only with `continue_on_error`.
    #[serde(default)]
    pub total_err: Option<u64>,
    /// The first errno survived; only with `continue_on_error`.
    #[serde(default)]
    pub first_error: Option<i32>,
}

/// One direction (read, write, trim) of a job.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct FioDirStats {
    /// Bytes transferred.
    #[serde(deserialize_with = "de_u64")]
    pub io_bytes: u64,
    /// KiB transferred.
    #[serde(deserialize_with = "de_u64")]
    pub io_kbytes: u64,
    /// Bytes per second.
    #[serde(deserialize_with = "de_u64")]
    pub bw_bytes: u64,
    /// KiB per second.
    #[serde(deserialize_with = "de_u64")]
    pub bw: u64,
    /// I/Os per second.
    #[serde(deserialize_with = "de_f64")]
    pub iops: f64,
    /// Milliseconds.
    #[serde(deserialize_with = "de_u64")]
    pub runtime: u64,
    /// I/Os completed.
    #[serde(deserialize_with = "de_u64")]
    pub total_ios: u64,
    /// Short I/Os (fewer bytes than asked).
    #[serde(deserialize_with = "de_u64")]
    pub short_ios: u64,
    /// I/Os dropped (`drop_ios`).
    #[serde(rename = "drop_ios", deserialize_with = "de_u64")]
    pub dropped_ios: u64,
    /// Submission latency.
    pub slat_ns: FioLatency,
    /// Completion latency.
    pub clat_ns: FioLatency,
    /// Total latency (submission and completion).
    pub lat_ns: FioLatency,
    /// KiB per second, from the periodic samples.
    #[serde(deserialize_with = "de_u64")]
    pub bw_min: u64,
    /// Highest bandwidth sample, KiB per second.
    #[serde(deserialize_with = "de_u64")]
    pub bw_max: u64,
    /// Mean of the bandwidth samples, KiB per second.
    #[serde(deserialize_with = "de_f64")]
    pub bw_mean: f64,
    /// Lowest IOPS sample.
    #[serde(deserialize_with = "de_u64")]
    pub iops_min: u64,
    /// Highest IOPS sample.
    #[serde(deserialize_with = "de_u64")]
    pub iops_max: u64,
    /// Mean of the IOPS samples.
    #[serde(deserialize_with = "de_f64")]
    pub iops_mean: f64,
}

/// Latency statistics in nanoseconds.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct FioLatency {
    /// Shortest.
    #[serde(deserialize_with = "de_u64")]
    pub min: u64,
    /// Longest.
    #[serde(deserialize_with = "de_u64")]
    pub max: u64,
    /// Mean.
    #[serde(deserialize_with = "de_f64")]
    pub mean: f64,
    /// Standard deviation.
    #[serde(deserialize_with = "de_f64")]
    pub stddev: f64,
    /// Number of samples.
    #[serde(rename = "N", deserialize_with = "de_u64")]
    pub samples: u64,
    /// fio's percentile keys as it prints them (`"99.000000"`) to nanoseconds. Empty when there
    /// were no samples, and for `lat_ns` unless `lat_percentiles` is set.
    pub percentile: BTreeMap<String, u64>,
}

impl FioLatency {
    /// The latency at percentile `p` (e.g. 99.0, 99.9), if fio reported that one.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        self.percentile.iter().find_map(|(k, v)| {
            let key: f64 = k.parse().ok()?;
            ((key - p).abs() < 1e-6).then_some(*v)
        })
    }

    /// The percentiles as (percent, ns) in numeric order (the map's string keys sort "10" before
    /// "5").
    pub fn percentiles_sorted(&self) -> Vec<(f64, u64)> {
        let mut v: Vec<(f64, u64)> =
            self.percentile.iter().filter_map(|(k, v)| Some((k.parse().ok()?, *v))).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// The `sync` section of a job (fsync/fdatasync latencies).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct FioSyncStats {
    /// Sync calls completed.
    #[serde(deserialize_with = "de_u64")]
    pub total_ios: u64,
    /// Their latency.
    pub lat_ns: FioLatency,
}

/// One entry of `disk_util`: the kernel's counters for a disk fio touched, over the run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DiskUtil {
    /// The disk's kernel name (`nvme0n1`).
    pub name: String,
    /// Reads completed.
    #[serde(deserialize_with = "de_u64")]
    pub read_ios: u64,
    /// Writes completed.
    #[serde(deserialize_with = "de_u64")]
    pub write_ios: u64,
    /// Reads merged.
    #[serde(deserialize_with = "de_u64")]
    pub read_merges: u64,
    /// Writes merged.
    #[serde(deserialize_with = "de_u64")]
    pub write_merges: u64,
    /// Milliseconds.
    #[serde(deserialize_with = "de_u64")]
    pub read_ticks: u64,
    /// Milliseconds spent writing.
    #[serde(deserialize_with = "de_u64")]
    pub write_ticks: u64,
    /// Milliseconds requests spent in the queue.
    #[serde(deserialize_with = "de_u64")]
    pub in_queue: u64,
    /// Percent of the run the disk was busy.
    #[serde(deserialize_with = "de_f64")]
    pub util: f64,
    /// Averages over the slaves of a stacked device (device mapper, md); absent otherwise.
    pub aggr_read_ios: Option<u64>,
    /// Averaged writes of the slaves.
    pub aggr_write_ios: Option<u64>,
    /// Averaged utilization of the slaves, percent.
    pub aggr_util: Option<f64>,
}

impl FioJob {
    /// The statistics of direction `d`.
    pub fn dir(&self, d: Direction) -> &FioDirStats {
        match d {
            Direction::Read => &self.read,
            Direction::Write => &self.write,
            Direction::Trim => &self.trim,
        }
    }

    /// Whether the job saw a verify mismatch (fio's errno for those is `EILSEQ`).
    pub fn verify_failed(&self) -> bool {
        self.error == EILSEQ || self.first_error == Some(EILSEQ)
    }

    /// Errors the job saw: `total_err` when fio counted them (`continue_on_error`), else 1 if
    /// the job stopped on an error.
    pub fn errors(&self) -> u64 {
        self.total_err.unwrap_or(0).max(u64::from(self.error != 0))
    }
}

/// Whether a line of fio's stderr reports one block that failed verification.
pub fn is_verify_failure_line(line: &str) -> bool {
    // "crc32: verify failed at file ..." (and md5:, pattern:, trim:, ...) or
    // "verify: bad magic header ... at file ..." (any header check).
    line.contains(": verify failed at file ") || line.trim_start().starts_with("verify: bad ")
}

impl FioReport {
    /// Parse fio's output: the JSON report, possibly with warnings or stderr lines around it.
    pub fn parse(output: &str) -> Result<Self, ParseError> {
        let got = extract_json::<FioReport>("fio", output)?;
        let mut report = got.value;
        report.messages = got.other_lines;
        Ok(report)
    }

    /// Parse fio's stdout, keeping its stderr's lines as messages (for verify failure counts).
    pub fn parse_with_stderr(stdout: &str, stderr: &str) -> Result<Self, ParseError> {
        let mut report = Self::parse(stdout)?;
        report
            .messages
            .extend(stderr.lines().map(str::trim_end).filter(|l| !l.is_empty()).map(String::from));
        Ok(report)
    }

    /// The messages that report a block failing verification, one per block.
    pub fn verify_failure_messages(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().map(String::as_str).filter(|l| is_verify_failure_line(l))
    }

    /// Blocks that failed verification: the messages when fio's stderr was seen, and at least one
    /// for each job that stopped with a verify error (the JSON alone carries no count).
    pub fn verify_failures(&self) -> u64 {
        let from_messages = self.verify_failure_messages().count() as u64;
        let from_jobs = self.jobs.iter().filter(|j| j.verify_failed()).count() as u64;
        from_messages.max(from_jobs)
    }

    /// Errors over all jobs (see [`FioJob::errors`]).
    pub fn errors(&self) -> u64 {
        self.jobs.iter().map(FioJob::errors).sum()
    }

    /// Operations per second in one direction, over all jobs.
    pub fn iops(&self, d: Direction) -> f64 {
        self.jobs.iter().map(|j| j.dir(d).iops).filter(|v| v.is_finite()).sum()
    }

    /// Bandwidth in KiB/s in one direction, over all jobs.
    pub fn bw_kib(&self, d: Direction) -> u64 {
        self.jobs.iter().map(|j| j.dir(d).bw).sum()
    }

    /// Bytes moved in one direction, over all jobs.
    pub fn io_bytes(&self, d: Direction) -> u64 {
        self.jobs.iter().map(|j| j.dir(d).io_bytes).sum()
    }

    /// What went wrong, one line each: jobs that stopped on an error, and the verify messages.
    /// Empty for a clean run.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.error != 0 || j.first_error.is_some_and(|e| e != 0))
            .map(|j| {
                // `error` is the one the job stopped on; `first_error` one it carried on over.
                let errno = Some(j.error).filter(|e| *e != 0).or(j.first_error).unwrap_or(0);
                let what = match errno {
                    EILSEQ => "verify failed",
                    _ => "I/O error",
                };
                format!(
                    "fio job {}: {what}: error {errno} ({}), {} error(s)",
                    j.name,
                    errno_text(errno),
                    j.errors()
                )
            })
            .collect();
        out.extend(self.verify_failure_messages().map(|m| format!("fio: {m}")));
        out
    }

    /// One line for the log, e.g.
    /// `fio job: read 215 IOPS 860 KiB/s, write 222 IOPS 891 KiB/s, errors 0, verify failures 0`.
    pub fn summary_line(&self) -> String {
        let who = match self.jobs.as_slice() {
            [one] => format!("fio {}", one.name),
            jobs => format!("fio {} jobs", jobs.len()),
        };
        let dir =
            |name: &str, d| format!("{name} {:.0} IOPS {} KiB/s", self.iops(d), self.bw_kib(d));
        let mut parts = vec![dir("read", Direction::Read), dir("write", Direction::Write)];
        if self.io_bytes(Direction::Trim) > 0 {
            parts.push(dir("trim", Direction::Trim));
        }
        format!(
            "{who}: {}, errors {}, verify failures {}",
            parts.join(", "),
            self.errors(),
            self.verify_failures()
        )
    }
}

/// The C library's text for an errno, as fio would print it.
fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    // Drop Rust's " (os error N)" suffix: the caller prints the number already.
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One fio version's captures (`testdata/capture_fio.sh`): Debian 12's 3.33 and 3.38, the
    /// version nixpkgs ships, built from its tag. Every parser test reads both.
    struct Captures {
        version: &'static str,
        seed: &'static str,
        verify_fail_stdout: &'static str,
        verify_fail_stderr: &'static str,
        verify_fail_merged: &'static str,
        continue_stdout: &'static str,
        continue_stderr: &'static str,
        psync_note: &'static str,
        enospc: &'static str,
        two_jobs: &'static str,
    }

    macro_rules! captures {
        ($v:literal) => {
            Captures {
                version: concat!("fio-", $v),
                seed: include_str!(concat!("testdata/fio-", $v, "_randrw_verify_libaio.json")),
                verify_fail_stdout: include_str!(concat!(
                    "testdata/fio-",
                    $v,
                    "_verify_only_crc_fail.stdout"
                )),
                verify_fail_stderr: include_str!(concat!(
                    "testdata/fio-",
                    $v,
                    "_verify_only_crc_fail.stderr"
                )),
                verify_fail_merged: include_str!(concat!(
                    "testdata/fio-",
                    $v,
                    "_verify_only_crc_fail_merged.txt"
                )),
                continue_stdout: include_str!(concat!(
                    "testdata/fio-",
                    $v,
                    "_verify_continue_on_error.json"
                )),
                continue_stderr: include_str!(concat!(
                    "testdata/fio-",
                    $v,
                    "_verify_continue_on_error.stderr"
                )),
                psync_note: include_str!(concat!(
                    "testdata/fio-",
                    $v,
                    "_psync_iodepth_note.stdout"
                )),
                enospc: include_str!(concat!("testdata/fio-", $v, "_write_dev_full_enospc.stdout")),
                two_jobs: include_str!(concat!("testdata/fio-", $v, "_two_jobs.json")),
            }
        };
    }

    const CAPTURES: [Captures; 2] = [captures!("3.33"), captures!("3.38")];
    #[test]
    fn seed_command_line() {
        assert_eq!(
            Fio::seed_randrw_verify("/dev/nvme0n1", 15).command_line(),
            "fio --thread=1 --ioengine=libaio --direct=1 --bs=4k --iodepth=1 --rw=randrw \
             --verify=crc32 --numjobs=1 --group_reporting=1 --runtime=15 --name=job \
             --filename=/dev/nvme0n1 --output-format=json"
        );
    }

    #[test]
    fn builder_quotes_replaces_and_names() {
        let fio = Fio::new()
            .filename("/tmp/a file")
            .rw(Rw::Write)
            .opt("output-format", "normal")
            .rw(Rw::RandWrite)
            .verify(Verify::Crc32c)
            .verify_fatal(true)
            .do_verify(false)
            .continue_on_error(ContinueOnError::Verify)
            .time_based(true)
            .size("64M")
            .flag("--verify_only")
            .stderr_to_stdout(true);
        assert_eq!(
            fio.command_line(),
            "fio '--filename=/tmp/a file' --rw=randwrite --verify=crc32c --verify_fatal=1 \
             --do_verify=0 --continue_on_error=verify --time_based=1 --size=64M --verify_only \
             --name=job --output-format=json 2>&1"
        );
        assert_eq!(fio.argv()[1], "--filename=/tmp/a file");
        assert_eq!(fio.to_string(), fio.command_line());
    }

    #[test]
    fn parses_seed_like_run() {
        for c in &CAPTURES {
            let r = FioReport::parse(c.seed).unwrap();
            assert_eq!(r.fio_version, c.version);
            assert_eq!(r.global_options["verify"], "crc32");
            assert_eq!(r.jobs.len(), 1);
            let job = &r.jobs[0];
            assert_eq!(job.name, "job");
            assert_eq!(job.error, 0);
            assert_eq!(job.options["filename"], "/tmp/fio-seed/disk");
            for d in [Direction::Read, Direction::Write] {
                let s = job.dir(d);
                assert!(
                    s.io_bytes > 0 && s.total_ios > 0 && s.iops > 0.0 && s.bw > 0,
                    "{}: {d:?}",
                    c.version
                );
                assert_eq!(s.io_kbytes, s.io_bytes / 1024);
                assert_eq!(s.io_bytes, s.total_ios * 4096, "{}: {d:?}: 4k blocks", c.version);
                assert!(s.runtime >= 2000, "{}: {d:?} ran for the 2 s runtime", c.version);
                assert_eq!((s.short_ios, s.dropped_ios), (0, 0));
                let p99 = s.clat_ns.percentile(99.0).unwrap();
                assert!(s.clat_ns.min <= p99 && p99 <= s.clat_ns.max.next_power_of_two());
                assert!(s.clat_ns.mean > 0.0 && s.lat_ns.mean >= s.clat_ns.mean);
                assert!(s.clat_ns.percentile.contains_key("99.990000"));
                let sorted = s.clat_ns.percentiles_sorted();
                assert_eq!((sorted.len(), sorted[0].0, sorted[16].0), (17, 1.0, 99.99));
                assert!(sorted.windows(2).all(|w| w[0].1 <= w[1].1), "monotonic");
            }
            assert_eq!(job.trim.io_bytes, 0);
            assert_eq!(job.sync.as_ref().map(|s| s.total_ios), Some(0));
            assert!(!job.verify_failed());
            assert_eq!(r.errors(), 0);
            assert_eq!(r.verify_failures(), 0);
            assert!(r.problems().is_empty());
            assert!(r.messages.is_empty());
            assert_eq!(r.disk_util.len(), 1);
            assert_eq!(r.disk_util[0].name, "vda");
            assert!(r.disk_util[0].read_ios > 0 && r.disk_util[0].aggr_util.is_none());
        }
    }

    #[test]
    fn summary_line_format() {
        for c in &CAPTURES {
            let r = FioReport::parse(c.seed).unwrap();
            let line = r.summary_line();
            let job = &r.jobs[0];
            assert_eq!(
                line,
                format!(
                    "fio job: read {:.0} IOPS {} KiB/s, write {:.0} IOPS {} KiB/s, errors 0, verify failures 0",
                    job.read.iops, job.read.bw, job.write.iops, job.write.bw
                )
            );
        }
    }

    #[test]
    fn verify_failure_from_json_alone() {
        for c in &CAPTURES {
            let r = FioReport::parse(c.verify_fail_stdout).unwrap();
            let job = &r.jobs[0];
            assert_eq!(job.error, EILSEQ);
            assert!(job.verify_failed());
            // Stopped at the corrupted block: blocks 0..=10 were read.
            assert_eq!(job.read.total_ios, 11);
            assert_eq!(r.verify_failures(), 1);
            assert_eq!(r.errors(), 1);
            let problems = r.problems();
            assert_eq!(problems.len(), 1);
            assert!(problems[0].contains("verify failed: error 84"), "{problems:?}");
            assert!(r.summary_line().ends_with("errors 1, verify failures 1"));
        }
    }

    #[test]
    fn verify_failure_with_stderr() {
        for c in &CAPTURES {
            let r =
                FioReport::parse_with_stderr(c.verify_fail_stdout, c.verify_fail_stderr).unwrap();
            let msgs: Vec<_> = r.verify_failure_messages().collect();
            assert_eq!(msgs.len(), 1);
            assert!(msgs[0].starts_with("crc32: verify failed at file "), "{msgs:?}");
            assert_eq!(r.verify_failures(), 1);
            assert!(r.messages.iter().any(|m| m.starts_with("fio: pid=") && m.contains("err=84")));
        }
    }

    #[test]
    fn verify_failure_merged_output() {
        for c in &CAPTURES {
            let r = FioReport::parse(c.verify_fail_merged).unwrap();
            assert_eq!(r.jobs[0].error, EILSEQ);
            assert_eq!(r.verify_failure_messages().count(), 1);
            assert_eq!(r.messages.len(), 4, "{:?}", r.messages);
        }
    }

    #[test]
    fn continue_on_error_counts_every_bad_block() {
        for c in &CAPTURES {
            let r = FioReport::parse_with_stderr(c.continue_stdout, c.continue_stderr).unwrap();
            let job = &r.jobs[0];
            assert_eq!((job.total_err, job.first_error), (Some(2), Some(EILSEQ)));
            // fio carried on over the whole file.
            assert_eq!(job.read.io_bytes, 4 << 20);
            assert_eq!(r.errors(), 2);
            assert_eq!(r.verify_failures(), 2);
            let msgs: Vec<_> = r.verify_failure_messages().collect();
            assert!(msgs[1].starts_with("verify: bad magic header"), "{msgs:?}");
            assert_eq!(r.problems().len(), 3);
        }
    }

    #[test]
    fn io_error_is_not_a_verify_failure() {
        for c in &CAPTURES {
            let r = FioReport::parse(c.enospc).unwrap();
            let job = &r.jobs[0];
            assert_eq!(job.error, 28);
            assert!(!job.verify_failed());
            assert_eq!(r.verify_failures(), 0);
            assert_eq!(r.errors(), 1);
            assert!(r.problems()[0].contains("I/O error: error 28 (No space left on device)"));
        }
    }

    #[test]
    fn warning_before_json() {
        for c in &CAPTURES {
            let r = FioReport::parse(c.psync_note).unwrap();
            assert_eq!(r.messages, vec!["note: both iodepth >= 1 and synchronous I/O engine are selected, queue depth will be capped at 1"]);
            assert_eq!(r.jobs[0].read.io_bytes, 1 << 20);
        }
    }

    #[test]
    fn two_jobs_are_summed() {
        for c in &CAPTURES {
            let r = FioReport::parse(c.two_jobs).unwrap();
            assert_eq!(r.jobs.len(), 2);
            let total: u64 = r.jobs.iter().map(|j| j.write.io_bytes).sum();
            assert_eq!(r.io_bytes(Direction::Write), total);
            assert!(r.summary_line().starts_with("fio 2 jobs: read 0 IOPS 0 KiB/s, write "));
        }
    }

    #[test]
    fn nan_and_negative_fields_do_not_break_parsing() {
        for c in &CAPTURES {
            let text = c.seed.replacen("\"usr_cpu\" : ", "\"usr_cpu\" : -nan, \"x\" : ", 1);
            let r = FioReport::parse(&text).unwrap();
            assert!(r.jobs[0].usr_cpu.is_nan(), "{}", c.version);
        }
    }

    /// The rendered command line runs under a real shell and fio, and its output parses. Needs
    /// fio on the host (`.ci/setup` installs it); writes 16 MiB to a tempdir, 0.8 s.
    #[test]
    fn host_fio_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk with space");
        let fio = Fio::seed_randrw_verify(file.to_str().unwrap(), 1)
            .ioengine("psync")
            .direct(false)
            .iodepth(4)
            .size("16M")
            .stderr_to_stdout(true);
        // In the tempdir: fio leaves its verify state (`local-job-0-verify.state`) where it runs.
        let out = std::process::Command::new("sh")
            .args(["-c", &fio.command_line()])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r = FioReport::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(r.messages.iter().any(|m| m.starts_with("note: both iodepth")));
        assert_eq!(r.jobs[0].options["filename"], file.to_str().unwrap());
        assert!(r.io_bytes(Direction::Read) > 0 && r.io_bytes(Direction::Write) > 0);
        assert!(r.problems().is_empty(), "{:?}", r.problems());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "fio: unrecognized option '--bogus=1'\n",
            "{\n  \"fio version\" : \"fio-3.33\",\n  \"jobs\" : [\n    {\n",
            "{\n  \"fio version\" : \"fio-3.33\"\n}\n",
            "{\n  \"jobs\" : [ { \"jobname\" : 1 } ]\n}\n",
            &CAPTURES[0].seed[..CAPTURES[0].seed.len() / 2],
            &CAPTURES[1].seed[..CAPTURES[1].seed.len() / 2],
        ] {
            let err = FioReport::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("fio: "), "{err}");
            assert!(err.contains("begins: \""), "{err}");
        }
    }
}
