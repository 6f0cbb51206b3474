//! What the fuzz targets and the seed generator share: the fixed keys, the fixed worker set-up and
//! the layout of the inputs.
//!
//! Inputs of `srtp`, `rtp`, `rtcp` and `worker` are one selector byte, then records (`records`).
//! For `srtp`: The selector's bits 0-1 pick the profile
//! ([`PROFILES`]), bit 2 the DTLS role of the session under test. Each record is a big-endian u16
//! header (bit 15: RTCP instead of RTP, bit 14: protect instead of unprotect, bits 0-13: length)
//! followed by that many bytes of packet (fewer if the input ends first). One session sees every
//! record in order, so replay windows and rollover counters carry state across records.

use std::net::SocketAddr;

use rtc_shared::marshal::{MarshalSize, Unmarshal};
use voxa_dataplane::codecs::VideoCodec;
use voxa_dataplane::rtp::Extensions;
use voxa_dataplane::srtp::{keying_material_len, Session};
use voxa_dataplane::stun;
use voxa_dataplane::worker::{ConsumerParams, Outbox, ProducerParams, Worker};

/// The DTLS-SRTP profiles the data plane supports, by selector bits 0-1.
pub const PROFILES: [u16; 4] = [0x0001, 0x0002, 0x0007, 0x0008];

pub const RECORD_RTCP: u16 = 1 << 15;
pub const RECORD_PROTECT: u16 = 1 << 14;
pub const RECORD_LEN_MASK: u16 = (1 << 14) - 1;

/// The fixed exporter output every fuzzed session is keyed from.
pub fn keying_material(profile: u16) -> Vec<u8> {
    let len = keying_material_len(profile).expect("a supported profile");
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
        .collect()
}

/// The session of one side (`is_client`) of the fixed keys.
pub fn session(profile: u16, is_client: bool) -> Session {
    Session::from_keying_material(profile, &keying_material(profile), is_client)
        .expect("a session from fixed keys")
}

/// The selector byte for a profile index and role.
pub fn selector(profile_index: usize, is_client: bool) -> u8 {
    (profile_index as u8 & 3) | if is_client { 4 } else { 0 }
}

/// The records of an input after its selector byte: (the header's two flag bits, the bytes).
pub fn records(mut rest: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if rest.len() < 2 {
            return None;
        }
        let header = u16::from_be_bytes([rest[0], rest[1]]);
        let len = ((header & RECORD_LEN_MASK) as usize).min(rest.len() - 2);
        let record = &rest[2..2 + len];
        rest = &rest[2 + len..];
        Some((header >> 14, record))
    })
}

/// Append one record to an input.
pub fn push_record(input: &mut Vec<u8>, rtcp: bool, protect: bool, packet: &[u8]) {
    let len = packet.len().min(RECORD_LEN_MASK as usize);
    let mut header = len as u16;
    if rtcp {
        header |= RECORD_RTCP;
    }
    if protect {
        header |= RECORD_PROTECT;
    }
    input.extend_from_slice(&header.to_be_bytes());
    input.extend_from_slice(&packet[..len]);
}

/// The `worker` target's room: a worker with two connected peers, each with the SFU side of the
/// fixed keys. The publisher sends audio (SSRC 111, PT 111, mid "0", audio level id 3) and VP8
/// simulcast video (mid "1", PT 96, RTX PT 97): layer "q" on SSRC 222 (RTX 224), layer "h" learnt
/// from the rid extension (id 4; repaired rid id 5), to the subscriber, which sends audio (SSRC 333)
/// back. The video consumer writes transport-wide sequence numbers (id 6) and answers NACKs with
/// RTX (PT 99 for 98).
pub struct WorkerRoom {
    pub worker: Worker,
    pub publisher: SocketAddr,
    pub subscriber: SocketAddr,
    /// The peers' own sessions (the DTLS server side of the fixed keys).
    pub publisher_srtp: Session,
    pub subscriber_srtp: Session,
}

pub const AUDIO_SSRC: u32 = 111;
pub const VIDEO_SSRC: u32 = 222;
pub const BACK_SSRC: u32 = 333;
/// The consumers' SSRCs (what the peers' feedback names), in the order of the producers above.
pub const CONSUMER_SSRCS: [u32; 3] = [0xC0C0_0111, 0xC0C0_0222, 0xC0C0_0333];
/// The video consumer's RTX SSRC.
pub const CONSUMER_RTX_SSRC: u32 = 0xC0C0_0224;

pub fn worker_room(profile: u16, out: &mut Outbox) -> WorkerRoom {
    let mut worker = Worker::new();
    let mut connect = |n: u16| {
        let ufrag = format!("sfu{n}").into_bytes();
        let pwd = format!("password-of-peer-{n}").into_bytes();
        let id = worker.add_peer(&ufrag, &pwd, 0).expect("peer");
        let addr: SocketAddr = format!("127.0.0.1:{}", 5000 + n).parse().expect("address");
        let mut request = Vec::new();
        let mut username = ufrag;
        username.extend_from_slice(b":peer");
        stun::build_binding_request(&mut request, &[n as u8; 12], &username, &pwd, true);
        worker.handle(addr, &request, 0, out);
        worker.set_srtp(id, session(profile, true)).expect("srtp");
        (id, addr)
    };
    let (a, publisher) = connect(1);
    let (b, subscriber) = connect(2);
    out.clear();
    worker.take_events();
    let params = |video: bool, ssrc: u32, mid: &[u8]| ProducerParams {
        kind_video: video,
        clock_rate: if video { 90_000 } else { 48_000 },
        ssrcs: if video { vec![] } else { vec![ssrc] },
        mid: mid.to_vec(),
        mid_id: 1,
        audio_level_id: if video { 0 } else { 3 },
        codec: video.then_some(VideoCodec::Vp8),
        layers: if video {
            vec![(b"q".to_vec(), ssrc, ssrc + 2), (b"h".to_vec(), 0, 0)]
        } else {
            vec![]
        },
        rid_id: if video { 4 } else { 0 },
        repaired_rid_id: if video { 5 } else { 0 },
        rtx_payload_types: if video { vec![(97, 96)] } else { vec![] },
        transport_cc_id: 0,
    };
    let ext = |mid: &[u8], level: bool| Extensions {
        mid: mid.to_vec(),
        mid_id: 1,
        abs_send_time_id: 2,
        audio_level_id: if level { 3 } else { 0 },
        transport_cc_id: if level { 0 } else { 6 },
    };
    for (k, (from, to, video, ssrc, mid, pts)) in [
        (a, b, false, AUDIO_SSRC, b"0", [(111u8, 109u8)]),
        (a, b, true, VIDEO_SSRC, b"1", [(96, 98)]),
        (b, a, false, BACK_SSRC, b"0", [(111, 111)]),
    ]
    .into_iter()
    .enumerate()
    {
        let producer = worker
            .add_producer(from, params(video, ssrc, mid))
            .expect("producer");
        let rtx = if video { CONSUMER_RTX_SSRC } else { 0 };
        let consumer = worker
            .add_consumer(producer, to, CONSUMER_SSRCS[k], rtx)
            .expect("consumer");
        let params = ConsumerParams {
            payload_types: pts.to_vec(),
            ext: ext(mid, !video),
            rtx_payload_types: if video { vec![(99, 98)] } else { vec![] },
        };
        worker
            .configure_consumer(consumer, params)
            .expect("configure");
        worker.set_consumer_ready(consumer, true, 0).expect("ready");
    }
    WorkerRoom {
        worker,
        publisher,
        subscriber,
        publisher_srtp: session(profile, false),
        subscriber_srtp: session(profile, false),
    }
}
