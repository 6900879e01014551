use e2e::{StackOptions, TestApp};

#[tokio::test]
async fn a_missing_database_is_created_and_a_failing_migration_stops_start_up() {
    // The harness started nothing yet: the edge creates the database and migrates it.
    let mut app = TestApp::spawn(StackOptions {
        edges: 0,
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    app.start_edge().await;
    let db = app.db().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(applied >= 1);

    // Break the schema so the first migration can no longer be re-checked: sqlx refuses a
    // database whose applied migration no longer matches the code, and start-up must stop.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea")
        .execute(&db)
        .await
        .unwrap();
    let output = app
        .run_to_exit("worker", &[("METRICS_ADDR", "127.0.0.1:0")])
        .await;
    assert!(!output.status.success(), "the worker must not start");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("Failed to apply the database migrations"),
        "the error names the migrations: {logs}"
    );
}

#[tokio::test]
async fn the_edge_refuses_to_start_without_an_auth_secret() {
    let app = TestApp::spawn(StackOptions {
        edges: 0,
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let output = app.run_to_exit("edge", &[("AUTH_SECRET", "")]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("auth-secret") || stderr.contains("AUTH_SECRET"),
        "{stderr}"
    );
}
