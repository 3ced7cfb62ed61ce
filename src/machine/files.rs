//! Files between the host and a guest (the NixOS driver's `copy_from_host` and
//! `copy_from_vm`), over the guest agent: no shared folder, no shell quoting of the contents.
//! Each file travels in chunks of [`CHUNK`] bytes (`guest-file-read`/`guest-file-write`,
//! base64 on the wire), so any size and any bytes go through and neither side holds the whole
//! file in memory.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use qapi::qga;

use super::Machine;
use crate::log;
use crate::tools::shell_quote;

/// Bytes per agent request.
pub const CHUNK: usize = 1 << 20;

impl Machine {
    /// Copies the host file `source` into the guest as `target` (an absolute guest path): its
    /// parent directories are created, the file is created or replaced and takes the host
    /// file's permission bits, owned by root, as the NixOS driver's `copy_from_host` does.
    /// Files only: a directory is refused.
    pub async fn copy_from_host(&self, source: impl AsRef<Path>, target: &str) -> Result<()> {
        self.host_only("copy_from_host (the guest agent's file calls)")?;
        let source = source.as_ref();
        let what = format!("copying {} from the host to {target}", source.display());
        log::nested(&format!("{}: {what}", self.name()), async {
            if !target.starts_with('/') {
                return Err(self.error(
                    format!("{what}: the guest path must be absolute"),
                    format!("got {target:?}"),
                ));
            }
            let mut file = std::fs::File::open(source).map_err(|e| {
                self.error(format!("{what}: cannot open the host file"), e.to_string())
            })?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(self.error(
                    format!("{what}: copy_from_host copies files"),
                    format!("{} is not a regular file", source.display()),
                ));
            }
            let parent = Path::new(target).parent().and_then(Path::to_str).unwrap_or("/");
            self.succeed(&format!("mkdir -p {}", shell_quote(parent))).await?;
            let qga = self.qga().await?;
            let handle = qga
                .execute(qga::guest_file_open { path: target.into(), mode: Some("w".into()) })
                .await
                .map_err(|e| {
                    self.error(format!("{what}: cannot open it in the guest"), format!("{e:#}"))
                })?;
            let written = async {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                loop {
                    let n = read_full(&mut file, &mut buf)
                        .with_context(|| format!("reading {}", source.display()))?;
                    if n == 0 {
                        break;
                    }
                    let w = qga
                        .execute(qga::guest_file_write {
                            handle,
                            buf_b64: buf[..n].to_vec(),
                            count: Some(n as i64),
                        })
                        .await?;
                    if w.count != n as i64 {
                        anyhow::bail!("the agent wrote {} of {n} bytes at offset {total}", w.count);
                    }
                    total += n as u64;
                }
                qga.execute(qga::guest_file_flush { handle }).await?;
                Ok::<_, anyhow::Error>(total)
            }
            .await;
            let _ = qga.execute(qga::guest_file_close { handle }).await;
            let total =
                written.map_err(|e| self.error(format!("{what}: failed"), format!("{e:#}")))?;
            if total != meta.len() {
                return Err(self.error(
                    format!("{what}: the host file changed while it was copied"),
                    format!("it had {} bytes, {total} were copied", meta.len()),
                ));
            }
            let mode = meta.permissions().mode() & 0o7777;
            self.succeed(&format!("chmod {mode:o} {}", shell_quote(target))).await?;
            log::line(&format!("{}: copied {total} bytes to {target}", self.name()));
            Ok(())
        })
        .await
    }

    /// Copies the guest file `source` to the host, as `<target_dir>/<its file name>`, and
    /// returns that path (the NixOS driver's `copy_from_vm`). A relative `target_dir` is under
    /// the run's logs (`--out DIR`, else the run directory's `logs/`), as the NixOS driver's is
    /// under `$out`; it is created as needed. Files only.
    pub async fn copy_from_machine(
        &self,
        source: &str,
        target_dir: impl AsRef<Path>,
    ) -> Result<PathBuf> {
        self.host_only("copy_from_machine (the guest agent's file calls)")?;
        let name = Path::new(source).file_name().ok_or_else(|| {
            self.error(format!("copying {source} from the guest"), "the path names no file")
        })?;
        let dir = self.env().log_dir.join(target_dir.as_ref());
        let dest = dir.join(name);
        let what = format!("copying {source} from the guest to {}", dest.display());
        log::nested(&format!("{}: {what}", self.name()), async {
            std::fs::create_dir_all(&dir).map_err(|e| {
                self.error(format!("{what}: cannot create {}", dir.display()), e.to_string())
            })?;
            let qga = self.qga().await?;
            let handle = qga
                .execute(qga::guest_file_open { path: source.into(), mode: Some("r".into()) })
                .await
                .map_err(|e| {
                    self.error(format!("{what}: cannot open it in the guest"), format!("{e:#}"))
                })?;
            let copied = async {
                let mut out = std::fs::File::create(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                let mut total = 0u64;
                loop {
                    let chunk = qga
                        .execute(qga::guest_file_read { handle, count: Some(CHUNK as i64) })
                        .await?;
                    out.write_all(&chunk.buf_b64)
                        .with_context(|| format!("writing {}", dest.display()))?;
                    total += chunk.buf_b64.len() as u64;
                    if chunk.eof || chunk.count == 0 {
                        break;
                    }
                }
                out.flush()?;
                Ok::<_, anyhow::Error>(total)
            }
            .await;
            let _ = qga.execute(qga::guest_file_close { handle }).await;
            let total =
                copied.map_err(|e| self.error(format!("{what}: failed"), format!("{e:#}")))?;
            log::line(&format!("{}: copied {total} bytes to {}", self.name(), dest.display()));
            Ok(dest.clone())
        })
        .await
    }
}

/// Reads until `buf` is full or the end of the file: each agent write then carries a whole chunk.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fill_whole_chunks_until_the_end() {
        // A reader that hands out 3 bytes at a time.
        struct Trickle(Vec<u8>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(3).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let mut r = Trickle((0..10).collect());
        let mut buf = [0u8; 8];
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 8);
        assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 2);
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 0);
    }
}
