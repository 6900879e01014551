//! Imported OpenAPI tools (SPEC §4, §5): an OpenAPI 3.0 or 3.1 document becomes proposed tools, an
//! operator reviews them, and the worker calls the reviewed and enabled ones over HTTP.
//!
//! Parsing has two stages. [`parse_document`] first walks the document itself (as JSON) for
//! everything a tool is made of — paths, operations, parameters, request bodies, servers and their
//! `$ref`s — and refuses what it cannot use with the exact location of the problem. Then the whole
//! document is checked against the version's typed model (`openapiv3` for 3.0, `oas3` for 3.1), which
//! catches what the walk does not read (responses, components, security, ...). Schemas are taken
//! from the document as written, not from the typed models, which drop keywords they do not know.
//!
//! Storage ([`save_imported`], [`list`], [`review`], [`load_usable`]) and the request a call makes
//! ([`ImportedTool::build_request`]) live here too, so the edge and the worker share one definition.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use url::Url;
use uuid::Uuid;

/// The largest document `POST /api/admin/openapi` accepts.
pub const MAX_DOCUMENT_BYTES: usize = 2 * 1024 * 1024;
/// The most a YAML document may weigh once its aliases are expanded (roughly the memory of the
/// decoded value: 48 bytes a node plus its text); alias bombs are refused past it.
pub const MAX_YAML_EXPANDED_BYTES: usize = 32 * 1024 * 1024;
/// The most `$ref`s followed inside one another; deeper (or cyclic) references are not expanded.
pub const MAX_REF_DEPTH: usize = 32;
/// The most one argument's schema may weigh (roughly its bytes as JSON) once `$ref`s are inlined.
pub const MAX_SCHEMA_BYTES: usize = 1024 * 1024;
/// The most all the schemas of one document may weigh once `$ref`s are inlined.
pub const MAX_DOCUMENT_SCHEMA_BYTES: usize = 16 * 1024 * 1024;
/// The deepest a schema may nest once `$ref`s are inlined (it bounds the resolver's recursion).
pub const MAX_SCHEMA_DEPTH: usize = 256;
/// The most operations one document may hold.
pub const MAX_OPERATIONS: usize = 1_000;
/// Tool names follow OpenAI's function names: `^[a-zA-Z0-9_-]{1,64}$`.
pub const MAX_NAME_LEN: usize = 64;
/// Descriptions are cut to this many characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1_024;

/// What calling a tool does to the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// GET, HEAD: looks something up.
    Read,
    /// POST, PUT, PATCH, DELETE: changes something.
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

/// The HTTP request of one tool call, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltRequest {
    /// Upper case.
    pub method: String,
    /// Absolute, with the path parameters filled in and the query string appended.
    pub url: String,
    /// Header parameters, plus `content-type` when there is a body and `cookie` for cookie
    /// parameters. Names are as the document wrote them.
    pub headers: Vec<(String, String)>,
    /// The JSON body, if the operation takes one and it was given.
    pub json_body: Option<Value>,
}

/// Everything in a path segment or query component but the unreserved characters of RFC 3986.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl ImportedTool {
    /// Builds the HTTP request for a call with `args` (already validated against
    /// [`Self::parameters`]). Refuses arguments it does not know, a missing required argument, a
    /// path parameter that is empty, `.` or `..`, a header value with control characters, and a
    /// base URL that is not absolute http(s).
    pub fn build_request(&self, args: &Value) -> Result<BuiltRequest, String> {
        let Value::Object(args) = args else {
            return Err("the arguments must be a JSON object".into());
        };
        if let Some(unknown) = args
            .keys()
            .find(|key| !self.request.arguments.iter().any(|a| &a.argument == *key))
        {
            return Err(format!("unknown argument {unknown:?}"));
        }
        match Url::parse(&self.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(format!(
                    "the base URL {:?} is not an absolute http(s) URL; import the document again with ?base_url=",
                    self.base_url
                ))
            }
        }
        let mut path = self.path.clone();
        let mut query: Vec<(String, String)> = Vec::new();
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut cookies: Vec<String> = Vec::new();
        let mut json_body = None;
        for mapping in &self.request.arguments {
            let value = match args.get(&mapping.argument) {
                None | Some(Value::Null) if mapping.required => {
                    return Err(format!("missing required argument {:?}", mapping.argument))
                }
                None | Some(Value::Null) => continue,
                Some(value) => value,
            };
            match mapping.location {
                Location::Path => {
                    let text = simple_text(value);
                    if text.is_empty() || text == "." || text == ".." {
                        return Err(format!(
                            "path argument {:?} may not be empty, \".\" or \"..\"",
                            mapping.argument
                        ));
                    }
                    let encoded = utf8_percent_encode(&text, COMPONENT).to_string();
                    path = path.replace(&format!("{{{}}}", mapping.name), &encoded);
                }
                Location::Query => match value {
                    Value::Array(items) if mapping.explode => {
                        for item in items {
                            query.push((mapping.name.clone(), simple_text(item)));
                        }
                    }
                    _ => query.push((mapping.name.clone(), simple_text(value))),
                },
                Location::Header => {
                    let text = simple_text(value);
                    if text.chars().any(|c| c.is_control() && c != '\t') {
                        return Err(format!(
                            "header argument {:?} contains control characters",
                            mapping.argument
                        ));
                    }
                    headers.push((mapping.name.clone(), text));
                }
                Location::Cookie => {
                    let text = simple_text(value);
                    cookies.push(format!(
                        "{}={}",
                        mapping.name,
                        utf8_percent_encode(&text, COMPONENT)
                    ));
                }
                Location::Body => json_body = Some(value.clone()),
            }
        }
        if let Some(start) = path.find('{') {
            let rest = &path[start..];
            let end = rest.find('}').map_or(rest.len(), |end| end + 1);
            return Err(format!(
                "path parameter {} has no value",
                &rest[..end.min(rest.len())]
            ));
        }
        let mut url = format!("{}{path}", self.base_url.trim_end_matches('/'));
        if !query.is_empty() {
            let encoded: Vec<String> = query
                .iter()
                .map(|(name, value)| {
                    format!(
                        "{}={}",
                        utf8_percent_encode(name, COMPONENT),
                        utf8_percent_encode(value, COMPONENT)
                    )
                })
                .collect();
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&encoded.join("&"));
        }
        if json_body.is_some() {
            let content_type = self
                .request
                .body_content_type
                .clone()
                .unwrap_or_else(|| "application/json".into());
            headers.push(("content-type".into(), content_type));
        }
        if !cookies.is_empty() {
            headers.push(("cookie".into(), cookies.join("; ")));
        }
        Ok(BuiltRequest {
            method: self.method.clone(),
            url,
            headers,
            json_body,
        })
    }
}

/// A scalar as text; an array as its items' text joined with commas (OpenAPI's `simple` and
/// unexploded `form` styles); an object as JSON.
fn simple_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        Value::Array(items) => items.iter().map(simple_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => value.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// How the raw document is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentFormat {
    /// `application/json` (or `*+json`).
    Json,
    /// `application/yaml`, `text/yaml` and their `x-` forms.
    Yaml,
    /// Anything else: JSON if it starts with `{`, otherwise YAML.
    Detect,
}

impl DocumentFormat {
    /// The format a `Content-Type` header announces.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let essence = content_type
            .and_then(|value| value.split(';').next())
            .map(|value| value.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match essence.as_str() {
            "application/json" => Self::Json,
            other if other.ends_with("+json") => Self::Json,
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Self::Yaml,
            _ => Self::Detect,
        }
    }
}

/// What an import is told besides the document.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: DocumentFormat,
    /// Resolves relative server URLs (and a document without `servers`), as a link on that page
    /// would be resolved. Must be an absolute http(s) URL.
    pub base_url: Option<String>,
}

/// A problem in the document, at a location written as `paths./pets.get.parameters[0].in`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DocumentError {
    /// Where in the document: keys joined with `.`, array indexes as `[i]`; `document` for the
    /// whole text.
    pub path: String,
    pub message: String,
}

/// Why an import was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The document is not a usable OpenAPI 3.0/3.1 document.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The `base_url` option is not an absolute http(s) URL.
    #[error("base_url {0}")]
    BaseUrl(String),
}

/// An operation that did not become a tool, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedOperation {
    pub method: String,
    pub path: String,
    pub reason: String,
}

/// A parsed document: its tools in document order, and the operations left out.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedDocument {
    /// `info.title` and `info.version`, e.g. `Swagger Petstore 1.0.0`.
    pub source: String,
    pub tools: Vec<ImportedTool>,
    pub skipped: Vec<SkippedOperation>,
}

/// Parses an OpenAPI 3.0.x or 3.1.x document (JSON or YAML) into proposed tools.
///
/// GET and HEAD become `read` tools; POST, PUT, PATCH and DELETE become `write` tools that require
/// approval; OPTIONS and TRACE are skipped, as is an operation whose required request body is not
/// JSON. Errors name the location of the problem in the document.
pub fn parse_document(
    raw: &[u8],
    options: &ImportOptions,
) -> Result<ImportedDocument, ImportError> {
    parse_document_until(raw, options, &AtomicBool::new(false))
}

/// [`parse_document`], given up as soon as it notices `stop` set (the request that asked for it
/// ended): the edge sets it when an import's request times out or its client leaves, so that a
/// parse on a blocking thread does not go on for nobody. Every stage is bounded anyway (document
/// size, YAML expansion, inlined schema size); `stop` ends the work sooner.
pub fn parse_document_until(
    raw: &[u8],
    options: &ImportOptions,
    stop: &AtomicBool,
) -> Result<ImportedDocument, ImportError> {
    let base_url = match &options.base_url {
        None => None,
        Some(text) => match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                return Err(ImportError::BaseUrl(format!(
                    "{text:?} is not an absolute http(s) URL"
                )))
            }
        },
    };
    if raw.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::at(
            "document",
            format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
        )
        .into());
    }
    let root = decode(raw, options.format, stop)?;
    let version = version(&root)?;
    check_references(&root, &root, &Loc::root())?;
    let walker = Walker {
        root: &root,
        version,
        base_url: base_url.as_ref(),
        schema_bytes: Cell::new(0),
        stop,
    };
    let document = walker.document()?;
    stopped(stop)?;
    check_structure(&root, version)?;
    Ok(document)
}

/// An error once `stop` is set.
fn stopped(stop: &AtomicBool) -> Result<(), DocumentError> {
    if stop.load(Ordering::Relaxed) {
        return Err(DocumentError::at(
            "document",
            "the import was stopped (the request ended)",
        ));
    }
    Ok(())
}

impl DocumentError {
    fn at(path: impl fmt::Display, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// A location in the document, written as serde_path_to_error writes one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loc(String);

impl Loc {
    fn root() -> Self {
        Self(String::new())
    }

    fn key(&self, key: &str) -> Self {
        if self.0.is_empty() {
            Self(key.to_owned())
        } else {
            Self(format!("{}.{key}", self.0))
        }
    }

    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The location a local `$ref` (`#/components/schemas/Pet`) points to.
    fn of_pointer(reference: &str) -> Self {
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

fn unescape_token(token: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(token).decode_utf8_lossy();
    decoded.replace("~1", "/").replace("~0", "~")
}

fn decode(raw: &[u8], format: DocumentFormat, stop: &AtomicBool) -> Result<Value, DocumentError> {
    let text = std::str::from_utf8(raw).map_err(|error| {
        DocumentError::at(
            "document",
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                error.valid_up_to()
            ),
        )
    })?;
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return Err(DocumentError::at("document", "the body is empty"));
    }
    let json = match format {
        DocumentFormat::Json => true,
        DocumentFormat::Yaml => false,
        DocumentFormat::Detect => text.trim_start().starts_with('{'),
    };
    if json {
        // serde_json refuses nesting deeper than 128 levels, and JSON has no aliases: what it
        // builds is bounded by the document's size.
        serde_json::from_str(text)
            .map_err(|error| DocumentError::at("document", format!("not valid JSON: {error}")))
    } else {
        decode_yaml(text, stop)
    }
}

/// Decodes YAML with a bound on what its aliases expand to.
///
/// serde_yaml_ng follows every alias (`*name`) by replaying its anchor's events, and only stops
/// after 100 times as many jumps as the document has events: a few kilobytes of nested aliases
/// ("billion laughs") still expand to gigabytes. The value is therefore built by a visitor that
/// weighs every node it receives, whether written out or reached through an alias, and gives up
/// past [`MAX_YAML_EXPANDED_BYTES`], before the memory is spent. serde_yaml_ng's own limits stay
/// in force under it (128 levels of nesting).
fn decode_yaml(text: &str, stop: &AtomicBool) -> Result<Value, DocumentError> {
    use serde::de::DeserializeSeed as _;
    let budget = YamlBudget {
        spent: Cell::new(0),
        nodes: Cell::new(0),
        stop,
        exceeded: Cell::new(None),
    };
    let decoded = BoundedValue(&budget).deserialize(serde_yaml_ng::Deserializer::from_str(text));
    match (decoded, budget.exceeded.get()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(Exceeded::Size)) => Err(DocumentError::at(
            "document",
            format!(
                "the YAML grows past {MAX_YAML_EXPANDED_BYTES} bytes once decoded (each alias \
                 *name counts as a copy of its anchor)"
            ),
        )),
        (Err(_), Some(Exceeded::Stopped)) => Err(DocumentError::at(
            "document",
            "the import was stopped (the request ended)",
        )),
        (Err(error), None) => Err(DocumentError::at(
            "document",
            format!("not valid YAML: {error}"),
        )),
    }
}

/// Why [`BoundedValue`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exceeded {
    Size,
    Stopped,
}

/// What the YAML decoded so far weighs, shared by every level of [`BoundedValue`].
struct YamlBudget<'s> {
    /// Roughly the memory of the value built so far: [`NODE_WEIGHT`] per node plus its text.
    spent: Cell<usize>,
    nodes: Cell<usize>,
    stop: &'s AtomicBool,
    exceeded: Cell<Option<Exceeded>>,
}

/// What one node (scalar, sequence, mapping, or a mapping's key) is counted for besides its text:
/// about the size of a `serde_json::Value` and its place in a map.
const NODE_WEIGHT: usize = 48;

impl YamlBudget<'_> {
    fn spend<E: serde::de::Error>(&self, text_bytes: usize) -> Result<(), E> {
        let spent = self
            .spent
            .get()
            .saturating_add(NODE_WEIGHT)
            .saturating_add(text_bytes);
        self.spent.set(spent);
        let nodes = self.nodes.get() + 1;
        self.nodes.set(nodes);
        if spent > MAX_YAML_EXPANDED_BYTES {
            self.exceeded.set(Some(Exceeded::Size));
            return Err(E::custom("the document expands past the bound"));
        }
        if nodes.is_multiple_of(4096) && self.stop.load(Ordering::Relaxed) {
            self.exceeded.set(Some(Exceeded::Stopped));
            return Err(E::custom("the import was stopped"));
        }
        Ok(())
    }
}

/// Builds a `serde_json::Value` as `serde_json`'s own visitor does, node by node against a
/// [`YamlBudget`].
#[derive(Clone, Copy)]
struct BoundedValue<'b, 's>(&'b YamlBudget<'s>);

impl<'de> serde::de::DeserializeSeed<'de> for BoundedValue<'_, '_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BoundedValue<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::from(value))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::from(value))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
        self.0.spend(0)?;
        // As serde_json does: NaN and the infinities are not JSON numbers.
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Value, E> {
        self.0.spend(value.len())?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Value, E> {
        self.0.spend(value.len())?;
        Ok(Value::String(value))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Null)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.0.spend(0)?;
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.spend(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.spend(0)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.0.spend(key.len())?;
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V30,
    V31,
}

fn version(root: &Value) -> Result<Version, DocumentError> {
    let Value::Object(root) = root else {
        return Err(DocumentError::at(
            "document",
            format!(
                "expected an OpenAPI object (a mapping), found {}",
                kind(root)
            ),
        ));
    };
    if let Some(swagger) = root.get("swagger") {
        return Err(DocumentError::at(
            "swagger",
            format!(
                "version {} (Swagger) is not supported; convert the document to OpenAPI 3.0 or 3.1",
                scalar_display(swagger)
            ),
        ));
    }
    let Some(openapi) = root.get("openapi") else {
        return Err(DocumentError::at(
            "openapi",
            "missing field: this is not an OpenAPI 3 document",
        ));
    };
    let text = scalar_display(openapi);
    let parts: Vec<&str> = text.split('.').collect();
    let version = match parts.as_slice() {
        ["3", "0", ..] => Version::V30,
        ["3", "1", ..] => Version::V31,
        _ => {
            return Err(DocumentError::at(
                "openapi",
                format!("version {text} is not supported (3.0.x and 3.1.x are)"),
            ))
        }
    };
    if !openapi.is_string() {
        return Err(DocumentError::at(
            "openapi",
            format!("the version must be a string, such as \"{text}.0\""),
        ));
    }
    Ok(version)
}

fn scalar_display(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Keys whose values are data, not OpenAPI objects: a `$ref` inside them is not a reference.
fn holds_data(key: &str) -> bool {
    matches!(key, "example" | "examples" | "default" | "const" | "enum") || key.starts_with("x-")
}

/// Every `$ref` of the document is local (`#/...`) and points at something.
fn check_references(root: &Value, value: &Value, at: &Loc) -> Result<(), DocumentError> {
    match value {
        Value::Object(map) => {
            // A `$ref` that is not a string is a property named `$ref`, not a reference.
            if let Some(Value::String(reference)) = map.get("$ref") {
                lookup(root, reference, &at.key("$ref"))?;
            }
            for (key, child) in map {
                if key != "$ref" && !holds_data(key) {
                    check_references(root, child, &at.key(key))?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_references(root, item, &at.index(index))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The value a local `$ref` points to.
fn lookup<'a>(root: &'a Value, reference: &str, at: &Loc) -> Result<&'a Value, DocumentError> {
    let Some(pointer) = reference.strip_prefix('#') else {
        return Err(DocumentError::at(
            at,
            format!("{reference} is not a local reference (#/...); external references are not supported"),
        ));
    };
    if !pointer.starts_with('/') {
        return Err(DocumentError::at(
            at,
            format!("{reference} is not a JSON pointer into this document (#/...)"),
        ));
    }
    let mut current = root;
    for token in pointer.split('/').skip(1) {
        let token = unescape_token(token);
        let next = match current {
            Value::Object(map) => map.get(&token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = next.ok_or_else(|| {
            DocumentError::at(
                at,
                format!("{reference} does not resolve: no {token:?} there"),
            )
        })?;
    }
    Ok(current)
}

/// The operation keys of a path item, in the order the specification lists them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The classification of a method: `None` for OPTIONS and TRACE, which are not imported (they
/// describe the protocol, not an action of the API).
fn classify(method: &str) -> Option<Access> {
    match method {
        "GET" | "HEAD" => Some(Access::Read),
        "POST" | "PUT" | "PATCH" | "DELETE" => Some(Access::Write),
        _ => None,
    }
}

/// A parameter of an operation, resolved.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    location: Location,
    required: bool,
    schema: Value,
    explode: bool,
}

/// A request body, resolved.
enum Body {
    Json {
        content_type: String,
        schema: Value,
        required: bool,
    },
    Other {
        content_types: Vec<String>,
        required: bool,
    },
}

enum Outcome {
    Tool(Box<ImportedTool>),
    Skipped(String),
}

/// Reads the parts of the document that tools are made of.
struct Walker<'a> {
    root: &'a Value,
    version: Version,
    base_url: Option<&'a Url>,
    /// What all the document's schemas weigh so far, against [`MAX_DOCUMENT_SCHEMA_BYTES`].
    schema_bytes: Cell<usize>,
    /// Set when the request that asked for the import ended.
    stop: &'a AtomicBool,
}

impl<'a> Walker<'a> {
    fn document(&self) -> Result<ImportedDocument, DocumentError> {
        let source = self.source()?;
        let paths_loc = Loc::root().key("paths");
        let paths = match self.root.get("paths") {
            None if self.version == Version::V30 => {
                return Err(DocumentError::at(paths_loc, "missing field"))
            }
            None => None,
            Some(paths) => Some(object(paths, &paths_loc)?),
        };
        let mut tools: Vec<ImportedTool> = Vec::new();
        let mut skipped = Vec::new();
        let mut operation_ids: HashMap<String, Loc> = HashMap::new();
        let mut count = 0;
        for (path, item) in paths.into_iter().flatten() {
            if path.starts_with("x-") {
                continue;
            }
            let item_loc = paths_loc.key(path);
            if !path.starts_with('/') {
                return Err(DocumentError::at(item_loc, "a path must start with \"/\""));
            }
            let (item, item_loc) = self.deref(item, item_loc)?;
            let item = object(item, &item_loc)?;
            let shared = self.parameters(item.get("parameters"), &item_loc.key("parameters"))?;
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                count += 1;
                if count > MAX_OPERATIONS {
                    return Err(DocumentError::at(
                        paths_loc,
                        format!("more than {MAX_OPERATIONS} operations"),
                    ));
                }
                stopped(self.stop)?;
                let at = item_loc.key(method);
                let operation = object(operation, &at)?;
                let context = Context {
                    path,
                    method: method.to_ascii_uppercase(),
                    item,
                    item_loc: &item_loc,
                    shared: &shared,
                };
                let operation_id = optional_string(operation, "operationId", &at)?;
                if let Some(id) = operation_id {
                    if let Some(previous) = operation_ids.insert(id.to_owned(), at.clone()) {
                        return Err(DocumentError::at(
                            at.key("operationId"),
                            format!("duplicate operationId {id:?} (also at {previous})"),
                        ));
                    }
                }
                match self.operation(&context, operation, &at)? {
                    Outcome::Tool(tool) => {
                        let mut tool = *tool;
                        let taken = |name: &str| tools.iter().any(|t| t.name == name);
                        if taken(&tool.name) {
                            let mut n = 2;
                            while taken(&with_suffix(&tool.name, n)) {
                                n += 1;
                            }
                            tool.name = with_suffix(&tool.name, n);
                        }
                        tools.push(tool);
                    }
                    Outcome::Skipped(reason) => skipped.push(SkippedOperation {
                        method: context.method,
                        path: path.clone(),
                        reason,
                    }),
                }
            }
        }
        Ok(ImportedDocument {
            source,
            tools,
            skipped,
        })
    }

    /// `info.title` and `info.version`.
    fn source(&self) -> Result<String, DocumentError> {
        let at = Loc::root().key("info");
        let Some(info) = self.root.get("info") else {
            return Err(DocumentError::at(at, "missing field"));
        };
        let info = object(info, &at)?;
        let title = required_string(info, "title", &at)?;
        let version = required_string(info, "version", &at)?;
        Ok(format!("{title} {version}").trim().to_owned())
    }

    fn operation(
        &self,
        context: &Context<'a, '_>,
        operation: &'a Map<String, Value>,
        at: &Loc,
    ) -> Result<Outcome, DocumentError> {
        let operation_id = optional_string(operation, "operationId", at)?;
        let summary = optional_string(operation, "summary", at)?;
        let description = optional_string(operation, "description", at)?;
        if self.version == Version::V30 && !operation.contains_key("responses") {
            return Err(DocumentError::at(at.key("responses"), "missing field"));
        }
        let Some(access) = classify(&context.method) else {
            return Ok(Outcome::Skipped(
                "OPTIONS and TRACE operations are not imported".into(),
            ));
        };
        let own = self.parameters(operation.get("parameters"), &at.key("parameters"))?;
        let mut params: Vec<Param> = context
            .shared
            .iter()
            .filter(|shared| {
                !own.iter()
                    .any(|p| p.name == shared.name && p.location == shared.location)
            })
            .cloned()
            .collect();
        params.extend(own);
        let in_template = template_names(context.path);
        // A path parameter missing from the template cannot be sent; one the template names but
        // the document forgot is still needed.
        params.retain(|p| p.location != Location::Path || in_template.contains(&p.name));
        for name in &in_template {
            if !params
                .iter()
                .any(|p| p.location == Location::Path && &p.name == name)
            {
                params.push(Param {
                    name: name.clone(),
                    location: Location::Path,
                    required: true,
                    schema: json!({"type": "string"}),
                    explode: false,
                });
            }
        }
        let body = match operation.get("requestBody") {
            None => None,
            Some(body) => match self.request_body(body, at.key("requestBody"))? {
                json @ Body::Json { .. } => Some(json),
                Body::Other {
                    content_types,
                    required: true,
                } => {
                    return Ok(Outcome::Skipped(format!(
                        "its required request body is not JSON ({})",
                        content_types.join(", ")
                    )))
                }
                Body::Other { .. } => None,
            },
        };
        let base_url = self.base_url(operation, at, context)?;

        let mut properties = Map::new();
        let mut required = Vec::new();
        let mut arguments = Vec::new();
        let mut taken: Vec<String> = Vec::new();
        if body.is_some() {
            taken.push("body".into());
        }
        for param in params {
            let location = location_name(param.location);
            let mut argument = param.name.clone();
            let mut n = 2;
            while taken.contains(&argument) {
                argument = if n == 2 {
                    format!("{location}_{}", param.name)
                } else {
                    format!("{location}_{}_{n}", param.name)
                };
                n += 1;
            }
            taken.push(argument.clone());
            properties.insert(argument.clone(), param.schema);
            if param.required {
                required.push(Value::String(argument.clone()));
            }
            arguments.push(ArgumentMapping {
                argument,
                location: param.location,
                name: param.name,
                required: param.required,
                explode: param.explode,
            });
        }
        let mut body_content_type = None;
        if let Some(Body::Json {
            content_type,
            schema,
            required: body_required,
        }) = body
        {
            properties.insert("body".into(), schema);
            if body_required {
                required.push("body".into());
            }
            arguments.push(ArgumentMapping {
                argument: "body".into(),
                location: Location::Body,
                name: "body".into(),
                required: body_required,
                explode: false,
            });
            body_content_type = Some(content_type);
        }
        let mut parameters = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        if !required.is_empty() {
            parameters["required"] = Value::Array(required);
        }
        Ok(Outcome::Tool(Box::new(ImportedTool {
            name: tool_name(operation_id, &context.method, context.path),
            description: describe(summary, description, &context.method, context.path),
            method: context.method.clone(),
            path: context.path.clone(),
            base_url,
            parameters,
            request: RequestMapping {
                arguments,
                body_content_type,
            },
            access,
            requires_approval: access == Access::Write,
        })))
    }

    /// Follows `$ref`s (of parameters, request bodies, path items) to the object itself; the
    /// location returned is the object's, for errors.
    fn deref(&self, value: &'a Value, at: Loc) -> Result<(&'a Value, Loc), DocumentError> {
        let mut current = value;
        let mut loc = at;
        for _ in 0..MAX_REF_DEPTH {
            let Some(reference) = current.get("$ref") else {
                return Ok((current, loc));
            };
            let Value::String(reference) = reference else {
                return Err(DocumentError::at(
                    loc.key("$ref"),
                    format!("expected a string, found {}", kind(reference)),
                ));
            };
            current = lookup(self.root, reference, &loc.key("$ref"))?;
            loc = Loc::of_pointer(reference);
        }
        Err(DocumentError::at(
            loc,
            format!("more than {MAX_REF_DEPTH} $refs in a row (a reference cycle?)"),
        ))
    }

    fn parameters(&self, list: Option<&'a Value>, at: &Loc) -> Result<Vec<Param>, DocumentError> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = list else {
            return Err(DocumentError::at(
                at,
                format!("expected a sequence, found {}", kind(list)),
            ));
        };
        let mut params = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let (item, loc) = self.deref(item, at.index(index))?;
            let item = object(item, &loc)?;
            let name = required_string(item, "name", &loc)?;
            let location = match required_string(item, "in", &loc)? {
                "path" => Location::Path,
                "query" => Location::Query,
                "header" => Location::Header,
                "cookie" => Location::Cookie,
                other => {
                    return Err(DocumentError::at(
                        loc.key("in"),
                        format!(
                            "unknown location {other:?}; expected path, query, header or cookie"
                        ),
                    ))
                }
            };
            if name.is_empty() {
                return Err(DocumentError::at(loc.key("name"), "may not be empty"));
            }
            if location == Location::Header {
                // OpenAPI: these three are described elsewhere and "SHALL be ignored".
                if ["accept", "content-type", "authorization"]
                    .contains(&name.to_ascii_lowercase().as_str())
                {
                    continue;
                }
                if !name.bytes().all(is_token_byte) {
                    return Err(DocumentError::at(
                        loc.key("name"),
                        format!("{name:?} is not a valid header name"),
                    ));
                }
            }
            let required = match item.get("required") {
                None => false,
                Some(Value::Bool(required)) => *required,
                Some(other) => {
                    return Err(DocumentError::at(
                        loc.key("required"),
                        format!("expected a boolean, found {}", kind(other)),
                    ))
                }
            };
            let style = optional_string(item, "style", &loc)?;
            let explode = match item.get("explode") {
                None => match style {
                    None => matches!(location, Location::Query | Location::Cookie),
                    Some(style) => style == "form",
                },
                Some(Value::Bool(explode)) => *explode,
                Some(other) => {
                    return Err(DocumentError::at(
                        loc.key("explode"),
                        format!("expected a boolean, found {}", kind(other)),
                    ))
                }
            };
            let mut schema = match (item.get("schema"), item.get("content")) {
                (Some(schema), _) => self.schema(schema, &loc.key("schema"))?,
                (None, Some(content)) => {
                    let content_loc = loc.key("content");
                    let content = object(content, &content_loc)?;
                    match content.iter().next() {
                        Some((media_type, media)) => {
                            let media_loc = content_loc.key(media_type);
                            match object(media, &media_loc)?.get("schema") {
                                Some(schema) => self.schema(schema, &media_loc.key("schema"))?,
                                None => json!({}),
                            }
                        }
                        None => json!({}),
                    }
                }
                (None, None) => json!({}),
            };
            if let Some(description) = optional_string(item, "description", &loc)? {
                describe_schema(&mut schema, description);
            }
            params.push(Param {
                name: name.to_owned(),
                location,
                // OpenAPI: a path parameter is always required.
                required: required || location == Location::Path,
                schema,
                explode,
            });
        }
        Ok(params)
    }

    fn request_body(&self, body: &'a Value, at: Loc) -> Result<Body, DocumentError> {
        let (body, loc) = self.deref(body, at)?;
        let body = object(body, &loc)?;
        let required = match body.get("required") {
            None => false,
            Some(Value::Bool(required)) => *required,
            Some(other) => {
                return Err(DocumentError::at(
                    loc.key("required"),
                    format!("expected a boolean, found {}", kind(other)),
                ))
            }
        };
        let description = optional_string(body, "description", &loc)?;
        let content_loc = loc.key("content");
        let Some(content) = body.get("content") else {
            return Err(DocumentError::at(content_loc, "missing field"));
        };
        let content = object(content, &content_loc)?;
        let Some((content_type, media)) = content.iter().find(|(media, _)| is_json_media(media))
        else {
            return Ok(Body::Other {
                content_types: content.keys().cloned().collect(),
                required,
            });
        };
        let media_loc = content_loc.key(content_type);
        let mut schema = match object(media, &media_loc)?.get("schema") {
            Some(schema) => self.schema(schema, &media_loc.key("schema"))?,
            None => json!({}),
        };
        if let Some(description) = description {
            describe_schema(&mut schema, description);
        }
        Ok(Body::Json {
            content_type: content_type.clone(),
            schema,
            required,
        })
    }

    fn schema(&self, schema: &'a Value, at: &Loc) -> Result<Value, DocumentError> {
        let mut resolver = SchemaResolver {
            root: self.root,
            version: self.version,
            stack: Vec::new(),
            bytes: 0,
            depth: 0,
            stop: self.stop,
        };
        let resolved = resolver.resolve(schema, at)?;
        let total = self.schema_bytes.get() + resolver.bytes;
        self.schema_bytes.set(total);
        if total > MAX_DOCUMENT_SCHEMA_BYTES {
            return Err(DocumentError::at(
                at,
                format!(
                    "the document's schemas grow past {MAX_DOCUMENT_SCHEMA_BYTES} bytes once their $refs are inlined"
                ),
            ));
        }
        Ok(resolved)
    }

    /// The operation's server, else its path item's, else the document's; relative URLs are
    /// resolved against the import's `base_url`, which also stands in for a document that names
    /// no server at all.
    fn base_url(
        &self,
        operation: &Map<String, Value>,
        at: &Loc,
        context: &Context<'a, '_>,
    ) -> Result<String, DocumentError> {
        let candidates = [
            (operation.get("servers"), at.key("servers")),
            (context.item.get("servers"), context.item_loc.key("servers")),
            (self.root.get("servers"), Loc::root().key("servers")),
        ];
        for (servers, loc) in candidates {
            if let Some((url, url_loc)) = server_url(servers, &loc)? {
                return self.resolve_server(&url, &url_loc);
            }
        }
        Ok(match self.base_url {
            Some(base) => trim_url(base.as_str()),
            None => "/".into(),
        })
    }

    fn resolve_server(&self, url: &str, at: &Loc) -> Result<String, DocumentError> {
        match Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(trim_url(url)),
            Ok(_) => Err(DocumentError::at(
                at,
                format!("{url:?} is not an http(s) URL"),
            )),
            Err(url::ParseError::RelativeUrlWithoutBase) => match self.base_url {
                Some(base) => base
                    .join(url)
                    .map(|joined| trim_url(joined.as_str()))
                    .map_err(|error| {
                        DocumentError::at(
                            at,
                            format!("{url:?} does not resolve against base_url: {error}"),
                        )
                    }),
                None => Ok(trim_url(url)),
            },
            Err(error) => Err(DocumentError::at(
                at,
                format!("{url:?} is not a valid URL: {error}"),
            )),
        }
    }
}

/// What an operation shares with its path item.
struct Context<'a, 'w> {
    path: &'a String,
    /// Upper case.
    method: String,
    item: &'a Map<String, Value>,
    item_loc: &'w Loc,
    shared: &'w [Param],
}

fn trim_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.to_owned()
    }
}

/// The first server's URL with its variables replaced by their defaults, and where it is.
fn server_url(servers: Option<&Value>, at: &Loc) -> Result<Option<(String, Loc)>, DocumentError> {
    let Some(servers) = servers else {
        return Ok(None);
    };
    let Value::Array(list) = servers else {
        return Err(DocumentError::at(
            at,
            format!("expected a sequence, found {}", kind(servers)),
        ));
    };
    let Some(first) = list.first() else {
        return Ok(None);
    };
    let loc = at.index(0);
    let server = object(first, &loc)?;
    let url = required_string(server, "url", &loc)?;
    let url_loc = loc.key("url");
    let variables = server.get("variables");
    let mut resolved = String::new();
    let mut rest = url;
    while let Some(start) = rest.find('{') {
        resolved.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(DocumentError::at(url_loc, "a \"{\" is not closed"));
        };
        let variable = &after[..end];
        let default = variables
            .and_then(|variables| variables.get(variable))
            .and_then(|variable| variable.get("default"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                DocumentError::at(
                    &url_loc,
                    format!("server variable {variable:?} has no default in variables"),
                )
            })?;
        resolved.push_str(default);
        rest = &after[end + 1..];
    }
    resolved.push_str(rest);
    Ok(Some((resolved, url_loc)))
}

fn object<'v>(value: &'v Value, at: &Loc) -> Result<&'v Map<String, Value>, DocumentError> {
    value
        .as_object()
        .ok_or_else(|| DocumentError::at(at, format!("expected a mapping, found {}", kind(value))))
}

fn optional_string<'v>(
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

fn required_string<'v>(
    map: &'v Map<String, Value>,
    key: &str,
    at: &Loc,
) -> Result<&'v str, DocumentError> {
    optional_string(map, key, at)?.ok_or_else(|| DocumentError::at(at.key(key), "missing field"))
}

fn location_name(location: Location) -> &'static str {
    match location {
        Location::Path => "path",
        Location::Query => "query",
        Location::Header => "header",
        Location::Cookie => "cookie",
        Location::Body => "body",
    }
}

/// `application/json`, `application/problem+json`, ... (parameters such as `charset` aside).
fn is_json_media(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The `{name}`s of a path template, in order.
fn template_names(path: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            break;
        };
        let name = after[..end].to_owned();
        if !names.contains(&name) {
            names.push(name);
        }
        rest = &after[end + 1..];
    }
    names
}

/// Sets a schema's `description` unless it has one.
fn describe_schema(schema: &mut Value, description: &str) {
    if let Value::Object(map) = schema {
        map.entry("description")
            .or_insert_with(|| Value::String(description.to_owned()));
    }
}

/// The tool's description: summary, then description; else the method and path.
fn describe(summary: Option<&str>, description: Option<&str>, method: &str, path: &str) -> String {
    let summary = summary.map(str::trim).filter(|text| !text.is_empty());
    let description = description.map(str::trim).filter(|text| !text.is_empty());
    let text = match (summary, description) {
        (Some(summary), Some(description)) if summary != description => {
            format!("{summary}\n\n{description}")
        }
        (Some(text), _) | (None, Some(text)) => text.to_owned(),
        (None, None) => format!("{method} {path}"),
    };
    text.chars().take(MAX_DESCRIPTION_CHARS).collect()
}

/// A tool's name: the operationId, or the method and path, made to match
/// `^[a-zA-Z0-9_-]{1,64}$`. Other characters become `_`; a derived name collapses runs of `_`; a
/// name longer than 64 keeps its first 55 characters and a hash of the whole.
///
/// `tool_name(Some("listPets"), "GET", "/pets") == "listPets"`,
/// `tool_name(None, "GET", "/pets/{petId}") == "get_pets_petId"`.
pub fn tool_name(operation_id: Option<&str>, method: &str, path: &str) -> String {
    if let Some(id) = operation_id {
        let safe: String = id.chars().map(safe_char).collect();
        if safe.chars().any(|c| c.is_ascii_alphanumeric()) {
            return fit_name(safe, id);
        }
    }
    let raw = format!("{}_{path}", method.to_ascii_lowercase());
    let mut safe = String::new();
    for c in raw.chars().map(safe_char) {
        if !(c == '_' && safe.ends_with('_')) {
            safe.push(c);
        }
    }
    fit_name(safe.trim_matches('_').to_owned(), &raw)
}

fn safe_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
        c
    } else {
        '_'
    }
}

fn fit_name(name: String, original: &str) -> String {
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let digest = Sha256::digest(original.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    // The name is ASCII here, so byte offsets are character offsets.
    format!("{}_{hash}", &name[..MAX_NAME_LEN - 9])
}

/// `name_2`, `name_3`, ... still within 64 characters.
fn with_suffix(name: &str, n: usize) -> String {
    let suffix = format!("_{n}");
    let keep = name.len().min(MAX_NAME_LEN - suffix.len());
    format!("{}{suffix}", &name[..keep])
}

/// Turns an OpenAPI Schema Object into plain JSON Schema: `$ref`s inlined (a cycle, or more than
/// [`MAX_REF_DEPTH`] nested references, becomes a schema that accepts anything), OpenAPI-only
/// keywords dropped, and 3.0's `nullable` and boolean `exclusiveMinimum`/`exclusiveMaximum`
/// written the JSON Schema way.
struct SchemaResolver<'a> {
    root: &'a Value,
    version: Version,
    /// The `$ref`s being expanded, outermost first.
    stack: Vec<String>,
    /// Roughly the size of the output so far, as JSON text.
    bytes: usize,
    /// How deep `resolve` is now.
    depth: usize,
    /// Set when the request that asked for the import ended.
    stop: &'a AtomicBool,
}

impl SchemaResolver<'_> {
    fn resolve(&mut self, schema: &Value, at: &Loc) -> Result<Value, DocumentError> {
        if self.depth >= MAX_SCHEMA_DEPTH {
            return Err(DocumentError::at(
                at,
                format!("the schema nests deeper than {MAX_SCHEMA_DEPTH} levels once its $refs are inlined"),
            ));
        }
        self.depth += 1;
        let resolved = self.resolve_here(schema, at);
        self.depth -= 1;
        resolved
    }

    /// Counts `bytes` more of output against [`MAX_SCHEMA_BYTES`].
    fn spend(&mut self, bytes: usize, at: &Loc) -> Result<(), DocumentError> {
        stopped(self.stop)?;
        self.bytes += bytes;
        if self.bytes > MAX_SCHEMA_BYTES {
            return Err(DocumentError::at(
                at,
                format!(
                    "the schema grows past {MAX_SCHEMA_BYTES} bytes once its $refs are inlined"
                ),
            ));
        }
        Ok(())
    }

    fn resolve_here(&mut self, schema: &Value, at: &Loc) -> Result<Value, DocumentError> {
        self.spend(2, at)?;
        match schema {
            Value::Bool(_) => Ok(schema.clone()),
            Value::Object(map) => match map.get("$ref") {
                Some(Value::String(reference)) => self.reference(reference, map, at),
                Some(other) => Err(DocumentError::at(
                    at.key("$ref"),
                    format!("expected a string, found {}", kind(other)),
                )),
                None => self.keywords(map, at),
            },
            other => Err(DocumentError::at(
                at,
                format!("a schema must be a mapping, found {}", kind(other)),
            )),
        }
    }

    fn reference(
        &mut self,
        reference: &str,
        map: &Map<String, Value>,
        at: &Loc,
    ) -> Result<Value, DocumentError> {
        let resolved = if self.stack.iter().any(|open| open == reference)
            || self.stack.len() >= MAX_REF_DEPTH
        {
            let name = reference.rsplit('/').next().unwrap_or(reference);
            json!({"description": format!("{name} (a recursive reference, not expanded)")})
        } else {
            let target = lookup(self.root, reference, &at.key("$ref"))?;
            self.stack.push(reference.to_owned());
            let resolved = self.resolve(target, &Loc::of_pointer(reference));
            self.stack.pop();
            resolved?
        };
        // OpenAPI 3.0 ignores keywords beside a `$ref`; 3.1 (JSON Schema 2020-12) applies them.
        if self.version == Version::V30 || map.len() == 1 {
            return Ok(resolved);
        }
        let mut siblings = map.clone();
        siblings.remove("$ref");
        let Value::Object(siblings) = self.keywords(&siblings, at)? else {
            return Ok(resolved);
        };
        Ok(merge_siblings(resolved, siblings))
    }

    fn keywords(&mut self, map: &Map<String, Value>, at: &Loc) -> Result<Value, DocumentError> {
        let mut out = Map::new();
        for (key, value) in map {
            if key.starts_with("x-") {
                continue;
            }
            let here = at.key(key);
            self.spend(key.len() + 4, &here)?;
            match key.as_str() {
                "discriminator" | "xml" | "externalDocs" | "example" | "nullable" => {}
                "exclusiveMinimum" | "exclusiveMaximum" if value.is_boolean() => {}
                "properties" | "patternProperties" | "$defs" | "definitions"
                | "dependentSchemas" => {
                    let children = object(value, &here)?;
                    let mut resolved = Map::new();
                    for (name, child) in children {
                        self.spend(name.len() + 4, &here)?;
                        resolved.insert(name.clone(), self.resolve(child, &here.key(name))?);
                    }
                    out.insert(key.clone(), Value::Object(resolved));
                }
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                    let Value::Array(items) = value else {
                        return Err(DocumentError::at(
                            here,
                            format!("expected a sequence, found {}", kind(value)),
                        ));
                    };
                    out.insert(key.clone(), self.resolve_all(items, &here)?);
                }
                "items" if value.is_array() => {
                    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
                    out.insert(key.clone(), self.resolve_all(items, &here)?);
                }
                "items"
                | "additionalProperties"
                | "additionalItems"
                | "not"
                | "contains"
                | "propertyNames"
                | "if"
                | "then"
                | "else"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "contentSchema" => {
                    out.insert(key.clone(), self.resolve(value, &here)?);
                }
                _ => {
                    self.spend(weight(value), &here)?;
                    out.insert(key.clone(), value.clone());
                }
            }
        }
        if self.version == Version::V30 {
            for (flag, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if map.get(flag) == Some(&Value::Bool(true)) {
                    if let Some(bound) = out.remove(bound) {
                        out.insert(flag.into(), bound);
                    }
                }
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                make_nullable(&mut out);
            }
        }
        Ok(Value::Object(out))
    }

    fn resolve_all(&mut self, items: &[Value], at: &Loc) -> Result<Value, DocumentError> {
        let mut resolved = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            resolved.push(self.resolve(item, &at.index(index))?);
        }
        Ok(Value::Array(resolved))
    }
}

/// Roughly the size of `value` as JSON text.
fn weight(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 8,
        Value::String(text) => text.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|item| weight(item) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(key, item)| key.len() + 4 + weight(item))
                .sum::<usize>()
        }
    }
}

/// 3.0's `nullable: true`: `null` joins the `type` (and the `enum`, if any).
fn make_nullable(schema: &mut Map<String, Value>) {
    let null = Value::String("null".into());
    match schema.get_mut("type") {
        Some(Value::String(single)) => {
            let single = Value::String(std::mem::take(single));
            schema.insert("type".into(), Value::Array(vec![single, null]));
        }
        Some(Value::Array(types)) if !types.contains(&null) => types.push(null),
        _ => {}
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        if !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
    }
}

/// Keywords that only annotate: beside a `$ref` they can simply be added to its target.
fn is_annotation(keyword: &str) -> bool {
    matches!(
        keyword,
        "title" | "description" | "default" | "examples" | "deprecated" | "readOnly" | "writeOnly"
    )
}

/// A 3.1 `$ref` with sibling keywords: the siblings are added to the target unless one of them
/// would replace a constraint of the target, in which case both apply through `allOf`.
fn merge_siblings(resolved: Value, siblings: Map<String, Value>) -> Value {
    match resolved {
        Value::Object(mut target)
            if siblings
                .keys()
                .all(|key| is_annotation(key) || !target.contains_key(key)) =>
        {
            target.extend(siblings);
            Value::Object(target)
        }
        resolved => {
            let (annotations, constraints): (Map<String, Value>, Map<String, Value>) = siblings
                .into_iter()
                .partition(|(key, _)| is_annotation(key));
            let mut out = annotations;
            out.insert(
                "allOf".into(),
                Value::Array(vec![resolved, Value::Object(constraints)]),
            );
            Value::Object(out)
        }
    }
}

/// Checks the whole document against the version's typed model: `openapiv3` for 3.0, `oas3` for
/// 3.1. The walk above has already checked what tools are made of, with exact locations; this
/// catches the rest (responses, components, security, ...).
///
/// Both models lose the location of an error inside a `$ref`-or-object value (and openapiv3 inside
/// its flattened `paths` and `responses` maps), so path items, responses and component entries are
/// checked one by one with their own type first, and the whole document last.
fn check_structure(root: &Value, version: Version) -> Result<(), DocumentError> {
    match version {
        Version::V30 => {
            use openapiv3 as v30;
            each_path_item::<v30::PathItem, v30::Response>(root)?;
            each_component::<v30::Schema>(root, "schemas")?;
            each_component::<v30::Response>(root, "responses")?;
            each_component::<v30::Parameter>(root, "parameters")?;
            each_component::<v30::RequestBody>(root, "requestBodies")?;
            each_component::<v30::Header>(root, "headers")?;
            each_component::<v30::SecurityScheme>(root, "securitySchemes")?;
            each_component::<v30::Example>(root, "examples")?;
            each_component::<v30::Link>(root, "links")?;
            each_component::<v30::Callback>(root, "callbacks")?;
            typed::<v30::OpenAPI>(root, &Loc::root())
        }
        Version::V31 => {
            use oas3::spec as v31;
            each_path_item::<v31::PathItem, v31::Response>(root)?;
            each_component::<v31::ObjectSchema>(root, "schemas")?;
            each_component::<v31::Response>(root, "responses")?;
            each_component::<v31::Parameter>(root, "parameters")?;
            each_component::<v31::RequestBody>(root, "requestBodies")?;
            each_component::<v31::Header>(root, "headers")?;
            each_component::<v31::SecurityScheme>(root, "securitySchemes")?;
            each_component::<v31::Example>(root, "examples")?;
            each_component::<v31::Link>(root, "links")?;
            each_component::<v31::Callback>(root, "callbacks")?;
            each_component::<v31::PathItem>(root, "pathItems")?;
            typed::<oas3::Spec>(root, &Loc::root())
        }
    }
}

/// Checks each path item as `Item`, after each of its operations' responses as `Response`.
fn each_path_item<Item, Response>(root: &Value) -> Result<(), DocumentError>
where
    Item: serde::de::DeserializeOwned,
    Response: serde::de::DeserializeOwned,
{
    let Some(Value::Object(paths)) = root.get("paths") else {
        return Ok(());
    };
    for (path, item) in paths.iter().filter(|(path, _)| !path.starts_with("x-")) {
        let loc = Loc::root().key("paths").key(path);
        for method in METHODS {
            let Some(Value::Object(responses)) =
                item.get(method).and_then(|op| op.get("responses"))
            else {
                continue;
            };
            let responses_loc = loc.key(method).key("responses");
            for (status, response) in responses.iter().filter(|(s, _)| !s.starts_with("x-")) {
                unless_reference::<Response>(response, &responses_loc.key(status))?;
            }
        }
        unless_reference::<Item>(item, &loc)?;
    }
    Ok(())
}

/// Checks each entry of `components.<section>` as `T`.
fn each_component<T: serde::de::DeserializeOwned>(
    root: &Value,
    section: &str,
) -> Result<(), DocumentError> {
    let Some(Value::Object(entries)) = root.get("components").and_then(|c| c.get(section)) else {
        return Ok(());
    };
    let loc = Loc::root().key("components").key(section);
    for (name, entry) in entries {
        unless_reference::<T>(entry, &loc.key(name))?;
    }
    Ok(())
}

/// Checks `value` as `T` unless it is a `$ref` (those were checked by `check_references`).
fn unless_reference<T: serde::de::DeserializeOwned>(
    value: &Value,
    at: &Loc,
) -> Result<(), DocumentError> {
    if matches!(value.get("$ref"), Some(Value::String(_))) {
        return Ok(());
    }
    typed::<T>(value, at)
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value, at: &Loc) -> Result<(), DocumentError> {
    let Err(error) = serde_path_to_error::deserialize::<_, T>(value) else {
        return Ok(());
    };
    let inner = error.path().to_string();
    let path = match (at.0.is_empty(), inner.as_str()) {
        (_, "." | "") => at.to_string(),
        (true, inner) => inner.to_owned(),
        (false, inner) => format!("{}.{inner}", at.0),
    };
    let message = error.into_inner().to_string().replace(
        "data did not match any variant of untagged enum ObjectOrReference",
        "neither a valid $ref nor a valid object of its kind",
    );
    Err(DocumentError { path, message })
}

// ---------------------------------------------------------------------------------------------
// Storage (table `imported_tools`)
// ---------------------------------------------------------------------------------------------

/// An imported tool as stored and reviewed: the JSON object of the admin API (SPEC §4).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ToolRecord {
    pub id: Uuid,
    pub name: String,
    pub method: String,
    pub path: String,
    pub base_url: String,
    pub description: String,
    /// The JSON Schema of the arguments.
    pub parameters: Value,
    /// Where each argument goes in the HTTP request.
    #[sqlx(json)]
    pub request: RequestMapping,
    #[sqlx(try_from = "String")]
    pub access: Access,
    pub requires_approval: bool,
    pub enabled: bool,
    pub reviewed: bool,
    /// The document it came from: `info.title` and `info.version`.
    pub source: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub reviewed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ToolRecord {
    /// The tool as the worker uses it.
    pub fn into_tool(self) -> ImportedTool {
        ImportedTool {
            name: self.name,
            description: self.description,
            method: self.method,
            path: self.path,
            base_url: self.base_url,
            parameters: self.parameters,
            request: self.request,
            access: self.access,
            requires_approval: self.requires_approval,
        }
    }
}

/// The body of `PATCH /api/admin/tools/{id}`: any of the three decisions. Applying it marks the
/// tool reviewed, even when it changes nothing (that confirms the proposal).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolReview {
    pub access: Option<Access>,
    pub requires_approval: Option<bool>,
    pub enabled: Option<bool>,
}

const COLUMNS: &str = "id, name, method, path, base_url, description, parameters, request, \
    access, requires_approval, enabled, reviewed, source, created_at, updated_at, reviewed_at";

/// Stores a parsed document's tools, in one transaction, and returns them as stored.
///
/// A tool whose name exists already is updated (method, path, base URL, description, schema,
/// request mapping, source) and keeps its review: `access`, `requires_approval`, `enabled`,
/// `reviewed`. Two exceptions, both on the safe side: a tool not reviewed yet takes the new
/// proposal; and a reviewed tool whose call changed — its method, path, base URL, arguments'
/// schema or request mapping — goes back to review (`reviewed: false`, so agents stop seeing it
/// until an operator reviews it again), with `access` and `requires_approval` raised to the new
/// proposal where that is stricter. `enabled` stays as the operator left it. A new description
/// alone keeps the review: it changes what the model reads, not what the call does.
pub async fn save_imported(
    db: &PgPool,
    document: &ImportedDocument,
) -> Result<Vec<ToolRecord>, sqlx::Error> {
    // The call the review was about is the call the document now describes.
    let same_call = "(t.method, t.path, t.base_url, t.parameters, t.request) = \
        (EXCLUDED.method, EXCLUDED.path, EXCLUDED.base_url, EXCLUDED.parameters, EXCLUDED.request)";
    let upsert = format!(
        "INSERT INTO imported_tools AS t (id, name, method, path, base_url, description, \
             parameters, request, access, requires_approval, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (name) DO UPDATE SET \
             access = CASE \
                 WHEN NOT t.reviewed THEN EXCLUDED.access \
                 WHEN {same_call} THEN t.access \
                 WHEN 'write' IN (t.access, EXCLUDED.access) THEN 'write' \
                 ELSE 'read' END, \
             requires_approval = CASE \
                 WHEN NOT t.reviewed THEN EXCLUDED.requires_approval \
                 WHEN {same_call} THEN t.requires_approval \
                 ELSE t.requires_approval OR EXCLUDED.requires_approval END, \
             reviewed = t.reviewed AND {same_call}, \
             reviewed_at = CASE WHEN {same_call} THEN t.reviewed_at END, \
             method = EXCLUDED.method, \
             path = EXCLUDED.path, \
             base_url = EXCLUDED.base_url, \
             description = EXCLUDED.description, \
             parameters = EXCLUDED.parameters, \
             request = EXCLUDED.request, \
             source = EXCLUDED.source, \
             updated_at = now() \
         RETURNING {COLUMNS}"
    );
    let mut tx = db.begin().await?;
    let mut stored = Vec::with_capacity(document.tools.len());
    for tool in &document.tools {
        let record: ToolRecord = sqlx::query_as(&upsert)
            .bind(Uuid::now_v7())
            .bind(&tool.name)
            .bind(&tool.method)
            .bind(&tool.path)
            .bind(&tool.base_url)
            .bind(&tool.description)
            .bind(&tool.parameters)
            .bind(sqlx::types::Json(&tool.request))
            .bind(tool.access.as_str())
            .bind(tool.requires_approval)
            .bind(&document.source)
            .fetch_one(&mut *tx)
            .await?;
        stored.push(record);
    }
    tx.commit().await?;
    Ok(stored)
}

/// Every imported tool, by name.
pub async fn list(db: &PgPool) -> Result<Vec<ToolRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM imported_tools ORDER BY name"
    ))
    .fetch_all(db)
    .await
}

/// Applies a review to a tool and marks it reviewed; `None` if there is no such tool.
pub async fn review(
    db: &PgPool,
    id: Uuid,
    review: &ToolReview,
) -> Result<Option<ToolRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE imported_tools SET \
             access = COALESCE($2, access), \
             requires_approval = COALESCE($3, requires_approval), \
             enabled = COALESCE($4, enabled), \
             reviewed = true, reviewed_at = now(), updated_at = now() \
         WHERE id = $1 \
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(review.access.map(Access::as_str))
    .bind(review.requires_approval)
    .bind(review.enabled)
    .fetch_optional(db)
    .await
}

/// The tools agents may use: reviewed and enabled, by name.
pub async fn load_usable(db: &PgPool) -> Result<Vec<ImportedTool>, sqlx::Error> {
    let records: Vec<ToolRecord> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM imported_tools WHERE reviewed AND enabled ORDER BY name"
    ))
    .fetch_all(db)
    .await?;
    Ok(records.into_iter().map(ToolRecord::into_tool).collect())
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeSeed as _;

    use super::*;

    const PETSTORE: &str = include_str!("../../tests/fixtures/openapi/petstore.yaml");
    const LOYALTY: &str = include_str!("../../tests/fixtures/openapi/loyalty-3.1.yaml");

    fn parse(text: &str) -> Result<ImportedDocument, ImportError> {
        parse_with(text, None)
    }

    fn parse_with(text: &str, base_url: Option<&str>) -> Result<ImportedDocument, ImportError> {
        let options = ImportOptions {
            format: DocumentFormat::Detect,
            base_url: base_url.map(str::to_owned),
        };
        parse_document(text.as_bytes(), &options)
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(document) => panic!("expected an error, got {document:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn tool<'d>(document: &'d ImportedDocument, name: &str) -> &'d ImportedTool {
        document
            .tools
            .iter()
            .find(|tool| tool.name == name)
            .unwrap_or_else(|| panic!("no tool {name} in {:?}", document.tools))
    }

    fn is_valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn names_come_from_the_operation_id_or_the_method_and_path() {
        assert_eq!(tool_name(Some("listPets"), "GET", "/pets"), "listPets");
        assert_eq!(
            tool_name(Some("pets.list v2"), "GET", "/pets"),
            "pets_list_v2"
        );
        assert_eq!(tool_name(None, "GET", "/pets/{petId}"), "get_pets_petId");
        assert_eq!(
            tool_name(None, "DELETE", "/stores/{store-id}/items/{item_id}.json"),
            "delete_stores_store-id_items_item_id_json"
        );
        assert_eq!(tool_name(None, "GET", "/"), "get");
        assert_eq!(tool_name(Some("ü/ß"), "POST", "/a"), "post_a");
        let long = format!("/{}", "segment/".repeat(20));
        let name = tool_name(None, "GET", &long);
        assert_eq!(name.len(), 64);
        assert!(is_valid_name(&name), "{name}");
        assert_eq!(name, tool_name(None, "GET", &long), "stable");
        assert_ne!(name, tool_name(None, "GET", &format!("{long}x")));
        assert_eq!(with_suffix(&name, 2).len(), 64);
        assert!(with_suffix(&name, 2).ends_with("_2"));
    }

    #[test]
    fn petstore_becomes_three_tools() {
        let document = parse(PETSTORE).unwrap();
        assert_eq!(document.source, "Swagger Petstore 1.0.0");
        let names: Vec<&str> = document.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["listPets", "createPets", "showPetById"]);

        let list = tool(&document, "listPets");
        assert_eq!((list.method.as_str(), list.path.as_str()), ("GET", "/pets"));
        assert_eq!(list.access, Access::Read);
        assert!(!list.requires_approval);
        assert_eq!(list.base_url, "http://petstore.swagger.io/v1");
        assert_eq!(list.description, "List all pets");
        assert_eq!(
            list.parameters["properties"]["limit"],
            json!({"type": "integer", "maximum": 100, "format": "int32",
                   "description": "How many items to return at one time (max 100)"})
        );
        assert!(list.parameters.get("required").is_none());

        let create = tool(&document, "createPets");
        assert_eq!(create.access, Access::Write);
        assert!(create.requires_approval);
        assert_eq!(create.parameters["required"], json!(["body"]));
        assert_eq!(
            create.parameters["properties"]["body"]["required"],
            json!(["id", "name"])
        );
        assert_eq!(
            create.request.body_content_type.as_deref(),
            Some("application/json")
        );

        let show = tool(&document, "showPetById");
        assert_eq!(show.path, "/pets/{petId}");
        assert_eq!(show.parameters["required"], json!(["petId"]));
        assert_eq!(show.request.arguments[0].location, Location::Path);
    }

    #[test]
    fn json_documents_parse_like_yaml_ones() {
        let value: Value = serde_yaml_ng::from_str(PETSTORE).unwrap();
        let json_text = serde_json::to_string(&value).unwrap();
        let options = ImportOptions {
            format: DocumentFormat::Json,
            base_url: None,
        };
        let from_json = parse_document(json_text.as_bytes(), &options).unwrap();
        assert_eq!(from_json, parse(PETSTORE).unwrap());
    }

    #[test]
    fn openapi_3_1_features_are_understood() {
        let document = parse_with(LOYALTY, Some("https://loyalty.example/api/")).unwrap();
        assert_eq!(document.source, "Loyalty Points 2.1.0");
        let get = tool(&document, "getPoints");
        assert_eq!(get.base_url, "https://eu.loyalty.example/api");
        assert_eq!(
            get.parameters["properties"]["since"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(get.parameters["required"], json!(["memberId"]));
        assert_eq!(
            get.parameters["properties"]["memberId"]["pattern"],
            "^[A-Z0-9]{6,12}$"
        );
        let award = tool(&document, "post_members_memberId_points");
        assert_eq!(award.access, Access::Write);
        let body = &award.parameters["properties"]["body"];
        assert_eq!(
            body["description"],
            "The points to award and the order that earned them."
        );
        assert_eq!(body["properties"]["orderId"]["exclusiveMinimum"], 1000);
        assert_eq!(
            body["properties"]["note"],
            json!({"type": ["string", "null"], "maxLength": 200})
        );
        let revoke = tool(&document, "revokeAward");
        assert_eq!(revoke.base_url, "https://loyalty.example/admin");
        assert_eq!(revoke.method, "DELETE");
        assert!(revoke.requires_approval);
        assert_eq!(document.tools.len(), 3, "webhooks are not tools");
    }

    #[test]
    fn refs_resolve_and_cycles_stop() {
        let text = r##"{
          "openapi": "3.0.3",
          "info": {"title": "Tree", "version": "1"},
          "paths": {"/nodes": {"post": {
            "operationId": "addNode",
            "requestBody": {"$ref": "#/components/requestBodies/NodeBody"},
            "responses": {"200": {"description": "ok"}}}}},
          "components": {
            "requestBodies": {"NodeBody": {"content": {"application/json": {
              "schema": {"$ref": "#/components/schemas/Node"}}}}},
            "schemas": {
              "Node": {"type": "object", "properties": {
                "name": {"type": "string", "nullable": true},
                "parent": {"$ref": "#/components/schemas/Link"},
                "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
              "Link": {"type": "object", "properties": {"node": {"$ref": "#/components/schemas/Node"}}}
            }}}"##;
        let document = parse(text).unwrap();
        let body = &tool(&document, "addNode").parameters["properties"]["body"];
        assert_eq!(
            body["properties"]["name"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            body["properties"]["children"]["items"],
            json!({"description": "Node (a recursive reference, not expanded)"})
        );
        assert_eq!(
            body["properties"]["parent"]["properties"]["node"],
            json!({"description": "Node (a recursive reference, not expanded)"})
        );
    }

    #[test]
    fn a_ref_cycle_between_parameters_is_refused() {
        let text = r##"{
          "openapi": "3.0.3", "info": {"title": "Loop", "version": "1"},
          "paths": {"/a": {"get": {"parameters": [{"$ref": "#/components/parameters/A"}],
                                   "responses": {"200": {"description": "ok"}}}}},
          "components": {"parameters": {
            "A": {"$ref": "#/components/parameters/B"},
            "B": {"$ref": "#/components/parameters/A"}}}}"##;
        let error = error_of(text);
        assert!(error.contains("a reference cycle"), "{error}");
    }

    #[test]
    fn schemas_that_explode_are_refused() {
        // Each level refers to the next twice: 2^20 nodes once inlined.
        let mut schemas = Map::new();
        for level in 0..20 {
            let next = format!("#/components/schemas/L{}", level + 1);
            schemas.insert(
                format!("L{level}"),
                json!({"type": "object", "properties": {"a": {"$ref": next}, "b": {"$ref": next}}}),
            );
        }
        schemas.insert("L20".into(), json!({"type": "string"}));
        let document = json!({
            "openapi": "3.0.3", "info": {"title": "Big", "version": "1"},
            "paths": {"/a": {"post": {
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/L0"}}}},
                "responses": {"200": {"description": "ok"}}}}},
            "components": {"schemas": schemas}
        });
        let error = error_of(&document.to_string());
        assert!(error.contains("grows past 1048576 bytes"), "{error}");
    }

    #[test]
    fn a_big_schema_referenced_often_is_refused() {
        // 40 KiB of enum, referenced by 100 properties: 4 MiB once inlined.
        let values: Vec<String> = (0..4000).map(|i| format!("v{i:05}")).collect();
        let properties: Map<String, Value> = (0..100)
            .map(|i| (format!("p{i}"), json!({"$ref": "#/components/schemas/Big"})))
            .collect();
        let document = json!({
            "openapi": "3.0.3", "info": {"title": "Big", "version": "1"},
            "paths": {"/a": {"post": {
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": properties}}}},
                "responses": {"200": {"description": "ok"}}}}},
            "components": {"schemas": {"Big": {"type": "string", "enum": values}}}
        });
        let error = error_of(&document.to_string());
        assert!(error.contains("grows past 1048576 bytes"), "{error}");
    }

    #[test]
    fn schemas_nested_too_deep_are_refused_without_exhausting_the_stack() {
        // Ten schemas, each 40 levels deep, each ending in a $ref to the next: 400 levels.
        let mut schemas = Map::new();
        for level in 0..10 {
            let mut schema = json!({"$ref": format!("#/components/schemas/S{}", level + 1)});
            for _ in 0..40 {
                schema = json!({"type": "object", "properties": {"a": schema}});
            }
            schemas.insert(format!("S{level}"), schema);
        }
        schemas.insert("S10".into(), json!({"type": "string"}));
        let document = json!({
            "openapi": "3.0.3", "info": {"title": "Deep", "version": "1"},
            "paths": {"/a": {"post": {
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/S0"}}}},
                "responses": {"200": {"description": "ok"}}}}},
            "components": {"schemas": schemas}
        });
        let text = document.to_string();
        // The blocking threads that parse imports have 2 MiB stacks.
        let error = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || error_of(&text))
            .unwrap()
            .join()
            .unwrap();
        assert!(error.contains("nests deeper than 256 levels"), "{error}");
    }

    /// A YAML document whose aliases nest `levels` deep, each level naming the one below ten
    /// times, over a first anchor of `width` strings: `width` × 10^levels strings once expanded.
    /// serde_yaml_ng allows 100 alias jumps per event of the document, and the 11,110 jumps of
    /// four levels stay under that, so its own limit does not stop this one.
    fn billion_laughs(levels: usize, width: usize) -> String {
        let mut text = format!(
            "openapi: 3.0.3\ninfo: {{title: Laughs, version: '1'}}\npaths: {{}}\n\
             x-l0: &l0 [{}]\n",
            vec!["lol"; width].join(", ")
        );
        for level in 1..=levels {
            let below = format!("*l{}", level - 1);
            let row = [below.as_str(); 10].join(", ");
            text.push_str(&format!("x-l{level}: &l{level} [{row}]\n"));
        }
        text
    }

    #[test]
    fn yaml_aliases_that_expand_past_the_bound_are_refused() {
        // 2,000,000 strings from 1.4 kB: about 100 MB as a serde_json::Value.
        let bomb = billion_laughs(4, 200);
        assert!(bomb.len() < 2_000, "{} bytes", bomb.len());
        let error = error_of(&bomb);
        assert!(
            error.starts_with(
                "document: the YAML grows past 33554432 bytes once decoded (each alias"
            ),
            "{error}"
        );
        // Refused after the bound's worth of work; the e2e test times it on the edge.

        // 20,000 strings are an ordinary document's worth of repetition.
        let fine = parse(&billion_laughs(2, 200)).unwrap();
        assert!(fine.tools.is_empty());
    }

    #[test]
    fn yaml_aliases_still_work_within_the_bound() {
        let document = "openapi: 3.0.3
info: {title: Shared, version: '1'}
paths:
  /a:
    get:
      operationId: getA
      parameters:
        - &limit {name: limit, in: query, schema: {type: integer, maximum: 50}}
      responses: &ok {'200': {description: ok}}
  /b:
    get:
      operationId: getB
      parameters: [*limit]
      responses: *ok
";
        let parsed = parse(document).unwrap();
        for name in ["getA", "getB"] {
            assert_eq!(
                tool(&parsed, name).parameters["properties"]["limit"]["maximum"],
                50
            );
        }
    }

    #[test]
    fn the_budget_weighs_every_node_whether_written_or_aliased() {
        let stop = AtomicBool::new(false);
        // Written out: 10,000 strings of 3 bytes.
        let written = format!("[{}]", vec!["lol"; 10_000].join(", "));
        let budget = YamlBudget {
            spent: Cell::new(0),
            nodes: Cell::new(0),
            stop: &stop,
            exceeded: Cell::new(None),
        };
        let value = BoundedValue(&budget)
            .deserialize(serde_yaml_ng::Deserializer::from_str(&written))
            .unwrap();
        assert_eq!(value.as_array().unwrap().len(), 10_000);
        let written_weight = budget.spent.get();
        assert_eq!(written_weight, NODE_WEIGHT + 10_000 * (NODE_WEIGHT + 3));
        // Aliased: the same strings through two levels of anchors weigh the same.
        let aliased = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
";
        budget.spent.set(0);
        BoundedValue(&budget)
            .deserialize(serde_yaml_ng::Deserializer::from_str(aliased))
            .unwrap();
        assert!(
            budget.spent.get() > written_weight,
            "{} <= {written_weight}",
            budget.spent.get()
        );
    }

    #[test]
    fn a_stopped_import_gives_up() {
        let stop = AtomicBool::new(true);
        let options = ImportOptions {
            format: DocumentFormat::Detect,
            base_url: None,
        };
        for document in [PETSTORE.to_owned(), billion_laughs(4, 200)] {
            let error = parse_document_until(document.as_bytes(), &options, &stop).unwrap_err();
            assert!(error.to_string().contains("stopped"), "{error}");
        }
        let running = AtomicBool::new(false);
        assert!(parse_document_until(PETSTORE.as_bytes(), &options, &running).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_by_both_decoders() {
        // serde_json and serde_yaml_ng each stop at 128 levels, long before the stack does.
        let json = format!(
            "{{\"openapi\": {}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let error = error_of(&json);
        assert!(
            error.starts_with("document: not valid JSON: recursion limit exceeded"),
            "{error}"
        );
        let yaml = format!("openapi: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        let error = error_of(&yaml);
        assert!(error.starts_with("document: not valid YAML"), "{error}");
        assert!(error.contains("recursion limit exceeded"), "{error}");
    }

    #[test]
    fn malformed_documents_name_the_place() {
        let fixture = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/../tests/fixtures/openapi/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let error = error_of(&fixture("not-a-document.txt"));
        assert!(error.starts_with("document: not valid YAML"), "{error}");
        assert!(error.contains("line"), "{error}");
        assert_eq!(
            error_of(&fixture("swagger-2.0.yaml")),
            "swagger: version 2.0 (Swagger) is not supported; convert the document to OpenAPI 3.0 or 3.1"
        );
        assert_eq!(
            error_of(&fixture("bad-parameter-in.yaml")),
            "paths./pets.post.parameters[0].in: unknown location \"body\"; expected path, query, header or cookie"
        );
        let error = error_of(&fixture("dangling-ref.yaml"));
        assert!(
            error.starts_with(
                "paths./pets.get.responses.200.content.application/json.schema.items.$ref: #/components/schemas/Dog does not resolve"
            ),
            "{error}"
        );
        assert_eq!(
            error_of("openapi: '2.0'\ninfo: {title: t, version: '1'}\npaths: {}\n"),
            "openapi: version 2.0 is not supported (3.0.x and 3.1.x are)"
        );
        assert_eq!(
            error_of("openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    get:\n      operationId: x\n"),
            "paths./pets.get.responses: missing field"
        );
        assert_eq!(
            error_of("just text"),
            "document: expected an OpenAPI object (a mapping), found a string"
        );
        assert_eq!(
            error_of("openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    get:\n      responses:\n        '200': {}\n"),
            "paths./pets.get.responses.200: missing field `description`"
        );
        let error = error_of("openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths: {}\ncomponents:\n  schemas:\n    A: {$ref: 'other.yaml#/A'}\n");
        assert!(
            error.starts_with("components.schemas.A.$ref: other.yaml#/A is not a local reference"),
            "{error}"
        );
    }

    #[test]
    fn options_and_non_json_bodies_are_skipped() {
        let text = "openapi: 3.0.0
info: {title: t, version: '1'}
paths:
  /upload:
    options:
      responses: {'200': {description: ok}}
    post:
      requestBody:
        required: true
        content:
          multipart/form-data: {schema: {type: object}}
      responses: {'200': {description: ok}}
    put:
      requestBody:
        content:
          text/plain: {schema: {type: string}}
      responses: {'200': {description: ok}}
";
        let document = parse(text).unwrap();
        let names: Vec<&str> = document.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["put_upload"]);
        assert!(tool(&document, "put_upload")
            .request
            .body_content_type
            .is_none());
        let skipped: Vec<(&str, &str)> = document
            .skipped
            .iter()
            .map(|s| (s.method.as_str(), s.path.as_str()))
            .collect();
        assert_eq!(skipped, [("POST", "/upload"), ("OPTIONS", "/upload")]);
    }

    #[test]
    fn colliding_names_and_arguments_are_kept_apart() {
        let text = r#"{"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
          "paths": {
            "/a/{id}": {"get": {"parameters": [
                {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "id", "in": "query", "schema": {"type": "string"}},
                {"name": "body", "in": "header", "schema": {"type": "string"}},
                {"name": "Accept", "in": "header", "schema": {"type": "string"}}],
              "responses": {"200": {"description": "ok"}}},
              "post": {"requestBody": {"content": {"application/json": {}}},
                       "parameters": [{"name": "body", "in": "query", "schema": {"type": "string"}}],
                       "responses": {"200": {"description": "ok"}}}},
            "/a_{id}": {"get": {"responses": {"200": {"description": "ok"}}}}}}"#;
        let document = parse(text).unwrap();
        let names: Vec<&str> = document.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_a_id", "post_a_id", "get_a_id_2"]);
        let get = &document.tools[0];
        let arguments: Vec<(&str, Location)> = get
            .request
            .arguments
            .iter()
            .map(|a| (a.argument.as_str(), a.location))
            .collect();
        assert_eq!(
            arguments,
            [
                ("id", Location::Path),
                ("query_id", Location::Query),
                ("body", Location::Header)
            ]
        );
        let post = &document.tools[1];
        let arguments: Vec<&str> = post
            .request
            .arguments
            .iter()
            .map(|a| a.argument.as_str())
            .collect();
        assert_eq!(arguments, ["query_body", "id", "body"]);
    }

    #[test]
    fn a_duplicate_operation_id_is_refused() {
        let text = "openapi: 3.0.0
info: {title: t, version: '1'}
paths:
  /a: {get: {operationId: same, responses: {'200': {description: ok}}}}
  /b: {get: {operationId: same, responses: {'200': {description: ok}}}}
";
        assert_eq!(
            error_of(text),
            "paths./b.get.operationId: duplicate operationId \"same\" (also at paths./a.get)"
        );
    }

    #[test]
    fn relative_servers_need_a_base_url_to_be_callable() {
        let text = "openapi: 3.0.0
info: {title: t, version: '1'}
servers: [{url: /v1}]
paths:
  /items: {get: {operationId: listItems, responses: {'200': {description: ok}}}}
";
        let alone = parse(text).unwrap();
        assert_eq!(alone.tools[0].base_url, "/v1");
        assert!(alone.tools[0].build_request(&json!({})).is_err());
        let based = parse_with(text, Some("https://shop.example/api/")).unwrap();
        assert_eq!(based.tools[0].base_url, "https://shop.example/v1");
        let no_servers = text.replace("servers: [{url: /v1}]\n", "");
        let based = parse_with(&no_servers, Some("https://shop.example/api/")).unwrap();
        assert_eq!(based.tools[0].base_url, "https://shop.example/api");
        assert!(matches!(
            parse_with(text, Some("shop.example")),
            Err(ImportError::BaseUrl(_))
        ));
    }

    #[test]
    fn the_demo_shop_example_imports() {
        let text = include_str!("../../examples/demo-shop-openapi.yaml");
        let document = parse(text).unwrap();
        assert_eq!(document.source, "Demo Shop Carrier 1.2.0");
        let summary: Vec<(&str, Access, bool)> = document
            .tools
            .iter()
            .map(|t| (t.name.as_str(), t.access, t.requires_approval))
            .collect();
        assert_eq!(
            summary,
            [
                ("createShippingLabel", Access::Write, true),
                ("voidShippingLabel", Access::Write, true),
                ("quoteRates", Access::Read, false),
                ("getShipment", Access::Read, false),
                ("trackParcel", Access::Read, false),
            ]
        );
        let rates = tool(&document, "quoteRates");
        assert_eq!(rates.base_url, "https://carrier.example/carrier/v1");
        let weight = &rates.parameters["properties"]["weight_kg"];
        assert_eq!(weight["exclusiveMinimum"], 0);
        assert!(weight.get("minimum").is_none());
        let label = tool(&document, "createShippingLabel");
        let body = &label.parameters["properties"]["body"];
        assert_eq!(
            body["properties"]["ship_to"]["properties"]["line2"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            body["properties"]["service"]["enum"],
            json!(["standard", "express", "overnight"])
        );
        let built = label
            .build_request(&json!({
                "X-Warehouse": "lyon",
                "body": {"order_id": 1004, "service": "express"}
            }))
            .unwrap();
        assert_eq!(built.url, "https://carrier.example/carrier/v1/labels");
        assert_eq!(built.headers[0], ("X-Warehouse".into(), "lyon".into()));
    }

    fn sample_tool() -> ImportedTool {
        ImportedTool {
            name: "updateItem".into(),
            description: "Update an item".into(),
            method: "PATCH".into(),
            path: "/stores/{store}/items/{item}".into(),
            base_url: "https://api.example.com/v1/".into(),
            parameters: json!({"type": "object"}),
            request: RequestMapping {
                arguments: vec![
                    ArgumentMapping {
                        argument: "store".into(),
                        location: Location::Path,
                        name: "store".into(),
                        required: true,
                        explode: false,
                    },
                    ArgumentMapping {
                        argument: "item".into(),
                        location: Location::Path,
                        name: "item".into(),
                        required: true,
                        explode: false,
                    },
                    ArgumentMapping {
                        argument: "tags".into(),
                        location: Location::Query,
                        name: "tag".into(),
                        required: false,
                        explode: true,
                    },
                    ArgumentMapping {
                        argument: "fields".into(),
                        location: Location::Query,
                        name: "fields".into(),
                        required: false,
                        explode: false,
                    },
                    ArgumentMapping {
                        argument: "request_id".into(),
                        location: Location::Header,
                        name: "X-Request-Id".into(),
                        required: false,
                        explode: false,
                    },
                    ArgumentMapping {
                        argument: "session".into(),
                        location: Location::Cookie,
                        name: "session".into(),
                        required: false,
                        explode: true,
                    },
                    ArgumentMapping {
                        argument: "body".into(),
                        location: Location::Body,
                        name: "body".into(),
                        required: true,
                        explode: false,
                    },
                ],
                body_content_type: Some("application/merge-patch+json".into()),
            },
            access: Access::Write,
            requires_approval: true,
        }
    }

    #[test]
    fn build_request_fills_every_location() {
        let tool = sample_tool();
        let built = tool
            .build_request(&json!({
                "store": "north/east",
                "item": "a b?é",
                "tags": ["red", "big & cheap"],
                "fields": ["id", "name"],
                "request_id": 42,
                "session": "s=1",
                "body": {"price": 10}
            }))
            .unwrap();
        assert_eq!(built.method, "PATCH");
        assert_eq!(
            built.url,
            "https://api.example.com/v1/stores/north%2Feast/items/a%20b%3F%C3%A9?tag=red&tag=big%20%26%20cheap&fields=id%2Cname"
        );
        assert_eq!(
            built.headers,
            [
                ("X-Request-Id".to_owned(), "42".to_owned()),
                (
                    "content-type".to_owned(),
                    "application/merge-patch+json".to_owned()
                ),
                ("cookie".to_owned(), "session=s%3D1".to_owned()),
            ]
        );
        assert_eq!(built.json_body, Some(json!({"price": 10})));

        let minimal = tool
            .build_request(&json!({"store": 1, "item": "x", "body": [], "tags": null}))
            .unwrap();
        assert_eq!(minimal.url, "https://api.example.com/v1/stores/1/items/x");
    }

    #[test]
    fn build_request_refuses_what_it_cannot_send() {
        let tool = sample_tool();
        let refuse = |args: Value| tool.build_request(&args).unwrap_err();
        assert_eq!(refuse(json!([])), "the arguments must be a JSON object");
        assert_eq!(
            refuse(json!({"store": "s", "body": {}})),
            "missing required argument \"item\""
        );
        assert_eq!(
            refuse(json!({"store": "s", "item": "i", "body": {}, "extra": 1})),
            "unknown argument \"extra\""
        );
        assert!(refuse(json!({"store": "..", "item": "i", "body": {}})).contains("\"..\""));
        assert!(refuse(json!({"store": "", "item": "i", "body": {}})).contains("may not be empty"));
        assert!(
            refuse(json!({"store": "s", "item": "i", "body": {}, "request_id": "a\r\nX: y"}))
                .contains("control characters")
        );
        let mut relative = sample_tool();
        relative.base_url = "/v1".into();
        assert!(relative
            .build_request(&json!({"store": "s", "item": "i", "body": {}}))
            .unwrap_err()
            .contains("not an absolute http(s) URL"));
    }
}
