//! RTP parsing, header extensions, keyframe detection and the per-consumer rewriter on arbitrary
//! packets: nothing panics, every offset `parse` returns lies inside the packet, and what the
//! rewriter writes is RTP again with the consumer's SSRC, payload type, extensions and the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane::codecs::{h264_keyframe_start, vp8_keyframe_start};
use voxa_dataplane::rtp::{self, Extensions, Rewriter};
use voxa_dataplane_fuzz::records;

/// The consumer configurations, by selector bits 0-1: none, one-byte elements, two-byte elements
/// (an id above 14), a mid too long for the one-byte form; bit 2 adds a transport-wide sequence number.
fn extensions(selector: u8) -> Extensions {
    let (mid, mid_id, abs_send_time_id, audio_level_id) = match selector & 3 {
        0 => (Vec::new(), 0, 0, 0),
        1 => (b"0".to_vec(), 1, 2, 3),
        2 => (b"audio".to_vec(), 4, 20, 1),
        _ => (vec![b'm'; 40], 9, 0, 10),
    };
    Extensions {
        mid,
        mid_id,
        abs_send_time_id,
        audio_level_id,
        transport_cc_id: if selector & 4 != 0 { 5 } else { 0 },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ext = extensions(selector);
    let mut rewriter = Rewriter::new(0xC0C0_0001, 48_000, 0xFFF0, 0xFFFF_FF00).unwrap();
    rewriter
        .configure(&[(111, 109), (96, 98), (0, 127)], ext.clone())
        .unwrap();
    let mut out = Vec::with_capacity(1500);
    for (i, (flags, packet)) in records(rest).enumerate() {
        let Ok(h) = rtp::parse(packet) else {
            continue;
        };
        assert!(h.csrc_end <= h.ext_start && h.ext_start <= h.ext_end);
        assert!(h.ext_end <= h.payload_start && h.payload_start <= h.payload_end);
        assert!(h.payload_end <= packet.len());
        for id in [1u8, 2, 3, 4, 9, 10, 14, 15, 20, 255] {
            if let Some(value) = rtp::find_extension(packet, &h, id) {
                assert!(value.as_ptr() >= packet[h.ext_start..].as_ptr());
            }
        }
        let level = rtp::audio_level(packet, &h, 3);
        let payload = &packet[h.payload_start..h.payload_end];
        vp8_keyframe_start(payload);
        h264_keyframe_start(payload);
        // Record flags: bit 0 switches the source first, bit 1 jumps the clock by a second.
        if flags & 1 != 0 {
            rewriter.switch_source();
        }
        let now_ms = 20 * i as i64 + if flags & 2 != 0 { 1000 } else { 0 };
        let abs = rtp::abs_send_time(now_ms as u64 * 1_000_000);
        if !rewriter.rewrite(packet, &h, now_ms, abs, level, &mut out) {
            continue;
        }
        let o = rtp::parse(&out).expect("the rewriter writes RTP");
        assert_eq!(o.ssrc, 0xC0C0_0001);
        assert_eq!(&out[o.payload_start..], &packet[h.payload_start..]);
        if ext.mid_id != 0 {
            assert_eq!(
                rtp::find_extension(&out, &o, ext.mid_id),
                Some(&ext.mid[..])
            );
        }
        if let (Some(level), true) = (level, ext.audio_level_id != 0) {
            assert_eq!(rtp::audio_level(&out, &o, ext.audio_level_id), Some(level));
        }
    }
});
