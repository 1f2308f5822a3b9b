//! Validated names: [`Name`] for products, channels and versions, [`DeviceId`] for how a
//! device names itself in checks. Each is checked once, when made (from a string, or when an
//! API body, a URL path or query, or a settings file is deserialised), and is a plain string
//! on the wire. A deserialiser sees the check fail while it reads the string, so it can say
//! where (serde_json the line and column, axum the path parameter).

use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Whether `value` is a valid product, channel or version name: 1 to 64 of
/// `A-Z a-z 0-9 . _ + ~ -`, not starting with `.` or `-` (so never `.`, `..` or an option).
pub fn is_valid_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && !value.starts_with(['.', '-'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

/// A product, channel or version name (see [`is_valid_name`]); safe as one path component
/// and in a URL path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Checks `value`; the error names `field` (`product`, `channel`, `version`, `pin`…).
    pub fn new(field: &'static str, value: impl Into<String>) -> Result<Name, Error> {
        let value = value.into();
        if is_valid_name(&value) {
            Ok(Name(value))
        } else {
            Err(Error::BadName {
                field,
                value: value.chars().take(80).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A device's id in checks: 1 to 128 of `A-Z a-z 0-9 . _ : -` (a machine-id, a serial
/// number, a MAC address with colons). Errors do not echo the value, which may come from a
/// file the device keeps to itself (`/etc/machine-id`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn new(value: impl Into<String>) -> Result<DeviceId, Error> {
        let value = value.into();
        let bad = value
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b"._:-".contains(&b)));
        let what = match bad {
            _ if value.is_empty() => "is empty".to_string(),
            _ if value.len() > 128 => format!("is {} bytes, over 128", value.len()),
            Some(at) => format!("has a byte outside A-Z a-z 0-9 . _ : - at offset {at}"),
            None => return Ok(DeviceId(value)),
        };
        Err(Error::Unsupported {
            path: PathBuf::from("device id"),
            what: format!("{what} (1-128 of A-Z a-z 0-9 . _ : - allowed)"),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

macro_rules! string_like {
    ($t:ident, $new:expr) => {
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(s: String) -> Result<$t, Error> {
                $new(s)
            }
        }

        impl TryFrom<&str> for $t {
            type Error = Error;
            fn try_from(s: &str) -> Result<$t, Error> {
                $new(s)
            }
        }

        impl FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<$t, Error> {
                $new(s)
            }
        }

        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", stringify!($t), " string"))
                    }
                    // Checked inside the visitor, so the deserialiser can say where.
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$t, E> {
                        $new(s).map_err(E::custom)
                    }
                    fn visit_string<E: de::Error>(self, s: String) -> Result<$t, E> {
                        $new(s).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::path::Path> for $t {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, o: &str) -> bool {
                self.0 == o
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, o: &&str) -> bool {
                self.0 == *o
            }
        }

        impl PartialEq<String> for $t {
            fn eq(&self, o: &String) -> bool {
                &self.0 == o
            }
        }

        impl PartialEq<$t> for str {
            fn eq(&self, o: &$t) -> bool {
                self == o.0
            }
        }

        impl PartialEq<$t> for &str {
            fn eq(&self, o: &$t) -> bool {
                *self == o.0
            }
        }

        impl PartialEq<$t> for String {
            fn eq(&self, o: &$t) -> bool {
                *self == o.0
            }
        }
    };
}

string_like!(Name, |s| Name::new("name", s));
string_like!(DeviceId, DeviceId::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "1.0", "v2.1+build~rc-1", "A_b", &"x".repeat(64)] {
            let n = Name::new("version", ok).unwrap();
            assert_eq!(n, ok);
            assert_eq!(n.to_string(), ok);
            assert_eq!(&*n, ok);
            assert_eq!(AsRef::<str>::as_ref(&n), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "a b",
            "é",
            "a%2F",
            "a\0",
            &"x".repeat(65),
        ] {
            let e = Name::new("channel", bad).unwrap_err().to_string();
            assert!(
                e.starts_with("channel ") && e.contains("not a valid name"),
                "{e}"
            );
        }
        assert!("../etc".parse::<Name>().is_err());
        assert!(Name::try_from(String::from("stable")).is_ok());
    }

    #[test]
    fn names_are_plain_strings_on_the_wire_and_checked_when_read() {
        let n: Name = serde_json::from_str("\"1.0\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"1.0\"");
        let e = serde_json::from_str::<Name>("\"../etc\"").unwrap_err();
        assert!(e.to_string().contains("not a valid name"), "{e}");
        assert!(serde_json::from_str::<Name>("3").is_err());
        let o: Option<Name> = serde_json::from_str("null").unwrap();
        assert_eq!(o, None);
    }

    #[test]
    fn device_ids_follow_their_rule_and_are_never_echoed() {
        for ok in [
            "0123abcd",
            "aa:bb:cc:dd:ee:ff",
            "serial_1.2-x",
            &"z".repeat(128),
        ] {
            let id = DeviceId::new(ok).unwrap();
            assert_eq!(id, ok);
            assert_eq!(id.to_string(), ok);
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{ok}\""));
        }
        for bad in ["", "x y", "x/y", "x+y", "secret\n", &"z".repeat(129)] {
            let e = DeviceId::new(bad).unwrap_err().to_string();
            assert!(e.starts_with("device id: "), "{e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let e = serde_json::from_str::<DeviceId>("\"top secret\"").unwrap_err();
        assert!(e.to_string().contains("offset 3"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let id: DeviceId = serde_json::from_str("\"dev-1\"").unwrap();
        assert_eq!(id.as_str(), "dev-1");
    }
}
