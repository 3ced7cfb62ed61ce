//! The named tests: each declares its machines and runs a script against them.
//!
//! A [`Scenario`] is a name, a description, the [`NodeSpec`]s of its machines and a script (an
//! async function of the [`Driver`]); a [`Suite`] holds scenarios and selects them by name or
//! pattern, and [`Suite::run`] runs a selection with [`RunOptions`]. [`builtin`] is vmcheck's own suite
//! and [`selftests`] its hidden checks of the harness.
//!
//! The toolkit for scripts: [`nvmeof`] and [`iscsi`] (share a disk from the target daemon,
//! discover, connect, find the block device on the initiator), [`workload`] (fio while a disk
//! is pulled, and its verdict).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;

use crate::config::NodeSpec;
use crate::driver::Driver;
use crate::machine::{is_harness_error, HarnessError};
pub use crate::report::{outcomes_table, Outcome};

// The built-in scenarios: reached through `builtin()`, their code is no API.
mod attach_detach;
mod balloon;
// tests/vm_fio_nvme_basic.rs asserts on its typed `Report`.
#[doc(hidden)]
pub mod fio_nvme_basic;
mod hotremove;
pub mod iscsi;
mod lifecycle;
mod media_error;
mod network_faults;
pub mod nvmeof;
mod selftest;
pub mod workload;

/// A scenario's script: it gets the driver, with the scenario's machines defined but not
/// started, and fails with the first error.
pub type Script = Arc<dyn for<'a> Fn(&'a Driver) -> BoxFuture<'a, Result<()>> + Send + Sync>;

/// A script as a plain function, for the scenario files' own helpers that build several
/// scenarios alike (a closure's type is its own; a function pointer's is shared).
pub(crate) type ScriptFn = for<'a> fn(&'a Driver) -> BoxFuture<'a, Result<()>>;

/// A named test: its machines, its script, and where it stands among the others.
///
/// ```no_run
/// use futures::FutureExt;
/// use vmcheck::prelude::*;
///
/// async fn share_one_disk(d: &Driver) -> anyhow::Result<()> {
///     d.start_all().await?;
///     d.subtest("the target answers", async { Ok(()) }).await
/// }
///
/// let scenario = Scenario::new("share_one_disk", "share one NVMe disk", |d| share_one_disk(d).boxed())
///     .machine(NodeSpec::new("target", Role::Target, 1).with_disk(DiskSpec::nvme("disk0", 128)))
///     .machine(NodeSpec::new("initiator", Role::Initiator, 2));
/// ```
#[derive(Clone)]
pub struct Scenario {
    name: String,
    description: String,
    nodes: Vec<NodeSpec>,
    script: Script,
    hidden: bool,
    chain: Option<String>,
    after: Vec<String>,
    host_only: Option<String>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("chain", &self.chain)
            .field("after", &self.after)
            .field("hidden", &self.hidden)
            .field("host_only", &self.host_only)
            .field("machines", &self.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Scenario {
    /// A scenario named `name` (what `vmcheck run NAME` and the test harness call it), with a
    /// one-line description for `list`, running `script`. An `async fn f(d: &Driver) ->
    /// Result<()>` is passed as `|d| f(d).boxed()` (`futures::FutureExt`); a closure that captures
    /// values clones them into an `async move` block.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        script: impl for<'a> Fn(&'a Driver) -> BoxFuture<'a, Result<()>> + Send + Sync + 'static,
    ) -> Scenario {
        Scenario {
            name: name.into(),
            description: description.into(),
            nodes: Vec::new(),
            script: Arc::new(script),
            hidden: false,
            chain: None,
            after: Vec::new(),
            host_only: None,
        }
    }

    /// Adds a machine.
    pub fn machine(mut self, node: NodeSpec) -> Scenario {
        self.nodes.push(node);
        self
    }

    /// Adds machines.
    pub fn machines(mut self, nodes: impl IntoIterator<Item = NodeSpec>) -> Scenario {
        self.nodes.extend(nodes);
        self
    }

    /// Makes the scenario a case of the chain `chain`: the cases of a chain run in the order they
    /// were added to the suite, on one set of machines, and running a later case runs the
    /// earlier ones first ("run fio on the device attached in test case 1"). All cases of a chain
    /// declare the same machines; a chain stops at its first failed case.
    pub fn chain(mut self, chain: impl Into<String>) -> Scenario {
        self.chain = Some(chain.into());
        self
    }

    /// Runs this scenario only after `scenarios` (names in the same suite), when they are
    /// chosen in the same run; when one of them failed or was skipped, this one is skipped,
    /// with the reason in the report. Scenarios not chosen are not run for it. Under `cargo
    /// test`/`nextest`, where each scenario is a test of its own, the order does not apply.
    pub fn after<S: Into<String>>(mut self, scenarios: impl IntoIterator<Item = S>) -> Scenario {
        self.after.extend(scenarios.into_iter().map(Into::into));
        self
    }

    /// Hides the scenario: it runs when named exactly, but is not listed, not matched by
    /// patterns, and an ignored test under the test harness (the driver's own self-tests).
    pub fn hidden(mut self) -> Scenario {
        self.hidden = true;
        self
    }

    /// Declares that the scenario needs the host, and why (`"hot-plug through QMP"`): QMP, the
    /// guest agent, the test network's switch, the balloon, power, migration, or commands on
    /// more than the one machine a guest-mode driver runs on. Guest mode (`vmcheck run --local`,
    /// `--in-guest`) refuses it before anything runs, with this reason; `vmcheck list` shows
    /// where each scenario runs. A scenario without it runs unchanged in both modes.
    pub fn host_only(mut self, why: impl Into<String>) -> Scenario {
        self.host_only = Some(why.into());
        self
    }

    /// Why it needs the host ([`Scenario::host_only`]), if it does.
    pub fn host_only_reason(&self) -> Option<&str> {
        self.host_only.as_deref()
    }

    /// Whether guest mode runs it (it is not [`Scenario::host_only`]).
    pub fn runs_in_guest(&self) -> bool {
        self.host_only.is_none()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its one-line description.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// The machines it declares.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }
    /// Its chain, if it is a case of one.
    pub fn chain_name(&self) -> Option<&str> {
        self.chain.as_deref()
    }
    /// The scenarios it runs after.
    pub fn runs_after(&self) -> &[String] {
        &self.after
    }
    /// Whether it is hidden.
    pub fn is_hidden(&self) -> bool {
        self.hidden
    }
    /// Its script.
    pub fn script(&self) -> &Script {
        &self.script
    }
    /// The name of what runs as one unit: its chain, else itself.
    pub fn group_name(&self) -> &str {
        self.chain.as_deref().unwrap_or(&self.name)
    }
}

/// A set of scenarios: what `list` shows, `run` chooses from and the test harness turns into
/// tests. Scenarios keep the order they were added in (listed ones before hidden ones).
#[derive(Clone, Debug, Default)]
pub struct Suite {
    scenarios: Vec<Scenario>,
}

impl Suite {
    /// An empty suite.
    pub fn new() -> Suite {
        Suite::default()
    }

    /// Adds a scenario.
    pub fn with(mut self, scenario: Scenario) -> Suite {
        self.add(scenario);
        self
    }

    /// Adds a scenario.
    pub fn add(&mut self, scenario: Scenario) -> &mut Suite {
        self.scenarios.push(scenario);
        // Listed ones first; a stable sort keeps the order they were added in.
        self.scenarios.sort_by_key(|s| s.hidden);
        self
    }

    /// Adds scenarios.
    pub fn extend(&mut self, scenarios: impl IntoIterator<Item = Scenario>) -> &mut Suite {
        for s in scenarios {
            self.add(s);
        }
        self
    }

    /// Every scenario, listed ones first.
    pub fn scenarios(&self) -> &[Scenario] {
        &self.scenarios
    }

    /// The listed (not hidden) scenarios.
    pub fn listed(&self) -> impl Iterator<Item = &Scenario> {
        self.scenarios.iter().filter(|s| !s.hidden)
    }

    /// Checks the suite as a whole: names unique and usable, each scenario's machine names
    /// valid and distinct, a chain's cases declaring the same machines, `after` naming known
    /// scenarios without a cycle. The harness checks this before anything runs.
    pub fn check(&self) -> Result<()> {
        let mut names = HashSet::new();
        for s in &self.scenarios {
            if s.name.is_empty() || s.name.contains(char::is_whitespace) || s.name.contains('/') {
                bail!(
                    "scenario name {:?}: use letters, digits, '_' and '-', no spaces or '/'",
                    s.name
                );
            }
            if !names.insert(s.name.as_str()) {
                bail!("two scenarios are named {:?}", s.name);
            }
            let mut machines = HashSet::new();
            for n in &s.nodes {
                crate::config::validate_machine_name(&n.name)
                    .with_context(|| format!("scenario {}", s.name))?;
                if !machines.insert(n.name.as_str()) {
                    bail!("scenario {}: two machines are named {:?}", s.name, n.name);
                }
                for disk in &n.disks {
                    disk.check()
                        .with_context(|| format!("scenario {}, machine {}", s.name, n.name))?;
                }
            }
            if let Some(chain) = &s.chain {
                if names.contains(chain.as_str())
                    && self.scenarios.iter().any(|c| &c.name == chain && c.chain.is_none())
                {
                    bail!("chain {chain:?} has the name of a scenario; a chain runs as one test under that name");
                }
                let first = self
                    .scenarios
                    .iter()
                    .find(|c| c.chain.as_ref() == Some(chain))
                    .expect("s is in the chain");
                if first.nodes != s.nodes {
                    bail!(
                        "{} declares other machines than the first case of its chain {chain:?}, {}",
                        s.name,
                        first.name
                    );
                }
            }
        }
        for s in &self.scenarios {
            for a in &s.after {
                if !names.contains(a.as_str()) {
                    bail!("{} runs after {a:?}, which is no scenario of the suite", s.name);
                }
                if a == &s.name {
                    bail!("{} runs after itself", s.name);
                }
            }
        }
        // A cycle of `after`, over scenarios (a chain's cases are ordered by the chain itself).
        let index: HashMap<&str, usize> =
            self.scenarios.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let mut state = vec![0u8; self.scenarios.len()]; // 0 new, 1 on the path, 2 done
        fn visit(
            i: usize,
            all: &[Scenario],
            index: &HashMap<&str, usize>,
            state: &mut [u8],
            path: &mut Vec<usize>,
        ) -> Result<()> {
            match state[i] {
                2 => return Ok(()),
                1 => {
                    let from = path.iter().position(|&p| p == i).unwrap_or(0);
                    let cycle: Vec<&str> =
                        path[from..].iter().chain([&i]).map(|&p| all[p].name.as_str()).collect();
                    bail!("the order of the scenarios makes a cycle: {}", cycle.join(" after "));
                }
                _ => {}
            }
            state[i] = 1;
            path.push(i);
            for a in &all[i].after {
                visit(index[a.as_str()], all, index, state, path)?;
            }
            path.pop();
            state[i] = 2;
            Ok(())
        }
        for i in 0..self.scenarios.len() {
            visit(i, &self.scenarios, &index, &mut state, &mut Vec::new())?;
        }
        Ok(())
    }

    /// The scenarios `patterns` name, in the suite's order, each once: exact names (hidden ones
    /// too) or shell-style patterns (`hotremove_*`, `hotattach_tc[12]`) over the listed ones. A
    /// pattern that matches nothing is an error that lists the known names.
    pub fn select(&self, patterns: &[String]) -> Result<Vec<Scenario>> {
        let all = &self.scenarios;
        let mut chosen = BTreeSet::new();
        for p in patterns {
            if let Some(i) = all.iter().position(|s| &s.name == p) {
                chosen.insert(i);
                continue;
            }
            let pattern =
                glob::Pattern::new(p).with_context(|| format!("bad scenario pattern {p:?}"))?;
            let matching: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.hidden && pattern.matches(&s.name))
                .map(|(i, _)| i)
                .collect();
            if matching.is_empty() {
                bail!("no scenario matches {p:?}; known scenarios: {}", self.known());
            }
            chosen.extend(matching);
        }
        Ok(chosen.into_iter().map(|i| all[i].clone()).collect())
    }

    /// Why guest mode cannot run `selected` (`None` when it can): each host-only scenario among
    /// them, and each host-only earlier case of a selected chain case (which runs first), with
    /// its reason.
    pub fn guest_refusal(&self, selected: &[Scenario]) -> Option<String> {
        let mut why = Vec::new();
        for group in self.groups(selected) {
            for case in &group {
                if let Some(reason) = &case.host_only {
                    let chosen = selected.iter().any(|s| s.name == case.name);
                    let pulled = match (&case.chain, chosen) {
                        (Some(chain), false) => {
                            format!(" (an earlier case of chain {chain}, which runs first)")
                        }
                        _ => String::new(),
                    };
                    why.push(format!("{}{pulled} needs the host: {reason}", case.name));
                }
            }
        }
        (!why.is_empty()).then(|| why.join("\n"))
    }

    /// The machines of each group `selected` runs as (a scenario alone, a chain's cases
    /// together), with the group's name: what guest mode checks its `--local` and `--peer`
    /// against, and `--in-guest` boots.
    pub fn group_machines(&self, selected: &[Scenario]) -> Vec<(String, Vec<NodeSpec>)> {
        self.groups(selected)
            .into_iter()
            .map(|g| (g[0].group_name().to_string(), g[0].nodes.clone()))
            .collect()
    }

    /// The scenario named `name`; an unknown name lists the known ones.
    pub fn find(&self, name: &str) -> Result<&Scenario> {
        match self.scenarios.iter().find(|s| s.name == name) {
            Some(s) => Ok(s),
            None => bail!("unknown scenario {name:?}; known scenarios: {}", self.known()),
        }
    }

    fn known(&self) -> String {
        self.listed().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Runs one scenario on fresh machines, within the global timeout; the machines are stopped
    /// however it ends. A case of a chain runs with the earlier cases of its chain before it.
    pub async fn run_one(&self, scenario: &Scenario, options: &RunOptions) -> Outcome {
        self.run(std::slice::from_ref(scenario), options)
            .await
            .pop()
            .expect("one outcome per scenario run")
    }

    /// Runs `selected`: a scenario on machines of its own, the cases of a chain on one set of
    /// machines (with the chain's earlier cases run first when not selected), up to
    /// `options.jobs` of these groups side by side, each after the groups its scenarios run
    /// `after` (skipped when one of those did not pass). One outcome per scenario run,
    /// prerequisites included, in the suite's order whatever order they end in; each is also
    /// recorded in the run's reporter (`options.driver.reporter`).
    pub async fn run(&self, selected: &[Scenario], options: &RunOptions) -> Vec<Outcome> {
        let side_by_side = options.jobs > 1;
        let groups = self.groups(selected);
        // Each group's result, shared with the groups that run after it.
        type Done = Shared<BoxFuture<'static, Option<String>>>;
        let mut done: HashMap<String, Done> = HashMap::new();
        let mut runs = Vec::new();
        for cases in groups {
            let name = cases[0].group_name().to_string();
            // Views are made here, in order, so that the reporter lists the outcomes in this order.
            let reporter = options.driver.reporter.scenario(&name, side_by_side);
            let waits: Vec<(String, Done)> = cases
                .iter()
                .flat_map(|c| c.after.iter())
                .filter_map(|a| self.find(a).ok())
                .filter_map(|a| done.get(a.group_name()).map(|d| (a.name.clone(), d.clone())))
                .collect();
            let (tx, rx) = futures::channel::oneshot::channel::<Option<String>>();
            let rx: BoxFuture<'static, Option<String>> =
                rx.map(|r| r.unwrap_or_else(|_| Some("it did not run".into()))).boxed();
            done.insert(name.clone(), rx.shared());
            let run = async move {
                let mut failed_before = None;
                for (after, wait) in waits {
                    if let Some(why) = wait.await {
                        failed_before = Some(format!(
                            "skipped: runs after {after}, which did not pass ({why})"
                        ));
                        break;
                    }
                }
                let outcomes = match failed_before {
                    Some(reason) => cases.iter().map(|c| reporter.skip(&c.name, &reason)).collect(),
                    // Polled within the view's log scope: the machine API's lines go to its sinks.
                    None => {
                        crate::log::scope(reporter.clone(), run_group(&cases, options, reporter))
                            .await
                    }
                };
                let verdict = outcomes
                    .iter()
                    .find(|o| !o.passed())
                    .map(|o| format!("{} {}", o.name, o.verdict()));
                let _ = tx.send(verdict);
                outcomes
            };
            runs.push(run);
        }
        // `buffered` starts the groups in order (a group's prerequisites before it) and keeps
        // that order for the outcomes, not the order they end in.
        futures::stream::iter(runs).buffered(options.jobs.max(1)).concat().await
    }

    /// The groups that run on machines of their own, in the suite's order with every group after
    /// the groups it runs after: a scenario alone, or a chain's cases from its first up to the
    /// last selected one.
    fn groups(&self, selected: &[Scenario]) -> Vec<Vec<Scenario>> {
        let mut groups: Vec<Vec<Scenario>> = Vec::new();
        let mut done_chains = HashSet::new();
        for s in selected {
            match &s.chain {
                None => groups.push(vec![s.clone()]),
                Some(chain) if done_chains.insert(chain.clone()) => {
                    let last = selected
                        .iter()
                        .filter(|c| c.chain.as_ref() == Some(chain))
                        .map(|c| c.name.as_str())
                        .next_back()
                        .unwrap_or(&s.name);
                    let cases: Vec<Scenario> = self
                        .scenarios
                        .iter()
                        .filter(|c| c.chain.as_ref() == Some(chain))
                        .cloned()
                        .collect();
                    let upto =
                        cases.iter().position(|c| c.name == last).map_or(cases.len(), |i| i + 1);
                    groups.push(cases[..upto].to_vec());
                }
                Some(_) => {}
            }
        }
        // Order: a group comes after every chosen group it runs after (the suite's check has
        // refused cycles); otherwise the suite's order.
        let group_of = |name: &str| {
            self.scenarios.iter().find(|s| s.name == name).map(|s| s.group_name().to_string())
        };
        let mut placed: Vec<Vec<Scenario>> = Vec::new();
        let mut placed_names = HashSet::new();
        let chosen: HashSet<String> =
            groups.iter().map(|g| g[0].group_name().to_string()).collect();
        while !groups.is_empty() {
            let ready = groups
                .iter()
                .position(|g| {
                    g.iter()
                        .flat_map(|c| c.after.iter())
                        .filter_map(|a| group_of(a))
                        .all(|a| !chosen.contains(&a) || placed_names.contains(&a))
                })
                .unwrap_or(0);
            let g = groups.remove(ready);
            placed_names.insert(g[0].group_name().to_string());
            placed.push(g);
        }
        placed
    }
}

/// vmcheck's own scenarios: the seed plans.
pub fn builtin() -> Suite {
    let mut suite = Suite::new();
    suite.add(fio_nvme_basic::scenario());
    // "The io tests only start running when basic tests have succeeded" (seed 002).
    let io = |s: Scenario| s.after([fio_nvme_basic::NAME]);
    suite.extend(hotremove::scenarios().into_iter().map(io));
    suite.extend(attach_detach::scenarios().into_iter().map(io));
    suite.extend(network_faults::scenarios().into_iter().map(io));
    suite.extend(balloon::scenarios());
    suite.extend(lifecycle::scenarios().into_iter().map(io));
    suite.extend(media_error::scenarios().into_iter().map(io));
    suite
}

/// The driver's own self-tests, kept apart from the product's scenarios: hidden (run by exact
/// name: the process-hygiene tests start them in a child `vmcheck`), never listed. vmcheck's
/// binary adds them to [`builtin`].
pub fn selftests() -> Vec<Scenario> {
    selftest::scenarios()
}

/// One part of a suite split over several machines (`vmcheck run --shard K/N`): K of N, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// K: which part, from 1.
    pub index: u32,
    /// N: how many parts.
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Shard> {
        let (k, n) =
            s.split_once('/').with_context(|| format!("a shard is K/N, like 1/3, not {s:?}"))?;
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
        let key = s.group_name();
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        hash % u64::from(self.count) == u64::from(self.index - 1)
    }
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
    /// Open the REPL on the machines when a subtest fails (`--pause-on-failure`, see
    /// `repl::pause`); the run ends as it would have once it quits.
    pub pause_on_failure: bool,
    /// `--in-guest`: boot each group's machines here, but let vmcheck itself run the cases
    /// inside the first initiator, in guest mode, and report what it reports (see
    /// ARCHITECTURE.md, "Guest mode").
    pub in_guest: bool,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            driver: Default::default(),
            config: None,
            global_timeout: None,
            jobs: 1,
            pause_on_failure: false,
            in_guest: false,
        }
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

/// The step name under which findings of the watches outside any step are recorded.
pub const OUTSIDE_STEPS: &str = "health watches (outside steps)";

/// A case's result with what the watches saw outside its steps (between them, before the first,
/// in its last moments): recorded as a failed subtest [`OUTSIDE_STEPS`], and the case fails
/// (unless it failed already).
async fn with_unreported_findings(
    driver: &Driver,
    reporter: &crate::report::Reporter,
    result: Result<()>,
) -> Result<()> {
    let found = driver.unreported_findings().await;
    if found.is_empty() {
        return result;
    }
    let text = found.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n\n");
    reporter.record_subtest(crate::report::SubtestResult {
        name: OUTSIDE_STEPS.into(),
        error: Some(text.clone()),
        ..Default::default()
    });
    match result {
        Ok(()) => Err(anyhow::anyhow!("{OUTSIDE_STEPS}: {text}")),
        Err(e) => Err(e.context(format!("also, {OUTSIDE_STEPS}: {text}"))),
    }
}

/// Runs `cases` one after another on one driver; a failed case fails the ones after it. The
/// outcomes are recorded in `reporter`, the group's view of the run's reporter.
async fn run_group(
    cases: &[Scenario],
    options: &RunOptions,
    reporter: crate::report::Reporter,
) -> Vec<Outcome> {
    let started = std::time::Instant::now();
    let first = &cases[0];
    let name_of = |s: &Scenario| match &options.config {
        Some(c) if cases.len() == 1 => c.name.clone(),
        _ => s.name.to_string(),
    };
    let global = options
        .global_timeout
        .or_else(|| {
            options.config.as_ref().map(|c| std::time::Duration::from_secs(c.global_timeout))
        })
        .unwrap_or_else(crate::timeouts::global);
    let mut nodes = first.nodes.clone();
    // At a terminal: a line per running scenario side by side, and a chain's case k of n.
    let group_line = (cases.len() > 1 || !reporter.prefix().is_empty())
        .then(|| crate::progress::spinner("setting up"));
    let driver = async {
        if let Some(config) = &options.config {
            config.apply(&mut nodes)?;
        }
        // Each scenario (or chain) keeps its logs and its transcript in a directory of its own
        // under --out.
        let mut driver_options = options.driver.clone();
        driver_options.reporter = reporter.clone();
        if let Some(out) = &options.driver.out_dir {
            let dir = out.join(first.group_name());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            reporter
                .open_transcript(&dir.join("transcript.log"))
                .with_context(|| format!("creating {}/transcript.log", dir.display()))?;
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
                        skipped: None,
                    })
                })
                .collect();
        }
    };
    // The first case also carries the driver's setup (images, accelerator, run directory).
    let mut setup = started.elapsed();
    let deadline = tokio::time::Instant::now() + global;
    if options.pause_on_failure {
        let mut cases_suite = Suite::new();
        cases_suite.extend(cases.iter().cloned());
        driver.set_failure_hook(Some(crate::repl::pause::hook(cases_suite, deadline)));
    }
    // --in-guest: the cases run inside the initiator, by vmcheck in guest mode; what it
    // reported comes back case by case below. Its time before the first case (boot, copy) is
    // set-up.
    let mut in_guest = match options.in_guest {
        true => {
            let began = std::time::Instant::now();
            let ran = crate::in_guest::run(&driver, cases, deadline).await;
            let guest_time: std::time::Duration = match &ran {
                Ok(c) => c.iter().map(|c| c.duration).sum(),
                Err(_) => std::time::Duration::ZERO,
            };
            setup += began.elapsed().saturating_sub(guest_time);
            Some(ran.map(|c| c.into_iter()))
        }
        false => None,
    };
    let mut outcomes = Vec::new();
    let mut broken: Option<String> = None;
    for (k, case) in cases.iter().enumerate() {
        let name = name_of(case);
        if let Some(line) = &group_line {
            // Side by side, the line's `[name] ` prefix already names the scenario or chain.
            let group = if reporter.prefix().is_empty() {
                format!("{}: ", first.group_name())
            } else {
                String::new()
            };
            line.set_message(match cases.len() {
                1 => format!("{group}running"),
                n => format!("{group}case {} of {n}: {name}", k + 1),
            });
        }
        let case_started = std::time::Instant::now();
        let mut took = None;
        let result = match (&broken, in_guest.as_mut()) {
            (Some(earlier), _) => Err(HarnessError(format!(
                "not run: the earlier case {earlier} of its chain failed"
            ))
            .into()),
            (None, Some(Ok(reported))) => match reported.next() {
                Some(c) if c.name == case.name => {
                    took = Some(c.duration);
                    c.replay(&reporter)
                }
                _ => {
                    Err(HarnessError(format!("the in-guest run reported nothing of {}", case.name))
                        .into())
                }
            },
            (None, Some(Err(e))) => Err(HarnessError(format!("{e:#}")).into()),
            (None, None) => match tokio::time::timeout_at(deadline, (case.script)(&driver)).await {
                Ok(r) => r,
                Err(_) => {
                    Err(HarnessError(format!("the global timeout of {global:?} ran out")).into())
                }
            },
        };
        // What the host's watches saw during an in-guest run goes with its last case that ran
        // (the host cannot tell the cases apart in time).
        let result = match in_guest.is_some() && result.is_ok() && k + 1 < cases.len() {
            true => result,
            false => with_unreported_findings(&driver, &reporter, result).await,
        };
        let harness_error = result.as_ref().err().is_some_and(is_harness_error);
        let error = result.err().map(|e| format!("{e:#}{}", console_tails(&driver)));
        if error.is_some() {
            broken.get_or_insert_with(|| name.clone());
        }
        outcomes.push(reporter.end_case(
            &name,
            error,
            harness_error,
            took.unwrap_or_else(|| case_started.elapsed()),
            std::mem::take(&mut setup),
        ));
    }
    let teardown = std::time::Instant::now();
    driver.stop_watches();
    for cost in driver.watch_costs() {
        reporter.line(&cost);
    }
    // Per-test logs: each machine's whole dmesg next to its console log and QMP events.
    driver.keep_logs().await;
    driver.kill_all().await;
    match driver.is_guest_mode() {
        true => reporter.line(&format!(
            "guest mode: no machine stopped (logs kept in {:.2} s)",
            teardown.elapsed().as_secs_f64()
        )),
        false => {
            reporter.line(&format!("machines stopped in {:.2} s", teardown.elapsed().as_secs_f64()))
        }
    }
    // The group's timeline (events and fio series) as JSON and SVG, next to its logs.
    if options.driver.out_dir.is_some() {
        let timeline = reporter.timeline(first.group_name());
        if let Err(e) = timeline.write(driver.log_dir()) {
            reporter.line(&format!("timeline not written: {e:#}"));
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(patterns: &[&str]) -> Result<Vec<String>> {
        let mut suite = builtin();
        suite.extend(selftests());
        let chosen = suite.select(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
        Ok(chosen.iter().map(|s| s.name.clone()).collect())
    }

    fn nothing(_: &Driver) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }

    #[test]
    fn scenarios_are_selected_by_name_and_pattern_in_registration_order_once() {
        assert_eq!(
            names(&["hotremove_blk_tc2", "fio_nvme_basic"]).unwrap(),
            ["fio_nvme_basic", "hotremove_blk_tc2"]
        );
        let all_blk = names(&["hotremove_blk_*"]).unwrap();
        assert_eq!(
            all_blk,
            [
                "hotremove_blk_tc1",
                "hotremove_blk_tc2",
                "hotremove_blk_tc3",
                "hotremove_blk_tc4",
                "hotremove_blk_tc5"
            ]
        );
        assert_eq!(
            names(&["hotremove_blk_tc[12]", "hotremove_blk_tc1"]).unwrap(),
            ["hotremove_blk_tc1", "hotremove_blk_tc2"]
        );
        // Hidden scenarios by exact name only.
        assert_eq!(names(&["selftest-pass"]).unwrap(), ["selftest-pass"]);
        assert!(names(&["selftest-*"]).is_err());
    }

    #[test]
    fn shards_cover_every_scenario_exactly_once_and_keep_chains_whole() {
        let suite = builtin();
        let listed: Vec<&Scenario> = suite.listed().collect();
        for n in 1..=5 {
            let shards: Vec<Shard> = (1..=n).map(|k| format!("{k}/{n}").parse().unwrap()).collect();
            for s in &listed {
                let holders = shards.iter().filter(|sh| sh.contains(s)).count();
                assert_eq!(holders, 1, "{} is in {holders} of {n} shards", s.name);
                if let Some(chain) = &s.chain {
                    let first = listed.iter().find(|c| c.chain.as_ref() == Some(chain)).unwrap();
                    assert!(
                        shards.iter().all(|sh| sh.contains(s) == sh.contains(first)),
                        "chain {chain} split by {n} shards"
                    );
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
        assert!(
            e.contains("no scenario matches \"hotremove_nope*\"") && e.contains("fio_nvme_basic"),
            "{e}"
        );
        let e = names(&["[unclosed"]).unwrap_err().to_string();
        assert!(e.contains("[unclosed"), "{e}");
    }

    #[test]
    fn the_builtin_suite_passes_its_own_check() {
        builtin().check().unwrap();
    }

    #[test]
    fn a_bad_suite_is_refused_with_a_reason() {
        use crate::config::{NodeSpec, Role};
        let one = |name: &str| {
            Scenario::new(name, "d", nothing).machine(NodeSpec::new("vm", Role::Initiator, 2))
        };
        let refused = |suite: Suite| suite.check().unwrap_err().to_string();
        assert!(refused(Suite::new().with(one("a")).with(one("a")))
            .contains("two scenarios are named \"a\""));
        let twins = one("a").machine(NodeSpec::new("vm", Role::Target, 1));
        assert!(refused(Suite::new().with(twins)).contains("two machines are named \"vm\""));
        let other_machines = Scenario::new("b", "d", nothing)
            .machine(NodeSpec::new("other", Role::Initiator, 2))
            .chain("c");
        let e = refused(Suite::new().with(one("a").chain("c")).with(other_machines));
        assert!(
            e.contains("b declares other machines than the first case of its chain \"c\""),
            "{e}"
        );
        assert!(refused(Suite::new().with(one("a").after(["nope"])))
            .contains("a runs after \"nope\", which is no scenario"));
        let e = refused(
            Suite::new()
                .with(one("a").after(["b"]))
                .with(one("b").after(["c"]))
                .with(one("c").after(["a"])),
        );
        assert!(e.contains("cycle: a after b after c after a"), "{e}");
        assert!(refused(Suite::new().with(one("has space"))).contains("no spaces"));
    }

    #[test]
    fn groups_come_after_what_they_run_after_and_chains_keep_their_cases_whole() {
        use crate::config::{NodeSpec, Role};
        let one = |name: &str| {
            Scenario::new(name, "d", nothing).machine(NodeSpec::new("vm", Role::Initiator, 2))
        };
        let suite = Suite::new()
            .with(one("io").after(["basic"]))
            .with(one("basic"))
            .with(one("tc1").chain("chain"))
            .with(one("tc2").chain("chain").after(["io"]));
        suite.check().unwrap();
        let chosen = suite.select(&["tc2".into(), "io".into(), "basic".into()]).unwrap();
        let groups: Vec<Vec<String>> = suite
            .groups(&chosen)
            .iter()
            .map(|g| g.iter().map(|s| s.name.clone()).collect())
            .collect();
        assert_eq!(groups, [vec!["basic"], vec!["io"], vec!["tc1", "tc2"]]);
    }

    #[tokio::test]
    async fn a_scenario_after_a_failed_one_is_skipped_with_the_reason() {
        use crate::config::{NodeSpec, Role};
        // Bad machines fail at driver set-up, before anything boots: a failure without a VM.
        let broken =
            Scenario::new("basic", "d", nothing).machine(NodeSpec::new("bad-", Role::Initiator, 2));
        let io = Scenario::new("io", "d", nothing)
            .machine(NodeSpec::new("vm", Role::Initiator, 2))
            .after(["basic"]);
        let suite = Suite::new().with(broken).with(io);
        let reporter = crate::report::Reporter::in_memory();
        let mut options = RunOptions::default();
        options.driver.reporter = reporter.clone();
        let outcomes = suite.run(suite.scenarios(), &options).await;
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes[0].error.is_some(), "{outcomes:?}");
        let skipped = outcomes[1].skipped.as_deref().unwrap_or_default();
        assert!(skipped.contains("runs after basic, which did not pass"), "{outcomes:?}");
        assert_eq!(outcomes[1].verdict(), "skipped");
        assert_eq!(reporter.log_totals(), 1, "a skipped scenario is not a failure");
        assert!(
            reporter.terminal_text().contains("0 passed, 1 failed, 1 skipped"),
            "{}",
            reporter.terminal_text()
        );
    }
}
