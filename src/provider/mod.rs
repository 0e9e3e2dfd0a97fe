//! Where routes come from.
//!
//! In: route files today (`files`); Kubernetes watches later.
//! Out: validated routes for `RouteTable::build`.

pub mod files;
