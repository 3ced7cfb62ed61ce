//! `vmcheck run --pause-on-failure`: when a subtest fails, the REPL opens on the machines as the
//! failure left them (the NixOS driver's `enableDebugHook`, with vmcheck's REPL), before the
//! subtest returns its error. Quitting it (or end of input) lets the run end as it would have.
//!
//! At a terminal (stdin is one) the REPL reads it. Without one (CI, a Nix build, a run in the
//! background) the run listens on `<run directory>/repl.sock`, logs how to attach
//! (`vmcheck repl --attach PATH`, or `socat - UNIX-CONNECT:PATH`) and waits for one client: the
//! same REPL over that socket, its results and messages sent back. Either way the pause is part
//! of the scenario's time: the global timeout ends it (and the run) like any other wait.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::input::{self, Input, Output, Stream};
use super::session::Session;
use crate::driver::{Driver, FailureHook};
use crate::scenarios::Suite;

/// The socket an attached REPL is served on, in the run directory.
pub const SOCKET: &str = "repl.sock";

/// Pauses open now: while one is, Ctrl-C reaches the REPL (it cancels a command) rather than
/// ending the run.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Whether a pause's REPL is open (see [`OPEN`]).
pub fn is_open() -> bool {
    OPEN.load(Ordering::Relaxed) > 0
}

/// The failure hook of `--pause-on-failure`: `suite` is what the REPL's `run` and `step`
/// choose from, `deadline` the run's global deadline (shown, so the person knows the time left).
pub fn hook(suite: Suite, deadline: tokio::time::Instant) -> FailureHook {
    Arc::new(move |driver: &Driver, step: &str, error: &anyhow::Error| {
        let suite = suite.clone();
        let message = format!("subtest {step:?} failed: {error:#}");
        Box::pin(async move {
            if let Err(e) = pause(driver, suite, &message, deadline).await {
                driver.reporter().line(&format!("--pause-on-failure: {e:#}; the run goes on"));
            }
        })
    })
}

async fn pause(
    driver: &Driver,
    suite: Suite,
    message: &str,
    deadline: tokio::time::Instant,
) -> Result<()> {
    // Scenarios side by side (`--jobs`) take turns: one terminal, one REPL at a time.
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = TURN.lock().await;
    let reporter = driver.reporter();
    let echo = reporter.echo_console();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs();
    let machines: Vec<String> = driver.machines().iter().map(|m| m.name().to_string()).collect();
    let intro = format!(
        "{message}\n\n--pause-on-failure: the machines are kept as the failure left them; the \
         REPL is open on them (`help` lists the commands, `console <m>` follows a console). \
         `quit` or end of input ends the run as it would have ended; the global timeout \
         ({left} s left) ends it too.\n"
    );
    let (out, input, socket) = if std::io::stdin().is_terminal() {
        Output::Terminal.write(Stream::Err, &intro);
        (Output::Terminal, Input::start(machines, input::history_path()), None)
    } else {
        let path = driver.run_dir().join(SOCKET);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        reporter.line(&format!(
            "--pause-on-failure: {message}\n--pause-on-failure: no terminal here; the machines \
             are kept running. Attach with `vmcheck repl --attach {p}` (or `socat - \
             UNIX-CONNECT:{p}`); the run waits for that session to end, at most the {left} s \
             left of the global timeout. Consoles: {logs}/<machine>.console.log",
            p = path.display(),
            logs = driver.log_dir().display(),
        ));
        let (stream, _) = listener.accept().await.context("waiting for a client")?;
        reporter.line("--pause-on-failure: a REPL client attached");
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let out = Output::Socket(Arc::new(std::sync::Mutex::new(stream.try_clone()?)));
        out.write(Stream::Err, &intro);
        (out.clone(), Input::attached(stream, out), Some(path))
    };
    OPEN.fetch_add(1, Ordering::Relaxed);
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _close = Close;
    let session = Session { driver, input, suite, out: out.clone() };
    let served = session.serve_lines().await;
    reporter.set_echo_console(echo);
    out.write(Stream::Err, "vmcheck: the run goes on to its end\n");
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    reporter.line("--pause-on-failure: the REPL ended; the run goes on");
    served
}

/// `vmcheck repl --attach PATH`: this terminal's lines to a paused run's REPL, its answers
/// back, until either side ends (end of input here quits the REPL, which ends the run).
pub async fn attach(path: &Path) -> ExitCode {
    let path = path.to_path_buf();
    let copied = tokio::task::spawn_blocking(move || -> Result<()> {
        use std::io::{Read, Write};
        let stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
            format!(
                "cannot attach to {} (is a run paused there by --pause-on-failure?)",
                path.display()
            )
        })?;
        let mut to_run = stream.try_clone()?;
        // Lines typed here go to the run; end of input closes our side, which quits the REPL.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_run);
            let _ = to_run.shutdown(std::net::Shutdown::Write);
        });
        let mut from_run = stream;
        let mut buf = [0u8; 8192];
        let mut stdout = std::io::stdout();
        loop {
            let n = from_run.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
    })
    .await;
    match copied {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("vmcheck: {e:#}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("vmcheck: {e}");
            ExitCode::from(1)
        }
    }
}
