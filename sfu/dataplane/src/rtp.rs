//! RTP header parsing (RFC 3550), header extensions (RFC 8285) and the per-consumer rewriter.
//!
//! A producer's packet is parsed once (`parse`), then each consumer's `Rewriter` writes its own
//! version into a reused buffer: SSRC, payload type, sequence number, timestamp and an extension
//! block carrying exactly the consumer's negotiated elements (mid, abs-send-time, audio level).
//! Nothing here allocates per packet.

/// Why a datagram is not acceptable RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    TooShort,
    BadVersion,
    CsrcsPastEnd,
    ExtensionPastEnd,
    BadPadding,
}

impl std::fmt::Display for RtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RtpError::TooShort => "RTP packet shorter than 12 bytes",
            RtpError::BadVersion => "RTP version is not 2",
            RtpError::CsrcsPastEnd => "CSRC list runs past the packet",
            RtpError::ExtensionPastEnd => "header extension runs past the packet",
            RtpError::BadPadding => "bad padding count",
        })
    }
}

/// A parsed RTP header: offsets into the packet it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// End of the CSRC list (12 + 4 × CC).
    pub csrc_end: usize,
    /// The extension block's profile (0xBEDE one-byte, 0x100X two-byte) or 0 for none.
    pub ext_profile: u16,
    /// Where the extension elements start and end (after the 4-byte block header).
    pub ext_start: usize,
    pub ext_end: usize,
    /// The payload: from the end of the header to before the padding.
    pub payload_start: usize,
    pub payload_end: usize,
}

pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
pub const TWO_BYTE_PROFILE: u16 = 0x1000;

#[inline]
fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

#[inline]
fn be32(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

/// Parse and check an RTP packet's header; every offset in the result lies inside `data`.
#[inline]
pub fn parse(data: &[u8]) -> Result<Header, RtpError> {
    let mut h = parse_header_only(data)?;
    if data[0] & 0x20 != 0 {
        let pad = data[data.len() - 1] as usize;
        if pad == 0 || h.payload_start + pad > data.len() {
            return Err(RtpError::BadPadding);
        }
        h.payload_end = data.len() - pad;
    }
    Ok(h)
}

/// `parse` for a packet whose payload may be encrypted (SRTP): the padding bit is not checked, since
/// the padding count sits in the encrypted part (or under the auth tag).
#[inline]
pub fn parse_header_only(data: &[u8]) -> Result<Header, RtpError> {
    let n = data.len();
    if n < 12 {
        return Err(RtpError::TooShort);
    }
    let b0 = data[0];
    if b0 >> 6 != 2 {
        return Err(RtpError::BadVersion);
    }
    let csrc_end = 12 + 4 * (b0 & 0x0F) as usize;
    if csrc_end > n {
        return Err(RtpError::CsrcsPastEnd);
    }
    let (mut ext_profile, mut ext_start, mut ext_end) = (0u16, csrc_end, csrc_end);
    if b0 & 0x10 != 0 {
        if csrc_end + 4 > n {
            return Err(RtpError::ExtensionPastEnd);
        }
        ext_profile = be16(data, csrc_end);
        ext_start = csrc_end + 4;
        ext_end = ext_start + 4 * be16(data, csrc_end + 2) as usize;
        if ext_end > n {
            return Err(RtpError::ExtensionPastEnd);
        }
    }
    Ok(Header {
        marker: data[1] & 0x80 != 0,
        payload_type: data[1] & 0x7F,
        seq: be16(data, 2),
        timestamp: be32(data, 4),
        ssrc: be32(data, 8),
        csrc_end,
        ext_profile,
        ext_start,
        ext_end,
        payload_start: if b0 & 0x10 != 0 { ext_end } else { csrc_end },
        payload_end: n,
    })
}

/// The value of header extension element `id`, if the packet has it (one- or two-byte form).
#[inline]
pub fn find_extension<'a>(data: &'a [u8], h: &Header, id: u8) -> Option<&'a [u8]> {
    find_extension_range(data, h, id).map(|r| &data[r])
}

/// Where the value of header extension element `id` sits in the packet, to rewrite it in place.
#[inline]
pub fn find_extension_range(data: &[u8], h: &Header, id: u8) -> Option<std::ops::Range<usize>> {
    if id == 0 || h.ext_profile == 0 {
        return None;
    }
    let (mut i, end) = (h.ext_start, h.ext_end);
    if h.ext_profile == ONE_BYTE_PROFILE {
        while i < end {
            let b = data[i];
            if b == 0 {
                i += 1; // padding
                continue;
            }
            let el_id = b >> 4;
            if el_id == 15 {
                return None; // reserved: stop parsing (RFC 8285 §4.2)
            }
            let len = (b & 0x0F) as usize + 1;
            let start = i + 1;
            if start + len > end {
                return None;
            }
            if el_id == id {
                return Some(start..start + len);
            }
            i = start + len;
        }
    } else if h.ext_profile & 0xFFF0 == TWO_BYTE_PROFILE {
        while i < end {
            let el_id = data[i];
            if el_id == 0 {
                i += 1;
                continue;
            }
            if i + 2 > end {
                return None;
            }
            let len = data[i + 1] as usize;
            let start = i + 2;
            if start + len > end {
                return None;
            }
            if el_id == id {
                return Some(start..start + len);
            }
            i = start + len;
        }
    }
    None
}

/// The RFC 6464 audio level byte (V bit | level in -dBov), if present.
#[inline]
pub fn audio_level(data: &[u8], h: &Header, id: u8) -> Option<u8> {
    find_extension(data, h, id).and_then(|v| v.first().copied())
}

/// The 24-bit abs-send-time (6.18 fixed-point seconds) for a monotonic time in nanoseconds.
#[inline]
pub fn abs_send_time(ns: u64) -> u32 {
    (((ns << 18) / 1_000_000_000) & 0xFF_FFFF) as u32
}

const STALE_WINDOW: u16 = 0x4000;

/// The extension ids a consumer negotiated (0: not negotiated) and its mid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub mid: Vec<u8>,
    pub mid_id: u8,
    pub abs_send_time_id: u8,
    pub audio_level_id: u8,
    /// Transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01): the
    /// value is the subscriber peer's counter, given to `rewrite_with` per packet.
    pub transport_cc_id: u8,
}

/// Why a rewriter configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// One consumer's rewriting state: a producer's packets become this consumer's packets.
///
/// Sequence numbers and timestamps are `in + offset`; the offsets are re-based on the first packet
/// after `switch_source()`/`resume()` or when the incoming SSRC changes, so the consumer sees
/// `last_seq + 1` and a timestamp advanced by the wall-clock time since the last forwarded packet
/// (at least `min_ts_step`). Late packets from before a re-base, or more than 16384 behind the newest
/// forwarded one, and payload types the consumer did not negotiate, are dropped.
#[derive(Debug, Clone)]
pub struct Rewriter {
    ssrc: u32,
    clock_rate: u32,
    min_ts_step: u32,
    started: bool,
    in_ssrc: Option<u32>,
    hi_seq: u16,
    hi_ts: u32,
    hi_ms: i64,
    floor: u16,
    seq_off: u16,
    ts_off: u32,
    pt_map: [u8; 128], // 0xFF: not negotiated
    ext: Extensions,
    one_byte: bool,
}

impl Rewriter {
    pub fn new(
        ssrc: u32,
        clock_rate: u32,
        initial_seq: u16,
        initial_ts: u32,
    ) -> Result<Self, ConfigError> {
        if clock_rate == 0 {
            return Err(ConfigError("clock_rate must be positive".into()));
        }
        let hi_seq = initial_seq.wrapping_sub(1);
        Ok(Rewriter {
            ssrc,
            clock_rate,
            min_ts_step: clock_rate / 50,
            started: false,
            in_ssrc: None,
            hi_seq,
            hi_ts: initial_ts,
            hi_ms: 0,
            floor: hi_seq,
            seq_off: 0,
            ts_off: 0,
            pt_map: [0xFF; 128],
            ext: Extensions::default(),
            one_byte: true,
        })
    }

    /// (Re)apply the negotiated payload types (producer PT → consumer PT) and extensions; seq/ts state is kept.
    pub fn configure(
        &mut self,
        payload_types: &[(u8, u8)],
        ext: Extensions,
    ) -> Result<(), ConfigError> {
        let mut map = [0xFFu8; 128];
        for &(pt_in, pt_out) in payload_types {
            if pt_in > 127 || pt_out > 127 {
                return Err(ConfigError(format!(
                    "payload type mapping {pt_in}->{pt_out} out of range"
                )));
            }
            map[pt_in as usize] = pt_out;
        }
        let ids: Vec<u8> = [
            ext.mid_id,
            ext.abs_send_time_id,
            ext.audio_level_id,
            ext.transport_cc_id,
        ]
        .into_iter()
        .filter(|&i| i != 0)
        .collect();
        for (k, a) in ids.iter().enumerate() {
            if ids[k + 1..].contains(a) {
                return Err(ConfigError(format!(
                    "extension ids must be distinct, got {ids:?}"
                )));
            }
        }
        if ext.mid_id != 0 && ext.mid.is_empty() {
            return Err(ConfigError("mid_id given without a mid".into()));
        }
        if ext.mid.len() > 255 {
            return Err(ConfigError("mid longer than 255 bytes".into()));
        }
        self.one_byte = ids.iter().all(|&i| i <= 14) && ext.mid.len() <= 16;
        self.pt_map = map;
        self.ext = ext;
        Ok(())
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Whether packets carry a transport-wide sequence number (then `rewrite_with` writes `twcc_seq`).
    pub fn writes_transport_seq(&self) -> bool {
        self.ext.transport_cc_id != 0
    }

    pub fn transport_cc_id(&self) -> u8 {
        self.ext.transport_cc_id
    }

    pub fn last_seq(&self) -> u16 {
        self.hi_seq
    }

    /// Outgoing RTP time at `now_ms`: the newest packet's timestamp plus the time elapsed since.
    pub fn timestamp_at(&self, now_ms: i64) -> u32 {
        if !self.started {
            return self.hi_ts;
        }
        let elapsed = (now_ms - self.hi_ms).max(0) as u64;
        self.hi_ts
            .wrapping_add((elapsed * self.clock_rate as u64 / 1000) as u32)
    }

    /// The next packet comes from another source (or after a pause): re-base seq and ts on it.
    pub fn switch_source(&mut self) {
        self.in_ssrc = None;
    }

    fn rebase(&mut self, seq: u16, ts: u32, ssrc: u32, now_ms: i64) {
        let out_ts = if self.started {
            let elapsed = now_ms - self.hi_ms;
            let step = if elapsed > 0 {
                (elapsed as u64 * self.clock_rate as u64 / 1000) as u32
            } else {
                0
            };
            self.hi_ts.wrapping_add(step.max(self.min_ts_step))
        } else {
            self.started = true;
            self.hi_ts
        };
        let out_seq = self.hi_seq.wrapping_add(1);
        self.seq_off = out_seq.wrapping_sub(seq);
        self.ts_off = out_ts.wrapping_sub(ts);
        self.floor = out_seq;
        self.hi_seq = out_seq.wrapping_sub(1);
        self.in_ssrc = Some(ssrc);
    }

    /// Write this consumer's version of `data` (parsed as `h`) into `out`; false to drop it.
    ///
    /// `abs_time`: the 24-bit abs-send-time to write, if negotiated; `level`: the producer's audio
    /// level byte, copied when the consumer negotiated the extension.
    #[inline]
    pub fn rewrite(
        &mut self,
        data: &[u8],
        h: &Header,
        now_ms: i64,
        abs_time: u32,
        level: Option<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        self.rewrite_with(data, h, now_ms, abs_time, level, 0, out)
            .is_some()
    }

    /// `rewrite`, with the transport-wide sequence number to write (if negotiated); returns where
    /// the payload starts in `out` (for codec-specific rewriting in place), None to drop the packet.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn rewrite_with(
        &mut self,
        data: &[u8],
        h: &Header,
        now_ms: i64,
        abs_time: u32,
        level: Option<u8>,
        twcc_seq: u16,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        let pt = self.pt_map[h.payload_type as usize];
        if pt == 0xFF {
            return None;
        }
        if self.in_ssrc != Some(h.ssrc) {
            self.rebase(h.seq, h.timestamp, h.ssrc, now_ms);
        }
        let out_seq = h.seq.wrapping_add(self.seq_off);
        let out_ts = h.timestamp.wrapping_add(self.ts_off);
        if out_seq.wrapping_sub(self.hi_seq) < 0x8000 {
            self.hi_seq = out_seq;
            self.hi_ts = out_ts;
            self.hi_ms = now_ms;
            if out_seq.wrapping_sub(self.floor) > STALE_WINDOW {
                self.floor = out_seq.wrapping_sub(STALE_WINDOW);
            }
        } else if out_seq.wrapping_sub(self.floor) >= 0x8000 {
            return None;
        }
        out.clear();
        let level = if self.ext.audio_level_id != 0 {
            level
        } else {
            None
        };
        let has_ext = self.has_extensions(level);
        out.push((data[0] & 0xEF) | if has_ext { 0x10 } else { 0 });
        out.push(pt | (data[1] & 0x80));
        out.extend_from_slice(&out_seq.to_be_bytes());
        out.extend_from_slice(&out_ts.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&data[12..h.csrc_end]);
        if has_ext {
            self.put_extensions(out, abs_time, level, twcc_seq);
        }
        let payload_start = out.len();
        out.extend_from_slice(&data[h.payload_start..]);
        Some(payload_start)
    }

    fn has_extensions(&self, level: Option<u8>) -> bool {
        let ext = &self.ext;
        ext.mid_id != 0 || ext.abs_send_time_id != 0 || ext.transport_cc_id != 0 || level.is_some()
    }

    /// Append the extension block with this consumer's negotiated elements.
    #[inline]
    fn put_extensions(&self, out: &mut Vec<u8>, abs_time: u32, level: Option<u8>, twcc_seq: u16) {
        let ext = &self.ext;
        let block = out.len();
        let profile = if self.one_byte {
            ONE_BYTE_PROFILE
        } else {
            TWO_BYTE_PROFILE
        };
        out.extend_from_slice(&profile.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        if ext.mid_id != 0 {
            if self.one_byte {
                out.push((ext.mid_id << 4) | (ext.mid.len() as u8 - 1));
            } else {
                out.push(ext.mid_id);
                out.push(ext.mid.len() as u8);
            }
            out.extend_from_slice(&ext.mid);
        }
        if ext.abs_send_time_id != 0 {
            if self.one_byte {
                out.push((ext.abs_send_time_id << 4) | 2);
            } else {
                out.push(ext.abs_send_time_id);
                out.push(3);
            }
            out.extend_from_slice(&abs_time.to_be_bytes()[1..]);
        }
        if let Some(level) = level {
            if self.one_byte {
                out.push(ext.audio_level_id << 4);
            } else {
                out.push(ext.audio_level_id);
                out.push(1);
            }
            out.push(level);
        }
        if ext.transport_cc_id != 0 {
            if self.one_byte {
                out.push((ext.transport_cc_id << 4) | 1);
            } else {
                out.push(ext.transport_cc_id);
                out.push(2);
            }
            out.extend_from_slice(&twcc_seq.to_be_bytes());
        }
        while !(out.len() - block).is_multiple_of(4) {
            out.push(0);
        }
        let words = ((out.len() - block - 4) / 4) as u16;
        out[block + 2..block + 4].copy_from_slice(&words.to_be_bytes());
    }

    /// A padding-only packet on this consumer's RTX stream (a bandwidth probe): RTX `pt`, `ssrc`
    /// and `seq`, the P bit with `padding` bytes (the last one their count, RFC 3550 §5.1) and no
    /// payload, and the consumer's extensions (mid, abs-send-time, the transport-wide `twcc_seq`);
    /// the timestamp is the media stream's at `now_ms`. A receiver accounts it for congestion control
    /// and drops it (RFC 4588: no original sequence number, nothing to repair).
    #[allow(clippy::too_many_arguments)]
    pub fn write_padding(
        &self,
        out: &mut Vec<u8>,
        pt: u8,
        ssrc: u32,
        seq: u16,
        now_ms: i64,
        abs_time: u32,
        twcc_seq: u16,
        padding: u8,
    ) {
        out.clear();
        let has_ext = self.has_extensions(None);
        out.push(0xA0 | if has_ext { 0x10 } else { 0 });
        out.push(pt & 0x7F);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp_at(now_ms).to_be_bytes());
        out.extend_from_slice(&ssrc.to_be_bytes());
        if has_ext {
            self.put_extensions(out, abs_time, None, twcc_seq);
        }
        let padding = padding.max(1);
        out.resize(out.len() + padding as usize - 1, 0);
        out.push(padding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, ssrc: u32, ext: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80 | if ext.is_empty() { 0 } else { 0x10 }, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        if !ext.is_empty() {
            assert_eq!(ext.len() % 4, 0);
            p.extend_from_slice(&ONE_BYTE_PROFILE.to_be_bytes());
            p.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
            p.extend_from_slice(ext);
        }
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parse_reads_fields_and_extensions() {
        let p = packet(7, 960, 0xAABBCCDD, &[0x10, 0x30, 0x00, 0x00], b"opus");
        let h = parse(&p).unwrap();
        assert_eq!(
            (h.seq, h.timestamp, h.ssrc, h.payload_type),
            (7, 960, 0xAABBCCDD, 111)
        );
        assert_eq!(&p[h.payload_start..h.payload_end], b"opus");
        assert_eq!(audio_level(&p, &h, 1), Some(0x30));
        assert_eq!(find_extension(&p, &h, 2), None);
    }

    #[test]
    fn parse_refuses_malformed_headers() {
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort));
        let mut p = packet(1, 1, 1, &[], b"x");
        p[0] = 0x40;
        assert_eq!(parse(&p), Err(RtpError::BadVersion));
        p[0] = 0x8F;
        assert_eq!(parse(&p), Err(RtpError::CsrcsPastEnd));
        let mut e = packet(1, 1, 1, &[0x10, 0x30, 0, 0], b"");
        e[15] = 9;
        assert_eq!(parse(&e), Err(RtpError::ExtensionPastEnd));
        let mut pad = packet(1, 1, 1, &[], b"xy");
        pad[0] |= 0x20;
        pad[13] = 0;
        assert_eq!(parse(&pad), Err(RtpError::BadPadding));
    }

    fn rewriter() -> Rewriter {
        let mut r = Rewriter::new(0x1111, 48_000, 100, 5000).unwrap();
        r.configure(
            &[(111, 109)],
            Extensions {
                mid: b"1".to_vec(),
                mid_id: 4,
                abs_send_time_id: 2,
                audio_level_id: 1,
                transport_cc_id: 0,
            },
        )
        .unwrap();
        r
    }

    #[test]
    fn rewrite_maps_seq_ts_ssrc_pt_and_writes_negotiated_extensions() {
        let mut r = rewriter();
        let mut out = Vec::new();
        let p = packet(40_000, 123_456, 9, &[0x10, 0x45, 0, 0], b"payload");
        let h = parse(&p).unwrap();
        assert!(r.rewrite(&p, &h, 1000, 0xABCDEF, audio_level(&p, &h, 1), &mut out));
        let o = parse(&out).unwrap();
        assert_eq!(
            (o.seq, o.timestamp, o.ssrc, o.payload_type),
            (100, 5000, 0x1111, 109)
        );
        assert_eq!(find_extension(&out, &o, 4), Some(&b"1"[..]));
        assert_eq!(find_extension(&out, &o, 2), Some(&[0xAB, 0xCD, 0xEF][..]));
        assert_eq!(audio_level(&out, &o, 1), Some(0x45));
        assert_eq!(&out[o.payload_start..], b"payload");
        let p2 = packet(40_001, 124_416, 9, &[], b"next");
        let h2 = parse(&p2).unwrap();
        assert!(r.rewrite(&p2, &h2, 1020, 0, None, &mut out));
        let o2 = parse(&out).unwrap();
        assert_eq!((o2.seq, o2.timestamp), (101, 5960));
        assert_eq!(audio_level(&out, &o2, 1), None);
    }

    #[test]
    fn a_new_source_continues_the_sequence_and_advances_time() {
        let mut r = rewriter();
        let mut out = Vec::new();
        let a = packet(10, 1000, 1, &[], b"a");
        assert!(r.rewrite(&a, &parse(&a).unwrap(), 0, 0, None, &mut out));
        let b = packet(60_000, 77, 2, &[], b"b");
        assert!(r.rewrite(&b, &parse(&b).unwrap(), 500, 0, None, &mut out));
        let o = parse(&out).unwrap();
        assert_eq!(o.seq, 101);
        assert_eq!(o.timestamp, 5000 + 24_000);
        // a late packet from before the re-base is dropped
        let late2 = packet(59_990, 40, 2, &[], b"z");
        assert!(!r.rewrite(&late2, &parse(&late2).unwrap(), 510, 0, None, &mut out));
    }

    #[test]
    fn transport_wide_sequence_numbers_are_written_when_negotiated() {
        let mut r = Rewriter::new(5, 90_000, 0, 0).unwrap();
        r.configure(
            &[(111, 111)],
            Extensions {
                transport_cc_id: 5,
                ..Default::default()
            },
        )
        .unwrap();
        let p = packet(1, 1, 1, &[], b"x");
        let mut out = Vec::new();
        let at = r
            .rewrite_with(&p, &parse(&p).unwrap(), 0, 0, None, 0xBEEF, &mut out)
            .unwrap();
        let o = parse(&out).unwrap();
        assert_eq!(find_extension(&out, &o, 5), Some(&[0xBE, 0xEF][..]));
        assert_eq!((at, &out[at..]), (o.payload_start, &b"x"[..]));
        let range = find_extension_range(&out, &o, 5).unwrap();
        out[range].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(find_extension(&out, &o, 5), Some(&[0, 7][..]));
    }

    #[test]
    fn unnegotiated_payload_types_are_dropped() {
        let mut r = rewriter();
        let mut p = packet(1, 1, 1, &[], b"x");
        p[1] = 96;
        assert!(!r.rewrite(&p, &parse(&p).unwrap(), 0, 0, None, &mut Vec::new()));
    }

    #[test]
    fn two_byte_form_for_long_mids() {
        let mut r = Rewriter::new(5, 90_000, 0, 0).unwrap();
        r.configure(
            &[(111, 111)],
            Extensions {
                mid: b"a-very-long-mid-value".to_vec(),
                mid_id: 3,
                abs_send_time_id: 0,
                audio_level_id: 0,
                transport_cc_id: 0,
            },
        )
        .unwrap();
        let p = packet(1, 1, 1, &[], b"x");
        let mut out = Vec::new();
        assert!(r.rewrite(&p, &parse(&p).unwrap(), 0, 0, None, &mut out));
        let o = parse(&out).unwrap();
        assert_eq!(o.ext_profile, TWO_BYTE_PROFILE);
        assert_eq!(
            find_extension(&out, &o, 3),
            Some(&b"a-very-long-mid-value"[..])
        );
    }

    #[test]
    fn csrcs_and_padding_pass_through() {
        let mut p = vec![0xA1, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xC, 0xC, 0xC, 0xC];
        p.extend_from_slice(b"data");
        p.extend_from_slice(&[0, 0, 3]);
        let h = parse(&p).unwrap();
        assert_eq!(&p[h.payload_start..h.payload_end], b"data");
        let mut r = rewriter();
        let mut out = Vec::new();
        assert!(r.rewrite(&p, &h, 0, 7, None, &mut out));
        let o = parse(&out).unwrap();
        assert_eq!(&out[12..16], &[0xC; 4]);
        assert_eq!(&out[o.payload_start..o.payload_end], b"data");
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut r = rewriter();
        assert!(r.configure(&[(200, 1)], Extensions::default()).is_err());
        assert!(r
            .configure(
                &[],
                Extensions {
                    mid: vec![],
                    mid_id: 1,
                    ..Default::default()
                }
            )
            .is_err());
        assert!(r
            .configure(
                &[],
                Extensions {
                    mid: b"0".to_vec(),
                    mid_id: 1,
                    abs_send_time_id: 1,
                    audio_level_id: 0,
                    transport_cc_id: 0,
                }
            )
            .is_err());
    }
}
