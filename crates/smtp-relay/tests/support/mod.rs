//! Shared test support: `mod support;` in a test file brings it in.
#![allow(dead_code, unreachable_pub)]

pub mod fake_mx;
pub mod relay;
