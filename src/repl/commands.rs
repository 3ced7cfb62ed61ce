//! The command table: every command's name, where it applies, the shape of its arguments (which
//! drives the parser and tab completion), its help and its handler. A new machine-API operation
//! reaches the REPL as one more entry in [`COMMANDS`].

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures::future::BoxFuture;

use super::grpc;
use super::qmp::qmp;
use super::session::Session;
use crate::machine::Machine;
use crate::qga::ExecOutput;
use crate::timeouts;

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
    pub(super) fn machine(&self) -> &Machine {
        self.machine.as_ref().expect("the parser names a machine for machine-scoped commands")
    }
    fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default)
    }
}

type Handler = for<'a> fn(&'a Session<'a>, &'a Invocation) -> BoxFuture<'a, Result<String>>;

pub struct Command {
    pub name: &'static str,
    pub scope: Scope,
    pub args: Args,
    /// The arguments as `help` shows them.
    pub usage: &'static str,
    pub help: &'static str,
    pub(super) run: Handler,
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

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.synopsis())
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
        help:
            "follow a machine's serial console until Enter (or end of input), or for secs seconds",
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
        run: |_, c| {
            Box::pin(async move { c.machine().fail(&c.text).await.map(|o| format_exec(&o)) })
        },
    },
    Command {
        name: "execute",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<cmd>",
        help: "run a shell command; print its status, stdout and stderr",
        run: |_, c| {
            Box::pin(async move { c.machine().execute(&c.text).await.map(|o| format_exec(&o)) })
        },
    },
    Command {
        name: "wait_until_succeeds",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <cmd>",
        help: "retry a shell command until it exits 0; print its stdout",
        run: |_, c| {
            Box::pin(c.machine().wait_until_succeeds(&c.text, c.timeout_or(timeouts::command())))
        },
    },
    Command {
        name: "wait_until_fails",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <cmd>",
        help: "retry a shell command until it exits non-zero",
        run: |_, c| {
            Box::pin(async move {
                c.machine()
                    .wait_until_fails(&c.text, c.timeout_or(timeouts::command()))
                    .await
                    .map(|o| format_exec(&o))
            })
        },
    },
    Command {
        name: "wait_for_file",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <path>",
        help: "wait until a path exists in the guest",
        run: |_, c| {
            Box::pin(async move {
                nothing(c.machine().wait_for_file(&c.text, c.timeout_or(timeouts::command())).await)
            })
        },
    },
    Command {
        name: "wait_for_open_port",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <port>",
        help: "wait until something in the guest listens on a TCP port",
        run: |_, c| {
            Box::pin(async move {
                nothing(
                    c.machine()
                        .wait_for_open_port(parse_port(&c.text)?, c.timeout_or(timeouts::command()))
                        .await,
                )
            })
        },
    },
    Command {
        name: "wait_for_closed_port",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <port>",
        help: "wait until nothing in the guest listens on a TCP port",
        run: |_, c| {
            Box::pin(async move {
                nothing(
                    c.machine()
                        .wait_for_closed_port(
                            parse_port(&c.text)?,
                            c.timeout_or(timeouts::command()),
                        )
                        .await,
                )
            })
        },
    },
    Command {
        name: "wait_for_unit",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <unit>",
        help: "wait until a systemd unit is active (NixOS machines)",
        run: |_, c| {
            Box::pin(async move {
                nothing(c.machine().wait_for_unit(&c.text, c.timeout_or(timeouts::command())).await)
            })
        },
    },
    Command {
        name: "systemctl",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<args>",
        help: "run systemctl with these arguments (NixOS machines); print status and output",
        run: |_, c| {
            Box::pin(async move { c.machine().systemctl(&c.text).await.map(|o| format_exec(&o)) })
        },
    },
    Command {
        name: "copy_from_host",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<host file> <guest path>",
        help: "copy a host file into the guest (parents created, mode kept)",
        run: |_, c| {
            Box::pin(async move {
                let (source, target) = two_words(&c.text, "<host file> <guest path>")?;
                nothing(c.machine().copy_from_host(source, target).await)
            })
        },
    },
    Command {
        name: "copy_from_machine",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<guest file> [host dir]",
        help: "copy a guest file to the host (a relative dir is under the run's logs); print where",
        run: |_, c| {
            Box::pin(async move {
                let (source, dir) = super::parse::split_word(&c.text);
                let path = c.machine().copy_from_machine(source, dir).await?;
                Ok(path.display().to_string())
            })
        },
    },
    Command {
        name: "send_monitor_command",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<hmp command>",
        help: "QEMU human monitor command, e.g. info block; print its text",
        run: |_, c| Box::pin(c.machine().send_monitor_command(&c.text)),
    },
    Command {
        name: "wait_for_qmp_event",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <event>",
        help: "wait for a QMP event not read by an earlier wait; print it",
        run: |_, c| {
            Box::pin(async move {
                let event = c
                    .machine()
                    .wait_for_qmp_event(c.text.trim(), c.timeout_or(timeouts::command()))
                    .await?;
                Ok(serde_json::to_string_pretty(&event)?)
            })
        },
    },
    Command {
        name: "wait_for_console_text",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <regex>",
        help: "wait for console text no earlier wait consumed; print the match",
        run: |_, c| {
            Box::pin(c.machine().wait_for_console_text(&c.text, c.timeout_or(timeouts::command())))
        },
    },
    Command {
        name: "wait_for_kernel_message",
        scope: Scope::Machine,
        args: Args::TimedText,
        usage: "[--timeout SECS] <regex>",
        help: "wait for a line of the guest kernel's log (dmesg, boot included); print it",
        run: |_, c| {
            Box::pin(
                c.machine().wait_for_kernel_message(&c.text, c.timeout_or(timeouts::command())),
            )
        },
    },
    Command {
        name: "console_contains",
        scope: Scope::Machine,
        args: Args::Text,
        usage: "<regex>",
        help: "whether the console ever showed matching text",
        run: |_, c| {
            Box::pin(async move { c.machine().console_contains(&c.text).map(|b| b.to_string()) })
        },
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
        run: |_, c| {
            Box::pin(async move {
                Ok(serde_json::to_string_pretty(&c.machine().memory_stats().await?)?)
            })
        },
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
        name: "wait_for_shutdown",
        scope: Scope::Machine,
        args: Args::None,
        usage: "",
        help: "wait until the guest has powered itself off and QEMU exited",
        run: |_, c| {
            Box::pin(
                async move { nothing(c.machine().wait_for_shutdown(timeouts::shutdown()).await) },
            )
        },
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

pub(super) fn find_command(scope: Scope, name: &str) -> Option<&'static Command> {
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
                Args::Grpc => s += &format!("  methods: {}\n", grpc::names().join(", ")),
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

pub(super) fn scenario_names() -> Vec<String> {
    super::SCENARIO_NAMES.get().cloned().unwrap_or_default()
}

/// Two words, or a usage error.
fn two_words<'a>(text: &'a str, usage: &str) -> Result<(&'a str, &'a str)> {
    let (a, b) = super::parse::split_word(text);
    if a.is_empty() || b.is_empty() || b.contains(char::is_whitespace) {
        bail!("expected {usage}, got {text:?}");
    }
    Ok((a, b))
}

fn parse_port(text: &str) -> Result<u16> {
    text.trim().parse().map_err(|_| anyhow!("not a TCP port: {text:?}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_entry_per_name_and_scope() {
        for (i, a) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS[i + 1..].iter().all(|b| (a.scope, a.name) != (b.scope, b.name)),
                "{} twice",
                a.name
            );
            assert!(!a.help.is_empty(), "{} has no help", a.name);
        }
        let help = help("").unwrap();
        assert!(COMMANDS.iter().all(|c| help.contains(&c.synopsis())));
    }

    #[test]
    fn exec_output_is_formatted() {
        let o = ExecOutput { status: 3, signal: None, stdout: "out".into(), stderr: String::new() };
        assert_eq!(format_exec(&o), "status 3\nstdout:\nout\n");
    }
}
