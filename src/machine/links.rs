//! The test network's faults on a machine: its links (one per vlan it is on) cut, restored,
//! lossy, delayed or capped, and partitions between groups of machines. The switches
//! ([`crate::network`]) know ports by machine name; this is where a [`Machine`] meets them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::Machine;
use crate::log;
use crate::network::{heal_on, partition_on, Link, LinkCounters, Switch};

impl Machine {
    /// Cuts this machine off the test network (both directions, every vlan), as a pulled cable
    /// would.
    pub async fn block(&self) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        log::line(&format!("{}: network blocked", self.name()));
        log::event(crate::timeline::EventKind::Link, self.name(), "network blocked");
        self.change_links(|l| l.up = false)
    }

    /// Reconnects this machine to the test network.
    pub async fn unblock(&self) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        log::line(&format!("{}: network unblocked", self.name()));
        log::event(crate::timeline::EventKind::Link, self.name(), "network unblocked");
        self.change_links(|l| l.up = true)
    }

    /// Cuts this machine's link on `vlan` only (its other vlans keep working).
    pub fn link_down(&self, vlan: u32) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        self.change_link(vlan, |l| l.up = false)
    }

    /// Restores this machine's link on `vlan`.
    pub fn link_up(&self, vlan: u32) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        self.change_link(vlan, |l| l.up = true)
    }

    /// Drops a share (0.0 to 1.0) of the frames on every link of this machine, each direction.
    pub fn set_loss(&self, share: f64) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        self.change_links(|l| l.loss = share)
    }

    /// Delays every frame on this machine's links by `delay`, varied by up to `jitter` either
    /// way (frames keep their order), each direction.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        self.change_links(|l| {
            l.delay = delay;
            l.jitter = jitter;
        })
    }

    /// Caps this machine's links at `bytes_per_sec` each direction; `None` lifts the cap.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        self.change_links(|l| l.rate = bytes_per_sec)
    }

    /// Every link of this machine back to up and clean (no loss, delay or cap).
    pub fn clear_link_faults(&self) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        self.change_links(|l| *l = Link::default())
    }

    /// Changes this machine's links on every vlan it is on (up, loss, delay, jitter, cap); each
    /// change is logged and takes effect on the next frame.
    pub fn change_links(&self, change: impl Fn(&mut Link)) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        for v in &self.inner.node.vlans {
            self.change_link(*v, &change)?;
        }
        Ok(())
    }

    /// Changes this machine's link on `vlan`.
    pub fn change_link(&self, vlan: u32, change: impl FnOnce(&mut Link)) -> Result<()> {
        self.host_only("the test network's link faults (the host's switch)")?;
        let sw = self.inner.env.switches.get(&vlan).ok_or_else(|| {
            self.error(
                format!("no test network vlan {vlan}"),
                format!("this machine is on vlans {:?}", self.inner.node.vlans),
            )
        })?;
        sw.set_link(self.name(), change).map(drop)
    }

    /// This machine's link on `vlan` now, and its frame counts.
    pub fn link(&self, vlan: u32) -> Option<(Link, LinkCounters)> {
        let sw = self.inner.env.switches.get(&vlan)?;
        Some((sw.link(self.name())?, sw.counters(self.name())?))
    }

    /// The switches of the run (every vlan), for faults between machines
    /// ([`partition`]).
    pub fn switches(&self) -> Vec<Arc<Switch>> {
        self.inner.env.switches.values().cloned().collect()
    }

    /// This machine's address on `vlan` ([`crate::network::vlan_address`]).
    pub fn address_on(&self, vlan: u32) -> std::net::Ipv4Addr {
        crate::network::vlan_address(self.inner.node.address, vlan)
    }
}

/// Partitions machines `a` from machines `b` on every vlan: frames between the two groups are
/// dropped (both ways), all others pass. Logged once; takes effect on the next frame.
pub fn partition(a: &[&Machine], b: &[&Machine]) {
    let (an, bn) = (names(a), names(b));
    let switches = switches_of(a.iter().chain(b).copied().collect::<Vec<_>>().as_slice());
    partition_on(switches.iter().map(|s| &**s), &an, &bn);
}

/// Undoes [`partition`] of `a` and `b`.
pub fn heal(a: &[&Machine], b: &[&Machine]) {
    let (an, bn) = (names(a), names(b));
    let switches = switches_of(a.iter().chain(b).copied().collect::<Vec<_>>().as_slice());
    heal_on(switches.iter().map(|s| &**s), &an, &bn);
}

fn names<'m>(ms: &'m [&Machine]) -> Vec<&'m str> {
    ms.iter().map(|m| m.name()).collect()
}

/// The run's switches (every machine of a run shares them).
fn switches_of(ms: &[&Machine]) -> Vec<Arc<Switch>> {
    ms.first().map(|m| m.switches()).unwrap_or_default()
}
