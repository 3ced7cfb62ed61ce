//! The VM lifecycle on the machine API: shutdown, reboot, crash and kill, pause and resume, save
//! and restore, live migration to a second QEMU on the same host, a start with extra QEMU
//! arguments, and the per-test logs (the QMP events of each QEMU process and the guest's dmesg).
//!
//! Save/restore is a migration to a file (`migrate file:PATH`, then a new QEMU with
//! `-incoming defer` and `migrate-incoming file:PATH`), not `snapshot-save`/`snapshot-load`:
//! internal snapshots need a qcow2 image to hold the VM state, and the machines have raw disks or
//! none (an initiator's storage is the target, over NVMe-oF). It is what `virsh save` does: the
//! whole machine to a file and back, disks as they are; and it shares the incoming path with live
//! migration.
//!
//! Live migration starts the target QEMU with the machine's current description (the disks and
//! balloon plugged in now) plus `-incoming defer -S`, its own QMP/agent sockets and its own
//! test-network socket pairs. After the migration completes (the source is stopped) the switch
//! ports are moved to the new pairs with their link state, the source quits, and the target is
//! resumed (`cont`): frames never reach a QEMU that is not running the guest. The console object
//! is the machine's, so its lines and waits carry over; the agent in the guest keeps its state
//! (background commands started before the migration are still polled through the new socket).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use super::{Machine, Running};
use crate::log;
use crate::qga::Qga;
use crate::qmp::Qmp;
use crate::timeouts;

/// A machine saved to a file by [`Machine::save_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    /// The state file on the host.
    pub path: PathBuf,
    /// Its size in bytes (0 if it could not be read).
    pub bytes: u64,
}

/// What a live migration took, from the source's `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Milliseconds the guest was stopped.
    pub downtime_ms: i64,
    /// Milliseconds the whole migration took (QEMU's `total-time`; -1 when it did not say).
    pub total_ms: i64,
    /// Bytes of RAM sent (QEMU's `ram.transferred`; -1 when it did not say).
    pub ram_transferred: i64,
}

/// Migration until completion: a whole machine under TCG, with room for a busy guest.
fn migration_timeout() -> Duration {
    Duration::from_secs_f64(120.0 * timeouts::factor())
}

impl Machine {
    /// QEMU's run state (`query-status`).
    pub async fn run_state(&self) -> Result<qapi::qmp::StatusInfo> {
        self.host_only("QEMU's run state (QMP query-status)")?;
        self.qmp().await?.execute(qapi::qmp::query_status {}).await
    }

    /// Pauses the guest (QMP `stop`): waits for the STOP event and checks `query-status` says
    /// paused.
    pub async fn pause(&self) -> Result<()> {
        self.host_only("pause (QMP stop)")?;
        // A paused guest answers no poll: the watches wait for `resume`.
        self.power_action();
        log::event(crate::timeline::EventKind::Power, self.name(), "pause (stop)");
        log::nested(&format!("{}: pausing (stop)", self.name()), async {
            let qmp = self.qmp().await?;
            let mark = qmp.event_count();
            qmp.execute(qapi::qmp::stop {})
                .await
                .map_err(|e| self.error("QMP stop was refused", format!("{e:#}")))?;
            self.wait_event(&qmp, mark, "STOP", timeouts::request()).await?;
            self.expect_run_state(false, "paused").await
        })
        .await
    }

    /// Resumes a paused guest (QMP `cont`): waits for RESUME and checks `query-status` says
    /// running.
    pub async fn resume(&self) -> Result<()> {
        self.host_only("resume (QMP cont)")?;
        log::event(crate::timeline::EventKind::Power, self.name(), "resume (cont)");
        log::nested(&format!("{}: resuming (cont)", self.name()), async {
            let qmp = self.qmp().await?;
            let mark = qmp.event_count();
            qmp.execute(qapi::qmp::cont {})
                .await
                .map_err(|e| self.error("QMP cont was refused", format!("{e:#}")))?;
            self.wait_event(&qmp, mark, "RESUME", timeouts::request()).await?;
            self.expect_run_state(true, "running").await?;
            self.inner.power.steady();
            Ok(())
        })
        .await
    }

    async fn expect_run_state(&self, running: bool, status: &str) -> Result<()> {
        let s = self.run_state().await?;
        let got = serde_json::to_value(s.status)?;
        if s.running != running || got != json!(status) {
            return Err(self.error(
                format!("expected query-status {status} (running: {running})"),
                format!("it says {got} (running: {})", s.running),
            ));
        }
        Ok(())
    }

    pub(super) async fn wait_event(
        &self,
        qmp: &Qmp,
        mark: usize,
        name: &str,
        timeout: Duration,
    ) -> Result<crate::qmp::Event> {
        let started = Instant::now();
        qmp.wait_for_event(mark, timeout, |e| e.name == name).await.map_err(|e| {
            let seen: Vec<String> = qmp.events_since(mark).iter().map(|e| e.name.clone()).collect();
            self.timeout_error(
                format!("waiting for the QMP event {name}"),
                format!("{e:#}; events since: {seen:?}"),
                started.elapsed(),
            )
        })
    }

    /// Starts the machine with `extra` QEMU arguments after its own (a second balloon, say); for
    /// what QEMU must refuse, the error carries QEMU's stderr.
    pub async fn start_with_args(&self, extra: &[String]) -> Result<()> {
        self.host_only("a start with extra QEMU arguments")?;
        let mut slot = self.running_slot().write().await;
        if slot.as_ref().is_some_and(|r| r.process.exited().is_none()) {
            return Err(self.error("the machine runs already", "shut it down first"));
        }
        self.power_action();
        let mut spec = self.qemu_spec();
        spec.extra_args.extend(extra.iter().cloned());
        *slot = Some(self.launch(&spec).await?);
        Ok(())
    }

    /// Saves the whole machine to a file (migration to `file:`) and ends its QEMU; the machine
    /// is down until [`Machine::restore_state`].
    pub async fn save_state(&self) -> Result<SavedState> {
        self.host_only("save_state (QEMU's migration to a file)")?;
        let path = self.dir().join(format!("saved-{}.state", self.next_generation()));
        self.power_action();
        log::event(crate::timeline::EventKind::Power, self.name(), "save state");
        log::nested(&format!("{}: saving the machine to {}", self.name(), path.display()), async {
            let mut slot = self.running_slot().write().await;
            let qmp = self.alive(&slot)?.qmp.clone();
            enable_migration_events(&qmp)
                .await
                .map_err(|e| self.error("enabling migration events", format!("{e:#}")))?;
            self.migrate_to_file(&qmp, &path, "saving").await?;
            // The source stops once the state is written (postmigrate).
            let status = qmp.execute(qapi::qmp::query_status {}).await?;
            if status.running {
                return Err(self.error(
                    "the machine still runs after its state was saved",
                    format!("{:?}", status.status),
                ));
            }
            let r = slot.take().expect("alive above");
            self.quit_process(r).await?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            log::line(&format!("{}: saved {:.1} MiB", self.name(), bytes as f64 / 1048576.0));
            Ok(SavedState { path: path.clone(), bytes })
        })
        .await
    }

    /// Starts a new QEMU from a saved state (`-incoming defer`, `migrate-incoming file:`),
    /// resumes it and waits until its agent answers.
    pub async fn restore_state(&self, saved: &SavedState) -> Result<()> {
        self.host_only("restore_state (a QEMU started from a saved state)")?;
        self.power_action();
        log::event(crate::timeline::EventKind::Power, self.name(), "restore state");
        log::nested(
            &format!("{}: restoring the machine from {}", self.name(), saved.path.display()),
            async {
                {
                    let mut slot = self.running_slot().write().await;
                    if slot.as_ref().is_some_and(|r| r.process.exited().is_none()) {
                        return Err(self.error(
                            "cannot restore a running machine",
                            "save it (or shut it down) first",
                        ));
                    }
                    let mut spec = self.qemu_spec();
                    spec.extra_args.extend(["-incoming", "defer", "-S"].map(String::from));
                    let dest = self.launch(&spec).await?;
                    let uri = format!("file:{}", saved.path.display());
                    if let Err(e) = self.incoming(&dest, &uri, "restoring").await {
                        let _ = dest.process.kill().await;
                        return Err(e);
                    }
                    let mark = dest.qmp.event_count();
                    dest.qmp.execute(qapi::qmp::cont {}).await.map_err(|e| {
                        self.error("QMP cont after restore was refused", format!("{e:#}"))
                    })?;
                    self.wait_event(&dest.qmp, mark, "RESUME", timeouts::request()).await?;
                    *slot = Some(dest);
                }
                self.wait_for_agent().await
            },
        )
        .await
    }

    /// Live-migrates the machine to a new QEMU on this host over a unix socket; the handle
    /// follows it (QMP, agent, console, test-network links, disks, balloon). On failure the
    /// source keeps running and the target is gone.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        self.host_only("live migration (a second QEMU)")?;
        let generation = self.next_generation();
        self.power_action();
        log::event(
            crate::timeline::EventKind::Power,
            self.name(),
            &format!("live migration (generation {generation})"),
        );
        log::nested(&format!("{}: live migration (generation {generation})", self.name()), async {
            let report = {
                let mut slot = self.running_slot().write().await;
                let src_qmp = self.alive(&slot)?.qmp.clone();
                let dir = self.dir().join(format!("gen{generation}"));
                std::fs::create_dir_all(&dir)?;
                let mut spec = self.qemu_spec();
                spec.qmp_socket = dir.join("qmp.sock");
                spec.qga_socket = dir.join("qga.sock");
                spec.extra_args.extend(["-incoming", "defer", "-S"].map(String::from));
                // The target's NICs get socket pairs of their own, plugged in at switchover.
                let (dest, ports) = self.launch_unplugged(&spec).await?;
                let socket = dir.join("migrate.sock");
                let uri = format!("unix:{}", socket.display());
                let outgoing = async {
                    enable_migration_events(&src_qmp).await?;
                    // Over a local socket the default bandwidth cap (128 MiB/s) only slows it.
                    src_qmp
                        .execute_raw("migrate-set-parameters", json!({"max-bandwidth": 8u64 << 30}))
                        .await?;
                    let mark = src_qmp.event_count();
                    src_qmp
                        .execute(qapi::qmp::migrate {
                            uri: Some(uri.clone()),
                            channels: None,
                            detach: None,
                            resume: None,
                        })
                        .await?;
                    self.wait_migration(&src_qmp, mark, "migrating").await
                };
                // The target listens before the source connects; both must complete.
                let result = async {
                    let incoming = self.incoming(&dest, &uri, "receiving");
                    let (i, o) = futures::future::join(incoming, async {
                        wait_for_path(&socket, timeouts::request()).await?;
                        outgoing.await
                    })
                    .await;
                    i.and(o)
                }
                .await;
                if let Err(e) = result {
                    let _ = dest.process.kill().await;
                    return Err(e.context(format!(
                        "{}: live migration failed; the source keeps running",
                        self.name()
                    )));
                }
                let info =
                    src_qmp.execute_raw("query-migrate", json!({})).await.unwrap_or(Value::Null);
                let report = MigrationReport {
                    downtime_ms: info["downtime"].as_i64().unwrap_or(-1),
                    total_ms: info["total-time"].as_i64().unwrap_or(-1),
                    ram_transferred: info["ram"]["transferred"].as_i64().unwrap_or(-1),
                };
                // The source is stopped now: move the links, end it, run the target.
                self.plug(ports);
                let src = slot.take().expect("alive above");
                self.quit_process(src).await?;
                // The source's exit closed the console the target shares.
                self.console().reopen();
                let mark = dest.qmp.event_count();
                dest.qmp.execute(qapi::qmp::cont {}).await.map_err(|e| {
                    self.error("QMP cont on the migration target was refused", format!("{e:#}"))
                })?;
                self.wait_event(&dest.qmp, mark, "RESUME", timeouts::request()).await?;
                let _ = std::fs::write(self.dir().join("qemu.pid"), dest.process.pid.to_string());
                *slot = Some(dest);
                report
            };
            self.wait_for_agent().await?;
            log::line(&format!(
                "{}: migrated in {} ms (downtime {} ms, {:.1} MiB sent)",
                self.name(),
                report.total_ms,
                report.downtime_ms,
                report.ram_transferred as f64 / 1048576.0
            ));
            Ok(report)
        })
        .await
    }

    fn alive<'a>(&self, slot: &'a Option<Running>) -> Result<&'a Running> {
        match slot.as_ref() {
            Some(r) if r.process.exited().is_none() => Ok(r),
            _ => Err(self.error("the machine is not running", "start it first")),
        }
    }

    /// Sets up the incoming side of a migration on `dest` and waits for it to complete; the
    /// guest is then paused (`-S`).
    pub(super) async fn incoming(&self, dest: &Running, uri: &str, what: &str) -> Result<()> {
        enable_migration_events(&dest.qmp)
            .await
            .map_err(|e| self.error("enabling migration events on the target", format!("{e:#}")))?;
        let mark = dest.qmp.event_count();
        dest.qmp
            .execute(qapi::qmp::migrate_incoming {
                uri: Some(uri.to_string()),
                channels: None,
                exit_on_error: None,
            })
            .await
            .map_err(|e| {
                self.error(
                    format!("QMP migrate-incoming {uri} was refused"),
                    format!("{e:#}\nQEMU stderr:\n{}", dest.process.stderr()),
                )
            })?;
        self.wait_migration(&dest.qmp, mark, what)
            .await
            .map_err(|e| anyhow!("{e:#}\ntarget QEMU stderr:\n{}", dest.process.stderr()))?;
        let status = dest.qmp.execute(qapi::qmp::query_status {}).await?;
        if status.running {
            return Err(self.error(
                "the migration target runs before it was resumed",
                format!("{:?}", status.status),
            ));
        }
        Ok(())
    }

    /// Waits for the MIGRATION event that ends a migration; anything but `completed` is an
    /// error with QEMU's reason.
    /// Writes the machine's state to `path` (QMP `migrate` to `file:`) and waits until the
    /// migration completes; migration events must be on. Shared by save/restore and snapshots.
    pub(super) async fn migrate_to_file(&self, qmp: &Qmp, path: &Path, what: &str) -> Result<()> {
        let mark = qmp.event_count();
        let uri = format!("file:{}", path.display());
        qmp.execute(qapi::qmp::migrate {
            uri: Some(uri.clone()),
            channels: None,
            detach: None,
            resume: None,
        })
        .await
        .map_err(|e| self.error(format!("QMP migrate to {uri} was refused"), format!("{e:#}")))?;
        self.wait_migration(qmp, mark, what).await
    }

    pub(super) async fn wait_migration(&self, qmp: &Qmp, mark: usize, what: &str) -> Result<()> {
        let started = Instant::now();
        let end = qmp
            .wait_for_event(mark, migration_timeout(), |e| {
                e.name == "MIGRATION"
                    && matches!(
                        e.data["status"].as_str(),
                        Some("completed" | "failed" | "cancelled")
                    )
            })
            .await;
        let info = qmp.execute_raw("query-migrate", json!({})).await.unwrap_or(Value::Null);
        match end {
            Ok(e) if e.data["status"] == "completed" => {
                log::line(&format!(
                    "{}: {what}: migration completed after {:.2} s",
                    self.name(),
                    started.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Ok(e) => Err(self.error(
                format!("{what}: the migration ended {}", e.data["status"]),
                format!("query-migrate: {info}"),
            )),
            Err(e) => Err(self.timeout_error(
                format!("{what}: waiting for the migration to complete"),
                format!("{e:#}; query-migrate: {info}"),
                started.elapsed(),
            )),
        }
    }

    /// Ends a QEMU process that has nothing left to do (QMP `quit`, then a kill).
    async fn quit_process(&self, r: Running) -> Result<()> {
        let _ = r.qmp.execute(qapi::qmp::quit {}).await;
        if r.process.wait(timeouts::quit()).await.is_err() {
            let _ = r.process.kill().await;
        }
        Ok(())
    }

    /// Keeps the guest's whole kernel log (`dmesg`, boot messages the quiet console left out
    /// included) as `<machine>.dmesg` among the run's logs; a machine that is down keeps none.
    pub async fn save_dmesg(&self) -> Result<PathBuf> {
        let text = self.execute_with_timeout("dmesg", timeouts::request()).await?.stdout;
        self.keep_dmesg(&text)
    }

    /// Keeps `text`, the guest's dmesg just read, as [`Machine::save_dmesg`] does.
    pub(crate) fn keep_dmesg(&self, text: &str) -> Result<PathBuf> {
        let path = self.env().log_dir.join(format!("{}.dmesg", self.name()));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Machine {
    /// Powers the guest off cleanly: waits for QEMU's SHUTDOWN event (a guest-initiated
    /// poweroff) and for QEMU to exit. `start` boots the machine again.
    pub async fn shutdown(&self) -> Result<()> {
        self.host_only("shutdown (power, QEMU's SHUTDOWN event)")?;
        self.power_action();
        log::event(crate::timeline::EventKind::Power, self.name(), "shutdown");
        log::nested(&format!("{}: shutting down", self.name()), async {
            let qga = self.qga().await?;
            let qmp = self.qmp().await?;
            let mark = qmp.event_count();
            self.fire_and_forget(&qga, "poweroff").await;
            let started = Instant::now();
            let event = qmp
                .wait_for_event(mark, timeouts::shutdown(), |e| e.name == "SHUTDOWN")
                .await
                .map_err(|e| {
                    self.timeout_error(
                        "waiting for the SHUTDOWN event".into(),
                        format!("{e:#}"),
                        started.elapsed(),
                    )
                })?;
            if event.data["guest"] != serde_json::json!(true) {
                return Err(self.error(
                    "the SHUTDOWN was not the guest's poweroff",
                    format!("event data: {}", event.data),
                ));
            }
            self.wait_for_exit(timeouts::shutdown()).await
        })
        .await
    }

    /// Reboots the guest and waits until its agent answers again.
    pub async fn reboot(&self) -> Result<()> {
        self.host_only("reboot (power, through QEMU)")?;
        self.power_action();
        log::event(crate::timeline::EventKind::Power, self.name(), "reboot");
        log::nested(&format!("{}: rebooting", self.name()), async {
            let qmp = self.qmp().await?;
            let qga = self.qga().await?;
            let mark = qmp.event_count();
            self.fire_and_forget(&qga, "reboot").await;
            let started = Instant::now();
            qmp.wait_for_event(mark, timeouts::shutdown(), |e| e.name == "RESET").await.map_err(
                |e| {
                    self.timeout_error(
                        "waiting for the guest to reset".into(),
                        format!("{e:#}"),
                        started.elapsed(),
                    )
                },
            )?;
            self.wait_for_agent().await
        })
        .await
    }

    /// Simulates a sudden power failure: QEMU quits at once. `start` boots the machine again.
    pub async fn crash(&self) -> Result<()> {
        self.host_only("crash (power)")?;
        self.power_action();
        log::event(crate::timeline::EventKind::Power, self.name(), "crash (QMP quit)");
        log::nested(&format!("{}: crashing", self.name()), async {
            let qmp = self.qmp().await?;
            let _ = qmp.execute(qapi::qmp::quit {}).await;
            self.wait_for_exit(timeouts::quit()).await
        })
        .await
    }

    /// Waits until QEMU exits, the guest having powered itself off (a `poweroff` the test ran,
    /// a panic with `panic=1` and no reboot): the NixOS driver's `wait_for_shutdown`, bounded.
    /// A machine that is not running has nothing to wait for. `start` boots it again.
    pub async fn wait_for_shutdown(&self, timeout: Duration) -> Result<()> {
        self.host_only("wait_for_shutdown (QEMU's exit)")?;
        log::nested(&format!("{}: waiting for the machine to power off", self.name()), async {
            let mut running = self.inner.running.write().await;
            let Some(r) = running.as_ref() else { return Ok(()) };
            let mark = r.qmp.event_count();
            match r.process.wait(timeout).await {
                Ok(_) => {
                    *running = None;
                    Ok(())
                }
                Err(e) => {
                    let seen: Vec<String> =
                        r.qmp.events_since(mark).iter().map(|e| e.name.clone()).collect();
                    Err(self.timeout_error(
                        format!("expected the machine to power off within {timeout:?}"),
                        format!("QEMU still runs ({e:#}); QMP events meanwhile: {seen:?}"),
                        timeout,
                    ))
                }
            }
        })
        .await
    }

    /// Sends `command` to QEMU's human monitor (HMP, through QMP's `human-monitor-command`) and
    /// returns its text, its lines ended by `\n`: the NixOS driver's `send_monitor_command`
    /// (`info block`, `info status`, ...). A command HMP does not know answers with its own error text, as HMP does.
    pub async fn send_monitor_command(&self, command: &str) -> Result<String> {
        self.host_only("the human monitor (QMP)")?;
        log::nested(&format!("{}: monitor: {command}", self.name()), async {
            let qmp = self.qmp().await?;
            qmp.execute(qapi::qmp::human_monitor_command {
                command_line: command.to_string(),
                cpu_index: None,
            })
            .await
            // HMP ends its lines with CRLF.
            .map(|text| text.replace("\r\n", "\n"))
            .map_err(|e| {
                self.error(format!("monitor command {command:?} failed"), format!("{e:#}"))
            })
        })
        .await
    }

    /// Waits for the QMP event named `event` (`SHUTDOWN`, `DEVICE_DELETED`, ...) and returns it
    /// as `{"event": NAME, "data": {...}, "timestamp": SECONDS}` (QEMU's event, its timestamp
    /// in seconds since the epoch). Events are read as the NixOS
    /// driver's `wait_for_qmp_event` reads them, from a queue: the first matching event since
    /// the previous `wait_for_qmp_event` of this machine returned (for the first, since the
    /// machine was up: its agent answered, after the driver's own snapshot work; or since QEMU
    /// started, for a process the test started otherwise), so an event that came between the
    /// command that caused it and this call is not lost; the ones skipped over are gone.
    pub async fn wait_for_qmp_event(
        &self,
        event: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        self.host_only("QMP events")?;
        log::nested(&format!("{}: waiting for the QMP event {event}", self.name()), async {
            let qmp = self.qmp().await?;
            let mark = {
                let consumed = self.inner.qmp_events_read.lock().unwrap();
                match &*consumed {
                    Some((q, mark)) if std::ptr::eq(q.as_ptr(), Arc::as_ptr(&qmp)) => *mark,
                    _ => 0,
                }
            };
            let found = self.wait_event(&qmp, mark, event, timeout).await?;
            // Past the one found: the next call reads on from there.
            let index = qmp
                .events_since(mark)
                .iter()
                .position(|e| e.name == found.name)
                .map_or(qmp.event_count(), |i| mark + i + 1);
            *self.inner.qmp_events_read.lock().unwrap() = Some((Arc::downgrade(&qmp), index));
            Ok(serde_json::json!({
                "event": found.name,
                "data": found.data,
                "timestamp": found.timestamp,
            }))
        })
        .await
    }

    /// Starts `wait_for_qmp_event`'s queue of this QEMU process where the machine is up, once:
    /// the events of the driver's own work before (a snapshot's save or restore) are not the
    /// test's.
    pub(super) async fn start_event_queue(&self) {
        let Ok(qmp) = self.qmp().await else { return };
        let mut read = self.inner.qmp_events_read.lock().unwrap();
        if !matches!(&*read, Some((q, _)) if std::ptr::eq(q.as_ptr(), Arc::as_ptr(&qmp))) {
            *read = Some((Arc::downgrade(&qmp), qmp.event_count()));
        }
    }

    /// Ends QEMU at once, without asking the guest (cleanup).
    ///
    /// A guest-mode machine is not this driver's to stop: nothing happens (the local one is the
    /// machine the driver runs on).
    pub async fn kill(&self) {
        if self.backend() != super::Backend::Qemu {
            return;
        }
        self.power_action();
        let running = self.inner.running.write().await.take();
        if let Some(r) = running {
            let _ = r.process.kill().await;
        }
    }

    async fn fire_and_forget(&self, qga: &Qga, cmd: &str) {
        // The agent dies with the guest; the command's answer may never come.
        let _ = qga
            .execute(qapi::qga::guest_exec {
                path: "/bin/sh".into(),
                arg: Some(vec!["-c".into(), cmd.into()]),
                env: None,
                input_data: None,
                capture_output: None,
            })
            .await;
    }

    async fn wait_for_exit(&self, timeout: Duration) -> Result<()> {
        let mut running = self.inner.running.write().await;
        let Some(r) = running.as_ref() else { return Ok(()) };
        match r.process.wait(timeout).await {
            Ok(_) => {
                *running = None;
                Ok(())
            }
            Err(e) => Err(self.timeout_error(
                "waiting for QEMU to exit".into(),
                format!("{e:#}"),
                timeout,
            )),
        }
    }
}

pub(super) async fn enable_migration_events(qmp: &Qmp) -> Result<()> {
    qmp.execute_raw(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )
    .await
    .map(drop)
}

async fn wait_for_path(path: &Path, timeout: Duration) -> Result<()> {
    match crate::poll::until(timeout, timeouts::SOCKET_POLL, |_| async {
        Ok(path.exists().then_some(()))
    })
    .await?
    {
        crate::poll::Polled::Done(()) => Ok(()),
        crate::poll::Polled::TimedOut(_) => {
            Err(anyhow!("{} did not appear within {timeout:?}", path.display()))
        }
    }
}

/// Appends every QMP event of one QEMU process of `machine` to `<machine>.qmp-events.log` among
/// the run's logs (`--out DIR`), one JSON object a line, until the process ends.
pub(super) fn log_qmp_events(machine: &Machine, qmp: &std::sync::Arc<Qmp>, pid: u32) {
    let path = machine.env().log_dir.join(format!("{}.qmp-events.log", machine.name()));
    let qmp = qmp.clone();
    // The scenario's timeline gets each event too, at QEMU's (host) timestamp.
    let (reporter, name) = (machine.env().reporter.clone(), machine.name().to_string());
    tokio::spawn(async move {
        use std::io::Write;
        let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(&path) else {
            return;
        };
        let _ = writeln!(file, "{}", json!({"qemu-pid": pid}));
        let mut mark = 0;
        loop {
            let waited = qmp.wait_for_event(mark, Duration::from_secs(3600), |_| true).await;
            for e in qmp.events_since(mark) {
                let _ = writeln!(
                    file,
                    "{}",
                    json!({"timestamp": e.timestamp, "event": e.name, "data": e.data})
                );
                let text = match &e.data {
                    serde_json::Value::Null => e.name.clone(),
                    data => format!("{} {data}", e.name),
                };
                let kind = crate::timeline::EventKind::Qmp;
                reporter.event_at_unix(e.timestamp, kind, Some(&name), &text);
                mark += 1;
            }
            if waited.is_err() && qmp.closed().is_some() {
                return;
            }
        }
    });
}

/// Keeps each running machine's dmesg among the run's logs (before the machines are stopped),
/// all machines at once.
pub async fn keep_logs(machines: &[Machine]) {
    let keep = |m: &Machine| {
        let m = m.clone();
        async move {
            if !m.is_up().await {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(15), m.save_dmesg()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::line(&format!(
                    "{}: dmesg not kept: {}",
                    m.name(),
                    e.to_string().lines().next().unwrap_or("")
                )),
                Err(_) => log::line(&format!(
                    "{}: dmesg not kept: the agent did not answer within 15 s",
                    m.name()
                )),
            }
        }
    };
    futures::future::join_all(machines.iter().map(keep)).await;
}
