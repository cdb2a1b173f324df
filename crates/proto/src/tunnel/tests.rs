use super::*;
use proptest::prelude::*;

fn sample_frames() -> Vec<Frame> {
    let mut headers = HeaderMap::new();
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_static("2"));
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    for n in &COMMON_NAMES {
        headers.insert(n, HeaderValue::from_static("v"));
    }
    vec![
        Frame::Hello(Hello {
            version: VERSION,
            token: "gh1.x.y".into(),
            connector_id: "c1".into(),
            conn_index: 3,
        }),
        Frame::Welcome(Welcome {
            tunnel: "prod".into(),
            connection_id: 7,
            heartbeat_ms: 5000,
        }),
        Frame::Refused("bad token".into()),
        Frame::Ping(1),
        Frame::Pong(u64::MAX),
        Frame::GoAway,
        Frame::GoAwayAck,
        Frame::RequestHead(RequestHead {
            request_id: "r1".into(),
            method: Method::PATCH,
            scheme: "https".into(),
            authority: "app.example.com".into(),
            path: "/a/b?c=d".into(),
            client_addr: "127.0.0.1:5555".into(),
            headers: headers.clone(),
        }),
        Frame::ResponseHead(ResponseHead {
            status: StatusCode::SWITCHING_PROTOCOLS,
            headers: headers.clone(),
        }),
        Frame::Data(Bytes::from_static(b"hello")),
        Frame::Data(Bytes::new()),
        Frame::Trailers(headers),
        Frame::Reset("origin unreachable".into()),
    ]
}

#[test]
fn every_frame_round_trips_even_byte_by_byte() {
    let frames = sample_frames();
    let mut wire = BytesMut::new();
    for f in &frames {
        encode(f, &mut wire).unwrap();
    }
    // Whole buffer at once.
    let mut buf = wire.clone();
    let mut got = Vec::new();
    while let Some(f) = decode(&mut buf).unwrap() {
        got.push(f);
    }
    assert_eq!(got, frames);
    assert!(buf.is_empty());
    // One byte at a time.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire.iter() {
        buf.put_u8(*b);
        while let Some(f) = decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn head_frames_fit_the_space_reserved_for_them() {
    for f in sample_frames() {
        if matches!(
            f,
            Frame::RequestHead(_) | Frame::ResponseHead(_) | Frame::Trailers(_)
        ) {
            let mut out = BytesMut::new();
            encode(&f, &mut out).unwrap();
            assert!(out.len() <= HEADER_LEN + fields_len(&f), "{f:?}");
        }
    }
}

#[test]
fn header_names_are_lower_cased_whether_common_or_not() {
    for (wire, want) in [
        (&b"X-Forwarded-For"[..], "x-forwarded-for"),
        (b"x-forwarded-for", "x-forwarded-for"),
        (b"Gatehouse-Request-Id", "gatehouse-request-id"),
        (b"X-Other", "x-other"),
    ] {
        let mut payload = vec![0, 1];
        payload.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        payload.extend_from_slice(wire);
        payload.extend_from_slice(&[0, 0, 0, 1, b'v']);
        let mut b = BytesMut::from(&[T_TRAILERS][..]);
        b.put_u32(payload.len() as u32);
        b.extend_from_slice(&payload);
        let Ok(Some(Frame::Trailers(h))) = decode(&mut b) else {
            panic!("{wire:?} did not decode");
        };
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), [want]);
    }
}

#[test]
fn hostile_input_is_an_error_not_a_panic() {
    let mut b = BytesMut::from(&[0xee, 0, 0, 0, 0][..]);
    assert_eq!(decode(&mut b), Err(DecodeError::UnknownType(0xee)));
    let mut b = BytesMut::from(&[T_DATA, 0xff, 0xff, 0xff, 0xff][..]);
    assert!(matches!(decode(&mut b), Err(DecodeError::TooLarge(_))));
    let mut b = BytesMut::from(&[T_PING, 0, 0, 0, 2, 1, 2][..]);
    assert_eq!(decode(&mut b), Err(DecodeError::Truncated("ping")));
    let mut b = BytesMut::from(&[T_GOAWAY, 0, 0, 0, 1, 9][..]);
    assert_eq!(decode(&mut b), Err(DecodeError::Trailing("goaway")));
    // A response head with status 42.
    let mut b = BytesMut::from(&[T_RESPONSE_HEAD, 0, 0, 0, 4, 0, 42, 0, 0][..]);
    assert_eq!(decode(&mut b), Err(DecodeError::Status(42)));
    // A header name with a space.
    let mut b = BytesMut::from(
        &[
            T_TRAILERS, 0, 0, 0, 11, 0, 1, 0, 3, b'a', b' ', b'b', 0, 0, 0, 0,
        ][..],
    );
    assert_eq!(decode(&mut b), Err(DecodeError::Header));
}

#[test]
fn oversized_data_is_refused_by_the_encoder() {
    let mut out = BytesMut::new();
    let big = Bytes::from(vec![0u8; MAX_PAYLOAD + 1]);
    assert_eq!(
        encode(&Frame::Data(big), &mut out),
        Err(EncodeError::TooLong("data"))
    );
    assert!(out.is_empty());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut buf) {}
    }

    #[test]
    fn data_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let f = Frame::Data(Bytes::from(bytes));
        let mut out = BytesMut::new();
        encode(&f, &mut out).unwrap();
        prop_assert_eq!(decode(&mut out).unwrap(), Some(f));
    }
}
