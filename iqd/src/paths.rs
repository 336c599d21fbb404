//! What iqd finds in the account directory: the handler of a namespace in
//! `DIR/iq.d`, and the bound on `DIR/iq`. The paths themselves are
//! `sj::account::Dir`'s (`iq_result`, `iq_handler`), made from network
//! names by `sj::path::component` only, so they never leave their
//! directory.
//!
//! Handlers: the entry `DIR/iq.d/<component(ns)>` is used when it is (or is
//! a symlink the owner of DIR made to) a regular file with an execute bit
//! that we may execute. The name can never leave `DIR/iq.d`; where a
//! symlink placed there by the account owner points is the owner's choice.

use sj::account::Dir;
use sj::path::{component, Kind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What `DIR/iq.d` holds for a namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum Handler {
    /// Nothing usable: fall through to the built-ins.
    None,
    /// An executable to run.
    Exec(PathBuf),
}

/// The handler for `ns`, if an executable one exists.
pub fn handler(dir: &Dir, ns: &str) -> Handler {
    let Ok(p) = dir.iq_handler(ns) else {
        return Handler::None;
    };
    if is_executable(&p) {
        Handler::Exec(p)
    } else {
        Handler::None
    }
}

fn is_executable(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
        }
        _ => false,
    }
}

/// Namespaces with an executable handler (for disco#info).
pub fn handler_namespaces(dir: &Dir) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir.iq_d()) else {
        return out;
    };
    for ent in rd.flatten() {
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !is_executable(&ent.path()) {
            continue;
        }
        if let Some(ns) = sj::path::decode(&name) {
            // Only names the mapping would produce for that namespace.
            if component(Kind::Namespace, &ns).ok().as_deref() == Some(name.as_str()) {
                out.push(ns);
            }
        }
    }
    out.sort();
    out
}

/// Keep at most `max` regular files in `dir` (DIR/iq), removing the oldest
/// by modification time. FIFOs (requesters waiting) and dot files are left
/// alone. Bounds what unsolicited results from the network can store.
pub fn prune(dir: &Path, max: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.file_type()
                .is_file()
                .then(|| (m.modified().unwrap_or(std::time::UNIX_EPOCH), e.path()))
        })
        .collect();
    if files.len() <= max {
        return;
    }
    files.sort();
    let excess = files.len() - max;
    for (_, p) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("iqd-paths-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn hostile_ids_stay_in_iq() {
        let d = Dir::new("/acct");
        for id in [
            "../../etc/passwd",
            "..",
            ".",
            "/",
            "a/../../b",
            "x\0y",
            "in",
            "iq.d",
            ".hidden",
        ] {
            if let Ok(p) = d.iq_result(id) {
                assert_eq!(p.parent(), Some(Path::new("/acct/iq")), "{id:?} -> {p:?}");
                let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8");
                assert!(!name.contains('/') && name != ".." && name != ".");
                assert!(!name.starts_with('.'));
            }
        }
    }

    #[test]
    fn hostile_namespaces_stay_in_iq_d() {
        let d = tmpdir("ns");
        let acct = Dir::new(&d);
        fs::create_dir_all(d.join("iq.d")).expect("mkdir");
        // An executable outside iq.d must never be reachable.
        let outside = d.join("evil");
        fs::write(&outside, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).expect("chmod");
        for ns in [
            "../evil",
            "..",
            "/",
            "../../bin/sh",
            "/bin/sh",
            "a/../../evil",
        ] {
            assert_eq!(handler(&acct, ns), Handler::None, "{ns:?}");
            if let Ok(p) = acct.iq_handler(ns) {
                assert_eq!(p.parent(), Some(d.join("iq.d").as_path()));
            }
        }
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn finds_executable_handler_only() {
        let d = tmpdir("exec");
        let acct = Dir::new(&d);
        fs::create_dir_all(d.join("iq.d")).expect("mkdir");
        let name = component(Kind::Namespace, "urn:example:echo").expect("component");
        let p = d.join("iq.d").join(&name);
        fs::write(&p, "#!/bin/sh\ncat\n").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(handler(&acct, "urn:example:echo"), Handler::None);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(handler(&acct, "urn:example:echo"), Handler::Exec(p));
        assert_eq!(
            handler_namespaces(&acct),
            vec!["urn:example:echo".to_string()]
        );
        // A namespace with '/' maps to an encoded name, still one component.
        let p2 = acct
            .iq_handler("http://jabber.org/protocol/x")
            .expect("maps");
        assert_eq!(p2.parent(), Some(d.join("iq.d").as_path()));
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn prune_keeps_newest_and_fifos() {
        let d = tmpdir("prune");
        for i in 0..5 {
            let p = d.join(format!("f{i}"));
            fs::write(&p, "x").expect("write");
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
            fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(t))
                .expect("mtime");
        }
        sj::fifo::make(&d.join("waiting")).expect("fifo");
        prune(&d, 2);
        let mut left: Vec<String> = fs::read_dir(&d)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["f3", "f4", "waiting"]);
        fs::remove_dir_all(&d).ok();
    }
}
