//! The log, in the format users of the NixOS test driver already read:
//!
//! ```text
//! subtest: should be able to discover the target
//! initiator: must succeed: nvme discover -t tcp -a 192.0.2.1 -s 4420
//! initiator # [    6.554240] nvme nvme0: new ctrl: NQN "nqn.2014-08.org.nvmexpress.discovery"
//! (0.05 seconds)
//! ```
//!
//! Lines go to stderr and, when the run keeps artifacts, to a transcript file.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static TRANSCRIPT: Mutex<Option<std::fs::File>> = Mutex::new(None);
static ECHO_CONSOLE: AtomicBool = AtomicBool::new(true);

/// Also writes every log line to `path`.
pub fn set_transcript(path: &Path) -> std::io::Result<()> {
    *TRANSCRIPT.lock().unwrap() = Some(std::fs::File::create(path)?);
    Ok(())
}

/// Whether console lines are echoed to stderr (they always go to the transcript and the
/// per-machine log).
pub fn set_echo_console(on: bool) {
    ECHO_CONSOLE.store(on, Ordering::Relaxed);
}

fn write(line: &str, to_terminal: bool) {
    if to_terminal {
        eprintln!("{line}");
    }
    if let Some(f) = TRANSCRIPT.lock().unwrap().as_mut() {
        let _ = writeln!(f, "{line}");
    }
}

/// A plain log line.
pub fn line(text: &str) {
    for l in text.lines() {
        write(l, true);
    }
}

/// `machine # console line`.
pub fn console_line(machine: &str, text: &str) {
    write(&format!("{machine} # {text}"), ECHO_CONSOLE.load(Ordering::Relaxed));
}

/// Logs `label`, runs `f`, then logs `(N.NN seconds)`.
pub async fn nested<T>(label: &str, f: impl std::future::Future<Output = T>) -> T {
    line(label);
    let started = Instant::now();
    // Boxed: nested machine-API futures would otherwise be polled in deep, wide stack frames
    // (debug builds overflowed a test thread's 2 MiB stack).
    let out = Box::pin(f).await;
    line(&format!("({:.2} seconds)", started.elapsed().as_secs_f64()));
    out
}
