//! A turn: one stored client message run and committed under its thread's lease.
//!
//! - [`plan`]: what the message asks of the thread (a new turn, an answer to an approval, …);
//! - [`run`]: the [`TurnRunner`] that runs it (the agent graph, a cancel) and commits it;
//! - [`end`]: the frames that close a turn the agent graph does not end, written once;
//! - [`recover`]: what an earlier attempt left: a turn published but not committed, a message
//!   given up on (dead-lettered).
//!
//! The delivery that leads here, and the lease, are [`crate::drain`]'s.

mod end;
mod plan;
mod recover;
mod run;

pub(crate) use end::Closing;
pub(crate) use plan::approval_open_to;
pub use run::TurnRunner;

#[cfg(test)]
mod tests;
