//! Which browser pages may use the edge (`ALLOWED_ORIGINS`, SPEC §9): the check behind the
//! WebSocket upgrade, the CORS layer and the refusal of cross-origin API requests.
//!
//! A request without `Origin` comes from a non-browser client and is always allowed: browsers send
//! `Origin` on every WebSocket upgrade and cross-origin request, and a page cannot remove it.
//! A same-origin request (the `Origin`'s host and port are the `Host` the browser addressed) is
//! always allowed too: it is the edge's own web app. Other origins must be listed.

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use shared::config::{AllowedOrigins, OriginSettings};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::state::AppState;

/// How long a browser may cache a CORS preflight's answer.
const PREFLIGHT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// `ALLOWED_ORIGINS`, applied.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    listed: Option<AllowedOrigins>,
}

impl OriginPolicy {
    pub fn new(settings: &OriginSettings) -> Self {
        Self {
            listed: settings.allowed_origins.clone(),
        }
    }

    /// Whether a request with these headers (and this URI, for HTTP/2's `:authority`) may go on.
    pub fn allows(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        match headers.get(ORIGIN) {
            None => true,
            Some(origin) => self.allows_origin(origin, headers, uri),
        }
    }

    /// Whether a browser page of `origin` may use the edge.
    fn allows_origin(&self, origin: &HeaderValue, headers: &HeaderMap, uri: &Uri) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let host = headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| uri.authority().map(|authority| authority.as_str()));
        host.is_some_and(|host| same_origin(origin, host))
            || self
                .listed
                .as_ref()
                .is_some_and(|listed| listed.contains(origin))
    }

    /// The `Content-Security-Policy` of the web app's pages: who may show them in a frame. The
    /// customer chat for other sites (`/embed`, see docs/operator-console.md) may be framed by
    /// the edge's own pages and the listed origins; every other page (the operator console
    /// above all: clickjacking) by the edge's own pages only.
    pub fn frame_ancestors(&self, embeddable: bool) -> String {
        let mut policy = String::from("frame-ancestors 'self'");
        if embeddable {
            for origin in self.listed.iter().flat_map(|listed| listed.as_slice()) {
                policy.push(' ');
                policy.push_str(origin);
            }
        }
        policy
    }

    /// CORS for `/api/*`: preflights from allowed origins are answered with what the web app
    /// sends (bearer tokens, JSON, and `DELETE` for the customer's erasure of their own
    /// conversation); other origins get no CORS header, so browsers refuse.
    pub fn cors_layer(&self) -> CorsLayer {
        let policy = self.clone();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin, parts| {
                policy.allows_origin(origin, &parts.headers, &parts.uri)
            }))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
            ])
            .max_age(PREFLIGHT_MAX_AGE)
    }
}

/// Middleware: a request from a page of an origin that is not allowed gets 403 before any handler
/// runs (a browser would hide the answer anyway; the handler must not act on it either).
pub async fn refuse_foreign_origins(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.origins.allows(request.headers(), request.uri()) {
        next.run(request).await
    } else {
        ApiError::ForbiddenOrigin.into_response()
    }
}

/// `origin` (`scheme://host[:port]`) names the same host and port as `host` (a `Host` header).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let strip = |authority: &str| {
        let authority = authority.to_ascii_lowercase();
        match authority.strip_suffix(default_port) {
            Some(bare) => bare.to_owned(),
            None => authority,
        }
    };
    !authority.is_empty() && strip(authority.trim_end_matches('/')) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn only_the_embed_page_may_be_framed_by_listed_origins() {
        let unset = OriginPolicy::default();
        assert_eq!(unset.frame_ancestors(true), "frame-ancestors 'self'");
        assert_eq!(unset.frame_ancestors(false), "frame-ancestors 'self'");
        let listed = OriginPolicy::new(&OriginSettings {
            allowed_origins: Some(
                "https://shop.example, http://localhost:5173"
                    .parse()
                    .unwrap(),
            ),
        });
        assert_eq!(
            listed.frame_ancestors(true),
            "frame-ancestors 'self' https://shop.example http://localhost:5173"
        );
        assert_eq!(listed.frame_ancestors(false), "frame-ancestors 'self'");
    }

    #[test]
    fn unset_allows_the_same_origin_and_clients_without_origin_only() {
        let policy = OriginPolicy::default();
        let uri = Uri::from_static("/ws");
        assert!(policy.allows(&request(None, "edge.example"), &uri));
        assert!(policy.allows(&request(Some("https://edge.example"), "edge.example"), &uri));
        assert!(policy.allows(
            &request(Some("http://Edge.example:80"), "edge.example"),
            &uri
        ));
        assert!(policy.allows(
            &request(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            &uri
        ));
        assert!(!policy.allows(
            &request(Some("http://127.0.0.1:8081"), "127.0.0.1:8080"),
            &uri
        ));
        assert!(!policy.allows(&request(Some("https://evil.example"), "edge.example"), &uri));
        assert!(!policy.allows(&request(Some("null"), "edge.example"), &uri));
        assert!(!policy.allows(&request(Some("https://"), ""), &uri));
    }

    #[test]
    fn listed_origins_are_allowed_besides_the_same_origin() {
        let settings = OriginSettings {
            allowed_origins: Some("https://shop.example".parse().unwrap()),
        };
        let policy = OriginPolicy::new(&settings);
        let uri = Uri::from_static("/api/threads");
        assert!(policy.allows(&request(Some("https://shop.example"), "edge.example"), &uri));
        assert!(policy.allows(&request(Some("https://edge.example"), "edge.example"), &uri));
        assert!(!policy.allows(&request(Some("http://shop.example"), "edge.example"), &uri));
        assert!(!policy.allows(&request(Some("https://evil.example"), "edge.example"), &uri));
    }
}
