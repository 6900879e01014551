//! The TypeScript declarations of the browser ⇄ edge protocol, generated from the Rust types with
//! `ts-rs` (a dev-dependency: the derives exist only under `cfg(test)`, normal builds do not
//! compile it). The web app imports them from `web/src/generated/protocol.ts`. The replay
//! timeline's stored events (`crate::timeline::TimelineEvent`) are declared there too.
//!
//! - `bindings_are_current` fails when the committed file differs from what the types generate;
//!   with `PROTOCOL_TS_OUT=<file>` it writes the file instead (`scripts/gen-ts.sh` regenerates;
//!   `scripts/gen-ts.sh --check`, run by `.ci/run`, diffs).
//! - `the_protocol_doc_names_every_frame_and_error_code` keeps `docs/protocol.md` honest: every
//!   frame `type` and every error code the types can produce has its entry there, and the doc
//!   documents none the types do not have; each frame's entry names each of its fields.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ts_rs::{Config, TS};

use crate::ids::{MessageId, ThreadId, TurnId};
use crate::protocol::frames::{
    ClientFrame, ErrorCode, FeedbackTarget, FrameBody, HandoffState, OperatorRef, Rating,
    ServerFrame, ThreadFrame, Usage, UserText, WireClientFrame, WireFeedbackTarget,
};
use crate::timeline::{ApprovalDecision, OperatorChange, TimelineEvent};

const HEADER: &str = "\
// Generated from the Rust protocol types (shared/src/protocol/frames.rs, shared/src/ids.rs) and
// the replay timeline's event type (shared/src/timeline.rs) by ts-rs. Do not edit: change the
// Rust types, run scripts/gen-ts.sh and commit the result.
// `.ci/run` fails when this file is not what the types generate. The rules: docs/protocol.md.
";

/// The file's text: every type of the protocol, in a fixed order.
fn bindings() -> String {
    // JavaScript numbers hold every `seq` and token count the system produces (< 2^53).
    let cfg = Config::new().with_large_int("number");
    let mut out = String::from(HEADER);
    let mut add = |docs: Option<String>, decl: String| {
        out.push('\n');
        out.push_str(&docs.unwrap_or_default());
        out.push_str("export ");
        for line in one_member_a_line(&decl).lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
    };
    macro_rules! declare {
        ($($ty:ty),* $(,)?) => {
            $( add(<$ty as TS>::docs(), <$ty as TS>::decl(&cfg)); )*
        };
    }
    declare!(
        ThreadId,
        MessageId,
        TurnId,
        WireClientFrame,
        WireFeedbackTarget,
        Rating,
        ServerFrame,
        ThreadFrame,
        FrameBody,
        HandoffState,
        OperatorRef,
        Usage,
        ErrorCode,
        TimelineEvent,
        ApprovalDecision,
        OperatorChange,
    );
    out
}

/// ts-rs writes a union on one line: this puts each member of a union of object types on a line
/// of its own (outside comments, strings and braces), which reads better in a diff.
fn one_member_a_line(decl: &str) -> String {
    let mut out = String::with_capacity(decl.len() + 64);
    let (mut depth, mut in_comment, mut in_string) = (0usize, false, false);
    let mut rest = decl;
    while let Some(c) = rest.chars().next() {
        if in_comment {
            in_comment = !rest.starts_with("*/");
        } else if in_string {
            in_string = c != '"';
        } else if rest.starts_with("/*") {
            in_comment = true;
        } else if depth == 0 && rest.starts_with(" | ") && out.ends_with('}') {
            out.push_str("\n  | ");
            rest = &rest[3..];
            continue;
        } else {
            match c {
                '"' => in_string = true,
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The string literals of `"<field>": "<literal>"` members in `decl`, e.g. every `type` of a
/// tagged union.
fn tags(decl: &str, field: &str) -> BTreeSet<String> {
    let needle = format!("\"{field}\": \"");
    decl.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &decl[at + needle.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

/// The members of a string-literal union such as `"a" | "b"`.
fn literals(decl: &str) -> BTreeSet<String> {
    decl.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn bindings_are_current() {
    let generated = bindings();
    if let Some(out) = std::env::var_os("PROTOCOL_TS_OUT") {
        std::fs::write(&out, &generated).expect("PROTOCOL_TS_OUT must be a writable file");
        return;
    }
    let path = "web/src/generated/protocol.ts";
    let committed = std::fs::read_to_string(repo_path(path)).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} is not what the Rust protocol types generate: run scripts/gen-ts.sh and commit it"
    );
}

#[test]
fn the_protocol_doc_names_every_frame_and_error_code() {
    let cfg = Config::new().with_large_int("number");
    let doc = std::fs::read_to_string(repo_path("docs/protocol.md")).expect("docs/protocol.md");
    // The text of `## <title>`, up to the next `## ` heading.
    let section = |title: &str| -> &str {
        let start = doc
            .find(&format!("\n## {title}\n"))
            .unwrap_or_else(|| panic!("docs/protocol.md has no `## {title}` section"));
        let body = &doc[start + 1..];
        body.match_indices("\n## ")
            .next()
            .map_or(body, |(end, _)| &body[..end])
    };
    // The names in backquotes that open the lines starting with `prefix`.
    let names = |text: &str, prefix: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .filter_map(|rest| rest.split('`').next())
            .map(str::to_owned)
            .collect()
    };
    let client = tags(&WireClientFrame::decl(&cfg), "type");
    let server = &tags(&ServerFrame::decl(&cfg), "type") | &tags(&FrameBody::decl(&cfg), "type");
    let codes = literals(&ErrorCode::decl(&cfg).replace("type ErrorCode =", ""));
    // The extraction itself works: 6 client frame types, 14 server ones, 15 codes today.
    assert!(
        client.len() >= 6 && server.len() >= 14 && codes.len() >= 15,
        "{client:?} {server:?} {codes:?}"
    );
    assert_eq!(
        names(section("Client → server"), "### `"),
        client,
        "the `### \\`type\\`` headings of docs/protocol.md's client frames"
    );
    assert_eq!(
        names(section("Server → client"), "### `"),
        server,
        "the `### \\`type\\`` headings of docs/protocol.md's server frames"
    );
    assert_eq!(
        names(section("Error codes"), "| `"),
        codes,
        "the `| \\`code\\` |` rows of docs/protocol.md's error codes"
    );
}

/// One frame of each kind, every optional field set: what the doc must name.
fn samples() -> Vec<serde_json::Value> {
    let thread_id = ThreadId::parse("t1").expect("a valid thread id");
    let message_id = MessageId::parse("m1").expect("a valid message id");
    let turn_id = TurnId::generate();
    let operator = OperatorRef {
        name: "Alice".into(),
    };
    let client = [
        ClientFrame::Message {
            thread_id: thread_id.clone(),
            content: UserText::parse("hi".into()).expect("valid content"),
            message_id: Some(message_id.clone()),
        },
        ClientFrame::InterruptResponse {
            thread_id: thread_id.clone(),
            approved: true,
            interrupt_id: Some("i1".into()),
        },
        ClientFrame::Resume {
            thread_id: thread_id.clone(),
            after_seq: 0,
        },
        ClientFrame::Cancel {
            thread_id: thread_id.clone(),
            turn_id: Some(turn_id),
        },
        ClientFrame::RequestHuman {
            thread_id: thread_id.clone(),
        },
        ClientFrame::Feedback {
            thread_id: thread_id.clone(),
            target: FeedbackTarget::Turn { turn_id, up: true },
            comment: Some("thanks".into()),
        },
        ClientFrame::Feedback {
            thread_id: thread_id.clone(),
            target: FeedbackTarget::Csat { score: 5 },
            comment: None,
        },
    ]
    .map(|frame| frame.to_wire("token"));
    let server = [
        ServerFrame::Accepted {
            thread_id: thread_id.clone(),
            message_id: message_id.clone(),
        },
        ServerFrame::Error {
            code: ErrorCode::Busy,
            message: "try again".into(),
            retryable: true,
            thread_id: Some(thread_id.clone()),
        },
        ServerFrame::ResumePartial {
            thread_id: thread_id.clone(),
            last_seq: 2_000,
        },
    ];
    let (agent, tool) = (String::from("orders"), String::from("get_order"));
    let bodies = [
        FrameBody::Token {
            agent: agent.clone(),
            content: "Hi".into(),
        },
        FrameBody::ToolCall {
            agent: agent.clone(),
            tool: tool.clone(),
            args: serde_json::json!({}),
        },
        FrameBody::ToolResult {
            agent,
            tool: tool.clone(),
            ok: true,
        },
        FrameBody::Interrupt {
            interrupt_id: uuid::Uuid::from_u128(1).into(),
            action: tool.clone(),
            params: serde_json::json!({}),
            expires_at: chrono::Utc::now(),
        },
        FrameBody::InterruptExpired {
            interrupt_id: uuid::Uuid::from_u128(1).into(),
            action: tool,
            message: "ask again".into(),
        },
        FrameBody::Clarification {
            message: "which order?".into(),
        },
        FrameBody::TurnReset,
        FrameBody::MessageComplete {
            usage: Usage::default(),
            cancelled: true,
        },
        FrameBody::Error {
            code: ErrorCode::ProcessingFailed,
            message: "failed".into(),
            retryable: false,
        },
        FrameBody::UserMessage {
            message_id: message_id.clone(),
            content: "hi".into(),
        },
        FrameBody::Handoff {
            state: HandoffState::Human,
            operator: Some(operator.clone()),
            resolved: true,
        },
        FrameBody::HumanMessage {
            operator,
            message_id,
            content: "Alice here".into(),
        },
    ];
    let mut values: Vec<serde_json::Value> = client
        .iter()
        .map(serde_json::to_value)
        .chain(server.iter().map(serde_json::to_value))
        .chain(bodies.iter().map(serde_json::to_value))
        .collect::<Result<_, _>>()
        .expect("frames encode");
    // Thread frames' own fields, from a thread frame.
    let frame = ThreadFrame {
        thread_id,
        seq: 1,
        turn_id,
        body: FrameBody::TurnReset,
    };
    values.push(serde_json::to_value(frame).expect("a frame encodes"));
    values
}

#[test]
fn the_protocol_doc_names_every_field_of_every_frame() {
    let cfg = Config::new().with_large_int("number");
    let doc = std::fs::read_to_string(repo_path("docs/protocol.md")).expect("docs/protocol.md");
    let samples = samples();
    // The samples cover every frame type the types have.
    let sampled: BTreeSet<String> = samples
        .iter()
        .filter_map(|value| value["type"].as_str().map(str::to_owned))
        .collect();
    let all = &(&tags(&WireClientFrame::decl(&cfg), "type")
        | &tags(&ServerFrame::decl(&cfg), "type"))
        | &tags(&FrameBody::decl(&cfg), "type");
    assert_eq!(sampled, all, "samples() lacks a frame type");
    for value in &samples {
        let kind = value["type"].as_str().unwrap_or_default();
        let heading = format!("### `{kind}`\n");
        let Some(start) = doc.find(&heading) else {
            panic!("docs/protocol.md has no `### \\`{kind}\\`` heading");
        };
        let entry = &doc[start + heading.len()..];
        let entry = &entry[..entry.find("\n#").unwrap_or(entry.len())];
        // A thread frame's common fields are said once, in the section's introduction.
        let common = ["thread_id", "seq", "turn_id"];
        let mut fields: Vec<&str> = value
            .as_object()
            .into_iter()
            .flat_map(|object| object.keys().map(String::as_str))
            .collect();
        if let Some(usage) = value.get("usage").and_then(|usage| usage.as_object()) {
            fields.extend(usage.keys().map(String::as_str));
        }
        for field in fields {
            let is_thread_frame = value.get("seq").is_some() || kind == "turn_reset";
            if is_thread_frame && common.contains(&field) {
                assert!(
                    doc.contains(&format!("`{field}`")),
                    "`{field}` undocumented"
                );
                continue;
            }
            assert!(
                entry.contains(&format!("\"{field}\"")),
                "docs/protocol.md's entry of `{kind}` does not name its field \"{field}\""
            );
        }
    }
}
