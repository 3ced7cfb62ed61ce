//! QEMU guest agent client: guest-side exec with exit status, stdout and stderr; file read and
//! write; memory statistics. Typed commands come from the `qapi` crate.
//!
//! The agent answers requests in order and without ids, and requests written before it runs are
//! delivered when it starts. So the channel is synchronised with `guest-sync-delimited` (a fresh
//! id each time, stale answers skipped) on connect, after every timeout, and after a reboot.
//!
//! Requests may also be sent ahead (`Qga::send_ahead`): written at once, their answers read (and
//! an error among them reported) before the next request is written, a request's follow-ups sent
//! ahead as its answer is read. The agent handles one request at a time, in order, so whatever
//! is sent later runs after them in the guest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use qapi::qga;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::poll::{self, Polled};
use crate::qapi_stream::JsonReader;

/// What a guest command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code, or 128 + the signal number when a signal ended it (as a shell reports it).
    pub status: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Its standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Its standard error (invalid UTF-8 replaced).
    pub stderr: String,
}

/// A guest command outlived its timeout; it was killed, with every process it started.
#[derive(Debug, thiserror::Error)]
#[error("the command did not finish within {timeout:?} and was killed")]
pub struct ExecTimeout {
    /// The timeout it outlived.
    pub timeout: Duration,
    /// What it printed on stdout before it was killed.
    pub stdout: String,
    /// What it printed on stderr before it was killed.
    pub stderr: String,
}

/// A command started in the guest: the agent's pid and the tag its processes inherit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestExec {
    /// The agent's pid of the started command.
    pub pid: i64,
    /// The `VMCHECK_EXEC_ID` value every process of the command inherits; a kill goes by it.
    pub tag: String,
}

struct Conn {
    reader: JsonReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    in_sync: bool,
    /// The requests sent ahead whose answers have not been read yet, oldest first.
    owed: std::collections::VecDeque<Ahead>,
}

/// A request sent ahead ([`Qga::send_ahead`]), and what to send ahead in turn once its answer
/// has been read.
pub(crate) struct Ahead {
    name: String,
    arguments: Value,
    then: Option<FollowUp>,
}

/// Computes the requests that follow a request sent ahead from its answer (the `return` value).
type FollowUp = Box<dyn FnOnce(&Value) -> Vec<Ahead> + Send>;

impl Ahead {
    /// The request `name` with `arguments`.
    pub(crate) fn new(name: &str, arguments: Value) -> Ahead {
        Ahead { name: name.to_string(), arguments, then: None }
    }

    /// `guest-exec` of `sh -c command_line`, its output not kept and its end never asked for:
    /// a process left to run in the background.
    pub(crate) fn detached_exec(command_line: &str) -> Ahead {
        let request = qga::guest_exec {
            path: "/bin/sh".into(),
            arg: Some(vec!["-c".into(), command_line.into()]),
            env: Some(guest_env()),
            input_data: None,
            capture_output: Some(qga::GuestExecCaptureOutput::flag(false)),
        };
        let arguments = serde_json::to_value(request).expect("a guest-exec request serializes");
        Ahead::new("guest-exec", arguments)
    }

    /// Once this request's answer is read, `follow_up` of its `return` value is sent ahead too
    /// (a file written with the handle its opening returned, say); not after an error.
    pub(crate) fn then(
        self,
        follow_up: impl FnOnce(&Value) -> Vec<Ahead> + Send + 'static,
    ) -> Ahead {
        Ahead { then: Some(Box::new(follow_up)), ..self }
    }
}

/// A guest agent reached through the unix socket of its virtio-serial chardev.
pub struct Qga {
    path: PathBuf,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// The environment guest commands run with: both default images and NixOS have these paths.
const GUEST_ENV: &[&str] = &[
    "PATH=/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TERM=dumb",
    "LC_ALL=C",
];

/// [`GUEST_ENV`] as a guest-exec request's `env`.
fn guest_env() -> Vec<String> {
    GUEST_ENV.iter().map(|e| e.to_string()).collect()
}

impl Qga {
    /// A client of the agent socket at `path`; nothing connects until the first request.
    pub fn new(path: &Path) -> Qga {
        Qga { path: path.to_path_buf(), conn: tokio::sync::Mutex::new(None) }
    }

    /// Waits until the agent answers a `guest-sync-delimited`.
    pub async fn sync(&self, timeout: Duration) -> Result<()> {
        let mut guard = self.conn.lock().await;
        let deadline = Instant::now() + timeout;
        let conn = self.connected(&mut guard, deadline).await?;
        settle(conn, deadline).await?;
        sync_conn(conn, deadline).await
    }

    async fn connected<'a>(
        &self,
        guard: &'a mut Option<Conn>,
        deadline: Instant,
    ) -> Result<&'a mut Conn> {
        if guard.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let stream = crate::qmp::connect_unix(&self.path, left)
                .await
                .context("connecting to the guest agent socket")?;
            let (r, w) = stream.into_split();
            *guard = Some(Conn {
                reader: JsonReader::new(r),
                writer: w,
                in_sync: false,
                owed: Default::default(),
            });
        }
        Ok(guard.as_mut().expect("just connected"))
    }

    /// Runs one typed agent command.
    pub async fn execute<C: qapi::Command>(&self, command: C) -> Result<C::Ok> {
        let value = self.execute_raw(C::NAME, serde_json::to_value(&command)?).await?;
        serde_json::from_value(value.clone())
            .with_context(|| format!("guest agent {}: unexpected reply {value}", C::NAME))
    }

    /// Runs one agent command given by name (the REPL's raw access).
    pub async fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        let timeout = crate::timeouts::request();
        let deadline = Instant::now() + timeout;
        let mut guard = self.conn.lock().await;
        let conn = self.connected(&mut guard, deadline).await?;
        settle(conn, deadline).await?;
        if !conn.in_sync {
            sync_conn(conn, deadline).await.with_context(|| format!("guest agent {name}"))?;
        }
        let line = request_line(name, arguments)?;
        conn.writer
            .write_all(&line)
            .await
            .with_context(|| format!("guest agent {name}: write failed"))?;
        match tokio::time::timeout_at(deadline.into(), conn.reader.next()).await {
            Err(_) => {
                // The answer may still come; the next request resynchronises first.
                conn.in_sync = false;
                bail!("guest agent {name}: no answer within {timeout:?}")
            }
            Ok(Err(e)) => {
                *guard = None;
                bail!("guest agent {name}: connection lost: {e}")
            }
            Ok(Ok(reply)) => match (reply.get("return"), reply.get("error")) {
                (Some(r), _) => Ok(r.clone()),
                (None, Some(e)) => bail!(
                    "guest agent {name} failed: {}",
                    e["desc"].as_str().unwrap_or("unknown error")
                ),
                _ => {
                    conn.in_sync = false;
                    bail!("guest agent {name}: malformed answer {reply}")
                }
            },
        }
    }

    /// Writes `requests` at once and returns without waiting for their answers. The agent runs
    /// them in order before anything sent later; their answers are read before the next request
    /// is written ([`Qga::settle`]), and their follow-ups ([`Ahead::then`]) sent ahead as each
    /// answer is read; an error among them fails that request (naming the request sent ahead).
    pub(crate) async fn send_ahead(&self, requests: Vec<Ahead>) -> Result<()> {
        let deadline = Instant::now() + crate::timeouts::request();
        let mut guard = self.conn.lock().await;
        let conn = self.connected(&mut guard, deadline).await?;
        settle(conn, deadline).await?;
        if !conn.in_sync {
            sync_conn(conn, deadline).await.context("guest agent")?;
        }
        write_ahead(conn, requests).await
    }

    /// Waits for the answers to what was sent ahead ([`Qga::send_ahead`]), follow-ups included;
    /// an error among them is this call's error.
    pub(crate) async fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + crate::timeouts::request();
        let mut guard = self.conn.lock().await;
        match guard.as_mut() {
            Some(conn) => settle(conn, deadline).await,
            None => Ok(()),
        }
    }

    /// Runs `argv` and waits at most `timeout` for it to end; on a timeout every process it
    /// started is killed and the error is an [`ExecTimeout`] with what it printed so far.
    pub async fn exec(&self, argv: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let started = self.exec_start(argv).await?;
        match poll::until(timeout, crate::timeouts::EXEC_POLL, |_| self.exec_status(&started))
            .await?
        {
            Polled::Done(out) => Ok(out),
            Polled::TimedOut(_) => {
                let partial = self.exec_kill(&started).await;
                Err(ExecTimeout { timeout, stdout: partial.stdout, stderr: partial.stderr }.into())
            }
        }
    }

    /// Starts `argv` in the guest without waiting for it (see [`Qga::exec_status`]).
    pub async fn exec_start(&self, argv: &[&str]) -> Result<GuestExec> {
        let (path, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
        // Every process the command starts inherits this tag, even one reparented to init that
        // still holds stdout open; a kill goes by the tag. (A process-group wrapper such as
        // setsid would cost another exec, a few ms under TCG, on every command.)
        let tag = exec_tag();
        let mut env = guest_env();
        env.push(format!("VMCHECK_EXEC_ID={tag}"));
        let started = self
            .execute(qga::guest_exec {
                path: path.to_string(),
                arg: Some(args.iter().map(|a| a.to_string()).collect()),
                env: Some(env),
                input_data: None,
                capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
            })
            .await?;
        Ok(GuestExec { pid: started.pid, tag })
    }

    /// The command's output once it has ended, `None` while it runs. The agent forgets a
    /// command once it has reported its end: ask once more and it answers with an error.
    pub async fn exec_status(&self, exec: &GuestExec) -> Result<Option<ExecOutput>> {
        let status = self.execute(qga::guest_exec_status { pid: exec.pid }).await?;
        Ok(status.exited.then(|| exec_output(status)))
    }

    /// Kills every process of a command (by its tag) and collects what it printed.
    pub async fn exec_kill(&self, exec: &GuestExec) -> ExecOutput {
        let (pid, tag) = (exec.pid, &exec.tag);
        let kill = format!(
            "for e in /proc/[0-9]*/environ; do p=${{e#/proc/}}; p=${{p%/environ}}; \
             tr '\\0' '\\n' < $e 2>/dev/null | grep -qx 'VMCHECK_EXEC_ID={tag}' && kill -KILL $p 2>/dev/null; done; \
             kill -KILL {pid} 2>/dev/null; true"
        );
        let _ = self
            .execute(qga::guest_exec {
                path: "/bin/sh".into(),
                arg: Some(vec!["-c".into(), kill]),
                env: Some(guest_env()),
                input_data: None,
                capture_output: None,
            })
            .await;
        // The killed command's record, with what it printed; the agent frees it once reported.
        // An agent that cannot answer (an error) has nothing more to tell.
        match poll::until(crate::timeouts::reap(), crate::timeouts::REAP_POLL, |_| {
            self.exec_status(exec)
        })
        .await
        {
            Ok(Polled::Done(out)) => out,
            _ => ExecOutput {
                status: -1,
                signal: None,
                stdout: String::new(),
                stderr: String::new(),
            },
        }
    }

    /// Reads a whole guest file.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        self.read_file_from(path, 0).await
    }

    /// Reads a guest file from byte `offset` to its end (what a growing log gained since).
    pub async fn read_file_from(&self, path: &str, offset: u64) -> Result<Vec<u8>> {
        let handle = self
            .execute(qga::guest_file_open { path: path.into(), mode: Some("r".into()) })
            .await?;
        let mut data = Vec::new();
        let result = async {
            if offset > 0 {
                self.execute_raw(
                    "guest-file-seek",
                    json!({"handle": handle, "offset": offset, "whence": "set"}),
                )
                .await?;
            }
            loop {
                let chunk =
                    self.execute(qga::guest_file_read { handle, count: Some(1 << 20) }).await?;
                data.extend_from_slice(&chunk.buf_b64);
                if chunk.eof || chunk.count == 0 {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        }
        .await;
        let _ = self.execute(qga::guest_file_close { handle }).await;
        result.with_context(|| format!("reading guest file {path} from byte {offset}"))?;
        Ok(data)
    }

    /// Writes (creates or truncates) a guest file.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let handle = self
            .execute(qga::guest_file_open { path: path.into(), mode: Some("w".into()) })
            .await?;
        let result = async {
            for chunk in data.chunks(1 << 20) {
                self.execute(qga::guest_file_write {
                    handle,
                    buf_b64: chunk.to_vec(),
                    count: Some(chunk.len() as i64),
                })
                .await?;
            }
            self.execute(qga::guest_file_flush { handle }).await?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        let _ = self.execute(qga::guest_file_close { handle }).await;
        result.with_context(|| format!("writing guest file {path}"))
    }

    /// The guest's `/proc/meminfo`, in KiB per field.
    pub async fn memory_stats(&self) -> Result<MemoryStats> {
        let text = String::from_utf8_lossy(&self.read_file("/proc/meminfo").await?).into_owned();
        MemoryStats::parse(&text)
    }
}

/// One request as the agent reads it: a JSON object and a newline.
fn request_line(name: &str, arguments: Value) -> Result<Vec<u8>> {
    let mut request = json!({"execute": name});
    if !arguments.is_null() && arguments != json!({}) {
        request["arguments"] = arguments;
    }
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    Ok(line)
}

/// Writes `requests` in one write and owes their answers.
async fn write_ahead(conn: &mut Conn, requests: Vec<Ahead>) -> Result<()> {
    let mut lines = Vec::new();
    for r in &requests {
        lines.extend(request_line(&r.name, r.arguments.clone())?);
    }
    conn.writer.write_all(&lines).await.context("guest agent: write failed")?;
    conn.owed.extend(requests);
    Ok(())
}

/// Reads the answers owed for requests sent ahead, oldest first, sending each one's follow-ups
/// ahead once its answer is read; the first error among them is returned once all are read.
/// Out of sync, they cannot be told from stale answers: the resynchronisation skips them.
async fn settle(conn: &mut Conn, deadline: Instant) -> Result<()> {
    if !conn.in_sync {
        conn.owed.clear();
        return Ok(());
    }
    let mut failed = None;
    while let Some(Ahead { name, then, .. }) = conn.owed.pop_front() {
        match tokio::time::timeout_at(deadline.into(), conn.reader.next()).await {
            Err(_) => {
                conn.in_sync = false;
                conn.owed.clear();
                bail!("guest agent {name} (sent ahead): no answer in time");
            }
            Ok(Err(e)) => {
                conn.owed.clear();
                bail!("guest agent {name} (sent ahead): connection lost: {e}");
            }
            Ok(Ok(reply)) => match (reply.get("return"), reply.get("error")) {
                (Some(value), _) => {
                    if let Some(then) = then {
                        write_ahead(conn, then(value)).await?;
                    }
                }
                (None, Some(e)) => {
                    let desc = e["desc"].as_str().unwrap_or("unknown error").to_string();
                    failed.get_or_insert(format!("guest agent {name} (sent ahead) failed: {desc}"));
                }
                (None, None) => {
                    conn.in_sync = false;
                    conn.owed.clear();
                    bail!("guest agent {name} (sent ahead): malformed answer {reply}");
                }
            },
        }
    }
    match failed {
        Some(e) => Err(anyhow!(e)),
        None => Ok(()),
    }
}

async fn sync_conn(conn: &mut Conn, deadline: Instant) -> Result<()> {
    let started = Instant::now();
    loop {
        let id: u32 = rand_id();
        // A leading 0xFF makes the agent drop any half-parsed input.
        let mut msg = vec![0xff];
        msg.extend(serde_json::to_vec(
            &json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}),
        )?);
        msg.push(b'\n');
        conn.writer.write_all(&msg).await.context("writing to the guest agent socket")?;
        // Earlier syncs, written while the agent was not yet running, are answered first.
        let attempt_end = (Instant::now() + Duration::from_millis(500)).min(deadline);
        loop {
            match tokio::time::timeout_at(attempt_end.into(), conn.reader.next()).await {
                Err(_) => break,
                Ok(Err(e)) => bail!("guest agent connection lost: {e}"),
                Ok(Ok(reply)) if reply.get("return").and_then(Value::as_u64) == Some(id as u64) => {
                    conn.in_sync = true;
                    return Ok(());
                }
                Ok(Ok(_stale)) => continue,
            }
        }
        if Instant::now() >= deadline {
            bail!("the guest agent did not answer within {:?}", started.elapsed());
        }
    }
}

/// A tag no other command of this or another driver carries.
pub(crate) fn exec_tag() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{n}", std::process::id(), rand_id())
}

fn rand_id() -> u32 {
    // Any value the agent has not answered before will do.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(16)) & 0x7fff_ffff
}

fn exec_output(s: qga::GuestExecStatus) -> ExecOutput {
    let signal = s.signal.map(|v| v as i32);
    ExecOutput {
        status: match (s.exitcode, signal) {
            (Some(code), _) => code as i32,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        },
        signal,
        stdout: String::from_utf8_lossy(&s.out_data.unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&s.err_data.unwrap_or_default()).into_owned(),
    }
}

/// Memory figures from the guest's `/proc/meminfo`, in KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    /// `MemTotal`.
    pub total_kib: u64,
    /// `MemFree`.
    pub free_kib: u64,
    /// `MemAvailable`.
    pub available_kib: u64,
    /// `Cached`.
    pub cached_kib: u64,
}

impl MemoryStats {
    /// Reads the fields from the text of `/proc/meminfo`; fails when one is missing.
    pub fn parse(text: &str) -> Result<MemoryStats> {
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("/proc/meminfo has no {name} field"))
        };
        Ok(MemoryStats {
            total_kib: field("MemTotal")?,
            free_kib: field("MemFree")?,
            available_kib: field("MemAvailable")?,
            cached_kib: field("Cached")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_exec_runs_sh_with_the_guest_env_and_keeps_no_output() {
        let ahead = Ahead::detached_exec("sleep 1");
        assert_eq!(ahead.name, "guest-exec");
        assert_eq!(
            ahead.arguments,
            serde_json::json!({
                "path": "/bin/sh",
                "arg": ["-c", "sleep 1"],
                "env": GUEST_ENV,
                "capture-output": false,
            })
        );
    }

    /// A stand-in for qemu-ga on a unix socket: answers each request in order (the sync with its
    /// id, `guest-file-open` with handle 7, `guest-set-time` with an error when `fail_time`,
    /// anything else with `{}`), and records the requests it read.
    async fn fake_agent(
        listener: tokio::net::UnixListener,
        fail_time: bool,
        seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    ) {
        use tokio::io::AsyncBufReadExt;
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(r);
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                return;
            }
            // The sync's leading 0xFF byte is no JSON (nor UTF-8).
            line.retain(|b| *b != 0xff);
            let request: Value = serde_json::from_slice(&line).unwrap();
            let answer = match request["execute"].as_str().unwrap() {
                "guest-sync-delimited" => json!({"return": request["arguments"]["id"]}),
                "guest-file-open" => json!({"return": 7}),
                "guest-set-time" if fail_time => json!({"error": {"desc": "hwclock failed"}}),
                _ => json!({"return": {}}),
            };
            seen.lock().unwrap().push(request);
            let mut out = serde_json::to_vec(&answer).unwrap();
            out.push(b'\n');
            w.write_all(&out).await.unwrap();
        }
    }

    #[tokio::test]
    async fn requests_sent_ahead_run_before_the_next_and_their_follow_ups_get_the_answer() {
        for fail_time in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("qga.sock");
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            tokio::spawn(fake_agent(listener, fail_time, seen.clone()));
            let qga = Qga::new(&path);
            qga.sync(Duration::from_secs(5)).await.unwrap();
            qga.send_ahead(vec![
                Ahead::new("guest-file-open", json!({"path": "/dev/urandom"})).then(|handle| {
                    vec![Ahead::new("guest-file-close", json!({ "handle": handle }))]
                }),
                Ahead::new("guest-set-time", json!({"time": 1})),
            ])
            .await
            .unwrap();
            let next = qga.execute_raw("guest-ping", Value::Null).await;
            let names: Vec<String> = seen
                .lock()
                .unwrap()
                .iter()
                .map(|r| format!("{} {}", r["execute"], r["arguments"]["handle"]))
                .collect();
            // The follow-up went out with the opening's answer, all before the next request.
            assert_eq!(
                names[1..],
                [
                    "\"guest-file-open\" null",
                    "\"guest-set-time\" null",
                    "\"guest-file-close\" 7",
                    "\"guest-ping\" null"
                ][..(if fail_time { 3 } else { 4 })],
                "{names:?}"
            );
            match (fail_time, next) {
                (false, Ok(_)) => {}
                (true, Err(e)) => {
                    assert!(
                        e.to_string()
                            .contains("guest-set-time (sent ahead) failed: hwclock failed"),
                        "{e}"
                    )
                }
                (_, other) => panic!("fail_time {fail_time}: {other:?}"),
            }
        }
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:         492532 kB\nMemFree:          401236 kB\nMemAvailable:     410884 kB\nBuffers:               0 kB\nCached:            55044 kB\n";
        assert_eq!(
            MemoryStats::parse(text).unwrap(),
            MemoryStats {
                total_kib: 492532,
                free_kib: 401236,
                available_kib: 410884,
                cached_kib: 55044
            }
        );
        assert!(MemoryStats::parse("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn signal_maps_to_shell_status() {
        let s = qga::GuestExecStatus {
            exited: true,
            exitcode: None,
            signal: Some(9),
            out_data: Some(b"x".to_vec()),
            err_data: None,
            out_truncated: None,
            err_truncated: None,
        };
        let out = exec_output(s);
        assert_eq!((out.status, out.signal, out.stdout.as_str()), (137, Some(9), "x"));
    }

    /// Every scenario step awaits the agent, so its futures' size multiplies up the stack (a
    /// 16 KiB read buffer held across an await once overflowed a test thread's 2 MiB stack).
    #[test]
    fn an_agent_call_is_a_small_future() {
        let qga = Qga::new(Path::new("/nonexistent"));
        let call = qga.execute_raw("guest-ping", Value::Null);
        assert!(
            std::mem::size_of_val(&call) < 4096,
            "guest agent call future is {} bytes",
            std::mem::size_of_val(&call)
        );
    }
}
