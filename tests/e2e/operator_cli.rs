//! SPEC §9, the operator surface: logs on stderr and pure JSON on stdout, read-only commands that
//! change nothing, `worker setup [--apply]` and stream drift, secrets kept out of `--help`, logs
//! and errors, the edge's refusal of a weak `AUTH_SECRET`, `--no-migrate`, and the demo shop's
//! data loaded by `worker seed` rather than by the migrations.

use std::time::Duration;

use e2e::ws::tokens_text;
use e2e::{postgres_url, StackOptions, TestApp};
use serde_json::Value;

fn no_processes() -> StackOptions {
    StackOptions {
        edges: 0,
        workers: 0,
        ..StackOptions::default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn database_exists(name: &str) -> bool {
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_url()))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap()
}

async fn create_empty_database(name: &str) {
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_url()))
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await
        .unwrap();
}

async fn table_exists(app: &TestApp, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

async fn stream_exists(app: &TestApp, name: &str) -> bool {
    app.jetstream().await.get_stream(name).await.is_ok()
}

async fn inbound_max_age(app: &TestApp) -> Duration {
    let mut stream = app
        .jetstream()
        .await
        .get_stream(app.subjects().inbound_stream())
        .await
        .unwrap();
    stream.info().await.unwrap().config.max_age
}

/// Changes `<PREFIX>_IN`'s retention behind the project's back, as an operator might have.
async fn set_inbound_max_age(app: &TestApp, max_age: Duration) {
    let js = app.jetstream().await;
    let mut stream = js
        .get_stream(app.subjects().inbound_stream())
        .await
        .unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_age = max_age;
    js.update_stream(&config).await.unwrap();
    assert_eq!(inbound_max_age(app).await, max_age);
}

#[tokio::test]
async fn json_output_is_pure_json_with_debug_logs_on_stderr() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let debug = [("RUST_LOG", "debug")];
    for args in [
        &["dead-letters", "list", "--json"][..],
        &["replay", "--dead-letters", "--dry-run", "--json"][..],
    ] {
        let output = app.run_command("worker", args, &debug).await;
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        let parsed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: stdout is not JSON ({e}): {}",
                text(&output.stdout)
            )
        });
        assert!(parsed.is_array() || parsed.is_object());
        // The logs were on: they went to stderr.
        assert!(
            text(&output.stderr).contains("\"level\":\"DEBUG\""),
            "{args:?}: debug logs on stderr: {}",
            text(&output.stderr)
        );
    }
}

#[tokio::test]
async fn read_only_commands_against_a_missing_database_fail_and_create_nothing() {
    // Nothing started: the stack's database and streams do not exist.
    let app = TestApp::spawn(no_processes()).await;
    for args in [
        &["dead-letters", "list"][..],
        &["dead-letters", "list", "--json"][..],
        &[
            "dead-letters",
            "show",
            "0191a4a0-0000-7000-8000-000000000000",
        ][..],
        &["replay", "--dead-letters", "--dry-run"][..],
        &["replay", "--thread", "some-thread", "--dry-run"][..],
    ] {
        let output = app.run_command("worker", args, &[]).await;
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(&format!("`{}`", app.database)) && stderr.contains("does not exist"),
            "{args:?}: the error names the missing database: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?}: {}",
            text(&output.stdout)
        );
    }
    assert!(!database_exists(&app.database).await, "no database created");
    assert!(!stream_exists(&app, &app.subjects().inbound_stream()).await);

    // The database exists but the streams do not: a dry run creates none.
    let setup = app.run_command("worker", &["setup"], &[]).await;
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    let js = app.jetstream().await;
    js.delete_stream(app.subjects().inbound_stream())
        .await
        .unwrap();
    let output = app
        .run_command("worker", &["replay", "--dead-letters", "--dry-run"], &[])
        .await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&app.subjects().inbound_stream()) && stderr.contains("worker setup"),
        "names the stream and the fix: {stderr}"
    );
    assert!(!stream_exists(&app, &app.subjects().inbound_stream()).await);
}

#[tokio::test]
async fn a_dry_run_and_a_restart_leave_changed_stream_settings_alone() {
    let mut app = TestApp::spawn(StackOptions::default()).await;
    let changed = Duration::from_secs(3600);
    set_inbound_max_age(&app, changed).await;

    let output = app
        .run_command("worker", &["replay", "--dead-letters", "--dry-run"], &[])
        .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(inbound_max_age(&app).await, changed, "dry run");

    // Start-up reports the difference and leaves the stream as it is.
    app.start_worker().await;
    app.start_edge().await;
    assert_eq!(inbound_max_age(&app).await, changed, "start-up");
    let thread = app.create_thread_on(1).await;
    let mut ws = app.connect(1).await;
    ws.send(&thread.message("hello")).await;
    ws.frames_until_type("message_complete").await;
}

#[tokio::test]
async fn setup_reports_drift_and_fails_until_apply_rewrites_it() {
    let app = TestApp::spawn(no_processes()).await;
    let setup = app.run_command("worker", &["setup"], &[]).await;
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    let stdout = text(&setup.stdout);
    assert!(stdout.contains("database: created"), "{stdout}");
    assert!(stdout.contains("migration applied: "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "stream {}: created",
            app.subjects().inbound_stream()
        )),
        "{stdout}"
    );
    assert!(table_exists(&app, "_sqlx_migrations").await);
    let consumer = app.subjects().workers_consumer();
    let inbound = app
        .jetstream()
        .await
        .get_stream(app.subjects().inbound_stream())
        .await
        .unwrap();
    inbound.consumer_info(&consumer).await.unwrap();

    let configured = inbound_max_age(&app).await;
    set_inbound_max_age(&app, Duration::from_secs(3600)).await;
    let drifted = app.run_command("worker", &["setup"], &[]).await;
    assert!(!drifted.status.success(), "drift makes setup fail");
    let stdout = text(&drifted.stdout);
    assert!(stdout.contains("migrations: up to date"), "{stdout}");
    assert!(
        stdout.contains(&format!("max_age: configured {configured:?}, actual 3600s")),
        "field by field: {stdout}"
    );
    assert!(
        text(&drifted.stderr).contains("worker setup --apply"),
        "{}",
        text(&drifted.stderr)
    );
    assert_eq!(inbound_max_age(&app).await, Duration::from_secs(3600));

    let applied = app.run_command("worker", &["setup", "--apply"], &[]).await;
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    assert!(
        text(&applied.stdout).contains("updated"),
        "{}",
        text(&applied.stdout)
    );
    assert_eq!(inbound_max_age(&app).await, configured);
    let again = app.run_command("worker", &["setup"], &[]).await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("up to date"));
}

#[tokio::test]
async fn help_shows_no_secret_values() {
    let app = TestApp::spawn(no_processes()).await;
    let marker = "m4rker-s3cret";
    let secrets = [
        ("AUTH_SECRET", format!("auth-{marker}-auth-{marker}-auth")),
        ("ADMIN_TOKEN", format!("admin-{marker}")),
        ("OPENAI_API_KEY", format!("sk-{marker}")),
        (
            "DATABASE_URL",
            format!("postgres://app:{marker}@127.0.0.1:5432/x"),
        ),
        ("NATS_URL", format!("nats://app:{marker}@127.0.0.1:4222")),
    ];
    let env: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (binary, args) in [
        ("edge", &["--help"][..]),
        ("worker", &["--help"][..]),
        ("worker", &["setup", "--help"][..]),
        ("worker", &["dead-letters", "list", "--help"][..]),
    ] {
        let output = app.run_command(binary, args, &env).await;
        assert!(output.status.success(), "{binary} {args:?}");
        let help = text(&output.stdout) + &text(&output.stderr);
        assert!(
            !help.contains(marker),
            "{binary} {args:?} shows a secret: {help}"
        );
        if args == ["--help"] {
            assert!(
                help.contains("DATABASE_URL") && help.contains("NATS_URL"),
                "{help}"
            );
        }
    }
    let edge_help = text(&app.run_command("edge", &["--help"], &env).await.stdout);
    assert!(edge_help.contains("AUTH_SECRET") && edge_help.contains("ADMIN_TOKEN"));
}

#[tokio::test]
async fn passwords_in_urls_stay_out_of_errors_and_debug_logs() {
    let app = TestApp::spawn(no_processes()).await;
    let marker = "pw-m4rker";
    // NATS is not listening on port 1; the database does not exist.
    let nats_down = format!("nats://app:{marker}@127.0.0.1:1");
    let db_missing = format!(
        "{}/{}",
        postgres_url().replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{marker}@"),
            1
        ),
        app.database
    );
    assert!(db_missing.contains(marker));
    for (binary, args, env) in [
        (
            "worker",
            &[][..],
            vec![
                ("NATS_URL", nats_down.as_str()),
                ("METRICS_ADDR", "127.0.0.1:0"),
            ],
        ),
        ("edge", &[][..], vec![("NATS_URL", nats_down.as_str())]),
        (
            "worker",
            &["dead-letters", "list"][..],
            vec![("DATABASE_URL", db_missing.as_str())],
        ),
        (
            "worker",
            &["setup"][..],
            vec![("NATS_URL", nats_down.as_str())],
        ),
    ] {
        let mut env = env;
        env.push(("RUST_LOG", "debug"));
        let output = app.run_command(binary, args, &env).await;
        assert!(!output.status.success(), "{binary} {args:?} must fail");
        let all = text(&output.stdout) + &text(&output.stderr);
        assert!(
            !all.contains(marker),
            "{binary} {args:?} shows a password: {all}"
        );
        assert!(
            all.contains("app:***@127.0.0.1:1") || all.contains("postgres:***@"),
            "{binary} {args:?}: the error names the redacted URL: {all}"
        );
    }
}

#[tokio::test]
async fn a_weak_or_example_auth_secret_is_refused_outside_dev_mode() {
    let mut app = TestApp::spawn(no_processes()).await;
    for (secret, says) in [
        ("change-me-in-production", ".env.example"),
        ("short-secret", "shorter than 32 bytes"),
    ] {
        let output = app.run_to_exit("edge", &[("AUTH_SECRET", secret)]).await;
        assert!(!output.status.success(), "{secret} must be refused");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(says), "{secret}: {stderr}");
        assert!(
            stderr.contains("DEV_MODE"),
            "says how to develop anyway: {stderr}"
        );
    }
    app.env.insert("AUTH_SECRET".into(), "short-secret".into());
    app.env.insert("DEV_MODE".into(), "true".into());
    app.start_edge().await;
    let response = app
        .http
        .get(format!("{}/api/health", app.http_url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn no_migrate_leaves_the_database_as_it_is() {
    let mut app = TestApp::spawn(no_processes()).await;
    // A missing database is not created.
    let output = app.run_to_exit("edge", &[("MIGRATE", "false")]).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("does not exist"),
        "{}",
        text(&output.stderr)
    );
    assert!(!database_exists(&app.database).await);

    // An empty database is not migrated, by either binary.
    create_empty_database(&app.database).await;
    app.env.insert("MIGRATE".into(), "false".into());
    app.env.insert("SEED_DEMO_DATA".into(), "false".into());
    app.start_edge().await;
    app.start_worker().await;
    assert!(!table_exists(&app, "_sqlx_migrations").await);
    assert!(!table_exists(&app, "threads").await);

    // The flag does the same as the variable.
    app.env.remove("MIGRATE");
    let output = app
        .run_command("worker", &["--no-migrate", "dead-letters", "list"], &[])
        .await;
    assert!(!output.status.success(), "no schema: nothing to list");
    assert!(!table_exists(&app, "_sqlx_migrations").await);
}

#[tokio::test]
async fn demo_data_comes_from_seed_not_from_the_migrations() {
    let app = TestApp::spawn(no_processes()).await;
    let setup = app.run_command("worker", &["setup"], &[]).await;
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    assert!(
        !table_exists(&app, "demo_orders").await,
        "migrations load no demo data"
    );
    assert!(table_exists(&app, "interrupts").await);

    for _ in 0..2 {
        let seed = app.run_command("worker", &["seed"], &[]).await;
        assert!(seed.status.success(), "{}", text(&seed.stderr));
    }
    let db = app.db().await;
    let orders: Vec<i32> = sqlx::query_scalar("SELECT id FROM demo_orders ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(orders, (1001..=1010).collect::<Vec<_>>());
    let faq: i64 = sqlx::query_scalar("SELECT count(*) FROM demo_faq")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(faq, 6);
}

#[tokio::test]
async fn a_database_migrated_by_the_first_release_still_starts_and_seeds() {
    let mut app = TestApp::spawn(no_processes()).await;
    create_empty_database(&app.database).await;
    // The migrations as the first release had them: the agents migration with the demo shop.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("legacy-migrations-{}", app.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(root.join("migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with("20261124000003") {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    let legacy = "20261124000003_agents_interrupts_demo_shop.sql";
    std::fs::copy(
        root.join("tests/fixtures/legacy_migrations").join(legacy),
        dir.join(legacy),
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    migrator.run(&app.db().await).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let db = app.db().await;
    sqlx::query("UPDATE demo_orders SET status = 'cancelled' WHERE id = 1003")
        .execute(&db)
        .await
        .unwrap();

    let setup = app.run_command("worker", &["setup"], &[]).await;
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    assert!(text(&setup.stdout).contains("migrations: up to date"));
    app.start_edge().await;
    app.start_worker().await;
    // The worker seeded (SEED_DEMO_DATA=true) without undoing what conversations changed.
    let status: String = sqlx::query_scalar("SELECT status FROM demo_orders WHERE id = 1003")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("Where is order 1002?")).await;
    let frames = ws.frames_until_type("message_complete").await;
    assert!(
        tokens_text(&frames).contains("Order 1002"),
        "the demo tools read the demo data: {frames:?}"
    );
}
