//! The REPL driven by a piped script: the real `vmcheck repl` binary against a real VM (the
//! hidden one-machine scenario `selftest-fail`, whose machine has the target role), checking what
//! it prints, that errors do not end the session, and that no QEMU outlives it.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vmcheck::process::is_alive;

struct Session {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Session {
    /// The QEMU PIDs the driver logged.
    fn qemu_pids(&self) -> Vec<u32> {
        vmcheck::machine::logged_qemu_pids(self.stderr.lines())
    }

    fn assert_no_qemu_survives(&self) {
        let pids = self.qemu_pids();
        assert!(!pids.is_empty(), "no QEMU was started; stderr:\n{}", self.stderr);
        // Killed QEMUs are reaped by init once the driver is gone; give that a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| is_alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let alive: Vec<_> = pids.iter().filter(|p| is_alive(**p)).collect();
        assert!(alive.is_empty(), "QEMU {alive:?} outlived the REPL");
    }
}

/// Runs `vmcheck repl ARGS` with `script` on stdin; kills it after `timeout`.
fn repl(args: &[&str], script: &str, timeout: Duration) -> Session {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .arg("repl")
        .args(args)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the REPL did not end within {timeout:?}; stderr:\n{}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Session { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

#[test]
fn a_piped_script_drives_a_vm_and_quit_stops_it() {
    let script = r#"
machine.start
machine.wait_for_agent
machine: echo hello
machine.execute echo out; echo err >&2; exit 3
frobnicate
machine.frob
qmp machine {"execute":"query-status"}
grpc Health {}
grpc CreateBdev {"uri": "malloc:///m0?size_mb=8"}
grpc ListBdevs
grpc CreateBdev {"url": "x"}
machine.send_monitor_command info status
machine.copy_from_host /proc/self/exe
machine.wait_for_unit multi-user.target
step selftest-fail

machine: echo still-up
quit
machine: echo after-quit
"#;
    let s = repl(&["selftest-fail"], script, Duration::from_secs(300));
    let all = format!("stdout:\n{}\nstderr:\n{}", s.stdout, s.stderr);
    assert!(s.status.success(), "exit status {}; {all}", s.status);
    for want in [
        "hello\n",
        "status 3\nstdout:\nout\nstderr:\nerr\n",
        "\"status\": \"running\"",
        "\"version\":",
        // The proto3 JSON mapping: 64-bit integers print as strings, every field is printed.
        "\"uptime_secs\": \"",
        "\"nvmet\": ",
        "\"name\": \"malloc:///m0?size_mb=8\"",
        "VM status: running\n",
        "still-up",
    ] {
        assert!(s.stdout.contains(want), "stdout lacks {want:?}; {all}");
    }
    for want in [
        "error: unknown command \"frobnicate\"",
        "error: no machine command \"frob\"",
        "CreateBdevRequest.url: unknown field `url`, expected `uri`",
        "error: expected <host file> <guest path>",
        "wait_for_unit needs systemd",
        "next subtest: an assertion that fails",
        "expected 2, the guest said 1",
        "selftest-fail: FAILED (the machines are left as they are)",
    ] {
        assert!(s.stderr.contains(want), "stderr lacks {want:?}; {all}");
    }
    assert!(!s.stdout.contains("after-quit"), "a line after quit ran; {all}");
    assert_eq!(s.qemu_pids().len(), 1, "{all}");
    s.assert_no_qemu_survives();
}

#[test]
fn end_of_input_ends_the_session_and_stops_every_vm() {
    // The default machines (fio_nvme_basic's pair); only the target is started, not waited for.
    let s = repl(&[], "machines\ntarget.start\ninitiator: true\n", Duration::from_secs(120));
    let all = format!("stdout:\n{}\nstderr:\n{}", s.stdout, s.stderr);
    assert!(s.status.success(), "exit status {}; {all}", s.status);
    assert!(s.stdout.contains("target       target     not running"), "{all}");
    assert!(s.stdout.contains("initiator    initiator  not running"), "{all}");
    assert!(s.stderr.contains("initiator: the machine is not running"), "{all}");
    s.assert_no_qemu_survives();
}

#[test]
fn the_nix_config_defines_the_machines_and_bad_arguments_are_usage_errors() {
    // Nothing boots: a configured machine has a start script, so no image is needed either.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"name": "t", "scenario": "selftest-pass", "machines": {"machine": {"start_script": "/bin/false"}}}"#)
        .unwrap();
    let config = config.to_str().unwrap();
    let s = repl(&["--config", config], "machines\n", Duration::from_secs(60));
    assert!(s.status.success(), "exit status {}; stderr:\n{}", s.status, s.stderr);
    assert!(s.stdout.contains("machine      target     not running"), "stdout:\n{}", s.stdout);
    let s = repl(&["fio_nvme_basic", "--config", config], "", Duration::from_secs(60));
    assert_eq!(s.status.code(), Some(2), "stderr:\n{}", s.stderr);
    assert!(
        s.stderr.contains("--config is for scenario selftest-pass, not fio_nvme_basic"),
        "stderr:\n{}",
        s.stderr
    );
    let s = repl(&["no_such_scenario"], "", Duration::from_secs(60));
    assert_eq!(s.status.code(), Some(2), "stderr:\n{}", s.stderr);
    assert!(s.stderr.contains("unknown scenario \"no_such_scenario\""), "stderr:\n{}", s.stderr);
}

/// The terminal side: the REPL runs on a pseudo-terminal of the test's own (its controlling
/// terminal), so rustyline (completion, Ctrl-C, history) is what reads the keys.
#[test]
fn at_a_terminal_tab_completes_ctrl_c_clears_and_history_is_kept() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"name": "t", "scenario": "selftest-pass", "machines": {"machine": {"start_script": "/bin/false"}}}"#)
        .unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    // openpty's descriptors are inheritable: without this the REPL (and anything it starts)
    // would hold the master side open too.
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmcheck"));
    command
        .args(["repl", "--config"])
        .arg(&config)
        .env("VMCHECK_CACHE", dir.path())
        // Nothing boots: no need to probe KVM.
        .env("VMCHECK_ACCEL", "tcg")
        .env("TMPDIR", dir.path())
        .env("TERM", "xterm")
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl are async-signal-safe. A session of its own, with the pty as its
    // controlling terminal, as a login shell would have.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("starting vmcheck repl");
    let child_pid = child.id();
    // Only the child keeps the terminal's slave side open.
    drop(command);
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let mut stdout = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(n @ 1..) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                other => {
                    let _ = tx.send(format!("<<reader ended: {other:?}>>").into_bytes());
                    break;
                }
            }
        }
    });
    // What the terminal showed and no wait has consumed yet. A wait consumes only up to the end
    // of its match: one read often carries a command's output and the next prompt together.
    let mut seen = String::new();
    let mut wait_for = |text: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.contains(text) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(e) => {
                    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{child_pid}/task"))
                        .map(|d| {
                            d.flatten()
                                .map(|t| {
                                    let p = t.path();
                                    format!(
                                        "{} {} {}",
                                        std::fs::read_to_string(p.join("stat"))
                                            .unwrap_or_default()
                                            .trim(),
                                        std::fs::read_to_string(p.join("wchan"))
                                            .unwrap_or_default(),
                                        std::fs::read_to_string(p.join("syscall"))
                                            .unwrap_or_default()
                                            .trim()
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let fds: Vec<String> = (0..3)
                        .map(|fd| {
                            format!(
                                "{fd} -> {:?}",
                                std::fs::read_link(format!("/proc/{child_pid}/fd/{fd}"))
                            )
                        })
                        .collect();
                    let mine: Vec<String> = std::fs::read_dir("/proc/self/fd")
                        .map(|d| {
                            d.flatten()
                                .map(|e| {
                                    format!(
                                        "{:?} -> {:?}",
                                        e.file_name(),
                                        std::fs::read_link(e.path())
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    panic!(
                        "no {text:?} at the terminal ({e}); it shows:\n{seen}\nchild tasks:\n{}\nchild fds {fds:?}\nmy fds {mine:?}",
                        tasks.join("\n")
                    )
                }
            }
        }
        let end = seen.find(text).expect("the loop ends on a match") + text.len();
        let rest = seen.split_off(end);
        std::mem::replace(&mut seen, rest)
    };
    let mut stdin = master;
    let mut keys = |k: &str| stdin.write_all(k.as_bytes()).and_then(|()| stdin.flush()).unwrap();
    // Keys typed before rustyline's raw mode could be flushed: wait for each prompt.
    wait_for("vmcheck> ");
    keys("machines\r");
    wait_for("machine      target     not running");
    wait_for("vmcheck> ");
    keys("bogus\x03");
    wait_for("vmcheck> ");
    keys("he\t");
    // Completion redraws the line: had Ctrl-C not cleared it, it would read "bogushe".
    let shown = wait_for("help");
    assert!(!shown.contains("bogushe"), "Ctrl-C did not clear the line:\n{shown}");
    keys(" quit\r");
    wait_for("stop every machine and leave");
    wait_for("vmcheck> ");
    keys("quit\r");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the REPL did not quit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    let history = std::fs::read_to_string(dir.path().join("repl_history")).unwrap();
    assert!(history.contains("machines\nhelp quit\nquit"), "history:\n{history}");
}
