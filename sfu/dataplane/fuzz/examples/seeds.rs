//! Writes the seed corpora of the fuzz targets: `seeds <corpus dir>` makes `<dir>/<target>/seed-*`
//! (small, generated on each machine instead of kept in git). Valid packets of every kind the
//! parsers meet, so the fuzzer starts past the first length and version checks; for `srtp`,
//! packets sealed by the peer of the fixed keys, so unprotect succeeds on the unmutated seeds.

use std::fs;
use std::path::{Path, PathBuf};

use voxa_dataplane::remb;
use voxa_dataplane::stun;
use voxa_dataplane::twcc::FeedbackBuilder;
use voxa_dataplane_fuzz::{
    push_record, selector, session, AUDIO_SSRC, CONSUMER_SSRCS, PROFILES, RECORD_LEN_MASK,
    RECORD_PROTECT, RECORD_RTCP, VIDEO_SSRC,
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

fn rtcp_feedback(sender: u32, media: u32) -> Vec<Vec<u8>> {
    let word = |v: u32| v.to_be_bytes();
    let mut nack = vec![0x81, 205, 0, 3];
    nack.extend_from_slice(&word(sender));
    nack.extend_from_slice(&word(media));
    nack.extend_from_slice(&[0x00, 0x05, 0b0000_0000, 0b0000_0101]); // pid 5, blp: 6 and 8
    let mut fir = vec![0x84, 206, 0, 4];
    fir.extend_from_slice(&word(sender));
    fir.extend_from_slice(&word(0));
    fir.extend_from_slice(&word(media));
    fir.extend_from_slice(&[1, 0, 0, 0]);
    let mut remb = vec![0x8f, 206, 0, 5];
    remb.extend_from_slice(&word(sender));
    remb.extend_from_slice(&word(0));
    remb.extend_from_slice(b"REMB");
    remb.extend_from_slice(&[1, 0x0b, 0x72, 0x40]); // 1 SSRC, exp 2, mantissa 0x37240
    remb.extend_from_slice(&word(media));
    let mut rr_block = vec![0x81, 201, 0, 7];
    rr_block.extend_from_slice(&word(sender));
    rr_block.extend_from_slice(&word(media));
    rr_block.extend_from_slice(&[
        0x01, 0, 0, 2, 0, 0, 0x10, 0, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    let mut bye = vec![0x81, 203, 0, 1];
    bye.extend_from_slice(&word(sender));
    let mut compound = rtcp_rr_pli(sender, media);
    compound.extend_from_slice(&bye);
    vec![nack, fir, remb, rr_block, compound]
}

fn vp8_keyframe(seq: u16) -> Vec<u8> {
    let mut p = rtp(
        seq,
        VIDEO_SSRC,
        true,
        &[0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01],
    );
    p[1] = 96 | 0x80;
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

    let dir = root.join("stun");
    write(&dir, "request", &plain[4].1);
    let mut request = Vec::new();
    stun::build_binding_request(&mut request, &[7; 12], b"sfu1:peer", b"fuzz-password", true);
    write(&dir, "signed", &request);
    let mut built = vec![7u8; 12];
    built.push(9);
    built.extend_from_slice(b"sfu1:peerpassword");
    write(&dir, "build-input", &built);

    let dir = root.join("rtp");
    for ext in 0..4u8 {
        let mut input = vec![ext];
        for seq in [65_534u16, 65_535, 0, 2, 1] {
            push_record(
                &mut input,
                false,
                false,
                &rtp(seq, 111, seq % 2 == 0, b"opus frame"),
            );
        }
        let mut padded = rtp(3, 111, false, b"opus\0\0\x03");
        padded[0] |= 0x20;
        push_record(&mut input, false, false, &padded);
        let mut csrc = rtp(4, 111, false, b"mixed");
        csrc[0] |= 0x02;
        csrc.splice(12..12, [0xAA; 8]);
        push_record(&mut input, false, true, &csrc);
        push_record(&mut input, true, false, &vp8_keyframe(9));
        write(&dir, &format!("ext{ext}"), &input);
    }

    let dir = root.join("rtcp");
    let mut input = vec![3u8];
    push_record(
        &mut input,
        false,
        false,
        &rtp(1, 111, false, b"\0\0\0\0\0\0\0\0"),
    );
    push_record(&mut input, false, true, &rtp(2, 111, false, b"opus"));
    push_record(&mut input, true, false, &rtcp_sr(111));
    push_record(&mut input, true, true, &rtcp_rr_pli(1, 111));
    for packet in rtcp_feedback(0x5EED, 111) {
        push_record(&mut input, false, false, &packet);
    }
    write(&dir, "mixed", &input);

    // worker: audio with extensions across a rollover, a VP8 keyframe, the subscriber's feedback on
    // both consumers, the publisher's sender report, a tick, STUN from the subscriber.
    let dir = root.join("worker");
    for (index, _) in PROFILES.iter().enumerate() {
        for publisher_rtcp in [false, true] {
            let mut input = vec![index as u8 | if publisher_rtcp { 4 } else { 0 }];
            for seq in [65_534u16, 65_535, 0, 1] {
                push_record(
                    &mut input,
                    false,
                    true,
                    &rtp(seq, AUDIO_SSRC, true, b"opus frame"),
                );
            }
            push_record(&mut input, false, true, &vp8_keyframe(100));
            push_record(&mut input, false, true, &vp8_keyframe(101));
            for media in [CONSUMER_SSRCS[0], CONSUMER_SSRCS[1]] {
                for packet in rtcp_feedback(0x5EED, media) {
                    push_record(&mut input, true, false, &packet);
                }
            }
            push_record(&mut input, true, false, &rtcp_sr(AUDIO_SSRC));
            push_record(&mut input, true, true, &[100]); // tick 1 s later
            push_record(&mut input, true, true, &plain[4].1);
            push_record(&mut input, false, false, &plain[5].1); // DTLS from the publisher
            write(&dir, &format!("{index}-{publisher_rtcp}"), &input);
        }
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

    twcc_seeds(&root.join("twcc"));
}

/// `twcc`: 40 packets sent across the sequence number wrap, their feedback (some lost, one large
/// delta, so run and both vector chunks appear), a REMB, and a packet list for the builder.
fn twcc_seeds(dir: &Path) {
    let mut input = vec![25u8];
    let mut sent = Vec::new();
    for i in 0..40u16 {
        sent.extend_from_slice(&65_520u16.wrapping_add(i).to_be_bytes());
        sent.push(150);
    }
    push_record(&mut input, false, true, &sent);
    let mut builder = FeedbackBuilder::new(65_520, 0);
    for i in 0..40i64 {
        let recv = match i {
            5 | 17 | 18 => None,
            30 => Some(5_000_000 + i * 10_000 + 90_000),
            _ => Some(5_000_000 + i * 10_000),
        };
        builder.push(recv);
    }
    let mut fci = Vec::new();
    builder.build(&mut fci);
    push_record(&mut input, false, false, &fci);
    let mut remb_fci = Vec::new();
    remb::build_remb(&mut remb_fci, 750_000, &[0x1234_5678]);
    push_record(&mut input, true, false, &remb_fci);
    push_record(
        &mut input,
        true,
        true,
        &[0, 1, 40, 0x80, 20, 200, 33, 0x81, 32],
    );
    write(dir, "session", &input);
}
