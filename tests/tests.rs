//! The one integration-test binary (one link step; see STYLE.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod doctor;
mod exporter;
mod harness;
mod lab;
mod load;
mod model_vs_kernel;
mod nginx;
mod nginx_doctor;
mod proxy;
mod status;
mod trace;
mod unknown_values;
