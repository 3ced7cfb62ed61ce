//! `vmcheck`: vmcheck's own suite through the harness (`list`, `run`, `repl`, `images build`),
//! plus `bench`, which measures the driver against bare QEMU.

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
        Command::Bench {
            boots,
            execs,
            transfer_mib,
            nvmeof,
            fio_runs,
            fio_secs,
            rounds,
            networks,
            suite: patterns,
            json,
        } => {
            if boots == 0
                || execs < 20
                || transfer_mib == 0
                || fio_runs == 0
                || fio_secs == 0
                || rounds == 0
                || networks.is_empty()
            {
                eprintln!("vmcheck: bench needs --boots >= 1, --execs >= 20, --transfer-mib >= 1, --fio-runs >= 1, --fio-secs >= 1 and --rounds >= 1");
                return ExitCode::from(2);
            }
            // Bad input is found before the minutes of measuring, not after.
            if let Err(e) = suite.select(&patterns) {
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
            let options = vmcheck::bench::BenchOptions {
                boots,
                execs,
                transfer_mib,
                nvmeof,
                fio_runs,
                fio_secs,
                rounds,
                networks,
                suite: patterns,
            };
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
