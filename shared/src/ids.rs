//! Newtype identifiers. Each one can only be built from a valid value, so the rest of the
//! code never re-checks an org id, an e-mail or a UUID.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;

/// An organisation: the tenant boundary. 1 to 128 characters of `A-Z a-z 0-9 . _ -`: it is
/// part of Redis channel names (so never `:`), of logs and of metrics, and an org id must look
/// like what it is, so invisible, bidirectional and look-alike characters are refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OrgId(String);

impl OrgId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let value = raw.trim();
        if value.is_empty() {
            return Err(DomainError::invalid("orgid must not be empty"));
        }
        if !value.chars().all(Self::is_allowed) {
            return Err(DomainError::invalid(
                "orgid may only contain the characters A-Z, a-z, 0-9, '.', '_' and '-'",
            ));
        }
        // Every allowed character is one byte, so this counts characters.
        if value.len() > Self::MAX_LEN {
            return Err(DomainError::invalid("orgid is longer than 128 characters"));
        }
        Ok(Self(value.to_owned()))
    }

    fn is_allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OrgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        OrgId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A user's e-mail address with its ASCII letters lower-cased: `KATE@A.COM` is `kate@a.com`.
/// Other characters are kept as they are, because Unicode case rules fold some of them into
/// ASCII letters (the Kelvin sign `\u{212A}` lower-cases to `k`), and `\u{212A}ate@a.com` must
/// not become `kate@a.com`. The same e-mail in two orgs is two users: an `Email` is only ever
/// used together with an [`OrgId`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let value = raw.trim().to_ascii_lowercase();
        let invalid = || DomainError::invalid(format!("'{}' is not a valid e-mail address", raw.trim()));
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(invalid());
        }
        let (local, domain) = value.rsplit_once('@').ok_or_else(invalid)?;
        let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == ',' || c == ';';
        if local.is_empty()
            || local.len() > 64
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || domain.contains('@')
            || value.chars().any(bad_char)
        {
            return Err(invalid());
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Email::parse(&raw).map_err(serde::de::Error::custom)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                Uuid::parse_str(raw.trim())
                    .map(Self)
                    .map_err(|_| DomainError::invalid(format!("'{raw}' is not a valid {}", $what)))
            }

            /// A new time-ordered (v7) id: ids sort by creation time.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A group, unique inside its org.
    GroupId,
    "group id"
);
uuid_id!(
    /// A message, time-ordered (UUIDv7); the per-group `seq` is the delivery cursor.
    MessageId,
    "message id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_lower_cased_and_validated() {
        assert_eq!(Email::parse(" Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@.com",
            "ann@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn email_folds_ascii_letters_only() {
        assert_eq!(Email::parse("KATE@A.COM").unwrap().as_str(), "kate@a.com");
        // The Kelvin sign lower-cases to `k` under Unicode rules; it stays itself here.
        let kelvin = Email::parse("\u{212A}ate@a.com").unwrap();
        assert_eq!(kelvin.as_str(), "\u{212A}ate@a.com");
        assert_ne!(kelvin, Email::parse("kate@a.com").unwrap());
        // Non-ASCII letters are neither folded nor refused.
        assert_eq!(Email::parse("\u{C4}nn@A.de").unwrap().as_str(), "\u{C4}nn@a.de");
        assert_eq!(Email::parse("\u{131}an@a.com").unwrap().as_str(), "\u{131}an@a.com");
    }

    #[test]
    fn org_id_accepts_its_character_set_up_to_128() {
        for good in ["my-org", "Org_1.eu", "a", "0", "-._", &"x".repeat(128)] {
            assert_eq!(OrgId::parse(good).unwrap().as_str(), good);
        }
        assert_eq!(OrgId::parse(" my-org ").unwrap().as_str(), "my-org");
    }

    #[test]
    fn org_id_refuses_anything_else() {
        for bad in [
            "",
            "   ",
            "a:b",
            "a b",
            "a/b",
            "a@b",
            "a+b",
            "org*",
            "a\tb",
            "a\0b",
            "\u{202E}Agro",
            "Agro\u{200B}",
            "\u{2066}org\u{2069}",
            "org\u{FEFF}",
            "\u{212A}org",
            "\u{391}cme",
            "\u{FF41}cme",
            "caf\u{E9}",
            &"x".repeat(129),
        ] {
            assert!(OrgId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ids_parse_uuids_only() {
        assert!(GroupId::parse("not-a-uuid").is_err());
        let id = GroupId::new_v7();
        assert_eq!(GroupId::parse(&id.to_string()).unwrap(), id);
    }
}
