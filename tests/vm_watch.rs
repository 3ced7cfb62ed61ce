//! The health watches (`src/watch.rs`) end to end: the real `vmcheck` binary runs hidden
//! self-tests that provoke, on purpose, what the watches are for, and must fail (exit 1, a
//! `<failure>` in JUnit, not an `<error>`) with what was seen in the report; an allowed splat
//! passes, the allowance shown.

use std::process::{Command, Stdio};
use std::time::Duration;

struct Ran {
    code: Option<i32>,
    log: String,
    junit: String,
}

fn run(scenario: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .args(["run", scenario, "--junit", junit.to_str().unwrap()])
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ran {
        code: out.status.code(),
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
        junit: std::fs::read_to_string(&junit).unwrap_or_default(),
    }
}

/// The `time` JUnit gives the test case named `name`.
fn case_seconds(xml: &str, name: &str) -> f64 {
    let at = xml.find(&format!(r#"<testcase name="{name}""#)).expect("the test case");
    let rest = &xml[at..];
    let time = rest.find(r#"time=""#).expect("a time") + 6;
    rest[time..].split('"').next().unwrap().parse().unwrap()
}

#[test]
fn a_kernel_splat_fails_the_step_it_appeared_in_with_the_splat() {
    let r = run("selftest-kernel-warning");
    assert_eq!(r.code, Some(1), "log:\n{}", r.log);
    let step = r#"<testcase name="freeze a busy guest for 6 s""#;
    assert!(r.junit.contains(step), "{}", r.junit);
    assert!(r.junit.contains("<failure") && !r.junit.contains("<error"), "{}", r.junit);
    // The splat itself, its first line and its registers, in JUnit and in the summary.
    for text in ["kernel splat on machine", "BUG: soft lockup - CPU#0 stuck for", "RIP:"] {
        assert!(r.junit.contains(text), "{text:?} missing from JUnit:\n{}", r.junit);
    }
    assert!(r.log.contains("FAILED after") && r.log.contains("BUG: soft lockup"), "{}", r.log);
    // Failed in that step: the scenario's next step never ran.
    assert!(!r.junit.contains("the machine still answers"), "{}", r.junit);
}

#[test]
fn an_allowed_splat_passes_and_the_allowance_is_shown() {
    let r = run("selftest-kernel-warning-allowed");
    assert_eq!(r.code, Some(0), "log:\n{}", r.log);
    assert!(r.log.contains("allowed in step \"freeze a busy guest for 6 s\""), "{}", r.log);
    assert!(
        r.log.contains("    allowed: kernel splat on machine: bug: watchdog: BUG: soft lockup"),
        "{}",
        r.log
    );
    assert!(r.junit.contains("allowed in step freeze a busy guest for 6 s"), "{}", r.junit);
}

#[test]
fn the_target_daemon_dying_fails_the_step_within_seconds_with_its_last_lines() {
    let r = run("selftest-daemon-dies");
    assert_eq!(r.code, Some(1), "log:\n{}", r.log);
    assert!(r.junit.contains("<failure") && !r.junit.contains("<error"), "{}", r.junit);
    assert!(r.junit.contains("the service vmcheck-target exited with status 137"), "{}", r.junit);
    // Its last lines: the daemon's own, up to the kill.
    assert!(
        r.junit.contains("vmcheck-target serving") && r.junit.contains("Killed"),
        "{}",
        r.junit
    );
    // The step would carry on for 30 s; the watch ended it within a few.
    let took = case_seconds(&r.junit, "kill the target daemon, then carry on");
    assert!(took < Duration::from_secs(8).as_secs_f64(), "the step took {took} s");
}

#[test]
fn a_broken_invariant_fails_the_step_within_its_period_and_names_it() {
    let r = run("selftest-invariant-broken");
    assert_eq!(r.code, Some(1), "log:\n{}", r.log);
    assert!(r.junit.contains("<failure") && !r.junit.contains("<error"), "{}", r.junit);
    assert!(
        r.junit.contains("invariant broken on machine: sleep runs: no process sleep runs"),
        "{}",
        r.junit
    );
    // The other invariant held all along, and the first step passed.
    assert!(!r.junit.contains("the daemon answers Health:"), "{}", r.junit);
    let took = case_seconds(&r.junit, "kill the watched process, then carry on");
    assert!(took < 8.0, "the step took {took} s");
    // Each watch's cost is stated.
    assert!(
        r.log.contains(r#"watch "sleep runs": "#)
            && r.log.contains(r#"watch "the daemon answers Health": "#),
        "{}",
        r.log
    );
}
