//! SRTP/SRTCP sessions keyed from DTLS-SRTP (RFC 5764), on the pure-Rust `rtc-srtp` crate.
//!
//! aiortc runs the DTLS handshake; Python exports the keying material (the `EXTRACTOR-dtls_srtp`
//! label) and hands it here with the negotiated profile and the SFU's DTLS role. One `Session` holds
//! both directions of one peer: inbound with a replay window, outbound without.

use bytes::Bytes;
use rtc_rtp::header::{Extension, Header as WireHeader};
use rtc_srtp::config::Config;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

/// The replay window (packets) of the inbound contexts, libsrtp's default.
pub const REPLAY_WINDOW: usize = 128;

/// Why a session could not be made or a packet not processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrtpError {
    /// The DTLS-SRTP profile id is not one this data plane supports.
    UnknownProfile(u16),
    /// The keying material does not have the length the profile needs.
    KeyLength { expected: usize, got: usize },
    /// Authentication failed, a replay, a packet too short: the packet is dropped.
    Rejected,
    /// The crypto provider or the context could not be built.
    Setup(String),
}

impl std::fmt::Display for SrtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SrtpError::UnknownProfile(p) => {
                write!(f, "unsupported SRTP protection profile 0x{p:04x}")
            }
            SrtpError::KeyLength { expected, got } => {
                write!(
                    f,
                    "keying material must be {expected} bytes for this profile, got {got}"
                )
            }
            SrtpError::Rejected => write!(f, "packet rejected (authentication, replay or length)"),
            SrtpError::Setup(m) => write!(f, "SRTP setup failed: {m}"),
        }
    }
}

impl std::error::Error for SrtpError {}

/// The DTLS-SRTP protection profile for an IANA id (RFC 5764 §4.1.2, RFC 7714).
pub fn profile_from_id(id: u16) -> Result<ProtectionProfile, SrtpError> {
    Ok(match id {
        0x0001 => ProtectionProfile::Aes128CmHmacSha1_80,
        0x0002 => ProtectionProfile::Aes128CmHmacSha1_32,
        0x0007 => ProtectionProfile::AeadAes128Gcm,
        0x0008 => ProtectionProfile::AeadAes256Gcm,
        other => return Err(SrtpError::UnknownProfile(other)),
    })
}

/// Bytes of DTLS exporter output the profile needs (two keys and two salts).
pub fn keying_material_len(profile_id: u16) -> Result<usize, SrtpError> {
    let profile = profile_from_id(profile_id)?;
    Ok(2 * (profile.key_len() + profile.salt_len()))
}

/// Zero bytes standing in for an extension block's elements (only their length matters).
static BLOCK: [u8; 2048] = [0; 2048];

/// Both directions of one peer's SRTP.
///
/// The RTP header is parsed by this crate (`rtp::parse`, its length as on the wire, as libsrtp
/// takes it) and handed to rtc-srtp as a reused header whose only extension element spans the
/// whole block: rtc-srtp then encrypts from the right offset. (Left to parse the header itself it
/// takes rtc-rtp's re-marshalled size, which differs from the wire for a one-byte element that
/// overruns its block or the reserved id 15: protect panicked and AES-CM unprotect mis-decrypted.)
pub struct Session {
    rx: Context,
    tx: Context,
    header: WireHeader,
    /// Bytes the protected form of a packet adds (auth tag; SRTCP also adds the 4-byte index).
    pub rtp_overhead: usize,
    pub rtcp_overhead: usize,
}

impl Session {
    /// A session from the DTLS exporter output; `is_client` is true when this side was the DTLS client.
    pub fn from_keying_material(
        profile_id: u16,
        material: &[u8],
        is_client: bool,
    ) -> Result<Self, SrtpError> {
        let profile = profile_from_id(profile_id)?;
        let expected = 2 * (profile.key_len() + profile.salt_len());
        if material.len() != expected {
            return Err(SrtpError::KeyLength {
                expected,
                got: material.len(),
            });
        }
        let mut config = Config {
            profile,
            ..Default::default()
        };
        config
            .set_session_keys_from_keying_material(material, is_client)
            .map_err(|e| SrtpError::Setup(e.to_string()))?;
        let keys = &config.keys;
        Self::from_keys(
            profile_id,
            &keys.local_master_key,
            &keys.local_master_salt,
            &keys.remote_master_key,
            &keys.remote_master_salt,
        )
    }

    /// A session from explicit master keys and salts (tests, the benchmark's ceiling forwarder).
    pub fn from_keys(
        profile_id: u16,
        local_key: &[u8],
        local_salt: &[u8],
        remote_key: &[u8],
        remote_salt: &[u8],
    ) -> Result<Self, SrtpError> {
        let profile = profile_from_id(profile_id)?;
        let provider =
            rtc_crypto::default_provider().map_err(|e| SrtpError::Setup(e.to_string()))?;
        let crypto = provider.crypto();
        let tx = Context::new(local_key, local_salt, profile, None, None, crypto)
            .map_err(|e| SrtpError::Setup(e.to_string()))?;
        let rx = Context::new(
            remote_key,
            remote_salt,
            profile,
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
            crypto,
        )
        .map_err(|e| SrtpError::Setup(e.to_string()))?;
        let tag = profile.rtp_auth_tag_len().max(profile.aead_auth_tag_len());
        let rtcp_tag = profile.rtcp_auth_tag_len().max(profile.aead_auth_tag_len());
        let header = WireHeader {
            version: 2,
            extensions: vec![Extension {
                id: 0,
                payload: Bytes::new(),
            }],
            ..Default::default()
        };
        Ok(Session {
            rx,
            tx,
            header,
            rtp_overhead: tag,
            rtcp_overhead: rtcp_tag + 4,
        })
    }

    /// Describe `packet`'s header (as on the wire) to rtc-srtp, without allocating.
    #[inline]
    fn describe(&mut self, packet: &[u8]) -> Result<(), SrtpError> {
        let h = crate::rtp::parse_header_only(packet).map_err(|_| SrtpError::Rejected)?;
        let w = &mut self.header;
        w.sequence_number = h.seq;
        w.ssrc = h.ssrc;
        w.timestamp = h.timestamp;
        w.payload_type = h.payload_type;
        w.marker = h.marker;
        w.csrc.clear();
        w.csrc.resize((h.csrc_end - 12) / 4, 0);
        w.extension = h.payload_start != h.csrc_end;
        // A profile that is neither one- nor two-byte: rtc-rtp counts the element's bytes as they are.
        w.extension_profile = 0;
        w.extensions_padding = 0;
        let elements = if w.extension {
            h.payload_start - h.csrc_end - 4
        } else {
            0
        };
        if elements > BLOCK.len() {
            return Err(SrtpError::Rejected);
        }
        w.extensions[0].payload = Bytes::from_static(&BLOCK[..elements]);
        Ok(())
    }

    /// Decrypt and authenticate one SRTP packet into `out` (cleared first).
    #[inline]
    pub fn unprotect_rtp(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        self.describe(packet)?;
        let plain = self
            .rx
            .decrypt_rtp_with_header(packet, &self.header)
            .map_err(|_| SrtpError::Rejected)?;
        out.clear();
        out.extend_from_slice(&plain);
        Ok(())
    }

    /// Encrypt one RTP packet into `out` (cleared first).
    #[inline]
    pub fn protect_rtp(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        self.describe(packet)?;
        let sealed = self
            .tx
            .encrypt_rtp_with_header(packet, &self.header)
            .map_err(|_| SrtpError::Rejected)?;
        out.clear();
        out.extend_from_slice(&sealed);
        Ok(())
    }

    /// Decrypt and authenticate one SRTCP compound packet into `out`.
    pub fn unprotect_rtcp(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let plain = self
            .rx
            .decrypt_rtcp(packet)
            .map_err(|_| SrtpError::Rejected)?;
        out.clear();
        out.extend_from_slice(&plain);
        Ok(())
    }

    /// Encrypt one RTCP compound packet into `out`.
    pub fn protect_rtcp(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let sealed = self
            .tx
            .encrypt_rtcp(packet)
            .map_err(|_| SrtpError::Rejected)?;
        out.clear();
        out.extend_from_slice(&sealed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(profile: u16) -> (Session, Session) {
        let len = keying_material_len(profile).unwrap();
        let material: Vec<u8> = (0..len as u8).collect();
        let client = Session::from_keying_material(profile, &material, true).unwrap();
        let server = Session::from_keying_material(profile, &material, false).unwrap();
        (client, server)
    }

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&960u32.wrapping_mul(seq as u32).to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn round_trip_every_profile_both_ways() {
        for profile in [1u16, 2, 7, 8] {
            let (mut a, mut b) = pair(profile);
            let (mut sealed, mut opened) = (Vec::new(), Vec::new());
            for seq in [1u16, 2, 3] {
                let packet = rtp(seq, b"hello opus");
                a.protect_rtp(&packet, &mut sealed).unwrap();
                assert_eq!(
                    sealed.len(),
                    packet.len() + a.rtp_overhead,
                    "profile {profile}"
                );
                b.unprotect_rtp(&sealed, &mut opened).unwrap();
                assert_eq!(opened, packet);
                b.protect_rtp(&packet, &mut sealed).unwrap();
                a.unprotect_rtp(&sealed, &mut opened).unwrap();
                assert_eq!(opened, packet);
            }
            let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
            a.protect_rtcp(&rr, &mut sealed).unwrap();
            b.unprotect_rtcp(&sealed, &mut opened).unwrap();
            assert_eq!(opened, rr);
        }
    }

    #[test]
    fn replays_and_forgeries_are_rejected() {
        let (mut a, mut b) = pair(1);
        let (mut sealed, mut opened) = (Vec::new(), Vec::new());
        a.protect_rtp(&rtp(7, b"x"), &mut sealed).unwrap();
        b.unprotect_rtp(&sealed, &mut opened).unwrap();
        assert_eq!(
            b.unprotect_rtp(&sealed, &mut opened),
            Err(SrtpError::Rejected)
        );
        a.protect_rtp(&rtp(8, b"x"), &mut sealed).unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(
            b.unprotect_rtp(&sealed, &mut opened),
            Err(SrtpError::Rejected)
        );
        assert_eq!(
            b.unprotect_rtp(&[0x80, 111, 0], &mut opened),
            Err(SrtpError::Rejected)
        );
    }

    #[test]
    fn sequence_rollover_keeps_decrypting() {
        let (mut a, mut b) = pair(1);
        let (mut sealed, mut opened) = (Vec::new(), Vec::new());
        for i in 0..200u32 {
            let seq = (65_500u32 + i) as u16;
            let packet = rtp(seq, b"roll");
            a.protect_rtp(&packet, &mut sealed).unwrap();
            b.unprotect_rtp(&sealed, &mut opened).unwrap();
            assert_eq!(opened, packet);
        }
    }

    #[test]
    fn overrunning_elements_and_the_reserved_id_seal_and_open_at_the_wire_offset() {
        let (mut a, mut b) = pair(1);
        let (mut sealed, mut opened) = (Vec::new(), Vec::new());
        for (seq, block) in [(9u8, [0x13u8, 0, 0, 0]), (10, [0xF0, 0x11, 0x22, 0x33])] {
            let mut p = vec![0x90, 111, 0, seq, 0, 0, 0, 1, 0, 0, 0, 5, 0xBE, 0xDE, 0, 1];
            p.extend_from_slice(&block);
            p.extend_from_slice(b"payload bytes");
            a.protect_rtp(&p, &mut sealed).unwrap();
            assert_eq!(&sealed[..20], &p[..20], "the header stays in the clear");
            assert_ne!(&sealed[20..33], b"payload bytes");
            b.unprotect_rtp(&sealed, &mut opened).unwrap();
            assert_eq!(opened, p);
        }
    }

    #[test]
    fn bad_setup_is_an_error() {
        assert_eq!(
            Session::from_keying_material(0x99, &[0; 60], true).err(),
            Some(SrtpError::UnknownProfile(0x99))
        );
        assert!(matches!(
            Session::from_keying_material(1, &[0; 10], true),
            Err(SrtpError::KeyLength { .. })
        ));
    }
}
