//! The cache a user can see and trim (`vmcheck cache`): the images (`images/<recipe>-<hash>/`)
//! and saved machine states (`snapshots/<key>/`) of `$VMCHECK_CACHE`, each with its size, when
//! it was last used and whether a run holds it; and their pruning.
//!
//! **In use.** A driver holds a shared `flock` on `<entry>.use` beside each image and snapshot
//! it uses ([`hold`]), from before it looks the entry up until the driver is dropped; the same
//! call sets that file's mtime, the entry's last use (atime is unreliable: `noatime`,
//! `relatime`). A prune takes the exclusive lock without waiting and skips an entry it cannot
//! lock. It removes an entry's `.use` file while still holding the lock, and [`hold`] checks,
//! once locked, that the file it locked is still the one at the path (else it locks the new
//! one), so a driver never holds a removed entry. A snapshot is also skipped while its build
//! lock (`<key>.lock`) is held; images are removed under the cache's `lock`, which a builder
//! holds while it builds.
//!
//! **The bound.** After an image or a snapshot is written, the images and snapshots are kept
//! under `VMCHECK_CACHE_MAX` (default [`DEFAULT_MAX`], 20 GiB; `off` for no bound), least
//! recently used first ([`bound`]). The kernels, Debian packages and apt answers beside them
//! (`kernel/`, `debs/`, `apt/`) are listed as a total, never pruned: every image needs them.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

/// The automatic bound on the images and snapshots of a cache, unless `VMCHECK_CACHE_MAX` says
/// otherwise: 20 GiB.
pub const DEFAULT_MAX: u64 = 20 << 30;

/// What a cache entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A recipe's initramfs and tools disk, `images/<recipe>-<hash>/`.
    Image,
    /// A saved machine state, `snapshots/<key>/`.
    Snapshot,
}

/// One image or snapshot of the cache.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Image or snapshot.
    pub kind: Kind,
    /// The directory's name: `<recipe>-<hash>` for an image, the key for a snapshot.
    pub name: String,
    /// The directory.
    pub path: PathBuf,
    /// Bytes it takes on disk (allocated blocks).
    pub bytes: u64,
    /// When a driver last used it (its `.use` file's mtime), else when it was written; seconds
    /// since the epoch.
    pub last_used: u64,
    /// Whether a driver holds it now.
    pub in_use: bool,
    /// For a snapshot: the image directory its machine boots (from `meta.json`).
    pub image: Option<String>,
    /// For a snapshot: the QEMU that saved it (`None`: its `meta.json` is unreadable).
    pub qemu_version: Option<String>,
    /// Whether a recipe of the suite uses it (`None`: not asked, see [`Current`]).
    pub current: Option<bool>,
}

/// What the suite's recipes use now: their images (directory names), and this host's QEMU (a
/// snapshot of another QEMU is refused on use).
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// `<recipe>-<hash>` of each image the suite's recipes boot.
    pub images: HashSet<String>,
    /// `qemu --version`'s first line.
    pub qemu_version: Option<String>,
}

/// What to prune. Entries a driver holds are never chosen.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Entries no recipe of the suite uses ([`Entry::current`] is `Some(false)`).
    pub unused: bool,
    /// Entries not used for longer than this.
    pub older_than: Option<Duration>,
    /// Then, least recently used first, until the images and snapshots take at most this.
    pub max_bytes: Option<u64>,
}

/// Why an entry was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No recipe of the suite uses it.
    Unused,
    /// Not used for longer than `--older-than`.
    Old,
    /// Least recently used while the cache was over its bound.
    OverBound,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Unused => "no recipe of the suite uses it",
            Reason::Old => "not used for longer than asked",
            Reason::OverBound => "least recently used, over the size bound",
        })
    }
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    /// Removed (dry: chosen), with the reason.
    pub removed: Vec<(Entry, Reason)>,
    /// Chosen but held by a driver when the prune came to it: left alone.
    pub held: Vec<Entry>,
    /// Bytes the images and snapshots take afterwards.
    pub left_bytes: u64,
}

impl Entry {
    /// How a person is shown it: ("image", its name) or ("snapshot", its key's first 16 digits).
    pub fn label(&self) -> (&'static str, &str) {
        match self.kind {
            Kind::Image => ("image", &self.name),
            Kind::Snapshot => ("snapshot", &self.name[..self.name.len().min(16)]),
        }
    }

    /// Its `.use` file, beside the directory.
    fn use_file(&self) -> PathBuf {
        use_file(&self.path)
    }

    fn matches(&self, current: &Current) -> bool {
        match self.kind {
            Kind::Image => current.images.contains(&self.name),
            Kind::Snapshot => {
                self.image.as_ref().is_some_and(|i| current.images.contains(i))
                    && self.qemu_version.is_some()
                    && (current.qemu_version.is_none() || current.qemu_version == self.qemu_version)
            }
        }
    }
}

/// A driver's hold on an image or snapshot: a shared lock on its `.use` file, released on drop.
#[derive(Debug)]
pub struct Hold {
    _lock: Flock<fs::File>,
}

/// The `.use` file of an image or snapshot directory.
pub fn use_file(entry_dir: &Path) -> PathBuf {
    let mut name = entry_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".use");
    entry_dir.with_file_name(name)
}

/// Holds the image or snapshot at `entry_dir` (present or about to be written) in use, so that no
/// prune removes it while the [`Hold`] lives, and records this as its last use.
pub fn hold(entry_dir: &Path) -> Result<Hold> {
    let path = use_file(entry_dir);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    loop {
        let Some(lock) = lock_file(&path, FlockArg::LockShared)? else { continue };
        // A prune that held the lock before us removed the file: lock the one at the path now.
        if same_file(&lock, &path) {
            let _ = lock.set_modified(SystemTime::now());
            return Ok(Hold { _lock: lock });
        }
    }
}

fn same_file(file: &fs::File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Bytes allocated to the files under `path` (as `du`: a sparse file counts what it holds).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            bytes += disk_usage(&entry.path());
        }
    }
    bytes
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether a driver holds the lock of `use_file` (a file that is not there is not held).
fn is_held(use_file: &Path) -> bool {
    let Ok(file) = fs::File::open(use_file) else { return false };
    matches!(
        Flock::lock(file, FlockArg::LockExclusiveNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// The images and snapshots of the cache at `cache_dir`, oldest use first.
pub fn list(cache_dir: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (kind, sub) in [(Kind::Image, "images"), (Kind::Snapshot, "snapshots")] {
        let dir = cache_dir.join(sub);
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for item in read {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            // Staging directories are a builder's (or a dead run's, which its next builder removes).
            if name.starts_with('.') || !item.file_type()?.is_dir() {
                continue;
            }
            let path = item.path();
            let written = item.metadata()?.modified()?;
            let used = fs::metadata(use_file(&path)).and_then(|m| m.modified()).ok();
            let last_used = used.map_or(written, |u| u.max(written));
            let (image, qemu_version) = match kind {
                Kind::Image => (None, None),
                Kind::Snapshot => snapshot_meta(&path),
            };
            entries.push(Entry {
                kind,
                in_use: is_held(&use_file(&path)),
                bytes: disk_usage(&path),
                last_used: unix_secs(last_used),
                image,
                qemu_version,
                current: None,
                name,
                path,
            });
        }
    }
    entries.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    Ok(entries)
}

/// A snapshot's image directory and QEMU, from its `meta.json` (`None`s when unreadable).
fn snapshot_meta(dir: &Path) -> (Option<String>, Option<String>) {
    let Ok(meta) = fs::read(dir.join("meta.json"))
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice::<crate::snapshot::Meta>(&b)?))
    else {
        return (None, None);
    };
    // The kernel-boot command line names the initramfs `.../images/<recipe>-<hash>/initrd`.
    let image = meta.inputs.lines().find_map(|l| {
        let (_, rest) = l.rsplit_once("/images/")?;
        let (dir, _) = rest.split_once('/')?;
        Some(dir.to_string())
    });
    (image, Some(meta.qemu_version))
}

/// Marks each entry used or not by the suite's recipes ([`Entry::current`]).
pub fn mark_current(entries: &mut [Entry], current: &Current) {
    for e in entries {
        e.current = Some(e.matches(current));
    }
}

/// The entries `policy` chooses, in the order to remove them, with the reason; never one a
/// driver holds. `now` is seconds since the epoch.
pub fn select(entries: &[Entry], policy: &Policy, now: u64) -> Vec<(usize, Reason)> {
    let mut chosen: Vec<(usize, Reason)> = Vec::new();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].last_used, i));
    for &i in &order {
        let e = &entries[i];
        if e.in_use {
            continue;
        }
        if policy.unused && e.current == Some(false) {
            chosen.push((i, Reason::Unused));
        } else if policy.older_than.is_some_and(|d| now.saturating_sub(e.last_used) > d.as_secs()) {
            chosen.push((i, Reason::Old));
        }
    }
    if let Some(max) = policy.max_bytes {
        let total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut left = total - chosen.iter().map(|&(i, _)| entries[i].bytes).sum::<u64>();
        for &i in &order {
            if left <= max {
                break;
            }
            if entries[i].in_use || chosen.iter().any(|&(c, _)| c == i) {
                continue;
            }
            chosen.push((i, Reason::OverBound));
            left -= entries[i].bytes;
        }
    }
    chosen
}

/// Prunes the cache at `cache_dir` as `policy` says (with `current`, the suite's, for
/// [`Policy::unused`]); `dry_run` only reports. Waits for the cache's lock (an image being built).
pub fn prune(
    cache_dir: &Path,
    policy: &Policy,
    current: Option<&Current>,
    dry_run: bool,
) -> Result<Pruned> {
    if policy.unused && current.is_none() {
        bail!("pruning unused entries needs the suite's recipes");
    }
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating cache {}", cache_dir.display()))?;
    let _lock = lock_cache(cache_dir, true)?;
    prune_locked(cache_dir, policy, current, dry_run, true)
}

/// Keeps the images and snapshots under the bound (`VMCHECK_CACHE_MAX`, default
/// [`DEFAULT_MAX`]) after something was written, least recently used first. With
/// `images_locked` the caller holds the cache's lock (an image builder); without it, images
/// are pruned only when that lock is free now, snapshots always. `None` when within the bound.
pub fn bound(cache_dir: &Path, images_locked: bool) -> Result<Option<Pruned>> {
    let Some(max) = max_from_env()? else { return Ok(None) };
    let policy = Policy { max_bytes: Some(max), ..Policy::default() };
    let lock = if images_locked { None } else { lock_cache(cache_dir, false)? };
    let pruned = prune_locked(cache_dir, &policy, None, false, images_locked || lock.is_some())?;
    Ok((!pruned.removed.is_empty() || !pruned.held.is_empty()).then_some(pruned))
}

/// `VMCHECK_CACHE_MAX`: a size (`20G`, `500MiB`, bytesize's units: `G` is 10^9, `GiB` 2^30),
/// or `off`; unset, [`DEFAULT_MAX`].
pub fn max_from_env() -> Result<Option<u64>> {
    match std::env::var("VMCHECK_CACHE_MAX") {
        Err(_) => Ok(Some(DEFAULT_MAX)),
        Ok(v) if v.eq_ignore_ascii_case("off") => Ok(None),
        Ok(v) => parse_size(&v).map(Some).context("VMCHECK_CACHE_MAX"),
    }
}

/// A size as a user writes it: `20G`, `1.5GiB`, `500M`, `1024`.
pub fn parse_size(text: &str) -> Result<u64> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| anyhow!("{text:?} is not a size (like 20G, 1.5GiB, 500M): {e}"))
}

/// The cache's `lock` (the image builder's), waiting for it or not; `None` when not waiting
/// and it is taken.
fn lock_cache(cache_dir: &Path, wait: bool) -> Result<Option<Flock<fs::File>>> {
    let arg = if wait { FlockArg::LockExclusive } else { FlockArg::LockExclusiveNonblock };
    lock_file(&cache_dir.join("lock"), arg)
}

/// `path` (created if need be) locked with `arg`; `None` when a non-blocking lock is taken.
fn lock_file(path: &Path, arg: FlockArg) -> Result<Option<Flock<fs::File>>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(anyhow!("locking {}: {e}", path.display())),
    }
}

fn prune_locked(
    cache_dir: &Path,
    policy: &Policy,
    current: Option<&Current>,
    dry_run: bool,
    images: bool,
) -> Result<Pruned> {
    let mut entries = list(cache_dir)?;
    if let Some(c) = current {
        mark_current(&mut entries, c);
    }
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    // Without the cache's lock an image may be being written: leave the images out.
    let candidates: Vec<Entry> =
        entries.iter().filter(|e| images || e.kind == Kind::Snapshot).cloned().collect();
    let kept: u64 = total - candidates.iter().map(|e| e.bytes).sum::<u64>();
    let policy =
        Policy { max_bytes: policy.max_bytes.map(|m| m.saturating_sub(kept)), ..policy.clone() };
    let mut pruned = Pruned { left_bytes: total, ..Pruned::default() };
    let now = unix_secs(SystemTime::now());
    // Held entries the policy would choose were they not held: said to be kept.
    let unheld: Vec<Entry> =
        candidates.iter().map(|e| Entry { in_use: false, ..e.clone() }).collect();
    for (i, _) in select(&unheld, &policy, now) {
        if candidates[i].in_use {
            pruned.held.push(candidates[i].clone());
        }
    }
    for (i, reason) in select(&candidates, &policy, now) {
        let e = &candidates[i];
        if dry_run || remove(e)? {
            pruned.left_bytes -= e.bytes;
            pruned.removed.push((e.clone(), reason));
        } else {
            pruned.held.push(e.clone());
        }
    }
    Ok(pruned)
}

/// Removes an entry unless a driver holds it (then `false`): under the exclusive lock of its
/// `.use` file (and for a snapshot its build lock), both taken without waiting.
fn remove(e: &Entry) -> Result<bool> {
    let path = e.use_file();
    let Some(lock) = lock_file(&path, FlockArg::LockExclusiveNonblock)? else { return Ok(false) };
    // Another prune removed it (and its file) meanwhile, and perhaps a driver holds a new one.
    if !same_file(&lock, &path) {
        return Ok(false);
    }
    let _build = match e.kind {
        Kind::Image => None,
        Kind::Snapshot => {
            let build = e.path.with_file_name(format!("{}.lock", e.name));
            match fs::File::open(&build).map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock)) {
                Ok(Ok(l)) => Some(l),
                Ok(Err((_, nix::errno::Errno::EWOULDBLOCK))) => return Ok(false),
                Ok(Err((_, e))) => return Err(anyhow!("locking {}: {e}", build.display())),
                Err(_) => None,
            }
        }
    };
    match fs::remove_dir_all(&e.path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", e.path.display())),
    }
    // Still locked: a driver waiting on this file finds it gone and locks a new one.
    let _ = fs::remove_file(&path);
    Ok(true)
}

/// The log line of an automatic prune ([`bound`]).
pub fn bound_summary(p: &Pruned) -> String {
    let freed: u64 = p.removed.iter().map(|(e, _)| e.bytes).sum();
    let mut line = format!(
        "cache: over its bound (VMCHECK_CACHE_MAX): removed {} least recently used entries ({}), {} left",
        p.removed.len(),
        human_bytes(freed),
        human_bytes(p.left_bytes)
    );
    if !p.held.is_empty() {
        line += &format!("; {} held by running tests kept", p.held.len());
    }
    line
}

/// `bytes` for a person: `1.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// How long ago `secs` (since the epoch) was, to the minute: `3h 2m`, `now`.
pub fn ago(secs: u64) -> String {
    let age = unix_secs(SystemTime::now()).saturating_sub(secs) / 60 * 60;
    match age {
        0 => "now".into(),
        _ => format!("{} ago", humantime::format_duration(Duration::from_secs(age))),
    }
}

/// The sizes of the cache's other directories (`kernel/`, `debs/`, `apt/`), never pruned.
pub fn others(cache_dir: &Path) -> Vec<(String, u64)> {
    ["kernel", "debs", "apt"]
        .iter()
        .map(|d| (d.to_string(), disk_usage(&cache_dir.join(d))))
        .filter(|(_, b)| *b > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: Kind, bytes: u64, last_used: u64) -> Entry {
        Entry {
            kind,
            name: name.into(),
            path: PathBuf::from("/c").join(name),
            bytes,
            last_used,
            in_use: false,
            image: None,
            qemu_version: None,
            current: None,
        }
    }

    #[test]
    fn selection_skips_what_is_held_and_goes_oldest_first() {
        let day = 86400;
        let now = 100 * day;
        let mut es = vec![
            entry("old-image", Kind::Image, 40, now - 30 * day),
            entry("held-old", Kind::Snapshot, 100, now - 40 * day),
            entry("new", Kind::Snapshot, 100, now - 60),
            entry("mid", Kind::Snapshot, 100, now - 3 * day),
        ];
        es[1].in_use = true;
        let names_in = |es: &[Entry], p: &Policy| -> Vec<(String, Reason)> {
            select(es, p, now).into_iter().map(|(i, r)| (es[i].name.clone(), r)).collect()
        };
        let names = |p: &Policy| names_in(&es, p);
        // Nothing asked, nothing chosen.
        assert!(names(&Policy::default()).is_empty());
        let week = Policy { older_than: Some(Duration::from_secs(7 * day)), ..Policy::default() };
        assert_eq!(names(&week), [("old-image".to_string(), Reason::Old)]);
        // 340 bytes in all, 250 allowed: the held one (the oldest) stays, the next two go.
        let bound = Policy { max_bytes: Some(250), ..Policy::default() };
        assert_eq!(
            names(&bound),
            [("old-image".to_string(), Reason::OverBound), ("mid".to_string(), Reason::OverBound)]
        );
        // A bound nothing can meet removes every entry not held, and no more.
        let zero = Policy { max_bytes: Some(0), ..Policy::default() };
        assert_eq!(names(&zero).len(), 3);
        // Unused: only what the suite does not use; unknown (None) is never unused.
        let mut es = es.clone();
        es[2].current = Some(false);
        es[3].current = Some(true);
        let unused = Policy { unused: true, ..Policy::default() };
        assert_eq!(names_in(&es, &unused), [("new".to_string(), Reason::Unused)]);
        // Reasons combine without choosing an entry twice.
        let all = Policy { unused: true, max_bytes: Some(0), ..week };
        let chosen = names_in(&es, &all);
        assert_eq!(chosen.len(), 3, "{chosen:?}");
    }

    #[test]
    fn a_snapshot_is_current_when_its_image_is_and_its_qemu_is_this_one() {
        let mut s = entry("k", Kind::Snapshot, 1, 0);
        s.image = Some("target-ab".into());
        s.qemu_version = Some("QEMU 10".into());
        let current = Current {
            images: ["target-ab".to_string()].into(),
            qemu_version: Some("QEMU 10".into()),
        };
        assert!(s.matches(&current));
        let newer = Current { qemu_version: Some("QEMU 11".into()), ..current.clone() };
        assert!(!s.matches(&newer));
        s.image = Some("target-cd".into());
        assert!(!s.matches(&current));
        assert!(entry("target-ab", Kind::Image, 1, 0).matches(&current));
        assert!(!entry("target-cd", Kind::Image, 1, 0).matches(&current));
    }

    #[test]
    fn sizes_parse_and_bad_ones_say_so() {
        assert_eq!(parse_size("20G").unwrap(), 20_000_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        let e = parse_size("lots").unwrap_err();
        assert!(format!("{e:#}").contains("not a size"), "{e:#}");
    }

    #[test]
    fn hold_relocks_a_file_a_prune_removed() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("images/a-1");
        fs::create_dir_all(&dir).unwrap();
        let e = Entry { path: dir.clone(), ..entry("a-1", Kind::Image, 0, 0) };
        assert!(remove(&e).unwrap());
        assert!(!dir.exists() && !use_file(&dir).exists());
        let h = hold(&dir).unwrap();
        assert!(is_held(&use_file(&dir)));
        fs::create_dir_all(&dir).unwrap();
        assert!(!remove(&e).unwrap(), "a held image was removed");
        drop(h);
        assert!(remove(&e).unwrap());
    }
}
