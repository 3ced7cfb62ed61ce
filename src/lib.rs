//! vmcheck: VM-level integration tests for storage systems, written in Rust.
//!
//! A test is a [`Scenario`](scenarios::Scenario): the QEMU machines it needs (storage targets,
//! initiators, their disks and test networks) and an async script that drives them through the
//! [`Machine`] API: run commands in the guest, hot-plug and pull disks, cut or slow links,
//! balloon memory, save, restore and migrate. Scenarios are gathered in a
//! [`Suite`](scenarios::Suite), and [`harness::main`] turns a binary into vmcheck's command line
//! (`list`, `run`, `repl`) and a `cargo test`/`cargo nextest` target at once.
//!
//! # Start here
//!
//! - [`prelude`]: `use vmcheck::prelude::*;` brings what a scenario file needs.
//! - [`Scenario`](scenarios::Scenario) and [`Suite`](scenarios::Suite): declare tests and
//!   their machines ([`NodeSpec`](config::NodeSpec), [`DiskSpec`](config::DiskSpec)).
//! - [`harness::main`]: the `main` of a test binary (`harness = false` in Cargo.toml).
//! - [`Driver`](driver::Driver): what a script gets: the run's machines, `start_all`, subtests.
//! - [`Machine`]: one VM; every method has a timeout and fails with the console's last lines.
//! - The toolkit: [`scenarios::nvmeof`] and [`scenarios::iscsi`] (share a disk from the target
//!   daemon, connect an initiator), [`scenarios::workload`] (fio while something breaks),
//!   [`tools`] (typed fio, nvme-cli, lsblk, iscsiadm), [`target`] (the target daemon's gRPC
//!   client), [`timeouts`] and [`log`].
//! - [`Recipe`](recipe::Recipe): what a machine's guest holds beyond the base image: Debian
//!   packages, host binaries, files, kernel modules, services started at boot, forwarded ports.
//! - Guest mode (`vmcheck run --local MACHINE --peer NAME=ADDR`, `--in-guest`): the driver runs
//!   inside one of the machines; [`machine::Backend`], [`driver::GuestMode`],
//!   [`Scenario::host_only`](scenarios::Scenario::host_only).
//!
//! The rest is what those return: [`config`], [`report`], [`network`], [`qmp`], [`qga`],
//! [`qemu`], [`accel`], [`images`], [`poll`].
//!
//! # Example
//!
//! A test binary with one scenario (`tests/vm.rs`, with `[[test]] name = "vm" harness = false`
//! in Cargo.toml):
//!
//! ```no_run
//! use futures::FutureExt;
//! use vmcheck::prelude::*;
//!
//! async fn smoke(d: &Driver) -> anyhow::Result<()> {
//!     d.start_all().await?;
//!     let vm = d.machine("vm")?;
//!     d.subtest("the guest sees its disk", async {
//!         let dev = vm.disk_device("disk0").await?;
//!         vm.succeed(&format!("test -b {dev}")).await.map(drop)
//!     })
//!     .await
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let suite = Suite::new().with(
//!         Scenario::new("smoke", "boot, find the disk", |d| smoke(d).boxed())
//!             .machine(NodeSpec::new("vm", Role::Initiator, 2).with_disk(DiskSpec::nvme("disk0", 64))),
//!     );
//!     vmcheck::harness::main(suite)
//! }
//! ```
//!
//! `cargo test --test vm` (or `cargo nextest run`) runs it as a test; `cargo test --test vm --
//! run smoke --out out` (or `-- list`, `-- repl smoke`) speaks vmcheck's own command line.

#![warn(missing_docs)]

pub mod accel;
// `vmcheck bench` (src/bin/vmcheck.rs) runs it; not part of the library.
#[doc(hidden)]
pub mod bench;
pub(crate) mod cache;
pub mod config;
pub mod driver;
pub mod harness;
pub mod images;
pub(crate) mod in_guest;
pub mod log;
pub mod machine;
pub mod network;
pub mod poll;
pub(crate) mod progress;
// tests/vm_hygiene.rs and tests/vm_repl.rs check for leftover processes with `process::is_alive`.
#[doc(hidden)]
pub mod process;
mod qapi_stream;
pub mod qemu;
pub mod qga;
pub mod qmp;
pub mod recipe;
mod repl;
pub mod report;
pub(crate) mod run_report;
pub mod scenarios;
pub(crate) mod snapshot;
pub mod target;
pub mod timeline;
pub mod timeouts;
pub mod tools;
pub mod watch;

pub use machine::Machine;

/// What a scenario file needs: `use vmcheck::prelude::*;` brings the machine specs
/// ([`NodeSpec`](crate::config::NodeSpec), [`DiskSpec`](crate::config::DiskSpec),
/// [`BalloonSpec`](crate::config::BalloonSpec), [`Role`](crate::config::Role)), the
/// [`Driver`](crate::driver::Driver) and its options, [`Machine`] and
/// [`GuestProcess`](crate::machine::GuestProcess), and [`Scenario`](crate::scenarios::Scenario),
/// [`Suite`](crate::scenarios::Suite) and [`RunOptions`](crate::scenarios::RunOptions), and
/// [`Recipe`](crate::recipe::Recipe), and the disks' media faults and error policies
/// ([`MediaFault`](crate::machine::MediaFault), [`OnError`](crate::config::OnError)).
pub mod prelude {
    pub use crate::config::{BalloonSpec, DiskSpec, NodeSpec, Role};
    pub use crate::driver::{Driver, DriverOptions};
    pub use crate::machine::{GuestProcess, Machine};
    pub use crate::recipe::Recipe;
    pub use crate::scenarios::{RunOptions, Scenario, Suite};
    pub use crate::watch::Condition;
    pub use crate::{
        config::OnError,
        machine::{FaultOps, MediaFault},
    };
}
