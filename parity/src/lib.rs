//! The parity harness shared by the runner and the Rust reference adapter.
//!
//! - [`case`]: the language-neutral case format (JSON; documented in `docs/parity.md`);
//! - [`protocol`]: the adapter protocol (one JSON line in, one JSON line out);
//! - [`wire`]: proto-JSON ↔ bytes through the bundle's descriptor set, and a
//!   bytes codec, so one adapter can call any method of the bundle;
//! - [`check`]: compares an adapter's outcome and the server's attempt log
//!   with a case's expectations;
//! - [`inbound`]: the runner's call to an adapter's server in an inbound case.

pub mod case;
pub mod check;
pub mod inbound;
pub mod protocol;
pub mod wire;
