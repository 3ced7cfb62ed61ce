//! Process hygiene: no QEMU or helper outlives the driver.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)`, which the kernel delivers when the *thread* that
//! forked them exits. Tokio forks on whichever worker thread runs the task, and worker threads
//! come and go, so every child is forked by one dedicated thread that lives as long as the
//! process: its death is the process's death, `kill -9` included. Dropping a child kills it too.

use std::sync::mpsc;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;

type Reply = tokio::sync::oneshot::Sender<std::io::Result<Child>>;

struct SpawnRequest {
    command: Command,
    runtime: Handle,
    reply: Reply,
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("vmcheck-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    // The child's reaper belongs to the caller's runtime.
                    let _guard = req.runtime.enter();
                    let _ = req.reply.send(req.command.spawn());
                }
            })
            .expect("starting the spawner thread");
        tx
    })
}

/// Spawns `command` so that it dies with this process and when its handle is dropped.
pub async fn spawn(mut command: Command) -> Result<Child> {
    let program = format!("{:?}", command.as_std().get_program());
    let parent = std::process::id();
    command.kill_on_drop(true);
    // SAFETY: between fork and exec only async-signal-safe calls: prctl and getppid.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .send(SpawnRequest { command, runtime: Handle::current(), reply: tx })
        .map_err(|_| anyhow!("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| anyhow!("the spawner thread dropped the request"))?
        .with_context(|| format!("starting {program}"))
}

/// True while `pid` names a live process (a zombie counts as gone: it runs nothing).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the first field after the parenthesised command name.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}
