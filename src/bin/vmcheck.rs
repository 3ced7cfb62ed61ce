//! `vmcheck`: vmcheck's own suite through the harness (`list`, `run`, `repl`, `images build`,
//! `cache`), plus `bench`, which measures the driver against bare QEMU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmcheck::harness;
use vmcheck::scenarios;

#[derive(Parser)]
#[command(
    name = "vmcheck",
    version,
    about = "VM-level integration tests for storage systems",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Harness(harness::Command),
    /// Measure the driver against bare QEMU: boot to agent, exec round trip, network throughput,
    /// fio_nvme_basic's wall time in parts; a table on stdout.
    Bench {
        #[command(flatten)]
        options: vmcheck::bench::BenchOptions,
        /// Write the figures as JSON to this file too.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    harness::init_tracing();
    let mut suite = scenarios::builtin();
    suite.extend(scenarios::selftests());
    if let Err(e) = suite.check() {
        eprintln!("vmcheck: the suite is not valid: {e:#}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Harness(command) => {
            let signals = !matches!(command, harness::Command::Repl { .. });
            harness::runtime_main(async move { harness::dispatch(&suite, command).await }, signals)
        }
        Command::Bench { options, json } => {
            if let Err(e) = options.check() {
                eprintln!("vmcheck: {e:#}");
                return ExitCode::from(2);
            }
            // Bad input is found before the minutes of measuring, not after.
            if let Err(e) = suite.select(&options.suite) {
                eprintln!("vmcheck: bench --suite: {e:#}");
                return ExitCode::from(2);
            }
            if let Some(dir) = json
                .as_deref()
                .and_then(Path::parent)
                .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                eprintln!("vmcheck: bench --json: {} is not a directory", dir.display());
                return ExitCode::from(2);
            }
            harness::runtime_main(bench(options, json), true)
        }
    }
}

async fn bench(options: vmcheck::bench::BenchOptions, json: Option<PathBuf>) -> ExitCode {
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
