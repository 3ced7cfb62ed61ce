//! The wire format QMP and the guest agent share: JSON values, one after another, on a unix
//! socket. The agent may also send 0xFF bytes (the `guest-sync-delimited` marker) and, after a
//! reconnect or a restart, garbage from a half-read message; both are skipped.

use anyhow::{bail, Result};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads JSON values from a byte stream, tolerating delimiters and resynchronising after junk.
pub struct JsonReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> JsonReader<R> {
    pub fn new(inner: R) -> Self {
        JsonReader { inner, buf: Vec::with_capacity(4096) }
    }

    /// The next JSON value; an error at end of stream.
    pub async fn next(&mut self) -> Result<Value> {
        loop {
            if let Some(value) = self.take_value() {
                return Ok(value);
            }
            // Straight into the buffer's spare room: a chunk array here would live in every
            // future that awaits a reply (16 KiB each, copied at every level in debug builds).
            self.buf.reserve(16384);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }

    fn take_value(&mut self) -> Option<Value> {
        loop {
            let start =
                self.buf.iter().position(|b| !matches!(b, 0xff | b' ' | b'\t' | b'\r' | b'\n'))?;
            self.buf.drain(..start);
            let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match stream.next() {
                Some(Ok(value)) => {
                    let used = stream.byte_offset();
                    self.buf.drain(..used);
                    return Some(value);
                }
                Some(Err(e)) if e.is_eof() => return None,
                // Junk: skip to the next line (both peers end messages with a newline) or marker.
                _ => {
                    let skip = self
                        .buf
                        .iter()
                        .skip(1)
                        .position(|b| matches!(b, b'\n' | 0xff))
                        .map(|p| p + 1);
                    match skip {
                        Some(p) => drop(self.buf.drain(..p)),
                        None => {
                            self.buf.clear();
                            return None;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_values_across_delimiters_and_junk() {
        let data: &[u8] = b"\xff{\"return\": 1}\r\n{\"ev\n{\"event\": \"X\"}\n\xff\xff{\"return\": {\"a\": [1,2]}}";
        let mut r = JsonReader::new(data);
        assert_eq!(r.next().await.unwrap(), serde_json::json!({"return": 1}));
        assert_eq!(r.next().await.unwrap(), serde_json::json!({"event": "X"}));
        assert_eq!(r.next().await.unwrap(), serde_json::json!({"return": {"a": [1, 2]}}));
        assert!(r.next().await.is_err());
    }

    #[tokio::test]
    async fn waits_for_a_value_split_across_reads() {
        let (mut w, rd) = tokio::io::duplex(64);
        let mut r = JsonReader::new(rd);
        let reader = tokio::spawn(async move { r.next().await.unwrap() });
        use tokio::io::AsyncWriteExt;
        w.write_all(b"{\"retu").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        w.write_all(b"rn\": {}}\n").await.unwrap();
        assert_eq!(reader.await.unwrap(), serde_json::json!({"return": {}}));
    }
}
