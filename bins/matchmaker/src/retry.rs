//! The matchmaker's backoff: the workspace's one ([`mm_shared::retry`]), exponential with
//! jitter, for allocations and releases that may be tried again.

pub use mm_shared::retry::Backoff;
