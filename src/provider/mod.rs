//! Where routes come from.
//!
//! In: route files (`files`), or the Kubernetes API (`kube`).
//! Out: validated routes and route tables for the proxy.

pub mod files;
pub mod kube;
