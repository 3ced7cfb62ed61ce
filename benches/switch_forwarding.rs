//! Frames per second the test network's switch forwards between two host sockets, beside the
//! same frames sent straight from socket to socket: what one switch thread can carry, with no
//! QEMU in the way (`cargo bench --bench switch_forwarding`). The guest-to-guest figure, with
//! QEMU and TCP, is `vmcheck bench`'s "test network".

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use vmcheck::network::Switch;

/// Full-size Ethernet frames sent one way.
const FRAMES: usize = 200_000;
const A: [u8; 6] = [0x52, 0x54, 0, 0x12, 1, 1];
const B: [u8; 6] = [0x52, 0x54, 0, 0x12, 1, 2];

/// An IPv4 frame from `src` to `dst`, `len` bytes.
fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len, 0);
    f
}

/// Frames a second from `a` to `b`; what `b` has not read within 0.5 s of the last is lost.
fn rate(a: &UnixDatagram, b: UnixDatagram) -> f64 {
    let reader = std::thread::spawn(move || {
        b.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < FRAMES && b.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let f = frame(B, A, 1514);
    let started = Instant::now();
    for _ in 0..FRAMES {
        a.send(&f).expect("send");
    }
    let got = reader.join().expect("reader");
    got as f64 / started.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let switch = Switch::start(1)?;
    let plug = |name: &str| -> anyhow::Result<UnixDatagram> {
        let (ours, port) = Switch::socket_pair()?;
        switch.add_port(name, port);
        Ok(ours)
    };
    let (a, b) = (plug("a")?, plug("b")?);
    // b's first frame teaches the switch where B is; a sees it broadcast.
    b.send(&frame([0xff; 6], B, 64))?;
    a.recv(&mut [0u8; 64])?;
    let through_switch = rate(&a, b);
    let (a, b) = UnixDatagram::pair()?;
    let direct = rate(&a, b);
    println!(
        "{FRAMES} frames of 1514 bytes: switch {through_switch:.0} frames/s, direct {direct:.0} frames/s ({:.2} of direct)",
        through_switch / direct
    );
    Ok(())
}
