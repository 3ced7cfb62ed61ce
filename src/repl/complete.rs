//! Tab completion: command names, `<m>.` and its commands, and the first argument of a global
//! command (machine, scenario, gRPC method or command name).

use super::commands::{find_command, scenario_names, Args, Scope, COMMANDS};
use super::grpc;
use super::parse::split_word;

/// Completes the word before `pos`: the start of that word and its candidates.
pub fn complete(line: &str, pos: usize, machines: &[String]) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let word = &before[start..];
    let candidates: Vec<String> = if start == 0 {
        match word.split_once('.') {
            Some((m, op)) if machines.iter().any(|x| x == m) => COMMANDS
                .iter()
                .filter(|c| c.scope == Scope::Machine && c.name.starts_with(op))
                .map(|c| format!("{m}.{}", c.name))
                .collect(),
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
            Some(Args::Scenario) => scenario_names(),
            Some(Args::Grpc) => grpc::names().into_iter().map(String::from).collect(),
            Some(Args::OptCommand) => COMMANDS.iter().map(|c| c.name.to_string()).collect(),
            _ => Vec::new(),
        };
        pool.into_iter().filter(|c| c.starts_with(word)).collect()
    };
    let mut candidates = candidates;
    candidates.dedup();
    (start, candidates)
}

pub(super) struct Helper {
    pub(super) machines: Vec<String>,
}

impl rustyline::completion::Completer for Helper {
    type Candidate = String;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete(line, pos, &self.machines))
    }
}
impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Helper {}
impl rustyline::validate::Validator for Helper {}
impl rustyline::Helper for Helper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_offers_commands_machines_and_arguments() {
        let _ = crate::repl::SCENARIO_NAMES.set(
            crate::scenarios::builtin().scenarios().iter().map(|s| s.name().to_string()).collect(),
        );
        let machines = vec!["target".to_string(), "initiator".to_string()];
        let c = |line: &str| complete(line, line.len(), &machines);
        assert_eq!(c("ta"), (0, vec!["target.".to_string()]));
        assert_eq!(c("st"), (0, vec!["start_all".to_string(), "step".to_string()]));
        let (start, got) = c("target.wait_until");
        assert_eq!(
            (start, got),
            (
                0,
                vec![
                    "target.wait_until_succeeds".to_string(),
                    "target.wait_until_fails".to_string()
                ]
            )
        );
        assert_eq!(c("qmp in"), (4, vec!["initiator".to_string()]));
        assert_eq!(
            c("grpc List"),
            (
                5,
                vec![
                    "ListBdevs".to_string(),
                    "ListSubsystems".to_string(),
                    "ListDisks".to_string()
                ]
            )
        );
        assert_eq!(c("run fio"), (4, vec!["fio_nvme_basic".to_string()]));
        assert_eq!(c("qmp target qu"), (11, vec![]));
        assert_eq!(c("ghost.st").1, Vec::<String>::new());
    }
}
