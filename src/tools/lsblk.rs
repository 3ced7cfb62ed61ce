//! lsblk: what block devices the guest sees, from `lsblk --json -b` (util-linux 2.38).

use serde::{Deserialize, Deserializer};

use super::{de_u64, extract_json, ParseError};

/// `lsblk --json -b -o NAME,SIZE,TYPE,SERIAL,MODEL`: sizes in bytes (`-b`), the columns
/// [`BlockDevice`] reads.
pub const LSBLK_COMMAND: &str = "lsblk --json -b -o NAME,SIZE,TYPE,SERIAL,MODEL";

/// lsblk's device tree.
#[derive(Clone, Debug, Deserialize)]
pub struct Lsblk {
    /// The top-level devices (their partitions and holders are their children).
    pub blockdevices: Vec<BlockDevice>,
}

/// One block device; partitions and holders are its `children`.
#[derive(Clone, Debug, Deserialize)]
pub struct BlockDevice {
    /// Kernel name, `nvme0n1`.
    pub name: String,
    /// Bytes.
    #[serde(default, deserialize_with = "de_bytes")]
    pub size: u64,
    /// `disk`, `part`, `loop`, `rom`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `null` in lsblk when the device has none.
    #[serde(default)]
    pub serial: Option<String>,
    /// The model, if the device reports one.
    #[serde(default)]
    pub model: Option<String>,
    /// Partitions and holders (device-mapper, md) of this device.
    #[serde(default)]
    pub children: Vec<BlockDevice>,
}

/// A size that must be a byte count: lsblk without `-b` prints "512M", which is refused with a
/// hint instead of being guessed at.
fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_u64(d).map_err(|e| {
        serde::de::Error::custom(format!("{e} (lsblk prints sizes in bytes only with -b)"))
    })
}

impl BlockDevice {
    /// `/dev/<name>`.
    pub fn path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// Whether lsblk's type is `disk`.
    pub fn is_disk(&self) -> bool {
        self.kind == "disk"
    }
}

impl Lsblk {
    /// The command line whose output [`Lsblk::parse`] reads.
    pub fn command() -> &'static str {
        LSBLK_COMMAND
    }

    /// Reads the JSON of [`Lsblk::command`]'s output; fails when it is not JSON or sizes are not in bytes.
    pub fn parse(output: &str) -> Result<Self, ParseError> {
        Ok(extract_json("lsblk", output)?.value)
    }

    /// Every device, parents before their children.
    pub fn iter(&self) -> impl Iterator<Item = &BlockDevice> {
        let mut stack: Vec<&BlockDevice> = self.blockdevices.iter().rev().collect();
        std::iter::from_fn(move || {
            let dev = stack.pop()?;
            stack.extend(dev.children.iter().rev());
            Some(dev)
        })
    }

    /// The device with this kernel name (`nvme0n1`) or path (`/dev/nvme0n1`).
    pub fn find(&self, name: &str) -> Option<&BlockDevice> {
        let name = name.strip_prefix("/dev/").unwrap_or(name);
        self.iter().find(|d| d.name == name)
    }

    /// The first device whose serial, trimmed, is `serial`.
    pub fn find_by_serial(&self, serial: &str) -> Option<&BlockDevice> {
        self.iter().find(|d| d.serial.as_deref().map(str::trim) == Some(serial))
    }

    /// The NVMe namespaces (`nvme*n*` disks, not their partitions).
    pub fn nvme_namespaces(&self) -> Vec<&BlockDevice> {
        self.iter().filter(|d| d.is_disk() && d.name.starts_with("nvme")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real captures on the host (capture_lsblk.sh): a 64 MiB loop device with two partitions.
    const HOST: &str = include_str!("testdata/lsblk-2.38_host_loop_partitions.json");
    const HUMAN: &str = include_str!("testdata/lsblk-2.38_host_human_sizes.json");

    #[test]
    fn parses_tree() {
        let l = Lsblk::parse(HOST).unwrap();
        let names: Vec<_> = l.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0", "loop0p1", "loop0p2", "zram0", "vda"]);
        let loop0 = l.find("/dev/loop0").unwrap();
        assert_eq!((loop0.size, loop0.kind.as_str()), (64 << 20, "loop"));
        assert_eq!(loop0.serial, None);
        let p1 = l.find("loop0p1").unwrap();
        assert_eq!(
            (p1.size, p1.kind.as_str(), p1.path()),
            (32 << 20, "part", "/dev/loop0p1".to_string())
        );
        let parts: u64 = loop0.children.iter().map(|c| c.size).sum();
        assert!(parts < loop0.size);
        assert!(l.find("vda").unwrap().is_disk());
        assert!(l.find("nvme0n1").is_none());
        assert!(l.nvme_namespaces().is_empty());
    }

    #[test]
    fn finds_nvme_namespace_by_serial() {
        // Columns as LSBLK_COMMAND prints them; values as a guest with an nvmet namespace would.
        let text = r#"{
   "blockdevices": [
      {"name": "vda", "size": 1073741824, "type": "disk", "serial": null, "model": null},
      {"name": "nvme0n1", "size": 536870912, "type": "disk", "serial": "9a3f7c21d04e5b68", "model": "Linux"}
   ]
}"#;
        let l = Lsblk::parse(text).unwrap();
        let ns = l.nvme_namespaces();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns[0].size, 512 << 20);
        assert_eq!(l.find_by_serial("9a3f7c21d04e5b68").unwrap().name, "nvme0n1");
        assert_eq!(ns[0].model.as_deref(), Some("Linux"));
    }

    #[test]
    fn human_sizes_are_refused_with_a_hint() {
        let e = Lsblk::parse(HUMAN).unwrap_err().to_string();
        assert!(e.contains("only with -b") && e.contains("M\" is not a count"), "{e}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Lsblk::parse("lsblk: unknown column: FOO\n").is_err());
        assert!(Lsblk::parse("{\"blockdevices\": [{\"size\": 1}]}").is_err());
    }

    #[test]
    fn command() {
        assert_eq!(Lsblk::command(), "lsblk --json -b -o NAME,SIZE,TYPE,SERIAL,MODEL");
    }
}
