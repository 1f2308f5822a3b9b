//! Signed, expiring answers to a device's check (`docs/FORMAT.md`, "Signed answers").
//!
//! The server never holds a release key. It holds an *online key* instead, and the release
//! key delegates to it: a [`Delegation`] statement, signed by the release key at publish,
//! names the product and the online key. Every check answer is an [`Answer`] signed by the
//! online key (or by a release key itself): what the channel offers, the channel's state time
//! and the downgrade statement in force, issued at a time and valid until another.
//!
//! A device takes an answer only through [`TrustedAnswer::verify`] and
//! [`TrustedAnswer::accept`]: signed by a trusted key or by a key a trusted key delegated
//! to, about the product, channel and version it asked about, not expired, and not older
//! than the newest it has seen ([`Freshness`]). What it acts on is the signed bytes alone,
//! never the JSON around them.

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::api::{CheckResponse, DelegationOffer, DowngradeOffer, SignedAnswer, UpdateOffer};
use crate::error::Error;
use crate::hash::Hash;
use crate::name::Name;
use crate::sign::{PublicKey, SecretKey};
use crate::statement::{decode_b64, name, refused, KeyStatement};
use crate::wire::{put_bytes, put_varint, Reader, WireError};

/// First bytes of a delegation statement; the last byte is the format version.
pub const DELEGATION_MAGIC: &[u8; 8] = b"DRDELEG1";
/// First bytes of a signed answer; the last byte is the format version.
pub const ANSWER_MAGIC: &[u8; 8] = b"DRANSWR1";
/// Largest delegation accepted: magic, a name, a key, the time.
pub const MAX_DELEGATION_BYTES: usize = crate::statement::MAX_KEY_STATEMENT_BYTES;
/// Largest answer accepted: magic, five names, flags, a hash, three varints, three times.
pub const MAX_ANSWER_BYTES: usize = 8 + 5 * 65 + 1 + 32 + 3 * 10 + 24;

const PAUSED: u8 = 1;
const PACED: u8 = 2;
const OFFER: u8 = 4;
const DOWNGRADE: u8 = 8;

fn malformed(what: &'static str) -> impl Fn(WireError) -> Error {
    move |e| refused(what, format!("malformed: {e}"))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn optional_name(
    r: &mut Reader<'_>,
    what: &'static str,
    field: &'static str,
) -> Result<Option<Name>, Error> {
    let b = r.bytes(64, field).map_err(malformed(what))?;
    if b.is_empty() {
        return Ok(None);
    }
    let s = std::str::from_utf8(b).map_err(|_| refused(what, format!("{field} is not UTF-8")))?;
    Name::new(field, s).map(Some)
}

/// "The server's online key `key` may sign answers about `product`": signed by the
/// product's release key when a release is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub product: Name,
    pub key: PublicKey,
    /// Seconds since the Unix epoch when it was signed. A device that has seen a delegation
    /// refuses one issued before it: a new delegation revokes the key of the old one.
    pub issued: u64,
}

impl Delegation {
    const WHAT: &'static str = "delegation statement";

    fn statement(&self) -> KeyStatement {
        KeyStatement {
            product: self.product.clone(),
            key: self.key.clone(),
            issued: self.issued,
        }
    }

    fn from_statement(s: KeyStatement) -> Delegation {
        Delegation {
            product: s.product,
            key: s.key,
            issued: s.issued,
        }
    }

    /// The exact bytes that are signed.
    pub fn encode(&self) -> Vec<u8> {
        self.statement().encode(DELEGATION_MAGIC)
    }

    pub fn decode(bytes: &[u8]) -> Result<Delegation, Error> {
        KeyStatement::decode(DELEGATION_MAGIC, Self::WHAT, bytes).map(Self::from_statement)
    }

    /// Signs it with a release key, in the form API bodies carry.
    pub fn sign(&self, key: &SecretKey) -> DelegationOffer {
        self.statement().sign(DELEGATION_MAGIC, key)
    }

    /// Decodes an API body's delegation and checks it was signed by one of `trusted`.
    pub fn verify(offer: &DelegationOffer, trusted: &[PublicKey]) -> Result<Delegation, Error> {
        KeyStatement::verify(DELEGATION_MAGIC, Self::WHAT, offer, trusted)
            .map(|(s, _)| Self::from_statement(s))
    }
}

fn key_ids(keys: &[PublicKey]) -> String {
    keys.iter()
        .map(PublicKey::id)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the server answers a check, as it signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub product: Name,
    pub channel: Name,
    /// The version the device said it runs (none for a device with nothing): an answer is
    /// only good for the question it answers.
    pub current: Option<Name>,
    pub latest: Option<Name>,
    pub offer: Option<Offer>,
    pub paused: bool,
    pub paced: bool,
    pub next_check_secs: u64,
    /// The channel's state as a number the server raises at every change of it (0 for a
    /// device that follows a pin on a product without the channel): a device refuses a
    /// state older than one it has seen.
    pub channel_serial: i64,
    /// Seconds since the epoch when it was signed, and until when a device may act on it.
    pub issued: u64,
    pub expires: u64,
}

/// The update an answer offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub version: Name,
    pub download_bytes: u64,
    pub image_bytes: u64,
    /// BLAKE3 of the bytes of the downgrade statement in force, when the offer is a
    /// downgrade: a device takes no other statement with it.
    pub downgrade: Option<Hash>,
}

impl Answer {
    const WHAT: &'static str = "signed answer";

    /// The exact bytes that are signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(ANSWER_MAGIC);
        put_bytes(&mut out, self.product.as_bytes());
        put_bytes(&mut out, self.channel.as_bytes());
        put_bytes(&mut out, self.current.as_deref().unwrap_or("").as_bytes());
        put_bytes(&mut out, self.latest.as_deref().unwrap_or("").as_bytes());
        let mut flags = 0;
        if self.paused {
            flags |= PAUSED;
        }
        if self.paced {
            flags |= PACED;
        }
        if let Some(o) = &self.offer {
            flags |= OFFER;
            if o.downgrade.is_some() {
                flags |= DOWNGRADE;
            }
        }
        out.push(flags);
        if let Some(o) = &self.offer {
            put_bytes(&mut out, o.version.as_bytes());
            put_varint(&mut out, o.download_bytes);
            put_varint(&mut out, o.image_bytes);
            if let Some(h) = &o.downgrade {
                out.extend_from_slice(h.as_bytes());
            }
        }
        put_varint(&mut out, self.next_check_secs);
        out.extend_from_slice(&self.channel_serial.to_le_bytes());
        out.extend_from_slice(&self.issued.to_le_bytes());
        out.extend_from_slice(&self.expires.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Answer, Error> {
        let bad = malformed(Self::WHAT);
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(refused(Self::WHAT, format!("{} bytes", bytes.len())));
        }
        let mut r = Reader::new(bytes);
        if r.take(8, "magic").map_err(&bad)? != ANSWER_MAGIC {
            return Err(refused(Self::WHAT, "magic is not DRANSWR1"));
        }
        let product = name(&mut r, Self::WHAT, "product")?;
        let channel = name(&mut r, Self::WHAT, "channel")?;
        let current = optional_name(&mut r, Self::WHAT, "version")?;
        let latest = optional_name(&mut r, Self::WHAT, "version")?;
        let flags = r.u8("flags").map_err(&bad)?;
        if flags & !(PAUSED | PACED | OFFER | DOWNGRADE) != 0
            || flags & (OFFER | DOWNGRADE) == DOWNGRADE
        {
            return Err(refused(Self::WHAT, format!("unknown flags {flags:#04x}")));
        }
        let offer = if flags & OFFER != 0 {
            Some(Offer {
                version: name(&mut r, Self::WHAT, "version")?,
                download_bytes: r.varint("download bytes").map_err(&bad)?,
                image_bytes: r.varint("image bytes").map_err(&bad)?,
                downgrade: if flags & DOWNGRADE != 0 {
                    Some(Hash(r.array::<32>("downgrade hash").map_err(&bad)?))
                } else {
                    None
                },
            })
        } else {
            None
        };
        let next_check_secs = r.varint("next check").map_err(&bad)?;
        let channel_serial = r.u64_le("channel serial").map_err(&bad)? as i64;
        let issued = r.u64_le("issued").map_err(&bad)?;
        let expires = r.u64_le("expires").map_err(&bad)?;
        if !r.is_empty() {
            return Err(bad(r.error("trailing bytes after the expiry")));
        }
        Ok(Answer {
            product,
            channel,
            current,
            latest,
            offer,
            paused: flags & PAUSED != 0,
            paced: flags & PACED != 0,
            next_check_secs,
            channel_serial,
            issued,
            expires,
        })
    }

    /// Signs it with the online key, attaching the release key's delegation to that key.
    pub fn sign(&self, key: &SecretKey, delegation: Option<DelegationOffer>) -> SignedAnswer {
        let bytes = self.encode();
        SignedAnswer {
            answer: b64().encode(&bytes),
            signature: b64().encode(key.sign(&bytes)),
            delegation,
        }
    }
}

/// The bytes the answer key signs for a plan: the pair it is for and the BLAKE3 of the plan
/// as served (`docs/FORMAT.md` §10.6, "Plans").
pub fn plan_message(product: &str, from: Option<&str>, to: &str, body: &[u8]) -> Vec<u8> {
    let mut out = b"deltaroot-plan-v1\0".to_vec();
    for f in [product, from.unwrap_or("-"), to] {
        out.extend_from_slice(f.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(Hash::of(body).as_bytes());
    out
}

/// Checks a plan's signature (`sig`, hex) and the delegation it came with (`delegation`,
/// `<statement>.<signature>` in standard base64) against `trusted` release keys: the
/// delegation names the product, and its key signed the plan of this pair.
pub fn verify_plan(
    trusted: &[PublicKey],
    (product, from, to): (&str, Option<&str>, &str),
    body: &[u8],
    sig: Option<&str>,
    delegation: Option<&str>,
) -> Result<(), Error> {
    let what = "plan";
    let (Some(sig), Some(delegation)) = (sig, delegation) else {
        return Err(refused(
            what,
            "the server did not sign it (deltaroot-signature and deltaroot-delegation headers)",
        ));
    };
    let (statement, signature) = delegation
        .split_once('.')
        .ok_or_else(|| refused(what, "the delegation header is not <statement>.<signature>"))?;
    let d = Delegation::verify(
        &DelegationOffer {
            statement: statement.to_string(),
            signature: signature.to_string(),
        },
        trusted,
    )?;
    if d.product.as_str() != product {
        return Err(refused(
            what,
            format!("its key was delegated for {}, not {product}", d.product),
        ));
    }
    let sig = hex::decode(sig).map_err(|_| refused(what, "the signature is not hex"))?;
    if !d.key.verify(&plan_message(product, from, to, body), &sig) {
        return Err(refused(
            what,
            format!(
                "its signature does not verify against the delegated key {}",
                d.key.id()
            ),
        ));
    }
    Ok(())
}

/// Signs a plan of a release folder with the release key itself (a folder has no server
/// and no answer key): hex of the signature over [`plan_message`], the file
/// `plans/<from>/<to>.sig` beside the plan.
pub fn sign_folder_plan(
    key: &SecretKey,
    (product, from, to): (&str, Option<&str>, &str),
    body: &[u8],
) -> String {
    hex::encode(key.sign(&plan_message(product, from, to, body)))
}

/// Checks a release folder's plan against its `.sig` file (`sig`, `None` when the folder has
/// none): signed by one of the `trusted` release keys over this pair and these bytes.
pub fn verify_folder_plan(
    trusted: &[PublicKey],
    (product, from, to): (&str, Option<&str>, &str),
    body: &[u8],
    sig: Option<&[u8]>,
) -> Result<(), Error> {
    let what = "plan";
    let sig = sig.ok_or_else(|| {
        refused(
            what,
            "the folder holds no signature beside it (a .sig file; publish the folder again \
             with this publisher)",
        )
    })?;
    let sig = std::str::from_utf8(sig)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok())
        .ok_or_else(|| refused(what, "its .sig file is not a hex signature"))?;
    let message = plan_message(product, from, to, body);
    if !trusted.iter().any(|k| k.verify(&message, &sig)) {
        return Err(refused(
            what,
            "its signature does not verify against a trusted release key for this pair",
        ));
    }
    Ok(())
}

/// What a device remembers of the answers it took (`state/answers.json`), so that an older
/// one is refused: the newest delegation, and each channel's newest state and answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    #[serde(default)]
    pub delegation_issued: u64,
    #[serde(default)]
    pub channels: std::collections::BTreeMap<String, ChannelSeen>,
}

/// The newest channel state and answer a device took for one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSeen {
    pub channel_serial: i64,
    pub issued: u64,
}

/// The question a device asked, which the answer must be about.
pub struct Question<'a> {
    pub product: &'a Name,
    pub channel: &'a Name,
    pub current: Option<&'a Name>,
}

/// An answer whose signature checked out: by a trusted key, or by the key a trusted key's
/// delegation names.
#[derive(Clone, Debug)]
pub struct TrustedAnswer {
    answer: Answer,
    /// The delegation it came through, if it was not signed by a trusted key itself.
    delegation: Option<Delegation>,
}

impl fmt::Display for Delegation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delegation of {} to key {} issued at {}",
            self.product,
            self.key.id(),
            self.issued
        )
    }
}

impl TrustedAnswer {
    /// Checks the signature of a check's answer. An answer that carries none (a server that
    /// holds no delegation yet) is refused with what to do about it.
    pub fn verify(
        signed: Option<&SignedAnswer>,
        trusted: &[PublicKey],
    ) -> Result<TrustedAnswer, Error> {
        let what = Answer::WHAT;
        let Some(signed) = signed else {
            return Err(refused(
                "update answer",
                "the server did not sign it (it signs answers once a release was published with a delegation to its key: publish with a current `deltaroot`)",
            ));
        };
        let bytes = decode_b64(what, "answer", &signed.answer)?;
        let sig = decode_b64(what, "signature", &signed.signature)?;
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(refused(what, format!("{} bytes", bytes.len())));
        }
        let delegation = if trusted.iter().any(|k| k.verify(&bytes, &sig)) {
            None
        } else {
            let Some(offer) = &signed.delegation else {
                return Err(refused(
                    what,
                    format!(
                        "its signature does not verify against the trusted key(s) {} and it carries no delegation",
                        key_ids(trusted)
                    ),
                ));
            };
            let d = Delegation::verify(offer, trusted)?;
            if !d.key.verify(&bytes, &sig) {
                return Err(refused(
                    what,
                    format!(
                        "its signature does not verify against the delegated key {}",
                        d.key.id()
                    ),
                ));
            }
            Some(d)
        };
        let answer = Answer::decode(&bytes)?;
        if let Some(d) = &delegation {
            if d.product != answer.product {
                return Err(refused(
                    what,
                    format!(
                        "it is about product {} but its key was delegated for {}",
                        answer.product, d.product
                    ),
                ));
            }
        }
        Ok(TrustedAnswer { answer, delegation })
    }

    /// Checks that the answer is about `q`, is valid at `now` (seconds since the epoch) and
    /// is not older than what `seen` holds; then records it in `seen` and gives what the
    /// device acts on. The downgrade statement the JSON carries is kept only when its bytes
    /// hash to the one the answer names.
    pub fn accept(
        self,
        q: &Question<'_>,
        now: u64,
        seen: &mut Freshness,
        downgrade: Option<&DowngradeOffer>,
    ) -> Result<CheckResponse, Error> {
        let a = self.answer;
        let what = Answer::WHAT;
        if a.product != *q.product || a.channel != *q.channel {
            return Err(refused(
                what,
                format!(
                    "it answers {}/{}, not {}/{}",
                    a.product, a.channel, q.product, q.channel
                ),
            ));
        }
        if a.current.as_ref() != q.current {
            let show = |v: Option<&Name>| v.map_or("nothing".to_string(), |v| v.to_string());
            return Err(refused(
                what,
                format!(
                    "it answers a device running {}, and this one runs {}",
                    show(a.current.as_ref()),
                    show(q.current)
                ),
            ));
        }
        if now > a.expires {
            return Err(refused(
                what,
                format!(
                    "it expired at {} and the time is {now} (is the device's clock right?)",
                    a.expires
                ),
            ));
        }
        if let Some(d) = &self.delegation {
            if d.issued < seen.delegation_issued {
                return Err(refused(
                    what,
                    format!(
                        "its key's {d} is older than the delegation this device has seen (issued at {}): that key was replaced",
                        seen.delegation_issued
                    ),
                ));
            }
        }
        let last = seen
            .channels
            .get(a.channel.as_str())
            .copied()
            .unwrap_or_default();
        if a.channel_serial < last.channel_serial {
            return Err(refused(
                what,
                format!(
                    "it shows channel {} at change {}, older than the state at change {} this device has seen",
                    a.channel, a.channel_serial, last.channel_serial
                ),
            ));
        }
        let update = match a.offer {
            None => None,
            Some(o) => {
                let downgrade = match (o.downgrade, downgrade) {
                    (None, _) => None,
                    (Some(want), Some(d)) => {
                        let bytes = decode_b64("downgrade statement", "statement", &d.statement)?;
                        if Hash::of(&bytes) != want {
                            return Err(refused(
                                what,
                                "the downgrade statement sent with it is not the one in force on the channel",
                            ));
                        }
                        Some(d.clone())
                    }
                    (Some(_), None) => {
                        return Err(refused(
                            what,
                            "it offers a downgrade but no statement came with it",
                        ))
                    }
                };
                Some(UpdateOffer {
                    version: o.version,
                    download_bytes: o.download_bytes,
                    image_bytes: o.image_bytes,
                    downgrade,
                })
            }
        };
        if let Some(d) = &self.delegation {
            seen.delegation_issued = seen.delegation_issued.max(d.issued);
        }
        seen.channels.insert(
            a.channel.to_string(),
            ChannelSeen {
                channel_serial: a.channel_serial,
                issued: last.issued.max(a.issued),
            },
        );
        Ok(CheckResponse {
            product: a.product,
            channel: a.channel,
            latest: a.latest,
            update,
            paused: a.paused,
            next_check_secs: (a.next_check_secs > 0).then_some(a.next_check_secs),
            paced: a.paced,
            signed: None,
            rotations: Vec::new(),
        })
    }

    pub fn answer(&self) -> &Answer {
        &self.answer
    }
    pub fn delegation(&self) -> Option<&Delegation> {
        self.delegation.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new("version", s).unwrap()
    }

    fn sample() -> Answer {
        Answer {
            product: n("demo"),
            channel: n("stable"),
            current: Some(n("1.0")),
            latest: Some(n("2.0")),
            offer: Some(Offer {
                version: n("2.0"),
                download_bytes: 300,
                image_bytes: 70_000,
                downgrade: None,
            }),
            paused: false,
            paced: false,
            next_check_secs: 3600,
            channel_serial: 1_700_000_000,
            issued: 1_700_000_100,
            expires: 1_700_086_500,
        }
    }

    fn release() -> SecretKey {
        SecretKey::from_seed([1; 32])
    }
    fn online() -> SecretKey {
        SecretKey::from_seed([2; 32])
    }

    fn delegation(issued: u64) -> DelegationOffer {
        Delegation {
            product: n("demo"),
            key: online().public(),
            issued,
        }
        .sign(&release())
    }

    fn question<'a>(p: &'a Name, c: &'a Name, cur: Option<&'a Name>) -> Question<'a> {
        Question {
            product: p,
            channel: c,
            current: cur,
        }
    }

    fn take(a: &Answer, now: u64, seen: &mut Freshness) -> Result<CheckResponse, Error> {
        let signed = a.sign(&online(), Some(delegation(10)));
        let (p, c, v) = (n("demo"), n("stable"), n("1.0"));
        TrustedAnswer::verify(Some(&signed), &[release().public()])?.accept(
            &question(&p, &c, Some(&v)),
            now,
            seen,
            None,
        )
    }

    #[test]
    fn encodings_are_the_documented_bytes() {
        let d = Delegation {
            product: n("demo"),
            key: online().public(),
            issued: 1_700_000_000,
        };
        let b = d.encode();
        assert_eq!(&b[..13], b"DRDELEG1\x04demo");
        assert_eq!(&b[13..45], &online().public().to_bytes());
        assert_eq!(&b[45..], &[0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0]);
        assert_eq!(Delegation::decode(&b).unwrap(), d);

        let mut a = sample();
        a.offer = None;
        a.latest = None;
        a.current = None;
        a.paused = true;
        let b = a.encode();
        let mut want = b"DRANSWR1\x04demo\x06stable\x00\x00\x01".to_vec();
        want.extend_from_slice(&[0x90, 0x1c]); // 3600
        want.extend_from_slice(&1_700_000_000u64.to_le_bytes());
        want.extend_from_slice(&1_700_000_100u64.to_le_bytes());
        want.extend_from_slice(&1_700_086_500u64.to_le_bytes());
        assert_eq!(b, want);
        assert_eq!(Answer::decode(&b).unwrap(), a);
        // The largest answer there can be is within the limit.
        let long = n(&"v".repeat(64));
        let full = Answer {
            product: long.clone(),
            channel: long.clone(),
            current: Some(long.clone()),
            latest: Some(long.clone()),
            offer: Some(Offer {
                version: long,
                download_bytes: u64::MAX,
                image_bytes: u64::MAX,
                downgrade: Some(Hash::of(b"statement")),
            }),
            paused: true,
            paced: true,
            next_check_secs: u64::MAX,
            channel_serial: i64::MAX,
            issued: u64::MAX,
            expires: u64::MAX,
        };
        assert_eq!(full.encode().len(), MAX_ANSWER_BYTES);
        assert_eq!(Answer::decode(&full.encode()).unwrap(), full);
    }

    #[test]
    fn decode_refuses_bad_bytes() {
        let b = sample().encode();
        for cut in [0, 7, 8, 20, b.len() - 1] {
            assert!(Answer::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Answer::decode(&[b.as_slice(), b"x"].concat()).is_err());
        let mut flags = b.clone();
        let at = 8 + 5 + 7 + 4 + 4;
        assert_eq!(flags[at], OFFER);
        flags[at] = 0x80;
        let err = Answer::decode(&flags).unwrap_err().to_string();
        assert!(err.contains("unknown flags"), "{err}");
        let mut dots = sample();
        dots.latest = Some(n("x"));
        let mut bytes = dots.encode();
        let i = bytes.windows(2).position(|w| w == b"\x01x").unwrap();
        bytes[i + 1] = b'/';
        assert!(Answer::decode(&bytes).is_err());
    }

    #[test]
    fn a_delegated_answer_is_taken_and_remembered() {
        let mut seen = Freshness::default();
        let r = take(&sample(), 1_700_000_200, &mut seen).unwrap();
        assert_eq!(r.update.unwrap().version, n("2.0"));
        assert_eq!(r.next_check_secs, Some(3600));
        assert_eq!(seen.delegation_issued, 10);
        assert_eq!(seen.channels["stable"].channel_serial, 1_700_000_000);
        // Signed by the release key itself: no delegation needed.
        let direct = sample().sign(&release(), None);
        let (p, c, v) = (n("demo"), n("stable"), n("1.0"));
        TrustedAnswer::verify(Some(&direct), &[release().public()])
            .unwrap()
            .accept(&question(&p, &c, Some(&v)), 1_700_000_200, &mut seen, None)
            .unwrap();
    }

    #[test]
    fn untrusted_unsigned_and_misdelegated_answers_are_refused() {
        let trusted = [release().public()];
        let err = TrustedAnswer::verify(None, &trusted)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not sign"), "{err}");
        // Signed by a key nobody delegated to.
        let rogue = SecretKey::from_seed([3; 32]);
        let s = sample().sign(&rogue, Some(delegation(10)));
        let err = TrustedAnswer::verify(Some(&s), &trusted)
            .unwrap_err()
            .to_string();
        assert!(err.contains("delegated key"), "{err}");
        // A delegation signed by an untrusted key.
        let forged = Delegation {
            product: n("demo"),
            key: rogue.public(),
            issued: 10,
        }
        .sign(&rogue);
        let s = sample().sign(&rogue, Some(forged));
        let err = TrustedAnswer::verify(Some(&s), &trusted)
            .unwrap_err()
            .to_string();
        assert!(err.contains("delegation statement refused"), "{err}");
        // A delegation for another product.
        let other = Delegation {
            product: n("other"),
            key: online().public(),
            issued: 10,
        }
        .sign(&release());
        let s = sample().sign(&online(), Some(other));
        let err = TrustedAnswer::verify(Some(&s), &trusted)
            .unwrap_err()
            .to_string();
        assert!(err.contains("delegated for other"), "{err}");
        // One flipped bit of the answer.
        let mut s = sample().sign(&online(), Some(delegation(10)));
        let mut b = b64().decode(&s.answer).unwrap();
        b[20] ^= 1;
        s.answer = b64().encode(b);
        assert!(TrustedAnswer::verify(Some(&s), &trusted).is_err());
    }

    #[test]
    fn expired_older_and_mismatched_answers_are_refused() {
        let mut seen = Freshness::default();
        let err = take(&sample(), 1_700_086_501, &mut seen)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired"), "{err}");
        assert_eq!(
            seen,
            Freshness::default(),
            "a refused answer is not remembered"
        );

        take(&sample(), 1_700_000_200, &mut seen).unwrap();
        let mut older = sample();
        older.channel_serial -= 1;
        let err = take(&older, 1_700_000_200, &mut seen)
            .unwrap_err()
            .to_string();
        assert!(err.contains("older than the state"), "{err}");

        // Another question's answer (mix and match).
        let signed = sample().sign(&online(), Some(delegation(10)));
        let (p, c, v) = (n("demo"), n("stable"), n("1.5"));
        let beta = n("beta");
        for q in [
            question(&p, &c, Some(&v)),
            question(&p, &c, None),
            question(&p, &beta, Some(&v)),
        ] {
            let err = TrustedAnswer::verify(Some(&signed), &[release().public()])
                .unwrap()
                .accept(&q, 1_700_000_200, &mut seen, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("it answers"), "{err}");
        }
    }

    #[test]
    fn plans_verify_only_for_their_pair_and_body() {
        let body = br#"{"items":[]}"#;
        let sig = hex::encode(online().sign(&plan_message("demo", Some("1.0"), "2.0", body)));
        let d = delegation(10);
        let header = format!("{}.{}", d.statement, d.signature);
        let trusted = [release().public()];
        let pair = ("demo", Some("1.0"), "2.0");
        verify_plan(&trusted, pair, body, Some(&sig), Some(&header)).unwrap();
        for (pair, body) in [
            (("demo", None, "2.0"), &body[..]),
            (("demo", Some("1.0"), "3.0"), &body[..]),
            (pair, br#"{"items":[1]}"#),
        ] {
            assert!(verify_plan(&trusted, pair, body, Some(&sig), Some(&header)).is_err());
        }
        let err = verify_plan(&trusted, pair, body, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not sign"), "{err}");
        let stranger = [SecretKey::from_seed([3; 32]).public()];
        assert!(verify_plan(&stranger, pair, body, Some(&sig), Some(&header)).is_err());
    }

    #[test]
    fn a_replaced_delegation_is_refused() {
        let mut seen = Freshness {
            delegation_issued: 20,
            ..Freshness::default()
        };
        let err = take(&sample(), 1_700_000_200, &mut seen)
            .unwrap_err()
            .to_string();
        assert!(err.contains("was replaced"), "{err}");
    }

    #[test]
    fn only_the_downgrade_in_force_comes_with_an_offer() {
        let now = crate::channel::Downgrade {
            product: "demo".into(),
            channel: "stable".into(),
            version: "1.0".into(),
            issued: 50,
        }
        .sign(&release());
        let old = crate::channel::Downgrade {
            product: "demo".into(),
            channel: "stable".into(),
            version: "1.0".into(),
            issued: 40,
        }
        .sign(&release());
        let mut a = sample();
        a.current = Some(n("2.0"));
        a.offer = Some(Offer {
            version: n("1.0"),
            download_bytes: 1,
            image_bytes: 1,
            downgrade: Some(Hash::of(now.bytes())),
        });
        let signed = a.sign(&online(), Some(delegation(10)));
        let (p, c, v) = (n("demo"), n("stable"), n("2.0"));
        let accept = |d: Option<&DowngradeOffer>| {
            TrustedAnswer::verify(Some(&signed), &[release().public()])
                .unwrap()
                .accept(
                    &question(&p, &c, Some(&v)),
                    1_700_000_200,
                    &mut Freshness::default(),
                    d,
                )
        };
        let ok = accept(Some(&now.to_offer())).unwrap();
        assert_eq!(ok.update.unwrap().downgrade, Some(now.to_offer()));
        let err = accept(Some(&old.to_offer())).unwrap_err().to_string();
        assert!(err.contains("not the one in force"), "{err}");
        assert!(accept(None).is_err());
    }
}
