//! Model providers. For now the offline, deterministic scripted model.

pub mod scripted;

pub use scripted::ScriptedModel;
