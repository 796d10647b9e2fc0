//! Sealed export files: a credential set sealed with a passphrase, readable
//! by any Latchkey installation that is given the passphrase (tenant- and
//! master-key-neutral). The key is derived with Argon2id; the content is
//! sealed with XChaCha20-Poly1305, and the whole header is the associated
//! data, so any change to it is caught.
//!
//! Layout (format 2): `LKEX` ‖ version (2) ‖ m_cost KiB (u32 BE) ‖ t_cost
//! (u32 BE) ‖ lanes (u32 BE) ‖ salt (16) ‖ key check (32) ‖ sealed length
//! (u64 BE) ‖ nonce (24) ‖ ciphertext ‖ tag (16).
//!
//! The key check (SHA-256 of a label and the derived key) tells a wrong
//! passphrase from a changed file, and the sealed length tells a file cut
//! short from one changed after export. Format 1 (no check, no length) is
//! still read, with one error for both.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"LKEX";
const VERSION: u8 = 2;
const SALT: usize = 16;
const NONCE: usize = 24;
const TAG: usize = 16;
const CHECK: usize = 32;
/// Magic, version, the three KDF parameters and the salt: where format 1's
/// header ends.
const PARAMS_END: usize = 4 + 1 + 12 + SALT;
const HEADER_V1: usize = PARAMS_END;
const HEADER: usize = PARAMS_END + CHECK + 8;
/// The OWASP minimum for Argon2id (19 MiB, 2 passes): seconds for an
/// attacker per guess on a laptop-sized budget, well under one for us.
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const LANES: u32 = 1;
/// Parameters above these are refused on read, so a crafted file cannot make
/// an import spend unbounded memory or time.
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("this is not a Latchkey export file")]
    NotAnExport,
    #[error("this export file was written by a newer Latchkey (format {0})")]
    UnsupportedVersion(u8),
    #[error("the export file is cut short")]
    Truncated,
    #[error("the passphrase is wrong")]
    WrongPassphrase,
    #[error("the export file was changed after it was exported")]
    Tampered,
    /// Format 1 files cannot tell the two apart.
    #[error("the passphrase is wrong, or the file was changed after it was exported")]
    WrongPassphraseOrTampered,
    #[error("the export file's key parameters are out of range")]
    BadParameters,
    #[error("random number generator failed")]
    Random,
}

fn derive(
    passphrase: &SecretString,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, ExportError> {
    let params = Params::new(m, t, p, Some(32)).map_err(|_| ExportError::BadParameters)?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, key.as_mut())
        .map_err(|_| ExportError::BadParameters)?;
    Ok(key)
}

/// A value that shows whether a passphrase gave the right key, and says
/// nothing else about the key.
fn key_check(key: &[u8; 32]) -> [u8; CHECK] {
    let mut h = Sha256::new();
    h.update(b"latchkey export key check v2");
    h.update(key);
    h.finalize().into()
}

/// Seals `content` with a key derived from `passphrase`.
pub fn seal(passphrase: &SecretString, content: &[u8]) -> Result<Vec<u8>, ExportError> {
    let mut salt = [0u8; SALT];
    let mut nonce = [0u8; NONCE];
    getrandom::getrandom(&mut salt).map_err(|_| ExportError::Random)?;
    getrandom::getrandom(&mut nonce).map_err(|_| ExportError::Random)?;
    let key = derive(passphrase, &salt, M_COST_KIB, T_COST, LANES)?;
    let mut out = Vec::with_capacity(HEADER + NONCE + content.len() + TAG);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for v in [M_COST_KIB, T_COST, LANES] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&key_check(&key));
    out.extend_from_slice(&((content.len() + TAG) as u64).to_be_bytes());
    let sealed = XChaCha20Poly1305::new(key.as_ref().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: content,
                aad: &out[..HEADER],
            },
        )
        .map_err(|_| ExportError::Random)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a sealed export; each way a file can be wrong has its own error.
pub fn open(passphrase: &SecretString, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, ExportError> {
    let head = file.len().min(MAGIC.len());
    if file[..head] != MAGIC[..head] || file.is_empty() {
        return Err(ExportError::NotAnExport);
    }
    if file.len() < PARAMS_END {
        return Err(ExportError::Truncated);
    }
    let version = file[4];
    let header = match version {
        1 => HEADER_V1,
        VERSION => HEADER,
        v => return Err(ExportError::UnsupportedVersion(v)),
    };
    if file.len() < header + NONCE + TAG {
        return Err(ExportError::Truncated);
    }
    let word = |at: usize| u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let (m, t, p) = (word(5), word(9), word(13));
    if m > MAX_M_COST_KIB || t > MAX_T_COST || p == 0 || p > 16 {
        return Err(ExportError::BadParameters);
    }
    let salt = &file[17..PARAMS_END];
    let key = derive(passphrase, salt, m, t, p)?;
    let sealed = &file[header + NONCE..];
    let failure = if version == 1 {
        ExportError::WrongPassphraseOrTampered
    } else {
        let stored = &file[PARAMS_END..PARAMS_END + CHECK];
        if !bool::from(key_check(&key).ct_eq(stored)) {
            return Err(ExportError::WrongPassphrase);
        }
        let length = u64::from_be_bytes(file[PARAMS_END + CHECK..HEADER].try_into().expect("8"));
        if (sealed.len() as u64) < length {
            return Err(ExportError::Truncated);
        }
        if sealed.len() as u64 > length {
            return Err(ExportError::Tampered);
        }
        ExportError::Tampered
    };
    XChaCha20Poly1305::new(key.as_ref().into())
        .decrypt(
            XNonce::from_slice(&file[header..header + NONCE]),
            Payload {
                msg: sealed,
                aad: &file[..header],
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn an_export_opens_with_its_passphrase_only() {
        let file = seal(&pass("correct horse battery"), b"{\"credentials\":[]}").unwrap();
        assert_eq!(
            open(&pass("correct horse battery"), &file)
                .unwrap()
                .as_slice(),
            b"{\"credentials\":[]}"
        );
        assert_eq!(
            open(&pass("wrong horse battery"), &file).unwrap_err(),
            ExportError::WrongPassphrase
        );
    }

    #[test]
    fn each_kind_of_bad_file_has_its_own_error() {
        let p = pass("correct horse battery");
        let file = seal(&p, b"content").unwrap();
        for other in [&b"{\"json\": true}"[..], b"", b"SQLite format 3\0"] {
            assert_eq!(open(&p, other).unwrap_err(), ExportError::NotAnExport);
        }
        for cut in [3, 5, 30, HEADER + NONCE, file.len() - 1] {
            assert_eq!(
                open(&p, &file[..cut]).unwrap_err(),
                ExportError::Truncated,
                "cut at {cut}"
            );
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(open(&p, &longer).unwrap_err(), ExportError::Tampered);
        let mut newer = file.clone();
        newer[4] = 9;
        assert_eq!(
            open(&p, &newer).unwrap_err(),
            ExportError::UnsupportedVersion(9)
        );
        let mut huge = file.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(open(&p, &huge).unwrap_err(), ExportError::BadParameters);
        // Every byte of the body, nonce and length is covered; a changed salt
        // or check makes the passphrase look wrong.
        for at in [HEADER - 1, HEADER + 3, HEADER + NONCE + 2, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            let e = open(&p, &bad).unwrap_err();
            assert!(
                e == ExportError::Tampered || e == ExportError::Truncated,
                "byte {at}: {e:?}"
            );
        }
        for at in [20, PARAMS_END + 1] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            assert_eq!(
                open(&p, &bad).unwrap_err(),
                ExportError::WrongPassphrase,
                "byte {at}"
            );
        }
    }

    #[test]
    fn format_1_files_still_open() {
        // Format 1: header without check and length; the whole header is AAD.
        let p = pass("correct horse battery");
        let salt = [7u8; SALT];
        let nonce = [9u8; NONCE];
        let key = derive(&p, &salt, 64, 1, 1).unwrap();
        let mut file = b"LKEX\x01".to_vec();
        for v in [64u32, 1, 1] {
            file.extend_from_slice(&v.to_be_bytes());
        }
        file.extend_from_slice(&salt);
        let sealed = XChaCha20Poly1305::new(key.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: b"old".as_slice(),
                    aad: &file[..HEADER_V1],
                },
            )
            .unwrap();
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        assert_eq!(open(&p, &file).unwrap().as_slice(), b"old");
        assert_eq!(
            open(&pass("another passphrase"), &file).unwrap_err(),
            ExportError::WrongPassphraseOrTampered
        );
    }
}
