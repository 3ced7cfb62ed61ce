//! The log, in the format users of the NixOS test driver already read:
//!
//! ```text
//! subtest: should be able to discover the target
//! initiator: must succeed: nvme discover -t tcp -a 192.0.2.1 -s 4420
//! initiator # [    6.554240] nvme nvme0: new ctrl: NQN "nqn.2014-08.org.nvmexpress.discovery"
//! (0.05 seconds)
//! ```
//!
//! Lines go to the sinks of the run's [`Reporter`]. The machine API and scenario scripts log
//! through [`line()`] and [`nested`] here, which resolve to the reporter that the driver scoped
//! around them ([`scope`]; `Driver::new`, `start_all`, `subtest`, `kill_all` and the whole script
//! of `vmcheck run` are scoped), so that scenarios running side by side each log to their own
//! run's sinks without a handle in every call. Outside any scope (a test calling the machine API
//! by hand) a line goes to stderr only. Threads and spawned tasks do not inherit the scope:
//! those that log (the serial console) hold a `Reporter` themselves.

use crate::report::Reporter;

tokio::task_local! {
    static CURRENT: Reporter;
}

/// Runs `f` with [`line()`] and [`nested`] going to `reporter`.
pub async fn scope<F: std::future::Future>(reporter: Reporter, f: F) -> F::Output {
    CURRENT.scope(reporter, f).await
}

/// The reporter of the current scope, if any.
pub fn current() -> Option<Reporter> {
    CURRENT.try_with(Reporter::clone).ok()
}

/// A plain log line.
pub fn line(text: &str) {
    if CURRENT.try_with(|r| r.line(text)).is_err() {
        for l in text.lines() {
            crate::progress::write_stderr(format!("{l}\n").as_bytes());
        }
    }
}

/// Marks an event of `machine` on the current scenario's timeline ([`crate::timeline`]), now.
/// Outside any scope it is not recorded.
pub fn event(kind: crate::timeline::EventKind, machine: &str, text: &str) {
    let _ = CURRENT.try_with(|r| r.event(kind, Some(machine), text));
}

/// Logs `label`, runs `f`, then logs `(N.NN seconds)`.
pub async fn nested<T>(label: &str, f: impl std::future::Future<Output = T>) -> T {
    match current() {
        Some(r) => r.nested(label, f).await,
        None => Reporter::new().nested(label, f).await,
    }
}
