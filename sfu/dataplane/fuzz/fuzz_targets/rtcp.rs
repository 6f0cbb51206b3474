//! RTCP compound parsing and the receiver-side state on arbitrary input: nothing panics, a compound
//! packet is either refused whole or visited, the packets the SFU builds parse back to what was put
//! in, and receiver statistics, the NACK history and the keyframe throttle take any sequence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane::rtcp::{self, Item, KeyframeThrottle, PacketHistory, ReceiverStats};
use voxa_dataplane_fuzz::records;

fn be32(d: &[u8], i: usize) -> u32 {
    d.get(i..i + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut stats = ReceiverStats::new(be32(rest, 0));
    let mut history = PacketHistory::new(1 << (selector & 7));
    let mut throttle = KeyframeThrottle::new(i64::from(selector) * 10);
    let (mut arrival, mut now) = (0f64, 0i64);
    for (flags, record) in records(rest) {
        // Every record is tried as a compound packet...
        let mut items = Vec::new();
        if rtcp::parse(record, |item| items.push(item)).is_err() {
            assert!(
                items.is_empty(),
                "a refused compound packet visited nothing"
            );
        }
        for item in items {
            if let Item::Nack { pid, blp, .. } = item {
                assert!(rtcp::nack_seqs(pid, blp).count() <= 17);
            }
        }
        // ... and as a received RTP packet's numbers (flags 0), history traffic (1), a sender
        // report (2) or keyframe-throttle events (3).
        let seq = record
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        arrival += f64::from(record.get(2).copied().unwrap_or(0));
        now += i64::from(record.get(3).copied().unwrap_or(0));
        match flags {
            0 => stats.update(seq, be32(record, 4), arrival, 1 + be32(record, 8) % 200_000),
            1 => {
                history.put(record);
                if let Some(b) = record.get(2..4) {
                    // Stored by the RTP sequence number in bytes 2-3: found again at once.
                    assert_eq!(history.get(u16::from_be_bytes([b[0], b[1]])), Some(record));
                }
            }
            2 => {
                stats.on_sender_report((u64::from(be32(record, 4)) << 32) | u64::from(seq), arrival)
            }
            _ => {
                throttle.request(now);
                throttle.poll(now);
                if seq & 1 != 0 {
                    throttle.keyframe_received();
                }
            }
        }
        if let Some(block) = stats.report_block(arrival) {
            let mut rr = Vec::new();
            rtcp::build_rr(&mut rr, 0x5F0_0001, &[block]);
            let mut seen = Vec::new();
            rtcp::parse(&rr, |item| seen.push(item)).expect("the SFU's own RR parses");
            assert_eq!(
                seen,
                vec![Item::ReceiverReport {
                    ssrc: 0x5F0_0001,
                    blocks: 1
                }]
            );
        }
        let _ = (stats.received(), stats.cumulative_lost());
    }
    // What the SFU builds from arbitrary numbers parses back to them.
    let (ssrc, media, ntp) = (be32(rest, 0), be32(rest, 4), u64::from(be32(rest, 8)) << 16);
    let mut out = Vec::new();
    rtcp::build_sr(
        &mut out,
        ssrc,
        ntp,
        be32(rest, 12),
        be32(rest, 16),
        be32(rest, 20),
    );
    rtcp::build_pli(&mut out, ssrc, media);
    let mut seen = Vec::new();
    rtcp::parse(&out, |item| seen.push(item)).expect("the SFU's own SR + PLI parse");
    assert_eq!(
        seen,
        vec![
            Item::SenderReport {
                ssrc,
                ntp,
                rtp_ts: be32(rest, 12)
            },
            Item::Pli {
                sender: ssrc,
                media
            },
        ]
    );
});
