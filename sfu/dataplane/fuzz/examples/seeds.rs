//! Writes the seed corpora of the fuzz targets: `seeds <corpus dir>` makes `<dir>/<target>/seed-*`
//! (small, generated on each machine instead of kept in git). Valid packets of every kind the
//! parsers meet, so the fuzzer starts past the first length and version checks; for `srtp`,
//! packets sealed by the peer of the fixed keys, so unprotect succeeds on the unmutated seeds.

use std::fs;
use std::path::{Path, PathBuf};

use voxa_dataplane_fuzz::{
    push_record, selector, session, PROFILES, RECORD_LEN_MASK, RECORD_PROTECT, RECORD_RTCP,
};

fn rtp(seq: u16, ssrc: u32, extension: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![if extension { 0x90 } else { 0x80 }, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(960u32.wrapping_mul(seq as u32)).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    if extension {
        // One-byte header extensions (RFC 8285): mid "0" (id 1), audio level (id 3), padding.
        p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x02, 0x10, b'0', 0x30, 0x85, 0, 0, 0, 0]);
    }
    p.extend_from_slice(payload);
    p
}

fn rtcp_sr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0x00, 0x06];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xe8, 0x9f, 0x3c, 0x10, 0x80, 0, 0, 0]); // NTP timestamp
    p.extend_from_slice(&48_000u32.to_be_bytes());
    p.extend_from_slice(&100u32.to_be_bytes());
    p.extend_from_slice(&8_000u32.to_be_bytes());
    p
}

fn rtcp_rr_pli(ssrc: u32, media: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0x00, 0x01];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0x81, 206, 0x00, 0x02]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&media.to_be_bytes());
    p
}

fn stun_binding_request() -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    p.extend_from_slice(b"voxa-fuzz-tx");
    p.extend_from_slice(&[0x00, 0x06, 0x00, 0x03, b'a', b':', b'b', 0x00]); // USERNAME "a:b"
    p
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    fs::create_dir_all(dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), data).expect("seed file");
}

/// The seed does what it was made for: the session under test opens the six RTP packets, refuses
/// the replay, opens both RTCP packets (and the two protect records succeed).
fn check(input: &[u8], profile: u16, is_client: bool) {
    let mut s = session(profile, is_client);
    let (mut rest, mut out, mut results) = (&input[1..], Vec::new(), Vec::new());
    while rest.len() >= 2 {
        let header = u16::from_be_bytes([rest[0], rest[1]]);
        let len = (header & RECORD_LEN_MASK) as usize;
        let packet = &rest[2..2 + len];
        rest = &rest[2 + len..];
        results.push(
            match (header & RECORD_RTCP != 0, header & RECORD_PROTECT != 0) {
                (false, false) => s.unprotect_rtp(packet, &mut out).is_ok(),
                (true, false) => s.unprotect_rtcp(packet, &mut out).is_ok(),
                (false, true) => s.protect_rtp(packet, &mut out).is_ok(),
                (true, true) => s.protect_rtcp(packet, &mut out).is_ok(),
            },
        );
    }
    let expected = [
        true, true, true, true, false, true, true, true, true, true, true,
    ];
    assert_eq!(
        results, expected,
        "seed for profile {profile:04x}, client {is_client}"
    );
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).expect("usage: seeds <corpus dir>"));
    let plain = [
        ("rtp", rtp(1, 0x1234_5678, false, b"opus frame")),
        ("rtp-ext", rtp(2, 0x1234_5678, true, b"opus frame")),
        ("sr", rtcp_sr(0x1234_5678)),
        ("rr-pli", rtcp_rr_pli(0x1234_5678, 0x0bad_cafe)),
        ("stun", stun_binding_request()),
        (
            "dtls",
            vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
        ),
    ];

    let dir = root.join("classify");
    for (name, packet) in &plain {
        write(&dir, name, packet);
    }

    let dir = root.join("srtp");
    for (index, &profile) in PROFILES.iter().enumerate() {
        for is_client in [true, false] {
            let mut peer = session(profile, !is_client);
            let mut sealed = Vec::new();
            let mut input = vec![selector(index, is_client)];
            // In order across the sequence number rollover, then one out of order (3 before 2);
            // the last in-order packet is replayed below.
            let mut made = Vec::new();
            for seq in [65_534u16, 65_535, 0, 1, 3, 2] {
                let packet = rtp(seq, 0x1234_5678, seq % 2 == 0, b"opus frame");
                peer.protect_rtp(&packet, &mut sealed).expect("protect");
                made.push(sealed.clone());
            }
            for (i, packet) in made.iter().enumerate() {
                push_record(&mut input, false, false, packet);
                if i == 3 {
                    push_record(&mut input, false, false, packet); // the replay
                }
            }
            for rtcp in [rtcp_sr(0x1234_5678), rtcp_rr_pli(0x1234_5678, 0x0bad_cafe)] {
                peer.protect_rtcp(&rtcp, &mut sealed).expect("protect rtcp");
                push_record(&mut input, true, false, &sealed);
            }
            push_record(&mut input, false, true, &plain[1].1);
            push_record(&mut input, true, true, &plain[2].1);
            check(&input, profile, is_client);
            let role = if is_client { "client" } else { "server" };
            write(&dir, &format!("{profile:04x}-{role}"), &input);
        }
    }
}
