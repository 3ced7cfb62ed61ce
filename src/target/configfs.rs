//! A configfs tree under one root: the kernel's, or an emulation in a plain directory for tests.
//!
//! In real configfs, `mkdir` of a group makes its default groups and attribute files, and
//! `rmdir` takes them away again. A plain directory does neither, so the emulation does it from
//! a [`GroupLayout`]; callers describe each group once and work unchanged on both. The emulation
//! can also inject faults, to test that half-made state is rolled back.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the kernel creates inside a new group.
#[derive(Debug, Clone, Copy)]
pub struct GroupLayout {
    /// Default groups (subdirectories).
    pub subdirs: &'static [&'static str],
    /// Attribute files and their initial contents.
    pub attrs: &'static [(&'static str, &'static str)],
    /// Emulation only: removal fails with EBUSY unless this attribute holds this value. The
    /// kernel is more lenient; the emulation checks that callers tear down in the right order.
    pub removable_when: Option<(&'static str, &'static str)>,
}

/// The operations, for fault injection and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Mkdir,
    Rmdir,
    Write,
    Read,
    Symlink,
    Unlink,
    List,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Write => "write",
            Op::Read => "read",
            Op::Symlink => "symlink",
            Op::Unlink => "unlink",
            Op::List => "list",
        }
    }
}

/// A failed configfs operation, with the absolute path it was on.
#[derive(Debug, thiserror::Error)]
#[error("{} {}: {source}", op.as_str(), path.display())]
pub struct FsError {
    pub op: Op,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[derive(Debug)]
struct Fault {
    op: Op,
    path_suffix: String,
    errno: i32,
}

/// A configfs tree. Every path argument is relative to the root.
#[derive(Debug)]
pub struct ConfigFs {
    root: PathBuf,
    /// `Some` for the plain-directory emulation: its pending faults.
    emulation: Option<Mutex<Vec<Fault>>>,
}

impl ConfigFs {
    /// The kernel's configfs (e.g. `/sys/kernel/config/nvmet`).
    pub fn kernel(root: impl Into<PathBuf>) -> Self {
        ConfigFs { root: root.into(), emulation: None }
    }

    /// An emulation in `root` (made if missing), laid out like a fresh group of `layout`.
    pub fn emulated(root: impl Into<PathBuf>, layout: &GroupLayout) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        let this = ConfigFs { root, emulation: Some(Mutex::new(Vec::new())) };
        this.populate(&this.root, layout)?;
        Ok(this)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_emulated(&self) -> bool {
        self.emulation.is_some()
    }

    /// Emulation only: the next `op` on a path ending in `path_suffix` fails with `errno`.
    /// Returns false (and does nothing) on the kernel's configfs.
    pub fn inject_fault(&self, op: Op, path_suffix: &str, errno: i32) -> bool {
        let Some(faults) = &self.emulation else { return false };
        lock(faults).push(Fault { op, path_suffix: path_suffix.to_string(), errno });
        true
    }

    pub fn exists(&self, rel: &Path) -> bool {
        self.root.join(rel).symlink_metadata().is_ok()
    }

    pub fn make_group(&self, rel: &Path, layout: &GroupLayout) -> FsResult<()> {
        self.run(Op::Mkdir, rel, |path| {
            fs::create_dir(path)?;
            if self.is_emulated() {
                self.populate(path, layout)?;
            }
            Ok(())
        })
    }

    pub fn remove_group(&self, rel: &Path, layout: &GroupLayout) -> FsResult<()> {
        self.run(Op::Rmdir, rel, |path| {
            if self.is_emulated() {
                Self::unpopulate(path, layout)?;
            }
            fs::remove_dir(path)
        })
    }

    /// Writes an attribute. The kernel's attribute files exist already, so nothing is created.
    pub fn write(&self, rel: &Path, value: &str) -> FsResult<()> {
        self.run(Op::Write, rel, |path| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(self.is_emulated())
                .truncate(self.is_emulated())
                .open(path)?;
            // One write: a configfs store sees exactly what one write(2) passed.
            file.write_all(value.as_bytes())
        })
    }

    /// Reads an attribute, without the trailing newline the kernel adds.
    pub fn read(&self, rel: &Path) -> FsResult<String> {
        self.run(Op::Read, rel, |path| {
            Ok(fs::read_to_string(path)?.trim_end_matches('\n').to_string())
        })
    }

    /// Makes `link` a symlink to `target` (both relative to the root).
    pub fn symlink(&self, target: &Path, link: &Path) -> FsResult<()> {
        let target = self.root.join(target);
        self.run(Op::Symlink, link, |path| std::os::unix::fs::symlink(&target, path))
    }

    pub fn unlink(&self, link: &Path) -> FsResult<()> {
        self.run(Op::Unlink, link, |path| fs::remove_file(path))
    }

    /// The entry names of a directory, sorted.
    pub fn list(&self, rel: &Path) -> FsResult<Vec<String>> {
        self.run(Op::List, rel, |path| {
            let mut names = Vec::new();
            for entry in fs::read_dir(path)? {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
    }

    /// Test aid: every entry under the root, sorted, as `d dir`, `f file = contents` or
    /// `l link -> target` (paths relative to the root).
    #[cfg(test)]
    pub(crate) fn dump(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut entries: Vec<PathBuf> = fs::read_dir(dir)
                .expect("readable tree")
                .map(|e| e.expect("entry").path())
                .collect();
            entries.sort();
            for path in entries {
                let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                let meta = path.symlink_metadata().expect("entry metadata");
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).expect("link target");
                    out.push(format!(
                        "l {rel} -> {}",
                        target.strip_prefix(root).unwrap_or(&target).display()
                    ));
                } else if meta.is_dir() {
                    out.push(format!("d {rel}"));
                    walk(root, &path, out);
                } else {
                    out.push(format!(
                        "f {rel} = {}",
                        fs::read_to_string(&path).expect("readable file")
                    ));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    fn run<T>(&self, op: Op, rel: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> FsResult<T> {
        let path = self.root.join(rel);
        let result = match self.take_fault(op, rel) {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => f(&path),
        };
        result.map_err(|source| FsError { op, path, source })
    }

    fn take_fault(&self, op: Op, rel: &Path) -> Option<i32> {
        let mut faults = lock(self.emulation.as_ref()?);
        let rel = rel.to_string_lossy();
        let at = faults.iter().position(|f| f.op == op && rel.ends_with(&f.path_suffix))?;
        Some(faults.remove(at).errno)
    }

    fn populate(&self, path: &Path, layout: &GroupLayout) -> io::Result<()> {
        for dir in layout.subdirs {
            fs::create_dir_all(path.join(dir))?;
        }
        for (name, value) in layout.attrs {
            fs::write(path.join(name), value)?;
        }
        Ok(())
    }

    /// Undoes [`Self::populate`], failing like configfs would (ENOTEMPTY, or EBUSY for order).
    fn unpopulate(path: &Path, layout: &GroupLayout) -> io::Result<()> {
        if let Some((attr, value)) = layout.removable_when {
            if fs::read_to_string(path.join(attr)).is_ok_and(|v| v.trim_end() != value) {
                return Err(io::Error::from_raw_os_error(nix::errno::Errno::EBUSY as i32));
            }
        }
        // A default group's own attributes (layout attrs such as "attrib/enable") do not make it
        // non-empty; groups and links made in it do.
        let is_attr = |dir: &str, name: &std::ffi::OsStr| {
            layout.attrs.iter().any(|(a, _)| Path::new(a) == Path::new(dir).join(name))
        };
        for dir in layout.subdirs {
            for entry in fs::read_dir(path.join(dir))? {
                if !is_attr(dir, &entry?.file_name()) {
                    return Err(io::Error::from_raw_os_error(nix::errno::Errno::ENOTEMPTY as i32));
                }
            }
        }
        for (name, _) in layout.attrs.iter().filter(|(a, _)| a.contains('/')) {
            fs::remove_file(path.join(name))?;
        }
        for dir in layout.subdirs {
            fs::remove_dir(path.join(dir))?;
        }
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// A poisoned fault list is still a valid list.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rollback guard: undoes, newest first, what a multi-step change made, unless committed
/// (nvmet's and LIO's changes alike).
pub struct Undo<'a> {
    fs: &'a ConfigFs,
    /// What is changed, for the log ("nvmet", "LIO").
    what: &'static str,
    steps: Vec<Step>,
}

enum Step {
    RemoveGroup(PathBuf, &'static GroupLayout),
    Unlink(PathBuf),
    Write(PathBuf, &'static str),
}

impl<'a> Undo<'a> {
    pub fn new(fs: &'a ConfigFs, what: &'static str) -> Self {
        Undo { fs, what, steps: Vec::new() }
    }

    pub fn make_group(&mut self, rel: &Path, layout: &'static GroupLayout) -> FsResult<()> {
        self.fs.make_group(rel, layout)?;
        self.steps.push(Step::RemoveGroup(rel.to_path_buf(), layout));
        Ok(())
    }

    pub fn symlink(&mut self, target: &Path, link: &Path) -> FsResult<()> {
        self.fs.symlink(target, link)?;
        self.steps.push(Step::Unlink(link.to_path_buf()));
        Ok(())
    }

    /// An attribute of a group made in this change: removing the group undoes it.
    pub fn write(&mut self, rel: &Path, value: &str) -> FsResult<()> {
        self.fs.write(rel, value)
    }

    /// An attribute whose effect must be reverted before its group can go.
    pub fn write_reverting(
        &mut self,
        rel: &Path,
        value: &str,
        revert: &'static str,
    ) -> FsResult<()> {
        self.fs.write(rel, value)?;
        self.steps.push(Step::Write(rel.to_path_buf(), revert));
        Ok(())
    }

    /// The change is complete: nothing is undone.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        tracing::info!(steps = self.steps.len(), "rolling back a half-made {} change", self.what);
        while let Some(step) = self.steps.pop() {
            let result = match &step {
                Step::RemoveGroup(path, layout) => self.fs.remove_group(path, layout),
                Step::Unlink(path) => self.fs.unlink(path),
                Step::Write(path, value) => self.fs.write(path, value),
            };
            if let Err(err) = result {
                tracing::warn!("rollback step failed, configfs keeps it: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    const ROOT: GroupLayout =
        GroupLayout { subdirs: &["things"], attrs: &[], removable_when: None };
    const THING: GroupLayout = GroupLayout {
        subdirs: &["children"],
        attrs: &[("enable", "0"), ("name", "")],
        removable_when: Some(("enable", "0")),
    };

    #[test]
    fn emulated_groups_come_and_go_with_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = ConfigFs::emulated(dir.path().join("root"), &ROOT).unwrap();
        let thing = Path::new("things/a");
        cfs.make_group(thing, &THING).unwrap();
        assert_eq!(cfs.list(thing).unwrap(), ["children", "enable", "name"]);
        assert_eq!(cfs.read(&thing.join("enable")).unwrap(), "0");
        cfs.write(&thing.join("enable"), "1").unwrap();
        let busy = cfs.remove_group(thing, &THING).unwrap_err();
        assert_eq!(busy.errno(), Some(Errno::EBUSY as i32));
        cfs.write(&thing.join("enable"), "0").unwrap();
        cfs.symlink(Path::new("things"), &thing.join("children/l")).unwrap();
        let not_empty = cfs.remove_group(thing, &THING).unwrap_err();
        assert_eq!(not_empty.errno(), Some(Errno::ENOTEMPTY as i32));
        assert!(cfs.exists(&thing.join("children")), "a refused rmdir must not half-remove");
        cfs.unlink(&thing.join("children/l")).unwrap();
        cfs.remove_group(thing, &THING).unwrap();
        assert!(cfs.list(Path::new("things")).unwrap().is_empty());
    }

    #[test]
    fn faults_fire_once_on_matching_paths_and_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = ConfigFs::emulated(dir.path(), &ROOT).unwrap();
        assert!(cfs.inject_fault(Op::Mkdir, "things/b", Errno::ENOMEM as i32));
        cfs.make_group(Path::new("things/a"), &THING).unwrap();
        let err = cfs.make_group(Path::new("things/b"), &THING).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOMEM as i32));
        assert!(
            err.to_string().starts_with("mkdir ") && err.to_string().contains("things/b"),
            "{err}"
        );
        cfs.make_group(Path::new("things/b"), &THING).unwrap();
    }

    #[test]
    fn kernel_mode_writes_do_not_create_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = ConfigFs::kernel(dir.path());
        assert!(!cfs.inject_fault(Op::Write, "x", 1));
        let err = cfs.write(Path::new("missing_attr"), "1").unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOENT as i32));
    }
}
