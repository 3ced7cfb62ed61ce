//! The storage target: gRPC (`proto/`) over Linux nvmet through configfs.

/// Generated gRPC types and stubs for `vmcheck.target.v1`.
pub mod proto {
    tonic::include_proto!("vmcheck.target.v1");
}

pub mod address;
pub mod backing;
pub mod client;
pub mod configfs;
pub mod conformance;
pub mod error;
pub mod nvmet;
pub mod service;
pub mod uri;

#[cfg(test)]
mod service_tests;
