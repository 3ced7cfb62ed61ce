//! `vmcheck`: run storage scenarios on QEMU machines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmcheck::config::{DriverConfig, Role};
use vmcheck::driver::DriverOptions;
use vmcheck::images::Images;
use vmcheck::report::Reporter;
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
        /// Scenarios run side by side (a chain counts as one), each on machines of its own;
        /// their terminal lines are prefixed with `[name] `.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// Boot every machine instead of restoring its saved state from the cache (also
        /// VMCHECK_FRESH_BOOT=1).
        #[arg(long)]
        fresh_boot: bool,
    },
    /// Measure the driver against bare QEMU: boot to agent, exec round trip, network throughput,
    /// fio_nvme_basic's wall time in parts; a table on stdout.
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
        /// Only the NVMe-oF network benchmark: fio 128k sequential reads, iodepth 16, through
        /// vmcheck's switch, a direct QEMU-to-QEMU link and vde_switch.
        #[arg(long)]
        nvmeof: bool,
        /// With --nvmeof: fio runs per network per round.
        #[arg(long, default_value_t = 3)]
        fio_runs: usize,
        /// With --nvmeof: seconds of each fio run.
        #[arg(long, default_value_t = 10)]
        fio_secs: u64,
        /// With --nvmeof: rounds over the networks (interleaved, so host-load drift hits all).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// With --nvmeof: the networks compared, in each round's order (`switch-no-wait`: the
        /// switch dropping for a full peer instead of queueing).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "switch,direct,vde")]
        networks: Vec<vmcheck::bench::Network>,
        /// Also time these scenarios (names or patterns) with --jobs 1 and with --jobs 2.
        #[arg(long, num_args = 1.., value_name = "PATTERN")]
        suite: Vec<String>,
        /// Write the figures as JSON to this file too.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
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
                    println!("{role}: kernel {} initrd {} tools {}", image.kernel.display(), image.initrd.display(), image.tools.display());
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
        Command::Bench { boots, execs, transfer_mib, nvmeof, fio_runs, fio_secs, rounds, networks, suite, json } => {
            if boots == 0 || execs < 20 || transfer_mib == 0 || fio_runs == 0 || fio_secs == 0 || rounds == 0 || networks.is_empty() {
                eprintln!("vmcheck: bench needs --boots >= 1, --execs >= 20, --transfer-mib >= 1, --fio-runs >= 1, --fio-secs >= 1 and --rounds >= 1");
                return ExitCode::from(2);
            }
            // Bad input is found before the minutes of measuring, not after.
            if let Err(e) = scenarios::select(&suite) {
                eprintln!("vmcheck: bench --suite: {e:#}");
                return ExitCode::from(2);
            }
            if let Some(dir) = json.as_deref().and_then(Path::parent).filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
                eprintln!("vmcheck: bench --json: {} is not a directory", dir.display());
                return ExitCode::from(2);
            }
            let options = vmcheck::bench::BenchOptions { boots, execs, transfer_mib, nvmeof, fio_runs, fio_secs, rounds, networks, suite };
            match vmcheck::bench::run(&options).await {
                Ok(result) => {
                    print!("{}", result.table());
                    if let Some(path) = json {
                        let text = serde_json::to_string_pretty(&result).expect("figures serialise");
                        if let Err(e) = std::fs::write(&path, text + "\n") {
                            eprintln!("vmcheck: bench: writing {}: {e}", path.display());
                            return ExitCode::from(1);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vmcheck: bench failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Repl { scenario, config } => vmcheck::repl::main(scenario, config).await,
        Command::Run { names, junit, out, keep_vm_state, config, global_timeout, shard, jobs, fresh_boot } => {
            let options = RunArgs { junit, out, keep: keep_vm_state, config, global_timeout, shard, jobs: usize::from(jobs), fresh_boot };
            run(names, options).await
        }
    }
}

/// `vmcheck run`'s options, less the names.
struct RunArgs {
    junit: Option<PathBuf>,
    out: Option<PathBuf>,
    keep: bool,
    config: Option<PathBuf>,
    global_timeout: Option<u64>,
    shard: Option<scenarios::Shard>,
    jobs: usize,
    fresh_boot: bool,
}

async fn run(names: Vec<String>, args: RunArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("vmcheck: {msg}");
        ExitCode::from(2)
    };
    let config = match args.config.as_deref().map(DriverConfig::load).transpose() {
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
    let chosen: Vec<_> = chosen.into_iter().filter(|s| args.shard.is_none_or(|sh| sh.contains(s))).collect();
    // The run's one reporter: the terminal, `--out`'s transcript, the record of every result.
    let reporter = match &args.out {
        None => Reporter::new(),
        Some(dir) => match std::fs::create_dir_all(dir).and_then(|_| Reporter::with_transcript(&dir.join("transcript.log"))) {
            Ok(r) => r,
            Err(e) => return usage(format!("cannot use --out {}: {e}", dir.display())),
        },
    };
    if let Some(sh) = args.shard {
        let names: Vec<_> = chosen.iter().map(|s| s.name).collect();
        reporter.line(&format!("shard {}/{}: {}", sh.index, sh.count, names.join(" ")));
    }
    let options = RunOptions {
        driver: DriverOptions { keep_state: args.keep, out_dir: args.out.clone(), reporter: reporter.clone(), fresh_boot: args.fresh_boot },
        config: config.clone(),
        global_timeout: args.global_timeout.map(std::time::Duration::from_secs),
        jobs: args.jobs,
    };
    scenarios::run_many(&chosen, &options).await;
    reporter.log_summary();
    if let Some(path) = args.junit {
        if let Err(e) = reporter.write_junit(&path) {
            eprintln!("vmcheck: {e:#}");
            return ExitCode::from(1);
        }
    }
    if reporter.log_totals() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
