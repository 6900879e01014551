//! The web app (`web/`, built by Vite) as the router's fallback: its files, `index.html` for
//! client routes, and a page explaining how to build it when the build output is missing.
//!
//! Caching: Vite names what it puts under `assets/` by content hash, so those files never change
//! and are cached for a year (`immutable`); everything else (`index.html`, which names the current
//! hashes, and the client routes answered with it) is revalidated on every use (`no-cache`).
//! The router compresses these answers (gzip) when the browser accepts it.
//!
//! Framing: every answer says who may show it in a frame (`Content-Security-Policy:
//! frame-ancestors`): the customer chat for other sites, [`EMBED_PAGE`], the edge's own pages and
//! the origins `ALLOWED_ORIGINS` lists; everything else (the operator console) the edge's own pages.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower_http::services::{ServeDir, ServeFile};

use crate::state::AppState;

/// The folder of Vite's content-hashed build output, as a URL path prefix.
const HASHED_ASSETS: &str = "/assets/";

const CACHE_FOREVER: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const CACHE_REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

/// The client route of the customer chat made to be framed by other sites (`public/embed.js`).
const EMBED_PAGE: &str = "/embed";

/// Where the build output is unless configured: `WEB_DIR`'s default.
const DEFAULT_WEB_DIR: &str = "web/dist";

static WEB_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Serve the web app from `dir` (the edge's `--web-dir`); the first call wins.
pub fn configure(dir: &Path) {
    let _ = WEB_DIR.set(dir.to_path_buf());
}

fn web_dir() -> &'static Path {
    WEB_DIR.get_or_init(|| {
        std::env::var_os("WEB_DIR")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WEB_DIR))
    })
}

const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Web app not built</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#111}code,pre{background:#eee;padding:.1rem .3rem;border-radius:4px}pre{padding:.75rem;overflow:auto}</style>
</head><body>
<h1>The web app is not built yet</h1>
<p>The edge serves the chat, replay, dashboard and review pages from its <code>WEB_DIR</code>
(default <code>web/dist</code>), which has no <code>index.html</code>. Build it from the repository root:</p>
<pre>npm --prefix web ci &amp;&amp; npm --prefix web run build</pre>
<p>(Where <code>npm ci</code> refuses the lock file, <code>npm --prefix web install</code> installs the same versions.)</p>
<p>then reload this page, or point <code>WEB_DIR</code> / <code>--web-dir</code> at a build. The API is unaffected:
<a href="/api/health">/api/health</a>.</p>
</body></html>
"#;

/// The fallback: static files, `index.html` for client routes, 404 for unknown API paths.
pub(super) async fn serve(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path();
    let embeddable = path.trim_end_matches('/') == EMBED_PAGE;
    let frame_ancestors = HeaderValue::from_str(&state.origins.frame_ancestors(embeddable))
        .unwrap_or(HeaderValue::from_static("frame-ancestors 'self'"));
    if path.starts_with("/api/") || path == "/api" || path == "/ws" || path == "/metrics" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let dir = web_dir();
    let index = dir.join("index.html");
    if !index.is_file() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            Body::from(NOT_BUILT),
        )
            .into_response();
    }
    // A missing hashed asset is a 404, never `index.html`: a year-long cache must not keep a
    // page under a script's name.
    let hashed = path.starts_with(HASHED_ASSETS);
    let served = if hashed {
        ServeDir::new(dir).try_call(request).await
    } else {
        ServeDir::new(dir)
            .fallback(ServeFile::new(index))
            .try_call(request)
            .await
    };
    let mut response = match served {
        Ok(response) => response.into_response(),
        Err(error) => {
            tracing::warn!(%error, "Cannot serve the web app.");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let found = response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED;
    let cache = if hashed && found {
        CACHE_FOREVER
    } else {
        CACHE_REVALIDATE
    };
    response.headers_mut().insert(header::CACHE_CONTROL, cache);
    response
        .headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, frame_ancestors);
    response
}
