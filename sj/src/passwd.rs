//! `DIR/passwd`: downstream credentials, SCRAM-hashed, never plaintext.
//!
//! Format: one line per mechanism,
//! `<mechanism> <iterations> <salt-b64> <stored-key-b64> <server-key-b64>`,
//! e.g. `SCRAM-SHA-256 4096 c2FsdA== ... ...`. Written atomically, mode 0600.

use crate::sasl::{Hash, StoredCredentials};
use std::path::Path;

/// Iterations for new entries.
pub const ITERATIONS: u32 = 4096;

/// Read the credentials of every mechanism from a passwd file.
pub fn read(path: &Path) -> std::io::Result<Vec<StoredCredentials>> {
    let _ = path;
    todo!("passwd")
}

/// Derive SCRAM-SHA-1 and SCRAM-SHA-256 entries for `password` with fresh
/// salts and write them atomically (tmp file, fsync, rename), mode 0600.
pub fn write(path: &Path, password: &str) -> std::io::Result<()> {
    let _ = password;
    let _ = path;
    todo!("passwd")
}

/// The entry for one mechanism.
pub fn find(creds: &[StoredCredentials], hash: Hash) -> Option<&StoredCredentials> {
    creds.iter().find(|c| c.hash == hash)
}
