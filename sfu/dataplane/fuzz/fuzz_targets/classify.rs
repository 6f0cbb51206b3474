//! RFC 7983 demultiplexing of arbitrary datagrams: never panics, and agrees with the first-byte
//! ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane::classify::{classify, Kind};

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    match kind {
        Kind::Stun => assert!(data[0] <= 3),
        Kind::Dtls => assert!((20..=63).contains(&data[0])),
        Kind::Rtp => assert!((128..=191).contains(&data[0]) && data.len() >= 12),
        Kind::Rtcp => assert!((128..=191).contains(&data[0]) && (192..=223).contains(&data[1])),
        Kind::Other => {}
    }
});
