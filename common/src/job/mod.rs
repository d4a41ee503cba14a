//! The trial lifecycle (DESIGN §3): states, events and the one function that moves between them.

pub mod state;

pub use state::{Event, Fence, Policy, TransitionError, TrialState, TrialStatus, transition};
