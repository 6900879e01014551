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
    use std::sync::atomic::AtomicBool;

    use serde_json::{json, Map, Value};

    use super::{make_nullable, Schemas};
    use crate::openapi::document::{Loc, Version};
    use crate::openapi::testing::{error_of, parse, tool};

    /// A document of `version` whose one operation (`send`) takes `schema` as its JSON body, with
    /// `schemas` as its components.
    fn document(version: &str, schema: Value, schemas: Value) -> String {
        json!({
            "openapi": version, "info": {"title": "Shapes", "version": "1"},
            "paths": {"/send": {"post": {
                "operationId": "send",
                "requestBody": {"content": {"application/json": {"schema": schema}}},
                "responses": {"200": {"description": "ok"}}}}},
            "components": {"schemas": schemas}
        })
        .to_string()
    }

    /// The body argument's schema as the importer resolves it.
    fn body(version: &str, schema: Value, schemas: Value) -> Value {
        let document = parse(&document(version, schema, schemas)).unwrap();
        tool(&document, "send").parameters["properties"]["body"].clone()
    }

    #[test]
    fn every_branch_of_a_combinator_is_resolved() {
        let schemas = json!({
            "Id": {"type": "string", "x-internal": true},
            "Count": {"type": "integer", "minimum": 0}
        });
        let schema = json!({"type": "object", "properties": {
            "all": {"allOf": [{"$ref": "#/components/schemas/Id"}, {"maxLength": 8}]},
            "any": {"anyOf": [{"$ref": "#/components/schemas/Count"}, {"type": "null"}]},
            "one": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"$ref": "#/components/schemas/Count"}]},
            "tuple": {"prefixItems": [{"$ref": "#/components/schemas/Count"}]},
            "not": {"not": {"$ref": "#/components/schemas/Count"}}
        }});
        let body = body("3.1.0", schema, schemas);
        let properties = &body["properties"];
        let id = json!({"type": "string"});
        let count = json!({"type": "integer", "minimum": 0});
        assert_eq!(properties["all"], json!({"allOf": [id, {"maxLength": 8}]}));
        assert_eq!(
            properties["any"],
            json!({"anyOf": [count, {"type": "null"}]})
        );
        assert_eq!(properties["one"], json!({"oneOf": [id, count]}));
        assert_eq!(properties["tuple"], json!({"prefixItems": [count]}));
        assert_eq!(properties["not"], json!({"not": count}));
    }

    #[test]
    fn a_3_1_ref_with_siblings_keeps_both_the_target_and_the_siblings() {
        let schemas = json!({"Name": {"type": "string", "maxLength": 64}});
        let name = || json!({"type": "string", "maxLength": 64});
        // New constraints and annotations join the target.
        let merged = body(
            "3.1.0",
            json!({"$ref": "#/components/schemas/Name", "minLength": 1, "description": "who"}),
            schemas.clone(),
        );
        assert_eq!(
            merged,
            json!({"type": "string", "maxLength": 64, "minLength": 1, "description": "who"})
        );
        // A constraint the target has too: both apply, through allOf; annotations stay outside.
        let both = body(
            "3.1.0",
            json!({"$ref": "#/components/schemas/Name", "maxLength": 5, "title": "Short"}),
            schemas.clone(),
        );
        assert_eq!(
            both,
            json!({"title": "Short", "allOf": [name(), {"maxLength": 5}]})
        );
        // 3.0 ignores whatever stands beside a $ref.
        let ignored = body(
            "3.0.3",
            json!({"$ref": "#/components/schemas/Name", "maxLength": 5}),
            schemas,
        );
        assert_eq!(ignored, name());
    }

    #[test]
    fn nullable_adds_null_to_the_type_and_the_enum_once() {
        let schema = json!({"type": "object", "properties": {
            "choice": {"type": "string", "enum": ["a", "b"], "nullable": true},
            "known": {"type": "string", "enum": ["a", null], "nullable": true},
            "untyped": {"nullable": true, "description": "anything"}
        }});
        let body = body("3.0.3", schema, json!({}));
        let properties = &body["properties"];
        assert_eq!(
            properties["choice"],
            json!({"type": ["string", "null"], "enum": ["a", "b", null]})
        );
        assert_eq!(
            properties["known"],
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        assert_eq!(properties["untyped"], json!({"description": "anything"}));
    }

    #[test]
    fn nullable_joins_a_list_of_types_once() {
        // Lists of types are 3.1's; the 3.0 parser refuses them before resolution.
        let nullable = |schema: Value| {
            let Value::Object(mut map) = schema else {
                unreachable!("a mapping")
            };
            make_nullable(&mut map);
            Value::Object(map)
        };
        assert_eq!(
            nullable(json!({"type": ["string", "integer"]})),
            json!({"type": ["string", "integer", "null"]})
        );
        assert_eq!(
            nullable(json!({"type": ["string", "null"]})),
            json!({"type": ["string", "null"]})
        );
    }

    #[test]
    fn tuple_items_resolve_each_position() {
        // Draft 4's array form of `items`; the document parsers refuse it, the resolver keeps it.
        let root = json!({"components": {"schemas": {"Id": {"type": "string"}}}});
        let schema = json!({"type": "array", "items": [{"$ref": "#/components/schemas/Id"}, {"type": "integer"}]});
        let stop = AtomicBool::new(false);
        let resolved = Schemas::new(&root, Version::V31, &stop)
            .resolve(&schema, &Loc::root())
            .unwrap();
        assert_eq!(
            resolved,
            json!({"type": "array", "items": [{"type": "string"}, {"type": "integer"}]})
        );
    }

    #[test]
    fn references_into_arrays_and_data_keywords_of_every_kind_are_kept() {
        let schemas =
            json!({"Choice": {"oneOf": [{"type": "string"}, {"type": "integer", "default": 3}]}});
        let data = json!({"nested": [1, null, true, "x", {"deep": false}]});
        let schema = json!({"type": "object", "properties": {
            "second": {"$ref": "#/components/schemas/Choice/oneOf/1"},
            "data": {"type": "object", "default": data, "const": null, "deprecated": true}
        }});
        let body = body("3.1.0", schema, schemas);
        assert_eq!(
            body["properties"]["second"],
            json!({"type": "integer", "default": 3})
        );
        assert_eq!(
            body["properties"]["data"],
            json!({"type": "object", "default": data, "const": null, "deprecated": true})
        );
    }

    #[test]
    fn malformed_schemas_are_refused_where_they_are() {
        let properties = |property: Value| json!({"type": "object", "properties": {"p": property}});
        let cases = [
            (
                properties(json!({"$ref": "#components/schemas/P"})),
                "#components/schemas/P is not a JSON pointer into this document",
            ),
            (
                properties(json!("text")),
                "a schema must be a mapping, found a string",
            ),
            (
                properties(json!({"$ref": ["#/components/schemas/P"]})),
                ".$ref: expected a string, found a sequence",
            ),
            (
                properties(json!({"anyOf": {"type": "string"}})),
                ".anyOf: expected a sequence, found a mapping",
            ),
        ];
        for (schema, expected) in cases {
            let error = error_of(&document("3.1.0", schema, json!({"P": {"type": "string"}})));
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
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
