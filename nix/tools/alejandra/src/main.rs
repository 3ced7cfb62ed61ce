//! `vmcheck-alejandra [--check] [PATH...]`: formats the Nix files under each PATH (default `.`)
//! in place with the alejandra library, or with `--check` only reports the files that are not
//! formatted and exits 1. It is the flake's `formatter` (`nix fmt`) and the format check of
//! nix/check.sh, so both apply one pinned version of alejandra's rules.
//!
//! Directories are walked for `*.nix`, skipping hidden entries, `target`, `result*` and symlinks;
//! a PATH that names a file is taken whatever its name.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alejandra::format::{in_memory, Status};

const USAGE: &str = "usage: vmcheck-alejandra [--check] [PATH...]   (PATH defaults to .)";

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !std::fs::metadata(path)?.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || name.starts_with("result") {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(&entry.path(), out)?;
        } else if kind.is_file() && name.ends_with(".nix") {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut check = false;
    let mut roots = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.to_str() {
            Some("--check" | "-c") => check = true,
            Some("--help" | "-h") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some(flag) if flag.starts_with('-') => {
                eprintln!("vmcheck-alejandra: unknown option {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => roots.push(PathBuf::from(arg)),
        }
    }
    if roots.is_empty() {
        roots.push(PathBuf::from("."));
    }

    let mut files = Vec::new();
    for root in &roots {
        if let Err(err) = collect(root, &mut files) {
            eprintln!("vmcheck-alejandra: {}: {err}", root.display());
            return ExitCode::FAILURE;
        }
    }

    let mut bad = 0usize;
    let mut changed = 0usize;
    for file in &files {
        let shown = file.display().to_string();
        let before = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("{shown}: cannot read: {err}");
                bad += 1;
                continue;
            }
        };
        match in_memory(shown.clone(), before) {
            (Status::Error(err), _) => {
                eprintln!("{shown}: not valid Nix: {err}");
                bad += 1;
            }
            (Status::Changed(false), _) => {}
            (Status::Changed(true), _) if check => {
                eprintln!("{shown}: not formatted (run `nix fmt`, or vmcheck-alejandra {shown})");
                bad += 1;
            }
            (Status::Changed(true), after) => match std::fs::write(file, after) {
                Ok(()) => {
                    eprintln!("{shown}: formatted");
                    changed += 1;
                }
                Err(err) => {
                    eprintln!("{shown}: cannot write: {err}");
                    bad += 1;
                }
            },
        }
    }

    if check {
        eprintln!("vmcheck-alejandra: {} Nix file(s) checked, {bad} not formatted or not valid", files.len());
    } else {
        eprintln!("vmcheck-alejandra: {} Nix file(s), {changed} reformatted, {bad} with problems", files.len());
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
