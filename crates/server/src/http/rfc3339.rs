//! Timestamps in responses, written as chrono writes them (RFC 3339 in UTC,
//! `Z`, the fraction in 0, 3, 6 or 9 digits as needed) but straight into a
//! buffer. chrono's own `Serialize` goes through `Display` and serde_json's
//! `collect_str`, which escapes its output a piece at a time: under
//! callgrind, about 2,600 instructions a timestamp against about 700 here,
//! in a credential whose whole serialization took about 21,000. Years
//! outside 0000–9999 (the server never writes one: its timestamps come
//! from the clock) go to chrono.
//!
//! Use with `#[serde(serialize_with = "rfc3339::utc")]`, or
//! `rfc3339::option` for an `Option`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// The longest text written here: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const LONGEST: usize = 30;

pub fn utc<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; LONGEST];
    match write(at, &mut buf) {
        Some(len) => s.serialize_str(std::str::from_utf8(&buf[..len]).expect("ASCII digits")),
        None => serde::Serialize::serialize(at, s),
    }
}

pub fn option<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    /// `utc` as a value, for `serialize_some`.
    struct Written<'a>(&'a DateTime<Utc>);
    impl serde::Serialize for Written<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            utc(self.0, s)
        }
    }
    match at {
        Some(at) => s.serialize_some(&Written(at)),
        None => s.serialize_none(),
    }
}

/// Writes `at` into `buf`; its length, or `None` for a year this does not
/// write.
fn write(at: &DateTime<Utc>, buf: &mut [u8; LONGEST]) -> Option<usize> {
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let mut nano = at.nanosecond();
    let mut second = at.second();
    // chrono keeps a leap second as nanoseconds past 1,000,000,000.
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    let mut out = Out { buf, len: 0 };
    out.digits(year, 4);
    out.byte(b'-');
    out.digits(at.month(), 2);
    out.byte(b'-');
    out.digits(at.day(), 2);
    out.byte(b'T');
    out.digits(at.hour(), 2);
    out.byte(b':');
    out.digits(at.minute(), 2);
    out.byte(b':');
    out.digits(second, 2);
    if nano != 0 {
        out.byte(b'.');
        if nano.is_multiple_of(1_000_000) {
            out.digits(nano / 1_000_000, 3);
        } else if nano.is_multiple_of(1_000) {
            out.digits(nano / 1_000, 6);
        } else {
            out.digits(nano, 9);
        }
    }
    out.byte(b'Z');
    Some(out.len)
}

struct Out<'a> {
    buf: &'a mut [u8; LONGEST],
    len: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// `value`'s last `width` decimal digits, zero-padded.
    fn digits(&mut self, value: u32, width: u32) {
        for place in (0..width).rev() {
            self.byte(b'0' + (value / 10u32.pow(place) % 10) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use serde::Serialize;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "utc")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    fn same_as_chrono(at: DateTime<Utc>) {
        for maybe in [Some(at), None] {
            let ours = serde_json::to_string(&Ours { at, maybe }).unwrap();
            let chronos = serde_json::to_string(&Chronos { at, maybe }).unwrap();
            assert_eq!(ours, chronos, "{at:?}");
        }
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let ms = |v: i64| Utc.timestamp_millis_opt(v).unwrap();
        // Whole seconds, milliseconds, and the edges of the four-digit years.
        for v in [
            0,
            1,
            999,
            1_000,
            1_700_000_000_000,
            1_700_000_000_123,
            253_402_300_799_999,
        ] {
            same_as_chrono(ms(v));
        }
        // A spread of instants since 1970, each with every kind of fraction.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 253_402_300_800) as i64;
            for nanos in [0, 5_000_000, 120_000, 7, (x >> 34) as u32 % 1_000_000_000] {
                same_as_chrono(Utc.timestamp_opt(secs, nanos).unwrap());
            }
        }
        // Year 0, a leap second, and years chrono writes with a sign.
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        same_as_chrono(date(0, 1, 1).and_hms_opt(0, 0, 0).unwrap().and_utc());
        same_as_chrono(
            date(7, 3, 9)
                .and_hms_micro_opt(1, 2, 3, 4)
                .unwrap()
                .and_utc(),
        );
        same_as_chrono(
            date(999, 12, 31)
                .and_hms_nano_opt(0, 0, 59, 1)
                .unwrap()
                .and_utc(),
        );
        for nano in [1_000_000_000, 1_000_000_007, 1_000_004_000] {
            let leap = date(2016, 12, 31).and_hms_nano_opt(23, 59, 59, nano);
            same_as_chrono(leap.unwrap().and_utc());
        }
        same_as_chrono(
            date(2016, 12, 31)
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        );
        same_as_chrono(date(10_000, 1, 1).and_hms_opt(0, 0, 0).unwrap().and_utc());
        same_as_chrono(
            date(-1, 12, 31)
                .and_hms_milli_opt(23, 59, 59, 1)
                .unwrap()
                .and_utc(),
        );
    }
}
