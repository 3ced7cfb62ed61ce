//! Hidden scenarios that exercise the driver itself: the process-hygiene tests run them in a
//! child `vmcheck` and check that nothing of the run survives each way it can end.

use std::time::Duration;

use anyhow::{bail, Result};
use futures::FutureExt;

use super::Scenario;
use crate::config::{NodeSpec, Role};
use crate::driver::Driver;

fn one_machine() -> Vec<NodeSpec> {
    vec![NodeSpec::new("machine", Role::Target, 1)]
}

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "selftest-pass",
            description: "boots one machine and passes",
            nodes: one_machine,
            run: |d| pass(d).boxed(),
            hidden: true,
            chain: None,
        },
        Scenario {
            name: "selftest-fail",
            description: "boots one machine and fails an assertion",
            nodes: one_machine,
            run: |d| fail(d).boxed(),
            hidden: true,
            chain: None,
        },
        Scenario {
            name: "selftest-timeout",
            description: "boots one machine and runs into a command timeout",
            nodes: one_machine,
            run: |d| timeout(d).boxed(),
            hidden: true,
            chain: None,
        },
        Scenario {
            name: "selftest-broken-machine",
            description: "boots one machine, pulls its plug, then uses it: an error of the machine, not a failure",
            nodes: one_machine,
            run: |d| broken_machine(d).boxed(),
            hidden: true,
            chain: None,
        },
        Scenario {
            name: "selftest-hang",
            description: "boots one machine and waits forever (for signal tests)",
            nodes: one_machine,
            run: |d| hang(d).boxed(),
            hidden: true,
            chain: None,
        },
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
    d.subtest("a command on a machine that is gone", async { m.succeed("true").await.map(drop) }).await
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
