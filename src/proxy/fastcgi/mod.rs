//! FastCGI, the protocol PHP-FPM speaks: the pure codec here; the exchange that uses it
//! lives in upstream/.
//!
//! In: what a request is to be sent as (params, body). Out: the records that carry it,
//! and what the application answered, judged ([`codec`]).

pub mod codec;
