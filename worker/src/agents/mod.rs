//! The agent graph: agents from `AGENTS_CONFIG`, and the runtime that classifies a message,
//! runs the chosen agents with their tools, and pauses for human approval.

pub mod config;
pub mod frames;
pub mod runtime;

pub use config::{Agent, AgentsConfig};
pub use frames::FrameSink;
pub use runtime::{Graph, TurnInfo};
