//! The session: the driver and the input, the read-parse-run-print loop, and the commands that
//! need the session itself (`machines`, `grpc`, `console`, `run`, `step`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;

use super::commands::Invocation;
use super::grpc;
use super::input::{Input, Line, Output, Stream};
use super::parse::{parse, Parsed};
use super::PROMPT;
use crate::driver::Driver;
use crate::log;
use crate::machine::Machine;
use crate::scenarios;

pub struct Session<'d> {
    pub(super) driver: &'d Driver,
    pub(super) input: Arc<Input>,
    /// What `run` and `step` choose from.
    pub(super) suite: scenarios::Suite,
    /// Where results and messages go.
    pub(super) out: Output,
}

impl Session<'_> {
    fn print_error(&self, e: &anyhow::Error) {
        self.out.line(Stream::Err, &format!("error: {e:#}"));
    }

    fn machine_names(&self) -> Vec<&str> {
        self.driver.machines().iter().map(Machine::name).collect()
    }

    async fn invoke(&self, p: &Parsed) -> Result<String> {
        let machine = p.machine.as_deref().map(|m| self.driver.machine(m)).transpose()?;
        let invocation = Invocation { machine, text: p.text.clone(), timeout: p.timeout };
        (p.command.run)(self, &invocation).await
    }

    pub(super) async fn list_machines(&self) -> Result<String> {
        let mut s = String::new();
        for m in self.driver.machines() {
            let state = match m.pid().await {
                Some(pid) => format!("running (QEMU pid {pid})"),
                None => "not running".to_string(),
            };
            s += &format!("{:<12} {:<10} {state}\n", m.name(), m.role().as_str());
        }
        Ok(s)
    }

    /// The machine `grpc` talks to: the first that forwards the target daemon's port.
    fn target(&self) -> Result<&Machine> {
        let port = crate::target::GRPC_PORT;
        self.driver
            .machines()
            .iter()
            .find(|m| m.forward_ports().contains(&port))
            .ok_or_else(|| anyhow!("no machine here forwards the target daemon's port {port}"))
    }

    pub(super) async fn grpc(&self, text: &str) -> Result<String> {
        let (method, request) = grpc::request(text)?;
        let mut client = self.target()?.target_client().await?;
        let reply = method
            .call(&mut client, request)
            .await
            .with_context(|| format!("gRPC {}", method.name))?;
        Ok(serde_json::to_string_pretty(&reply)?)
    }

    pub(super) async fn follow_console(&self, c: &Invocation) -> Result<String> {
        let secs = match c.text.trim() {
            "" => None,
            t => Some(
                t.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| anyhow!("console takes seconds, not {t:?}"))?,
            ),
        };
        let machine = c.machine();
        let console = machine.console().clone();
        // Shown here, not also echoed to the log.
        self.driver.reporter().set_echo_console(false);
        for line in console.tail(10) {
            self.out.line(Stream::Out, &format!("{} # {line}", machine.name()));
        }
        // A piped script's next line is a command, not a key: with a timeout, do not read it.
        let read_key = self.input.interactive || secs.is_none();
        let until = match (read_key, secs) {
            (true, Some(s)) => format!("until Enter or for {s} s"),
            (true, None) => "until Enter".to_string(),
            (false, s) => format!("for {} s", s.unwrap_or_default()),
        };
        self.out.line(Stream::Err, &format!("(following {}'s console {until})", machine.name()));
        let key = async {
            if read_key {
                self.input.read_line("").await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let deadline = async {
            match secs {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(key, deadline);
        let (mut at, changed) = console.follow();
        loop {
            let notified = changed.notified();
            let (text, next) = console.text_since(at);
            at = next;
            for line in text.lines() {
                self.out.line(Stream::Out, &format!("{} # {line}", machine.name()));
            }
            tokio::select! {
                _ = notified => {}
                _ = &mut key => break,
                _ = &mut deadline => break,
            }
        }
        Ok(String::new())
    }

    /// `run` and `step`: the scenario's script on these machines, which stay as they are after.
    pub(super) async fn run_scenario(&self, name: &str, step: bool) -> Result<String> {
        let scenario = self.suite.find(name)?;
        let before = self.driver.subtest_results().len();
        let started = std::time::Instant::now();
        struct ClearGate<'a>(&'a Driver);
        impl Drop for ClearGate<'_> {
            fn drop(&mut self) {
                self.0.set_subtest_gate(None);
            }
        }
        let _clear = step.then(|| {
            self.driver.set_subtest_gate(Some(step_gate(self.input.clone(), self.out.clone())));
            ClearGate(self.driver)
        });
        let result = (scenario.script())(self.driver).await;
        let results = self.driver.subtest_results();
        let s = crate::report::summary_table(
            name,
            &results[before.min(results.len())..],
            started.elapsed(),
        );
        match result {
            Ok(()) => Ok(format!("{s}{name}: passed")),
            Err(e) => {
                Err(e.context(format!("{s}{name}: FAILED (the machines are left as they are)")))
            }
        }
    }

    /// The loop: read, parse, run, print, until `quit`, end of input or SIGTERM.
    pub(super) async fn serve(&self) -> Result<()> {
        let names = self.machine_names().join(", ");
        self.out.line(
            Stream::Err,
            &format!("vmcheck repl: machines {names} (not started); `help` lists the commands"),
        );
        self.serve_lines().await
    }

    /// The loop without the banner.
    pub(super) async fn serve_lines(&self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let machines: Vec<String> = self.machine_names().into_iter().map(String::from).collect();
        let names: Vec<&str> = machines.iter().map(String::as_str).collect();
        let reporter = self.driver.reporter();
        loop {
            // Console lines would break into the prompt; `console <m>` shows them on demand.
            reporter.set_echo_console(false);
            let line = tokio::select! {
                l = self.input.read_line(PROMPT) => l,
                // At a terminal Ctrl-C reaches rustyline as a key; a signal here means a piped
                // session is being interrupted.
                _ = int.recv() => Line::Eof,
                _ = term.recv() => Line::Eof,
            };
            let line = match line {
                Line::Text(l) => l,
                Line::Interrupted => continue,
                Line::Eof => break,
            };
            if !self.input.interactive {
                // A piped script's transcript shows which command printed what.
                reporter.line(&format!("{PROMPT}{line}"));
            }
            let parsed = match parse(&line, &names) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    self.print_error(&e);
                    continue;
                }
            };
            if parsed.command.name == "quit" {
                break;
            }
            reporter.set_echo_console(true);
            let mut terminated = false;
            let result = tokio::select! {
                r = log::scope(reporter.clone(), self.invoke(&parsed)) => Some(r),
                _ = int.recv() => None,
                _ = term.recv() => { terminated = true; None }
            };
            match result {
                Some(Ok(out)) => self.out.line(Stream::Out, &out),
                Some(Err(e)) => self.print_error(&e),
                None => self.out.line(Stream::Err, &format!("interrupted: {line}")),
            }
            if terminated {
                break;
            }
        }
        Ok(())
    }
}

/// Asks before each subtest of `step`: Enter runs it, `c` runs the rest, `q` stops.
fn step_gate(input: Arc<Input>, out: Output) -> crate::driver::SubtestGate {
    let go_on = Arc::new(AtomicBool::new(false));
    Arc::new(move |name: String| {
        let (input, go_on, out) = (input.clone(), go_on.clone(), out.clone());
        Box::pin(async move {
            if go_on.load(Ordering::Relaxed) {
                return Ok(());
            }
            out.line(Stream::Err, &format!("next subtest: {name}"));
            loop {
                match input.read_line("step (Enter: run it, c: run the rest, q: stop)> ").await {
                    Line::Text(l) => match l.trim() {
                        "" | "n" | "next" => return Ok(()),
                        "c" | "continue" => {
                            go_on.store(true, Ordering::Relaxed);
                            return Ok(());
                        }
                        "q" | "quit" | "stop" => bail!("stopped before subtest {name:?}"),
                        other => out.line(
                            Stream::Err,
                            &format!("{other:?}: Enter runs the subtest, c runs the rest, q stops"),
                        ),
                    },
                    Line::Interrupted | Line::Eof => bail!("stopped before subtest {name:?}"),
                }
            }
        }) as BoxFuture<'static, Result<()>>
    })
}
