//! HTTP/1.x, fallthrough's own: the pure codec that judges every head and body framing
//! ([`codec`]), the head type with the one field policy ([`head`]), the head that goes
//! upstream with the forwarding fields' policy ([`upstream_head`]), the client
//! connection as a reader and request body ([`inbound`]), and the one server loop
//! ([`server`]). The upstream side (`proxy::upstream`) uses the same codec and policy.

pub mod codec;
pub mod head;
pub mod inbound;
pub mod server;
pub mod upstream_head;
