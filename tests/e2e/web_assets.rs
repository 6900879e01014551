//! The web app's files: gzip when the browser accepts it, a year of caching for Vite's
//! content-hashed `assets/`, revalidation for `index.html` and the client routes it answers.

use e2e::{StackOptions, TestApp};
use reqwest::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY};
use reqwest::StatusCode;

/// A fake build output, removed on drop.
struct WebDir(std::path::PathBuf);

impl WebDir {
    fn new(index: &str, script: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("e2e-web-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("index.html"), index).unwrap();
        std::fs::write(dir.join("assets/app-abc123.js"), script).unwrap();
        Self(dir)
    }
}

impl Drop for WebDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn hashed_assets_are_cached_for_good_and_text_is_gzipped() {
    let index = format!(
        "<!doctype html><title>Support</title><script src=\"/assets/app-abc123.js\"></script>{}",
        "<!-- padding -->".repeat(20)
    );
    let script = "console.log('hello from the support widget');\n".repeat(50);
    let web = WebDir::new(&index, &script);
    let options = StackOptions {
        edges: 1,
        workers: 0,
        ..StackOptions::default()
    }
    .with("WEB_DIR", web.0.to_str().unwrap());
    let app = TestApp::spawn(options).await;
    let base = app.http_url(0);
    let get = |path: &str, gzip: bool| {
        let mut request = app.http.get(format!("{base}{path}"));
        if gzip {
            request = request.header(ACCEPT_ENCODING, "gzip");
        }
        request.send()
    };

    let plain = get("/assets/app-abc123.js", false).await.unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    assert_eq!(
        plain.headers()[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert!(plain.headers().get(CONTENT_ENCODING).is_none());
    assert_eq!(plain.text().await.unwrap(), script);

    let gzipped = get("/assets/app-abc123.js", true).await.unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(gzipped.headers()[CONTENT_ENCODING], "gzip");
    assert_eq!(
        gzipped.headers()[CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    let body = gzipped.bytes().await.unwrap();
    assert_eq!(&body[..2], [0x1f, 0x8b], "a gzip stream");
    assert!(body.len() < script.len() / 4, "{} bytes", body.len());

    // index.html, directly or for a client route, is revalidated on every use.
    for path in ["/", "/index.html", "/chat/some-thread"] {
        let page = get(path, true).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert_eq!(page.headers()[CACHE_CONTROL], "no-cache", "{path}");
        assert_eq!(page.headers()[CONTENT_ENCODING], "gzip", "{path}");
    }
    let page = get("/chat/some-thread", false).await.unwrap();
    assert_eq!(page.text().await.unwrap(), index);

    // A hashed asset that does not exist is a 404, not index.html cached for a year.
    let missing = get("/assets/app-000000.js", false).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_ne!(
        missing
            .headers()
            .get(CACHE_CONTROL)
            .map(|v| v.to_str().unwrap()),
        Some("public, max-age=31536000, immutable")
    );

    // The API is not the web app's: no cache header of the web app's there.
    let health = get("/api/health", false).await.unwrap();
    assert!(health.headers().get(CACHE_CONTROL).is_none());
}

/// Only the customer chat for other sites (`/embed`) may be framed by the origins
/// `ALLOWED_ORIGINS` lists; the other pages (the operator console) by the edge's own pages only.
#[tokio::test]
async fn only_the_embed_page_may_be_framed_by_listed_origins() {
    let web = WebDir::new("<!doctype html><title>Support</title>", "");
    std::fs::write(web.0.join("embed.js"), "/* widget */").unwrap();
    let options = StackOptions {
        edges: 1,
        workers: 0,
        ..StackOptions::default()
    }
    .with("WEB_DIR", web.0.to_str().unwrap())
    .with(
        "ALLOWED_ORIGINS",
        "https://shop.example,http://localhost:5173",
    );
    let app = TestApp::spawn(options).await;
    let base = app.http_url(0);
    let policy = |path: &'static str| {
        let request = app.http.get(format!("{base}{path}"));
        async move {
            let page = request.send().await.unwrap();
            assert_eq!(page.status(), StatusCode::OK, "{path}");
            page.headers()[CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    for path in ["/embed", "/embed/"] {
        assert_eq!(
            policy(path).await,
            "frame-ancestors 'self' https://shop.example http://localhost:5173",
            "{path}"
        );
    }
    for path in [
        "/",
        "/console",
        "/console/operators",
        "/embed.js",
        "/embedded",
    ] {
        assert_eq!(policy(path).await, "frame-ancestors 'self'", "{path}");
    }
}
