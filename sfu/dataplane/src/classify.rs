//! Demultiplexing of one UDP port shared by STUN, DTLS, RTP and RTCP (RFC 7983, RFC 5761).
//!
//! Every datagram of a worker's single media port is classified by its first byte (and, for RTP
//! versus RTCP, the second): no parse happens before this, so the cost is two comparisons.

/// What a datagram is, as far as its first two bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First byte 0..=3: a STUN message (ICE connectivity checks and consent).
    Stun,
    /// First byte 20..=63: a DTLS record (the handshake; goes to aiortc's DTLS transport).
    Dtls,
    /// First byte 128..=191 and payload type outside 64..=95: SRTP.
    Rtp,
    /// First byte 128..=191 and second byte 192..=223 (RTCP packet types 192-223): SRTCP.
    Rtcp,
    /// Anything else (ZRTP, TURN channel data that reached the wrong place, garbage).
    Other,
}

/// Classify a datagram by RFC 7983's first-byte ranges; RTCP is told from RTP by RFC 5761 §4.
#[inline]
pub fn classify(data: &[u8]) -> Kind {
    let Some(&first) = data.first() else {
        return Kind::Other;
    };
    match first {
        0..=3 => Kind::Stun,
        20..=63 => Kind::Dtls,
        128..=191 => match data.get(1) {
            Some(&b) if (192..=223).contains(&b) => Kind::Rtcp,
            Some(_) if data.len() >= 12 => Kind::Rtp,
            _ => Kind::Other,
        },
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc7983() {
        assert_eq!(classify(&[0x00, 0x01, 0, 0]), Kind::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), Kind::Dtls);
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 111;
        assert_eq!(classify(&rtp), Kind::Rtp);
        rtp[1] = 0x80 | 96; // marker bit set, PT 96
        assert_eq!(classify(&rtp), Kind::Rtp);
        assert_eq!(classify(&[0x80, 200, 0, 6]), Kind::Rtcp);
        assert_eq!(classify(&[0x81, 206, 0, 2]), Kind::Rtcp);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&[0x80]), Kind::Other);
        assert_eq!(classify(&[0x80, 111, 0]), Kind::Other);
        assert_eq!(classify(&[64, 0, 0]), Kind::Other);
        assert_eq!(classify(&[255]), Kind::Other);
    }
}
