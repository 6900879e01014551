//! Identifier newtypes. Only `parse` (or a generator) builds one, so a value in hand is valid.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A thread (conversation) id: `^[a-zA-Z0-9_-]{1,128}$` (SPEC §3). Safe inside a NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(type = "string"))]
#[serde(try_from = "String")]
pub struct ThreadId(String);

/// A client's idempotency key for one message: `^[a-zA-Z0-9_-]{1,64}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(type = "string"))]
#[serde(try_from = "String")]
pub struct MessageId(String);

// Serialized as the string they hold, borrowed: `into = "String"` cloned the id for every frame
// a worker encodes (the same JSON).
impl Serialize for ThreadId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Names the turn of one accepted message; the same on every attempt at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(type = "string"))]
#[serde(transparent)]
pub struct TurnId(uuid::Uuid);

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to {max} characters of a-z, A-Z, 0-9, '_' or '-'")]
pub struct InvalidId {
    max: usize,
}

fn check_token_chars(raw: &str, max: usize) -> Result<(), InvalidId> {
    let valid = !raw.is_empty()
        && raw.len() <= max
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(InvalidId { max })
    }
}

impl ThreadId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidId> {
        let raw = raw.into();
        check_token_chars(&raw, Self::MAX_LEN)?;
        Ok(Self(raw))
    }

    /// A fresh random id for a new thread.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MessageId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidId> {
        let raw = raw.into();
        check_token_chars(&raw, Self::MAX_LEN)?;
        Ok(Self(raw))
    }

    /// The id the edge gives a message that came without one.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TurnId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl From<uuid::Uuid> for TurnId {
    fn from(id: uuid::Uuid) -> Self {
        Self(id)
    }
}

macro_rules! string_id_impls {
    ($ty:ident) => {
        impl TryFrom<String> for $ty {
            type Error = InvalidId;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }
        impl From<$ty> for String {
            fn from(id: $ty) -> Self {
                id.0
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_id_impls!(ThreadId);
string_id_impls!(MessageId);

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids_follow_the_pattern() {
        assert!(ThreadId::parse("abc_DEF-123").is_ok());
        assert!(ThreadId::parse("a".repeat(128)).is_ok());
        assert!(ThreadId::parse("a".repeat(129)).is_err());
        assert!(ThreadId::parse("").is_err());
        for bad in ["a.b", "a b", "a*", "a>", "é", "a/b"] {
            assert!(ThreadId::parse(bad).is_err(), "{bad} must be refused");
        }
        assert!(ThreadId::parse(ThreadId::generate().to_string()).is_ok());
    }

    #[test]
    fn message_ids_follow_the_pattern() {
        assert!(MessageId::parse("m-1_x").is_ok());
        assert!(MessageId::parse("m".repeat(64)).is_ok());
        assert!(MessageId::parse("m".repeat(65)).is_err());
        assert!(MessageId::parse("m.1").is_err());
        assert!(MessageId::parse(MessageId::generate().to_string()).is_ok());
    }

    #[test]
    fn ids_refuse_bad_values_when_deserialized() {
        assert!(serde_json::from_str::<ThreadId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<ThreadId>("\"not ok\"").is_err());
    }

    #[test]
    fn ids_serialize_as_their_string() {
        let thread = ThreadId::parse("t-1").unwrap();
        let message = MessageId::parse("m_2").unwrap();
        assert_eq!(serde_json::to_string(&thread).unwrap(), "\"t-1\"");
        assert_eq!(serde_json::to_string(&message).unwrap(), "\"m_2\"");
        assert_eq!(
            serde_json::to_value(&thread).unwrap(),
            serde_json::json!("t-1")
        );
    }
}
