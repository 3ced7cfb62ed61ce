//! Typed wrappers of the guest tools: fio and nvme-cli (and lsblk), from their JSON output, and
//! iscsiadm, from its text.
//!
//! These modules only build command lines and parse output; they never run anything. A scenario
//! passes the command line to `machine.succeed(&cmd)` and hands the stdout it got back to the
//! matching parser:
//!
//! ```no_run
//! # use vmcheck::tools::{fio::{Fio, FioReport}, nvme::{Nvme, DiscoveryLog}};
//! # fn succeed(_: &str) -> String { String::new() }
//! let log = DiscoveryLog::parse(&succeed(&Nvme::discover("192.0.2.1", 4420).command_line()))?;
//! let report = FioReport::parse(&succeed(&Fio::seed_randrw_verify("/dev/nvme0n1", 15).command_line()))?;
//! println!("{}", report.summary_line());
//! # Ok::<(), vmcheck::tools::ParseError>(())
//! ```
//!
//! Versions the parsers are written against (Debian 12's): fio 3.33, nvme-cli 2.3 with libnvme 1.3,
//! util-linux 2.38. Unknown fields are ignored, so newer versions parse as long as the fields we
//! read keep their names.

pub mod fio;
pub mod iscsi;
pub mod lsblk;
pub mod nvme;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;

/// How much of a tool's output an error message quotes.
const HEAD_CHARS: usize = 300;

/// A tool's output that could not be understood. Every variant quotes the beginning of the text,
/// because the usual cause is that the tool printed an error instead of JSON.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// No line of the output starts a JSON object.
    #[error("{tool}: no JSON object in the output; it begins: {head}")]
    NoJson {
        /// The tool whose output it was (`fio`, `nvme list`, ...).
        tool: &'static str,
        /// The output's first 300 characters, quoted.
        head: String,
    },
    /// The JSON is malformed or not the shape the parser expects.
    #[error("{tool}: the JSON output does not parse: {source}; the output begins: {head}")]
    Json {
        /// The tool whose output it was.
        tool: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
        /// The output's first 300 characters, quoted.
        head: String,
    },
    /// The output is not what the parser expects: the wrong format (`nvme list -v`, `iscsiadm`
    /// without `-P 3`), or a line missing or malformed.
    #[error("{tool}: {message}; the output begins: {head}")]
    Unexpected {
        /// The tool whose output it was.
        tool: &'static str,
        /// What was wrong.
        message: String,
        /// The output's first 300 characters, quoted.
        head: String,
    },
}

impl ParseError {
    pub(crate) fn unexpected(tool: &'static str, message: impl Into<String>, text: &str) -> Self {
        ParseError::Unexpected { tool, message: message.into(), head: head(text) }
    }
}

/// The first [`HEAD_CHARS`] characters of `text`, quoted with escapes so that control characters
/// and an empty output are visible in a log line.
pub(crate) fn head(text: &str) -> String {
    let mut cut: String = text.chars().take(HEAD_CHARS).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// Quote one argument for a POSIX shell; arguments made only of safe characters stay as they are
/// so that logged command lines read like the ones people type.
pub fn shell_quote(arg: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-+=:,./@%".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// Join an argument vector into one shell command line.
pub fn shell_join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter().map(|a| shell_quote(a.as_ref())).collect::<Vec<_>>().join(" ")
}

/// A JSON document found in a tool's output, with the lines around it.
#[derive(Debug)]
pub(crate) struct Extracted<T> {
    pub value: T,
    /// Non-empty lines before and after the JSON: warnings, or stderr when it was merged in.
    pub other_lines: Vec<String>,
}

/// Find the tool's JSON object in `text` and deserialize it.
///
/// The object is taken to start on a line beginning with `{` in column 0 (fio, json-c and
/// util-linux all print the top level there, nested objects are indented), so warnings printed
/// before it ("note: both iodepth >= 1 and synchronous I/O engine...") or stderr merged into the
/// same stream do not get in the way. Non-finite floats that C's `printf("%f")` prints (`nan`,
/// `-nan`, `inf`) are read as JSON `null`.
pub(crate) fn extract_json<T: DeserializeOwned>(
    tool: &'static str,
    text: &str,
) -> Result<Extracted<T>, ParseError> {
    let mut first_err = None;
    for start in object_starts(text) {
        let candidate = sanitize_nonfinite(&text[start..]);
        let mut stream =
            serde_json::Deserializer::from_str(&candidate).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(value)) => {
                // The sanitizer keeps lengths, so offsets in `candidate` are offsets in `text`.
                let end = start + stream.byte_offset();
                let value = serde_json::from_value::<T>(value)
                    .map_err(|source| ParseError::Json { tool, source, head: head(text) })?;
                let other_lines = text[..start]
                    .lines()
                    .chain(text[end..].lines())
                    .map(str::trim_end)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                return Ok(Extracted { value, other_lines });
            }
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    Err(match first_err {
        Some(source) => ParseError::Json { tool, source, head: head(text) },
        None => ParseError::NoJson { tool, head: head(text) },
    })
}

/// Byte offsets of lines that begin with `{`.
fn object_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    let mut offset = 0;
    text.split_inclusive('\n').filter_map(move |line| {
        let start = offset;
        offset += line.len();
        line.starts_with('{').then_some(start)
    })
}

/// Replace `nan`, `-nan`, `inf` and `-inf` in value position with `null`, keeping the length
/// (a three-letter token takes the blank before it), so byte offsets stay valid.
fn sanitize_nonfinite(json: &str) -> Cow<'_, str> {
    if !json.contains("nan") && !json.contains("inf") {
        return Cow::Borrowed(json);
    }
    let bytes = json.as_bytes();
    let mut out = bytes.to_vec();
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let rest = &bytes[i..];
        let token_end =
            |len: usize| rest.get(len).is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'.');
        let four = (rest.starts_with(b"-nan") || rest.starts_with(b"-inf")) && token_end(4);
        let three = (rest.starts_with(b"nan") || rest.starts_with(b"inf"))
            && token_end(3)
            && i > 0
            && bytes[i - 1].is_ascii_whitespace();
        if four {
            out[i..i + 4].copy_from_slice(b"null");
            i += 4;
        } else if three {
            out[i - 1..i + 3].copy_from_slice(b"null");
            i += 3;
        } else {
            i += 1;
        }
    }
    // Only ASCII was replaced by ASCII, so the bytes are still UTF-8.
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(json),
    }
}

/// Deserialize an unsigned count that some tool versions print as a number and others as a
/// string of digits (lsblk before 2.37, nvme-cli built without json-c 0.14), or as `null`.
pub(crate) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an unsigned integer or a string of digits")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("negative count {v}")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 {
                Ok(v as u64)
            } else {
                Err(E::custom(format!("{v} is not a count")))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            v.trim()
                .parse()
                .map_err(|_| E::custom(format!("{v:?} is not a count of bytes or items")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
            Ok(0)
        }
    }
    d.deserialize_any(V)
}

/// Deserialize a float that may be `null` (fio's `nan`, after sanitizing) as NaN.
pub(crate) fn de_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--filename=/dev/nvme0n1"), "--filename=/dev/nvme0n1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_join(&["nvme", "list", "-o", "json"]), "nvme list -o json");
    }

    #[test]
    fn sanitizer_keeps_length_and_strings() {
        let s = "{\n  \"a\" : nan,\n  \"b\" : -nan,\n  \"c\" : \"nan inf\",\n  \"d\" : inf\n}";
        let out = sanitize_nonfinite(s);
        assert_eq!(out.len(), s.len());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["a"].is_null() && v["b"].is_null() && v["d"].is_null());
        assert_eq!(v["c"], "nan inf");
        // Words that merely start like the tokens are left alone.
        assert_eq!(sanitize_nonfinite("{\"x\" : info}"), "{\"x\" : info}");
    }

    #[test]
    fn extract_skips_leading_and_trailing_lines() {
        let text = "warning: one\n{\n  \"k\" : 1\n}\ntrailing\n";
        let got: Extracted<serde_json::Value> = extract_json("t", text).unwrap();
        assert_eq!(got.value["k"], 1);
        assert_eq!(got.other_lines, vec!["warning: one", "trailing"]);
    }

    #[test]
    fn extract_errors_quote_the_text() {
        let e = extract_json::<serde_json::Value>("fio", "fio: unrecognized option '--bogus=1'\n")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no JSON object"), "{msg}");
        assert!(msg.contains("unrecognized option"), "{msg}");

        let e = extract_json::<serde_json::Value>("fio", "{\n  \"jobs\" : [\n").unwrap_err();
        assert!(matches!(e, ParseError::Json { .. }), "{e}");
        assert!(e.to_string().contains("\\\"jobs\\\""), "{e}");

        let e = extract_json::<serde_json::Value>("fio", "").unwrap_err();
        assert!(e.to_string().ends_with("begins: \"\""), "{e}");
    }

    #[test]
    fn head_cuts_on_char_boundary() {
        let long = "é".repeat(400);
        let h = head(&long);
        assert!(h.ends_with("...\""));
    }
}
