//! vmcheck's own suite on real VMs, as `vmcheck run NAME` runs each scenario, through the
//! harness a user's crate uses: a `harness = false` test whose `main` is
//! `vmcheck::harness::main`, so `cargo nextest run` lists one test per listed scenario (a chain
//! as one test, the hidden self-tests as ignored tests) and runs each by name. A scenario added
//! to `scenarios::builtin()` is a test here with nothing else to do.

fn main() -> std::process::ExitCode {
    vmcheck::harness::main(vmcheck::scenarios::builtin())
}
