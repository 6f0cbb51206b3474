//! One worker's media state and its per-datagram logic, without sockets.
//!
//! `Worker::handle` takes one datagram of the worker's shared port and queues what to send in an
//! `Outbox`; `Worker::tick` does the timed work (RTCP reports, keyframe retries, consent). The I/O
//! loop (`io.rs`) drives both; tests drive them directly. The Python control plane creates and
//! changes peers, producers and consumers through the methods below; everything it needs to hear
//! comes back as `Event`s and counters, never per packet.
//!
//! Video producers have layers (simulcast, RFC 8853; one layer without it); each video consumer
//! forwards one layer and switches at a keyframe of the layer the per-subscriber allocation gives it
//! (see `allocate`, `dynacast`, and `layers.rs` for the pure parts).
//!
//! Ownership: a peer owns its producers (published tracks) and the consumers sending to it; a
//! producer lists its consumers. Removing a peer removes all of those in one place.

// FxHash, not SipHash: every lookup on the packet path is keyed by a peer's address or an SSRC, and
// entries are only inserted for authenticated peers (after their ICE check, or from their SDP), so
// an attacker cannot fill a map with colliding keys; SipHash was a visible share of the profile.
use rustc_hash::FxHashMap as HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::classify::{classify, Kind};
use crate::codecs::{vp8_keyframe_size, VideoCodec, Vp8Munger};
use crate::layers::{
    self, Arrival, Demand, RateMeter, SeqWindow, UplinkFeedback, DEFAULT_LAYER_BPS,
    UPGRADE_HEADROOM_PCT, UPGRADE_HOLD_MS, UPLINK_FEEDBACK_INTERVAL_MS,
};
use crate::probe::{Prober, Step, PROBE_MAX_PACKETS_PER_TICK, PROBE_PADDING_BYTES};
use crate::rtcp::{self, Item, KeyframeThrottle, PacketHistory, ReceiverStats};
use crate::rtp::{self, Extensions, Rewriter};
use crate::srtp::Session;
use crate::stun;

pub type PeerId = u32;
pub type ProducerId = u32;
pub type ConsumerId = u32;

/// How long a peer may go without an authenticated binding request before consent expires (RFC 7675).
pub const CONSENT_TIMEOUT_MS: i64 = 30_000;
/// Receiver/sender reports are sent this often.
pub const REPORT_INTERVAL_MS: i64 = 1_000;
/// NACK history per video consumer (a power of two).
pub const HISTORY: usize = 512;
/// Largest datagram accepted or built.
pub const MAX_DATAGRAM: usize = 1500;

/// What the control plane hears from the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first authenticated connectivity check of a peer: its address is known, DTLS can start.
    Connected { peer: PeerId, addr: SocketAddr },
    /// A DTLS record from a peer, for aiortc's DTLS transport of that peer.
    Dtls { peer: PeerId, data: Vec<u8> },
    /// No authenticated check for `CONSENT_TIMEOUT_MS`: the peer is gone.
    ConsentExpired { peer: PeerId },
    /// Dynacast: the simulcast layers some consumer wants changed (bit i: layer i).
    Layers { producer: ProducerId, mask: u8 },
    /// A video consumer switched (at a keyframe) to `layer`.
    Layer { consumer: ConsumerId, layer: u8 },
}

/// Errors of the typed control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    NotFound(&'static str, u32),
    Conflict(String),
    Invalid(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::NotFound(what, id) => write!(f, "no {what} {id}"),
            ApiError::Conflict(m) | ApiError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Worker-wide counters (datagrams that were not forwarded are counted, never logged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_datagrams: u64,
    pub tx_datagrams: u64,
    pub forwarded: u64,
    pub stun_answered: u64,
    pub stun_rejected: u64,
    pub srtp_errors: u64,
    pub bad_packets: u64,
    pub unknown_source: u64,
    pub unknown_ssrc: u64,
    pub oversized: u64,
    /// Packets of a layer seen before (a publisher's retransmission of one that arrived after all).
    pub duplicates: u64,
    /// Publisher retransmissions unwrapped, and those dropped (padding-only probes, unknown RTX PT).
    pub rtx_received: u64,
    pub rtx_dropped: u64,
    /// Sequence numbers NACKed to publishers.
    pub nacks_sent: u64,
    /// Transport-cc feedback the estimator refused.
    pub bad_feedback: u64,
    /// Bandwidth probe clusters started, those that raised the estimate, and their padding packets.
    pub probes: u64,
    pub probes_succeeded: u64,
    pub probe_packets: u64,
    /// Datagrams whose handling panicked (a bug; the datagram is dropped, the thread goes on).
    pub panics: u64,
}

/// Datagrams to send: reused buffers, so a steady state allocates nothing.
#[derive(Default)]
pub struct Outbox {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<SocketAddr>,
    len: usize,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cleared buffer for the next datagram to `addr`.
    pub(crate) fn next(&mut self, addr: SocketAddr) -> &mut Vec<u8> {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(MAX_DATAGRAM));
            self.addrs.push(addr);
        }
        self.addrs[self.len] = addr;
        let buf = &mut self.bufs[self.len];
        buf.clear();
        self.len += 1;
        buf
    }

    /// Drop the datagram `next` just handed out (it could not be completed).
    pub(crate) fn cancel(&mut self) {
        self.len -= 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> (&SocketAddr, &[u8]) {
        (&self.addrs[i], &self.bufs[i])
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub srtp_errors: u64,
}

/// The bandwidth estimator of one subscriber peer (the SFU→peer leg; docs/bwe.md).
type Bwe = crate::bwe::SendSideBwe;

/// A subscriber's estimate before any feedback, and its bounds (docs/bwe.md).
pub const INITIAL_BPS: u64 = 1_000_000;
pub const MIN_BPS: u64 = 100_000;
pub const MAX_BPS: u64 = 10_000_000;
/// Layers are allocated per subscriber this often.
pub const ALLOCATION_INTERVAL_MS: i64 = 100;
/// A layer without packets for this long is inactive (the publisher stopped it, or cannot send it):
/// consumers are not switched to it.
pub const LAYER_ACTIVE_MS: i64 = 2_000;
/// Dynacast: a layer nobody wants is reported unwanted only after this long (a consumer that is
/// replaced, or a bandwidth dip, does not make the publisher stop and restart an encoding).
pub const DYNACAST_OFF_DELAY_MS: i64 = 2_000;
/// Simulcast layers per producer at most.
pub const MAX_LAYERS: usize = 3;
/// Resolution assumed for the top layer until a VP8 keyframe tells.
pub const DEFAULT_FULL_SIZE: (u16, u16) = (1280, 720);
/// Keyframe requests per layer at most once per this interval.
pub const KEYFRAME_INTERVAL_MS: i64 = 1_000;

struct Peer {
    ufrag: Vec<u8>,
    pwd: Vec<u8>,
    addr: Option<SocketAddr>,
    last_check_ms: i64,
    created_ms: i64,
    srtp: Option<Session>,
    rtcp_ssrc: u32,
    producers: Vec<ProducerId>,
    by_ssrc: HashMap<u32, ProducerId>,
    /// Consumers sending to this peer, by their SSRC and their RTX SSRC (for its RTCP feedback).
    consumers: HashMap<u32, ConsumerId>,
    stats: PeerStats,
    /// The SFU→peer estimate, fed by transport-cc feedback (or REMB).
    bwe: Bwe,
    /// `set_peer_bandwidth`'s value (0: none).
    override_bps: u64,
    /// The next transport-wide sequence number of packets to this peer.
    twcc_seq: u16,
    /// Transport-cc on the peer's uplink (a producer negotiated it): what its feedback reports.
    uplink: Option<Box<UplinkFeedback>>,
    /// Bandwidth probing of the SFU→peer leg (docs/bwe.md, "Probing"): the prober, what the
    /// allocation last found the wanted layers need while the estimate capped them (0: nothing
    /// capped), and the video consumer whose RTX stream carries the padding (0: none can).
    prober: Prober,
    probe_want_bps: u64,
    probe_consumer: ConsumerId,
}

impl Peer {
    fn bandwidth(&self) -> (u64, &'static str) {
        if self.override_bps != 0 {
            (self.override_bps, "override")
        } else {
            (self.bwe.estimate_bps(), self.bwe.source())
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub keyframe_requests: u64,
}

/// The audio levels of one producer since the control plane last asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Levels {
    /// Sum of (127 - level) over the packets: louder is larger.
    pub loudness_sum: u32,
    pub packets: u32,
    pub voiced: u32,
}

/// One simulcast layer of a producer (a non-simulcast producer has one, index 0).
struct Layer {
    rid: Vec<u8>,
    /// 0 until known (from the SDP or learnt from the rid extension / the first packet).
    ssrc: u32,
    rtx_ssrc: u32,
    receiver: ReceiverStats,
    window: SeqWindow,
    rate: RateMeter,
    /// Bitrate when the layer was last active, for the allocation while it is stopped.
    last_bps: u64,
    last_packet_ms: Option<i64>,
    /// From the layer's VP8 keyframes (0: not seen).
    width: u16,
    height: u16,
    throttle: KeyframeThrottle,
    /// A keyframe request passed the throttle: the PLI goes out on the next tick.
    pli_due: bool,
}

impl Layer {
    fn new(rid: Vec<u8>, ssrc: u32, rtx_ssrc: u32) -> Self {
        Layer {
            rid,
            ssrc,
            rtx_ssrc,
            receiver: ReceiverStats::new(ssrc),
            window: SeqWindow::new(),
            rate: RateMeter::new(),
            last_bps: 0,
            last_packet_ms: None,
            width: 0,
            height: 0,
            throttle: KeyframeThrottle::new(KEYFRAME_INTERVAL_MS),
            pli_due: false,
        }
    }

    fn active(&self, now_ms: i64) -> bool {
        self.last_packet_ms
            .is_some_and(|t| now_ms - t < LAYER_ACTIVE_MS)
    }

    /// A new media SSRC for the layer (learnt, or the publisher restarted the stream).
    fn set_ssrc(&mut self, ssrc: u32) {
        self.ssrc = ssrc;
        self.receiver = ReceiverStats::new(ssrc);
        self.window = SeqWindow::new();
    }
}

struct Producer {
    peer: PeerId,
    clock_rate: u32,
    mid: Vec<u8>,
    mid_id: u8,
    audio_level_id: u8,
    rid_id: u8,
    repaired_rid_id: u8,
    transport_cc_id: u8,
    /// The publisher's RTX payload types and their associated media payload types.
    rtx_apt: Vec<(u8, u8)>,
    video: Option<VideoCodec>,
    is_video: bool,
    forwarding: bool,
    consumers: Vec<ConsumerId>,
    layers: Vec<Layer>,
    /// Simulcast (layers named by rids): dynacast events are sent for it.
    simulcast: bool,
    /// The wanted-layer mask last reported (all layers at the start: the publisher sends them all).
    wanted: u8,
    /// Since when each wanted layer has had no consumer wanting it.
    unwanted_since: [Option<i64>; MAX_LAYERS],
    levels: Levels,
    stats: ProducerStats,
}

impl Producer {
    /// The layer a packet from `ssrc` belongs to, and whether it is a retransmission (RFC 4588),
    /// learning SSRCs from the rid / repaired-rid extensions or, with one layer, from the packet.
    fn layer_of(&mut self, data: &[u8], h: &rtp::Header) -> Option<(usize, bool)> {
        for (i, l) in self.layers.iter().enumerate() {
            if l.ssrc == h.ssrc {
                return Some((i, false));
            }
            if l.rtx_ssrc != 0 && l.rtx_ssrc == h.ssrc {
                return Some((i, true));
            }
        }
        let rtx_pt = self.rtx_apt.iter().any(|&(pt, _)| pt == h.payload_type);
        if self.repaired_rid_id != 0 {
            if let Some(rid) = rtp::find_extension(data, h, self.repaired_rid_id) {
                let i = self.layers.iter().position(|l| l.rid == rid)?;
                self.layers[i].rtx_ssrc = h.ssrc;
                return Some((i, true));
            }
        }
        if self.rid_id != 0 {
            if let Some(rid) = rtp::find_extension(data, h, self.rid_id) {
                let i = self.layers.iter().position(|l| l.rid == rid)?;
                if rtx_pt {
                    self.layers[i].rtx_ssrc = h.ssrc;
                    return Some((i, true));
                }
                self.layers[i].set_ssrc(h.ssrc);
                return Some((i, false));
            }
        }
        if self.layers.len() == 1 {
            if rtx_pt {
                self.layers[0].rtx_ssrc = h.ssrc;
                return Some((0, true));
            }
            self.layers[0].set_ssrc(h.ssrc);
            return Some((0, false));
        }
        None
    }

    fn apt(&self, rtx_pt: u8) -> Option<u8> {
        self.rtx_apt
            .iter()
            .find(|&&(pt, _)| pt == rtx_pt)
            .map(|&(_, apt)| apt)
    }

    fn layer_cost(&self, i: usize, now_ms: i64) -> u64 {
        let l = &self.layers[i];
        if l.active(now_ms) {
            let bps = l.rate.bps(now_ms);
            if bps > 0 {
                return bps;
            }
        }
        if l.last_bps > 0 {
            l.last_bps
        } else {
            DEFAULT_LAYER_BPS[i.min(DEFAULT_LAYER_BPS.len() - 1)]
        }
    }

    /// A layer's size: from its keyframes, else derived from another layer's (each layer below is
    /// half the size of the one above), else from `DEFAULT_FULL_SIZE`.
    fn layer_size(&self, i: usize) -> (u32, u32) {
        let l = &self.layers[i];
        if l.width != 0 {
            return (l.width as u32, l.height as u32);
        }
        let top = self.layers.len() - 1;
        let (full_w, full_h) = self
            .layers
            .iter()
            .enumerate()
            .rev()
            .find(|(_, l)| l.width != 0)
            .map(|(k, l)| {
                (
                    (l.width as u32) << (top - k),
                    (l.height as u32) << (top - k),
                )
            })
            .unwrap_or((DEFAULT_FULL_SIZE.0 as u32, DEFAULT_FULL_SIZE.1 as u32));
        (full_w >> (top - i), full_h >> (top - i))
    }

    /// The highest layer a consumer's preferences allow.
    fn cap(&self, prefs: &Preferences) -> u8 {
        let top = (self.layers.len() - 1) as u8;
        let mut cap = top;
        if prefs.max_layer >= 0 {
            cap = cap.min(prefs.max_layer as u8);
        }
        if prefs.max_width != 0 || prefs.max_height != 0 {
            let covering = (0..self.layers.len()).find(|&i| {
                let (w, h) = self.layer_size(i);
                w >= prefs.max_width && h >= prefs.max_height
            });
            cap = cap.min(covering.map_or(top, |i| i as u8));
        }
        cap
    }

    /// The layer to switch to for a wanted one: itself if active (or if nothing is active yet),
    /// else the nearest active layer below, else above.
    fn reachable(&self, wanted: u8, now_ms: i64) -> u8 {
        let w = wanted as usize;
        if self.layers[w].active(now_ms) || !self.layers.iter().any(|l| l.active(now_ms)) {
            return wanted;
        }
        if let Some(i) = (0..w).rev().find(|&i| self.layers[i].active(now_ms)) {
            return i as u8;
        }
        (w + 1..self.layers.len())
            .find(|&i| self.layers[i].active(now_ms))
            .map_or(wanted, |i| i as u8)
    }

    fn request_keyframe(&mut self, layer: usize, now_ms: i64) {
        if self.video.is_none() {
            return;
        }
        if let Some(l) = self.layers.get_mut(layer) {
            if l.throttle.request(now_ms) {
                self.stats.keyframe_requests += 1;
                l.pli_due = true;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    pub packets: u64,
    pub bytes: u64,
    pub retransmitted: u64,
    pub nacks: u64,
    pub plis: u64,
}

/// What the subscriber's client asks of a video consumer (`video_quality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preferences {
    /// The highest layer index (-1: no cap).
    pub max_layer: i32,
    /// The displayed size: the lowest layer covering it is enough (0: no cap).
    pub max_width: u32,
    pub max_height: u32,
    /// A hidden tile: no packets at all.
    pub paused: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            max_layer: -1,
            max_width: 0,
            max_height: 0,
            paused: false,
        }
    }
}

struct Consumer {
    producer: ProducerId,
    subscriber: PeerId,
    ssrc: u32,
    /// The RTX SSRC (RFC 4588 SSRC multiplexing; 0 for audio).
    rtx_ssrc: u32,
    rewriter: Option<Rewriter>,
    ready: bool,
    /// `set_consumer_paused` (the subscriber is deafened).
    paused: bool,
    prefs: Preferences,
    /// The layer forwarded (-1: none yet, or waiting for a keyframe after a pause).
    current: i8,
    /// The layer to switch to at its next keyframe.
    target: i8,
    /// What the allocation gave (target is this, or the nearest active layer while it is stopped).
    desired: i8,
    /// Since when the allocation has offered a higher layer (upgrades wait `UPGRADE_HOLD_MS`).
    upgrade_since: Option<i64>,
    vp8: Option<Vp8Munger>,
    /// The subscriber's (media PT, RTX PT) pairs; empty: NACKs are answered by plain resends.
    rtx_pts: Vec<(u8, u8)>,
    rtx_seq: u16,
    history: Option<PacketHistory>,
    rate: RateMeter,
    stats: ConsumerStats,
}

impl Consumer {
    fn receiving(&self) -> bool {
        self.ready && !self.paused && !self.prefs.paused
    }

    /// Whether the consumer's RTX stream can carry probe padding: a receiving video consumer with
    /// RTX negotiated, transport-wide sequence numbers written, and media already sent (so the
    /// subscriber has the stream and its RTX SSRC set up).
    fn can_probe(&self) -> bool {
        self.receiving()
            && self.rtx_ssrc != 0
            && !self.rtx_pts.is_empty()
            && self.stats.packets > 0
            && self
                .rewriter
                .as_ref()
                .is_some_and(|r| r.writes_transport_seq())
    }
}

/// Parameters of a producer, as negotiated by the control plane.
#[derive(Debug, Clone, Default)]
pub struct ProducerParams {
    pub kind_video: bool,
    pub clock_rate: u32,
    pub ssrcs: Vec<u32>,
    pub mid: Vec<u8>,
    pub mid_id: u8,
    pub audio_level_id: u8,
    pub codec: Option<VideoCodec>,
    /// Simulcast layers, lowest first: (rid, SSRC or 0 to learn it, RTX SSRC or 0).
    pub layers: Vec<(Vec<u8>, u32, u32)>,
    /// RFC 8852 rtp-stream-id and repaired-rtp-stream-id extension ids (0: not negotiated).
    pub rid_id: u8,
    pub repaired_rid_id: u8,
    /// The publisher's (RTX PT, associated PT) pairs.
    pub rtx_payload_types: Vec<(u8, u8)>,
    /// The publisher's transport-wide sequence number extension id: the worker sends it
    /// transport-cc feedback (every `UPLINK_FEEDBACK_INTERVAL_MS`) for its own estimator.
    pub transport_cc_id: u8,
}

/// A consumer's negotiated parameters (`configure_consumer`).
#[derive(Debug, Clone, Default)]
pub struct ConsumerParams {
    /// Producer PT → subscriber PT.
    pub payload_types: Vec<(u8, u8)>,
    pub ext: Extensions,
    /// The subscriber's (RTX PT, associated PT) pairs; empty: no RTX.
    pub rtx_payload_types: Vec<(u8, u8)>,
}

/// An IP network the worker accepts connectivity checks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix.min(width))
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n) as u128, self.prefix, 32)
                    == masked(u32::from(a) as u128, self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            (IpAddr::V4(n), IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|a| {
                masked(u32::from(n) as u128, self.prefix, 32)
                    == masked(u32::from(a) as u128, self.prefix, 32)
            }),
            _ => false,
        }
    }
}

pub struct Worker {
    peers: HashMap<PeerId, Peer>,
    by_ufrag: HashMap<Vec<u8>, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    producers: HashMap<ProducerId, Producer>,
    consumers: HashMap<ConsumerId, Consumer>,
    next_id: u32,
    allowed: Vec<Network>,
    events: Vec<Event>,
    pub counters: Counters,
    forwarded_closed: u64,
    next_report_ms: i64,
    next_allocation_ms: i64,
    next_uplink_feedback_ms: i64,
    wall_offset_s: f64,
    // scratch buffers, reused for every packet
    plain: Vec<u8>,
    rewritten: Vec<u8>,
    unwrapped: Vec<u8>,
    fanout: Vec<ConsumerId>,
    // scratch of the timed work
    seqs: Vec<u16>,
    ids: Vec<ConsumerId>,
    demands: Vec<Demand>,
    order: Vec<usize>,
    choice: Vec<u8>,
    /// Per peer after an allocation: (peer, wanted bps while capped, probe consumer).
    probe_plan: Vec<(PeerId, u64, ConsumerId)>,
    probe_peers: Vec<PeerId>,
    rng: u64,
}

impl Default for Worker {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid_pt_pairs(pairs: &[(u8, u8)], what: &str) -> Result<(), ApiError> {
    match pairs.iter().find(|&&(a, b)| a > 127 || b > 127) {
        Some(&(a, b)) => Err(ApiError::Invalid(format!("{what} {a}->{b} out of range"))),
        None => Ok(()),
    }
}

impl Worker {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        Worker {
            peers: HashMap::default(),
            by_ufrag: HashMap::default(),
            by_addr: HashMap::default(),
            producers: HashMap::default(),
            consumers: HashMap::default(),
            next_id: 1,
            allowed: Vec::new(),
            events: Vec::new(),
            counters: Counters::default(),
            forwarded_closed: 0,
            next_report_ms: 0,
            next_allocation_ms: 0,
            next_uplink_feedback_ms: 0,
            wall_offset_s: 0.0,
            plain: Vec::with_capacity(MAX_DATAGRAM),
            rewritten: Vec::with_capacity(MAX_DATAGRAM),
            unwrapped: Vec::with_capacity(MAX_DATAGRAM),
            fanout: Vec::new(),
            seqs: Vec::new(),
            ids: Vec::new(),
            demands: Vec::new(),
            order: Vec::new(),
            choice: Vec::new(),
            probe_plan: Vec::new(),
            probe_peers: Vec::new(),
            rng: seed,
        }
    }

    fn random_u32(&mut self) -> u32 {
        // xorshift64*: SSRCs and initial sequence numbers need to be unpredictable-ish, not secret.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Unix time minus the worker's monotonic clock (ms → s), for NTP timestamps in sender reports.
    pub fn set_wall_offset(&mut self, offset_s: f64) {
        self.wall_offset_s = offset_s;
    }

    /// Accept connectivity checks only from these networks (empty: from anywhere).
    pub fn set_allowed_networks(&mut self, networks: Vec<Network>) {
        self.allowed = networks;
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    // --- control API ------------------------------------------------------------------------------

    /// A peer identified by the SFU's ICE ufrag, checked against the SFU's ICE password.
    pub fn add_peer(&mut self, ufrag: &[u8], pwd: &[u8], now_ms: i64) -> Result<PeerId, ApiError> {
        if ufrag.is_empty() || pwd.is_empty() {
            return Err(ApiError::Invalid(
                "ICE ufrag and password must not be empty".into(),
            ));
        }
        if self.by_ufrag.contains_key(ufrag) {
            return Err(ApiError::Conflict(
                "ICE ufrag already in use on this worker".into(),
            ));
        }
        let id = self.id();
        let rtcp_ssrc = self.random_u32() | 1;
        let twcc_seq = self.random_u32() as u16;
        self.by_ufrag.insert(ufrag.to_vec(), id);
        self.peers.insert(
            id,
            Peer {
                ufrag: ufrag.to_vec(),
                pwd: pwd.to_vec(),
                addr: None,
                last_check_ms: now_ms,
                created_ms: now_ms,
                srtp: None,
                rtcp_ssrc,
                producers: Vec::new(),
                by_ssrc: HashMap::default(),
                consumers: HashMap::default(),
                stats: PeerStats::default(),
                bwe: Bwe::new(INITIAL_BPS, MIN_BPS, MAX_BPS),
                override_bps: 0,
                twcc_seq,
                uplink: None,
                prober: Prober::new(),
                probe_want_bps: 0,
                probe_consumer: 0,
            },
        );
        Ok(id)
    }

    /// Tear down a peer: its producers (and their consumers everywhere), its consumers, its address.
    pub fn remove_peer(&mut self, peer: PeerId) -> Result<(), ApiError> {
        let p = self
            .peers
            .get(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?;
        let producers = p.producers.clone();
        let mut consumers: Vec<ConsumerId> = p.consumers.values().copied().collect();
        consumers.sort_unstable();
        consumers.dedup();
        for producer in producers {
            let _ = self.remove_producer(producer);
        }
        for consumer in consumers {
            let _ = self.remove_consumer(consumer);
        }
        if let Some(p) = self.peers.remove(&peer) {
            self.by_ufrag.remove(&p.ufrag);
            if let Some(addr) = p.addr {
                if self.by_addr.get(&addr) == Some(&peer) {
                    self.by_addr.remove(&addr);
                }
            }
        }
        Ok(())
    }

    /// Install the SRTP keys exported after the peer's DTLS handshake.
    pub fn set_srtp(&mut self, peer: PeerId, session: Session) -> Result<(), ApiError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?;
        p.srtp = Some(session);
        Ok(())
    }

    /// The peer's current address (learned from its connectivity checks).
    pub fn peer_addr(&self, peer: PeerId) -> Result<Option<SocketAddr>, ApiError> {
        Ok(self
            .peers
            .get(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?
            .addr)
    }

    pub fn peer_stats(&self, peer: PeerId) -> Result<PeerStats, ApiError> {
        Ok(self
            .peers
            .get(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?
            .stats)
    }

    /// Override the peer's bandwidth estimate (0: back to the estimator); a test and bench hook.
    pub fn set_peer_bandwidth(&mut self, peer: PeerId, bps: u64) -> Result<(), ApiError> {
        self.peers
            .get_mut(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?
            .override_bps = bps;
        Ok(())
    }

    /// The bandwidth the allocation uses for the peer and where it comes from ("twcc", "remb",
    /// "override" or "initial").
    pub fn peer_bandwidth(&self, peer: PeerId) -> Result<(u64, &'static str), ApiError> {
        Ok(self
            .peers
            .get(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?
            .bandwidth())
    }

    pub fn add_producer(
        &mut self,
        peer: PeerId,
        params: ProducerParams,
    ) -> Result<ProducerId, ApiError> {
        if params.clock_rate == 0 {
            return Err(ApiError::Invalid("clock rate must be positive".into()));
        }
        if params.mid_id != 0 && params.mid.is_empty() {
            return Err(ApiError::Invalid(
                "mid extension id given without a mid".into(),
            ));
        }
        if params.layers.len() > MAX_LAYERS {
            return Err(ApiError::Invalid(format!(
                "at most {MAX_LAYERS} simulcast layers, got {}",
                params.layers.len()
            )));
        }
        if !params.layers.is_empty() && !params.kind_video {
            return Err(ApiError::Invalid("layers are for video producers".into()));
        }
        for (k, (rid, ssrc, rtx)) in params.layers.iter().enumerate() {
            if params.layers.len() > 1 && rid.is_empty() {
                return Err(ApiError::Invalid("simulcast layers need rids".into()));
            }
            if params.layers[k + 1..].iter().any(|(r, s, x)| {
                r == rid || (*ssrc != 0 && (s == ssrc || x == ssrc)) || (*rtx != 0 && x == rtx)
            }) {
                return Err(ApiError::Invalid(
                    "layers' rids and SSRCs must be distinct".into(),
                ));
            }
        }
        if params.layers.len() > 1 && params.rid_id == 0 && params.layers.iter().any(|l| l.1 == 0) {
            return Err(ApiError::Invalid(
                "a layer's SSRC can only be learnt with the rid extension (rid_id)".into(),
            ));
        }
        invalid_pt_pairs(&params.rtx_payload_types, "RTX payload type")?;
        let ids = [
            params.mid_id,
            params.audio_level_id,
            params.rid_id,
            params.repaired_rid_id,
            params.transport_cc_id,
        ];
        for (k, &a) in ids.iter().enumerate() {
            if a != 0 && ids[k + 1..].contains(&a) {
                return Err(ApiError::Invalid(format!(
                    "extension ids must be distinct, got {ids:?}"
                )));
            }
        }
        let p = self
            .peers
            .get(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?;
        let mut announced: Vec<u32> = params.ssrcs.clone();
        for &(_, ssrc, rtx) in &params.layers {
            announced.extend([ssrc, rtx].into_iter().filter(|&s| s != 0));
        }
        if let Some(ssrc) = announced.iter().find(|s| p.by_ssrc.contains_key(s)) {
            return Err(ApiError::Conflict(format!(
                "SSRC {ssrc} already belongs to a producer of this peer"
            )));
        }
        let id = self.id();
        let p = self.peers.get_mut(&peer).expect("checked above");
        for &ssrc in &announced {
            p.by_ssrc.insert(ssrc, id);
        }
        p.producers.push(id);
        let simulcast = params.layers.len() > 1;
        let layers: Vec<Layer> = if params.layers.is_empty() {
            // One layer: its SSRC if only one is announced, else learnt from the first packet that
            // is not a retransmission (the list may hold the RTX SSRC of an FID group too).
            let ssrc = match params.ssrcs[..] {
                [only] => only,
                _ => 0,
            };
            vec![Layer::new(Vec::new(), ssrc, 0)]
        } else {
            params
                .layers
                .into_iter()
                .map(|(rid, ssrc, rtx)| Layer::new(rid, ssrc, rtx))
                .collect()
        };
        let n = layers.len();
        self.producers.insert(
            id,
            Producer {
                peer,
                clock_rate: params.clock_rate,
                mid: params.mid,
                mid_id: params.mid_id,
                audio_level_id: params.audio_level_id,
                rid_id: params.rid_id,
                repaired_rid_id: params.repaired_rid_id,
                transport_cc_id: params.transport_cc_id,
                rtx_apt: params.rtx_payload_types,
                video: params.codec,
                is_video: params.kind_video,
                forwarding: true,
                consumers: Vec::new(),
                layers,
                simulcast,
                wanted: ((1u16 << n) - 1) as u8,
                unwanted_since: [None; MAX_LAYERS],
                levels: Levels::default(),
                stats: ProducerStats::default(),
            },
        );
        Ok(id)
    }

    /// Remove a producer and every consumer of it.
    pub fn remove_producer(&mut self, producer: ProducerId) -> Result<Vec<ConsumerId>, ApiError> {
        let pr = self
            .producers
            .remove(&producer)
            .ok_or(ApiError::NotFound("producer", producer))?;
        if let Some(p) = self.peers.get_mut(&pr.peer) {
            p.producers.retain(|&x| x != producer);
            p.by_ssrc.retain(|_, &mut x| x != producer);
        }
        for &c in &pr.consumers {
            if let Some(consumer) = self.consumers.remove(&c) {
                self.forwarded_closed += consumer.stats.packets;
                if let Some(s) = self.peers.get_mut(&consumer.subscriber) {
                    s.consumers.remove(&consumer.ssrc);
                    s.consumers.remove(&consumer.rtx_ssrc);
                }
            }
        }
        Ok(pr.consumers)
    }

    /// Forward the producer's packets or not (derived by the control plane from mute, server mute
    /// and permissions, which live there once). Resuming re-bases every consumer and asks for a
    /// keyframe for video.
    pub fn set_producer_forwarding(
        &mut self,
        producer: ProducerId,
        forwarding: bool,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let pr = self
            .producers
            .get_mut(&producer)
            .ok_or(ApiError::NotFound("producer", producer))?;
        let resumed = forwarding && !pr.forwarding;
        pr.forwarding = forwarding;
        if resumed {
            let consumers = pr.consumers.clone();
            for c in consumers {
                self.resume_consumer(c, now_ms);
            }
        }
        Ok(())
    }

    pub fn producer_stats(&self, producer: ProducerId) -> Result<ProducerStats, ApiError> {
        Ok(self
            .producers
            .get(&producer)
            .ok_or(ApiError::NotFound("producer", producer))?
            .stats)
    }

    /// Per layer, lowest first: (rid, SSRC (0: not known yet), bitrate over the last second,
    /// width, height (0: no keyframe seen), wanted by some consumer (the dynacast mask)).
    #[allow(clippy::type_complexity)]
    pub fn producer_layers(
        &self,
        producer: ProducerId,
        now_ms: i64,
    ) -> Result<Vec<(Vec<u8>, u32, u64, u16, u16, bool)>, ApiError> {
        let pr = self
            .producers
            .get(&producer)
            .ok_or(ApiError::NotFound("producer", producer))?;
        Ok(pr
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l.rid.clone(),
                    l.ssrc,
                    l.rate.bps(now_ms),
                    l.width,
                    l.height,
                    pr.wanted & (1 << i) != 0,
                )
            })
            .collect())
    }

    /// Audio levels per producer since the last call (only producers that sent levels).
    pub fn take_levels(&mut self, out: &mut Vec<(ProducerId, Levels)>) {
        for (&id, pr) in self.producers.iter_mut() {
            if pr.levels.packets > 0 {
                out.push((id, pr.levels));
                pr.levels = Levels::default();
            }
        }
    }

    /// A consumer of `producer` sending to `subscriber` with its own SSRC (0: pick one) and, for
    /// video, its RTX SSRC (0: pick one; ignored for audio).
    pub fn add_consumer(
        &mut self,
        producer: ProducerId,
        subscriber: PeerId,
        ssrc: u32,
        rtx_ssrc: u32,
    ) -> Result<ConsumerId, ApiError> {
        let pr = self
            .producers
            .get(&producer)
            .ok_or(ApiError::NotFound("producer", producer))?;
        if pr.peer == subscriber {
            return Err(ApiError::Invalid(
                "a peer does not consume its own producer".into(),
            ));
        }
        let is_video = pr.is_video;
        let vp8 = pr.video == Some(VideoCodec::Vp8);
        let s = self
            .peers
            .get(&subscriber)
            .ok_or(ApiError::NotFound("peer", subscriber))?;
        for s_ in [ssrc, rtx_ssrc] {
            if s_ != 0 && s.consumers.contains_key(&s_) {
                return Err(ApiError::Conflict(format!(
                    "SSRC {s_} already used by a consumer of this peer"
                )));
            }
        }
        if ssrc != 0 && ssrc == rtx_ssrc {
            return Err(ApiError::Invalid(
                "the RTX SSRC must differ from the SSRC".into(),
            ));
        }
        let pick = |w: &mut Worker, avoid: u32| loop {
            let s = w.random_u32() | 1;
            if s != avoid && !w.peers[&subscriber].consumers.contains_key(&s) {
                return s;
            }
        };
        let ssrc = if ssrc == 0 {
            pick(self, rtx_ssrc)
        } else {
            ssrc
        };
        let rtx_ssrc = match (is_video, rtx_ssrc) {
            (false, _) => 0,
            (true, 0) => pick(self, ssrc),
            (true, r) => r,
        };
        let rtx_seq = self.random_u32() as u16;
        let id = self.id();
        let s = self.peers.get_mut(&subscriber).expect("checked");
        s.consumers.insert(ssrc, id);
        if rtx_ssrc != 0 {
            s.consumers.insert(rtx_ssrc, id);
        }
        self.producers
            .get_mut(&producer)
            .expect("checked")
            .consumers
            .push(id);
        self.consumers.insert(
            id,
            Consumer {
                producer,
                subscriber,
                ssrc,
                rtx_ssrc,
                rewriter: None,
                ready: false,
                paused: false,
                prefs: Preferences::default(),
                current: if is_video { -1 } else { 0 },
                target: 0,
                desired: if is_video { -1 } else { 0 },
                upgrade_since: None,
                vp8: vp8.then(Vp8Munger::new),
                rtx_pts: Vec::new(),
                rtx_seq,
                history: is_video.then(|| PacketHistory::new(HISTORY)),
                rate: RateMeter::new(),
                stats: ConsumerStats::default(),
            },
        );
        Ok(id)
    }

    pub fn consumer_ssrc(&self, consumer: ConsumerId) -> Result<u32, ApiError> {
        Ok(self
            .consumers
            .get(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?
            .ssrc)
    }

    /// The consumer's RTX SSRC (0 for audio).
    pub fn consumer_rtx_ssrc(&self, consumer: ConsumerId) -> Result<u32, ApiError> {
        Ok(self
            .consumers
            .get(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?
            .rtx_ssrc)
    }

    /// The subscriber accepted the consumer with these payload types, extension ids and RTX.
    pub fn configure_consumer(
        &mut self,
        consumer: ConsumerId,
        params: ConsumerParams,
    ) -> Result<(), ApiError> {
        invalid_pt_pairs(&params.rtx_payload_types, "RTX payload type")?;
        let initial = (self.random_u32() as u16, self.random_u32());
        let c = self
            .consumers
            .get_mut(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?;
        let clock_rate = self
            .producers
            .get(&c.producer)
            .map(|p| p.clock_rate)
            .unwrap_or(48_000);
        let mut fresh = None;
        let rewriter = match c.rewriter.as_mut() {
            Some(r) => r,
            None => fresh.insert(
                Rewriter::new(c.ssrc, clock_rate, initial.0, initial.1)
                    .map_err(|e| ApiError::Invalid(e.0))?,
            ),
        };
        rewriter
            .configure(&params.payload_types, params.ext)
            .map_err(|e| ApiError::Invalid(e.0))?;
        if let Some(r) = fresh {
            c.rewriter = Some(r);
        }
        // Stored as (media PT, RTX PT) for the lookup by the retransmitted packet's PT.
        c.rtx_pts = if c.rtx_ssrc != 0 {
            params
                .rtx_payload_types
                .iter()
                .map(|&(rtx, apt)| (apt, rtx))
                .collect()
        } else {
            Vec::new()
        };
        Ok(())
    }

    /// Start (or stop, `ready=false`) forwarding to a configured consumer; video starts at a keyframe.
    pub fn set_consumer_ready(
        &mut self,
        consumer: ConsumerId,
        ready: bool,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let c = self
            .consumers
            .get_mut(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?;
        if ready && c.rewriter.is_none() {
            return Err(ApiError::Conflict("consumer is not negotiated yet".into()));
        }
        let started = ready && !c.ready;
        c.ready = ready;
        if started {
            self.resume_consumer(consumer, now_ms);
            // The layer it starts on is chosen at once, not at the next allocation.
            self.next_allocation_ms = now_ms;
        }
        Ok(())
    }

    /// Pause (the subscriber is deafened) or resume a consumer.
    pub fn set_consumer_paused(
        &mut self,
        consumer: ConsumerId,
        paused: bool,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let c = self
            .consumers
            .get_mut(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?;
        let was = c.receiving();
        c.paused = paused;
        if !was && c.receiving() {
            self.resume_consumer(consumer, now_ms);
        }
        Ok(())
    }

    /// What the subscriber's client asks of a video consumer: a layer cap by index (-1: none) or by
    /// the displayed size (0: none), or no packets at all (`paused`, a hidden tile).
    pub fn set_consumer_preferences(
        &mut self,
        consumer: ConsumerId,
        prefs: Preferences,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        if prefs.max_layer < -1 {
            return Err(ApiError::Invalid(format!(
                "max_layer must be -1 (no cap) or a layer index, not {}",
                prefs.max_layer
            )));
        }
        let c = self
            .consumers
            .get_mut(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?;
        let was = c.receiving();
        c.prefs = prefs;
        if !was && c.receiving() {
            self.resume_consumer(consumer, now_ms);
        }
        // A smaller tile or a hidden one takes effect now; a larger one through the allocation's
        // upgrade rule.
        self.next_allocation_ms = now_ms;
        Ok(())
    }

    /// (current layer, target layer); -1: none yet.
    pub fn consumer_layers(&self, consumer: ConsumerId) -> Result<(i32, i32), ApiError> {
        let c = self
            .consumers
            .get(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?;
        let target = if c.desired < 0 { -1 } else { c.target as i32 };
        Ok((c.current as i32, target))
    }

    /// The consumer starts (again): re-base seq/ts/picture ids on the next packet; video waits for a
    /// keyframe of its target layer, which is asked for.
    fn resume_consumer(&mut self, consumer: ConsumerId, now_ms: i64) {
        let Some(c) = self.consumers.get_mut(&consumer) else {
            return;
        };
        if let Some(r) = c.rewriter.as_mut() {
            r.switch_source();
        }
        if let Some(m) = c.vp8.as_mut() {
            m.switch();
        }
        let Some(pr) = self.producers.get_mut(&c.producer) else {
            return;
        };
        if pr.is_video {
            c.current = -1;
            if c.desired >= 0 {
                pr.request_keyframe(c.target as usize, now_ms);
            }
        }
    }

    pub fn remove_consumer(&mut self, consumer: ConsumerId) -> Result<(), ApiError> {
        let c = self
            .consumers
            .remove(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?;
        self.forwarded_closed += c.stats.packets;
        if let Some(pr) = self.producers.get_mut(&c.producer) {
            pr.consumers.retain(|&x| x != consumer);
        }
        if let Some(s) = self.peers.get_mut(&c.subscriber) {
            s.consumers.remove(&c.ssrc);
            if c.rtx_ssrc != 0 {
                s.consumers.remove(&c.rtx_ssrc);
            }
        }
        Ok(())
    }

    pub fn consumer_stats(&self, consumer: ConsumerId) -> Result<ConsumerStats, ApiError> {
        Ok(self
            .consumers
            .get(&consumer)
            .ok_or(ApiError::NotFound("consumer", consumer))?
            .stats)
    }

    /// Packets forwarded by every consumer, present and past.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded_closed
            + self
                .consumers
                .values()
                .map(|c| c.stats.packets)
                .sum::<u64>()
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.peers.len(), self.producers.len(), self.consumers.len())
    }

    /// Ask the producer's publisher for a keyframe on every layer a consumer receives or waits for
    /// (throttled per layer to one a second; a request in the quiet period is sent when it ends).
    /// The PLIs go out on the next `tick`.
    pub fn request_keyframe(&mut self, producer: ProducerId, now_ms: i64) -> Result<(), ApiError> {
        let pr = self
            .producers
            .get_mut(&producer)
            .ok_or(ApiError::NotFound("producer", producer))?;
        let mut mask = 0u8;
        for cid in &pr.consumers {
            if let Some(c) = self.consumers.get(cid) {
                for l in [c.current, c.target] {
                    if l >= 0 && c.desired >= 0 {
                        mask |= 1 << l;
                    }
                }
            }
        }
        if mask == 0 {
            mask = 1;
        }
        for i in 0..pr.layers.len() {
            if mask & (1 << i) != 0 {
                pr.request_keyframe(i, now_ms);
            }
        }
        Ok(())
    }

    // --- the per-datagram path ---------------------------------------------------------------------

    /// Handle one datagram that arrived from `from`.
    pub fn handle(&mut self, from: SocketAddr, data: &[u8], now_ms: i64, out: &mut Outbox) {
        self.counters.rx_datagrams += 1;
        if data.len() > MAX_DATAGRAM {
            self.counters.oversized += 1;
            return;
        }
        match classify(data) {
            Kind::Stun => self.on_stun(from, data, now_ms, out),
            Kind::Dtls => match self.by_addr.get(&from) {
                Some(&peer) => self.events.push(Event::Dtls {
                    peer,
                    data: data.to_vec(),
                }),
                None => self.counters.unknown_source += 1,
            },
            Kind::Rtp => self.on_rtp(from, data, now_ms, out),
            Kind::Rtcp => self.on_rtcp(from, data, now_ms, out),
            Kind::Other => self.counters.bad_packets += 1,
        }
    }

    fn on_stun(&mut self, from: SocketAddr, data: &[u8], now_ms: i64, out: &mut Outbox) {
        let request = match stun::parse_binding_request(data) {
            Ok(r) => r,
            Err(stun::StunError::Indication) => return,
            Err(_) => {
                self.counters.stun_rejected += 1;
                return;
            }
        };
        if !self.allowed.is_empty() && !self.allowed.iter().any(|n| n.contains(from.ip())) {
            self.counters.stun_rejected += 1;
            return;
        }
        let Some(&peer_id) = self.by_ufrag.get(request.local_ufrag(data)) else {
            self.counters.stun_rejected += 1;
            return;
        };
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer exists");
        if request.verify(data, &peer.pwd).is_err() {
            self.counters.stun_rejected += 1;
            return;
        }
        peer.last_check_ms = now_ms;
        let first = peer.addr.is_none();
        if peer.addr != Some(from) {
            // A new address (first check, or NAT rebinding): media follows the latest checked address.
            if let Some(old) = peer.addr.replace(from) {
                if self.by_addr.get(&old) == Some(&peer_id) {
                    self.by_addr.remove(&old);
                }
            }
            self.by_addr.insert(from, peer_id);
        }
        let buf = out.next(from);
        stun::build_binding_success(
            buf,
            &request.transaction_id,
            from,
            &self.peers[&peer_id].pwd,
        );
        self.counters.stun_answered += 1;
        if first {
            self.events.push(Event::Connected {
                peer: peer_id,
                addr: from,
            });
        }
    }

    fn on_rtp(&mut self, from: SocketAddr, data: &[u8], now_ms: i64, out: &mut Outbox) {
        let Some(&peer_id) = self.by_addr.get(&from) else {
            self.counters.unknown_source += 1;
            return;
        };
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer exists");
        let Some(srtp) = peer.srtp.as_mut() else {
            self.counters.srtp_errors += 1;
            return;
        };
        let mut plain = std::mem::take(&mut self.plain);
        if srtp.unprotect_rtp(data, &mut plain).is_err() {
            peer.stats.srtp_errors += 1;
            self.counters.srtp_errors += 1;
            self.plain = plain;
            return;
        }
        peer.stats.rx_packets += 1;
        let header = match rtp::parse(&plain) {
            Ok(h) => h,
            Err(_) => {
                self.counters.bad_packets += 1;
                self.plain = plain;
                return;
            }
        };
        let known = peer.by_ssrc.get(&header.ssrc).copied();
        let producer_id = match known {
            Some(p) => Some(p),
            None => {
                // An SSRC the SDP did not announce: find the producer by the mid header extension
                // (or, without one, by a rid only one producer of the peer has).
                let found = peer.producers.iter().copied().find(|pid| {
                    self.producers.get(pid).is_some_and(|pr| {
                        if pr.mid_id != 0 {
                            rtp::find_extension(&plain, &header, pr.mid_id) == Some(&pr.mid[..])
                        } else if pr.simulcast {
                            [pr.rid_id, pr.repaired_rid_id].into_iter().any(|id| {
                                rtp::find_extension(&plain, &header, id)
                                    .is_some_and(|rid| pr.layers.iter().any(|l| l.rid == rid))
                            })
                        } else {
                            false
                        }
                    })
                });
                found
            }
        };
        let layer = producer_id.and_then(|p| {
            let pr = self.producers.get_mut(&p)?;
            pr.layer_of(&plain, &header)
        });
        let (Some(producer_id), Some((layer, rtx))) = (producer_id, layer) else {
            self.counters.unknown_ssrc += 1;
            self.plain = plain;
            return;
        };
        if known.is_none() {
            peer.by_ssrc.insert(header.ssrc, producer_id);
        }
        let tcc_id = self
            .producers
            .get(&producer_id)
            .map_or(0, |pr| pr.transport_cc_id);
        if tcc_id != 0 {
            if let Some(v) = rtp::find_extension(&plain, &header, tcc_id) {
                if v.len() == 2 {
                    peer.uplink
                        .get_or_insert_with(|| Box::new(UplinkFeedback::new()))
                        .on_packet(u16::from_be_bytes([v[0], v[1]]), now_ms * 1000);
                }
            }
        }
        if rtx {
            self.forward_rtx(producer_id, layer, &plain, &header, now_ms, out);
        } else {
            self.forward(producer_id, layer, &plain, &header, now_ms, out);
        }
        self.plain = plain;
    }

    /// A publisher's retransmission (RFC 4588): unwrapped into the original packet (OSN, associated
    /// PT, the layer's SSRC) and forwarded as that, unless the original arrived after all. Padding
    /// with no OSN (bandwidth probes) is dropped.
    fn forward_rtx(
        &mut self,
        producer_id: ProducerId,
        layer: usize,
        data: &[u8],
        h: &rtp::Header,
        now_ms: i64,
        out: &mut Outbox,
    ) {
        let Some(pr) = self.producers.get(&producer_id) else {
            return;
        };
        let ssrc = pr.layers[layer].ssrc;
        let (Some(apt), true) = (
            pr.apt(h.payload_type),
            h.payload_end - h.payload_start >= 2 && ssrc != 0,
        ) else {
            self.counters.rtx_dropped += 1;
            return;
        };
        let mut buf = std::mem::take(&mut self.unwrapped);
        buf.clear();
        buf.extend_from_slice(&data[..h.payload_start]);
        buf[1] = (data[1] & 0x80) | apt;
        buf[2..4].copy_from_slice(&data[h.payload_start..h.payload_start + 2]);
        buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
        buf.extend_from_slice(&data[h.payload_start + 2..]);
        if let Ok(orig) = rtp::parse(&buf) {
            self.counters.rtx_received += 1;
            self.forward(producer_id, layer, &buf, &orig, now_ms, out);
        } else {
            self.counters.rtx_dropped += 1;
        }
        self.unwrapped = buf;
    }

    fn forward(
        &mut self,
        producer_id: ProducerId,
        layer: usize,
        data: &[u8],
        header: &rtp::Header,
        now_ms: i64,
        out: &mut Outbox,
    ) {
        let Some(pr) = self.producers.get_mut(&producer_id) else {
            return;
        };
        let is_video = pr.is_video;
        let lay = &mut pr.layers[layer];
        if is_video && lay.window.on_packet(header.seq, now_ms) == Arrival::Duplicate {
            self.counters.duplicates += 1;
            return;
        }
        pr.stats.packets += 1;
        pr.stats.bytes += data.len() as u64;
        lay.receiver
            .update(header.seq, header.timestamp, now_ms as f64, pr.clock_rate);
        lay.rate.add(data.len(), now_ms);
        lay.last_packet_ms = Some(now_ms);
        let level = if pr.audio_level_id != 0 {
            rtp::audio_level(data, header, pr.audio_level_id)
        } else {
            None
        };
        if let Some(level) = level {
            if pr.forwarding {
                pr.levels.loudness_sum += 127 - (level & 0x7F) as u32;
                pr.levels.packets += 1;
                pr.levels.voiced += (level >> 7) as u32;
            }
        }
        if !pr.forwarding {
            pr.stats.dropped += 1;
            return;
        }
        let payload = &data[header.payload_start..header.payload_end];
        let keyframe = match pr.video {
            Some(codec) => {
                let k = codec.is_keyframe_start(payload);
                if k {
                    lay.throttle.keyframe_received();
                    if codec == VideoCodec::Vp8 {
                        if let Some((w, h)) = vp8_keyframe_size(payload) {
                            lay.width = w;
                            lay.height = h;
                        }
                    }
                }
                k
            }
            // Audio, or a video codec whose keyframes are not recognised: switch on any packet.
            None => true,
        };
        let abs_time = rtp::abs_send_time((now_ms as u64).wrapping_mul(1_000_000));
        let mut fanout = std::mem::take(&mut self.fanout);
        fanout.clear();
        fanout.extend_from_slice(&pr.consumers);
        let mut rewritten = std::mem::take(&mut self.rewritten);
        let layer_i8 = layer as i8;
        for &cid in &fanout {
            let Some(c) = self.consumers.get_mut(&cid) else {
                continue;
            };
            if !c.receiving() {
                continue;
            }
            if c.current != layer_i8 {
                if c.target != layer_i8 || c.desired < 0 || !keyframe {
                    continue;
                }
                // The switch: at a keyframe of the target layer, continuing seq/ts/picture ids.
                let Some(r) = c.rewriter.as_mut() else {
                    continue;
                };
                r.switch_source();
                if let Some(m) = c.vp8.as_mut() {
                    m.switch();
                }
                c.current = layer_i8;
                if is_video {
                    self.events.push(Event::Layer {
                        consumer: cid,
                        layer: layer as u8,
                    });
                }
            }
            let Some(rewriter) = c.rewriter.as_mut() else {
                continue;
            };
            let Some(sub) = self.peers.get_mut(&c.subscriber) else {
                continue;
            };
            let (Some(addr), Some(srtp)) = (sub.addr, sub.srtp.as_mut()) else {
                continue;
            };
            let twcc = rewriter.writes_transport_seq();
            let Some(at) = rewriter.rewrite_with(
                data,
                header,
                now_ms,
                abs_time,
                level,
                sub.twcc_seq,
                &mut rewritten,
            ) else {
                continue;
            };
            if let Some(m) = c.vp8.as_mut() {
                m.rewrite(&mut rewritten[at..]);
            }
            if let Some(h) = c.history.as_mut() {
                h.put(&rewritten);
            }
            let buf = out.next(addr);
            if srtp.protect_rtp(&rewritten, buf).is_err() {
                out.cancel();
                continue;
            }
            if twcc {
                sub.bwe.on_packet_sent(sub.twcc_seq, buf.len(), now_ms);
                sub.twcc_seq = sub.twcc_seq.wrapping_add(1);
            }
            sub.stats.tx_packets += 1;
            c.stats.packets += 1;
            c.stats.bytes += rewritten.len() as u64;
            c.rate.add(buf.len(), now_ms);
            self.counters.forwarded += 1;
        }
        self.rewritten = rewritten;
        self.fanout = fanout;
    }

    fn on_rtcp(&mut self, from: SocketAddr, data: &[u8], now_ms: i64, out: &mut Outbox) {
        let Some(&peer_id) = self.by_addr.get(&from) else {
            self.counters.unknown_source += 1;
            return;
        };
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer exists");
        let Some(srtp) = peer.srtp.as_mut() else {
            self.counters.srtp_errors += 1;
            return;
        };
        let mut plain = std::mem::take(&mut self.plain);
        if srtp.unprotect_rtcp(data, &mut plain).is_err() {
            peer.stats.srtp_errors += 1;
            self.counters.srtp_errors += 1;
            self.plain = plain;
            return;
        }
        let mut items: [Option<Item>; 16] = [None; 16];
        let mut n = 0;
        let parsed = rtcp::parse(&plain, |item| {
            if n < items.len() {
                items[n] = Some(item);
                n += 1;
            }
        });
        if parsed.is_err() {
            self.counters.bad_packets += 1;
            self.plain = plain;
            return;
        }
        // `plain` stays out of `self` until the items are handled: transport-cc items point into it
        // (nothing below sends RTCP, which would reuse it).
        for item in items.iter().take(n).flatten() {
            match *item {
                Item::Nack {
                    media, pid, blp, ..
                } => self.on_nack(peer_id, media, pid, blp, now_ms, out),
                Item::Pli { media, .. } | Item::Fir { media, .. } => {
                    let consumer = self
                        .peers
                        .get(&peer_id)
                        .and_then(|p| p.consumers.get(&media).copied());
                    if let Some(c) = consumer.and_then(|c| self.consumers.get_mut(&c)) {
                        c.stats.plis += 1;
                        let layer = if c.current >= 0 { c.current } else { c.target };
                        if let Some(pr) = self.producers.get_mut(&c.producer) {
                            pr.request_keyframe(layer.max(0) as usize, now_ms);
                        }
                    }
                }
                Item::SenderReport { ssrc, ntp, .. } => {
                    let producer = self
                        .peers
                        .get(&peer_id)
                        .and_then(|p| p.by_ssrc.get(&ssrc).copied());
                    if let Some(pr) = producer.and_then(|p| self.producers.get_mut(&p)) {
                        if let Some(l) = pr.layers.iter_mut().find(|l| l.ssrc == ssrc) {
                            l.receiver.on_sender_report(ntp, now_ms as f64);
                        }
                    }
                }
                Item::Remb { bitrate, .. } => {
                    if let Some(p) = self.peers.get_mut(&peer_id) {
                        p.bwe.on_remb(bitrate, now_ms);
                    }
                }
                Item::TransportCc {
                    fci_start, fci_end, ..
                } => {
                    if let Some(p) = self.peers.get_mut(&peer_id) {
                        let fci = &plain[fci_start as usize..fci_end as usize];
                        if p.bwe.on_feedback(fci, now_ms).is_err() {
                            self.counters.bad_feedback += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        self.plain = plain;
    }

    /// A subscriber's NACK: each packet still in the consumer's history goes again, as an RTX
    /// packet (RFC 4588 §4: RTX PT and SSRC, the RTX stream's own sequence number, the original
    /// sequence number first in the payload) when RTX is negotiated, else as it was. A new
    /// transport-wide sequence number is written either way (feedback must not see a number twice).
    fn on_nack(
        &mut self,
        peer_id: PeerId,
        media: u32,
        pid: u16,
        blp: u16,
        now_ms: i64,
        out: &mut Outbox,
    ) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(&cid) = peer.consumers.get(&media) else {
            return;
        };
        let Some(c) = self.consumers.get_mut(&cid) else {
            return;
        };
        if c.ssrc != media {
            return; // a NACK naming the RTX stream: not retransmitted again
        }
        c.stats.nacks += 1;
        let twcc_id = c.rewriter.as_ref().map_or(0, |r| r.transport_cc_id());
        let (Some(addr), Some(srtp), Some(history)) =
            (peer.addr, peer.srtp.as_mut(), c.history.as_ref())
        else {
            return;
        };
        let mut buf = std::mem::take(&mut self.rewritten);
        for seq in rtcp::nack_seqs(pid, blp) {
            let Some(packet) = history.get(seq) else {
                continue;
            };
            let Ok(h) = rtp::parse(packet) else {
                continue;
            };
            buf.clear();
            let rtx_pt = c
                .rtx_pts
                .iter()
                .find(|&&(pt, _)| pt == h.payload_type)
                .map(|&(_, rtx)| rtx);
            match rtx_pt {
                Some(rtx_pt) => {
                    buf.extend_from_slice(&packet[..h.payload_start]);
                    buf[1] = (packet[1] & 0x80) | rtx_pt;
                    buf[2..4].copy_from_slice(&c.rtx_seq.to_be_bytes());
                    buf[8..12].copy_from_slice(&c.rtx_ssrc.to_be_bytes());
                    buf.extend_from_slice(&seq.to_be_bytes());
                    buf.extend_from_slice(&packet[h.payload_start..]);
                    c.rtx_seq = c.rtx_seq.wrapping_add(1);
                }
                None => buf.extend_from_slice(packet),
            }
            let twcc = twcc_id != 0 && {
                match rtp::find_extension_range(&buf, &h, twcc_id) {
                    Some(r) if r.len() == 2 => {
                        buf[r].copy_from_slice(&peer.twcc_seq.to_be_bytes());
                        true
                    }
                    _ => false,
                }
            };
            let o = out.next(addr);
            if srtp.protect_rtp(&buf, o).is_err() {
                out.cancel();
                continue;
            }
            if twcc {
                peer.bwe.on_packet_sent(peer.twcc_seq, o.len(), now_ms);
                peer.twcc_seq = peer.twcc_seq.wrapping_add(1);
            }
            c.stats.retransmitted += 1;
            c.rate.add(o.len(), now_ms);
            peer.stats.tx_packets += 1;
        }
        self.rewritten = buf;
    }

    // --- timed work ---------------------------------------------------------------------------------

    /// Keyframe requests and NACKs to publishers, the layer allocation every
    /// `ALLOCATION_INTERVAL_MS`, consent expiry, and every `REPORT_INTERVAL_MS` the RTCP reports.
    pub fn tick(&mut self, now_ms: i64, out: &mut Outbox) {
        if now_ms >= self.next_allocation_ms {
            self.next_allocation_ms = now_ms + ALLOCATION_INTERVAL_MS;
            self.allocate(now_ms);
            self.dynacast(now_ms);
        }
        self.probe(now_ms, out);
        // Keyframe requests: those made since the last tick, and retries at the end of a quiet
        // period; NACKs for the uplink's losses.
        let mut plis: Vec<(PeerId, u32)> = Vec::new();
        let mut nacks: Vec<(PeerId, u32, usize, usize)> = Vec::new();
        let mut seqs = std::mem::take(&mut self.seqs);
        let mut all_seqs: Vec<u16> = Vec::new();
        for pr in self.producers.values_mut() {
            if !pr.is_video {
                continue;
            }
            for l in pr.layers.iter_mut() {
                if pr.video.is_some() {
                    if l.throttle.poll(now_ms) {
                        pr.stats.keyframe_requests += 1;
                        l.pli_due = true;
                    }
                    if l.pli_due && l.ssrc != 0 {
                        l.pli_due = false;
                        plis.push((pr.peer, l.ssrc));
                    }
                }
                if l.window.missing() > 0 {
                    l.window.due_nacks(now_ms, &mut seqs);
                    if !seqs.is_empty() && l.ssrc != 0 {
                        nacks.push((pr.peer, l.ssrc, all_seqs.len(), seqs.len()));
                        all_seqs.extend_from_slice(&seqs);
                    }
                }
            }
        }
        self.seqs = seqs;
        for (peer_id, media) in plis {
            self.send_rtcp(peer_id, out, |buf, sender| {
                rtcp::build_pli(buf, sender, media)
            });
        }
        for (peer_id, media, at, n) in nacks {
            let seqs = &all_seqs[at..at + n];
            self.counters.nacks_sent += n as u64;
            self.send_rtcp(peer_id, out, |buf, sender| {
                rtcp::build_nack(buf, sender, media, seqs)
            });
        }
        if now_ms >= self.next_uplink_feedback_ms {
            self.next_uplink_feedback_ms = now_ms + UPLINK_FEEDBACK_INTERVAL_MS;
            self.send_uplink_feedback(out);
        }
        let mut expired = Vec::new();
        for (&id, p) in &self.peers {
            let idle_since = if p.addr.is_some() {
                p.last_check_ms
            } else {
                p.created_ms
            };
            if now_ms - idle_since > CONSENT_TIMEOUT_MS {
                expired.push(id);
            }
        }
        for peer in expired {
            if let Some(p) = self.peers.get_mut(&peer) {
                // Report once: the control plane removes the peer.
                p.last_check_ms = i64::MAX / 2;
                p.created_ms = i64::MAX / 2;
            }
            self.events.push(Event::ConsentExpired { peer });
        }
        if now_ms >= self.next_report_ms {
            self.next_report_ms = now_ms + REPORT_INTERVAL_MS;
            self.send_reports(now_ms, out);
        }
    }

    /// Bandwidth probing, every tick: per subscriber peer whose allocation is capped by its
    /// estimate, the prober decides (healthy path, backoff) and paces a cluster of padding-only RTX
    /// packets on the probe consumer's RTX stream, each with the peer's next transport-wide
    /// sequence number, so that the estimator learns what the path delivers (docs/bwe.md).
    fn probe(&mut self, now_ms: i64, out: &mut Outbox) {
        let mut peers = std::mem::take(&mut self.probe_peers);
        peers.clear();
        peers.extend(
            self.peers
                .iter()
                .filter(|(_, p)| p.probe_want_bps != 0 || !p.prober.is_idle())
                .map(|(&id, _)| id),
        );
        let mut buf = std::mem::take(&mut self.rewritten);
        let abs_time = rtp::abs_send_time((now_ms as u64).wrapping_mul(1_000_000));
        for &peer_id in &peers {
            let Some(p) = self.peers.get_mut(&peer_id) else {
                continue;
            };
            if let Some(r) = p.bwe.take_probe_result() {
                p.prober.on_result(r.success, now_ms);
                self.counters.probes_succeeded += u64::from(r.success);
            }
            if p.override_bps != 0 {
                if p.prober.sending() {
                    p.bwe.end_probe(now_ms);
                }
                p.prober.cancel(now_ms);
                continue;
            }
            let step = p.prober.tick(
                now_ms,
                p.bwe.estimate_bps(),
                p.probe_want_bps,
                p.bwe.probe_allowed(now_ms),
                MAX_BPS,
                p.bwe.probe_sent_bytes(),
            );
            let mut pad = match step {
                Step::Idle => continue,
                Step::End => {
                    p.bwe.end_probe(now_ms);
                    continue;
                }
                Step::Start {
                    target_bps,
                    pad_bytes,
                } => {
                    p.bwe.start_probe(target_bps, now_ms);
                    self.counters.probes += 1;
                    pad_bytes
                }
                Step::Pad { pad_bytes } => pad_bytes,
            };
            let Some(c) = self.consumers.get_mut(&p.probe_consumer) else {
                continue;
            };
            let (Some(addr), Some(srtp), Some(r)) = (p.addr, p.srtp.as_mut(), c.rewriter.as_ref())
            else {
                continue;
            };
            if !c.can_probe() {
                continue;
            }
            // The RTX payload type of the media last sent (its FID stream's), else the first.
            let media_pt = c
                .history
                .as_ref()
                .and_then(|h| h.get(r.last_seq()))
                .map(|packet| packet[1] & 0x7F);
            let rtx_pt = c
                .rtx_pts
                .iter()
                .find(|&&(pt, _)| Some(pt) == media_pt)
                .or(c.rtx_pts.first())
                .map_or(0, |&(_, rtx)| rtx);
            let mut packets = 0;
            while pad > 0 && packets < PROBE_MAX_PACKETS_PER_TICK {
                r.write_padding(
                    &mut buf,
                    rtx_pt,
                    c.rtx_ssrc,
                    c.rtx_seq,
                    now_ms,
                    abs_time,
                    p.twcc_seq,
                    PROBE_PADDING_BYTES as u8,
                );
                let o = out.next(addr);
                if srtp.protect_rtp(&buf, o).is_err() {
                    out.cancel();
                    break;
                }
                p.bwe.on_packet_sent(p.twcc_seq, o.len(), now_ms);
                pad = pad.saturating_sub(o.len());
                p.twcc_seq = p.twcc_seq.wrapping_add(1);
                c.rtx_seq = c.rtx_seq.wrapping_add(1);
                p.stats.tx_packets += 1;
                self.counters.probe_packets += 1;
                packets += 1;
            }
        }
        self.rewritten = buf;
        self.probe_peers = peers;
    }

    /// Per subscriber peer: share its bandwidth among its video consumers (`layers::allocate`),
    /// then move each consumer's target; downgrades at once, upgrades after `UPGRADE_HOLD_MS`.
    /// A new target asks its publisher for a keyframe on that layer (the switch waits for one).
    fn allocate(&mut self, now_ms: i64) {
        let mut ids = std::mem::take(&mut self.ids);
        let mut demands = std::mem::take(&mut self.demands);
        let mut order = std::mem::take(&mut self.order);
        let mut choice = std::mem::take(&mut self.choice);
        let mut plan = std::mem::take(&mut self.probe_plan);
        plan.clear();
        for (&peer_id, p) in self.peers.iter() {
            ids.clear();
            demands.clear();
            let mut audio_bps = 0u64;
            let mut probe_consumer = 0;
            for (&ssrc, &cid) in &p.consumers {
                let Some(c) = self.consumers.get(&cid) else {
                    continue;
                };
                if c.ssrc != ssrc || !c.receiving() {
                    continue;
                }
                let Some(pr) = self.producers.get(&c.producer) else {
                    continue;
                };
                if !pr.is_video {
                    audio_bps += c.rate.bps(now_ms);
                    continue;
                }
                let mut cost = [0u64; MAX_LAYERS];
                for (i, slot) in cost.iter_mut().enumerate().take(pr.layers.len()) {
                    *slot = pr.layer_cost(i, now_ms);
                }
                if probe_consumer == 0 && c.can_probe() {
                    probe_consumer = cid;
                }
                ids.push(cid);
                demands.push(Demand {
                    layers: pr.layers.len() as u8,
                    cap: pr.cap(&c.prefs),
                    held: c.desired.max(0) as u8,
                    priority: c.prefs.max_width as u64 * c.prefs.max_height.max(1) as u64,
                    cost,
                });
            }
            if ids.is_empty() {
                plan.push((peer_id, 0, 0));
                continue;
            }
            let budget = p.bandwidth().0.saturating_sub(audio_bps);
            layers::allocate(budget, &demands, &mut order, &mut choice);
            // Capped: some consumer got less than its preferences allow. What all of them would
            // need (with the allocation's upgrade headroom) is what a probe aims to make room for.
            let mut want = audio_bps;
            let mut capped = false;
            for (d, &got) in demands.iter().zip(choice.iter()) {
                let top = d.cap.min(d.layers.saturating_sub(1)).min(2);
                capped |= got < top;
                let cost = d.cost[top as usize];
                want += if top > d.held {
                    cost * UPGRADE_HEADROOM_PCT / 100
                } else {
                    cost
                };
            }
            let probing = capped && p.override_bps == 0 && probe_consumer != 0;
            plan.push((peer_id, if probing { want } else { 0 }, probe_consumer));
            for (k, &cid) in ids.iter().enumerate() {
                let Some(c) = self.consumers.get_mut(&cid) else {
                    continue;
                };
                let new = choice[k] as i8;
                if c.desired < 0 || new < c.desired {
                    c.desired = new;
                    c.upgrade_since = None;
                } else if new > c.desired {
                    let since = *c.upgrade_since.get_or_insert(now_ms);
                    if now_ms - since >= UPGRADE_HOLD_MS {
                        c.desired = new;
                        c.upgrade_since = None;
                    }
                } else {
                    c.upgrade_since = None;
                }
            }
        }
        for &(peer_id, want, consumer) in &plan {
            if let Some(p) = self.peers.get_mut(&peer_id) {
                p.probe_want_bps = want;
                p.probe_consumer = consumer;
            }
        }
        self.probe_plan = plan;
        self.ids = ids;
        self.demands = demands;
        self.order = order;
        self.choice = choice;
        // Targets: the allocated layer if the publisher sends it, else the nearest one it sends.
        for c in self.consumers.values_mut() {
            if c.desired < 0 || !c.receiving() {
                continue;
            }
            let Some(pr) = self.producers.get_mut(&c.producer) else {
                continue;
            };
            if !pr.is_video {
                continue;
            }
            c.target = pr.reachable(c.desired as u8, now_ms) as i8;
            if c.current != c.target {
                pr.request_keyframe(c.target as usize, now_ms);
            }
        }
    }

    /// Dynacast: a simulcast producer's wanted layers are those its receiving consumers have as
    /// current, target or allocated layer, plus layer 0 while any consumer receives (so that a
    /// downgrade under congestion never waits for the publisher to restart an encoding). A layer
    /// stops being wanted `DYNACAST_OFF_DELAY_MS` after its last consumer; the mask is reported on
    /// change.
    fn dynacast(&mut self, now_ms: i64) {
        for (&pid, pr) in self.producers.iter_mut() {
            if !pr.simulcast {
                continue;
            }
            let mut now_wanted = 0u8;
            for cid in &pr.consumers {
                let Some(c) = self.consumers.get(cid) else {
                    continue;
                };
                if !c.receiving() {
                    continue;
                }
                now_wanted |= 1;
                for l in [c.current, c.target, c.desired] {
                    if l >= 0 && c.desired >= 0 {
                        now_wanted |= 1 << l;
                    }
                }
            }
            let mut mask = now_wanted;
            for i in 0..pr.layers.len() {
                let bit = 1u8 << i;
                if now_wanted & bit != 0 {
                    pr.unwanted_since[i] = None;
                } else if pr.wanted & bit != 0 {
                    let since = *pr.unwanted_since[i].get_or_insert(now_ms);
                    if now_ms - since < DYNACAST_OFF_DELAY_MS {
                        mask |= bit;
                    }
                }
            }
            for l in pr.layers.iter_mut() {
                if l.active(now_ms) {
                    l.last_bps = l.rate.bps(now_ms).max(l.last_bps / 2);
                }
            }
            if mask != pr.wanted {
                pr.wanted = mask;
                self.events.push(Event::Layers {
                    producer: pid,
                    mask,
                });
            }
        }
    }

    /// Transport-cc feedback (RTPFB FMT 15) to each publisher whose uplink carries transport-wide
    /// sequence numbers, describing what arrived since the last one.
    fn send_uplink_feedback(&mut self, out: &mut Outbox) {
        let mut fci = std::mem::take(&mut self.rewritten);
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.uplink.is_some())
            .map(|(&id, _)| id)
            .collect();
        for peer_id in ids {
            let Some(p) = self.peers.get_mut(&peer_id) else {
                continue;
            };
            fci.clear();
            let media = p.by_ssrc.keys().next().copied().unwrap_or(0);
            if !p.uplink.as_mut().is_some_and(|u| u.build(&mut fci)) {
                continue;
            }
            self.send_rtcp(peer_id, out, |buf, sender| {
                buf.extend_from_slice(&[0x8F, rtcp::RTPFB, 0, 0]);
                buf.extend_from_slice(&sender.to_be_bytes());
                buf.extend_from_slice(&media.to_be_bytes());
                buf.extend_from_slice(&fci);
                let words = (buf.len() / 4 - 1) as u16;
                buf[2..4].copy_from_slice(&words.to_be_bytes());
            });
        }
        self.rewritten = fci;
    }

    fn send_reports(&mut self, now_ms: i64, out: &mut Outbox) {
        let ntp = rtcp::ntp_timestamp(self.wall_offset_s + now_ms as f64 / 1000.0);
        let peer_ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.addr.is_some() && p.srtp.is_some())
            .map(|(&id, _)| id)
            .collect();
        let mut compound = Vec::with_capacity(MAX_DATAGRAM);
        let mut blocks = Vec::new();
        for peer_id in peer_ids {
            compound.clear();
            blocks.clear();
            let p = &self.peers[&peer_id];
            for &pid in &p.producers {
                if let Some(pr) = self.producers.get_mut(&pid) {
                    for l in pr.layers.iter_mut() {
                        if let Some(b) = l.receiver.report_block(now_ms as f64) {
                            blocks.push(b);
                        }
                    }
                }
            }
            let p = &self.peers[&peer_id];
            let mut srs = 0;
            for (&ssrc, &cid) in p.consumers.iter() {
                let Some(c) = self.consumers.get(&cid) else {
                    continue;
                };
                let Some(r) = c.rewriter.as_ref() else {
                    continue;
                };
                if c.ssrc != ssrc || !c.ready || c.stats.packets == 0 || compound.len() + 28 > 1000
                {
                    continue;
                }
                rtcp::build_sr(
                    &mut compound,
                    c.ssrc,
                    ntp,
                    r.timestamp_at(now_ms),
                    c.stats.packets as u32,
                    c.stats.bytes as u32,
                );
                srs += 1;
            }
            if !blocks.is_empty() || srs == 0 {
                let mut rr = Vec::with_capacity(8 + 24 * blocks.len().min(31));
                rtcp::build_rr(&mut rr, p.rtcp_ssrc, &blocks);
                rr.extend_from_slice(&compound);
                std::mem::swap(&mut rr, &mut compound);
            }
            let data = std::mem::take(&mut compound);
            self.send_rtcp(peer_id, out, |buf, _| buf.extend_from_slice(&data));
            compound = data;
        }
    }

    fn send_rtcp(
        &mut self,
        peer_id: PeerId,
        out: &mut Outbox,
        build: impl FnOnce(&mut Vec<u8>, u32),
    ) {
        let Some(p) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let (Some(addr), Some(srtp)) = (p.addr, p.srtp.as_mut()) else {
            return;
        };
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        build(&mut plain, p.rtcp_ssrc);
        let buf = out.next(addr);
        if srtp.protect_rtcp(&plain, buf).is_err() {
            out.cancel();
        }
        self.plain = plain;
    }

    /// The peer's address, to send it a DTLS record from the control plane.
    pub fn dtls_destination(&self, peer: PeerId) -> Result<Option<SocketAddr>, ApiError> {
        self.peer_addr(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::keying_material_len;

    const PROFILE: u16 = 1;

    /// A client peer: its own SRTP session (the DTLS client side of the same keying material).
    struct Client {
        id: PeerId,
        addr: SocketAddr,
        srtp: Session,
        ufrag: Vec<u8>,
        pwd: Vec<u8>,
    }

    fn material(seed: u8) -> Vec<u8> {
        (0..keying_material_len(PROFILE).unwrap())
            .map(|i| i as u8 ^ seed)
            .collect()
    }

    fn connect(w: &mut Worker, n: u8, out: &mut Outbox) -> Client {
        let ufrag = format!("sfu{n}").into_bytes();
        let pwd = format!("password-of-peer-{n}").into_bytes();
        let id = w.add_peer(&ufrag, &pwd, 0).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", 5000 + n as u16).parse().unwrap();
        let mut req = Vec::new();
        let mut username = ufrag.clone();
        username.extend_from_slice(b":client");
        stun::build_binding_request(&mut req, &[n; 12], &username, &pwd, true);
        w.handle(addr, &req, 0, out);
        assert_eq!(w.take_events(), vec![Event::Connected { peer: id, addr }]);
        let km = material(n);
        w.set_srtp(
            id,
            Session::from_keying_material(PROFILE, &km, true).unwrap(),
        )
        .unwrap();
        let srtp = Session::from_keying_material(PROFILE, &km, false).unwrap();
        Client {
            id,
            addr,
            srtp,
            ufrag,
            pwd,
        }
    }

    fn rtp(seq: u16, ssrc: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(seq as u32 * 960).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn send(w: &mut Worker, c: &mut Client, plain: &[u8], now: i64, out: &mut Outbox) {
        let mut sealed = Vec::new();
        c.srtp.protect_rtp(plain, &mut sealed).unwrap();
        w.handle(c.addr, &sealed, now, out);
    }

    fn pts(pairs: &[(u8, u8)]) -> ConsumerParams {
        ConsumerParams {
            payload_types: pairs.to_vec(),
            ..Default::default()
        }
    }

    fn audio(ssrcs: Vec<u32>) -> ProducerParams {
        ProducerParams {
            kind_video: false,
            clock_rate: 48_000,
            ssrcs,
            mid: b"0".to_vec(),
            mid_id: 1,
            audio_level_id: 0,
            codec: None,
            ..Default::default()
        }
    }

    fn setup() -> (Worker, Client, Client, ProducerId, ConsumerId, Outbox) {
        let mut w = Worker::new();
        let mut out = Outbox::new();
        let a = connect(&mut w, 1, &mut out);
        let b = connect(&mut w, 2, &mut out);
        out.clear();
        let p = w.add_producer(a.id, audio(vec![111])).unwrap();
        let c = w.add_consumer(p, b.id, 0xC0C0, 0).unwrap();
        w.configure_consumer(c, pts(&[(111, 109)])).unwrap();
        w.set_consumer_ready(c, true, 0).unwrap();
        (w, a, b, p, c, out)
    }

    #[test]
    fn a_packet_is_unprotected_once_rewritten_and_protected_for_the_subscriber() {
        let (mut w, mut a, mut b, _p, c, mut out) = setup();
        send(&mut w, &mut a, &rtp(7, 111, 111, b"opus"), 10, &mut out);
        assert_eq!(out.len(), 1);
        let (addr, data) = out.get(0);
        assert_eq!(*addr, b.addr);
        let mut plain = Vec::new();
        b.srtp.unprotect_rtp(data, &mut plain).unwrap();
        let h = rtp::parse(&plain).unwrap();
        assert_eq!((h.ssrc, h.payload_type), (0xC0C0, 109));
        assert_eq!(&plain[h.payload_start..], b"opus");
        assert_eq!(w.consumer_stats(c).unwrap().packets, 1);
        assert_eq!(w.forwarded_total(), 1);
    }

    #[test]
    fn a_producer_not_forwarding_sends_nothing_and_resumes_without_a_gap() {
        let (mut w, mut a, mut b, p, _c, mut out) = setup();
        send(&mut w, &mut a, &rtp(1, 111, 111, b"x"), 0, &mut out);
        w.set_producer_forwarding(p, false, 10).unwrap();
        out.clear();
        send(&mut w, &mut a, &rtp(2, 111, 111, b"x"), 20, &mut out);
        assert!(out.is_empty());
        assert_eq!(w.producer_stats(p).unwrap().dropped, 1);
        w.set_producer_forwarding(p, true, 30).unwrap();
        send(&mut w, &mut a, &rtp(50, 111, 111, b"x"), 1000, &mut out);
        let mut first = Vec::new();
        let (_, d) = out.get(0);
        b.srtp.unprotect_rtp(d, &mut first).unwrap();
        assert_eq!(out.len(), 1);
        let _ = first;
    }

    #[test]
    fn strangers_garbage_and_bad_checks_are_counted_and_dropped() {
        let (mut w, a, _b, _p, _c, mut out) = setup();
        let stranger: SocketAddr = "127.0.0.1:9".parse().unwrap();
        w.handle(stranger, &rtp(1, 111, 111, b"x"), 0, &mut out);
        assert_eq!(w.counters.unknown_source, 1);
        w.handle(
            a.addr,
            &[0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9],
            0,
            &mut out,
        );
        assert_eq!(w.counters.srtp_errors, 1);
        w.handle(a.addr, &[0xFF; 40], 0, &mut out);
        assert_eq!(w.counters.bad_packets, 1);
        w.handle(a.addr, &[0u8; 2000], 0, &mut out);
        assert_eq!(w.counters.oversized, 1);
        let mut req = Vec::new();
        let mut username = a.ufrag.clone();
        username.extend_from_slice(b":x");
        stun::build_binding_request(&mut req, &[3; 12], &username, b"not-the-password", false);
        w.handle(stranger, &req, 0, &mut out);
        assert_eq!(w.counters.stun_rejected, 1);
        assert!(out.is_empty());
        let _ = a.pwd;
    }

    #[test]
    fn nat_rebinding_moves_media_to_the_new_address() {
        let (mut w, mut a, _b, _p, _c, mut out) = setup();
        let moved: SocketAddr = "127.0.0.1:6001".parse().unwrap();
        let mut req = Vec::new();
        let mut username = a.ufrag.clone();
        username.extend_from_slice(b":client");
        stun::build_binding_request(&mut req, &[9; 12], &username, &a.pwd, false);
        w.handle(moved, &req, 5, &mut out);
        assert_eq!(w.peer_addr(a.id).unwrap(), Some(moved));
        assert!(w.take_events().is_empty());
        out.clear();
        send(&mut w, &mut a, &rtp(1, 111, 111, b"x"), 10, &mut out);
        assert_eq!(w.counters.unknown_source, 1, "the old address is forgotten");
        a.addr = moved;
        send(&mut w, &mut a, &rtp(2, 111, 111, b"x"), 10, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn nack_is_answered_from_history_and_pli_reaches_the_publisher() {
        let mut w = Worker::new();
        let mut out = Outbox::new();
        let mut a = connect(&mut w, 1, &mut out);
        let mut b = connect(&mut w, 2, &mut out);
        let video = ProducerParams {
            kind_video: true,
            clock_rate: 90_000,
            ssrcs: vec![222],
            mid: b"1".to_vec(),
            mid_id: 0,
            audio_level_id: 0,
            codec: Some(VideoCodec::Vp8),
            ..Default::default()
        };
        let p = w.add_producer(a.id, video).unwrap();
        let c = w.add_consumer(p, b.id, 0xD0D0, 0).unwrap();
        w.configure_consumer(c, pts(&[(96, 96)])).unwrap();
        w.set_consumer_ready(c, true, 0).unwrap();
        out.clear();
        // a delta frame before any keyframe is held back; the consumer start asked for a keyframe
        send(&mut w, &mut a, &rtp(1, 222, 96, &[0x10, 0x01]), 0, &mut out);
        assert!(out.is_empty());
        w.tick(1, &mut out);
        let pli = (0..out.len())
            .find(|&i| *out.get(i).0 == a.addr)
            .expect("a PLI to the publisher");
        let mut plain = Vec::new();
        a.srtp.unprotect_rtcp(out.get(pli).1, &mut plain).unwrap();
        let mut saw_pli = false;
        rtcp::parse(&plain, |i| {
            saw_pli |= matches!(i, Item::Pli { media: 222, .. })
        })
        .unwrap();
        assert!(saw_pli);
        out.clear();
        send(
            &mut w,
            &mut a,
            &rtp(2, 222, 96, &[0x10, 0x00, 1]),
            10,
            &mut out,
        );
        send(
            &mut w,
            &mut a,
            &rtp(3, 222, 96, &[0x00, 0x00, 2]),
            20,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        let mut first = Vec::new();
        b.srtp.unprotect_rtp(out.get(0).1, &mut first).unwrap();
        let seq = rtp::parse(&first).unwrap().seq;
        out.clear();
        let mut nack = vec![0x81, rtcp::RTPFB, 0, 3, 0, 0, 0, 1, 0, 0, 0xD0, 0xD0];
        nack.extend_from_slice(&seq.to_be_bytes());
        nack.extend_from_slice(&[0, 1]);
        let mut sealed = Vec::new();
        b.srtp.protect_rtcp(&nack, &mut sealed).unwrap();
        w.handle(b.addr, &sealed, 30, &mut out);
        assert_eq!(out.len(), 2, "both packets retransmitted");
        assert_eq!(w.consumer_stats(c).unwrap().retransmitted, 2);
    }

    #[test]
    fn removing_a_peer_removes_what_it_owns_and_consent_expires() {
        let (mut w, a, b, p, _c, mut out) = setup();
        w.remove_peer(a.id).unwrap();
        assert_eq!(w.counts(), (1, 0, 0));
        assert_eq!(w.producer_stats(p), Err(ApiError::NotFound("producer", p)));
        assert_eq!(w.remove_peer(a.id), Err(ApiError::NotFound("peer", a.id)));
        w.tick(CONSENT_TIMEOUT_MS + 1, &mut out);
        assert_eq!(w.take_events(), vec![Event::ConsentExpired { peer: b.id }]);
        w.tick(2 * CONSENT_TIMEOUT_MS + 2, &mut out);
        assert!(w.take_events().is_empty(), "reported once");
    }

    #[test]
    fn api_conflicts_and_bad_parameters_are_typed_errors() {
        let (mut w, a, b, p, _c, _out) = setup();
        assert!(matches!(
            w.add_peer(&a.ufrag, b"pw", 0),
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            w.add_producer(a.id, audio(vec![111])),
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            w.add_consumer(p, a.id, 0, 0),
            Err(ApiError::Invalid(_))
        ));
        assert!(matches!(
            w.add_consumer(p, b.id, 0xC0C0, 0),
            Err(ApiError::Conflict(_))
        ));
        assert_eq!(
            w.add_consumer(999, b.id, 0, 0),
            Err(ApiError::NotFound("producer", 999))
        );
    }

    #[test]
    fn networks_match_by_prefix() {
        let n = Network {
            addr: "10.1.0.0".parse().unwrap(),
            prefix: 16,
        };
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Network {
            addr: "0.0.0.0".parse().unwrap(),
            prefix: 0
        }
        .contains("1.2.3.4".parse().unwrap()));
    }

    // --- simulcast, allocation, dynacast, RTX, transport-cc ----------------------------------------

    const Q: u32 = 1001;
    const H: u32 = 1002;
    const F: u32 = 1003;
    const RID_ID: u8 = 10;
    const RRID_ID: u8 = 11;
    const TCC_ID: u8 = 3;
    const SUB_SSRC: u32 = 0xD0D0;
    const SUB_RTX: u32 = 0xD1D1;

    /// A VP8 RTP packet: payload descriptor with a 15-bit picture id and TL0PICIDX, then a keyframe
    /// header of `size` or a delta frame byte. `ext`: one-byte extension elements (id, value).
    fn vp8_rtp(
        seq: u16,
        ts: u32,
        ssrc: u32,
        pid: u16,
        tl0: u8,
        key: Option<(u16, u16)>,
        ext: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        if !ext.is_empty() {
            p[0] |= 0x10;
            let mut block = Vec::new();
            for (id, v) in ext {
                block.push((id << 4) | (v.len() as u8 - 1));
                block.extend_from_slice(v);
            }
            while block.len() % 4 != 0 {
                block.push(0);
            }
            p.extend_from_slice(&rtp::ONE_BYTE_PROFILE.to_be_bytes());
            p.extend_from_slice(&((block.len() / 4) as u16).to_be_bytes());
            p.extend_from_slice(&block);
        }
        p.extend_from_slice(&[0x90, 0xC0, 0x80 | (pid >> 8) as u8, pid as u8, tl0]);
        match key {
            Some((w, h)) => {
                p.extend_from_slice(&[0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A]);
                p.extend_from_slice(&w.to_le_bytes());
                p.extend_from_slice(&h.to_le_bytes());
            }
            None => p.extend_from_slice(&[0x01, 0x00, 0x00]),
        }
        p
    }

    /// What a client received in `out`: its RTP packets (plaintext) and its RTCP items.
    fn received(c: &mut Client, out: &Outbox) -> (Vec<Vec<u8>>, Vec<Item>) {
        let (mut packets, mut items) = (Vec::new(), Vec::new());
        for i in 0..out.len() {
            let (addr, data) = out.get(i);
            if *addr != c.addr {
                continue;
            }
            let mut plain = Vec::new();
            match classify(data) {
                Kind::Rtp => {
                    c.srtp.unprotect_rtp(data, &mut plain).unwrap();
                    packets.push(plain);
                }
                Kind::Rtcp => {
                    c.srtp.unprotect_rtcp(data, &mut plain).unwrap();
                    rtcp::parse(&plain, |i| items.push(i)).unwrap();
                }
                _ => {}
            }
        }
        (packets, items)
    }

    struct Sim {
        w: Worker,
        a: Client,
        b: Client,
        p: ProducerId,
        c: ConsumerId,
        out: Outbox,
        /// Per layer: next seq, picture id, TL0PICIDX.
        state: [(u16, u16, u8); 3],
        now: i64,
    }

    const SIZES: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];
    /// Packet sizes per layer: with `all_layers` every 30 ms, about 67, 213 and 320 kbps.
    const FRAME_BYTES: [usize; 3] = [250, 800, 1200];

    impl Sim {
        fn new(learn: bool) -> Sim {
            let mut w = Worker::new();
            let mut out = Outbox::new();
            let a = connect(&mut w, 1, &mut out);
            let b = connect(&mut w, 2, &mut out);
            let ssrc = |s: u32| if learn { 0 } else { s };
            let video = ProducerParams {
                kind_video: true,
                clock_rate: 90_000,
                mid: b"1".to_vec(),
                mid_id: 1,
                codec: Some(VideoCodec::Vp8),
                layers: vec![
                    (b"q".to_vec(), ssrc(Q), ssrc(Q + 1000)),
                    (b"h".to_vec(), ssrc(H), ssrc(H + 1000)),
                    (b"f".to_vec(), ssrc(F), ssrc(F + 1000)),
                ],
                rid_id: RID_ID,
                repaired_rid_id: RRID_ID,
                rtx_payload_types: vec![(97, 96)],
                ..Default::default()
            };
            let p = w.add_producer(a.id, video).unwrap();
            let c = w.add_consumer(p, b.id, SUB_SSRC, SUB_RTX).unwrap();
            w.configure_consumer(
                c,
                ConsumerParams {
                    payload_types: vec![(96, 96)],
                    ext: Extensions {
                        transport_cc_id: TCC_ID,
                        ..Default::default()
                    },
                    rtx_payload_types: vec![(97, 96)],
                },
            )
            .unwrap();
            w.set_consumer_ready(c, true, 0).unwrap();
            out.clear();
            Sim {
                w,
                a,
                b,
                p,
                c,
                out,
                state: [(100, 1000, 10), (5000, 20_000, 50), (30_000, 0x7FF0, 250)],
                now: 0,
            }
        }

        /// One frame (one packet) on `layer`; returns what the subscriber got and the publisher's RTCP.
        fn frame(&mut self, layer: usize, key: bool) -> (Vec<Vec<u8>>, Vec<Item>) {
            self.now += 10;
            let (seq, pid, tl0) = self.state[layer];
            self.state[layer] = (seq.wrapping_add(1), (pid + 1) & 0x7FFF, tl0.wrapping_add(1));
            let ssrc = [Q, H, F][layer];
            let rid = [&b"q"[..], b"h", b"f"][layer];
            let mut packet = vp8_rtp(
                seq,
                seq as u32 * 3000 + layer as u32 * 77_777,
                ssrc,
                pid,
                tl0,
                key.then_some(SIZES[layer]),
                &[(1, b"1"), (RID_ID, rid)],
            );
            packet.resize(FRAME_BYTES[layer], 0);
            self.out.clear();
            send(&mut self.w, &mut self.a, &packet, self.now, &mut self.out);
            let got = received(&mut self.b, &self.out).0;
            (got, Vec::new())
        }

        /// Every layer sends a frame (keyframes first time), so all are active and sized.
        fn all_layers(&mut self, key: bool) {
            for l in 0..3 {
                self.frame(l, key);
            }
        }

        fn tick(&mut self, ms: i64) -> Vec<Item> {
            self.now += ms;
            self.out.clear();
            self.w.tick(self.now, &mut self.out);
            received(&mut self.a, &self.out).1
        }

        fn layer_events(&mut self) -> Vec<Event> {
            self.w
                .take_events()
                .into_iter()
                .filter(|e| matches!(e, Event::Layer { .. } | Event::Layers { .. }))
                .collect()
        }
    }

    fn plis(items: &[Item]) -> Vec<u32> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Pli { media, .. } => Some(*media),
                _ => None,
            })
            .collect()
    }

    /// (seq, ts, picture id, TL0PICIDX) of a forwarded VP8 packet.
    fn ids(packet: &[u8]) -> (u16, u32, u16, u8) {
        let h = rtp::parse(packet).unwrap();
        assert_eq!(h.ssrc, SUB_SSRC);
        let d = crate::codecs::vp8_descriptor(&packet[h.payload_start..]).unwrap();
        (
            h.seq,
            h.timestamp,
            d.picture_id.unwrap().0,
            d.tl0picidx.unwrap(),
        )
    }

    fn assert_continues(prev: &[u8], next: &[u8]) {
        let (s0, t0, p0, l0) = ids(prev);
        let (s1, t1, p1, l1) = ids(next);
        assert_eq!(s1, s0.wrapping_add(1), "sequence continues");
        assert!(
            t1.wrapping_sub(t0) > 0 && t1.wrapping_sub(t0) < 90_000,
            "timestamp advances"
        );
        assert_eq!(p1, (p0 + 1) & 0x7FFF, "picture id continues");
        assert_eq!(l1, l0.wrapping_add(1), "TL0PICIDX continues");
    }

    #[test]
    fn a_switch_waits_for_a_keyframe_of_the_target_and_keeps_everything_continuous() {
        let mut s = Sim::new(false);
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_layer: 0,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        s.w.set_peer_bandwidth(s.b.id, 10_000_000).unwrap();
        let items = s.tick(1);
        assert_eq!(
            plis(&items),
            vec![Q],
            "a keyframe is asked of the target layer only"
        );
        assert_eq!(s.w.consumer_layers(s.c).unwrap(), (-1, 0));
        assert!(
            s.frame(0, false).0.is_empty(),
            "no delta frame before a keyframe"
        );
        assert!(
            s.frame(2, true).0.is_empty(),
            "nor another layer's keyframe"
        );
        let (got, _) = s.frame(0, true);
        assert_eq!(got.len(), 1);
        assert_eq!(
            s.layer_events(),
            vec![Event::Layer {
                consumer: s.c,
                layer: 0
            }]
        );
        let mut last = s.frame(0, false).0.pop().unwrap();
        s.frame(1, true);
        // q → f: the cap goes, the bandwidth allows f; the upgrade waits UPGRADE_HOLD_MS
        s.w.set_consumer_preferences(s.c, Preferences::default(), s.now)
            .unwrap();
        let mut asked = Vec::new();
        for _ in 0..(UPGRADE_HOLD_MS / ALLOCATION_INTERVAL_MS + 2) {
            asked.extend(plis(&s.tick(ALLOCATION_INTERVAL_MS)));
            s.frame(1, false);
            s.frame(2, false);
            last = s
                .frame(0, false)
                .0
                .pop()
                .expect("q goes on while f is awaited");
        }
        assert!(asked.contains(&F), "the keyframe request for f");
        assert_eq!(s.w.consumer_layers(s.c).unwrap(), (0, 2));
        assert!(s.frame(2, false).0.is_empty(), "f's delta frames wait");
        let got = s.frame(2, true).0;
        assert_eq!(got.len(), 1, "the switch at f's keyframe");
        assert_continues(&last, &got[0]);
        assert!(s.frame(0, false).0.is_empty(), "q is no longer forwarded");
        let next = s.frame(2, false).0.pop().unwrap();
        assert_continues(&got[0], &next);
        assert_eq!(s.w.consumer_layers(s.c).unwrap(), (2, 2));
        // f → q at once when the bandwidth drops (below every layer: video is never cut, only q)
        s.w.set_peer_bandwidth(s.b.id, 1).unwrap();
        let items = s.tick(ALLOCATION_INTERVAL_MS);
        assert_eq!(s.w.consumer_layers(s.c).unwrap(), (2, 0));
        assert!(plis(&items).contains(&Q));
        let mut last = s.frame(2, false).0.pop().expect("f until q's keyframe");
        assert!(s.frame(0, false).0.is_empty());
        let got = s.frame(0, true).0;
        assert_continues(&last, &got[0]);
        last = got[0].clone();
        assert_continues(&last, &s.frame(0, false).0[0]);
        let events = s.layer_events();
        assert!(events.contains(&Event::Layer {
            consumer: s.c,
            layer: 2
        }));
        assert_eq!(
            events.last(),
            Some(&Event::Layer {
                consumer: s.c,
                layer: 0
            })
        );
    }

    #[test]
    fn preferences_cap_by_size_and_index_and_pause_stops_everything() {
        let mut s = Sim::new(false);
        s.w.set_peer_bandwidth(s.b.id, 10_000_000).unwrap();
        s.all_layers(true); // sizes known from the keyframes
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_width: 320,
                max_height: 180,
                ..Default::default()
            },
            s.now,
        )
        .unwrap();
        s.tick(1);
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 0, "q covers 320x180");
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_width: 400,
                ..Default::default()
            },
            s.now,
        )
        .unwrap();
        for _ in 0..20 {
            s.tick(ALLOCATION_INTERVAL_MS);
            s.all_layers(false);
        }
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 1, "h covers 400 wide");
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_layer: 0,
                max_width: 2000,
                ..Default::default()
            },
            s.now,
        )
        .unwrap();
        s.tick(1);
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 0, "the index cap too");
        assert_eq!(s.frame(0, true).0.len(), 1);
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                paused: true,
                max_layer: 0,
                ..Default::default()
            },
            s.now,
        )
        .unwrap();
        for l in 0..3 {
            assert!(s.frame(l, true).0.is_empty(), "paused: no packets at all");
        }
        s.tick(10);
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_layer: 0,
                ..Default::default()
            },
            s.now,
        )
        .unwrap();
        assert!(s.frame(0, false).0.is_empty(), "resumes at a keyframe");
        assert_eq!(s.frame(0, true).0.len(), 1);
        assert!(matches!(
            s.w.set_consumer_preferences(
                s.c,
                Preferences {
                    max_layer: -2,
                    ..Default::default()
                },
                0
            ),
            Err(ApiError::Invalid(_))
        ));
        assert_eq!(
            s.w.consumer_layers(999),
            Err(ApiError::NotFound("consumer", 999))
        );
    }

    #[test]
    fn the_bandwidth_override_drives_the_layer() {
        let mut s = Sim::new(false);
        assert_eq!(
            s.w.peer_bandwidth(s.b.id).unwrap(),
            (INITIAL_BPS, "initial")
        );
        s.all_layers(true);
        s.tick(1);
        assert_eq!(
            s.w.consumer_layers(s.c).unwrap().1,
            1,
            "1 Mbps and no rates measured yet: h (500 k assumed)"
        );
        // a second of steady layers: ~67, 213 and 320 kbps measured
        let steady = |s: &mut Sim, ms: i64| {
            for _ in 0..ms / 30 {
                s.all_layers(false);
                s.tick(0);
            }
        };
        s.w.set_peer_bandwidth(s.b.id, 100_000).unwrap();
        assert_eq!(s.w.peer_bandwidth(s.b.id).unwrap(), (100_000, "override"));
        steady(&mut s, 1_200);
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 0, "q only");
        s.w.set_peer_bandwidth(s.b.id, 300_000).unwrap();
        steady(&mut s, 300);
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 0, "upgrades wait");
        steady(&mut s, UPGRADE_HOLD_MS);
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 1, "h fits, f does not");
        s.w.set_peer_bandwidth(s.b.id, 5_000_000).unwrap();
        steady(&mut s, UPGRADE_HOLD_MS + 300);
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 2);
        s.w.set_peer_bandwidth(s.b.id, 250_000).unwrap();
        steady(&mut s, 200);
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 1, "down at once");
        s.w.set_peer_bandwidth(s.b.id, 0).unwrap();
        assert_eq!(s.w.peer_bandwidth(s.b.id).unwrap().1, "initial");
        assert_eq!(
            s.w.set_peer_bandwidth(999, 1),
            Err(ApiError::NotFound("peer", 999))
        );
    }

    #[test]
    fn dynacast_reports_the_wanted_layers_on_change() {
        let mut s = Sim::new(false);
        s.w.set_peer_bandwidth(s.b.id, 10_000_000).unwrap();
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_layer: 1,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        s.tick(1);
        assert!(s.layer_events().is_empty(), "all layers stay on at first");
        s.tick(DYNACAST_OFF_DELAY_MS);
        s.tick(ALLOCATION_INTERVAL_MS);
        assert_eq!(
            s.layer_events(),
            vec![Event::Layers {
                producer: s.p,
                mask: 0b011
            }],
            "f unwanted; q always wanted while anyone receives"
        );
        s.tick(ALLOCATION_INTERVAL_MS);
        assert!(s.layer_events().is_empty(), "reported on change only");
        s.w.set_consumer_preferences(s.c, Preferences::default(), s.now)
            .unwrap();
        for _ in 0..(UPGRADE_HOLD_MS / ALLOCATION_INTERVAL_MS + 1) {
            s.tick(ALLOCATION_INTERVAL_MS);
        }
        assert_eq!(
            s.layer_events(),
            vec![Event::Layers {
                producer: s.p,
                mask: 0b111
            }],
            "f is wanted again at once"
        );
        let layers = s.w.producer_layers(s.p, s.now).unwrap();
        assert_eq!(layers[2].0, b"f".to_vec());
        assert!(layers.iter().all(|l| l.5));
        s.w.remove_consumer(s.c).unwrap();
        s.tick(ALLOCATION_INTERVAL_MS);
        s.tick(DYNACAST_OFF_DELAY_MS);
        assert_eq!(
            s.layer_events(),
            vec![Event::Layers {
                producer: s.p,
                mask: 0
            }],
            "nobody receives: nothing wanted"
        );
    }

    #[test]
    fn nacks_are_answered_with_rtx_packets_and_new_transport_sequence_numbers() {
        let mut s = Sim::new(false);
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_layer: 0,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        s.tick(1);
        let sent: Vec<Vec<u8>> = (0..3).flat_map(|i| s.frame(0, i == 0).0).collect();
        assert_eq!(sent.len(), 3);
        let twcc = |p: &[u8]| {
            let h = rtp::parse(p).unwrap();
            let v = rtp::find_extension(p, &h, TCC_ID).unwrap();
            u16::from_be_bytes([v[0], v[1]])
        };
        assert_eq!(twcc(&sent[1]), twcc(&sent[0]).wrapping_add(1));
        let first = rtp::parse(&sent[0]).unwrap().seq;
        let mut nack = Vec::new();
        rtcp::build_nack(&mut nack, 1, SUB_SSRC, &[first, first.wrapping_add(2)]);
        let mut sealed = Vec::new();
        s.b.srtp.protect_rtcp(&nack, &mut sealed).unwrap();
        s.out.clear();
        s.w.handle(s.b.addr, &sealed, s.now, &mut s.out);
        let (rtx, _) = received(&mut s.b, &s.out);
        assert_eq!(rtx.len(), 2);
        let (h0, h1) = (rtp::parse(&rtx[0]).unwrap(), rtp::parse(&rtx[1]).unwrap());
        assert_eq!((h0.ssrc, h0.payload_type), (SUB_RTX, 97));
        assert_eq!(
            h1.seq,
            h0.seq.wrapping_add(1),
            "the RTX stream's own sequence"
        );
        assert_eq!(
            &rtx[0][h0.payload_start..h0.payload_start + 2],
            &first.to_be_bytes()
        );
        let orig = rtp::parse(&sent[0]).unwrap();
        assert_eq!(
            &rtx[0][h0.payload_start + 2..],
            &sent[0][orig.payload_start..],
            "the original payload after the OSN"
        );
        assert_eq!(h0.timestamp, orig.timestamp);
        assert_eq!(twcc(&rtx[0]), twcc(&sent[2]).wrapping_add(1));
        assert_eq!(twcc(&rtx[1]), twcc(&sent[2]).wrapping_add(2));
        let stats = s.w.consumer_stats(s.c).unwrap();
        assert_eq!((stats.retransmitted, stats.nacks), (2, 1));
        // transport-cc feedback from the subscriber feeds its estimator
        let mut fb = crate::twcc::FeedbackBuilder::new(twcc(&sent[0]), 0);
        for k in 0..5 {
            fb.push(Some(1_000_000 + k * 10_000));
        }
        let mut pkt = vec![0x8F, rtcp::RTPFB, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        fb.build(&mut pkt);
        let words = (pkt.len() / 4 - 1) as u16;
        pkt[2..4].copy_from_slice(&words.to_be_bytes());
        sealed.clear();
        s.b.srtp.protect_rtcp(&pkt, &mut sealed).unwrap();
        s.w.handle(s.b.addr, &sealed, s.now + 50, &mut s.out);
        assert_eq!(s.w.peer_bandwidth(s.b.id).unwrap().1, "twcc");
        assert_eq!(s.w.counters.bad_feedback, 0);
    }

    #[test]
    fn a_consumer_without_rtx_gets_plain_resends() {
        let mut s = Sim::new(false);
        s.w.configure_consumer(s.c, pts(&[(96, 96)])).unwrap();
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_layer: 0,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        s.tick(1);
        let sent = s.frame(0, true).0;
        let mut nack = Vec::new();
        rtcp::build_nack(&mut nack, 1, SUB_SSRC, &[rtp::parse(&sent[0]).unwrap().seq]);
        let mut sealed = Vec::new();
        s.b.srtp.protect_rtcp(&nack, &mut sealed).unwrap();
        s.out.clear();
        s.w.handle(s.b.addr, &sealed, s.now, &mut s.out);
        // the same SRTP index again: a fresh receiving session reads it (a browser's would refuse
        // it as a replay, which is why RTX matters)
        s.b.srtp = Session::from_keying_material(PROFILE, &material(2), false).unwrap();
        let (again, _) = received(&mut s.b, &s.out);
        assert_eq!(again, sent);
    }

    #[test]
    fn publisher_rtx_is_unwrapped_deduplicated_and_losses_are_nacked() {
        let mut s = Sim::new(false);
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                max_layer: 0,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        s.tick(1);
        let first = s.frame(0, true).0.pop().unwrap();
        s.state[0].0 += 1; // q's next packet is lost
        let lost = (s.state[0].0 - 1, s.state[0].1, s.state[0].2);
        s.state[0].1 += 1;
        s.state[0].2 += 1;
        let third = s.frame(0, false).0.pop().unwrap();
        assert_eq!(
            rtp::parse(&third).unwrap().seq,
            rtp::parse(&first).unwrap().seq.wrapping_add(2)
        );
        let items = s.tick(20);
        let nacked: Vec<u16> = items
            .iter()
            .filter_map(|i| match *i {
                Item::Nack {
                    media: Q, pid, blp, ..
                } => Some(rtcp::nack_seqs(pid, blp)),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(nacked, vec![lost.0]);
        assert_eq!(s.w.counters.nacks_sent, 1);
        // the publisher's retransmission on its RTX SSRC: OSN first, PT 97
        let orig = vp8_rtp(lost.0, 1, Q, lost.1, lost.2, None, &[]);
        let h = rtp::parse(&orig).unwrap();
        let mut rtx = orig[..h.payload_start].to_vec();
        rtx[1] = 97;
        rtx[2..4].copy_from_slice(&777u16.to_be_bytes());
        rtx[8..12].copy_from_slice(&(Q + 1000).to_be_bytes());
        rtx.extend_from_slice(&lost.0.to_be_bytes());
        rtx.extend_from_slice(&orig[h.payload_start..]);
        s.out.clear();
        send(&mut s.w, &mut s.a, &rtx, s.now, &mut s.out);
        let got = received(&mut s.b, &s.out).0;
        assert_eq!(got.len(), 1);
        let g = rtp::parse(&got[0]).unwrap();
        assert_eq!((g.ssrc, g.payload_type), (SUB_SSRC, 96));
        assert_eq!(g.seq, rtp::parse(&first).unwrap().seq.wrapping_add(1));
        assert_eq!(&got[0][g.payload_start..], &orig[h.payload_start..]);
        assert_eq!(s.w.counters.rtx_received, 1);
        // again: a duplicate; padding only: dropped; no more NACKs for it
        s.out.clear();
        rtx[2..4].copy_from_slice(&778u16.to_be_bytes());
        send(&mut s.w, &mut s.a, &rtx, s.now, &mut s.out);
        let mut padding = rtx[..h.payload_start].to_vec();
        padding[2..4].copy_from_slice(&779u16.to_be_bytes());
        padding[0] |= 0x20;
        padding.extend_from_slice(&[0, 0, 0, 4]);
        send(&mut s.w, &mut s.a, &padding, s.now, &mut s.out);
        assert!(received(&mut s.b, &s.out).0.is_empty());
        assert_eq!((s.w.counters.duplicates, s.w.counters.rtx_dropped), (1, 1));
        let items = s.tick(200);
        assert!(!items.iter().any(|i| matches!(i, Item::Nack { .. })));
    }

    #[test]
    fn layer_ssrcs_are_learnt_from_the_rid_extensions() {
        let mut s = Sim::new(true);
        s.w.set_peer_bandwidth(s.b.id, 10_000_000).unwrap();
        s.tick(1);
        s.all_layers(true);
        let layers = s.w.producer_layers(s.p, s.now).unwrap();
        let seen: Vec<(Vec<u8>, u32, u16, u16)> = layers
            .iter()
            .map(|l| (l.0.clone(), l.1, l.3, l.4))
            .collect();
        assert_eq!(
            seen,
            vec![
                (b"q".to_vec(), Q, 320, 180),
                (b"h".to_vec(), H, 640, 360),
                (b"f".to_vec(), F, 1280, 720)
            ]
        );
        // later packets without extensions are known by their SSRC
        let p = vp8_rtp(7, 7, H, 1, 1, None, &[]);
        s.out.clear();
        send(&mut s.w, &mut s.a, &p, s.now, &mut s.out);
        assert_eq!(s.w.counters.unknown_ssrc, 0);
        // a retransmission named by the repaired-rid extension
        let mut rtx = vp8_rtp(9, 7, 4242, 1, 1, None, &[(1, b"1"), (RRID_ID, b"h")]);
        rtx[1] = 97;
        send(&mut s.w, &mut s.a, &rtx, s.now, &mut s.out);
        assert_eq!(s.w.counters.rtx_received, 1);
        let unknown = vp8_rtp(1, 1, 5555, 1, 1, None, &[(1, b"1"), (RID_ID, b"x")]);
        send(&mut s.w, &mut s.a, &unknown, s.now, &mut s.out);
        assert_eq!(s.w.counters.unknown_ssrc, 1);
        assert_eq!(
            s.w.consumer_rtx_ssrc(s.c).unwrap(),
            SUB_RTX,
            "the consumer's RTX SSRC"
        );
    }

    #[test]
    fn simulcast_parameters_are_checked() {
        let mut s = Sim::new(false);
        let bad = |layers: Vec<(Vec<u8>, u32, u32)>, rid_id: u8| ProducerParams {
            kind_video: true,
            clock_rate: 90_000,
            layers,
            rid_id,
            ..Default::default()
        };
        let l = |rid: &[u8], ssrc: u32| (rid.to_vec(), ssrc, 0);
        for (layers, rid_id) in [
            (vec![l(b"a", 1), l(b"b", 2), l(b"c", 3), l(b"d", 4)], 1),
            (vec![l(b"a", 1), l(b"a", 2)], 1),
            (vec![l(b"a", 1), l(b"b", 1)], 1),
            (vec![l(b"a", 0), l(b"b", 0)], 0),
            (vec![l(b"", 1), l(b"b", 2)], 1),
        ] {
            assert!(matches!(
                s.w.add_producer(s.a.id, bad(layers, rid_id)),
                Err(ApiError::Invalid(_))
            ));
        }
        assert!(matches!(
            s.w.add_producer(s.a.id, bad(vec![l(b"a", Q)], 1)),
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            s.w.add_consumer(s.p, s.b.id, 0, SUB_RTX),
            Err(ApiError::Conflict(_))
        ));
        let audio_p = s.w.add_producer(s.a.id, audio(vec![5])).unwrap();
        let ac = s.w.add_consumer(audio_p, s.b.id, 0, 0).unwrap();
        assert_eq!(s.w.consumer_rtx_ssrc(ac).unwrap(), 0);
        assert_eq!(s.w.consumer_layers(ac).unwrap(), (0, 0));
    }

    #[test]
    fn publishers_with_transport_cc_get_feedback() {
        let mut w = Worker::new();
        let mut out = Outbox::new();
        let mut a = connect(&mut w, 1, &mut out);
        let params = ProducerParams {
            transport_cc_id: 5,
            ..audio(vec![111])
        };
        w.add_producer(a.id, params).unwrap();
        for (seq, tcc) in [(1u16, 40u16), (2, 41), (3, 43)] {
            let mut p = rtp(seq, 111, 111, b"opus");
            p[0] |= 0x10;
            p.splice(
                12..12,
                [0xBE, 0xDE, 0, 1, 0x51, (tcc >> 8) as u8, tcc as u8, 0],
            );
            send(&mut w, &mut a, &p, 10 * seq as i64, &mut out);
        }
        out.clear();
        w.tick(100, &mut out);
        let mut fci = None;
        for i in 0..out.len() {
            let mut plain = Vec::new();
            a.srtp.unprotect_rtcp(out.get(i).1, &mut plain).unwrap();
            rtcp::parse(&plain, |item| {
                if let Item::TransportCc {
                    fci_start, fci_end, ..
                } = item
                {
                    fci = Some(plain[fci_start as usize..fci_end as usize].to_vec());
                }
            })
            .unwrap();
        }
        let mut seen = Vec::new();
        crate::twcc::parse(&fci.expect("feedback"), |seq, t| {
            seen.push((seq, t.is_some()))
        })
        .unwrap();
        assert_eq!(seen, vec![(40, true), (41, true), (42, false), (43, true)]);
    }

    // --- bandwidth probing ------------------------------------------------------------------------

    /// The simulcast sim, its subscriber's estimator starting at `bps` (as if it had measured it).
    fn probing_sim(bps: u64) -> Sim {
        let mut s = Sim::new(false);
        s.w.peers.get_mut(&s.b.id).unwrap().bwe = Bwe::new(bps, MIN_BPS, MAX_BPS);
        s
    }

    fn configure(s: &mut Sim, rtx: bool, tcc: bool) {
        s.w.configure_consumer(
            s.c,
            ConsumerParams {
                payload_types: vec![(96, 96)],
                ext: Extensions {
                    mid: b"1".to_vec(),
                    mid_id: 1,
                    abs_send_time_id: 2,
                    transport_cc_id: if tcc { TCC_ID } else { 0 },
                    ..Default::default()
                },
                rtx_payload_types: if rtx { vec![(97, 96)] } else { Vec::new() },
            },
        )
        .unwrap();
    }

    /// `ms` of simulcast: a frame of each layer in turn every 10 ms (keyframes every 300 ms) and a
    /// tick after each; the subscriber's RTP packets (plaintext) with their send times go to `got`.
    fn stream(s: &mut Sim, ms: i64, got: &mut Vec<(i64, Vec<u8>)>) {
        for _ in 0..ms / 10 {
            let k = s.now / 10;
            let (packets, _) = s.frame((k % 3) as usize, k % 30 < 3);
            got.extend(packets.into_iter().map(|p| (s.now, p)));
            s.out.clear();
            s.w.tick(s.now, &mut s.out);
            let (packets, _) = received(&mut s.b, &s.out);
            got.extend(packets.into_iter().map(|p| (s.now, p)));
        }
    }

    fn is_probe(p: &[u8]) -> bool {
        rtp::parse(p).is_ok_and(|h| h.ssrc == SUB_RTX && h.payload_start == h.payload_end)
    }

    fn twcc_of(p: &[u8]) -> Option<u16> {
        let h = rtp::parse(p).ok()?;
        let v = rtp::find_extension(p, &h, TCC_ID)?;
        Some(u16::from_be_bytes([v[0], v[1]]))
    }

    /// The subscriber's transport-cc feedback for `got[from..]`: every packet arrived 5 ms after
    /// it was sent (a free path).
    fn feedback(s: &mut Sim, got: &[(i64, Vec<u8>)], from: usize) {
        let mut numbered = got[from..]
            .iter()
            .filter_map(|(t, p)| twcc_of(p).map(|n| (n, *t)));
        let Some((first, t0)) = numbered.next() else {
            return;
        };
        let mut fb = crate::twcc::FeedbackBuilder::new(first, 0);
        assert!(fb.push(Some(t0 * 1000 + 5_000)));
        for (_, t) in numbered {
            assert!(fb.push(Some(t * 1000 + 5_000)));
        }
        let mut pkt = vec![0x8F, rtcp::RTPFB, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        fb.build(&mut pkt);
        let words = (pkt.len() / 4 - 1) as u16;
        pkt[2..4].copy_from_slice(&words.to_be_bytes());
        let mut sealed = Vec::new();
        s.b.srtp.protect_rtcp(&pkt, &mut sealed).unwrap();
        s.out.clear();
        s.w.handle(s.b.addr, &sealed, s.now, &mut s.out);
    }

    /// Start times of the probe clusters in `got` (probe packets more than 1 s apart).
    fn cluster_starts(got: &[(i64, Vec<u8>)]) -> Vec<i64> {
        let mut starts: Vec<i64> = Vec::new();
        let mut last = i64::MIN / 2;
        for (t, p) in got {
            if is_probe(p) {
                if *t - last > 1_000 {
                    starts.push(*t);
                }
                last = *t;
            }
        }
        starts
    }

    #[test]
    fn a_capped_consumer_gets_paced_padding_probes_on_its_rtx_stream() {
        let mut s = probing_sim(300_000);
        configure(&mut s, true, true);
        let mut got = Vec::new();
        stream(&mut s, 3_000, &mut got);
        // ~67, 213, 320 kbps measured: h fits 300 k with headroom, f (400 k with it) does not
        assert_eq!(s.w.consumer_layers(s.c).unwrap(), (1, 1));
        let starts = cluster_starts(&got);
        assert_eq!(starts.len(), 1, "one cluster, no verdict yet: {starts:?}");
        let cluster: Vec<&(i64, Vec<u8>)> = got
            .iter()
            .filter(|(t, p)| is_probe(p) && *t < starts[0] + 1_000)
            .collect();
        let mut prev_seq = None;
        for (_, p) in &cluster {
            let h = rtp::parse(p).unwrap();
            assert_eq!((h.ssrc, h.payload_type, h.marker), (SUB_RTX, 97, false));
            assert_ne!(p[0] & 0x20, 0, "P bit");
            assert_eq!(*p.last().unwrap() as usize, PROBE_PADDING_BYTES);
            assert_eq!(
                p.len(),
                h.payload_start + PROBE_PADDING_BYTES,
                "padding only"
            );
            assert_eq!(rtp::find_extension(p, &h, 1), Some(&b"1"[..]), "mid");
            assert_eq!(rtp::find_extension(p, &h, 2).map(<[u8]>::len), Some(3));
            assert!(twcc_of(p).is_some());
            if let Some(prev) = prev_seq {
                assert_eq!(
                    h.seq,
                    u16::wrapping_add(prev, 1),
                    "the RTX stream's counter"
                );
            }
            prev_seq = Some(h.seq);
        }
        // Every packet to the subscriber, media and probes, has the next transport-wide number.
        let numbers: Vec<u16> = got.iter().filter_map(|(_, p)| twcc_of(p)).collect();
        assert_eq!(numbers.len(), got.len());
        assert!(numbers.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        // Paced over the cluster's 150 ms in 10 ms ticks, at min(2 x 300 k, 1.25 x 400 k) = 500 kbps
        // with the media sent meanwhile.
        let ticks: std::collections::BTreeMap<i64, usize> =
            cluster.iter().fold(Default::default(), |mut m, (t, _)| {
                *m.entry(*t).or_default() += 1;
                m
            });
        let span = ticks.keys().last().unwrap() - ticks.keys().next().unwrap();
        assert!(ticks.len() >= 12 && span >= 130, "{ticks:?}");
        assert!(ticks.values().all(|&n| n <= 4), "no burst: {ticks:?}");
        let bytes: usize = cluster.iter().map(|(_, p)| p.len() + 10).sum();
        assert!((4_000..=9_400).contains(&bytes), "{bytes} bytes of padding");
        assert_eq!(s.w.counters.probes, 1);
        assert_eq!(s.w.counters.probe_packets as usize, cluster.len());
        assert_eq!(
            s.w.consumer_stats(s.c).unwrap().retransmitted,
            0,
            "padding is no retransmission"
        );
    }

    #[test]
    fn a_probe_carried_by_the_path_raises_the_estimate_and_probing_stops_when_layers_fit() {
        let mut s = probing_sim(300_000);
        configure(&mut s, true, true);
        let mut got = Vec::new();
        let mut reported = 0;
        let mut estimates = Vec::new();
        for _ in 0..100 {
            stream(&mut s, 50, &mut got);
            feedback(&mut s, &got, reported);
            reported = got.len();
            estimates.push((s.now, s.w.peer_bandwidth(s.b.id).unwrap().0));
        }
        let starts = cluster_starts(&got);
        assert!(!starts.is_empty());
        assert!(s.w.counters.probes_succeeded >= 1, "{:?}", s.w.counters);
        // Within half a second of the first probe the estimate covers f (400 k with headroom),
        // where the multiplicative increase alone would need about 4 s.
        let (_, after) = *estimates
            .iter()
            .find(|(t, _)| *t >= starts[0] + 500)
            .unwrap();
        assert!(after > 400_000, "{after} after the probe: {estimates:?}");
        assert_eq!(s.w.consumer_layers(s.c).unwrap(), (2, 2), "on f");
        let probes = s.w.counters.probes;
        let mut more = Vec::new();
        stream(&mut s, 2_000, &mut more);
        assert_eq!(s.w.counters.probes, probes, "no probe once the layers fit");
        assert!(!more.iter().any(|(_, p)| is_probe(p)));
    }

    #[test]
    fn failed_probes_back_off() {
        // No feedback at all: each cluster's verdict is given up after 2 s, a failure.
        let mut s = probing_sim(300_000);
        configure(&mut s, true, true);
        let mut got = Vec::new();
        stream(&mut s, 17_000, &mut got);
        let starts = cluster_starts(&got);
        let gaps: Vec<i64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        use crate::probe::{PROBE_DURATION_MS, PROBE_GIVE_UP_MS, PROBE_INTERVAL_MS};
        let base = PROBE_DURATION_MS + PROBE_GIVE_UP_MS;
        assert_eq!(gaps.len(), 2, "{starts:?}");
        assert!(
            (base + PROBE_INTERVAL_MS..base + PROBE_INTERVAL_MS + 30).contains(&gaps[0])
                && (base + 2 * PROBE_INTERVAL_MS..base + 2 * PROBE_INTERVAL_MS + 30)
                    .contains(&gaps[1]),
            "2.5 s, then 5 s after the verdict: {gaps:?}"
        );
    }

    #[test]
    fn no_probes_without_rtx_or_transport_cc_or_a_capped_consumer() {
        let probes = |s: &mut Sim| {
            let mut got = Vec::new();
            stream(s, 3_000, &mut got);
            (
                got.iter().filter(|(_, p)| is_probe(p)).count(),
                s.w.counters.probes,
            )
        };
        // Nothing capped: 1 Mbps covers f (320 kbps measured).
        let mut s = Sim::new(false);
        configure(&mut s, true, true);
        assert_eq!(probes(&mut s), (0, 0));
        assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 2);
        // Capped, but no RTX to carry padding, or no transport-cc to measure it.
        for (rtx, tcc) in [(false, true), (true, false)] {
            let mut s = probing_sim(300_000);
            configure(&mut s, rtx, tcc);
            assert_eq!(probes(&mut s), (0, 0), "rtx {rtx} transport-cc {tcc}");
            assert_eq!(s.w.consumer_layers(s.c).unwrap().1, 1, "capped on h");
        }
        // Capped by the test hook's override: that is no estimate to probe for.
        let mut s = probing_sim(300_000);
        configure(&mut s, true, true);
        s.w.set_peer_bandwidth(s.b.id, 300_000).unwrap();
        assert_eq!(probes(&mut s), (0, 0));
        // A paused consumer is not capped.
        let mut s = probing_sim(300_000);
        configure(&mut s, true, true);
        s.w.set_consumer_preferences(
            s.c,
            Preferences {
                paused: true,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(probes(&mut s), (0, 0));
    }
}
