//! The reporter: where a run's lines go and what its results were, recorded once.
//!
//! One [`Reporter`] per `vmcheck run` (or REPL session, bench, test) owns the sinks: the
//! terminal (stderr), the transcript file of `--out DIR` and the console-echo switch. It records
//! each subtest as it ends and each scenario's [`Outcome`] as its case ends, and renders the
//! subtest tables, the closing summary and JUnit from that one record.
//!
//! Each scenario (or chain) runs under a view of the run's reporter ([`Reporter::scenario`]): the
//! same sinks and record, plus the scenario's own subtests, its own transcript
//! (`DIR/<name>/transcript.log`) and, when scenarios run side by side (`--jobs N`), a `[name] `
//! prefix on its terminal lines. Outcomes are kept in the order the views were made (the
//! selection's registration order), whatever order the scenarios end in.
//!
//! Code that has no handle (the machine API, scenario scripts) logs through [`crate::log::line`],
//! which resolves to the reporter the driver scoped around it.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::timeline::{Event, EventKind, FioSeries, Timeline};

/// One subtest's outcome.
#[derive(Debug, Clone, Default)]
pub struct SubtestResult {
    /// The subtest's name, as given to [`Driver::subtest`](crate::driver::Driver::subtest).
    pub name: String,
    /// How long it took.
    pub duration: Duration,
    /// Why it did not pass; `None` when it passed.
    pub error: Option<String>,
    /// The error is the harness's or a machine's (JUnit `<error>`), not a failed expectation
    /// about the system under test (JUnit `<failure>`).
    pub harness_error: bool,
    /// What the watches saw during the step that the scenario allowed for it
    /// (`Driver::allow_kernel_message`): shown under the step, and in JUnit's system-out.
    pub allowed: Vec<String>,
}

impl SubtestResult {
    /// "ok", "FAILED" (the system under test misbehaved) or "ERROR" (the harness broke).
    pub fn verdict(&self) -> &'static str {
        match (&self.error, self.harness_error) {
            (None, _) => "ok",
            (Some(_), false) => "FAILED",
            (Some(_), true) => "ERROR",
        }
    }
}

/// What a run of one scenario gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The scenario's name.
    pub name: String,
    /// Its subtests, in the order they ran.
    pub subtests: Vec<SubtestResult>,
    /// Why the scenario did not pass (its first error); `None` when it passed or was skipped.
    pub error: Option<String>,
    /// The error is the harness's or a machine's, not the system under test's.
    pub harness_error: bool,
    /// How long it took, set-up included.
    pub duration: Duration,
    /// Why it did not run (a scenario it runs after did not pass); never with an error.
    pub skipped: Option<String>,
}

impl Outcome {
    /// Ran and passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.skipped.is_none()
    }
    /// "passed", "FAILED", "ERROR" (the harness or a machine broke) or "skipped".
    pub fn verdict(&self) -> &'static str {
        match (&self.error, self.harness_error, &self.skipped) {
            (Some(_), false, _) => "FAILED",
            (Some(_), true, _) => "ERROR",
            (None, _, Some(_)) => "skipped",
            (None, _, None) => "passed",
        }
    }
}

/// Where terminal lines go: stderr, or a buffer (the reporter's own tests).
enum Terminal {
    Stderr,
    Buffer(Mutex<Vec<u8>>),
}

/// What every view of one run shares.
struct Run {
    terminal: Terminal,
    transcript: Mutex<Option<std::fs::File>>,
    echo_console: AtomicBool,
    /// (view, outcome), in the order the cases ended.
    outcomes: Mutex<Vec<(usize, Outcome)>>,
    views: AtomicUsize,
    /// Each view's directory under `--out` (where its transcript is).
    dirs: Mutex<std::collections::HashMap<usize, std::path::PathBuf>>,
    /// `--out DIR`: JUnit points to its `index.html`.
    out_dir: Mutex<Option<std::path::PathBuf>>,
}

/// One scenario's (or chain's) part of the run.
#[derive(Default)]
struct View {
    /// Its place among the run's outcomes.
    order: usize,
    /// `[name] ` on terminal lines when scenarios run side by side.
    prefix: String,
    transcript: Mutex<Option<std::fs::File>>,
    subtests: Mutex<Vec<SubtestResult>>,
    /// Subtests up to here belong to cases that have ended.
    closed: AtomicUsize,
    /// Its events and fio series, on the clock started when the view was made.
    clock: crate::timeline::Clock,
    timeline: Mutex<crate::timeline::Timeline>,
}

/// A run's sinks and record. Cheap to clone; clones share both.
#[derive(Clone)]
pub struct Reporter {
    run: Arc<Run>,
    view: Arc<View>,
}

impl Default for Reporter {
    fn default() -> Reporter {
        Reporter::new()
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("view", &self.view.order)
            .field("prefix", &self.view.prefix)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// Lines to stderr; console lines echoed.
    pub fn new() -> Reporter {
        Reporter::with(Terminal::Stderr, None)
    }

    /// [`Reporter::new`], and every line also to the transcript `path`.
    pub fn with_transcript(path: &Path) -> std::io::Result<Reporter> {
        Ok(Reporter::with(Terminal::Stderr, Some(std::fs::File::create(path)?)))
    }

    /// Terminal lines kept in memory (see [`Reporter::terminal_text`]), for tests.
    pub fn in_memory() -> Reporter {
        Reporter::with(Terminal::Buffer(Mutex::default()), None)
    }

    fn with(terminal: Terminal, transcript: Option<std::fs::File>) -> Reporter {
        let run = Run {
            terminal,
            transcript: Mutex::new(transcript),
            echo_console: AtomicBool::new(true),
            outcomes: Mutex::default(),
            views: AtomicUsize::new(0),
            dirs: Mutex::default(),
            out_dir: Mutex::default(),
        };
        Reporter { run: Arc::new(run), view: Arc::default() }
    }

    /// A view for the scenario (or chain) `name`: the run's sinks and record, its own subtests;
    /// `[name] ` before its terminal lines when `prefixed`. Views order the outcomes: make them in
    /// the order the summary should list them.
    pub fn scenario(&self, name: &str, prefixed: bool) -> Reporter {
        let order = self.run.views.fetch_add(1, Ordering::Relaxed) + 1;
        let prefix = if prefixed { format!("[{name}] ") } else { String::new() };
        Reporter {
            run: self.run.clone(),
            view: Arc::new(View { order, prefix, ..View::default() }),
        }
    }

    /// Records an event on this view's timeline, now.
    pub fn event(&self, kind: EventKind, machine: Option<&str>, text: &str) {
        self.event_at_secs(self.view.clock.seconds(Instant::now()), kind, machine, text, false);
    }

    /// Records an event that happened at `at`.
    pub fn event_at(&self, at: Instant, kind: EventKind, machine: Option<&str>, text: &str) {
        self.event_at_secs(self.view.clock.seconds(at), kind, machine, text, false);
    }

    /// Records an event that happened at the wall-clock time `unix` (seconds since the epoch:
    /// QEMU's QMP timestamps).
    pub fn event_at_unix(&self, unix: f64, kind: EventKind, machine: Option<&str>, text: &str) {
        self.event_at_secs(self.view.clock.seconds_unix(unix), kind, machine, text, false);
    }

    fn event_at_secs(
        &self,
        t: f64,
        kind: EventKind,
        machine: Option<&str>,
        text: &str,
        failed: bool,
    ) {
        let event =
            Event { t, kind, machine: machine.map(str::to_string), text: text.to_string(), failed };
        self.view.timeline.lock().unwrap().events.push(event);
    }

    /// Seconds from this view's start (its timeline's `t = 0`) to `at`.
    pub fn seconds(&self, at: Instant) -> f64 {
        self.view.clock.seconds(at)
    }

    /// The host's wall clock (seconds since the epoch) at this view's timeline start.
    pub fn started_unix(&self) -> f64 {
        self.view.clock.unix()
    }

    /// Adds a fio run's series to this view's timeline.
    pub fn add_fio_series(&self, series: FioSeries) {
        self.view.timeline.lock().unwrap().fio.push(series);
    }

    /// This view's timeline so far, named `scenario`, its events sorted by time.
    pub fn timeline(&self, scenario: &str) -> Timeline {
        let mut t = self.view.timeline.lock().unwrap().clone();
        t.scenario = scenario.to_string();
        t.started_unix = self.view.clock.unix();
        t.sort();
        t
    }

    /// `[name] ` when this view's scenario runs side by side with others, else empty.
    pub fn prefix(&self) -> &str {
        &self.view.prefix
    }

    /// Also writes this view's lines, unprefixed, to `path` (`DIR/<name>/transcript.log`).
    pub fn open_transcript(&self, path: &Path) -> std::io::Result<()> {
        *self.view.transcript.lock().unwrap() = Some(std::fs::File::create(path)?);
        if let Some(dir) = path.parent() {
            self.run.dirs.lock().unwrap().insert(self.view.order, dir.to_path_buf());
        }
        Ok(())
    }

    /// Whether console lines are echoed to the terminal (they always go to the transcripts and
    /// the per-machine log). The REPL turns this off at its prompt.
    pub fn set_echo_console(&self, on: bool) {
        self.run.echo_console.store(on, Ordering::Relaxed);
    }

    /// Whether console lines are echoed to the terminal now (see [`Reporter::set_echo_console`]).
    pub fn echo_console(&self) -> bool {
        self.run.echo_console.load(Ordering::Relaxed)
    }

    fn write(&self, line: &str, to_terminal: bool) {
        if to_terminal {
            let text = format!("{}{line}\n", self.view.prefix);
            match &self.run.terminal {
                // One write per line: lines of scenarios running side by side do not mix.
                // Through the progress lines, when a terminal shows them, so none tears.
                Terminal::Stderr => crate::progress::write_stderr(text.as_bytes()),
                Terminal::Buffer(b) => b.lock().unwrap().extend_from_slice(text.as_bytes()),
            }
        }
        if let Some(f) = self.run.transcript.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{}{line}", self.view.prefix);
        }
        if let Some(f) = self.view.transcript.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// A plain log line (each line of a multi-line text).
    pub fn line(&self, text: &str) {
        for l in text.lines() {
            self.write(l, true);
        }
    }

    /// `machine # console line`.
    pub fn console_line(&self, machine: &str, text: &str) {
        self.write(&format!("{machine} # {text}"), self.echo_console());
    }

    /// Logs `label`, runs `f`, then logs `(N.NN seconds)`.
    pub async fn nested<T>(&self, label: &str, f: impl std::future::Future<Output = T>) -> T {
        self.line(label);
        let started = Instant::now();
        // Boxed: nested machine-API futures would otherwise be polled in deep, wide stack frames
        // (debug builds overflowed a test thread's 2 MiB stack).
        let out = Box::pin(f).await;
        self.line(&format!("({:.2} seconds)", started.elapsed().as_secs_f64()));
        out
    }

    /// What the terminal got, for an [`Reporter::in_memory`] reporter.
    pub fn terminal_text(&self) -> String {
        match &self.run.terminal {
            Terminal::Stderr => String::new(),
            Terminal::Buffer(b) => String::from_utf8_lossy(&b.lock().unwrap()).into_owned(),
        }
    }

    /// Records a subtest of this view.
    pub fn record_subtest(&self, result: SubtestResult) {
        let t = self.view.clock.seconds(Instant::now());
        self.event_at_secs(t, EventKind::SubtestEnd, None, &result.name, result.error.is_some());
        self.view.subtests.lock().unwrap().push(result);
    }

    /// This view's subtests so far.
    pub fn subtests(&self) -> Vec<SubtestResult> {
        self.view.subtests.lock().unwrap().clone()
    }

    /// Ends this view's current case: its subtests are those recorded since the last case ended.
    /// Logs its subtest table (over `took`), records its outcome (which lasted `took + setup`)
    /// and returns it. A failure outside any subtest becomes a subtest "test script", so that it
    /// shows in JUnit.
    pub fn end_case(
        &self,
        name: &str,
        error: Option<String>,
        harness_error: bool,
        took: Duration,
        setup: Duration,
    ) -> Outcome {
        let mut subtests = {
            let all = self.view.subtests.lock().unwrap();
            let from = self.view.closed.swap(all.len(), Ordering::Relaxed).min(all.len());
            all[from..].to_vec()
        };
        self.line(&summary_table(name, &subtests, took));
        if let Some(e) = &error {
            if subtests.iter().all(|s| s.error.is_none()) {
                subtests.push(SubtestResult {
                    name: "test script".into(),
                    duration: took,
                    error: Some(e.clone()),
                    harness_error,
                    allowed: Vec::new(),
                });
            }
        }
        self.record(Outcome {
            name: name.to_string(),
            subtests,
            error,
            harness_error,
            duration: took + setup,
            skipped: None,
        })
    }

    /// Records a case that was not run, with the reason, and returns it.
    pub fn skip(&self, name: &str, reason: &str) -> Outcome {
        self.line(&format!("{name}: {reason}"));
        self.record(Outcome {
            name: name.to_string(),
            subtests: Vec::new(),
            error: None,
            harness_error: false,
            duration: Duration::ZERO,
            skipped: Some(reason.to_string()),
        })
    }

    /// Records an outcome as it is (a case that never ran: its driver could not be set up).
    pub fn record(&self, outcome: Outcome) -> Outcome {
        self.run.outcomes.lock().unwrap().push((self.view.order, outcome.clone()));
        outcome
    }

    /// Every outcome of the run, in the order of their views.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes_with_dirs().into_iter().map(|(o, _)| o).collect()
    }

    /// Every outcome of the run, in the order of their views, each with its scenario's (or
    /// chain's) directory under `--out`, if it has one.
    pub fn outcomes_with_dirs(&self) -> Vec<(Outcome, Option<std::path::PathBuf>)> {
        let mut all = self.run.outcomes.lock().unwrap().clone();
        // Stable: a chain's cases keep the order they ended in.
        all.sort_by_key(|(order, _)| *order);
        let dirs = self.run.dirs.lock().unwrap();
        all.into_iter().map(|(order, o)| (o, dirs.get(&order).cloned())).collect()
    }

    /// Sets the run's `--out DIR`: JUnit then points to `DIR/index.html` and each scenario's
    /// timeline (`[[ATTACHMENT|path]]` in its test cases' system-out).
    pub fn set_out_dir(&self, dir: &Path) {
        *self.run.out_dir.lock().unwrap() = Some(dir.to_path_buf());
    }

    /// Logs the end of a run: each scenario's verdict and error, then the summary table.
    pub fn log_summary(&self) {
        let outcomes = self.outcomes();
        for o in &outcomes {
            match (&o.error, &o.skipped) {
                (Some(e), _) => self.line(&format!(
                    "{}: FAILED after {:.2} s:\n{e}",
                    o.name,
                    o.duration.as_secs_f64()
                )),
                (None, Some(why)) => self.line(&format!("{}: {why}", o.name)),
                (None, None) => {
                    self.line(&format!("{}: passed in {:.2} s", o.name, o.duration.as_secs_f64()))
                }
            }
        }
        self.line(&outcomes_table(&outcomes));
    }

    /// Logs the closing counts and returns how many scenarios failed (errors included).
    pub fn log_totals(&self) -> usize {
        let outcomes = self.outcomes();
        let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
        let skipped = outcomes.iter().filter(|o| o.error.is_none() && o.skipped.is_some()).count();
        let errors = outcomes.iter().filter(|o| o.harness_error).count();
        if errors > 0 {
            self.line(&format!("{errors} of the failed are errors: the harness or a machine broke, not the system under test"));
        }
        let passed = outcomes.len() - failed - skipped;
        match skipped {
            0 => self.line(&format!("{passed} passed, {failed} failed")),
            _ => self.line(&format!("{passed} passed, {failed} failed, {skipped} skipped")),
        }
        failed
    }

    /// Writes the run's JUnit XML: one test suite per scenario, one test case per subtest.
    pub fn write_junit(&self, path: &Path) -> Result<()> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let out = self.run.out_dir.lock().unwrap().clone();
        junit(&self.outcomes_with_dirs(), out.as_deref())
            .serialize(file)
            .map_err(|e| anyhow!("writing JUnit XML: {e}"))
    }
}

/// A test's subtests as a table: name, seconds, verdict; then the total.
pub fn summary_table(test: &str, results: &[SubtestResult], total: Duration) -> String {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0).max(20);
    let mut s = format!("{test}: subtests\n");
    for r in results {
        s += &format!(
            "  {:<width$}  {:>8.2} s  {}\n",
            r.name,
            r.duration.as_secs_f64(),
            r.verdict()
        );
        for a in &r.allowed {
            s += &format!("    allowed: {a}\n");
        }
    }
    s += &format!("  {:<width$}  {:>8.2} s\n", "total", total.as_secs_f64());
    s
}

/// The table `vmcheck run` ends with: one line per scenario run.
pub fn outcomes_table(outcomes: &[Outcome]) -> String {
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0).max(20);
    let mut s = String::from("summary\n");
    for o in outcomes {
        let verdict = o.verdict();
        let failed = o
            .subtests
            .iter()
            .find(|t| t.error.is_some())
            .map(|t| format!("  at: {}", t.name))
            .unwrap_or_default();
        s += &format!(
            "  {:<width$}  {verdict:<7} {:>8.2} s{failed}\n",
            o.name,
            o.duration.as_secs_f64()
        );
    }
    s
}

/// JUnit: one test suite per scenario, one test case per subtest, `<failure>` or, for a harness
/// error, `<error>`. With `--out` (`out`), each test case's system-out attaches the run's
/// `index.html` and its scenario's timeline picture (`[[ATTACHMENT|path]]`, the convention
/// Jenkins and GitLab read).
fn junit(
    outcomes: &[(Outcome, Option<std::path::PathBuf>)],
    out: Option<&Path>,
) -> quick_junit::Report {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("vmcheck");
    for (o, dir) in outcomes {
        let mut attachments = Vec::new();
        if let Some(out) = out {
            attachments.push(format!("[[ATTACHMENT|{}]]", out.join("index.html").display()));
        }
        if let Some(svg) = dir.as_ref().map(|d| d.join("timeline.svg")).filter(|p| p.exists()) {
            attachments.push(format!("[[ATTACHMENT|{}]]", svg.display()));
        }
        let mut suite = TestSuite::new(o.name.as_str());
        // The case's own time, set-up included (what `--in-guest` reads back).
        suite.time = Some(o.duration);
        if let Some(why) = &o.skipped {
            let mut status = TestCaseStatus::skipped();
            status.set_message(why.as_str());
            let mut case = TestCase::new(o.name.as_str(), status);
            case.set_classname(o.name.as_str());
            suite.add_test_case(case);
        }
        for r in &o.subtests {
            let status = match &r.error {
                None => TestCaseStatus::success(),
                Some(e) => {
                    let kind = if r.harness_error {
                        NonSuccessKind::Error
                    } else {
                        NonSuccessKind::Failure
                    };
                    let mut s = TestCaseStatus::non_success(kind);
                    s.set_message(e.lines().next().unwrap_or("failed"));
                    s.set_description(e.as_str());
                    s
                }
            };
            let mut case = TestCase::new(r.name.as_str(), status);
            case.set_classname(o.name.as_str());
            case.set_time(r.duration);
            let mut notes: Vec<String> =
                r.allowed.iter().map(|a| format!("allowed in step {}: {a}", r.name)).collect();
            notes.extend(attachments.iter().cloned());
            if !notes.is_empty() {
                case.set_system_out(notes.join("\n"));
            }
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str) -> SubtestResult {
        SubtestResult {
            name: name.into(),
            duration: Duration::from_millis(10),
            error: None,
            harness_error: false,
            allowed: Vec::new(),
        }
    }

    #[test]
    fn outcomes_keep_the_order_of_their_views_whatever_order_they_end_in() {
        let run = Reporter::in_memory();
        let (a, b) = (run.scenario("a", true), run.scenario("b", true));
        b.record_subtest(ok("b1"));
        b.end_case("b", None, false, Duration::ZERO, Duration::ZERO);
        a.record_subtest(ok("a1"));
        a.end_case("a", Some("boom".into()), false, Duration::ZERO, Duration::ZERO);
        let names: Vec<_> =
            run.outcomes().into_iter().map(|o| (o.name, o.subtests.len())).collect();
        // a's error outside any subtest shows as "test script".
        assert_eq!(names, [("a".to_string(), 2), ("b".to_string(), 1)]);
        let xml = junit(&run.outcomes_with_dirs(), None).to_string().unwrap();
        assert!(xml.find(r#"<testsuite name="a""#) < xml.find(r#"<testsuite name="b""#), "{xml}");
        assert!(
            xml.contains(r#"<testcase name="test script""#) && xml.contains("<failure"),
            "{xml}"
        );
    }

    #[test]
    fn a_case_gets_the_subtests_since_the_last_case_of_its_view() {
        let run = Reporter::in_memory();
        let chain = run.scenario("chain", false);
        chain.record_subtest(ok("one"));
        let first =
            chain.end_case("tc1", None, false, Duration::from_secs(1), Duration::from_secs(2));
        chain.record_subtest(ok("two"));
        chain.record_subtest(ok("three"));
        let second = chain.end_case("tc2", None, false, Duration::from_secs(1), Duration::ZERO);
        assert_eq!(first.subtests.len(), 1);
        assert_eq!(first.duration, Duration::from_secs(3), "the first case carries the set-up");
        assert_eq!(
            second.subtests.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["two", "three"]
        );
    }

    #[test]
    fn views_prefix_their_terminal_lines_only_when_side_by_side_and_echo_is_switchable() {
        let run = Reporter::in_memory();
        let side = run.scenario("fio", true);
        let alone = run.scenario("solo", false);
        side.line("subtest: x\n(0.01 seconds)");
        alone.line("subtest: y");
        side.console_line("target", "booted");
        run.set_echo_console(false);
        side.console_line("target", "hidden");
        assert_eq!(
            run.terminal_text(),
            "[fio] subtest: x\n[fio] (0.01 seconds)\nsubtest: y\n[fio] target # booted\n"
        );
    }

    #[test]
    fn transcripts_get_every_line_the_scenarios_own_unprefixed() {
        let dir = tempfile::tempdir().unwrap();
        let run = Reporter::with_transcript(&dir.path().join("transcript.log")).unwrap();
        let side = run.scenario("fio", true);
        side.open_transcript(&dir.path().join("fio.log")).unwrap();
        run.set_echo_console(false);
        side.line("subtest: x");
        side.console_line("target", "quiet");
        run.line("summary");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("transcript.log"), "[fio] subtest: x\n[fio] target # quiet\nsummary\n");
        assert_eq!(read("fio.log"), "subtest: x\ntarget # quiet\n");
    }

    #[test]
    fn the_summary_tables_keep_their_format() {
        let failed =
            SubtestResult { error: Some("no".into()), harness_error: true, ..ok("broken") };
        let t = summary_table("t", &[ok("a"), failed.clone()], Duration::from_secs(2));
        assert_eq!(t, "t: subtests\n  a                         0.01 s  ok\n  broken                    0.01 s  ERROR\n  total                     2.00 s\n");
        let o = Outcome {
            name: "t".into(),
            subtests: vec![ok("a"), failed],
            error: Some("no".into()),
            harness_error: true,
            duration: Duration::from_secs(2),
            skipped: None,
        };
        assert_eq!(
            outcomes_table(&[o]),
            "summary\n  t                     ERROR       2.00 s  at: broken\n"
        );
    }
}
