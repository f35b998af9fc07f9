//! HTTP publish bodies in every accepted format: parsed or refused with a code and an HTTP
//! status, never a panic. The first byte picks the format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamlog::publish::{parse_body, BodyFormat};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = match selector % 3 {
        0 => BodyFormat::Json,
        1 => BodyFormat::Ndjson,
        _ => BodyFormat::Msgpack,
    };
    if let Err(e) = parse_body(format, body, 64) {
        assert!([400, 413, 422].contains(&e.status.as_u16()), "{}", e.status);
        assert!(!e.message.is_empty());
    }
});
