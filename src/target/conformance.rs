//! The bad-request table: malformed and out-of-order requests, each with the code it must get
//! and the value its message must name, and a runner that works over any transport: the gRPC
//! client against a daemon in a VM, or the service called directly in unit tests.
//!
//! The table makes its own bdevs (malloc, so it runs on any target) and one share, and takes
//! them down again; the runner checks that bdevs and subsystems end exactly as they began.

use std::fmt;
use std::future::Future;

use anyhow::bail;
use tonic::{Code, Request, Status};
use tracing::info;

use super::client::TargetClient;
use super::limits::MAX_ALLOWED_HOSTS;
use super::lio::MAX_IQN_LEN;
use super::nvmet::{DISCOVERY_NQN, MAX_NQN_LEN};
use super::proto::{self, target_server::Target};
use super::service::TargetService;
use super::uri::MAX_URI_LEN;

/// One request of the table.
#[derive(Debug, Clone)]
pub enum Call {
    ListBdevs,
    ListSubsystems,
    CreateBdev(proto::CreateBdevRequest),
    DestroyBdev(proto::DestroyBdevRequest),
    ShareBdev(proto::ShareBdevRequest),
    UnshareBdev(proto::UnshareBdevRequest),
    AddNamespace(proto::AddNamespaceRequest),
    RemoveNamespace(proto::RemoveNamespaceRequest),
    CreateSubsystem(proto::CreateSubsystemRequest),
    DestroySubsystem(proto::DestroySubsystemRequest),
    SplitBdev(proto::SplitBdevRequest),
    UnsplitBdev(proto::UnsplitBdevRequest),
}

/// The reply to a [`Call`].
#[derive(Debug, Clone)]
pub enum Reply {
    Bdevs(proto::ListBdevsReply),
    Subsystems(proto::ListSubsystemsReply),
    Bdev(proto::Bdev),
    Shared(proto::ShareBdevReply),
    Namespace(proto::Namespace),
    Subsystem(proto::CreateSubsystemReply),
    Splits(proto::SplitBdevReply),
    Done,
}

/// Something that answers target calls.
pub trait TargetApi {
    fn call(&mut self, call: Call) -> impl Future<Output = Result<Reply, Status>> + Send;
}

impl TargetApi for TargetClient {
    async fn call(&mut self, call: Call) -> Result<Reply, Status> {
        {
            Ok(match call {
                Call::ListBdevs => {
                    Reply::Bdevs(self.list_bdevs(proto::ListBdevsRequest {}).await?.into_inner())
                }
                Call::ListSubsystems => Reply::Subsystems(
                    self.list_subsystems(proto::ListSubsystemsRequest {}).await?.into_inner(),
                ),
                Call::CreateBdev(r) => Reply::Bdev(self.create_bdev(r).await?.into_inner()),
                Call::DestroyBdev(r) => self.destroy_bdev(r).await.map(|_| Reply::Done)?,
                Call::ShareBdev(r) => Reply::Shared(self.share_bdev(r).await?.into_inner()),
                Call::UnshareBdev(r) => self.unshare_bdev(r).await.map(|_| Reply::Done)?,
                Call::AddNamespace(r) => {
                    Reply::Namespace(self.add_namespace(r).await?.into_inner())
                }
                Call::RemoveNamespace(r) => self.remove_namespace(r).await.map(|_| Reply::Done)?,
                Call::CreateSubsystem(r) => {
                    Reply::Subsystem(self.create_subsystem(r).await?.into_inner())
                }
                Call::DestroySubsystem(r) => {
                    self.destroy_subsystem(r).await.map(|_| Reply::Done)?
                }
                Call::SplitBdev(r) => Reply::Splits(self.split_bdev(r).await?.into_inner()),
                Call::UnsplitBdev(r) => self.unsplit_bdev(r).await.map(|_| Reply::Done)?,
            })
        }
    }
}

/// Straight into the service, through the same `Target` methods tonic would call.
impl TargetApi for &TargetService {
    async fn call(&mut self, call: Call) -> Result<Reply, Status> {
        let svc: &TargetService = self;
        {
            Ok(match call {
                Call::ListBdevs => Reply::Bdevs(
                    Target::list_bdevs(svc, Request::new(proto::ListBdevsRequest {}))
                        .await?
                        .into_inner(),
                ),
                Call::ListSubsystems => Reply::Subsystems(
                    Target::list_subsystems(svc, Request::new(proto::ListSubsystemsRequest {}))
                        .await?
                        .into_inner(),
                ),
                Call::CreateBdev(r) => {
                    Reply::Bdev(Target::create_bdev(svc, Request::new(r)).await?.into_inner())
                }
                Call::DestroyBdev(r) => {
                    Target::destroy_bdev(svc, Request::new(r)).await.map(|_| Reply::Done)?
                }
                Call::ShareBdev(r) => {
                    Reply::Shared(Target::share_bdev(svc, Request::new(r)).await?.into_inner())
                }
                Call::UnshareBdev(r) => {
                    Target::unshare_bdev(svc, Request::new(r)).await.map(|_| Reply::Done)?
                }
                Call::AddNamespace(r) => Reply::Namespace(
                    Target::add_namespace(svc, Request::new(r)).await?.into_inner(),
                ),
                Call::RemoveNamespace(r) => {
                    Target::remove_namespace(svc, Request::new(r)).await.map(|_| Reply::Done)?
                }
                Call::CreateSubsystem(r) => Reply::Subsystem(
                    Target::create_subsystem(svc, Request::new(r)).await?.into_inner(),
                ),
                Call::DestroySubsystem(r) => {
                    Target::destroy_subsystem(svc, Request::new(r)).await.map(|_| Reply::Done)?
                }
                Call::SplitBdev(r) => {
                    Reply::Splits(Target::split_bdev(svc, Request::new(r)).await?.into_inner())
                }
                Call::UnsplitBdev(r) => {
                    Target::unsplit_bdev(svc, Request::new(r)).await.map(|_| Reply::Done)?
                }
            })
        }
    }
}

/// One row: a request, the code it must get, and text its message must contain.
#[derive(Debug, Clone)]
pub struct BadRequestCase {
    pub what: String,
    pub call: Call,
    /// `Code::Ok` marks a step that sets up the rows after it.
    pub expect: Code,
    /// The offending value, as the message must show it (empty for setup steps).
    pub names: String,
}

/// Names the table uses; change them to keep clear of a scenario's own bdevs and ports.
#[derive(Debug, Clone)]
pub struct TableParams {
    /// Prefix of the table's malloc bdev names and NQNs.
    pub prefix: String,
    /// The TCP port of the table's share.
    pub port: u32,
}

impl Default for TableParams {
    fn default() -> Self {
        TableParams { prefix: "vmcheck-table".into(), port: 4421 }
    }
}

impl TableParams {
    /// The table's first bdev: shared for most of the table.
    pub fn bdev_a(&self) -> String {
        format!("malloc:///{}-a?size_mb=4", self.prefix)
    }
    /// The table's second bdev: not shared, hot-added for a while.
    pub fn bdev_b(&self) -> String {
        format!("malloc:///{}-b?size_mb=4", self.prefix)
    }
    pub fn nqn_a(&self) -> String {
        format!("nqn.2019-05.io.vmcheck:{}-a", self.prefix)
    }
    /// The table's empty controller.
    pub fn nqn_empty(&self) -> String {
        format!("nqn.2019-05.io.vmcheck:{}-empty", self.prefix)
    }
}

fn create(uri: &str) -> Call {
    Call::CreateBdev(proto::CreateBdevRequest { uri: uri.into() })
}
fn destroy(name: &str) -> Call {
    Call::DestroyBdev(proto::DestroyBdevRequest { name: name.into() })
}
fn share(name: &str) -> proto::ShareBdevRequest {
    proto::ShareBdevRequest { name: name.into(), ..Default::default() }
}
fn unshare(name: &str) -> Call {
    Call::UnshareBdev(proto::UnshareBdevRequest { name: name.into() })
}
fn add_ns(nqn: &str, bdev: &str, nsid: Option<u32>) -> Call {
    Call::AddNamespace(proto::AddNamespaceRequest {
        nqn: nqn.into(),
        bdev: bdev.into(),
        nsid,
        ..Default::default()
    })
}
fn remove_ns(nqn: &str, nsid: u32) -> Call {
    Call::RemoveNamespace(proto::RemoveNamespaceRequest {
        nqn: nqn.into(),
        nsid,
        ..Default::default()
    })
}
fn add_lun(iqn: &str, bdev: &str, lun: Option<u32>) -> Call {
    Call::AddNamespace(proto::AddNamespaceRequest {
        iqn: iqn.into(),
        bdev: bdev.into(),
        nsid: lun,
        ..Default::default()
    })
}
fn remove_lun(iqn: &str, lun: u32) -> Call {
    Call::RemoveNamespace(proto::RemoveNamespaceRequest {
        iqn: iqn.into(),
        nsid: lun,
        ..Default::default()
    })
}
fn create_subsys(nqn: &str, port: u32) -> proto::CreateSubsystemRequest {
    proto::CreateSubsystemRequest { nqn: nqn.into(), port: Some(port), allowed_hosts: vec![] }
}
fn split(name: &str, split_count: u32) -> Call {
    Call::SplitBdev(proto::SplitBdevRequest { name: name.into(), split_count, split_size_mb: None })
}
fn unsplit(name: &str) -> Call {
    Call::UnsplitBdev(proto::UnsplitBdevRequest { name: name.into() })
}
fn destroy_subsys(nqn: &str) -> Call {
    Call::DestroySubsystem(proto::DestroySubsystemRequest { nqn: nqn.into() })
}

/// At least 30 malformed or out-of-order requests, with the setup steps between them.
pub fn bad_request_table(p: &TableParams) -> Vec<BadRequestCase> {
    let (a, b, nqn_a, nqn_e) = (p.bdev_a(), p.bdev_b(), p.nqn_a(), p.nqn_empty());
    let subsys = |f: &dyn Fn(&mut proto::CreateSubsystemRequest)| {
        let mut r = create_subsys(&nqn_e, p.port);
        f(&mut r);
        Call::CreateSubsystem(r)
    };
    let prefix = &p.prefix;
    let never = format!("malloc:///{prefix}-never?size_mb=4");
    let missing_nqn = format!("nqn.2019-05.io.vmcheck:{prefix}-missing");
    let host = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
    let long_nqn = format!("nqn.2019-05.io.vmcheck:{}", "x".repeat(MAX_NQN_LEN));
    let missing_iqn = format!("iqn.2019-05.io.vmcheck:{prefix}-missing");
    let long_iqn = format!("iqn.2019-05.io.vmcheck:{}", "x".repeat(MAX_IQN_LEN));
    let long_uri = format!("malloc:///{}", "u".repeat(MAX_URI_LEN));
    let share_a =
        proto::ShareBdevRequest { nqn: Some(nqn_a.clone()), port: Some(p.port), ..share(&a) };
    let share_b = |f: &dyn Fn(&mut proto::ShareBdevRequest)| {
        let mut r = proto::ShareBdevRequest { port: Some(p.port), ..share(&b) };
        f(&mut r);
        Call::ShareBdev(r)
    };
    let row = |what: &str, call: Call, expect: Code, names: &str| BadRequestCase {
        what: what.into(),
        call,
        expect,
        names: names.into(),
    };
    let step = |what: &str, call: Call| row(what, call, Code::Ok, "");
    use Code::{AlreadyExists, FailedPrecondition, InvalidArgument, NotFound};
    vec![
        step("create bdev A", create(&a)),
        step("share bdev A", Call::ShareBdev(share_a.clone())),
        step("create bdev B", create(&b)),
        // CreateBdev: malformed URIs.
        row("create with an empty URI", create(""), InvalidArgument, "empty"),
        row("create without a scheme", create("vdb"), InvalidArgument, "\"vdb\""),
        row(
            "create with an unknown scheme",
            create("nvme:///dev/vdb"),
            InvalidArgument,
            "\"nvme\"",
        ),
        row("create with a host in the URI", create("aio://dev/vdb"), InvalidArgument, "\"dev\""),
        row("create aio without a device", create("aio:///dev/"), InvalidArgument, "aio:///dev/"),
        row(
            "create aio with an extra path part",
            create("aio:///dev/vdb/extra"),
            InvalidArgument,
            "/dev/vdb/extra",
        ),
        row("create aio with '..'", create("aio:///dev/../etc/passwd"), InvalidArgument, "\"..\""),
        row(
            "create aio with a query",
            create("aio:///dev/vdb?size_mb=4"),
            InvalidArgument,
            "\"size_mb\"",
        ),
        row(
            "create aio of /dev/null, not a block device",
            create("aio:///dev/null"),
            InvalidArgument,
            "/dev/null is a character device",
        ),
        row(
            "create with a URI over the bound",
            create(&long_uri),
            InvalidArgument,
            &format!("uri is {} bytes long; the limit is 1024", long_uri.len()),
        ),
        row(
            "create aio of a missing device",
            create(&format!("aio:///dev/{prefix}-none")),
            NotFound,
            &format!("/dev/{prefix}-none"),
        ),
        row(
            "create malloc without size_mb",
            create(&format!("malloc:///{prefix}-c")),
            InvalidArgument,
            "size_mb",
        ),
        row(
            "create malloc of size 0",
            create(&format!("malloc:///{prefix}-c?size_mb=0")),
            InvalidArgument,
            "size_mb=0",
        ),
        row(
            "create malloc with a non-number size",
            create(&format!("malloc:///{prefix}-c?size_mb=lots")),
            InvalidArgument,
            "\"lots\"",
        ),
        row(
            "create malloc with size_mb twice",
            create(&format!("malloc:///{prefix}-c?size_mb=4&size_mb=8")),
            InvalidArgument,
            "twice",
        ),
        row(
            "create malloc with an unknown key",
            create(&format!("malloc:///{prefix}-c?size_mb=4&mode=ram")),
            InvalidArgument,
            "\"mode\"",
        ),
        row(
            "create malloc with '/' in the name",
            create("malloc:///a/b?size_mb=4"),
            InvalidArgument,
            "/a/b",
        ),
        row(
            "create malloc named '..'",
            create("malloc:///..?size_mb=4"),
            InvalidArgument,
            "\"..\"",
        ),
        row("create bdev A again", create(&a), AlreadyExists, &a),
        row(
            "create A's malloc name with another size",
            create(&format!("malloc:///{prefix}-a?size_mb=8")),
            AlreadyExists,
            &a,
        ),
        // DestroyBdev.
        row("destroy with an empty name", destroy(""), InvalidArgument, "empty"),
        row(
            "destroy with a malformed name",
            destroy("not a uri"),
            InvalidArgument,
            "\"not a uri\"",
        ),
        row("destroy a bdev that does not exist", destroy(&never), NotFound, &never),
        row("destroy A while shared", destroy(&a), FailedPrecondition, &a),
        // ShareBdev.
        row("share with an empty name", Call::ShareBdev(share("")), InvalidArgument, "empty"),
        row("share a bdev that does not exist", Call::ShareBdev(share(&never)), NotFound, &never),
        row("share A again", Call::ShareBdev(share_a), AlreadyExists, &a),
        row(
            "share with a malformed NQN",
            share_b(&|r| r.nqn = Some("not-an-nqn".into())),
            InvalidArgument,
            "\"not-an-nqn\"",
        ),
        row(
            "share with '/' in the NQN",
            share_b(&|r| r.nqn = Some("nqn.2019-05.io.vmcheck:a/b".into())),
            InvalidArgument,
            "a/b",
        ),
        row(
            "share with an NQN over 223 bytes",
            share_b(&|r| r.nqn = Some(long_nqn.clone())),
            InvalidArgument,
            "223",
        ),
        row(
            "share as the discovery NQN",
            share_b(&|r| r.nqn = Some(DISCOVERY_NQN.into())),
            InvalidArgument,
            DISCOVERY_NQN,
        ),
        row(
            "share B under A's NQN",
            share_b(&|r| r.nqn = Some(nqn_a.clone())),
            AlreadyExists,
            &nqn_a,
        ),
        row("share on port 0", share_b(&|r| r.port = Some(0)), InvalidArgument, "port 0"),
        row(
            "share on port 65536",
            share_b(&|r| r.port = Some(65536)),
            InvalidArgument,
            "port 65536",
        ),
        row(
            "share with an unknown protocol",
            share_b(&|r| r.protocol = 7),
            InvalidArgument,
            "protocol 7",
        ),
        row(
            "share with a malformed host NQN",
            share_b(&|r| r.allowed_hosts = vec!["host one".into()]),
            InvalidArgument,
            "\"host one\"",
        ),
        row(
            "share with more allowed hosts than the bound",
            share_b(&|r| {
                r.allowed_hosts = (0..=MAX_ALLOWED_HOSTS)
                    .map(|i| format!("nqn.2019-05.io.vmcheck:h{i}"))
                    .collect()
            }),
            InvalidArgument,
            "allowed_hosts has 65 entries; the limit is 64",
        ),
        row(
            "share with an allowed host over 223 bytes",
            share_b(&|r| r.allowed_hosts = vec![host.into(), long_nqn.clone()]),
            InvalidArgument,
            &format!("allowed_hosts[1] is {} bytes long; the limit is 223", long_nqn.len()),
        ),
        row(
            "share with a name over the bound",
            Call::ShareBdev(share(&"n".repeat(MAX_URI_LEN + 1))),
            InvalidArgument,
            "name is 1025 bytes",
        ),
        row(
            "share with a host listed twice",
            share_b(&|r| r.allowed_hosts = vec![host.into(), host.into()]),
            InvalidArgument,
            host,
        ),
        // UnshareBdev.
        row("unshare B, which is not shared", unshare(&b), FailedPrecondition, &b),
        row("unshare a bdev that does not exist", unshare(&never), NotFound, &never),
        row("unshare with a malformed name", unshare("garbage"), InvalidArgument, "\"garbage\""),
        // AddNamespace.
        row(
            "add a namespace to a missing subsystem",
            add_ns(&missing_nqn, &b, None),
            NotFound,
            &missing_nqn,
        ),
        row(
            "add a namespace with an NQN over 223 bytes",
            add_ns(&long_nqn, &b, None),
            InvalidArgument,
            &format!("nqn is {} bytes", long_nqn.len()),
        ),
        row(
            "add a namespace with a malformed NQN",
            add_ns("bad nqn", &b, None),
            InvalidArgument,
            "\"bad nqn\"",
        ),
        row("add a namespace of a missing bdev", add_ns(&nqn_a, &never, None), NotFound, &never),
        row(
            "add a namespace of A, already shared",
            add_ns(&nqn_a, &a, None),
            FailedPrecondition,
            &a,
        ),
        row(
            "add a namespace with a taken nsid",
            add_ns(&nqn_a, &b, Some(1)),
            AlreadyExists,
            "namespace 1",
        ),
        row(
            "add a namespace with nsid 0",
            add_ns(&nqn_a, &b, Some(0)),
            InvalidArgument,
            "namespace id 0",
        ),
        row(
            "add a namespace with nsid 0xffffffff",
            add_ns(&nqn_a, &b, Some(u32::MAX)),
            InvalidArgument,
            "4294967295",
        ),
        // RemoveNamespace.
        row(
            "remove a namespace that does not exist",
            remove_ns(&nqn_a, 7),
            NotFound,
            "namespace 7",
        ),
        row("remove the shared bdev's own namespace", remove_ns(&nqn_a, 1), FailedPrecondition, &a),
        row(
            "remove a namespace of a missing subsystem",
            remove_ns(&missing_nqn, 1),
            NotFound,
            &missing_nqn,
        ),
        row("remove namespace 0", remove_ns(&nqn_a, 0), InvalidArgument, "namespace id 0"),
        row("remove with a malformed NQN", remove_ns("x", 1), InvalidArgument, "\"x\""),
        // AddNamespace/RemoveNamespace on an iSCSI target (a LUN of an IQN): bounds and
        // validation first, then the lookup. The table's bdevs are malloc, never iSCSI LUNs.
        row(
            "add a namespace naming both an NQN and an IQN",
            Call::AddNamespace(proto::AddNamespaceRequest {
                nqn: nqn_a.clone(),
                iqn: missing_iqn.clone(),
                bdev: b.clone(),
                nsid: None,
            }),
            InvalidArgument,
            "not both",
        ),
        row(
            "add a LUN to a missing iSCSI target",
            add_lun(&missing_iqn, &b, None),
            NotFound,
            &missing_iqn,
        ),
        row(
            "add a LUN with a malformed IQN",
            add_lun("iqn.2019-05.io.vmcheck:A B", &b, None),
            InvalidArgument,
            "A B",
        ),
        row("add a LUN with an NQN as the IQN", add_lun(&nqn_a, &b, None), InvalidArgument, &nqn_a),
        row(
            "add a LUN with an IQN over 223 bytes",
            add_lun(&long_iqn, &b, None),
            InvalidArgument,
            &format!("iqn is {} bytes long; the limit is 223", long_iqn.len()),
        ),
        row(
            "add LUN 0, the shared bdev's",
            add_lun(&missing_iqn, &b, Some(0)),
            InvalidArgument,
            "LUN 0 is out of range 1..=255",
        ),
        row("add LUN 256", add_lun(&missing_iqn, &b, Some(256)), InvalidArgument, "LUN 256"),
        row(
            "add a LUN of a missing bdev to a missing target",
            add_lun(&missing_iqn, &never, None),
            NotFound,
            &missing_iqn,
        ),
        row("remove LUN 256", remove_lun(&missing_iqn, 256), InvalidArgument, "LUN 256"),
        row(
            "remove a LUN of a missing iSCSI target",
            remove_lun(&missing_iqn, 1),
            NotFound,
            &missing_iqn,
        ),
        row(
            "remove a namespace naming both an NQN and an IQN",
            Call::RemoveNamespace(proto::RemoveNamespaceRequest {
                nqn: nqn_a.clone(),
                iqn: missing_iqn.clone(),
                nsid: 1,
            }),
            InvalidArgument,
            "not both",
        ),
        // B hot-added to A's subsystem: now claimed, but not shared itself.
        step("add B as namespace 2 of A's subsystem", add_ns(&nqn_a, &b, Some(2))),
        row("destroy B while it is a namespace", destroy(&b), FailedPrecondition, &b),
        row("share B while it is a namespace", Call::ShareBdev(share(&b)), FailedPrecondition, &b),
        row("unshare B, a namespace but not a share", unshare(&b), FailedPrecondition, &b),
        row("add B a second time", add_ns(&nqn_a, &b, None), FailedPrecondition, &b),
        step("remove namespace 2", remove_ns(&nqn_a, 2)),
        row("remove namespace 2 again", remove_ns(&nqn_a, 2), NotFound, "namespace 2"),
        // Empty controllers.
        step("create an empty subsystem", subsys(&|_| {})),
        row("create it again", subsys(&|_| {}), AlreadyExists, &nqn_e),
        row(
            "create a subsystem under A's NQN",
            Call::CreateSubsystem(create_subsys(&nqn_a, p.port)),
            AlreadyExists,
            &nqn_a,
        ),
        row(
            "create a subsystem without an NQN",
            subsys(&|r| r.nqn = String::new()),
            InvalidArgument,
            "\"\"",
        ),
        row(
            "create a subsystem with a malformed NQN",
            subsys(&|r| r.nqn = "ctrlr1".into()),
            InvalidArgument,
            "\"ctrlr1\"",
        ),
        row(
            "create a subsystem with an NQN over 223 bytes",
            subsys(&|r| r.nqn = long_nqn.clone()),
            InvalidArgument,
            "nqn is",
        ),
        row(
            "create a subsystem as the discovery NQN",
            subsys(&|r| r.nqn = DISCOVERY_NQN.into()),
            InvalidArgument,
            DISCOVERY_NQN,
        ),
        row(
            "create a subsystem on port 0",
            subsys(&|r| r.port = Some(0)),
            InvalidArgument,
            "port 0",
        ),
        row(
            "create a subsystem with more hosts than the bound",
            subsys(&|r| {
                r.allowed_hosts = (0..=MAX_ALLOWED_HOSTS)
                    .map(|i| format!("nqn.2019-05.io.vmcheck:h{i}"))
                    .collect()
            }),
            InvalidArgument,
            "allowed_hosts has 65 entries; the limit is 64",
        ),
        row(
            "create a subsystem with a host twice",
            subsys(&|r| r.allowed_hosts = vec![host.into(), host.into()]),
            InvalidArgument,
            host,
        ),
        row(
            "destroy A's subsystem, made by ShareBdev",
            destroy_subsys(&nqn_a),
            FailedPrecondition,
            &a,
        ),
        row(
            "destroy a subsystem that does not exist",
            destroy_subsys(&missing_nqn),
            NotFound,
            &missing_nqn,
        ),
        row(
            "destroy a subsystem with a malformed NQN",
            destroy_subsys("x y"),
            InvalidArgument,
            "\"x y\"",
        ),
        step("add B to the empty subsystem", add_ns(&nqn_e, &b, None)),
        row("add B to A's subsystem too", add_ns(&nqn_a, &b, None), FailedPrecondition, &b),
        row("destroy B while in the empty subsystem", destroy(&b), FailedPrecondition, &b),
        step("destroy the subsystem with B in it", destroy_subsys(&nqn_e)),
        row("destroy it again", destroy_subsys(&nqn_e), NotFound, &nqn_e),
        row(
            "remove a namespace of the destroyed subsystem",
            remove_ns(&nqn_e, 1),
            NotFound,
            &nqn_e,
        ),
        // Split: the table has malloc bdevs only, so every split here is refused.
        row("split a malloc bdev", split(&b, 2), FailedPrecondition, &b),
        row("split into 0", split(&b, 0), InvalidArgument, "split_count 0"),
        row(
            "split into 129",
            split(&b, 129),
            InvalidArgument,
            "split_count 129 is out of range 1..=128",
        ),
        row("split a bdev that does not exist", split(&never, 2), NotFound, &never),
        row("split with a malformed name", split("disk", 2), InvalidArgument, "\"disk\""),
        row(
            "split with a name over the bound",
            split(&"n".repeat(MAX_URI_LEN + 1), 2),
            InvalidArgument,
            "name is 1025 bytes",
        ),
        row("unsplit B, which is not split", unsplit(&b), FailedPrecondition, &b),
        row("unsplit a bdev that does not exist", unsplit(&never), NotFound, &never),
        step("unshare A", unshare(&a)),
        row("unshare A again", unshare(&a), FailedPrecondition, &a),
        row(
            "add a namespace to the unshared subsystem",
            add_ns(&nqn_a, &b, None),
            NotFound,
            &nqn_a,
        ),
        step("destroy A", destroy(&a)),
        row("destroy A again", destroy(&a), NotFound, &a),
        step("destroy B", destroy(&b)),
    ]
}

/// The result of one row.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    pub what: String,
    pub expect: Code,
    pub got: Code,
    pub message: String,
    /// Why the row failed; `None` when it passed.
    pub failure: Option<String>,
}

impl fmt::Display for CaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = self.failure.as_deref().unwrap_or("ok");
        write!(
            f,
            "{}: expected {:?}, got {:?} {:?}: {verdict}",
            self.what, self.expect, self.got, self.message
        )
    }
}

/// What must be the same before and after the table: bdevs, and all nvmet state.
#[derive(Debug, PartialEq)]
struct Snapshot {
    bdevs: Vec<proto::Bdev>,
    nvmet: proto::ListSubsystemsReply,
}

async fn snapshot(api: &mut impl TargetApi) -> anyhow::Result<Snapshot> {
    let (Reply::Bdevs(bdevs), Reply::Subsystems(subsystems)) =
        (api.call(Call::ListBdevs).await?, api.call(Call::ListSubsystems).await?)
    else {
        bail!("list calls gave unexpected replies");
    };
    Ok(Snapshot { bdevs: bdevs.bdevs, nvmet: subsystems })
}

/// Runs the table, checks each row's code and message, then checks that bdevs and subsystems
/// are exactly as before. `Ok` holds every row's outcome; `Err` lists what went wrong.
pub async fn run_bad_request_table(
    api: &mut impl TargetApi,
    params: &TableParams,
) -> anyhow::Result<Vec<CaseOutcome>> {
    let before = snapshot(api).await?;
    let mut outcomes = Vec::new();
    for case in bad_request_table(params) {
        let (got, message) = match api.call(case.call.clone()).await {
            Ok(_) => (Code::Ok, String::new()),
            Err(status) => (status.code(), status.message().to_string()),
        };
        let failure = if got != case.expect {
            Some("wrong code".to_string())
        } else if !message.contains(&case.names) {
            Some(format!("message does not name {:?}", case.names))
        } else {
            None
        };
        let outcome = CaseOutcome { what: case.what, expect: case.expect, got, message, failure };
        info!("bad-request table: {outcome}");
        outcomes.push(outcome);
    }
    let after = snapshot(api).await?;
    cleanup(api, params).await;
    let mut failures: Vec<String> =
        outcomes.iter().filter(|o| o.failure.is_some()).map(|o| o.to_string()).collect();
    if after != before {
        failures.push(format!(
            "state differs after the table:\nbefore: {before:#?}\nafter: {after:#?}"
        ));
    }
    if !failures.is_empty() {
        bail!(
            "bad-request table: {} of {} rows failed:\n{}",
            failures.len(),
            outcomes.len(),
            failures.join("\n")
        );
    }
    Ok(outcomes)
}

/// Best effort, after a failed table: whatever of the table's own state is left goes.
async fn cleanup(api: &mut impl TargetApi, p: &TableParams) {
    for call in [
        remove_ns(&p.nqn_a(), 2),
        destroy_subsys(&p.nqn_empty()),
        unshare(&p.bdev_a()),
        destroy(&p.bdev_a()),
        destroy(&p.bdev_b()),
    ] {
        let _ = api.call(call).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says yes to everything and lists nothing.
    struct Yes;

    impl TargetApi for Yes {
        async fn call(&mut self, call: Call) -> Result<Reply, Status> {
            Ok(match call {
                Call::ListBdevs => Reply::Bdevs(Default::default()),
                Call::ListSubsystems => Reply::Subsystems(Default::default()),
                _ => Reply::Done,
            })
        }
    }

    #[tokio::test]
    async fn the_runner_reports_every_row_that_got_the_wrong_code() {
        let err =
            run_bad_request_table(&mut Yes, &TableParams::default()).await.unwrap_err().to_string();
        let bad = bad_request_table(&TableParams::default())
            .iter()
            .filter(|c| c.expect != Code::Ok)
            .count();
        assert!(err.contains(&format!("{bad} of")), "{err}");
        assert!(
            err.contains("destroy A while shared: expected FailedPrecondition, got Ok"),
            "{err}"
        );
    }

    #[test]
    fn the_table_has_thirty_bad_requests_each_naming_a_value() {
        let table = bad_request_table(&TableParams::default());
        let bad: Vec<_> = table.iter().filter(|c| c.expect != Code::Ok).collect();
        assert!(bad.len() >= 30, "{}", bad.len());
        assert!(bad.iter().all(|c| !c.names.is_empty()), "every bad row names what is wrong");
    }
}
