//! Is this RTP payload the start of a keyframe? (RFC 7741 VP8, RFC 6184 H.264), without decoding.
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

#[cfg(test)]
mod tests {
    use super::*;

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
