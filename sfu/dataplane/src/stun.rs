//! The ICE-lite side of STUN (RFC 8489, RFC 8445 §2.5): check a peer's binding request against its
//! ICE password and answer it, on the worker's one shared port.
//!
//! A lite agent never sends checks: it answers the full agent's, learns the peer's address from a
//! request that authenticates (USERNAME names the peer by the SFU's ufrag), and treats the stream of
//! requests as consent (RFC 7675).

use std::net::SocketAddr;

use ring::hmac;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_INDICATION: u16 = 0x0011;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Why a STUN message is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    Malformed,
    NotARequest,
    Indication,
    NoUsername,
    NoIntegrity,
    BadIntegrity,
    BadFingerprint,
}

impl std::fmt::Display for StunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StunError::Malformed => "malformed STUN message",
            StunError::NotARequest => "not a binding request",
            StunError::Indication => "binding indication (keepalive)",
            StunError::NoUsername => "binding request without USERNAME",
            StunError::NoIntegrity => "binding request without MESSAGE-INTEGRITY",
            StunError::BadIntegrity => "MESSAGE-INTEGRITY does not match the ICE password",
            StunError::BadFingerprint => "FINGERPRINT does not match",
        })
    }
}

/// A binding request's parts the lite agent needs: offsets into the message it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    pub transaction_id: [u8; 12],
    username: (usize, usize),
    /// Offset of the MESSAGE-INTEGRITY attribute header.
    integrity_at: usize,
    pub use_candidate: bool,
}

impl BindingRequest {
    /// The whole USERNAME ("<SFU ufrag>:<peer ufrag>").
    pub fn username<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.username.0..self.username.1]
    }

    /// The SFU's ufrag: USERNAME up to the colon; it names the peer the request is for.
    pub fn local_ufrag<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let u = self.username(data);
        match u.iter().position(|&b| b == b':') {
            Some(i) => &u[..i],
            None => u,
        }
    }

    /// Check MESSAGE-INTEGRITY (HMAC-SHA1 keyed by the ICE password, RFC 8489 §14.5).
    pub fn verify(&self, data: &[u8], password: &[u8]) -> Result<(), StunError> {
        let at = self.integrity_at;
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password);
        let mut ctx = hmac::Context::with_key(&key);
        // The length field as if the message ended with MESSAGE-INTEGRITY.
        let len = (at + 24 - 20) as u16;
        ctx.update(&data[0..2]);
        ctx.update(&len.to_be_bytes());
        ctx.update(&data[4..at]);
        let tag = ctx.sign();
        let diff = tag
            .as_ref()
            .iter()
            .zip(&data[at + 4..at + 24])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(StunError::BadIntegrity)
        }
    }
}

#[inline]
fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

/// Parse a binding request (and check its FINGERPRINT when present); integrity is `verify`'s job.
pub fn parse_binding_request(data: &[u8]) -> Result<BindingRequest, StunError> {
    if data.len() < 20 || data[0] & 0xC0 != 0 {
        return Err(StunError::Malformed);
    }
    let msg_type = be16(data, 0);
    let len = be16(data, 2) as usize;
    if u32::from_be_bytes([data[4], data[5], data[6], data[7]]) != MAGIC_COOKIE
        || !len.is_multiple_of(4)
        || 20 + len != data.len()
    {
        return Err(StunError::Malformed);
    }
    if msg_type == BINDING_INDICATION {
        return Err(StunError::Indication);
    }
    if msg_type != BINDING_REQUEST {
        return Err(StunError::NotARequest);
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&data[8..20]);
    let (mut username, mut integrity_at, mut use_candidate) = (None, None, false);
    let mut i = 20;
    while i < data.len() {
        if i + 4 > data.len() {
            return Err(StunError::Malformed);
        }
        let attr = be16(data, i);
        let alen = be16(data, i + 2) as usize;
        let vstart = i + 4;
        let vend = vstart + alen;
        if vend > data.len() {
            return Err(StunError::Malformed);
        }
        match attr {
            ATTR_USERNAME if integrity_at.is_none() => username = Some((vstart, vend)),
            ATTR_USE_CANDIDATE if integrity_at.is_none() => use_candidate = true,
            ATTR_MESSAGE_INTEGRITY if integrity_at.is_none() => {
                if alen != 20 {
                    return Err(StunError::Malformed);
                }
                integrity_at = Some(i);
            }
            ATTR_FINGERPRINT => {
                if alen != 4 || vend != data.len() {
                    return Err(StunError::Malformed);
                }
                let mut crc = crc32fast::Hasher::new();
                crc.update(&data[..i]);
                let want = crc.finalize() ^ FINGERPRINT_XOR;
                if u32::from_be_bytes([
                    data[vstart],
                    data[vstart + 1],
                    data[vstart + 2],
                    data[vstart + 3],
                ]) != want
                {
                    return Err(StunError::BadFingerprint);
                }
            }
            _ => {}
        }
        i = vstart + alen.div_ceil(4) * 4;
    }
    let username = username.ok_or(StunError::NoUsername)?;
    let integrity_at = integrity_at.ok_or(StunError::NoIntegrity)?;
    Ok(BindingRequest {
        transaction_id,
        username,
        integrity_at,
        use_candidate,
    })
}

/// Write the success response to a binding request from `from` into `out`, signed with `password`.
pub fn build_binding_success(
    out: &mut Vec<u8>,
    transaction_id: &[u8; 12],
    from: SocketAddr,
    password: &[u8],
) {
    out.clear();
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction_id);
    // XOR-MAPPED-ADDRESS
    let port = from.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match from {
        SocketAddr::V4(a) => {
            out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
            out.extend_from_slice(&8u16.to_be_bytes());
            out.extend_from_slice(&[0, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            let ip = u32::from(*a.ip()) ^ MAGIC_COOKIE;
            out.extend_from_slice(&ip.to_be_bytes());
        }
        SocketAddr::V6(a) => {
            out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
            out.extend_from_slice(&20u16.to_be_bytes());
            out.extend_from_slice(&[0, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(transaction_id);
            for (b, m) in a.ip().octets().iter().zip(mask) {
                out.push(b ^ m);
            }
        }
    }
    sign(out, password);
}

/// Append MESSAGE-INTEGRITY (keyed by `password`) and FINGERPRINT, each over the message with its
/// length field covering that attribute (RFC 8489 §14.5, §14.7).
fn sign(out: &mut Vec<u8>, password: &[u8]) {
    let len = (out.len() - 20 + 24) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password);
    let tag = hmac::sign(&key, out);
    out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    out.extend_from_slice(&20u16.to_be_bytes());
    out.extend_from_slice(tag.as_ref());
    let len = (out.len() - 20 + 8) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Build a binding request as a full agent would (tests, the benchmark's ceiling load).
pub fn build_binding_request(
    out: &mut Vec<u8>,
    transaction_id: &[u8; 12],
    username: &[u8],
    password: &[u8],
    use_candidate: bool,
) {
    out.clear();
    out.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction_id);
    out.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    out.extend_from_slice(&(username.len() as u16).to_be_bytes());
    out.extend_from_slice(username);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    if use_candidate {
        out.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    sign(out, password);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_is_verified_and_answered() {
        let mut req = Vec::new();
        build_binding_request(
            &mut req,
            &[7; 12],
            b"sfuU:peer",
            b"sfu-password-0123456789",
            true,
        );
        let parsed = parse_binding_request(&req).unwrap();
        assert_eq!(parsed.local_ufrag(&req), b"sfuU");
        assert!(parsed.use_candidate);
        assert_eq!(parsed.verify(&req, b"sfu-password-0123456789"), Ok(()));
        assert_eq!(parsed.verify(&req, b"wrong"), Err(StunError::BadIntegrity));
        let mut resp = Vec::new();
        build_binding_success(
            &mut resp,
            &parsed.transaction_id,
            "127.0.0.1:5000".parse().unwrap(),
            b"sfu-password-0123456789",
        );
        assert_eq!(be16(&resp, 0), BINDING_SUCCESS);
        assert_eq!(be16(&resp, 2) as usize + 20, resp.len());
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let mut req = Vec::new();
        build_binding_request(&mut req, &[1; 12], b"a:b", b"pw", false);
        let mut flipped = req.clone();
        flipped[25] ^= 1;
        assert_eq!(
            parse_binding_request(&flipped),
            Err(StunError::BadFingerprint)
        );
        assert_eq!(parse_binding_request(&req[..19]), Err(StunError::Malformed));
        let mut short = req.clone();
        short.truncate(req.len() - 4);
        assert_eq!(parse_binding_request(&short), Err(StunError::Malformed));
        let mut ind = req.clone();
        ind[1] = 0x11;
        assert_eq!(parse_binding_request(&ind), Err(StunError::Indication));
    }
}
