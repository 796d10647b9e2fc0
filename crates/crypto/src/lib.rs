//! Envelope encryption for Latchkey. It owns the master key (KEK), the
//! per-credential data keys (DEKs) and the sealed format of every secret; it
//! must not know about storage or HTTP.
//!
//! Format of every sealed value: `version (1 byte) ‖ nonce (24 bytes) ‖
//! XChaCha20-Poly1305 ciphertext ‖ tag`. The associated data is always built by
//! [`Aad`], which binds tenant, credential and field, so a ciphertext moved to
//! another row or field fails to open. Random 192-bit nonces make nonce reuse
//! a non-concern for the number of messages one key will ever seal.

pub mod export;

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use base64::{engine::general_purpose::STANDARD, Engine};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Wrong key, tampered bytes, or a ciphertext that belongs elsewhere: the
    /// AEAD cannot tell these apart, and neither do we.
    #[error("sealed value failed to open: wrong key, tampered data, or moved to another record")]
    Open,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("random number generator failed")]
    Random,
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|_| CryptoError::Random)?;
    Ok(b)
}

/// Fills a fresh buffer with `n` random bytes (tokens, ids of keys).
pub fn random_bytes(n: usize) -> Result<Vec<u8>, CryptoError> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).map_err(|_| CryptoError::Random)?;
    Ok(b)
}

/// What a sealed value is bound to. Each purpose has its own prefix so a
/// wrapped data key can never be opened as a secret and the other way round.
pub enum Aad<'a> {
    /// A credential's data key, wrapped by the master key.
    DataKey {
        tenant: &'a str,
        credential: &'a str,
    },
    /// One secret field of a credential, sealed by its data key.
    Secret {
        tenant: &'a str,
        credential: &'a str,
        field: &'a str,
    },
    /// The value that proves at start-up that the master key matches the data.
    KeyCheck,
}

impl Aad<'_> {
    fn bytes(&self) -> Vec<u8> {
        // Length-prefixed parts: no two different tuples give the same bytes.
        fn encode(parts: &[&str]) -> Vec<u8> {
            let mut out = Vec::with_capacity(parts.iter().map(|p| 4 + p.len()).sum());
            for p in parts {
                out.extend_from_slice(&(p.len() as u32).to_be_bytes());
                out.extend_from_slice(p.as_bytes());
            }
            out
        }
        match self {
            Aad::DataKey { tenant, credential } => encode(&["latchkey/dek/v1", tenant, credential]),
            Aad::Secret {
                tenant,
                credential,
                field,
            } => encode(&["latchkey/secret/v1", tenant, credential, field]),
            Aad::KeyCheck => encode(&["latchkey/key-check/v1"]),
        }
    }
}

fn seal_with(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &Aad) -> Result<Vec<u8>, CryptoError> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = random::<NONCE_LEN>()?;
    let aad = aad.bytes();
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Malformed)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(
    key: &[u8; KEY_LEN],
    sealed: &[u8],
    aad: &Aad,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
        return Err(CryptoError::Malformed);
    }
    let cipher = XChaCha20Poly1305::new(key.into());
    let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
    let aad = aad.bytes();
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Open)
}

/// The key-encryption key. Never printed; identified by its fingerprint.
pub struct MasterKey {
    key: SecretBox<[u8; KEY_LEN]>,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

/// Where the master key came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    ExistingFile,
    CreatedFile,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        let digest = Sha256::new_with_prefix(b"latchkey master key fingerprint v1\0")
            .chain_update(bytes)
            .finalize();
        let id = format!("kek_{}", hex::encode(&digest[..8]));
        MasterKey {
            key: SecretBox::new(Box::new(bytes)),
            id,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Result<MasterKey, CryptoError> {
        Ok(MasterKey::from_bytes(random()?))
    }

    /// Parses the base64 form used by `LATCHKEY_MASTER_KEY` and the key file.
    pub fn from_base64(text: &str) -> Result<MasterKey, CryptoError> {
        let raw = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| CryptoError::MasterKey("is not valid base64".into()))?,
        );
        let bytes: [u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| {
            CryptoError::MasterKey(format!(
                "must be {KEY_LEN} bytes, base64-encoded (got {})",
                raw.len()
            ))
        })?;
        Ok(MasterKey::from_bytes(bytes))
    }

    /// The key in base64, as `LATCHKEY_MASTER_KEY` takes it.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.expose_secret()))
    }

    /// The key's id: a fingerprint that identifies it without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals the key-check value stored with the data at first start.
    pub fn seal_key_check(&self) -> Result<Vec<u8>, CryptoError> {
        seal_with(self.key.expose_secret(), b"latchkey", &Aad::KeyCheck)
    }

    /// Whether this key opens the stored key-check value.
    pub fn opens_key_check(&self, sealed: &[u8]) -> bool {
        open_with(self.key.expose_secret(), sealed, &Aad::KeyCheck).is_ok()
    }

    /// A fresh data key for one credential, and its wrapped (stored) form.
    pub fn new_data_key(
        &self,
        tenant: &str,
        credential: &str,
    ) -> Result<(DataKey, Vec<u8>), CryptoError> {
        let dek = DataKey(SecretBox::new(Box::new(random()?)));
        let wrapped = seal_with(
            self.key.expose_secret(),
            dek.0.expose_secret(),
            &Aad::DataKey { tenant, credential },
        )?;
        Ok((dek, wrapped))
    }

    /// Moves a wrapped data key from this key to `to`: the data key itself
    /// (and so every secret it sealed) stays the same.
    pub fn rewrap_data_key(
        &self,
        wrapped: &[u8],
        tenant: &str,
        credential: &str,
        to: &MasterKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let dek = self.unwrap_data_key(wrapped, tenant, credential)?;
        seal_with(
            to.key.expose_secret(),
            dek.0.expose_secret(),
            &Aad::DataKey { tenant, credential },
        )
    }

    /// Opens a wrapped data key.
    pub fn unwrap_data_key(
        &self,
        wrapped: &[u8],
        tenant: &str,
        credential: &str,
    ) -> Result<DataKey, CryptoError> {
        let raw = open_with(
            self.key.expose_secret(),
            wrapped,
            &Aad::DataKey { tenant, credential },
        )?;
        let bytes: [u8; KEY_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey(SecretBox::new(Box::new(bytes))))
    }
}

/// Every master key a server holds: the active one, which wraps new data
/// keys, and older ones that rows still use while a rotation re-wraps them.
/// Which key is active is recorded with the data, not here, so that every
/// replica agrees. Written as one base64 key per line (`#` starts a comment);
/// `LATCHKEY_MASTER_KEY` takes the same keys separated by commas.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Vec<Arc<MasterKey>>,
}

impl KeyRing {
    pub fn new(keys: Vec<Arc<MasterKey>>) -> KeyRing {
        let mut ring = KeyRing::default();
        for k in keys {
            ring = ring.with(k);
        }
        ring
    }

    /// Parses a key file or the environment variable's value.
    pub fn parse(text: &str) -> Result<KeyRing, CryptoError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for part in line.split([',', ' ', '\t']).filter(|p| !p.is_empty()) {
                let key = MasterKey::from_base64(part).map_err(|e| match e {
                    CryptoError::MasterKey(m) => {
                        CryptoError::MasterKey(format!("line {}: {m}", n + 1))
                    }
                    other => other,
                })?;
                keys.push(Arc::new(key));
            }
        }
        if keys.is_empty() {
            return Err(CryptoError::MasterKey("holds no key".into()));
        }
        Ok(KeyRing::new(keys))
    }

    /// The keys from `env_value` if given, else from the key file, creating
    /// the file (mode 0600) with one fresh key when it does not exist.
    pub fn load_or_create(
        env_value: Option<&SecretString>,
        key_file: &Path,
    ) -> Result<(KeyRing, KeySource), CryptoError> {
        if let Some(v) = env_value {
            let ring = KeyRing::parse(v.expose_secret())
                .map_err(|e| CryptoError::MasterKey(format!("LATCHKEY_MASTER_KEY {e}")))?;
            return Ok((ring, KeySource::Environment));
        }
        match KeyRing::read_file(key_file)? {
            Some(ring) => Ok((ring, KeySource::ExistingFile)),
            None => {
                let ring = KeyRing::new(vec![Arc::new(MasterKey::generate()?)]);
                write_private_file(key_file, ring.to_text().as_bytes()).map_err(|e| {
                    CryptoError::MasterKey(format!(
                        "cannot create key file {}: {e}",
                        key_file.display()
                    ))
                })?;
                Ok((ring, KeySource::CreatedFile))
            }
        }
    }

    /// The ring in `key_file`, or `None` when there is no such file.
    pub fn read_file(key_file: &Path) -> Result<Option<KeyRing>, CryptoError> {
        match fs::read_to_string(key_file) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                KeyRing::parse(&text).map(Some).map_err(|e| {
                    CryptoError::MasterKey(format!("key file {} {e}", key_file.display()))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CryptoError::MasterKey(format!(
                "cannot read key file {}: {e}",
                key_file.display()
            ))),
        }
    }

    /// Replaces `key_file` with this ring, atomically: a new private file
    /// is written and synced beside it, then renamed over it.
    pub fn write_file(&self, key_file: &Path) -> std::io::Result<()> {
        let tmp = key_file.with_extension("key.new");
        let _ = fs::remove_file(&tmp);
        write_private_file(&tmp, self.to_text().as_bytes())?;
        fs::rename(&tmp, key_file)?;
        if let Some(dir) = key_file.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn to_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::new());
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&k.to_base64());
        }
        out
    }

    pub fn keys(&self) -> &[Arc<MasterKey>] {
        &self.keys
    }

    pub fn get(&self, id: &str) -> Option<&Arc<MasterKey>> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// This ring with `key` added (once).
    pub fn with(&self, key: Arc<MasterKey>) -> KeyRing {
        let mut keys = self.keys.clone();
        if !keys.iter().any(|k| k.id() == key.id()) {
            keys.push(key);
        }
        KeyRing { keys }
    }

    /// This ring without the key `id`.
    pub fn without(&self, id: &str) -> KeyRing {
        KeyRing {
            keys: self.keys.iter().filter(|k| k.id() != id).cloned().collect(),
        }
    }
}

/// Writes a file readable and writable by its owner only, atomically.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One credential's data key. Zeroed on drop.
pub struct DataKey(SecretBox<[u8; KEY_LEN]>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl DataKey {
    pub fn seal(
        &self,
        tenant: &str,
        credential: &str,
        field: &str,
        secret: &SecretString,
    ) -> Result<Vec<u8>, CryptoError> {
        seal_with(
            self.0.expose_secret(),
            secret.expose_secret().as_bytes(),
            &Aad::Secret {
                tenant,
                credential,
                field,
            },
        )
    }

    pub fn open(
        &self,
        tenant: &str,
        credential: &str,
        field: &str,
        sealed: &[u8],
    ) -> Result<SecretString, CryptoError> {
        let raw = open_with(
            self.0.expose_secret(),
            sealed,
            &Aad::Secret {
                tenant,
                credential,
                field,
            },
        )?;
        let text = std::str::from_utf8(&raw).map_err(|_| CryptoError::Malformed)?;
        Ok(SecretString::from(text.to_string()))
    }
}

/// The last four characters of a secret, shown so a person can tell keys
/// apart; `None` for secrets too short for that to be safe.
pub fn last4(secret: &SecretString) -> Option<String> {
    let s = secret.expose_secret();
    let n = s.chars().count();
    (n >= 16).then(|| s.chars().skip(n - 4).collect())
}

/// SHA-256 of a management token: high-entropy tokens need no slow hash.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_string())
    }

    /// The associated data of every stored ciphertext: these bytes may
    /// never change, or nothing sealed before opens again.
    #[test]
    fn the_associated_data_is_each_part_after_its_big_endian_length() {
        let secret = Aad::Secret {
            tenant: "ten_a",
            credential: "cred_1",
            field: "api_key",
        };
        let mut want = Vec::new();
        for p in ["latchkey/secret/v1", "ten_a", "cred_1", "api_key"] {
            want.extend_from_slice(&(p.len() as u32).to_be_bytes());
            want.extend_from_slice(p.as_bytes());
        }
        assert_eq!(secret.bytes(), want);
        assert_eq!(
            Aad::DataKey {
                tenant: "t",
                credential: "c"
            }
            .bytes(),
            b"\0\0\0\x0flatchkey/dek/v1\0\0\0\x01t\0\0\0\x01c"
        );
        assert_eq!(Aad::KeyCheck.bytes(), b"\0\0\0\x15latchkey/key-check/v1");
    }

    #[test]
    fn a_secret_round_trips_under_its_own_binding() {
        let kek = MasterKey::generate().unwrap();
        let (dek, wrapped) = kek.new_data_key("ten_a", "cred_1").unwrap();
        let sealed = dek
            .seal("ten_a", "cred_1", "api_key", &s("sk_live_secret"))
            .unwrap();
        let dek2 = kek.unwrap_data_key(&wrapped, "ten_a", "cred_1").unwrap();
        assert_eq!(
            dek2.open("ten_a", "cred_1", "api_key", &sealed)
                .unwrap()
                .expose_secret(),
            "sk_live_secret"
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_credential_or_field_fails_to_open() {
        let kek = MasterKey::generate().unwrap();
        let (dek, wrapped) = kek.new_data_key("ten_a", "cred_1").unwrap();
        let sealed = dek.seal("ten_a", "cred_1", "api_key", &s("x")).unwrap();
        assert!(matches!(
            dek.open("ten_a", "cred_2", "api_key", &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            dek.open("ten_b", "cred_1", "api_key", &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            dek.open("ten_a", "cred_1", "webhook_secret", &sealed),
            Err(CryptoError::Open)
        ));
        assert!(kek.unwrap_data_key(&wrapped, "ten_a", "cred_2").is_err());
        // Another credential's data key does not open it either.
        let (other, _) = kek.new_data_key("ten_a", "cred_2").unwrap();
        assert!(other.open("ten_a", "cred_1", "api_key", &sealed).is_err());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let kek = MasterKey::generate().unwrap();
        let (dek, _) = kek.new_data_key("t", "c").unwrap();
        let sealed = dek.seal("t", "c", "f", &s("value")).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(dek.open("t", "c", "f", &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn the_wrong_master_key_does_not_open_the_key_check() {
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        let check = a.seal_key_check().unwrap();
        assert!(a.opens_key_check(&check));
        assert!(!b.opens_key_check(&check));
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (r1, src1) = KeyRing::load_or_create(None, &path).unwrap();
        assert_eq!(src1, KeySource::CreatedFile);
        assert_eq!(r1.keys().len(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (r2, src2) = KeyRing::load_or_create(None, &path).unwrap();
        assert_eq!(src2, KeySource::ExistingFile);
        assert_eq!(r1.keys()[0].id(), r2.keys()[0].id());
        let env = s(&STANDARD.encode([7u8; 32]));
        let (r3, src3) = KeyRing::load_or_create(Some(&env), &path).unwrap();
        assert_eq!(src3, KeySource::Environment);
        assert_ne!(r3.keys()[0].id(), r1.keys()[0].id());
        assert!(MasterKey::from_base64("c2hvcnQ=")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
    }

    #[test]
    fn a_ring_holds_several_keys_and_is_rewritten_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (STANDARD.encode([1u8; 32]), STANDARD.encode([2u8; 32]));
        let ring = KeyRing::parse(&format!("# rotated\n{a}\n\n{b} # new\n{a}\n")).unwrap();
        assert_eq!(ring.keys().len(), 2, "a repeated key counts once");
        let env = KeyRing::parse(&format!("{a},{b}")).unwrap();
        assert_eq!(env.keys()[1].id(), ring.keys()[1].id());
        let err = KeyRing::parse(&format!("{a}\nnot-base64"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(KeyRing::parse("# nothing\n").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        ring.write_file(&path).unwrap();
        ring.without(ring.keys()[0].id()).write_file(&path).unwrap();
        let back = KeyRing::read_file(&path).unwrap().unwrap();
        assert_eq!(back.keys().len(), 1);
        assert_eq!(back.keys()[0].id(), ring.keys()[1].id());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        assert!(KeyRing::read_file(&dir.path().join("none"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_rewrapped_data_key_opens_the_same_secrets_under_the_new_key_only() {
        let (old, new) = (
            MasterKey::generate().unwrap(),
            MasterKey::generate().unwrap(),
        );
        let (dek, wrapped) = old.new_data_key("t", "c").unwrap();
        let sealed = dek.seal("t", "c", "api_key", &s("sk_value")).unwrap();
        let moved = old.rewrap_data_key(&wrapped, "t", "c", &new).unwrap();
        assert!(old.unwrap_data_key(&moved, "t", "c").is_err());
        let back = new.unwrap_data_key(&moved, "t", "c").unwrap();
        assert_eq!(
            back.open("t", "c", "api_key", &sealed)
                .unwrap()
                .expose_secret(),
            "sk_value"
        );
        assert!(
            new.rewrap_data_key(&wrapped, "t", "c", &old).is_err(),
            "only the wrapping key can move it"
        );
        assert!(old.rewrap_data_key(&wrapped, "t", "other", &new).is_err());
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let kek = MasterKey::from_bytes([0xAB; 32]);
        let (dek, _) = kek.new_data_key("t", "c").unwrap();
        assert!(!format!("{kek:?}{dek:?}").to_lowercase().contains("abab"));
    }
}
