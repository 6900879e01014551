//! The turn worker: pulls client messages from the shared durable consumer, runs each thread's
//! turns in order under a fenced per-thread lease, streams numbered reply frames, and commits
//! each turn to PostgreSQL before acknowledging it.

pub mod agents;
pub mod cancels;
pub mod consumer;
pub mod demo_seed;
pub mod drain;
pub mod error;
pub mod handoff;
pub mod llm;
pub mod metrics;
pub mod observe;
pub mod operator;
pub mod publish;
pub mod records;
pub mod retention;
pub mod settings;
pub mod startup;
pub mod store;
pub mod tools;
pub mod turn;

pub use settings::Settings;
pub use startup::Worker;
