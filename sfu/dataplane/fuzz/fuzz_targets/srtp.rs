//! SRTP/SRTCP on arbitrary bytes with fixed keys (input layout: src/lib.rs): unprotect and protect
//! never panic, and a packet that unprotects loses exactly the profile's overhead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane_fuzz::{records, session, PROFILES};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut s = session(PROFILES[(selector & 3) as usize], selector & 4 != 0);
    let mut out = Vec::with_capacity(1500);
    for (flags, packet) in records(rest) {
        // Flag bit 1 (header bit 15): RTCP; bit 0 (header bit 14): protect.
        match flags {
            1 => {
                let _ = s.protect_rtp(packet, &mut out);
            }
            3 => {
                let _ = s.protect_rtcp(packet, &mut out);
            }
            0 => {
                if s.unprotect_rtp(packet, &mut out).is_ok() {
                    assert_eq!(out.len() + s.rtp_overhead, packet.len());
                }
            }
            _ => {
                if s.unprotect_rtcp(packet, &mut out).is_ok() {
                    assert_eq!(out.len() + s.rtcp_overhead, packet.len());
                }
            }
        }
    }
});
