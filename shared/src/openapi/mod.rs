//! Imported OpenAPI tools (SPEC §4, §5): an OpenAPI 3.0 or 3.1 document becomes proposed tools, an
//! operator reviews them, and the worker calls the reviewed and enabled ones over HTTP.
//!
//! Parsing has two stages. [`parse_document`] first walks the document itself (as JSON) for
//! everything a tool is made of — paths, operations, parameters, request bodies, servers and their
//! `$ref`s — and refuses what it cannot use with the exact location of the problem. Then the whole
//! document is checked against the version's typed model (`openapiv3` for 3.0, `oas3` for 3.1), which
//! catches what the walk does not read (responses, components, security, ...). Schemas are taken
//! from the document as written, not from the typed models, which drop keywords they do not know.
//!
//! Storage ([`save_imported`], [`list`], [`review`], [`load_usable`]) and the request a call makes
//! ([`ImportedTool::build_request`]) live here too, so the edge and the worker share one definition.
//!
//! The modules, in the order an import runs:
//! - `parse`: the raw document decoded within bounds (size, YAML alias expansion, `stop`), its
//!   version, and the check against the typed models;
//! - `document`: locations in the document, its errors, and typed reads that name the place;
//! - `schema`: `$ref`s checked and inlined, within depth and size bounds;
//! - `classify`: operations become tools (read or write, name, arguments, server);
//! - `tool`: what an imported tool is, and [`Access`];
//! - `request`: the HTTP request of one call;
//! - `store`: the table `imported_tools` and the operator's review.

mod classify;
mod document;
mod parse;
mod request;
mod schema;
mod store;
#[cfg(test)]
mod testing;
mod tool;

pub use classify::{
    tool_name, ImportedDocument, SkippedOperation, MAX_DESCRIPTION_CHARS, MAX_NAME_LEN,
    MAX_OPERATIONS,
};
pub use document::DocumentError;
pub use parse::{
    parse_document, parse_document_until, DocumentFormat, ImportError, ImportOptions,
    MAX_DOCUMENT_BYTES, MAX_YAML_EXPANDED_BYTES,
};
pub use request::BuiltRequest;
pub use schema::{MAX_DOCUMENT_SCHEMA_BYTES, MAX_REF_DEPTH, MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH};
pub use store::{list, load_usable, review, save_imported, ToolRecord, ToolReview};
pub use tool::{Access, ArgumentMapping, ImportedTool, Location, RequestMapping, UnknownAccess};
