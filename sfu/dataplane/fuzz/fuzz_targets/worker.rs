//! The worker's whole per-datagram path (`Worker::handle` and `tick`): classification, ICE-lite,
//! SRTP, RTP routing and rewriting, RTCP feedback and reports, on a fixed room of two connected
//! peers (`worker_room` in src/lib.rs). Records (src/lib.rs) are datagrams: raw from the publisher
//! (flags 0), RTP sealed with the publisher's keys (1), so that the fuzzer's packets get past
//! authentication into parsing and forwarding, RTCP sealed with the subscriber's keys (2, or the
//! publisher's with selector bit 2), or a clock step and then raw from the subscriber (3).
//! Nothing panics, and everything the worker sends is STUN, RTP or RTCP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane::classify::{classify, Kind};
use voxa_dataplane::worker::Outbox;
use voxa_dataplane_fuzz::{records, worker_room, PROFILES};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut out = Outbox::new();
    let mut room = worker_room(PROFILES[(selector & 3) as usize], &mut out);
    let mut sealed = Vec::with_capacity(1500);
    let mut now = 0i64;
    for (flags, record) in records(rest) {
        now += 20;
        out.clear();
        match flags {
            0 => room.worker.handle(room.publisher, record, now, &mut out),
            1 => {
                if room.publisher_srtp.protect_rtp(record, &mut sealed).is_ok() {
                    room.worker.handle(room.publisher, &sealed, now, &mut out);
                }
            }
            2 => {
                let (from, srtp) = if selector & 4 == 0 {
                    (room.subscriber, &mut room.subscriber_srtp)
                } else {
                    (room.publisher, &mut room.publisher_srtp)
                };
                if srtp.protect_rtcp(record, &mut sealed).is_ok() {
                    room.worker.handle(from, &sealed, now, &mut out);
                }
            }
            _ => {
                now += 10 * i64::from(record.first().copied().unwrap_or(0));
                room.worker.tick(now, &mut out);
                if !record.is_empty() {
                    room.worker.handle(room.subscriber, record, now, &mut out);
                }
            }
        }
        for i in 0..out.len() {
            let (_, datagram) = out.get(i);
            assert!(
                matches!(classify(datagram), Kind::Stun | Kind::Rtp | Kind::Rtcp),
                "the worker sent something that is not STUN, RTP or RTCP"
            );
        }
        room.worker.take_events();
    }
});
