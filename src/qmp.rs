//! QMP client: host-side control of a QEMU process over its monitor socket.
//!
//! Commands are the `qapi` crate's typed QMP commands (or raw JSON, for the REPL). One reader task
//! owns the socket: replies go to whoever waits for that request id, events go to a queue that
//! keeps every event until someone takes it, so no event is lost while a reply is awaited.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};

use crate::qapi_stream::JsonReader;

/// A QMP event as QEMU sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's name, such as `DEVICE_DELETED`.
    pub name: String,
    /// Its `data` member (`null` when it has none).
    pub data: Value,
    /// Seconds since the epoch, from QEMU's timestamp.
    pub timestamp: f64,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, Refusal>>>;

/// A command QEMU refused, with its error class kept typed (callers match on the class, e.g.
/// `DeviceNotActive` from `query-balloon` without a balloon), not only its text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("QMP {command} failed: {class:?}: {desc}")]
pub struct QmpError {
    /// The command QEMU refused.
    pub command: String,
    /// QEMU's error class.
    pub class: qapi::ErrorClass,
    /// QEMU's error description.
    pub desc: String,
}

/// An error reply as the reader saw it; the command's name is added by the caller.
#[derive(Debug)]
enum Refusal {
    Error(qapi::ErrorClass, String),
    Malformed(String),
}

struct Shared {
    pending: Mutex<Pending>,
    events: Mutex<Vec<Event>>,
    event_arrived: Notify,
    /// Why the connection ended, once it has.
    closed: Mutex<Option<String>>,
}

/// A connected QMP monitor.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to a monitor socket and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = connect_unix(path, timeout).await.context("connecting to QMP")?;
        let (read, write) = stream.into_split();
        let mut reader = JsonReader::new(read);
        let greeting = tokio::time::timeout(timeout, reader.next())
            .await
            .map_err(|_| anyhow!("no QMP greeting within {timeout:?}"))??;
        if greeting.get("QMP").is_none() {
            bail!("expected a QMP greeting, got {greeting}");
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            event_arrived: Notify::new(),
            closed: Mutex::new(None),
        });
        let reader = tokio::spawn(read_loop(reader, shared.clone()));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            shared,
            next_id: AtomicU64::new(1),
            reader,
        };
        qmp.execute(qapi::qmp::qmp_capabilities { enable: None }).await?;
        Ok(qmp)
    }

    /// Runs a typed command and returns its typed reply.
    pub async fn execute<C: qapi::Command>(&self, command: C) -> Result<C::Ok> {
        let arguments = serde_json::to_value(&command)?;
        let value = self.execute_raw(C::NAME, arguments).await?;
        serde_json::from_value(value.clone())
            .with_context(|| format!("QMP {} returned an unexpected reply: {value}", C::NAME))
    }

    /// Runs a command given by name with JSON arguments (the REPL's `qmp` command).
    pub async fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"execute": name, "id": id});
        if !arguments.is_null() && arguments != json!({}) {
            message["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        if let Some(why) = self.shared.closed.lock().unwrap().clone() {
            bail!("QMP {name}: the monitor connection is closed ({why})");
        }
        self.shared.pending.lock().unwrap().insert(id, tx);
        let mut line = serde_json::to_vec(&message)?;
        line.push(b'\n');
        let write = async {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await
        };
        if let Err(e) = write.await {
            self.shared.pending.lock().unwrap().remove(&id);
            bail!("QMP {name}: writing to the monitor failed: {e}");
        }
        let timeout = crate::timeouts::request();
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.shared.pending.lock().unwrap().remove(&id);
                bail!("QMP {name}: no reply within {timeout:?}")
            }
            Ok(Err(_)) => {
                bail!("QMP {name}: the monitor connection closed before the reply (QEMU exited?)")
            }
            Ok(Ok(Err(Refusal::Error(class, desc)))) => {
                Err(QmpError { command: name.to_string(), class, desc }.into())
            }
            Ok(Ok(Err(Refusal::Malformed(m)))) => bail!("QMP {name}: {m}"),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    }

    /// How many events have arrived so far: a mark for [`Qmp::wait_for_event`].
    pub fn event_count(&self) -> usize {
        self.shared.events.lock().unwrap().len()
    }

    /// All events since `mark`.
    pub fn events_since(&self, mark: usize) -> Vec<Event> {
        self.shared.events.lock().unwrap().get(mark..).map(<[Event]>::to_vec).unwrap_or_default()
    }

    /// Waits for the first event at or after `mark` that `matches`.
    pub async fn wait_for_event(
        &self,
        mark: usize,
        timeout: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.event_arrived.notified();
            if let Some(e) = self.events_since(mark).into_iter().find(|e| matches(e)) {
                return Ok(e);
            }
            if let Some(why) = self.shared.closed.lock().unwrap().clone() {
                bail!("the monitor connection closed ({why}) before the awaited event");
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                bail!("no such QMP event within {timeout:?}");
            }
        }
    }

    /// Why the connection ended, if it has (the per-machine event log stops there).
    pub fn closed(&self) -> Option<String> {
        self.shared.closed.lock().unwrap().clone()
    }
}

async fn read_loop(mut reader: JsonReader<tokio::net::unix::OwnedReadHalf>, shared: Arc<Shared>) {
    let why = loop {
        let message = match reader.next().await {
            Ok(m) => m,
            Err(e) => break e.to_string(),
        };
        if let Some(name) = message.get("event").and_then(Value::as_str) {
            let ts = &message["timestamp"];
            let timestamp = ts["seconds"].as_f64().unwrap_or(0.0)
                + ts["microseconds"].as_f64().unwrap_or(0.0) / 1e6;
            let event = Event {
                name: name.to_string(),
                data: message.get("data").cloned().unwrap_or(Value::Null),
                timestamp,
            };
            tracing::debug!(event = %event.name, data = %event.data, "QMP event");
            shared.events.lock().unwrap().push(event);
            shared.event_arrived.notify_waiters();
            continue;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            tracing::warn!(%message, "QMP message without id");
            continue;
        };
        let reply = match (message.get("return"), message.get("error")) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(e)) => {
                let class = serde_json::from_value(e["class"].clone())
                    .unwrap_or(qapi::ErrorClass::GenericError);
                Err(Refusal::Error(class, e["desc"].as_str().unwrap_or("").to_string()))
            }
            _ => Err(Refusal::Malformed(format!("malformed reply {message}"))),
        };
        if let Some(tx) = shared.pending.lock().unwrap().remove(&id) {
            let _ = tx.send(reply);
        }
    };
    *shared.closed.lock().unwrap() = Some(why);
    shared.pending.lock().unwrap().clear();
    shared.event_arrived.notify_waiters();
}

/// Connects to a unix socket that its server may not have created yet.
pub async fn connect_unix(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let last = std::sync::Mutex::new(None);
    let polled = crate::poll::until(timeout, crate::timeouts::SOCKET_POLL, |_| async {
        match UnixStream::connect(path).await {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                *last.lock().unwrap() = Some(e);
                Ok(None)
            }
        }
    })
    .await?;
    match polled {
        crate::poll::Polled::Done(s) => Ok(s),
        crate::poll::Polled::TimedOut(_) => {
            let why = last.into_inner().unwrap().map(|e| e.to_string()).unwrap_or_default();
            anyhow::bail!("{} did not accept within {timeout:?}: {why}", path.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A monitor that greets, accepts qmp_capabilities and refuses everything else with `class`.
    async fn refusing_monitor(dir: &Path, class: &'static str) -> std::path::PathBuf {
        let path = dir.join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let req: Value = serde_json::from_str(&line).unwrap();
                let reply = if req["execute"] == "qmp_capabilities" {
                    json!({"return": {}, "id": req["id"]})
                } else {
                    json!({"error": {"class": class, "desc": "No balloon device has been activated"}, "id": req["id"]})
                };
                w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
        });
        path
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_error_class() {
        let dir = tempfile::tempdir().unwrap();
        let path = refusing_monitor(dir.path(), "DeviceNotActive").await;
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let err = qmp.execute(qapi::qmp::query_balloon {}).await.unwrap_err();
        let q = err.downcast_ref::<QmpError>().expect("a typed QMP error");
        assert_eq!(
            (q.command.as_str(), &q.class),
            ("query-balloon", &qapi::ErrorClass::DeviceNotActive)
        );
        assert_eq!(
            err.to_string(),
            "QMP query-balloon failed: DeviceNotActive: No balloon device has been activated"
        );
    }
}
