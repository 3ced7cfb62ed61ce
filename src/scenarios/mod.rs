//! The named tests: each declares its machines and runs a script against them.

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use futures::StreamExt;

use crate::config::NodeSpec;
use crate::driver::Driver;
use crate::machine::{is_harness_error, HarnessError};
pub use crate::report::{outcomes_table, Outcome};

pub mod attach_detach;
pub mod balloon;
pub mod fio_nvme_basic;
pub mod hotremove;
pub mod iscsi;
pub mod lifecycle;
pub mod network_faults;
pub mod nvmeof;
mod selftest;
pub mod workload;

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
    /// Test cases of a plan that chains them ("run fio on the device attached in test case 1")
    /// name their chain: they run in registration order on one set of machines, and running a
    /// later case runs the earlier ones first. All cases of a chain declare the same machines.
    pub chain: Option<&'static str>,
}

/// Every scenario, listed ones first.
pub fn all() -> Vec<Scenario> {
    let mut all = Vec::new();
    all.push(fio_nvme_basic::scenario());
    all.extend(hotremove::scenarios());
    all.extend(attach_detach::scenarios());
    all.extend(network_faults::scenarios());
    all.extend(balloon::scenarios());
    all.extend(lifecycle::scenarios());
    all.extend(selftest::scenarios());
    // Listed ones first; a chain's cases keep the order they are registered in.
    all.sort_by_key(|s| s.hidden);
    all
}

/// The scenarios `patterns` name, in registration order, each once: exact names (hidden ones
/// too) or shell-style patterns (`hotremove_*`, `hotattach_tc[12]`) over the listed ones. A
/// pattern that matches nothing is an error that lists the known names.
pub fn select(patterns: &[String]) -> Result<Vec<Scenario>> {
    let all = all();
    let mut chosen = std::collections::BTreeSet::new();
    for p in patterns {
        if let Some(i) = all.iter().position(|s| s.name == p) {
            chosen.insert(i);
            continue;
        }
        let pattern = glob::Pattern::new(p).with_context(|| format!("bad scenario pattern {p:?}"))?;
        let before = chosen.len();
        chosen.extend(all.iter().enumerate().filter(|(_, s)| !s.hidden && pattern.matches(s.name)).map(|(i, _)| i));
        if chosen.len() == before && !all.iter().any(|s| !s.hidden && pattern.matches(s.name)) {
            let known: Vec<_> = all.iter().filter(|s| !s.hidden).map(|s| s.name).collect();
            bail!("no scenario matches {p:?}; known scenarios: {}", known.join(", "));
        }
    }
    Ok(chosen.into_iter().map(|i| all[i]).collect())
}

/// One part of a suite split over several machines (`vmcheck run --shard K/N`): K of N, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Shard> {
        let (k, n) = s.split_once('/').with_context(|| format!("a shard is K/N, like 1/3, not {s:?}"))?;
        let (index, count): (u32, u32) = (
            k.parse().with_context(|| format!("shard {s:?}: {k:?} is no number"))?,
            n.parse().with_context(|| format!("shard {s:?}: {n:?} is no number"))?,
        );
        if count == 0 || index == 0 || index > count {
            bail!("shard {s:?}: K must be 1..=N and N at least 1");
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether `s` is in this shard. The split is by name (a chain's name for its cases, so a
    /// chain stays whole), stable across runs, machines and Rust versions: FNV-1a of the name.
    pub fn contains(&self, s: &Scenario) -> bool {
        let key = s.chain.unwrap_or(s.name);
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        hash % u64::from(self.count) == u64::from(self.index - 1)
    }
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
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The driver's options; its reporter is the run's, which records every outcome.
    pub driver: crate::driver::DriverOptions,
    /// The NixOS machines and settings from `nix/` (`--config`).
    pub config: Option<crate::config::DriverConfig>,
    /// Seconds the whole scenario may take.
    pub global_timeout: Option<std::time::Duration>,
    /// Scenarios (a chain counts as one) that run side by side, at least 1.
    pub jobs: usize,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions { driver: Default::default(), config: None, global_timeout: None, jobs: 1 }
    }
}

/// The last console lines of every machine, for a failure's report: the machine that failed is
/// not always the one that explains it.
fn console_tails(driver: &Driver) -> String {
    let mut s = String::new();
    for m in driver.machines() {
        let tail = m.console().tail(crate::machine::ERROR_CONSOLE_LINES);
        s += &format!("\nlast {} console lines of {}:\n", tail.len(), m.name());
        for l in tail {
            s += &format!("  {l}\n");
        }
    }
    s
}

/// Runs one scenario on fresh machines, within the global timeout; the machines are stopped
/// however it ends. A case of a chain runs with the earlier cases of its chain before it.
pub async fn run(scenario: Scenario, options: &RunOptions) -> Outcome {
    run_many(&[scenario], options).await.pop().expect("one outcome per scenario run")
}

/// Runs `selected`: a scenario on machines of its own, the cases of a chain on one set of
/// machines (with the chain's earlier cases run first when not selected), up to
/// `options.jobs` of these groups side by side. One outcome per scenario run, prerequisites
/// included, in registration order whatever order they end in; each is also recorded in the
/// run's reporter (`options.driver.reporter`).
pub async fn run_many(selected: &[Scenario], options: &RunOptions) -> Vec<Outcome> {
    let side_by_side = options.jobs > 1;
    // Views are made here, in order, so that the reporter lists the outcomes in this order.
    let runs = groups(selected).into_iter().map(|cases| {
        let name = cases[0].chain.unwrap_or(cases[0].name);
        let reporter = options.driver.reporter.scenario(name, side_by_side);
        // Polled within the view's log scope: the machine API's lines go to its sinks.
        crate::log::scope(reporter.clone(), run_group(cases, options, reporter))
    });
    let runs: Vec<_> = runs.collect();
    // `buffered` keeps the order of the groups, not the order they end in.
    futures::stream::iter(runs).buffered(options.jobs.max(1)).concat().await
}

/// The groups that run on machines of their own, in the order of `selected`: a scenario alone,
/// or a chain's cases from its first up to the last selected one.
fn groups(selected: &[Scenario]) -> Vec<Vec<Scenario>> {
    let all = all();
    let mut groups = Vec::new();
    let mut done_chains = std::collections::HashSet::new();
    for s in selected {
        match s.chain {
            None => groups.push(vec![*s]),
            Some(chain) if done_chains.insert(chain) => {
                let last = selected.iter().filter(|c| c.chain == Some(chain)).map(|c| c.name).next_back().unwrap_or(s.name);
                let cases: Vec<Scenario> = all.iter().filter(|c| c.chain == Some(chain)).copied().collect();
                let upto = cases.iter().position(|c| c.name == last).map_or(cases.len(), |i| i + 1);
                groups.push(cases[..upto].to_vec());
            }
            Some(_) => {}
        }
    }
    groups
}

/// Runs `cases` one after another on one driver; a failed case fails the ones after it. The
/// outcomes are recorded in `reporter`, the group's view of the run's reporter.
async fn run_group(cases: Vec<Scenario>, options: &RunOptions, reporter: crate::report::Reporter) -> Vec<Outcome> {
    let started = std::time::Instant::now();
    let first = cases[0];
    let name_of = |s: &Scenario| match &options.config {
        Some(c) if cases.len() == 1 => c.name.clone(),
        _ => s.name.to_string(),
    };
    let global = options
        .global_timeout
        .or_else(|| options.config.as_ref().map(|c| std::time::Duration::from_secs(c.global_timeout)))
        .unwrap_or_else(crate::timeouts::global);
    let mut nodes = (first.nodes)();
    let driver = async {
        if let Some(config) = &options.config {
            config.apply(&mut nodes)?;
        }
        // Each scenario (or chain) keeps its logs and its transcript in a directory of its own
        // under --out.
        let mut driver_options = options.driver.clone();
        driver_options.reporter = reporter.clone();
        if let Some(out) = &options.driver.out_dir {
            let dir = out.join(first.chain.unwrap_or(first.name));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            reporter.open_transcript(&dir.join("transcript.log")).with_context(|| format!("creating {}/transcript.log", dir.display()))?;
            driver_options.out_dir = Some(dir);
        }
        Driver::new(nodes, driver_options).await
    }
    .await;
    let driver = match driver {
        Ok(d) => d,
        Err(e) => {
            let error = Some(format!("{e:#}"));
            return cases
                .iter()
                .map(|c| {
                    reporter.record(Outcome {
                        name: name_of(c),
                        subtests: Vec::new(),
                        error: error.clone(),
                        harness_error: true,
                        duration: started.elapsed(),
                    })
                })
                .collect();
        }
    };
    // The first case also carries the driver's setup (images, accelerator, run directory).
    let mut setup = started.elapsed();
    let deadline = tokio::time::Instant::now() + global;
    let mut outcomes = Vec::new();
    let mut broken: Option<String> = None;
    for case in &cases {
        let name = name_of(case);
        let case_started = std::time::Instant::now();
        let result = match &broken {
            Some(earlier) => Err(HarnessError(format!("not run: the earlier case {earlier} of its chain failed")).into()),
            None => match tokio::time::timeout_at(deadline, (case.run)(&driver)).await {
                Ok(r) => r,
                Err(_) => Err(HarnessError(format!("the global timeout of {global:?} ran out")).into()),
            },
        };
        let harness_error = result.as_ref().err().is_some_and(is_harness_error);
        let error = result.err().map(|e| format!("{e:#}{}", console_tails(&driver)));
        if error.is_some() {
            broken.get_or_insert_with(|| name.clone());
        }
        outcomes.push(reporter.end_case(&name, error, harness_error, case_started.elapsed(), std::mem::take(&mut setup)));
    }
    let teardown = std::time::Instant::now();
    // Per-test logs: each machine's whole dmesg next to its console log and QMP events.
    crate::lifecycle::keep_logs(driver.machines()).await;
    driver.kill_all().await;
    reporter.line(&format!("machines stopped in {:.2} s", teardown.elapsed().as_secs_f64()));
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(patterns: &[&str]) -> Result<Vec<&'static str>> {
        Ok(select(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())?.iter().map(|s| s.name).collect())
    }

    #[test]
    fn scenarios_are_selected_by_name_and_pattern_in_registration_order_once() {
        assert_eq!(names(&["hotremove_blk_tc2", "fio_nvme_basic"]).unwrap(), ["fio_nvme_basic", "hotremove_blk_tc2"]);
        let all_blk = names(&["hotremove_blk_*"]).unwrap();
        assert_eq!(all_blk, ["hotremove_blk_tc1", "hotremove_blk_tc2", "hotremove_blk_tc3", "hotremove_blk_tc4", "hotremove_blk_tc5"]);
        assert_eq!(names(&["hotremove_blk_tc[12]", "hotremove_blk_tc1"]).unwrap(), ["hotremove_blk_tc1", "hotremove_blk_tc2"]);
        // Hidden scenarios by exact name only.
        assert_eq!(names(&["selftest-pass"]).unwrap(), ["selftest-pass"]);
        assert!(names(&["selftest-*"]).is_err());
    }

    #[test]
    fn shards_cover_every_scenario_exactly_once_and_keep_chains_whole() {
        let listed: Vec<Scenario> = all().into_iter().filter(|s| !s.hidden).collect();
        for n in 1..=5 {
            let shards: Vec<Shard> = (1..=n).map(|k| format!("{k}/{n}").parse().unwrap()).collect();
            for s in &listed {
                let holders = shards.iter().filter(|sh| sh.contains(s)).count();
                assert_eq!(holders, 1, "{} is in {holders} of {n} shards", s.name);
                if let Some(chain) = s.chain {
                    let first = listed.iter().find(|c| c.chain == Some(chain)).unwrap();
                    assert!(shards.iter().all(|sh| sh.contains(s) == sh.contains(first)), "chain {chain} split by {n} shards");
                }
            }
        }
        for bad in ["0/2", "3/2", "1/0", "1", "a/b", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_pattern_that_matches_nothing_names_the_known_scenarios() {
        let e = names(&["hotremove_nope*"]).unwrap_err().to_string();
        assert!(e.contains("no scenario matches \"hotremove_nope*\"") && e.contains("fio_nvme_basic"), "{e}");
        let e = names(&["[unclosed"]).unwrap_err().to_string();
        assert!(e.contains("[unclosed"), "{e}");
    }

    #[test]
    fn every_registered_name_is_unique_and_chains_share_their_machines() {
        let all = all();
        let mut seen = std::collections::HashSet::new();
        for s in &all {
            assert!(seen.insert(s.name), "two scenarios are named {}", s.name);
            if let Some(chain) = s.chain {
                let first = all.iter().find(|c| c.chain == Some(chain)).unwrap();
                assert_eq!((s.nodes)(), (first.nodes)(), "{} declares other machines than its chain {chain}", s.name);
            }
        }
    }
}
