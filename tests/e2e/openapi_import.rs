//! `POST /api/admin/openapi`, `GET /api/admin/tools`, `PATCH /api/admin/tools/{id}`: OpenAPI
//! documents become proposed tools, an operator reviews them, a re-import keeps the review.

use std::time::{Duration, Instant};

use e2e::fake_openai::{FakeOpenAi, Reply};
use e2e::{status_and_json, StackOptions, TestApp};
use serde_json::{json, Value};

const ADMIN: &str = "openapi-admin-token";

async fn stack() -> TestApp {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    };
    TestApp::spawn(options.with("ADMIN_TOKEN", ADMIN)).await
}

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/openapi/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn import(app: &TestApp, document: &str, content_type: &str) -> (u16, Value) {
    import_at(app, "", document, content_type).await
}

async fn import_at(app: &TestApp, query: &str, document: &str, content_type: &str) -> (u16, Value) {
    let url = format!("{}/api/admin/openapi{query}", app.http_url(0));
    status_and_json(
        app.http
            .post(url)
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(document.to_owned()),
    )
    .await
}

async fn list(app: &TestApp) -> Vec<Value> {
    let url = format!("{}/api/admin/tools", app.http_url(0));
    let (status, body) = status_and_json(app.http.get(url).bearer_auth(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    body["tools"].as_array().expect("a tools array").clone()
}

async fn patch(app: &TestApp, id: &str, body: &Value) -> (u16, Value) {
    let url = format!("{}/api/admin/tools/{id}", app.http_url(0));
    status_and_json(app.http.patch(url).bearer_auth(ADMIN).json(body)).await
}

fn named<'t>(tools: &'t [Value], name: &str) -> &'t Value {
    tools
        .iter()
        .find(|tool| tool["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name} in {tools:#?}"))
}

fn names(tools: &[Value]) -> Vec<&str> {
    tools
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect()
}

#[tokio::test]
async fn petstore_becomes_three_proposed_tools() {
    let app = stack().await;
    let (status, body) = import(&app, &fixture("petstore.yaml"), "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    let tools = body["tools"].as_array().unwrap();
    assert_eq!(names(tools), ["listPets", "createPets", "showPetById"]);
    assert_eq!(body["skipped"], json!([]));

    let list_pets = named(tools, "listPets");
    assert_eq!(list_pets["method"], "GET");
    assert_eq!(list_pets["path"], "/pets");
    assert_eq!(list_pets["access"], "read");
    assert_eq!(list_pets["requires_approval"], false);
    assert_eq!(list_pets["base_url"], "http://petstore.swagger.io/v1");
    assert_eq!(list_pets["description"], "List all pets");
    assert_eq!(list_pets["source"], "Swagger Petstore 1.0.0");
    assert_eq!(
        list_pets["parameters"]["properties"]["limit"]["type"],
        "integer"
    );
    assert_eq!(
        list_pets["request"]["arguments"][0],
        json!({"argument": "limit", "in": "query", "name": "limit", "required": false, "explode": true})
    );

    let create = named(tools, "createPets");
    assert_eq!(create["method"], "POST");
    assert_eq!(create["path"], "/pets");
    assert_eq!(create["access"], "write");
    assert_eq!(create["requires_approval"], true);
    assert_eq!(create["parameters"]["required"], json!(["body"]));
    assert_eq!(
        create["parameters"]["properties"]["body"]["properties"]["name"]["type"],
        "string"
    );
    assert_eq!(create["request"]["body_content_type"], "application/json");

    let show = named(tools, "showPetById");
    assert_eq!(show["method"], "GET");
    assert_eq!(show["path"], "/pets/{petId}");
    assert_eq!(show["access"], "read");
    assert_eq!(show["requires_approval"], false);
    assert_eq!(show["parameters"]["required"], json!(["petId"]));
    assert_eq!(show["parameters"]["properties"]["petId"]["type"], "string");

    for tool in tools {
        assert_eq!(tool["enabled"], true, "{tool}");
        assert_eq!(tool["reviewed"], false, "{tool}");
        assert_eq!(tool["reviewed_at"], Value::Null, "{tool}");
        for field in ["id", "created_at", "updated_at"] {
            assert!(tool[field].is_string(), "{field} in {tool}");
        }
    }
    // GET answers the same shape, by name.
    let listed = list(&app).await;
    assert_eq!(names(&listed), ["createPets", "listPets", "showPetById"]);
    assert_eq!(named(&listed, "listPets"), list_pets);

    // The same document written as JSON gives the same tools, updated in place.
    let (status, again) = import(&app, &petstore_json(), "application/json").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(names(again["tools"].as_array().unwrap()), names(tools));
    assert_eq!(list(&app).await.len(), 3);
}

/// The petstore (responses trimmed) as a JSON document.
fn petstore_json() -> String {
    json!({
        "openapi": "3.0.0",
        "info": {"version": "1.0.0", "title": "Swagger Petstore", "license": {"name": "MIT"}},
        "servers": [{"url": "http://petstore.swagger.io/v1"}],
        "paths": {
            "/pets": {
                "get": {"summary": "List all pets", "operationId": "listPets",
                        "parameters": [{"name": "limit", "in": "query", "required": false,
                                        "schema": {"type": "integer", "maximum": 100, "format": "int32"}}],
                        "responses": {"200": {"description": "A paged array of pets",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pets"}}}}}},
                "post": {"summary": "Create a pet", "operationId": "createPets",
                         "requestBody": {"required": true, "content": {"application/json":
                             {"schema": {"$ref": "#/components/schemas/Pet"}}}},
                         "responses": {"201": {"description": "Null response"}}}
            },
            "/pets/{petId}": {
                "get": {"summary": "Info for a specific pet", "operationId": "showPetById",
                        "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "Expected response to a valid request"}}}
            }
        },
        "components": {"schemas": {
            "Pet": {"type": "object", "required": ["id", "name"],
                    "properties": {"id": {"type": "integer", "format": "int64"}, "name": {"type": "string"}, "tag": {"type": "string"}}},
            "Pets": {"type": "array", "maxItems": 100, "items": {"$ref": "#/components/schemas/Pet"}}
        }}
    })
    .to_string()
}

#[tokio::test]
async fn a_reimport_keeps_the_review_and_takes_the_new_description() {
    let app = stack().await;
    let (status, first) = import(&app, &fixture("petstore.yaml"), "application/yaml").await;
    assert_eq!(status, 200, "{first}");
    let first = first["tools"].as_array().unwrap().clone();
    let create_id = named(&first, "createPets")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let show_id = named(&first, "showPetById")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The operator lets createPets run without approval but keeps it off for now, and confirms
    // showPetById as proposed.
    let (status, reviewed) = patch(
        &app,
        &create_id,
        &json!({"requires_approval": false, "enabled": false}),
    )
    .await;
    assert_eq!(status, 200, "{reviewed}");
    assert_eq!(reviewed["reviewed"], true);
    assert!(reviewed["reviewed_at"].is_string());
    assert_eq!(reviewed["requires_approval"], false);
    assert_eq!(reviewed["enabled"], false);
    assert_eq!(reviewed["access"], "write");
    let (status, confirmed) = patch(&app, &show_id, &json!({})).await;
    assert_eq!(status, 200, "{confirmed}");
    assert_eq!(confirmed["reviewed"], true);
    assert_eq!(confirmed["access"], "read");

    // Version 1.1: new wording, a new limit, and showPetById is now a DELETE.
    let changed = fixture("petstore.yaml")
        .replace("version: 1.0.0", "version: 1.1.0")
        .replace("summary: Create a pet", "summary: Add a pet to the store")
        .replace("maximum: 100", "maximum: 50")
        .replace(
            "  /pets/{petId}:\n    get:\n      summary: Info for a specific pet",
            "  /pets/{petId}:\n    delete:\n      summary: Remove a pet",
        );
    let (status, second) = import(&app, &changed, "text/yaml").await;
    assert_eq!(status, 200, "{second}");
    let second = second["tools"].as_array().unwrap().clone();

    let create = named(&second, "createPets");
    assert_eq!(create["id"], create_id.as_str(), "same tool, updated");
    assert_eq!(create["description"], "Add a pet to the store");
    assert_eq!(create["source"], "Swagger Petstore 1.1.0");
    assert_eq!(create["requires_approval"], false, "the review stays");
    assert_eq!(create["enabled"], false, "the review stays");
    assert_eq!(create["reviewed"], true, "the review stays");
    assert_eq!(create["access"], "write");
    assert_eq!(create["reviewed_at"], reviewed["reviewed_at"]);

    let list_pets = named(&second, "listPets");
    assert_eq!(
        list_pets["parameters"]["properties"]["limit"]["maximum"],
        50
    );
    assert_eq!(list_pets["reviewed"], false);

    // A reviewed tool whose method changed goes back to review, with the stricter proposal.
    let show = named(&second, "showPetById");
    assert_eq!(show["id"], show_id.as_str());
    assert_eq!(show["method"], "DELETE");
    assert_eq!(show["description"], "Remove a pet");
    assert_eq!(show["reviewed"], false);
    assert_eq!(show["access"], "write");
    assert_eq!(show["requires_approval"], true);

    let listed = list(&app).await;
    assert_eq!(listed.len(), 3);
    assert_eq!(named(&listed, "createPets")["requires_approval"], false);
}

#[tokio::test]
async fn openapi_3_1_documents_import() {
    let app = stack().await;
    let (status, body) = import_at(
        &app,
        "?base_url=https://loyalty.example/api/",
        &fixture("loyalty-3.1.yaml"),
        "application/yaml",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let tools = body["tools"].as_array().unwrap();
    assert_eq!(
        names(tools),
        ["revokeAward", "getPoints", "post_members_memberId_points"]
    );
    let get = named(tools, "getPoints");
    assert_eq!(get["access"], "read");
    assert_eq!(get["base_url"], "https://eu.loyalty.example/api");
    assert_eq!(
        get["parameters"]["properties"]["since"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(get["parameters"]["required"], json!(["memberId"]));
    let award = named(tools, "post_members_memberId_points");
    assert_eq!(award["method"], "POST");
    assert_eq!(award["access"], "write");
    assert_eq!(award["requires_approval"], true);
    assert_eq!(
        award["parameters"]["properties"]["body"]["properties"]["note"],
        json!({"type": ["string", "null"], "maxLength": 200})
    );
    let revoke = named(tools, "revokeAward");
    assert_eq!(revoke["method"], "DELETE");
    assert_eq!(revoke["base_url"], "https://loyalty.example/admin");

    // OAI's webhook example: valid 3.1 with no paths, so no tools.
    let (status, body) = import(&app, &fixture("webhook-example.yaml"), "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tools"], json!([]));
    assert_eq!(list(&app).await.len(), 3);
}

#[tokio::test]
async fn malformed_documents_are_refused_with_the_place_of_the_problem() {
    let app = stack().await;
    let cases = [
        ("not-a-document.txt", "text/plain", "document: not valid YAML"),
        (
            "swagger-2.0.yaml",
            "application/yaml",
            "swagger: version 2.0 (Swagger) is not supported",
        ),
        (
            "bad-parameter-in.yaml",
            "application/yaml",
            "paths./pets.post.parameters[0].in: unknown location \"body\"",
        ),
        (
            "dangling-ref.yaml",
            "application/yaml",
            "paths./pets.get.responses.200.content.application/json.schema.items.$ref: #/components/schemas/Dog does not resolve",
        ),
    ];
    for (name, content_type, expected) in cases {
        let (status, body) = import(&app, &fixture(name), content_type).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["code"], "invalid_document", "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(expected), "{name}: {message}");
    }
    let (status, body) = import(&app, "{\"openapi\": \"3.0.0\",", "application/json").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("document: not valid JSON"),
        "{body}"
    );
    let missing_responses =
        "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    get:\n      operationId: x\n";
    let (status, body) = import(&app, missing_responses, "application/yaml").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "paths./pets.get.responses: missing field"
    );

    // Too large: refused before parsing.
    let huge = format!("openapi: 3.0.0\n#{}\n", "x".repeat(2 * 1024 * 1024));
    let (status, body) = import(&app, &huge, "application/yaml").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = import_at(
        &app,
        "?base_url=ftp://example.com",
        &fixture("petstore.yaml"),
        "application/yaml",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    assert!(list(&app).await.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn reviews_refuse_unknown_tools_and_bad_bodies() {
    let app = stack().await;
    let (status, body) = import(&app, &fixture("petstore.yaml"), "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    let id = named(body["tools"].as_array().unwrap(), "listPets")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, body) = patch(&app, &unknown, &json!({"enabled": false})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = patch(&app, "not-a-uuid", &json!({"enabled": false})).await;
    assert_eq!(status, 404);

    for bad in [
        json!({"access": "admin"}),
        json!({"access": "READ"}),
        json!({"requires_approval": "yes"}),
        json!({"enabled": 1}),
        json!({"name": "renamed"}),
        json!([]),
    ] {
        let (status, body) = patch(&app, &id, &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}: {body}");
    }
    let url = format!("{}/api/admin/tools/{id}", app.http_url(0));
    let (status, _) = status_and_json(
        app.http
            .patch(url)
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400);

    // Nothing above changed the tool.
    let tool = named(&list(&app).await, "listPets").clone();
    assert_eq!(tool["reviewed"], false);
    assert_eq!(tool["enabled"], true);

    let (status, tool) = patch(&app, &id, &json!({"access": "write", "enabled": true})).await;
    assert_eq!(status, 200, "{tool}");
    assert_eq!(tool["access"], "write");
    assert_eq!(tool["requires_approval"], false);
    assert_eq!(tool["reviewed"], true);
}

#[tokio::test]
async fn every_tools_route_wants_the_admin_token() {
    let app = stack().await;
    let base = app.http_url(0);
    let id = uuid::Uuid::new_v4();
    let requests = || {
        [
            app.http
                .post(format!("{base}/api/admin/openapi"))
                .header("content-type", "application/yaml")
                .body(fixture("petstore.yaml")),
            app.http.get(format!("{base}/api/admin/tools")),
            app.http
                .patch(format!("{base}/api/admin/tools/{id}"))
                .json(&json!({"enabled": false})),
        ]
    };
    for request in requests() {
        let (status, body) = status_and_json(request).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    for request in requests() {
        let (status, _) = status_and_json(request.bearer_auth("wrong-token")).await;
        assert_eq!(status, 401);
    }
    assert!(list(&app).await.is_empty(), "nothing was imported");

    // Without ADMIN_TOKEN the routes do not exist.
    let closed = TestApp::spawn(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let base = closed.http_url(0);
    for request in [
        closed
            .http
            .post(format!("{base}/api/admin/openapi"))
            .body("{}"),
        closed.http.get(format!("{base}/api/admin/tools")),
        closed
            .http
            .patch(format!("{base}/api/admin/tools/{id}"))
            .json(&json!({})),
    ] {
        let (status, _) = status_and_json(request.bearer_auth(ADMIN)).await;
        assert_eq!(status, 404);
    }
}

/// A YAML document whose aliases nest `levels` deep, each level naming the one below ten times,
/// over a first anchor of `width` strings: `width` × 10^levels strings once expanded. Four levels
/// stay under serde_yaml_ng's own limit (100 alias jumps per event of the document).
fn billion_laughs(levels: usize, width: usize) -> String {
    let mut text = format!(
        "openapi: 3.0.3\ninfo: {{title: Laughs, version: '1'}}\npaths: {{}}\nx-l0: &l0 [{}]\n",
        vec!["lol"; width].join(", ")
    );
    for level in 1..=levels {
        let below = format!("*l{}", level - 1);
        let row = [below.as_str(); 10].join(", ");
        text.push_str(&format!("x-l{level}: &l{level} [{row}]\n"));
    }
    text
}

#[tokio::test]
async fn a_yaml_alias_bomb_is_refused_quickly_and_the_edge_stays_small() {
    let app = stack().await;
    // Warm the route up with a real document, then take the edge's peak memory so far.
    let (status, body) = import(&app, &fixture("petstore.yaml"), "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    let peak_before = app.edges[0].memory_kib("VmHWM");

    // 10 kB that expand to 20,000,000 strings: gigabytes as a decoded value.
    let bomb = billion_laughs(4, 2_000);
    assert!(bomb.len() < 12_000, "{} bytes", bomb.len());
    let started = Instant::now();
    let (status, body) = import(&app, &bomb, "application/yaml").await;
    let took = started.elapsed();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_document", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message
            .starts_with("document: the YAML grows past 33554432 bytes once decoded (each alias"),
        "{message}"
    );
    // Under a second on an idle machine; unbounded, this document takes minutes.
    assert!(took < Duration::from_secs(15), "refused after {took:?}");

    // The edge's peak resident memory grew by less than 100 MB.
    let grown_kib = app.edges[0].memory_kib("VmHWM").saturating_sub(peak_before);
    assert!(
        grown_kib < 100 * 1024,
        "the edge's peak grew by {grown_kib} KiB"
    );

    // The edge still serves imports, and nothing of the bomb was stored.
    let (status, body) = import(&app, &petstore_json(), "application/json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(list(&app).await.len(), 3);
}

const PET_AGENTS: &str = r#"default_agent: pets
agents:
  - name: pets
    description: The pet store.
    system_prompt: You look after the pet store.
    imported_tools: [listPets, createPets, showPetById]
prices:
  gpt-4o-mini: { prompt: 0.15, completion: 0.60 }
"#;

/// The imported tools the pets agent offers the model in a turn: one message, answered by the
/// fake model with text, and the names of the tools of its chat request.
async fn tools_offered(app: &TestApp, fake: &FakeOpenAi) -> Vec<String> {
    fake.push_classification(Reply::Classification(
        json!({"intents": [{"agent": "pets", "confidence": 0.9}], "ambiguous": false, "clarification": null}),
    ));
    fake.push_chat(Reply::Text(vec!["Noted.".into()]));
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("What pets do you have?")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    let request = fake
        .requests()
        .into_iter()
        .rev()
        .find(|request| request["stream"] == true)
        .expect("a chat request");
    let mut names: Vec<String> = request["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|tool| tool["function"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_reimport_that_changes_a_reviewed_call_reopens_its_review() {
    let fake = FakeOpenAi::start().await;
    let agents = std::env::temp_dir().join(format!("agents-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&agents, PET_AGENTS).unwrap();
    let app = TestApp::spawn(
        fake.stack_options()
            .with("ADMIN_TOKEN", ADMIN)
            .with("AGENTS_CONFIG", agents.to_str().unwrap()),
    )
    .await;
    let original = fixture("petstore.yaml");
    let (status, body) = import(&app, &original, "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    let mut reviewed_at = std::collections::HashMap::new();
    for tool in body["tools"].as_array().unwrap() {
        let (status, reviewed) = patch(&app, tool["id"].as_str().unwrap(), &json!({})).await;
        assert_eq!(status, 200, "{reviewed}");
        reviewed_at.insert(
            reviewed["name"].as_str().unwrap().to_owned(),
            reviewed["reviewed_at"].clone(),
        );
    }
    // createPets is confirmed a write without approval: the stricter proposal must come back.
    let create_id = named(body["tools"].as_array().unwrap(), "createPets")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = patch(&app, &create_id, &json!({"requires_approval": false})).await;
    assert_eq!(status, 200);
    assert_eq!(
        tools_offered(&app, &fake).await,
        ["createPets", "listPets", "showPetById"]
    );

    // The same document again: every review stays.
    let (status, body) = import(&app, &original, "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    for tool in body["tools"].as_array().unwrap() {
        assert_eq!(tool["reviewed"], true, "{tool}");
    }
    assert_eq!(
        named(body["tools"].as_array().unwrap(), "listPets")["reviewed_at"],
        reviewed_at["listPets"]
    );

    // A new path for showPetById: its review is about another call now.
    let moved = original.replace("  /pets/{petId}:", "  /pets/{petId}/details:");
    let (status, body) = import(&app, &moved, "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    let tools = body["tools"].as_array().unwrap();
    let show = named(tools, "showPetById");
    assert_eq!(show["path"], "/pets/{petId}/details");
    assert_eq!(show["reviewed"], false, "{show}");
    assert_eq!(show["reviewed_at"], Value::Null);
    assert_eq!(
        show["enabled"], true,
        "enabled stays as the operator left it"
    );
    assert_eq!(named(tools, "listPets")["reviewed"], true);
    assert_eq!(named(tools, "createPets")["reviewed"], true);
    // Agents stop seeing it until it is reviewed again.
    assert_eq!(tools_offered(&app, &fake).await, ["createPets", "listPets"]);

    // A changed parameter (the limit's maximum) re-opens listPets.
    let narrower = moved.replace("maximum: 100", "maximum: 50");
    let (status, body) = import(&app, &narrower, "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    let tools = body["tools"].as_array().unwrap();
    assert_eq!(named(tools, "listPets")["reviewed"], false);
    assert_eq!(named(tools, "createPets")["reviewed"], true);

    // A new server re-opens every call, with the stricter of the review and the proposal.
    let elsewhere = narrower.replace("http://petstore.swagger.io/v1", "http://pets.example/v2");
    let (status, body) = import(&app, &elsewhere, "application/yaml").await;
    assert_eq!(status, 200, "{body}");
    let tools = body["tools"].as_array().unwrap();
    let create = named(tools, "createPets");
    assert_eq!(create["base_url"], "http://pets.example/v2");
    assert_eq!(create["reviewed"], false, "{create}");
    assert_eq!(create["access"], "write");
    assert_eq!(create["requires_approval"], true, "the stricter proposal");
    assert!(tools_offered(&app, &fake).await.is_empty());

    // Reviewed again, a tool is offered again.
    let (status, show) = patch(&app, show["id"].as_str().unwrap(), &json!({})).await;
    assert_eq!(status, 200, "{show}");
    assert_eq!(tools_offered(&app, &fake).await, ["showPetById"]);
    let _ = std::fs::remove_file(agents);
}
