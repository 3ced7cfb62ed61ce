//! Process hygiene: however a run ends (success, a failed assertion, a timeout, SIGINT, SIGKILL
//! of the driver), no QEMU of the run survives. The driver is the real `vmcheck` binary running
//! hidden self-test scenarios; its QEMU processes are found by the PIDs it logs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmcheck::process::is_alive;

struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    _tmp: tempfile::TempDir,
}

fn start(scenario: &str) -> Run {
    start_with(scenario, &[])
}

fn start_with(scenario: &str, extra: &[&str]) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .args(["run", scenario])
        .args(extra)
        .env("TMPDIR", tmp.path())
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
    Run { child, lines, seen: Vec::new(), _tmp: tmp }
}

impl Run {
    /// Reads the driver's log until a line contains `text`.
    fn wait_for_line(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "no log line with {text:?} within {timeout:?}; log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.try_iter());
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the driver did not exit within {timeout:?}; log:\n{}",
                    self.seen.join("\n")
                );
            }
            self.seen.extend(self.lines.try_iter());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The QEMU PIDs and the run directory the driver logged.
    fn qemu_pids(&self) -> Vec<u32> {
        vmcheck::machine::logged_qemu_pids(self.seen.iter().map(String::as_str))
    }

    fn run_dir(&self) -> PathBuf {
        let line = self
            .seen
            .iter()
            .find_map(|l| l.strip_prefix("run directory: "))
            .expect("the driver logs its run directory");
        PathBuf::from(line.split(" (").next().unwrap())
    }

    /// Every process of the run is gone within a few seconds.
    fn assert_nothing_left(&self) {
        let pids = self.qemu_pids();
        assert!(!pids.is_empty(), "the run started no QEMU; log:\n{}", self.seen.join("\n"));
        let mut all = pids.clone();
        all.push(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while all.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let alive: Vec<_> = all.iter().filter(|&&p| is_alive(p)).collect();
        assert!(alive.is_empty(), "processes of the run still alive: {alive:?}");
    }
}

const RUN: Duration = Duration::from_secs(240);

fn ends_by_itself(scenario: &str, expected_code: i32, extra: &[&str]) {
    let mut run = start_with(scenario, extra);
    let status = run.wait_exit(RUN);
    assert_eq!(status.code(), Some(expected_code), "log:\n{}", run.seen.join("\n"));
    run.assert_nothing_left();
    assert!(
        !run.run_dir().exists(),
        "the run directory {} is left behind",
        run.run_dir().display()
    );
}

#[test]
fn nothing_survives_success() {
    ends_by_itself("selftest-pass", 0, &[]);
}

#[test]
fn nothing_survives_a_failed_assertion() {
    // The failure also reaches JUnit, as a test case with the assertion's message.
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    ends_by_itself("selftest-fail", 1, &["--junit", junit.to_str().unwrap()]);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"<testsuite name="selftest-fail""#)
            && xml.contains(r#"<testcase name="an assertion that fails""#),
        "{xml}"
    );
    assert!(xml.contains("<failure") && xml.contains("expected 2, the guest said 1"), "{xml}");
}

#[test]
fn a_broken_machine_is_an_error_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let mut run = start_with("selftest-broken-machine", &["--junit", junit.to_str().unwrap()]);
    let status = run.wait_exit(RUN);
    assert_eq!(status.code(), Some(1), "log:\n{}", run.seen.join("\n"));
    run.assert_nothing_left();
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"<testcase name="a command on a machine that is gone""#), "{xml}");
    assert!(
        xml.contains("<error")
            && !xml.contains("<failure")
            && xml.contains("the machine is not running"),
        "{xml}"
    );
    let log = run.seen.join("\n");
    assert!(log.contains("a command on a machine that is gone") && log.contains("ERROR"), "{log}");
    assert!(log.contains("1 of the failed are errors"), "{log}");
}

#[test]
fn nothing_survives_the_global_timeout() {
    let mut run = start_with("selftest-hang", &["--global-timeout", "25"]);
    let status = run.wait_exit(RUN);
    assert_eq!(status.code(), Some(1), "log:\n{}", run.seen.join("\n"));
    let log = run.seen.join("\n");
    assert!(log.contains("the global timeout of 25s ran out"), "{log}");
    run.assert_nothing_left();
    assert!(
        !run.run_dir().exists(),
        "the run directory {} is left behind",
        run.run_dir().display()
    );
}

#[test]
fn nothing_survives_a_timeout() {
    ends_by_itself("selftest-timeout", 1, &[]);
}

fn killed_by(signal: nix::sys::signal::Signal) -> Run {
    let mut run = start("selftest-hang");
    run.wait_for_line("machines up, hanging", RUN);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.child.id() as i32), signal).unwrap();
    run.wait_exit(Duration::from_secs(30));
    run.assert_nothing_left();
    run
}

#[test]
fn nothing_survives_sigint() {
    let run = killed_by(nix::sys::signal::Signal::SIGINT);
    assert!(!run.run_dir().exists(), "the run directory is removed after SIGINT");
}

#[test]
fn nothing_survives_sigkill() {
    // SIGKILL leaves no chance to remove the run directory; the next run removes it.
    killed_by(nix::sys::signal::Signal::SIGKILL);
}

/// The socket a run paused without a terminal logs for `vmcheck repl --attach`.
fn attach_socket(run: &Run) -> PathBuf {
    let line = run.seen.iter().find(|l| l.contains("Attach with")).expect("an attach line");
    let path = line.split("repl --attach ").nth(1).and_then(|r| r.split('`').next()).unwrap();
    PathBuf::from(path)
}

#[test]
fn a_paused_failure_serves_the_repl_to_an_attached_client_then_ends_as_it_would_have() {
    let mut run = start_with("selftest-fail", &["--pause-on-failure"]);
    run.wait_for_line("Attach with", RUN);
    let socket = attach_socket(&run);
    assert!(socket.starts_with(run.run_dir()), "{} outside the run directory", socket.display());
    let mut client = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .args(["repl", "--attach"])
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest computes the number: the line ran there, on the machine the failure left.
    let script =
        "machine: echo attached-$((6*7))\nmachine.send_monitor_command info status\nquit\n";
    std::io::Write::write_all(&mut client.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("expected 2, the guest said 1"), "the failure comes first:\n{text}");
    assert!(text.contains("attached-42"), "{text}");
    assert!(text.contains("VM status: running"), "{text}");
    let status = run.wait_exit(RUN);
    assert_eq!(status.code(), Some(1), "log:\n{}", run.seen.join("\n"));
    run.assert_nothing_left();
    assert!(!run.run_dir().exists(), "the run directory {} is left", run.run_dir().display());
}

#[test]
fn a_paused_failure_nobody_attaches_to_ends_at_the_global_timeout() {
    let mut run = start_with("selftest-fail", &["--pause-on-failure", "--global-timeout", "30"]);
    let status = run.wait_exit(RUN);
    assert_eq!(status.code(), Some(1), "log:\n{}", run.seen.join("\n"));
    let log = run.seen.join("\n");
    assert!(
        log.contains("Attach with") && log.contains("the global timeout of 30s ran out"),
        "{log}"
    );
    assert!(log.contains("at: an assertion that fails"), "the failed subtest is reported:\n{log}");
    run.assert_nothing_left();
    assert!(!run.run_dir().exists(), "the run directory {} is left", run.run_dir().display());
}
