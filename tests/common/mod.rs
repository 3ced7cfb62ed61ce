//! Shared set-up of the VM tests: real QEMU machines on the default images, under TCG here.
#![allow(dead_code)]

use std::time::Duration;

use vmcheck::config::NodeSpec;
use vmcheck::driver::{Driver, DriverOptions};

/// A driver for `nodes` on the default images (built on first use into the user's cache).
pub async fn driver(nodes: Vec<NodeSpec>) -> Driver {
    Driver::new(nodes, DriverOptions::default()).await.expect("setting up the run")
}

pub const SHORT: Duration = Duration::from_secs(3);

/// The error text of a result that must be an error.
pub fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => format!("{e:#}"),
    }
}
