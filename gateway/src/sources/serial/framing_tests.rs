use serde_cbor::Value;

use super::*;

fn run(framing: &Framing, input: &[u8]) -> Vec<Result<Message, &'static str>> {
    let mut d = Deframer::new(framing, 128);
    let mut out = Vec::new();
    // Feed in uneven chunks, as a serial port delivers them.
    for chunk in input.chunks(7) {
        d.push(chunk, &mut |r: Result<Message, InputError>| {
            out.push(r.map_err(|e| e.kind()))
        });
    }
    out
}

fn text_map(v: &Value, key: &str) -> Value {
    match v {
        Value::Map(m) => m
            .get(&Value::Text(key.into()))
            .cloned()
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn lines(format: LineFormat, columns: &[&str]) -> Framing {
    Framing::Lines {
        format,
        columns: columns.iter().map(|s| s.to_string()).collect(),
        delimiter: ',',
    }
}

#[test]
fn weir_frames_carry_sensor_and_seq() {
    let payload = serde_cbor::to_vec(&serde_json::json!({"id": "s1", "temp_c": 20.5})).unwrap();
    let mut s = weir_wire::Sender::new(7);
    let mut stream = b"\x13\x37garbage".to_vec();
    for _ in 0..2 {
        let mut buf = [0u8; 256];
        let n = s
            .frame(weir_wire::RecordType::Telemetry, &payload, &mut buf)
            .unwrap();
        stream.extend_from_slice(&buf[..n]);
    }
    let got = run(&Framing::Weir, &stream);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].is_err(),
        "the garbage before the first frame is reported"
    );
    let m = got[2].as_ref().unwrap();
    assert_eq!(m.sensor, Some((7, 1)));
    assert_eq!(m.kind.as_deref(), Some("telemetry"));
    assert_eq!(text_map(&m.payload, "temp_c"), Value::Float(20.5));
}

#[test]
fn json_lines_with_crlf_blank_lines_and_errors() {
    let got = run(
        &lines(LineFormat::Json, &[]),
        b"{\"a\":1}\r\n\n   \n{bad\n[1,2]\n\xff\xfe\n{\"b\":2.5}\n",
    );
    let kinds: Vec<_> = got
        .iter()
        .map(|r| r.as_ref().map(|_| "ok").unwrap_or_else(|e| e))
        .collect();
    assert_eq!(kinds, ["ok", "malformed", "malformed", "utf8", "ok"]);
    assert_eq!(
        text_map(&got[4].as_ref().unwrap().payload, "b"),
        Value::Float(2.5)
    );
}

#[test]
fn csv_with_a_header_line_or_configured_columns() {
    let got = run(
        &lines(LineFormat::Csv, &[]),
        b"id,temp_c,note\ns1,21.5,ok\ns2,-3,\ns3,1\n",
    );
    assert_eq!(got.len(), 3);
    let first = &got[0].as_ref().unwrap().payload;
    assert_eq!(text_map(first, "id"), Value::Text("s1".into()));
    assert_eq!(text_map(first, "temp_c"), Value::Float(21.5));
    assert_eq!(
        text_map(&got[1].as_ref().unwrap().payload, "temp_c"),
        Value::Integer(-3)
    );
    assert_eq!(
        text_map(&got[1].as_ref().unwrap().payload, "note"),
        Value::Null
    );
    assert_eq!(got[2], Err("malformed"), "a short row");
    let got = run(&lines(LineFormat::Csv, &["id", "v"]), b"x,1\n");
    assert_eq!(
        text_map(&got[0].as_ref().unwrap().payload, "v"),
        Value::Integer(1)
    );
}

#[test]
fn nmea_checksums_are_verified() {
    let good = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\n";
    let got = run(&lines(LineFormat::Nmea, &[]), good);
    let m = got[0].as_ref().unwrap();
    assert_eq!(m.kind.as_deref(), Some("GGA"));
    assert_eq!(text_map(&m.payload, "talker"), Value::Text("GP".into()));
    let mut bad = good.to_vec();
    bad[10] = b'9';
    assert_eq!(
        run(&lines(LineFormat::Nmea, &[]), &bad),
        vec![Err("checksum")]
    );
    assert_eq!(
        run(&lines(LineFormat::Nmea, &[]), b"GPGGA,1*00\n"),
        vec![Err("malformed")]
    );
    assert_eq!(
        run(&lines(LineFormat::Nmea, &[]), b"$GPGGA,1\n"),
        vec![Err("malformed")]
    );
}

#[test]
fn long_lines_are_discarded_and_the_next_line_decodes() {
    let mut input = vec![b'x'; 200];
    input.extend_from_slice(b"\n{\"ok\":true}\n");
    let got = run(&lines(LineFormat::Json, &[]), &input);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], Err("too_long"));
    assert!(got[1].is_ok());
}

#[test]
fn length_prefixed_cbor_and_json() {
    let cbor = serde_cbor::to_vec(&serde_json::json!({"a": 1})).unwrap();
    let mut input = vec![0, cbor.len() as u8];
    input.extend(&cbor);
    input.extend([0, 3, 0xff, 0xff, 0xff]); // malformed CBOR, right length
    input.extend([0, cbor.len() as u8]);
    input.extend(&cbor);
    let got = run(
        &Framing::LengthPrefixed {
            width: 2,
            payload: MessageFormat::Cbor,
        },
        &input,
    );
    let kinds: Vec<_> = got
        .iter()
        .map(|r| r.as_ref().map(|_| "ok").unwrap_or_else(|e| e))
        .collect();
    assert_eq!(kinds, ["ok", "malformed", "ok"]);
    let got = run(
        &Framing::LengthPrefixed {
            width: 1,
            payload: MessageFormat::Json,
        },
        b"\x07{\"b\":2}",
    );
    assert_eq!(
        text_map(&got[0].as_ref().unwrap().payload, "b"),
        Value::Integer(2)
    );
    // A length over the limit drops the buffer instead of waiting forever.
    let got = run(
        &Framing::LengthPrefixed {
            width: 4,
            payload: MessageFormat::Cbor,
        },
        &[0xff, 0xff, 0xff, 0xff, 1, 2],
    );
    assert_eq!(got, vec![Err("too_long")]);
}

#[test]
fn framing_config_parses() {
    #[derive(serde::Deserialize)]
    struct S {
        framing: Framing,
    }
    let s: S = toml::from_str("framing = { mode = \"lines\", format = \"csv\", columns = [\"a\", \"b\"], delimiter = \";\" }").unwrap();
    assert_eq!(
        s.framing,
        Framing::Lines {
            format: LineFormat::Csv,
            columns: vec!["a".into(), "b".into()],
            delimiter: ';'
        }
    );
    let s: S = toml::from_str("framing = { mode = \"weir\" }").unwrap();
    assert_eq!(s.framing, Framing::Weir);
    assert!(toml::from_str::<S>("framing = { mode = \"slip\" }").is_err());
}
