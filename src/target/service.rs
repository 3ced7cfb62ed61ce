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
use super::limits::{self, Deadline, MAX_ALLOWED_HOSTS, MAX_NAME_LEN, MAX_NQN_LEN};
use super::lio::{self, IscsiShareSpec, Lio, MAX_IQN_LEN};
use super::nvmet::{self, NamespaceSpec, Nvmet, ShareSpec, MAX_NSID};
use super::proto::{self, target_server::Target};
use super::split;
use super::uri::{quoted, BdevUri};

/// What `claimed_by` says while a bdev is in an nvmet namespace (as mayastor's listing did).
pub const CLAIMED_BY: &str = "NVMe-oF Target";
/// What `claimed_by` says of a split disk (SPDK's split module claims its base as "split").
pub const CLAIMED_BY_SPLIT: &str = "split";
/// What `claimed_by` says while a bdev is LUN 0 of an iSCSI target.
pub const CLAIMED_BY_ISCSI: &str = "iSCSI Target";
/// iSCSI target IQNs default to this prefix and the bdev's uuid.
pub const IQN_PREFIX: &str = "iqn.2019-05.io.vmcheck:";
/// Where LIO's configfs tree is.
pub const LIO_CONFIGFS: &str = "/sys/kernel/config/target";
pub const STATE_ONLINE: &str = "online";
pub const STATE_FAULTED: &str = "faulted";
pub const DEFAULT_NVMF_PORT: u16 = 4420;
/// How often a split looks for the kernel's partitions.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// Characters of a request shown in the log.
const MAX_LOGGED_REQUEST: usize = 600;
/// Subsystem NQNs default to this prefix and the bdev's uuid.
pub const NQN_PREFIX: &str = "nqn.2019-05.io.vmcheck:";

/// Bdev uuids are v5 of the canonical URI in this namespace: the same bdev gets the same uuid
/// (and so the same default NQN) across daemon restarts.
const UUID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_7a8e_4d1b_4c2e_9a3f_6b8d_2e1c_0a47);

/// Where share URIs point and nvmet ports bind.
#[derive(Debug, Clone, Copy)]
pub enum Traddr {
    Fixed(Ipv4Addr),
    /// Looked up at each share (see `address::choose`): the NIC may come up after the daemon.
    Detect,
}

impl Traddr {
    fn resolve(self) -> Result<Ipv4Addr> {
        match self {
            Traddr::Fixed(addr) => Ok(addr),
            Traddr::Detect => {
                let addrs = address::local_ipv4().map_err(|e| {
                    Error::FailedPrecondition(format!("reading local addresses: {e}"))
                })?;
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
    /// The nvmet namespace it is in, or the iSCSI target it is LUN 0 of (the IQN, nsid 0).
    claim: Option<Claim>,
    /// Its split bdevs, by SplitBdev: while split, the disk itself is claimed by them.
    splits: Vec<String>,
    /// The disk it is a split of.
    split_of: Option<String>,
    /// Its device vanished and the daemon withdrew it from its namespace: faulted for good,
    /// even if a device of the same name comes back (it may be another disk).
    removed: bool,
}

/// A subsystem this daemon made: by ShareBdev (with the bdev as namespace 1) or by
/// CreateSubsystem (empty, namespaces come and go by AddNamespace/RemoveNamespace); or an
/// iSCSI target made by ShareBdev ISCSI, keyed by its IQN (the bdev as LUN 0, not in nvmet).
#[derive(Debug, Clone)]
struct Owned {
    /// nvmf://addr:port/nqn, or iscsi://addr:port/iqn/0
    uri: String,
    /// The bdev whose ShareBdev made it.
    shared_bdev: Option<String>,
}

/// What the daemon made: bdevs by name, subsystems by NQN.
#[derive(Debug, Default)]
struct Registry {
    bdevs: BTreeMap<String, Entry>,
    subsystems: BTreeMap<String, Owned>,
}

impl Entry {
    fn new(uri: BdevUri, geometry: Geometry) -> Self {
        let uuid = Uuid::new_v5(&UUID_NAMESPACE, uri.to_string().as_bytes());
        Entry {
            uri,
            uuid,
            geometry,
            claim: None,
            splits: Vec::new(),
            split_of: None,
            removed: false,
        }
    }
}

impl Owned {
    fn is_iscsi(&self) -> bool {
        self.uri.starts_with(ISCSI_SCHEME)
    }
}

/// The scheme of an iSCSI share's URI.
const ISCSI_SCHEME: &str = "iscsi://";

impl Registry {
    /// Whether `claim` is LUN 0 of an iSCSI target this daemon made.
    fn is_iscsi_claim(&self, claim: &Claim) -> bool {
        self.subsystems.get(&claim.nqn).is_some_and(Owned::is_iscsi)
    }

    /// How a claim reads in messages: a namespace of a subsystem, or a LUN of an iSCSI target.
    fn describe(&self, claim: &Claim) -> String {
        if self.is_iscsi_claim(claim) {
            format!("LUN {} of {}", claim.nsid, claim.nqn)
        } else {
            describe(claim)
        }
    }

    /// The subsystem a bdev made by ShareBdev, and its URI.
    fn share_of(&self, bdev: &str) -> Option<(&str, &Owned)> {
        self.subsystems
            .iter()
            .find(|(_, o)| o.shared_bdev.as_deref() == Some(bdev))
            .map(|(nqn, o)| (nqn.as_str(), o))
    }

    fn bdev_mut(&mut self, name: &str) -> Result<&mut Entry> {
        self.bdevs
            .get_mut(name)
            .ok_or_else(|| Error::Internal(format!("bdev {name} vanished from the registry")))
    }

    /// Every namespace of a subsystem went with it: their bdevs are free again.
    fn release_claims_of(&mut self, nqn: &str) {
        for entry in
            self.bdevs.values_mut().filter(|e| e.claim.as_ref().is_some_and(|c| c.nqn == nqn))
        {
            entry.claim = None;
        }
    }

    fn to_proto(&self, entry: &Entry, backing: &Backing) -> proto::Bdev {
        let name = entry.uri.to_string();
        proto::Bdev {
            uuid: entry.uuid.to_string(),
            num_blocks: entry.geometry.num_blocks,
            blk_size: entry.geometry.blk_size,
            claimed: entry.claim.is_some() || !entry.splits.is_empty(),
            claimed_by: match (&entry.claim, entry.splits.is_empty()) {
                (Some(claim), _) if self.is_iscsi_claim(claim) => CLAIMED_BY_ISCSI.into(),
                (Some(_), _) => CLAIMED_BY.into(),
                (None, false) => CLAIMED_BY_SPLIT.into(),
                (None, true) => String::new(),
            },
            split_base: entry.split_of.clone().unwrap_or_default(),
            state: if !entry.removed && backing.present(&entry.uri) {
                STATE_ONLINE
            } else {
                STATE_FAULTED
            }
            .into(),
            share_uri: self.share_of(&name).map(|(_, o)| o.uri.clone()).unwrap_or_default(),
            name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    nqn: String,
    nsid: u32,
}

impl TargetService {
    pub fn new(nvmet: Nvmet, backing: Backing, traddr: Traddr) -> Self {
        let lio = Lio::new(super::configfs::ConfigFs::kernel(LIO_CONFIGFS));
        TargetService {
            nvmet,
            lio,
            backing,
            traddr,
            started: Instant::now(),
            registry: Mutex::new(Registry::default()),
        }
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

    #[cfg(test)]
    pub(crate) fn backing_for_tests(&self) -> &Backing {
        &self.backing
    }

    /// What is in configfs and the malloc directory before this daemon made anything: an
    /// earlier daemon's shares, or someone else's. Reported, never removed.
    pub fn leftovers(&self) -> Result<String> {
        let mut report = self.nvmet.state()?.to_string();
        for t in self.lio.targets()? {
            report.push_str(&format!(
                "iSCSI target {} portals [{}] luns {}\n",
                t.iqn,
                t.portals.join(", "),
                t.luns.len()
            ));
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

    /// The registry lock, waited for no longer than the request's deadline.
    async fn lock(&self, deadline: &Deadline) -> Result<tokio::sync::MutexGuard<'_, Registry>> {
        let Some(at) = deadline.instant() else { return Ok(self.registry.lock().await) };
        match tokio::time::timeout_at(at.into(), self.registry.lock()).await {
            Ok(guard) => Ok(guard),
            Err(_) => Err(deadline.exceeded("while waiting for another request to finish")),
        }
    }

    /// Tests: hold the lock as a slow request would.
    #[cfg(test)]
    pub(crate) async fn hold_lock_for_tests(&self) -> impl Sized + '_ {
        self.registry.lock().await
    }

    async fn list_bdevs(&self) -> Result<proto::ListBdevsReply> {
        let registry = self.registry.lock().await;
        Ok(proto::ListBdevsReply {
            bdevs: registry.bdevs.values().map(|e| registry.to_proto(e, &self.backing)).collect(),
        })
    }

    /// The target's disks with serials (sysfs, no lock: nothing of the registry is read).
    fn list_disks(&self) -> proto::ListDisksReply {
        let disks = self.backing.disks().into_iter();
        proto::ListDisksReply {
            disks: disks
                .map(|(name, serial, size_bytes)| proto::Disk { name, serial, size_bytes })
                .collect(),
        }
    }

    async fn create_bdev(
        &self,
        req: proto::CreateBdevRequest,
        deadline: Deadline,
    ) -> Result<proto::Bdev> {
        limits::check_len("uri", &req.uri, MAX_NAME_LEN)?;
        let uri = BdevUri::parse(&req.uri)?;
        let name = uri.to_string();
        let mut registry = self.lock(&deadline).await?;
        deadline.check("before the bdev was opened")?;
        if registry.bdevs.contains_key(&name) {
            return Err(Error::AlreadyExists(format!("bdev {name} exists already")));
        }
        if let Some(other) =
            registry.bdevs.values().find(|e| e.uri.backing_key() == uri.backing_key())
        {
            return Err(Error::AlreadyExists(format!(
                "bdev {name} would use the same backing as existing bdev {}",
                other.uri
            )));
        }
        let geometry = self.backing.open(&uri)?;
        if let Err(err) = deadline.check("while the bdev was opened") {
            self.backing.release(&uri)?;
            return Err(err);
        }
        let entry = Entry::new(uri, geometry);
        let bdev = registry.to_proto(&entry, &self.backing);
        registry.bdevs.insert(name, entry);
        Ok(bdev)
    }

    async fn destroy_bdev(
        &self,
        req: proto::DestroyBdevRequest,
        deadline: Deadline,
    ) -> Result<proto::DestroyBdevReply> {
        let name = bdev_name("name", &req.name)?;
        let mut registry = self.lock(&deadline).await?;
        deadline.check("before the destroy started")?;
        let entry = lookup(&registry, &name)?;
        if let Some(base) = &entry.split_of {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is a split of {base}; use UnsplitBdev on {base}"
            )));
        }
        require_unclaimed(&registry, entry)?;
        self.backing.release(&entry.uri)?;
        registry.bdevs.remove(&name);
        Ok(proto::DestroyBdevReply {})
    }

    async fn share_bdev(
        &self,
        req: proto::ShareBdevRequest,
        deadline: Deadline,
    ) -> Result<proto::ShareBdevReply> {
        let name = bdev_name("name", &req.name)?;
        if let Some(nqn) = &req.nqn {
            limits::check_len("nqn", nqn, MAX_NQN_LEN)?;
        }
        limits::check_list("allowed_hosts", &req.allowed_hosts, MAX_ALLOWED_HOSTS, MAX_NQN_LEN)?;
        if let Some(iqn) = &req.iqn {
            limits::check_len("iqn", iqn, MAX_IQN_LEN)?;
        }
        match proto::ShareProtocol::try_from(req.protocol) {
            Ok(proto::ShareProtocol::Unspecified | proto::ShareProtocol::Nvmf) => {
                if let Some(iqn) = &req.iqn {
                    return Err(Error::InvalidArgument(format!("iqn {} is for SHARE_PROTOCOL_ISCSI; NVMF takes nqn", quoted(iqn))));
                }
            }
            Ok(proto::ShareProtocol::Iscsi) => return self.share_iscsi(name, &req, deadline).await,
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
        validate_hosts(&req.allowed_hosts)?;

        let mut registry = self.lock(&deadline).await?;
        let entry = lookup(&registry, &name)?;
        if let Some((_, owned)) = registry.share_of(&name) {
            return Err(Error::AlreadyExists(format!(
                "bdev {name} is already shared as {}",
                owned.uri
            )));
        }
        require_unclaimed(&registry, entry)?;
        self.require_present(entry)?;
        let nqn = req.nqn.clone().unwrap_or_else(|| format!("{NQN_PREFIX}{}", entry.uuid));
        if self.nvmet.subsystem_exists(&nqn) || registry.subsystems.contains_key(&nqn) {
            return Err(Error::AlreadyExists(format!("subsystem {nqn} exists already")));
        }
        let traddr = self.traddr.resolve()?;
        let spec = ShareSpec {
            nqn: nqn.clone(),
            allowed_hosts: req.allowed_hosts.clone(),
            namespace: Some(self.namespace_spec(entry, 1)),
            traddr,
            trsvcid: port,
        };
        let port_id = self.nvmet.share(&spec, &deadline)?;
        let uri = format!("nvmf://{traddr}:{port}/{nqn}");
        info!(bdev = %name, %uri, port_id, "shared");
        registry.bdev_mut(&name)?.claim = Some(Claim { nqn: nqn.clone(), nsid: 1 });
        registry
            .subsystems
            .insert(nqn.clone(), Owned { uri: uri.clone(), shared_bdev: Some(name) });
        Ok(proto::ShareBdevReply { uri, nqn, iqn: String::new() })
    }

    /// ShareBdev over iSCSI: one LIO target per bdev, the bdev as LUN 0. In the registry it is
    /// a subsystem keyed by its IQN, and the bdev's claim is (IQN, 0).
    async fn share_iscsi(
        &self,
        name: String,
        req: &proto::ShareBdevRequest,
        deadline: Deadline,
    ) -> Result<proto::ShareBdevReply> {
        if let Some(nqn) = &req.nqn {
            return Err(Error::InvalidArgument(format!(
                "nqn {} is for SHARE_PROTOCOL_NVMF; ISCSI takes iqn",
                quoted(nqn)
            )));
        }
        if !req.allowed_hosts.is_empty() {
            return Err(Error::InvalidArgument(
                "allowed_hosts is NVMF only; an iSCSI share admits any initiator".into(),
            ));
        }
        if let Some(iqn) = &req.iqn {
            lio::validate_iqn("target IQN", iqn)?;
        }
        let port = validate_port(req.port, lio::DEFAULT_ISCSI_PORT)?;
        let mut registry = self.lock(&deadline).await?;
        let entry = lookup(&registry, &name)?;
        if let Some((_, owned)) = registry.share_of(&name) {
            return Err(Error::AlreadyExists(format!(
                "bdev {name} is already shared as {}",
                owned.uri
            )));
        }
        require_unclaimed(&registry, entry)?;
        self.require_present(entry)?;
        if Backing::buffered_io(&entry.uri) {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is a malloc file; iSCSI shares serve block devices (aio://) only"
            )));
        }
        let iqn = req.iqn.clone().unwrap_or_else(|| format!("{IQN_PREFIX}{}", entry.uuid));
        if self.lio.target_exists(&iqn) || registry.subsystems.contains_key(&iqn) {
            return Err(Error::AlreadyExists(format!("iSCSI target {iqn} exists already")));
        }
        let addr = self.traddr.resolve()?;
        let spec = IscsiShareSpec {
            iqn: iqn.clone(),
            device_path: self.backing.device_path(&entry.uri),
            addr,
            port,
        };
        self.lio.share(&spec, &deadline)?;
        let uri = format!("{ISCSI_SCHEME}{addr}:{port}/{iqn}/0");
        info!(bdev = %name, %uri, "shared over iSCSI");
        registry.bdev_mut(&name)?.claim = Some(Claim { nqn: iqn.clone(), nsid: 0 });
        registry
            .subsystems
            .insert(iqn.clone(), Owned { uri: uri.clone(), shared_bdev: Some(name) });
        Ok(proto::ShareBdevReply { uri, nqn: String::new(), iqn })
    }

    async fn unshare_bdev(
        &self,
        req: proto::UnshareBdevRequest,
        deadline: Deadline,
    ) -> Result<proto::UnshareBdevReply> {
        let name = bdev_name("name", &req.name)?;
        let mut registry = self.lock(&deadline).await?;
        deadline.check("before the unshare started")?;
        let entry = lookup(&registry, &name)?;
        let Some((nqn, iscsi)) =
            registry.share_of(&name).map(|(nqn, o)| (nqn.to_string(), o.is_iscsi()))
        else {
            return Err(Error::FailedPrecondition(match &entry.claim {
                Some(claim) => format!(
                    "bdev {name} is not shared itself but is {}; use RemoveNamespace",
                    describe(claim)
                ),
                None => format!("bdev {name} is not shared"),
            }));
        };
        let removed = if iscsi { self.lio.unshare(&nqn) } else { self.nvmet.unshare(&nqn) };
        match removed {
            Ok(()) => {}
            // Removed behind the daemon's back (or, for iSCSI, with its LUN by the hot-remove):
            // what the caller wanted is done.
            Err(Error::NotFound(why)) => warn!("unsharing {name}: {why}; forgetting the share"),
            Err(err) => return Err(err),
        }
        // Every namespace of the subsystem went with it, hot-added ones too.
        registry.release_claims_of(&nqn);
        registry.subsystems.remove(&nqn);
        Ok(proto::UnshareBdevReply {})
    }

    async fn create_subsystem(
        &self,
        req: proto::CreateSubsystemRequest,
        deadline: Deadline,
    ) -> Result<proto::CreateSubsystemReply> {
        limits::check_len("nqn", &req.nqn, MAX_NQN_LEN)?;
        limits::check_list("allowed_hosts", &req.allowed_hosts, MAX_ALLOWED_HOSTS, MAX_NQN_LEN)?;
        nvmet::validate_nqn("subsystem NQN", &req.nqn)?;
        let port = validate_port(req.port, DEFAULT_NVMF_PORT)?;
        validate_hosts(&req.allowed_hosts)?;
        let mut registry = self.lock(&deadline).await?;
        let nqn = req.nqn;
        if self.nvmet.subsystem_exists(&nqn) || registry.subsystems.contains_key(&nqn) {
            return Err(Error::AlreadyExists(format!("subsystem {nqn} exists already")));
        }
        let traddr = self.traddr.resolve()?;
        let spec = ShareSpec {
            nqn: nqn.clone(),
            allowed_hosts: req.allowed_hosts,
            namespace: None,
            traddr,
            trsvcid: port,
        };
        let port_id = self.nvmet.share(&spec, &deadline)?;
        let uri = format!("nvmf://{traddr}:{port}/{nqn}");
        info!(%uri, port_id, "empty subsystem created");
        registry.subsystems.insert(nqn.clone(), Owned { uri: uri.clone(), shared_bdev: None });
        Ok(proto::CreateSubsystemReply { uri, nqn })
    }

    async fn destroy_subsystem(
        &self,
        req: proto::DestroySubsystemRequest,
        deadline: Deadline,
    ) -> Result<proto::DestroySubsystemReply> {
        limits::check_len("nqn", &req.nqn, MAX_NQN_LEN)?;
        // An IQN names an iSCSI share, refused below as made by ShareBdev (or not found).
        if lio::validate_iqn("target IQN", &req.nqn).is_err() {
            nvmet::validate_nqn("subsystem NQN", &req.nqn)?;
        }
        let mut registry = self.lock(&deadline).await?;
        deadline.check("before the subsystem was destroyed")?;
        let owned = self.require_own_subsystem(&registry, &req.nqn)?;
        if let Some(bdev) = &owned.shared_bdev {
            return Err(Error::FailedPrecondition(format!(
                "subsystem {} was made by ShareBdev of {bdev}; use UnshareBdev",
                req.nqn
            )));
        }
        match self.nvmet.unshare(&req.nqn) {
            Ok(()) => {}
            Err(Error::NotFound(why)) => warn!("destroying {}: {why}; forgetting it", req.nqn),
            Err(err) => return Err(err),
        }
        // As SPDK's nvmf_delete_subsystem: attached namespaces go with it.
        registry.release_claims_of(&req.nqn);
        registry.subsystems.remove(&req.nqn);
        Ok(proto::DestroySubsystemReply {})
    }

    pub(crate) async fn split_bdev(
        &self,
        req: proto::SplitBdevRequest,
        deadline: Deadline,
    ) -> Result<proto::SplitBdevReply> {
        let name = bdev_name("name", &req.name)?;
        if !(1..=split::MAX_SPLITS).contains(&req.split_count) {
            return Err(Error::InvalidArgument(format!(
                "split_count {} is out of range 1..={}",
                req.split_count,
                split::MAX_SPLITS
            )));
        }
        let mut registry = self.lock(&deadline).await?;
        let entry = lookup(&registry, &name)?;
        let BdevUri::Aio { dev } = &entry.uri else {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is a malloc bdev; only aio bdevs of whole disks can be split"
            )));
        };
        if let Some(base) = &entry.split_of {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is a split of {base} already; split whole disks"
            )));
        }
        if !entry.splits.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is split already into {}; UnsplitBdev first",
                entry.splits.len()
            )));
        }
        require_unclaimed(&registry, entry)?;
        self.require_present(entry)?;
        if self.backing.is_partition(dev) {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is a partition (/dev/{dev}); split whole disks"
            )));
        }
        // Re-reading the table replaces every partition of the disk: none may be a bdev.
        if let Some(other) = registry
            .bdevs
            .values()
            .find(|e| matches!(&e.uri, BdevUri::Aio { dev: d } if is_partition_of(d, dev)))
        {
            return Err(Error::FailedPrecondition(format!(
                "bdev {} is a partition of {name}; destroy it before splitting",
                other.uri
            )));
        }
        let layout = split::layout(
            dev,
            entry.geometry.num_blocks,
            entry.geometry.blk_size,
            req.split_count,
            req.split_size_mb,
        )?;
        let blk = u64::from(entry.geometry.blk_size);
        let parts: Vec<(String, u64, u64)> = layout
            .parts
            .iter()
            .enumerate()
            .map(|(i, (first, last))| {
                (split::partition_name(dev, i + 1), first * blk, (last + 1 - first) * blk)
            })
            .collect();
        let (dev, uuid, geometry) = (dev.clone(), entry.uuid, entry.geometry);
        deadline.check("before the partition table was written")?;
        self.backing.write_partition_table(&dev, &split::gpt_writes(&layout, uuid), &parts)?;
        // From here a failure wipes the table again, so the disk is whole as before; so does
        // the future being dropped at an await (tonic drops it when the client's timeout passes).
        let guard = WipeOnDrop { backing: &self.backing, dev: &dev, geometry, armed: true };
        let settle = Instant::now() + split::SETTLE;
        while let Some((missing, _, _)) =
            parts.iter().find(|(p, _, _)| !self.backing.partition_ready(p))
        {
            deadline.check("while the kernel made the partitions")?;
            if Instant::now() >= settle {
                return Err(Error::Internal(format!(
                    "the kernel did not show /dev/{missing} within {:?} of re-reading the partition table of /dev/{dev}",
                    split::SETTLE
                )));
            }
            // Wake by the daemon's deadline, which is before tonic's, so the check above runs.
            let mut pause = SETTLE_POLL;
            if let Some(at) = deadline.instant() {
                pause = pause.min(at.saturating_duration_since(Instant::now()));
            }
            tokio::time::sleep(pause).await;
        }
        deadline.check("after the kernel made the partitions")?;
        let mut made = Vec::new();
        for (part, _, _) in &parts {
            let uri = BdevUri::Aio { dev: part.clone() };
            let geometry = self.backing.open(&uri)?;
            let mut entry = Entry::new(uri, geometry);
            entry.split_of = Some(name.clone());
            made.push(entry);
        }
        guard.disarm();
        let names: Vec<String> = made.iter().map(|e| e.uri.to_string()).collect();
        info!(bdev = %name, splits = ?names, "split");
        registry.bdev_mut(&name)?.splits = names;
        let mut bdevs = Vec::new();
        for entry in made {
            bdevs.push(registry.to_proto(&entry, &self.backing));
            registry.bdevs.insert(entry.uri.to_string(), entry);
        }
        Ok(proto::SplitBdevReply { bdevs })
    }

    async fn unsplit_bdev(
        &self,
        req: proto::UnsplitBdevRequest,
        deadline: Deadline,
    ) -> Result<proto::UnsplitBdevReply> {
        let name = bdev_name("name", &req.name)?;
        let mut registry = self.lock(&deadline).await?;
        let entry = lookup(&registry, &name)?;
        if let Some(base) = &entry.split_of {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is a split of {base}; unsplit {base}"
            )));
        }
        if entry.splits.is_empty() {
            return Err(Error::FailedPrecondition(format!("bdev {name} is not split")));
        }
        for split in &entry.splits {
            require_unclaimed(&registry, lookup(&registry, split)?)?;
        }
        deadline.check("before the partition table was wiped")?;
        if let (BdevUri::Aio { dev }, true) = (&entry.uri, self.backing.present(&entry.uri)) {
            let wipe = split::wipe_writes(entry.geometry.num_blocks, entry.geometry.blk_size);
            self.backing.write_partition_table(dev, &wipe, &[])?;
        }
        let splits = std::mem::take(&mut registry.bdev_mut(&name)?.splits);
        for split in &splits {
            registry.bdevs.remove(split);
        }
        info!(bdev = %name, ?splits, "unsplit");
        Ok(proto::UnsplitBdevReply {})
    }

    async fn list_subsystems(&self) -> Result<proto::ListSubsystemsReply> {
        let registry = self.registry.lock().await;
        let state = self.nvmet.state()?;
        let holder = |claim: Claim| {
            registry
                .bdevs
                .values()
                .find(|e| e.claim.as_ref() == Some(&claim))
                .map(|e| e.uri.to_string())
        };
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
                        bdev: holder(Claim { nqn: s.nqn.clone(), nsid: ns.nsid })
                            .unwrap_or_default(),
                        device_path: ns.device_path.clone(),
                        enabled: ns.enabled,
                        device_uuid: ns.device_uuid.clone(),
                    })
                    .collect(),
                ports: state.ports_of(&s.nqn).map(port_to_proto).collect(),
                allowed_hosts: s.allowed_hosts.clone(),
                allow_any_host: s.allow_any_host,
                shared_bdev: registry
                    .subsystems
                    .get(&s.nqn)
                    .and_then(|o| o.shared_bdev.clone())
                    .unwrap_or_default(),
                own: registry.subsystems.contains_key(&s.nqn),
            })
            .collect();
        Ok(proto::ListSubsystemsReply {
            subsystems,
            ports: state.ports.iter().map(port_to_proto).collect(),
            hosts: state.hosts.clone(),
        })
    }

    async fn add_namespace(
        &self,
        req: proto::AddNamespaceRequest,
        deadline: Deadline,
    ) -> Result<proto::Namespace> {
        if !one_target("AddNamespace", &req.nqn, &req.iqn)? {
            return self.add_lun(req, deadline).await;
        }
        limits::check_len("nqn", &req.nqn, MAX_NQN_LEN)?;
        nvmet::validate_nqn("subsystem NQN", &req.nqn)?;
        let name = bdev_name("bdev", &req.bdev)?;
        if let Some(nsid) = req.nsid {
            validate_nsid(nsid)?;
        }
        let mut registry = self.lock(&deadline).await?;
        self.require_own_subsystem(&registry, &req.nqn)?;
        let entry = lookup(&registry, &name)?;
        require_unclaimed(&registry, entry)?;
        self.require_present(entry)?;
        let nsid = match req.nsid {
            Some(nsid) if self.nvmet.namespace_exists(&req.nqn, nsid) => {
                return Err(Error::AlreadyExists(format!(
                    "namespace {nsid} of {} exists already",
                    req.nqn
                )));
            }
            Some(nsid) => nsid,
            None => self.nvmet.free_nsid(&req.nqn)?,
        };
        let spec = self.namespace_spec(entry, nsid);
        self.nvmet.add_namespace(&req.nqn, &spec, &deadline)?;
        registry.bdev_mut(&name)?.claim = Some(Claim { nqn: req.nqn.clone(), nsid });
        info!(bdev = %name, nqn = %req.nqn, nsid, "namespace attached");
        Ok(proto::Namespace {
            nsid,
            bdev: name,
            device_path: spec.device_path.to_string_lossy().into_owned(),
            enabled: true,
            device_uuid: spec.device_uuid.to_string(),
        })
    }

    async fn remove_namespace(
        &self,
        req: proto::RemoveNamespaceRequest,
        deadline: Deadline,
    ) -> Result<proto::RemoveNamespaceReply> {
        if !one_target("RemoveNamespace", &req.nqn, &req.iqn)? {
            return self.remove_lun(req, deadline).await;
        }
        limits::check_len("nqn", &req.nqn, MAX_NQN_LEN)?;
        nvmet::validate_nqn("subsystem NQN", &req.nqn)?;
        validate_nsid(req.nsid)?;
        let mut registry = self.lock(&deadline).await?;
        deadline.check("before the namespace was removed")?;
        self.require_own_subsystem(&registry, &req.nqn)?;
        let claim = Claim { nqn: req.nqn.clone(), nsid: req.nsid };
        let holder = registry
            .bdevs
            .iter()
            .find(|(_, e)| e.claim.as_ref() == Some(&claim))
            .map(|(name, _)| name.clone());
        if let Some(name) = &holder {
            if registry.share_of(name).is_some_and(|(nqn, _)| nqn == req.nqn) {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {} of {} is the shared bdev {name} itself; use UnshareBdev",
                    req.nsid, req.nqn
                )));
            }
        }
        if !self.nvmet.namespace_exists(&req.nqn, req.nsid) {
            return Err(Error::NotFound(format!(
                "namespace {} of {} not found",
                req.nsid, req.nqn
            )));
        }
        self.nvmet.remove_namespace(&req.nqn, req.nsid)?;
        info!(nqn = %req.nqn, nsid = req.nsid, bdev = holder.as_deref().unwrap_or("(unknown)"), "namespace detached");
        if let Some(name) = holder {
            registry.bdev_mut(&name)?.claim = None;
        }
        Ok(proto::RemoveNamespaceReply {})
    }

    /// AddNamespace on an iSCSI target: the bdev becomes LUN `nsid` (the lowest free from 1 when
    /// unset) of a target made by ShareBdev ISCSI, claimed as (IQN, LUN).
    async fn add_lun(
        &self,
        req: proto::AddNamespaceRequest,
        deadline: Deadline,
    ) -> Result<proto::Namespace> {
        limits::check_len("iqn", &req.iqn, MAX_IQN_LEN)?;
        lio::validate_iqn("target IQN", &req.iqn)?;
        let name = bdev_name("bdev", &req.bdev)?;
        if let Some(lun) = req.nsid {
            validate_lun(lun, 1)?;
        }
        let mut registry = self.lock(&deadline).await?;
        self.require_own_iscsi_target(&registry, &req.iqn)?;
        let entry = lookup(&registry, &name)?;
        require_unclaimed(&registry, entry)?;
        self.require_present(entry)?;
        if Backing::buffered_io(&entry.uri) {
            return Err(Error::FailedPrecondition(format!(
                "bdev {name} is a malloc file; iSCSI LUNs serve block devices (aio://) only"
            )));
        }
        let lun = match req.nsid {
            Some(lun) if self.lio.lun_exists(&req.iqn, lun) => {
                return Err(Error::AlreadyExists(format!(
                    "LUN {lun} of {} exists already",
                    req.iqn
                )));
            }
            Some(lun) => lun,
            None => self.lio.free_lun(&req.iqn)?,
        };
        let (device, uuid) = (self.backing.device_path(&entry.uri), entry.uuid);
        self.lio.add_lun(&req.iqn, lun, &device, &deadline)?;
        registry.bdev_mut(&name)?.claim = Some(Claim { nqn: req.iqn.clone(), nsid: lun });
        info!(bdev = %name, iqn = %req.iqn, lun, "LUN attached");
        Ok(proto::Namespace {
            nsid: lun,
            bdev: name,
            device_path: device.to_string_lossy().into_owned(),
            enabled: true,
            device_uuid: uuid.to_string(),
        })
    }

    /// RemoveNamespace on an iSCSI target: LUN `nsid` and its backstore go, not LUN 0 (the
    /// shared bdev's: UnshareBdev).
    async fn remove_lun(
        &self,
        req: proto::RemoveNamespaceRequest,
        deadline: Deadline,
    ) -> Result<proto::RemoveNamespaceReply> {
        limits::check_len("iqn", &req.iqn, MAX_IQN_LEN)?;
        lio::validate_iqn("target IQN", &req.iqn)?;
        validate_lun(req.nsid, 0)?;
        let mut registry = self.lock(&deadline).await?;
        deadline.check("before the LUN was removed")?;
        let owned = self.require_own_iscsi_target(&registry, &req.iqn)?;
        if req.nsid == 0 {
            let shared = owned.shared_bdev.clone().unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "LUN 0 of {} is the shared bdev {shared} itself; use UnshareBdev",
                req.iqn
            )));
        }
        if !self.lio.lun_exists(&req.iqn, req.nsid) {
            return Err(Error::NotFound(format!("LUN {} of {} not found", req.nsid, req.iqn)));
        }
        self.lio.remove_lun_of(&req.iqn, req.nsid)?;
        let claim = Claim { nqn: req.iqn.clone(), nsid: req.nsid };
        let holder = registry
            .bdevs
            .iter()
            .find(|(_, e)| e.claim.as_ref() == Some(&claim))
            .map(|(name, _)| name.clone());
        info!(iqn = %req.iqn, lun = req.nsid, bdev = holder.as_deref().unwrap_or("(unknown)"), "LUN detached");
        if let Some(name) = holder {
            registry.bdev_mut(&name)?.claim = None;
        }
        Ok(proto::RemoveNamespaceReply {})
    }

    /// LUNs are added only to iSCSI targets this daemon made and LIO still has (a hot-remove of
    /// a target's last LUN took the target away).
    fn require_own_iscsi_target<'r>(&self, registry: &'r Registry, iqn: &str) -> Result<&'r Owned> {
        match registry.subsystems.get(iqn).filter(|o| o.is_iscsi()) {
            Some(owned) if self.lio.target_exists(iqn) => Ok(owned),
            Some(owned) => Err(Error::FailedPrecondition(format!(
                "iSCSI target {iqn} went with its last LUN when its device was hot-removed; UnshareBdev {}",
                owned.shared_bdev.as_deref().unwrap_or_default()
            ))),
            None if self.lio.target_exists(iqn) => {
                Err(Error::FailedPrecondition(format!("iSCSI target {iqn} was not made by this daemon")))
            }
            None => Err(Error::NotFound(format!("iSCSI target {iqn} not found"))),
        }
    }

    /// SPDK's bdev hot-remove: every bdev whose device vanished is withdrawn from whatever
    /// exports it (its nvmet namespace is disabled and removed, so connected initiators get the
    /// namespace-change AEN and drop it), then marked removed (faulted in ListBdevs, until
    /// destroyed). The subsystem itself stays, as SPDK keeps the controller: an initiator stays
    /// connected to it. Returns one line per bdev withdrawn; a withdrawal that fails is logged
    /// and retried at the next call. Called by [`super::monitor`] every poll period.
    pub async fn reap_vanished(&self) -> Vec<String> {
        let mut registry = self.registry.lock().await;
        let vanished: Vec<String> = registry
            .bdevs
            .iter()
            .filter(|(_, e)| !e.removed && !self.backing.present(&e.uri))
            .map(|(name, _)| name.clone())
            .collect();
        let mut report = Vec::new();
        for name in vanished {
            let Some(entry) = registry.bdevs.get(&name) else { continue };
            let path = self.backing.device_path(&entry.uri);
            let claim = entry.claim.clone();
            let what = match &claim {
                None => "it was in no namespace".to_string(),
                Some(claim) => {
                    let iscsi = registry.is_iscsi_claim(claim);
                    match self.withdraw(claim, iscsi, &path) {
                        Ok(()) => format!("removed from {}", registry.describe(claim)),
                        Err(err) => {
                            warn!(
                                "hot-remove: {} vanished but bdev {name} could not be withdrawn from {}: {err}; retrying",
                                path.display(),
                                registry.describe(claim)
                            );
                            continue;
                        }
                    }
                }
            };
            let Ok(entry) = registry.bdev_mut(&name) else { continue };
            entry.claim = None;
            entry.removed = true;
            let line = format!(
                "hot-remove: {} vanished; bdev {name} is {STATE_FAULTED}, {what}",
                path.display()
            );
            warn!("{line}");
            report.push(line);
        }
        report
    }

    /// Takes a bdev out of the export that claims it. An iSCSI share (its target in
    /// `Registry::subsystems` under its IQN, with an `iscsi://` URI) loses the LUN of the
    /// vanished `device`, and with its only LUN the whole target (LIO would otherwise answer on
    /// a phantom LUN 0), which ends its sessions; its registry entry stays until UnshareBdev,
    /// which then finds nothing in configfs and forgets it. An nvmet share loses the namespace
    /// and keeps the subsystem (as SPDK keeps the controller).
    fn withdraw(&self, claim: &Claim, iscsi: bool, device: &std::path::Path) -> Result<()> {
        if iscsi {
            // Gone already is no error: nothing backed by the device is left to remove.
            self.lio.remove_luns_backed_by(device)?;
            return Ok(());
        }
        if !self.nvmet.namespace_exists(&claim.nqn, claim.nsid) {
            // Gone already (removed behind the daemon's back): nothing to withdraw.
            return Ok(());
        }
        self.nvmet.remove_namespace(&claim.nqn, claim.nsid)
    }

    /// Namespaces are added only to subsystems this daemon made: others it does not own.
    fn require_own_subsystem<'r>(&self, registry: &'r Registry, nqn: &str) -> Result<&'r Owned> {
        if let Some(owned) = registry.subsystems.get(nqn) {
            Ok(owned)
        } else if self.nvmet.subsystem_exists(nqn) {
            Err(Error::FailedPrecondition(format!("subsystem {nqn} was not made by this daemon")))
        } else {
            Err(Error::NotFound(format!("subsystem {nqn} not found")))
        }
    }

    /// A vanished device cannot be put into a namespace.
    fn require_present(&self, entry: &Entry) -> Result<()> {
        if entry.removed {
            return Err(Error::FailedPrecondition(format!(
                "bdev {} is {STATE_FAULTED}: {} was hot-removed; destroy it and create it again",
                entry.uri,
                self.backing.device_path(&entry.uri).display()
            )));
        }
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

/// A bdev name is its URI; lookups go by the canonical form. `field` is the request's field.
fn bdev_name(field: &str, name: &str) -> Result<String> {
    limits::check_len(field, name, MAX_NAME_LEN)?;
    Ok(BdevUri::parse(name)?.to_string())
}

fn lookup<'r>(registry: &'r Registry, name: &str) -> Result<&'r Entry> {
    registry.bdevs.get(name).ok_or_else(|| Error::NotFound(format!("bdev {name} not found")))
}

fn validate_nsid(nsid: u32) -> Result<()> {
    if (1..=MAX_NSID).contains(&nsid) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!("namespace id {nsid} is out of range 1..={MAX_NSID}")))
}

/// Which target a namespace call names: `true` for an NVMe-oF subsystem (nqn), `false` for an
/// iSCSI target (iqn). Naming both is refused; naming neither goes the NVMe-oF way, whose
/// validation names the empty NQN.
fn one_target(rpc: &str, nqn: &str, iqn: &str) -> Result<bool> {
    limits::check_len("nqn", nqn, MAX_NQN_LEN)?;
    limits::check_len("iqn", iqn, MAX_IQN_LEN)?;
    if !nqn.is_empty() && !iqn.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{rpc} takes nqn (an NVMe-oF subsystem) or iqn (an iSCSI target), not both: nqn {}, iqn {}",
            quoted(nqn),
            quoted(iqn)
        )));
    }
    Ok(iqn.is_empty())
}

/// An iSCSI LUN of a request: `min..=MAX_LUN`.
fn validate_lun(lun: u32, min: u32) -> Result<()> {
    if (min..=lio::MAX_LUN).contains(&lun) {
        return Ok(());
    }
    let why = if lun == 0 { " (LUN 0 is the shared bdev's)" } else { "" };
    Err(Error::InvalidArgument(format!("LUN {lun} is out of range {min}..={}{why}", lio::MAX_LUN)))
}

fn describe(claim: &Claim) -> String {
    format!("namespace {} of {}", claim.nsid, claim.nqn)
}

/// Wipes a partition table just written unless disarmed: a split that fails or is dropped
/// halfway leaves the disk whole.
struct WipeOnDrop<'a> {
    backing: &'a Backing,
    dev: &'a str,
    geometry: Geometry,
    armed: bool,
}

impl WipeOnDrop<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for WipeOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let wipe = split::wipe_writes(self.geometry.num_blocks, self.geometry.blk_size);
        match self.backing.write_partition_table(self.dev, &wipe, &[]) {
            Ok(()) => info!("split of /dev/{} undone: partition table wiped", self.dev),
            Err(err) => {
                warn!("wiping the partition table of /dev/{} after a failed split: {err}", self.dev)
            }
        }
    }
}

/// Whether block device `part` is a partition of `disk` (`nvme0n1p2` of `nvme0n1`, `vdb1` of `vdb`).
fn is_partition_of(part: &str, disk: &str) -> bool {
    let Some(rest) = part.strip_prefix(disk) else { return false };
    let rest = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        rest.strip_prefix('p').unwrap_or("")
    } else {
        rest
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
}

/// A bdev goes into one namespace at a time, and is not destroyed while in one, shared or split.
fn require_unclaimed(registry: &Registry, entry: &Entry) -> Result<()> {
    let name = entry.uri.to_string();
    if !entry.splits.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "bdev {name} is split into {} bdevs; UnsplitBdev first",
            entry.splits.len()
        )));
    }
    match (&entry.claim, registry.share_of(&name)) {
        (None, None) => Ok(()),
        (Some(claim), shared) => {
            let hint =
                if shared.is_some() { "unshare it first" } else { "remove the namespace first" };
            Err(Error::FailedPrecondition(format!(
                "bdev {name} is in use as {}; {hint}",
                registry.describe(claim)
            )))
        }
        // Its namespace went (the device was hot-removed) but the subsystem it made is there.
        (None, Some((nqn, _))) => Err(Error::FailedPrecondition(format!(
            "bdev {name} is shared as subsystem {nqn}; unshare it first"
        ))),
    }
}

/// A TCP port from a request, or `default` when unset.
fn validate_port(port: Option<u32>, default: u16) -> Result<u16> {
    match port {
        None => Ok(default),
        Some(port) => u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
            Error::InvalidArgument(format!("port {port} is out of range 1..=65535"))
        }),
    }
}

fn validate_hosts(hosts: &[String]) -> Result<()> {
    for (i, host) in hosts.iter().enumerate() {
        nvmet::validate_nqn("allowed host NQN", host)?;
        if hosts[..i].contains(host) {
            return Err(Error::InvalidArgument(format!(
                "allowed host NQN {} is listed twice",
                quoted(host)
            )));
        }
    }
    Ok(())
}

/// Logs the request, runs it with its deadline, logs the outcome, and turns errors into
/// statuses. The log line is cut short: it goes to a serial console, slow under TCG, and the
/// request's bounds are checked only after it.
async fn serve<R: std::fmt::Debug, T, F: Future<Output = Result<T>>>(
    rpc: &'static str,
    request: Request<R>,
    work: impl FnOnce(R, Deadline) -> F,
) -> Result<Response<T>, Status> {
    let deadline = match Deadline::from_metadata(request.metadata()) {
        Ok(deadline) => deadline,
        Err(err) => {
            warn!(rpc, code = ?err.code(), "{err}");
            return Err(err.into());
        }
    };
    let request = request.into_inner();
    let mut logged = format!("{request:?}");
    if let Some((at, _)) = logged.char_indices().nth(MAX_LOGGED_REQUEST) {
        logged.truncate(at);
        logged.push_str("...");
    }
    info!(rpc, request = %logged, "request");
    match work(request, deadline).await {
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
    async fn health(
        &self,
        req: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthReply>, Status> {
        serve("Health", req, |_, _| TargetService::health(self)).await
    }

    async fn list_bdevs(
        &self,
        req: Request<proto::ListBdevsRequest>,
    ) -> Result<Response<proto::ListBdevsReply>, Status> {
        serve("ListBdevs", req, |_, _| TargetService::list_bdevs(self)).await
    }

    async fn list_disks(
        &self,
        req: Request<proto::ListDisksRequest>,
    ) -> Result<Response<proto::ListDisksReply>, Status> {
        serve("ListDisks", req, |_, _| async { Ok(TargetService::list_disks(self)) }).await
    }

    async fn create_bdev(
        &self,
        req: Request<proto::CreateBdevRequest>,
    ) -> Result<Response<proto::Bdev>, Status> {
        serve("CreateBdev", req, |req, deadline| TargetService::create_bdev(self, req, deadline))
            .await
    }

    async fn destroy_bdev(
        &self,
        req: Request<proto::DestroyBdevRequest>,
    ) -> Result<Response<proto::DestroyBdevReply>, Status> {
        serve("DestroyBdev", req, |req, deadline| TargetService::destroy_bdev(self, req, deadline))
            .await
    }

    async fn share_bdev(
        &self,
        req: Request<proto::ShareBdevRequest>,
    ) -> Result<Response<proto::ShareBdevReply>, Status> {
        serve("ShareBdev", req, |req, deadline| TargetService::share_bdev(self, req, deadline))
            .await
    }

    async fn unshare_bdev(
        &self,
        req: Request<proto::UnshareBdevRequest>,
    ) -> Result<Response<proto::UnshareBdevReply>, Status> {
        serve("UnshareBdev", req, |req, deadline| TargetService::unshare_bdev(self, req, deadline))
            .await
    }

    async fn list_subsystems(
        &self,
        req: Request<proto::ListSubsystemsRequest>,
    ) -> Result<Response<proto::ListSubsystemsReply>, Status> {
        serve("ListSubsystems", req, |_, _| TargetService::list_subsystems(self)).await
    }

    async fn add_namespace(
        &self,
        req: Request<proto::AddNamespaceRequest>,
    ) -> Result<Response<proto::Namespace>, Status> {
        serve("AddNamespace", req, |req, deadline| {
            TargetService::add_namespace(self, req, deadline)
        })
        .await
    }

    async fn split_bdev(
        &self,
        req: Request<proto::SplitBdevRequest>,
    ) -> Result<Response<proto::SplitBdevReply>, Status> {
        serve("SplitBdev", req, |req, deadline| TargetService::split_bdev(self, req, deadline))
            .await
    }

    async fn unsplit_bdev(
        &self,
        req: Request<proto::UnsplitBdevRequest>,
    ) -> Result<Response<proto::UnsplitBdevReply>, Status> {
        serve("UnsplitBdev", req, |req, deadline| TargetService::unsplit_bdev(self, req, deadline))
            .await
    }

    async fn create_subsystem(
        &self,
        req: Request<proto::CreateSubsystemRequest>,
    ) -> Result<Response<proto::CreateSubsystemReply>, Status> {
        serve("CreateSubsystem", req, |req, deadline| {
            TargetService::create_subsystem(self, req, deadline)
        })
        .await
    }

    async fn destroy_subsystem(
        &self,
        req: Request<proto::DestroySubsystemRequest>,
    ) -> Result<Response<proto::DestroySubsystemReply>, Status> {
        serve("DestroySubsystem", req, |req, deadline| {
            TargetService::destroy_subsystem(self, req, deadline)
        })
        .await
    }

    async fn remove_namespace(
        &self,
        req: Request<proto::RemoveNamespaceRequest>,
    ) -> Result<Response<proto::RemoveNamespaceReply>, Status> {
        serve("RemoveNamespace", req, |req, deadline| {
            TargetService::remove_namespace(self, req, deadline)
        })
        .await
    }
}
