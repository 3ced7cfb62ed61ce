//! vmcheck: VM-level integration tests for storage systems.
//!
//! The pieces follow ARCHITECTURE.md: [`qemu`] (process, command line, console), [`qmp`], [`qga`],
//! [`network`], [`machine`] (the API a scenario calls), [`driver`], [`report`] (the run's sinks
//! and record), [`images`], [`target`] (the in-guest storage daemon and its client), [`tools`]
//! (typed fio and nvme-cli), [`scenarios`], [`repl`].

#![warn(missing_docs)]

pub mod accel;
// `vmcheck bench` (src/bin/vmcheck.rs) runs it; not part of the library.
#[doc(hidden)]
pub mod bench;
pub mod config;
pub mod driver;
pub mod harness;
pub mod images;
pub mod log;
pub mod machine;
pub mod network;
pub mod poll;
// tests/vm_hygiene.rs and tests/vm_repl.rs check for leftover processes with `process::is_alive`.
#[doc(hidden)]
pub mod process;
mod qapi_stream;
pub mod qemu;
pub mod qga;
pub mod qmp;
mod repl;
pub mod report;
pub mod scenarios;
mod snapshot;
pub mod target;
pub mod timeouts;
pub mod tools;

pub use machine::Machine;

/// What a scenario file needs: `use vmcheck::prelude::*;`.
pub mod prelude {
    pub use crate::config::{BalloonSpec, DiskSpec, NodeSpec, Role};
    pub use crate::driver::{Driver, DriverOptions};
    pub use crate::machine::{GuestProcess, Machine};
    pub use crate::scenarios::{RunOptions, Scenario, Suite};
}
