//! open-iscsi's iscsiadm: command lines for the iSCSI verbs a test uses (sendtargets discovery,
//! login, logout, rescan, session listing) and parsers of their text output.
//!
//! Written against open-iscsi 2.1.8 (Debian 12). iscsiadm has no JSON output; the formats
//! follow its source (`usr/iscsiadm.c`, `usr/session_info.c`): discovery prints one
//! `<addr>:<port>,<tpgt> <iqn>` line per target, `-m session` one
//! `tcp: [<sid>] <addr>:<port>,<tpgt> <iqn> (non-flash)` line per session, and `-m session -P 3`
//! a block per target with its sessions and the SCSI disks attached to each. With no session,
//! `-m session` exits 21 with "iscsiadm: No active sessions.".

use super::{shell_join, shell_quote, ParseError};

/// The iSCSI port (RFC 7143).
pub const DEFAULT_PORT: u16 = 3260;
/// iscsiadm's exit status when there is no session (ISCSI_ERR_NO_OBJS_FOUND).
pub const EXIT_NO_OBJECTS: i32 = 21;

const TOOL: &str = "iscsiadm";

/// Command lines of iscsiadm.
#[derive(Debug, Clone, Copy)]
pub struct Iscsiadm;

impl Iscsiadm {
    /// SendTargets discovery at `addr:port`; parse with [`DiscoveredTarget::parse_all`]. Also
    /// records the targets as nodes, which login needs.
    pub fn discover(addr: &str, port: u16) -> String {
        shell_join(&["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", &portal(addr, port)])
    }

    /// Logs in to one discovered target.
    pub fn login(iqn: &str, addr: &str, port: u16) -> String {
        shell_join(&["iscsiadm", "-m", "node", "-T", iqn, "-p", &portal(addr, port), "--login"])
    }

    /// Logs out of one target's sessions (the SCSI disks go with them).
    pub fn logout(iqn: &str, addr: &str, port: u16) -> String {
        shell_join(&["iscsiadm", "-m", "node", "-T", iqn, "-p", &portal(addr, port), "--logout"])
    }

    /// Logs out of every session.
    pub fn logout_all() -> String {
        shell_join(&["iscsiadm", "-m", "node", "--logoutall=all"])
    }

    /// Forgets a discovered target's node record (so a later login needs a new discovery).
    pub fn delete_node(iqn: &str, addr: &str, port: u16) -> String {
        shell_join(&[
            "iscsiadm",
            "-m",
            "node",
            "-T",
            iqn,
            "-p",
            &portal(addr, port),
            "-o",
            "delete",
        ])
    }

    /// Rescans the LUNs of a session (finds new LUNs and new sizes; removes none).
    pub fn rescan(sid: u32) -> String {
        shell_join(&["iscsiadm", "-m", "session", "-r", &sid.to_string(), "--rescan"])
    }

    /// Sessions with their disks; parse with [`Session::parse_all`]. Exits 21 when there are
    /// none: [`Iscsiadm::sessions_or_none`] turns that into an empty listing.
    pub fn sessions() -> String {
        shell_join(&["iscsiadm", "-m", "session", "-P", "3"])
    }

    /// [`Iscsiadm::sessions`] that succeeds with no output when there is no session.
    pub fn sessions_or_none() -> String {
        format!("{}; rc=$?; [ $rc -eq 0 ] || [ $rc -eq {EXIT_NO_OBJECTS} ]", Self::sessions())
    }
}

fn portal(addr: &str, port: u16) -> String {
    format!("{addr}:{port}")
}

/// One line of a SendTargets discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    /// The portal's address (IPv6 without brackets).
    pub addr: String,
    /// The portal's port.
    pub port: u16,
    /// Target portal group tag.
    pub tpgt: u16,
    /// The target's IQN.
    pub iqn: String,
}

impl DiscoveredTarget {
    /// Every `<addr>:<port>,<tpgt> <iqn>` line; lines that are not (warnings) are skipped, but
    /// output with none at all and not empty is an error (iscsiadm printed only an error).
    pub fn parse_all(text: &str) -> Result<Vec<DiscoveredTarget>, ParseError> {
        let mut targets = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(t) = Self::parse_line(line) {
                targets.push(t);
            }
        }
        if targets.is_empty() && !text.trim().is_empty() {
            return Err(ParseError::unexpected(
                TOOL,
                "no `<addr>:<port>,<tpgt> <iqn>` line in the discovery output",
                text,
            ));
        }
        Ok(targets)
    }

    fn parse_line(line: &str) -> Option<DiscoveredTarget> {
        let (portal, iqn) = line.split_once(' ')?;
        let (addr, port, tpgt) = parse_portal(portal)?;
        let iqn = iqn.trim();
        if !iqn.starts_with("iqn.") && !iqn.starts_with("eui.") && !iqn.starts_with("naa.") {
            return None;
        }
        Some(DiscoveredTarget { addr, port, tpgt, iqn: iqn.to_string() })
    }

    /// The target named `iqn` in a discovery.
    pub fn find<'a>(targets: &'a [DiscoveredTarget], iqn: &str) -> Option<&'a DiscoveredTarget> {
        targets.iter().find(|t| t.iqn == iqn)
    }
}

/// `192.0.2.1:3260,1` -> (addr, port, tpgt); IPv6 portals come bracketed (`[::1]:3260,1`).
fn parse_portal(portal: &str) -> Option<(String, u16, u16)> {
    let (addr_port, tpgt) = portal.split_once(',')?;
    let (addr, port) = addr_port.rsplit_once(':')?;
    Some((
        addr.trim_start_matches('[').trim_end_matches(']').to_string(),
        port.parse().ok()?,
        tpgt.parse().ok()?,
    ))
}

/// One session of `iscsiadm -m session -P 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id (`SID`).
    pub sid: u32,
    /// The target's IQN.
    pub iqn: String,
    /// `Current Portal`: address, port, tpgt.
    pub addr: String,
    /// The portal's port.
    pub port: u16,
    /// `iSCSI Session State`: `LOGGED_IN`, `FAILED`, `FREE`.
    pub state: String,
    /// `iSCSI Connection State`: `LOGGED IN`, `TRANSPORT WAIT`, `IN LOGIN`, ...
    pub connection_state: String,
    /// `Internal iscsid Session State`: `NO CHANGE`, `REOPEN`, ...
    pub iscsid_state: String,
    /// SCSI host number (`scsiN`), when the session has one.
    pub host: Option<u32>,
    /// The SCSI devices the session attached.
    pub disks: Vec<ScsiDisk>,
}

/// A SCSI device the session attached, with its block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDisk {
    /// The logical unit number.
    pub lun: u64,
    /// Kernel name, `sda`.
    pub name: String,
    /// The SCSI device state: `running`, `offline`, `transport-offline`, `blocked`.
    pub state: String,
}

impl ScsiDisk {
    /// `/dev/<name>`.
    pub fn path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// Removes the SCSI device from the initiator's kernel (what `rescan-scsi-bus.sh -r` and
    /// os-brick do for a LUN the target stopped serving while the session stays up; Linux never
    /// drops such a disk by itself).
    pub fn delete_command(&self) -> String {
        format!("echo 1 > {}", shell_quote(&format!("/sys/block/{}/device/delete", self.name)))
    }
}

impl Session {
    /// Parses `iscsiadm -m session -P 3`; empty output (no session) is an empty list.
    pub fn parse_all(text: &str) -> Result<Vec<Session>, ParseError> {
        let mut sessions: Vec<Session> = Vec::new();
        let mut iqn: Option<String> = None;
        let mut portal: Option<(String, u16)> = None;
        let mut lun: Option<u64> = None;
        for raw in text.lines() {
            let line = raw.trim();
            if let Some(rest) = line.strip_prefix("Target: ") {
                // `Target: <iqn> (non-flash)`
                iqn = Some(rest.split_whitespace().next().unwrap_or_default().to_string());
                portal = None;
            } else if let Some(rest) = line.strip_prefix("Current Portal: ") {
                portal = parse_portal(rest.trim()).map(|(a, p, _)| (a, p));
            } else if let Some(rest) = line.strip_prefix("SID: ") {
                let sid = rest.trim().parse().map_err(|_| {
                    ParseError::unexpected(TOOL, format!("SID {rest:?} is not a number"), text)
                })?;
                let iqn = iqn.clone().ok_or_else(|| {
                    ParseError::unexpected(TOOL, format!("SID {sid} before any Target line"), text)
                })?;
                let (addr, port) = portal.clone().unwrap_or_default();
                sessions.push(Session {
                    sid,
                    iqn,
                    addr,
                    port,
                    state: String::new(),
                    connection_state: String::new(),
                    iscsid_state: String::new(),
                    host: None,
                    disks: Vec::new(),
                });
                lun = None;
            } else if let Some(session) = sessions.last_mut() {
                if let Some(v) = line.strip_prefix("iSCSI Session State: ") {
                    session.state = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("iSCSI Connection State: ") {
                    session.connection_state = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("Internal iscsid Session State: ") {
                    session.iscsid_state = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("Host Number: ") {
                    session.host = v.split_whitespace().next().and_then(|n| n.parse().ok());
                } else if line.starts_with("scsi") && line.contains(" Lun: ") {
                    // `scsi2 Channel 00 Id 0 Lun: 0`
                    lun = line.rsplit(' ').next().and_then(|n| n.parse().ok());
                } else if let Some(v) = line.strip_prefix("Attached scsi disk ") {
                    // `Attached scsi disk sda\t\tState: running`
                    let mut words = v.split_whitespace();
                    let name = words.next().unwrap_or_default().to_string();
                    let state = v
                        .split_once("State:")
                        .map(|(_, s)| s.trim().to_string())
                        .unwrap_or_default();
                    let lun = lun.ok_or_else(|| {
                        ParseError::unexpected(
                            TOOL,
                            format!("disk {name} before its Lun line"),
                            text,
                        )
                    })?;
                    session.disks.push(ScsiDisk { lun, name, state });
                }
            }
        }
        if sessions.is_empty() && text.lines().any(|l| l.trim_start().starts_with("Target: ")) {
            return Err(ParseError::unexpected(
                TOOL,
                "a Target without a SID: was it printed with -P 3?",
                text,
            ));
        }
        Ok(sessions)
    }

    /// The session of target `iqn`.
    pub fn find<'a>(sessions: &'a [Session], iqn: &str) -> Option<&'a Session> {
        sessions.iter().find(|s| s.iqn == iqn)
    }

    /// The disk of LUN `lun`.
    pub fn disk(&self, lun: u64) -> Option<&ScsiDisk> {
        self.disks.iter().find(|d| d.lun == lun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(
            Iscsiadm::discover("192.0.2.1", 3260),
            "iscsiadm -m discovery -t sendtargets -p 192.0.2.1:3260"
        );
        assert_eq!(
            Iscsiadm::login("iqn.2019-05.io.vmcheck:a", "192.0.2.1", 3260),
            "iscsiadm -m node -T iqn.2019-05.io.vmcheck:a -p 192.0.2.1:3260 --login"
        );
        assert_eq!(
            Iscsiadm::logout("iqn.2019-05.io.vmcheck:a", "192.0.2.1", 3261),
            "iscsiadm -m node -T iqn.2019-05.io.vmcheck:a -p 192.0.2.1:3261 --logout"
        );
        assert_eq!(Iscsiadm::rescan(3), "iscsiadm -m session -r 3 --rescan");
        let disk = ScsiDisk { lun: 0, name: "sdb".into(), state: "running".into() };
        assert_eq!(disk.delete_command(), "echo 1 > /sys/block/sdb/device/delete");
        assert_eq!(
            Iscsiadm::sessions_or_none(),
            "iscsiadm -m session -P 3; rc=$?; [ $rc -eq 0 ] || [ $rc -eq 21 ]"
        );
    }

    #[test]
    fn discovery_lines_are_parsed_and_errors_refused() {
        let text = "192.0.2.1:3260,1 iqn.2019-05.io.vmcheck:one\n[2001:db8::1]:3261,2 iqn.2019-05.io.vmcheck:two\n";
        let targets = DiscoveredTarget::parse_all(text).unwrap();
        assert_eq!(
            targets[0],
            DiscoveredTarget {
                addr: "192.0.2.1".into(),
                port: 3260,
                tpgt: 1,
                iqn: "iqn.2019-05.io.vmcheck:one".into()
            }
        );
        assert_eq!(targets[1].addr, "2001:db8::1");
        assert_eq!(
            DiscoveredTarget::find(&targets, "iqn.2019-05.io.vmcheck:two").map(|t| t.port),
            Some(3261)
        );
        assert!(DiscoveredTarget::parse_all("").unwrap().is_empty());
        let err = DiscoveredTarget::parse_all(
            "iscsiadm: cannot make connection to 192.0.2.1: Connection refused\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
    }

    const IQN: &str = "iqn.2019-05.io.vmcheck:626210a5-c960-50b7-bcde-50bfb7e8543f";

    /// Real captures from vmcheck's initiator image against the target image's LIO.
    #[test]
    fn real_discovery_and_session_listing() {
        let targets =
            DiscoveredTarget::parse_all(include_str!("testdata/iscsiadm-2.1.8_discovery.txt"))
                .unwrap();
        assert_eq!(
            targets,
            [DiscoveredTarget { addr: "192.0.2.1".into(), port: 3260, tpgt: 1, iqn: IQN.into() }]
        );
        let sessions =
            Session::parse_all(include_str!("testdata/iscsiadm-2.1.8_session_P3_logged_in.txt"))
                .unwrap();
        assert_eq!(
            sessions,
            [Session {
                sid: 1,
                iqn: IQN.into(),
                addr: "192.0.2.1".into(),
                port: 3260,
                state: "LOGGED_IN".into(),
                connection_state: "LOGGED IN".into(),
                iscsid_state: "NO CHANGE".into(),
                host: Some(0),
                disks: vec![ScsiDisk { lun: 0, name: "sda".into(), state: "running".into() }],
            }]
        );
        assert_eq!(
            Session::find(&sessions, IQN).and_then(|s| s.disk(0)).map(ScsiDisk::path).as_deref(),
            Some("/dev/sda")
        );
    }

    /// After the target went away: the session failed, iscsid re-logs in, the disk is blocked.
    #[test]
    fn real_session_listing_of_a_failed_session() {
        let sessions =
            Session::parse_all(include_str!("testdata/iscsiadm-2.1.8_session_P3_failed.txt"))
                .unwrap();
        let s = &sessions[0];
        assert_eq!(
            (s.state.as_str(), s.connection_state.as_str(), s.iscsid_state.as_str()),
            ("FAILED", "TRANSPORT WAIT", "REOPEN")
        );
        assert_eq!(s.disk(0).map(|d| d.state.as_str()), Some("blocked"));
    }

    #[test]
    fn an_empty_session_listing_is_no_session() {
        assert!(Session::parse_all("").unwrap().is_empty());
        assert!(Session::parse_all("Target: iqn.2019-05.io.vmcheck:a (non-flash)\n").is_err());
    }
}
