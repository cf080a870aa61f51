//! Fuzz the streaming decoder: arbitrary bytes, fed in two chunks, must never
//! panic or hold more than its bound, and every frame it accepts must
//! re-encode to a frame that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::{Decoder, Frame, encode, frame_len};

const BOUND: usize = 512;

fn check(frame: Frame<'_>) {
    let mut buf = [0u8; frame_len(BOUND)];
    let n = encode(&frame.header, frame.payload, &mut buf).expect("an accepted frame re-encodes");
    let mut again = Decoder::<BOUND>::new();
    let mut seen = 0;
    again.push(&buf[..n], |r| {
        let f = r.expect("a re-encoded frame decodes");
        assert_eq!((f.header, f.payload), (frame.header, frame.payload));
        seen += 1;
    });
    assert_eq!(seen, 1);
}

fuzz_target!(|data: &[u8]| {
    let mut dec = Decoder::<BOUND>::new();
    let mid = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    for chunk in [&data[..mid], &data[mid..]] {
        dec.push(chunk, |r| {
            if let Ok(f) = r {
                check(f);
            }
        });
        assert!(dec.pending() <= BOUND);
    }
});
