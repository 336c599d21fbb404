//! `DIR/passwd`: downstream credentials, SCRAM-hashed, never plaintext.
//!
//! Format: one line per mechanism,
//! `<mechanism> <iterations> <salt-b64> <stored-key-b64> <server-key-b64>`,
//! e.g. `SCRAM-SHA-256 4096 c2FsdA== ... ...`. Written atomically, mode 0600.

use crate::sasl::{b64decode, b64encode, Hash, StoredCredentials, MAX_ITERATIONS};
use std::io::{Error, ErrorKind};
use std::path::Path;

/// Iterations for new entries.
pub const ITERATIONS: u32 = 4096;

/// Read the credentials of every mechanism from a passwd file.
///
/// Empty lines and lines starting with `#` are skipped, and so are lines of
/// mechanisms this version does not know (a newer tool may add some). A
/// malformed line is an `InvalidData` error naming its line number.
pub fn read(path: &Path) -> std::io::Result<Vec<StoredCredentials>> {
    let text = crate::fifo::read_text(path, 1 << 20)?;
    parse(&text)
}

/// Parse the contents of a passwd file (see `read`).
pub fn parse(text: &str) -> std::io::Result<Vec<StoredCredentials>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::new(ErrorKind::InvalidData, format!("line {}: {why}", n + 1));
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let Some(hash) = fields.first().and_then(|m| Hash::from_mechanism(m)) else {
            continue;
        };
        let [_, iterations, salt, stored_key, server_key] = fields[..] else {
            return Err(bad("expected 5 fields"));
        };
        let iterations = match iterations.parse::<u32>() {
            Ok(i) if i > 0 && i <= MAX_ITERATIONS => i,
            _ => return Err(bad("bad iteration count")),
        };
        let key = |s: &str, what: &str| match b64decode(s) {
            Ok(k) if k.len() == hash.output_len() => Ok(k),
            _ => Err(bad(what)),
        };
        let salt = b64decode(salt).map_err(|_| bad("bad salt"))?;
        if salt.is_empty() {
            return Err(bad("empty salt"));
        }
        out.push(StoredCredentials {
            hash,
            salt,
            iterations,
            stored_key: key(stored_key, "bad stored key")?,
            server_key: key(server_key, "bad server key")?,
        });
    }
    Ok(out)
}

/// The text of a passwd file holding these entries.
pub fn format(creds: &[StoredCredentials]) -> String {
    creds
        .iter()
        .map(|c| {
            format!(
                "{} {} {} {} {}\n",
                c.hash.mechanism(),
                c.iterations,
                b64encode(&c.salt),
                b64encode(&c.stored_key),
                b64encode(&c.server_key)
            )
        })
        .collect()
}

/// Derive SCRAM-SHA-1 and SCRAM-SHA-256 entries for `password` with fresh
/// salts and write them atomically (tmp file, fsync, rename), mode 0600.
///
/// An empty password, or one with control characters (which no SASL
/// exchange can carry), is refused with `InvalidInput`.
pub fn write(path: &Path, password: &str) -> std::io::Result<()> {
    if password.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "empty password"));
    }
    if password.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "control character in password",
        ));
    }
    let mut creds = Vec::new();
    for hash in [Hash::Sha256, Hash::Sha1] {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::other(format!("no random numbers: {e}")))?;
        creds.push(StoredCredentials::derive(hash, password, &salt, ITERATIONS));
    }
    crate::fifo::write_durable(path, format(&creds).as_bytes())
}

/// The key that makes salts for names that have no credentials here, so an
/// unknown user gets a challenge like a known one's, the same on every try
/// (`sasl::fake_salt`). Read from `path` (DIR's or ROOT's `.salt-key`:
/// `sj::account`); made on first use (32 random bytes in base64, mode
/// 0600). Delete the file to change the key.
pub fn salt_key(path: &Path) -> std::io::Result<Vec<u8>> {
    for _ in 0..2 {
        match crate::fifo::read_text(path, 4096) {
            Ok(text) => {
                return b64decode(text.trim())
                    .ok()
                    .filter(|k| k.len() >= 16)
                    .ok_or_else(|| Error::new(ErrorKind::InvalidData, "not a base64 key"));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| Error::other(format!("no random numbers: {e}")))?;
                let text = format!("{}\n", b64encode(&key));
                // Whoever links it first wins; the other reads theirs.
                if crate::fifo::write_new(path, text.as_bytes())? {
                    return Ok(key.to_vec());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::other("the key file came and went"))
}

/// The entry for one mechanism.
pub fn find(creds: &[StoredCredentials], hash: Hash) -> Option<&StoredCredentials> {
    creds.iter().find(|c| c.hash == hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).expect("random");
            let p = std::env::temp_dir().join(format!(
                "sj-passwd-test-{tag}-{}-{}",
                std::process::id(),
                u64::from_le_bytes(r)
            ));
            std::fs::create_dir(&p).expect("mkdir");
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn passwd_write_read() {
        let dir = TempDir::new("rw");
        let path = dir.0.join("passwd");
        write(&path, "pencil").expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("pencil"));
        assert_eq!(text.lines().count(), 2);
        let creds = read(&path).expect("parse");
        assert_eq!(creds.len(), 2);
        for hash in [Hash::Sha1, Hash::Sha256] {
            let c = find(&creds, hash).expect("entry");
            assert_eq!(c.iterations, ITERATIONS);
            assert!(c.verify_plain("pencil"));
            assert!(!c.verify_plain("pencil2"));
        }
        // Fresh salts every time; the old file is replaced, no temp file left.
        write(&path, "other").expect("rewrite");
        let again = read(&path).expect("parse");
        assert_ne!(again[0].salt, creds[0].salt);
        assert!(find(&again, Hash::Sha256).is_some_and(|c| c.verify_plain("other")));
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("passwd")]);
    }

    #[test]
    fn passwd_write_refuses() {
        let dir = TempDir::new("refuse");
        let path = dir.0.join("passwd");
        assert_eq!(
            write(&path, "").map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput)
        );
        assert_eq!(
            write(&path, "a\nb").map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput)
        );
        assert!(!path.exists());
        assert!(write(&dir.0.join("missing/passwd"), "pw").is_err());
    }

    #[test]
    fn passwd_parse_round_trip_and_errors() {
        let creds = vec![StoredCredentials::derive(
            Hash::Sha256,
            "pencil",
            b"salt",
            8,
        )];
        let text = format(&creds);
        assert_eq!(parse(&text).expect("parse"), creds);
        let with_noise = format!("# comment\n\nSCRAM-SHA-512 1 a b c\n{text}");
        assert_eq!(parse(&with_noise).expect("parse"), creds);
        let good: Vec<&str> = text.split_whitespace().collect();
        let bad_lines = [
            format!("{} {} {} {}", good[0], good[1], good[2], good[3]),
            format!("{} 0 {} {} {}", good[0], good[2], good[3], good[4]),
            format!("{} x {} {} {}", good[0], good[2], good[3], good[4]),
            format!(
                "{} 99999999999 {} {} {}",
                good[0], good[2], good[3], good[4]
            ),
            format!("{} {} *** {} {}", good[0], good[1], good[3], good[4]),
            format!("{} {} {} c2hvcnQ= {}", good[0], good[1], good[2], good[4]),
            format!(
                "{} {} {} {} {} extra",
                good[0], good[1], good[2], good[3], good[4]
            ),
            format!(
                "SCRAM-SHA-1 {} {} {} {}",
                good[1], good[2], good[3], good[4]
            ),
        ];
        for bad in bad_lines {
            let err = parse(&format!("# x\n{bad}\n")).expect_err(&bad);
            assert_eq!(err.kind(), ErrorKind::InvalidData);
            assert!(err.to_string().starts_with("line 2:"), "{err}");
        }
        assert_eq!(parse("").expect("empty"), vec![]);
    }

    #[test]
    fn salt_key_made_once_then_read() {
        let dir = TempDir::new("key");
        let path = crate::account::Dir::new(&dir.0).salt_key();
        let k = salt_key(&path).expect("made");
        assert_eq!(k.len(), 32);
        assert_eq!(salt_key(&path).expect("read"), k);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "zz\n").expect("w");
        assert!(salt_key(&path).is_err());
    }

    #[test]
    fn passwd_read_missing() {
        let dir = TempDir::new("missing");
        assert_eq!(
            read(&dir.0.join("passwd")).map_err(|e| e.kind()),
            Err(ErrorKind::NotFound)
        );
    }
}
