//! Property tests (proptest) of the wire protocol.
//!
//! - Client frames: for arbitrary text, arbitrary JSON and arbitrary mutations of valid frames,
//!   [`parse_client_frame`] never panics and answers exactly what [`spec_verdict`] — SPEC §3's
//!   checks written out one by one, in its order — says; a valid frame round-trips.
//! - Bundles: frames a worker bundles ([`bundle::push`]) come back out of the bundle unchanged and
//!   in order; reading arbitrary payloads and headers never panics, never overflows a `seq` and
//!   never copies the payload (every frame is a slice of it).
//!
//! 256 cases each (a few seconds in all); `PROPTEST_CASES` raises it for a longer run.

use async_nats::jetstream::message::StreamMessage;
use async_nats::HeaderMap;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::auth::ThreadTokens;
use crate::ids::{MessageId, ThreadId, TurnId};
use crate::protocol::bus::{bundle, InboundKind, InboundMessage};
use crate::protocol::frames::{
    ClientFrame, ErrorCode, FeedbackTarget, FrameBody, ThreadFrame, Usage, UserText,
};
use crate::protocol::validate::{parse_client_frame, MAX_FRAME_BYTES};
use crate::retained::last_frame_seq;

fn tokens() -> ThreadTokens {
    ThreadTokens::new(b"property-test-secret").expect("HMAC takes keys of any length")
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|raw| raw.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle: SPEC §3, stage by stage.

/// What SPEC §3 says the edge answers to `text`: the frame, or the error code and the thread id
/// the error must carry.
type Verdict = Result<ClientFrame, (ErrorCode, Option<ThreadId>)>;

/// Written from the SPEC's text, not from the parser: "size → JSON → object and field types →
/// type → thread id → token → content". A missing or null required field is `invalid_frame`,
/// except a missing `thread_id` (`missing_thread_id`) and a missing `content`
/// (`missing_content`); which fields are required depends on the type, so that check runs as soon
/// as the type is known. A null optional field counts as absent.
fn spec_verdict(text: &str, tokens: &ThreadTokens) -> Verdict {
    // 1. Size: bytes of the UTF-8 text, before parsing.
    if text.len() > 32_768 {
        return Err((ErrorCode::MessageTooLarge, None));
    }
    // 2. JSON.
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Err((ErrorCode::InvalidJson, None));
    };
    // 3. An object, and the type of every field it has.
    let Value::Object(object) = value else {
        return Err((ErrorCode::InvalidFrame, None));
    };
    let present = |name: &str| object.get(name).filter(|value| !value.is_null());
    let named = present("thread_id")
        .and_then(Value::as_str)
        .and_then(|raw| ThreadId::parse(raw).ok());
    let fail = |code: ErrorCode| Err((code, named.clone()));
    let is_id = |raw: &str, max: usize| {
        (1..=max).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    for name in [
        "type",
        "thread_id",
        "token",
        "content",
        "interrupt_id",
        "rating",
        "comment",
    ] {
        if present(name).is_some_and(|value| !value.is_string()) {
            return fail(ErrorCode::InvalidFrame);
        }
    }
    if present("approved").is_some_and(|value| !value.is_boolean())
        || present("after_seq").is_some_and(|value| value.as_u64().is_none())
        || present("score").is_some_and(|value| value.as_u64().is_none())
        || present("turn_id").is_some_and(|value| {
            value
                .as_str()
                .is_none_or(|raw| uuid::Uuid::parse_str(raw).is_err())
        })
        || present("message_id")
            .is_some_and(|value| !value.as_str().is_some_and(|raw| is_id(raw, 64)))
        || present("turn_id").is_some_and(|value| {
            value
                .as_str()
                .is_none_or(|raw| uuid::Uuid::parse_str(raw).is_err())
        })
        || object.get("thread_id").is_some_and(Value::is_null)
    {
        return fail(ErrorCode::InvalidFrame);
    }
    // 4. Type, then the fields that type requires.
    let kind = match present("type").and_then(Value::as_str) {
        None => return fail(ErrorCode::InvalidFrame),
        Some(
            kind @ ("message" | "interrupt_response" | "resume" | "cancel" | "request_human"
            | "feedback"),
        ) => kind,
        Some(_) => return fail(ErrorCode::UnknownType),
    };
    let required_null = match kind {
        "message" => object.get("content").is_some_and(Value::is_null),
        "interrupt_response" => present("approved").is_none(),
        "resume" => present("after_seq").is_none(),
        // Cancel and request_human need nothing more; feedback's values come after the token.
        _ => false,
    };
    if required_null {
        return fail(ErrorCode::InvalidFrame);
    }
    // 5. Thread id.
    let Some(raw_thread) = object.get("thread_id").and_then(Value::as_str) else {
        return fail(ErrorCode::MissingThreadId);
    };
    if !is_id(raw_thread, 128) {
        return fail(ErrorCode::InvalidThreadId);
    }
    let thread_id = ThreadId::parse(raw_thread).expect("checked just above");
    // 6. Token.
    let token = present("token").and_then(Value::as_str);
    if !token.is_some_and(|token| tokens.verify(&thread_id, token)) {
        return fail(ErrorCode::Unauthorized);
    }
    // 7. Content, and the frame.
    let frame = match kind {
        "message" => {
            let content = present("content").and_then(Value::as_str).unwrap_or("");
            if content.chars().all(char::is_whitespace) {
                return fail(ErrorCode::MissingContent);
            }
            if content.chars().count() > 10_000 {
                return fail(ErrorCode::ContentTooLong);
            }
            ClientFrame::Message {
                thread_id,
                content: UserText::parse(content.to_owned()).expect("checked just above"),
                message_id: present("message_id")
                    .and_then(Value::as_str)
                    .map(|raw| MessageId::parse(raw).expect("checked at stage 3")),
            }
        }
        "interrupt_response" => ClientFrame::InterruptResponse {
            thread_id,
            approved: present("approved") == Some(&Value::Bool(true)),
            interrupt_id: present("interrupt_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        "request_human" => ClientFrame::RequestHuman { thread_id },
        // SPEC §7: `turn_id` (a turn id) and `rating` (`up` | `down`), or `score` (1–5); an
        // optional comment of at most 2,000 characters.
        "feedback" => {
            let comment = present("comment").and_then(Value::as_str);
            if comment.is_some_and(|comment| comment.chars().count() > 2_000) {
                return fail(ErrorCode::InvalidFrame);
            }
            let target = match (
                present("turn_id").and_then(Value::as_str),
                present("rating").and_then(Value::as_str),
                present("score").and_then(Value::as_u64),
            ) {
                (Some(turn), Some(rating @ ("up" | "down")), None) => {
                    match uuid::Uuid::parse_str(turn) {
                        Ok(turn) => FeedbackTarget::Turn {
                            turn_id: TurnId::from(turn),
                            up: rating == "up",
                        },
                        Err(_) => return fail(ErrorCode::InvalidFrame),
                    }
                }
                (None, None, Some(score @ 1..=5)) => FeedbackTarget::Csat {
                    score: u8::try_from(score).expect("1 to 5"),
                },
                _ => return fail(ErrorCode::InvalidFrame),
            };
            ClientFrame::Feedback {
                thread_id,
                target,
                comment: comment.map(str::to_owned),
            }
        }
        "cancel" => ClientFrame::Cancel {
            thread_id,
            turn_id: present("turn_id")
                .and_then(Value::as_str)
                .and_then(|raw| uuid::Uuid::parse_str(raw).ok())
                .map(TurnId::from),
        },
        _ => ClientFrame::Resume {
            thread_id,
            after_seq: present("after_seq")
                .and_then(Value::as_u64)
                .expect("checked at stage 4"),
        },
    };
    Ok(frame)
}

/// What the parser answered, in the oracle's terms.
fn parser_verdict(text: &str, tokens: &ThreadTokens) -> Verdict {
    parse_client_frame(text, |thread, token| tokens.verify(thread, token))
        .map_err(|error| (error.code, error.thread_id))
}

/// The JSON a client sends for `frame`, with a valid token.
fn client_json(frame: &ClientFrame, tokens: &ThreadTokens) -> Value {
    let thread_id = frame.thread_id().as_str();
    let token = tokens.sign(frame.thread_id());
    let mut value = match frame {
        ClientFrame::Message {
            content,
            message_id,
            ..
        } => {
            let mut value = json!({"type": "message", "content": content.as_str()});
            if let Some(id) = message_id {
                value["message_id"] = json!(id.as_str());
            }
            value
        }
        ClientFrame::InterruptResponse {
            approved,
            interrupt_id,
            ..
        } => {
            let mut value = json!({"type": "interrupt_response", "approved": approved});
            if let Some(id) = interrupt_id {
                value["interrupt_id"] = json!(id);
            }
            value
        }
        ClientFrame::Resume { after_seq, .. } => json!({"type": "resume", "after_seq": after_seq}),
        ClientFrame::Cancel { turn_id, .. } => {
            let mut value = json!({"type": "cancel"});
            if let Some(turn_id) = turn_id {
                value["turn_id"] = json!(turn_id.to_string());
            }
            value
        }
        ClientFrame::RequestHuman { .. } => json!({"type": "request_human"}),
        ClientFrame::Feedback {
            target, comment, ..
        } => {
            let mut value = match target {
                FeedbackTarget::Turn { turn_id, up } => json!({"type": "feedback",
                    "turn_id": turn_id.as_uuid(), "rating": if *up { "up" } else { "down" }}),
                FeedbackTarget::Csat { score } => json!({"type": "feedback", "score": score}),
            };
            if let Some(comment) = comment {
                value["comment"] = json!(comment);
            }
            value
        }
    };
    value["thread_id"] = json!(thread_id);
    value["token"] = json!(token);
    value
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn thread_id() -> impl Strategy<Value = ThreadId> {
    "[a-zA-Z0-9_-]{1,128}".prop_map(|raw| ThreadId::parse(raw).expect("matches the pattern"))
}

fn message_id() -> impl Strategy<Value = MessageId> {
    "[a-zA-Z0-9_-]{1,64}".prop_map(|raw| MessageId::parse(raw).expect("matches the pattern"))
}

fn turn_id() -> impl Strategy<Value = TurnId> {
    any::<u128>().prop_map(|raw| TurnId::from(uuid::Uuid::from_u128(raw)))
}

/// Text that exercises JSON escaping and character counting: ASCII, whitespace, control
/// characters, quotes and backslashes, 2-, 3- and 4-byte characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    const SPECIAL: [char; 16] = [
        ' ',
        '\n',
        '\t',
        '\r',
        '"',
        '\\',
        '\u{0}',
        '\u{1f}',
        '\u{7f}',
        'é',
        '\u{2028}',
        '\u{3000}',
        '€',
        '中',
        '😀',
        '\u{10ffff}',
    ];
    (
        prop::collection::vec(any::<u8>(), 0..=max),
        prop::collection::vec(any::<char>(), 0..3),
    )
        .prop_map(|(bytes, wild)| {
            let mut wild = wild.into_iter();
            bytes
                .into_iter()
                .map(|byte| match byte {
                    0..=191 => char::from(b'a' + byte % 26),
                    192..=251 => SPECIAL[usize::from(byte) % SPECIAL.len()],
                    _ => wild.next().unwrap_or('x'),
                })
                .collect()
        })
}

/// Valid content: not blank, up to 10,000 characters (mostly short; sometimes at the limit).
fn user_text() -> impl Strategy<Value = UserText> {
    prop_oneof![
        8 => text(200),
        1 => (9_990usize..=10_000, prop::sample::select(vec!['a', 'é', '😀']))
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
    ]
    .prop_filter_map("blank content is not a valid message", |raw| {
        UserText::parse(raw).ok()
    })
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (thread_id(), user_text(), proptest::option::of(message_id())).prop_map(
            |(thread_id, content, message_id)| ClientFrame::Message {
                thread_id,
                content,
                message_id
            }
        ),
        (thread_id(), any::<bool>(), proptest::option::of(text(40))).prop_map(
            |(thread_id, approved, interrupt_id)| ClientFrame::InterruptResponse {
                thread_id,
                approved,
                interrupt_id
            }
        ),
        (thread_id(), any::<u64>()).prop_map(|(thread_id, after_seq)| ClientFrame::Resume {
            thread_id,
            after_seq
        }),
        (thread_id(), proptest::option::of(turn_id()))
            .prop_map(|(thread_id, turn_id)| ClientFrame::Cancel { thread_id, turn_id }),
        thread_id().prop_map(|thread_id| ClientFrame::RequestHuman { thread_id }),
        (
            thread_id(),
            prop_oneof![
                (turn_id(), any::<bool>())
                    .prop_map(|(turn_id, up)| FeedbackTarget::Turn { turn_id, up }),
                (1u8..=5).prop_map(|score| FeedbackTarget::Csat { score }),
            ],
            proptest::option::of(text(40)),
        )
            .prop_map(|(thread_id, target, comment)| ClientFrame::Feedback {
                thread_id,
                target,
                comment
            }),
    ]
}

/// A number that survives a JSON round trip whatever serde_json's float parsing features are
/// (integers, and decimals with few digits).
fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000_000i64..1_000_000_000).prop_map(|micros| json!(micros as f64 / 1e6)),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        text(24).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(8), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

const FIELDS: [&str; 13] = [
    "type",
    "thread_id",
    "token",
    "content",
    "message_id",
    "interrupt_id",
    "approved",
    "after_seq",
    "turn_id",
    "rating",
    "score",
    "comment",
    "extra",
];

/// A value a field might plausibly (or implausibly) hold.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(Value::Null),
        3 => prop::sample::select(vec![
            "message", "interrupt_response", "resume", "cancel", "request_human", "feedback",
            "shout", "", "Message", "up", "down",
        ])
            .prop_map(Value::from),
        2 => "[a-zA-Z0-9_-]{1,8}".prop_map(Value::from),
        1 => prop::sample::select(vec![" ", "a b", "a.b", "é"]).prop_map(Value::from),
        1 => Just(Value::from("a".repeat(129))),
        1 => Just(Value::from("m".repeat(65))),
        2 => any::<bool>().prop_map(Value::Bool),
        2 => prop::sample::select(vec![json!(0), json!(-1), json!(1.5), json!(u64::MAX), json!("3"), json!(5), json!(6)]),
        1 => any::<u128>().prop_map(|raw| Value::from(uuid::Uuid::from_u128(raw).to_string())),
        1 => json_value(),
    ]
}

/// One change to a frame's JSON object.
#[derive(Debug, Clone)]
enum Mutation {
    Remove(&'static str),
    Null(&'static str),
    Set(&'static str, Value),
    /// The token of another thread, or a tampered one.
    ForeignToken(ThreadId),
    TamperToken,
    Content(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = prop::sample::select(FIELDS.to_vec());
    prop_oneof![
        field.clone().prop_map(Mutation::Remove),
        field.clone().prop_map(Mutation::Null),
        (field, field_value()).prop_map(|(name, value)| Mutation::Set(name, value)),
        thread_id().prop_map(Mutation::ForeignToken),
        Just(Mutation::TamperToken),
        prop_oneof![
            text(12),
            (10_000usize..=10_002).prop_map(|n| "é".repeat(n)),
            Just(" \u{3000}\n\t".to_owned()),
        ]
        .prop_map(Mutation::Content),
    ]
}

fn apply(object: &mut Map<String, Value>, mutation: &Mutation, tokens: &ThreadTokens) {
    match mutation {
        Mutation::Remove(name) => {
            object.remove(*name);
        }
        Mutation::Null(name) => {
            object.insert((*name).to_owned(), Value::Null);
        }
        Mutation::Set(name, value) => {
            object.insert((*name).to_owned(), value.clone());
        }
        Mutation::ForeignToken(thread) => {
            object.insert("token".into(), Value::from(tokens.sign(thread)));
        }
        Mutation::TamperToken => {
            if let Some(Value::String(token)) = object.get_mut("token") {
                let flipped = if token.ends_with('A') { 'B' } else { 'A' };
                token.pop();
                token.push(flipped);
            }
        }
        Mutation::Content(content) => {
            object.insert("content".into(), Value::from(content.clone()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client frame properties.

proptest! {
    #![proptest_config(config())]

    /// Any text at all: no panic, and the SPEC's answer.
    #[test]
    fn arbitrary_text_gets_the_spec_answer(raw in prop_oneof![
        text(256),
        prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        // Something JSON-like: braces, quotes, field names.
        prop::collection::vec(prop::sample::select(vec![
            "{", "}", "[", "]", ":", ",", "\"", "\\", "null", "true", "1", "-0", "1e999",
            "\"type\"", "\"message\"", "\"thread_id\"", "\"t1\"", " ",
        ]), 0..24).prop_map(|parts| parts.concat()),
    ]) {
        let tokens = tokens();
        prop_assert_eq!(parser_verdict(&raw, &tokens), spec_verdict(&raw, &tokens));
    }

    /// Any JSON value (mostly not frames): no panic, and the SPEC's answer.
    #[test]
    fn arbitrary_json_gets_the_spec_answer(value in json_value()) {
        let tokens = tokens();
        let text = value.to_string();
        prop_assert_eq!(parser_verdict(&text, &tokens), spec_verdict(&text, &tokens));
    }

    /// Objects of known fields holding values of any type: the first failing check, in the
    /// SPEC's order, names the code.
    #[test]
    fn field_soup_gets_the_spec_answer(
        fields in prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), field_value(), 0..9),
    ) {
        let tokens = tokens();
        let text = Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).to_string();
        prop_assert_eq!(parser_verdict(&text, &tokens), spec_verdict(&text, &tokens));
    }

    /// Valid frames with a few fields changed, removed, nulled or re-typed: the SPEC's answer,
    /// and an error names the thread exactly when the frame named a valid one.
    #[test]
    fn mutated_frames_get_the_spec_answer(
        frame in client_frame(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let tokens = tokens();
        let Value::Object(mut object) = client_json(&frame, &tokens) else {
            unreachable!("client_json builds an object");
        };
        for mutation in &mutations {
            apply(&mut object, mutation, &tokens);
        }
        let text = Value::Object(object).to_string();
        prop_assert_eq!(parser_verdict(&text, &tokens), spec_verdict(&text, &tokens));
    }

    /// A valid frame, however it is laid out (compact, pretty, extra fields, null optional
    /// fields), parses back to itself — unless its text is over the size limit, which is
    /// checked first.
    #[test]
    fn valid_frames_round_trip(
        frame in client_frame(),
        pretty in any::<bool>(),
        extra in proptest::option::of(("x_[a-z]{1,8}", json_value())),
        null_optionals in any::<bool>(),
    ) {
        let tokens = tokens();
        let mut value = client_json(&frame, &tokens);
        if let Some((name, extra)) = extra {
            value[name] = extra;
        }
        if null_optionals {
            for optional in ["message_id", "interrupt_id"] {
                if value.get(optional).is_none() {
                    value[optional] = Value::Null;
                }
            }
        }
        let text = if pretty {
            serde_json::to_string_pretty(&value).expect("a Value always encodes")
        } else {
            value.to_string()
        };
        let parsed = parser_verdict(&text, &tokens);
        if text.len() > MAX_FRAME_BYTES {
            prop_assert_eq!(parsed, Err((ErrorCode::MessageTooLarge, None)));
        } else {
            prop_assert_eq!(parsed, Ok(frame));
        }
    }

    /// The wire type (what the TypeScript `ClientFrame` is generated from) writes a frame exactly
    /// as the SPEC's oracle does, so the parser reads it back to the frame.
    #[test]
    fn wire_frames_are_what_the_parser_reads(frame in client_frame()) {
        let tokens = tokens();
        let token = tokens.sign(frame.thread_id());
        let wire = serde_json::to_value(frame.to_wire(&token)).expect("a frame always encodes");
        prop_assert_eq!(&wire, &client_json(&frame, &tokens));
        let text = wire.to_string();
        if text.len() <= MAX_FRAME_BYTES {
            prop_assert_eq!(parser_verdict(&text, &tokens), Ok(frame));
        }
    }

    /// Around the size limit: padding a valid frame with whitespace flips it from accepted to
    /// `message_too_large` at exactly 32,768 bytes, before anything else is looked at.
    #[test]
    fn the_size_limit_is_exact_and_first(
        frame in client_frame(),
        around in -4i64..=4,
        broken in any::<bool>(),
    ) {
        let tokens = tokens();
        let mut text = client_json(&frame, &tokens).to_string();
        if broken {
            text.insert(0, '}'); // not JSON: still too large first
        }
        let target = (MAX_FRAME_BYTES as i64 + around) as usize;
        prop_assume!(text.len() <= target);
        text.push_str(&" ".repeat(target - text.len()));
        let parsed = parser_verdict(&text, &tokens);
        if target > MAX_FRAME_BYTES {
            prop_assert_eq!(parsed, Err((ErrorCode::MessageTooLarge, None)));
        } else if broken {
            prop_assert_eq!(parsed, Err((ErrorCode::InvalidJson, None)));
        } else {
            prop_assert_eq!(parsed, Ok(frame));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bus properties.

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::MessageTooLarge,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidFrame,
        ErrorCode::UnknownType,
        ErrorCode::MissingThreadId,
        ErrorCode::InvalidThreadId,
        ErrorCode::Unauthorized,
        ErrorCode::MissingContent,
        ErrorCode::ContentTooLong,
        ErrorCode::RateLimited,
        ErrorCode::Busy,
        ErrorCode::SessionExpired,
        ErrorCode::NoPendingInterrupt,
        ErrorCode::ProcessingFailed,
        ErrorCode::Internal,
    ])
}

fn timestamp() -> impl Strategy<Value = chrono::DateTime<chrono::Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        chrono::DateTime::from_timestamp(secs, nanos).expect("in chrono's range")
    })
}

fn frame_body() -> impl Strategy<Value = FrameBody> {
    let name = || text(16);
    prop_oneof![
        4 => (name(), text(64)).prop_map(|(agent, content)| FrameBody::Token { agent, content }),
        1 => (name(), name(), json_value())
            .prop_map(|(agent, tool, args)| FrameBody::ToolCall { agent, tool, args }),
        1 => (name(), name(), any::<bool>())
            .prop_map(|(agent, tool, ok)| FrameBody::ToolResult { agent, tool, ok }),
        1 => (any::<u128>(), name(), json_value(), timestamp()).prop_map(
            |(interrupt_id, action, params, expires_at)| FrameBody::Interrupt {
                interrupt_id: uuid::Uuid::from_u128(interrupt_id).into(),
                action,
                params,
                expires_at
            }
        ),
        1 => (any::<u128>(), name(), text(64)).prop_map(|(interrupt_id, action, message)| {
            FrameBody::InterruptExpired {
                interrupt_id: uuid::Uuid::from_u128(interrupt_id).into(),
                action,
                message,
            }
        }),
        1 => text(64).prop_map(|message| FrameBody::Clarification { message }),
        1 => Just(FrameBody::TurnReset),
        1 => (any::<u64>(), any::<u64>(), 0u64..1_000_000_000, any::<bool>()).prop_map(
            |(prompt_tokens, completion_tokens, micros, cancelled)| FrameBody::MessageComplete {
                usage: Usage { prompt_tokens, completion_tokens, cost_usd: micros as f64 / 1e6 },
                cancelled,
            }
        ),
        1 => (error_code(), text(64), any::<bool>())
            .prop_map(|(code, message, retryable)| FrameBody::Error { code, message, retryable }),
    ]
}

/// One bundle as a worker publishes it: consecutive `seq`s from `first`, one thread and turn.
fn bundle_frames() -> impl Strategy<Value = Vec<ThreadFrame>> {
    (
        thread_id(),
        turn_id(),
        prop_oneof![1u64..1_000, (u64::MAX - 100)..=(u64::MAX - 64)],
        prop_oneof![8 => prop::collection::vec(frame_body(), 1..=8),
                    1 => prop::collection::vec(frame_body(), 60..=64)],
    )
        .prop_map(|(thread_id, turn_id, first, bodies)| {
            bodies
                .into_iter()
                .enumerate()
                .map(|(index, body)| ThreadFrame {
                    thread_id: thread_id.clone(),
                    seq: first + index as u64,
                    turn_id,
                    body,
                })
                .collect()
        })
}

/// A stored bundle with the headers a worker sets (when `headers`).
fn stored(payload: Vec<u8>, first_seq: Option<&str>, frame_types: Option<&str>) -> StreamMessage {
    let mut headers = HeaderMap::new();
    if let Some(first_seq) = first_seq {
        headers.insert(bundle::FIRST_SEQ_HEADER, first_seq);
    }
    if let Some(frame_types) = frame_types {
        headers.insert(bundle::FRAME_TYPES_HEADER, frame_types);
    }
    StreamMessage {
        subject: "chat.out.t".into(),
        sequence: 1,
        headers,
        payload: payload.into(),
        time: time::OffsetDateTime::UNIX_EPOCH,
    }
}

/// Every frame `bundle::frames` yields lies inside the payload: reading a bundle copies nothing.
fn borrowed_from(frame: &[u8], payload: &[u8]) -> bool {
    let outer = payload.as_ptr_range();
    let inner = frame.as_ptr_range();
    outer.start <= inner.start && inner.end <= outer.end
}

proptest! {
    #![proptest_config(config())]

    /// Encode → decode is the identity for any frame sequence, and the headers' `seq` arithmetic
    /// agrees with the frames themselves.
    #[test]
    fn bundles_round_trip(frames in bundle_frames()) {
        let mut payload = Vec::new();
        for frame in &frames {
            bundle::push(&mut payload, frame).expect("a frame always encodes");
        }
        let decoded = bundle::frames(&payload)
            .map(serde_json::from_slice::<ThreadFrame>)
            .collect::<Result<Vec<_>, _>>();
        prop_assert_eq!(decoded.as_ref().ok(), Some(&frames), "{:?}", decoded.as_ref().err());

        let last = frames.last().expect("at least one frame");
        let last_line = bundle::last_frame(&payload).expect("a non-empty bundle");
        let decoded_last = serde_json::from_slice::<ThreadFrame>(last_line).ok();
        prop_assert_eq!(decoded_last.as_ref(), Some(last));
        let types = frames.iter().map(|frame| frame.body.kind()).collect::<Vec<_>>().join(",");
        let first = frames[0].seq.to_string();
        prop_assert_eq!(bundle::last_seq(Some(&first), Some(&types)), Some(last.seq));
        for (index, frame) in frames.iter().enumerate() {
            prop_assert_eq!(bundle::seq_at(frames[0].seq, index), Some(frame.seq));
        }
        // From the headers, and from the payload alone (a bundle without them).
        prop_assert_eq!(last_frame_seq(&stored(payload.clone(), Some(&first), Some(&types))), Some(last.seq));
        prop_assert_eq!(last_frame_seq(&stored(payload, None, None)), Some(last.seq));
    }

    /// What the edge publishes to the inbound stream comes back unchanged.
    #[test]
    fn inbound_messages_round_trip(
        thread_id in thread_id(),
        message_id in message_id(),
        turn_id in turn_id(),
        received_at in timestamp(),
        kind in prop_oneof![
            user_text().prop_map(|content| InboundKind::Message { content }),
            (any::<bool>(), proptest::option::of(text(40)))
                .prop_map(|(approved, interrupt_id)| InboundKind::InterruptResponse { approved, interrupt_id }),
            proptest::option::of(turn_id()).prop_map(|turn_id| InboundKind::Cancel { turn_id }),
        ],
    ) {
        let message = InboundMessage { thread_id, message_id, turn_id, received_at, kind };
        let bytes = message.to_bytes().expect("a message always encodes");
        prop_assert_eq!(serde_json::from_slice::<InboundMessage>(&bytes).ok(), Some(message));
    }

    /// Arbitrary payloads and headers (nobody but a worker should publish to the reply
    /// subjects, but anyone with NATS access can): reading never panics, never overflows a
    /// `seq`, and every frame is a non-empty slice of the payload without a newline.
    #[test]
    fn arbitrary_bundles_read_safely(
        payload in (
            prop::collection::vec(any::<u8>(), 0..2048),
            prop::collection::vec((any::<prop::sample::Index>(), prop::bool::ANY), 0..48),
        ).prop_map(|(mut bytes, marks)| {
            // Newlines (frame boundaries, doubled, leading, trailing) and braces among the bytes.
            if !bytes.is_empty() {
                for (at, newline) in marks {
                    let at = at.index(bytes.len());
                    bytes[at] = if newline { b'\n' } else { b'{' };
                }
            }
            bytes
        }),
        first_seq in proptest::option::of(prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            Just("18446744073709551616".to_owned()),
            "[-+ 0-9a-z]{0,24}",
        ]),
        frame_types in proptest::option::of(prop_oneof![
            prop::collection::vec(prop::sample::select(vec!["token", "error", "", "x y"]), 0..80)
                .prop_map(|types| types.join(",")),
            Just(String::new()),
            Just(",".repeat(70)),
        ]),
    ) {
        let frames: Vec<&[u8]> = bundle::frames(&payload).collect();
        let mut total = 0;
        for frame in &frames {
            prop_assert!(!frame.is_empty() && !frame.contains(&b'\n'));
            prop_assert!(borrowed_from(frame, &payload));
            total += frame.len() + 1;
            // A line of garbage is refused, not a panic (serde_json bounds its own recursion).
            let _ = serde_json::from_slice::<ThreadFrame>(frame);
        }
        prop_assert!(total <= payload.len() + 1);
        prop_assert_eq!(bundle::last_frame(&payload), frames.last().copied());

        let from_headers = bundle::last_seq(first_seq.as_deref(), frame_types.as_deref());
        if let (Some(first), Some(types)) = (&first_seq, &frame_types) {
            let expected = first.parse::<u64>().ok().and_then(|first| {
                first.checked_add(types.split(',').count() as u64 - 1)
            });
            prop_assert_eq!(from_headers, expected);
        } else {
            prop_assert_eq!(from_headers, None);
        }
        let message = stored(payload.clone(), first_seq.as_deref(), frame_types.as_deref());
        let seq = last_frame_seq(&message);
        if from_headers.is_some() {
            prop_assert_eq!(seq, from_headers);
        }
        if let Some(first) = first_seq.as_deref().and_then(|raw| raw.parse::<u64>().ok()) {
            for index in [0, 1, 63, usize::MAX] {
                prop_assert_eq!(bundle::seq_at(first, index), first.checked_add(index as u64));
            }
        }
    }
}

/// The arithmetic the properties above found unchecked: a `Frame-First-Seq` near `u64::MAX` made
/// `last_frame_seq` (edge `resume`, worker recovery) and the edge's relay overflow — a panic in a
/// debug build, a wrapped `seq` in a release build.
#[test]
fn headers_near_u64_max_do_not_overflow() {
    let max = u64::MAX.to_string();
    assert_eq!(bundle::last_seq(Some(&max), Some("token")), Some(u64::MAX));
    assert_eq!(bundle::last_seq(Some(&max), Some("token,token")), None);
    assert_eq!(bundle::seq_at(u64::MAX, 1), None);
    let message = stored(b"{\"seq\":7}\n".to_vec(), Some(&max), Some("token,token"));
    assert_eq!(
        last_frame_seq(&message),
        Some(7),
        "falls back to the frame itself"
    );
}

/// The property above found this one: a null `content` is a malformed frame as soon as the type
/// is known, like a null `approved` or `after_seq`, not after the thread id and token checks.
#[test]
fn null_content_is_invalid_frame_before_thread_and_token() {
    let tokens = tokens();
    for frame in [
        json!({"type": "message", "thread_id": "t1", "token": "forged", "content": null}),
        json!({"type": "message", "thread_id": "bad id", "content": null}),
        json!({"type": "message", "content": null}),
    ] {
        let text = frame.to_string();
        assert_eq!(
            parser_verdict(&text, &tokens).map_err(|(code, _)| code),
            Err(ErrorCode::InvalidFrame),
            "{frame}"
        );
    }
}
