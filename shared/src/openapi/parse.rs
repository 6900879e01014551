//! Parsing an import: the raw document (JSON or YAML) decoded within bounds — its size, what YAML
//! aliases expand to (alias bombs are refused before the memory is spent), and a `stop` flag for
//! an import nobody waits for any more — then its version read, its `$ref`s checked, its
//! operations read as tools ([`super::classify`]), and the whole document checked against the
//! version's typed model.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};
use url::Url;

use super::classify::{read_tools, ImportedDocument, METHODS};
use super::document::{kind, stopped, DocumentError, Loc, Version};
use super::schema::check_references;

/// The largest document `POST /api/admin/openapi` accepts.
pub const MAX_DOCUMENT_BYTES: usize = 2 * 1024 * 1024;
/// The most a YAML document may weigh once its aliases are expanded (roughly the memory of the
/// decoded value: 48 bytes a node plus its text); alias bombs are refused past it.
pub const MAX_YAML_EXPANDED_BYTES: usize = 32 * 1024 * 1024;

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
    let document = read_tools(&root, version, base_url.as_ref(), stop)?;
    stopped(stop)?;
    check_structure(&root, version)?;
    Ok(document)
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

fn scalar_display(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use serde::de::DeserializeSeed as _;

    use serde_json::json;

    use super::*;
    use crate::openapi::testing::{error_of, parse, tool, PETSTORE};

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
    fn yaml_scalars_of_every_kind_decode_as_json_values() {
        let text = "count: 3\nbelow: -3\nhuge: 18446744073709551615\nratio: 1.5\nodd: .nan\n\
                    flag: true\nnothing: ~\nname: 'x'\n";
        let stop = AtomicBool::new(false);
        let value = decode(text.as_bytes(), DocumentFormat::Yaml, &stop).unwrap();
        assert_eq!(
            value,
            json!({"count": 3, "below": -3, "huge": 18_446_744_073_709_551_615_u64, "ratio": 1.5,
                   "odd": null, "flag": true, "nothing": null, "name": "x"})
        );
    }

    #[test]
    fn bodies_that_are_not_documents_are_refused() {
        let error = |raw: &[u8]| {
            let options = ImportOptions {
                format: DocumentFormat::Detect,
                base_url: None,
            };
            match parse_document(raw, &options) {
                Ok(document) => panic!("expected an error, got {document:?}"),
                Err(error) => error.to_string(),
            }
        };
        assert_eq!(
            error(b"openapi: 3.0.3\n\xff"),
            "document: not UTF-8 text (invalid byte at offset 15)"
        );
        assert_eq!(
            error("\u{feff} \n\t".as_bytes()),
            "document: the body is empty"
        );
        let large = format!("# {}\n", "x".repeat(MAX_DOCUMENT_BYTES));
        assert_eq!(
            error(large.as_bytes()),
            format!("document: larger than {MAX_DOCUMENT_BYTES} bytes")
        );
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
}
