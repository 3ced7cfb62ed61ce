//! One line to a command: `<m>: <cmd>`, `<m>.name ARGS` or `name ARGS`, checked against the
//! command's argument shape.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::commands::{find_command, Args, Command, Scope, COMMANDS};

/// A parsed line: the command, with its arguments still by name.
#[derive(Debug)]
pub struct Parsed {
    pub command: &'static Command,
    pub machine: Option<String>,
    pub text: String,
    pub timeout: Option<Duration>,
}

/// The first word and the (trimmed) rest.
pub(super) fn split_word(s: &str) -> (&str, &str) {
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
            return finish(
                find_command(Scope::Machine, "succeed").expect("in the table"),
                Some(machine),
                cmd.trim(),
            );
        }
    }
    let (head, rest) = split_word(line);
    if let Some((m, op)) = head.split_once('.') {
        let machine = known_machine(m, machines)?;
        let Some(command) = find_command(Scope::Machine, op) else {
            let ops: Vec<_> =
                COMMANDS.iter().filter(|c| c.scope == Scope::Machine).map(|c| c.name).collect();
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
fn finish(
    command: &'static Command,
    machine: Option<String>,
    rest: &str,
) -> Result<Option<Parsed>> {
    let usage = || anyhow!("usage: {}", command.synopsis());
    let mut text = rest.trim().to_string();
    let mut timeout = None;
    match command.args {
        Args::None if !text.is_empty() => bail!("{} takes no arguments", command.name),
        Args::Text | Args::MachineText | Args::Grpc if text.is_empty() => return Err(usage()),
        Args::Scenario if text.is_empty() || text.contains(char::is_whitespace) => {
            return Err(usage())
        }
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
    fn machine_commands_parse() {
        let p = parsed("target: echo hello: world");
        assert_eq!(
            (p.command.name, p.machine.as_deref(), p.text.as_str()),
            ("succeed", Some("target"), "echo hello: world")
        );
        let p = parsed("  initiator.execute exit 3 ");
        assert_eq!(
            (p.command.name, p.machine.as_deref(), p.text.as_str()),
            ("execute", Some("initiator"), "exit 3")
        );
        let p = parsed("target.wait_until_succeeds --timeout 2.5 test -e /x");
        assert_eq!((p.text.as_str(), p.timeout), ("test -e /x", Some(Duration::from_millis(2500))));
        let p = parsed("target.wait_until_succeeds true");
        assert_eq!(p.timeout, None);
        assert_eq!(parsed("target.start").command.scope, Scope::Machine);
    }

    #[test]
    fn global_commands_parse() {
        let p = parsed(r#"qmp target {"execute": "query-status"}"#);
        assert_eq!(
            (p.command.name, p.machine.as_deref(), p.text.as_str()),
            ("qmp", Some("target"), r#"{"execute": "query-status"}"#)
        );
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
        assert!(parse_error("target.wait_until_succeeds --timeout x true")
            .contains("--timeout takes seconds"));
        assert!(parse_error("target.wait_until_succeeds --timeout 3").contains("usage"));
        assert!(parse_error("qmp").contains("usage: qmp"));
        assert!(parse_error("qmp ghost {}").contains("no machine named"));
        assert!(parse_error("target").contains("target is a machine"));
        assert!(parse_error("run a b").contains("usage: run"));
    }
}
