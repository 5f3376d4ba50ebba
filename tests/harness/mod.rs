//! Shared test helpers.

pub mod netns;
