//! The PROXY protocol framing: on any bytes, `header_len` never panics; a length it
//! gives is within the input, names a header `client_of` accepts, and is found again
//! with any bytes behind it; and no prefix of that header is judged complete.
#![no_main]

use fallthrough::proxy::proxy_protocol::{client_of, header_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(Some(len)) = header_len(input) else {
        return;
    };
    assert!(len <= input.len());
    let header = &input[..len];
    assert!(client_of(header).is_ok(), "a measured header is a valid one");
    assert_eq!(header_len(header).ok().flatten(), Some(len), "alone, the same length");
    for cut in 0..len {
        assert!(
            !matches!(header_len(&header[..cut]), Ok(Some(_))),
            "a prefix of {cut} bytes judged whole"
        );
    }
});
