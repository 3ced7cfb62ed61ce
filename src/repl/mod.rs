//! The interactive driver: `vmcheck repl [SCENARIO]`, for poking at a failing test by hand.
//!
//! The scenario's machines are defined, not started. Every command comes from one table,
//! [`COMMANDS`]: its name, where it applies (`name ...` or `<machine>.name ...`), the shape of
//! its arguments (which drives both the parser and tab completion), its help and its handler.
//! A new machine-API operation reaches the REPL as one more line there.
//!
//! Input is read on its own thread: rustyline (history, completion) on a terminal, plain lines
//! otherwise, so a script can be piped in. Errors print and return to the prompt; only `quit`
//! and end of input end the session, and both stop every machine. Ctrl-C clears the line at the
//! prompt and cancels a running command.
//!
//! One file per job: [`commands`] (the table), [`parse`], [`complete`] (tab completion),
//! [`grpc`] (JSON to proto and back, generated from the proto by build.rs), [`qmp`] (QMP text),
//! [`input`] (the input thread), [`session`] (the loop) and [`pause`] (`run
//! --pause-on-failure`: the REPL on a failed run's machines, at its terminal or over a socket
//! that `vmcheck repl --attach` connects to).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;

use crate::config::DriverConfig;
use crate::driver::{Driver, DriverOptions};
use crate::scenarios;

pub mod commands;
pub mod complete;
pub mod grpc;
pub mod input;
pub mod parse;
pub mod pause;
pub mod qmp;
pub mod session;

use input::Input;
use session::Session;

pub const PROMPT: &str = "vmcheck> ";
/// The scenario whose machines the REPL defines when none is named.
pub const DEFAULT_SCENARIO: &str = scenarios::fio_nvme_basic::NAME;

/// The names `run` and `step` take, for help and completion: the suite's, set once by [`main`].
static SCENARIO_NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// `repl [SCENARIO] [--config FILE]`: the machines of `scenario` of `suite` (default
/// fio_nvme_basic, else the suite's first), defined but not started.
pub async fn main(
    suite: &scenarios::Suite,
    scenario: Option<String>,
    config: Option<PathBuf>,
) -> ExitCode {
    let config = match config.as_deref().map(DriverConfig::load).transpose() {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let name = match (&config, scenario) {
        (Some(c), Some(s)) if s != c.scenario => {
            return usage(&anyhow!("--config is for scenario {}, not {s}", c.scenario))
        }
        (Some(c), _) => c.scenario.clone(),
        (None, Some(s)) => s,
        (None, None) => {
            match suite.find(DEFAULT_SCENARIO).or_else(|_| {
                suite.scenarios().first().ok_or_else(|| anyhow!("the suite has no scenario"))
            }) {
                Ok(s) => s.name().to_string(),
                Err(e) => return usage(&e),
            }
        }
    };
    let scenario = match suite.find(&name) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let _ = SCENARIO_NAMES.set(suite.scenarios().iter().map(|s| s.name().to_string()).collect());
    let mut nodes = scenario.nodes().to_vec();
    if let Some(c) = &config {
        if let Err(e) = c.apply(&mut nodes) {
            return usage(&e);
        }
    }
    let driver = match Driver::new(nodes, DriverOptions::default()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vmcheck: {e:#}");
            return ExitCode::from(1);
        }
    };
    let machines = driver.machines().iter().map(|m| m.name().to_string()).collect();
    let session = Session {
        driver: &driver,
        input: Input::start(machines, input::history_path()),
        suite: suite.clone(),
        out: input::Output::Terminal,
    };
    let result = session.serve().await;
    eprintln!("vmcheck repl: stopping every machine");
    driver.kill_all().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmcheck: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn usage(e: &anyhow::Error) -> ExitCode {
    eprintln!("vmcheck: {e:#}");
    ExitCode::from(2)
}
