//! Split bdevs: one disk carved into N bdevs, as SPDK's `bdev_split_create` does.
//!
//! SPDK splits in memory; a kernel target has no such layer without device-mapper (not in the
//! target image). So the daemon writes a GPT itself (protective MBR, primary and backup
//! header and entry array, as UEFI 2.x section 5.3 lays them out), asks the kernel to re-read
//! it (`BLKRRPART`), and the partitions (`nvme0n1p1`..`pN`) become aio bdevs. Because they
//! are the kernel's partitions of the disk, they vanish with it when the disk is hot-removed,
//! which is what SPDK's split vbdevs do when their base goes.
//!
//! Layout: partitions start at 1 MiB and are 1 MiB aligned; without a size, the usable space
//! is divided equally (rounded down to 1 MiB), as SPDK divides a base bdev. GPT allows 128
//! entries, so 1..=128 splits.

use std::time::Duration;

use uuid::Uuid;

use super::error::{Error, Result};

/// GPT entry arrays have 128 entries of 128 bytes.
pub const MAX_SPLITS: u32 = 128;
const ENTRY_SIZE: usize = 128;
const ENTRIES: usize = 128;
const ALIGN_BYTES: u64 = 1 << 20;
/// "Linux filesystem data", what partitioning tools give a plain Linux partition.
const LINUX_DATA: Uuid = Uuid::from_u128(0x0fc6_3daf_8483_4772_8e79_3d69_d847_7de4);
/// How long the kernel gets to make the partitions' sysfs entries and device nodes.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Where the partitions go, in logical blocks of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub blk_size: u32,
    pub total_blocks: u64,
    /// First and last block (inclusive) of each partition.
    pub parts: Vec<(u64, u64)>,
}

impl Layout {
    fn entry_blocks(&self) -> u64 {
        (ENTRIES * ENTRY_SIZE) as u64 / u64::from(self.blk_size)
    }

    fn last_usable(&self) -> u64 {
        self.total_blocks - 2 - self.entry_blocks()
    }
}

/// `count` partitions of `size_mb` MiB each, or of equal shares of the disk.
pub fn layout(
    disk: &str,
    total_blocks: u64,
    blk_size: u32,
    count: u32,
    size_mb: Option<u64>,
) -> Result<Layout> {
    if !(1..=MAX_SPLITS).contains(&count) {
        return Err(Error::InvalidArgument(format!(
            "split_count {count} is out of range 1..={MAX_SPLITS}"
        )));
    }
    let blk = u64::from(blk_size);
    let align = ALIGN_BYTES / blk;
    let mut l = Layout { blk_size, total_blocks, parts: Vec::new() };
    let mib = (total_blocks * blk) >> 20;
    // The primary table, 1 MiB of alignment, and the backup table must fit with room left.
    if total_blocks < 2 * align + 2 * (l.entry_blocks() + 2) {
        return Err(Error::FailedPrecondition(format!(
            "disk {disk} ({mib} MiB) is too small to split"
        )));
    }
    let usable = l.last_usable() + 1 - align;
    let per = match size_mb {
        Some(0) => {
            return Err(Error::InvalidArgument(
                "split_size_mb 0 is out of range; at least 1".into(),
            ))
        }
        Some(mb) => mb
            .checked_mul(ALIGN_BYTES / blk)
            .ok_or_else(|| Error::InvalidArgument(format!("split_size_mb {mb} is too large")))?,
        None => usable / u64::from(count) / align * align,
    };
    if per == 0 || per.checked_mul(u64::from(count)).is_none_or(|all| all > usable) {
        let want = size_mb
            .map_or_else(|| "at least 1 MiB each".to_string(), |mb| format!("{mb} MiB each"));
        return Err(Error::FailedPrecondition(format!(
            "disk {disk} ({mib} MiB, {} MiB usable) cannot hold {count} splits of {want}",
            (usable * blk) >> 20
        )));
    }
    l.parts = (0..u64::from(count)).map(|i| (align + i * per, align + (i + 1) * per - 1)).collect();
    Ok(l)
}

/// The kernel's name of partition `n` (from 1) of `disk`: `nvme0n1p1`, but `vdb1`.
pub fn partition_name(disk: &str, n: usize) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// The writes (byte offset, bytes) that put a GPT for `l` on the disk. Partition GUIDs are
/// derived from `disk_guid`, so the same split gets the same GUIDs.
pub fn gpt_writes(l: &Layout, disk_guid: Uuid) -> Vec<(u64, Vec<u8>)> {
    let blk = l.blk_size as usize;
    let mut entries = vec![0u8; ENTRIES * ENTRY_SIZE];
    for (i, (first, last)) in l.parts.iter().enumerate() {
        let e = &mut entries[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
        e[0..16].copy_from_slice(&LINUX_DATA.to_bytes_le());
        e[16..32].copy_from_slice(
            &Uuid::new_v5(&disk_guid, format!("split{}", i + 1).as_bytes()).to_bytes_le(),
        );
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, unit) in format!("vmcheck-split{}", i + 1).encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let backup_entries = l.last_usable() + 1;
    let header = |current: u64, backup: u64, entries_at: u64| {
        let mut h = vec![0u8; blk];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + l.entry_blocks()).to_le_bytes());
        h[48..56].copy_from_slice(&l.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_bytes_le());
        h[72..80].copy_from_slice(&entries_at.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    // Protective MBR: one partition of type 0xEE over the whole disk (capped at 2^32-1).
    let mut mbr = vec![0u8; blk];
    mbr[446..462]
        .copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0]);
    let size = u32::try_from(l.total_blocks - 1).unwrap_or(u32::MAX);
    mbr[458..462].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let at = |lba: u64| lba * u64::from(l.blk_size);
    let last = l.total_blocks - 1;
    vec![
        (0, mbr),
        (at(1), header(1, last, 2)),
        (at(2), entries.clone()),
        (at(backup_entries), entries),
        (at(last), header(last, 1, backup_entries)),
    ]
}

/// The writes that wipe a GPT: both headers, both entry arrays, the protective MBR.
pub fn wipe_writes(total_blocks: u64, blk_size: u32) -> Vec<(u64, Vec<u8>)> {
    let blk = u64::from(blk_size);
    let table = (2 * blk + (ENTRIES * ENTRY_SIZE) as u64) as usize;
    let backup = table - blk as usize;
    vec![(0, vec![0; table]), (total_blocks * blk - backup as u64, vec![0; backup])]
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses; bitwise, the tables are 16 KiB at most.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn read_u64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn read_u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn equal_splits_are_aligned_and_inside_the_usable_area() {
        for blk in [512u32, 4096] {
            let total = 128 * MIB / u64::from(blk);
            let l = layout("nvme0n1", total, blk, 4, None).unwrap();
            let align = MIB / u64::from(blk);
            assert_eq!(l.parts.len(), 4);
            for (i, (first, last)) in l.parts.iter().enumerate() {
                assert_eq!(first % align, 0, "{blk}: part {i} starts aligned");
                assert_eq!(
                    (last + 1 - first) * u64::from(blk),
                    31 * MIB,
                    "{blk}: 127 usable MiB in 4 is 31 MiB each"
                );
                assert!(*last <= l.last_usable());
            }
            assert_eq!(l.parts[0].0, align);
            assert!(l.parts.windows(2).all(|w| w[0].1 + 1 == w[1].0), "adjacent");
        }
        let sized = layout("vdb", 128 * MIB / 512, 512, 3, Some(10)).unwrap();
        assert_eq!(sized.parts[2], (2048 + 2 * 20480, 2048 + 3 * 20480 - 1));
    }

    #[test]
    fn impossible_splits_name_the_numbers() {
        let total = 64 * MIB / 512;
        let err = layout("nvme0n1", total, 512, 0, None).unwrap_err();
        assert_eq!(
            (err.code(), err.to_string()),
            (tonic::Code::InvalidArgument, "split_count 0 is out of range 1..=128".into())
        );
        assert!(layout("nvme0n1", total, 512, 129, None).unwrap_err().to_string().contains("129"));
        let err = layout("nvme0n1", total, 512, 2, Some(40)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.to_string().contains("nvme0n1 (64 MiB")
                && err.to_string().contains("2 splits of 40 MiB each"),
            "{err}"
        );
        let err = layout("nvme0n1", total, 512, 100, None).unwrap_err();
        assert!(err.to_string().contains("at least 1 MiB each"), "{err}");
        assert_eq!(
            layout("nvme0n1", total, 512, 1, Some(0)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            layout("tiny", 1000, 512, 1, None).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    /// The table reads back as UEFI says a reader checks it: signatures, CRCs, both copies.
    #[test]
    fn the_gpt_reads_back_valid() {
        let total = 64 * MIB / 512;
        let l = layout("nvme0n1", total, 512, 2, None).unwrap();
        let guid = Uuid::from_u128(0x1234);
        let mut disk = vec![0u8; (64 * MIB) as usize];
        for (at, bytes) in gpt_writes(&l, guid) {
            disk[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        assert_eq!((disk[510], disk[511], disk[450]), (0x55, 0xaa, 0xee));
        for (lba, backup) in [(1u64, false), (total - 1, true)] {
            let h = &disk[(lba * 512) as usize..(lba * 512) as usize + 512];
            assert_eq!(&h[0..8], b"EFI PART");
            let mut zeroed = h[..92].to_vec();
            zeroed[16..20].fill(0);
            assert_eq!(read_u32(h, 16), crc32(&zeroed), "header CRC at {lba}");
            assert_eq!(read_u64(h, 24), lba);
            assert_eq!(read_u64(h, 32), if backup { 1 } else { total - 1 });
            let entries_at = read_u64(h, 72) as usize * 512;
            let entries = &disk[entries_at..entries_at + ENTRIES * ENTRY_SIZE];
            assert_eq!(read_u32(h, 88), crc32(entries), "entries CRC at {lba}");
            assert_eq!((read_u64(entries, 32), read_u64(entries, 40)), l.parts[0]);
            assert_eq!((read_u64(entries, 160), read_u64(entries, 168)), l.parts[1]);
            assert!(entries[256..].iter().all(|b| *b == 0));
            assert_eq!(read_u64(h, 40), 34);
            assert!(read_u64(h, 48) < read_u64(h, 72) || !backup);
        }
        for (at, bytes) in wipe_writes(total, 512) {
            disk[at as usize..at as usize + bytes.len()].fill(0);
        }
        assert!(disk.iter().all(|b| *b == 0), "the wipe takes every byte the table wrote");
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_name("vdb", 1), "vdb1");
    }
}
