//! Transport-cc feedback, REMB and the send-side estimator on arbitrary input: nothing panics, a
//! parsed feedback visits exactly its status count of packets in sequence order and a refused one
//! visits nothing (and leaves the estimator as it was), the estimate stays within its bounds, and
//! what the feedback and REMB builders write parses back to what was put in.
//!
//! Records (`records`): flags 0 a feedback FCI, 1 sent packets (3 bytes each: transport-wide
//! sequence number, size / 8), 2 a REMB FCI, 3 a packet list for the feedback builder (a byte with
//! bit 7 set is a lost packet, else a receive-time step). Each record's first byte also advances the
//! clock by that many milliseconds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane::bwe::SendSideBwe;
use voxa_dataplane::remb;
use voxa_dataplane::twcc::{self, FeedbackBuilder};
use voxa_dataplane_fuzz::records;

const MIN: u64 = 100_000;
const MAX: u64 = 10_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut bwe = SendSideBwe::new(u64::from(selector) * 40_000, MIN, MAX);
    let mut now = i64::from(selector) * 1000;
    let mut builder = FeedbackBuilder::new(0, 0);
    let mut fci = Vec::new();
    let mut expected = Vec::new();
    for (flags, record) in records(rest) {
        now += i64::from(record.first().copied().unwrap_or(0));
        match flags {
            0 => {
                let (mut visits, mut next) = (0usize, None::<u16>);
                let parsed = twcc::parse(record, |seq, _| {
                    if let Some(n) = next {
                        assert_eq!(seq, n, "packets in sequence order");
                    }
                    next = Some(seq.wrapping_add(1));
                    visits += 1;
                });
                match parsed {
                    Ok(header) => {
                        assert_eq!(visits, header.status_count as usize);
                        assert_eq!(twcc::parse_header(record), Ok(header));
                    }
                    Err(_) => assert_eq!(visits, 0, "a refused feedback visits nothing"),
                }
                let before = (bwe.estimate_bps(), bwe.source(), bwe.acknowledged_bps());
                let fed = bwe.on_feedback(record, now);
                assert_eq!(fed.is_ok(), parsed.is_ok());
                if fed.is_err() {
                    let after = (bwe.estimate_bps(), bwe.source(), bwe.acknowledged_bps());
                    assert_eq!(before, after, "a refused feedback changes nothing");
                }
            }
            1 => {
                for (i, p) in record.chunks_exact(3).enumerate() {
                    let seq = u16::from_be_bytes([p[0], p[1]]);
                    bwe.on_packet_sent(seq, usize::from(p[2]) * 8, now + (i as i64 & 7));
                }
            }
            2 => {
                if let Some(bps) = remb::parse_remb(record) {
                    bwe.on_remb(bps, now);
                    let mut out = Vec::new();
                    remb::build_remb(&mut out, bps, &[1]);
                    let back = remb::parse_remb(&out).expect("a built REMB parses");
                    assert!(back <= bps && back as f64 >= bps as f64 * 0.9999);
                }
            }
            _ => {
                let base = u16::from_be_bytes([
                    record.first().copied().unwrap_or(0),
                    record.get(1).copied().unwrap_or(0),
                ]);
                builder.reset(base, selector);
                expected.clear();
                let mut t = 1_000_000_000i64;
                for &b in record {
                    let recv = if b & 0x80 != 0 {
                        None
                    } else {
                        t += (i64::from(b) - 32) * 997;
                        Some(t)
                    };
                    assert!(builder.push(recv), "fits: small steps, under 65536 packets");
                    expected.push((
                        base.wrapping_add(expected.len() as u16),
                        recv.map(|r| r.div_euclid(250) * 250),
                    ));
                }
                fci.clear();
                builder.build(&mut fci);
                assert_eq!(fci.len() % 4, 0);
                let mut i = 0;
                let header = twcc::parse(&fci, |seq, recv| {
                    assert_eq!((seq, recv), expected[i], "packet {i}");
                    i += 1;
                })
                .expect("a built feedback parses");
                assert_eq!(i, expected.len());
                assert_eq!(header.fb_pkt_count, selector);
                let _ = bwe.on_feedback(&fci, now);
            }
        }
        let estimate = bwe.estimate_bps();
        assert!((MIN..=MAX).contains(&estimate), "estimate {estimate}");
        assert!(matches!(bwe.source(), "twcc" | "remb" | "initial"));
    }
});
