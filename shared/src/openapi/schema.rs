//! `$ref` resolution: every reference of a document is checked to be local and to resolve, and
//! an OpenAPI Schema Object becomes plain JSON Schema with its `$ref`s inlined, within bounds
//! (reference depth, nesting depth, inlined size per schema and per document).

use std::cell::Cell;
use std::sync::atomic::AtomicBool;

use serde_json::{json, Map, Value};

use super::document::{kind, object, stopped, unescape_token, DocumentError, Loc, Version};

/// The most `$ref`s followed inside one another; deeper (or cyclic) references are not expanded.
pub const MAX_REF_DEPTH: usize = 32;
/// The most one argument's schema may weigh (roughly its bytes as JSON) once `$ref`s are inlined.
pub const MAX_SCHEMA_BYTES: usize = 1024 * 1024;
/// The most all the schemas of one document may weigh once `$ref`s are inlined.
pub const MAX_DOCUMENT_SCHEMA_BYTES: usize = 16 * 1024 * 1024;
/// The deepest a schema may nest once `$ref`s are inlined (it bounds the resolver's recursion).
pub const MAX_SCHEMA_DEPTH: usize = 256;

/// Keys whose values are data, not OpenAPI objects: a `$ref` inside them is not a reference.
fn holds_data(key: &str) -> bool {
    matches!(key, "example" | "examples" | "default" | "const" | "enum") || key.starts_with("x-")
}

/// Every `$ref` of the document is local (`#/...`) and points at something.
pub(super) fn check_references(root: &Value, value: &Value, at: &Loc) -> Result<(), DocumentError> {
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
pub(super) fn lookup<'a>(
    root: &'a Value,
    reference: &str,
    at: &Loc,
) -> Result<&'a Value, DocumentError> {
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

/// The schemas of one document, each resolved on its own by a [`SchemaResolver`] and all weighed
/// together against [`MAX_DOCUMENT_SCHEMA_BYTES`].
pub(super) struct Schemas<'a> {
    root: &'a Value,
    version: Version,
    /// What all the document's schemas weigh so far, against [`MAX_DOCUMENT_SCHEMA_BYTES`].
    bytes: Cell<usize>,
    /// Set when the request that asked for the import ended.
    stop: &'a AtomicBool,
}

impl<'a> Schemas<'a> {
    pub(super) fn new(root: &'a Value, version: Version, stop: &'a AtomicBool) -> Self {
        Self {
            root,
            version,
            bytes: Cell::new(0),
            stop,
        }
    }

    /// `schema` (at `at` in the document) as plain JSON Schema.
    pub(super) fn resolve(&self, schema: &Value, at: &Loc) -> Result<Value, DocumentError> {
        let mut resolver = SchemaResolver {
            root: self.root,
            version: self.version,
            stack: Vec::new(),
            bytes: 0,
            depth: 0,
            stop: self.stop,
        };
        let resolved = resolver.resolve(schema, at)?;
        let total = self.bytes.get() + resolver.bytes;
        self.bytes.set(total);
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use crate::openapi::testing::{error_of, parse, tool};

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
}
