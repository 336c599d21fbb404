//! presenced's writes into the account directory, and the ones it still
//! owes: a write that fails (a full disk, a directory that cannot be made)
//! is kept and tried again every second and before the next write to the
//! same file, so a file is never left stale once the disk has room again.
//! A replaced file (`presence`) owes only its latest content; an appended
//! one (`out` events, `subscriptions`) owes its lines in order, up to a
//! bound. One log line when a file first fails, one when it is written
//! again (as messaged does for its logs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Appended bytes kept over all files while they cannot be written; past
/// this, lines are counted, not kept.
const KEPT_MAX: usize = 64 * 1024;

/// Lines owed to one appended file.
#[derive(Default)]
struct Lines {
    text: String,
    lines: usize,
    lost: usize,
}

pub struct Writer {
    dir: PathBuf,
    /// Replaced files: the content each should have.
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// Appended files: what each is owed.
    appends: BTreeMap<PathBuf, Lines>,
    kept: usize,
    /// Files whose failure was logged and whose success will be.
    failing: BTreeSet<PathBuf>,
}

impl Writer {
    pub fn new(dir: &Path) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            appends: BTreeMap::new(),
            kept: 0,
            failing: BTreeSet::new(),
        }
    }

    /// Anything still owed (then `retry` is due every second).
    pub fn owes(&self) -> bool {
        !self.files.is_empty() || !self.appends.is_empty()
    }

    /// A file in a contact directory needs that directory, made if
    /// missing and never a symbolic link; a file directly in DIR does not.
    fn prepare(&self, path: &Path) -> std::io::Result<()> {
        match path.parent() {
            Some(d) if d != self.dir => sj::fifo::make_subdir(d),
            _ => Ok(()),
        }
    }

    /// Replace `path` with `data` (atomically), or owe it.
    pub fn replace(&mut self, path: PathBuf, data: Vec<u8>) {
        let r = self
            .prepare(&path)
            .and_then(|()| sj::fifo::write_atomic(&path, &data));
        match r {
            Ok(()) => {
                self.files.remove(&path);
                self.written(&path, "");
            }
            Err(e) => {
                self.failed(&path, &e, "keeping its latest content to retry");
                self.files.insert(path, data);
            }
        }
    }

    /// Append whole lines to `path` after what it is already owed.
    pub fn append(&mut self, path: PathBuf, text: &str) {
        let owed = self.appends.entry(path.clone()).or_default();
        let n = text.bytes().filter(|&b| b == b'\n').count();
        // The first text is kept whatever its size; after it the bound holds.
        if owed.lost > 0 || (owed.lines > 0 && self.kept + text.len() > KEPT_MAX) {
            if owed.lost == 0 {
                sj::log::warn(&format!(
                    "{}: {KEPT_MAX} bytes of lines kept in all; counting further lines, not keeping them",
                    path.display()
                ));
            }
            owed.lost += n;
        } else {
            owed.text.push_str(text);
            owed.lines += n;
            self.kept += text.len();
        }
        self.flush_append(&path);
    }

    /// Write what an appended file is owed, in one write.
    fn flush_append(&mut self, path: &Path) {
        let Some(owed) = self.appends.get(path) else {
            return;
        };
        let r = self
            .prepare(path)
            .and_then(|()| sj::outlog::append(path, &owed.text, false));
        match r {
            Ok(()) => {
                let (lines, lost, len) = (owed.lines, owed.lost, owed.text.len());
                self.appends.remove(path);
                self.kept -= len;
                let note = if lost > 0 {
                    format!(" ({lines} kept line(s); {lost} line(s) lost)")
                } else {
                    format!(" ({lines} kept line(s))")
                };
                self.written(path, &note);
            }
            Err(e) => self.failed(path, &e, "keeping its lines to retry"),
        }
    }

    fn failed(&mut self, path: &Path, e: &std::io::Error, what: &str) {
        if self.failing.insert(path.to_path_buf()) {
            sj::log::warn(&format!(
                "unable to write {}: {}; {what}",
                path.display(),
                sj::log::strerror(e)
            ));
        }
    }

    fn written(&mut self, path: &Path, note: &str) {
        if self.failing.remove(path) {
            sj::log::info(&format!("{} written again{note}", path.display()));
        }
    }

    /// Try every owed write again.
    pub fn retry(&mut self) {
        let files: Vec<(PathBuf, Vec<u8>)> = std::mem::take(&mut self.files).into_iter().collect();
        for (path, data) in files {
            // A newer content queued meanwhile wins (there is none: one
            // thread), so this is simply the latest.
            self.replace(path, data);
        }
        let appends: Vec<PathBuf> = self.appends.keys().cloned().collect();
        for path in appends {
            self.flush_append(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_until_written_latest_content_and_lines_in_order() {
        let d = std::env::temp_dir().join(format!("presenced-owed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        sj::fifo::make_dir(&d).expect("mkdir");
        let mut w = Writer::new(&d);
        // The contact "directory" is a file: nothing can be written there.
        std::fs::write(d.join("bob"), b"").expect("write");
        w.replace(d.join("bob/presence"), b"away\n".to_vec());
        w.replace(d.join("bob/presence"), b"dnd\n".to_vec());
        w.append(d.join("bob/out"), "one\n");
        w.append(d.join("bob/out"), "two\n");
        assert!(w.owes());
        std::fs::remove_file(d.join("bob")).expect("rm");
        w.retry();
        assert!(!w.owes());
        let rd = |p: &str| std::fs::read_to_string(d.join(p)).expect("read");
        assert_eq!(rd("bob/presence"), "dnd\n");
        assert_eq!(rd("bob/out"), "one\ntwo\n");
        // A symbolic link in place of the contact directory is refused.
        std::fs::remove_dir_all(d.join("bob")).expect("rm");
        std::os::unix::fs::symlink("/tmp", d.join("bob")).expect("symlink");
        w.replace(d.join("bob/presence"), b"xa\n".to_vec());
        assert!(w.owes());
        let _ = std::fs::remove_dir_all(&d);
    }
}
