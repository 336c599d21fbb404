//! FIFOs and the account directory's client registry.
//!
//! A FIFO named `in` is owned by its reader. Readers open it read-write so a
//! writer closing never causes EOF (`open_read`), or read-only and reopen
//! it on EOF when they must notice a writer leaving in the middle of a line
//! (`LineFifo`); writers open it non-blocking write-only so that no reader
//! is a clear error (ENXIO) instead of a hang.

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::mkfifo;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Create `path` as a FIFO with mode 0600 unless a FIFO is already there.
pub fn make(path: &Path) -> io::Result<()> {
    match mkfifo(path, Mode::from_bits_truncate(0o600)) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => {
            let meta = fs::symlink_metadata(path)?;
            if meta.file_type().is_fifo() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a FIFO",
                ))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Create a directory (and its parents) with mode 0700.
pub fn make_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Open a FIFO for reading so that it never reports EOF (read-write),
/// non-blocking, close-on-exec. Refuses anything that is not a FIFO.
pub fn open_read(path: &Path) -> io::Result<OwnedFd> {
    open_reader(path, OFlag::O_RDWR)
}

/// Open a FIFO to read from with `mode` (read-write or read-only), non-blocking,
/// close-on-exec, not through a symlink; refuse anything that is not a FIFO.
fn open_reader(path: &Path, mode: OFlag) -> io::Result<OwnedFd> {
    let fd = open(
        path,
        mode | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    let st = nix::sys::stat::fstat(&fd)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a FIFO"));
    }
    Ok(fd)
}

/// A FIFO read line by line that notices its writers leaving. Read-only,
/// so when the last writer closes the reader sees EOF: an incomplete line
/// that writer left can never be completed (the next writer's bytes would
/// be glued to it and the whole lost), so it is dropped, and the FIFO is
/// opened again (the new descriptor before the old one closes, so a writer
/// never finds no reader). Until a writer comes, a FIFO opened read-only
/// is not readable and costs nothing to poll.
pub struct LineFifo {
    path: PathBuf,
    fd: Option<OwnedFd>,
    lines: crate::io::LineReader,
}

/// What one `LineFifo::read` produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lines {
    /// Complete lines, without their LF.
    pub lines: Vec<Vec<u8>>,
    /// Bytes of an incomplete line dropped because every writer closed.
    pub cut: usize,
    /// Lines over the length limit this read skipped (the caller logs them).
    pub overlong: u64,
    /// The read returned data: more may wait.
    pub more: bool,
}

impl LineFifo {
    pub fn open(path: &Path, max_line: usize) -> io::Result<LineFifo> {
        Ok(LineFifo {
            path: path.to_path_buf(),
            fd: Some(open_reader(path, OFlag::O_RDONLY)?),
            lines: crate::io::LineReader::new(max_line),
        })
    }

    /// The descriptor to poll for reading; `None` once reopening failed.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// One read. An error means the FIFO could not be reopened after EOF
    /// (it was removed, say); the caller reports it, and `fd` is `None`.
    pub fn read(&mut self) -> io::Result<Lines> {
        let mut out = Lines::default();
        let Some(fd) = &self.fd else {
            return Ok(out);
        };
        let r = self.lines.fill(fd);
        let before = self.lines.overlong;
        while let Some(l) = self.lines.next_line() {
            out.lines.push(l.to_vec());
        }
        out.overlong = self.lines.overlong - before;
        out.more = matches!(r, Ok(crate::io::Read::Data(_)));
        match r {
            Ok(crate::io::Read::Eof) => {
                out.cut = self.lines.drop_partial();
                match open_reader(&self.path, OFlag::O_RDONLY) {
                    Ok(new) => self.fd = Some(new),
                    Err(e) => {
                        self.fd = None;
                        return Err(e);
                    }
                }
                Ok(out)
            }
            Ok(_) => Ok(out),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINTR) => Ok(out),
            Err(e) => Err(e),
        }
    }
}

/// Open a FIFO for writing without blocking. `Ok(None)` when nobody reads it.
pub fn open_write(path: &Path) -> io::Result<Option<OwnedFd>> {
    match open(
        path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Set mode 0600 on a file we created.
pub fn chmod_private(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Write `data` to `path` atomically: a temporary file in the same
/// directory, then a rename over the old one, so a reader sees the old
/// file or the new one, never half of one.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

/// `write_atomic`, durable: the file is synced before the rename and the
/// directory after it (for credentials, which must survive a crash).
pub fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

/// The one way a file in DIR is replaced. The temporary file is created
/// `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`, mode 0600, under a name with 64
/// random bits: nothing planted in the directory (a symlink, a FIFO, a
/// file of someone else's) is ever opened or written through, and the
/// temporary file is removed on any failure.
fn replace(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let (tmp, fd) = create_temp(path, name)?;
    let result = (|| {
        crate::io::write_all(&fd, data)?;
        if durable {
            nix::unistd::fsync(&fd)?;
        }
        drop(fd);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Create `path` holding `data` unless something is there already: the
/// file appears whole or not at all (a temporary file, then `link(2)`,
/// which never replaces). `Ok(false)` when `path` existed.
pub fn write_new(path: &Path, data: &[u8]) -> io::Result<bool> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let (tmp, fd) = create_temp(path, name)?;
    let result = crate::io::write_all(&fd, data)
        .and_then(|()| nix::unistd::fsync(&fd).map_err(io::Error::from))
        .and_then(|()| fs::hard_link(&tmp, path));
    drop(fd);
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// A new temporary file beside `path`, opened for writing; its path.
fn create_temp(path: &Path, name: &str) -> io::Result<(PathBuf, OwnedFd)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..8 {
        let tmp = path.with_file_name(format!(
            ".{name}.tmp.{}.{:016x}",
            std::process::id(),
            unique()
        ));
        match open(
            &tmp,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => {
                // The mode asked for, whatever the umask took away.
                nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o600))?;
                return Ok((tmp, fd));
            }
            // Someone else's file under our name: try another name.
            Err(Errno::EEXIST) => last = Errno::EEXIST.into(),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last)
}

/// 64 bits no other process can guess: the OS generator, or if it fails the
/// time and a counter (O_EXCL still refuses whatever is in the way).
fn unique() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

/// The clients registered under `DIR/clients`: a subdirectory whose `in`
/// and `out` are both FIFOs. Names are the directory names as they are.
pub fn list_clients(clients_dir: &Path) -> BTreeSet<String> {
    client_fifos(clients_dir).into_keys().collect()
}

/// Identity of a client's registration: device and inode of its `out`.
type OutId = (u64, u64);

/// The clients under `clients_dir`, each with the identity of its `out`.
fn client_fifos(clients_dir: &Path) -> BTreeMap<String, OutId> {
    use std::os::unix::fs::MetadataExt;
    let mut found = BTreeMap::new();
    let Ok(rd) = fs::read_dir(clients_dir) else {
        return found;
    };
    for ent in rd.flatten() {
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let dir = ent.path();
        let fifo = |p: PathBuf| {
            fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.file_type().is_fifo())
        };
        if let (Some(_), Some(out)) = (fifo(dir.join("in")), fifo(dir.join("out"))) {
            found.insert(name, (out.dev(), out.ino()));
        }
    }
    found
}

/// Notices clients arriving and leaving under `DIR/clients`. Rescans are
/// cheap (one readdir and two lstat per client) and driven by inotify when
/// available; `changes` is also safe to call on a timer.
pub struct ClientWatcher {
    dir: PathBuf,
    known: BTreeSet<String>,
    /// The `out` each known client had at the last scan: a client that
    /// left and registered again under the same name between two scans (a
    /// client reconnecting, a stale directory replaced) has a new one.
    ids: BTreeMap<String, OutId>,
    inotify: Option<nix::sys::inotify::Inotify>,
}

impl ClientWatcher {
    pub fn new(clients_dir: &Path) -> io::Result<Self> {
        use nix::sys::inotify::{InitFlags, Inotify};
        make_dir(clients_dir)?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
        let mut w = ClientWatcher {
            dir: clients_dir.to_path_buf(),
            known: BTreeSet::new(),
            ids: BTreeMap::new(),
            inotify,
        };
        w.watch(&w.dir.clone());
        Ok(w)
    }

    fn watch(&mut self, dir: &Path) {
        use nix::sys::inotify::AddWatchFlags as F;
        if let Some(ino) = &self.inotify {
            let _ = ino.add_watch(
                dir,
                F::IN_CREATE
                    | F::IN_DELETE
                    | F::IN_MOVED_FROM
                    | F::IN_MOVED_TO
                    | F::IN_DELETE_SELF
                    | F::IN_ATTRIB,
            );
        }
    }

    /// The inotify descriptor to wait on, if any.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Drain pending inotify events (call when `fd` is readable).
    pub fn drain(&mut self) {
        if let Some(ino) = &self.inotify {
            while let Ok(evs) = ino.read_events() {
                if evs.is_empty() {
                    break;
                }
            }
        }
    }

    /// Clients that appeared and disappeared since the last call; one that
    /// registered again is in both (handle the removals first). The new
    /// `out` can be told from the old only while the old inode lives, which
    /// a reader holding the old FIFO open (sj-proxy) guarantees.
    pub fn changes(&mut self) -> (Vec<String>, Vec<String>) {
        // Watch every subdirectory so FIFOs made inside it wake us too.
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for ent in rd.flatten() {
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    self.watch(&ent.path());
                }
            }
        }
        let now = client_fifos(&self.dir);
        let same = |n: &String, id: &OutId| self.ids.get(n) == Some(id);
        let added = now
            .iter()
            .filter(|(n, id)| !same(n, id))
            .map(|(n, _)| n.clone())
            .collect();
        let removed = self
            .ids
            .keys()
            .filter(|n| now.get(*n).is_none_or(|id| !same(n, id)))
            .cloned()
            .collect();
        self.known = now.keys().cloned().collect();
        self.ids = now;
        (added, removed)
    }

    pub fn known(&self) -> &BTreeSet<String> {
        &self.known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sj-fifo-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        make_dir(&d).expect("mkdir");
        d
    }

    #[test]
    fn fifo_mode_and_no_eof() {
        let d = tmpdir("mode");
        let p = d.join("in");
        make(&p).expect("mkfifo");
        make(&p).expect("mkfifo twice is fine");
        let m = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        // No reader: a clear None, not a hang.
        assert!(open_write(&p).expect("open").is_none());
        let r = open_read(&p).expect("open read");
        let w = open_write(&p).expect("open").expect("reader present");
        nix::unistd::write(&w, b"x\n").expect("write");
        drop(w);
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(&r, &mut buf).expect("read"), 2);
        // Writer gone: EAGAIN, never EOF.
        assert_eq!(nix::unistd::read(&r, &mut buf), Err(Errno::EAGAIN));
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn line_fifo_drops_what_a_leaving_writer_left_unfinished() {
        let d = tmpdir("linefifo");
        let p = d.join("out");
        make(&p).expect("mkfifo");
        let mut f = LineFifo::open(&p, 1024).expect("open");
        // No writer yet: nothing to read, no EOF.
        assert_eq!(f.read().expect("read"), Lines::default());
        let w = open_write(&p).expect("open").expect("reader present");
        nix::unistd::write(&w, b"one\ntw").expect("write");
        drop(w);
        let first = f.read().expect("read");
        assert_eq!((first.lines, first.more), (vec![b"one".to_vec()], true));
        let eof = f.read().expect("read");
        assert_eq!((eof.lines.len(), eof.cut), (0, 2));
        // Reopened: the next writer's line stands on its own.
        let w = open_write(&p)
            .expect("open")
            .expect("reader present after EOF");
        nix::unistd::write(&w, b"three\n").expect("write");
        assert_eq!(f.read().expect("read").lines, vec![b"three".to_vec()]);
        drop(w);
        assert_eq!(f.read().expect("read").cut, 0);
        // Removed while at EOF: an error, then nothing to poll.
        let w = open_write(&p).expect("open").expect("reader");
        drop(w);
        fs::remove_file(&p).expect("rm");
        assert!(f.read().is_err());
        assert!(f.fd().is_none());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn write_atomic_never_writes_through_what_is_planted() {
        let d = tmpdir("atomic");
        let target = d.join("target");
        fs::write(&target, b"untouched").expect("write");
        // Every name a pid-only scheme could pick, planted as a symlink.
        let planted = d.join(format!(".state.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&target, &planted).expect("symlink");
        write_atomic(&d.join("state"), b"new\n").expect("write");
        assert_eq!(fs::read(&target).expect("read"), b"untouched");
        assert_eq!(fs::read(d.join("state")).expect("read"), b"new\n");
        let meta = fs::symlink_metadata(d.join("state")).expect("stat");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        write_durable(&d.join("state"), b"again\n").expect("write");
        assert_eq!(fs::read(d.join("state")).expect("read"), b"again\n");
        // Nothing left behind but what was planted.
        let mut names: Vec<_> = fs::read_dir(&d)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        // A failed write removes its temporary file: a directory in the way.
        fs::create_dir(d.join("blocked")).expect("mkdir");
        fs::write(d.join("blocked/x"), b"").expect("w");
        assert!(write_atomic(&d.join("blocked"), b"x").is_err());
        let after = fs::read_dir(&d).expect("ls").count();
        assert_eq!(after, 4);
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn refuses_regular_file() {
        let d = tmpdir("reg");
        let p = d.join("in");
        fs::write(&p, b"").expect("write");
        assert!(make(&p).is_err());
        assert!(open_read(&p).is_err());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn watcher_sees_clients_come_and_go() {
        let d = tmpdir("watch");
        let c = d.join("clients");
        let mut w = ClientWatcher::new(&c).expect("watcher");
        assert_eq!(w.changes(), (vec![], vec![]));
        make_dir(&c.join("a")).expect("mkdir");
        make(&c.join("a/in")).expect("fifo");
        assert_eq!(
            w.changes().0,
            Vec::<String>::new(),
            "half-made client is not a client"
        );
        make(&c.join("a/out")).expect("fifo");
        assert_eq!(w.changes(), (vec!["a".to_string()], vec![]));
        // It registers again between two scans, while the old out is
        // still open (as sj-proxy holds it): gone and back.
        let old_out = open_read(&c.join("a/out")).expect("open");
        fs::remove_dir_all(c.join("a")).expect("rm");
        make_dir(&c.join("a")).expect("mkdir");
        make(&c.join("a/in")).expect("fifo");
        make(&c.join("a/out")).expect("fifo");
        assert_eq!(w.changes(), (vec!["a".to_string()], vec!["a".to_string()]));
        drop(old_out);
        assert_eq!(w.changes(), (vec![], vec![]));
        fs::remove_dir_all(c.join("a")).expect("rm");
        assert_eq!(w.changes(), (vec![], vec!["a".to_string()]));
        fs::remove_dir_all(&d).ok();
    }
}
