//! SRTP/SRTCP on arbitrary bytes with fixed keys (input layout: src/lib.rs): unprotect and protect
//! never panic, and a packet that unprotects loses exactly the profile's overhead. Protect records
//! that rtc-srtp 0.21.1 is known to panic on are skipped (`protectable_rtp`, src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane_fuzz::{
    protectable_rtp, session, PROFILES, RECORD_LEN_MASK, RECORD_PROTECT, RECORD_RTCP,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let mut s = session(PROFILES[(selector & 3) as usize], selector & 4 != 0);
    let mut out = Vec::with_capacity(1500);
    while rest.len() >= 2 {
        let header = u16::from_be_bytes([rest[0], rest[1]]);
        let len = ((header & RECORD_LEN_MASK) as usize).min(rest.len() - 2);
        let packet = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let rtcp = header & RECORD_RTCP != 0;
        match (rtcp, header & RECORD_PROTECT != 0) {
            (false, true) => {
                if protectable_rtp(packet) {
                    let _ = s.protect_rtp(packet, &mut out);
                }
            }
            (true, true) => {
                let _ = s.protect_rtcp(packet, &mut out);
            }
            (false, false) => {
                if s.unprotect_rtp(packet, &mut out).is_ok() {
                    assert_eq!(out.len() + s.rtp_overhead, packet.len());
                }
            }
            (true, false) => {
                if s.unprotect_rtcp(packet, &mut out).is_ok() {
                    assert_eq!(out.len() + s.rtcp_overhead, packet.len());
                }
            }
        }
    }
});
