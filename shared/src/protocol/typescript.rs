//! The TypeScript declarations of the browser ⇄ edge protocol, generated from the Rust types with
//! `ts-rs` (a dev-dependency: the derives exist only under `cfg(test)`, normal builds do not
//! compile it). The web app imports them from `web/src/generated/protocol.ts`.
//!
//! - `bindings_are_current` fails when the committed file differs from what the types generate;
//!   with `PROTOCOL_TS_OUT=<file>` it writes the file instead (`scripts/gen-ts.sh` regenerates;
//!   `scripts/gen-ts.sh --check`, run by `.ci/run`, diffs).
//! - `the_protocol_doc_names_every_frame_and_error_code` keeps `docs/protocol.md` honest: every
//!   frame `type` and every error code the types can produce has its entry there, and the doc
//!   documents none the types do not have.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ts_rs::{Config, TS};

use crate::ids::{MessageId, ThreadId, TurnId};
use crate::protocol::frames::{
    ErrorCode, FrameBody, HandoffState, OperatorRef, Rating, ServerFrame, ThreadFrame, Usage,
    WireClientFrame, WireFeedbackTarget,
};

const HEADER: &str = "\
// Generated from the Rust protocol types (shared/src/protocol/frames.rs, shared/src/ids.rs) by
// ts-rs. Do not edit: change the Rust types, run scripts/gen-ts.sh and commit the result.
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
        out.push_str(&decl);
        out.push('\n');
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
    );
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
