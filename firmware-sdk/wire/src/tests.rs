extern crate std;

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

fn frame(sensor_id: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; frame_len(payload.len())];
    let n = encode(
        &Header {
            kind: RecordType::Telemetry,
            sensor_id,
            seq,
        },
        payload,
        &mut out,
    )
    .unwrap();
    out.truncate(n);
    out
}

/// One decoder report: Ok((sensor, seq, payload)) or Err(kind).
type Report = Result<(u32, u32, Vec<u8>), &'static str>;

/// Everything the decoder reports for `bytes`.
fn decode_all<const N: usize>(dec: &mut Decoder<N>, bytes: &[u8]) -> Vec<Report> {
    let mut out = Vec::new();
    dec.push(bytes, |r| {
        out.push(
            r.map(|f| (f.header.sensor_id, f.header.seq, f.payload.to_vec()))
                .map_err(|e| e.kind()),
        )
    });
    out
}

#[test]
fn a_frame_round_trips_and_ends_with_the_only_zero() {
    let payload = [0xa1, 0x61, b'a', 0x00, 0x00, 0x01];
    let f = frame(17, 42, &payload);
    assert_eq!(
        f.iter().filter(|b| **b == 0).count(),
        2,
        "a delimiter on each side, none inside"
    );
    assert_eq!((f[0], *f.last().unwrap()), (0, 0));
    let got = decode_all(&mut Decoder::<MAX_ENCODED>::new(), &f);
    assert_eq!(got, vec![Ok((17, 42, payload.to_vec()))]);
}

#[test]
fn a_flipped_bit_is_a_crc_error_and_the_next_frame_decodes() {
    let mut stream = frame(1, 1, b"hello");
    stream[5] ^= 0x04;
    stream.extend(frame(1, 2, b"world"));
    let got = decode_all(&mut Decoder::<MAX_ENCODED>::new(), &stream);
    assert_eq!(got, vec![Err("crc"), Ok((1, 2, b"world".to_vec()))]);
}

#[test]
fn truncation_loses_one_frame_only() {
    let first = frame(1, 1, b"first frame");
    let mut stream = first[..first.len() / 2].to_vec(); // cut mid-frame, no delimiter
    stream.extend(frame(1, 2, b"second"));
    stream.extend(frame(1, 3, b"third"));
    let got = decode_all(&mut Decoder::<MAX_ENCODED>::new(), &stream);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].is_err(),
        "the cut frame ends at the next leading delimiter: {got:?}"
    );
    assert_eq!(got[1], Ok((1, 2, b"second".to_vec())));
    assert_eq!(got[2], Ok((1, 3, b"third".to_vec())));
}

#[test]
fn oversize_frames_are_discarded_with_bounded_memory() {
    let mut dec = Decoder::<64>::new();
    let mut stream = vec![0x55u8; 1000];
    stream.push(0);
    stream.extend(frame(9, 9, b"ok"));
    let got = decode_all(&mut dec, &stream);
    assert_eq!(got, vec![Err("too_long"), Ok((9, 9, b"ok".to_vec()))]);
    assert_eq!(dec.pending(), 0);
}

#[test]
fn reasons_are_specific() {
    let mut dec = Decoder::<MAX_ENCODED>::new();
    // Too short: a valid COBS block of 3 bytes.
    assert_eq!(
        decode_all(&mut dec, &[0x04, 1, 2, 3, 0]),
        vec![Err("too_short")]
    );
    // Invalid COBS: a code byte pointing past the end.
    assert_eq!(decode_all(&mut dec, &[0x09, 1, 0]), vec![Err("cobs")]);
    // Version and type: build raw frames with a correct CRC.
    for (version, kind, want) in [(2u8, 1u8, "version"), (1, 99, "unknown_type")] {
        let mut raw = vec![version, kind, 0, 0, 0, 0, 0, 0, 0, 0];
        raw.extend(CRC32.checksum(&raw).to_le_bytes());
        let mut enc = vec![0u8; max_encoded_len(raw.len()) + 1];
        let n = cobs::encode(&raw, &mut enc);
        enc.truncate(n);
        enc.push(0);
        assert_eq!(decode_all(&mut dec, &enc), vec![Err(want)]);
    }
}

#[test]
fn encode_refuses_what_it_cannot_frame() {
    let h = Header {
        kind: RecordType::Heartbeat,
        sensor_id: 0,
        seq: 0,
    };
    assert_eq!(
        encode(&h, &[0; MAX_PAYLOAD + 1], &mut [0; 4096]),
        Err(EncodeError::PayloadTooLarge {
            len: MAX_PAYLOAD + 1,
            max: MAX_PAYLOAD
        })
    );
    assert_eq!(
        encode(&h, b"abc", &mut [0; 10]),
        Err(EncodeError::BufferTooSmall)
    );
    let mut s = Sender::new(5);
    let mut out = [0u8; 64];
    s.frame(RecordType::Heartbeat, &[], &mut out).unwrap();
    s.frame(RecordType::Heartbeat, &[], &mut out).unwrap();
    assert_eq!(s.next_seq(), 2);
}

proptest! {
    #[test]
    fn any_frame_round_trips(sensor in any::<u32>(), seq in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD)) {
        let f = frame(sensor, seq, &payload);
        prop_assert!(f.len() <= frame_len(payload.len()));
        let got = decode_all(&mut Decoder::<MAX_ENCODED>::new(), &f);
        prop_assert_eq!(got, vec![Ok((sensor, seq, payload))]);
    }

    /// Garbage between frames costs at most the frame it touches: every frame
    /// preceded by a delimiter-terminated stretch of garbage still decodes.
    #[test]
    fn garbage_between_frames_is_survived(
        frames in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)), 1..20),
        garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 20),
    ) {
        let mut stream = Vec::new();
        for (i, (seq, payload)) in frames.iter().enumerate() {
            stream.extend(&garbage[i]);
            stream.push(0); // noise ends at a delimiter (or at the frame's own delimiter)
            stream.extend(frame(7, *seq, payload));
        }
        let got = decode_all(&mut Decoder::<MAX_ENCODED>::new(), &stream);
        let good: Vec<_> = got.iter().filter_map(|r| r.as_ref().ok()).filter(|(s, _, _)| *s == 7).cloned().collect();
        let want: Vec<_> = frames.iter().map(|(seq, p)| (7u32, *seq, p.clone())).collect();
        // Random garbage can (rarely) form a valid frame itself, but it can
        // never displace a real one: all real frames arrive, in order.
        let mut it = good.iter();
        for w in &want {
            prop_assert!(it.any(|g| g == w), "lost {:?}", w);
        }
    }

    /// A single flipped bit anywhere never yields a wrong frame.
    #[test]
    fn a_bit_flip_never_passes_as_a_good_frame(payload in proptest::collection::vec(any::<u8>(), 0..200), bit in any::<usize>()) {
        let mut f = frame(3, 4, &payload);
        let body = f.len() - 2;
        let i = 8 + bit % (body * 8); // any bit between the two delimiters
        f[i / 8] ^= 1 << (i % 8);
        let got = decode_all(&mut Decoder::<MAX_ENCODED>::new(), &f);
        for r in got {
            prop_assert!(r.is_err() || r == Ok((3, 4, payload.clone())), "{:?}", r);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut dec = Decoder::<256>::new();
        let _ = decode_all(&mut dec, &bytes);
        prop_assert!(dec.pending() <= 256);
    }
}
