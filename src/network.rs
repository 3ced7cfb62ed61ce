//! The test network: a learning Ethernet switch in the driver, one per vlan, linked to each
//! QEMU NIC by a connected unix datagram socket pair (`socketpair(AF_UNIX, SOCK_DGRAM)`): QEMU
//! gets one end as an inherited fd (`-netdev dgram,local.type=fd`), the switch keeps the other
//! as that port's socket. Both ends are each other's peer, so Linux does not cap either queue
//! at `net.unix.max_dgram_qlen` (10) datagrams, as it does for an unconnected socket; only the
//! sender's socket buffer limits what is in flight. No root, no host interface, no socket path.
//!
//! The switch is also the fault injector. Each machine's link (one per vlan it is on) can be cut
//! (both directions), lose a share of its frames, delay them (with jitter), or be capped to a
//! bandwidth; machines can be partitioned from each other (frames between two groups dropped on
//! every vlan, all others pass). A change takes effect on the next frame the switch handles,
//! frames already waiting in a delay queue included. Every link counts the frames it passed and
//! dropped, by reason; [`report`] is what a run keeps among its artifacts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::MsgFlags;

use crate::log;

/// The fault state of one machine's link on one vlan. Loss, delay and the cap apply to each
/// direction of the link; a frame between two machines crosses two links and gets both.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Whether the link carries frames at all (`false`: every frame is dropped).
    pub up: bool,
    /// Share of frames dropped, 0.0 to 1.0.
    pub loss: f64,
    /// Added one-way delay.
    pub delay: Duration,
    /// Each frame's delay varies uniformly by up to this much either way. Frames are not
    /// reordered by it: a frame never overtakes an earlier one on the same link.
    pub jitter: Duration,
    /// Bandwidth cap in bytes per second (each direction); frames beyond a queue of
    /// [`RATE_QUEUE`] are dropped, as a router's tail drop would.
    pub rate: Option<u64>,
}

impl Default for Link {
    fn default() -> Self {
        Link { up: true, loss: 0.0, delay: Duration::ZERO, jitter: Duration::ZERO, rate: None }
    }
}

impl Link {
    /// Whether frames cross it untouched (the fast path: no clock, no queue).
    fn clean(&self) -> bool {
        self.up
            && self.loss <= 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.rate.is_none()
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.clean() {
            return f.write_str("up, clean");
        }
        f.write_str(if self.up { "up" } else { "DOWN" })?;
        if self.loss > 0.0 {
            write!(f, ", loss {:.1} %", self.loss * 100.0)?;
        }
        if !self.delay.is_zero() || !self.jitter.is_zero() {
            write!(f, ", delay {} ms ± {} ms", self.delay.as_millis(), self.jitter.as_millis())?;
        }
        if let Some(r) = self.rate {
            write!(f, ", cap {:.2} MB/s", r as f64 / 1e6)?;
        }
        Ok(())
    }
}

/// How long a capped link may queue frames before it drops them.
pub const RATE_QUEUE: Duration = Duration::from_millis(100);

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The link was down.
    Down,
    /// Picked for random loss.
    Loss,
    /// The two machines are partitioned from each other.
    Partition,
    /// The capped link's queue was full.
    Queue,
    /// The peer's backlog was full ([`BACKLOG`]; [`SEND_WAIT`] for a delayed frame), or no peer
    /// is there (not running).
    Peer,
}

/// One link's frame counts. `from_*` counts frames the machine sent into the switch, `to_*`
/// frames the switch had for the machine (a flooded frame counts once per port).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames the machine sent that the switch passed on.
    pub from_passed: u64,
    /// Frames the machine sent that the switch dropped.
    pub from_dropped: u64,
    /// Frames for the machine that it was given.
    pub to_passed: u64,
    /// Frames for the machine that were dropped.
    pub to_dropped: u64,
    /// Bytes of the frames the machine sent that were passed on.
    pub bytes_from: u64,
    /// Bytes of the frames passed on to the machine.
    pub bytes_to: u64,
    /// Drops by reason: down, loss, partition, queue, peer ([`DropReason`]).
    pub dropped_by: [u64; 5],
}

impl LinkCounters {
    fn drop_from(&mut self, why: DropReason) {
        self.from_dropped += 1;
        self.dropped_by[why as usize] += 1;
    }
    fn drop_to(&mut self, why: DropReason) {
        self.to_dropped += 1;
        self.dropped_by[why as usize] += 1;
    }
}

#[derive(Debug)]
struct Port {
    machine: String,
    /// The switch's end of the socket pair whose other end the machine's QEMU holds.
    sock: Arc<UnixDatagram>,
    link: Link,
    counters: LinkCounters,
    /// Ports (by index) this one may not reach: the partitions, as a mask the forwarding
    /// path can test without looking at names. Up to 64 machines per vlan.
    cut: u64,
    /// When each direction's shaper is free again (bandwidth cap), and when the last frame was
    /// due (delay with jitter keeps frames in order).
    free_from: Instant,
    free_to: Instant,
    last_due_to: Instant,
}

struct State {
    ports: Vec<Port>,
    /// MAC address -> port index.
    learned: HashMap<[u8; 6], usize>,
    /// Pairs of machine names that may not talk (either order).
    partitions: HashSet<(String, String)>,
    rng: u64,
    /// Fault changes, with the time since the switch started, for the report.
    events: Vec<String>,
    started: Instant,
    /// Bumped when a port is plugged in (the forwarding threads take its new socket).
    generation: u64,
}

impl State {
    fn new(vlan: u32) -> State {
        State {
            ports: Vec::new(),
            learned: HashMap::new(),
            partitions: HashSet::new(),
            rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(vlan),
            events: Vec::new(),
            started: Instant::now(),
            generation: 0,
        }
    }

    fn add_port(&mut self, machine: &str, sock: UnixDatagram) -> Result<()> {
        if self.ports.len() >= 64 && !self.ports.iter().any(|p| p.machine == machine) {
            bail!("a vlan holds at most 64 machines");
        }
        sock.set_nonblocking(true).context("making the port's socket non-blocking")?;
        let old = self.ports.iter().position(|p| p.machine == machine);
        let now = Instant::now();
        let port = Port {
            machine: machine.to_string(),
            sock: Arc::new(sock),
            link: Link::default(),
            counters: LinkCounters::default(),
            cut: 0,
            free_from: now,
            free_to: now,
            last_due_to: now,
        };
        match old {
            // A restarted machine keeps its link's faults and counts.
            Some(i) => {
                let p = &mut self.ports[i];
                p.sock = port.sock;
            }
            None => self.ports.push(port),
        }
        self.learned.clear();
        self.generation += 1;
        self.rebuild_cuts();
        Ok(())
    }

    fn rebuild_cuts(&mut self) {
        let names: Vec<String> = self.ports.iter().map(|p| p.machine.clone()).collect();
        for (i, a) in names.iter().enumerate() {
            let mut cut = 0u64;
            for (j, b) in names.iter().enumerate() {
                if self.partitions.contains(&(a.clone(), b.clone()))
                    || self.partitions.contains(&(b.clone(), a.clone()))
                {
                    cut |= 1 << j;
                }
            }
            self.ports[i].cut = cut;
        }
    }

    fn event(&mut self, what: String) {
        let t = self.started.elapsed().as_secs_f64();
        self.events.push(format!("{t:>10.3} s  {what}"));
    }

    /// xorshift64: enough randomness for loss and jitter, no dependency.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where a frame goes: a port and, when the frame must wait (delay, cap), when it is due.
pub type Hop = (usize, Option<Instant>);

/// The one-way wait a link adds to a frame of `len` bytes at `now`, or a drop; `free` is the
/// link's shaper (when it is next free) for this direction.
fn shape(
    link: &Link,
    free: &mut Instant,
    len: usize,
    now: Instant,
) -> Result<Duration, DropReason> {
    let Some(rate) = link.rate else { return Ok(Duration::ZERO) };
    let start = (*free).max(now);
    if start.duration_since(now) > RATE_QUEUE {
        return Err(DropReason::Queue);
    }
    let send_time = Duration::from_secs_f64(len as f64 / rate.max(1) as f64);
    *free = start + send_time;
    Ok(*free - now)
}

/// Routes a frame from port `src` at `now`: fills `out` with where it goes.
/// Counters are updated here; nothing is sent.
fn route(s: &mut State, src: usize, frame: &[u8], now: Instant, out: &mut Vec<Hop>) {
    out.clear();
    if frame.len() < 14 || src >= s.ports.len() {
        return;
    }
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    if s.learned.get(&src_mac) != Some(&src) {
        s.learned.insert(src_mac, src);
    }
    let len = frame.len();
    // The sender's own link first: down, loss, its cap and its delay.
    let mut wait = Duration::ZERO;
    if !s.ports[src].link.clean() {
        let link = s.ports[src].link.clone();
        let verdict = if !link.up {
            Err(DropReason::Down)
        } else if link.loss > 0.0 && s.random() < link.loss {
            Err(DropReason::Loss)
        } else {
            let p = &mut s.ports[src];
            shape(&link, &mut p.free_from, len, now)
        };
        match verdict {
            Ok(w) => wait = w + link.delay,
            Err(why) => {
                s.ports[src].counters.drop_from(why);
                return;
            }
        }
        if !link.jitter.is_zero() {
            wait = jittered(s, wait, link.jitter);
        }
    }
    let unicast = dst_mac[0] & 1 == 0;
    let cut = s.ports[src].cut;
    let deliver = |s: &mut State, t: usize, out: &mut Vec<Hop>| {
        if cut & (1 << t) != 0 {
            s.ports[t].counters.drop_to(DropReason::Partition);
            return;
        }
        let p = &mut s.ports[t];
        if p.link.clean() && wait.is_zero() {
            p.counters.to_passed += 1;
            p.counters.bytes_to += len as u64;
            out.push((t, None));
            return;
        }
        let link = p.link.clone();
        if !link.up {
            p.counters.drop_to(DropReason::Down);
            return;
        }
        if link.loss > 0.0 && s.random() < link.loss {
            s.ports[t].counters.drop_to(DropReason::Loss);
            return;
        }
        let mut extra = link.delay;
        if !link.jitter.is_zero() {
            extra = jittered(s, extra, link.jitter);
        }
        let p = &mut s.ports[t];
        // The frame reaches this link's shaper after the sender's link is done with it.
        let arrival = now + wait;
        match shape(&link, &mut p.free_to, len, arrival) {
            Err(why) => p.counters.drop_to(why),
            Ok(w) => {
                let due = (arrival + w + extra).max(p.last_due_to);
                p.last_due_to = due;
                p.counters.to_passed += 1;
                p.counters.bytes_to += len as u64;
                out.push((t, (due > now).then_some(due)));
            }
        }
    };
    let learned = s.learned.get(&dst_mac).copied();
    match learned {
        Some(t) if unicast && t != src => deliver(s, t, out),
        Some(_) if unicast => {}
        _ => {
            for t in 0..s.ports.len() {
                if t != src {
                    deliver(s, t, out);
                }
            }
        }
    }
    let p = &mut s.ports[src].counters;
    if out.is_empty() {
        p.from_dropped += 1;
    } else {
        p.from_passed += 1;
        p.bytes_from += len as u64;
    }
}

fn jittered(s: &mut State, base: Duration, jitter: Duration) -> Duration {
    let offset = (s.random() * 2.0 - 1.0) * jitter.as_secs_f64();
    Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
}

/// One vlan's switch.
pub struct Switch {
    /// The vlan it serves.
    pub vlan: u32,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    /// A byte here wakes the forwarding thread to poll a newly plugged port's socket.
    wake: UnixDatagram,
}

impl std::ops::Drop for Switch {
    fn drop(&mut self) {
        // The forwarding thread sees this when the byte wakes it (or within its poll timeout).
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(&[0]);
    }
}

/// How often the forwarding thread looks at its stop flag when no frame comes.
const STOP_POLL: Duration = Duration::from_millis(200);

impl Switch {
    /// Starts forwarding on a thread of its own: a dedicated thread polling its sockets
    /// forwards with less latency per frame than an async task that two busy QEMUs contend
    /// with (measured by `vmcheck bench`).
    pub fn start(vlan: u32) -> Result<Switch> {
        Switch::start_with(vlan, BACKLOG)
    }

    /// [`Switch::start`] holding at most `backlog` frames for a full peer; with 0 such a frame
    /// is dropped at once (the benchmark compares both).
    pub fn start_with(vlan: u32, backlog: usize) -> Result<Switch> {
        let (wake, woken) =
            UnixDatagram::pair().context("creating the switch's wake-up socket pair")?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State::new(vlan)));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("switch-vlan{vlan}"))
            .spawn(move || forward(woken, s, f, backlog))?;
        Ok(Switch { vlan, state, stop, wake })
    }

    /// A connected socket pair for a machine's NIC: `(QEMU's end, the switch's end)`. QEMU's
    /// end is passed to the QEMU process ([`crate::qemu::NicLink::Fd`]); the switch's end to
    /// [`Switch::add_port`] when that process is to be on the network. Both are close-on-exec.
    pub fn socket_pair() -> Result<(UnixDatagram, UnixDatagram)> {
        UnixDatagram::pair().context("creating a NIC's socket pair")
    }

    /// Plugs a machine in: frames read from `sock` come from it, frames for it are sent there.
    /// A machine plugged in again (a restart, a migration target) keeps its link's faults and
    /// counters; its previous socket is closed. A port that cannot be made (a 65th machine) is
    /// logged: the machine then has no network, which its test will show.
    pub fn add_port(&self, machine: &str, sock: UnixDatagram) {
        if let Err(e) = self.state.lock().unwrap().add_port(machine, sock) {
            log::line(&format!("network: vlan {}: cannot plug in {machine}: {e:#}", self.vlan));
        }
        let _ = self.wake.send(&[1]);
    }

    /// Changes a machine's link; logs and records the new state.
    pub fn set_link(&self, machine: &str, change: impl FnOnce(&mut Link)) -> Result<Link> {
        let mut s = self.state.lock().unwrap();
        let vlan = self.vlan;
        let Some(port) = s.ports.iter_mut().find(|p| p.machine == machine) else {
            bail!("machine {machine} is not on vlan {vlan}");
        };
        change(&mut port.link);
        port.link.loss = port.link.loss.clamp(0.0, 1.0);
        let link = port.link.clone();
        let what = format!("{machine} on vlan {vlan}: {link}");
        s.event(what.clone());
        drop(s);
        log::line(&format!("network: {what}"));
        Ok(link)
    }

    /// A machine's link now.
    pub fn link(&self, machine: &str) -> Option<Link> {
        self.state
            .lock()
            .unwrap()
            .ports
            .iter()
            .find(|p| p.machine == machine)
            .map(|p| p.link.clone())
    }

    /// A machine's frame counts now.
    pub fn counters(&self, machine: &str) -> Option<LinkCounters> {
        self.state
            .lock()
            .unwrap()
            .ports
            .iter()
            .find(|p| p.machine == machine)
            .map(|p| p.counters.clone())
    }

    /// Drops frames between every machine of `a` and every machine of `b` (both ways); or,
    /// with `cut` false, lets them pass again. Machines not on this vlan are ignored.
    fn set_partition(&self, a: &[&str], b: &[&str], cut: bool) {
        let mut s = self.state.lock().unwrap();
        for x in a {
            for y in b {
                let pair = (x.to_string(), y.to_string());
                if cut {
                    s.partitions.insert(pair);
                } else {
                    s.partitions.remove(&pair);
                    s.partitions.remove(&(pair.1, pair.0));
                }
            }
        }
        s.rebuild_cuts();
        let verb = if cut { "partitioned" } else { "healed" };
        s.event(format!("{verb} {a:?} | {b:?}"));
    }

    /// Lets every partitioned pair talk again.
    fn heal_all(&self) {
        let mut s = self.state.lock().unwrap();
        s.partitions.clear();
        s.rebuild_cuts();
        s.event("healed every partition".into());
    }

    /// This switch's links, counters and fault events, for the run's artifacts.
    pub fn report(&self) -> String {
        let s = self.state.lock().unwrap();
        let mut r = format!("vlan {}\n", self.vlan);
        r += &format!(
            "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}  {:<30}  link\n",
            "machine",
            "from:pass",
            "from:drop",
            "to:pass",
            "to:drop",
            "bytes from",
            "bytes to",
            "drops (down/loss/part/queue/peer)"
        );
        for p in &s.ports {
            let c = &p.counters;
            let by = c.dropped_by.map(|n| n.to_string()).join("/");
            r += &format!(
                "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}  {by:<30}  {}\n",
                p.machine,
                c.from_passed,
                c.from_dropped,
                c.to_passed,
                c.to_dropped,
                c.bytes_from,
                c.bytes_to,
                p.link
            );
        }
        if !s.partitions.is_empty() {
            let mut pairs: Vec<_> = s.partitions.iter().map(|(a, b)| format!("{a}|{b}")).collect();
            pairs.sort();
            r += &format!("  partitioned now: {}\n", pairs.join(", "));
        }
        r += "  fault events:\n";
        for e in &s.events {
            r += &format!("  {e}\n");
        }
        r
    }
}

/// [`crate::machine::partition`] by machine names on the given switches.
pub fn partition_on<'s>(switches: impl IntoIterator<Item = &'s Switch>, a: &[&str], b: &[&str]) {
    for sw in switches {
        sw.set_partition(a, b, true);
    }
    log::line(&format!("network: partitioned {a:?} from {b:?}"));
}

/// [`crate::machine::heal`] by machine names on the given switches.
pub fn heal_on<'s>(switches: impl IntoIterator<Item = &'s Switch>, a: &[&str], b: &[&str]) {
    for sw in switches {
        sw.set_partition(a, b, false);
    }
    log::line(&format!("network: healed {a:?} | {b:?}"));
}

/// Undoes every partition.
pub fn heal_all<'s>(switches: impl IntoIterator<Item = &'s Switch>) {
    for sw in switches {
        sw.heal_all();
    }
    log::line("network: healed every partition");
}

/// Every switch's report, vlans in order: what a run keeps as `network.txt`.
pub fn report<'s>(switches: impl IntoIterator<Item = &'s Switch>) -> String {
    let mut all: Vec<&Switch> = switches.into_iter().collect();
    all.sort_by_key(|s| s.vlan);
    all.iter().map(|s| s.report()).collect::<Vec<_>>().join("\n")
}

/// A machine's address on `vlan`: its configured address on vlan 1; on another vlan the same
/// host number in `198.18.<vlan>.0/24` (RFC 2544's benchmarking range, never routed), so a
/// machine on two vlans has two subnets and the kernel routes each by its own NIC.
pub fn vlan_address(address: std::net::Ipv4Addr, vlan: u32) -> std::net::Ipv4Addr {
    if vlan == 1 {
        return address;
    }
    std::net::Ipv4Addr::new(198, 18, (vlan & 0xff) as u8, address.octets()[3])
}

/// A frame waiting for its due time (delay, jitter, a cap).
struct Delayed {
    due: Instant,
    seq: u64,
    to: usize,
    from_machine: usize,
    frame: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// Sends waiting frames when they are due, through outputs of its own (waiting for a full
/// peer as the forwarding thread does). A link cut or a partition made while a frame waits
/// drops it: a fault takes effect on frames in flight too.
fn delay_loop(
    state: Arc<Mutex<State>>,
    rx: mpsc::Receiver<Delayed>,
    stop: Arc<AtomicBool>,
    wait: bool,
) {
    let mut queue: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    let mut outputs: Vec<Output> = Vec::new();
    let mut generation = u64::MAX;
    loop {
        let next = queue.peek().map(|Reverse(d)| d.due);
        let got = match next {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv_timeout(STOP_POLL),
        };
        match got {
            Ok(d) => queue.push(Reverse(d)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Reverse(d) = queue.pop().expect("peeked");
            let mut s = state.lock().unwrap();
            if s.generation != generation {
                generation = s.generation;
                outputs = s.ports.iter().map(|p| Output::new(p.sock.clone())).collect();
            }
            let Some(p) = s.ports.get(d.to) else { continue };
            let (up, cut) = (p.link.up, p.cut & (1 << d.from_machine) != 0);
            let src_up = s.ports.get(d.from_machine).is_some_and(|p| p.link.up);
            if !up || !src_up || cut {
                let why = if cut { DropReason::Partition } else { DropReason::Down };
                let p = &mut s.ports[d.to];
                p.counters.to_passed -= 1;
                p.counters.drop_to(why);
                continue;
            }
            drop(s);
            if !matches!(outputs[d.to].try_send(&d.frame, wait), Sent::Yes) {
                let mut s = state.lock().unwrap();
                if let Some(p) = s.ports.get_mut(d.to) {
                    p.counters.to_passed -= 1;
                    p.counters.drop_to(DropReason::Peer);
                }
            }
        }
    }
}

/// How long the delay thread waits for a peer whose socket is full before it drops a delayed
/// frame (the forwarding thread queues instead, [`BACKLOG`]).
pub const SEND_WAIT: Duration = Duration::from_millis(10);

/// Frames the switch holds for one peer whose socket is full (a port's socket pair holds what
/// the switch's end's send buffer allows, about 200 KB), sent in order as the peer reads.
/// Dropping them instead costs TCP half its throughput; `vmcheck bench --nvmeof --networks
/// switch,switch-no-wait,direct` compares. Beyond this a frame is dropped (a paused VM costs
/// the others nothing).
pub const BACKLOG: usize = 1024;

enum Sent {
    Yes,
    Full,
    /// No peer there (its QEMU has exited).
    Gone,
}

/// Waits up to `timeout` until `fd` may be written.
fn wait_writable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    use nix::libc;
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) > 0 }
}

/// The switch's way to one port's peer: the switch's end of the port's socket pair, and frames
/// waiting for the peer to read.
struct Output {
    sock: Option<Arc<UnixDatagram>>,
    backlog: std::collections::VecDeque<Vec<u8>>,
}

impl Output {
    fn new(sock: Arc<UnixDatagram>) -> Output {
        Output { sock: Some(sock), backlog: std::collections::VecDeque::new() }
    }

    /// One send, waiting up to [`SEND_WAIT`] when `wait`.
    fn try_send(&mut self, frame: &[u8], wait: bool) -> Sent {
        let Some(sock) = &self.sock else { return Sent::Gone };
        let fd = sock.as_raw_fd();
        for attempt in 0..2 {
            match nix::sys::socket::send(fd, frame, MsgFlags::MSG_DONTWAIT) {
                Ok(_) => return Sent::Yes,
                Err(nix::errno::Errno::EAGAIN)
                    if wait && attempt == 0 && wait_writable(fd, SEND_WAIT) => {}
                Err(nix::errno::Errno::EAGAIN) => return Sent::Full,
                Err(_) => break,
            }
        }
        // The peer closed its end: nothing reaches it through this socket again.
        self.sock = None;
        Sent::Gone
    }

    /// Sends `frame` or queues it behind earlier ones (at most `cap`); false when dropped.
    fn send(&mut self, frame: &[u8], cap: usize) -> bool {
        if !self.backlog.is_empty() {
            if self.backlog.len() >= cap {
                return false;
            }
            self.backlog.push_back(frame.to_vec());
            return true;
        }
        match self.try_send(frame, false) {
            Sent::Yes => true,
            Sent::Full if cap > 0 => {
                self.backlog.push_back(frame.to_vec());
                true
            }
            Sent::Full | Sent::Gone => false,
        }
    }

    /// Sends what waits while the peer takes it; the frames dropped because it is gone.
    fn flush(&mut self) -> usize {
        while let Some(f) = self.backlog.front() {
            let f = f.clone();
            match self.try_send(&f, false) {
                Sent::Yes => drop(self.backlog.pop_front()),
                Sent::Full => return 0,
                Sent::Gone => {
                    let n = self.backlog.len();
                    self.backlog.clear();
                    return n;
                }
            }
        }
        0
    }
}

/// Frames read from one port's socket before the next port gets its turn.
const BURST: usize = 64;

fn forward(woken: UnixDatagram, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>, cap: usize) {
    use nix::libc;
    let (delayed_tx, delayed_rx) = mpsc::channel::<Delayed>();
    let (dstate, dstop) = (state.clone(), stop.clone());
    let _ = std::thread::Builder::new()
        .name("switch-delay".into())
        .spawn(move || delay_loop(dstate, delayed_rx, dstop, cap > 0));
    let mut buf = vec![0u8; 65536];
    let mut hops: Vec<Hop> = Vec::with_capacity(8);
    // Ports to send to, found under the lock and sent to without it.
    let mut sends: Vec<usize> = Vec::with_capacity(8);
    // Each port's socket: read from (its machine's frames) and, as an output, written to.
    let mut inputs: Vec<Arc<UnixDatagram>> = Vec::new();
    let mut outputs: Vec<Output> = Vec::new();
    let mut generation = u64::MAX;
    // Frames dropped for a full or absent peer, counted at the next lock.
    let mut peer_drops: Vec<usize> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        {
            let mut s = state.lock().unwrap();
            if s.generation != generation {
                generation = s.generation;
                inputs = s.ports.iter().map(|p| p.sock.clone()).collect();
                outputs = inputs.iter().map(|i| Output::new(i.clone())).collect();
            }
            for t in peer_drops.drain(..) {
                if let Some(p) = s.ports.get_mut(t) {
                    p.counters.to_passed -= 1;
                    p.counters.drop_to(DropReason::Peer);
                }
            }
        }
        // The wake-up socket, then every port: its frames, and room for frames waiting for it.
        fds.clear();
        fds.push(libc::pollfd { fd: woken.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for (i, o) in inputs.iter().zip(&outputs) {
            let out = if o.backlog.is_empty() || o.sock.is_none() { 0 } else { libc::POLLOUT };
            fds.push(libc::pollfd { fd: i.as_raw_fd(), events: libc::POLLIN | out, revents: 0 });
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                STOP_POLL.as_millis() as libc::c_int,
            )
        };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            while woken.recv(&mut buf).is_ok() {}
        }
        for (t, o) in outputs.iter_mut().enumerate() {
            if !o.backlog.is_empty() && fds[t + 1].revents & (libc::POLLOUT | libc::POLLERR) != 0 {
                peer_drops.extend(std::iter::repeat_n(t, o.flush()));
            }
        }
        for src in 0..inputs.len() {
            if fds[src + 1].revents & (libc::POLLIN | libc::POLLERR) == 0 {
                continue;
            }
            for _ in 0..BURST {
                let Ok(n) = nix::sys::socket::recv(
                    inputs[src].as_raw_fd(),
                    &mut buf,
                    MsgFlags::MSG_DONTWAIT,
                ) else {
                    break;
                };
                let frame = &buf[..n];
                sends.clear();
                {
                    let mut s = state.lock().unwrap();
                    for t in peer_drops.drain(..) {
                        if let Some(p) = s.ports.get_mut(t) {
                            p.counters.to_passed -= 1;
                            p.counters.drop_to(DropReason::Peer);
                        }
                    }
                    // Ports keep their index when replugged: `src` is right even if one was
                    // plugged in since the poll; the outputs follow at the next poll.
                    route(&mut s, src, frame, Instant::now(), &mut hops);
                    for &(t, due) in &hops {
                        match due {
                            None => sends.push(t),
                            Some(due) => {
                                seq += 1;
                                let d = Delayed {
                                    due,
                                    seq,
                                    to: t,
                                    from_machine: src,
                                    frame: frame.to_vec(),
                                };
                                let _ = delayed_tx.send(d);
                            }
                        }
                    }
                }
                for &t in &sends {
                    if !outputs.get_mut(t).is_some_and(|o| o.send(frame, cap)) {
                        peer_drops.push(t);
                    }
                }
            }
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
    const C: [u8; 6] = [0x52, 0x54, 0, 0x12, 1, 3];
    const BCAST: [u8; 6] = [0xff; 6];

    fn state() -> State {
        let mut s = State::new(1);
        for m in ["a", "b", "c"] {
            s.add_port(m, UnixDatagram::pair().unwrap().0).unwrap();
        }
        s
    }

    /// Routes at `now`; the ports' names it goes to, and the wait of the first.
    fn send_at(
        s: &mut State,
        from: &str,
        f: &[u8],
        now: Instant,
    ) -> (Vec<&'static str>, Option<Duration>) {
        let mut out = Vec::new();
        let src = ["a", "b", "c"].iter().position(|n| *n == from).unwrap_or(99);
        route(s, src, f, now, &mut out);
        let names = out.iter().map(|(t, _)| ["a", "b", "c"][*t]).collect();
        (names, out.first().and_then(|(_, due)| due.map(|d| d - now)))
    }
    fn send(s: &mut State, from: &str, f: &[u8]) -> Vec<&'static str> {
        send_at(s, from, f, Instant::now()).0
    }
    /// Every machine has said who it is, so unicast is not flooded.
    fn learned() -> State {
        let mut s = state();
        send(&mut s, "a", &frame(BCAST, A));
        send(&mut s, "b", &frame(BCAST, B));
        send(&mut s, "c", &frame(BCAST, C));
        s
    }

    #[test]
    fn floods_unknown_then_learns() {
        let mut s = state();
        assert_eq!(send(&mut s, "a", &frame(BCAST, A)), ["b", "c"]);
        assert_eq!(send(&mut s, "b", &frame(A, B)), ["a"]);
        // Unknown unicast floods; a stranger's frames go nowhere.
        assert_eq!(send(&mut s, "a", &frame(C, A)), ["b", "c"]);
        assert!(send(&mut s, "stranger", &frame(A, B)).is_empty());
        assert!(send(&mut s, "a", &[0u8; 10]).is_empty());
    }

    #[test]
    fn a_cut_link_drops_both_directions_and_loss_is_a_share() {
        let mut s = learned();
        s.ports[1].link.up = false;
        assert!(send(&mut s, "b", &frame(A, B)).is_empty());
        assert!(send(&mut s, "a", &frame(B, A)).is_empty());
        assert_eq!(send(&mut s, "a", &frame(BCAST, A)), ["c"]);
        assert_eq!(s.ports[1].counters.from_dropped, 1);
        assert_eq!(s.ports[1].counters.to_dropped, 2);
        assert_eq!(s.ports[1].counters.dropped_by[DropReason::Down as usize], 3);
        s.ports[1].link = Link { loss: 0.5, ..Link::default() };
        let passed = (0..4000).filter(|_| !send(&mut s, "b", &frame(A, B)).is_empty()).count();
        assert!((1800..2200).contains(&passed), "{passed} of 4000 passed at 50% loss");
        assert_eq!(s.ports[1].counters.dropped_by[DropReason::Loss as usize], 4000 - passed as u64);
        s.ports[1].link = Link::default();
        assert_eq!(send(&mut s, "b", &frame(A, B)), ["a"]);
    }

    #[test]
    fn a_partition_drops_only_between_its_groups() {
        let mut s = learned();
        s.partitions.insert(("a".into(), "b".into()));
        s.rebuild_cuts();
        assert!(send(&mut s, "a", &frame(B, A)).is_empty());
        assert!(send(&mut s, "b", &frame(A, B)).is_empty());
        // Both still reach c, and a broadcast from a reaches c only.
        assert_eq!(send(&mut s, "a", &frame(C, A)), ["c"]);
        assert_eq!(send(&mut s, "b", &frame(C, B)), ["c"]);
        assert_eq!(send(&mut s, "a", &frame(BCAST, A)), ["c"]);
        assert_eq!(s.ports[1].counters.dropped_by[DropReason::Partition as usize], 2);
        s.partitions.clear();
        s.rebuild_cuts();
        assert_eq!(send(&mut s, "a", &frame(B, A)), ["b"]);
    }

    #[test]
    fn delay_jitter_and_order() {
        let mut s = learned();
        s.ports[0].link.delay = Duration::from_millis(20);
        s.ports[1].link.delay = Duration::from_millis(5);
        let now = Instant::now();
        // A frame crosses both links: both delays.
        let (to, wait) = send_at(&mut s, "a", &frame(B, A), now);
        assert_eq!((to, wait), (vec!["b"], Some(Duration::from_millis(25))));
        s.ports[0].link.jitter = Duration::from_millis(10);
        let mut last = now;
        let mut waits = Vec::new();
        // Frames further apart than the jitter's range: the order rule does not clamp them.
        for i in 0..500 {
            let t = now + Duration::from_millis(25 * i);
            let (_, wait) = send_at(&mut s, "a", &frame(B, A), t);
            let due = t + wait.unwrap();
            assert!(due >= last, "frame {i} overtook an earlier one");
            last = due;
            waits.push(wait.unwrap());
        }
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *min >= Duration::from_millis(15) && *max <= Duration::from_millis(36),
            "waits from {min:?} to {max:?}"
        );
        assert!(*max - *min >= Duration::from_millis(15), "jitter spread only {:?}", *max - *min);
    }

    #[test]
    fn a_cap_paces_frames_and_drops_beyond_its_queue() {
        let mut s = learned();
        // 1 MB/s: a 1000-byte frame takes 1 ms.
        s.ports[1].link.rate = Some(1_000_000);
        let f = {
            let mut f = frame(B, A);
            f.resize(1000, 0);
            f
        };
        let now = Instant::now();
        let waits: Vec<_> = (0..5).map(|_| send_at(&mut s, "a", &f, now).1.unwrap()).collect();
        assert_eq!(waits, (1..=5).map(Duration::from_millis).collect::<Vec<_>>());
        // A burst beyond RATE_QUEUE (100 ms = 100 frames) is dropped.
        let passed = (0..200).filter(|_| !send_at(&mut s, "a", &f, now).0.is_empty()).count();
        assert!((95..=100).contains(&passed), "{passed} of a 200-frame burst passed");
        assert!(s.ports[1].counters.dropped_by[DropReason::Queue as usize] >= 100);
        // b's link caps what b sends as well.
        let back = {
            let mut f = frame(A, B);
            f.resize(1000, 0);
            f
        };
        assert_eq!(send_at(&mut s, "b", &back, now).1, Some(Duration::from_millis(1)));
    }

    #[test]
    fn vlan_addresses_differ_by_subnet() {
        let a = std::net::Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(vlan_address(a, 1), a);
        assert_eq!(vlan_address(a, 2), std::net::Ipv4Addr::new(198, 18, 2, 7));
    }

    /// The real switch thread: a fault takes effect within 100 ms of the call, for frames sent
    /// after it and frames waiting in the delay queue alike.
    #[test]
    fn faults_take_effect_within_100_ms_on_the_running_switch() {
        let sw = Switch::start(1).unwrap();
        let mk = |n: &str| {
            // One end as QEMU's, the other the switch's port.
            let (s, port) = Switch::socket_pair().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            sw.add_port(n, port);
            s
        };
        let (a, b) = (mk("a"), mk("b"));
        a.send(&frame(BCAST, A)).unwrap();
        b.send(&frame(BCAST, B)).unwrap();
        let drain = |s: &UnixDatagram| while s.recv(&mut [0u8; 64]).is_ok() {};
        drain(&a);
        drain(&b);
        // Frames every 2 ms from a to b: the time from a change until the frames sent after it
        // stop (or start) arriving.
        let effect = |change: &dyn Fn(), want_arrivals: bool| -> Duration {
            let t0 = Instant::now();
            change();
            loop {
                a.send(&frame(B, A)).unwrap();
                if b.recv(&mut [0u8; 64]).is_ok() == want_arrivals {
                    return t0.elapsed();
                }
                assert!(t0.elapsed() < Duration::from_secs(2), "no effect after 2 s");
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        let bound = Duration::from_millis(100);
        let t = effect(&|| _ = sw.set_link("b", |l| l.up = false).unwrap(), false);
        assert!(t < bound, "down took {t:?}");
        eprintln!("measured: down took effect after {t:?}");
        let t = effect(&|| _ = sw.set_link("b", |l| l.up = true).unwrap(), true);
        assert!(t < bound, "up took {t:?}");
        eprintln!("measured: up took effect after {t:?}");
        let t = effect(&|| partition_on([&sw], &["a"], &["b"]), false);
        assert!(t < bound, "partition took {t:?}");
        eprintln!("measured: partition took effect after {t:?}");
        let t = effect(&|| heal_on([&sw], &["a"], &["b"]), true);
        assert!(t < bound, "heal took {t:?}");
        eprintln!("measured: heal took effect after {t:?}");
        // A 50 ms delay: a frame arrives after 50 ms, not much later.
        drain(&b);
        sw.set_link("b", |l| l.delay = Duration::from_millis(50)).unwrap();
        let t0 = Instant::now();
        a.send(&frame(B, A)).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        b.recv(&mut [0u8; 64]).unwrap();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_millis(50) + bound,
            "a 50 ms delay took {took:?}"
        );
        eprintln!("measured: a frame under a 50 ms delay arrived after {took:?}");
        // A frame waiting in the delay queue when the link goes down is dropped.
        a.send(&frame(B, A)).unwrap();
        sw.set_link("b", |l| l.up = false).unwrap();
        b.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
        assert!(b.recv(&mut [0u8; 64]).is_err(), "a frame in flight crossed a cut link");
        let c = sw.counters("b").unwrap();
        assert!(
            c.dropped_by[DropReason::Down as usize] >= 2
                && c.dropped_by[DropReason::Partition as usize] >= 1,
            "{c:?}"
        );
        let r = report([&sw]);
        assert!(
            r.contains("partitioned [\"a\"] | [\"b\"]") && r.contains("b on vlan 1: DOWN"),
            "{r}"
        );
    }

    /// A slow reader (its socket full) gets every frame when the switch queues for it;
    /// without the backlog the switch drops what does not fit.
    #[test]
    fn the_switch_queues_for_a_full_peer_instead_of_dropping() {
        // The reader stops at all 200 frames or after `quiet` without one: a generous quiet
        // where all must arrive (a host busy with four VMs once starved the switch for 300 ms:
        // 136 of 200 read), a short one where drops are expected.
        let received = |backlog: usize, quiet: Duration| -> usize {
            let sw = Switch::start_with(1, backlog).unwrap();
            let bind = |n: &str| {
                let (s, port) = Switch::socket_pair().unwrap();
                sw.add_port(n, port);
                s
            };
            let (a, b) = (bind("a"), bind("b"));
            b.send(&frame(BCAST, B)).unwrap();
            let reader = std::thread::spawn(move || {
                b.set_read_timeout(Some(quiet)).unwrap();
                let mut n = 0;
                while n < 200 && b.recv(&mut [0u8; 2048]).is_ok() {
                    n += 1;
                    std::thread::sleep(Duration::from_micros(500));
                }
                n
            });
            // Full-size frames: the peer's socket pair holds about 90 of them (its send buffer).
            let mut f = frame(B, A);
            f.resize(1514, 0);
            for _ in 0..200 {
                a.send(&f).unwrap();
            }
            reader.join().unwrap()
        };
        assert_eq!(
            received(BACKLOG, Duration::from_secs(10)),
            200,
            "the queueing switch lost frames to a slow reader"
        );
        let dropped = received(0, Duration::from_millis(300));
        assert!(dropped < 200, "without the wait all {dropped} frames arrived: the test does not fill the reader's queue");
    }
}
