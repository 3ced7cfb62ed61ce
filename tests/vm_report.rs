//! The run report of `--out DIR`: a real run of the hidden self-tests `selftest-pass` and
//! `selftest-fail` through the `vmcheck` binary, then what it left: `index.html` (both verdicts,
//! the failure's text, links that lead to files), each scenario's timeline (JSON with the
//! subtests on it, SVG) and JUnit pointing to the report.

use std::path::Path;
use std::process::{Command, Stdio};

use vmcheck::timeline::{EventKind, Timeline};

fn hrefs(html: &str) -> Vec<String> {
    let re = regex::Regex::new(r##"(?:href|src)="([^"#]+)""##).unwrap();
    re.captures_iter(html).map(|c| c[1].replace("&amp;", "&")).collect()
}

fn timeline(dir: &Path) -> Timeline {
    let text = std::fs::read_to_string(dir.join("timeline.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_run_leaves_a_report_of_a_passed_and_a_failed_scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let junit = tmp.path().join("junit.xml");
    let status = Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .args(["run", "selftest-pass", "selftest-fail", "--out"])
        .arg(&out)
        .arg("--junit")
        .arg(&junit)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "one scenario fails");

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    // The summary table: both scenarios with their verdicts, the failing step named.
    assert!(html.contains("1 passed") && html.contains("1 FAILED"), "{html}");
    let row = |name: &str, verdict: &str| {
        let re = format!(
            r##"<tr><td><a href="#{name}">{name}</a></td><td class="[a-z]+">{verdict}</td>"##
        );
        regex::Regex::new(&re).unwrap().is_match(&html)
    };
    assert!(row("selftest-pass", "passed") && row("selftest-fail", "FAILED"), "{html}");
    assert!(html.contains("<td>an assertion that fails</td>"), "{html}");
    // The failure with its message and the console's last lines.
    assert!(html.contains("expected 2, the guest said 1"), "{html}");
    assert!(html.contains("console lines of machine:"), "console tail in the failure: {html}");
    // Every link leads to a file of the run, relative to DIR; the pictures are among them.
    let links = hrefs(&html);
    for l in links.iter().filter(|l| !l.starts_with('#')) {
        assert!(out.join(l).is_file(), "the link {l} leads nowhere");
    }
    for name in ["selftest-pass", "selftest-fail"] {
        for file in ["timeline.svg", "transcript.log", "machine.console.log"] {
            let want = format!("{name}/{file}");
            assert!(links.contains(&want), "no link to {want}: {links:?}");
        }
    }

    // The failed scenario's timeline: its step's start and failed end, the boot before it.
    let failed = timeline(&out.join("selftest-fail"));
    assert_eq!(failed.scenario, "selftest-fail");
    let spans = failed.subtests();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (name, start, end, is_failed) = &spans[0];
    assert_eq!(name, "an assertion that fails");
    assert!(*is_failed && end >= start && *start > 0.0, "{spans:?}");
    // Every QMP event the machine's event log has is on the timeline too.
    let qmp_log =
        std::fs::read_to_string(out.join("selftest-fail/machine.qmp-events.log")).unwrap();
    let logged = qmp_log.lines().filter(|l| l.contains("\"event\"")).count();
    let on_timeline = failed.events.iter().filter(|e| e.kind == EventKind::Qmp).count();
    assert_eq!(on_timeline, logged, "{qmp_log}");
    let svg = std::fs::read_to_string(out.join("selftest-fail/timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("an assertion that fails"), "{svg}");
    let passed = timeline(&out.join("selftest-pass"));
    assert!(passed.subtests().is_empty() && passed.end() > 0.0, "{passed:?}");

    // JUnit points to the report and to the failed scenario's picture.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let index = out.join("index.html");
    assert!(xml.contains(&format!("[[ATTACHMENT|{}]]", index.display())), "{xml}");
    let svg = out.join("selftest-fail/timeline.svg");
    assert!(xml.contains(&format!("[[ATTACHMENT|{}]]", svg.display())), "{xml}");
}
