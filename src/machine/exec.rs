//! Guest commands and waits on the guest: a command run to its end (`execute`, `succeed`,
//! `fail`) or in the background ([`GuestProcess`]), retried until it succeeds or fails, and the
//! waits for a block device, a file, a listening port, console text and a kernel message.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{is_timeout, Backend, Machine};
use crate::log;
use crate::poll::{self, Polled};
use crate::qga::{ExecOutput, ExecTimeout};
use crate::timeouts;
use crate::tools::shell_quote;

/// The guest's block devices, a line each: name, hidden flag (0 or 1), serial.
const LIST_BLOCK_DEVICES: &str = "for b in /sys/block/*; do s=; h=0; \
    read -r s 2>/dev/null <$b/device/serial || read -r s 2>/dev/null <$b/serial; \
    read -r h 2>/dev/null <$b/hidden; echo ${b##*/} ${h:-0} $s; done";

impl Machine {
    /// Runs `cmd` with `sh -c`; waits at most `timeout`, then kills every process it started
    /// (by the tag they inherit).
    pub async fn execute_with_timeout(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput> {
        Box::pin(self.execute_inner(cmd, timeout)).await
    }

    async fn execute_inner(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput> {
        self.not_peer(&format!("running `{cmd}`"))?;
        let argv = ["/bin/sh", "-c", cmd];
        let ran = match self.backend() {
            Backend::Local => super::local::exec(&argv, timeout).await,
            _ => self.qga().await?.exec(&argv, timeout).await,
        };
        match ran {
            Ok(out) => Ok(out),
            Err(e) => match e.downcast_ref::<ExecTimeout>() {
                Some(t) => Err(self.timeout_error(
                    format!("command did not finish within {timeout:?}: {cmd}"),
                    format!(
                        "it was killed; its output so far:\nstdout:\n{}\nstderr:\n{}",
                        t.stdout, t.stderr
                    ),
                    timeout,
                )),
                None => Err(self.harness_error(format!("could not run: {cmd}"), format!("{e:#}"))),
            },
        }
    }

    /// Starts `argv` in the guest and returns at once: a background command (fio during a
    /// hot-remove, say). Its processes carry a tag, so [`GuestProcess::kill`] ends them all.
    pub async fn spawn(&self, argv: &[String]) -> Result<GuestProcess> {
        let label = crate::tools::shell_join(argv);
        self.not_peer(&format!("starting `{label}`"))?;
        log::line(&format!("{}: spawned: {label}", self.name()));
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let could_not = |e: anyhow::Error| {
            self.harness_error(format!("could not start: {label}"), format!("{e:#}"))
        };
        let exec = match self.backend() {
            Backend::Local => Started::Local(Box::new(
                super::local::LocalProcess::start(&args).await.map_err(could_not)?,
            )),
            _ => Started::Agent(self.qga().await?.exec_start(&args).await.map_err(could_not)?),
        };
        Ok(GuestProcess {
            machine: self.clone(),
            exec,
            label,
            started: Instant::now(),
            done: tokio::sync::Mutex::new(None),
        })
    }

    /// Runs `cmd`; its exit status and output, whatever the status.
    pub async fn execute(&self, cmd: &str) -> Result<ExecOutput> {
        self.execute_with_timeout(cmd, timeouts::command()).await
    }

    /// Runs `cmd`, which must exit 0; returns its stdout.
    pub async fn succeed(&self, cmd: &str) -> Result<String> {
        self.succeed_with_timeout(cmd, timeouts::command()).await
    }

    /// [`Machine::succeed`] with a timeout of its own instead of [`timeouts::command`].
    pub async fn succeed_with_timeout(&self, cmd: &str, timeout: Duration) -> Result<String> {
        log::nested(&format!("{}: must succeed: {cmd}", self.name()), async {
            let out = self.execute_with_timeout(cmd, timeout).await?;
            if out.status != 0 {
                return Err(self.error(
                    format!("command failed with status {}: {cmd}", out.status),
                    format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr),
                ));
            }
            Ok(out.stdout)
        })
        .await
    }

    /// Runs `cmd`, which must exit non-zero; returns its stdout and stderr.
    pub async fn fail(&self, cmd: &str) -> Result<ExecOutput> {
        log::nested(&format!("{}: must fail: {cmd}", self.name()), async {
            let out = self.execute(cmd).await?;
            if out.status == 0 {
                return Err(self.error(
                    format!("command succeeded but should have failed: {cmd}"),
                    format!("stdout:\n{}", out.stdout),
                ));
            }
            Ok(out)
        })
        .await
    }

    /// Retries `cmd` until it exits 0; returns its stdout.
    pub async fn wait_until_succeeds(&self, cmd: &str, timeout: Duration) -> Result<String> {
        let out = self
            .retry_command(&format!("waiting for success: {cmd}"), cmd, timeout, |o| o.status == 0)
            .await?;
        Ok(out.stdout)
    }

    /// Retries `cmd` until it exits non-zero.
    pub async fn wait_until_fails(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput> {
        self.retry_command(&format!("waiting for failure: {cmd}"), cmd, timeout, |o| o.status != 0)
            .await
    }

    async fn retry_command(
        &self,
        label: &str,
        cmd: &str,
        timeout: Duration,
        done: impl Fn(&ExecOutput) -> bool,
    ) -> Result<ExecOutput> {
        log::nested(&format!("{}: {label}", self.name()), async {
            let last = std::sync::Mutex::new(None);
            let polled = poll::until(timeout, timeouts::GUEST_POLL, |left| {
                let (last, done) = (&last, &done);
                async move {
                    match self.execute_with_timeout(cmd, left).await {
                        Ok(out) if done(&out) => Ok(Some(out)),
                        Ok(out) => {
                            *last.lock().unwrap() = Some(out);
                            Ok(None)
                        }
                        // The command itself outlived the time left: that is this wait's end.
                        Err(e) if is_timeout(&e) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
            match polled {
                Polled::Done(out) => Ok(out),
                Polled::TimedOut(waited) => {
                    let detail = match last.into_inner().unwrap() {
                        Some(ExecOutput { status, stdout, stderr, .. }) => {
                            format!("last attempt: status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")
                        }
                        None => "no attempt finished".into(),
                    };
                    Err(self.timeout_error(format!("{label}: gave up after {timeout:?}"), detail, waited))
                }
            }
        })
        .await
    }

    /// The guest's block device (`/dev/...`) of the disk `id` of this machine's spec, found by
    /// its serial: device names depend on probe order and image kind, serials do not.
    pub async fn disk_device(&self, id: &str) -> Result<String> {
        let disk = self.disk(id)?;
        let found = self.wait_for_block_device(&disk.serial, true, timeouts::request()).await?;
        Ok(found.unwrap_or_default())
    }

    /// Waits until the guest shows (`present`) or no longer shows a block device with serial
    /// `serial`; returns its `/dev` node when present.
    pub async fn wait_for_block_device(
        &self,
        serial: &str,
        present: bool,
        timeout: Duration,
    ) -> Result<Option<String>> {
        if self.backend() == Backend::Peer {
            return self.wait_for_peer_disk(serial, present, timeout).await;
        }
        // One line per block device: name, hidden flag, serial (NVMe pads serials with spaces;
        // `read` drops them). The choice is made on the host, by `block_device_by_serial`. Shell
        // builtins only: a `$(cat ..)` per file forked a process each, tens of ms under TCG.
        let what = format!("the block device with serial {serial:?}");
        let shows = "/sys/block shows (name, hidden, serial)";
        self.wait_for_listed_disk(
            &what,
            shows,
            present,
            timeout,
            timeouts::BLOCK_DEVICE_POLL,
            || async {
                let now = self
                    .execute_with_timeout(LIST_BLOCK_DEVICES, timeouts::request())
                    .await?
                    .stdout;
                Ok((block_device_by_serial(&now, serial), now))
            },
        )
        .await
    }

    /// [`Machine::wait_for_block_device`] on a peer: its target daemon lists its disks
    /// (`ListDisks`), as the commands of a QEMU machine's agent would.
    async fn wait_for_peer_disk(
        &self,
        serial: &str,
        present: bool,
        timeout: Duration,
    ) -> Result<Option<String>> {
        use crate::target::proto;
        if !self.forward_ports().contains(&crate::target::GRPC_PORT) {
            self.not_peer(&format!("looking for the disk with serial {serial:?}"))?;
        }
        let client = self.target_client().await?;
        let what = format!("the disk with serial {serial:?}");
        let shows = "the target daemon lists (name, serial)";
        self.wait_for_listed_disk(&what, shows, present, timeout, timeouts::GUEST_POLL, || {
            let mut client = client.clone();
            async move {
                let disks = client
                    .list_disks(proto::ListDisksRequest {})
                    .await
                    .map_err(|e| self.error("ListDisks of the target daemon", format!("{e}")))?
                    .into_inner()
                    .disks;
                let found = crate::target::client::disk_node(&disks, serial);
                let shown: Vec<String> =
                    disks.iter().map(|d| format!("{} {}", d.name, d.serial)).collect();
                Ok((found, shown.join("\n")))
            }
        })
        .await
    }

    /// Polls `list` (the disk it finds, and the listing as text) at `period` until the disk
    /// `what` is there (`present`) or gone; on a timeout the error shows the last listing.
    async fn wait_for_listed_disk<F, Fut>(
        &self,
        what: &str,
        shows: &str,
        present: bool,
        timeout: Duration,
        period: poll::Pace,
        list: F,
    ) -> Result<Option<String>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(Option<String>, String)>>,
    {
        let listing = std::sync::Mutex::new(String::new());
        let polled = poll::until(timeout, period, |_| async {
            let (found, shown) = list().await?;
            *listing.lock().unwrap() = shown;
            Ok((found.is_some() == present).then_some(found))
        })
        .await?;
        match polled {
            Polled::Done(found) => Ok(found),
            Polled::TimedOut(waited) => {
                let how = if present { "to appear" } else { "to go away" };
                Err(self.timeout_error(
                    format!("waited {timeout:?} for {what} {how}"),
                    format!("{shows}:\n{}", listing.into_inner().unwrap()),
                    waited,
                ))
            }
        }
    }

    /// Waits until `path` exists in the guest.
    pub async fn wait_for_file(&self, path: &str, timeout: Duration) -> Result<()> {
        self.wait_until_succeeds(&format!("test -e {}", shell_quote(path)), timeout).await.map(drop)
    }

    /// Waits until something in the guest listens on TCP `port` (read from /proc/net/tcp*).
    pub async fn wait_for_open_port(&self, port: u16, timeout: Duration) -> Result<()> {
        self.wait_until_succeeds(&listening(port), timeout).await.map(drop)
    }

    /// Waits until nothing in the guest listens on TCP `port` any more (the NixOS driver's
    /// `wait_for_closed_port`; read from /proc/net/tcp*, on any address).
    pub async fn wait_for_closed_port(&self, port: u16, timeout: Duration) -> Result<()> {
        self.retry_command(
            &format!("waiting for TCP port {port} to be closed"),
            &listening(port),
            timeout,
            |o| o.status == 1,
        )
        .await
        .map(drop)
    }

    /// Calls `attempt` until it returns `Ok(Some(value))` (then returns the value), an error
    /// (returned at once), or `timeout` has passed: the NixOS driver's `retry`, bounded and
    /// typed, for a condition no other wait covers. `what` says what is awaited; the timeout's
    /// error names it and shows the console. See [`crate::poll::retry`] for code without a
    /// machine.
    pub async fn retry<T, F, Fut>(&self, what: &str, timeout: Duration, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        log::nested(&format!("{}: retrying until {what}", self.name()), async {
            poll::retry(what, timeout, attempt).await.map_err(|e| {
                match e.downcast::<poll::GaveUp>() {
                    Ok(gave_up) => self.timeout_error(
                        format!("expected {what} within {timeout:?}"),
                        gave_up.to_string(),
                        gave_up.waited,
                    ),
                    Err(e) => e,
                }
            })
        })
        .await
    }

    /// Runs `systemctl ARGS` on a NixOS machine (`--config`); its status and output, whatever
    /// the status (the NixOS driver's `systemctl`, without `user`). A machine of vmcheck's
    /// default image has no systemd (busybox init): refused there, with what to use instead.
    pub async fn systemctl(&self, args: &str) -> Result<ExecOutput> {
        self.require_systemd("systemctl")?;
        self.execute(&format!("systemctl {args}")).await
    }

    /// Waits until the systemd unit `unit` is active (the NixOS driver's `wait_for_unit`):
    /// fails at once when it is `failed`, or `inactive` with no job pending (it will not start
    /// by itself), and after `timeout`. NixOS machines only (see [`Machine::systemctl`]).
    pub async fn wait_for_unit(&self, unit: &str, timeout: Duration) -> Result<()> {
        self.require_systemd("wait_for_unit")?;
        let cmd = format!(
            "systemctl --no-pager show {u} --property=ActiveState; \
             systemctl --no-pager list-jobs --full 2>&1",
            u = shell_quote(unit)
        );
        log::nested(&format!("{}: waiting for unit {unit}", self.name()), async {
            let last = std::sync::Mutex::new(String::new());
            let polled = poll::until(timeout, timeouts::GUEST_POLL, |left| {
                let (cmd, last) = (&cmd, &last);
                async move {
                    let out = match self.execute_with_timeout(cmd, left).await {
                        Ok(out) => out,
                        Err(e) if is_timeout(&e) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    *last.lock().unwrap() = out.stdout.clone();
                    match unit_state(unit, &out.stdout) {
                        UnitState::Active => Ok(Some(())),
                        UnitState::Waiting(_) => Ok(None),
                        UnitState::Failed(why) => Err(self.error(
                            format!("expected unit {unit} to become active"),
                            format!("{why}\nsystemctl said:\n{}", out.stdout),
                        )),
                    }
                }
            })
            .await?;
            match polled {
                Polled::Done(()) => Ok(()),
                Polled::TimedOut(waited) => Err(self.timeout_error(
                    format!("expected unit {unit} to become active within {timeout:?}"),
                    format!("systemctl said last:\n{}", last.into_inner().unwrap()),
                    waited,
                )),
            }
        })
        .await
    }

    fn require_systemd(&self, what: &str) -> Result<()> {
        match (&self.inner.boot, self.backend()) {
            (Some(crate::qemu::Boot::StartScript { .. }), _) => Ok(()),
            // Guest mode on a machine booted by systemd (a NixOS test node).
            (None, Backend::Local) if std::path::Path::new("/run/systemd/system").is_dir() => {
                Ok(())
            }
            (None, Backend::Peer) => self.not_peer(what),
            (None, _) => Err(self.error(
                format!("{what} needs systemd, and the machine this driver runs on has none"),
                "no /run/systemd/system: wait for what a service provides instead \
                 (wait_for_open_port, wait_for_file, wait_until_succeeds)",
            )),
            _ => Err(self.error(
                format!("{what} needs systemd, which only NixOS machines (--config) have"),
                "this machine boots vmcheck's default image: busybox init runs the recipe's \
                 services (Recipe::service); wait for what a service provides instead \
                 (wait_for_open_port, wait_for_file, wait_until_succeeds), and read its exits \
                 with recipe::service_exits",
            )),
        }
    }

    /// Waits for console text matching `regex` that no earlier wait consumed; returns the match.
    /// A machine restored from a snapshot prints nothing of its boot: for what the kernel said
    /// at boot, use [`Machine::wait_for_kernel_message`].
    pub async fn wait_for_console_text(&self, regex: &str, timeout: Duration) -> Result<String> {
        let re = regex::Regex::new(regex)
            .with_context(|| format!("bad regular expression {regex:?}"))?;
        self.not_peer("waiting for console text")?;
        let started = Instant::now();
        log::nested(&format!("{}: waiting for console text /{regex}/", self.name()), async {
            self.inner.console.wait_for(&re, timeout).await.map_err(|e| {
                self.timeout_error(
                    format!("waiting for console text /{regex}/"),
                    format!("{e:#}"),
                    started.elapsed(),
                )
            })
        })
        .await
    }

    /// Waits until the guest kernel's log (`dmesg`) has a line matching `regex`; returns the
    /// line. Unlike the console, the kernel's ring buffer survives a restore from a snapshot:
    /// what the kernel said at the boot the state was saved from is still there, while the
    /// console of a restored machine never shows it.
    pub async fn wait_for_kernel_message(&self, regex: &str, timeout: Duration) -> Result<String> {
        let re = regex::Regex::new(regex)
            .with_context(|| format!("bad regular expression {regex:?}"))?;
        log::nested(&format!("{}: waiting for kernel message /{regex}/", self.name()), async {
            let last = std::sync::Mutex::new(String::new());
            let polled = poll::until(timeout, timeouts::GUEST_POLL, |_| {
                let (last, re) = (&last, &re);
                async move {
                    let log = self.succeed_with_timeout("dmesg", timeouts::request()).await?;
                    let found = log.lines().find(|l| re.is_match(l)).map(str::to_string);
                    *last.lock().unwrap() = log;
                    Ok(found)
                }
            })
            .await?;
            match polled {
                Polled::Done(line) => Ok(line),
                Polled::TimedOut(waited) => {
                    let log = last.into_inner().unwrap();
                    let tail: Vec<_> =
                        log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                    Err(self.timeout_error(
                        format!("waited {timeout:?} for a kernel message matching /{regex}/"),
                        format!("the last {} lines of dmesg:\n{}", tail.len(), tail.join("\n")),
                        waited,
                    ))
                }
            }
        })
        .await
    }

    /// Whether the console ever showed text matching `regex`.
    pub fn console_contains(&self, regex: &str) -> Result<bool> {
        let re = regex::Regex::new(regex)
            .with_context(|| format!("bad regular expression {regex:?}"))?;
        self.not_peer("reading the console")?;
        Ok(self.inner.console.contains(&re))
    }
}

/// A shell line that exits 0 when something listens on TCP `port`, 1 when nothing does.
fn listening(port: u16) -> String {
    format!(
        "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == \"0A\" && $2 ~ /:{port:04X}$/ \
         {{ found = 1 }} END {{ exit !found }}'"
    )
}

/// Where a unit stands, from `systemctl show UNIT --property=ActiveState` followed by
/// `systemctl list-jobs`.
#[derive(Debug, PartialEq, Eq)]
enum UnitState {
    Active,
    /// Not yet: its state (activating, or inactive with jobs pending).
    Waiting(String),
    /// It will not become active by itself: why.
    Failed(String),
}

fn unit_state(unit: &str, output: &str) -> UnitState {
    let state = output
        .lines()
        .find_map(|l| l.strip_prefix("ActiveState="))
        .map(str::trim)
        .unwrap_or_default();
    match state {
        "active" => UnitState::Active,
        "failed" => UnitState::Failed(format!("unit {unit} reached state \"failed\"")),
        "inactive" if output.contains("No jobs") => {
            UnitState::Failed(format!("unit {unit} is inactive and there are no pending jobs"))
        }
        other => UnitState::Waiting(other.to_string()),
    }
}

/// The `/dev` node of the block device whose serial is `serial`, from lines of "name hidden
/// serial". Native NVMe multipath (QEMU >= 8 marks its controllers multi-controller capable)
/// adds a hidden per-path node (`nvme0c0n1`) with the same serial as the namespace's block
/// device (`nvme0n1`): hidden nodes cannot be opened, so they are never the answer.
pub fn block_device_by_serial(listing: &str, serial: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (name, hidden) = (words.next()?, words.next()?);
        let found = words.collect::<Vec<_>>().join(" ");
        (hidden == "0" && found == serial).then(|| format!("/dev/{name}"))
    })
}

/// How a background command was started: through a QEMU machine's agent, or as a local process
/// (guest mode).
enum Started {
    Agent(crate::qga::GuestExec),
    Local(Box<super::local::LocalProcess>),
}

/// A command running in the background in a guest ([`Machine::spawn`]).
pub struct GuestProcess {
    machine: Machine,
    exec: Started,
    label: String,
    started: Instant,
    /// Its output once seen: the agent reports an end only once.
    done: tokio::sync::Mutex<Option<ExecOutput>>,
}

impl GuestProcess {
    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The machine it runs on.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Its output if it has ended, `None` while it runs.
    pub async fn try_wait(&self) -> Result<Option<ExecOutput>> {
        let mut done = self.done.lock().await;
        if let (None, Started::Local(process)) = (done.as_ref(), &self.exec) {
            *done = process.try_wait().await.map_err(|e| {
                self.machine
                    .error(format!("asking whether it ended: {}", self.label), format!("{e:#}"))
            })?;
            return Ok(done.clone());
        }
        let Started::Agent(exec) = &self.exec else { return Ok(done.clone()) };
        if done.is_none() {
            // The guest's agent keeps its commands across a migration or a restore; the request
            // goes to the QEMU process of now, under the slot's read lock so a migration does not
            // swap the process while it is in flight (the agent reports an end only once).
            let running = self.machine.inner.running.read().await;
            let qga = match running.as_ref() {
                Some(r) => r.qga.clone(),
                None => {
                    return Err(self.machine.error(
                        format!("asking whether it ended: {}", self.label),
                        "the machine is not running",
                    ))
                }
            };
            *done = qga.exec_status(exec).await.map_err(|e| {
                self.machine
                    .error(format!("asking whether it ended: {}", self.label), format!("{e:#}"))
            })?;
        }
        Ok(done.clone())
    }

    /// Waits at most `timeout` for it to end; on a timeout it is killed and the error shows what
    /// it printed so far.
    pub async fn wait(&self, timeout: Duration) -> Result<ExecOutput> {
        match poll::until(timeout, timeouts::BACKGROUND_POLL, |_| self.try_wait()).await? {
            Polled::Done(out) => {
                log::line(&format!(
                    "{}: ended with status {} after {:.2} s: {}",
                    self.machine.name(),
                    out.status,
                    self.started.elapsed().as_secs_f64(),
                    self.label
                ));
                Ok(out)
            }
            Polled::TimedOut(waited) => {
                let partial = self.kill().await;
                Err(self.machine.timeout_error(
                    format!("background command did not end within {timeout:?}: {}", self.label),
                    format!(
                        "it was killed; its output so far:\nstdout:\n{}\nstderr:\n{}",
                        partial.stdout, partial.stderr
                    ),
                    waited,
                ))
            }
        }
    }

    /// Sends it SIGINT, as Ctrl-C would (a program such as fio then ends its work and reports
    /// it); [`GuestProcess::wait`] collects how it ended.
    pub async fn interrupt(&self) -> Result<()> {
        match &self.exec {
            Started::Agent(exec) => {
                self.machine.succeed(&format!("kill -INT {}", exec.pid)).await.map(drop)
            }
            Started::Local(process) => process.interrupt(),
        }
    }

    /// Kills it and every process it started; returns what it printed.
    pub async fn kill(&self) -> ExecOutput {
        let mut done = self.done.lock().await;
        if let Some(out) = done.as_ref() {
            return out.clone();
        }
        let out = match (&self.exec, self.machine.qga().await) {
            (Started::Local(process), _) => process.kill().await,
            (Started::Agent(exec), Ok(qga)) => qga.exec_kill(exec).await,
            (Started::Agent(_), Err(e)) => ExecOutput {
                status: -1,
                signal: None,
                stdout: String::new(),
                stderr: format!("{e:#}"),
            },
        };
        *done = Some(out.clone());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_found_by_serial_with_and_without_nvme_multipath() {
        // QEMU 7.2: no multipath, one node per namespace.
        let qemu7 = "nvme0n1 0 vmcheck-disk0\nnvme1n1 0 vmcheck-disk1\nvda 0 vmcheck-boot\n";
        assert_eq!(block_device_by_serial(qemu7, "vmcheck-disk0").as_deref(), Some("/dev/nvme0n1"));
        assert_eq!(block_device_by_serial(qemu7, "vmcheck-disk1").as_deref(), Some("/dev/nvme1n1"));
        assert_eq!(block_device_by_serial(qemu7, "vmcheck-boot").as_deref(), Some("/dev/vda"));
        // QEMU 10.0 (real listing of the target VM): the hidden path node sorts first.
        let qemu10 = "nvme0c0n1 1 vmcheck-disk0\nnvme0n1 0 vmcheck-disk0\nnvme1c1n1 1 vmcheck-disk1\nnvme1n1 0 vmcheck-disk1\n";
        assert_eq!(
            block_device_by_serial(qemu10, "vmcheck-disk0").as_deref(),
            Some("/dev/nvme0n1")
        );
        assert_eq!(
            block_device_by_serial(qemu10, "vmcheck-disk1").as_deref(),
            Some("/dev/nvme1n1")
        );
        // Serials are compared whole: a prefix is not a match; no serial, no device.
        assert_eq!(block_device_by_serial(qemu10, "vmcheck-disk"), None);
        assert_eq!(block_device_by_serial("loop0 0\nram0 0\n", "vmcheck-disk0"), None);
    }

    #[test]
    fn a_unit_is_judged_as_the_nixos_driver_does() {
        assert_eq!(unit_state("a", "ActiveState=active\nNo jobs running.\n"), UnitState::Active);
        assert!(matches!(unit_state("a", "ActiveState=failed\n"), UnitState::Failed(_)));
        assert!(matches!(
            unit_state("a", "ActiveState=inactive\nNo jobs running.\n"),
            UnitState::Failed(w) if w.contains("no pending jobs")
        ));
        let jobs = "ActiveState=inactive\nJOB UNIT TYPE STATE\n12 a.service start waiting\n";
        assert_eq!(unit_state("a", jobs), UnitState::Waiting("inactive".into()));
        assert_eq!(
            unit_state("a", "ActiveState=activating\n"),
            UnitState::Waiting("activating".into())
        );
    }

    #[test]
    fn words_are_quoted_for_sh() {
        assert_eq!(shell_quote("/dev/nvme0n1"), "/dev/nvme0n1");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
