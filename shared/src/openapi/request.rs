//! The HTTP request of one call of an imported tool: arguments (already checked against the
//! tool's schema) placed in the path, query, headers, cookie and body as the tool's
//! [`RequestMapping`](super::RequestMapping) says, percent-encoded, under the tool's base URL.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use url::Url;

use super::tool::{ImportedTool, Location};

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::openapi::tool::{Access, ArgumentMapping, RequestMapping};

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
