//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01,
//! RTCP RTPFB FMT 15): parsing the FCI a receiver sends back into per-packet results, and a builder
//! (what a receiver would send) for tests, simulations and the fuzz round trip.
//!
//! The FCI is what follows the RTCP feedback common header (4 bytes of V/P/FMT, PT, length, then the
//! sender and media SSRCs):
//!
//! ```text
//!  base sequence number (16) | packet status count (16)
//!  reference time (24, ×64 ms) | feedback packet count (8)
//!  packet chunks (16 each) ... | receive deltas (8 or 16 each) ... | zero padding
//! ```
//!
//! A chunk is either a run (bit 15 clear: a 2-bit status, a 13-bit run length) or a status vector
//! (bit 15 set; bit 14 clear: fourteen 1-bit statuses, set: seven 2-bit ones). Status 0 is "not
//! received", 1 "received, small delta" (one unsigned byte), 2 "received, large or negative delta"
//! (a signed 16-bit word), 3 is reserved. Deltas count 250 µs, the first from the reference time,
//! each later one from the previous received packet.
//!
//! Parsing visits each packet in sequence order and allocates nothing. The whole FCI is checked
//! before the first visit, so a malformed one is refused as a whole: an estimator fed by the visitor
//! never sees half of a bad packet. Bytes after the last delta are taken as padding and ignored.

/// The reference time's unit, in microseconds.
pub const REFERENCE_TIME_US: i64 = 64_000;
/// A receive delta's unit, in microseconds.
pub const DELTA_US: i64 = 250;
/// Bytes of the fixed part of the FCI (base seq, status count, reference time, feedback count).
pub const HEADER_LEN: usize = 8;
/// The most packets one feedback can describe (the status count is 16 bits).
pub const MAX_STATUS_COUNT: usize = 0xFFFF;

const STATUS_NOT_RECEIVED: u8 = 0;
const STATUS_SMALL: u8 = 1;
const STATUS_LARGE: u8 = 2;
const MAX_RUN: usize = 0x1FFF;
/// Reference times wrap at 24 bits.
const REFERENCE_MASK: u32 = 0xFF_FFFF;
/// 250 µs ticks per reference-time unit.
const TICKS_PER_REFERENCE: i64 = REFERENCE_TIME_US / DELTA_US;

/// Why a feedback FCI is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackError {
    /// Shorter than the 8-byte fixed part.
    TooShort,
    /// The chunks end before they cover the packet status count.
    MissingChunks,
    /// The receive deltas end before every received packet has one.
    MissingDeltas,
    /// A status of a described packet is the reserved value 3.
    ReservedStatus,
}

impl std::fmt::Display for FeedbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FeedbackError::TooShort => "transport-cc feedback shorter than its 8-byte header",
            FeedbackError::MissingChunks => "transport-cc chunks do not cover the status count",
            FeedbackError::MissingDeltas => "transport-cc receive deltas run past the end",
            FeedbackError::ReservedStatus => "transport-cc packet status 3 is reserved",
        })
    }
}

impl std::error::Error for FeedbackError {}

/// The fixed part of a feedback FCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackHeader {
    pub base_seq: u16,
    pub status_count: u16,
    /// 24 bits, in units of 64 ms, on the receiver's clock (an arbitrary base, wrapping).
    pub reference_time: u32,
    /// Counts the feedback packets a receiver sent (wrapping), to tell lost feedback.
    pub fb_pkt_count: u8,
}

impl FeedbackHeader {
    /// The reference time in microseconds (not unwrapped).
    pub fn reference_time_us(&self) -> i64 {
        i64::from(self.reference_time) * REFERENCE_TIME_US
    }
}

#[inline]
fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

/// Parse the fixed part only (8 bytes): what an estimator needs before the packets are visited.
pub fn parse_header(fci: &[u8]) -> Result<FeedbackHeader, FeedbackError> {
    if fci.len() < HEADER_LEN {
        return Err(FeedbackError::TooShort);
    }
    Ok(FeedbackHeader {
        base_seq: be16(fci, 0),
        status_count: be16(fci, 2),
        reference_time: u32::from_be_bytes([0, fci[4], fci[5], fci[6]]),
        fb_pkt_count: fci[7],
    })
}

/// Check a whole feedback FCI, then call `visit(seq, recv_time_us)` for each packet it describes,
/// in sequence order: `None` for a packet reported not received, else its receive time in
/// microseconds on the receiver's clock (the reference time, not unwrapped, plus the deltas).
pub fn parse(
    fci: &[u8],
    mut visit: impl FnMut(u16, Option<i64>),
) -> Result<FeedbackHeader, FeedbackError> {
    walk(fci, &mut |_, _| {})?;
    walk(fci, &mut visit)
}

/// How many packets a chunk describes at most.
#[inline]
fn chunk_capacity(chunk: u16) -> usize {
    if chunk & 0x8000 == 0 {
        (chunk as usize) & MAX_RUN
    } else if chunk & 0x4000 == 0 {
        14
    } else {
        7
    }
}

fn walk(
    fci: &[u8],
    visit: &mut dyn FnMut(u16, Option<i64>),
) -> Result<FeedbackHeader, FeedbackError> {
    let header = parse_header(fci)?;
    let count = header.status_count as usize;
    // Where the chunks end (and the deltas begin): after as many chunks as cover the count.
    let mut pos = HEADER_LEN;
    let mut covered = 0usize;
    while covered < count {
        if pos + 2 > fci.len() {
            return Err(FeedbackError::MissingChunks);
        }
        covered += chunk_capacity(be16(fci, pos));
        pos += 2;
    }
    let mut cursor = Cursor {
        fci,
        deltas: pos,
        time_us: header.reference_time_us(),
        seq: header.base_seq,
    };
    let mut left = count;
    let mut pos = HEADER_LEN;
    while left > 0 {
        let chunk = be16(fci, pos);
        pos += 2;
        let n = chunk_capacity(chunk).min(left);
        if chunk & 0x8000 == 0 {
            let status = ((chunk >> 13) & 3) as u8;
            for _ in 0..n {
                cursor.emit(status, visit)?;
            }
        } else if chunk & 0x4000 == 0 {
            for i in 0..n {
                cursor.emit(((chunk >> (13 - i)) & 1) as u8, visit)?;
            }
        } else {
            for i in 0..n {
                cursor.emit(((chunk >> (12 - 2 * i)) & 3) as u8, visit)?;
            }
        }
        left -= n;
    }
    Ok(header)
}

struct Cursor<'a> {
    fci: &'a [u8],
    deltas: usize,
    time_us: i64,
    seq: u16,
}

impl Cursor<'_> {
    #[inline]
    fn emit(
        &mut self,
        status: u8,
        visit: &mut dyn FnMut(u16, Option<i64>),
    ) -> Result<(), FeedbackError> {
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        let ticks = match status {
            STATUS_NOT_RECEIVED => {
                visit(seq, None);
                return Ok(());
            }
            STATUS_SMALL => {
                let b = *self
                    .fci
                    .get(self.deltas)
                    .ok_or(FeedbackError::MissingDeltas)?;
                self.deltas += 1;
                i64::from(b)
            }
            STATUS_LARGE => {
                if self.deltas + 2 > self.fci.len() {
                    return Err(FeedbackError::MissingDeltas);
                }
                let d = be16(self.fci, self.deltas) as i16;
                self.deltas += 2;
                i64::from(d)
            }
            _ => return Err(FeedbackError::ReservedStatus),
        };
        self.time_us += ticks * DELTA_US;
        visit(seq, Some(self.time_us));
        Ok(())
    }
}

/// Builds one feedback FCI, packet by packet in sequence order (what a receiver does), choosing
/// run-length or status-vector chunks. For tests, simulations and fuzzing: the SFU only reads
/// feedback. Reusable: `reset` keeps the buffers.
#[derive(Debug, Clone, Default)]
pub struct FeedbackBuilder {
    base_seq: u16,
    fb_pkt_count: u8,
    /// In 64 ms units, from the first received packet (not yet wrapped to 24 bits).
    reference: Option<i64>,
    /// The time of the last received packet, in 250 µs ticks.
    last_ticks: i64,
    statuses: Vec<u8>,
    /// One per received packet, in 250 µs ticks.
    deltas: Vec<i16>,
}

impl FeedbackBuilder {
    pub fn new(base_seq: u16, fb_pkt_count: u8) -> Self {
        let mut b = FeedbackBuilder::default();
        b.reset(base_seq, fb_pkt_count);
        b
    }

    /// Start a new feedback packet, keeping the buffers.
    pub fn reset(&mut self, base_seq: u16, fb_pkt_count: u8) {
        self.base_seq = base_seq;
        self.fb_pkt_count = fb_pkt_count;
        self.reference = None;
        self.last_ticks = 0;
        self.statuses.clear();
        self.deltas.clear();
    }

    /// Packets described so far.
    pub fn len(&self) -> usize {
        self.statuses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty()
    }

    /// The sequence number the next `push` describes.
    pub fn next_seq(&self) -> u16 {
        self.base_seq.wrapping_add(self.statuses.len() as u16)
    }

    /// Describe the next packet: received at `recv_time_us` (receiver clock, quantized down to
    /// 250 µs) or not (`None`). False, and nothing added, when it does not fit: the packet is full
    /// or the delta from the previous received packet is beyond a signed 16-bit count of 250 µs.
    pub fn push(&mut self, recv_time_us: Option<i64>) -> bool {
        if self.statuses.len() >= MAX_STATUS_COUNT {
            return false;
        }
        let Some(t) = recv_time_us else {
            self.statuses.push(STATUS_NOT_RECEIVED);
            return true;
        };
        let ticks = t.div_euclid(DELTA_US);
        let (reference, last) = match self.reference {
            Some(r) => (r, self.last_ticks),
            None => {
                let r = t.div_euclid(REFERENCE_TIME_US);
                (r, r * TICKS_PER_REFERENCE)
            }
        };
        let delta = ticks - last;
        let status = if (0..=255).contains(&delta) {
            STATUS_SMALL
        } else if (i64::from(i16::MIN)..=i64::from(i16::MAX)).contains(&delta) {
            STATUS_LARGE
        } else {
            return false;
        };
        self.reference = Some(reference);
        self.last_ticks = ticks;
        self.statuses.push(status);
        self.deltas.push(delta as i16);
        true
    }

    /// Append the FCI (padded with zeros to a multiple of 4 bytes) to `out`.
    pub fn build(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.base_seq.to_be_bytes());
        out.extend_from_slice(&(self.statuses.len() as u16).to_be_bytes());
        let reference = (self.reference.unwrap_or(0) as u32) & REFERENCE_MASK;
        out.extend_from_slice(&((reference << 8) | u32::from(self.fb_pkt_count)).to_be_bytes());
        let s = &self.statuses;
        let mut i = 0;
        while i < s.len() {
            let run = s[i..]
                .iter()
                .take(MAX_RUN)
                .take_while(|&&x| x == s[i])
                .count();
            let chunk = if run >= 14 || i + run == s.len() {
                i += run;
                (u16::from(s[i - run]) << 13) | run as u16
            } else if s[i..].iter().take(14).all(|&x| x <= STATUS_SMALL) {
                let n = (s.len() - i).min(14);
                let mut c = 0x8000u16;
                for (k, &x) in s[i..i + n].iter().enumerate() {
                    c |= u16::from(x) << (13 - k);
                }
                i += n;
                c
            } else {
                let n = (s.len() - i).min(7);
                let mut c = 0xC000u16;
                for (k, &x) in s[i..i + n].iter().enumerate() {
                    c |= u16::from(x) << (12 - 2 * k);
                }
                i += n;
                c
            };
            out.extend_from_slice(&chunk.to_be_bytes());
        }
        for &d in &self.deltas {
            if (0..=255).contains(&d) {
                out.push(d as u8);
            } else {
                out.extend_from_slice(&d.to_be_bytes());
            }
        }
        while !(out.len() - start).is_multiple_of(4) {
            out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Packets = Vec<(u16, Option<i64>)>;

    fn collect(fci: &[u8]) -> Result<(FeedbackHeader, Packets), FeedbackError> {
        let mut packets = Vec::new();
        let header = parse(fci, |seq, t| packets.push((seq, t)))?;
        Ok((header, packets))
    }

    /// A feedback laid out by hand as a Chrome receiver would send it: base 65533 (so the
    /// sequence wraps), 18 packets, reference time 0x012345 (×64 ms), feedback count 7; a run of
    /// three small-delta packets, a 2-bit vector (small, lost, large, large negative, small, lost,
    /// small), a 1-bit vector of 8 (received/lost alternating) with padding bits after it.
    #[test]
    fn parses_a_hand_built_chrome_like_feedback() {
        let mut fci = vec![0xFF, 0xFD, 0x00, 18, 0x01, 0x23, 0x45, 7];
        fci.extend_from_slice(&[0b0010_0000, 3]); // run: status 1 × 3
                                                  // 2-bit vector: 01 00 10 10 01 00 01
        fci.extend_from_slice(&0b11_01_00_10_10_01_00_01u16.to_be_bytes());
        // 1-bit vector, 8 used: 1 0 1 0 1 0 1 0, six padding bits
        fci.extend_from_slice(&0b1010_1010_1000_0000_u16.to_be_bytes());
        fci.extend_from_slice(&[4, 8, 1]); // run deltas: +1 ms, +2 ms, +0.25 ms
        fci.push(10); // small: +2.5 ms
        fci.extend_from_slice(&400i16.to_be_bytes()); // large: +100 ms
        fci.extend_from_slice(&(-40i16).to_be_bytes()); // large negative: -10 ms
        fci.extend_from_slice(&[0, 255]); // small 0, small +63.75 ms
        fci.extend_from_slice(&[1, 2, 3, 4]); // the 1-bit vector's four received
        fci.extend_from_slice(&[0, 0, 0, 0]); // padding to 32 bits
        assert_eq!(fci.len(), 32);
        let (header, packets) = collect(&fci).expect("valid");
        assert_eq!(
            header,
            FeedbackHeader {
                base_seq: 65533,
                status_count: 18,
                reference_time: 0x012345,
                fb_pkt_count: 7
            }
        );
        let r = 0x012345i64 * 64_000;
        let mut t = r;
        let mut expected = Vec::new();
        let mut seq = 65533u16;
        let mut add = |d: Option<i64>| {
            expected.push((
                seq,
                d.map(|d| {
                    t += d * 250;
                    t
                }),
            ));
            seq = seq.wrapping_add(1);
        };
        for d in [4, 8, 1] {
            add(Some(d));
        }
        for d in [
            Some(10),
            None,
            Some(400),
            Some(-40),
            Some(0),
            None,
            Some(255),
        ] {
            add(d);
        }
        for d in [Some(1), None, Some(2), None, Some(3), None, Some(4), None] {
            add(d);
        }
        assert_eq!(packets, expected);
        assert_eq!(packets[3].0, 0, "the sequence wraps");
    }

    #[test]
    fn builder_round_trips_through_the_parser() {
        let mut b = FeedbackBuilder::new(65_000, 3);
        let mut times = Vec::new();
        let mut t = 1_000_000_123i64;
        for i in 0..700u32 {
            let got = match i % 97 {
                0..=19 => None,
                20 => Some(t - 5_000), // reordered: negative delta
                21 => Some(t + 3_000_000),
                _ => Some(t + i64::from(i % 7) * 300),
            };
            if let Some(x) = got {
                t = x;
            }
            assert!(b.push(got));
            times.push(got);
        }
        let mut fci = Vec::new();
        b.build(&mut fci);
        assert_eq!(fci.len() % 4, 0);
        let (header, packets) = collect(&fci).expect("parses");
        assert_eq!(header.base_seq, 65_000);
        assert_eq!(header.status_count, 700);
        assert_eq!(header.fb_pkt_count, 3);
        assert_eq!(packets.len(), 700);
        for (i, ((seq, got), want)) in packets.iter().zip(&times).enumerate() {
            assert_eq!(*seq, 65_000u16.wrapping_add(i as u16));
            assert_eq!(*got, want.map(|w| w.div_euclid(250) * 250), "packet {i}");
        }
    }

    #[test]
    fn builder_refuses_what_does_not_fit() {
        let mut b = FeedbackBuilder::new(0, 0);
        assert!(b.push(Some(0)));
        assert!(!b.push(Some(9_000_000)), "beyond a 16-bit delta");
        assert!(b.push(Some(8_000_000)));
        assert!(b.push(Some(0)), "a negative delta within range");
        assert_eq!(b.len(), 3);
        let mut full = FeedbackBuilder::new(0, 0);
        for _ in 0..MAX_STATUS_COUNT {
            assert!(full.push(None));
        }
        assert!(!full.push(None));
        let mut fci = Vec::new();
        full.build(&mut fci);
        let mut n = 0;
        parse(&fci, |_, t| {
            assert!(t.is_none());
            n += 1
        })
        .expect("parses");
        assert_eq!(n, MAX_STATUS_COUNT);
        assert_eq!(fci.len(), 8 + 2 * 9 + 2, "nine run chunks, padded");
    }

    #[test]
    fn an_empty_feedback_is_valid() {
        let fci = [0, 5, 0, 0, 0, 0, 1, 9];
        let (header, packets) = collect(&fci).expect("valid");
        assert_eq!(header.reference_time, 1);
        assert!(packets.is_empty());
    }

    #[test]
    fn every_truncation_is_refused_without_visiting() {
        let mut b = FeedbackBuilder::new(10, 1);
        for i in 0..40 {
            b.push(if i % 5 == 0 { None } else { Some(i * 1_700) });
        }
        let mut fci = Vec::new();
        b.build(&mut fci);
        let unpadded = fci.len() - fci.iter().rev().take_while(|&&x| x == 0).count();
        for cut in 0..unpadded {
            let mut visits = 0;
            let r = parse(&fci[..cut], |_, _| visits += 1);
            assert!(r.is_err(), "cut at {cut} of {}", fci.len());
            assert_eq!(visits, 0, "a refused feedback visits nothing");
        }
        assert_eq!(parse_header(&fci[..7]), Err(FeedbackError::TooShort));
        assert_eq!(
            parse(&fci[..9], |_, _| {}),
            Err(FeedbackError::MissingChunks)
        );
    }

    #[test]
    fn hostile_counts_and_statuses_are_refused() {
        // 65535 packets claimed, one run chunk of 8191.
        let fci = [0, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0x1F, 0xFF];
        assert_eq!(parse(&fci, |_, _| {}), Err(FeedbackError::MissingChunks));
        // 65535 received (small delta) packets in runs, no deltas.
        let mut fci = vec![0, 0, 0xFF, 0xFF, 0, 0, 0, 0];
        for _ in 0..9 {
            fci.extend_from_slice(&[0x3F, 0xFF]);
        }
        assert_eq!(parse(&fci, |_, _| {}), Err(FeedbackError::MissingDeltas));
        // Zero-length runs cover nothing: chunks run out.
        let fci = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&fci, |_, _| {}), Err(FeedbackError::MissingChunks));
        // Reserved status in a run and in a 2-bit vector.
        let fci = [0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x01, 0, 0];
        assert_eq!(parse(&fci, |_, _| {}), Err(FeedbackError::ReservedStatus));
        let fci = [0, 0, 0, 2, 0, 0, 0, 0, 0b1101_1100, 0, 1, 0];
        assert_eq!(parse(&fci, |_, _| {}), Err(FeedbackError::ReservedStatus));
        // ... but a reserved value in the padding symbols past the count is ignored.
        let fci = [0, 0, 0, 1, 0, 0, 0, 0, 0b1101_1100, 0, 1, 0];
        assert_eq!(collect(&fci).expect("valid").1, vec![(0, Some(250))]);
        // A large delta cut in half.
        let fci = [0, 0, 0, 1, 0, 0, 0, 0, 0x40, 0x01, 0x7F];
        assert_eq!(parse(&fci, |_, _| {}), Err(FeedbackError::MissingDeltas));
    }

    #[test]
    fn the_reference_time_wraps_at_24_bits() {
        let mut b = FeedbackBuilder::new(0, 0);
        let t = 0x0100_0002_i64 * 64_000 + 750;
        assert!(b.push(Some(t)));
        let mut fci = Vec::new();
        b.build(&mut fci);
        let (header, packets) = collect(&fci).expect("valid");
        assert_eq!(header.reference_time, 2);
        assert_eq!(packets, vec![(0, Some(2 * 64_000 + 750))]);
    }
}
