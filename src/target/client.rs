//! A typed client of `vmcheck-target`: the generated tonic client, connected once the daemon
//! really answers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::proto::{self, target_client};

/// The generated client over a tonic channel.
pub type TargetClient = target_client::TargetClient<Channel>;

/// Longest single attempt; the whole wait is the caller's `timeout`.
const ATTEMPT: Duration = Duration::from_secs(5);
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Connects to the daemon at `addr`, retrying until `timeout`: the daemon may still be starting.
///
/// A connection alone proves nothing (a QEMU `hostfwd` accepts before the guest listens), so
/// each attempt ends with a `Health` call.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<TargetClient> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).with_context(|| format!("target address {addr}"))?.connect_timeout(ATTEMPT);
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(left.min(ATTEMPT), attempt(&endpoint)).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(err)) => err,
            Err(_) => anyhow!("no answer within {:?}", left.min(ATTEMPT)),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(error.context(format!("vmcheck-target at {addr} did not answer within {timeout:?} ({attempts} attempts)")));
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

async fn attempt(endpoint: &Endpoint) -> anyhow::Result<TargetClient> {
    let channel = endpoint.connect().await.context("connecting")?;
    let mut client = TargetClient::new(channel);
    client.health(proto::HealthRequest {}).await.context("Health")?;
    Ok(client)
}
