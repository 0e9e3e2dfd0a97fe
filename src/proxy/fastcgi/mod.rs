//! FastCGI, the protocol PHP-FPM speaks: the pure pieces. The exchange that uses them
//! lives in `upstream/fastcgi.rs`.
//!
//! In: a request as it goes upstream (head, body length, the client's addresses) and
//! the backend's `fastcgi` settings.
//! Out: the params that describe it ([`params`]), the records that carry it, and what
//! the application answered, judged ([`codec`]).

pub mod codec;
pub mod params;
