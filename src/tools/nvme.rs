//! nvme-cli: command lines for the NVMe-oF verbs a test uses, and parsers of their output.
//!
//! Written against nvme-cli 2.3 with libnvme 1.3 (Debian 12). The JSON shapes follow its source:
//! `discover -o json` prints `{"genctr", "records": [...]}` (fabrics.c `json_discovery_log`),
//! `list -o json` prints `{"Devices": [...]}` with one entry per namespace (nvme-print.c
//! `json_simple_list`), `connect -o json` prints `{"device": "nvme0"}` (`json_connect_msg`);
//! `connect-all` prints nothing on success and `disconnect -n` prints
//! `NQN:<nqn> disconnected <n> controller(s)` whatever the format.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

use super::{de_u64, extract_json, shell_join, ParseError};

/// The well-known NQN of a discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// NVMe-oF transport (`-t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// TCP (`tcp`).
    #[default]
    Tcp,
    /// RDMA (`rdma`).
    Rdma,
    /// Fibre Channel (`fc`).
    Fc,
    /// The loop transport (`loop`), target and host on one machine.
    Loop,
}

impl Transport {
    /// nvme-cli's name for it (`--transport=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
            Transport::Fc => "fc",
            Transport::Loop => "loop",
        }
    }
}

/// Connection options shared by `discover`, `connect` and `connect-all`. Under TCG the kernel's
/// defaults are too tight (see ARCHITECTURE.md, "Under TCG"), so scenarios set these from one place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FabricsOptions {
    /// `--keep-alive-tmo`, seconds.
    pub keep_alive_tmo: Option<u32>,
    /// `--ctrl-loss-tmo`, seconds; -1 retries forever.
    pub ctrl_loss_tmo: Option<i32>,
    /// `--reconnect-delay`, seconds.
    pub reconnect_delay: Option<u32>,
    /// `--hostnqn`; nvme-cli reads /etc/nvme/hostnqn when unset.
    pub hostnqn: Option<String>,
    /// `--hostid`; nvme-cli reads /etc/nvme/hostid when unset.
    pub hostid: Option<String>,
    /// `--nr-io-queues`.
    pub nr_io_queues: Option<u32>,
    /// `--queue-size`.
    pub queue_size: Option<u32>,
}

impl FabricsOptions {
    /// The keep-alive, controller-loss and reconnect timeouts of `crate::timeouts::nvme`, chosen
    /// for TCG guests (the kernel's 5 s keep-alive expires while a slow guest still connects).
    pub fn scaled_timeouts() -> Self {
        let t = crate::timeouts::nvme();
        FabricsOptions {
            keep_alive_tmo: Some(t.keep_alive_tmo),
            ctrl_loss_tmo: Some(t.ctrl_loss_tmo as i32),
            reconnect_delay: Some(t.reconnect_delay),
            ..FabricsOptions::default()
        }
    }
}

impl FabricsOptions {
    fn push_args(&self, argv: &mut Vec<String>) {
        let mut push = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                argv.push(format!("--{name}={v}"));
            }
        };
        push("keep-alive-tmo", self.keep_alive_tmo.map(|v| v.to_string()));
        push("ctrl-loss-tmo", self.ctrl_loss_tmo.map(|v| v.to_string()));
        push("reconnect-delay", self.reconnect_delay.map(|v| v.to_string()));
        push("nr-io-queues", self.nr_io_queues.map(|v| v.to_string()));
        push("queue-size", self.queue_size.map(|v| v.to_string()));
        push("hostnqn", self.hostnqn.clone());
        push("hostid", self.hostid.clone());
    }
}

/// Builders of nvme-cli command lines.
pub struct Nvme;

impl Nvme {
    /// `nvme discover -t tcp -a ADDR -s PORT -o json`; parse with [`DiscoveryLog::parse`].
    pub fn discover(traddr: &str, trsvcid: u16) -> NvmeFabrics {
        NvmeFabrics::new(FabricsVerb::Discover, traddr, trsvcid)
    }

    /// `nvme connect -t tcp -a ADDR -s PORT -n NQN -o json`; parse with [`ConnectOutput::parse`].
    pub fn connect(traddr: &str, trsvcid: u16, nqn: &str) -> NvmeFabrics {
        NvmeFabrics::new(FabricsVerb::Connect(nqn.to_string()), traddr, trsvcid)
    }

    /// `nvme connect-all -t tcp -a ADDR -s PORT`: connect every subsystem the discovery
    /// controller lists. It prints nothing on success; check with [`Nvme::list`].
    pub fn connect_all(traddr: &str, trsvcid: u16) -> NvmeFabrics {
        NvmeFabrics::new(FabricsVerb::ConnectAll, traddr, trsvcid)
    }

    /// `nvme list -o json`; parse with [`NvmeList::parse`].
    pub fn list() -> String {
        "nvme list -o json".to_string()
    }

    /// `nvme disconnect -n NQN`; parse with [`DisconnectOutput::parse`].
    pub fn disconnect(nqn: &str) -> String {
        shell_join(&["nvme", "disconnect", "-n", nqn])
    }

    /// `nvme disconnect-all`: every fabrics controller (PCIe ones are left alone). Prints nothing.
    pub fn disconnect_all() -> String {
        "nvme disconnect-all".to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FabricsVerb {
    Discover,
    Connect(String),
    ConnectAll,
}

/// A `discover`, `connect` or `connect-all` command line being built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeFabrics {
    verb: FabricsVerb,
    transport: Transport,
    traddr: String,
    trsvcid: u16,
    options: FabricsOptions,
}

impl NvmeFabrics {
    fn new(verb: FabricsVerb, traddr: &str, trsvcid: u16) -> Self {
        NvmeFabrics {
            verb,
            transport: Transport::Tcp,
            traddr: traddr.to_string(),
            trsvcid,
            options: FabricsOptions::default(),
        }
    }

    /// `--transport` (default TCP).
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }
    /// Replace all connection options at once (e.g. the run's TCG-scaled timeouts).
    pub fn options(mut self, options: FabricsOptions) -> Self {
        self.options = options;
        self
    }
    /// `--keep-alive-tmo`, in seconds.
    pub fn keep_alive_tmo(mut self, secs: u32) -> Self {
        self.options.keep_alive_tmo = Some(secs);
        self
    }
    /// `--ctrl-loss-tmo`, in seconds (-1: retry for ever).
    pub fn ctrl_loss_tmo(mut self, secs: i32) -> Self {
        self.options.ctrl_loss_tmo = Some(secs);
        self
    }
    /// `--reconnect-delay`, in seconds.
    pub fn reconnect_delay(mut self, secs: u32) -> Self {
        self.options.reconnect_delay = Some(secs);
        self
    }
    /// `--hostnqn`: the host NQN to present.
    pub fn hostnqn(mut self, nqn: &str) -> Self {
        self.options.hostnqn = Some(nqn.to_string());
        self
    }
    /// `--hostid`: the host id to present.
    pub fn hostid(mut self, id: &str) -> Self {
        self.options.hostid = Some(id.to_string());
        self
    }
    /// `--nr-io-queues`.
    pub fn nr_io_queues(mut self, n: u32) -> Self {
        self.options.nr_io_queues = Some(n);
        self
    }
    /// `--queue-size`.
    pub fn queue_size(mut self, n: u32) -> Self {
        self.options.queue_size = Some(n);
        self
    }

    /// The argument vector, starting with `nvme`.
    pub fn argv(&self) -> Vec<String> {
        let verb = match self.verb {
            FabricsVerb::Discover => "discover",
            FabricsVerb::Connect(_) => "connect",
            FabricsVerb::ConnectAll => "connect-all",
        };
        let mut argv: Vec<String> = [
            "nvme",
            verb,
            "-t",
            self.transport.as_str(),
            "-a",
            &self.traddr,
            "-s",
            &self.trsvcid.to_string(),
        ]
        .map(String::from)
        .into();
        if let FabricsVerb::Connect(nqn) = &self.verb {
            argv.extend(["-n".to_string(), nqn.clone()]);
        }
        self.options.push_args(&mut argv);
        // connect-all prints nothing either way; the others get JSON for the parsers.
        if self.verb != FabricsVerb::ConnectAll {
            argv.extend(["-o".to_string(), "json".to_string()]);
        }
        argv
    }

    /// The command line for a shell, each argument quoted where needed.
    pub fn command_line(&self) -> String {
        shell_join(&self.argv())
    }
}

impl fmt::Display for NvmeFabrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.command_line())
    }
}

fn de_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = de_u64(d)?;
    u16::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} does not fit 16 bits")))
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = de_u64(d)?;
    u32::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} does not fit 32 bits")))
}

/// `nvme discover -o json`: the discovery log page.
#[derive(Clone, Debug, Deserialize)]
pub struct DiscoveryLog {
    /// Generation counter: changes whenever the log does.
    #[serde(default, deserialize_with = "de_u64")]
    pub genctr: u64,
    /// The entries, in the order the controller reported them.
    pub records: Vec<DiscoveryRecord>,
}

/// One discovery log entry. Strings are libnvme's names for the codes (`"tcp"`, `"ipv4"`,
/// `"nvme subsystem"`, `"not specified, sq flow control disable supported"`, ...).
#[derive(Clone, Debug, Deserialize)]
pub struct DiscoveryRecord {
    /// Transport type (`"tcp"`).
    pub trtype: String,
    /// Address family (`"ipv4"`).
    #[serde(default)]
    pub adrfam: String,
    /// `"nvme subsystem"`, `"current discovery subsystem"` (Linux nvmet lists itself first since
    /// 5.17) or `"discovery subsystem referral"`.
    pub subtype: String,
    /// Transport requirements.
    #[serde(default)]
    pub treq: String,
    /// The target's port id.
    #[serde(default, deserialize_with = "de_u16")]
    pub portid: u16,
    /// Transport service id: the TCP port, as text.
    pub trsvcid: String,
    /// The subsystem NQN.
    pub subnqn: String,
    /// Transport address.
    pub traddr: String,
    /// Entry flags.
    #[serde(default)]
    pub eflags: Option<String>,
    /// TCP only.
    #[serde(default)]
    pub sectype: Option<String>,
    /// Fields this parser does not name (RDMA's `rdma_*`, later nvme-cli versions' additions).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl DiscoveryRecord {
    /// An I/O subsystem (one that has namespaces), not a discovery controller.
    pub fn is_nvme_subsystem(&self) -> bool {
        self.subtype == "nvme subsystem"
    }

    /// The service id as a port number, for TCP and RDMA.
    pub fn port(&self) -> Option<u16> {
        self.trsvcid.trim().parse().ok()
    }
}

impl DiscoveryLog {
    /// Reads the JSON of `nvme discover -o json` from `output` (other lines around it are skipped).
    pub fn parse(output: &str) -> Result<Self, ParseError> {
        Ok(extract_json("nvme discover", output)?.value)
    }

    /// The I/O subsystems in the log.
    pub fn subsystems(&self) -> impl Iterator<Item = &DiscoveryRecord> {
        self.records.iter().filter(|r| r.is_nvme_subsystem())
    }

    /// The first record with this subsystem NQN.
    pub fn find(&self, subnqn: &str) -> Option<&DiscoveryRecord> {
        self.records.iter().find(|r| r.subnqn == subnqn)
    }
}

/// `nvme list -o json`: one entry per namespace block device.
#[derive(Clone, Debug, Deserialize)]
pub struct NvmeList {
    /// The namespaces.
    #[serde(rename = "Devices")]
    pub devices: Vec<NvmeDevice>,
}

/// A namespace as `nvme list` shows it; sizes in bytes.
#[derive(Clone, Debug, Deserialize)]
pub struct NvmeDevice {
    /// The namespace id (an integer in the simple list; `list -v` is a different shape).
    #[serde(rename = "NameSpace", default, deserialize_with = "de_u32")]
    pub nsid: u32,
    /// `/dev/nvme0n1`.
    #[serde(rename = "DevicePath")]
    pub device_path: String,
    /// Controller firmware revision.
    #[serde(rename = "Firmware", default)]
    pub firmware: String,
    /// Controller model number (space-padded by some targets).
    #[serde(rename = "ModelNumber", default)]
    pub model_number: String,
    /// Controller serial number (space-padded by some targets).
    #[serde(rename = "SerialNumber", default)]
    pub serial_number: String,
    /// Bytes in use.
    #[serde(rename = "UsedBytes", default, deserialize_with = "de_u64")]
    pub used_bytes: u64,
    /// Number of logical blocks (despite the name, a count, not the last LBA).
    #[serde(rename = "MaximumLBA", default, deserialize_with = "de_u64")]
    pub maximum_lba: u64,
    /// Size in bytes.
    #[serde(rename = "PhysicalSize", default, deserialize_with = "de_u64")]
    pub physical_size: u64,
    /// Logical block size in bytes.
    #[serde(rename = "SectorSize", default, deserialize_with = "de_u32")]
    pub sector_size: u32,
}

impl NvmeDevice {
    /// The block device's name, `nvme0n1`.
    pub fn name(&self) -> &str {
        self.device_path.rsplit('/').next().unwrap_or(&self.device_path)
    }
}

impl NvmeList {
    /// Reads the JSON of `nvme list -o json` from `output`, in either of nvme-cli's formats:
    /// the simple one (one entry per namespace: nvme-cli up to 2.10, and again after 2.11) or
    /// the detailed one (hosts, subsystems, controllers, namespaces: what `-v` prints, and what
    /// nvme-cli 2.11, nixpkgs' version, prints for `-o json` alone). The detailed format is
    /// flattened to one entry per namespace block device, with its controller's serial, model
    /// and firmware.
    pub fn parse(output: &str) -> Result<Self, ParseError> {
        let got = extract_json::<serde_json::Value>("nvme list", output)?;
        let detailed = got.value["Devices"]
            .as_array()
            .and_then(|d| d.first())
            .is_some_and(|d| d.get("Subsystems").is_some() || d.get("HostNQN").is_some());
        let json_error =
            |source| ParseError::Json { tool: "nvme list", source, head: super::head(output) };
        if detailed {
            let list: DetailedList = serde_json::from_value(got.value).map_err(json_error)?;
            return Ok(list.flatten());
        }
        serde_json::from_value(got.value).map_err(json_error)
    }

    /// The namespace whose device path (`/dev/nvme0n1`) or name (`nvme0n1`) is `path`.
    pub fn find_by_path(&self, path: &str) -> Option<&NvmeDevice> {
        self.devices.iter().find(|d| d.device_path == path || d.name() == path)
    }

    /// The first namespace whose serial number, trimmed, is `serial`.
    pub fn find_by_serial(&self, serial: &str) -> Option<&NvmeDevice> {
        self.devices.iter().find(|d| d.serial_number.trim() == serial)
    }

    /// The first namespace whose model number, trimmed, is `model`.
    pub fn find_by_model(&self, model: &str) -> Option<&NvmeDevice> {
        self.devices.iter().find(|d| d.model_number.trim() == model)
    }
}

/// `nvme list -o json` in nvme-cli's detailed format (nvme-print-json.c `json_detail_list`).
#[derive(Deserialize)]
struct DetailedList {
    #[serde(rename = "Devices")]
    hosts: Vec<DetailedHost>,
}

#[derive(Deserialize)]
struct DetailedHost {
    #[serde(rename = "Subsystems", default)]
    subsystems: Vec<DetailedSubsystem>,
}

#[derive(Deserialize)]
struct DetailedSubsystem {
    #[serde(rename = "Controllers", default)]
    controllers: Vec<DetailedController>,
    /// Namespaces of the subsystem (native multipath: `nvme1n1` over the paths `nvme1c1n1`).
    #[serde(rename = "Namespaces", default)]
    namespaces: Vec<DetailedNamespace>,
}

#[derive(Deserialize)]
struct DetailedController {
    #[serde(rename = "SerialNumber", default)]
    serial_number: String,
    #[serde(rename = "ModelNumber", default)]
    model_number: String,
    #[serde(rename = "Firmware", default)]
    firmware: String,
    /// The controller's own namespaces (without native multipath).
    #[serde(rename = "Namespaces", default)]
    namespaces: Vec<DetailedNamespace>,
}

#[derive(Deserialize)]
struct DetailedNamespace {
    /// The block device's name, `nvme1n1`.
    #[serde(rename = "NameSpace")]
    name: String,
    #[serde(rename = "NSID", default, deserialize_with = "de_u32")]
    nsid: u32,
    #[serde(rename = "UsedBytes", default, deserialize_with = "de_u64")]
    used_bytes: u64,
    #[serde(rename = "MaximumLBA", default, deserialize_with = "de_u64")]
    maximum_lba: u64,
    #[serde(rename = "PhysicalSize", default, deserialize_with = "de_u64")]
    physical_size: u64,
    #[serde(rename = "SectorSize", default, deserialize_with = "de_u32")]
    sector_size: u32,
}

impl DetailedNamespace {
    fn device(&self, c: Option<&DetailedController>) -> NvmeDevice {
        NvmeDevice {
            nsid: self.nsid,
            device_path: format!("/dev/{}", self.name),
            firmware: c.map(|c| c.firmware.clone()).unwrap_or_default(),
            model_number: c.map(|c| c.model_number.clone()).unwrap_or_default(),
            serial_number: c.map(|c| c.serial_number.clone()).unwrap_or_default(),
            used_bytes: self.used_bytes,
            maximum_lba: self.maximum_lba,
            physical_size: self.physical_size,
            sector_size: self.sector_size,
        }
    }
}

impl DetailedList {
    /// One entry per namespace block device, as the simple format lists them.
    fn flatten(&self) -> NvmeList {
        let mut devices = Vec::new();
        for s in self.hosts.iter().flat_map(|h| &h.subsystems) {
            devices.extend(s.namespaces.iter().map(|n| n.device(s.controllers.first())));
            for c in &s.controllers {
                devices.extend(c.namespaces.iter().map(|n| n.device(Some(c))));
            }
        }
        NvmeList { devices }
    }
}

/// What `nvme connect -o json` printed: the new controller.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ConnectOutput {
    /// The controller's name, `nvme0` (not a namespace: that is `nvme0n1` or, with native
    /// multipath, named after the subsystem instance).
    pub device: String,
}

impl ConnectOutput {
    /// Parse `{"device": "nvme0"}`, or the normal format's `device: nvme0` line.
    pub fn parse(output: &str) -> Result<Self, ParseError> {
        match extract_json::<ConnectOutput>("nvme connect", output) {
            Ok(got) => Ok(got.value),
            Err(ParseError::NoJson { .. }) => output
                .lines()
                .find_map(|l| l.trim().strip_prefix("device: "))
                .map(|d| ConnectOutput { device: d.trim().to_string() })
                .ok_or_else(|| ParseError::NoJson {
                    tool: "nvme connect",
                    head: super::head(output),
                }),
            Err(e) => Err(e),
        }
    }
}

/// What `nvme disconnect -n NQN` printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisconnectOutput {
    /// The NQN argument as given (a comma-separated list when several were).
    pub nqn: String,
    /// How many controllers were disconnected; 0 means none was connected to that NQN.
    pub controllers: u32,
}

impl DisconnectOutput {
    /// Parse `NQN:<nqn> disconnected <n> controller(s)`.
    pub fn parse(output: &str) -> Result<Self, ParseError> {
        output
            .lines()
            .find_map(|line| {
                let rest = line.trim().strip_prefix("NQN:")?;
                let (nqn, tail) = rest.rsplit_once(" disconnected ")?;
                let count = tail.strip_suffix(" controller(s)")?.trim().parse().ok()?;
                Some(DisconnectOutput { nqn: nqn.to_string(), controllers: count })
            })
            .ok_or_else(|| {
                ParseError::unexpected(
                    "nvme disconnect",
                    "no line \"NQN:<nqn> disconnected <n> controller(s)\"",
                    output,
                )
            })
    }
}

/// A shell command printing one line per NVMe-oF controller of the host (from sysfs): name,
/// subsystem NQN, state, address; [`parse_controllers`] reads it.
pub const CONTROLLERS: &str = "for c in /sys/class/nvme/nvme*; do [ -e $c/subsysnqn ] || continue; \
                           echo ${c##*/} $(cat $c/subsysnqn) $(cat $c/state) $(cat $c/address 2>/dev/null | tr -d ' ' | tr '\\n' ' '); done; true";

/// A fabrics controller as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// The controller's name (`nvme0`).
    pub name: String,
    /// Its subsystem NQN.
    pub nqn: String,
    /// `live`, `connecting`, `resetting`, `deleting`, ...
    pub state: String,
    /// `traddr=...,trsvcid=...,...`
    pub address: String,
}

impl Controller {
    /// Whether the controller's path goes to `addr:port`.
    pub fn reaches(&self, addr: &str, port: u16) -> bool {
        self.address.split(',').any(|kv| kv == format!("traddr={addr}"))
            && self.address.split(',').any(|kv| kv == format!("trsvcid={port}"))
    }
}

/// The controllers of a [`CONTROLLERS`] listing; lines that are not one are skipped.
pub fn parse_controllers(listing: &str) -> Vec<Controller> {
    listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, nqn, state) = (w.next()?, w.next()?, w.next()?);
            Some(Controller {
                name: name.into(),
                nqn: nqn.into(),
                state: state.into(),
                address: w.collect::<Vec<_>>().join(","),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // discover and list: captured in a VM; the others: shapes from nvme-cli 2.3's source
    // (see testdata/README.md).
    const DISCOVER: &str = include_str!("testdata/nvme-cli-2.3_discover.json");
    const LIST: &str = include_str!("testdata/nvme-cli-2.3_list.json");
    const LIST_EMPTY: &str = include_str!("testdata/nvme-cli-2.3_list_empty.json");
    const CONNECT: &str = include_str!("testdata/nvme-cli-2.3_connect.json");
    const DISCONNECT: &str = include_str!("testdata/nvme-cli-2.3_disconnect.txt");
    // nvme-cli 2.11 (nixpkgs): shapes from its source (testdata/gen_nvme_cli_shapes.py).
    const DISCOVER_2_11: &str = include_str!("testdata/nvme-cli-2.11_discover.json");
    const LIST_2_11: &str = include_str!("testdata/nvme-cli-2.11_list.json");
    const LIST_EMPTY_2_11: &str = include_str!("testdata/nvme-cli-2.11_list_empty.json");
    const CONNECT_2_11: &str = include_str!("testdata/nvme-cli-2.11_connect.json");

    const NQN: &str = "nqn.2019-05.io.vmcheck:626210a5-c960-50b7-bcde-50bfb7e8543f";

    #[test]
    fn command_lines() {
        assert_eq!(
            Nvme::discover("192.0.2.1", 4420).command_line(),
            "nvme discover -t tcp -a 192.0.2.1 -s 4420 -o json"
        );
        assert_eq!(
            Nvme::connect("192.0.2.1", 4420, NQN)
                .keep_alive_tmo(30)
                .ctrl_loss_tmo(-1)
                .reconnect_delay(2)
                .hostnqn("nqn.2014-08.org.nvmexpress:uuid:1")
                .command_line(),
            format!(
                "nvme connect -t tcp -a 192.0.2.1 -s 4420 -n {NQN} --keep-alive-tmo=30 \
                 --ctrl-loss-tmo=-1 --reconnect-delay=2 \
                 --hostnqn=nqn.2014-08.org.nvmexpress:uuid:1 -o json"
            )
        );
        let opts = FabricsOptions { keep_alive_tmo: Some(60), ..Default::default() };
        assert_eq!(
            Nvme::connect_all("192.0.2.1", 8420).options(opts).to_string(),
            "nvme connect-all -t tcp -a 192.0.2.1 -s 8420 --keep-alive-tmo=60"
        );
        assert_eq!(Nvme::list(), "nvme list -o json");
        assert_eq!(Nvme::disconnect(NQN), format!("nvme disconnect -n {NQN}"));
        assert_eq!(Nvme::disconnect("a b"), "nvme disconnect -n 'a b'");
        assert_eq!(Nvme::disconnect_all(), "nvme disconnect-all");
        assert_eq!(Nvme::discover("fe80::1", 4420).transport(Transport::Rdma).argv()[3], "rdma");
    }

    #[test]
    fn parses_discovery_log() {
        for text in [DISCOVER, DISCOVER_2_11] {
            parses_discovery_log_of(text);
        }
    }

    fn parses_discovery_log_of(text: &str) {
        let log = DiscoveryLog::parse(text).unwrap();
        assert_eq!(log.genctr, 2);
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.records[0].subnqn, DISCOVERY_NQN);
        assert!(!log.records[0].is_nvme_subsystem());
        let subs: Vec<_> = log.subsystems().collect();
        assert_eq!(subs.len(), 1);
        let r = subs[0];
        assert_eq!(r.subnqn, NQN);
        assert_eq!((r.trtype.as_str(), r.adrfam.as_str()), ("tcp", "ipv4"));
        assert_eq!((r.traddr.as_str(), r.port(), r.portid), ("192.0.2.1", Some(4420), 1));
        assert_eq!(r.sectype.as_deref(), Some("none"));
        assert!(r.other.is_empty());
        assert!(log.find(NQN).is_some() && log.find("nqn.nope").is_none());
    }

    #[test]
    fn discovery_log_keeps_unknown_fields() {
        let text = r#"{"genctr":1,"records":[{"trtype":"rdma","adrfam":"ipv4",
            "subtype":"nvme subsystem","treq":"not specified","portid":2,"trsvcid":"4420",
            "subnqn":"nqn.x","traddr":"10.0.0.1","eflags":"none","rdma_prtype":"roce-v2",
            "rdma_pkey":0}]}"#;
        let log = DiscoveryLog::parse(text).unwrap();
        assert_eq!(log.records[0].other["rdma_prtype"], "roce-v2");
        assert_eq!(log.records[0].sectype, None);
    }

    #[test]
    fn parses_list() {
        // 2.11 prints the detailed format for `-o json`: the same namespace comes out of both.
        for (text, empty) in [(LIST, LIST_EMPTY), (LIST_2_11, LIST_EMPTY_2_11)] {
            parses_list_of(text, empty);
        }
        let simple = NvmeList::parse(LIST).unwrap().devices;
        let detailed = NvmeList::parse(LIST_2_11).unwrap().devices;
        assert_eq!(format!("{simple:?}"), format!("{detailed:?}"));
    }

    fn parses_list_of(text: &str, empty: &str) {
        let list = NvmeList::parse(text).unwrap();
        assert_eq!(list.devices.len(), 1);
        let d = &list.devices[0];
        assert_eq!((d.nsid, d.device_path.as_str(), d.name()), (1, "/dev/nvme1n1", "nvme1n1"));
        assert_eq!(d.model_number, "Linux");
        assert_eq!(d.physical_size, 512 << 20);
        assert_eq!(d.physical_size, d.maximum_lba * u64::from(d.sector_size));
        assert_eq!(d.used_bytes, d.physical_size);
        assert!(list.find_by_path("/dev/nvme1n1").is_some());
        assert!(list.find_by_path("nvme1n1").is_some());
        assert!(list.find_by_serial("0c6f912a28281702eb29").is_some());
        assert!(list.find_by_model("Linux").is_some());
        assert!(NvmeList::parse(empty).unwrap().devices.is_empty());
    }

    #[test]
    fn list_accepts_numbers_as_strings() {
        let text = r#"{"Devices":[{"NameSpace":"1","DevicePath":"/dev/nvme1n1",
            "PhysicalSize":"1024","SectorSize":512,"UsedBytes":null}]}"#;
        let d = &NvmeList::parse(text).unwrap().devices[0];
        assert_eq!((d.nsid, d.physical_size, d.used_bytes), (1, 1024, 0));
    }

    #[test]
    fn detailed_format_without_multipath_lists_the_controllers_namespaces() {
        let text = r#"{"Devices":[{"HostNQN":"nqn.h","Subsystems":[{"Subsystem":"nvme-subsys0",
            "Controllers":[{"Controller":"nvme0","SerialNumber":"s0","ModelNumber":"m",
            "Firmware":"f","Namespaces":[{"NameSpace":"nvme0n1","NSID":1,"PhysicalSize":4096,
            "SectorSize":512},{"NameSpace":"nvme0n2","NSID":2}],"Paths":[]}],
            "Namespaces":[]}]}]}"#;
        let list = NvmeList::parse(text).unwrap();
        let got: Vec<_> =
            list.devices.iter().map(|d| (d.nsid, d.name(), d.serial_number.as_str())).collect();
        assert_eq!(got, [(1, "nvme0n1", "s0"), (2, "nvme0n2", "s0")]);
        let bad = r#"{"Devices":[{"HostNQN":"nqn.h","Subsystems":[{"Namespaces":[{"NSID":1}]}]}]}"#;
        let e = NvmeList::parse(bad).unwrap_err().to_string();
        assert!(e.contains("NameSpace"), "{e}");
    }

    #[test]
    fn parses_connect_and_disconnect() {
        assert_eq!(ConnectOutput::parse(CONNECT).unwrap().device, "nvme0");
        assert_eq!(ConnectOutput::parse(CONNECT_2_11).unwrap().device, "nvme1");
        assert_eq!(ConnectOutput::parse("device: nvme2\n").unwrap().device, "nvme2");
        let out = DisconnectOutput::parse(DISCONNECT).unwrap();
        assert_eq!((out.nqn.as_str(), out.controllers), (NQN, 1));
        let none = DisconnectOutput::parse("NQN:nqn.x disconnected 0 controller(s)\n").unwrap();
        assert_eq!(none.controllers, 0);
    }

    #[test]
    fn errors_quote_the_output() {
        let failed = "Failed to scan topology: No such file or directory\n";
        let e = NvmeList::parse(failed).unwrap_err().to_string();
        assert!(e.starts_with("nvme list: no JSON object") && e.contains("Failed to scan"), "{e}");
        let e = DiscoveryLog::parse("failed to add controller, error connection refused\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("connection refused"), "{e}");
        let e = DisconnectOutput::parse("").unwrap_err().to_string();
        assert!(e.contains("no line"), "{e}");
        assert!(ConnectOutput::parse(
            "could not add new controller: failed to write to nvme-fabrics device\n"
        )
        .is_err());
        assert!(DiscoveryLog::parse("{\"genctr\":1}\n").is_err());
        assert!(NvmeList::parse("{\"Devices\":[{\"NameSpace\":1}]}").is_err());
    }
    #[test]
    fn controllers_are_read_from_sysfs_lines() {
        let listing = "nvme0 nqn.a live traddr=192.0.2.1 trsvcid=4420 src_addr=192.0.2.2\nnvme1 nqn.a connecting traddr=198.18.2.1 trsvcid=4421\nnvme2 bad\n";
        let c = parse_controllers(listing);
        assert_eq!(c.len(), 2);
        assert!(c[0].reaches("192.0.2.1", 4420) && !c[0].reaches("192.0.2.1", 4421));
        assert!(c[1].reaches("198.18.2.1", 4421) && c[1].state == "connecting");
    }
}
