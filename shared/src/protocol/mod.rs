//! The wire protocol. `frames`: browser ⇄ edge (SPEC §3); `bus`: edge → worker over JetStream;
//! `validate`: raw client text → a typed [`frames::ClientFrame`] or a typed [`frames::FrameError`].

pub mod bus;
pub mod frames;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod typescript;
pub mod validate;

pub use frames::{
    ClientFrame, ErrorCode, FeedbackTarget, FrameBody, FrameError, HandoffState, OperatorRef,
    Rating, ServerFrame, ThreadFrame, Usage, WireClientFrame, WireFeedbackTarget,
};
