//! The test network: a learning Ethernet switch in the driver, one per vlan, linked to each
//! QEMU by a unix datagram socket (`-netdev dgram`). No root, no host interface, nothing outside
//! the run directory. The switch is also where link faults are made: a port can be cut (both
//! directions), lose a share of its frames, or delay them.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The fault state of one port.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub up: bool,
    /// Share of frames dropped, 0.0 to 1.0.
    pub loss: f64,
    pub delay: Duration,
}

impl Default for Link {
    fn default() -> Self {
        Link { up: true, loss: 0.0, delay: Duration::ZERO }
    }
}

#[derive(Debug)]
struct Port {
    machine: String,
    /// The socket the machine's QEMU binds.
    peer: PathBuf,
    link: Link,
}

#[derive(Default)]
struct State {
    ports: Vec<Port>,
    /// MAC address -> port index.
    learned: HashMap<[u8; 6], usize>,
    rng: u64,
}

/// Frame counters, for tests and the benchmark.
#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// One vlan's switch.
pub struct Switch {
    pub vlan: u32,
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        // The forwarding thread sees this within its receive timeout.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How often the forwarding thread looks at its stop flag when no frame comes.
const STOP_POLL: Duration = Duration::from_millis(200);

impl Switch {
    /// Binds the switch's socket in `dir` and starts forwarding on a thread of its own: a
    /// blocking socket on a dedicated thread forwards with less latency per frame than an async
    /// task that two busy QEMUs contend with (measured by `vmcheck bench`).
    pub fn start(vlan: u32, dir: &Path) -> Result<Switch> {
        let socket = dir.join(format!("switch-vlan{vlan}.sock"));
        let sock = UnixDatagram::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
        sock.set_read_timeout(Some(STOP_POLL))?;
        let state = Arc::new(Mutex::new(State { rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(vlan), ..State::default() }));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c, f) = (state.clone(), counters.clone(), stop.clone());
        std::thread::Builder::new().name(format!("switch-vlan{vlan}")).spawn(move || forward(sock, s, c, f))?;
        Ok(Switch { vlan, socket, state, counters, stop })
    }

    /// Plugs a machine in: frames from `peer` come from it, frames for it go to `peer`.
    pub fn add_port(&self, machine: &str, peer: &Path) {
        let mut s = self.state.lock().unwrap();
        s.ports.retain(|p| p.machine != machine);
        s.ports.push(Port { machine: machine.to_string(), peer: peer.to_path_buf(), link: Link::default() });
        s.learned.clear();
    }

    /// Changes a machine's link.
    pub fn set_link(&self, machine: &str, change: impl FnOnce(&mut Link)) -> Result<()> {
        let mut s = self.state.lock().unwrap();
        let Some(port) = s.ports.iter_mut().find(|p| p.machine == machine) else {
            bail!("machine {machine} is not on vlan {}", self.vlan);
        };
        change(&mut port.link);
        Ok(())
    }

    pub fn link(&self, machine: &str) -> Option<Link> {
        self.state.lock().unwrap().ports.iter().find(|p| p.machine == machine).map(|p| p.link.clone())
    }
}

/// Where a frame goes, and after how long; None when it is dropped.
fn route(s: &mut State, from: &Path, frame: &[u8]) -> Option<(Vec<PathBuf>, Duration)> {
    if frame.len() < 14 {
        return None;
    }
    let src_port = s.ports.iter().position(|p| p.peer == from)?;
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    s.learned.insert(src, src_port);
    let lossy = |s: &mut State, link: &Link| -> bool {
        if !link.up {
            return true;
        }
        if link.loss <= 0.0 {
            return false;
        }
        // xorshift64: enough randomness for loss, no dependency.
        s.rng ^= s.rng << 13;
        s.rng ^= s.rng >> 7;
        s.rng ^= s.rng << 17;
        (s.rng % 1_000_000) as f64 / 1e6 < link.loss
    };
    let in_link = s.ports[src_port].link.clone();
    if lossy(s, &in_link) {
        return None;
    }
    let targets: Vec<usize> = match s.learned.get(&dst) {
        Some(&p) if dst[0] & 1 == 0 => vec![p],
        _ => (0..s.ports.len()).filter(|&p| p != src_port).collect(),
    };
    let mut out = Vec::new();
    let mut delay = in_link.delay;
    for t in targets {
        let link = s.ports[t].link.clone();
        if t == src_port || lossy(s, &link) {
            continue;
        }
        delay = delay.max(link.delay);
        out.push(s.ports[t].peer.clone());
    }
    (!out.is_empty()).then_some((out, delay))
}

/// Sends without waiting: a peer that is not running, or not reading (a paused VM), misses the
/// frame, as on a real switch, instead of stalling every other port.
fn send_frame(sock: &UnixDatagram, frame: &[u8], peer: &Path) {
    use nix::sys::socket::{sendto, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    if let Ok(addr) = UnixAddr::new(peer) {
        let _ = sendto(sock.as_raw_fd(), frame, &addr, MsgFlags::MSG_DONTWAIT);
    }
}

fn forward(sock: UnixDatagram, state: Arc<Mutex<State>>, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    let sock = Arc::new(sock);
    // Delayed frames go through one thread in arrival order (a link's delay is constant).
    let (delayed_tx, delayed_rx) = mpsc::channel::<(Instant, Vec<u8>, Vec<PathBuf>)>();
    let delay_sock = sock.clone();
    let _ = std::thread::Builder::new().name("switch-delay".into()).spawn(move || {
        for (due, frame, peers) in delayed_rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            for p in &peers {
                send_frame(&delay_sock, &frame, p);
            }
        }
    });
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, addr)) = sock.recv_from(&mut buf) else { continue };
        let Some(from) = addr.as_pathname() else { continue };
        let routed = route(&mut state.lock().unwrap(), from, &buf[..n]);
        let Some((peers, delay)) = routed else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
        if delay.is_zero() {
            for p in &peers {
                send_frame(&sock, &buf[..n], p);
            }
        } else {
            let _ = delayed_tx.send((Instant::now() + delay, buf[..n].to_vec(), peers));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, 0, 0]);
        f
    }
    const A: [u8; 6] = [0x52, 0x54, 0, 0x12, 1, 1];
    const B: [u8; 6] = [0x52, 0x54, 0, 0x12, 1, 2];
    const BCAST: [u8; 6] = [0xff; 6];

    fn state() -> State {
        let mut s = State { rng: 1, ..State::default() };
        for m in ["a", "b", "c"] {
            s.ports.push(Port { machine: m.into(), peer: PathBuf::from(m), link: Link::default() });
        }
        s
    }

    #[test]
    fn floods_unknown_then_learns() {
        let mut s = state();
        let (to, _) = route(&mut s, Path::new("a"), &frame(BCAST, A)).unwrap();
        assert_eq!(to, [PathBuf::from("b"), PathBuf::from("c")]);
        let (to, _) = route(&mut s, Path::new("b"), &frame(A, B)).unwrap();
        assert_eq!(to, [PathBuf::from("a")]);
    }

    #[test]
    fn a_cut_link_drops_both_directions_and_loss_is_a_share() {
        let mut s = state();
        route(&mut s, Path::new("a"), &frame(BCAST, A));
        s.ports[1].link.up = false;
        assert!(route(&mut s, Path::new("b"), &frame(A, B)).is_none());
        let (to, _) = route(&mut s, Path::new("a"), &frame(BCAST, A)).unwrap();
        assert_eq!(to, [PathBuf::from("c")]);
        s.ports[1].link = Link { loss: 0.5, ..Link::default() };
        let passed = (0..2000).filter(|_| route(&mut s, Path::new("b"), &frame(A, B)).is_some()).count();
        assert!((800..1200).contains(&passed), "{passed} of 2000 passed at 50% loss");
        assert!(route(&mut s, Path::new("stranger"), &frame(A, B)).is_none());
    }
}
