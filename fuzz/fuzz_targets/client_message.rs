//! WebSocket client messages: any bytes are parsed or refused with a code, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamlog::protocol::{ClientMessage, ErrorCode};

fuzz_target!(|data: &[u8]| {
    if let Err(e) = ClientMessage::parse_json(data) {
        assert!(matches!(
            e.code,
            ErrorCode::InvalidMessage | ErrorCode::UnknownType
        ));
        assert!(!e.message.is_empty());
    }
});
