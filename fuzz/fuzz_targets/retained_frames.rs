//! How a retained reply bundle is read back for `resume` (edge) and crash recovery (worker):
//! `shared::retained::last_frame_seq`, which `BundleReader` uses to find where a resume starts.
//!
//! Input: line 1 the `Frame-Types` value, line 2 the `Frame-First-Seq` value (empty: absent), the
//! rest the stored payload.
//!
//! Invariants: it never panics; with both headers it answers from them (the first seq plus the
//! frame count, less one) when that is a `seq` at all; otherwise from the last frame's `seq`; for
//! a well-formed bundle (frames numbered one by one from the first-seq header, types as the
//! header says) the headers and the payload give the same answer.
#![no_main]

use std::str::FromStr;

use async_nats::jetstream::message::StreamMessage;
use async_nats::{HeaderMap, HeaderValue, Subject};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shared::protocol::bus::bundle;
use shared::protocol::ThreadFrame;
use shared::retained::last_frame_seq;
use smart_support_fuzz::BundleInput;

fuzz_target!(|data: &[u8]| {
    let input = BundleInput::split(data);
    let mut headers = HeaderMap::new();
    // A header value from the wire holds no CR or LF; one that does cannot be stored.
    let frame_types = input
        .frame_types
        .and_then(|raw| HeaderValue::from_str(raw).ok().map(|value| (raw, value)));
    let first_seq = input
        .first_seq
        .and_then(|raw| HeaderValue::from_str(raw).ok().map(|value| (raw, value)));
    if let Some((_, value)) = &frame_types {
        headers.insert(bundle::FRAME_TYPES_HEADER, value.clone());
    }
    if let Some((_, value)) = &first_seq {
        headers.insert(bundle::FIRST_SEQ_HEADER, value.clone());
    }
    let payload = bytes::Bytes::copy_from_slice(input.payload);
    let stored = message(headers, payload.clone());
    let bare = message(HeaderMap::new(), payload.clone());

    let answer = last_frame_seq(&stored);
    let from_payload = bundle::last_frame(&payload)
        .and_then(|frame| serde_json::from_slice::<Value>(frame).ok())
        .and_then(|frame| frame.get("seq").and_then(Value::as_u64));
    // Without headers the answer is the last frame's `seq` (other fields ignored, any order; the
    // fields it skips are not checked for UTF-8, and serde also reads a struct from an array such
    // as `[9]`, so compare only on valid text that is an object).
    let bare_answer = last_frame_seq(&bare);
    // Nor are skipped numbers checked for range (`8e969568` is out of f64's range: a `Value`
    // refuses it), so compare only where the last frame is a JSON object a `Value` can hold.
    let last_is_text = bundle::last_frame(&payload).is_some_and(|frame| {
        std::str::from_utf8(frame).is_ok_and(|text| text.trim_start().starts_with('{'))
            && serde_json::from_slice::<Value>(frame).is_ok()
    });
    if bare_answer.is_some() && last_is_text {
        assert_eq!(bare_answer, from_payload);
    }

    let from_headers = match (&frame_types, &first_seq) {
        (Some((types, _)), Some((first, _))) => first.parse::<u64>().ok().and_then(|first| {
            let count = types.split(',').count() as u64;
            first.checked_add(count - 1)
        }),
        _ => None,
    };
    match from_headers {
        Some(last) => assert_eq!(answer, Some(last)),
        None => assert_eq!(answer, bare_answer),
    }

    // A bundle as our workers store it: the header shortcut agrees with the payload.
    let frames: Vec<ThreadFrame> = bundle::frames(&payload)
        .map_while(|frame| serde_json::from_slice::<ThreadFrame>(frame).ok())
        .collect();
    let whole = !frames.is_empty() && frames.len() == bundle::frames(&payload).count();
    let consecutive = frames
        .windows(2)
        .all(|pair| pair[0].seq.checked_add(1) == Some(pair[1].seq));
    if whole && consecutive {
        let types: Vec<&str> = frames.iter().map(|frame| frame.body.kind()).collect();
        let mut headers = HeaderMap::new();
        headers.insert(bundle::FRAME_TYPES_HEADER, types.join(",").as_str());
        headers.insert(bundle::FIRST_SEQ_HEADER, frames[0].seq.to_string().as_str());
        let from_worker = message(headers, payload.clone());
        let last = frames.last().map(|frame| frame.seq);
        assert_eq!(last_frame_seq(&from_worker), last);
        assert_eq!(bare_answer, last);
    }
});

fn message(headers: HeaderMap, payload: bytes::Bytes) -> StreamMessage {
    StreamMessage {
        subject: Subject::from("ss.out.thread"),
        sequence: 1,
        headers,
        payload,
        time: time::OffsetDateTime::UNIX_EPOCH,
    }
}
