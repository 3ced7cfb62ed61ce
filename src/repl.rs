//! The interactive driver: `vmcheck repl [SCENARIO]`, for poking at a failing test by hand.
//!
//! The scenario's machines are defined, not started. Every command comes from one table,
//! [`COMMANDS`]: its name, where it applies (`name ...` or `<machine>.name ...`), the shape of
//! its arguments (which drives both the parser and tab completion), its help and its handler.
//! A new machine-API operation reaches the REPL as one more line there.
//!
//! Input is read on its own thread: rustyline (history, completion) on a terminal, plain lines
//! otherwise, so a script can be piped in. Errors print and return to the prompt; only `quit`
//! and end of input end the session, and both stop every machine. Ctrl-C clears the line at the
//! prompt and cancels a running command.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::config::{DriverConfig, Role};
use crate::driver::{Driver, DriverOptions};
use crate::log;
use crate::machine::Machine;
use crate::qga::ExecOutput;
use crate::scenarios;
use crate::target::client::TargetClient;
use crate::target::proto;
use crate::timeouts;

pub const PROMPT: &str = "vmcheck> ";
/// The scenario whose machines the REPL defines when none is named.
pub const DEFAULT_SCENARIO: &str = scenarios::fio_nvme_basic::NAME;

// ---------------------------------------------------------------------------------------------
// The command table

/// Where a command applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `name ARGS`
    Global,
    /// `<machine>.name ARGS`
    Machine,
}

/// What follows a command's name; drives the parser and tab completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    None,
    /// The rest of the line, required.
    Text,
    /// `[--timeout SECS] TEXT`: waits take an optional timeout.
    TimedText,
    /// A machine name, then the rest of the line (required).
    MachineText,
    /// A machine name, then optionally the rest of the line.
    MachineOptText,
    /// A scenario name.
    Scenario,
    /// A gRPC method name, then optionally its JSON request.
    Grpc,
    /// Optionally a command name.
    OptCommand,
}

/// A command's arguments, resolved against the session.
pub struct Invocation {
    pub machine: Option<Machine>,
    pub text: String,
    pub timeout: Option<Duration>,
}

impl Invocation {
    fn machine(&self) -> &Machine {
        self.machine.as_ref().expect("the parser names a machine for machine-scoped commands")
    }
    fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default)
    }
}

type Handler = for<'a> fn(&'a Session, &'a Invocation) -> BoxFuture<'a, Result<String>>;

pub struct Command {
    pub name: &'static str,
    pub scope: Scope,
    pub args: Args,
    /// The arguments as `help` shows them.
    pub usage: &'static str,
    pub help: &'static str,
    run: Handler,
}

impl Command {
    pub fn synopsis(&self) -> String {
        let head = match self.scope {
            Scope::Global => self.name.to_string(),
            Scope::Machine => format!("<m>.{}", self.name),
        };
        if self.usage.is_empty() {
            head
        } else {
            format!("{head} {}", self.usage)
        }
    }
}

fn nothing(r: Result<()>) -> Result<String> {
    r.map(|()| String::new())
}

/// Every command of the REPL. `quit` is acted on by the loop itself.
pub static COMMANDS: &[Command] = &[
    Command {
        name: "help",
        scope: Scope::Global,
        args: Args::OptCommand,
        usage: "[command]",
        help: "list the commands, or explain one",
        run: |_, c| Box::pin(async move { help(&c.text) }),
    },
    Command {
        name: "quit",
        scope: Scope::Global,
        args: Args::None,
        usage: "",
        help: "stop every machine and leave (so does end of input)",
        run: |_, _| Box::pin(async { Ok(String::new()) }),
    },
    Command {
        name: "machines",
        scope: Scope::Global,
        args: Args::None,
        usage: "",
        help: "list the machines and whether they run",
        run: |s, _| Box::pin(s.list_machines()),
    },
    Command {
        name: "start_all",
        scope: Scope::Global,
        args: Args::None,
        usage: "",
        help: "start every machine and wait for their agents",
        run: |s, _| Box::pin(async move { nothing(s.driver.start_all().await) }),
    },
    Command {
        name: "qmp",
        scope: Scope::Global,
        args: Args::MachineText,
        usage: "<m> <json> | <m> <name> [json args]",
        help: "raw QMP command, e.g. qmp target {\"execute\": \"query-status\"}",
        run: |_, c| Box::pin(qmp(c)),
    },
    Command {
        name: "grpc",
        scope: Scope::Global,
        args: Args::Grpc,
        usage: "<method> [json]",
        help: "call the target daemon of the (first) target machine, e.g. grpc ListBdevs {}",
        run: |s, c| Box::pin(s.grpc(&c.text)),
    },
    Command {
        name: "console",
        scope: Scope::Global,
        args: Args::MachineOptText,
        usage: "<m> [secs]",
        help: "follow a machine's serial console until Enter (or end of input), or for secs seconds",
        run: |s, c| Box::pin(s.follow_console(c)),
    },
    Command {
        name: "run",
        scope: Scope::Global,
        args: Args::Scenario,
        usage: "<scenario>",
        help: "run a scenario's script on these machines (left running after a failure)",
        run: |s, c| Box::pin(s.run_scenario(&c.text, false)),
    },
    Command {
        name: "step",
        scope: Scope::Global,
        args: Args::Scenario,
        usage: "<scenario>",
        help: "run a scenario one subtest at a time: Enter runs the next, c the rest, q stops",
        run: |s, c| Box::pin(s.run_scenario(&c.text, true)),
    },
    Command {
        name: "start",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "start QEMU (the guest boots on; see wait_for_agent)",
        run: |_, c| Box::pin(async move { nothing(c.machine().start().await) }),
    },
    Command {
        name: "wait_for_agent",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "start if needed and wait until the guest agent answers",
        run: |_, c| Box::pin(async move { nothing(c.machine().wait_for_agent().await) }),
    },
    Command {
        name: "succeed",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<cmd>",
        help: "run a shell command that must exit 0; print its stdout (also <m>: <cmd>)",
        run: |_, c| Box::pin(c.machine().succeed(&c.text)),
    },
    Command {
        name: "fail",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<cmd>",
        help: "run a shell command that must exit non-zero",
        run: |_, c| Box::pin(async move { c.machine().fail(&c.text).await.map(|o| format_exec(&o)) }),
    },
    Command {
        name: "execute",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<cmd>",
        help: "run a shell command; print its status, stdout and stderr",
        run: |_, c| Box::pin(async move { c.machine().execute(&c.text).await.map(|o| format_exec(&o)) }),
    },
    Command {
        name: "wait_until_succeeds",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <cmd>",
        help: "retry a shell command until it exits 0; print its stdout",
        run: |_, c| Box::pin(c.machine().wait_until_succeeds(&c.text, c.timeout_or(timeouts::command()))),
    },
    Command {
        name: "wait_until_fails",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <cmd>",
        help: "retry a shell command until it exits non-zero",
        run: |_, c| {
            Box::pin(async move { c.machine().wait_until_fails(&c.text, c.timeout_or(timeouts::command())).await.map(|o| format_exec(&o)) })
        },
    },
    Command {
        name: "wait_for_file",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <path>",
        help: "wait until a path exists in the guest",
        run: |_, c| Box::pin(async move { nothing(c.machine().wait_for_file(&c.text, c.timeout_or(timeouts::command())).await) }),
    },
    Command {
        name: "wait_for_open_port",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <port>",
        help: "wait until something in the guest listens on a TCP port",
        run: |_, c| {
            Box::pin(async move { nothing(c.machine().wait_for_open_port(parse_port(&c.text)?, c.timeout_or(timeouts::command())).await) })
        },
    },
    Command {
        name: "wait_for_console_text",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <regex>",
        help: "wait for console text no earlier wait consumed; print the match",
        run: |_, c| Box::pin(c.machine().wait_for_console_text(&c.text, c.timeout_or(timeouts::command()))),
    },
    Command {
        name: "console_contains",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<regex>",
        help: "whether the console ever showed matching text",
        run: |_, c| Box::pin(async move { c.machine().console_contains(&c.text).map(|b| b.to_string()) }),
    },
    Command {
        name: "disk_device",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<disk id>",
        help: "the guest's /dev path of a disk of the machine's spec",
        run: |_, c| Box::pin(c.machine().disk_device(&c.text)),
    },
    Command {
        name: "memory_stats",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "the guest's memory figures (KiB)",
        run: |_, c| Box::pin(async move { Ok(serde_json::to_string_pretty(&c.machine().memory_stats().await?)?) }),
    },
    Command {
        name: "shutdown",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "power the guest off cleanly",
        run: |_, c| Box::pin(async move { nothing(c.machine().shutdown().await) }),
    },
    Command {
        name: "reboot",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "reboot the guest and wait for its agent",
        run: |_, c| Box::pin(async move { nothing(c.machine().reboot().await) }),
    },
    Command {
        name: "crash",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "sudden power failure (QEMU quits); start boots it again",
        run: |_, c| Box::pin(async move { nothing(c.machine().crash().await) }),
    },
    Command {
        name: "kill",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "end QEMU at once",
        run: |_, c| {
            Box::pin(async move {
                c.machine().kill().await;
                Ok(String::new())
            })
        },
    },
    Command {
        name: "block",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "cut the machine off the test network",
        run: |_, c| Box::pin(async move { nothing(c.machine().block().await) }),
    },
    Command {
        name: "unblock",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "reconnect the machine to the test network",
        run: |_, c| Box::pin(async move { nothing(c.machine().unblock().await) }),
    },
];

fn find_command(scope: Scope, name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.scope == scope && c.name == name)
}

fn help(topic: &str) -> Result<String> {
    let topic = topic.trim();
    if !topic.is_empty() {
        let name = topic.rsplit('.').next().unwrap_or(topic);
        let found: Vec<_> = COMMANDS.iter().filter(|c| c.name == name).collect();
        if found.is_empty() {
            bail!("no command {topic:?}; `help` lists them");
        }
        let mut s = String::new();
        for c in found {
            s += &format!("{}\n  {}\n", c.synopsis(), c.help);
            match c.args {
                Args::Grpc => s += &format!("  methods: {}\n", GRPC.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")),
                Args::Scenario => s += &format!("  scenarios: {}\n", scenario_names().join(", ")),
                _ => {}
            }
        }
        return Ok(s);
    }
    let width = COMMANDS.iter().map(|c| c.synopsis().len()).max().unwrap_or(0);
    let mut s = String::from("commands (<m> is a machine name):\n");
    s += &format!("  {:<width$}  {}\n", "<m>: <cmd>", "same as <m>.succeed <cmd>");
    for c in COMMANDS {
        s += &format!("  {:<width$}  {}\n", c.synopsis(), c.help);
    }
    Ok(s)
}

fn scenario_names() -> Vec<&'static str> {
    scenarios::all().iter().map(|s| s.name).collect()
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A parsed line: the command, with its arguments still by name.
#[derive(Debug)]
pub struct Parsed {
    pub command: &'static Command,
    pub machine: Option<String>,
    pub text: String,
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.synopsis())
    }
}

/// The first word and the (trimmed) rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn known_machine(name: &str, machines: &[&str]) -> Result<String> {
    if machines.contains(&name) {
        Ok(name.to_string())
    } else {
        bail!("no machine named {name:?}; the machines are {}", machines.join(", "))
    }
}

/// Parses one line; `None` for a blank line or a `#` comment.
pub fn parse(line: &str, machines: &[&str]) -> Result<Option<Parsed>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    // `<m>: <cmd>`, the NixOS-style shorthand of succeed.
    if let Some((m, cmd)) = line.split_once(':') {
        if is_word(m) {
            let machine = known_machine(m, machines)?;
            return finish(find_command(Scope::Machine, "succeed").expect("in the table"), Some(machine), cmd.trim());
        }
    }
    let (head, rest) = split_word(line);
    if let Some((m, op)) = head.split_once('.') {
        let machine = known_machine(m, machines)?;
        let Some(command) = find_command(Scope::Machine, op) else {
            let ops: Vec<_> = COMMANDS.iter().filter(|c| c.scope == Scope::Machine).map(|c| c.name).collect();
            bail!("no machine command {op:?}; machine commands: {}", ops.join(", "));
        };
        return finish(command, Some(machine), rest);
    }
    let Some(command) = find_command(Scope::Global, head) else {
        if machines.contains(&head) {
            bail!("{head} is a machine: write {head}.<command> or {head}: <shell command>");
        }
        bail!("unknown command {head:?}; `help` lists the commands");
    };
    match command.args {
        Args::MachineText | Args::MachineOptText => {
            let (m, rest) = split_word(rest);
            if m.is_empty() {
                bail!("usage: {}", command.synopsis());
            }
            finish(command, Some(known_machine(m, machines)?), rest)
        }
        _ => finish(command, None, rest),
    }
}

/// Checks the arguments after the command name (and machine) against the command's shape.
fn finish(command: &'static Command, machine: Option<String>, rest: &str) -> Result<Option<Parsed>> {
    let usage = || anyhow!("usage: {}", command.synopsis());
    let mut text = rest.trim().to_string();
    let mut timeout = None;
    match command.args {
        Args::None if !text.is_empty() => bail!("{} takes no arguments", command.name),
        Args::Text | Args::MachineText | Args::Grpc if text.is_empty() => return Err(usage()),
        Args::Scenario if text.is_empty() || text.contains(char::is_whitespace) => return Err(usage()),
        Args::TimedText => {
            if let Some(after) = text.strip_prefix("--timeout") {
                let (secs, cmd) = split_word(after);
                let secs: f64 = secs
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| anyhow!("--timeout takes seconds, not {secs:?}"))?;
                timeout = Some(Duration::from_secs_f64(secs));
                text = cmd.to_string();
            }
            if text.is_empty() {
                return Err(usage());
            }
        }
        _ => {}
    }
    Ok(Some(Parsed { command, machine, text, timeout }))
}

fn parse_port(text: &str) -> Result<u16> {
    text.trim().parse().map_err(|_| anyhow!("not a TCP port: {text:?}"))
}

// ---------------------------------------------------------------------------------------------
// Completion

/// Completes the word before `pos`: the start of that word and its candidates.
pub fn complete(line: &str, pos: usize, machines: &[String]) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let word = &before[start..];
    let candidates: Vec<String> = if start == 0 {
        match word.split_once('.') {
            Some((m, op)) if machines.iter().any(|x| x == m) => {
                COMMANDS.iter().filter(|c| c.scope == Scope::Machine && c.name.starts_with(op)).map(|c| format!("{m}.{}", c.name)).collect()
            }
            Some(_) => Vec::new(),
            None => COMMANDS
                .iter()
                .filter(|c| c.scope == Scope::Global)
                .map(|c| c.name.to_string())
                .chain(machines.iter().map(|m| format!("{m}.")))
                .filter(|c| c.starts_with(word))
                .collect(),
        }
    } else {
        let (head, _) = split_word(before);
        // Only the first argument is completed.
        let first_arg = before[..start].trim_end() == head;
        let pool: Vec<String> = match find_command(Scope::Global, head).map(|c| c.args) {
            _ if !first_arg => Vec::new(),
            Some(Args::MachineText | Args::MachineOptText) => machines.to_vec(),
            Some(Args::Scenario) => scenario_names().into_iter().map(String::from).collect(),
            Some(Args::Grpc) => GRPC.iter().map(|m| m.0.to_string()).collect(),
            Some(Args::OptCommand) => COMMANDS.iter().map(|c| c.name.to_string()).collect(),
            _ => Vec::new(),
        };
        pool.into_iter().filter(|c| c.starts_with(word)).collect()
    };
    let mut candidates = candidates;
    candidates.dedup();
    (start, candidates)
}

struct Helper {
    machines: Vec<String>,
}

impl rustyline::completion::Completer for Helper {
    type Candidate = String;
    fn complete(&self, line: &str, pos: usize, _ctx: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete(line, pos, &self.machines))
    }
}
impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Helper {}
impl rustyline::validate::Validator for Helper {}
impl rustyline::Helper for Helper {}

// ---------------------------------------------------------------------------------------------
// gRPC: JSON in, proto message, JSON out

/// JSON for the proto messages, written by hand (field lists below) rather than generated: the
/// build's generated types carry no serde derives, and the mapping is small. Unknown fields and
/// wrong types are errors that name the field, so a typo is not silently dropped.
trait Json: Sized + Default {
    fn to_json(&self) -> Value;
    fn from_json(v: &Value, at: &str) -> Result<Self>;
}

fn wrong_type(at: &str, want: &str, v: &Value) -> anyhow::Error {
    anyhow!("{at}: expected {want}, got {v}")
}

impl Json for String {
    fn to_json(&self) -> Value {
        json!(self)
    }
    fn from_json(v: &Value, at: &str) -> Result<Self> {
        v.as_str().map(String::from).ok_or_else(|| wrong_type(at, "a string", v))
    }
}
impl Json for bool {
    fn to_json(&self) -> Value {
        json!(self)
    }
    fn from_json(v: &Value, at: &str) -> Result<Self> {
        v.as_bool().ok_or_else(|| wrong_type(at, "true or false", v))
    }
}
macro_rules! json_integer {
    ($($t:ty),*) => {$(
        impl Json for $t {
            fn to_json(&self) -> Value {
                json!(self)
            }
            fn from_json(v: &Value, at: &str) -> Result<Self> {
                v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from)).and_then(|n| <$t>::try_from(n).ok()).ok_or_else(|| wrong_type(at, stringify!($t), v))
            }
        }
    )*};
}
// i32: proto enums (ShareProtocol) travel as their numbers.
json_integer!(u32, u64, i32);

impl<T: Json> Json for Option<T> {
    fn to_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_json)
    }
    fn from_json(v: &Value, at: &str) -> Result<Self> {
        if v.is_null() {
            Ok(None)
        } else {
            T::from_json(v, at).map(Some)
        }
    }
}
impl<T: Json> Json for Vec<T> {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(T::to_json).collect())
    }
    fn from_json(v: &Value, at: &str) -> Result<Self> {
        let items = v.as_array().ok_or_else(|| wrong_type(at, "an array", v))?;
        items.iter().enumerate().map(|(i, x)| T::from_json(x, &format!("{at}[{i}]"))).collect()
    }
}

macro_rules! json_messages {
    ($($msg:ident { $($field:ident),* })*) => {$(
        impl Json for proto::$msg {
            fn to_json(&self) -> Value {
                #[allow(unused_mut)]
                let mut m = Map::new();
                $(m.insert(stringify!($field).into(), self.$field.to_json());)*
                Value::Object(m)
            }
            // Messages without fields use neither `out` mutably nor `value`.
            #[allow(unused_mut, unused_variables)]
            fn from_json(v: &Value, at: &str) -> Result<Self> {
                let object = v.as_object().ok_or_else(|| wrong_type(at, concat!("a ", stringify!($msg), " object"), v))?;
                let mut out = Self::default();
                for (key, value) in object {
                    match key.as_str() {
                        $(stringify!($field) => out.$field = Json::from_json(value, &format!("{at}.{key}"))?,)*
                        _ => {
                            let fields: &[&str] = &[$(stringify!($field)),*];
                            bail!("{at}: {} has no field {key:?}; its fields: {}", stringify!($msg), if fields.is_empty() { "none".to_string() } else { fields.join(", ") })
                        }
                    }
                }
                Ok(out)
            }
        }
    )*};
}

json_messages! {
    HealthRequest {}
    HealthReply { version, uptime_secs, nvmet, lio }
    Bdev { name, uuid, num_blocks, blk_size, claimed, claimed_by, state, share_uri }
    ListBdevsRequest {}
    ListBdevsReply { bdevs }
    CreateBdevRequest { uri }
    DestroyBdevRequest { name }
    DestroyBdevReply {}
    ShareBdevRequest { name, protocol, nqn, port, allowed_hosts, iqn }
    ShareBdevReply { uri, nqn, iqn }
    UnshareBdevRequest { name }
    UnshareBdevReply {}
    Namespace { nsid, bdev, device_path, enabled, device_uuid }
    Port { id, trtype, adrfam, traddr, trsvcid }
    Subsystem { nqn, namespaces, ports, allowed_hosts, allow_any_host, shared_bdev }
    ListSubsystemsRequest {}
    ListSubsystemsReply { subsystems, ports, hosts }
    AddNamespaceRequest { nqn, bdev, nsid }
    RemoveNamespaceRequest { nqn, nsid }
    RemoveNamespaceReply {}
}

type GrpcCall = for<'a> fn(&'a mut TargetClient, &'a Value) -> BoxFuture<'a, Result<Value>>;

/// One gRPC method: parse the request, call, render the reply.
macro_rules! rpc {
    ($name:literal, $method:ident, $request:ident) => {
        ($name, |client, args| {
            Box::pin(async move {
                let request = <proto::$request as Json>::from_json(args, stringify!($request))?;
                let reply = client.$method(request).await.map_err(|s| anyhow!("{}: {:?}: {}", $name, s.code(), s.message()))?;
                Ok(reply.into_inner().to_json())
            })
        })
    };
}

/// Every method of the target service.
static GRPC: &[(&str, GrpcCall)] = &[
    rpc!("Health", health, HealthRequest),
    rpc!("ListBdevs", list_bdevs, ListBdevsRequest),
    rpc!("CreateBdev", create_bdev, CreateBdevRequest),
    rpc!("DestroyBdev", destroy_bdev, DestroyBdevRequest),
    rpc!("ShareBdev", share_bdev, ShareBdevRequest),
    rpc!("UnshareBdev", unshare_bdev, UnshareBdevRequest),
    rpc!("ListSubsystems", list_subsystems, ListSubsystemsRequest),
    rpc!("AddNamespace", add_namespace, AddNamespaceRequest),
    rpc!("RemoveNamespace", remove_namespace, RemoveNamespaceRequest),
];

/// `Method [json]`: the method and its request (`{}` when none is given).
fn grpc_request(text: &str) -> Result<(GrpcCall, &'static str, Value)> {
    let (name, body) = split_word(text);
    let Some(&(name, call)) = GRPC.iter().find(|m| m.0.eq_ignore_ascii_case(name)) else {
        bail!("no gRPC method {name:?}; methods: {}", GRPC.iter().map(|m| m.0).collect::<Vec<_>>().join(", "));
    };
    let body = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_str(body).with_context(|| format!("the request of {name} is not JSON"))?
    };
    Ok((call, name, body))
}

// ---------------------------------------------------------------------------------------------
// QMP and output

/// `{"execute": NAME, "arguments": {...}}`, or `NAME [json arguments]`.
fn qmp_request(text: &str) -> Result<(String, Value)> {
    let text = text.trim();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).context("the QMP command is not JSON")?;
        let name = v.get("execute").and_then(Value::as_str).ok_or_else(|| anyhow!("a QMP command needs \"execute\": {v}"))?;
        if let Some(other) = v.as_object().and_then(|o| o.keys().find(|k| !["execute", "arguments"].contains(&k.as_str()))) {
            bail!("a QMP command has \"execute\" and \"arguments\", not {other:?}");
        }
        return Ok((name.to_string(), v.get("arguments").cloned().unwrap_or(Value::Null)));
    }
    let (name, args) = split_word(text);
    let args = if args.is_empty() { Value::Null } else { serde_json::from_str(args).context("QMP arguments are not JSON")? };
    Ok((name.to_string(), args))
}

async fn qmp(c: &Invocation) -> Result<String> {
    let (name, args) = qmp_request(&c.text)?;
    let reply = c.machine().qmp_raw(&name, args).await?;
    Ok(serde_json::to_string_pretty(&reply)?)
}

/// A command's status and output, as `execute` prints them.
pub fn format_exec(o: &ExecOutput) -> String {
    let mut s = format!("status {}", o.status);
    if let Some(sig) = o.signal {
        s += &format!(" (signal {sig})");
    }
    s.push('\n');
    for (name, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        if !text.is_empty() {
            s += &format!("{name}:\n{text}");
            if !text.ends_with('\n') {
                s.push('\n');
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Input

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
    fn start(machines: Vec<String>, history: Option<PathBuf>) -> Arc<Input> {
        let interactive = std::io::stdin().is_terminal();
        let (requests, rx) = std::sync::mpsc::channel::<ReadRequest>();
        std::thread::spawn(move || {
            if interactive {
                match editor(machines, history.as_ref()) {
                    Ok(editor) => return serve_terminal(editor, rx, history),
                    Err(e) => eprintln!("vmcheck: no line editing ({e}); reading plain lines"),
                }
            }
            serve_plain(rx)
        });
        Arc::new(Input { requests, pending: tokio::sync::Mutex::new(None), interactive })
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

fn serve_terminal(mut editor: Editor, requests: std::sync::mpsc::Receiver<ReadRequest>, history: Option<PathBuf>) {
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

fn serve_plain(requests: std::sync::mpsc::Receiver<ReadRequest>) {
    let stdin = std::io::stdin();
    for (_prompt, reply) in requests {
        let mut s = String::new();
        let line = match stdin.lock().read_line(&mut s) {
            Ok(0) | Err(_) => Line::Eof,
            Ok(_) => Line::Text(s.trim_end_matches(['\n', '\r']).to_string()),
        };
        let _ = reply.send(line);
    }
}

/// `$VMCHECK_CACHE/repl_history`, or under the user's cache directory.
fn history_path() -> Option<PathBuf> {
    let dir = crate::images::Images::from_env().ok()?.cache_dir;
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("repl_history"))
}

// ---------------------------------------------------------------------------------------------
// The session

pub struct Session {
    driver: Driver,
    input: Arc<Input>,
}

impl Session {
    fn machine_names(&self) -> Vec<&str> {
        self.driver.machines().iter().map(Machine::name).collect()
    }

    async fn invoke(&self, p: &Parsed) -> Result<String> {
        let machine = p.machine.as_deref().map(|m| self.driver.machine(m)).transpose()?;
        let invocation = Invocation { machine, text: p.text.clone(), timeout: p.timeout };
        (p.command.run)(self, &invocation).await
    }

    async fn list_machines(&self) -> Result<String> {
        let mut s = String::new();
        for m in self.driver.machines() {
            let state = match m.pid().await {
                Some(pid) => format!("running (QEMU pid {pid})"),
                None => "not running".to_string(),
            };
            s += &format!("{:<12} {:<10} {state}\n", m.name(), m.role().as_str());
        }
        Ok(s)
    }

    /// The machine `grpc` talks to: the first of the target role.
    fn target(&self) -> Result<&Machine> {
        self.driver.machines().iter().find(|m| m.role() == Role::Target).ok_or_else(|| anyhow!("no machine of the target role here"))
    }

    async fn grpc(&self, text: &str) -> Result<String> {
        let (call, name, body) = grpc_request(text)?;
        let mut client = self.target()?.target_client().await?;
        let reply = call(&mut client, &body).await.with_context(|| format!("gRPC {name}"))?;
        Ok(serde_json::to_string_pretty(&reply)?)
    }

    async fn follow_console(&self, c: &Invocation) -> Result<String> {
        let secs = match c.text.trim() {
            "" => None,
            t => Some(
                t.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).ok_or_else(|| anyhow!("console takes seconds, not {t:?}"))?,
            ),
        };
        let machine = c.machine();
        let console = machine.console().clone();
        // Shown here, not also echoed to the log.
        log::set_echo_console(false);
        for line in console.tail(10) {
            println!("{} # {line}", machine.name());
        }
        // A piped script's next line is a command, not a key: with a timeout, do not read it.
        let read_key = self.input.interactive || secs.is_none();
        let until = match (read_key, secs) {
            (true, Some(s)) => format!("until Enter or for {s} s"),
            (true, None) => "until Enter".to_string(),
            (false, s) => format!("for {} s", s.unwrap_or_default()),
        };
        eprintln!("(following {}'s console {until})", machine.name());
        let key = async {
            if read_key {
                self.input.read_line("").await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let deadline = async {
            match secs {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(key, deadline);
        let (mut at, changed) = console.follow();
        loop {
            let notified = changed.notified();
            let (text, next) = console.text_since(at);
            at = next;
            for line in text.lines() {
                println!("{} # {line}", machine.name());
            }
            let _ = std::io::stdout().flush();
            tokio::select! {
                _ = notified => {}
                _ = &mut key => break,
                _ = &mut deadline => break,
            }
        }
        Ok(String::new())
    }

    /// `run` and `step`: the scenario's script on these machines, which stay as they are after.
    async fn run_scenario(&self, name: &str, step: bool) -> Result<String> {
        let scenario = scenarios::find(name)?;
        let before = self.driver.subtest_results().len();
        struct ClearGate<'a>(&'a Driver);
        impl Drop for ClearGate<'_> {
            fn drop(&mut self) {
                self.0.set_subtest_gate(None);
            }
        }
        let _clear = step.then(|| {
            self.driver.set_subtest_gate(Some(step_gate(self.input.clone())));
            ClearGate(&self.driver)
        });
        let result = (scenario.run)(&self.driver).await;
        let results = self.driver.subtest_results();
        let mut s = String::new();
        for r in &results[before.min(results.len())..] {
            s += &format!("  {:<40} {:>8.2} s  {}\n", r.name, r.duration.as_secs_f64(), if r.error.is_none() { "ok" } else { "FAILED" });
        }
        match result {
            Ok(()) => Ok(format!("{s}{name}: passed")),
            Err(e) => Err(e.context(format!("{s}{name}: FAILED (the machines are left as they are)"))),
        }
    }

    /// The loop: read, parse, run, print, until `quit`, end of input or SIGTERM.
    async fn serve(&self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let machines: Vec<String> = self.machine_names().into_iter().map(String::from).collect();
        let names: Vec<&str> = machines.iter().map(String::as_str).collect();
        eprintln!("vmcheck repl: machines {} (not started); `help` lists the commands", names.join(", "));
        loop {
            // Console lines would break into the prompt; `console <m>` shows them on demand.
            log::set_echo_console(false);
            let line = tokio::select! {
                l = self.input.read_line(PROMPT) => l,
                // At a terminal Ctrl-C reaches rustyline as a key; a signal here means a piped
                // session is being interrupted.
                _ = int.recv() => Line::Eof,
                _ = term.recv() => Line::Eof,
            };
            let line = match line {
                Line::Text(l) => l,
                Line::Interrupted => continue,
                Line::Eof => break,
            };
            if !self.input.interactive {
                // A piped script's transcript shows which command printed what.
                log::line(&format!("{PROMPT}{line}"));
            }
            let parsed = match parse(&line, &names) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    print_error(&e);
                    continue;
                }
            };
            if parsed.command.name == "quit" {
                break;
            }
            log::set_echo_console(true);
            let mut terminated = false;
            let result = tokio::select! {
                r = self.invoke(&parsed) => Some(r),
                _ = int.recv() => None,
                _ = term.recv() => { terminated = true; None }
            };
            match result {
                Some(Ok(out)) => print_output(&out),
                Some(Err(e)) => print_error(&e),
                None => eprintln!("interrupted: {line}"),
            }
            if terminated {
                break;
            }
        }
        Ok(())
    }
}

/// Asks before each subtest of `step`: Enter runs it, `c` runs the rest, `q` stops.
fn step_gate(input: Arc<Input>) -> crate::driver::SubtestGate {
    let go_on = Arc::new(AtomicBool::new(false));
    Arc::new(move |name: String| {
        let (input, go_on) = (input.clone(), go_on.clone());
        Box::pin(async move {
            if go_on.load(Ordering::Relaxed) {
                return Ok(());
            }
            eprintln!("next subtest: {name}");
            loop {
                match input.read_line("step (Enter: run it, c: run the rest, q: stop)> ").await {
                    Line::Text(l) => match l.trim() {
                        "" | "n" | "next" => return Ok(()),
                        "c" | "continue" => {
                            go_on.store(true, Ordering::Relaxed);
                            return Ok(());
                        }
                        "q" | "quit" | "stop" => bail!("stopped before subtest {name:?}"),
                        other => eprintln!("{other:?}: Enter runs the subtest, c runs the rest, q stops"),
                    },
                    Line::Interrupted | Line::Eof => bail!("stopped before subtest {name:?}"),
                }
            }
        }) as BoxFuture<'static, Result<()>>
    })
}

fn print_output(out: &str) {
    if out.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    if !out.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

fn print_error(e: &anyhow::Error) {
    eprintln!("error: {e:#}");
}

/// `vmcheck repl [SCENARIO] [--config FILE]`.
pub async fn main(scenario: Option<String>, config: Option<PathBuf>) -> ExitCode {
    let config = match config.as_deref().map(DriverConfig::load).transpose() {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let name = match (&config, scenario) {
        (Some(c), Some(s)) if s != c.scenario => return usage(&anyhow!("--config is for scenario {}, not {s}", c.scenario)),
        (Some(c), _) => c.scenario.clone(),
        (None, s) => s.unwrap_or_else(|| DEFAULT_SCENARIO.to_string()),
    };
    let scenario = match scenarios::find(&name) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let mut nodes = (scenario.nodes)();
    if let Some(c) = &config {
        if let Err(e) = c.apply(&mut nodes) {
            return usage(&e);
        }
    }
    let driver = match Driver::new(nodes, DriverOptions::default()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vmcheck: {e:#}");
            return ExitCode::from(1);
        }
    };
    let machines = driver.machines().iter().map(|m| m.name().to_string()).collect();
    let session = Session { driver, input: Input::start(machines, history_path()) };
    let result = session.serve().await;
    eprintln!("vmcheck repl: stopping every machine");
    session.driver.kill_all().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmcheck: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn usage(e: &anyhow::Error) -> ExitCode {
    eprintln!("vmcheck: {e:#}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINES: &[&str] = &["target", "initiator"];

    fn parsed(line: &str) -> Parsed {
        parse(line, MACHINES).unwrap().unwrap_or_else(|| panic!("{line:?} parsed to nothing"))
    }

    fn parse_error(line: &str) -> String {
        format!("{:#}", parse(line, MACHINES).unwrap_err())
    }

    #[test]
    fn the_table_has_one_entry_per_name_and_scope() {
        for (i, a) in COMMANDS.iter().enumerate() {
            assert!(COMMANDS[i + 1..].iter().all(|b| (a.scope, a.name) != (b.scope, b.name)), "{} twice", a.name);
            assert!(!a.help.is_empty(), "{} has no help", a.name);
        }
        let help = help("").unwrap();
        assert!(COMMANDS.iter().all(|c| help.contains(&c.synopsis())));
    }

    #[test]
    fn machine_commands_parse() {
        let p = parsed("target: echo hello: world");
        assert_eq!((p.command.name, p.machine.as_deref(), p.text.as_str()), ("succeed", Some("target"), "echo hello: world"));
        let p = parsed("  initiator.execute exit 3 ");
        assert_eq!((p.command.name, p.machine.as_deref(), p.text.as_str()), ("execute", Some("initiator"), "exit 3"));
        let p = parsed("target.wait_until_succeeds --timeout 2.5 test -e /x");
        assert_eq!((p.text.as_str(), p.timeout), ("test -e /x", Some(Duration::from_millis(2500))));
        let p = parsed("target.wait_until_succeeds true");
        assert_eq!(p.timeout, None);
        assert_eq!(parsed("target.start").command.scope, Scope::Machine);
    }

    #[test]
    fn global_commands_parse() {
        let p = parsed(r#"qmp target {"execute": "query-status"}"#);
        assert_eq!((p.command.name, p.machine.as_deref(), p.text.as_str()), ("qmp", Some("target"), r#"{"execute": "query-status"}"#));
        let p = parsed("grpc ListBdevs");
        assert_eq!((p.command.name, p.text.as_str()), ("grpc", "ListBdevs"));
        let p = parsed("console initiator");
        assert_eq!((p.machine.as_deref(), p.text.as_str()), (Some("initiator"), ""));
        assert_eq!(parsed("step fio_nvme_basic").text, "fio_nvme_basic");
        assert_eq!(parsed("help target.start").text, "target.start");
        assert!(parse("", MACHINES).unwrap().is_none());
        assert!(parse("   # a comment", MACHINES).unwrap().is_none());
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(parse_error("frobnicate").contains("unknown command \"frobnicate\""));
        assert!(parse_error("ghost: ls").contains("no machine named \"ghost\""));
        assert!(parse_error("ghost.start").contains("the machines are target, initiator"));
        assert!(parse_error("target.frob").contains("no machine command \"frob\""));
        assert!(parse_error("target.start now").contains("takes no arguments"));
        assert!(parse_error("target.succeed").contains("usage: <m>.succeed <cmd>"));
        assert!(parse_error("target.wait_until_succeeds --timeout x true").contains("--timeout takes seconds"));
        assert!(parse_error("target.wait_until_succeeds --timeout 3").contains("usage"));
        assert!(parse_error("qmp").contains("usage: qmp"));
        assert!(parse_error("qmp ghost {}").contains("no machine named"));
        assert!(parse_error("target").contains("target is a machine"));
        assert!(parse_error("run a b").contains("usage: run"));
    }

    #[test]
    fn completion_offers_commands_machines_and_arguments() {
        let machines = vec!["target".to_string(), "initiator".to_string()];
        let c = |line: &str| complete(line, line.len(), &machines);
        assert_eq!(c("ta"), (0, vec!["target.".to_string()]));
        assert_eq!(c("st"), (0, vec!["start_all".to_string(), "step".to_string()]));
        let (start, got) = c("target.wait_until");
        assert_eq!((start, got), (0, vec!["target.wait_until_succeeds".to_string(), "target.wait_until_fails".to_string()]));
        assert_eq!(c("qmp in"), (4, vec!["initiator".to_string()]));
        assert_eq!(c("grpc List"), (5, vec!["ListBdevs".to_string(), "ListSubsystems".to_string()]));
        assert_eq!(c("run fio"), (4, vec!["fio_nvme_basic".to_string()]));
        assert_eq!(c("qmp target qu"), (11, vec![]));
        assert_eq!(c("ghost.st").1, Vec::<String>::new());
    }

    #[test]
    fn grpc_requests_map_from_json() {
        let (_, name, body) =
            grpc_request(r#"ShareBdev {"name": "malloc:///m0?size_mb=8", "port": 4421, "allowed_hosts": ["nqn.h"]}"#).unwrap();
        assert_eq!(name, "ShareBdev");
        let r = proto::ShareBdevRequest::from_json(&body, "ShareBdevRequest").unwrap();
        assert_eq!(
            (r.name.as_str(), r.port, r.nqn, r.allowed_hosts),
            ("malloc:///m0?size_mb=8", Some(4421), None, vec!["nqn.h".to_string()])
        );
        let (_, name, body) = grpc_request("listbdevs").unwrap();
        assert_eq!((name, body), ("ListBdevs", json!({})));
        let e = proto::CreateBdevRequest::from_json(&json!({"url": "x"}), "CreateBdevRequest").unwrap_err().to_string();
        assert!(e.contains("no field \"url\"; its fields: uri"), "{e}");
        let e = proto::ShareBdevRequest::from_json(&json!({"port": "x"}), "ShareBdevRequest").unwrap_err().to_string();
        assert!(e.contains("ShareBdevRequest.port: expected u32"), "{e}");
        assert!(proto::ShareBdevRequest::from_json(&json!({"port": -1}), "r").is_err());
        assert!(grpc_request("Frob {}").unwrap_err().to_string().contains("methods: Health, ListBdevs"));
        assert!(grpc_request("Health {").is_err());
    }

    #[test]
    fn grpc_replies_map_to_json() {
        let reply = proto::ListSubsystemsReply {
            subsystems: vec![proto::Subsystem {
                nqn: "nqn.x".into(),
                namespaces: vec![proto::Namespace { nsid: 1, ..Default::default() }],
                ..Default::default()
            }],
            hosts: vec!["h".into()],
            ..Default::default()
        };
        let v = reply.to_json();
        assert_eq!(v["subsystems"][0]["nqn"], "nqn.x");
        assert_eq!(v["subsystems"][0]["namespaces"][0]["nsid"], 1);
        assert_eq!(v["hosts"], json!(["h"]));
        assert_eq!(proto::ListSubsystemsReply::from_json(&v, "r").unwrap(), reply);
    }

    #[test]
    fn qmp_commands_take_both_forms() {
        assert_eq!(qmp_request(r#"{"execute": "query-status"}"#).unwrap(), ("query-status".to_string(), Value::Null));
        assert_eq!(
            qmp_request(r#"{"execute": "set_link", "arguments": {"name": "n", "up": false}}"#).unwrap().1,
            json!({"name": "n", "up": false})
        );
        assert_eq!(
            qmp_request(r#"set_link {"name": "n", "up": true}"#).unwrap(),
            ("set_link".to_string(), json!({"name": "n", "up": true}))
        );
        assert_eq!(qmp_request("query-status").unwrap(), ("query-status".to_string(), Value::Null));
        assert!(qmp_request(r#"{"arguments": {}}"#).is_err());
        assert!(qmp_request(r#"{"execute": "x", "id": 1}"#).is_err());
        assert!(qmp_request("x {").is_err());
    }

    #[test]
    fn exec_output_is_formatted() {
        let o = ExecOutput { status: 3, signal: None, stdout: "out".into(), stderr: String::new() };
        assert_eq!(format_exec(&o), "status 3\nstdout:\nout\n");
    }
}
