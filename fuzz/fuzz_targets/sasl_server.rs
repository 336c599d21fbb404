//! Fuzz target 4: the SCRAM server (`sj::sasl::ScramServer`) and PLAIN.
//!
//! Properties: arbitrary client-first and client-final messages never
//! panic, and the server never authenticates without the right proof.
//! The right proof is computed here, independently, from RFC 5802 §3
//! (SaltedPassword, ClientKey, StoredKey, AuthMessage, ClientProof), so
//! an acceptance is checked against the formula rather than against the
//! code under test: the proof, the channel-binding echo, the combined
//! nonce and the server signature must all be what the RFC says. When
//! the harness itself supplies the right proof for a well-formed
//! exchange, the server must accept (so the success path is fuzzed too).
//!
//! Input: byte 0 chooses the hash (bit 0), the proof (bits 1-2: the
//! client's own; the right one; one computed from a wrong password; the
//! right one with a bit flipped), credentials of the other hash (bit 3),
//! client-final before server-first (bit 4) and the PBKDF2 iteration count
//! (bits 5-6, 1 to 4). The rest is client-first, 0xFF, client-final (or,
//! when the harness supplies the proof, client-final-without-proof).
#![no_main]

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sj::sasl::{plain_decode, Hash, ScramServer, StoredCredentials};

const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"QSXCR+Q6sek8bf92";
const SNONCE: &str = "3rfcNHYJY1ZVvWVs7j";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn hmac_of(hash: Hash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha1 => {
            let mut m = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).expect("any key");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Hash::Sha256 => {
            let mut m =
                <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn h(hash: Hash, data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    match hash {
        Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
    }
}

/// RFC 5802 §3: ClientProof and ServerSignature for `password` over `auth`.
fn rfc_proof(hash: Hash, password: &str, iterations: u32, auth: &str) -> (Vec<u8>, Vec<u8>) {
    let mut salted = vec![0u8; hash.output_len()];
    match hash {
        Hash::Sha1 => {
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password.as_bytes(), SALT, iterations, &mut salted)
        }
        Hash::Sha256 => {
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), SALT, iterations, &mut salted)
        }
    }
    let client_key = hmac_of(hash, &salted, b"Client Key");
    let stored_key = h(hash, &client_key);
    let signature = hmac_of(hash, &stored_key, auth.as_bytes());
    let proof = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let server_key = hmac_of(hash, &salted, b"Server Key");
    (proof, hmac_of(hash, &server_key, auth.as_bytes()))
}

/// client-first-message = gs2-header client-first-message-bare, where
/// gs2-header = cbind-flag "," [authzid] ",": the header and the bare part.
fn split_first(cf: &str) -> Option<(&str, &str)> {
    let a = cf.find(',')?;
    let b = a + 1 + cf[a + 1..].find(',')?;
    Some((&cf[..=b], &cf[b + 1..]))
}

/// The client nonce: the `r=` attribute right after `n=` in the bare part.
fn cnonce(bare: &str) -> Option<&str> {
    let mut it = bare.split(',');
    it.next().filter(|n| n.starts_with("n="))?;
    it.next()?.strip_prefix("r=")
}

/// A client-first this harness knows must be accepted.
fn simple_first(cf: &str) -> bool {
    let Some(rest) = cf.strip_prefix("n,,n=") else {
        return false;
    };
    let Some((user, nonce)) = rest.split_once(",r=") else {
        return false;
    };
    !user.is_empty()
        && user.bytes().all(|b| b.is_ascii_alphanumeric())
        && !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let hash = if flags & 1 == 0 {
        Hash::Sha1
    } else {
        Hash::Sha256
    };
    let proof_mode = (flags >> 1) & 3;
    let other_hash = flags & 8 != 0;
    let out_of_order = flags & 16 != 0;
    let iterations = 1 + u32::from((flags >> 5) & 3);
    let (first, fin) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };

    let creds_hash = match (other_hash, hash) {
        (false, h) => h,
        (true, Hash::Sha1) => Hash::Sha256,
        (true, Hash::Sha256) => Hash::Sha1,
    };
    let creds = StoredCredentials::derive(creds_hash, PASSWORD, SALT, iterations);

    // PLAIN: the same credentials, the password as the client sends it.
    if let Ok((_, _, pw)) = plain_decode(first) {
        assert_eq!(creds.verify_plain(&pw), pw == PASSWORD, "PLAIN {pw:?}");
    }

    let mut s = ScramServer::new(hash, Some(SNONCE));
    if out_of_order {
        assert!(
            s.client_final(fin).is_err(),
            "client-final before client-first"
        );
        return;
    }
    let Ok(_user) = s.client_first(first) else {
        return;
    };
    assert!(
        s.client_first(first).is_err(),
        "a second client-first was accepted"
    );
    let server_first = String::from_utf8(s.server_first(&creds)).expect("server-first is UTF-8");
    // client-first was accepted, so it is UTF-8.
    let first = std::str::from_utf8(first).expect("accepted client-first is UTF-8");
    let (gs2, bare) = split_first(first).expect("accepted client-first has a GS2 header");
    let nonce = format!(
        "{}{SNONCE}",
        cnonce(bare).expect("accepted client-first has a nonce")
    );
    // With credentials of another hash the exchange is spoiled (see
    // `ScramServer::server_first`): the reply then carries no client nonce.
    assert!(
        other_hash || server_first.starts_with(&format!("r={nonce},")),
        "server-first {server_first:?} does not carry the combined nonce"
    );

    let Ok(fin) = std::str::from_utf8(fin) else {
        assert!(s.client_final(fin).is_err());
        return;
    };
    // The message the server gets, and the one part the RFC signs.
    let (message, without_proof) = if proof_mode == 0 {
        let without = fin.rsplit_once(",p=").map(|(w, _)| w.to_owned());
        (fin.to_owned(), without)
    } else {
        let auth = format!("{bare},{server_first},{fin}");
        let password = if proof_mode == 2 { "pencil!" } else { PASSWORD };
        let (mut proof, _) = rfc_proof(hash, password, iterations, &auth);
        if proof_mode == 3 {
            let at = usize::from(flags) % proof.len();
            proof[at] ^= 1 << (flags % 8);
        }
        (format!("{fin},p={}", b64(&proof)), Some(fin.to_owned()))
    };
    let result = s.client_final(message.as_bytes());
    assert!(
        s.client_final(message.as_bytes()).is_err(),
        "the exchange must be over"
    );

    let canonical = format!("c={},r={nonce}", b64(gs2.as_bytes()));
    match result {
        Err(_) => {
            assert!(
                !(proof_mode == 1 && !other_hash && simple_first(first) && fin == canonical),
                "right proof refused: {first:?} / {fin:?}"
            );
        }
        Ok(v) => {
            assert!(!other_hash, "accepted with credentials of another hash");
            assert!(
                proof_mode == 0 || proof_mode == 1,
                "accepted a wrong proof (mode {proof_mode})"
            );
            let w = without_proof.expect("accepted a client-final without a proof");
            let auth = format!("{bare},{server_first},{w}");
            let (right, server_sig) = rfc_proof(hash, PASSWORD, iterations, &auth);
            let sent = message
                .rsplit_once(",p=")
                .and_then(|(_, p)| unb64(p))
                .expect("accepted a proof that is not base64");
            assert_eq!(sent, right, "accepted a proof that is not the right one");
            assert_eq!(
                String::from_utf8_lossy(&v),
                format!("v={}", b64(&server_sig)),
                "wrong server signature"
            );
            assert!(
                w == canonical || w.starts_with(&format!("{canonical},")),
                "accepted {w:?}: channel binding or nonce is not what was agreed ({canonical:?})"
            );
        }
    }
});
