//! The storage target: gRPC (`proto/`) over Linux nvmet through configfs.
//!
//! The daemon `vmcheck-target` runs in the target VM and serves the gRPC API of `proto/`; a
//! scenario reaches it with [`Machine::target_client`](crate::Machine::target_client) (or
//! [`client::connect`]) and calls it through [`client::TargetClient`], with the messages of
//! [`proto`]. The toolkit modules [`crate::scenarios::nvmeof`] and [`crate::scenarios::iscsi`]
//! wrap the usual calls.
//!
//! The daemon's own pieces (bdev URIs, backing devices, configfs, nvmet, LIO, splits, the
//! removal monitor, request limits, error codes) are internal: daemon/src/main.rs and
//! vmcheck's tests use some of them, so those are public but hidden from these docs.
//!
//! Rules the API leaves open, as decided here:
//! - A bdev's name is its canonical URI; its uuid is a v5 uuid of that name, so a bdev and
//!   its default NQN (`nqn.2019-05.io.vmcheck:<uuid>`) are the same after a daemon restart.
//! - nvmet ports bind to the advertised address (`--traddr`, or detected), not 0.0.0.0: the
//!   discovery log then shows an address an initiator can connect to on every kernel.
//!   Shares on the same TCP port share one nvmet port; a port goes when its last subsystem does.
//! - malloc bdevs are files with nvmet `buffered_io` on (tmpfs refuses O_DIRECT before 6.6);
//!   nvmet serves them with 4 KiB blocks, which is what `blk_size` reports.
//! - State found at start (subsystems, ports, hosts, malloc files) is reported and left alone:
//!   the daemon neither adopts nor removes what it did not make in this run.
//! - Empty controllers (CreateSubsystem) are SPDK's empty vhost controllers: initiators connect
//!   first, namespaces come and go with AddNamespace/RemoveNamespace. DestroySubsystem takes
//!   attached namespaces along, as SPDK's `nvmf_delete_subsystem` does.
//! - Hot-remove follows SPDK's bdev hot-remove: a bdev whose device vanished is withdrawn from
//!   its namespace (disable, then remove), the subsystem stays (SPDK keeps the controller), and
//!   the bdev stays listed as faulted until DestroyBdev, even if a device of that name returns
//!   (SPDK unregisters it; listing it keeps the removal visible to the scenario). Export types
//!   hook in at the service's `withdraw`.
//! - Splits are GPT partitions written by the daemon; they go with their disk.

/// The port `vmcheck-target` listens on in the target guest.
pub const GRPC_PORT: u16 = 10124;

/// Generated gRPC types and stubs for `vmcheck.target.v1` (proto/vmcheck/target/v1/): the
/// messages, [`proto::target_client::TargetClient`] and the server trait. The documentation
/// of each message, field and call is the proto file's comment on it.
pub mod proto {
    tonic::include_proto!("vmcheck.target.v1");
}

// The daemon's own pieces. daemon/src/main.rs builds the server from service, nvmet,
// lio, configfs and backing, and tests/ drive them (and monitor, conformance) directly, so those
// stay reachable but out of the manual; the rest is private.
mod address;
#[doc(hidden)]
pub mod backing;
pub mod client;
#[doc(hidden)]
pub mod configfs;
#[doc(hidden)]
pub mod conformance;
mod error;
mod limits;
#[doc(hidden)]
pub mod lio;
#[doc(hidden)]
pub mod monitor;
#[doc(hidden)]
pub mod nvmet;
#[doc(hidden)]
pub mod service;
mod split;
mod uri;

#[cfg(test)]
mod service_tests;
