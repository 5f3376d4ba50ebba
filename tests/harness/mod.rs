//! Shared test helpers.

pub mod netns;
pub mod traffic;
