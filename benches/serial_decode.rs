//! Serial frames decoded per second on one core: the gateway's deframer
//! (COBS, CRC-32, then the CBOR payload into a record payload) against the
//! bare wire decoder (COBS and CRC only) measured in the same run, plus
//! JSON lines for comparison.
//!
//! `cargo bench -p weir-benches --bench serial_decode` (`FRAMES=N` sets the size).

use testkit::w1;
use weir::sources::serial::framing::{Deframer, Framing, LineFormat};
use weir_benches::{best_of, rate};

fn main() {
    let n: usize = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let readings = w1::generate(n, 5);
    let mut wire = Vec::new();
    let mut lines = Vec::new();
    let mut sender = weir_wire::Sender::new(17);
    let mut buf = vec![0u8; weir_wire::frame_len(weir_wire::MAX_PAYLOAD)];
    for r in &readings {
        let payload = serde_cbor::to_vec(&w1_value(r)).unwrap();
        let len = sender
            .frame(weir_wire::RecordType::Telemetry, &payload, &mut buf)
            .unwrap();
        wire.extend_from_slice(&buf[..len]);
        lines.extend_from_slice(r.json().to_string().as_bytes());
        lines.push(b'\n');
    }
    // Feed as a serial port delivers: 4 KiB reads.
    let (d_wire, frames) = best_of(3, || {
        let mut dec = weir_wire::Decoder::<{ weir_wire::MAX_ENCODED }>::new();
        let mut count = 0usize;
        for chunk in wire.chunks(4096) {
            dec.push(chunk, |r| count += usize::from(r.is_ok()));
        }
        count
    });
    let run = |framing: &Framing, bytes: &[u8]| {
        best_of(3, || {
            let mut d = Deframer::new(framing, 4096);
            let mut count = 0usize;
            for chunk in bytes.chunks(4096) {
                d.push(chunk, &mut |r| count += usize::from(r.is_ok()));
            }
            count
        })
    };
    let (d_weir, weir_frames) = run(&Framing::Weir, &wire);
    let json = Framing::Lines {
        format: LineFormat::Json,
        columns: vec![],
        delimiter: ',',
    };
    let (d_json, json_lines) = run(&json, &lines);
    assert_eq!((frames, weir_frames, json_lines), (n, n, n));
    let bytes_per_frame = wire.len() as f64 / n as f64;
    println!(
        "serial decoding: {n} W1 frames ({bytes_per_frame:.0} bytes each on the wire), one core, best of 3"
    );
    println!(
        "  wire decoder only (COBS + CRC)      {:>10.0} frames/s",
        rate(n, d_wire)
    );
    println!(
        "  deframer, weir mode (+ CBOR payload) {:>9.0} frames/s  ratio {:.2}x the wire decoder's time",
        rate(n, d_weir),
        d_weir.as_secs_f64() / d_wire.as_secs_f64()
    );
    println!(
        "  deframer, JSON lines                {:>10.0} lines/s   ratio {:.2}x",
        rate(n, d_json),
        d_json.as_secs_f64() / d_wire.as_secs_f64()
    );
    println!(
        "  a 921600-baud line carries {:.0} such frames/s",
        92_160.0 / bytes_per_frame
    );
}

fn w1_value(r: &w1::Reading) -> serde_cbor::Value {
    weir::record::json_to_cbor(&r.json())
}
