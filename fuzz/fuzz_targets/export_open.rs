//! The export file reader (`crypto::export::open`) on arbitrary bytes with
//! an arbitrary passphrase. Input: byte 0 = passphrase length n, bytes
//! 1..=n the passphrase (lossy UTF-8), the rest the file.
//!
//! The file names its own Argon2 cost (m KiB at bytes 5..9, t at 9..13,
//! big-endian), and `open` accepts up to 1 GiB and 16 passes: far too slow
//! for a fuzzer. So, before calling `open`, in-range costs are folded down
//! (m to m % 257 KiB, t to t % 3), which leaves the small costs of the
//! seeds as they are; out-of-range values are kept, so the range checks are
//! still reached. Everything else of the file is passed as it is.
//!
//! Beyond "never panics": an error's text never shows the passphrase.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

/// The limits `open` enforces (crates/crypto/src/export.rs).
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let passphrase = SecretString::from(String::from_utf8_lossy(&rest[..n]).into_owned());
    let mut file = rest[n..].to_vec();
    if file.len() >= 13 {
        let m = u32::from_be_bytes(file[5..9].try_into().unwrap());
        if m <= MAX_M_COST_KIB {
            file[5..9].copy_from_slice(&(m % 257).to_be_bytes());
        }
        let t = u32::from_be_bytes(file[9..13].try_into().unwrap());
        if t <= MAX_T_COST {
            file[9..13].copy_from_slice(&(t % 3).to_be_bytes());
        }
    }
    match crypto::export::open(&passphrase, &file) {
        Ok(content) => {
            // Only a file sealed with this passphrase opens: its tag covers the
            // content, so it is at most the file less header, nonce and tag.
            assert!(content.len() + 33 + 24 + 16 <= file.len());
        }
        Err(e) => {
            // The leak canary: an error never shows the passphrase. When its
            // text does contain it, the same file opened with another
            // passphrase of the same length must give a text containing it
            // too (the passphrase was only a word of the fixed message).
            use secrecy::ExposeSecret;
            let (text, secret) = (e.to_string(), passphrase.expose_secret());
            if !secret.is_empty() && text.contains(secret) {
                let filler = ['\u{1}', '\u{2}']
                    .into_iter()
                    .find(|c| !secret.contains(*c))
                    .expect("one of two characters is not in the passphrase");
                let other = SecretString::from(filler.to_string().repeat(secret.chars().count()));
                let other_text = crypto::export::open(&other, &file)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(other_text.contains(secret), "an export error shows the passphrase: {text:?}");
            }
        }
    }
});
