//! Migration insight: which paths each app serves, per route, in bounded memory.
//!
//! In: one classified request at a time from the proxy ([`Class`]), and reports read
//! back from this or other replicas.
//! Out: the `/paths` and `/traffic` admin reports ([`report`]), mergeable across
//! replicas, which `fallthrough paths` prints and the status writer sums.

pub mod command;
pub mod distinct;
pub mod merge;
pub mod recorder;
pub mod report;
pub mod sketch;

pub use report::Class;
