//! The gRPC service: a registry of bdevs in memory, nvmet state in configfs.
//!
//! Every request is validated before anything is touched (INVALID_ARGUMENT), then looked up
//! (NOT_FOUND), then checked against the current state (ALREADY_EXISTS, FAILED_PRECONDITION).
//! Mutations hold one lock from check to change, so two requests never interleave.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Instant;

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use uuid::Uuid;

use super::address;
use super::backing::{Backing, Geometry};
use super::error::{Error, Result};
use super::lio::{self, IscsiShareSpec, Lio};
use super::nvmet::{self, NamespaceSpec, Nvmet, ShareSpec, MAX_NSID};
use super::proto::{self, target_server::Target};
use super::uri::{quoted, BdevUri};

/// What `claimed_by` says while a bdev is in an nvmet namespace (as mayastor's listing did).
pub const CLAIMED_BY: &str = "NVMe-oF Target";
pub const CLAIMED_BY_ISCSI: &str = "iSCSI Target";
/// iSCSI target IQNs default to this prefix and the bdev's uuid.
pub const IQN_PREFIX: &str = "iqn.2019-05.io.vmcheck:";
/// Where LIO's configfs tree is.
pub const LIO_CONFIGFS: &str = "/sys/kernel/config/target";
pub const STATE_ONLINE: &str = "online";
pub const STATE_FAULTED: &str = "faulted";
pub const DEFAULT_NVMF_PORT: u16 = 4420;
/// Subsystem NQNs default to this prefix and the bdev's uuid.
pub const NQN_PREFIX: &str = "nqn.2019-05.io.vmcheck:";

/// Bdev uuids are v5 of the canonical URI in this namespace: the same bdev gets the same uuid
/// (and so the same default NQN) across daemon restarts.
const UUID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_7a8e_4d1b_4c2e_9a3f_6b8d_2e1c_0a47);

/// Where share URIs point and nvmet ports bind.
#[derive(Debug, Clone, Copy)]
pub enum Traddr {
    Fixed(Ipv4Addr),
    /// Looked up at each share (see [`address::choose`]): the NIC may come up after the daemon.
    Detect,
}

impl Traddr {
    fn resolve(self) -> Result<Ipv4Addr> {
        match self {
            Traddr::Fixed(addr) => Ok(addr),
            Traddr::Detect => {
                let addrs = address::local_ipv4().map_err(|e| Error::FailedPrecondition(format!("reading local addresses: {e}")))?;
                address::choose(&addrs).map_err(Error::FailedPrecondition)
            }
        }
    }
}

/// The daemon's service.
#[derive(Debug)]
pub struct TargetService {
    nvmet: Nvmet,
    lio: Lio,
    backing: Backing,
    traddr: Traddr,
    started: Instant,
    registry: Mutex<Registry>,
}

/// A bdev the daemon made, keyed by its canonical URI.
#[derive(Debug)]
struct Entry {
    uri: BdevUri,
    uuid: Uuid,
    geometry: Geometry,
    /// The nvmet namespace it is in.
    claim: Option<Claim>,
    /// Set on the bdev whose ShareBdev made the subsystem.
    share_uri: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    nqn: String,
    nsid: u32,
}

impl Entry {
    fn to_proto(&self, backing: &Backing) -> proto::Bdev {
        proto::Bdev {
            name: self.uri.to_string(),
            uuid: self.uuid.to_string(),
            num_blocks: self.geometry.num_blocks,
            blk_size: self.geometry.blk_size,
            claimed: self.claim.is_some(),
            claimed_by: match &self.claim {
                Some(_) if self.is_iscsi() => CLAIMED_BY_ISCSI.into(),
                Some(_) => CLAIMED_BY.into(),
                None => String::new(),
            },
            state: if backing.present(&self.uri) { STATE_ONLINE } else { STATE_FAULTED }.into(),
            share_uri: self.share_uri.clone().unwrap_or_default(),
        }
    }

    /// The subsystem this bdev made by ShareBdev.
    fn shared_nqn(&self) -> Option<&str> {
        self.share_uri.as_ref().filter(|_| !self.is_iscsi()).and(self.claim.as_ref()).map(|c| c.nqn.as_str())
    }

    /// Shared over iSCSI: the claim names the target IQN and LUN.
    fn is_iscsi(&self) -> bool {
        self.share_uri.as_deref().is_some_and(|u| u.starts_with("iscsi://"))
    }
}

type Registry = BTreeMap<String, Entry>;

impl TargetService {
    pub fn new(nvmet: Nvmet, backing: Backing, traddr: Traddr) -> Self {
        let lio = Lio::new(super::configfs::ConfigFs::kernel(LIO_CONFIGFS));
        TargetService { nvmet, lio, backing, traddr, started: Instant::now(), registry: Mutex::new(Registry::new()) }
    }

    /// Replaces the LIO tree (another root, or an emulation for tests).
    pub fn with_lio(mut self, lio: Lio) -> Self {
        self.lio = lio;
        self
    }

    pub fn lio(&self) -> &Lio {
        &self.lio
    }

    pub fn nvmet(&self) -> &Nvmet {
        &self.nvmet
    }

    /// What is in configfs and the malloc directory before this daemon made anything: an
    /// earlier daemon's shares, or someone else's. Reported, never removed.
    pub fn leftovers(&self) -> Result<String> {
        let mut report = self.nvmet.state()?.to_string();
        for t in self.lio.targets()? {
            report.push_str(&format!("iSCSI target {} portals [{}] luns {}\n", t.iqn, t.portals.join(", "), t.luns.len()));
        }
        for b in self.lio.backstores()? {
            report.push_str(&format!("LIO backstore {}\n", b.display()));
        }
        for file in self.backing.malloc_files() {
            report.push_str(&format!("malloc file {}\n", file.display()));
        }
        Ok(report)
    }

    async fn health(&self) -> Result<proto::HealthReply> {
        Ok(proto::HealthReply {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            nvmet: self.nvmet.available(),
            lio: self.lio.available(),
        })
    }

    async fn list_bdevs(&self) -> Result<proto::ListBdevsReply> {
        let registry = self.registry.lock().await;
        Ok(proto::ListBdevsReply { bdevs: registry.values().map(|e| e.to_proto(&self.backing)).collect() })
    }

    async fn create_bdev(&self, req: proto::CreateBdevRequest) -> Result<proto::Bdev> {
        let uri = BdevUri::parse(&req.uri)?;
        let name = uri.to_string();
        let mut registry = self.registry.lock().await;
        if registry.contains_key(&name) {
            return Err(Error::AlreadyExists(format!("bdev {name} exists already")));
        }
        if let Some(other) = registry.values().find(|e| e.uri.backing_key() == uri.backing_key()) {
            return Err(Error::AlreadyExists(format!("bdev {name} would use the same backing as existing bdev {}", other.uri)));
        }
        let geometry = self.backing.open(&uri)?;
        let entry = Entry { uuid: Uuid::new_v5(&UUID_NAMESPACE, name.as_bytes()), uri, geometry, claim: None, share_uri: None };
        let bdev = entry.to_proto(&self.backing);
        registry.insert(name, entry);
        Ok(bdev)
    }

    async fn destroy_bdev(&self, req: proto::DestroyBdevRequest) -> Result<proto::DestroyBdevReply> {
        let name = bdev_name(&req.name)?;
        let mut registry = self.registry.lock().await;
        let entry = lookup(&registry, &name)?;
        require_unclaimed(entry)?;
        self.backing.release(&entry.uri)?;
        registry.remove(&name);
        Ok(proto::DestroyBdevReply {})
    }

    async fn share_bdev(&self, req: proto::ShareBdevRequest) -> Result<proto::ShareBdevReply> {
        let name = bdev_name(&req.name)?;
        match proto::ShareProtocol::try_from(req.protocol) {
            Ok(proto::ShareProtocol::Unspecified | proto::ShareProtocol::Nvmf) => {
                if let Some(iqn) = &req.iqn {
                    return Err(Error::InvalidArgument(format!("iqn {} is for SHARE_PROTOCOL_ISCSI; NVMF takes nqn", quoted(iqn))));
                }
            }
            Ok(proto::ShareProtocol::Iscsi) => return self.share_iscsi(&name, &req).await,
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "share protocol {} is not supported; use SHARE_PROTOCOL_NVMF or SHARE_PROTOCOL_ISCSI",
                    req.protocol
                )))
            }
        }
        if let Some(nqn) = &req.nqn {
            nvmet::validate_nqn("subsystem NQN", nqn)?;
        }
        let port = validate_port(req.port, DEFAULT_NVMF_PORT)?;
        for (i, host) in req.allowed_hosts.iter().enumerate() {
            nvmet::validate_nqn("allowed host NQN", host)?;
            if req.allowed_hosts[..i].contains(host) {
                return Err(Error::InvalidArgument(format!("allowed host NQN {} is listed twice", quoted(host))));
            }
        }

        let mut registry = self.registry.lock().await;
        let entry = lookup(&registry, &name)?;
        if let Some(uri) = &entry.share_uri {
            return Err(Error::AlreadyExists(format!("bdev {name} is already shared as {uri}")));
        }
        require_unclaimed(entry)?;
        self.require_present(entry)?;
        let nqn = req.nqn.clone().unwrap_or_else(|| format!("{NQN_PREFIX}{}", entry.uuid));
        if self.nvmet.subsystem_exists(&nqn) {
            return Err(Error::AlreadyExists(format!("subsystem {nqn} exists already")));
        }
        let traddr = self.traddr.resolve()?;
        let spec = ShareSpec {
            nqn: nqn.clone(),
            allowed_hosts: req.allowed_hosts.clone(),
            namespace: self.namespace_spec(entry, 1),
            traddr,
            trsvcid: port,
        };
        let port_id = self.nvmet.share(&spec)?;
        let uri = format!("nvmf://{traddr}:{port}/{nqn}");
        info!(bdev = %name, %uri, port_id, "shared");
        let entry = registry.get_mut(&name).ok_or_else(|| Error::Internal(format!("bdev {name} vanished from the registry")))?;
        entry.claim = Some(Claim { nqn: nqn.clone(), nsid: 1 });
        entry.share_uri = Some(uri.clone());
        Ok(proto::ShareBdevReply { uri, nqn, iqn: String::new() })
    }

    /// ShareBdev over iSCSI: one LIO target per bdev, the bdev as LUN 0.
    async fn share_iscsi(&self, name: &str, req: &proto::ShareBdevRequest) -> Result<proto::ShareBdevReply> {
        if let Some(nqn) = &req.nqn {
            return Err(Error::InvalidArgument(format!("nqn {} is for SHARE_PROTOCOL_NVMF; ISCSI takes iqn", quoted(nqn))));
        }
        if !req.allowed_hosts.is_empty() {
            return Err(Error::InvalidArgument("allowed_hosts is NVMF only; an iSCSI share admits any initiator".into()));
        }
        if let Some(iqn) = &req.iqn {
            lio::validate_iqn("target IQN", iqn)?;
        }
        let port = validate_port(req.port, lio::DEFAULT_ISCSI_PORT)?;
        let mut registry = self.registry.lock().await;
        let entry = lookup(&registry, name)?;
        if let Some(uri) = &entry.share_uri {
            return Err(Error::AlreadyExists(format!("bdev {name} is already shared as {uri}")));
        }
        require_unclaimed(entry)?;
        self.require_present(entry)?;
        if Backing::buffered_io(&entry.uri) {
            return Err(Error::FailedPrecondition(format!("bdev {name} is a malloc file; iSCSI shares serve block devices (aio://) only")));
        }
        let iqn = req.iqn.clone().unwrap_or_else(|| format!("{IQN_PREFIX}{}", entry.uuid));
        if self.lio.target_exists(&iqn) {
            return Err(Error::AlreadyExists(format!("iSCSI target {iqn} exists already")));
        }
        let addr = self.traddr.resolve()?;
        self.lio.share(&IscsiShareSpec { iqn: iqn.clone(), device_path: self.backing.device_path(&entry.uri), addr, port })?;
        let uri = format!("iscsi://{addr}:{port}/{iqn}/0");
        info!(bdev = %name, %uri, "shared over iSCSI");
        let entry = registry.get_mut(name).ok_or_else(|| Error::Internal(format!("bdev {name} vanished from the registry")))?;
        entry.claim = Some(Claim { nqn: iqn.clone(), nsid: 0 });
        entry.share_uri = Some(uri.clone());
        Ok(proto::ShareBdevReply { uri, nqn: String::new(), iqn })
    }

    async fn unshare_bdev(&self, req: proto::UnshareBdevRequest) -> Result<proto::UnshareBdevReply> {
        let name = bdev_name(&req.name)?;
        let mut registry = self.registry.lock().await;
        let entry = lookup(&registry, &name)?;
        if entry.is_iscsi() {
            let iqn = entry.claim.as_ref().map(|c| c.nqn.clone()).unwrap_or_default();
            match self.lio.unshare(&iqn) {
                Ok(()) => {}
                // Removed behind the daemon's back (or by the hot-remove path): done already.
                Err(Error::NotFound(why)) => warn!("unsharing {name}: {why}; forgetting the share"),
                Err(err) => return Err(err),
            }
            let entry = registry.get_mut(&name).ok_or_else(|| Error::Internal(format!("bdev {name} vanished from the registry")))?;
            entry.claim = None;
            entry.share_uri = None;
            return Ok(proto::UnshareBdevReply {});
        }
        let Some(nqn) = entry.shared_nqn().map(str::to_string) else {
            return Err(Error::FailedPrecondition(match &entry.claim {
                Some(claim) => format!("bdev {name} is not shared itself but is {}; use RemoveNamespace", describe(claim)),
                None => format!("bdev {name} is not shared"),
            }));
        };
        match self.nvmet.unshare(&nqn) {
            Ok(()) => {}
            // Removed behind the daemon's back: what the caller wanted is done.
            Err(Error::NotFound(why)) => warn!("unsharing {name}: {why}; forgetting the share"),
            Err(err) => return Err(err),
        }
        // Every namespace of the subsystem went with it, hot-added ones too.
        for entry in registry.values_mut().filter(|e| e.claim.as_ref().is_some_and(|c| c.nqn == nqn)) {
            entry.claim = None;
            entry.share_uri = None;
        }
        Ok(proto::UnshareBdevReply {})
    }

    async fn list_subsystems(&self) -> Result<proto::ListSubsystemsReply> {
        let registry = self.registry.lock().await;
        let state = self.nvmet.state()?;
        let holder = |claim: Claim| registry.values().find(|e| e.claim.as_ref() == Some(&claim)).map(|e| e.uri.to_string());
        let subsystems = state
            .subsystems
            .iter()
            .map(|s| proto::Subsystem {
                nqn: s.nqn.clone(),
                namespaces: s
                    .namespaces
                    .iter()
                    .map(|ns| proto::Namespace {
                        nsid: ns.nsid,
                        bdev: holder(Claim { nqn: s.nqn.clone(), nsid: ns.nsid }).unwrap_or_default(),
                        device_path: ns.device_path.clone(),
                        enabled: ns.enabled,
                        device_uuid: ns.device_uuid.clone(),
                    })
                    .collect(),
                ports: state.ports_of(&s.nqn).map(port_to_proto).collect(),
                allowed_hosts: s.allowed_hosts.clone(),
                allow_any_host: s.allow_any_host,
                shared_bdev: registry
                    .values()
                    .find(|e| e.shared_nqn() == Some(s.nqn.as_str()))
                    .map(|e| e.uri.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(proto::ListSubsystemsReply { subsystems, ports: state.ports.iter().map(port_to_proto).collect(), hosts: state.hosts.clone() })
    }

    async fn add_namespace(&self, req: proto::AddNamespaceRequest) -> Result<proto::Namespace> {
        nvmet::validate_nqn("subsystem NQN", &req.nqn)?;
        let name = bdev_name(&req.bdev)?;
        if let Some(nsid) = req.nsid {
            validate_nsid(nsid)?;
        }
        let mut registry = self.registry.lock().await;
        self.require_own_subsystem(&registry, &req.nqn)?;
        let entry = lookup(&registry, &name)?;
        require_unclaimed(entry)?;
        self.require_present(entry)?;
        let nsid = match req.nsid {
            Some(nsid) if self.nvmet.namespace_exists(&req.nqn, nsid) => {
                return Err(Error::AlreadyExists(format!("namespace {nsid} of {} exists already", req.nqn)));
            }
            Some(nsid) => nsid,
            None => self.nvmet.free_nsid(&req.nqn)?,
        };
        let spec = self.namespace_spec(entry, nsid);
        self.nvmet.add_namespace(&req.nqn, &spec)?;
        let entry = registry.get_mut(&name).ok_or_else(|| Error::Internal(format!("bdev {name} vanished from the registry")))?;
        entry.claim = Some(Claim { nqn: req.nqn.clone(), nsid });
        Ok(proto::Namespace {
            nsid,
            bdev: name,
            device_path: spec.device_path.to_string_lossy().into_owned(),
            enabled: true,
            device_uuid: spec.device_uuid.to_string(),
        })
    }

    async fn remove_namespace(&self, req: proto::RemoveNamespaceRequest) -> Result<proto::RemoveNamespaceReply> {
        nvmet::validate_nqn("subsystem NQN", &req.nqn)?;
        validate_nsid(req.nsid)?;
        let mut registry = self.registry.lock().await;
        self.require_own_subsystem(&registry, &req.nqn)?;
        let claim = Claim { nqn: req.nqn.clone(), nsid: req.nsid };
        let holder = registry.values_mut().find(|e| e.claim.as_ref() == Some(&claim));
        if let Some(entry) = &holder {
            if entry.share_uri.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {} of {} is the shared bdev {} itself; use UnshareBdev",
                    req.nsid, req.nqn, entry.uri
                )));
            }
        }
        if !self.nvmet.namespace_exists(&req.nqn, req.nsid) {
            return Err(Error::NotFound(format!("namespace {} of {} not found", req.nsid, req.nqn)));
        }
        self.nvmet.remove_namespace(&req.nqn, req.nsid)?;
        if let Some(entry) = holder {
            entry.claim = None;
        }
        Ok(proto::RemoveNamespaceReply {})
    }

    /// Namespaces are added only to subsystems this daemon shared: others it does not own.
    fn require_own_subsystem(&self, registry: &Registry, nqn: &str) -> Result<()> {
        if registry.values().any(|e| e.shared_nqn() == Some(nqn)) {
            Ok(())
        } else if self.nvmet.subsystem_exists(nqn) {
            Err(Error::FailedPrecondition(format!("subsystem {nqn} was not made by this daemon")))
        } else {
            Err(Error::NotFound(format!("subsystem {nqn} not found")))
        }
    }

    /// A vanished device cannot be put into a namespace.
    fn require_present(&self, entry: &Entry) -> Result<()> {
        if self.backing.present(&entry.uri) {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "bdev {} is {STATE_FAULTED}: {} is gone",
            entry.uri,
            self.backing.device_path(&entry.uri).display()
        )))
    }

    fn namespace_spec(&self, entry: &Entry, nsid: u32) -> NamespaceSpec {
        NamespaceSpec {
            nsid,
            device_path: self.backing.device_path(&entry.uri),
            device_uuid: entry.uuid,
            buffered_io: Backing::buffered_io(&entry.uri),
        }
    }
}

fn port_to_proto(p: &nvmet::PortState) -> proto::Port {
    proto::Port {
        id: p.id.into(),
        trtype: p.trtype.clone(),
        adrfam: p.adrfam.clone(),
        traddr: p.traddr.clone(),
        trsvcid: p.trsvcid.parse().unwrap_or_default(),
    }
}

/// A bdev name is its URI; lookups go by the canonical form.
fn bdev_name(name: &str) -> Result<String> {
    Ok(BdevUri::parse(name)?.to_string())
}

fn lookup<'r>(registry: &'r Registry, name: &str) -> Result<&'r Entry> {
    registry.get(name).ok_or_else(|| Error::NotFound(format!("bdev {name} not found")))
}

/// A TCP port from a request, or `default` when unset.
fn validate_port(port: Option<u32>, default: u16) -> Result<u16> {
    match port {
        None => Ok(default),
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::InvalidArgument(format!("port {port} is out of range 1..=65535"))),
    }
}

fn validate_nsid(nsid: u32) -> Result<()> {
    if (1..=MAX_NSID).contains(&nsid) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!("namespace id {nsid} is out of range 1..={MAX_NSID}")))
}

fn describe(claim: &Claim) -> String {
    format!("namespace {} of {}", claim.nsid, claim.nqn)
}

/// A bdev goes into one namespace at a time, and is not destroyed while in one.
fn require_unclaimed(entry: &Entry) -> Result<()> {
    let Some(claim) = &entry.claim else { return Ok(()) };
    let hint = if entry.share_uri.is_some() { "unshare it first" } else { "remove the namespace first" };
    let what = if entry.is_iscsi() { format!("LUN {} of {}", claim.nsid, claim.nqn) } else { describe(claim) };
    Err(Error::FailedPrecondition(format!("bdev {} is in use as {what}; {hint}", entry.uri)))
}

/// Logs the request, runs it, logs the outcome, and turns errors into statuses.
async fn serve<R: std::fmt::Debug, T, F: Future<Output = Result<T>>>(
    rpc: &'static str,
    request: Request<R>,
    work: impl FnOnce(R) -> F,
) -> Result<Response<T>, Status> {
    let request = request.into_inner();
    info!(rpc, ?request, "request");
    match work(request).await {
        Ok(reply) => {
            info!(rpc, "ok");
            Ok(Response::new(reply))
        }
        Err(err) => {
            warn!(rpc, code = ?err.code(), "{err}");
            Err(err.into())
        }
    }
}

#[tonic::async_trait]
impl Target for TargetService {
    async fn health(&self, req: Request<proto::HealthRequest>) -> Result<Response<proto::HealthReply>, Status> {
        serve("Health", req, |_| TargetService::health(self)).await
    }

    async fn list_bdevs(&self, req: Request<proto::ListBdevsRequest>) -> Result<Response<proto::ListBdevsReply>, Status> {
        serve("ListBdevs", req, |_| TargetService::list_bdevs(self)).await
    }

    async fn create_bdev(&self, req: Request<proto::CreateBdevRequest>) -> Result<Response<proto::Bdev>, Status> {
        serve("CreateBdev", req, |req| TargetService::create_bdev(self, req)).await
    }

    async fn destroy_bdev(&self, req: Request<proto::DestroyBdevRequest>) -> Result<Response<proto::DestroyBdevReply>, Status> {
        serve("DestroyBdev", req, |req| TargetService::destroy_bdev(self, req)).await
    }

    async fn share_bdev(&self, req: Request<proto::ShareBdevRequest>) -> Result<Response<proto::ShareBdevReply>, Status> {
        serve("ShareBdev", req, |req| TargetService::share_bdev(self, req)).await
    }

    async fn unshare_bdev(&self, req: Request<proto::UnshareBdevRequest>) -> Result<Response<proto::UnshareBdevReply>, Status> {
        serve("UnshareBdev", req, |req| TargetService::unshare_bdev(self, req)).await
    }

    async fn list_subsystems(&self, req: Request<proto::ListSubsystemsRequest>) -> Result<Response<proto::ListSubsystemsReply>, Status> {
        serve("ListSubsystems", req, |_| TargetService::list_subsystems(self)).await
    }

    async fn add_namespace(&self, req: Request<proto::AddNamespaceRequest>) -> Result<Response<proto::Namespace>, Status> {
        serve("AddNamespace", req, |req| TargetService::add_namespace(self, req)).await
    }

    async fn remove_namespace(&self, req: Request<proto::RemoveNamespaceRequest>) -> Result<Response<proto::RemoveNamespaceReply>, Status> {
        serve("RemoveNamespace", req, |req| TargetService::remove_namespace(self, req)).await
    }
}
