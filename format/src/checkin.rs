//! Signed check-ins (`docs/FORMAT.md` §10.8). A device that enrolled a key pair
//! (`deltaroot-agent enroll`) signs each check with it: the server then counts its reports
//! as signed, and records no check-in for it that is not validly signed, so that a forged
//! report can neither stop a rollout counting signed reports only nor hide a real failure.

use crate::sign::{PublicKey, SecretKey};

/// How far a signed check's time may be from the server's, in seconds.
pub const CHECKIN_SKEW_SECS: u64 = 300;

/// What a signed check-in says: the check's query, and when it was made.
#[derive(Clone, Copy, Debug)]
pub struct CheckIn<'a> {
    pub product: &'a str,
    pub channel: &'a str,
    pub device: &'a str,
    pub current: Option<&'a str>,
    pub result: Option<&'a str>,
    pub attempted: Option<&'a str>,
    pub pin: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

impl CheckIn<'_> {
    /// The exact bytes that are signed: a fixed prefix, then each field, absent ones empty,
    /// each followed by a zero byte, then the time in decimal. No field can hold a zero
    /// byte (names and device ids are checked before).
    pub fn message(&self) -> Vec<u8> {
        let mut out = b"deltaroot-checkin-v1\0".to_vec();
        for f in [
            Some(self.product),
            Some(self.channel),
            Some(self.device),
            self.current,
            self.result,
            self.attempted,
            self.pin,
        ] {
            out.extend_from_slice(f.unwrap_or("").as_bytes());
            out.push(0);
        }
        out.extend_from_slice(self.at.to_string().as_bytes());
        out
    }

    /// The signature, as the `sig` query parameter carries it: 128 lower-case hex digits.
    pub fn sign(&self, key: &SecretKey) -> String {
        hex::encode(key.sign(&self.message()))
    }

    /// Whether `sig` (hex) is `key`'s signature of this check-in.
    pub fn verify(&self, key: &PublicKey, sig: &str) -> bool {
        hex::decode(sig).is_ok_and(|s| key.verify(&self.message(), &s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckIn<'static> {
        CheckIn {
            product: "demo",
            channel: "stable",
            device: "d1",
            current: Some("1.0"),
            result: Some("failed"),
            attempted: Some("2.0"),
            pin: None,
            at: 1_700_000_000,
        }
    }

    #[test]
    fn the_message_is_the_documented_bytes_and_any_change_breaks_the_signature() {
        assert_eq!(
            sample().message(),
            b"deltaroot-checkin-v1\0demo\0stable\0d1\x001.0\0failed\x002.0\0\x001700000000"
        );
        let key = SecretKey::from_seed([4; 32]);
        let sig = sample().sign(&key);
        assert_eq!(sig.len(), 128);
        assert!(sample().verify(&key.public(), &sig));
        let ok = CheckIn {
            result: Some("ok"),
            ..sample()
        };
        assert!(!ok.verify(&key.public(), &sig));
        let later = CheckIn {
            at: 1_700_000_001,
            ..sample()
        };
        assert!(!later.verify(&key.public(), &sig));
        assert!(!sample().verify(&SecretKey::from_seed([5; 32]).public(), &sig));
        assert!(!sample().verify(&key.public(), "zz"));
    }
}
