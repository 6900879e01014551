//! Everything the edge and the worker must agree on: the wire protocol (SPEC §3), the message on the
//! bus, NATS subject names, settings, thread tokens, database and JetStream set-up, and tracing.

pub mod auth;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod erasure;
pub mod health;
pub mod ids;
pub mod jetstream;
pub mod metrics;
pub mod openapi;
pub mod protocol;
pub mod redact;
pub mod replay;
pub mod retained;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
pub mod timeline;
pub mod turns;
