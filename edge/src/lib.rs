//! The stateless WebSocket edge: validates every client frame, publishes accepted ones to
//! JetStream, and relays each attached thread's reply frames to its sockets.

pub mod client_addr;
pub mod connection;
pub mod error;
pub mod metrics;
pub mod origins;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;

pub use settings::Settings;
pub use startup::Edge;
