//! Bdev URIs: `aio:///dev/<blockdev>` and `malloc:///<name>?size_mb=N`.
//!
//! Parsing is strict: anything the daemon would otherwise have to guess about (hosts, ports,
//! fragments, percent escapes, dot segments, unknown or repeated query keys) is rejected with
//! a message that quotes the offending part.

use std::fmt;

use url::Url;

/// Longest URI accepted; a bdev name is a URI and ends up in logs and messages.
pub const MAX_URI_LEN: usize = 1024;
/// Longest aio device or malloc name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest malloc bdev: 1 TiB is far beyond any test VM's RAM, so larger is a typo.
pub const MAX_MALLOC_MB: u64 = 1 << 20;

/// A parsed bdev URI. Its `Display` is the canonical form, which is the bdev's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BdevUri {
    /// A kernel block device, `/dev/<dev>`.
    Aio { dev: String },
    /// A RAM-backed file of `size_mb` MiB.
    Malloc { name: String, size_mb: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UriError(pub String);

impl BdevUri {
    pub fn parse(input: &str) -> Result<Self, UriError> {
        let err = |why: String| UriError(format!("bdev URI {}: {why}", quoted(input)));
        if input.is_empty() {
            return Err(UriError(
                "bdev URI is empty; expected aio:///dev/<blockdev> or malloc:///<name>?size_mb=N"
                    .into(),
            ));
        }
        if input.len() > MAX_URI_LEN {
            return Err(err(format!("longer than {MAX_URI_LEN} bytes")));
        }
        // `url` resolves "." and ".." segments away; a name must not be rewritten behind our back.
        if let Some(seg) = raw_path(input).split('/').find(|s| is_dot_segment(s)) {
            return Err(err(format!("path segment {} is not allowed", quoted(seg))));
        }
        if input.contains('%') {
            return Err(err("percent escapes are not allowed".into()));
        }
        // `url` would silently percent-encode these.
        if let Some(c) = input.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(err(format!("character {c:?} is not allowed")));
        }
        let url = Url::parse(input).map_err(|e| {
            err(format!("{e}; expected aio:///dev/<blockdev> or malloc:///<name>?size_mb=N"))
        })?;
        if !url.has_authority() {
            return Err(err(format!("expected {}:///...", url.scheme())));
        }
        if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
            return Err(err("user, password and port are not allowed".into()));
        }
        if url.host_str().is_some_and(|h| !h.is_empty()) {
            let host = url.host_str().unwrap_or_default();
            return Err(err(format!(
                "unexpected host {}; write three slashes, as in {}:///...",
                quoted(host),
                url.scheme()
            )));
        }
        if let Some(fragment) = url.fragment() {
            return Err(err(format!("fragment {} is not allowed", quoted(fragment))));
        }
        let segments: Vec<&str> =
            url.path().strip_prefix('/').unwrap_or(url.path()).split('/').collect();
        let mut query = Query::parse(&url).map_err(err)?;
        match url.scheme() {
            "aio" => {
                let dev = match segments.as_slice() {
                    ["dev", dev] => *dev,
                    _ => {
                        return Err(err(format!(
                            "path {} must be /dev/<blockdev>",
                            quoted(url.path())
                        )))
                    }
                };
                validate_name("block device", dev).map_err(err)?;
                query.finish(&[]).map_err(err)?;
                Ok(BdevUri::Aio { dev: dev.to_string() })
            }
            "malloc" => {
                let name = match segments.as_slice() {
                    [name] => *name,
                    _ => {
                        return Err(err(format!(
                            "path {} must be /<name> (one segment, no '/')",
                            quoted(url.path())
                        )))
                    }
                };
                validate_name("malloc name", name).map_err(err)?;
                let size_mb = query.size_mb().map_err(err)?;
                query.finish(&["size_mb"]).map_err(err)?;
                Ok(BdevUri::Malloc { name: name.to_string(), size_mb })
            }
            other => Err(err(format!("unknown scheme {}; expected aio or malloc", quoted(other)))),
        }
    }

    /// What two bdevs must not share: the block device, or the malloc file.
    pub fn backing_key(&self) -> String {
        match self {
            BdevUri::Aio { dev } => format!("aio:{dev}"),
            BdevUri::Malloc { name, .. } => format!("malloc:{name}"),
        }
    }
}

impl fmt::Display for BdevUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BdevUri::Aio { dev } => write!(f, "aio:///dev/{dev}"),
            BdevUri::Malloc { name, size_mb } => write!(f, "malloc:///{name}?size_mb={size_mb}"),
        }
    }
}

/// The query pairs, consumed key by key so leftovers can be reported as unknown.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(url: &Url) -> Result<Self, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let Some(raw) = url.query() else { return Ok(Query(pairs)) };
        // Split by hand: form decoding would turn '+' into ' ' (escapes were rejected already).
        for pair in raw.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key.is_empty() {
                return Err(format!("query part {} has no key", quoted(pair)));
            }
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(format!("query key {} given twice", quoted(key)));
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Query(pairs))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }

    fn size_mb(&mut self) -> Result<u64, String> {
        let raw = self.take("size_mb").ok_or("missing query size_mb=<MiB>")?;
        let size: u64 = match raw.parse() {
            Ok(n) if raw.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("size_mb={} is not a whole number of MiB", quoted(&raw))),
        };
        if size == 0 || size > MAX_MALLOC_MB {
            return Err(format!("size_mb={size} is out of range 1..={MAX_MALLOC_MB}"));
        }
        Ok(size)
    }

    /// Fails on any key left after the known ones were taken.
    fn finish(self, known: &[&str]) -> Result<(), String> {
        match self.0.first() {
            None => Ok(()),
            Some((key, _)) if known.is_empty() => {
                Err(format!("query key {} is not allowed here (no query keys are)", quoted(key)))
            }
            Some((key, _)) => {
                Err(format!("unknown query key {}; known: {}", quoted(key), known.join(", ")))
            }
        }
    }
}

/// Device and malloc names become paths and configfs values: plain characters only.
fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is missing"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{what} {} is longer than {MAX_NAME_LEN} bytes", quoted(name)));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(format!("{what} {} must not start with '.' or '-'", quoted(name)));
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{what} {} has character {c:?}; allowed are letters, digits, '_', '-' and '.'",
            quoted(name)
        ));
    }
    Ok(())
}

/// The path part of a URI as typed: after "scheme://authority", before '?' or '#'.
fn raw_path(input: &str) -> &str {
    let rest = input.split_once("://").map_or(input, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    rest.find('/').map_or("", |at| &rest[at..])
}

fn is_dot_segment(segment: &str) -> bool {
    matches!(segment.to_ascii_lowercase().as_str(), "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e.")
}

/// A user-supplied value for a message: quoted, control characters escaped, and cut short.
pub fn quoted(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        Some((at, _)) => format!("{:?}...", &value[..at]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aio() {
        let uri = BdevUri::parse("aio:///dev/vdb").unwrap();
        assert_eq!(uri, BdevUri::Aio { dev: "vdb".into() });
        assert_eq!(uri.to_string(), "aio:///dev/vdb");
        assert_eq!(
            BdevUri::parse("aio:///dev/nvme0n1").unwrap(),
            BdevUri::Aio { dev: "nvme0n1".into() }
        );
        // Schemes are case-insensitive in URLs; the canonical name is lower case.
        assert_eq!(BdevUri::parse("AIO:///dev/vdb").unwrap().to_string(), "aio:///dev/vdb");
    }

    #[test]
    fn parses_malloc_and_canonicalises() {
        let uri = BdevUri::parse("malloc:///m0?size_mb=064").unwrap();
        assert_eq!(uri, BdevUri::Malloc { name: "m0".into(), size_mb: 64 });
        assert_eq!(uri.to_string(), "malloc:///m0?size_mb=64");
        assert_eq!(
            BdevUri::parse("malloc:///m0?size_mb=64").unwrap().backing_key(),
            BdevUri::parse("malloc:///m0?size_mb=8").unwrap().backing_key()
        );
    }

    #[test]
    fn accepts_the_largest_names_and_sizes() {
        let name = "a".repeat(MAX_NAME_LEN);
        assert!(BdevUri::parse(&format!("malloc:///{name}?size_mb={MAX_MALLOC_MB}")).is_ok());
    }

    /// Each malformed URI with a piece of text its error message must contain.
    #[test]
    fn rejects_malformed_uris_naming_the_offending_part() {
        let long_name = "a".repeat(MAX_NAME_LEN + 1);
        let long_uri = format!("malloc:///{}?size_mb=1", "b".repeat(MAX_URI_LEN));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty"),
            ("vdb".into(), "vdb"),
            ("/dev/vdb".into(), "/dev/vdb"),
            ("nvme:///dev/vdb".into(), "\"nvme\""),
            ("aio://dev/vdb".into(), "\"dev\""),
            ("aio:/dev/vdb".into(), "aio:/dev/vdb"),
            ("aio:///dev/".into(), "block device is missing"),
            ("aio:///dev".into(), "\"/dev\""),
            ("aio:///vdb".into(), "\"/vdb\""),
            ("aio:///sys/vdb".into(), "\"/sys/vdb\""),
            ("aio:///dev/vdb/".into(), "\"/dev/vdb/\""),
            ("aio:///dev/vdb/extra".into(), "\"/dev/vdb/extra\""),
            ("aio:///dev/disk/by-id/x".into(), "\"/dev/disk/by-id/x\""),
            ("aio:///dev/../etc/passwd".into(), "\"..\""),
            ("aio:///dev/./vdb".into(), "\".\""),
            ("aio:///dev/.hidden".into(), "\".hidden\""),
            ("aio:///dev/-vdb".into(), "\"-vdb\""),
            ("aio:///dev/vd%62".into(), "percent"),
            ("aio:///dev/vd b".into(), "' '"),
            ("aio:///dev/vdb\n".into(), "'\\n'"),
            ("malloc:///mé?size_mb=4".into(), "'é'"),
            ("aio:///dev/vdb?size_mb=1".into(), "\"size_mb\""),
            ("aio:///dev/vdb#frag".into(), "\"frag\""),
            ("aio://user@/dev/vdb".into(), "user"),
            ("aio://:8080/dev/vdb".into(), "aio://:8080/dev/vdb"),
            ("malloc:///m0".into(), "size_mb"),
            ("malloc:///m0?".into(), "no key"),
            ("malloc:///m0?size_mb=4&".into(), "no key"),
            ("malloc:///m0?=4".into(), "\"=4\""),
            ("malloc:///m0?size_mb=0".into(), "size_mb=0"),
            ("malloc:///m0?size_mb=-1".into(), "\"-1\""),
            ("malloc:///m0?size_mb=+1".into(), "\"+1\""),
            ("malloc:///m0?size_mb=1.5".into(), "\"1.5\""),
            ("malloc:///m0?size_mb=abc".into(), "\"abc\""),
            ("malloc:///m0?size_mb=".into(), "\"\""),
            ("malloc:///m0?size_mb=99999999999999999999999".into(), "\"99999999999999999999999\""),
            (format!("malloc:///m0?size_mb={}", MAX_MALLOC_MB + 1), "size_mb=1048577"),
            ("malloc:///m0?size_mb=4&size_mb=8".into(), "given twice"),
            ("malloc:///m0?size_mb=4&blk_size=512".into(), "\"blk_size\""),
            ("malloc:///m0?size_mb=4#x".into(), "\"x\""),
            ("malloc:///?size_mb=4".into(), "malloc name is missing"),
            ("malloc:///a/b?size_mb=4".into(), "\"/a/b\""),
            ("malloc:///..?size_mb=4".into(), "\"..\""),
            ("malloc:///a/..?size_mb=4".into(), "\"..\""),
            ("malloc:///%2e%2e?size_mb=4".into(), "\"%2e%2e\""),
            ("malloc:///m%2F0?size_mb=4".into(), "percent"),
            ("malloc://host/m0?size_mb=4".into(), "\"host\""),
            ("malloc:///m:0?size_mb=4".into(), "':'"),
            (format!("malloc:///{long_name}?size_mb=4"), "longer than 64"),
            (long_uri, "longer than 1024"),
        ];
        let mut failures = Vec::new();
        for (input, needle) in &cases {
            match BdevUri::parse(input) {
                Ok(parsed) => failures.push(format!("{input:?} parsed as {parsed:?}")),
                Err(UriError(msg)) if !msg.contains(needle) => {
                    failures.push(format!("{input:?}: message {msg:?} lacks {needle:?}"))
                }
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn quoted_cuts_long_values() {
        let long = "x".repeat(500);
        assert!(quoted(&long).len() < 100);
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
    }
}
