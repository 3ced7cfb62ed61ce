//! Input: the terminal through rustyline (history, completion) or, when stdin is no terminal,
//! plain lines, so a script can be piped in. Both block, so they run on a thread of their own
//! and hand lines to the session one request at a time.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::complete::Helper;

/// Which of the two streams a piece of output belongs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Results (stdout).
    Out,
    /// Messages and errors (stderr).
    Err,
}

/// Where a session's output goes: this process's stdout and stderr, or the socket of an
/// attached client (`vmcheck repl --attach`), which gets both.
#[derive(Clone, Debug)]
pub enum Output {
    /// stdout and stderr.
    Terminal,
    /// The attached client's connection.
    Socket(Arc<std::sync::Mutex<std::os::unix::net::UnixStream>>),
}

impl Output {
    /// Writes `text` as it is (no newline added) and flushes.
    pub fn write(&self, stream: Stream, text: &str) {
        match (self, stream) {
            (Output::Terminal, Stream::Out) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(text.as_bytes());
                let _ = o.flush();
            }
            (Output::Terminal, Stream::Err) => {
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            // A client that went away reads nothing more: its end of input ends the session.
            (Output::Socket(s), _) => {
                let _ = s.lock().unwrap().write_all(text.as_bytes());
            }
        }
    }

    /// Writes `text` and a newline unless it ends with one; nothing for empty text.
    pub fn line(&self, stream: Stream, text: &str) {
        if text.is_empty() {
            return;
        }
        match text.ends_with('\n') {
            true => self.write(stream, text),
            false => self.write(stream, &format!("{text}\n")),
        }
    }
}

/// What a read of one line gave.
#[derive(Debug)]
pub enum Line {
    Text(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    Eof,
}

type ReadRequest = (String, oneshot::Sender<Line>);

/// The terminal or stdin, read on a thread of its own (rustyline blocks), one line per request.
pub struct Input {
    requests: std::sync::mpsc::Sender<ReadRequest>,
    /// A read whose reader went away (a `console` that timed out): the next read takes it over,
    /// so a line typed meanwhile is not lost.
    pending: tokio::sync::Mutex<Option<oneshot::Receiver<Line>>>,
    pub interactive: bool,
}

impl Input {
    pub(super) fn start(machines: Vec<String>, history: Option<PathBuf>) -> Arc<Input> {
        let interactive = std::io::stdin().is_terminal();
        let (requests, rx) = std::sync::mpsc::channel::<ReadRequest>();
        std::thread::spawn(move || {
            if interactive {
                match editor(machines, history.as_ref()) {
                    Ok(editor) => return serve_terminal(editor, rx, history),
                    Err(e) => eprintln!("vmcheck: no line editing ({e}); reading plain lines"),
                }
            }
            serve_plain(std::io::stdin().lock(), rx, None)
        });
        Arc::new(Input { requests, pending: tokio::sync::Mutex::new(None), interactive })
    }

    /// Lines from an attached client (`vmcheck repl --attach`), each prompt written to it.
    pub(super) fn attached(stream: std::os::unix::net::UnixStream, out: Output) -> Arc<Input> {
        let (requests, rx) = std::sync::mpsc::channel::<ReadRequest>();
        std::thread::spawn(move || serve_plain(std::io::BufReader::new(stream), rx, Some(out)));
        Arc::new(Input { requests, pending: tokio::sync::Mutex::new(None), interactive: false })
    }

    /// Reads one line (cancel-safe: a dropped read is taken over by the next).
    pub async fn read_line(&self, prompt: &str) -> Line {
        let mut pending = self.pending.lock().await;
        if pending.is_some() && self.interactive {
            // The terminal still shows the old read's prompt, or none.
            print!("{prompt}");
            let _ = std::io::stdout().flush();
        }
        let rx = match pending.as_mut() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = oneshot::channel();
                if self.requests.send((prompt.to_string(), tx)).is_err() {
                    return Line::Eof;
                }
                pending.insert(rx)
            }
        };
        let line = rx.await.unwrap_or(Line::Eof);
        *pending = None;
        line
    }
}

type Editor = rustyline::Editor<Helper, rustyline::history::FileHistory>;

fn editor(machines: Vec<String>, history: Option<&PathBuf>) -> rustyline::Result<Editor> {
    let config = rustyline::Config::builder()
        .max_history_size(1000)?
        .auto_add_history(false)
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut editor = Editor::with_config(config)?;
    editor.set_helper(Some(Helper { machines }));
    if let Some(path) = history {
        // A missing history file is a first session.
        let _ = editor.load_history(path);
    }
    Ok(editor)
}

fn serve_terminal(
    mut editor: Editor,
    requests: std::sync::mpsc::Receiver<ReadRequest>,
    history: Option<PathBuf>,
) {
    for (prompt, reply) in requests {
        let line = match editor.readline(&prompt) {
            Ok(l) => {
                if !l.trim().is_empty() && editor.add_history_entry(l.as_str()).unwrap_or(false) {
                    // Saved at once: the session may end by a signal, with no chance to save later.
                    if let Some(path) = &history {
                        let _ = editor.save_history(path);
                    }
                }
                Line::Text(l)
            }
            Err(rustyline::error::ReadlineError::Interrupted) => Line::Interrupted,
            Err(rustyline::error::ReadlineError::Eof) => Line::Eof,
            Err(e) => {
                eprintln!("vmcheck: reading the terminal: {e}");
                Line::Eof
            }
        };
        let _ = reply.send(line);
    }
}

fn serve_plain(
    mut reader: impl BufRead,
    requests: std::sync::mpsc::Receiver<ReadRequest>,
    prompts: Option<Output>,
) {
    for (prompt, reply) in requests {
        if let Some(out) = &prompts {
            out.write(Stream::Out, &prompt);
        }
        let mut s = String::new();
        let line = match reader.read_line(&mut s) {
            Ok(0) | Err(_) => Line::Eof,
            Ok(_) => Line::Text(s.trim_end_matches(['\n', '\r']).to_string()),
        };
        let _ = reply.send(line);
    }
}

/// `$VMCHECK_CACHE/repl_history`, or under the user's cache directory.
pub(super) fn history_path() -> Option<PathBuf> {
    let dir = crate::images::Images::from_env().ok()?.cache_dir;
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("repl_history"))
}
