//! Bounds on requests, and the deadline a request carries.
//!
//! Every string and repeated field of a request is bounded (the bounds are in the proto's
//! comments) and checked before anything else, with INVALID_ARGUMENT naming the field and the
//! bound: a request's cost is bounded before the daemon starts to pay it.
//!
//! Deadlines: the `grpc-timeout` header a client sends (tonic's `Request::set_timeout`, or a
//! channel timeout) is honoured. A change that adds state (create, share, split, add namespace,
//! create subsystem) checks it before it starts and between its steps; if it passes, what was
//! made is rolled back and the reply is DEADLINE_EXCEEDED, so a call that timed out changed
//! nothing. A removal checks it before it starts, and once started finishes (a half-removed
//! subsystem would be worse than either); with the bounds below a removal is a few dozen
//! configfs operations. The daemon keeps a margin of a tenth of the timeout (at most
//! [`MAX_MARGIN`]) for the reply's trip back, so a change it completes reaches the client
//! before the client's own timer fires.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use super::error::{Error, Result};

/// At most this many allowed host NQNs per subsystem. nvmet handles many more, but each costs
/// configfs operations (seconds under TCG for thousands), and no test needs more hosts than
/// it has VMs.
pub const MAX_ALLOWED_HOSTS: usize = 64;
/// NVMe base specification: an NQN is at most 223 bytes.
pub const MAX_NQN_LEN: usize = super::nvmet::MAX_NQN_LEN;
/// Bdev names are URIs.
pub const MAX_NAME_LEN: usize = super::uri::MAX_URI_LEN;
/// Longest margin kept for the reply.
pub const MAX_MARGIN: Duration = Duration::from_millis(500);

/// A string field: at most `max` bytes.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() <= max {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{field} is {} bytes long; the limit is {max} bytes",
        value.len()
    )))
}

/// A repeated field: at most `max` entries, each a string of at most `max_len` bytes.
pub fn check_list(field: &str, values: &[String], max: usize, max_len: usize) -> Result<()> {
    if values.len() > max {
        return Err(Error::InvalidArgument(format!(
            "{field} has {} entries; the limit is {max}",
            values.len()
        )));
    }
    for (i, value) in values.iter().enumerate() {
        check_len(&format!("{field}[{i}]"), value, max_len)?;
    }
    Ok(())
}

/// When the daemon must have finished a request; `None` when the client set no timeout.
#[derive(Debug, Clone, Default)]
pub struct Deadline {
    at: Option<Instant>,
    timeout: Option<Duration>,
    /// Tests: the deadline passes after this many checks, to hit every step.
    checks_left: Option<Arc<AtomicU32>>,
}

impl Deadline {
    /// No deadline.
    pub fn none() -> Self {
        Deadline::default()
    }

    /// `timeout` from now, less the margin for the reply.
    pub fn after(timeout: Duration) -> Self {
        let margin = (timeout / 10).min(MAX_MARGIN);
        // A timeout too far out for the clock is no deadline at all.
        let at = Instant::now().checked_add(timeout - margin);
        Deadline { at, timeout: at.map(|_| timeout), checks_left: None }
    }

    /// Tests: passes at the check after `n` checks have passed.
    #[cfg(test)]
    pub fn after_checks(n: u32) -> Self {
        let left = Arc::new(AtomicU32::new(n));
        Deadline { at: None, timeout: Some(Duration::ZERO), checks_left: Some(left) }
    }

    /// From a request's `grpc-timeout` header; a malformed header is INVALID_ARGUMENT.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self> {
        let Some(value) = metadata.get("grpc-timeout") else { return Ok(Deadline::none()) };
        let text = value
            .to_str()
            .map_err(|_| Error::InvalidArgument("grpc-timeout header is not ASCII".into()))?;
        parse_grpc_timeout(text).map(Deadline::after).ok_or_else(|| {
            Error::InvalidArgument(format!("grpc-timeout header {text:?} is not a timeout (1 to 8 digits and one of H M S m u n)"))
        })
    }

    /// The instant, for waits that end at the deadline.
    pub fn instant(&self) -> Option<Instant> {
        self.at
    }

    /// The error for a passed deadline; `doing` says where the daemon was.
    pub fn exceeded(&self, doing: &str) -> Error {
        let timeout = self.timeout.unwrap_or_default();
        Error::DeadlineExceeded(format!(
            "the request's deadline ({timeout:?}) passed {doing}; nothing was changed"
        ))
    }

    /// DEADLINE_EXCEEDED once the deadline has passed; `doing` says where the daemon was.
    pub fn check(&self, doing: &str) -> Result<()> {
        let passed = match &self.checks_left {
            Some(left) => {
                left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err()
            }
            None => self.at.is_some_and(|at| Instant::now() >= at),
        };
        if passed {
            return Err(self.exceeded(doing));
        }
        Ok(())
    }
}

/// gRPC over HTTP/2: `TimeoutValue TimeoutUnit`, at most 8 digits, units H M S m u n.
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_says() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_passed_deadline_is_deadline_exceeded_and_none_never_is() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "1n".parse().unwrap());
        let d = Deadline::from_metadata(&md).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        let err = d.check("before linking").unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.to_string().contains("before linking"), "{err}");
        Deadline::none().check("anywhere").unwrap();
        Deadline::after(Duration::MAX).check("in a very long call").unwrap();
        Deadline::from_metadata(&MetadataMap::new()).unwrap().check("x").unwrap();
        md.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(Deadline::from_metadata(&md).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn bounds_name_the_field_and_the_limit() {
        check_len("nqn", &"x".repeat(MAX_NQN_LEN), MAX_NQN_LEN).unwrap();
        let err = check_len("nqn", &"x".repeat(300), MAX_NQN_LEN).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.to_string(), "nqn is 300 bytes long; the limit is 223 bytes");
        let hosts = vec!["h".to_string(); MAX_ALLOWED_HOSTS + 1];
        let err = check_list("allowed_hosts", &hosts, MAX_ALLOWED_HOSTS, MAX_NQN_LEN).unwrap_err();
        assert_eq!(err.to_string(), "allowed_hosts has 65 entries; the limit is 64");
        let err = check_list(
            "allowed_hosts",
            &["h".into(), "y".repeat(224)],
            MAX_ALLOWED_HOSTS,
            MAX_NQN_LEN,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("allowed_hosts[1] is 224 bytes"), "{err}");
    }
}
