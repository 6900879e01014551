//! Reply bundles on the bus (`shared::protocol::bus::bundle`): what a worker publishes on
//! `<prefix>.out.<thread>` and what edges and workers decode — the split into frames, the last
//! frame, the numbering from the `Frame-Types` / `Frame-First-Seq` headers, each frame as a
//! `ThreadFrame` — and the `InboundMessage` an edge publishes on `<prefix>.in.<thread>`.
//!
//! Input: line 1 the `Frame-Types` value, line 2 the `Frame-First-Seq` value (empty: absent), the
//! rest the payload.
//!
//! Invariants: nothing panics; the frames are exactly the payload's non-empty lines; `last_frame`
//! is the last of them; numbering follows the headers, one by one, never past `u64::MAX`; a frame
//! that decodes re-encodes on one line (no raw newline), with its `type`, and decodes to the same
//! value; a bundle re-built from decoded frames the way a worker builds one decodes to the same
//! frames, types and seqs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shared::protocol::bus::{bundle, InboundMessage};
use shared::protocol::ThreadFrame;
use smart_support_fuzz::{json_close, BundleInput};

fuzz_target!(|data: &[u8]| {
    let input = BundleInput::split(data);
    let payload = input.payload;

    let frames: Vec<&[u8]> = bundle::frames(payload).collect();
    for frame in &frames {
        assert!(!frame.is_empty() && !frame.contains(&b'\n'));
    }
    let newlines = payload.iter().filter(|byte| **byte == b'\n').count();
    let framed: usize = frames.iter().map(|frame| frame.len()).sum();
    assert_eq!(
        framed + newlines,
        payload.len(),
        "a frame lost or gained bytes"
    );
    assert_eq!(bundle::last_frame(payload), frames.last().copied());

    // Numbering, as an edge relays the bundle.
    let numbered: Vec<_> = bundle::numbered(input.frame_types, input.first_seq, payload).collect();
    let first = input.first_seq.and_then(|raw| raw.parse::<u64>().ok());
    let expected_len = match first {
        Some(first) => frames.len().min(
            usize::try_from(u64::MAX - first)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        ),
        None => frames.len(),
    };
    assert_eq!(numbered.len(), expected_len);
    let mut kinds = input.frame_types.unwrap_or("").split(',');
    for (index, frame) in numbered.iter().enumerate() {
        assert_eq!(frame.frame, frames[index]);
        assert_eq!(frame.kind, kinds.next().unwrap_or("unknown"));
        assert_eq!(frame.seq, first.map(|first| first + index as u64));
    }

    // Each frame as a worker (reading its own retained frames) decodes it.
    let mut decoded = Vec::new();
    for frame in &frames {
        if let Ok(message) = serde_json::from_slice::<InboundMessage>(frame) {
            let bytes = message.to_bytes().expect("an inbound message encodes");
            let back: InboundMessage =
                serde_json::from_slice(&bytes).expect("an encoded inbound message decodes");
            assert_eq!(back, message);
        }
        let Ok(thread_frame) = serde_json::from_slice::<ThreadFrame>(frame) else {
            continue;
        };
        let text = serde_json::to_vec(&thread_frame).expect("a thread frame encodes");
        assert!(
            !text.contains(&b'\n'),
            "an encoded frame holds a raw newline"
        );
        let value: Value = serde_json::from_slice(&text).expect("an encoded frame is JSON");
        assert_eq!(
            value.get("type").and_then(Value::as_str),
            Some(thread_frame.body.kind())
        );
        let back: ThreadFrame = serde_json::from_slice(&text).unwrap_or_else(|error| {
            panic!(
                "a re-encoded frame does not decode: {error}: {}",
                String::from_utf8_lossy(&text)
            )
        });
        let again = serde_json::to_value(&back).expect("a thread frame encodes");
        assert!(json_close(&value, &again), "{value} != {again}");
        decoded.push((thread_frame, text));
    }

    // Re-bundled the way `worker::publish::FramePublisher` does it: the same frames come back.
    if let Some((first_frame, _)) = decoded.first() {
        let first_seq = first_frame.seq;
        let types: Vec<&str> = decoded.iter().map(|(frame, _)| frame.body.kind()).collect();
        let mut rebuilt = Vec::new();
        for (_, text) in &decoded {
            rebuilt.extend_from_slice(text);
            rebuilt.push(b'\n');
        }
        let header = types.join(",");
        let seq_header = first_seq.to_string();
        let again: Vec<_> = bundle::numbered(Some(&header), Some(&seq_header), &rebuilt).collect();
        let fits =
            usize::try_from(u64::MAX - first_seq).map_or(true, |room| room >= decoded.len() - 1);
        if fits {
            assert_eq!(again.len(), decoded.len());
        }
        for (index, frame) in again.iter().enumerate() {
            assert_eq!(frame.kind, types[index]);
            assert_eq!(frame.seq, Some(first_seq + index as u64));
            assert_eq!(frame.frame, &decoded[index].1[..]);
        }
        assert_eq!(
            bundle::last_frame(&rebuilt),
            decoded.last().map(|(_, text)| &text[..])
        );
    }
});
