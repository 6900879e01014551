//! What an imported tool is: the operation it calls, the JSON Schema of its arguments, where each
//! argument goes in the HTTP request, and whether it reads or writes ([`Access`], the one
//! read/write vocabulary of every tool, imported or built in).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What calling a tool does to the outside world: the one read/write vocabulary of every tool,
/// imported or built into the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Looks something up (an imported GET or HEAD).
    Read,
    /// Changes something (an imported POST, PUT, PATCH or DELETE).
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl TryFrom<String> for Access {
    type Error = UnknownAccess;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            _ => Err(UnknownAccess(value)),
        }
    }
}

/// `imported_tools.access` is `TEXT`: decoded through [`TryFrom<String>`], so a stored text that
/// is neither `read` nor `write` is a decode error.
impl sqlx::Type<sqlx::Postgres> for Access {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Access {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Self::try_from(<String as sqlx::Decode<
            'r,
            sqlx::Postgres,
        >>::decode(value)?)?)
    }
}

/// A stored `access` that is neither `read` nor `write`.
#[derive(Debug, thiserror::Error)]
#[error("unknown access {0:?}")]
pub struct UnknownAccess(String);

/// Where an argument goes in the HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    /// Replaces `{name}` in the path, percent-encoded.
    Path,
    /// A query parameter.
    Query,
    /// A request header.
    Header,
    /// A `name=value` pair of the `Cookie` header.
    Cookie,
    /// The whole JSON request body.
    Body,
}

/// How one argument of a tool becomes part of the HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgumentMapping {
    /// The property name in the arguments object (usually the parameter's name; `<in>_<name>`
    /// when two parameters share a name; `body` for the request body).
    pub argument: String,
    /// Where it goes.
    #[serde(rename = "in")]
    pub location: Location,
    /// The parameter's name in the HTTP request (for the body: `body`).
    pub name: String,
    /// The call cannot be made without it.
    pub required: bool,
    /// For an array in the query: `name=a&name=b` (true, OpenAPI's default for `form`) or
    /// `name=a,b` (false).
    #[serde(default)]
    pub explode: bool,
}

/// How to build the HTTP request from a tool's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMapping {
    /// One entry per property of the arguments object, in the order they were declared.
    pub arguments: Vec<ArgumentMapping>,
    /// The `Content-Type` of the JSON body, when the operation takes one.
    pub body_content_type: Option<String>,
}

/// `imported_tools.request` is this mapping as JSON (`query_as!` reads it as [`Json`]).
///
/// [`Json`]: sqlx::types::Json
impl From<sqlx::types::Json<RequestMapping>> for RequestMapping {
    fn from(json: sqlx::types::Json<RequestMapping>) -> Self {
        json.0
    }
}

/// One importable tool: an OpenAPI operation the worker can offer to a model and call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedTool {
    /// Matches `^[a-zA-Z0-9_-]{1,64}$`: the operationId, or the method and path made safe.
    pub name: String,
    /// From the operation's summary and description.
    pub description: String,
    /// Upper case: GET, HEAD, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// The path template as in the document, e.g. `/pets/{petId}`.
    pub path: String,
    /// The server URL the path is appended to, without a trailing slash. Absolute unless the
    /// document's server was relative and the import gave no `base_url`.
    pub base_url: String,
    /// The JSON Schema of the arguments object, `$ref`s inlined.
    pub parameters: Value,
    /// Where each argument goes.
    pub request: RequestMapping,
    /// Read or write.
    pub access: Access,
    /// The runtime must ask the user before calling it.
    pub requires_approval: bool,
}
