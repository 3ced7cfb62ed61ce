//! vmcheck: VM-level integration tests for storage systems.
//!
//! The pieces follow ARCHITECTURE.md: [`qemu`] (process, command line, console), [`qmp`], [`qga`],
//! [`network`], [`machine`] (the API a scenario calls), [`driver`], [`report`] (the run's sinks
//! and record), [`images`] (built from a [`recipe`]: what a guest holds), [`target`] (the
//! in-guest storage daemon and its client), [`tools`] (typed fio and nvme-cli), [`scenarios`],
//! [`repl`].

pub mod accel;
pub mod balloon;
pub mod bench;
pub mod config;
pub mod driver;
pub mod hotplug;
pub mod images;
pub mod lifecycle;
pub mod log;
pub mod machine;
pub mod network;
pub mod poll;
pub mod process;
pub mod qapi_stream;
pub mod qemu;
pub mod qga;
pub mod qmp;
pub mod recipe;
pub mod repl;
pub mod report;
pub mod scenarios;
pub mod snapshot;
pub mod target;
pub mod timeouts;
pub mod tools;

pub use machine::Machine;
