//! Raw client text → [`ClientFrame`], with the checks of SPEC §3 in their order:
//! size → JSON → object and field types → type → thread id → token → content.
//! (The rate limit, the last check, belongs to the edge.)

use serde_json::{Map, Value};

use crate::ids::TurnId;
use crate::ids::{MessageId, ThreadId};
use crate::protocol::frames::{
    ClientFrame, ErrorCode, FeedbackTarget, FrameError, UserText, MAX_FEEDBACK_COMMENT_CHARS,
};

/// The largest client frame: 32 KiB of UTF-8 text, checked before parsing.
pub const MAX_FRAME_BYTES: usize = 32 * 1024;

/// The JSON type each known field must have when present (and not null).
#[derive(Clone, Copy)]
enum FieldType {
    String,
    Boolean,
    NonNegativeInteger,
    MessageId,
    TurnId,
}

const FIELD_TYPES: [(&str, FieldType); 12] = [
    ("type", FieldType::String),
    ("thread_id", FieldType::String),
    ("token", FieldType::String),
    ("content", FieldType::String),
    ("message_id", FieldType::MessageId),
    ("interrupt_id", FieldType::String),
    ("approved", FieldType::Boolean),
    ("after_seq", FieldType::NonNegativeInteger),
    ("turn_id", FieldType::TurnId),
    ("rating", FieldType::String),
    ("score", FieldType::NonNegativeInteger),
    ("comment", FieldType::String),
];

/// Validates one client frame. `authorize(thread, token)` checks the thread token; it runs only
/// after the frame's structure and thread id are known to be good.
pub fn parse_client_frame(
    text: &str,
    authorize: impl FnOnce(&ThreadId, &str) -> bool,
) -> Result<ClientFrame, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "frame is {} bytes; the limit is {MAX_FRAME_BYTES}",
                text.len()
            ),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(FrameError::new(
            ErrorCode::InvalidFrame,
            "a frame must be a JSON object",
        ));
    };
    // Every error of a frame that named a valid thread id carries it.
    let named_thread = field(&fields, "thread_id")
        .and_then(Value::as_str)
        .and_then(|raw| ThreadId::parse(raw).ok());
    let on_thread = |error: FrameError| match &named_thread {
        Some(thread) => error.on_thread(thread),
        None => error,
    };

    check_field_types(&fields).map_err(on_thread)?;
    // Every frame type requires a thread id: null is a malformed frame, absence its own code.
    if fields.get("thread_id").is_some_and(Value::is_null) {
        return Err(FrameError::new(
            ErrorCode::InvalidFrame,
            "`thread_id` must not be null",
        ));
    }

    let kind = match field(&fields, "type").and_then(Value::as_str) {
        None => return Err(on_thread(missing_field("type"))),
        Some(
            kind @ ("message" | "interrupt_response" | "resume" | "cancel" | "request_human"
            | "feedback"),
        ) => kind,
        Some(other) => {
            return Err(on_thread(FrameError::new(
                ErrorCode::UnknownType,
                format!("unknown frame type `{other}`"),
            )))
        }
    };
    let approved = field(&fields, "approved").and_then(Value::as_bool);
    let after_seq = field(&fields, "after_seq").and_then(Value::as_u64);
    // The fields this type requires, as soon as it is known (a missing `content` is
    // `missing_content`, a content check; a null one is a malformed frame, like a null `approved`).
    match kind {
        "message" if fields.get("content").is_some_and(Value::is_null) => {
            return Err(on_thread(FrameError::new(
                ErrorCode::InvalidFrame,
                "`content` must not be null",
            )))
        }
        "interrupt_response" if approved.is_none() => {
            return Err(on_thread(missing_field("approved")))
        }
        "resume" if after_seq.is_none() => return Err(on_thread(missing_field("after_seq"))),
        _ => {}
    }

    let thread_id = match (field(&fields, "thread_id"), &named_thread) {
        (None, _) => {
            return Err(FrameError::new(
                ErrorCode::MissingThreadId,
                "missing field `thread_id`",
            ))
        }
        (Some(_), Some(thread)) => thread.clone(),
        (Some(_), None) => {
            return Err(FrameError::new(
                ErrorCode::InvalidThreadId,
                "`thread_id` must be 1 to 128 characters of a-z, A-Z, 0-9, '_' or '-'",
            ))
        }
    };

    let token = field(&fields, "token").and_then(Value::as_str);
    if !token.is_some_and(|token| authorize(&thread_id, token)) {
        let message = if token.is_none() {
            "missing thread token"
        } else {
            "the token does not match this thread"
        };
        return Err(FrameError::new(ErrorCode::Unauthorized, message).on_thread(&thread_id));
    }

    let frame = match kind {
        "message" => {
            let raw = field(&fields, "content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let content = UserText::parse(raw.to_owned()).map_err(|code| {
                let message = match code {
                    ErrorCode::ContentTooLong => {
                        format!("content is longer than {} characters", UserText::MAX_CHARS)
                    }
                    _ => "content is missing or blank".to_owned(),
                };
                FrameError::new(code, message).on_thread(&thread_id)
            })?;
            let message_id = field(&fields, "message_id")
                .and_then(Value::as_str)
                .and_then(|raw| MessageId::parse(raw).ok());
            ClientFrame::Message {
                thread_id,
                content,
                message_id,
            }
        }
        "interrupt_response" => ClientFrame::InterruptResponse {
            thread_id,
            approved: approved.unwrap_or_default(),
            interrupt_id: field(&fields, "interrupt_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        "cancel" => ClientFrame::Cancel {
            thread_id,
            turn_id: field(&fields, "turn_id")
                .and_then(Value::as_str)
                .and_then(|raw| uuid::Uuid::parse_str(raw).ok())
                .map(crate::ids::TurnId::from),
        },
        "request_human" => ClientFrame::RequestHuman { thread_id },
        // Its values are checked after the token, as a message's content is.
        "feedback" => {
            let (target, comment) =
                feedback_target(&fields).map_err(|error| error.on_thread(&thread_id))?;
            ClientFrame::Feedback {
                thread_id,
                target,
                comment,
            }
        }
        _ => ClientFrame::Resume {
            thread_id,
            after_seq: after_seq.unwrap_or_default(),
        },
    };
    Ok(frame)
}

/// What a `feedback` frame rates: `turn_id` + `rating` (`up` | `down`), or `score` (1–5); an
/// optional `comment` of at most [`MAX_FEEDBACK_COMMENT_CHARS`] characters. Anything else is
/// `invalid_frame`. (Whether the thread has the turn is the edge's check.)
fn feedback_target(
    fields: &Map<String, Value>,
) -> Result<(FeedbackTarget, Option<String>), FrameError> {
    let invalid = |message: &str| FrameError::new(ErrorCode::InvalidFrame, message);
    let comment = field(fields, "comment")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if comment
        .as_ref()
        .is_some_and(|comment| comment.chars().count() > MAX_FEEDBACK_COMMENT_CHARS)
    {
        return Err(invalid("`comment` is longer than 2000 characters"));
    }
    let turn_id = field(fields, "turn_id").and_then(Value::as_str);
    let rating = field(fields, "rating").and_then(Value::as_str);
    let score = field(fields, "score");
    let target = match (turn_id, rating, score) {
        (Some(turn_id), Some(rating), None) => {
            let turn_id = uuid::Uuid::parse_str(turn_id)
                .map_err(|_| invalid("`turn_id` is not a turn of this thread"))?;
            let up = match rating {
                "up" => true,
                "down" => false,
                _ => return Err(invalid("`rating` must be \"up\" or \"down\"")),
            };
            FeedbackTarget::Turn {
                turn_id: TurnId::from(turn_id),
                up,
            }
        }
        (None, None, Some(score)) => match score.as_u64() {
            Some(score @ 1..=5) => FeedbackTarget::Csat {
                score: u8::try_from(score).unwrap_or(5),
            },
            _ => return Err(invalid("`score` must be an integer from 1 to 5")),
        },
        _ => {
            return Err(invalid(
                "feedback takes `turn_id` and `rating`, or `score` (not both)",
            ))
        }
    };
    Ok((target, comment))
}

/// A present, non-null field. (A null required field is `invalid_frame`; a null optional one
/// counts as absent.)
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|value| !value.is_null())
}

fn missing_field(name: &str) -> FrameError {
    FrameError::new(ErrorCode::InvalidFrame, format!("missing field `{name}`"))
}

fn check_field_types(fields: &Map<String, Value>) -> Result<(), FrameError> {
    for (name, expected) in FIELD_TYPES {
        let Some(value) = field(fields, name) else {
            continue;
        };
        let (ok, wanted) = match expected {
            FieldType::String => (value.is_string(), "a string"),
            FieldType::Boolean => (value.is_boolean(), "a JSON boolean"),
            FieldType::NonNegativeInteger => (value.is_u64(), "a non-negative integer"),
            FieldType::MessageId => (
                value
                    .as_str()
                    .is_some_and(|raw| MessageId::parse(raw).is_ok()),
                "1 to 64 characters of a-z, A-Z, 0-9, '_' or '-'",
            ),
            FieldType::TurnId => (
                value
                    .as_str()
                    .is_some_and(|raw| uuid::Uuid::parse_str(raw).is_ok()),
                "a turn id (a UUID)",
            ),
        };
        if !ok {
            return Err(FrameError::new(
                ErrorCode::InvalidFrame,
                format!("`{name}` must be {wanted}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<ClientFrame, FrameError> {
        parse_client_frame(&value.to_string(), |_, token| token == "good")
    }

    fn code(value: Value) -> ErrorCode {
        parse(value).expect_err("frame must be refused").code
    }

    fn message(content: &str) -> Value {
        json!({"type": "message", "thread_id": "t1", "token": "good", "content": content})
    }

    #[test]
    fn accepts_each_frame_type() {
        assert!(matches!(
            parse(message("hi")),
            Ok(ClientFrame::Message {
                message_id: None,
                ..
            })
        ));
        let with_id = json!({"type": "message", "thread_id": "t1", "token": "good",
                             "content": "hi", "message_id": "m-1"});
        assert!(matches!(
            parse(with_id),
            Ok(ClientFrame::Message {
                message_id: Some(_),
                ..
            })
        ));
        let approval = json!({"type": "interrupt_response", "thread_id": "t1", "token": "good",
                              "approved": false, "interrupt_id": "i1"});
        assert!(matches!(
            parse(approval),
            Ok(ClientFrame::InterruptResponse {
                approved: false,
                interrupt_id: Some(_),
                ..
            })
        ));
        let resume = json!({"type": "resume", "thread_id": "t1", "token": "good", "after_seq": 7});
        assert!(matches!(
            parse(resume),
            Ok(ClientFrame::Resume { after_seq: 7, .. })
        ));
    }

    #[test]
    fn cancel_takes_an_optional_turn_id() {
        let cancel = json!({"type": "cancel", "thread_id": "t1", "token": "good"});
        assert!(matches!(
            parse(cancel),
            Ok(ClientFrame::Cancel { turn_id: None, .. })
        ));
        let turn = uuid::Uuid::now_v7().to_string();
        let named = json!({"type": "cancel", "thread_id": "t1", "token": "good", "turn_id": turn});
        assert!(matches!(
            parse(named),
            Ok(ClientFrame::Cancel {
                turn_id: Some(_),
                ..
            })
        ));
        let bad = json!({"type": "cancel", "thread_id": "t1", "token": "good", "turn_id": "x"});
        assert_eq!(code(bad), ErrorCode::InvalidFrame);
        let unauthorized = json!({"type": "cancel", "thread_id": "t1", "token": "bad"});
        assert_eq!(code(unauthorized), ErrorCode::Unauthorized);
    }

    #[test]
    fn size_is_checked_before_json() {
        let huge = "x".repeat(MAX_FRAME_BYTES + 1);
        let err = parse_client_frame(&huge, |_, _| true).unwrap_err();
        assert_eq!(err.code, ErrorCode::MessageTooLarge);
        // Exactly at the limit the frame is parsed (and here fails as JSON).
        let at_limit = "x".repeat(MAX_FRAME_BYTES);
        let err = parse_client_frame(&at_limit, |_, _| true).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            parse_client_frame("{nope", |_, _| true).unwrap_err().code,
            ErrorCode::InvalidJson
        );
        assert_eq!(code(json!([1, 2])), ErrorCode::InvalidFrame);
        assert_eq!(code(json!("message")), ErrorCode::InvalidFrame);
        assert_eq!(
            code(json!({"thread_id": "t1", "token": "good"})),
            ErrorCode::InvalidFrame
        );
        assert_eq!(code(json!({"type": 5})), ErrorCode::InvalidFrame);
        assert_eq!(
            code(json!({"type": "shout", "thread_id": "t1"})),
            ErrorCode::UnknownType
        );
    }

    #[test]
    fn field_types_are_strict() {
        let approval = |approved: Value| json!({"type": "interrupt_response", "thread_id": "t1", "token": "good", "approved": approved});
        assert_eq!(code(approval(json!("true"))), ErrorCode::InvalidFrame);
        assert_eq!(code(approval(json!(1))), ErrorCode::InvalidFrame);
        assert_eq!(code(approval(Value::Null)), ErrorCode::InvalidFrame);
        let resume = |after: Value| json!({"type": "resume", "thread_id": "t1", "token": "good", "after_seq": after});
        assert_eq!(code(resume(json!(-1))), ErrorCode::InvalidFrame);
        assert_eq!(code(resume(json!(1.5))), ErrorCode::InvalidFrame);
        assert_eq!(code(resume(json!("3"))), ErrorCode::InvalidFrame);
        let mut bad_content = message("x");
        bad_content["content"] = json!(42);
        assert_eq!(code(bad_content), ErrorCode::InvalidFrame);
        let mut bad_id = message("x");
        bad_id["message_id"] = json!("has space");
        assert_eq!(code(bad_id), ErrorCode::InvalidFrame);
    }

    #[test]
    fn field_type_errors_come_before_unknown_type() {
        assert_eq!(
            code(json!({"type": "shout", "thread_id": "t1", "approved": "yes"})),
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn thread_id_checks() {
        assert_eq!(
            code(json!({"type": "message", "token": "good", "content": "x"})),
            ErrorCode::MissingThreadId
        );
        assert_eq!(
            code(json!({"type": "message", "thread_id": null, "token": "good", "content": "x"})),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(json!({"type": "message", "thread_id": "a.b", "token": "good", "content": "x"})),
            ErrorCode::InvalidThreadId
        );
        assert_eq!(
            code(json!({"type": "message", "thread_id": 5})),
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn token_is_checked_before_content() {
        let bad_token =
            json!({"type": "message", "thread_id": "t1", "token": "bad", "content": ""});
        let err = parse(bad_token).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthorized);
        assert_eq!(err.thread_id.unwrap().as_str(), "t1");
        assert_eq!(
            code(json!({"type": "message", "thread_id": "t1", "content": "x"})),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn content_checks() {
        assert_eq!(
            code(json!({"type": "message", "thread_id": "t1", "token": "good"})),
            ErrorCode::MissingContent
        );
        assert_eq!(code(message("   ")), ErrorCode::MissingContent);
        assert_eq!(
            code(json!({"type": "message", "thread_id": "t1", "token": "good", "content": null})),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(message(&"a".repeat(10_001))),
            ErrorCode::ContentTooLong
        );
        assert!(parse(message(&"é".repeat(10_000))).is_ok());
    }

    #[test]
    fn errors_name_a_valid_thread() {
        let err = parse(json!({"type": "nope", "thread_id": "t9"})).unwrap_err();
        assert_eq!(err.thread_id.unwrap().as_str(), "t9");
        let err = parse(json!({"type": "nope", "thread_id": "bad id"})).unwrap_err();
        assert!(err.thread_id.is_none());
    }

    #[test]
    fn request_human_and_feedback_frames() {
        assert!(matches!(
            parse(json!({"type": "request_human", "thread_id": "t1", "token": "good"})),
            Ok(ClientFrame::RequestHuman { .. })
        ));
        let turn = "01a22fb0-5c87-77e0-9a4a-9c941848dc83";
        let thumbs = json!({"type": "feedback", "thread_id": "t1", "token": "good",
                            "turn_id": turn, "rating": "down", "comment": "meh"});
        match parse(thumbs) {
            Ok(ClientFrame::Feedback {
                target: FeedbackTarget::Turn { up: false, .. },
                comment: Some(comment),
                ..
            }) => assert_eq!(comment, "meh"),
            other => panic!("{other:?}"),
        }
        let csat = json!({"type": "feedback", "thread_id": "t1", "token": "good", "score": 5});
        assert!(matches!(
            parse(csat),
            Ok(ClientFrame::Feedback {
                target: FeedbackTarget::Csat { score: 5 },
                ..
            })
        ));
        for bad in [
            json!({"score": 0}),
            json!({"score": 6}),
            json!({"score": -1}),
            json!({"score": 2.5}),
            json!({"score": "3"}),
            json!({"turn_id": turn, "rating": "sideways"}),
            json!({"turn_id": "x", "rating": "up"}),
            json!({"turn_id": turn}),
            json!({"rating": "up"}),
            json!({"turn_id": turn, "rating": "up", "score": 3}),
            json!({}),
        ] {
            let mut frame = json!({"type": "feedback", "thread_id": "t1", "token": "good"});
            frame
                .as_object_mut()
                .unwrap()
                .extend(bad.as_object().unwrap().clone());
            let error = parse(frame).expect_err("refused");
            assert_eq!(error.code, ErrorCode::InvalidFrame, "{bad}");
            assert_eq!(error.thread_id.unwrap().as_str(), "t1");
        }
        // The token is checked first: a bad token is `unauthorized`, whatever the rating.
        let bad_token = json!({"type": "feedback", "thread_id": "t1", "token": "bad", "score": 9});
        assert_eq!(code(bad_token), ErrorCode::Unauthorized);
    }
}
