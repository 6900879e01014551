//! Reading the decoded document: where a value is ([`Loc`], written as
//! `paths./pets.get.parameters[0].in`), what is wrong there ([`DocumentError`]), and typed reads
//! (a mapping, a string) that name the place when the value is not what OpenAPI says.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

/// A problem in the document, at a location written as `paths./pets.get.parameters[0].in`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DocumentError {
    /// Where in the document: keys joined with `.`, array indexes as `[i]`; `document` for the
    /// whole text.
    pub path: String,
    pub message: String,
}

/// An error once `stop` is set.
pub(super) fn stopped(stop: &AtomicBool) -> Result<(), DocumentError> {
    if stop.load(Ordering::Relaxed) {
        return Err(DocumentError::at(
            "document",
            "the import was stopped (the request ended)",
        ));
    }
    Ok(())
}

impl DocumentError {
    pub(super) fn at(path: impl fmt::Display, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// A location in the document, written as serde_path_to_error writes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Loc(pub(super) String);

impl Loc {
    pub(super) fn root() -> Self {
        Self(String::new())
    }

    pub(super) fn key(&self, key: &str) -> Self {
        if self.0.is_empty() {
            Self(key.to_owned())
        } else {
            Self(format!("{}.{key}", self.0))
        }
    }

    pub(super) fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The location a local `$ref` (`#/components/schemas/Pet`) points to.
    pub(super) fn of_pointer(reference: &str) -> Self {
        let pointer = reference.trim_start_matches('#');
        let mut loc = Self::root();
        for token in pointer.split('/').skip(1) {
            loc = loc.key(&unescape_token(token));
        }
        loc
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("document")
        } else {
            f.write_str(&self.0)
        }
    }
}

pub(super) fn unescape_token(token: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(token).decode_utf8_lossy();
    decoded.replace("~1", "/").replace("~0", "~")
}

/// The OpenAPI version a document declares (`openapi: 3.0.x` or `3.1.x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V30,
    V31,
}

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

pub(super) fn object<'v>(
    value: &'v Value,
    at: &Loc,
) -> Result<&'v Map<String, Value>, DocumentError> {
    value
        .as_object()
        .ok_or_else(|| DocumentError::at(at, format!("expected a mapping, found {}", kind(value))))
}

pub(super) fn optional_string<'v>(
    map: &'v Map<String, Value>,
    key: &str,
    at: &Loc,
) -> Result<Option<&'v str>, DocumentError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(DocumentError::at(
            at.key(key),
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

/// `map[key]` if it is a boolean, `None` if it is absent (`null` is not a boolean).
pub(super) fn optional_bool(
    map: &Map<String, Value>,
    key: &str,
    at: &Loc,
) -> Result<Option<bool>, DocumentError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(other) => Err(DocumentError::at(
            at.key(key),
            format!("expected a boolean, found {}", kind(other)),
        )),
    }
}

pub(super) fn required_string<'v>(
    map: &'v Map<String, Value>,
    key: &str,
    at: &Loc,
) -> Result<&'v str, DocumentError> {
    optional_string(map, key, at)?.ok_or_else(|| DocumentError::at(at.key(key), "missing field"))
}
