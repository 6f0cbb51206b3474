//! RTCP (RFC 3550, RFC 4585, RFC 5104): compound parsing, the reports and feedback the SFU builds,
//! receiver statistics per incoming SSRC, NACK history per video consumer, keyframe throttling.
//!
//! Parsing calls a visitor per packet the SFU uses, so nothing is allocated per compound packet.

pub const SR: u8 = 200;
pub const RR: u8 = 201;
pub const BYE: u8 = 203;
pub const RTPFB: u8 = 205;
pub const PSFB: u8 = 206;
const NACK_FMT: u8 = 1;
const TRANSPORT_CC_FMT: u8 = 15;
const PLI_FMT: u8 = 1;
const FIR_FMT: u8 = 4;
const AFB_FMT: u8 = 15;
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
const LOST_MIN: i64 = -(1 << 23);
const LOST_MAX: i64 = (1 << 23) - 1;
const MAX_DROPOUT: u32 = 3000;
const MAX_MISORDER: u32 = 100;

/// A packet of a compound RTCP packet that the SFU acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    SenderReport {
        ssrc: u32,
        ntp: u64,
        rtp_ts: u32,
    },
    ReceiverReport {
        ssrc: u32,
        blocks: u8,
    },
    /// One FCI entry of a generic NACK: `pid` and the 16 following numbers flagged in `blp`.
    Nack {
        sender: u32,
        media: u32,
        pid: u16,
        blp: u16,
    },
    Pli {
        sender: u32,
        media: u32,
    },
    /// One FCI entry of a FIR.
    Fir {
        sender: u32,
        media: u32,
        seq: u8,
    },
    Remb {
        sender: u32,
        bitrate: u64,
    },
    /// Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01
    /// §3.1): its FCI is `data[fci_start..fci_end]` of the compound packet parsed.
    TransportCc {
        sender: u32,
        media: u32,
        fci_start: u16,
        fci_end: u16,
    },
    Bye,
}

/// Why a compound packet is refused (nothing of it is used then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpError {
    TooShort,
    BadVersion,
    PastEnd,
    BadPadding,
    BadCount,
    BadFci,
}

impl std::fmt::Display for RtcpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RtcpError::TooShort => "RTCP shorter than its 4-byte header",
            RtcpError::BadVersion => "RTCP version is not 2",
            RtcpError::PastEnd => "RTCP packet runs past the end",
            RtcpError::BadPadding => "bad RTCP padding count",
            RtcpError::BadCount => "RTCP count does not fit its packet",
            RtcpError::BadFci => "feedback FCI is malformed",
        })
    }
}

#[inline]
fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

#[inline]
fn be32(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

/// Check a whole compound packet, then call `visit` for each item in order.
///
/// The check runs first, so a malformed compound packet is refused as a whole and `visit` is never
/// called for any part of it.
pub fn parse(data: &[u8], mut visit: impl FnMut(Item)) -> Result<(), RtcpError> {
    walk(data, &mut |_| {})?;
    walk(data, &mut visit)
}

fn walk(data: &[u8], visit: &mut dyn FnMut(Item)) -> Result<(), RtcpError> {
    let n = data.len();
    if n < 4 {
        return Err(RtcpError::TooShort);
    }
    let mut pos = 0;
    while pos < n {
        if pos + 4 > n {
            return Err(RtcpError::PastEnd);
        }
        let b0 = data[pos];
        let pt = data[pos + 1];
        let words = be16(data, pos + 2) as usize;
        if b0 >> 6 != 2 {
            return Err(RtcpError::BadVersion);
        }
        let end = pos + 4 + 4 * words;
        if end > n {
            return Err(RtcpError::PastEnd);
        }
        let mut body_end = end;
        if b0 & 0x20 != 0 {
            let pad = data[end - 1] as usize;
            if pad == 0 || pad > 4 * words {
                return Err(RtcpError::BadPadding);
            }
            body_end -= pad;
        }
        let count = b0 & 0x1F;
        let start = pos + 4;
        pos = end;
        let size = body_end - start;
        match pt {
            SR => {
                if size < 24 + 24 * count as usize {
                    return Err(RtcpError::BadCount);
                }
                let ntp = ((be32(data, start + 4) as u64) << 32) | be32(data, start + 8) as u64;
                visit(Item::SenderReport {
                    ssrc: be32(data, start),
                    ntp,
                    rtp_ts: be32(data, start + 12),
                });
            }
            RR => {
                if size < 4 + 24 * count as usize {
                    return Err(RtcpError::BadCount);
                }
                visit(Item::ReceiverReport {
                    ssrc: be32(data, start),
                    blocks: count,
                });
            }
            BYE => {
                if size < 4 * count as usize {
                    return Err(RtcpError::BadCount);
                }
                let rpos = start + 4 * count as usize;
                if rpos < body_end && rpos + 1 + data[rpos] as usize > body_end {
                    return Err(RtcpError::BadCount);
                }
                visit(Item::Bye);
            }
            RTPFB | PSFB => {
                if size < 8 {
                    return Err(RtcpError::BadCount);
                }
                let sender = be32(data, start);
                let media = be32(data, start + 4);
                let mut i = start + 8;
                if pt == RTPFB && count == NACK_FMT {
                    if !(body_end - i).is_multiple_of(4) {
                        return Err(RtcpError::BadFci);
                    }
                    while i < body_end {
                        visit(Item::Nack {
                            sender,
                            media,
                            pid: be16(data, i),
                            blp: be16(data, i + 2),
                        });
                        i += 4;
                    }
                } else if pt == RTPFB && count == TRANSPORT_CC_FMT {
                    if body_end - i < 8 {
                        return Err(RtcpError::BadFci);
                    }
                    visit(Item::TransportCc {
                        sender,
                        media,
                        fci_start: i as u16,
                        fci_end: body_end as u16,
                    });
                } else if pt == PSFB && count == PLI_FMT {
                    visit(Item::Pli { sender, media });
                } else if pt == PSFB && count == FIR_FMT {
                    if !(body_end - i).is_multiple_of(8) {
                        return Err(RtcpError::BadFci);
                    }
                    while i < body_end {
                        visit(Item::Fir {
                            sender,
                            media: be32(data, i),
                            seq: data[i + 4],
                        });
                        i += 8;
                    }
                } else if pt == PSFB
                    && count == AFB_FMT
                    && body_end - i >= 4
                    && &data[i..i + 4] == b"REMB"
                {
                    if body_end - i < 8 {
                        return Err(RtcpError::BadFci);
                    }
                    let word = be32(data, i + 4);
                    let ssrcs = (word >> 24) as usize;
                    if i + 8 + 4 * ssrcs > body_end {
                        return Err(RtcpError::BadFci);
                    }
                    let bitrate = ((word & 0x3FFFF) as u64) << ((word >> 18) & 0x3F);
                    visit(Item::Remb { sender, bitrate });
                }
            }
            _ => {} // SDES, APP, XR, unknown
        }
    }
    Ok(())
}

/// The sequence numbers a NACK entry names.
pub fn nack_seqs(pid: u16, blp: u16) -> impl Iterator<Item = u16> {
    std::iter::once(pid).chain(
        (0..16u16)
            .filter(move |b| blp & (1 << b) != 0)
            .map(move |b| pid.wrapping_add(b + 1)),
    )
}

/// The 64-bit NTP timestamp of a Unix time in seconds.
pub fn ntp_timestamp(unix_seconds: f64) -> u64 {
    ((unix_seconds + NTP_UNIX_OFFSET as f64) * 4_294_967_296.0) as u64
}

/// One report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub ext_highest_seq: u32,
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

fn put_block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    let lost = (b.cumulative_lost as i64).clamp(LOST_MIN, LOST_MAX) as u32 & 0xFF_FFFF;
    out.extend_from_slice(&(((b.fraction_lost as u32) << 24) | lost).to_be_bytes());
    out.extend_from_slice(&b.ext_highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.lsr.to_be_bytes());
    out.extend_from_slice(&b.dlsr.to_be_bytes());
}

/// Append a sender report (no blocks) to `out`.
pub fn build_sr(out: &mut Vec<u8>, ssrc: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) {
    out.extend_from_slice(&[0x80, SR, 0, 6]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&ntp.to_be_bytes());
    out.extend_from_slice(&rtp_ts.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&octets.to_be_bytes());
}

/// Append a receiver report with up to 31 blocks (more are left out) to `out`.
pub fn build_rr(out: &mut Vec<u8>, ssrc: u32, blocks: &[ReportBlock]) {
    let blocks = &blocks[..blocks.len().min(31)];
    out.push(0x80 | blocks.len() as u8);
    out.push(RR);
    out.extend_from_slice(&((1 + 6 * blocks.len()) as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    for b in blocks {
        put_block(out, b);
    }
}

/// Append a picture loss indication (RFC 4585 §6.3.1) to `out`.
pub fn build_pli(out: &mut Vec<u8>, sender: u32, media: u32) {
    out.extend_from_slice(&[0x80 | PLI_FMT, PSFB, 0, 2]);
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&media.to_be_bytes());
}

/// Append generic NACKs (RFC 4585 §6.2.1) for `seqs` (ascending, modulo 2^16) to `out`: one FCI
/// entry per run of up to 17 numbers.
pub fn build_nack(out: &mut Vec<u8>, sender: u32, media: u32, seqs: &[u16]) {
    if seqs.is_empty() {
        return;
    }
    let start = out.len();
    out.extend_from_slice(&[0x80 | NACK_FMT, RTPFB, 0, 0]);
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&media.to_be_bytes());
    let mut i = 0;
    while i < seqs.len() {
        let pid = seqs[i];
        let mut blp = 0u16;
        i += 1;
        while i < seqs.len() {
            let d = seqs[i].wrapping_sub(pid);
            if d == 0 || d > 16 {
                break;
            }
            blp |= 1 << (d - 1);
            i += 1;
        }
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(&blp.to_be_bytes());
    }
    let words = ((out.len() - start) / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// Reception statistics of one incoming SSRC (RFC 3550 A.1 sequence tracking, A.3 loss, A.8 jitter).
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    pub ssrc: u32,
    started: bool,
    max_seq: u16,
    cycles: u32,
    base_seq: u16,
    bad_seq: Option<u16>,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    jitter: f64,
    last_arrival: f64,
    last_rtp_ts: u32,
    lsr: u32,
    sr_at_ms: Option<f64>,
}

impl ReceiverStats {
    pub fn new(ssrc: u32) -> Self {
        ReceiverStats {
            ssrc,
            ..Default::default()
        }
    }

    fn restart(&mut self, seq: u16) {
        self.started = true;
        self.base_seq = seq;
        self.max_seq = seq;
        self.cycles = 0;
        self.bad_seq = None;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// Account one received packet (`arrival_ms` on any monotonic clock).
    #[inline]
    pub fn update(&mut self, seq: u16, rtp_ts: u32, arrival_ms: f64, clock_rate: u32) {
        let arrival = arrival_ms * clock_rate as f64 / 1000.0;
        if self.started {
            let delta = seq.wrapping_sub(self.max_seq) as u32;
            if delta == 0 || delta > 0x10000 - MAX_MISORDER {
                self.received = self.received.wrapping_add(1);
                return;
            }
            if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(0x10000);
                }
                self.max_seq = seq;
                let ts_delta = rtp_ts.wrapping_sub(self.last_rtp_ts) as i32 as f64;
                let d = (arrival - self.last_arrival - ts_delta).abs();
                self.jitter += (d - self.jitter) / 16.0;
            } else if self.bad_seq != Some(seq) {
                self.bad_seq = Some(seq.wrapping_add(1));
                return;
            } else {
                self.restart(seq);
            }
        } else {
            self.restart(seq);
        }
        self.received = self.received.wrapping_add(1);
        self.last_arrival = arrival;
        self.last_rtp_ts = rtp_ts;
    }

    /// Remember an SR from this source for the LSR/DLSR of the next report.
    pub fn on_sender_report(&mut self, ntp: u64, arrival_ms: f64) {
        self.lsr = (ntp >> 16) as u32;
        self.sr_at_ms = Some(arrival_ms);
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    pub fn cumulative_lost(&self) -> i64 {
        if !self.started {
            return 0;
        }
        (self.cycles as i64 + self.max_seq as i64) - self.base_seq as i64 + 1 - self.received as i64
    }

    /// The block for the next report about this source (None before its first packet); call once per report.
    pub fn report_block(&mut self, now_ms: f64) -> Option<ReportBlock> {
        if !self.started {
            return None;
        }
        let ext_max = self.cycles.wrapping_add(self.max_seq as u32);
        let expected = ext_max.wrapping_sub(self.base_seq as u32).wrapping_add(1);
        let lost = (expected as i64 - self.received as i64).clamp(LOST_MIN, LOST_MAX);
        let expected_interval = expected.wrapping_sub(self.expected_prior) as i64;
        let received_interval = self.received.wrapping_sub(self.received_prior) as i64;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval - received_interval;
        let fraction = if expected_interval > 0 && lost_interval > 0 {
            ((lost_interval << 8) / expected_interval).min(255) as u8
        } else {
            0
        };
        let dlsr = match self.sr_at_ms {
            Some(at) => ((now_ms - at) * 65.536).max(0.0) as u32,
            None => 0,
        };
        Some(ReportBlock {
            ssrc: self.ssrc,
            fraction_lost: fraction,
            cumulative_lost: lost as i32,
            ext_highest_seq: ext_max,
            jitter: self.jitter as u32,
            lsr: self.lsr,
            dlsr,
        })
    }
}

/// The last packets sent to one consumer, by outgoing sequence number, to answer its NACKs.
///
/// A fixed ring of reused buffers: storing a packet copies it into its slot (no allocation once the
/// slot has grown to the packet size). Plaintext is stored: a retransmission is protected again.
pub struct PacketHistory {
    mask: usize,
    seqs: Vec<i32>,
    packets: Vec<Vec<u8>>,
}

impl PacketHistory {
    /// `size` must be a power of two up to 32768.
    pub fn new(size: usize) -> Self {
        assert!(
            size.is_power_of_two() && size <= 0x8000,
            "size must be a power of two up to 32768"
        );
        PacketHistory {
            mask: size - 1,
            seqs: vec![-1; size],
            packets: (0..size).map(|_| Vec::new()).collect(),
        }
    }

    pub fn put(&mut self, packet: &[u8]) {
        if packet.len() < 4 {
            return;
        }
        let seq = be16(packet, 2);
        let i = seq as usize & self.mask;
        self.seqs[i] = seq as i32;
        let slot = &mut self.packets[i];
        slot.clear();
        slot.extend_from_slice(packet);
    }

    pub fn get(&self, seq: u16) -> Option<&[u8]> {
        let i = seq as usize & self.mask;
        (self.seqs[i] == seq as i32).then(|| self.packets[i].as_slice())
    }
}

/// At most one keyframe request per producer per interval; a request in the quiet period is kept
/// and sent when the period ends, unless a keyframe arrives meanwhile.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    pub interval_ms: i64,
    last_ms: Option<i64>,
    pending: bool,
}

impl KeyframeThrottle {
    pub fn new(interval_ms: i64) -> Self {
        KeyframeThrottle {
            interval_ms,
            last_ms: None,
            pending: false,
        }
    }

    /// A consumer wants a keyframe: send a request now?
    pub fn request(&mut self, now_ms: i64) -> bool {
        match self.last_ms {
            Some(last) if now_ms - last < self.interval_ms => {
                self.pending = true;
                false
            }
            _ => {
                self.last_ms = Some(now_ms);
                self.pending = false;
                true
            }
        }
    }

    /// Timer check: send the pending request now?
    pub fn poll(&mut self, now_ms: i64) -> bool {
        self.pending && self.request(now_ms)
    }

    pub fn keyframe_received(&mut self) {
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(data: &[u8]) -> Result<Vec<Item>, RtcpError> {
        let mut items = Vec::new();
        parse(data, |i| items.push(i))?;
        Ok(items)
    }

    #[test]
    fn builds_and_parses_reports_and_feedback() {
        let mut out = Vec::new();
        build_sr(&mut out, 1, 0x0102_0304_0506_0708, 9, 10, 11);
        let block = ReportBlock {
            ssrc: 5,
            fraction_lost: 3,
            cumulative_lost: -2,
            ext_highest_seq: 70_000,
            jitter: 4,
            lsr: 6,
            dlsr: 7,
        };
        build_rr(&mut out, 2, &[block]);
        build_pli(&mut out, 3, 4);
        out.extend_from_slice(&[
            0x81,
            RTPFB,
            0,
            3,
            0,
            0,
            0,
            3,
            0,
            0,
            0,
            4,
            0x00,
            0x0A,
            0b0000_0000,
            0b0000_0101,
        ]);
        out.extend_from_slice(&[
            0x84, PSFB, 0, 4, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0,
        ]);
        let items = collect(&out).unwrap();
        assert_eq!(
            items,
            vec![
                Item::SenderReport {
                    ssrc: 1,
                    ntp: 0x0102_0304_0506_0708,
                    rtp_ts: 9
                },
                Item::ReceiverReport { ssrc: 2, blocks: 1 },
                Item::Pli {
                    sender: 3,
                    media: 4
                },
                Item::Nack {
                    sender: 3,
                    media: 4,
                    pid: 10,
                    blp: 5
                },
                Item::Fir {
                    sender: 3,
                    media: 8,
                    seq: 7
                },
            ]
        );
        assert_eq!(nack_seqs(10, 5).collect::<Vec<_>>(), vec![10, 11, 13]);
        assert_eq!(nack_seqs(65_535, 1).collect::<Vec<_>>(), vec![65_535, 0]);
        let mut nack = Vec::new();
        build_nack(&mut nack, 1, 2, &[65_530, 65_531, 2, 40]);
        let mut seqs = Vec::new();
        parse(&nack, |i| {
            if let Item::Nack { pid, blp, .. } = i {
                seqs.extend(nack_seqs(pid, blp));
            }
        })
        .unwrap();
        assert_eq!(seqs, vec![65_530, 65_531, 2, 40]);
        let mut tcc = vec![0x8F, RTPFB, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2];
        tcc.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            collect(&tcc).unwrap(),
            vec![Item::TransportCc {
                sender: 1,
                media: 2,
                fci_start: 12,
                fci_end: 20
            }]
        );
    }

    #[test]
    fn malformed_compounds_are_refused_whole() {
        let mut good = Vec::new();
        build_pli(&mut good, 1, 2);
        let mut bad = good.clone();
        bad.extend_from_slice(&[0x80, RR, 0, 9]);
        let mut seen = 0;
        assert_eq!(parse(&bad, |_| seen += 1), Err(RtcpError::PastEnd));
        assert_eq!(seen, 0);
        assert_eq!(collect(&[0x80, 200]), Err(RtcpError::TooShort));
        assert_eq!(collect(&[0x40, 200, 0, 0]), Err(RtcpError::BadVersion));
        assert_eq!(collect(&[0x81, SR, 0, 0]), Err(RtcpError::BadCount));
        assert_eq!(
            collect(&[0xA0, RR, 0, 1, 0, 0, 0, 9]),
            Err(RtcpError::BadPadding)
        );
    }

    #[test]
    fn receiver_stats_count_loss_and_rollover() {
        let mut s = ReceiverStats::new(9);
        for (i, seq) in [65_534u16, 65_535, 1, 2].iter().enumerate() {
            s.update(*seq, 960 * i as u32, 20.0 * i as f64, 48_000);
        }
        let b = s.report_block(100.0).unwrap();
        assert_eq!(b.ext_highest_seq, 0x10000 + 2);
        assert_eq!(b.cumulative_lost, 1);
        assert_eq!(b.fraction_lost, 51);
        s.on_sender_report(0x1234_5678_9ABC_DEF0, 100.0);
        let b = s.report_block(1100.0).unwrap();
        assert_eq!((b.lsr, b.dlsr, b.fraction_lost), (0x5678_9ABC, 65_536, 0));
    }

    #[test]
    fn history_and_throttle() {
        let mut h = PacketHistory::new(4);
        h.put(&[0x80, 0, 0, 9, 1]);
        h.put(&[0x80, 0, 0, 13, 2]);
        assert_eq!(h.get(9), None);
        assert_eq!(h.get(13), Some(&[0x80, 0, 0, 13, 2][..]));
        let mut t = KeyframeThrottle::new(1000);
        assert!(t.request(0));
        assert!(!t.request(10));
        assert!(!t.poll(500));
        assert!(t.poll(1000));
        assert!(!t.poll(1001));
        assert!(!t.request(1500));
        t.keyframe_received();
        assert!(!t.poll(2500));
    }
}
