//! The OpenAPI importer (`shared::openapi::parse_document`): JSON and YAML documents, with its
//! limits (document size, YAML alias expansion, `$ref` depth, inlined schema size, operations).
//!
//! Input: the first byte picks the options — `J` JSON, `Y` YAML, anything else detect from the
//! text; lower case `j`/`y`/`d` also give a `base_url` — the rest is the document.
//!
//! Invariants: it never panics and always answers; an imported document respects the bounds
//! (at most `MAX_OPERATIONS` tools, names `^[a-zA-Z0-9_-]{1,64}$` and unique, descriptions of
//! at most `MAX_DESCRIPTION_CHARS`, schemas within the size limits), reads are GET/HEAD and need
//! no approval while writes do, argument names are unique, a tool survives the JSON it is stored
//! as, and building a request from it never panics and gives a URL under its base URL.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use shared::openapi::{
    parse_document, Access, DocumentFormat, ImportOptions, ImportedTool, Location,
    MAX_DESCRIPTION_CHARS, MAX_DOCUMENT_SCHEMA_BYTES, MAX_NAME_LEN, MAX_OPERATIONS,
};

const BASE_URL: &str = "https://api.example.test/v1/";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, document)) = data.split_first() else {
        return;
    };
    let format = match selector.to_ascii_uppercase() {
        b'J' => DocumentFormat::Json,
        b'Y' => DocumentFormat::Yaml,
        _ => DocumentFormat::Detect,
    };
    let options = ImportOptions {
        format,
        base_url: selector.is_ascii_lowercase().then(|| BASE_URL.to_owned()),
    };
    let Ok(imported) = parse_document(document, &options) else {
        return;
    };
    assert!(imported.tools.len() <= MAX_OPERATIONS);
    let mut names = HashSet::new();
    let mut schema_bytes = 0;
    for tool in &imported.tools {
        assert!(
            (1..=MAX_NAME_LEN).contains(&tool.name.len())
                && tool
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "bad tool name {:?}",
            tool.name
        );
        assert!(
            names.insert(tool.name.clone()),
            "duplicate tool name {:?}",
            tool.name
        );
        assert!(tool.description.chars().count() <= MAX_DESCRIPTION_CHARS);
        let read = matches!(tool.method.as_str(), "GET" | "HEAD");
        let write = matches!(tool.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
        assert!(read || write, "method {:?}", tool.method);
        assert_eq!(tool.access, if read { Access::Read } else { Access::Write });
        assert_eq!(tool.requires_approval, write);
        assert!(
            tool.parameters.is_object(),
            "parameters must be a schema object"
        );
        schema_bytes += serde_json::to_vec(&tool.parameters).map_or(0, |bytes| bytes.len());
        let mut arguments = HashSet::new();
        for argument in &tool.request.arguments {
            assert!(
                arguments.insert(argument.argument.as_str()),
                "duplicate argument {:?}",
                argument.argument
            );
        }
        if options.base_url.is_some() {
            // As the URL parser reads it (`http:/host` is `http://host` to it, and to the worker).
            assert!(
                url::Url::parse(&tool.base_url)
                    .is_ok_and(|url| matches!(url.scheme(), "http" | "https")),
                "base URL {:?} is not absolute though the import gave one",
                tool.base_url
            );
        }
        // Stored as JSON (`openapi_tools`), read back the same.
        let stored = serde_json::to_value(tool).expect("a tool encodes");
        let back: ImportedTool = serde_json::from_value(stored).expect("a stored tool decodes");
        assert_eq!(&back, tool);
        build_requests(tool);
    }
    // The inlined schemas stay within the document's budget (it is counted roughly: allow 2x).
    assert!(
        schema_bytes <= 2 * MAX_DOCUMENT_SCHEMA_BYTES,
        "{schema_bytes} bytes of schemas"
    );
});

/// A call with every argument, and one with none: never a panic; a URL under the base URL.
fn build_requests(tool: &ImportedTool) {
    let _ = tool.build_request(&json!({}));
    let _ = tool.build_request(&json!(null));
    let mut args = Map::new();
    for argument in &tool.request.arguments {
        let value = match argument.location {
            Location::Body => json!({"a": [1, "b"]}),
            Location::Query if argument.explode => json!(["x y", "z&w"]),
            _ => json!("v a/l?ue"),
        };
        args.insert(argument.argument.clone(), value);
    }
    if let Ok(request) = tool.build_request(&Value::Object(args)) {
        assert_eq!(request.method, tool.method);
        assert!(request.url.starts_with(tool.base_url.trim_end_matches('/')));
        assert!(
            url_parses(&request.url),
            "built an unparseable URL {:?}",
            request.url
        );
    }
}

fn url_parses(url: &str) -> bool {
    // The worker hands the URL to its HTTP client, which parses it the WHATWG way.
    url::Url::parse(url).is_ok()
}
