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
    if let Ok(content) = crypto::export::open(&passphrase, &file) {
        // Only a file sealed with this passphrase opens: its tag covers the
        // content, so it is at most the file less header, nonce and tag.
        assert!(content.len() + 33 + 24 + 16 <= file.len());
    }
});
