//! Connections in production (SPEC §9): PostgreSQL over TLS, NATS with an nkey user over (mutual)
//! TLS. Each test starts private servers with certificates made by a CA of its own.

use e2e::nats::NatsServer;
use e2e::postgres::PostgresServer;
use e2e::tls::TestCa;
use e2e::ws::tokens_text;
use e2e::{StackOptions, TestApp};

fn nothing_started() -> StackOptions {
    StackOptions {
        edges: 0,
        workers: 0,
        ..StackOptions::default()
    }
}

#[tokio::test]
async fn the_edge_talks_to_postgresql_over_verified_tls_only() {
    let ca = TestCa::new("postgres");
    let server = PostgresServer::start_tls_only(&ca.issue("server")).await;
    let database = format!("tls_{}", uuid::Uuid::new_v4().simple());
    let tls_url = server.url(
        &database,
        &format!(
            "sslmode=verify-full&sslrootcert={}&application_name=edge-under-test",
            ca.ca_pem.display()
        ),
    );
    let mut app = TestApp::spawn_with_urls(nothing_started(), e2e::nats_url(), Some(tls_url)).await;

    // The server takes no plain connection: a client that does not speak TLS is refused.
    let plain = sqlx::PgPool::connect(&server.url("postgres", "sslmode=disable")).await;
    assert!(plain.is_err(), "the server must refuse plain TCP");

    // A certificate from another CA is not trusted: verify-full really verifies.
    let stranger = TestCa::new("stranger");
    let untrusted = server.url(
        &database,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            stranger.ca_pem.display()
        ),
    );
    let output = app
        .run_to_exit(
            "edge",
            &[("DATABASE_URL", &untrusted), ("EDGE_ADDR", "127.0.0.1:0")],
        )
        .await;
    assert!(
        !output.status.success(),
        "an untrusted server certificate must stop start-up"
    );

    app.start_edge().await;
    let health: serde_json::Value = app
        .http
        .get(format!("{}/api/health", app.http_url(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["checks"]["database"], "ok", "{health}");

    // And the edge's own connections are encrypted.
    let observer = sqlx::PgPool::connect(&server.url(
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", ca.ca_pem.display()),
    ))
    .await
    .unwrap();
    let (connections, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'edge-under-test'",
    )
    .fetch_one(&observer)
    .await
    .unwrap();
    assert!(connections >= 1, "the edge holds connections to the server");
    assert_eq!(encrypted, connections, "every edge connection uses TLS");
}

/// A nats-server that admits one nkey user, over TLS only, and verifies client certificates.
async fn secured_nats(ca: &TestCa, user: &nkeys::KeyPair) -> NatsServer {
    let server = ca.issue("nats-server");
    let config = format!(
        r#"
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 5
}}
authorization {{
  users: [ {{ nkey: "{user}" }} ]
}}
"#,
        cert = server.cert.display(),
        key = server.key.display(),
        ca = ca.ca_pem.display(),
        user = user.public_key(),
    );
    NatsServer::start_with_config(&config).await
}

#[tokio::test]
async fn a_chat_turn_runs_over_nats_with_an_nkey_user_and_mutual_tls() {
    let ca = TestCa::new("nats");
    let user = nkeys::KeyPair::new_user();
    let nats = secured_nats(&ca, &user).await;
    let client = ca.issue("client");
    let seed = user.seed().unwrap();
    let ca_pem = ca.ca_pem.display().to_string();
    let cert = client.cert.display().to_string();
    let key = client.key.display().to_string();
    let options = StackOptions::default()
        .with("NATS_NKEY", &seed)
        .with("NATS_TLS_CA", &ca_pem)
        .with("NATS_TLS_CERT", &cert)
        .with("NATS_TLS_KEY", &key);
    let app = TestApp::spawn_with_urls(options, nats.url(), None).await;

    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("Hello over a secured NATS")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    assert!(!tokens_text(&frames).is_empty(), "{frames:?}");

    // Each secret or file is needed: without the seed, or without the client certificate, or
    // with a seed the server does not know, neither binary starts, and the error says why.
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let cases: [Refusal<'_>; 6] = [
        ("edge", &["NATS_NKEY"], &[], "authorization violation"),
        ("worker", &["NATS_NKEY"], &[], "authorization violation"),
        (
            "edge",
            &[],
            &[("NATS_NKEY", &stranger)],
            "authorization violation",
        ),
        (
            "worker",
            &["NATS_TLS_CERT", "NATS_TLS_KEY"],
            &[],
            "Failed to connect to NATS",
        ),
        (
            "edge",
            &[],
            &[("NATS_NKEY", "SUnot-a-seed")],
            "NATS_NKEY is not a NATS user nkey seed",
        ),
        (
            "worker",
            &[],
            &[("NATS_TLS_CA", "/nonexistent/ca.pem")],
            "NATS_TLS_CA /nonexistent/ca.pem",
        ),
    ];
    for (name, unset, extra, reason) in cases {
        let mut env = extra.to_vec();
        env.extend([
            ("EDGE_ADDR", "127.0.0.1:0"),
            ("METRICS_ADDR", "127.0.0.1:0"),
        ]);
        let output = app.run_to_exit_without(name, unset, &env).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let case = format!("{name} without {unset:?}, with {extra:?}");
        assert!(!output.status.success(), "{case} must not start: {stderr}");
        assert!(stderr.contains(reason), "{case}: {stderr}");
        assert!(!stderr.contains(&seed), "the seed never shows: {stderr}");
        assert!(
            !stderr.contains(&stranger),
            "the seed never shows: {stderr}"
        );
    }
}

/// A start-up that must fail: the binary, run with these settings removed from the stack's and
/// these added, and what its error output says.
type Refusal<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
