//! Who may do what: the scopes of upload tokens, the roles of dashboard users, and the one
//! check every route makes ([`Rights::require`]) before it reads a body or starts work.
//!
//! - `read`: releases, channels, rollouts, devices and the audit log of its products;
//! - `publish`: uploads and new releases of its products (and reading them);
//! - `operate`: promote, pause, resume, roll back, set a rollout's share (and reading);
//! - `all`: read, publish and operate everywhere: what every token could do before scopes
//!   existed, kept by those tokens and by `token create NAME` without `--scope`.
//!
//! A token may also be held to a list of products. Users get the rights of their role:
//! viewer reads, operator reads and operates, admin also manages users and tokens.
//! Publishing stays with tokens (CI holds them, not people).

use std::collections::BTreeSet;
use std::fmt;

use deltaroot_format::Name;

use crate::error::{Error, Result};

text_enum! {
    /// One right a token or a role grants.
    pub enum Scope ("scope") {
        Read = "read",
        Publish = "publish",
        Operate = "operate",
        Admin = "admin",
        /// Enrolling devices' keys (`deltaroot-agent enroll`): a token for the factory or
        /// the provisioning step, which may do nothing else.
        Enroll = "enroll",
    }
}

text_enum! {
    /// A dashboard user's role.
    pub enum Role ("role") {
        Viewer = "viewer",
        Operator = "operator",
        Admin = "admin",
    }
}

impl Role {
    /// The scopes a role grants.
    pub fn scopes(self) -> BTreeSet<Scope> {
        let s: &[Scope] = match self {
            Role::Viewer => &[Scope::Read],
            Role::Operator => &[Scope::Read, Scope::Operate],
            Role::Admin => &[Scope::Read, Scope::Operate, Scope::Admin],
        };
        s.iter().copied().collect()
    }
}

impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scope {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// What a token's `scopes` column holds for a token with every right it had before scopes.
pub const ALL: &str = "all";

/// What one caller may do: its scopes, and the products it may act on (`None`: every one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rights {
    /// Who: `token "ci"` or `user "ada"`, as messages name it.
    pub who: Who,
    /// `true` for the scope `all`.
    pub all: bool,
    pub scopes: BTreeSet<Scope>,
    pub products: Option<BTreeSet<Name>>,
}

/// The holder of some rights, as the audit log and messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Token(String),
    User(String),
}

impl Who {
    /// The name the audit log records: a token's name, a user's name.
    pub fn name(&self) -> &str {
        match self {
            Who::Token(n) | Who::User(n) => n,
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Token(n) => write!(f, "token {n:?}"),
            Who::User(n) => write!(f, "user {n:?}"),
        }
    }
}

impl Rights {
    /// A token's rights from its stored columns: `scopes` is `all` or a comma-separated list,
    /// `products` a comma-separated list or `None`.
    pub fn of_token(name: &str, scopes: &str, products: Option<&str>) -> Result<Rights> {
        let corrupt = |e: Error| Error::Corrupt(format!("token {name:?}: {e}"));
        let (all, scopes) = if scopes == ALL {
            (true, [Scope::Read, Scope::Publish, Scope::Operate].into())
        } else {
            let s = scopes
                .split(',')
                .map(str::parse)
                .collect::<Result<BTreeSet<Scope>>>()
                .map_err(corrupt)?;
            (false, s)
        };
        let products = products
            .map(|p| {
                p.split(',')
                    .map(|n| Name::new("product", n).map_err(|e| corrupt(e.into())))
                    .collect::<Result<BTreeSet<Name>>>()
            })
            .transpose()?;
        Ok(Rights {
            who: Who::Token(name.to_string()),
            all,
            scopes,
            products,
        })
    }

    /// A user's rights: those of the role, on every product.
    pub fn of_user(name: &str, role: Role) -> Rights {
        Rights {
            who: Who::User(name.to_string()),
            all: false,
            scopes: role.scopes(),
            products: None,
        }
    }

    /// How the `scopes` column stores a set of scopes (`all` for none given).
    pub fn scopes_text(scopes: &[Scope]) -> String {
        if scopes.is_empty() {
            return ALL.to_string();
        }
        let set: BTreeSet<Scope> = scopes.iter().copied().collect();
        set.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
    }

    /// How the `products` column stores a list of products (`None` for none given).
    pub fn products_text(products: &[Name]) -> Option<String> {
        if products.is_empty() {
            return None;
        }
        let set: BTreeSet<&str> = products.iter().map(|p| p.as_str()).collect();
        Some(set.into_iter().collect::<Vec<_>>().join(","))
    }

    /// Whether the caller holds `scope` (publish and operate include read).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (scope == Scope::Read
                && (self.scopes.contains(&Scope::Publish) || self.scopes.contains(&Scope::Operate)))
    }

    /// Refuses (403, naming what is missing) unless the caller holds `scope` on `product`
    /// (`None`: a route that names no product, such as a content-addressed upload).
    pub fn require(&self, scope: Scope, product: Option<&Name>) -> Result<()> {
        if !self.has(scope) {
            return Err(Error::Forbidden(format!(
                "{} lacks the {scope} scope (it has {})",
                self.who,
                self.describe_scopes()
            )));
        }
        if let (Some(allowed), Some(p)) = (&self.products, product) {
            if !allowed.contains(p) {
                let list: Vec<&str> = allowed.iter().map(|n| n.as_str()).collect();
                return Err(Error::Forbidden(format!(
                    "{} may act only on product {}, not {p}",
                    self.who,
                    list.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// `all`, or the scopes joined by `, `.
    pub fn describe_scopes(&self) -> String {
        if self.all {
            return format!("{ALL} (read, publish, operate)");
        }
        if self.scopes.is_empty() {
            return "none".into();
        }
        self.scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The products, or `every product`.
    pub fn describe_products(&self) -> String {
        match &self.products {
            None => "every product".into(),
            Some(p) => p.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
        }
    }
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes, one lane, as
/// OWASP recommends) and a fresh salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::BadConfig(format!("no randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::BadConfig(format!("password salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::BadRequest(format!("password cannot be hashed: {e}")))
}

/// Whether `password` matches a stored PHC hash. A hash that does not parse is corrupt data.
pub fn verify_password(password: &str, hash: &str) -> Result<bool> {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(hash)
        .map_err(|e| Error::Corrupt(format!("a stored password hash: {e}")))?;
    Ok(argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// The shortest password `user add` and `user passwd` accept.
pub const MIN_PASSWORD: usize = 12;

/// A password read from a file or stdin: its one line, without the line end; refused when
/// shorter than [`MIN_PASSWORD`] characters.
pub fn password_from(text: &str, from: &str) -> Result<String> {
    let line = text.lines().next().unwrap_or("").to_string();
    check_password(&line, &format!("the password from {from}"))?;
    Ok(line)
}

/// Refuses a password shorter than [`MIN_PASSWORD`] characters (`what` names it).
pub fn check_password(password: &str, what: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(Error::BadRequest(format!(
            "{what} is shorter than {MIN_PASSWORD} characters"
        )));
    }
    Ok(())
}

/// A scope a token may hold: read, publish or operate (admin is a user role).
pub fn token_scope(s: &str) -> Result<Scope> {
    match s.parse::<Scope>()? {
        Scope::Admin => Err(Error::BadRequest(
            "admin is a user role; tokens are read, publish, operate or enroll".into(),
        )),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new("product", s).unwrap()
    }

    #[test]
    fn all_keeps_every_right_a_token_had() {
        let r = Rights::of_token("ci", ALL, None).unwrap();
        for s in [Scope::Read, Scope::Publish, Scope::Operate] {
            r.require(s, Some(&name("acme"))).unwrap();
        }
        let e = r.require(Scope::Admin, None).unwrap_err().to_string();
        assert_eq!(
            e,
            "token \"ci\" lacks the admin scope (it has all (read, publish, operate))"
        );
    }

    #[test]
    fn a_publish_token_for_one_product_does_only_that() {
        let r = Rights::of_token("ci-a", "publish", Some("a")).unwrap();
        r.require(Scope::Publish, Some(&name("a"))).unwrap();
        r.require(Scope::Read, Some(&name("a"))).unwrap();
        r.require(Scope::Publish, None).unwrap();
        let e = r.require(Scope::Publish, Some(&name("b"))).unwrap_err();
        assert!(matches!(e, Error::Forbidden(_)));
        assert_eq!(
            e.to_string(),
            "token \"ci-a\" may act only on product a, not b"
        );
        let e = r.require(Scope::Operate, Some(&name("a"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "token \"ci-a\" lacks the operate scope (it has publish)"
        );
    }

    #[test]
    fn roles_grant_what_the_docs_say() {
        let v = Rights::of_user("vi", Role::Viewer);
        v.require(Scope::Read, Some(&name("a"))).unwrap();
        assert!(v.require(Scope::Operate, Some(&name("a"))).is_err());
        assert!(v.require(Scope::Publish, Some(&name("a"))).is_err());
        let o = Rights::of_user("op", Role::Operator);
        o.require(Scope::Operate, Some(&name("a"))).unwrap();
        assert!(o.require(Scope::Admin, None).is_err());
        assert!(o.require(Scope::Publish, None).is_err());
        let a = Rights::of_user("ad", Role::Admin);
        a.require(Scope::Admin, None).unwrap();
        a.require(Scope::Operate, None).unwrap();
    }

    #[test]
    fn columns_round_trip_and_bad_ones_are_corrupt() {
        assert_eq!(Rights::scopes_text(&[]), "all");
        let s = Rights::scopes_text(&[Scope::Operate, Scope::Read, Scope::Operate]);
        assert_eq!(s, "read,operate");
        let p = Rights::products_text(&[name("b"), name("a")]).unwrap();
        assert_eq!(p, "a,b");
        let r = Rights::of_token("t", &s, Some(&p)).unwrap();
        assert_eq!(r.scopes, [Scope::Read, Scope::Operate].into());
        assert_eq!(r.describe_products(), "a,b".replace(',', ", "));
        assert!(matches!(
            Rights::of_token("t", "read,fly", None),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            Rights::of_token("t", "read", Some("a,../b")),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h).unwrap());
        assert!(!verify_password("correct horse batterY", &h).unwrap());
        // Two hashes of one password differ (fresh salt).
        assert_ne!(h, hash_password("correct horse battery").unwrap());
        assert!(matches!(
            verify_password("x", "not a hash"),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(password_from("short\n", "stdin").is_err());
        assert_eq!(
            password_from("long enough pass\nrest", "f").unwrap(),
            "long enough pass"
        );
    }
}
