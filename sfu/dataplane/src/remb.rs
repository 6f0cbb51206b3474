//! Receiver estimated maximum bitrate (draft-alvestrand-rmcat-remb-03): the application layer
//! feedback (RTCP PSFB, FMT 15) a receiver without transport-cc sends with the bitrate it thinks its
//! downlink takes. The send-side estimator (`bwe`) falls back to it when no transport-cc feedback
//! arrives.
//!
//! The FCI, after the feedback common header (whose media SSRC is 0):
//!
//! ```text
//!  'R' 'E' 'M' 'B' | SSRC count (8) | exponent (6) | mantissa (18) | SSRC (32) × count
//! ```
//!
//! The bitrate is `mantissa << exponent` bits per second.

/// Bytes before the SSRC list.
const FIXED_LEN: usize = 8;

/// The bitrate of a REMB FCI in bits per second; `None` when it is not a REMB (no "REMB"
/// identifier) or its SSRC list runs past the end. An exponent that overflows 64 bits saturates.
pub fn parse_remb(fci: &[u8]) -> Option<u64> {
    if fci.len() < FIXED_LEN || &fci[..4] != b"REMB" {
        return None;
    }
    let ssrcs = fci[4] as usize;
    if fci.len() < FIXED_LEN + 4 * ssrcs {
        return None;
    }
    let exponent = u32::from(fci[5] >> 2);
    let mantissa = (u64::from(fci[5] & 3) << 16) | (u64::from(fci[6]) << 8) | u64::from(fci[7]);
    if mantissa == 0 {
        return Some(0);
    }
    // The mantissa has at most 18 significant bits: it fits while its top bit stays below 64.
    if exponent > mantissa.leading_zeros() {
        return Some(u64::MAX);
    }
    Some(mantissa << exponent)
}

/// Append a REMB FCI for `bps` (rounded down to 18 significant bits) naming `ssrcs` (at most 255
/// are written) to `out`: for tests and simulations.
pub fn build_remb(out: &mut Vec<u8>, bps: u64, ssrcs: &[u32]) {
    let ssrcs = &ssrcs[..ssrcs.len().min(255)];
    let mut exponent = 0u32;
    while (bps >> exponent) >= 1 << 18 {
        exponent += 1;
    }
    let mantissa = (bps >> exponent) as u32;
    out.extend_from_slice(b"REMB");
    out.push(ssrcs.len() as u8);
    out.extend_from_slice(&((exponent << 18 | mantissa).to_be_bytes())[1..]);
    for ssrc in ssrcs {
        out.extend_from_slice(&ssrc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_a_receiver_sends() {
        // 1 SSRC, exponent 2, mantissa 0x37240.
        let fci = [b'R', b'E', b'M', b'B', 1, 0x0b, 0x72, 0x40, 0, 0, 0, 111];
        assert_eq!(parse_remb(&fci), Some(0x37240 << 2));
        for bps in [0u64, 1, 300_000, 2_500_000, 123_456_789, 1 << 40] {
            let mut out = Vec::new();
            build_remb(&mut out, bps, &[1, 2]);
            assert_eq!(out.len(), 16);
            let got = parse_remb(&out).expect("parses");
            assert!(
                got <= bps && got as f64 >= bps as f64 * 0.9999,
                "{bps} -> {got}"
            );
        }
    }

    #[test]
    fn refuses_other_feedback_and_short_lists() {
        assert_eq!(parse_remb(b"REMB\x00\x00\x00"), None);
        assert_eq!(parse_remb(b"REMX\x00\x00\x00\x01"), None);
        assert_eq!(parse_remb(b"REMB\x02\x00\x00\x01\x00\x00\x00\x01"), None);
        assert_eq!(parse_remb(b"REMB\x00\x00\x00\x01"), Some(1));
        assert_eq!(parse_remb(&[]), None);
    }

    #[test]
    fn a_huge_exponent_saturates() {
        assert_eq!(parse_remb(b"REMB\x00\xFF\xFF\xFF"), Some(u64::MAX));
        // 2^17 (18 significant bits) << 46 is 2^63: still fits.
        assert_eq!(parse_remb(b"REMB\x00\xBA\x00\x00"), Some(1 << 63));
        assert_eq!(parse_remb(b"REMB\x00\xBE\x00\x00"), Some(u64::MAX));
    }
}
