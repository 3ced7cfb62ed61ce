//! The address the target advertises in share URIs (and binds nvmet ports to) when the daemon
//! is not told one with `--traddr`.
//!
//! A target VM may have two NICs: the test network and a user-mode NIC that carries the gRPC
//! forward from the host. So: the only non-loopback IPv4 address, or else the only one in the
//! default test subnet; anything more ambiguous must be configured.

use std::net::Ipv4Addr;

use crate::config::{TEST_SUBNET_LEN, TEST_SUBNET_PREFIX};

/// The machine's local IPv4 addresses, from `/proc/net/fib_trie` (no netlink, no extra crate).
pub fn local_ipv4() -> std::io::Result<Vec<Ipv4Addr>> {
    Ok(parse_fib_trie(&std::fs::read_to_string("/proc/net/fib_trie")?))
}

/// In the trie dump, a local address is a `|-- <addr>` line followed by `/32 host LOCAL`.
fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(addr) = line.parse::<Ipv4Addr>() {
            last = Some(addr);
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(addr) = last.filter(|a| !found.contains(a)) {
                found.push(addr);
            }
        }
    }
    found.sort();
    found
}

/// Picks the address to advertise, or says why none can be picked.
pub fn choose(addrs: &[Ipv4Addr]) -> Result<Ipv4Addr, String> {
    let candidates: Vec<Ipv4Addr> =
        addrs.iter().copied().filter(|a| !a.is_loopback() && !a.is_unspecified()).collect();
    if let [only] = candidates.as_slice() {
        return Ok(*only);
    }
    let test: Vec<Ipv4Addr> = candidates.iter().copied().filter(|a| in_test_subnet(*a)).collect();
    if let [only] = test.as_slice() {
        return Ok(*only);
    }
    let list: Vec<String> = candidates.iter().map(|a| a.to_string()).collect();
    Err(format!(
        "cannot pick the address to share on from [{}]; start vmcheck-target with --traddr",
        list.join(", ")
    ))
}

fn in_test_subnet(addr: Ipv4Addr) -> bool {
    let [a, b, c] = TEST_SUBNET_PREFIX;
    let mask = u32::MAX << (32 - u32::from(TEST_SUBNET_LEN));
    u32::from(addr) & mask == u32::from(Ipv4Addr::new(a, b, c, 0)) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.2.0/24 2 0 2
        |-- 10.0.2.0
           /24 link UNICAST
        |-- 10.0.2.15
           /32 host LOCAL
        |-- 10.0.2.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     |-- 192.0.2.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 192.0.2.1
        /32 host LOCAL
";

    #[test]
    fn reads_local_addresses_from_the_trie() {
        let addrs = parse_fib_trie(TRIE);
        assert_eq!(
            addrs,
            [Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 1)]
        );
        assert_eq!(choose(&addrs).unwrap(), Ipv4Addr::new(192, 0, 2, 1));
    }

    #[test]
    fn one_address_is_taken_and_ambiguity_is_an_error() {
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(choose(&[lo, Ipv4Addr::new(10, 1, 1, 1)]).unwrap(), Ipv4Addr::new(10, 1, 1, 1));
        let err = choose(&[Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 1, 1, 2)]).unwrap_err();
        assert!(err.contains("10.1.1.2") && err.contains("--traddr"), "{err}");
        assert!(choose(&[lo]).is_err());
    }

    #[test]
    fn this_machine_has_a_readable_trie() {
        // Only that it parses: the addresses depend on the machine.
        if std::path::Path::new("/proc/net/fib_trie").exists() {
            local_ipv4().unwrap();
        }
    }
}
