//! Hidden scenarios that exercise the driver itself: the process-hygiene tests run them in a
//! child `vmcheck` and check that nothing of the run survives each way it can end.

use std::time::Duration;

use anyhow::{bail, Result};
use futures::FutureExt;

use super::{Scenario, ScriptFn};
use crate::config::{NodeSpec, Role};
use crate::driver::Driver;

fn one_machine() -> NodeSpec {
    NodeSpec::new("machine", Role::Target, 1)
}

pub fn scenarios() -> Vec<Scenario> {
    let s = |name, description, script: ScriptFn| {
        Scenario::new(name, description, script).machine(one_machine()).hidden()
    };
    vec![
        s("selftest-pass", "boots one machine and passes", |d| pass(d).boxed()),
        s("selftest-fail", "boots one machine and fails an assertion", |d| fail(d).boxed()),
        s("selftest-timeout", "boots one machine and runs into a command timeout", |d| timeout(d).boxed()),
        s("selftest-broken-machine", "boots one machine, pulls its plug, then uses it: an error of the machine, not a failure", |d| {
            broken_machine(d).boxed()
        }),
        s("selftest-hang", "boots one machine and waits forever (for signal tests)", |d| hang(d).boxed()),
    ]
}

async fn pass(d: &Driver) -> Result<()> {
    d.start_all().await?;
    d.machine("machine")?.succeed("true").await?;
    Ok(())
}

async fn fail(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let m = d.machine("machine")?;
    d.subtest("an assertion that fails", async {
        let out = m.succeed("echo 1").await?;
        if out.trim() != "2" {
            bail!("expected 2, the guest said {}", out.trim());
        }
        Ok(())
    })
    .await
}

async fn broken_machine(d: &Driver) -> Result<()> {
    d.start_all().await?;
    let m = d.machine("machine")?;
    m.crash().await?;
    d.subtest("a command on a machine that is gone", async { m.succeed("true").await.map(drop) })
        .await
}

async fn timeout(d: &Driver) -> Result<()> {
    d.start_all().await?;
    d.machine("machine")?.succeed_with_timeout("sleep 600", Duration::from_secs(2)).await?;
    Ok(())
}

async fn hang(d: &Driver) -> Result<()> {
    d.start_all().await?;
    crate::log::line("selftest: machines up, hanging");
    std::future::pending::<()>().await;
    Ok(())
}
