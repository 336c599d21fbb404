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

/// One SASL element of RFC 6120 §6.4 (`auth`, `challenge`, `response`,
/// `success`) carrying `data` in base64, with the mechanism on `auth`.
pub fn element(name: &str, mechanism: Option<&str>, data: &[u8]) -> String {
    let mech = mechanism
        .map(|m| format!(" mechanism='{}'", crate::xml::escape_attr(m)))
        .unwrap_or_default();
    format!(
        "<{name} xmlns='{}'{mech}>{}</{name}>",
        crate::ns::SASL,
        b64encode(data)
    )
}

/// The SCRAM mechanism to use among those a server offers: SCRAM-SHA-256,
/// else SCRAM-SHA-1 (the stronger hash first), else none.
pub fn best_scram<S: AsRef<str>>(offered: &[S]) -> Option<Hash> {
    let has = |m: &str| offered.iter().any(|o| o.as_ref() == m);
    [Hash::Sha256, Hash::Sha1]
        .into_iter()
        .find(|h| has(h.mechanism()))
}

pub fn b64encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn b64decode(s: &str) -> Result<Vec<u8>, SaslError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| SaslError(format!("bad base64: {e}")))
}

/// Most PBKDF2 iterations a peer may ask of us (a denial-of-service bound).
pub const MAX_ITERATIONS: u32 = 10_000_000;

impl Hash {
    /// Output length of the hash in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
        }
    }

    /// The hash named by a SASL mechanism name.
    pub fn from_mechanism(name: &str) -> Option<Hash> {
        match name {
            "SCRAM-SHA-1" => Some(Hash::Sha1),
            "SCRAM-SHA-256" => Some(Hash::Sha256),
            _ => None,
        }
    }

    fn h(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: hmac::Mac + hmac::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            // HMAC takes keys of any length: new_from_slice cannot fail.
            match <M as hmac::KeyInit>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        }
        match self {
            Hash::Sha1 => run::<hmac::Hmac<sha1::Sha1>>(key, data),
            Hash::Sha256 => run::<hmac::Hmac<sha2::Sha256>>(key, data),
        }
    }

    /// RFC 5802 Hi(): PBKDF2 with HMAC of this hash.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out),
            Hash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out)
            }
        }
        out
    }
}

/// Equality that takes the same time wherever the first difference is.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// `len` random bytes. The OS generator should never fail; if it does, the
/// fallback mixes the time, the pid, a counter and an address through
/// SHA-256, which is still unique and hard to guess for a nonce.
pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    if getrandom::fill(&mut buf).is_ok() {
        return buf;
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = format!(
            "{}:{}:{}:{:p}",
            now.as_nanos(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            &out
        );
        out.extend(Hash::Sha256.h(seed.as_bytes()));
    }
    out.truncate(len);
    out
}

/// A fresh printable nonce (base64 never contains `,`).
fn fresh_nonce() -> String {
    b64encode(&random_bytes(24))
}

/// RFC 5802 saslname: `=` → `=3D`, `,` → `=2C`.
fn saslname_encode(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn saslname_decode(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        match esc {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslError("bad '=' escape in username".into())),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A nonce is printable ASCII except `,` (RFC 5802 `printable`).
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn utf8(msg: &[u8]) -> Result<&str, SaslError> {
    std::str::from_utf8(msg).map_err(|_| SaslError("message is not UTF-8".into()))
}

/// Split `k=v,k=v` into pairs; every attribute must be one letter and `=`.
fn attributes(msg: &str) -> Result<Vec<(u8, &str)>, SaslError> {
    msg.split(',')
        .map(|a| {
            let b = a.as_bytes();
            if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'=' {
                Ok((b[0], &a[2..]))
            } else {
                Err(SaslError(format!(
                    "malformed attribute {:?}",
                    a.chars().take(16).collect::<String>()
                )))
            }
        })
        .collect()
}

/// Attribute `key` at `pos`, or an error naming it.
fn expect<'a>(attrs: &[(u8, &'a str)], pos: usize, key: u8) -> Result<&'a str, SaslError> {
    match attrs.get(pos) {
        Some((k, v)) if *k == key => Ok(v),
        _ => Err(SaslError(format!("expected attribute '{}='", key as char))),
    }
}

fn server_error(msg: &str) -> Option<SaslError> {
    msg.strip_prefix("e=").map(|e| {
        SaslError(format!(
            "server error: {}",
            e.chars().take(64).collect::<String>()
        ))
    })
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

/// ClientKey and ServerKey from a password.
fn client_server_keys(
    hash: Hash,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> (Vec<u8>, Vec<u8>) {
    let salted = hash.hi(password.as_bytes(), salt, iterations);
    (
        hash.hmac(&salted, b"Client Key"),
        hash.hmac(&salted, b"Server Key"),
    )
}

impl StoredCredentials {
    pub fn derive(hash: Hash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let (client_key, server_key) = client_server_keys(hash, password, salt, iterations);
        StoredCredentials {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.h(&client_key),
            server_key,
        }
    }
    /// Check a PLAIN password against the stored keys.
    pub fn verify_plain(&self, password: &str) -> bool {
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return false;
        }
        let (client_key, _) = client_server_keys(self.hash, password, &self.salt, self.iterations);
        ct_eq(&self.hash.h(&client_key), &self.stored_key)
    }
}

/// The salt shown to a name that has no credentials for `hash` here: made
/// from a secret key (`passwd::salt_key`) and the name, so it is the same
/// on every try and looks like a real one (16 bytes, as `passwd` makes).
pub fn fake_salt(key: &[u8], hash: Hash, name: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(name.len() + 32);
    msg.extend_from_slice(b"sj-c2s fake salt\0");
    msg.extend_from_slice(hash.mechanism().as_bytes());
    msg.push(0);
    msg.extend_from_slice(name.as_bytes());
    let mut salt = Hash::Sha256.hmac(key, &msg);
    salt.truncate(16);
    salt
}

impl StoredCredentials {
    /// Credentials no password matches (random keys), for the exchange of a
    /// user that does not exist: it fails at the last step, exactly as a
    /// wrong password does.
    pub fn unmatchable(hash: Hash, salt: Vec<u8>, iterations: u32) -> Self {
        StoredCredentials {
            hash,
            salt,
            iterations,
            stored_key: random_bytes(hash.output_len()),
            server_key: random_bytes(hash.output_len()),
        }
    }
}

enum ClientState {
    Initial,
    First { first_bare: String },
    Final { server_signature: Vec<u8> },
}

/// Client side of SCRAM.
pub struct ScramClient {
    hash: Hash,
    username: String,
    password: String,
    nonce: String,
    state: ClientState,
}

impl ScramClient {
    /// `nonce` None: a fresh random nonce.
    pub fn new(hash: Hash, username: &str, password: &str, nonce: Option<&str>) -> Self {
        ScramClient {
            hash,
            username: username.to_string(),
            password: password.to_string(),
            nonce: nonce.map_or_else(fresh_nonce, str::to_string),
            state: ClientState::Initial,
        }
    }
    /// client-first-message.
    pub fn first(&mut self) -> Vec<u8> {
        let first_bare = format!("n={},r={}", saslname_encode(&self.username), self.nonce);
        let msg = format!("n,,{first_bare}").into_bytes();
        self.state = ClientState::First { first_bare };
        msg
    }
    /// server-first-message in, client-final-message out.
    pub fn final_message(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        let ClientState::First { first_bare } = &self.state else {
            return Err(SaslError("server-first-message out of order".into()));
        };
        if has_control(&self.username) || has_control(&self.password) {
            return Err(SaslError(
                "control character in username or password".into(),
            ));
        }
        if !valid_nonce(&self.nonce) {
            return Err(SaslError("client nonce is not printable".into()));
        }
        let sf = utf8(server_first)?;
        if let Some(e) = server_error(sf) {
            return Err(e);
        }
        let attrs = attributes(sf)?;
        if attrs.first().is_some_and(|(k, _)| *k == b'm') {
            return Err(SaslError("unsupported mandatory extension".into()));
        }
        let nonce = expect(&attrs, 0, b'r')?;
        if !valid_nonce(nonce)
            || nonce.len() <= self.nonce.len()
            || !nonce.starts_with(self.nonce.as_str())
        {
            return Err(SaslError(
                "server nonce does not extend the client nonce".into(),
            ));
        }
        let salt = b64decode(expect(&attrs, 1, b's')?)?;
        if salt.is_empty() {
            return Err(SaslError("empty salt".into()));
        }
        let iterations = expect(&attrs, 2, b'i')?;
        let iterations: u32 = match iterations.parse() {
            Ok(n)
                if n > 0
                    && n <= MAX_ITERATIONS
                    && iterations.bytes().all(|b| b.is_ascii_digit()) =>
            {
                n
            }
            _ => return Err(SaslError(format!("bad iteration count {iterations:?}"))),
        };
        let (client_key, server_key) =
            client_server_keys(self.hash, &self.password, &salt, iterations);
        let stored_key = self.hash.h(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{first_bare},{sf},{without_proof}");
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        let server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());
        self.state = ClientState::Final { server_signature };
        Ok(format!("{without_proof},p={}", b64encode(&proof)).into_bytes())
    }
    /// server-final-message: verify the server signature.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let ClientState::Final { server_signature } = &self.state else {
            return Err(SaslError("server-final-message out of order".into()));
        };
        let msg = utf8(server_final)?;
        if let Some(e) = server_error(msg) {
            return Err(e);
        }
        let attrs = attributes(msg)?;
        let v = b64decode(expect(&attrs, 0, b'v')?)?;
        if ct_eq(&v, server_signature) {
            Ok(())
        } else {
            Err(SaslError("server signature mismatch".into()))
        }
    }
}

enum ServerState {
    Initial,
    ClientFirst {
        gs2_header: String,
        first_bare: String,
        nonce: String,
    },
    ServerFirst {
        gs2_header: String,
        auth_prefix: String,
        nonce: String,
        creds: StoredCredentials,
    },
    Done,
}

/// Server side of SCRAM. The caller looks up credentials by username.
pub struct ScramServer {
    hash: Hash,
    snonce: String,
    authzid: Option<String>,
    state: ServerState,
}

impl ScramServer {
    pub fn new(hash: Hash, nonce: Option<&str>) -> Self {
        ScramServer {
            hash,
            snonce: nonce.map_or_else(fresh_nonce, str::to_string),
            authzid: None,
            state: ServerState::Initial,
        }
    }
    /// The authorization identity the client asked for (`a=` in the GS2 header), if any.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }
    /// Parse client-first; returns the username (authcid, `=2C`/`=3D` decoded).
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, SaslError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(SaslError("client-first-message out of order".into()));
        }
        let msg = utf8(msg)?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(SaslError("missing GS2 header".into()))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(SaslError("channel binding not supported".into()))
            }
            _ => return Err(SaslError("bad GS2 channel binding flag".into())),
        }
        let (authz, first_bare) = rest
            .split_once(',')
            .ok_or(SaslError("missing GS2 authzid field".into()))?;
        let authzid = match authz {
            "" => None,
            a => {
                let a = a
                    .strip_prefix("a=")
                    .ok_or(SaslError("bad GS2 authzid".into()))?;
                let a = saslname_decode(a)?;
                if a.is_empty() || has_control(&a) {
                    return Err(SaslError("bad GS2 authzid".into()));
                }
                Some(a)
            }
        };
        let attrs = attributes(first_bare)?;
        if attrs.first().is_some_and(|(k, _)| *k == b'm') {
            return Err(SaslError("unsupported mandatory extension".into()));
        }
        let username = saslname_decode(expect(&attrs, 0, b'n')?)?;
        if username.is_empty() || has_control(&username) {
            return Err(SaslError("bad username".into()));
        }
        let cnonce = expect(&attrs, 1, b'r')?;
        if !valid_nonce(cnonce) {
            return Err(SaslError("bad client nonce".into()));
        }
        if !valid_nonce(&self.snonce) {
            return Err(SaslError("server nonce is not printable".into()));
        }
        self.authzid = authzid;
        self.state = ServerState::ClientFirst {
            gs2_header: format!("{flag},{authz},"),
            first_bare: first_bare.to_string(),
            nonce: format!("{cnonce}{}", self.snonce),
        };
        Ok(username)
    }
    /// server-first-message for these credentials.
    ///
    /// Out of order, or with credentials of another hash, the exchange is
    /// spoiled: the message is still produced and `client_final` fails.
    pub fn server_first(&mut self, creds: &StoredCredentials) -> Vec<u8> {
        let server_first = |nonce: &str| {
            format!(
                "r={nonce},s={},i={}",
                b64encode(&creds.salt),
                creds.iterations
            )
        };
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        match state {
            ServerState::ClientFirst {
                gs2_header,
                first_bare,
                nonce,
            } if creds.hash == self.hash => {
                let msg = server_first(&nonce);
                self.state = ServerState::ServerFirst {
                    gs2_header,
                    auth_prefix: format!("{first_bare},{msg}"),
                    nonce,
                    creds: creds.clone(),
                };
                msg.into_bytes()
            }
            _ => server_first(&self.snonce).into_bytes(),
        }
    }
    /// Verify client-final; on success the server-final-message (`v=...`).
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        let ServerState::ServerFirst {
            gs2_header,
            auth_prefix,
            nonce,
            creds,
        } = state
        else {
            return Err(SaslError("client-final-message out of order".into()));
        };
        let msg = utf8(msg)?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(SaslError("missing client proof".into()))?;
        let attrs = attributes(without_proof)?;
        let cb = b64decode(expect(&attrs, 0, b'c')?)?;
        if cb != gs2_header.as_bytes() {
            return Err(SaslError("channel binding data mismatch".into()));
        }
        if expect(&attrs, 1, b'r')? != nonce {
            return Err(SaslError("nonce mismatch".into()));
        }
        let proof = b64decode(proof)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslError("bad client proof length".into()));
        }
        let auth_message = format!("{auth_prefix},{without_proof}");
        let client_signature = self.hash.hmac(&creds.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !ct_eq(&self.hash.h(&client_key), &creds.stored_key) {
            return Err(SaslError("invalid client proof".into()));
        }
        let server_signature = self.hash.hmac(&creds.server_key, auth_message.as_bytes());
        Ok(format!("v={}", b64encode(&server_signature)).into_bytes())
    }
}

/// PLAIN: authzid, authcid, password.
pub fn plain_encode(authzid: &str, authcid: &str, password: &str) -> Vec<u8> {
    format!("{authzid}\0{authcid}\0{password}").into_bytes()
}

/// PLAIN: (authzid, authcid, password).
pub fn plain_decode(msg: &[u8]) -> Result<(String, String, String), SaslError> {
    let msg = utf8(msg)?;
    let mut parts = msg.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError(
            "PLAIN message needs exactly three NUL-separated fields".into(),
        ));
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError(
            "PLAIN message with empty username or password".into(),
        ));
    }
    if has_control(authzid) || has_control(authcid) || has_control(password) {
        return Err(SaslError("control character in PLAIN message".into()));
    }
    Ok((
        authzid.to_string(),
        authcid.to_string(),
        password.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_elements_and_mechanism_choice() {
        assert_eq!(
            element("auth", Some("SCRAM-SHA-1"), b"n,,"),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>biws</auth>"
        );
        assert_eq!(
            element("success", None, b""),
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>"
        );
        assert_eq!(
            best_scram(&["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"]),
            Some(Hash::Sha256)
        );
        assert_eq!(best_scram(&["SCRAM-SHA-1", "PLAIN"]), Some(Hash::Sha1));
        assert_eq!(best_scram(&["PLAIN", "SCRAM-SHA-256-PLUS"]), None);
    }

    struct Vector {
        hash: Hash,
        cnonce: &'static str,
        snonce: &'static str,
        client_first: &'static str,
        server_first: &'static str,
        client_final: &'static str,
        server_final: &'static str,
    }

    /// RFC 5802 §5.
    const RFC5802: Vector = Vector {
        hash: Hash::Sha1,
        cnonce: "fyko+d2lbbFgONRv9qkxdawL",
        snonce: "3rfcNHYJY1ZVvWVs7j",
        client_first: "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        server_first: "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        client_final:
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        server_final: "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    };

    /// RFC 7677 §3.
    const RFC7677: Vector = Vector {
        hash: Hash::Sha256,
        cnonce: "rOprNGfwEbeRWgbNEkqO",
        snonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        client_first: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        server_first:
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        client_final: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                       p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        server_final: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    };

    fn salt_of(v: &Vector) -> Vec<u8> {
        let s = v
            .server_first
            .split(",s=")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .expect("salt");
        b64decode(s).expect("salt b64")
    }

    fn client_side(v: &Vector) {
        let mut c = ScramClient::new(v.hash, "user", "pencil", Some(v.cnonce));
        assert_eq!(c.first(), v.client_first.as_bytes());
        let fin = c
            .final_message(v.server_first.as_bytes())
            .expect("client-final");
        assert_eq!(String::from_utf8_lossy(&fin), v.client_final);
        c.verify(v.server_final.as_bytes())
            .expect("server signature");
        assert!(c.verify(b"v=AAAA").is_err());
        assert!(c.verify(b"e=invalid-proof").is_err());
        assert!(c.verify(b"").is_err());
    }

    fn server_side(v: &Vector) {
        let creds = StoredCredentials::derive(v.hash, "pencil", &salt_of(v), 4096);
        let mut s = ScramServer::new(v.hash, Some(v.snonce));
        assert_eq!(
            s.client_first(v.client_first.as_bytes())
                .expect("client-first"),
            "user"
        );
        assert_eq!(s.authzid(), None);
        assert_eq!(
            String::from_utf8_lossy(&s.server_first(&creds)),
            v.server_first
        );
        let fin = s
            .client_final(v.client_final.as_bytes())
            .expect("client-final accepted");
        assert_eq!(String::from_utf8_lossy(&fin), v.server_final);
        // The exchange is over.
        assert!(s.client_final(v.client_final.as_bytes()).is_err());
    }

    #[test]
    fn sasl_rfc5802_client() {
        client_side(&RFC5802);
    }

    #[test]
    fn sasl_rfc5802_server() {
        server_side(&RFC5802);
    }

    #[test]
    fn sasl_rfc7677_client() {
        client_side(&RFC7677);
    }

    #[test]
    fn sasl_rfc7677_server() {
        server_side(&RFC7677);
    }

    fn round_trip(hash: Hash, user: &str, password: &str, tried: &str) -> Result<(), SaslError> {
        let creds = StoredCredentials::derive(hash, password, b"saltsalt", 64);
        let mut c = ScramClient::new(hash, user, tried, None);
        let mut s = ScramServer::new(hash, None);
        let name = s.client_first(&c.first())?;
        assert_eq!(name, user);
        let sf = s.server_first(&creds);
        let cf = c.final_message(&sf)?;
        let fin = s.client_final(&cf)?;
        c.verify(&fin)
    }

    #[test]
    fn sasl_round_trip() {
        for hash in [Hash::Sha1, Hash::Sha256] {
            round_trip(hash, "juliet", "s3cr3t ü", "s3cr3t ü").expect("round trip");
            round_trip(hash, "a,b=c=2C", "pw", "pw").expect("escaped username");
            assert!(round_trip(hash, "juliet", "s3cr3t", "wrong").is_err());
            assert!(round_trip(hash, "juliet", "s3cr3t", "").is_err());
        }
    }

    #[test]
    fn sasl_random_nonces_differ() {
        let a = ScramClient::new(Hash::Sha256, "u", "p", None).first();
        let b = ScramClient::new(Hash::Sha256, "u", "p", None).first();
        assert_ne!(a, b);
    }

    #[test]
    fn sasl_username_escaping() {
        let mut c = ScramClient::new(Hash::Sha1, "a=b,c", "p", Some("abc"));
        assert_eq!(c.first(), b"n,,n=a=3Db=2Cc,r=abc");
        assert_eq!(saslname_decode("a=3Db=2Cc").as_deref(), Ok("a=b,c"));
        for bad in ["=", "=2", "=2c", "=41", "a=", "=3d"] {
            assert!(saslname_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sasl_server_rejects_malformed_client_first() {
        for bad in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=user,r=abc",
            b"p=tls-unique,,n=user,r=abc",
            b"n,b,n=user,r=abc",
            b"n,,r=abc,n=user",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=us\x01er,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=user,r=a b",
            b"n,,n=user,r=abc\xff",
            b"n,,n=user,,r=abc",
        ] {
            let mut s = ScramServer::new(Hash::Sha256, Some("srv"));
            assert!(
                s.client_first(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut s = ScramServer::new(Hash::Sha256, Some("srv"));
        assert_eq!(
            s.client_first(b"n,a=juliet@example.com,n=juliet,r=abc,x=ext")
                .as_deref(),
            Ok("juliet")
        );
        assert_eq!(s.authzid(), Some("juliet@example.com"));
        let mut s = ScramServer::new(Hash::Sha256, Some("srv"));
        assert!(s.client_first(b"y,,n=user,r=abc").is_ok());
        assert!(
            s.client_first(b"n,,n=user,r=abc").is_err(),
            "second client-first"
        );
    }

    #[test]
    fn sasl_server_rejects_bad_client_final() {
        let v = &RFC7677;
        let creds = StoredCredentials::derive(v.hash, "pencil", &salt_of(v), 4096);
        let good_nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cases = [
            String::new(),
            "garbage".into(),
            format!("c=biws,r={good_nonce}"),
            format!("c=eSws,r={good_nonce},{proof}"),
            format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,{proof}"),
            format!("c=biws,r=rOprNGfwEbeRWgbNEkqOother,{proof}"),
            format!("r={good_nonce},c=biws,{proof}"),
            format!("c=biws,r={good_nonce},p=AAAA"),
            format!("c=biws,r={good_nonce},p=!!!"),
            format!("c=biws,r={good_nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVR="),
            format!("c=biws,r={good_nonce},p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
        ];
        for bad in cases {
            let mut s = ScramServer::new(v.hash, Some(v.snonce));
            s.client_first(v.client_first.as_bytes())
                .expect("client-first");
            s.server_first(&creds);
            assert!(s.client_final(bad.as_bytes()).is_err(), "{bad}");
        }
        // Out of order, and credentials of the wrong hash.
        let mut s = ScramServer::new(v.hash, Some(v.snonce));
        assert!(s.client_final(v.client_final.as_bytes()).is_err());
        let mut s = ScramServer::new(v.hash, Some(v.snonce));
        s.client_first(v.client_first.as_bytes())
            .expect("client-first");
        s.server_first(&StoredCredentials::derive(
            Hash::Sha1,
            "pencil",
            &salt_of(v),
            4096,
        ));
        assert!(s.client_final(v.client_final.as_bytes()).is_err());
    }

    #[test]
    fn sasl_client_rejects_bad_server_first() {
        for bad in [
            &b""[..],
            b"e=other-error",
            b"r=fyko+d2lbbFgONRv9qkxdawL,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=other3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=fyko+d2lbbFgONRv9qkxdawLx,s=,i=4096",
            b"r=fyko+d2lbbFgONRv9qkxdawLx,s=***,i=4096",
            b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=0",
            b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=-1",
            b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=+4",
            b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=99999999999",
            b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92",
            b"m=x,r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=1",
            b"s=QSXCR+Q6sek8bf92,r=fyko+d2lbbFgONRv9qkxdawLx,i=1",
        ] {
            let mut c = ScramClient::new(Hash::Sha1, "user", "pencil", Some(RFC5802.cnonce));
            c.first();
            assert!(
                c.final_message(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Out of order.
        let mut c = ScramClient::new(Hash::Sha1, "user", "pencil", Some(RFC5802.cnonce));
        assert!(c.final_message(RFC5802.server_first.as_bytes()).is_err());
        assert!(c.verify(RFC5802.server_final.as_bytes()).is_err());
    }

    #[test]
    fn sasl_unknown_user_fails_at_the_last_step() {
        let key = b"0123456789abcdef0123456789abcdef";
        let salt = fake_salt(key, Hash::Sha256, "mallory@localhost");
        assert_eq!(salt.len(), 16);
        assert_eq!(salt, fake_salt(key, Hash::Sha256, "mallory@localhost"));
        assert_ne!(salt, fake_salt(key, Hash::Sha1, "mallory@localhost"));
        assert_ne!(salt, fake_salt(key, Hash::Sha256, "eve@localhost"));
        assert_ne!(
            salt,
            fake_salt(b"another key", Hash::Sha256, "mallory@localhost")
        );
        let creds = StoredCredentials::unmatchable(Hash::Sha256, salt.clone(), 4096);
        let mut c = ScramClient::new(Hash::Sha256, "mallory", "guess", None);
        let mut s = ScramServer::new(Hash::Sha256, None);
        s.client_first(&c.first()).expect("client-first");
        let sf = s.server_first(&creds);
        assert!(String::from_utf8_lossy(&sf).contains(&format!(",s={},i=4096", b64encode(&salt))));
        let cf = c.final_message(&sf).expect("client-final");
        assert_eq!(
            s.client_final(&cf),
            Err(SaslError("invalid client proof".into()))
        );
    }

    #[test]
    fn sasl_verify_plain() {
        let creds = StoredCredentials::derive(Hash::Sha256, "pencil", b"salt", 16);
        assert!(creds.verify_plain("pencil"));
        assert!(!creds.verify_plain("pencil "));
        assert!(!creds.verify_plain(""));
        let creds = StoredCredentials::derive(Hash::Sha1, "pencil", b"salt", 16);
        assert!(creds.verify_plain("pencil"));
        assert!(!creds.verify_plain("Pencil"));
    }

    #[test]
    fn sasl_plain() {
        assert_eq!(plain_encode("", "juliet", "pw"), b"\0juliet\0pw");
        assert_eq!(
            plain_decode(b"\0juliet\0pw"),
            Ok((String::new(), "juliet".to_string(), "pw".to_string()))
        );
        assert_eq!(
            plain_decode(&plain_encode("a@b", "u", "p ü")).map(|t| t.2),
            Ok("p ü".to_string())
        );
        for bad in [
            &b""[..],
            b"juliet",
            b"\0juliet",
            b"\0\0pw",
            b"\0juliet\0",
            b"\0juliet\0pw\0",
            b"\0jul\x01iet\0pw",
            b"\0juliet\0p\nw",
            b"\0juliet\0\xff",
        ] {
            assert!(plain_decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sasl_base64_and_ct_eq() {
        assert_eq!(b64encode(b"n,,"), "biws");
        assert_eq!(b64decode("biws").as_deref(), Ok(&b"n,,"[..]));
        assert!(b64decode("bi ws").is_err());
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_eq!(Hash::from_mechanism("SCRAM-SHA-256"), Some(Hash::Sha256));
        assert_eq!(
            Hash::from_mechanism(Hash::Sha1.mechanism()),
            Some(Hash::Sha1)
        );
    }
}
