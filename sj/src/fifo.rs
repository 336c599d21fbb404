//! FIFOs, the rules for opening anything under the account directory, and
//! the client registry.
//!
//! A FIFO named `in` is owned by its reader. Readers open it read-write so a
//! writer closing never causes EOF (`open_read`), or read-only and reopen
//! it on EOF when they must notice a writer leaving in the middle of a line
//! (`LineFifo`); writers open it non-blocking write-only so that no reader
//! is a clear error (ENXIO) instead of a hang.
//!
//! Every opener here follows the same rules (SECURITY.md, "Opening files"):
//! the last component is never followed when it is a symbolic link
//! (O_NOFOLLOW); what was opened is checked to be the kind of file wanted
//! (a FIFO, a regular file, a directory), so a FIFO replaced by a regular
//! file or a directory, or a file replaced by a FIFO, is refused with an
//! error that says what was found, never written into or waited on; and a
//! directory under DIR (`make_subdir`, `check_dir`) is a real directory,
//! never a symbolic link that would lead out of DIR. DIR itself may be a
//! symbolic link: where the account lives is its owner's choice.

use crate::account::Dir;
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

/// An entry refused by the rules: `InvalidInput`, with what was found.
fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// What kind of file a mode is, for messages.
fn kind_of(mode: SFlag) -> &'static str {
    match mode & SFlag::S_IFMT {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        _ => "a device",
    }
}

fn kind_of_type(t: fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

/// Open `path` with `flags` plus O_NOFOLLOW, O_NONBLOCK and O_CLOEXEC, and
/// check that it is `want` (S_IFIFO, S_IFREG). Never blocks: a FIFO where
/// a file was expected opens at once (or fails with ENXIO) and is refused.
fn open_checked(path: &Path, flags: OFlag, mode: Mode, want: SFlag) -> io::Result<OwnedFd> {
    open_stat(path, flags, mode, want).map(|(fd, _)| fd)
}

/// `open_checked`, also returning the descriptor's stat (one fstat for
/// both the check and the caller's use of its size).
pub(crate) fn open_stat(
    path: &Path,
    flags: OFlag,
    mode: Mode,
    want: SFlag,
) -> io::Result<(OwnedFd, nix::sys::stat::FileStat)> {
    let all = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    match open(path, all, mode) {
        Ok(fd) => check_kind(fd, want),
        Err(e) => Err(explain(path, e, want)),
    }
}

/// DIR, held open (following it if it is a symbolic link: where the
/// account lives is its owner's choice) to open files beneath it with
/// `open_stat_beneath`.
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            path: path.to_path_buf(),
            fd,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `open_stat` for `root/rel`, where no component of `rel` may be a
/// symbolic link (the directories under DIR and the file itself): one
/// `openat2` with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS, so the check
/// costs nothing and no race can defeat it; where the kernel lacks
/// `openat2` (or a sandbox refuses it), `check_dir` on each directory of
/// `rel`, then `open_stat`.
pub(crate) fn open_stat_beneath(
    root: &Root,
    rel: &Path,
    flags: OFlag,
    mode: Mode,
    want: SFlag,
) -> io::Result<(OwnedFd, nix::sys::stat::FileStat)> {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{openat2, OpenHow, ResolveFlag};
        let how = OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(&root.fd, rel, how) {
            Ok(fd) => return check_kind(fd, want),
            Err(Errno::ENOSYS | Errno::EPERM) => {}
            Err(e) => {
                // Which component: a directory (a link out of DIR) or the
                // file itself.
                if e == Errno::ELOOP {
                    check_dirs(root, rel)?;
                }
                return Err(explain(&root.path.join(rel), e, want));
            }
        }
    }
    check_dirs(root, rel)?;
    open_stat(&root.path.join(rel), flags, mode, want)
}

/// `check_dir` on each directory of `rel` under `root`.
fn check_dirs(root: &Root, rel: &Path) -> io::Result<()> {
    let mut at = root.path.clone();
    for c in rel.parent().into_iter().flat_map(Path::components) {
        at.push(c);
        check_dir(&at)?;
    }
    Ok(())
}

/// The stat of `fd`, if it is `want`; else what it is instead.
fn check_kind(fd: OwnedFd, want: SFlag) -> io::Result<(OwnedFd, nix::sys::stat::FileStat)> {
    let st = nix::sys::stat::fstat(&fd)?;
    let found = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if found != want {
        return Err(refused(format!(
            "is {}, not {}",
            kind_of(found),
            kind_of(want)
        )));
    }
    Ok((fd, st))
}

/// Turn an open's errno into what the path really is, when the errno only
/// hints at it: ELOOP from O_NOFOLLOW (a symbolic link), ENXIO or EISDIR
/// where a regular file was wanted (a FIFO, a directory).
fn explain(path: &Path, e: Errno, want: SFlag) -> io::Error {
    if matches!(e, Errno::ELOOP | Errno::ENXIO | Errno::EISDIR) {
        if let Ok(m) = fs::symlink_metadata(path) {
            let t = m.file_type();
            if t.is_symlink() {
                return refused("is a symbolic link".to_string());
            }
            let fifo_wanted = want == SFlag::S_IFIFO;
            if (e == Errno::ENXIO && t.is_fifo() && !fifo_wanted)
                || (e == Errno::EISDIR && t.is_dir())
            {
                return refused(format!("is {}, not {}", kind_of_type(t), kind_of(want)));
            }
        }
    }
    e.into()
}

/// Create `path` as a FIFO with mode 0600 unless a FIFO is already there.
pub fn make(path: &Path) -> io::Result<()> {
    match mkfifo(path, Mode::from_bits_truncate(0o600)) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => {
            let t = fs::symlink_metadata(path)?.file_type();
            if t.is_fifo() {
                Ok(())
            } else {
                Err(refused(format!("is {}, not a FIFO", kind_of_type(t))))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Create a directory (and its parents) with mode 0700. For DIR itself,
/// which may be a symbolic link (its owner's choice); a directory under
/// DIR is made with `make_subdir`.
pub fn make_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Create a directory under DIR (`DIR/<contact>`, `DIR/clients`, `DIR/iq`)
/// with mode 0700, its parent with `make_dir` if missing. One that exists
/// must be a real directory: a symbolic link there, wherever it points, is
/// refused, so nothing is ever written through it out of DIR.
pub fn make_subdir(path: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_dir(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => make_dir(parent)?,
                _ => return Err(e),
            }
            match fs::DirBuilder::new().mode(0o700).create(path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_dir(path),
                other => other,
            }
        }
        Err(e) => Err(e),
    }
}

/// A directory under DIR is a real directory, not a symbolic link to one.
/// Checked again before writing into a directory made earlier, since it
/// may have been replaced since.
pub fn check_dir(path: &Path) -> io::Result<()> {
    let t = fs::symlink_metadata(path)?.file_type();
    if t.is_dir() {
        Ok(())
    } else {
        Err(refused(format!("is {}, not a directory", kind_of_type(t))))
    }
}

/// Open a FIFO for reading so that it never reports EOF (read-write),
/// non-blocking, close-on-exec. Refuses anything that is not a FIFO.
pub fn open_read(path: &Path) -> io::Result<OwnedFd> {
    open_reader(path, OFlag::O_RDWR)
}

/// Open a FIFO to read from with `mode` (read-write or read-only), non-blocking,
/// close-on-exec, not through a symlink; refuse anything that is not a FIFO.
fn open_reader(path: &Path, mode: OFlag) -> io::Result<OwnedFd> {
    open_checked(path, mode, Mode::empty(), SFlag::S_IFIFO)
}

/// Open a small regular file for reading (`state`, `pid`, `roster`,
/// `mypresence`), never through a symbolic link and never waiting: a FIFO
/// in its place is refused, not read from.
pub fn open_file(path: &Path) -> io::Result<fs::File> {
    open_checked(path, OFlag::O_RDONLY, Mode::empty(), SFlag::S_IFREG).map(fs::File::from)
}

/// The contents of a regular file (`open_file`) of at most `max` bytes;
/// a larger one is an error, not read.
pub fn read_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_file(path)?;
    let mut data = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(refused(format!("is larger than {max} bytes")));
    }
    Ok(data)
}

/// A small text file under DIR, by the same rules as `read_file`.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_file(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Create or rewrite in place a small file of ours that is not read by a
/// concurrent reader as a whole (a marker such as `DIR/<room>/.groupchat`
/// or `DIR/clients/NAME/dropped`): mode 0600, never through a symbolic
/// link, never into a FIFO (which would block or feed its reader).
pub fn write_marker(path: &Path, data: &[u8]) -> io::Result<()> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT;
    let fd = open_checked(path, flags, Mode::from_bits_truncate(0o600), SFlag::S_IFREG)?;
    let f = fs::File::from(fd);
    f.set_len(0)?;
    crate::io::write_all(&f, data)
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
/// Refuses anything that is not a FIFO (a regular file put in its place
/// would otherwise be written into).
pub fn open_write(path: &Path) -> io::Result<Option<OwnedFd>> {
    match open_checked(path, OFlag::O_WRONLY, Mode::empty(), SFlag::S_IFIFO) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
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
pub fn list_clients(dir: &Dir) -> BTreeSet<String> {
    client_fifos(dir).0.into_keys().collect()
}

/// Identity of a client's registration: device and inode of its `out`.
type OutId = (u64, u64);

/// The clients under `clients_dir`, each with the identity of its `out`;
/// and the entries refused as clients, with why: a symbolic link (to a
/// directory elsewhere, whose FIFOs would take records out of DIR), or an
/// `in` or `out` that is there but not a FIFO. A directory still being
/// made (no `in` or `out` yet) is neither.
fn client_fifos(dir: &Dir) -> (BTreeMap<String, OutId>, BTreeMap<String, String>) {
    use std::os::unix::fs::MetadataExt;
    let mut found = BTreeMap::new();
    let mut refused = BTreeMap::new();
    let Ok(rd) = fs::read_dir(dir.clients()) else {
        return (found, refused);
    };
    for ent in rd.flatten() {
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // The entry's own type, not its target's.
        match ent.file_type() {
            Ok(t) if t.is_dir() => {}
            Ok(t) if t.is_symlink() => {
                refused.insert(name, "is a symbolic link".to_string());
                continue;
            }
            _ => continue,
        }
        let Ok(client) = dir.client(&name) else {
            continue;
        };
        let (i, o) = (
            fs::symlink_metadata(client.in_fifo()),
            fs::symlink_metadata(client.out_fifo()),
        );
        match (&i, &o) {
            (Ok(i), Ok(o)) if i.file_type().is_fifo() && o.file_type().is_fifo() => {
                found.insert(name, (o.dev(), o.ino()));
            }
            _ => {
                let bad = [("in", &i), ("out", &o)].into_iter().find_map(|(f, m)| {
                    let t = m.as_ref().ok()?.file_type();
                    (!t.is_fifo()).then(|| format!("{f} is {}, not a FIFO", kind_of_type(t)))
                });
                if let Some(why) = bad {
                    refused.insert(name, why);
                }
            }
        }
    }
    (found, refused)
}

/// Notices clients arriving and leaving under `DIR/clients`. Rescans are
/// cheap (one readdir and two lstat per client) and driven by inotify when
/// available; `changes` is also safe to call on a timer.
pub struct ClientWatcher {
    dir: Dir,
    known: BTreeSet<String>,
    /// The `out` each known client had at the last scan: a client that
    /// left and registered again under the same name between two scans (a
    /// client reconnecting, a stale directory replaced) has a new one.
    ids: BTreeMap<String, OutId>,
    /// Entries refused as clients, with why, logged once each.
    refused: BTreeMap<String, String>,
    inotify: Option<nix::sys::inotify::Inotify>,
}

impl ClientWatcher {
    /// Watch `DIR/clients`, made if missing.
    pub fn new(dir: &Dir) -> io::Result<Self> {
        use nix::sys::inotify::{InitFlags, Inotify};
        make_subdir(&dir.clients())?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
        let mut w = ClientWatcher {
            dir: dir.clone(),
            known: BTreeSet::new(),
            ids: BTreeMap::new(),
            refused: BTreeMap::new(),
            inotify,
        };
        w.watch(&w.dir.clients());
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
        if let Ok(rd) = fs::read_dir(self.dir.clients()) {
            for ent in rd.flatten() {
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    self.watch(&ent.path());
                }
            }
        }
        let (now, refused) = client_fifos(&self.dir);
        for (name, why) in &refused {
            if self.refused.get(name) != Some(why) {
                crate::log::warn(&format!("not a client: clients/{name}: {why}"));
            }
        }
        self.refused = refused;
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

    fn why(r: io::Result<impl std::fmt::Debug>) -> String {
        sj_err(r.expect_err("refused"))
    }

    fn sj_err(e: io::Error) -> String {
        crate::log::strerror(&e)
    }

    #[test]
    fn openers_say_what_they_found_and_never_wait() {
        let d = tmpdir("openers");
        let (file, dir, fifo, link) = (d.join("f"), d.join("d"), d.join("p"), d.join("l"));
        fs::write(&file, b"x\n").expect("write");
        make_dir(&dir).expect("mkdir");
        make(&fifo).expect("mkfifo");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        // FIFO openers: a regular file, a directory, a symbolic link.
        assert_eq!(why(make(&file)), "is a regular file, not a FIFO");
        assert_eq!(why(make(&link)), "is a symbolic link, not a FIFO");
        assert_eq!(why(open_read(&file)), "is a regular file, not a FIFO");
        assert_eq!(why(open_read(&link)), "is a symbolic link");
        assert_eq!(why(open_write(&file)), "is a regular file, not a FIFO");
        assert_eq!(why(open_write(&dir)), "is a directory, not a FIFO");
        assert_eq!(why(open_write(&link)), "is a symbolic link");
        assert!(LineFifo::open(&dir, 64).is_err());
        // No reader is still no error.
        assert!(open_write(&fifo).expect("open").is_none());
        // File readers: a FIFO (no writer: would block without O_NONBLOCK),
        // a directory, a symbolic link, and too large.
        assert_eq!(read_file(&file, 16).expect("read"), b"x\n");
        assert_eq!(why(read_file(&fifo, 16)), "is a FIFO, not a regular file");
        assert_eq!(
            why(read_file(&dir, 16)),
            "is a directory, not a regular file"
        );
        assert_eq!(why(read_file(&link, 16)), "is a symbolic link");
        assert_eq!(why(read_file(&file, 1)), "is larger than 1 bytes");
        // Markers: never into a FIFO or through a link.
        assert_eq!(
            why(write_marker(&fifo, b"")),
            "is a FIFO, not a regular file"
        );
        assert_eq!(why(write_marker(&link, b"")), "is a symbolic link");
        write_marker(&d.join("m"), b"why\n").expect("marker");
        let mode = fs::metadata(d.join("m"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Directories under DIR: never a symbolic link, whatever it points to.
        let dlink = d.join("dl");
        std::os::unix::fs::symlink(&dir, &dlink).expect("symlink");
        assert_eq!(
            why(make_subdir(&dlink)),
            "is a symbolic link, not a directory"
        );
        assert_eq!(
            why(check_dir(&dlink)),
            "is a symbolic link, not a directory"
        );
        assert_eq!(
            why(make_subdir(&file)),
            "is a regular file, not a directory"
        );
        make_subdir(&dir).expect("existing directory");
        make_subdir(&d.join("new/sub")).expect("parent made too");
        // DIR itself may be a symbolic link (its owner's choice).
        make_dir(&dlink).expect("DIR through a link");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn symlinked_or_malformed_client_directories_are_not_clients() {
        let d = tmpdir("badclients");
        let c = d.join("clients");
        let elsewhere = d.join("elsewhere");
        for x in [
            &c.join("good"),
            &elsewhere,
            &c.join("regin"),
            &c.join("half"),
        ] {
            make_dir(x).expect("mkdir");
        }
        for x in [&c.join("good"), &elsewhere] {
            make(&x.join("in")).expect("fifo");
            make(&x.join("out")).expect("fifo");
        }
        std::os::unix::fs::symlink(&elsewhere, c.join("link")).expect("symlink");
        fs::write(c.join("regin/in"), b"").expect("write");
        make(&c.join("regin/out")).expect("fifo");
        make(&c.join("half/in")).expect("fifo");
        let (found, refused) = client_fifos(&Dir::new(&d));
        assert_eq!(found.keys().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(
            refused.into_iter().collect::<Vec<_>>(),
            vec![
                ("link".to_string(), "is a symbolic link".to_string()),
                (
                    "regin".to_string(),
                    "in is a regular file, not a FIFO".to_string()
                ),
            ]
        );
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn watcher_sees_clients_come_and_go() {
        let d = tmpdir("watch");
        let c = d.join("clients");
        let mut w = ClientWatcher::new(&Dir::new(&d)).expect("watcher");
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
