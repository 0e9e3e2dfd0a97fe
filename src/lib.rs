//! fallthrough: a Kubernetes ingress controller that moves a site from a legacy app to a
//! new one, one URL at a time. Every request goes to the primary (legacy) backend first;
//! when it answers 404, the same request goes to the fallback (new) backend.
//!
//! Flow: `provider` (files) → `index` (validate) → `routes::RouteTable` →
//! `proxy` (serves clients) with `metrics` and `admin` beside it; `run` wires them up.

pub mod access_log;
pub mod admin;
pub mod api;
pub mod cli;
pub mod index;
pub mod insight;
pub mod metrics;
pub mod provider;
pub mod proxy;
pub mod routes;
pub mod run;
pub mod shard;
pub mod tls;
