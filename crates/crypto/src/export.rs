//! Sealed export files: a credential set sealed with a passphrase, readable
//! by any Latchkey installation that is given the passphrase (tenant- and
//! master-key-neutral). The key is derived with Argon2id; the content is
//! sealed with XChaCha20-Poly1305, and the whole header (magic, version, KDF
//! parameters, salt) is the associated data, so any change to it is caught.
//!
//! Layout: `LKEX` ‖ version (1) ‖ m_cost KiB (u32 BE) ‖ t_cost (u32 BE) ‖
//! lanes (u32 BE) ‖ salt (16) ‖ nonce (24) ‖ ciphertext ‖ tag (16).

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"LKEX";
const VERSION: u8 = 1;
const SALT: usize = 16;
const NONCE: usize = 24;
const HEADER: usize = 4 + 1 + 12 + SALT;
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

/// Seals `content` with a key derived from `passphrase`.
pub fn seal(passphrase: &SecretString, content: &[u8]) -> Result<Vec<u8>, ExportError> {
    let mut salt = [0u8; SALT];
    let mut nonce = [0u8; NONCE];
    getrandom::getrandom(&mut salt).map_err(|_| ExportError::Random)?;
    getrandom::getrandom(&mut nonce).map_err(|_| ExportError::Random)?;
    let mut out = Vec::with_capacity(HEADER + NONCE + content.len() + 16);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for v in [M_COST_KIB, T_COST, LANES] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    let key = derive(passphrase, &salt, M_COST_KIB, T_COST, LANES)?;
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
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(ExportError::NotAnExport);
    }
    if file.len() < MAGIC.len() + 1 {
        return Err(ExportError::Truncated);
    }
    if file[4] != VERSION {
        return Err(ExportError::UnsupportedVersion(file[4]));
    }
    if file.len() < HEADER + NONCE + 16 {
        return Err(ExportError::Truncated);
    }
    let word = |at: usize| u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let (m, t, p) = (word(5), word(9), word(13));
    if m > MAX_M_COST_KIB || t > MAX_T_COST || p == 0 || p > 16 {
        return Err(ExportError::BadParameters);
    }
    let salt = &file[17..HEADER];
    let nonce = &file[HEADER..HEADER + NONCE];
    let key = derive(passphrase, salt, m, t, p)?;
    XChaCha20Poly1305::new(key.as_ref().into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: &file[HEADER + NONCE..],
                aad: &file[..HEADER],
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| ExportError::WrongPassphraseOrTampered)
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
            ExportError::WrongPassphraseOrTampered
        );
    }

    #[test]
    fn each_kind_of_bad_file_has_its_own_error() {
        let p = pass("correct horse battery");
        let file = seal(&p, b"content").unwrap();
        assert_eq!(
            open(&p, b"{\"json\": true}").unwrap_err(),
            ExportError::NotAnExport
        );
        assert_eq!(open(&p, &file[..30]).unwrap_err(), ExportError::Truncated);
        assert_eq!(
            open(&p, &file[..file.len() - 1]).unwrap_err(),
            ExportError::WrongPassphraseOrTampered
        );
        let mut newer = file.clone();
        newer[4] = 9;
        assert_eq!(
            open(&p, &newer).unwrap_err(),
            ExportError::UnsupportedVersion(9)
        );
        let mut huge = file.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(open(&p, &huge).unwrap_err(), ExportError::BadParameters);
        // A changed salt or body byte is caught by the AEAD.
        for at in [20, HEADER + NONCE + 2] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            assert_eq!(
                open(&p, &bad).unwrap_err(),
                ExportError::WrongPassphraseOrTampered,
                "byte {at}"
            );
        }
    }
}
