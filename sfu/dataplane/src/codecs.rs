//! What the data plane reads in video payloads, without decoding: is this the start of a keyframe
//! (RFC 7741 VP8, RFC 6184 H.264), a VP8 keyframe's size, and the VP8 payload descriptor's picture
//! id and TL0PICIDX, which `Vp8Munger` rewrites so that they stay continuous when a consumer
//! switches between simulcast layers.
//!
//! A new video consumer is forwarded from a keyframe on: what comes before it cannot be decoded.

/// The video codecs whose keyframes the data plane recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
}

impl VideoCodec {
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "vp8" => Some(VideoCodec::Vp8),
            "h264" => Some(VideoCodec::H264),
            _ => None,
        }
    }

    #[inline]
    pub fn is_keyframe_start(self, payload: &[u8]) -> bool {
        match self {
            VideoCodec::Vp8 => vp8_keyframe_start(payload),
            VideoCodec::H264 => h264_keyframe_start(payload),
        }
    }
}

/// True for the first packet of a VP8 keyframe (S=1, partition 0, P bit clear).
pub fn vp8_keyframe_start(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    if first & 0x10 == 0 || first & 0x07 != 0 {
        return false;
    }
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = p.get(i) else { return false };
        i += 1;
        if ext & 0x80 != 0 {
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    matches!(p.get(i), Some(&b) if b & 0x01 == 0)
}

fn h264_key_nal(t: u8) -> bool {
    t == 5 || t == 7
}

/// True if the packet starts an IDR picture or carries an SPS (single NAL, STAP-A or FU-A start).
pub fn h264_keyframe_start(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let nal = first & 0x1F;
    if h264_key_nal(nal) {
        return true;
    }
    if nal == 24 {
        let mut i = 1;
        while i + 2 < p.len() {
            let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
            if size == 0 || i + 2 + size > p.len() {
                return false;
            }
            if h264_key_nal(p[i + 2] & 0x1F) {
                return true;
            }
            i += 2 + size;
        }
        return false;
    }
    if nal == 28 {
        return matches!(p.get(1), Some(&h) if h & 0x80 != 0 && h264_key_nal(h & 0x1F));
    }
    false
}

/// Where the fields of a VP8 payload descriptor (RFC 7741 §4.2) that a layer switch must rewrite sit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// S: the packet starts a VP8 partition.
    pub start: bool,
    /// PID: the partition index.
    pub partition: u8,
    /// The picture id and whether it is the 15-bit form (M bit).
    pub picture_id: Option<(u16, bool)>,
    pub picture_id_at: usize,
    pub tl0picidx: Option<u8>,
    pub tl0picidx_at: usize,
    /// The descriptor's length: the VP8 payload header follows.
    pub len: usize,
}

/// Parse a VP8 payload descriptor; None if the payload is shorter than it says.
pub fn vp8_descriptor(p: &[u8]) -> Option<Vp8Descriptor> {
    let first = *p.first()?;
    let mut d = Vp8Descriptor {
        start: first & 0x10 != 0,
        partition: first & 0x07,
        ..Default::default()
    };
    let mut i = 1;
    if first & 0x80 != 0 {
        let ext = *p.get(i)?;
        i += 1;
        if ext & 0x80 != 0 {
            let b = *p.get(i)?;
            d.picture_id_at = i;
            if b & 0x80 != 0 {
                let lo = *p.get(i + 1)?;
                d.picture_id = Some(((((b & 0x7F) as u16) << 8) | lo as u16, true));
                i += 2;
            } else {
                d.picture_id = Some((b as u16, false));
                i += 1;
            }
        }
        if ext & 0x40 != 0 {
            d.tl0picidx = Some(*p.get(i)?);
            d.tl0picidx_at = i;
            i += 1;
        }
        if ext & 0x30 != 0 {
            p.get(i)?;
            i += 1;
        }
    }
    d.len = i;
    Some(d)
}

/// Width and height of a VP8 keyframe from its first packet (the frame header after the start
/// code 9d 01 2a, RFC 6386 §9.1), or None if this packet does not start a keyframe.
pub fn vp8_keyframe_size(p: &[u8]) -> Option<(u16, u16)> {
    let d = vp8_descriptor(p)?;
    if !d.start || d.partition != 0 {
        return None;
    }
    let h = p.get(d.len..d.len + 10)?;
    if h[0] & 0x01 != 0 || h[3..6] != [0x9D, 0x01, 0x2A] {
        return None;
    }
    let w = u16::from_le_bytes([h[6], h[7]]) & 0x3FFF;
    let ht = u16::from_le_bytes([h[8], h[9]]) & 0x3FFF;
    Some((w, ht))
}

/// Is `a` newer than `b` in a sequence space of `modulus` (a power of two)?
#[inline]
fn newer(a: u16, b: u16, modulus: u16) -> bool {
    let d = a.wrapping_sub(b) & (modulus - 1);
    d != 0 && d < modulus / 2
}

/// One consumer's VP8 picture id and TL0PICIDX rewriting.
///
/// Each simulcast layer numbers its pictures on its own; a decoder that sees the numbers jump at a
/// layer switch takes it as loss. The munger keeps `out = in + offset` per field and, after
/// `switch`, re-bases each offset on the first packet carrying the field so the consumer sees the
/// newest value it was sent plus one. The 7-bit form stays 7-bit (offsets are taken modulo 2^7
/// then), so the payload keeps its length.
#[derive(Debug, Clone, Default)]
pub struct Vp8Munger {
    pid_rebase: bool,
    tl0_rebase: bool,
    pid_started: bool,
    tl0_started: bool,
    pid_off: u16,
    tl0_off: u8,
    hi_pid: u16,
    hi_tl0: u8,
}

impl Vp8Munger {
    pub fn new() -> Self {
        Vp8Munger {
            pid_rebase: true,
            tl0_rebase: true,
            ..Default::default()
        }
    }

    /// The next packet comes from another layer (or after a pause): continue from the newest ids sent.
    pub fn switch(&mut self) {
        self.pid_rebase = true;
        self.tl0_rebase = true;
    }

    /// Rewrite the descriptor at the start of `payload` in place (nothing if it has none).
    #[inline]
    pub fn rewrite(&mut self, payload: &mut [u8]) {
        let Some(d) = vp8_descriptor(payload) else {
            return;
        };
        if let Some((pid, long)) = d.picture_id {
            let modulus: u16 = if long { 0x8000 } else { 0x80 };
            if std::mem::take(&mut self.pid_rebase) {
                self.pid_off = if self.pid_started {
                    self.hi_pid.wrapping_add(1).wrapping_sub(pid)
                } else {
                    0
                };
            }
            let out = pid.wrapping_add(self.pid_off) & (modulus - 1);
            if !self.pid_started || newer(out, self.hi_pid, modulus) {
                self.hi_pid = out;
                self.pid_started = true;
            }
            let at = d.picture_id_at;
            if long {
                payload[at] = 0x80 | (out >> 8) as u8;
                payload[at + 1] = out as u8;
            } else {
                payload[at] = out as u8;
            }
        }
        if let Some(tl0) = d.tl0picidx {
            if std::mem::take(&mut self.tl0_rebase) {
                self.tl0_off = if self.tl0_started {
                    self.hi_tl0.wrapping_add(1).wrapping_sub(tl0)
                } else {
                    0
                };
            }
            let out = tl0.wrapping_add(self.tl0_off);
            if !self.tl0_started || newer(out as u16, self.hi_tl0 as u16, 0x100) {
                self.hi_tl0 = out;
                self.tl0_started = true;
            }
            payload[d.tl0picidx_at] = out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 payload: descriptor with a 15-bit picture id and TL0PICIDX, then `rest`.
    fn vp8(start: bool, pid: u16, tl0: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x80 | if start { 0x10 } else { 0 },
            0xC0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
        ];
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn vp8_descriptor_and_keyframe_size() {
        let key = vp8(
            true,
            0x1234,
            7,
            &[0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0x68, 0x01],
        );
        let d = vp8_descriptor(&key).unwrap();
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!((d.tl0picidx, d.len), (Some(7), 5));
        assert!(vp8_keyframe_start(&key));
        assert_eq!(vp8_keyframe_size(&key), Some((640, 360)));
        let delta = vp8(
            true,
            1,
            1,
            &[0x11, 0, 0, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0x68, 0x01],
        );
        assert_eq!(vp8_keyframe_size(&delta), None);
        assert_eq!(vp8_descriptor(&[0x90, 0x80]), None);
        let short = [0x90, 0x80, 0x05, 0x00];
        assert_eq!(vp8_descriptor(&short).unwrap().picture_id, Some((5, false)));
    }

    #[test]
    fn munger_keeps_picture_id_and_tl0picidx_continuous_across_switches() {
        let mut m = Vp8Munger::new();
        let mut out = Vec::new();
        // layer A: pictures 100..=102; then layer B starts at 7000, then A again at 30_000
        for (pid, tl0) in [(100u16, 10u8), (101, 11), (102, 12)] {
            let mut p = vp8(true, pid, tl0, &[0]);
            m.rewrite(&mut p);
            out.push(vp8_descriptor(&p).unwrap());
        }
        m.switch();
        for (pid, tl0) in [(7000u16, 200u8), (7000, 200), (7001, 201)] {
            let mut p = vp8(true, pid, tl0, &[0]);
            m.rewrite(&mut p);
            out.push(vp8_descriptor(&p).unwrap());
        }
        m.switch();
        let mut p = vp8(true, 0x7FFF, 255, &[0]);
        m.rewrite(&mut p);
        out.push(vp8_descriptor(&p).unwrap());
        let mut p = vp8(true, 0, 0, &[0]);
        m.rewrite(&mut p);
        out.push(vp8_descriptor(&p).unwrap());
        let pids: Vec<u16> = out.iter().map(|d| d.picture_id.unwrap().0).collect();
        let tl0s: Vec<u8> = out.iter().map(|d| d.tl0picidx.unwrap()).collect();
        assert_eq!(pids, vec![100, 101, 102, 103, 103, 104, 105, 106]);
        assert_eq!(tl0s, vec![10, 11, 12, 13, 13, 14, 15, 16]);
        // 7-bit ids stay 7-bit and wrap at 128
        let mut m = Vp8Munger::new();
        let mut p = vec![0x90, 0x80, 127, 0];
        m.rewrite(&mut p);
        m.switch();
        let mut q = vec![0x90, 0x80, 5, 0];
        m.rewrite(&mut q);
        assert_eq!(vp8_descriptor(&q).unwrap().picture_id, Some((0, false)));
    }

    #[test]
    fn vp8_and_h264_keyframes() {
        assert!(vp8_keyframe_start(&[0x10, 0x00]));
        assert!(!vp8_keyframe_start(&[0x10, 0x01]));
        assert!(!vp8_keyframe_start(&[0x00, 0x00]));
        assert!(vp8_keyframe_start(&[0x90, 0x80, 0x81, 0x02, 0x00]));
        assert!(!vp8_keyframe_start(&[0x90, 0x80]));
        assert!(h264_keyframe_start(&[0x65]));
        assert!(h264_keyframe_start(&[0x18, 0, 2, 0x67, 0, 0, 1, 0x68]));
        assert!(h264_keyframe_start(&[0x7C, 0x85]));
        assert!(!h264_keyframe_start(&[0x7C, 0x05]));
        assert!(!h264_keyframe_start(&[0x18, 0, 9, 0x67]));
        assert!(!h264_keyframe_start(&[]));
    }
}
