//! `vmcheck`: run storage scenarios on QEMU machines.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmcheck::config::{DriverConfig, Role};
use vmcheck::driver::{write_junit, DriverOptions};
use vmcheck::images::Images;
use vmcheck::scenarios::{self, RunOptions};

#[derive(Parser)]
#[command(name = "vmcheck", version, about = "VM-level integration tests for storage systems", arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the scenarios.
    List {
        /// Print each scenario's machines as JSON (what nix/scenarios.json holds).
        #[arg(long)]
        json: bool,
    },
    /// Run scenarios (all listed ones when none is named): names or shell-style patterns
    /// (`vmcheck run 'hotremove_*'`).
    Run {
        names: Vec<String>,
        /// Write JUnit XML here (one test case per subtest).
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Keep console logs, command lines, the transcript and tool output here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep the run directory (disks, sockets) after the run.
        #[arg(long)]
        keep_vm_state: bool,
        /// Driver configuration from nix/ (NixOS machines); names the scenario itself.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds each scenario may take (a chain: all its cases together), after the driver's
        /// set-up (images, accelerator probe).
        #[arg(long)]
        global_timeout: Option<u64>,
        /// Run only part K of N of the chosen scenarios (a stable split by name; a chain stays
        /// whole), to spread a suite over a CI matrix: `--shard 1/3` on one machine, `2/3` ...
        #[arg(long)]
        shard: Option<scenarios::Shard>,
    },
    /// Measure the driver against bare QEMU: boot to agent, exec round trip, network throughput.
    Bench {
        /// Boots of each kind.
        #[arg(long, default_value_t = 3)]
        boots: usize,
        /// Exec round trips of each kind (at least 20).
        #[arg(long, default_value_t = 30)]
        execs: usize,
        /// MiB sent over the test network each way.
        #[arg(long, default_value_t = 32)]
        transfer_mib: u64,
    },
    /// Interactive driver: the scenario's machines (default fio_nvme_basic's), defined but not
    /// started; `help` at its prompt lists the commands.
    Repl {
        scenario: Option<String>,
        /// Driver configuration from nix/ (NixOS machines); names the scenario itself.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage the default images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Build (or find up to date) the kernel and the initramfs of each role.
    Build,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_env("VMCHECK_LOG")).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmcheck: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        if matches!(cli.command, Command::Repl { .. }) {
            // The REPL handles Ctrl-C itself: it cancels a command, not the session.
            return dispatch(cli.command).await;
        }
        tokio::select! {
            code = dispatch(cli.command) => code,
            // Dropping the run kills every machine and removes the run directory.
            _ = interrupted() => {
                eprintln!("vmcheck: interrupted; stopping every machine");
                ExitCode::from(130)
            }
        }
    })
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::List { json: true } => {
            let listed: Vec<_> = scenarios::all().into_iter().filter(|s| !s.hidden).map(|s| (s.name, s.description, (s.nodes)())).collect();
            match vmcheck::config::scenario_listing_json(&listed) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vmcheck: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::List { json: false } => {
            for s in scenarios::all().iter().filter(|s| !s.hidden) {
                println!("{:<28} {}", s.name, s.description);
            }
            ExitCode::SUCCESS
        }
        Command::Images { command: ImagesCommand::Build } => {
            let result = tokio::task::spawn_blocking(|| -> anyhow::Result<()> {
                let images = Images::from_env()?;
                for role in [Role::Target, Role::Initiator] {
                    let image = images.ensure(role)?;
                    println!("{role}: kernel {} initrd {}", image.kernel.display(), image.initrd.display());
                }
                Ok(())
            })
            .await;
            match result {
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
        Command::Bench { boots, execs, transfer_mib } => {
            if boots == 0 || execs < 20 || transfer_mib == 0 {
                eprintln!("vmcheck: bench needs --boots >= 1, --execs >= 20 and --transfer-mib >= 1");
                return ExitCode::from(2);
            }
            match vmcheck::bench::run(&vmcheck::bench::BenchOptions { boots, execs, transfer_mib }).await {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vmcheck: bench failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Repl { scenario, config } => vmcheck::repl::main(scenario, config).await,
        Command::Run { names, junit, out, keep_vm_state, config, global_timeout, shard } => {
            run(names, junit, out, keep_vm_state, config, global_timeout, shard).await
        }
    }
}

async fn run(
    names: Vec<String>,
    junit: Option<PathBuf>,
    out: Option<PathBuf>,
    keep: bool,
    config: Option<PathBuf>,
    global_timeout: Option<u64>,
    shard: Option<scenarios::Shard>,
) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("vmcheck: {msg}");
        ExitCode::from(2)
    };
    let config = match config.as_deref().map(DriverConfig::load).transpose() {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    let names = match (&config, names.is_empty()) {
        (Some(c), true) => vec![c.scenario.clone()],
        (Some(_), false) => return usage("--config names the scenario; do not name others".into()),
        (None, true) => scenarios::all().iter().filter(|s| !s.hidden).map(|s| s.name.to_string()).collect(),
        (None, false) => names,
    };
    let chosen = match scenarios::select(&names) {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    let chosen: Vec<_> = chosen.into_iter().filter(|s| shard.is_none_or(|sh| sh.contains(s))).collect();
    if let Some(sh) = shard {
        let names: Vec<_> = chosen.iter().map(|s| s.name).collect();
        vmcheck::log::line(&format!("shard {}/{}: {}", sh.index, sh.count, names.join(" ")));
    }
    if let Some(dir) = &out {
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| vmcheck::log::set_transcript(&dir.join("transcript.log"))) {
            return usage(format!("cannot use --out {}: {e}", dir.display()));
        }
    }
    let options = RunOptions {
        driver: DriverOptions { keep_state: keep, out_dir: out.clone() },
        config: config.clone(),
        global_timeout: global_timeout.map(std::time::Duration::from_secs),
    };
    let outcomes = scenarios::run_many(&chosen, &options).await;
    for outcome in &outcomes {
        match &outcome.error {
            None => vmcheck::log::line(&format!("{}: passed in {:.2} s", outcome.name, outcome.duration.as_secs_f64())),
            Some(e) => vmcheck::log::line(&format!("{}: FAILED after {:.2} s:\n{e}", outcome.name, outcome.duration.as_secs_f64())),
        }
    }
    vmcheck::log::line(&scenarios::outcomes_table(&outcomes));
    if let Some(path) = junit {
        let suites: Vec<_> = outcomes.iter().map(|o| (o.name.clone(), o.subtests.clone())).collect();
        if let Err(e) = write_junit(&path, &suites) {
            eprintln!("vmcheck: {e:#}");
            return ExitCode::from(1);
        }
    }
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let errors = outcomes.iter().filter(|o| o.harness_error).count();
    if errors > 0 {
        vmcheck::log::line(&format!("{errors} of the failed are errors: the harness or a machine broke, not the system under test"));
    }
    vmcheck::log::line(&format!("{} passed, {failed} failed", outcomes.len() - failed));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
