//! The edge's validation of client frames (SPEC §3): `shared::protocol::validate::parse_client_frame`.
//!
//! Invariants: it never panics; a frame past `MAX_FRAME_BYTES` is `message_too_large`; an accepted
//! frame was authorized for its own thread, is refused `unauthorized` when the token is not
//! good, keeps its content within bounds, and written back as JSON parses to the same frame; a
//! refusal that came before the token check does not depend on the token; every refusal becomes
//! an `error` frame that round-trips through JSON and is not retryable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use shared::ids::ThreadId;
use shared::protocol::frames::{
    ClientFrame, ErrorCode, FeedbackTarget, FrameError, ServerFrame, UserText,
};
use shared::protocol::validate::{parse_client_frame, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    // Text WebSocket frames are UTF-8 by the protocol; the edge never sees anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut asked: Option<(ThreadId, String)> = None;
    let trusting = parse_client_frame(text, |thread, token| {
        asked = Some((thread.clone(), token.to_owned()));
        true
    });
    let refusing = parse_client_frame(text, |_, _| false);

    if text.len() > MAX_FRAME_BYTES {
        assert_eq!(code(&trusting), Some(ErrorCode::MessageTooLarge));
        assert_eq!(code(&refusing), Some(ErrorCode::MessageTooLarge));
        return;
    }

    match (&trusting, &asked) {
        (Ok(frame), Some((thread, token))) => {
            assert_eq!(thread, frame.thread_id(), "authorized another thread");
            let refused = refusing
                .as_ref()
                .expect_err("accepted without a good token");
            assert_eq!(refused.code, ErrorCode::Unauthorized);
            assert_eq!(refused.thread_id.as_ref(), Some(frame.thread_id()));
            check_error(refused);
            if let ClientFrame::Message { content, .. } = frame {
                assert!(
                    !content.as_str().trim().is_empty(),
                    "blank content accepted"
                );
                assert!(content.as_str().chars().count() <= UserText::MAX_CHARS);
            }
            // Written back as JSON, the frame parses to the same value.
            let again = to_json(frame, token).to_string();
            let reparsed = parse_client_frame(&again, |t, k| t == frame.thread_id() && k == token);
            assert_eq!(reparsed.as_ref(), Ok(frame), "{again}");
        }
        (Ok(_), None) => panic!("a frame was accepted without asking for its token"),
        (Err(error), None) => {
            // Refused before the token check: the token cannot change the answer.
            assert_eq!(Some(error), refusing.as_ref().err());
            check_error(error);
        }
        (Err(error), Some((thread, _))) => {
            // Refused after a good token (content checks): with a bad one it is `unauthorized`.
            assert_eq!(error.thread_id.as_ref(), Some(thread));
            assert_eq!(code(&refusing), Some(ErrorCode::Unauthorized));
            check_error(error);
        }
    }
});

fn code(result: &Result<ClientFrame, FrameError>) -> Option<ErrorCode> {
    result.as_ref().err().map(|error| error.code)
}

/// A refusal is answered with an `error` frame: it must survive JSON and not invite a retry.
fn check_error(error: &FrameError) {
    assert!(
        !error.code.retryable(),
        "the parser refused with a retryable code"
    );
    assert!(!error.message.is_empty());
    let frame = ServerFrame::from(error.clone());
    let text = serde_json::to_string(&frame).expect("an error frame encodes");
    let back: ServerFrame = serde_json::from_str(&text).expect("an error frame decodes");
    assert_eq!(back, frame);
}

/// The frame as a client would send it.
fn to_json(frame: &ClientFrame, token: &str) -> Value {
    let mut fields = Map::new();
    fields.insert("thread_id".into(), json!(frame.thread_id().as_str()));
    fields.insert("token".into(), json!(token));
    match frame {
        ClientFrame::Message {
            content,
            message_id,
            ..
        } => {
            fields.insert("type".into(), json!("message"));
            fields.insert("content".into(), json!(content.as_str()));
            if let Some(id) = message_id {
                fields.insert("message_id".into(), json!(id.as_str()));
            }
        }
        ClientFrame::InterruptResponse {
            approved,
            interrupt_id,
            ..
        } => {
            fields.insert("type".into(), json!("interrupt_response"));
            fields.insert("approved".into(), json!(approved));
            if let Some(id) = interrupt_id {
                fields.insert("interrupt_id".into(), json!(id));
            }
        }
        ClientFrame::Resume { after_seq, .. } => {
            fields.insert("type".into(), json!("resume"));
            fields.insert("after_seq".into(), json!(after_seq));
        }
        ClientFrame::Cancel { turn_id, .. } => {
            fields.insert("type".into(), json!("cancel"));
            if let Some(turn_id) = turn_id {
                fields.insert("turn_id".into(), json!(turn_id.to_string()));
            }
        }
        ClientFrame::RequestHuman { .. } => {
            fields.insert("type".into(), json!("request_human"));
        }
        ClientFrame::Feedback {
            target, comment, ..
        } => {
            fields.insert("type".into(), json!("feedback"));
            match target {
                FeedbackTarget::Turn { turn_id, up } => {
                    fields.insert("turn_id".into(), json!(turn_id.to_string()));
                    fields.insert("rating".into(), json!(if *up { "up" } else { "down" }));
                }
                FeedbackTarget::Csat { score } => {
                    fields.insert("score".into(), json!(score));
                }
            }
            if let Some(comment) = comment {
                fields.insert("comment".into(), json!(comment));
            }
        }
    }
    Value::Object(fields)
}
