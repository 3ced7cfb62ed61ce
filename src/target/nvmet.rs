//! Linux nvmet through configfs: subsystems, namespaces, TCP ports and their links, made in an
//! order the kernel accepts, taken down in the reverse order, and rolled back when a step fails.
//!
//! Layout (kernel `drivers/nvme/target/configfs.c`):
//! `subsystems/<nqn>/{attr_allow_any_host, namespaces/<nsid>/{device_path, device_uuid,
//! buffered_io, enable}, allowed_hosts/<hostnqn> -> hosts/<hostnqn>}`,
//! `ports/<id>/{addr_trtype, addr_adrfam, addr_traddr, addr_trsvcid, subsystems/<nqn> ->
//! subsystems/<nqn>, referrals/}`, `hosts/<hostnqn>/`.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

use uuid::Uuid;

use super::configfs::{ConfigFs, GroupLayout, Undo};
use super::error::{ConfigfsContext, Error, Result};
use super::limits::Deadline;
use super::uri::quoted;

/// The nvmet root itself (made by the nvmet module).
pub const ROOT_LAYOUT: GroupLayout =
    GroupLayout { subdirs: &["subsystems", "ports", "hosts"], attrs: &[], removable_when: None };
const SUBSYSTEM: GroupLayout = GroupLayout {
    subdirs: &["namespaces", "allowed_hosts"],
    attrs: &[("attr_allow_any_host", "0")],
    removable_when: None,
};
const NAMESPACE: GroupLayout = GroupLayout {
    subdirs: &[],
    attrs: &[
        ("device_path", ""),
        ("device_uuid", "00000000-0000-0000-0000-000000000000"),
        ("buffered_io", "0"),
        ("enable", "0"),
    ],
    removable_when: Some(("enable", "0")),
};
const PORT: GroupLayout = GroupLayout {
    subdirs: &["subsystems", "referrals"],
    attrs: &[("addr_trtype", ""), ("addr_adrfam", ""), ("addr_traddr", ""), ("addr_trsvcid", "")],
    removable_when: None,
};
const HOST: GroupLayout = GroupLayout { subdirs: &[], attrs: &[], removable_when: None };

/// The well-known discovery subsystem; never a name for a share.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// NVMe base specification: an NQN is at most 223 bytes.
pub const MAX_NQN_LEN: usize = 223;
/// NVMe reserves 0 and 0xffffffff (all namespaces).
pub const MAX_NSID: u32 = 0xffff_fffe;

/// `nqn.yyyy-mm.<reverse domain>[:<anything printable but '/'>]`; the NQN is a configfs
/// directory name, so '/' is out even where the specification would allow it.
static NQN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^nqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[!-.0-~]+)?$",
    )
    .expect("valid regex")
});

/// Checks an NQN given by a caller; `what` says which field it came from.
pub fn validate_nqn(what: &str, nqn: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("{what} {}: {why}", quoted(nqn))));
    if nqn.len() > MAX_NQN_LEN {
        return bad(&format!("longer than {MAX_NQN_LEN} bytes"));
    }
    if !NQN_RE.is_match(nqn) {
        return bad("not an NQN of the form nqn.yyyy-mm.reverse.domain[:name] (printable ASCII, no '/' or spaces)");
    }
    if nqn == DISCOVERY_NQN {
        return bad("that is the discovery subsystem's NQN");
    }
    Ok(())
}

/// One namespace to enable.
#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    pub nsid: u32,
    pub device_path: PathBuf,
    pub device_uuid: Uuid,
    /// Page-cache I/O: needed for files on tmpfs, which refuses O_DIRECT on older kernels.
    pub buffered_io: bool,
}

/// A subsystem with one namespace (or none: an empty controller), linked into a TCP port.
#[derive(Debug, Clone)]
pub struct ShareSpec {
    pub nqn: String,
    /// Empty: any host may connect.
    pub allowed_hosts: Vec<String>,
    pub namespace: Option<NamespaceSpec>,
    pub traddr: Ipv4Addr,
    pub trsvcid: u16,
}

/// nvmet's configfs tree.
#[derive(Debug)]
pub struct Nvmet {
    fs: ConfigFs,
}

impl Nvmet {
    pub fn new(fs: ConfigFs) -> Self {
        Nvmet { fs }
    }

    pub fn fs(&self) -> &ConfigFs {
        &self.fs
    }

    /// Whether the tree is there (nvmet loaded, configfs mounted).
    pub fn available(&self) -> bool {
        self.fs.exists(Path::new("subsystems"))
    }

    fn require_available(&self) -> Result<()> {
        if self.available() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "nvmet configfs {} is missing: is the nvmet module loaded and configfs mounted?",
            self.fs.root().join("subsystems").display()
        )))
    }

    pub fn subsystem_exists(&self, nqn: &str) -> bool {
        self.fs.exists(&subsys(nqn))
    }

    pub fn namespace_exists(&self, nqn: &str, nsid: u32) -> bool {
        self.fs.exists(&namespace(nqn, nsid))
    }

    /// The lowest namespace id a subsystem does not use.
    pub fn free_nsid(&self, nqn: &str) -> Result<u32> {
        let used = numeric_entries::<u32>(
            &self
                .fs
                .list(&subsys(nqn).join("namespaces"))
                .context(|| format!("listing namespaces of {nqn}"))?,
        );
        lowest_free(&used, 1, MAX_NSID).ok_or_else(|| {
            Error::FailedPrecondition(format!("subsystem {nqn} has no free namespace id"))
        })
    }

    /// Makes the subsystem, its namespace and host list, and links it into the TCP port for
    /// `traddr:trsvcid` (made if missing). All or nothing: a failure or the deadline passing
    /// between steps rolls back what was made. Returns the port id.
    pub fn share(&self, spec: &ShareSpec, deadline: &Deadline) -> Result<u16> {
        self.require_available()?;
        deadline.check("before the share started")?;
        let nqn = spec.nqn.as_str();
        let (port_id, port_exists) = self.port_for(spec.traddr, spec.trsvcid)?;
        let mut undo = Undo::new(&self.fs, "nvmet");
        // Hosts are shared between subsystems: make only the missing ones.
        for host in &spec.allowed_hosts {
            let dir = Path::new("hosts").join(host);
            if !self.fs.exists(&dir) {
                deadline.check(&format!("while creating host {host}"))?;
                undo.make_group(&dir, &HOST).context(|| format!("creating host {host}"))?;
            }
        }
        undo.make_group(&subsys(nqn), &SUBSYSTEM)
            .context(|| format!("creating subsystem {nqn}"))?;
        let any = if spec.allowed_hosts.is_empty() { "1" } else { "0" };
        undo.write(&subsys(nqn).join("attr_allow_any_host"), any)
            .context(|| format!("setting attr_allow_any_host of {nqn}"))?;
        for host in &spec.allowed_hosts {
            deadline.check(&format!("while allowing host {host} on {nqn}"))?;
            undo.symlink(
                &Path::new("hosts").join(host),
                &subsys(nqn).join("allowed_hosts").join(host),
            )
            .context(|| format!("allowing host {host} on {nqn}"))?;
        }
        if let Some(ns) = &spec.namespace {
            deadline.check(&format!("before enabling namespace {} of {nqn}", ns.nsid))?;
            enable_namespace(&mut undo, nqn, ns)?;
        }
        let port = port_dir(port_id);
        if !port_exists {
            undo.make_group(&port, &PORT).context(|| format!("creating port {port_id}"))?;
            let addr = [
                ("addr_trtype", "tcp".to_string()),
                ("addr_adrfam", "ipv4".into()),
                ("addr_traddr", spec.traddr.to_string()),
                ("addr_trsvcid", spec.trsvcid.to_string()),
            ];
            for (attr, value) in addr {
                undo.write(&port.join(attr), &value)
                    .context(|| format!("setting {attr}={value} on port {port_id}"))?;
            }
        }
        deadline.check(&format!("before linking {nqn} into port {port_id}"))?;
        // Linking enables the port: this is where nvmet-tcp binds, and where a busy or foreign
        // address fails.
        undo.symlink(&subsys(nqn), &port.join("subsystems").join(nqn)).context(|| {
            format!("linking {nqn} into port {port_id} ({}:{})", spec.traddr, spec.trsvcid)
        })?;
        undo.commit();
        Ok(port_id)
    }

    /// Takes a subsystem down: out of its ports (removing ports left empty), namespaces disabled
    /// and removed, hosts unlinked (removing hosts no other subsystem allows), then the
    /// subsystem. Stops at the first failure; what remains shows in [`Nvmet::state`], and a
    /// retry continues from there.
    pub fn unshare(&self, nqn: &str) -> Result<()> {
        self.require_available()?;
        if !self.subsystem_exists(nqn) {
            return Err(Error::NotFound(format!("subsystem {nqn} is not in configfs")));
        }
        for port in self.list_numeric::<u16>(Path::new("ports"))? {
            let link = port_dir(port).join("subsystems").join(nqn);
            if !self.fs.exists(&link) {
                continue;
            }
            self.fs.unlink(&link).context(|| format!("unlinking {nqn} from port {port}"))?;
            let dir = port_dir(port);
            let empty = |sub: &str| self.fs.list(&dir.join(sub)).map(|entries| entries.is_empty());
            if empty("subsystems").context(|| format!("listing port {port}"))?
                && empty("referrals").context(|| format!("listing port {port}"))?
            {
                self.fs.remove_group(&dir, &PORT).context(|| format!("removing port {port}"))?;
            }
        }
        for nsid in self.list_numeric::<u32>(&subsys(nqn).join("namespaces"))? {
            self.remove_namespace(nqn, nsid)?;
        }
        let hosts = self
            .fs
            .list(&subsys(nqn).join("allowed_hosts"))
            .context(|| format!("listing allowed hosts of {nqn}"))?;
        for host in &hosts {
            self.fs
                .unlink(&subsys(nqn).join("allowed_hosts").join(host))
                .context(|| format!("disallowing host {host} on {nqn}"))?;
        }
        self.fs
            .remove_group(&subsys(nqn), &SUBSYSTEM)
            .context(|| format!("removing subsystem {nqn}"))?;
        for host in &hosts {
            if !self.host_in_use(host)? {
                self.fs
                    .remove_group(&Path::new("hosts").join(host), &HOST)
                    .context(|| format!("removing host {host}"))?;
            }
        }
        Ok(())
    }

    /// Hot attach: a namespace on a live subsystem. All or nothing.
    pub fn add_namespace(&self, nqn: &str, ns: &NamespaceSpec, deadline: &Deadline) -> Result<()> {
        self.require_available()?;
        deadline.check(&format!("before adding namespace {} to {nqn}", ns.nsid))?;
        let mut undo = Undo::new(&self.fs, "nvmet");
        enable_namespace(&mut undo, nqn, ns)?;
        // Enabling is where nvmet opens the device, the slow step: check once more.
        deadline.check(&format!("while adding namespace {} to {nqn}", ns.nsid))?;
        undo.commit();
        Ok(())
    }

    /// Hot detach: disabled first, so nvmet lets go of the device before the group goes.
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<()> {
        self.require_available()?;
        let dir = namespace(nqn, nsid);
        self.fs
            .write(&dir.join("enable"), "0")
            .context(|| format!("disabling namespace {nsid} of {nqn}"))?;
        self.fs
            .remove_group(&dir, &NAMESPACE)
            .context(|| format!("removing namespace {nsid} of {nqn}"))
    }

    /// Everything in the tree, whoever made it.
    pub fn state(&self) -> Result<State> {
        if !self.available() {
            return Ok(State::default());
        }
        let read = |rel: PathBuf| self.fs.read(&rel).context(|| "reading nvmet state".into());
        let mut state = State::default();
        for nqn in self.fs.list(Path::new("subsystems")).context(|| "listing subsystems".into())? {
            let dir = subsys(&nqn);
            let mut namespaces = Vec::new();
            for nsid in self.list_numeric::<u32>(&dir.join("namespaces"))? {
                let ns = namespace(&nqn, nsid);
                namespaces.push(NamespaceState {
                    nsid,
                    device_path: read(ns.join("device_path"))?,
                    device_uuid: read(ns.join("device_uuid"))?,
                    enabled: read(ns.join("enable"))? == "1",
                });
            }
            state.subsystems.push(SubsystemState {
                allow_any_host: read(dir.join("attr_allow_any_host"))? == "1",
                allowed_hosts: self
                    .fs
                    .list(&dir.join("allowed_hosts"))
                    .context(|| format!("listing allowed hosts of {nqn}"))?,
                namespaces,
                nqn,
            });
        }
        for id in self.list_numeric::<u16>(Path::new("ports"))? {
            let dir = port_dir(id);
            state.ports.push(PortState {
                id,
                trtype: read(dir.join("addr_trtype"))?,
                adrfam: read(dir.join("addr_adrfam"))?,
                traddr: read(dir.join("addr_traddr"))?,
                trsvcid: read(dir.join("addr_trsvcid"))?,
                subsystems: self
                    .fs
                    .list(&dir.join("subsystems"))
                    .context(|| format!("listing subsystems of port {id}"))?,
            });
        }
        state.hosts = self.fs.list(Path::new("hosts")).context(|| "listing hosts".into())?;
        Ok(state)
    }

    /// The port serving `traddr:trsvcid` over TCP (reused), or a free id for a new one.
    /// Another address on the same TCP port would fail at bind time: refuse it up front.
    fn port_for(&self, traddr: Ipv4Addr, trsvcid: u16) -> Result<(u16, bool)> {
        let state = self.state()?;
        let svc = trsvcid.to_string();
        if let Some(port) = state.ports.iter().find(|p| p.trtype == "tcp" && p.trsvcid == svc) {
            if port.adrfam == "ipv4" && port.traddr == traddr.to_string() {
                return Ok((port.id, true));
            }
            return Err(Error::FailedPrecondition(format!(
                "TCP port {trsvcid} is taken by nvmet port {} on {} {}; choose another port",
                port.id, port.adrfam, port.traddr
            )));
        }
        let used: Vec<u16> = state.ports.iter().map(|p| p.id).collect();
        let id = lowest_free(&used, 1, u16::MAX)
            .ok_or_else(|| Error::FailedPrecondition("no free nvmet port id".into()))?;
        Ok((id, false))
    }

    fn host_in_use(&self, host: &str) -> Result<bool> {
        for nqn in self.fs.list(Path::new("subsystems")).context(|| "listing subsystems".into())? {
            if self.fs.exists(&subsys(&nqn).join("allowed_hosts").join(host)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The numeric entries of a directory (port ids, nsids), ascending.
    fn list_numeric<T: std::str::FromStr + Ord>(&self, dir: &Path) -> Result<Vec<T>> {
        Ok(numeric_entries(&self.fs.list(dir).context(|| format!("listing {}", dir.display()))?))
    }
}

fn numeric_entries<T: std::str::FromStr + Ord>(names: &[String]) -> Vec<T> {
    let mut ids: Vec<T> = names.iter().filter_map(|n| n.parse().ok()).collect();
    ids.sort();
    ids
}

fn lowest_free<T>(used: &[T], first: T, last: T) -> Option<T>
where
    T: Copy + PartialEq + PartialOrd + std::ops::Add<Output = T> + From<u8>,
{
    let mut id = first;
    loop {
        if !used.contains(&id) {
            return Some(id);
        }
        if id >= last {
            return None;
        }
        id = id + T::from(1);
    }
}

fn subsys(nqn: &str) -> PathBuf {
    Path::new("subsystems").join(nqn)
}

fn namespace(nqn: &str, nsid: u32) -> PathBuf {
    subsys(nqn).join("namespaces").join(nsid.to_string())
}

fn port_dir(id: u16) -> PathBuf {
    Path::new("ports").join(id.to_string())
}

/// Namespace group, device, uuid, I/O mode, then enable: nvmet opens the device on enable,
/// and refuses attribute changes after it.
fn enable_namespace(undo: &mut Undo, nqn: &str, ns: &NamespaceSpec) -> Result<()> {
    let dir = namespace(nqn, ns.nsid);
    let nsid = ns.nsid;
    undo.make_group(&dir, &NAMESPACE).context(|| format!("creating namespace {nsid} of {nqn}"))?;
    let path = ns.device_path.to_string_lossy();
    undo.write(&dir.join("device_path"), &path)
        .context(|| format!("setting device_path {path} on namespace {nsid} of {nqn}"))?;
    undo.write(&dir.join("device_uuid"), &ns.device_uuid.to_string())
        .context(|| format!("setting device_uuid on namespace {nsid} of {nqn}"))?;
    if ns.buffered_io {
        undo.write(&dir.join("buffered_io"), "1")
            .context(|| format!("setting buffered_io on namespace {nsid} of {nqn}"))?;
    }
    undo.write_reverting(&dir.join("enable"), "1", "0")
        .context(|| format!("enabling namespace {nsid} of {nqn} on {path}"))
}

/// nvmet's configfs contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub subsystems: Vec<SubsystemState>,
    pub ports: Vec<PortState>,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemState {
    pub nqn: String,
    pub allow_any_host: bool,
    pub allowed_hosts: Vec<String>,
    pub namespaces: Vec<NamespaceState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceState {
    pub nsid: u32,
    pub device_path: String,
    pub device_uuid: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortState {
    pub id: u16,
    pub trtype: String,
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
    /// NQNs linked into the port.
    pub subsystems: Vec<String>,
}

impl State {
    pub fn is_empty(&self) -> bool {
        self.subsystems.is_empty() && self.ports.is_empty() && self.hosts.is_empty()
    }

    /// The ports a subsystem is linked into.
    pub fn ports_of<'s>(&'s self, nqn: &'s str) -> impl Iterator<Item = &'s PortState> + 's {
        self.ports.iter().filter(move |p| p.subsystems.iter().any(|s| s == nqn))
    }
}

/// One line per object, for the leftover report at start.
impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.subsystems {
            let hosts = if s.allow_any_host {
                "any host".to_string()
            } else {
                format!("hosts [{}]", s.allowed_hosts.join(", "))
            };
            writeln!(f, "subsystem {} ({hosts})", s.nqn)?;
            for ns in &s.namespaces {
                let on = if ns.enabled { "enabled" } else { "disabled" };
                writeln!(
                    f,
                    "  namespace {} {} uuid {} {on}",
                    ns.nsid, ns.device_path, ns.device_uuid
                )?;
            }
        }
        for p in &self.ports {
            writeln!(
                f,
                "port {} {} {}:{} subsystems [{}]",
                p.id,
                p.trtype,
                p.traddr,
                p.trsvcid,
                p.subsystems.join(", ")
            )?;
        }
        for h in &self.hosts {
            writeln!(f, "host {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::configfs::Op;
    use nix::errno::Errno;

    const NQN: &str = "nqn.2019-05.io.vmcheck:test";
    const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

    fn fake() -> (tempfile::TempDir, Nvmet) {
        let dir = tempfile::tempdir().unwrap();
        let fs = ConfigFs::emulated(dir.path().join("nvmet"), &ROOT_LAYOUT).unwrap();
        (dir, Nvmet::new(fs))
    }

    fn spec(nqn: &str, hosts: &[&str], trsvcid: u16) -> ShareSpec {
        ShareSpec {
            nqn: nqn.into(),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            namespace: Some(NamespaceSpec {
                nsid: 1,
                device_path: "/dev/vdb".into(),
                device_uuid: Uuid::nil(),
                buffered_io: false,
            }),
            traddr: Ipv4Addr::new(192, 0, 2, 1),
            trsvcid,
        }
    }

    fn tree(nvmet: &Nvmet) -> Vec<String> {
        nvmet.fs().dump()
    }

    const EMPTY: [&str; 3] = ["d hosts", "d ports", "d subsystems"];

    #[test]
    fn share_writes_the_kernel_layout_and_unshare_removes_it_all() {
        let (_dir, nvmet) = fake();
        assert_eq!(nvmet.share(&spec(NQN, &[], 4420), &Deadline::none()).unwrap(), 1);
        let ns = "subsystems/nqn.2019-05.io.vmcheck:test/namespaces/1";
        assert_eq!(
            tree(&nvmet),
            [
                "d hosts",
                "d ports",
                "d ports/1",
                "f ports/1/addr_adrfam = ipv4",
                "f ports/1/addr_traddr = 192.0.2.1",
                "f ports/1/addr_trsvcid = 4420",
                "f ports/1/addr_trtype = tcp",
                "d ports/1/referrals",
                "d ports/1/subsystems",
                "l ports/1/subsystems/nqn.2019-05.io.vmcheck:test -> subsystems/nqn.2019-05.io.vmcheck:test",
                "d subsystems",
                "d subsystems/nqn.2019-05.io.vmcheck:test",
                "d subsystems/nqn.2019-05.io.vmcheck:test/allowed_hosts",
                "f subsystems/nqn.2019-05.io.vmcheck:test/attr_allow_any_host = 1",
                "d subsystems/nqn.2019-05.io.vmcheck:test/namespaces",
                &format!("d {ns}"),
                &format!("f {ns}/buffered_io = 0"),
                &format!("f {ns}/device_path = /dev/vdb"),
                &format!("f {ns}/device_uuid = 00000000-0000-0000-0000-000000000000"),
                &format!("f {ns}/enable = 1"),
            ]
        );
        let state = nvmet.state().unwrap();
        assert_eq!(state.subsystems.len(), 1);
        assert!(state.subsystems[0].allow_any_host);
        assert_eq!(state.ports_of(NQN).map(|p| p.id).collect::<Vec<_>>(), [1]);
        nvmet.unshare(NQN).unwrap();
        assert_eq!(tree(&nvmet), EMPTY);
    }

    #[test]
    fn allowed_hosts_are_linked_and_unused_hosts_removed() {
        let (_dir, nvmet) = fake();
        let other = "nqn.2019-05.io.vmcheck:other";
        nvmet.share(&spec(NQN, &[HOST_NQN], 4420), &Deadline::none()).unwrap();
        nvmet.share(&spec(other, &[HOST_NQN], 4420), &Deadline::none()).unwrap();
        let state = nvmet.state().unwrap();
        assert_eq!(state.hosts, [HOST_NQN]);
        assert_eq!(state.ports.len(), 1, "the same address reuses the port: {state}");
        assert_eq!(state.ports[0].subsystems.len(), 2);
        assert!(!state.subsystems[0].allow_any_host);
        assert_eq!(state.subsystems[0].allowed_hosts, [HOST_NQN]);
        nvmet.unshare(NQN).unwrap();
        assert_eq!(nvmet.state().unwrap().hosts, [HOST_NQN], "still allowed on {other}");
        assert_eq!(nvmet.state().unwrap().ports.len(), 1, "still used by {other}");
        nvmet.unshare(other).unwrap();
        assert_eq!(tree(&nvmet), EMPTY);
    }

    #[test]
    fn a_second_tcp_port_gets_the_next_id_and_a_foreign_address_is_refused() {
        let (_dir, nvmet) = fake();
        nvmet.share(&spec(NQN, &[], 4420), &Deadline::none()).unwrap();
        assert_eq!(
            nvmet.share(&spec("nqn.2019-05.io.vmcheck:b", &[], 4421), &Deadline::none()).unwrap(),
            2
        );
        let mut clash = spec("nqn.2019-05.io.vmcheck:c", &[], 4420);
        clash.traddr = Ipv4Addr::new(192, 0, 2, 9);
        let err = nvmet.share(&clash, &Deadline::none()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("4420") && err.to_string().contains("192.0.2.1"), "{err}");
        assert!(!nvmet.subsystem_exists("nqn.2019-05.io.vmcheck:c"));
    }

    /// A fault at each step of a share leaves the tree exactly as it was.
    #[test]
    fn a_failure_at_any_step_of_a_share_is_rolled_back() {
        let steps: &[(Op, &str)] = &[
            (Op::Mkdir, &format!("hosts/{HOST_NQN}")),
            (Op::Mkdir, &format!("subsystems/{NQN}")),
            (Op::Write, "attr_allow_any_host"),
            (Op::Symlink, &format!("allowed_hosts/{HOST_NQN}")),
            (Op::Mkdir, "namespaces/1"),
            (Op::Write, "device_path"),
            (Op::Write, "device_uuid"),
            (Op::Write, "buffered_io"),
            (Op::Write, "enable"),
            (Op::Mkdir, "ports/2"),
            (Op::Write, "addr_trtype"),
            (Op::Write, "addr_traddr"),
            (Op::Write, "addr_trsvcid"),
            (Op::Symlink, &format!("ports/2/subsystems/{NQN}")),
        ];
        for (op, suffix) in steps {
            let (_dir, nvmet) = fake();
            // Something else is there already and must survive the rollback untouched.
            nvmet
                .share(&spec("nqn.2019-05.io.vmcheck:keep", &[], 4421), &Deadline::none())
                .unwrap();
            let before = tree(&nvmet);
            assert!(nvmet.fs().inject_fault(*op, suffix, Errno::EADDRINUSE as i32));
            let mut s = spec(NQN, &[HOST_NQN], 4420);
            s.namespace.as_mut().unwrap().buffered_io = true;
            let err = nvmet.share(&s, &Deadline::none()).expect_err(suffix);
            assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{op:?} {suffix}: {err}");
            assert!(
                err.to_string().contains(suffix),
                "{op:?} {suffix}: message names the path: {err}"
            );
            assert_eq!(tree(&nvmet), before, "after a fault on {op:?} {suffix}");
        }
    }

    /// The deadline passing at each of a share's checks leaves the tree as it was, and a share
    /// with enough time left goes through.
    #[test]
    fn a_deadline_passing_at_any_step_of_a_share_is_rolled_back() {
        let mut checks = 0;
        loop {
            let (_dir, nvmet) = fake();
            nvmet
                .share(&spec("nqn.2019-05.io.vmcheck:keep", &[HOST_NQN], 4420), &Deadline::none())
                .unwrap();
            let before = tree(&nvmet);
            let other_host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-666666666666";
            match nvmet
                .share(&spec(NQN, &[HOST_NQN, other_host], 4421), &Deadline::after_checks(checks))
            {
                Err(err) => {
                    assert_eq!(
                        err.code(),
                        tonic::Code::DeadlineExceeded,
                        "after {checks} checks: {err}"
                    );
                    assert!(err.to_string().contains("nothing was changed"), "{err}");
                    assert_eq!(tree(&nvmet), before, "after {checks} checks");
                }
                Ok(_) => {
                    assert!(checks >= 6, "a share with two hosts and a namespace has at least 6 checks, not {checks}");
                    break;
                }
            }
            checks += 1;
        }
    }

    #[test]
    fn existing_subsystem_is_already_exists_and_untouched() {
        let (_dir, nvmet) = fake();
        nvmet.share(&spec(NQN, &[], 4420), &Deadline::none()).unwrap();
        let before = tree(&nvmet);
        let err = nvmet.share(&spec(NQN, &[], 4421), &Deadline::none()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert_eq!(tree(&nvmet), before);
    }

    #[test]
    fn namespaces_come_and_go_on_a_live_subsystem() {
        let (_dir, nvmet) = fake();
        nvmet.share(&spec(NQN, &[], 4420), &Deadline::none()).unwrap();
        assert_eq!(nvmet.free_nsid(NQN).unwrap(), 2);
        let ns = NamespaceSpec {
            nsid: 2,
            device_path: "/run/m1".into(),
            device_uuid: Uuid::nil(),
            buffered_io: true,
        };
        nvmet.fs().inject_fault(Op::Write, "namespaces/2/enable", Errno::ENOENT as i32);
        let err = nvmet.add_namespace(NQN, &ns, &Deadline::none()).unwrap_err();
        assert!(err.to_string().contains("/run/m1"), "{err}");
        assert!(!nvmet.namespace_exists(NQN, 2));
        nvmet.add_namespace(NQN, &ns, &Deadline::none()).unwrap();
        assert!(nvmet.state().unwrap().subsystems[0]
            .namespaces
            .iter()
            .any(|n| n.nsid == 2 && n.enabled));
        nvmet.remove_namespace(NQN, 2).unwrap();
        assert!(!nvmet.namespace_exists(NQN, 2));
    }

    #[test]
    fn a_failed_unshare_can_be_retried() {
        let (_dir, nvmet) = fake();
        nvmet.share(&spec(NQN, &[], 4420), &Deadline::none()).unwrap();
        nvmet.fs().inject_fault(Op::Rmdir, "namespaces/1", Errno::EBUSY as i32);
        assert!(nvmet.unshare(NQN).is_err());
        assert!(nvmet.subsystem_exists(NQN));
        nvmet.unshare(NQN).unwrap();
        assert_eq!(tree(&nvmet), EMPTY);
    }

    #[test]
    fn missing_nvmet_is_a_failed_precondition_and_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let nvmet = Nvmet::new(ConfigFs::kernel(dir.path().join("absent")));
        assert!(!nvmet.available());
        assert!(nvmet.state().unwrap().is_empty());
        let err = nvmet.share(&spec(NQN, &[], 4420), &Deadline::none()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("nvmet module"), "{err}");
    }

    #[test]
    fn nqn_validation() {
        for good in [
            NQN,
            HOST_NQN,
            "nqn.2014-08.org.nvmexpress:uuid:0",
            "nqn.2024-12.a",
            "nqn.2019-05.io.vmcheck:a.b-c_d:e",
        ] {
            validate_nqn("nqn", good).unwrap();
        }
        let long = format!("nqn.2019-05.io.vmcheck:{}", "x".repeat(MAX_NQN_LEN));
        for bad in [
            "",
            "nqn",
            "not-an-nqn",
            "nqn.19-05.io.x",
            "nqn.2019-13.io.x",
            "nqn.2019-05.",
            "nqn.2019-05.io.x:",
            "nqn.2019-05.io.x:a/b",
            "nqn.2019-05.io.x:a b",
            "nqn.2019-05.-io:a",
            "NQN.2019-05.io.x",
            "nqn.2019-05.io.x:\u{e9}",
            DISCOVERY_NQN,
            &long,
        ] {
            let err = validate_nqn("nqn", bad).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(&quoted(bad)), "{err}");
        }
    }
}
