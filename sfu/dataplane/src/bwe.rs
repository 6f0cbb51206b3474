//! Send-side bandwidth estimation for one subscriber's downlink, from its transport-cc feedback
//! (`twcc`), in the manner of Google Congestion Control: a delay-based estimate (packet groups,
//! a trendline of the queueing delay, an adaptive-threshold overuse detector, AIMD rate control) and
//! a loss-based one, the smaller of the two winning; REMB when no transport-cc feedback arrives.
//! docs/bwe.md explains the estimator and its constants.
//!
//! Pure and deterministic: every time is passed in (`now_ms`, the SFU's clock; receive times come
//! from the feedback, on the receiver's clock), nothing is read from the system, and nothing is
//! allocated after `new` (the send history is one fixed ring).

use crate::twcc::{self, FeedbackError, REFERENCE_TIME_US};

/// Packets remembered by transport-wide sequence number (a ring indexed by the low bits, so a
/// power of two dividing 65536): feedback for a packet older than this many sends is ignored. At
/// 10 Mbps of 1200-byte packets this is about 4 s, far longer than feedback takes.
pub const HISTORY_SIZE: usize = 4096;

/// Packets sent within this span of a group's first packet form one group (a burst, e.g. a video
/// frame's packets): delay variation is measured between groups, not packets, so that the pacing
/// inside a burst is not mistaken for queueing.
pub const GROUP_SPAN_US: i64 = 5_000;
/// A jump between groups of more than this (arrival delta minus send delta) means the receiver's
/// clock or the path changed, not a queue: the delay measurement starts over.
pub const ARRIVAL_JUMP_US: i64 = 3_000_000;

/// Groups in the trendline's linear regression window: about 100-400 ms of video traffic, long
/// enough to see a trend through jitter, short enough to react within a few feedback intervals.
pub const TRENDLINE_WINDOW: usize = 20;
/// Exponential smoothing of the accumulated delay before the regression (weight of the past).
pub const TRENDLINE_SMOOTHING: f64 = 0.9;
/// The slope (ms of delay per ms) is multiplied by this gain and by the number of deltas seen (at
/// most `TRENDLINE_MAX_DELTAS`) to compare it with the threshold in ms: it turns a small, steady
/// slope into a signal, and keeps the first few groups of a stream from triggering.
pub const TRENDLINE_GAIN: f64 = 4.0;
/// The cap on the delta count in the modified trend.
pub const TRENDLINE_MAX_DELTAS: f64 = 60.0;

/// The overuse threshold (ms of modified trend) at the start.
pub const THRESHOLD_INITIAL_MS: f64 = 12.5;
/// The threshold's lower bound: below it, jitter alone would read as overuse.
pub const THRESHOLD_MIN_MS: f64 = 6.0;
/// The threshold's upper bound: above it, real queues would go unnoticed.
pub const THRESHOLD_MAX_MS: f64 = 600.0;
/// How fast the threshold rises towards a trend above it (per ms): slowly, so that a real queue is
/// still detected while competing flows make the delay noisy.
pub const THRESHOLD_UP: f64 = 0.0087;
/// How fast the threshold falls towards a trend below it (per ms): faster, to become sensitive
/// again once the path is quiet.
pub const THRESHOLD_DOWN: f64 = 0.039;
/// A trend this far (ms) beyond the threshold is a spike: it does not move the threshold.
pub const THRESHOLD_SPIKE_MS: f64 = 15.0;
/// The longest step (ms) one threshold update accounts for.
pub const THRESHOLD_MAX_STEP_MS: f64 = 100.0;
/// The trend must stay above the threshold this long (ms of send time) before overuse is declared:
/// one noisy group is not a queue.
pub const OVERUSE_TIME_MS: f64 = 10.0;

/// Multiplicative increase per second (8 %) when the estimate is far from the last congested rate:
/// finds a new, unknown capacity within seconds.
pub const INCREASE_PER_S: f64 = 0.08;
/// The least multiplicative increase per second (bps), so that a low estimate still moves.
pub const MIN_INCREASE_BPS_PER_S: f64 = 1_000.0;
/// The assumed time (ms) from a rate change to its effect on feedback (no RTT is measured here):
/// additive increase adds `ADDITIVE_PACKETS` per this time.
pub const RESPONSE_TIME_MS: f64 = 200.0;
/// Packets (of the average size) added per response time near the last congested rate: a slow,
/// linear probe of a capacity that is roughly known.
pub const ADDITIVE_PACKETS: f64 = 0.5;
/// The least additive increase (bps per second).
pub const MIN_ADDITIVE_BPS_PER_S: f64 = 4_000.0;
/// On overuse the delay-based estimate drops to this fraction of the acknowledged bitrate: below
/// what the path delivered, so that the queue drains.
pub const DECREASE_FACTOR: f64 = 0.85;
/// The longest gap (ms) one increase step accounts for (after idle periods, no jump).
pub const MAX_INCREASE_STEP_MS: i64 = 1_000;

/// Weight of a new sample in the average of the acknowledged bitrates at overuse (the "last
/// congested rate", kept in kbps).
pub const CAPACITY_SMOOTHING: f64 = 0.05;
/// Bounds of that average's normalized variance (kbps): the initial value and its clamp.
pub const CAPACITY_VAR_MIN: f64 = 0.4;
pub const CAPACITY_VAR_MAX: f64 = 2.5;
/// Standard deviations around the congested rate within which the estimate counts as "near" it
/// (additive increase); outside, the increase is multiplicative, and above it the congested rate is
/// forgotten.
pub const CAPACITY_DEVIATIONS: f64 = 3.0;

/// The acknowledged bitrate is the bytes received (by the receiver's clock) over the last
/// `ACKED_BINS - 1` complete bins of this length.
pub const ACKED_BIN_MS: i64 = 50;
/// Bins of the acknowledged bitrate's window (450 ms of complete bins, plus the current one).
pub const ACKED_BINS: usize = 10;

/// Loss above this fraction reduces the loss-based estimate.
pub const LOSS_HIGH: f64 = 0.10;
/// Loss below this fraction lets the loss-based estimate grow; in between it holds.
pub const LOSS_LOW: f64 = 0.02;
/// On high loss p the estimate becomes `rate × (1 − LOSS_DECREASE_GAIN × p)`.
pub const LOSS_DECREASE_GAIN: f64 = 0.5;
/// Growth per second of the loss-based estimate while loss is low.
pub const LOSS_INCREASE_PER_S: f64 = 0.08;
/// Loss is judged over at least this many reported packets ...
pub const LOSS_MIN_PACKETS: u32 = 20;
/// ... and at most once per this interval (ms), so that one burst of loss counts once.
pub const LOSS_INTERVAL_MS: i64 = 500;

/// Without transport-cc feedback for this long (ms), a REMB seen is used instead.
pub const REMB_FALLBACK_MS: i64 = 2_000;
/// The average packet size assumed before feedback tells it.
pub const INITIAL_PACKET_BYTES: f64 = 1_200.0;

/// A probe cluster's result sets the estimate to this fraction of the rate the cluster was
/// delivered at: a little below what the path carried, so that using it does not queue.
pub const PROBE_UTILIZATION: f64 = 0.9;
/// A cluster counts as carried by the path when its receive rate is at least this fraction of its
/// send rate: a queue growing during the cluster stretches the receive span and lowers the ratio,
/// so this is also the "no delay growth" test.
pub const PROBE_DELIVERED_RATIO: f64 = 0.9;
/// A cluster losing more than this fraction of its packets did not get through.
pub const PROBE_MAX_LOSS: f64 = LOSS_LOW;
/// A cluster is judged once feedback reported all its packets, or this long (ms) after it ended.
pub const PROBE_RESULT_TIMEOUT_MS: i64 = 1_000;
/// Fewer received packets than this, or a send or receive span shorter than `PROBE_MIN_SPAN_US`,
/// tell no rate: the cluster fails.
pub const PROBE_MIN_PACKETS: u32 = 5;
pub const PROBE_MIN_SPAN_US: i64 = 20_000;
/// No probe within this long (ms) of a decrease (delay or loss based): the path is busy draining.
pub const PROBE_QUIET_MS: i64 = 1_000;

const EMPTY: u8 = 0;
const SENT: u8 = 1;
const LOST: u8 = 2;
const RECEIVED: u8 = 3;

#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    seq: u16,
    state: u8,
    /// The probe cluster the packet was sent in (0: none).
    probe: u16,
    size: u32,
    send_us: i64,
}

/// What the estimator learnt from one probe cluster (`SendSideBwe::take_probe_result`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    pub id: u16,
    pub target_bps: u64,
    /// The rate the cluster's packets (probes and media alike) left at, and arrived at (0 when the
    /// cluster told nothing).
    pub sent_bps: u64,
    pub delivered_bps: u64,
    /// The path carried the cluster (delivered near its send rate, little loss, no overuse) and
    /// the estimate rose to `PROBE_UTILIZATION` × the delivered rate.
    pub success: bool,
    /// The estimate right after the result was applied.
    pub estimate_bps: u64,
}

const PROBE_IDLE: u8 = 0;
const PROBE_SENDING: u8 = 1;
const PROBE_ENDED: u8 = 2;

/// The one probe cluster being sent or awaiting its feedback: every packet sent while it is open
/// belongs to it (padding and media: the path sees both).
#[derive(Debug, Clone, Copy, Default)]
struct Cluster {
    id: u16,
    state: u8,
    target_bps: f64,
    ended_ms: i64,
    sent: u32,
    sent_bytes: u64,
    first_send_us: i64,
    last_send_us: i64,
    last_sent_size: u32,
    received: u32,
    lost: u32,
    recv_bytes: u64,
    first_recv_us: i64,
    first_recv_size: u32,
    last_recv_us: i64,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    first_send_us: i64,
    last_send_us: i64,
    last_arrival_us: i64,
}

/// What the overuse detector concludes from the trend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Normal,
    Overusing,
    Underusing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateState {
    Hold,
    Increase,
    Decrease,
}

/// The trendline filter and overuse detector over inter-group delay variations.
#[derive(Debug, Clone)]
struct DelayDetector {
    /// (arrival ms since `first_arrival_us`, smoothed accumulated delay ms), a ring.
    window: [(f64, f64); TRENDLINE_WINDOW],
    filled: usize,
    next: usize,
    first_arrival_us: Option<i64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    deltas: f64,
    slope: f64,
    prev_slope: f64,
    threshold_ms: f64,
    threshold_at_ms: Option<f64>,
    time_over_ms: f64,
    over_count: u32,
    signal: Signal,
}

impl DelayDetector {
    fn new() -> Self {
        DelayDetector {
            window: [(0.0, 0.0); TRENDLINE_WINDOW],
            filled: 0,
            next: 0,
            first_arrival_us: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            deltas: 0.0,
            slope: 0.0,
            prev_slope: 0.0,
            threshold_ms: THRESHOLD_INITIAL_MS,
            threshold_at_ms: None,
            time_over_ms: -1.0,
            over_count: 0,
            signal: Signal::Normal,
        }
    }

    /// The path changed under us: forget the trend (the threshold, learnt from the noise, stays).
    fn reset_trend(&mut self) {
        self.filled = 0;
        self.next = 0;
        self.first_arrival_us = None;
        self.accumulated_ms = 0.0;
        self.smoothed_ms = 0.0;
        self.deltas = 0.0;
        self.slope = 0.0;
        self.prev_slope = 0.0;
        self.time_over_ms = -1.0;
        self.over_count = 0;
        self.signal = Signal::Normal;
    }

    /// One inter-group delay variation: `delay_ms` (arrival delta − send delta) of the group that
    /// arrived (last packet) at `arrival_us`, `send_delta_ms` after the previous group was sent.
    fn update(&mut self, delay_ms: f64, send_delta_ms: f64, arrival_us: i64) {
        let first = *self.first_arrival_us.get_or_insert(arrival_us);
        let x = arrival_us.saturating_sub(first) as f64 / 1000.0;
        self.deltas = (self.deltas + 1.0).min(1000.0);
        self.accumulated_ms += delay_ms;
        self.smoothed_ms = TRENDLINE_SMOOTHING * self.smoothed_ms
            + (1.0 - TRENDLINE_SMOOTHING) * self.accumulated_ms;
        self.window[self.next] = (x, self.smoothed_ms);
        self.next = (self.next + 1) % TRENDLINE_WINDOW;
        self.filled = (self.filled + 1).min(TRENDLINE_WINDOW);
        if self.filled == TRENDLINE_WINDOW {
            if let Some(slope) = regression_slope(&self.window) {
                self.slope = slope;
            }
        }
        let trend = self.deltas.min(TRENDLINE_MAX_DELTAS) * self.slope * TRENDLINE_GAIN;
        self.detect(trend, send_delta_ms, arrival_us as f64 / 1000.0);
    }

    fn detect(&mut self, trend: f64, send_delta_ms: f64, now_ms: f64) {
        if self.deltas < 2.0 {
            self.signal = Signal::Normal;
        } else if trend > self.threshold_ms {
            if self.time_over_ms < 0.0 {
                self.time_over_ms = send_delta_ms / 2.0;
            } else {
                self.time_over_ms += send_delta_ms;
            }
            self.over_count += 1;
            if self.time_over_ms > OVERUSE_TIME_MS
                && self.over_count > 1
                && self.slope >= self.prev_slope
            {
                self.time_over_ms = 0.0;
                self.over_count = 0;
                self.signal = Signal::Overusing;
            }
        } else if trend < -self.threshold_ms {
            self.time_over_ms = -1.0;
            self.over_count = 0;
            self.signal = Signal::Underusing;
        } else {
            self.time_over_ms = -1.0;
            self.over_count = 0;
            self.signal = Signal::Normal;
        }
        self.prev_slope = self.slope;
        self.adapt_threshold(trend, now_ms);
    }

    fn adapt_threshold(&mut self, trend: f64, now_ms: f64) {
        let last = *self.threshold_at_ms.get_or_insert(now_ms);
        self.threshold_at_ms = Some(now_ms);
        let magnitude = trend.abs();
        if magnitude > self.threshold_ms + THRESHOLD_SPIKE_MS || !magnitude.is_finite() {
            return;
        }
        let k = if magnitude < self.threshold_ms {
            THRESHOLD_DOWN
        } else {
            THRESHOLD_UP
        };
        let step = (now_ms - last).clamp(0.0, THRESHOLD_MAX_STEP_MS);
        self.threshold_ms = (self.threshold_ms + k * (magnitude - self.threshold_ms) * step)
            .clamp(THRESHOLD_MIN_MS, THRESHOLD_MAX_MS);
    }
}

/// The least-squares slope of y over x; `None` when the x values do not spread.
fn regression_slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut num, mut den) = (0.0, 0.0);
    for &(x, y) in points {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    let slope = num / den;
    (den > 0.0 && slope.is_finite()).then_some(slope)
}

/// The average acknowledged bitrate at past overuse events (kbps) and its spread.
#[derive(Debug, Clone, Copy)]
struct Capacity {
    avg_kbps: Option<f64>,
    var: f64,
}

impl Capacity {
    fn reset(&mut self) {
        self.avg_kbps = None;
        self.var = CAPACITY_VAR_MIN;
    }

    fn update(&mut self, bps: f64) {
        let sample = bps / 1000.0;
        let avg = match self.avg_kbps {
            None => sample,
            Some(a) => (1.0 - CAPACITY_SMOOTHING) * a + CAPACITY_SMOOTHING * sample,
        };
        let norm = avg.max(1.0);
        self.var = ((1.0 - CAPACITY_SMOOTHING) * self.var
            + CAPACITY_SMOOTHING * (avg - sample) * (avg - sample) / norm)
            .clamp(CAPACITY_VAR_MIN, CAPACITY_VAR_MAX);
        self.avg_kbps = Some(avg);
    }

    /// (lower, upper) bounds in bps of "near the congested rate".
    fn bounds(&self) -> Option<(f64, f64)> {
        let avg = self.avg_kbps?;
        let spread = CAPACITY_DEVIATIONS * (self.var * avg.max(0.0)).sqrt();
        Some(((avg - spread) * 1000.0, (avg + spread) * 1000.0))
    }
}

/// Bytes received per `ACKED_BIN_MS` of the receiver's clock, for the acknowledged bitrate.
#[derive(Debug, Clone, Copy)]
struct AckedRate {
    bins: [u64; ACKED_BINS],
    first_bin: Option<i64>,
    latest_bin: i64,
}

impl AckedRate {
    fn add(&mut self, arrival_us: i64, bytes: u32) {
        let bin = arrival_us.div_euclid(ACKED_BIN_MS * 1000);
        let Some(first) = self.first_bin else {
            self.first_bin = Some(bin);
            self.latest_bin = bin;
            self.bins = [0; ACKED_BINS];
            self.bins[bin.rem_euclid(ACKED_BINS as i64) as usize] = u64::from(bytes);
            return;
        };
        if bin > self.latest_bin {
            let gap = bin.saturating_sub(self.latest_bin);
            if gap >= ACKED_BINS as i64 {
                self.bins = [0; ACKED_BINS];
            } else {
                for b in self.latest_bin + 1..=bin {
                    self.bins[b.rem_euclid(ACKED_BINS as i64) as usize] = 0;
                }
            }
            self.latest_bin = bin;
        } else if bin <= self.latest_bin.saturating_sub(ACKED_BINS as i64) {
            return; // older than the window
        } else if bin < first {
            self.first_bin = Some(bin);
        }
        let slot = &mut self.bins[bin.rem_euclid(ACKED_BINS as i64) as usize];
        *slot = slot.saturating_add(u64::from(bytes));
    }

    /// Bits per second over the complete bins of the window; `None` before one bin completed.
    fn bps(&self) -> Option<f64> {
        let first = self.first_bin?;
        let full = (self.latest_bin - first).clamp(0, ACKED_BINS as i64 - 1);
        if full == 0 {
            return None;
        }
        let bytes: u64 = (1..=full)
            .map(|k| self.bins[(self.latest_bin - k).rem_euclid(ACKED_BINS as i64) as usize])
            .sum();
        Some(bytes as f64 * 8.0 * 1000.0 / (full * ACKED_BIN_MS) as f64)
    }
}

/// The bandwidth estimate of one subscriber's downlink from its transport-cc feedback (delay and
/// loss), falling back to its REMB. See the module documentation and docs/bwe.md.
#[derive(Debug, Clone)]
pub struct SendSideBwe {
    initial_bps: f64,
    min_bps: f64,
    max_bps: f64,
    history: Box<[Sent]>,
    /// The latest time any call told (ms, SFU clock): what `source` judges staleness by.
    now_ms: i64,
    last_feedback_ms: Option<i64>,
    /// (raw 24-bit reference time, unwrapped) of the last feedback.
    reference: Option<(u32, i64)>,
    current_group: Option<Group>,
    prev_group: Option<Group>,
    detector: DelayDetector,
    state: RateState,
    delay_bps: f64,
    rate_at_ms: Option<i64>,
    capacity: Capacity,
    acked: AckedRate,
    avg_packet_bytes: f64,
    /// The loss-based limit: `max_bps` (no limit) until loss is seen, then lowered on high loss
    /// and raised again while loss stays low, until it no longer binds.
    loss_bps: f64,
    lost: u32,
    received: u32,
    loss_at_ms: Option<i64>,
    remb: Option<f64>,
    /// The loss fraction of the last judgement, and when the estimate last decreased.
    last_loss: f64,
    last_decrease_ms: Option<i64>,
    cluster: Cluster,
    next_probe_id: u16,
    probe_result: Option<ProbeResult>,
    /// The last judged cluster's delivered rate and when (for decreases just after it).
    last_probe: Option<(f64, i64)>,
}

impl SendSideBwe {
    /// An estimator starting at `initial_bps`, never leaving [`min_bps`, `max_bps`].
    pub fn new(initial_bps: u64, min_bps: u64, max_bps: u64) -> Self {
        let min = min_bps as f64;
        let max = (max_bps as f64).max(min);
        let initial = (initial_bps as f64).clamp(min, max);
        SendSideBwe {
            initial_bps: initial,
            min_bps: min,
            max_bps: max,
            history: vec![Sent::default(); HISTORY_SIZE].into_boxed_slice(),
            now_ms: i64::MIN,
            last_feedback_ms: None,
            reference: None,
            current_group: None,
            prev_group: None,
            detector: DelayDetector::new(),
            state: RateState::Hold,
            delay_bps: initial,
            rate_at_ms: None,
            capacity: Capacity {
                avg_kbps: None,
                var: CAPACITY_VAR_MIN,
            },
            acked: AckedRate {
                bins: [0; ACKED_BINS],
                first_bin: None,
                latest_bin: 0,
            },
            avg_packet_bytes: INITIAL_PACKET_BYTES,
            loss_bps: max,
            lost: 0,
            received: 0,
            loss_at_ms: None,
            remb: None,
            last_loss: 0.0,
            last_decrease_ms: None,
            cluster: Cluster::default(),
            next_probe_id: 1,
            probe_result: None,
            last_probe: None,
        }
    }

    fn tell_time(&mut self, now_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// A packet carrying transport-wide sequence number `twcc_seq`, `size` bytes on the wire, was
    /// sent at `now_ms`. Call in sending order.
    pub fn on_packet_sent(&mut self, twcc_seq: u16, size: usize, now_ms: i64) {
        self.tell_time(now_ms);
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let send_us = now_ms.saturating_mul(1000);
        let c = &mut self.cluster;
        let probe = if c.state == PROBE_SENDING {
            if c.sent == 0 {
                c.first_send_us = send_us;
            }
            c.sent = c.sent.saturating_add(1);
            c.sent_bytes = c.sent_bytes.saturating_add(u64::from(size));
            c.last_send_us = send_us;
            c.last_sent_size = size;
            c.id
        } else {
            0
        };
        self.history[twcc_seq as usize % HISTORY_SIZE] = Sent {
            seq: twcc_seq,
            state: SENT,
            probe,
            size,
            send_us,
        };
    }

    /// Open a probe cluster aiming at `target_bps`: the packets sent from now until `end_probe`
    /// form it, and their feedback tells the rate the path delivered them at. A cluster still open
    /// or awaiting feedback is abandoned. Returns the cluster's id.
    pub fn start_probe(&mut self, target_bps: u64, now_ms: i64) -> u16 {
        self.tell_time(now_ms);
        let id = self.next_probe_id;
        self.next_probe_id = self.next_probe_id.checked_add(1).unwrap_or(1);
        self.cluster = Cluster {
            id,
            state: PROBE_SENDING,
            target_bps: target_bps as f64,
            ..Cluster::default()
        };
        id
    }

    /// Close the open probe cluster: it is judged when its feedback is in.
    pub fn end_probe(&mut self, now_ms: i64) {
        self.tell_time(now_ms);
        if self.cluster.state == PROBE_SENDING {
            self.cluster.state = PROBE_ENDED;
            self.cluster.ended_ms = now_ms;
        }
    }

    /// Bytes sent in the open cluster so far (0 when none is open): what the pacer counts against
    /// the cluster's target.
    pub fn probe_sent_bytes(&self) -> u64 {
        if self.cluster.state == PROBE_SENDING {
            self.cluster.sent_bytes
        } else {
            0
        }
    }

    /// The last judged cluster's result, once.
    pub fn take_probe_result(&mut self) -> Option<ProbeResult> {
        self.probe_result.take()
    }

    /// Whether the path looks healthy enough to probe: transport-cc feedback in use (or none yet),
    /// no overuse, loss below `LOSS_LOW`, no decrease in the last `PROBE_QUIET_MS`.
    pub fn probe_allowed(&self, now_ms: i64) -> bool {
        self.source() != "remb"
            && self.detector.signal != Signal::Overusing
            && self.last_loss < LOSS_LOW
            && self
                .last_decrease_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= PROBE_QUIET_MS)
    }

    /// A transport-cc feedback's FCI (after the 12-byte RTCP feedback header: common header and the
    /// two SSRCs) arrived at `now_ms`. A malformed one changes nothing.
    pub fn on_feedback(&mut self, fci: &[u8], now_ms: i64) -> Result<(), FeedbackError> {
        let header = twcc::parse_header(fci)?;
        let unwrapped = match self.reference {
            None => i64::from(header.reference_time),
            Some((raw, prev)) => {
                // The shortest signed step between two 24-bit values.
                let step = ((header.reference_time.wrapping_sub(raw) << 8) as i32 >> 8) as i64;
                prev.saturating_add(step)
            }
        };
        let offset_us = unwrapped
            .saturating_sub(i64::from(header.reference_time))
            .saturating_mul(REFERENCE_TIME_US);
        // Validates the whole FCI before the first visit: on error nothing below has happened.
        twcc::parse(fci, |seq, recv| {
            self.packet_feedback(seq, recv.map(|t| t.saturating_add(offset_us)))
        })?;
        self.tell_time(now_ms);
        self.reference = Some((header.reference_time, unwrapped));
        if self.source() == "remb" {
            // Coming back from REMB: start from what REMB said, not from a stale estimate.
            if let Some(remb) = self.remb {
                self.delay_bps = remb;
                self.loss_bps = self.max_bps;
                self.state = RateState::Hold;
            }
        }
        self.last_feedback_ms = Some(now_ms);
        self.update_rate(now_ms);
        self.update_loss(now_ms);
        self.judge_probe(now_ms);
        Ok(())
    }

    /// A REMB (bits per second) arrived at `now_ms`.
    pub fn on_remb(&mut self, bps: u64, now_ms: i64) {
        self.tell_time(now_ms);
        self.remb = Some((bps as f64).clamp(self.min_bps, self.max_bps));
    }

    /// The current estimate (bps), within [min, max].
    pub fn estimate_bps(&self) -> u64 {
        let bps = match self.source() {
            "remb" => self.remb.unwrap_or(self.initial_bps),
            "twcc" => self.delay_bps.min(self.loss_bps),
            _ => self.initial_bps,
        };
        bps.clamp(self.min_bps, self.max_bps) as u64
    }

    /// Where the estimate comes from: "twcc" (transport-cc feedback, fresh, or stale with no REMB to
    /// fall back to), "remb" (no transport-cc feedback ever, or none for `REMB_FALLBACK_MS`, and a
    /// REMB seen) or "initial" (neither yet).
    pub fn source(&self) -> &'static str {
        match (self.last_feedback_ms, self.remb) {
            (Some(t), Some(_)) if self.now_ms.saturating_sub(t) >= REMB_FALLBACK_MS => "remb",
            (Some(_), _) => "twcc",
            (None, Some(_)) => "remb",
            (None, None) => "initial",
        }
    }

    /// The acknowledged bitrate (bps received, by the feedback), once known.
    pub fn acknowledged_bps(&self) -> Option<u64> {
        self.acked.bps().map(|b| b as u64)
    }

    fn packet_feedback(&mut self, seq: u16, recv_us: Option<i64>) {
        let slot = &mut self.history[seq as usize % HISTORY_SIZE];
        if slot.state == EMPTY || slot.seq != seq || slot.state == RECEIVED {
            return;
        }
        let in_cluster = slot.probe != 0 && slot.probe == self.cluster.id;
        let Some(arrival_us) = recv_us else {
            if slot.state == SENT {
                slot.state = LOST;
                self.lost = self.lost.saturating_add(1);
                if in_cluster {
                    self.cluster.lost = self.cluster.lost.saturating_add(1);
                }
            }
            return;
        };
        if slot.state == LOST {
            // Reported lost before, arrived after all (reordered): not a loss.
            self.lost = self.lost.saturating_sub(1);
            if in_cluster {
                self.cluster.lost = self.cluster.lost.saturating_sub(1);
            }
        }
        slot.state = RECEIVED;
        let (size, send_us) = (slot.size, slot.send_us);
        let c = &mut self.cluster;
        if in_cluster && c.state != PROBE_IDLE {
            if c.received == 0 || arrival_us < c.first_recv_us {
                c.first_recv_us = arrival_us;
                c.first_recv_size = size;
            }
            if c.received == 0 || arrival_us > c.last_recv_us {
                c.last_recv_us = arrival_us;
            }
            c.received += 1;
            c.recv_bytes = c.recv_bytes.saturating_add(u64::from(size));
        }
        self.received = self.received.saturating_add(1);
        self.acked.add(arrival_us, size);
        self.avg_packet_bytes = 0.95 * self.avg_packet_bytes + 0.05 * f64::from(size);
        self.group_packet(send_us, arrival_us);
    }

    /// Packet grouping: a packet joins the current group or completes it, and a completed group
    /// gives the trendline one delay variation against the previous group.
    fn group_packet(&mut self, send_us: i64, arrival_us: i64) {
        let Some(current) = self.current_group.as_mut() else {
            self.current_group = Some(Group {
                first_send_us: send_us,
                last_send_us: send_us,
                last_arrival_us: arrival_us,
            });
            return;
        };
        if send_us < current.first_send_us {
            return; // sent before the current group: reordered, already accounted
        }
        if send_us.saturating_sub(current.first_send_us) <= GROUP_SPAN_US {
            current.last_send_us = current.last_send_us.max(send_us);
            current.last_arrival_us = current.last_arrival_us.max(arrival_us);
            return;
        }
        let done = *current;
        self.current_group = Some(Group {
            first_send_us: send_us,
            last_send_us: send_us,
            last_arrival_us: arrival_us,
        });
        let Some(prev) = self.prev_group.replace(done) else {
            return;
        };
        let send_delta = done.last_send_us.saturating_sub(prev.last_send_us);
        let arrival_delta = done.last_arrival_us.saturating_sub(prev.last_arrival_us);
        let variation = arrival_delta.saturating_sub(send_delta);
        if variation.saturating_abs() > ARRIVAL_JUMP_US {
            self.detector.reset_trend();
            return;
        }
        if arrival_delta < 0 {
            return; // the group arrived before the previous one: no delay sample
        }
        self.detector.update(
            variation as f64 / 1000.0,
            send_delta as f64 / 1000.0,
            done.last_arrival_us,
        );
    }

    /// AIMD on the detector's signal, once per feedback.
    fn update_rate(&mut self, now_ms: i64) {
        self.state = match (self.detector.signal, self.state) {
            (Signal::Overusing, _) => RateState::Decrease,
            (Signal::Underusing, _) => RateState::Hold,
            (Signal::Normal, RateState::Hold) => RateState::Increase,
            (Signal::Normal, s) => s,
        };
        let dt_ms = self.rate_at_ms.map_or(0, |t| {
            now_ms.saturating_sub(t).clamp(0, MAX_INCREASE_STEP_MS)
        });
        self.rate_at_ms = Some(now_ms);
        let dt_s = dt_ms as f64 / 1000.0;
        match self.state {
            RateState::Hold => {}
            RateState::Increase => {
                if self
                    .capacity
                    .bounds()
                    .is_some_and(|(_, upper)| self.delay_bps > upper)
                {
                    self.capacity.reset(); // beyond the old congested rate: it has changed
                }
                let near = self
                    .capacity
                    .bounds()
                    .is_some_and(|(lower, upper)| (lower..=upper).contains(&self.delay_bps));
                self.delay_bps = if near {
                    let per_s = (ADDITIVE_PACKETS * self.avg_packet_bytes * 8.0
                        / (RESPONSE_TIME_MS / 1000.0))
                        .max(MIN_ADDITIVE_BPS_PER_S);
                    self.delay_bps + per_s * dt_s
                } else {
                    self.delay_bps * (1.0 + INCREASE_PER_S).powf(dt_s)
                        + MIN_INCREASE_BPS_PER_S * dt_s
                };
            }
            RateState::Decrease => {
                // A probe's queue is overuse too, but the acknowledged window (450 ms) then mixes
                // the probe with the lower rate around it: what the probe was delivered at is the
                // better measure of the path.
                let measured = self
                    .acked
                    .bps()
                    .unwrap_or(self.delay_bps)
                    .max(self.probe_delivered_bps(now_ms));
                if self
                    .capacity
                    .bounds()
                    .is_some_and(|(lower, _)| measured < lower)
                {
                    self.capacity.reset(); // well below the old congested rate: it has changed
                }
                self.capacity.update(measured);
                self.delay_bps = self.delay_bps.min(DECREASE_FACTOR * measured);
                self.state = RateState::Hold;
                self.last_decrease_ms = Some(now_ms);
            }
        }
        self.delay_bps = self.delay_bps.clamp(self.min_bps, self.max_bps);
    }

    /// Judge the ended cluster once its feedback is complete (or late): its send rate (bytes but
    /// the last packet's over the send span) and delivered rate (bytes but the first arrival's over
    /// the receive span). Carried by the path (delivered ≥ `PROBE_DELIVERED_RATIO` × sent, loss ≤
    /// `PROBE_MAX_LOSS`, no overuse): the estimate rises at once to `PROBE_UTILIZATION` × the
    /// delivered rate, the loss-based limit with it. Not carried (the path queued or dropped it):
    /// what it delivered is the path's capacity now, so the estimate becomes `PROBE_UTILIZATION` ×
    /// that (lower or higher; only lower under overuse) and it counts as a congested rate.
    fn judge_probe(&mut self, now_ms: i64) {
        let c = self.cluster;
        if c.state != PROBE_ENDED {
            return;
        }
        let complete = c.received.saturating_add(c.lost) >= c.sent
            || now_ms.saturating_sub(c.ended_ms) >= PROBE_RESULT_TIMEOUT_MS;
        if !complete {
            return;
        }
        self.cluster.state = PROBE_IDLE;
        let send_span = c.last_send_us.saturating_sub(c.first_send_us);
        let recv_span = c.last_recv_us.saturating_sub(c.first_recv_us);
        let mut result = ProbeResult {
            id: c.id,
            target_bps: c.target_bps as u64,
            sent_bps: 0,
            delivered_bps: 0,
            success: false,
            estimate_bps: 0,
        };
        if c.received >= PROBE_MIN_PACKETS
            && send_span >= PROBE_MIN_SPAN_US
            && recv_span >= PROBE_MIN_SPAN_US
        {
            let sent_bps = c.sent_bytes.saturating_sub(u64::from(c.last_sent_size)) as f64 * 8e6
                / send_span as f64;
            let recv_bps = c.recv_bytes.saturating_sub(u64::from(c.first_recv_size)) as f64 * 8e6
                / recv_span as f64;
            let delivered = recv_bps.min(sent_bps);
            let loss = 1.0 - f64::from(c.received.min(c.sent)) / f64::from(c.sent.max(1));
            let overuse = self.detector.signal == Signal::Overusing;
            let carried = recv_bps >= PROBE_DELIVERED_RATIO * sent_bps && loss <= PROBE_MAX_LOSS;
            let value = (PROBE_UTILIZATION * delivered).clamp(self.min_bps, self.max_bps);
            if carried && !overuse {
                // Success is a raise: a cluster that taught nothing new must not be repeated at once.
                result.success = value > self.delay_bps.min(self.loss_bps);
                if value > self.delay_bps {
                    if self
                        .capacity
                        .bounds()
                        .is_some_and(|(_, upper)| value > upper)
                    {
                        self.capacity.reset(); // the path carries more than it congested at
                    }
                    self.delay_bps = value;
                }
                self.loss_bps = self.loss_bps.max(value);
            } else if !carried {
                self.capacity.update(delivered);
                self.delay_bps = if overuse {
                    self.delay_bps.min(value)
                } else {
                    value
                };
            }
            result.sent_bps = sent_bps as u64;
            result.delivered_bps = delivered as u64;
            self.last_probe = Some((delivered, now_ms));
        }
        result.estimate_bps = self.delay_bps.min(self.loss_bps) as u64;
        self.probe_result = Some(result);
    }

    /// The rate the current probe cluster is being delivered at (once it has enough packets), or
    /// the last cluster's if it was judged within `PROBE_RESULT_TIMEOUT_MS`; 0 without either.
    fn probe_delivered_bps(&self, now_ms: i64) -> f64 {
        let c = &self.cluster;
        let span = c.last_recv_us.saturating_sub(c.first_recv_us);
        if c.state != PROBE_IDLE && c.received >= PROBE_MIN_PACKETS && span >= PROBE_MIN_SPAN_US {
            return c.recv_bytes.saturating_sub(u64::from(c.first_recv_size)) as f64 * 8e6
                / span as f64;
        }
        match self.last_probe {
            Some((bps, at)) if now_ms.saturating_sub(at) <= PROBE_RESULT_TIMEOUT_MS => bps,
            _ => 0.0,
        }
    }

    /// The loss-based estimate, from the packets reported since the last judgement.
    fn update_loss(&mut self, now_ms: i64) {
        let total = self.lost.saturating_add(self.received);
        if total < LOSS_MIN_PACKETS {
            return;
        }
        let since = self.loss_at_ms.map(|t| now_ms.saturating_sub(t));
        if since.is_some_and(|s| s < LOSS_INTERVAL_MS) {
            return;
        }
        let loss = f64::from(self.lost) / f64::from(total);
        self.last_loss = loss;
        if loss > LOSS_HIGH {
            let current = self.delay_bps.min(self.loss_bps);
            self.loss_bps = current * (1.0 - LOSS_DECREASE_GAIN * loss);
            self.last_decrease_ms = Some(now_ms);
        } else if loss < LOSS_LOW {
            let dt_s = since.unwrap_or(0).max(0) as f64 / 1000.0;
            self.loss_bps *= (1.0 + LOSS_INCREASE_PER_S).powf(dt_s);
        }
        self.loss_bps = self.loss_bps.clamp(self.min_bps, self.max_bps);
        self.lost = 0;
        self.received = 0;
        self.loss_at_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Prober, Step};
    use crate::twcc::FeedbackBuilder;
    use std::collections::VecDeque;

    /// splitmix64: a seeded, deterministic source for loss and jitter.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    const PACKET_BYTES: usize = 1200;
    const FEEDBACK_INTERVAL_MS: i64 = 100;
    const RETURN_DELAY_MS: i64 = 20;
    const PROPAGATION_US: i64 = 20_000;
    const MAX_QUEUE_US: f64 = 300_000.0;
    /// The receiver's clock runs this far from the sender's (feedback times are its own).
    const RECEIVER_OFFSET_US: i64 = 7_777_777_777;

    /// A sender, a bottleneck link (capacity, a drop-tail queue of `MAX_QUEUE_US`, random loss,
    /// propagation delay, up to 0.5 ms of jitter) and a receiver that sends transport-cc feedback
    /// every 100 ms, all on one simulated clock in 1 ms steps. The sender paces 1200-byte packets
    /// at a fixed rate, or (`rate_bps` None) at the current estimate as an encoder would.
    struct Sim {
        bwe: SendSideBwe,
        rng: Rng,
        now_ms: i64,
        capacity_bps: f64,
        loss: f64,
        rate_bps: Option<f64>,
        seq: u16,
        next_send_us: f64,
        busy_until_us: f64,
        last_arrival_us: i64,
        /// Sent packets not yet reported: (seq, arrival on the sender's clock or lost).
        flight: VecDeque<(u16, Option<i64>)>,
        next_feedback_ms: i64,
        fb_count: u8,
        feedback: VecDeque<(i64, Vec<u8>)>,
        builder: FeedbackBuilder,
        /// SFU mode: media is the simulcast layer the estimate allows (`SFU_LAYERS_BPS`, each
        /// needing 1.25x its rate), and a `Prober` probes with padding while f does not fit.
        sfu: bool,
        prober: Option<Prober>,
        probes: Vec<(i64, ProbeResult)>,
        probe_starts: Vec<i64>,
    }

    /// The simulcast layers of the SFU mode, and the budget each needs (the allocation's headroom).
    const SFU_LAYERS_BPS: [f64; 3] = [150_000.0, 500_000.0, 1_500_000.0];
    const SFU_HEADROOM: f64 = 1.25;
    /// A padding-only probe packet on the wire: header, extensions, 255 bytes of padding, SRTP tag.
    const PROBE_PACKET_BYTES: usize = 290;

    impl Sim {
        fn new(capacity_bps: f64, rate_bps: Option<f64>, seed: u64) -> Self {
            Sim {
                bwe: SendSideBwe::new(1_000_000, 100_000, 10_000_000),
                rng: Rng(seed),
                now_ms: 0,
                capacity_bps,
                loss: 0.0,
                rate_bps,
                seq: 65_000, // wraps early in every run
                next_send_us: 0.0,
                busy_until_us: 0.0,
                last_arrival_us: 0,
                flight: VecDeque::new(),
                next_feedback_ms: FEEDBACK_INTERVAL_MS,
                fb_count: 0,
                feedback: VecDeque::new(),
                builder: FeedbackBuilder::new(0, 0),
                sfu: false,
                prober: None,
                probes: Vec::new(),
                probe_starts: Vec::new(),
            }
        }

        /// A sender that forwards the simulcast layer its estimate allows, probing if `probing`.
        fn sfu(capacity_bps: f64, probing: bool, seed: u64) -> Self {
            let mut sim = Sim::new(capacity_bps, None, seed);
            sim.sfu = true;
            sim.prober = probing.then(Prober::new);
            sim
        }

        /// SFU mode: (the layer's rate, what the top layer needs if it does not fit, else 0).
        fn layer(&self) -> (f64, u64) {
            let e = self.bwe.estimate_bps() as f64;
            let l = (0..3)
                .rev()
                .find(|&l| SFU_LAYERS_BPS[l] * SFU_HEADROOM <= e)
                .unwrap_or(0);
            let wanted = if l < 2 {
                (SFU_LAYERS_BPS[2] * SFU_HEADROOM) as u64
            } else {
                0
            };
            (SFU_LAYERS_BPS[l], wanted)
        }

        /// The worker's probing, every 10 ms: the prober's step, padding sent as a burst.
        fn probe(&mut self, now_us: i64) {
            if let Some(r) = self.bwe.take_probe_result() {
                self.probes.push((self.now_ms, r));
                if let Some(p) = self.prober.as_mut() {
                    p.on_result(r.success, self.now_ms);
                }
            }
            let wanted = self.layer().1;
            let Some(p) = self.prober.as_mut() else {
                return;
            };
            let step = p.tick(
                self.now_ms,
                self.bwe.estimate_bps(),
                wanted,
                self.bwe.probe_allowed(self.now_ms),
                10_000_000,
                self.bwe.probe_sent_bytes(),
            );
            let pad = match step {
                Step::Start {
                    target_bps,
                    pad_bytes,
                } => {
                    self.bwe.start_probe(target_bps, self.now_ms);
                    self.probe_starts.push(self.now_ms);
                    pad_bytes
                }
                Step::Pad { pad_bytes } => pad_bytes,
                Step::End => {
                    self.bwe.end_probe(self.now_ms);
                    0
                }
                Step::Idle => 0,
            };
            for _ in 0..pad.div_ceil(PROBE_PACKET_BYTES) {
                self.send(now_us, PROBE_PACKET_BYTES);
            }
        }

        fn step(&mut self) {
            let now_us = self.now_ms * 1000;
            while self.feedback.front().is_some_and(|f| f.0 <= self.now_ms) {
                let (_, fci) = self.feedback.pop_front().expect("feedback");
                self.bwe
                    .on_feedback(&fci, self.now_ms)
                    .expect("valid feedback");
            }
            if self.sfu && self.now_ms % 10 == 0 {
                self.probe(now_us);
            }
            while self.next_send_us <= now_us as f64 {
                let rate = if self.sfu {
                    self.layer().0
                } else {
                    self.rate_bps
                        .unwrap_or_else(|| self.bwe.estimate_bps() as f64)
                };
                self.send(now_us, PACKET_BYTES);
                self.next_send_us += PACKET_BYTES as f64 * 8.0 * 1e6 / rate;
            }
            if self.now_ms >= self.next_feedback_ms {
                self.next_feedback_ms += FEEDBACK_INTERVAL_MS;
                self.send_feedback(now_us);
            }
            self.now_ms += 1;
        }

        fn send(&mut self, now_us: i64, size: usize) {
            self.bwe.on_packet_sent(self.seq, size, self.now_ms);
            let now = now_us as f64;
            let arrival = if self.rng.unit() < self.loss {
                None
            } else {
                let start = self.busy_until_us.max(now);
                if start - now > MAX_QUEUE_US {
                    None
                } else {
                    self.busy_until_us = start + size as f64 * 8.0 * 1e6 / self.capacity_bps;
                    let jitter = (self.rng.unit() * 500.0) as i64;
                    let at = (self.busy_until_us as i64 + PROPAGATION_US + jitter)
                        .max(self.last_arrival_us);
                    self.last_arrival_us = at;
                    Some(at)
                }
            };
            self.flight.push_back((self.seq, arrival));
            self.seq = self.seq.wrapping_add(1);
        }

        /// Report every packet up to the last one that has arrived (later losses wait for a
        /// packet after them, as a receiver cannot tell them from packets in flight).
        fn send_feedback(&mut self, now_us: i64) {
            let Some(last) = self
                .flight
                .iter()
                .rposition(|&(_, a)| a.is_some_and(|a| a <= now_us))
            else {
                return;
            };
            let mut started = false;
            for _ in 0..=last {
                let (seq, arrival) = self.flight.pop_front().expect("in flight");
                let recv = arrival.map(|a| a + RECEIVER_OFFSET_US);
                if !started {
                    self.builder.reset(seq, self.fb_count);
                    started = true;
                }
                if !self.builder.push(recv) {
                    self.flush();
                    self.builder.reset(seq, self.fb_count);
                    assert!(self.builder.push(recv));
                }
            }
            self.flush();
        }

        fn flush(&mut self) {
            let mut fci = Vec::new();
            self.builder.build(&mut fci);
            self.fb_count = self.fb_count.wrapping_add(1);
            self.feedback
                .push_back((self.now_ms + RETURN_DELAY_MS, fci));
        }

        /// Run for `ms`, returning the estimate at every feedback interval.
        fn run(&mut self, ms: i64) -> Vec<u64> {
            let mut samples = Vec::new();
            for _ in 0..ms {
                self.step();
                if self.now_ms % FEEDBACK_INTERVAL_MS == 0 {
                    samples.push(self.bwe.estimate_bps());
                }
            }
            samples
        }
    }

    #[test]
    fn a_congested_link_brings_the_estimate_down_within_2_s() {
        let mut sim = Sim::new(500_000.0, Some(2_000_000.0), 1);
        let samples = sim.run(2_000);
        assert_eq!(sim.bwe.source(), "twcc");
        let at_2s = *samples.last().expect("samples");
        assert!(at_2s < 600_000, "estimate {at_2s} after 2 s: {samples:?}");
        let acked = sim.bwe.acknowledged_bps().expect("acked");
        assert!((400_000..=600_000).contains(&acked), "acked {acked}");
    }

    #[test]
    fn a_free_link_ramps_up_from_1_to_over_2_5_mbps() {
        // 8 %/s compounds to 2.5x in 11.9 s; the first feedback comes after 120 ms.
        let mut sim = Sim::new(5_000_000.0, None, 2);
        let samples = sim.run(12_500);
        let end = *samples.last().expect("samples");
        assert!(end > 2_500_000, "estimate {end} after 12.5 s: {samples:?}");
        // No false overuse on the way: the estimate never falls.
        assert!(
            samples.windows(2).all(|w| w[1] >= w[0]),
            "estimate fell on a free link: {samples:?}"
        );
    }

    #[test]
    fn random_loss_drops_the_estimate_and_it_recovers_after() {
        let mut sim = Sim::new(5_000_000.0, None, 3);
        sim.loss = 0.2;
        let lossy = sim.run(6_000);
        let trough = *lossy.last().expect("samples");
        assert!(
            trough < 600_000,
            "estimate {trough} after 6 s of 20% loss: {lossy:?}"
        );
        sim.loss = 0.0;
        let clean = sim.run(15_000);
        let end = *clean.last().expect("samples");
        assert!(
            end > 2 * trough,
            "estimate {end} 15 s after the loss (from {trough}): {clean:?}"
        );
    }

    #[test]
    fn a_limited_link_holds_the_estimate_near_capacity_and_lifting_it_recovers() {
        let mut sim = Sim::new(500_000.0, None, 4);
        let limited = sim.run(15_000);
        let tail = &limited[limited.len() - 50..];
        let (lo, hi) = (
            *tail.iter().min().expect("min"),
            *tail.iter().max().expect("max"),
        );
        assert!(
            lo >= 250_000 && hi <= 650_000,
            "estimate on a 500 kbps link between {lo} and {hi}: {limited:?}"
        );
        sim.capacity_bps = 5_000_000.0;
        let lifted = sim.run(20_000);
        let end = *lifted.last().expect("samples");
        assert!(
            end > 1_200_000,
            "estimate {end} 20 s after the limit lifted: {lifted:?}"
        );
    }

    /// Time (ms) until the estimate first exceeds `bps`, running at most `limit_ms`.
    fn time_to(sim: &mut Sim, bps: u64, limit_ms: i64) -> Option<i64> {
        let start = sim.now_ms;
        while sim.now_ms - start < limit_ms {
            sim.step();
            if sim.bwe.estimate_bps() > bps {
                return Some(sim.now_ms - start);
            }
        }
        None
    }

    #[test]
    fn probing_brings_a_lifted_limit_back_above_1_5_mbps_within_seconds() {
        // 10 s on a 450 kbps link (the estimate near capacity, failed probes backing off), then
        // the limit is lifted: the next probe is at most the backoff away, and from there probes
        // double the estimate in succession (here ~390 k → 0.94 M → 1.78 M in 0.4 s).
        let lifted = |probing: bool| {
            let mut sim = Sim::sfu(450_000.0, probing, 5);
            sim.run(10_000);
            sim.capacity_bps = 5_000_000.0;
            let lift_ms = sim.now_ms;
            let t = time_to(&mut sim, 1_500_000, 30_000);
            let next_probe = sim
                .probe_starts
                .iter()
                .find(|&&s| s >= lift_ms)
                .map(|s| s - lift_ms);
            (t, next_probe)
        };
        let (t, next_probe) = lifted(true);
        let t = t.expect("above 1.5 Mbps");
        let wait = next_probe.expect("a probe after the lift");
        assert!(
            wait <= crate::probe::PROBE_MAX_INTERVAL_MS,
            "the backoff is bounded: {wait} ms"
        );
        assert!(
            t - wait <= 1_500,
            "> 1.5 Mbps {} ms after the first probe on the lifted link",
            t - wait
        );
        assert!(t <= crate::probe::PROBE_MAX_INTERVAL_MS + 1_500, "{t} ms");
        // Without probing the multiplicative increase needs about 20 s.
        let (slow, _) = lifted(false);
        assert!(slow.is_none_or(|s| s > 10_000), "without probing: {slow:?}");
    }

    #[test]
    fn probing_from_the_start_reaches_the_top_layer_and_then_stops() {
        let mut sim = Sim::sfu(5_000_000.0, true, 6);
        let t = time_to(&mut sim, 1_875_000, 3_000).expect("the top layer's need within 3 s");
        assert!(t < 1_000, "one probe from the initial 1 Mbps: {t} ms");
        let probes = sim.probe_starts.len();
        assert!(probes >= 1);
        sim.run(10_000);
        assert_eq!(
            sim.probe_starts.len(),
            probes,
            "no probe once the estimate covers the wanted layers"
        );
        assert!(sim.bwe.estimate_bps() > 1_875_000);
        assert!(
            sim.probes.iter().all(|(_, r)| r.success),
            "{:?}",
            sim.probes
        );
    }

    #[test]
    fn probing_a_limited_link_does_not_raise_the_estimate_above_capacity_and_backs_off() {
        let mut sim = Sim::sfu(450_000.0, true, 7);
        sim.run(40_000);
        assert!(sim.probes.len() >= 3, "{:?}", sim.probes);
        for (at, r) in &sim.probes {
            if r.target_bps > 500_000 {
                assert!(!r.success, "a probe above capacity failed: {at} {r:?}");
            }
            assert!(r.delivered_bps <= 470_000, "{at} {r:?}");
            assert!(r.estimate_bps <= 450_000, "{at} {r:?}");
        }
        let gaps: Vec<i64> = sim.probe_starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.windows(2).all(|g| g[1] >= g[0]) && gaps.last() > gaps.first(),
            "the interval grows: {gaps:?}"
        );
        let tail = sim.run(5_000);
        let low = *tail.iter().min().expect("samples");
        assert!(
            low >= 300_000,
            "probes do not drag the estimate far below capacity: {low}"
        );
    }

    fn feedback_for(bwe: &mut SendSideBwe, first: u16, n: u16, at_ms: i64) {
        let mut b = FeedbackBuilder::new(first, 0);
        for i in 0..n {
            bwe.on_packet_sent(first.wrapping_add(i), 1000, at_ms + i64::from(i) * 10);
            b.push(Some(50_000_000 + (at_ms + i64::from(i) * 10) * 1000));
        }
        let mut fci = Vec::new();
        b.build(&mut fci);
        bwe.on_feedback(&fci, at_ms + i64::from(n) * 10 + 30)
            .expect("valid");
    }

    #[test]
    fn remb_is_used_without_transport_cc_and_after_it_stops() {
        let mut bwe = SendSideBwe::new(1_000_000, 100_000, 10_000_000);
        assert_eq!((bwe.source(), bwe.estimate_bps()), ("initial", 1_000_000));
        bwe.on_remb(300_000, 0);
        assert_eq!((bwe.source(), bwe.estimate_bps()), ("remb", 300_000));
        feedback_for(&mut bwe, 0, 10, 100);
        assert_eq!(bwe.source(), "twcc");
        assert!(
            bwe.estimate_bps() <= 310_000,
            "twcc starts from the REMB value: {}",
            bwe.estimate_bps()
        );
        bwe.on_remb(2_000_000, 500);
        assert_eq!(bwe.source(), "twcc", "fresh feedback wins over REMB");
        // Sending goes on, feedback stops: after 2 s REMB takes over.
        for i in 0..30 {
            bwe.on_packet_sent(100 + i, 1000, 300 + i64::from(i) * 100);
        }
        assert_eq!((bwe.source(), bwe.estimate_bps()), ("remb", 2_000_000));
        feedback_for(&mut bwe, 200, 10, 4_000);
        assert_eq!(bwe.source(), "twcc");
        assert!(bwe.estimate_bps() >= 1_900_000);
        // REMB values are clamped too.
        bwe.on_remb(u64::MAX, 9_000);
        assert_eq!((bwe.source(), bwe.estimate_bps()), ("remb", 10_000_000));
    }

    #[test]
    fn a_malformed_feedback_changes_nothing() {
        let mut bwe = SendSideBwe::new(1_000_000, 100_000, 10_000_000);
        bwe.on_packet_sent(0, 1000, 0);
        let mut b = FeedbackBuilder::new(0, 0);
        b.push(Some(1_000));
        let mut fci = Vec::new();
        b.build(&mut fci);
        fci.truncate(9);
        assert_eq!(bwe.on_feedback(&fci, 50), Err(FeedbackError::MissingChunks));
        assert_eq!(bwe.on_feedback(&[1, 2], 50), Err(FeedbackError::TooShort));
        assert_eq!((bwe.source(), bwe.estimate_bps()), ("initial", 1_000_000));
        assert_eq!(bwe.acknowledged_bps(), None);
    }

    #[test]
    fn limits_are_kept_whatever_comes_in() {
        let bwe = SendSideBwe::new(50_000_000, 100_000, 10_000_000);
        assert_eq!(bwe.estimate_bps(), 10_000_000);
        let bwe = SendSideBwe::new(0, 100_000, 50_000);
        assert_eq!(bwe.estimate_bps(), 100_000, "max below min: min wins");
        let mut bwe = SendSideBwe::new(1_000_000, 100_000, 10_000_000);
        let mut rng = Rng(99);
        let mut fci = Vec::new();
        for i in 0..3_000i64 {
            let now = i * 7 + (rng.next() % 50) as i64 - 25;
            bwe.on_packet_sent(rng.next() as u16, (rng.next() % 1500) as usize, now);
            fci.clear();
            let len = (rng.next() % 64) as usize;
            fci.extend((0..len).map(|_| rng.next() as u8));
            if i % 3 == 0 && fci.len() >= 4 {
                fci[2] = 0; // small status counts parse more often
                fci[3] %= 16;
            }
            let _ = bwe.on_feedback(&fci, now);
            if i % 100 == 0 {
                bwe.on_remb(rng.next() >> (rng.next() % 64), now);
            }
            let e = bwe.estimate_bps();
            assert!((100_000..=10_000_000).contains(&e), "{e}");
        }
        // Extreme clocks do not overflow.
        bwe.on_packet_sent(1, usize::MAX, i64::MAX);
        let _ = bwe.on_feedback(
            &[0, 1, 0, 1, 0xFF, 0xFF, 0xFF, 0, 0x20, 1, 0xFF, 0],
            i64::MIN,
        );
        bwe.on_packet_sent(2, 0, i64::MIN);
        let _ = bwe.on_feedback(&[0, 2, 0, 1, 0x80, 0, 0, 0, 0x40, 1, 0x80, 0], i64::MAX);
        assert!((100_000..=10_000_000).contains(&bwe.estimate_bps()));
    }
}
