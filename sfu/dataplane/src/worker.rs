//! One worker's media state and its per-datagram logic, without sockets.
//!
//! `Worker::handle` takes one datagram of the worker's shared port and queues what to send in an
//! `Outbox`; `Worker::tick` does the timed work (RTCP reports, keyframe retries, consent). The I/O
//! loop (`io.rs`) drives both; tests drive them directly. The Python control plane creates and
//! changes peers, producers and consumers through the methods below; everything it needs to hear
//! comes back as `Event`s and counters, never per packet.
//!
//! Ownership: a peer owns its producers (published tracks) and the consumers sending to it; a
//! producer lists its consumers. Removing a peer removes all of those in one place.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::classify::{classify, Kind};
use crate::codecs::VideoCodec;
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
    /// Consumers sending to this peer, by their SSRC (for its RTCP feedback).
    consumers: HashMap<u32, ConsumerId>,
    stats: PeerStats,
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

struct Producer {
    peer: PeerId,
    clock_rate: u32,
    mid: Vec<u8>,
    mid_id: u8,
    audio_level_id: u8,
    video: Option<VideoCodec>,
    is_video: bool,
    forwarding: bool,
    consumers: Vec<ConsumerId>,
    receivers: Vec<ReceiverStats>,
    throttle: KeyframeThrottle,
    levels: Levels,
    /// A keyframe request passed the throttle: the PLI goes out on the next tick.
    pli_due: bool,
    stats: ProducerStats,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    pub packets: u64,
    pub bytes: u64,
    pub retransmitted: u64,
    pub nacks: u64,
    pub plis: u64,
}

struct Consumer {
    producer: ProducerId,
    subscriber: PeerId,
    ssrc: u32,
    rewriter: Option<Rewriter>,
    ready: bool,
    paused: bool,
    need_keyframe: bool,
    history: Option<PacketHistory>,
    stats: ConsumerStats,
}

/// Parameters of a producer, as negotiated by the control plane.
#[derive(Debug, Clone)]
pub struct ProducerParams {
    pub kind_video: bool,
    pub clock_rate: u32,
    pub ssrcs: Vec<u32>,
    pub mid: Vec<u8>,
    pub mid_id: u8,
    pub audio_level_id: u8,
    pub codec: Option<VideoCodec>,
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
    wall_offset_s: f64,
    // scratch buffers, reused for every packet
    plain: Vec<u8>,
    rewritten: Vec<u8>,
    fanout: Vec<ConsumerId>,
    rng: u64,
}

impl Default for Worker {
    fn default() -> Self {
        Self::new()
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
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            producers: HashMap::new(),
            consumers: HashMap::new(),
            next_id: 1,
            allowed: Vec::new(),
            events: Vec::new(),
            counters: Counters::default(),
            forwarded_closed: 0,
            next_report_ms: 0,
            wall_offset_s: 0.0,
            plain: Vec::with_capacity(MAX_DATAGRAM),
            rewritten: Vec::with_capacity(MAX_DATAGRAM),
            fanout: Vec::new(),
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
                by_ssrc: HashMap::new(),
                consumers: HashMap::new(),
                stats: PeerStats::default(),
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
        let consumers: Vec<ConsumerId> = p.consumers.values().copied().collect();
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
        let p = self
            .peers
            .get(&peer)
            .ok_or(ApiError::NotFound("peer", peer))?;
        if let Some(ssrc) = params.ssrcs.iter().find(|s| p.by_ssrc.contains_key(s)) {
            return Err(ApiError::Conflict(format!(
                "SSRC {ssrc} already belongs to a producer of this peer"
            )));
        }
        let id = self.id();
        let p = self.peers.get_mut(&peer).expect("checked above");
        for &ssrc in &params.ssrcs {
            p.by_ssrc.insert(ssrc, id);
        }
        p.producers.push(id);
        self.producers.insert(
            id,
            Producer {
                peer,
                clock_rate: params.clock_rate,
                mid: params.mid,
                mid_id: params.mid_id,
                audio_level_id: params.audio_level_id,
                video: params.codec,
                is_video: params.kind_video,
                forwarding: true,
                consumers: Vec::new(),
                receivers: Vec::new(),
                throttle: KeyframeThrottle::new(1000),
                levels: Levels::default(),
                pli_due: false,
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

    /// Audio levels per producer since the last call (only producers that sent levels).
    pub fn take_levels(&mut self, out: &mut Vec<(ProducerId, Levels)>) {
        for (&id, pr) in self.producers.iter_mut() {
            if pr.levels.packets > 0 {
                out.push((id, pr.levels));
                pr.levels = Levels::default();
            }
        }
    }

    /// A consumer of `producer` sending to `subscriber` with its own SSRC (0: pick one).
    pub fn add_consumer(
        &mut self,
        producer: ProducerId,
        subscriber: PeerId,
        ssrc: u32,
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
        let needs_keyframe = pr.video.is_some();
        let ssrc = if ssrc == 0 {
            self.random_u32() | 1
        } else {
            ssrc
        };
        let s = self
            .peers
            .get(&subscriber)
            .ok_or(ApiError::NotFound("peer", subscriber))?;
        if s.consumers.contains_key(&ssrc) {
            return Err(ApiError::Conflict(format!(
                "SSRC {ssrc} already used by a consumer of this peer"
            )));
        }
        let id = self.id();
        self.peers
            .get_mut(&subscriber)
            .expect("checked")
            .consumers
            .insert(ssrc, id);
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
                rewriter: None,
                ready: false,
                paused: false,
                need_keyframe: needs_keyframe,
                history: is_video.then(|| PacketHistory::new(HISTORY)),
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

    /// The subscriber accepted the consumer with these payload types and extension ids.
    pub fn configure_consumer(
        &mut self,
        consumer: ConsumerId,
        payload_types: &[(u8, u8)],
        ext: Extensions,
    ) -> Result<(), ApiError> {
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
        let rewriter = match c.rewriter.as_mut() {
            Some(r) => r,
            None => c.rewriter.insert(
                Rewriter::new(c.ssrc, clock_rate, initial.0, initial.1)
                    .map_err(|e| ApiError::Invalid(e.0))?,
            ),
        };
        rewriter
            .configure(payload_types, ext)
            .map_err(|e| ApiError::Invalid(e.0))
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
        if started && c.need_keyframe {
            let producer = c.producer;
            self.want_keyframe(producer, now_ms);
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
        let resumed = c.paused && !paused;
        c.paused = paused;
        if resumed {
            self.resume_consumer(consumer, now_ms);
        }
        Ok(())
    }

    fn resume_consumer(&mut self, consumer: ConsumerId, now_ms: i64) {
        let Some(c) = self.consumers.get_mut(&consumer) else {
            return;
        };
        if let Some(r) = c.rewriter.as_mut() {
            r.switch_source();
        }
        let producer = c.producer;
        if self
            .producers
            .get(&producer)
            .is_some_and(|p| p.video.is_some())
        {
            c.need_keyframe = true;
            self.want_keyframe(producer, now_ms);
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

    /// Ask the producer's publisher for a keyframe (throttled to one a second; a request in the
    /// quiet period is sent when it ends). The PLI goes out on the next `tick`.
    pub fn request_keyframe(&mut self, producer: ProducerId, now_ms: i64) -> Result<(), ApiError> {
        if !self.producers.contains_key(&producer) {
            return Err(ApiError::NotFound("producer", producer));
        }
        self.want_keyframe(producer, now_ms);
        Ok(())
    }

    fn want_keyframe(&mut self, producer: ProducerId, now_ms: i64) {
        if let Some(pr) = self.producers.get_mut(&producer) {
            if pr.video.is_some() && pr.throttle.request(now_ms) {
                pr.stats.keyframe_requests += 1;
                pr.pli_due = true;
            }
        }
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
        let producer_id = match peer.by_ssrc.get(&header.ssrc) {
            Some(&p) => p,
            None => {
                // An SSRC the SDP did not announce: find the producer by the mid header extension.
                let found = peer.producers.iter().copied().find(|pid| {
                    self.producers.get(pid).is_some_and(|pr| {
                        pr.mid_id != 0
                            && rtp::find_extension(&plain, &header, pr.mid_id) == Some(&pr.mid[..])
                    })
                });
                match found {
                    Some(p) => {
                        peer.by_ssrc.insert(header.ssrc, p);
                        p
                    }
                    None => {
                        self.counters.unknown_ssrc += 1;
                        self.plain = plain;
                        return;
                    }
                }
            }
        };
        self.forward(producer_id, &plain, &header, now_ms, out);
        self.plain = plain;
    }

    fn forward(
        &mut self,
        producer_id: ProducerId,
        data: &[u8],
        header: &rtp::Header,
        now_ms: i64,
        out: &mut Outbox,
    ) {
        let Some(pr) = self.producers.get_mut(&producer_id) else {
            return;
        };
        pr.stats.packets += 1;
        pr.stats.bytes += data.len() as u64;
        let receiver = match pr.receivers.iter_mut().position(|r| r.ssrc == header.ssrc) {
            Some(i) => &mut pr.receivers[i],
            None => {
                if pr.receivers.len() >= 8 {
                    pr.receivers.remove(0);
                }
                pr.receivers.push(ReceiverStats::new(header.ssrc));
                pr.receivers.last_mut().expect("just pushed")
            }
        };
        receiver.update(header.seq, header.timestamp, now_ms as f64, pr.clock_rate);
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
        let keyframe = match pr.video {
            Some(codec) => {
                let k = codec.is_keyframe_start(&data[header.payload_start..header.payload_end]);
                if k {
                    pr.throttle.keyframe_received();
                }
                k
            }
            None => false,
        };
        let abs_time = rtp::abs_send_time((now_ms as u64).wrapping_mul(1_000_000));
        let mut fanout = std::mem::take(&mut self.fanout);
        fanout.clear();
        fanout.extend_from_slice(&pr.consumers);
        let mut rewritten = std::mem::take(&mut self.rewritten);
        for &cid in &fanout {
            let Some(c) = self.consumers.get_mut(&cid) else {
                continue;
            };
            if !c.ready || c.paused {
                continue;
            }
            let Some(rewriter) = c.rewriter.as_mut() else {
                continue;
            };
            if c.need_keyframe {
                if !keyframe {
                    continue;
                }
                c.need_keyframe = false;
                rewriter.switch_source();
            }
            if !rewriter.rewrite(data, header, now_ms, abs_time, level, &mut rewritten) {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&c.subscriber) else {
                continue;
            };
            let (Some(addr), Some(srtp)) = (sub.addr, sub.srtp.as_mut()) else {
                continue;
            };
            if let Some(h) = c.history.as_mut() {
                h.put(&rewritten);
            }
            let buf = out.next(addr);
            if srtp.protect_rtp(&rewritten, buf).is_err() {
                out.cancel();
                continue;
            }
            sub.stats.tx_packets += 1;
            c.stats.packets += 1;
            c.stats.bytes += rewritten.len() as u64;
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
        self.plain = plain;
        if parsed.is_err() {
            self.counters.bad_packets += 1;
            return;
        }
        for item in items.iter().take(n).flatten() {
            match *item {
                Item::Nack {
                    media, pid, blp, ..
                } => self.on_nack(peer_id, media, pid, blp, out),
                Item::Pli { media, .. } | Item::Fir { media, .. } => {
                    let consumer = self
                        .peers
                        .get(&peer_id)
                        .and_then(|p| p.consumers.get(&media).copied());
                    if let Some(c) = consumer.and_then(|c| self.consumers.get_mut(&c)) {
                        c.stats.plis += 1;
                        let producer = c.producer;
                        self.want_keyframe(producer, now_ms);
                    }
                }
                Item::SenderReport { ssrc, ntp, .. } => {
                    let producer = self
                        .peers
                        .get(&peer_id)
                        .and_then(|p| p.by_ssrc.get(&ssrc).copied());
                    if let Some(pr) = producer.and_then(|p| self.producers.get_mut(&p)) {
                        if let Some(r) = pr.receivers.iter_mut().find(|r| r.ssrc == ssrc) {
                            r.on_sender_report(ntp, now_ms as f64);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn on_nack(&mut self, peer_id: PeerId, media: u32, pid: u16, blp: u16, out: &mut Outbox) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(&cid) = peer.consumers.get(&media) else {
            return;
        };
        let Some(c) = self.consumers.get_mut(&cid) else {
            return;
        };
        c.stats.nacks += 1;
        let (Some(addr), Some(srtp), Some(history)) =
            (peer.addr, peer.srtp.as_mut(), c.history.as_ref())
        else {
            return;
        };
        for seq in rtcp::nack_seqs(pid, blp) {
            if let Some(packet) = history.get(seq) {
                let buf = out.next(addr);
                if srtp.protect_rtp(packet, buf).is_err() {
                    out.cancel();
                    continue;
                }
                c.stats.retransmitted += 1;
                peer.stats.tx_packets += 1;
            }
        }
    }

    // --- timed work ---------------------------------------------------------------------------------

    /// Keyframe requests due, consent expiry, and every `REPORT_INTERVAL_MS` the RTCP reports.
    pub fn tick(&mut self, now_ms: i64, out: &mut Outbox) {
        // Keyframe requests: those made since the last tick, and retries at the end of a quiet period.
        let mut plis: Vec<(PeerId, u32)> = Vec::new();
        for pr in self.producers.values_mut() {
            if pr.video.is_none() {
                continue;
            }
            if pr.throttle.poll(now_ms) {
                pr.stats.keyframe_requests += 1;
                pr.pli_due = true;
            }
            if std::mem::take(&mut pr.pli_due) {
                for r in &pr.receivers {
                    plis.push((pr.peer, r.ssrc));
                }
            }
        }
        for (peer_id, media) in plis {
            self.send_rtcp(peer_id, out, |buf, sender| {
                rtcp::build_pli(buf, sender, media)
            });
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
                    for r in pr.receivers.iter_mut() {
                        if let Some(b) = r.report_block(now_ms as f64) {
                            blocks.push(b);
                        }
                    }
                }
            }
            let p = &self.peers[&peer_id];
            let mut srs = 0;
            for &cid in p.consumers.values() {
                let Some(c) = self.consumers.get(&cid) else {
                    continue;
                };
                let Some(r) = c.rewriter.as_ref() else {
                    continue;
                };
                if !c.ready || c.stats.packets == 0 || compound.len() + 28 > 1000 {
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

    fn audio(ssrcs: Vec<u32>) -> ProducerParams {
        ProducerParams {
            kind_video: false,
            clock_rate: 48_000,
            ssrcs,
            mid: b"0".to_vec(),
            mid_id: 1,
            audio_level_id: 0,
            codec: None,
        }
    }

    fn setup() -> (Worker, Client, Client, ProducerId, ConsumerId, Outbox) {
        let mut w = Worker::new();
        let mut out = Outbox::new();
        let a = connect(&mut w, 1, &mut out);
        let b = connect(&mut w, 2, &mut out);
        out.clear();
        let p = w.add_producer(a.id, audio(vec![111])).unwrap();
        let c = w.add_consumer(p, b.id, 0xC0C0).unwrap();
        w.configure_consumer(c, &[(111, 109)], Extensions::default())
            .unwrap();
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
        };
        let p = w.add_producer(a.id, video).unwrap();
        let c = w.add_consumer(p, b.id, 0xD0D0).unwrap();
        w.configure_consumer(c, &[(96, 96)], Extensions::default())
            .unwrap();
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
            w.add_consumer(p, a.id, 0),
            Err(ApiError::Invalid(_))
        ));
        assert!(matches!(
            w.add_consumer(p, b.id, 0xC0C0),
            Err(ApiError::Conflict(_))
        ));
        assert_eq!(
            w.add_consumer(999, b.id, 0),
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
}
