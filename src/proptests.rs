//! Property tests of the parsers that read what clients send: whatever the bytes, they
//! answer, never panic, and every refusal carries a protocol error code and a message.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::{
    protocol::{ClientMessage, ErrorCode},
    publish::{parse_body, BodyFormat},
};

/// Field names and values the parsers look for, so that generated input often gets past
/// the first checks and reaches the deeper ones.
const KEYS: [&str; 12] = [
    "type",
    "id",
    "channel",
    "channels",
    "since",
    "epoch",
    "filters",
    "event_type",
    "data",
    "idempotency_key",
    "event_types",
    "min",
];
const WORDS: [&str; 10] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "get_subscriptions",
    "arena/a1",
    "a/b",
    "Bad",
    "42",
    "",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(&WORDS[..]).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(&KEYS[..]).prop_map(String::from),
                        ".{0,8}"
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Bytes that are JSON, nearly JSON (a valid document with some bytes changed), or noise.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (
            json_value(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        )
            .prop_map(|(v, edits)| {
                let mut bytes = v.to_string().into_bytes();
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            }),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

const CLIENT_CODES: [ErrorCode; 2] = [ErrorCode::InvalidMessage, ErrorCode::UnknownType];
const BODY_CODES: [ErrorCode; 3] = [
    ErrorCode::InvalidMessage,
    ErrorCode::InvalidChannel,
    ErrorCode::MessageTooLarge,
];

fn check_body(format: BodyFormat, body: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = parse_body(format, body, 16) {
        prop_assert!(BODY_CODES.contains(&e.code), "{:?}", e.code);
        prop_assert!([400, 413, 422].contains(&e.status.as_u16()), "{}", e.status);
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn client_messages_parse_or_are_refused_with_a_code(bytes in client_bytes()) {
        if let Err(e) = ClientMessage::parse_json(&bytes) {
            prop_assert!(CLIENT_CODES.contains(&e.code), "{:?}", e.code);
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn publish_bodies_parse_or_are_refused_with_a_code(bytes in client_bytes()) {
        check_body(BodyFormat::Json, &bytes)?;
        check_body(BodyFormat::Ndjson, &bytes)?;
        check_body(BodyFormat::Msgpack, &bytes)?;
    }

    #[test]
    fn msgpack_bodies_of_any_value_parse_or_are_refused(value in json_value()) {
        let bytes = rmp_serde::to_vec_named(&value).unwrap();
        check_body(BodyFormat::Msgpack, &bytes)?;
    }
}

#[test]
fn deep_nesting_and_huge_numbers_are_refused_not_fatal() {
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_msgpack = [vec![0x91u8; 100_000], vec![0xc0]].concat();
    let huge = br#"{"type":"subscribe","channel":"a/b","since":1e999}"#;
    let cursor = br#"{"type":"subscribe","channel":"a/b","since":"99999999999999999999"}"#;
    for bytes in [deep_json.as_bytes(), huge, cursor] {
        let e = ClientMessage::parse_json(bytes).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
    }
    for (format, bytes) in [
        (BodyFormat::Json, deep_json.as_bytes()),
        (BodyFormat::Ndjson, deep_json.as_bytes()),
        (BodyFormat::Msgpack, &deep_msgpack[..]),
    ] {
        assert_eq!(
            parse_body(format, bytes, 16).unwrap_err().status.as_u16(),
            400
        );
    }
    let event = json!({"channel": "a/b", "event_type": "t", "data": {"n": 1e300}});
    parse_body(BodyFormat::Json, event.to_string().as_bytes(), 1).unwrap();
}
