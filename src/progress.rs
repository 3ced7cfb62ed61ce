//! Progress at a terminal: while a long step runs, a live line says what is happening (a
//! machine booting or restoring, fio's elapsed time against its run time with the device's
//! current IOPS, a bounded wait's elapsed time against its bound, a chain's case k of n, one line
//! per running scenario with `--jobs N`). Drawn with indicatif under the log lines.
//!
//! Only when stderr is a terminal and `TERM` is not `dumb` (and `VMCHECK_PROGRESS` is not `0`):
//! otherwise (CI, a pipe, nextest's captured output) nothing here draws anything and the log is
//! the plain lines it always was. Log lines to the terminal go through [`write_stderr`], which
//! lifts the bars while a line is written, so lines and bars do not tear.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bounded wait shows its line only once it has lasted this long (most end within ms).
const SHOW_WAIT_AFTER: Duration = Duration::from_secs(2);

tokio::task_local! {
    /// Set around a step that shows its own line: its inner waits show none.
    static QUIET: bool;
}

/// The bars' owner when progress is drawn: stderr is a terminal, `TERM` is not `dumb`,
/// `VMCHECK_PROGRESS` is not `0`.
fn multi() -> Option<&'static MultiProgress> {
    static MULTI: OnceLock<Option<MultiProgress>> = OnceLock::new();
    MULTI
        .get_or_init(|| {
            let on = std::io::stderr().is_terminal()
                && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
                && std::env::var("VMCHECK_PROGRESS").map_or(true, |v| v != "0");
            on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)))
        })
        .as_ref()
}

/// Writes `text` to stderr in one write, with the bars lifted meanwhile when they are drawn.
pub fn write_stderr(text: &[u8]) {
    let write = || {
        let _ = std::io::stderr().lock().write_all(text);
    };
    match multi() {
        Some(m) => m.suspend(write),
        None => write(),
    }
}

/// A live line; removed when dropped. Does nothing when progress is off.
#[derive(Debug)]
pub struct Line {
    bar: Option<ProgressBar>,
}

impl Drop for Line {
    fn drop(&mut self) {
        if let (Some(bar), Some(m)) = (self.bar.take(), multi()) {
            bar.finish_and_clear();
            m.remove(&bar);
        }
    }
}

impl Line {
    /// Replaces the line's text.
    pub fn set_message(&self, text: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.into());
        }
    }

    /// For a bar: how far along it is, against its length.
    pub fn set_position(&self, done: Duration) {
        if let Some(bar) = &self.bar {
            bar.set_position(done.as_millis() as u64);
        }
    }
}

/// The `[name] ` of the scenario running in this task when scenarios run side by side.
fn prefix() -> String {
    crate::log::current().map(|r| r.prefix().to_string()).unwrap_or_default()
}

fn add(bar: ProgressBar, text: String) -> Line {
    let Some(m) = multi() else { return Line { bar: None } };
    // Added before it draws anything: a bar drawn on its own would leave a stale copy.
    let bar = m.add(bar);
    bar.set_message(text);
    bar.enable_steady_tick(Duration::from_millis(250));
    Line { bar: Some(bar) }
}

/// A spinner with the time so far: `⠙ target: booting 3s`.
pub fn spinner(text: impl Into<String>) -> Line {
    if multi().is_none() {
        return Line { bar: None };
    }
    let style = ProgressStyle::with_template("{prefix}{spinner} {msg} {elapsed}")
        .expect("a valid template");
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
        .with_style(style)
        .with_prefix(prefix());
    add(bar, text.into())
}

/// A bar of time against a bound: `initiator: fio [=====>    ] 7s/15s 812 IOPS`.
pub fn timed(text: impl Into<String>, bound: Duration) -> Line {
    if multi().is_none() {
        return Line { bar: None };
    }
    let bound_text = humantime::format_duration(Duration::from_secs(bound.as_secs())).to_string();
    let style = ProgressStyle::with_template(&format!(
        "{{prefix}}{{spinner}} {{msg}} [{{bar:30}}] {{elapsed}}/{bound_text}"
    ))
    .expect("a valid template")
    .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(
        Some(bound.as_millis().max(1) as u64),
        ProgressDrawTarget::hidden(),
    )
    .with_style(style)
    .with_prefix(prefix());
    add(bar, text.into())
}

/// Runs `work` under a line of its own: its bounded waits show none.
pub async fn quietly<T>(work: impl Future<Output = T>) -> T {
    QUIET.scope(true, work).await
}

/// The line of a bounded wait, shown once it has lasted 2 s (`None` before,
/// or when progress is off, or inside a step with a line of its own).
pub fn wait_line(started: Instant, bound: Duration) -> Option<Line> {
    multi()?;
    if started.elapsed() < SHOW_WAIT_AFTER || QUIET.try_with(|q| *q).unwrap_or(false) {
        return None;
    }
    let line = timed("waiting", bound);
    line.set_position(started.elapsed());
    Some(line)
}

/// Runs `work`, fio on `machine`'s `device` for about `runtime`, under a line with its elapsed
/// time against that run time and the device's current IOPS (completed reads and writes a
/// second, from `/sys/class/block/<dev>/stat` in the guest: fio's own output only reaches the host
/// when it ends). fio's command line and its report are untouched.
pub async fn fio<T>(
    machine: &crate::Machine,
    device: &str,
    runtime: Duration,
    work: impl Future<Output = T>,
) -> T {
    if multi().is_none() {
        return work.await;
    }
    let what = format!("{}: fio on {device}", machine.name());
    let line = timed(what.clone(), runtime);
    let started = Instant::now();
    let stat = stat_files(device);
    // Both polled together: the sampler must not hold `work` up (a request of `work` in flight
    // may hold the agent's client that the sampler needs).
    let sampler = quietly(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last: Option<(u64, Instant)> = None;
        loop {
            tick.tick().await;
            line.set_position(started.elapsed().min(runtime));
            let Some(ios) = completed_ios(machine, &stat).await else { continue };
            let now = Instant::now();
            if let Some((before, at)) = last {
                let secs = now.duration_since(at).as_secs_f64().max(0.001);
                let iops = ios.saturating_sub(before) as f64 / secs;
                line.set_message(format!("{what}: {iops:.0} IOPS"));
            }
            last = Some((ios, now));
        }
    });
    tokio::pin!(sampler);
    let work = quietly(work);
    tokio::pin!(work);
    tokio::select! {
        biased;
        out = &mut work => out,
        never = &mut sampler => never,
    }
}

/// The stat files of a guest block device: its own, and for an NVMe multipath head
/// (`nvme1n1`) its paths' (`nvme1c*n1`), where Linux counts the I/O of a head.
fn stat_files(device: &str) -> String {
    let name = device.rsplit('/').next().unwrap_or_default();
    let mut files = format!("/sys/class/block/{name}/stat");
    let head = name.strip_prefix("nvme").and_then(|r| r.split_once('n'));
    if let Some((subsys, ns)) = head
        .filter(|(s, n)| !s.is_empty() && s.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit()))
    {
        files += &format!(" /sys/class/block/nvme{subsys}c*n{ns}/stat");
    }
    files
}

/// Reads and writes completed on a guest block device so far (fields 1 and 5 of its stat): the
/// device's own count, else (a multipath head that counts nothing) its paths' together.
async fn completed_ios(machine: &crate::Machine, stat_files: &str) -> Option<u64> {
    let cmd = format!("cat {stat_files} 2>/dev/null");
    let out = machine.execute_with_timeout(&cmd, Duration::from_secs(5)).await.ok()?;
    let counts: Vec<u64> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            Some(f.first()? + f.get(4)?)
        })
        .collect();
    match counts.split_first()? {
        (0, paths) => Some(paths.iter().sum()),
        (own, _) => Some(*own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipath_head_is_read_with_its_paths() {
        assert_eq!(
            stat_files("/dev/nvme1n1"),
            "/sys/class/block/nvme1n1/stat /sys/class/block/nvme1c*n1/stat"
        );
        assert_eq!(stat_files("/dev/vdb"), "/sys/class/block/vdb/stat");
        assert_eq!(stat_files("/dev/nvme0n1p1"), "/sys/class/block/nvme0n1p1/stat");
    }

    #[test]
    fn off_without_a_terminal_lines_do_nothing() {
        // Tests run with stderr captured or piped: progress is off, lines are inert.
        if std::io::stderr().is_terminal() {
            return;
        }
        assert!(multi().is_none());
        let line = timed("x", Duration::from_secs(1));
        line.set_message("y");
        assert!(line.bar.is_none());
        assert!(
            wait_line(Instant::now() - Duration::from_secs(10), Duration::from_secs(1)).is_none()
        );
    }
}
