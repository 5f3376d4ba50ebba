//! Shared test helpers.

pub mod backend;
pub mod netns;
pub mod traffic;
