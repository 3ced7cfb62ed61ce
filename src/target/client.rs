//! A typed client of `vmcheck-target`: the generated tonic client, connected once the daemon
//! really answers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tonic::transport::{Channel, Endpoint};

use super::proto::{self, target_client};

impl crate::Machine {
    /// A gRPC client of the target daemon in this machine, through the run's loopback forward
    /// of [`super::GRPC_PORT`] (in guest mode: at a peer's address). It retries until the daemon
    /// answers (it may still be starting). On a VM of this run, what the guest agent still owes
    /// from a restore (the clock set) is awaited first, so the daemon is only reached once the
    /// guest's clock is the host's.
    pub async fn target_client(&self) -> anyhow::Result<TargetClient> {
        if self.backend() == crate::machine::Backend::Qemu {
            self.qga().await?.settle().await.map_err(|e| {
                self.harness_error("the guest agent's requests sent ahead failed", format!("{e:#}"))
            })?;
        }
        let addr = self.tcp_addr(super::GRPC_PORT).await?;
        connect(addr, crate::timeouts::boot()).await.map_err(|e| {
            self.error("connecting to the target daemon", format!("through {addr}: {e:#}"))
        })
    }
}

/// The generated client over a tonic channel.
pub type TargetClient = target_client::TargetClient<Channel>;

/// The `/dev` node of the disk with `serial` among those `ListDisks` answered.
pub(crate) fn disk_node(disks: &[proto::Disk], serial: &str) -> Option<String> {
    disks.iter().find(|d| d.serial == serial).map(|d| format!("/dev/{}", d.name))
}

/// Longest single attempt; the whole wait is the caller's `timeout`.
const ATTEMPT: Duration = crate::timeouts::DAEMON_ATTEMPT;

/// Connects to the daemon at `addr`, retrying until `timeout`: the daemon may still be starting.
///
/// A connection alone proves nothing (a QEMU `hostfwd` accepts before the guest listens), so
/// each attempt ends with a `Health` call.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<TargetClient> {
    // Every call carries the driver's request timeout (as grpc-timeout, which the daemon
    // honours): a hung call fails after it instead of waiting for the global timeout.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("target address {addr}"))?
        .connect_timeout(ATTEMPT)
        .timeout(crate::timeouts::request());
    let (attempts, last) = (std::sync::atomic::AtomicU32::new(0), std::sync::Mutex::new(None));
    let polled = crate::poll::until(timeout, crate::timeouts::DAEMON_POLL, |left| {
        let (endpoint, attempts, last) = (&endpoint, &attempts, &last);
        async move {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let error = match tokio::time::timeout(left.min(ATTEMPT), attempt(endpoint)).await {
                Ok(Ok(client)) => return Ok(Some(client)),
                Ok(Err(err)) => err,
                Err(_) => anyhow!("no answer within {:?}", left.min(ATTEMPT)),
            };
            *last.lock().unwrap() = Some(error);
            Ok(None)
        }
    })
    .await?;
    match polled {
        crate::poll::Polled::Done(client) => Ok(client),
        crate::poll::Polled::TimedOut(_) => {
            let error =
                last.into_inner().unwrap().unwrap_or_else(|| anyhow!("no attempt finished"));
            let attempts = attempts.into_inner();
            Err(error.context(format!(
                "vmcheck-target at {addr} did not answer within {timeout:?} ({attempts} attempts)"
            )))
        }
    }
}

async fn attempt(endpoint: &Endpoint) -> anyhow::Result<TargetClient> {
    let channel = endpoint.connect().await.context("connecting")?;
    let mut client = TargetClient::new(channel);
    client.health(proto::HealthRequest {}).await.context("Health")?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::backing::Backing;
    use crate::target::configfs::ConfigFs;
    use crate::target::conformance::{run_bad_request_table, TableParams};
    use crate::target::nvmet::{Nvmet, ROOT_LAYOUT};
    use crate::target::proto::target_server::TargetServer;
    use crate::target::service::{TargetService, Traddr};
    use std::time::Instant;
    use tokio_stream::wrappers::TcpListenerStream;

    /// The daemon's stack on loopback, started late: connect waits for it, and the bad-request
    /// table runs over real gRPC.
    #[tokio::test]
    async fn connect_waits_for_a_late_daemon_and_the_table_runs_over_grpc() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Not accepting yet: the first attempts fail as they would while the guest boots.
        drop(listener);
        let root = dir.path().to_path_buf();
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let fs = ConfigFs::emulated(root.join("nvmet"), &ROOT_LAYOUT).unwrap();
            let svc = TargetService::new(
                Nvmet::new(fs),
                Backing::new(root.join("sys"), root.join("malloc")),
                Traddr::Fixed([192, 0, 2, 1].into()),
            );
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            tonic::transport::Server::builder()
                .add_service(TargetServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        let mut client = connect(addr, Duration::from_secs(20)).await.unwrap();
        let outcomes = run_bad_request_table(&mut client, &TableParams::default()).await.unwrap();
        assert!(outcomes.len() >= 30);
        server.abort();
    }

    /// Over real gRPC, a call stuck behind a slow one gets the daemon's own DEADLINE_EXCEEDED
    /// (its message says nothing was changed) before the client's timer fires, and did nothing.
    #[tokio::test]
    async fn a_call_past_its_grpc_timeout_gets_the_daemons_answer_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let svc = std::sync::Arc::new(TargetService::new(
            Nvmet::new(ConfigFs::emulated(dir.path().join("nvmet"), &ROOT_LAYOUT).unwrap()),
            Backing::new(dir.path().join("sys"), dir.path().join("malloc")),
            Traddr::Fixed([192, 0, 2, 1].into()),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TargetServer::from_arc(svc.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let mut client = connect(addr, Duration::from_secs(20)).await.unwrap();
        let held = svc.hold_lock_for_tests().await;
        let mut req = tonic::Request::new(proto::CreateBdevRequest {
            uri: "malloc:///slow?size_mb=1".into(),
        });
        req.set_timeout(Duration::from_millis(500));
        let err = client.create_bdev(req).await.unwrap_err();
        drop(held);
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(
            err.message().contains("nothing was changed"),
            "the daemon's answer, not the client's timer: {err:?}"
        );
        assert!(client
            .list_bdevs(proto::ListBdevsRequest {})
            .await
            .unwrap()
            .into_inner()
            .bdevs
            .is_empty());
        assert!(!dir.path().join("malloc/slow").exists());
        server.abort();
    }

    #[tokio::test]
    async fn connect_gives_up_at_the_timeout_naming_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let started = Instant::now();
        let err = connect(addr, Duration::from_millis(600)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");
    }
}
