//! End-to-end tests: the real binaries, real NATS, real PostgreSQL.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod abuse;
mod admin;
mod agents;
mod analytics;
mod chat_turn;
mod client_addr;
mod conversation_control;
mod dead_letters;
mod delivery;
mod errors;
mod fanout;
mod group_commit;
mod handoff;
mod health;
mod history;
mod hot_path;
mod idempotency;
mod imported_tools;
mod observability;
mod openai;
mod openapi_import;
mod operator_cli;
mod origins;
mod outages;
mod resume;
mod shutdown;
mod socket_bounds;
mod startup;
mod tls;
mod web_assets;
