//! Runs side by side: `vmcheck run --jobs 2` runs two scenarios at once, each on machines,
//! sockets and ports of its own, and two `vmcheck run` processes in one `$TMPDIR` both pass.
//! The driver is the real `vmcheck` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `vmcheck run` with its stderr read on a thread.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn start(args: &[&str], tmpdir: &Path) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .arg("run")
        .args(args)
        .env("TMPDIR", tmpdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Run { child, lines, seen: Vec::new() }
}

impl Run {
    fn log(&self) -> String {
        self.seen.join("\n")
    }

    fn wait_for_line(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(text)) {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => self.seen.push(l),
                Err(_) => {
                    panic!("no log line with {text:?} within {timeout:?}; log:\n{}", self.log())
                }
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            self.seen.extend(self.lines.try_iter());
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("vmcheck did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The run directories logged, by the line's `[name] ` prefix ("" without one).
    fn run_dirs(&self) -> Vec<(String, PathBuf)> {
        self.seen
            .iter()
            .filter_map(|l| {
                let (prefix, rest) = match l.strip_prefix('[') {
                    Some(r) => r.split_once("] ").map(|(n, rest)| (n.to_string(), rest))?,
                    None => (String::new(), l.as_str()),
                };
                let dir = rest.strip_prefix("run directory: ")?.split(" (").next()?;
                Some((prefix, PathBuf::from(dir)))
            })
            .collect()
    }
}

const RUN: Duration = Duration::from_secs(420);

#[test]
fn two_scenarios_run_side_by_side_with_jobs_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let junit = tmp.path().join("junit.xml");
    let args = [
        "--jobs",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        // No order between them (the NVMe-oF and iSCSI scenarios run after fio_nvme_basic).
        "balloon_basic",
        "fio_nvme_basic",
    ];
    let mut run = start(&args, tmp.path());
    let code = run.wait_exit(RUN);
    let log = run.log();
    assert_eq!(code, 0, "log:\n{log}");
    // Each on a run directory of its own, each line told by its scenario's prefix.
    let dirs = run.run_dirs();
    let names: Vec<_> = dirs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{dirs:?}\n{log}");
    assert!(names.contains(&"fio_nvme_basic") && names.contains(&"balloon_basic"), "{dirs:?}");
    assert_ne!(dirs[0].1, dirs[1].1, "one run directory for both");
    for (_, dir) in &dirs {
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
    // They did run side by side: both machines' sets were up before either scenario ended.
    let first_end = run.seen.iter().position(|l| l.contains("machines stopped in")).unwrap();
    let starts: Vec<_> = run
        .seen
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("] start all VMs"))
        .map(|(i, _)| i)
        .collect();
    assert!(starts.len() == 2 && starts[1] < first_end, "not side by side:\n{log}");
    // The summary and JUnit list them in registration order, every subtest ok.
    let summary = &log[log.rfind("summary\n").expect("a summary")..];
    let (fio, balloon) =
        (summary.find("fio_nvme_basic").unwrap(), summary.find("balloon_basic").unwrap());
    assert!(fio < balloon, "{summary}");
    assert!(log.contains("2 passed, 0 failed"), "{log}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    let (fio, balloon) = (
        xml.find(r#"<testsuite name="fio_nvme_basic""#).unwrap(),
        xml.find(r#"<testsuite name="balloon_basic""#).unwrap(),
    );
    assert!(fio < balloon, "{xml}");
    assert!(!xml.contains("<failure") && !xml.contains("<error"), "{xml}");
    assert!(xml.matches("<testcase ").count() >= 10, "{xml}");
    // Each has its own transcript, unprefixed; the run's transcript is the terminal's.
    for name in ["fio_nvme_basic", "balloon_basic"] {
        let text = std::fs::read_to_string(out.join(name).join("transcript.log")).unwrap();
        assert!(text.contains("subtest: ") && !text.contains("] subtest: "), "{name}:\n{text}");
        assert!(text.lines().all(|l| !l.starts_with('[')), "{name}:\n{text}");
        let table: Vec<_> = text
            .lines()
            .skip_while(|l| *l != format!("{name}: subtests"))
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with("total"))
            .collect();
        assert!(
            !table.is_empty() && table.iter().all(|l| l.ends_with("  ok")),
            "{name}: {table:?}"
        );
    }
    let whole = std::fs::read_to_string(out.join("transcript.log")).unwrap();
    assert!(
        whole.contains("[fio_nvme_basic] subtest: ") && whole.contains("[balloon_basic] subtest: "),
        "{whole}"
    );
}

#[test]
fn two_runs_side_by_side_both_pass() {
    // One $TMPDIR for both, so each also meets the other's run directory (alive: left alone)
    // and a dead driver's (removed).
    let tmp = tempfile::tempdir().unwrap();
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let stale = tmp.path().join(format!("vmcheck-run-{dead}-stale"));
    std::fs::create_dir(&stale).unwrap();
    let mut first = start(&["fio_nvme_basic"], tmp.path());
    first.wait_for_line("run directory: ", RUN);
    assert!(!stale.exists(), "a dead driver's run directory is removed");
    // The second starts (and sweeps $TMPDIR) while the first's machines run.
    let mut second = start(&["fio_nvme_basic"], tmp.path());
    second.wait_for_line("run directory: ", RUN);
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first run ended before the second started; log:\n{}",
        first.log()
    );
    let (a, b) = (first.wait_exit(RUN), second.wait_exit(RUN));
    assert_eq!(a, 0, "the first run; log:\n{}", first.log());
    assert_eq!(b, 0, "the second run; log:\n{}", second.log());
    assert_ne!(first.run_dirs(), second.run_dirs());
    for r in [&first, &second] {
        assert!(r.log().contains("1 passed, 0 failed"), "{}", r.log());
    }
}
