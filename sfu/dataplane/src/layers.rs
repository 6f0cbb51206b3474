//! The pure parts of simulcast forwarding: a sliding-window bitrate meter, the per-layer sequence
//! window that finds losses on the publisher's uplink (for NACKs) and duplicates (RTX
//! retransmissions of packets that arrived after all), and the per-subscriber layer allocation.
//!
//! Nothing here allocates after construction; the worker calls these per packet or per tick.

/// Width of one bucket of `RateMeter`.
pub const RATE_BUCKET_MS: i64 = 100;
/// Buckets of `RateMeter`: its window is `RATE_BUCKETS * RATE_BUCKET_MS` = 1 s.
pub const RATE_BUCKETS: usize = 10;

/// Bytes per 100 ms bucket over the last second.
///
/// The rate is that of the last `RATE_BUCKETS` completed buckets (the current, partial one is left
/// out), so it does not dip at each bucket boundary.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    bytes: [u32; RATE_BUCKETS],
    slots: [i64; RATE_BUCKETS],
}

impl RateMeter {
    pub fn new() -> Self {
        RateMeter {
            bytes: [0; RATE_BUCKETS],
            slots: [i64::MIN; RATE_BUCKETS],
        }
    }

    #[inline]
    pub fn add(&mut self, bytes: usize, now_ms: i64) {
        let slot = now_ms.div_euclid(RATE_BUCKET_MS);
        let i = slot.rem_euclid(RATE_BUCKETS as i64) as usize;
        if self.slots[i] != slot {
            self.slots[i] = slot;
            self.bytes[i] = 0;
        }
        self.bytes[i] = self.bytes[i].saturating_add(bytes as u32);
    }

    /// Bits per second over the last second's completed buckets.
    pub fn bps(&self, now_ms: i64) -> u64 {
        let now_slot = now_ms.div_euclid(RATE_BUCKET_MS);
        let oldest = now_slot - RATE_BUCKETS as i64;
        let bytes: u64 = self
            .slots
            .iter()
            .zip(self.bytes.iter())
            .filter(|(&s, _)| s >= oldest && s < now_slot)
            .map(|(_, &b)| b as u64)
            .sum();
        bytes * 8 * 1000 / (RATE_BUCKETS as u64 * RATE_BUCKET_MS as u64)
    }
}

/// Sequence numbers a layer's window remembers (a power of two).
pub const SEQ_WINDOW: usize = 512;
/// A jump ahead larger than this is a restart of the sequence, not a loss.
pub const MAX_GAP: u16 = 200;
/// Missing packets tracked for NACKs per layer at most (the oldest are forgotten first).
pub const NACK_MAX_MISSING: usize = 64;
/// A missing packet is first NACKed after this much reordering tolerance.
pub const NACK_REORDER_MS: i64 = 10;
/// Then again after this long without it (about a round trip on the links the SFU serves).
pub const NACK_RETRY_MS: i64 = 100;
/// At most this many NACKs per missing packet.
pub const NACK_MAX_TRIES: u8 = 3;
/// Missing packets older than this are given up: a keyframe request serves better by then.
pub const NACK_MAX_AGE_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy, Default)]
struct Missing {
    seq: u16,
    since_ms: i64,
    sent_ms: i64,
    tries: u8,
}

/// What one layer's incoming sequence numbers say: duplicates and losses.
#[derive(Debug, Clone)]
pub struct SeqWindow {
    started: bool,
    hi: u16,
    seen: [u64; SEQ_WINDOW / 64],
    missing: [Missing; NACK_MAX_MISSING],
    n_missing: usize,
}

impl Default for SeqWindow {
    fn default() -> Self {
        Self::new()
    }
}

/// What `SeqWindow::on_packet` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    New,
    Duplicate,
}

impl SeqWindow {
    pub fn new() -> Self {
        SeqWindow {
            started: false,
            hi: 0,
            seen: [0; SEQ_WINDOW / 64],
            missing: [Missing::default(); NACK_MAX_MISSING],
            n_missing: 0,
        }
    }

    #[inline]
    fn bit(seq: u16) -> (usize, u64) {
        let i = seq as usize & (SEQ_WINDOW - 1);
        (i / 64, 1u64 << (i % 64))
    }

    #[inline]
    fn set(&mut self, seq: u16) {
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
    }

    #[inline]
    fn clear(&mut self, seq: u16) {
        let (w, b) = Self::bit(seq);
        self.seen[w] &= !b;
    }

    #[inline]
    fn is_set(&self, seq: u16) -> bool {
        let (w, b) = Self::bit(seq);
        self.seen[w] & b != 0
    }

    fn restart(&mut self, seq: u16) {
        self.seen = [0; SEQ_WINDOW / 64];
        self.n_missing = 0;
        self.started = true;
        self.hi = seq;
        self.set(seq);
    }

    fn forget(&mut self, seq: u16) {
        if let Some(i) = self.missing[..self.n_missing]
            .iter()
            .position(|m| m.seq == seq)
        {
            self.missing.copy_within(i + 1..self.n_missing, i);
            self.n_missing -= 1;
        }
    }

    fn add_missing(&mut self, seq: u16, now_ms: i64) {
        if self.n_missing == NACK_MAX_MISSING {
            self.missing.copy_within(1.., 0);
            self.n_missing -= 1;
        }
        self.missing[self.n_missing] = Missing {
            seq,
            since_ms: now_ms,
            sent_ms: i64::MIN / 2,
            tries: 0,
        };
        self.n_missing += 1;
    }

    /// Account a packet (original or unwrapped retransmission) of the layer.
    #[inline]
    pub fn on_packet(&mut self, seq: u16, now_ms: i64) -> Arrival {
        if !self.started {
            self.restart(seq);
            return Arrival::New;
        }
        let ahead = seq.wrapping_sub(self.hi);
        if ahead == 0 {
            return Arrival::Duplicate;
        }
        if ahead < 0x8000 {
            if ahead > MAX_GAP {
                self.restart(seq);
                return Arrival::New;
            }
            let mut s = self.hi.wrapping_add(1);
            while s != seq {
                self.clear(s);
                self.add_missing(s, now_ms);
                s = s.wrapping_add(1);
            }
            self.set(seq);
            self.hi = seq;
            return Arrival::New;
        }
        let behind = self.hi.wrapping_sub(seq);
        if behind as usize >= SEQ_WINDOW {
            return Arrival::New; // too old to tell; the rewriter drops what is stale
        }
        if self.is_set(seq) {
            return Arrival::Duplicate;
        }
        self.set(seq);
        if self.n_missing > 0 {
            self.forget(seq);
        }
        Arrival::New
    }

    /// The missing sequence numbers to NACK now (ascending into `out`, which is cleared first);
    /// gives up on those too old or asked for too often.
    pub fn due_nacks(&mut self, now_ms: i64, out: &mut Vec<u16>) {
        out.clear();
        let mut kept = 0;
        for i in 0..self.n_missing {
            let mut m = self.missing[i];
            if now_ms - m.since_ms > NACK_MAX_AGE_MS || m.tries >= NACK_MAX_TRIES {
                continue;
            }
            if now_ms - m.since_ms >= NACK_REORDER_MS && now_ms - m.sent_ms >= NACK_RETRY_MS {
                m.sent_ms = now_ms;
                m.tries += 1;
                out.push(m.seq);
            }
            self.missing[kept] = m;
            kept += 1;
        }
        self.n_missing = kept;
    }

    pub fn missing(&self) -> usize {
        self.n_missing
    }
}

/// An upgrade needs the next layer's bitrate times this (in percent) to fit the budget.
pub const UPGRADE_HEADROOM_PCT: u64 = 125;
/// And it must have fitted for this long (a downgrade happens at once).
pub const UPGRADE_HOLD_MS: i64 = 1_500;
/// The bitrate assumed for a layer never seen active, by index (Chromium's defaults for a 720p
/// camera: about 150 kbps, 500 kbps and 1.5 Mbps).
pub const DEFAULT_LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_500_000];

/// One video consumer of a subscriber, as the allocation sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Layers of its producer (1..=3).
    pub layers: u8,
    /// The highest layer its preferences allow.
    pub cap: u8,
    /// The layer it was given last time (upgrades above it need headroom).
    pub held: u8,
    /// Priority: larger first (the displayed tile's area; 0 = no size given, treated as largest).
    pub priority: u64,
    /// Each layer's cost in bits per second.
    pub cost: [u64; 3],
}

/// Share `budget_bps` among a subscriber's video consumers: everyone gets layer 0 first (video is
/// never cut for bandwidth, only made smaller), then in priority order each is raised to the highest
/// layer within its cap whose extra cost still fits, with `UPGRADE_HEADROOM_PCT` above the layer
/// it holds. `order` is scratch space; `choice[i]` receives demand i's layer.
pub fn allocate(budget_bps: u64, demands: &[Demand], order: &mut Vec<usize>, choice: &mut Vec<u8>) {
    choice.clear();
    choice.resize(demands.len(), 0);
    order.clear();
    order.extend(0..demands.len());
    order.sort_by_key(|&i| {
        let p = demands[i].priority;
        std::cmp::Reverse(if p == 0 { u64::MAX } else { p })
    });
    let mut left = budget_bps;
    for d in demands {
        left = left.saturating_sub(d.cost[0]);
    }
    for &i in order.iter() {
        let d = &demands[i];
        let top = d.cap.min(d.layers.saturating_sub(1)).min(2);
        let mut best = 0u8;
        let mut best_extra = 0u64;
        for l in 1..=top {
            let mut cost = d.cost[l as usize];
            if l > d.held {
                cost = cost * UPGRADE_HEADROOM_PCT / 100;
            }
            let extra = cost.saturating_sub(d.cost[0]);
            if extra <= left {
                best = l;
                best_extra = d.cost[l as usize].saturating_sub(d.cost[0]);
            }
        }
        choice[i] = best;
        left = left.saturating_sub(best_extra);
    }
}

/// Transport-wide sequence numbers a publisher's feedback window remembers (a power of two).
pub const UPLINK_WINDOW: usize = 1024;
/// Packets described per feedback at most (keeps it well under the MTU).
pub const UPLINK_FEEDBACK_MAX: usize = 250;
/// Transport-cc feedback is sent to a publisher this often.
pub const UPLINK_FEEDBACK_INTERVAL_MS: i64 = 100;

/// The receiving side of transport-cc on a publisher's uplink: arrival times by transport-wide
/// sequence number, turned into a feedback FCI every `UPLINK_FEEDBACK_INTERVAL_MS`, so that the
/// browser's own estimator (GCC) can ramp its uplink up to what three simulcast layers need.
#[derive(Debug, Clone)]
pub struct UplinkFeedback {
    seqs: Box<[u16]>,
    arrivals_us: Box<[i64]>,
    /// The first sequence number not yet reported, and the newest seen.
    base: Option<u16>,
    hi: u16,
    fb_count: u8,
    builder: crate::twcc::FeedbackBuilder,
}

impl Default for UplinkFeedback {
    fn default() -> Self {
        Self::new()
    }
}

impl UplinkFeedback {
    pub fn new() -> Self {
        UplinkFeedback {
            seqs: vec![0; UPLINK_WINDOW].into_boxed_slice(),
            arrivals_us: vec![-1; UPLINK_WINDOW].into_boxed_slice(),
            base: None,
            hi: 0,
            fb_count: 0,
            builder: crate::twcc::FeedbackBuilder::new(0, 0),
        }
    }

    /// A packet with transport-wide sequence number `seq` arrived at `now_us`.
    #[inline]
    pub fn on_packet(&mut self, seq: u16, now_us: i64) {
        let i = seq as usize & (UPLINK_WINDOW - 1);
        self.seqs[i] = seq;
        self.arrivals_us[i] = now_us;
        match self.base {
            None => {
                self.base = Some(seq);
                self.hi = seq;
            }
            Some(base) => {
                if seq.wrapping_sub(self.hi) < 0x8000 {
                    self.hi = seq;
                    // Too far behind: report from the window's start, what is older is gone.
                    if self.hi.wrapping_sub(base) as usize >= UPLINK_WINDOW {
                        self.base = Some(self.hi.wrapping_sub(UPLINK_WINDOW as u16 - 1));
                    }
                }
                // A late packet before `base` was reported lost already: nothing to do.
            }
        }
    }

    /// Append the next feedback FCI to `out` (false if there is nothing new to report).
    pub fn build(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(base) = self.base else {
            return false;
        };
        let span = self.hi.wrapping_sub(base);
        if span >= 0x8000 {
            return false; // everything up to hi was reported
        }
        self.builder.reset(base, self.fb_count);
        let mut seq = base;
        loop {
            if self.builder.len() >= UPLINK_FEEDBACK_MAX {
                break;
            }
            let i = seq as usize & (UPLINK_WINDOW - 1);
            let arrival =
                (self.seqs[i] == seq && self.arrivals_us[i] >= 0).then(|| self.arrivals_us[i]);
            if !self.builder.push(arrival) {
                break;
            }
            if seq == self.hi {
                seq = seq.wrapping_add(1);
                break;
            }
            seq = seq.wrapping_add(1);
        }
        if self.builder.is_empty() {
            return false;
        }
        self.builder.build(out);
        self.fb_count = self.fb_count.wrapping_add(1);
        self.base = Some(seq);
        // Forget what was reported, so a wrapped-around window never reports it again.
        let mut s = base;
        while s != seq {
            self.arrivals_us[s as usize & (UPLINK_WINDOW - 1)] = -1;
            s = s.wrapping_add(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_meter_reports_the_last_second() {
        let mut m = RateMeter::new();
        for t in (0..2_000).step_by(10) {
            m.add(125, t); // 100 kbps
        }
        assert_eq!(m.bps(2_000), 100_000);
        assert_eq!(m.bps(2_550), 50_000);
        assert_eq!(m.bps(5_000), 0);
    }

    #[test]
    fn seq_window_finds_losses_duplicates_and_gives_up() {
        let mut w = SeqWindow::new();
        let mut due = Vec::new();
        assert_eq!(w.on_packet(65_534, 0), Arrival::New);
        assert_eq!(w.on_packet(2, 0), Arrival::New); // 65535, 0, 1 missing
        assert_eq!(w.missing(), 3);
        assert_eq!(w.on_packet(2, 1), Arrival::Duplicate);
        w.due_nacks(5, &mut due);
        assert!(due.is_empty(), "reordering tolerance first");
        w.due_nacks(10, &mut due);
        assert_eq!(due, vec![65_535, 0, 1]);
        assert_eq!(w.on_packet(0, 20), Arrival::New); // the retransmission
        assert_eq!(w.on_packet(0, 21), Arrival::Duplicate);
        w.due_nacks(50, &mut due);
        assert!(due.is_empty(), "not before the retry interval");
        w.due_nacks(110, &mut due);
        assert_eq!(due, vec![65_535, 1]);
        w.due_nacks(210, &mut due);
        w.due_nacks(310, &mut due);
        assert_eq!(due, Vec::<u16>::new(), "three tries at most");
        assert_eq!(w.missing(), 0);
        // a big jump is a restart, not 1000 losses
        assert_eq!(w.on_packet(1_002, 400), Arrival::New);
        assert_eq!(w.missing(), 0);
        w.on_packet(1_004, 400);
        w.due_nacks(2_000, &mut due);
        assert!(due.is_empty(), "too old");
    }

    #[test]
    fn allocation_fills_in_priority_order_with_headroom_for_upgrades() {
        let cam = |priority, held, cap| Demand {
            layers: 3,
            cap,
            held,
            priority,
            cost: [150_000, 500_000, 1_500_000],
        };
        let (mut order, mut choice) = (Vec::new(), Vec::new());
        allocate(
            2_500_000,
            &[cam(100, 2, 2), cam(0, 2, 2)],
            &mut order,
            &mut choice,
        );
        // the unsized tile first gets f (1.35 M extra), the other h (0.35 M extra) of the 2.2 M left
        assert_eq!(choice, vec![1, 2]);
        allocate(1_000_000, &[cam(0, 0, 2)], &mut order, &mut choice);
        assert_eq!(choice, vec![1], "h needs 625 k with headroom");
        allocate(600_000, &[cam(0, 0, 2)], &mut order, &mut choice);
        assert_eq!(choice, vec![0], "not 500 k * 1.25 for an upgrade");
        allocate(600_000, &[cam(0, 1, 2)], &mut order, &mut choice);
        assert_eq!(choice, vec![1], "kept without headroom");
        allocate(10_000_000, &[cam(0, 0, 1)], &mut order, &mut choice);
        assert_eq!(choice, vec![1], "the preference caps");
        allocate(10, &[cam(0, 2, 2)], &mut order, &mut choice);
        assert_eq!(choice, vec![0], "never below the lowest layer");
    }

    #[test]
    fn uplink_feedback_reports_arrivals_and_losses_once() {
        let mut f = UplinkFeedback::new();
        let mut out = Vec::new();
        assert!(!f.build(&mut out));
        for (seq, t) in [
            (65_534u16, 1_000_000i64),
            (65_535, 1_002_000),
            (1, 1_010_000),
        ] {
            f.on_packet(seq, t);
        }
        assert!(f.build(&mut out));
        let mut seen = Vec::new();
        crate::twcc::parse(&out, |seq, recv| seen.push((seq, recv.is_some()))).unwrap();
        assert_eq!(
            seen,
            vec![(65_534, true), (65_535, true), (0, false), (1, true)]
        );
        out.clear();
        assert!(!f.build(&mut out), "nothing new");
        f.on_packet(2, 1_020_000);
        assert!(f.build(&mut out));
        let mut seen = Vec::new();
        crate::twcc::parse(&out, |seq, recv| seen.push((seq, recv.is_some()))).unwrap();
        assert_eq!(seen, vec![(2, true)]);
    }
}
