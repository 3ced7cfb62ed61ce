//! The run report: `--out DIR/index.html`, written at the end of `vmcheck run` from the
//! reporter's record.
//!
//! One static page, readable offline (no script, no server, CSS inline, links relative to
//! `DIR`): the summary table (each scenario's verdict, time and failing step, and the totals),
//! then per scenario its subtests, its timeline picture (`<scenario>/timeline.svg`, see
//! [`crate::timeline`]), its failure with the console tails, and links to every file it left
//! (transcript, console logs, QMP events, dmesg, tool output, `timeline.json`). All text is
//! escaped: an error message can hold `<`.

use std::collections::HashSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::report::{Outcome, Reporter};

/// Writes `out/index.html` for the run recorded in `reporter`, which took `took`; returns its
/// path.
pub fn write_index(out: &Path, reporter: &Reporter, took: Duration) -> Result<PathBuf> {
    let path = out.join("index.html");
    let html = render_index(out, &reporter.outcomes_with_dirs(), took);
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `text` safe in HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '&' => s.push_str("&amp;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// A link target for `path`, relative to `out` when it is under it.
fn href(out: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(out).unwrap_or(path);
    // Each component escaped for an attribute; '%' and spaces do not occur in vmcheck's names.
    rel.components().map(|c| escape(&c.as_os_str().to_string_lossy())).collect::<Vec<_>>().join("/")
}

/// The CSS class of a verdict.
fn class(verdict: &str) -> &'static str {
    match verdict {
        "passed" | "ok" => "ok",
        "skipped" => "skip",
        "ERROR" => "error",
        _ => "fail",
    }
}

/// An anchor id for a scenario.
fn anchor(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1300px}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;\
text-align:left}th{background:#f0f0f0}td.num{text-align:right}.ok{color:#070}.fail{color:#c00;\
font-weight:bold}.error{color:#a50;font-weight:bold}.skip{color:#777}pre{background:#f7f7f7;\
border:1px solid #ddd;padding:.6em;overflow-x:auto;white-space:pre-wrap;font-size:85%}\
section{border-top:2px solid #ddd;margin-top:1.5em}img{max-width:100%;border:1px solid #ddd}\
ul.files{columns:3}";

/// The page (see the module's doc). `outcomes` with their directories under `out`.
pub fn render_index(out: &Path, outcomes: &[(Outcome, Option<PathBuf>)], took: Duration) -> String {
    let mut h = String::new();
    let count = |v: &str| outcomes.iter().filter(|(o, _)| o.verdict() == v).count();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>vmcheck run</title><style>{STYLE}</style></head><body>\n<h1>vmcheck run</h1>\n\
         <p>{} scenario(s): <span class=\"ok\">{} passed</span>, <span class=\"fail\">{} FAILED\
         </span>, <span class=\"error\">{} ERROR</span>, <span class=\"skip\">{} skipped</span>; \
         {:.1} s in all. <a href=\"transcript.log\">The run's transcript</a>.</p>\n",
        outcomes.len(),
        count("passed"),
        count("FAILED"),
        count("ERROR"),
        count("skipped"),
        took.as_secs_f64()
    );
    h += "<table id=\"summary\"><tr><th>scenario</th><th>verdict</th><th>seconds</th>\
          <th>failed at</th></tr>\n";
    for (o, _) in outcomes {
        let verdict = o.verdict();
        let at = o.subtests.iter().find(|t| t.error.is_some()).map(|t| t.name.as_str());
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#{}\">{}</a></td><td class=\"{}\">{verdict}</td>\
             <td class=\"num\">{:.2}</td><td>{}</td></tr>",
            anchor(&o.name),
            escape(&o.name),
            class(verdict),
            o.duration.as_secs_f64(),
            escape(at.unwrap_or(""))
        );
    }
    h += "</table>\n";
    let mut shown: HashSet<PathBuf> = HashSet::new();
    for (o, dir) in outcomes {
        let verdict = o.verdict();
        let _ = writeln!(
            h,
            "<section id=\"{}\"><h2>{} <span class=\"{}\">{verdict}</span></h2>",
            anchor(&o.name),
            escape(&o.name),
            class(verdict)
        );
        if let Some(why) = &o.skipped {
            let _ = writeln!(h, "<p class=\"skip\">{}</p>", escape(why));
        }
        if !o.subtests.is_empty() {
            h += "<table class=\"subtests\"><tr><th>subtest</th><th>seconds</th>\
                  <th>verdict</th></tr>\n";
            for t in &o.subtests {
                let verdict = t.verdict();
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"num\">{:.2}</td><td class=\"{}\">{verdict}</td>\
                     </tr>",
                    escape(&t.name),
                    t.duration.as_secs_f64(),
                    class(verdict)
                );
                for a in &t.allowed {
                    let _ = writeln!(h, "<tr><td colspan=\"3\">allowed: {}</td></tr>", escape(a));
                }
            }
            h += "</table>\n";
        }
        if let Some(e) = &o.error {
            let _ = writeln!(h, "<h3>Failure</h3>\n<pre class=\"failure\">{}</pre>", escape(e));
        }
        let Some(dir) = dir else {
            h += "</section>\n";
            continue;
        };
        // A chain's cases share one directory: its picture and files once, with the first.
        if !shown.insert(dir.clone()) {
            h += "<p>Timeline and files: with the chain's first case above.</p></section>\n";
            continue;
        }
        let svg = dir.join("timeline.svg");
        if svg.exists() {
            let _ = writeln!(
                h,
                "<h3>Timeline</h3>\n<p><a href=\"{0}\"><img src=\"{0}\" alt=\"timeline of {1}\">\
                 </a><br>Data: <a href=\"{2}\">timeline.json</a></p>",
                href(out, &svg),
                escape(&o.name),
                href(out, &dir.join("timeline.json"))
            );
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        files.sort();
        if !files.is_empty() {
            h += "<h3>Files</h3>\n<ul class=\"files\">\n";
            for f in &files {
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                let _ = writeln!(h, "<li><a href=\"{}\">{}</a></li>", href(out, f), escape(&name));
            }
            h += "</ul>\n";
        }
        h += "</section>\n";
    }
    h += "</body></html>\n";
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SubtestResult;

    #[test]
    fn the_page_lists_verdicts_escapes_text_and_links_relative_files() {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("timeline.svg"), "<svg/>").unwrap();
        std::fs::write(dir.join("machine.console.log"), "x").unwrap();
        let step = |name: &str, error: Option<&str>| SubtestResult {
            name: name.into(),
            duration: Duration::from_millis(1500),
            error: error.map(Into::into),
            ..SubtestResult::default()
        };
        let bad = Outcome {
            name: "bad".into(),
            subtests: vec![step("boot", None), step("check <x>", Some("expected 2 < 3"))],
            error: Some("expected 2 < 3\nmachine # last line".into()),
            harness_error: false,
            duration: Duration::from_secs(3),
            skipped: None,
        };
        let good = Outcome { name: "good".into(), error: None, ..bad.clone() };
        let html = render_index(
            out.path(),
            &[(good, None), (bad, Some(dir.clone()))],
            Duration::from_secs(5),
        );
        assert!(html.contains("1 passed") && html.contains("1 FAILED"), "{html}");
        assert!(html.contains("<td class=\"fail\">FAILED</td>"));
        assert!(html.contains("check &lt;x&gt;") && !html.contains("check <x>"));
        assert!(html.contains("expected 2 &lt; 3\nmachine # last line"));
        assert!(html.contains("<img src=\"bad/timeline.svg\""));
        assert!(html.contains("<a href=\"bad/machine.console.log\">"));
    }
}
