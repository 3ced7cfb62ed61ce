//! The named tests: each declares its machines and runs a script against them.

use anyhow::{bail, Result};
use futures::future::BoxFuture;

use crate::config::NodeSpec;
use crate::driver::Driver;

pub mod fio_nvme_basic;
mod selftest;

/// A registered scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    /// One line for `vmcheck list`.
    pub description: &'static str,
    /// The machines it needs.
    pub nodes: fn() -> Vec<NodeSpec>,
    /// The test script.
    pub run: for<'a> fn(&'a Driver) -> BoxFuture<'a, Result<()>>,
    /// Internal scenarios (the driver's own tests) are runnable but not listed.
    pub hidden: bool,
}

/// Every scenario, listed ones first.
pub fn all() -> Vec<Scenario> {
    let mut all = Vec::new();
    all.push(fio_nvme_basic::scenario());
    all.extend(selftest::scenarios());
    all.sort_by_key(|s| (s.hidden, s.name));
    all
}

/// The scenario named `name`; an unknown name lists the known ones.
pub fn find(name: &str) -> Result<Scenario> {
    let all = all();
    if let Some(s) = all.iter().find(|s| s.name == name) {
        return Ok(*s);
    }
    let known: Vec<_> = all.iter().filter(|s| !s.hidden).map(|s| s.name).collect();
    bail!("unknown scenario {name:?}; known scenarios: {}", known.join(", "))
}

/// How `vmcheck run` runs scenarios.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub driver: crate::driver::DriverOptions,
    /// The NixOS machines and settings from `nix/` (`--config`).
    pub config: Option<crate::config::DriverConfig>,
    /// Seconds the whole scenario may take.
    pub global_timeout: Option<std::time::Duration>,
}

/// What a run of one scenario gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub subtests: Vec<crate::driver::SubtestResult>,
    pub error: Option<String>,
    pub duration: std::time::Duration,
}

/// Runs one scenario on fresh machines, within the global timeout; the machines are stopped
/// however it ends.
pub async fn run(scenario: Scenario, options: &RunOptions) -> Outcome {
    let started = std::time::Instant::now();
    let name = options.config.as_ref().map(|c| c.name.clone()).unwrap_or_else(|| scenario.name.to_string());
    let global = options
        .global_timeout
        .or_else(|| options.config.as_ref().map(|c| std::time::Duration::from_secs(c.global_timeout)))
        .unwrap_or_else(|| std::time::Duration::from_secs(3600));
    let mut nodes = (scenario.nodes)();
    let driver = async {
        if let Some(config) = &options.config {
            config.apply(&mut nodes)?;
        }
        Driver::new(nodes, options.driver.clone()).await
    }
    .await;
    let driver = match driver {
        Ok(d) => d,
        Err(e) => return Outcome { name, subtests: Vec::new(), error: Some(format!("{e:#}")), duration: started.elapsed() },
    };
    let result = match tokio::time::timeout(global, (scenario.run)(&driver)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the global timeout of {global:?} ran out")),
    };
    let teardown = std::time::Instant::now();
    driver.kill_all().await;
    crate::log::line(&format!("machines stopped in {:.2} s", teardown.elapsed().as_secs_f64()));
    crate::log::line(&driver.summary(&name));
    let error = result.err().map(|e| format!("{e:#}"));
    let mut subtests = driver.subtest_results();
    if let Some(e) = &error {
        // A failure outside any subtest still shows in JUnit.
        if subtests.iter().all(|s| s.error.is_none()) {
            subtests.push(crate::driver::SubtestResult { name: "test script".into(), duration: started.elapsed(), error: Some(e.clone()) });
        }
    }
    Outcome { name, subtests, error, duration: started.elapsed() }
}
