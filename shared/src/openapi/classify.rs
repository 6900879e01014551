//! An OpenAPI document's operations become tools: each operation is read with its path item's
//! shared parameters and servers, classified (GET and HEAD read; POST, PUT, PATCH and DELETE write
//! and need approval; OPTIONS and TRACE are skipped), named, and given the JSON Schema of its
//! arguments and the mapping of each argument into the HTTP request.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use url::Url;

use super::document::{
    kind, object, optional_bool, optional_string, required_string, stopped, DocumentError, Loc,
    Version,
};
use super::schema::{lookup, Schemas, MAX_REF_DEPTH};
use super::tool::{Access, ArgumentMapping, ImportedTool, Location, RequestMapping};

/// The most operations one document may hold.
pub const MAX_OPERATIONS: usize = 1_000;
/// Tool names follow OpenAI's function names: `^[a-zA-Z0-9_-]{1,64}$`.
pub const MAX_NAME_LEN: usize = 64;
/// Descriptions are cut to this many characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1_024;

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

/// The operation keys of a path item, in the order the specification lists them.
pub(super) const METHODS: [&str; 8] = [
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

/// The tools of a decoded document whose references all resolve (`check_references`), in
/// document order, with the operations left out; relative servers resolve against `base_url`.
pub(super) fn read_tools(
    root: &Value,
    version: Version,
    base_url: Option<&Url>,
    stop: &AtomicBool,
) -> Result<ImportedDocument, DocumentError> {
    let walker = Walker {
        root,
        version,
        base_url,
        schemas: Schemas::new(root, version, stop),
        stop,
    };
    walker.document()
}

/// Reads the parts of the document that tools are made of.
struct Walker<'a> {
    root: &'a Value,
    version: Version,
    base_url: Option<&'a Url>,
    /// Resolves the schemas of arguments and bodies, against the document's total.
    schemas: Schemas<'a>,
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
            let required = optional_bool(item, "required", &loc)?.unwrap_or(false);
            let style = optional_string(item, "style", &loc)?;
            let explode = match optional_bool(item, "explode", &loc)? {
                None => match style {
                    None => matches!(location, Location::Query | Location::Cookie),
                    Some(style) => style == "form",
                },
                Some(explode) => explode,
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
        let required = optional_bool(body, "required", &loc)?.unwrap_or(false);
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
        self.schemas.resolve(schema, at)
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::openapi::testing::{error_of, parse, parse_with, tool, LOYALTY, PETSTORE};
    use crate::openapi::ImportError;

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
    fn flags_that_are_not_booleans_are_refused() {
        let document = |parameter: &str, body: &str| {
            format!(
                "openapi: 3.0.0
info: {{title: t, version: '1'}}
paths:
  /a:
    post:
      parameters: [{{name: q, in: query, {parameter}}}]
      requestBody: {{content: {{application/json: {{}}}}, {body}}}
      responses: {{'200': {{description: ok}}}}
"
            )
        };
        assert_eq!(
            error_of(&document("required: 'yes'", "required: true")),
            "paths./a.post.parameters[0].required: expected a boolean, found a string"
        );
        assert_eq!(
            error_of(&document("explode: null", "required: true")),
            "paths./a.post.parameters[0].explode: expected a boolean, found null"
        );
        assert_eq!(
            error_of(&document("required: true", "required: 1")),
            "paths./a.post.requestBody.required: expected a boolean, found a number"
        );
        let fine = parse(&document(
            "required: false, explode: false, schema: {type: string}",
            "required: false",
        ))
        .unwrap();
        assert!(!fine.tools[0].request.arguments[0].explode);
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
    fn server_urls_take_their_variables_defaults_and_must_be_http() {
        let document = |servers: &str| {
            format!(
                "openapi: 3.0.0
info: {{title: t, version: '1'}}
servers: {servers}
paths:
  /items: {{get: {{operationId: listItems, responses: {{'200': {{description: ok}}}}}}}}
"
            )
        };
        let base = |servers: &str| parse(&document(servers)).unwrap().tools[0].base_url.clone();
        assert_eq!(
            base("[{url: 'https://{region}.shop.example/{v}/', variables: {region: {default: eu}, v: {default: v2}}}]"),
            "https://eu.shop.example/v2"
        );
        assert_eq!(base("[]"), "/");
        assert_eq!(base("[{url: /}]"), "/");
        for (servers, expected) in [
            (
                "[{url: 'https://{region}.shop.example'}]",
                "servers[0].url: server variable \"region\" has no default in variables",
            ),
            (
                "[{url: 'https://{region.shop.example'}]",
                "servers[0].url: a \"{\" is not closed",
            ),
            (
                "[{url: 'ftp://files.example'}]",
                "\"ftp://files.example\" is not an http(s) URL",
            ),
            (
                "[{url: 'http://[::1'}]",
                "\"http://[::1\" is not a valid URL",
            ),
        ] {
            let error = error_of(&document(servers));
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn parameters_described_by_content_and_odd_header_names() {
        let document = |parameters: &str| {
            format!(
                "openapi: 3.0.0
info: {{title: t, version: '1'}}
paths:
  /items:
    get:
      operationId: listItems
      parameters: {parameters}
      responses: {{'200': {{description: ok}}}}
"
            )
        };
        let listed = parse(&document(
            "[{name: filter, in: query, content: {application/json: {schema: {type: object}}}},
              {name: raw, in: query, content: {text/plain: {}}},
              {name: Accept, in: header, schema: {type: string}},
              {name: X-Trace, in: header, schema: {type: string}}]",
        ))
        .unwrap();
        let list = tool(&listed, "listItems");
        let properties = &list.parameters["properties"];
        assert_eq!(properties["filter"]["type"], "object");
        assert_eq!(properties["raw"], json!({}));
        // Accept is described by the responses, and "SHALL be ignored" as a parameter.
        let names: Vec<&str> = list
            .request
            .arguments
            .iter()
            .map(|argument| argument.name.as_str())
            .collect();
        assert_eq!(names, ["filter", "raw", "X-Trace"]);
        let error = error_of(&document(
            "[{name: 'Bad Header', in: header, schema: {type: string}}]",
        ));
        assert_eq!(
            error,
            "paths./items.get.parameters[0].name: \"Bad Header\" is not a valid header name"
        );
        let error = error_of(&document("[{name: '', in: query}]"));
        assert!(
            error.contains("parameters[0].name: may not be empty"),
            "{error}"
        );
    }

    #[test]
    fn the_demo_shop_example_imports() {
        let text = include_str!("../../../examples/demo-shop-openapi.yaml");
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
}
