//! The machine a guest-mode driver runs on ([`super::Backend::Local`]): its commands are local
//! processes, its console is the kernel's log.
//!
//! A command is `/bin/sh -c CMD` (or an argv) as the agent would run it: stdin `/dev/null`,
//! stdout and stderr captured, the environment the driver has plus `LC_ALL=C`, `TERM=dumb` and
//! the tag `VMCHECK_EXEC_ID=<pid>-<rand>-<n>` that every process it starts inherits. It is in a
//! process group of its own and dies with the driver (`crate::process::spawn`). It has ended
//! when it has exited and its stdout and stderr are closed (a child it left holding them keeps
//! it running, as the agent's `guest-exec-status` does). A kill (timeout, [`LocalProcess::kill`],
//! or dropping the handle before the end) sends SIGKILL to its group and to every process whose
//! environment holds its tag, reparented ones included, and returns what it printed.
//!
//! The console: `/dev/kmsg` read from its end on a thread of its own, each record pushed as
//! `[seconds.micros] text`, the printk time stamp the watches and a serial console show, so
//! kernel splats on the local machine are found as on a QEMU machine's console. Without
//! permission to read it (not root), the console stays empty and the run says so once.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::io::AsyncReadExt;

use crate::poll::{self, Polled};
use crate::qemu::Console;
use crate::qga::{ExecOutput, ExecTimeout};

/// A command running on the local machine.
pub(crate) struct LocalProcess {
    child: tokio::sync::Mutex<tokio::process::Child>,
    /// Its exit status once seen.
    status: Mutex<Option<std::process::ExitStatus>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Its stdout and stderr not closed yet (each read by a task of its own), and the signal
    /// that one closed.
    open_pipes: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
    /// Its pid (and process group).
    pid: i32,
    tag: String,
    /// Reported as ended (or killed): dropping it then kills nothing.
    done: std::sync::atomic::AtomicBool,
}

impl LocalProcess {
    /// Starts `argv` in the background.
    pub async fn start(argv: &[&str]) -> Result<LocalProcess> {
        let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let tag = crate::qga::exec_tag();
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env("VMCHECK_EXEC_ID", &tag)
            .env("LC_ALL", "C")
            .env("TERM", "dumb")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        let mut child = crate::process::spawn(command).await?;
        let pid = child.id().ok_or_else(|| anyhow!("{program} exited before its pid was read"))?;
        let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let open_pipes =
            Arc::new((std::sync::atomic::AtomicUsize::new(2), tokio::sync::Notify::new()));
        let (out, err) = (child.stdout.take(), child.stderr.take());
        tokio::spawn(read_all(out, stdout.clone(), open_pipes.clone()));
        tokio::spawn(read_all(err, stderr.clone(), open_pipes.clone()));
        Ok(LocalProcess {
            child: tokio::sync::Mutex::new(child),
            status: Mutex::new(None),
            stdout,
            stderr,
            open_pipes,
            pid: pid as i32,
            tag,
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Its output if it has ended (exited, stdout and stderr closed), `None` while it runs.
    pub async fn try_wait(&self) -> Result<Option<ExecOutput>> {
        if self.status.lock().unwrap().is_none() {
            let status = self.child.lock().await.try_wait()?;
            *self.status.lock().unwrap() = status;
        }
        let status = *self.status.lock().unwrap();
        let Some(status) = status else { return Ok(None) };
        if self.open_pipes.0.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Ok(None);
        }
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(self.output(Some(status))))
    }

    /// Waits until it has ended (exited, stdout and stderr closed); its output.
    async fn finished(&self) -> Result<ExecOutput> {
        let status = self.child.lock().await.wait().await?;
        *self.status.lock().unwrap() = Some(status);
        loop {
            let closed = self.open_pipes.1.notified();
            if self.open_pipes.0.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                break;
            }
            closed.await;
        }
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.output(Some(status)))
    }

    /// What it printed so far, with `status` (none: -1).
    fn output(&self, status: Option<std::process::ExitStatus>) -> ExecOutput {
        let signal = status.and_then(|s| s.signal());
        ExecOutput {
            status: match (status.and_then(|s| s.code()), signal) {
                (Some(code), _) => code,
                (None, Some(sig)) => 128 + sig,
                (None, None) => -1,
            },
            signal,
            stdout: String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned(),
        }
    }

    /// Kills it and every process it started; returns what it printed.
    pub async fn kill(&self) -> ExecOutput {
        self.kill_now();
        let polled =
            poll::until(crate::timeouts::reap(), crate::timeouts::REAP_POLL, |_| self.try_wait())
                .await;
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        match polled {
            Ok(Polled::Done(out)) => out,
            // Something still holds its output open: what it printed so far.
            _ => {
                let status = *self.status.lock().unwrap();
                self.output(status)
            }
        }
    }

    /// SIGINT to the process itself (`GuestProcess::interrupt`).
    pub fn interrupt(&self) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(self.pid), Signal::SIGINT)
            .map_err(|e| anyhow!("SIGINT to pid {}: {e}", self.pid))
    }

    /// SIGKILL to its process group and to every process that carries its tag.
    fn kill_now(&self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        for pid in tagged_processes(&self.tag) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        // A background command its caller gave up on (a failed step): nothing of it runs on.
        if !self.done.load(std::sync::atomic::Ordering::Relaxed) {
            self.kill_now();
        }
    }
}

/// Reads `from` to its end into `into`, then counts one pipe of `open` closed.
async fn read_all(
    from: Option<impl tokio::io::AsyncRead + Unpin>,
    into: Arc<Mutex<Vec<u8>>>,
    open: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
) {
    if let Some(mut from) = from {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    }
    open.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    open.1.notify_waiters();
}

/// The pids whose environment holds `VMCHECK_EXEC_ID=tag`.
fn tagged_processes(tag: &str) -> Vec<i32> {
    let want = format!("VMCHECK_EXEC_ID={tag}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        })
        .collect()
}

/// Runs `argv` and waits at most `timeout` for it to end; on a timeout every process it started
/// is killed and the error is an [`ExecTimeout`] with what it printed so far.
pub(crate) async fn exec(argv: &[&str], timeout: Duration) -> Result<ExecOutput> {
    let process = LocalProcess::start(argv).await?;
    match tokio::time::timeout(timeout, process.finished()).await {
        Ok(out) => out,
        Err(_) => {
            let partial = process.kill().await;
            Err(ExecTimeout { timeout, stdout: partial.stdout, stderr: partial.stderr }.into())
        }
    }
}

/// Feeds the kernel's new log records to `console` as `[seconds.micros] text` lines, on a thread
/// of its own, for as long as the console lives. An error if `/dev/kmsg` cannot be read.
pub(crate) fn follow_kernel_log(console: &Arc<Console>) -> Result<()> {
    use std::io::Seek;
    let mut kmsg =
        std::fs::File::open("/dev/kmsg").map_err(|e| anyhow!("opening /dev/kmsg: {e}"))?;
    // Only what comes from now on: the dmesg read at a case's end covers what came before.
    kmsg.seek(std::io::SeekFrom::End(0)).map_err(|e| anyhow!("seeking /dev/kmsg: {e}"))?;
    let console: Weak<Console> = Arc::downgrade(console);
    std::thread::Builder::new()
        .name("vmcheck-kmsg".into())
        .spawn(move || {
            // One record per read.
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match kmsg.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    // Records overwritten before they were read: go on with the next.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let Some(console) = console.upgrade() else { return };
                if let Some(line) = kmsg_line(&String::from_utf8_lossy(&buf[..n])) {
                    console.push_line(line);
                }
            }
        })
        .map_err(|e| anyhow!("starting the kernel log thread: {e}"))?;
    Ok(())
}

/// One `/dev/kmsg` record (`prio,seq,usec,flags;text` and continuation lines) as a console line
/// with the printk time stamp.
fn kmsg_line(record: &str) -> Option<String> {
    let first = record.lines().next()?;
    let (head, text) = first.split_once(';')?;
    let usec: u64 = head.split(',').nth(2)?.parse().ok()?;
    Some(format!("[{:5}.{:06}] {text}", usec / 1_000_000, usec % 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_record_reads_as_a_console_line() {
        let record = "4,1234,12345678,-;WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n SUBSYSTEM=x\n";
        let line = kmsg_line(record).unwrap();
        assert_eq!(line, "[   12.345678] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2");
        assert_eq!(
            crate::watch::kernel_message(&line),
            Some("WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2")
        );
        assert_eq!(kmsg_line("6,1,5,-;a"), Some("[    0.000005] a".to_string()));
        assert_eq!(kmsg_line("garbage"), None);
    }

    #[tokio::test]
    async fn a_local_command_gives_status_output_and_signal_as_the_agent_does() {
        let out =
            exec(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], Duration::from_secs(10))
                .await
                .unwrap();
        assert_eq!(
            (out.status, out.signal, out.stdout.as_str(), out.stderr.as_str()),
            (3, None, "out\n", "err\n")
        );
        let out = exec(&["/bin/sh", "-c", "kill -TERM $$"], Duration::from_secs(10)).await.unwrap();
        assert_eq!((out.status, out.signal), (128 + 15, Some(15)));
        let out =
            exec(&["/bin/sh", "-c", "echo $VMCHECK_EXEC_ID $LC_ALL"], Duration::from_secs(10))
                .await
                .unwrap();
        assert!(out.stdout.starts_with(&format!("{}-", std::process::id())), "{out:?}");
        assert!(out.stdout.trim_end().ends_with(" C"), "{out:?}");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_command_and_what_it_left_behind() {
        // A child that leaves its group and holds stdout: found by its tag.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!(
            "echo before; setsid sh -c 'echo $$ > {}; exec sleep 600' & sleep 600",
            pidfile.display()
        );
        let started = std::time::Instant::now();
        let err = exec(&["/bin/sh", "-c", &cmd], Duration::from_secs(2)).await.unwrap_err();
        let timeout = err.downcast_ref::<ExecTimeout>().expect("an ExecTimeout");
        assert_eq!(timeout.stdout, "before\n");
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(gone_within_5s(pid).await, "the setsid child {pid} still runs");
    }

    /// Whether process `pid` is gone within 5 s.
    async fn gone_within_5s(pid: u32) -> bool {
        let gone = poll::until(
            Duration::from_secs(5),
            poll::Pace::every(Duration::from_millis(50)),
            |_| async move { Ok((!crate::process::is_alive(pid)).then_some(())) },
        )
        .await
        .unwrap();
        matches!(gone, Polled::Done(()))
    }

    #[tokio::test]
    async fn a_background_command_ends_once_its_output_closes_and_a_dropped_one_is_killed() {
        let p = LocalProcess::start(&["/bin/sh", "-c", "sleep 0.3; echo done"]).await.unwrap();
        assert!(p.try_wait().await.unwrap().is_none());
        let out = match poll::until(
            Duration::from_secs(10),
            poll::Pace::every(Duration::from_millis(50)),
            |_| p.try_wait(),
        )
        .await
        .unwrap()
        {
            Polled::Done(out) => out,
            Polled::TimedOut(_) => panic!("it did not end"),
        };
        assert_eq!((out.status, out.stdout.as_str()), (0, "done\n"));

        let p = LocalProcess::start(&["/bin/sleep", "600"]).await.unwrap();
        let pid = p.pid as u32;
        drop(p);
        assert!(gone_within_5s(pid).await, "the dropped command {pid} still runs");
    }
}
