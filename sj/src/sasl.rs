//! SASL mechanisms: SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677),
//! client and server side, and PLAIN (RFC 4616). Payloads here are raw
//! bytes; base64 for XMPP `<auth/>`/`<challenge/>` is the caller's job
//! (helpers `b64encode`/`b64decode` provided).
//!
//! Not here: channel binding (the TLS is in the wrapper; we send `n,,`),
//! SASLprep beyond rejecting control characters.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    /// "SCRAM-SHA-1" / "SCRAM-SHA-256".
    pub fn mechanism(self) -> &'static str {
        match self {
            Hash::Sha1 => "SCRAM-SHA-1",
            Hash::Sha256 => "SCRAM-SHA-256",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslError(pub String);

impl std::fmt::Display for SaslError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SaslError {}

pub fn b64encode(data: &[u8]) -> String {
    let _ = data;
    todo!("sasl")
}

pub fn b64decode(s: &str) -> Result<Vec<u8>, SaslError> {
    let _ = s;
    todo!("sasl")
}

/// Salted credentials as stored (never the password): RFC 5802 StoredKey and ServerKey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    pub hash: Hash,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl StoredCredentials {
    pub fn derive(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let _ = (hash, password, salt, iterations);
        todo!("sasl")
    }
    /// Check a PLAIN password against the stored keys.
    pub fn verify_plain(&self, password: &str) -> bool {
        let _ = password;
        todo!("sasl")
    }
}

/// Client side of SCRAM.
pub struct ScramClient {
    _private: (),
}

impl ScramClient {
    /// `nonce` None: a fresh random nonce.
    pub fn new(hash: Hash, username: &str, password: &str, nonce: Option<&str>) -> Self {
        let _ = (hash, username, password, nonce);
        todo!("sasl")
    }
    /// client-first-message.
    pub fn first(&mut self) -> Vec<u8> {
        todo!("sasl")
    }
    /// server-first-message in, client-final-message out.
    pub fn final_message(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        let _ = server_first;
        todo!("sasl")
    }
    /// server-final-message: verify the server signature.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let _ = server_final;
        todo!("sasl")
    }
}

/// Server side of SCRAM. The caller looks up credentials by username.
pub struct ScramServer {
    _private: (),
}

impl ScramServer {
    pub fn new(hash: Hash, nonce: Option<&str>) -> Self {
        let _ = (hash, nonce);
        todo!("sasl")
    }
    /// Parse client-first; returns the username (authcid, `=2C`/`=3D` decoded).
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, SaslError> {
        let _ = msg;
        todo!("sasl")
    }
    /// server-first-message for these credentials.
    pub fn server_first(&mut self, creds: &StoredCredentials) -> Vec<u8> {
        let _ = creds;
        todo!("sasl")
    }
    /// Verify client-final; on success the server-final-message (`v=...`).
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let _ = msg;
        todo!("sasl")
    }
}

/// PLAIN: authzid, authcid, password.
pub fn plain_encode(authzid: &str, authcid: &str, password: &str) -> Vec<u8> {
    let _ = (authzid, authcid, password);
    todo!("sasl")
}

/// PLAIN: (authzid, authcid, password).
pub fn plain_decode(msg: &[u8]) -> Result<(String, String, String), SaslError> {
    let _ = msg;
    todo!("sasl")
}
