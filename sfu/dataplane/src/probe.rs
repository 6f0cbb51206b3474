//! When to probe a subscriber's downlink and how much padding each tick sends (docs/bwe.md,
//! "Probing").
//!
//! The SFU sends a subscriber only what its layers need, so while a bandwidth limit holds it on a
//! low layer the estimator sees little traffic and, once the limit is lifted, can only climb at its
//! multiplicative rate (8 %/s): tens of seconds back to the high layer. A probe cluster is a short
//! burst of padding (on a video consumer's RTX stream, with transport-wide sequence numbers) at a
//! target rate; the estimator (`bwe::SendSideBwe::start_probe`) measures the rate the path delivered
//! it at and takes that as its estimate at once when the path carried it.
//!
//! `Prober` is the per-subscriber decision: probe when the allocation is capped by the estimate
//! (the layers wanted need more than it), the path is healthy, and the last probe is far enough
//! back (a growing backoff after failures, none after a success so that probes can double the
//! estimate in succession). It paces the cluster over `PROBE_DURATION_MS` in `PROBE_TICK_MS` steps.
//! Pure: every time is passed in; nothing is allocated.

/// A probe aims at this multiple of the current estimate ...
pub const PROBE_GAIN: f64 = 2.0;
/// ... but not above this multiple of what the wanted layers need (the allocation's own upgrade
/// headroom included): a carried probe at that rate gives `PROBE_UTILIZATION` (0.9) × 1.25 > 1 ×
/// the need, enough for the upgrade, and no more load than that is put on the path.
pub const PROBE_WANTED_HEADROOM: f64 = 1.25;
/// A probe below this multiple of the estimate would teach nothing new: not sent.
pub const PROBE_MIN_STEP: f64 = 1.2;
/// A cluster's padding is spread over this long: long enough for a receive rate measured through
/// 10 ms bursts and receiver jitter, short enough that a probe of a limited path queues at most
/// about this long before its feedback ends it.
pub const PROBE_DURATION_MS: i64 = 150;
/// The period `tick` is called at (the I/O loop's): padding is paced in these steps.
pub const PROBE_TICK_MS: i64 = 10;
/// After a failed probe the next waits this long, doubled per further failure ...
pub const PROBE_INTERVAL_MS: i64 = 2_500;
/// ... up to this: a limited path is probed every this often (each probe costs it a short queue),
/// and a path whose limit is lifted is found again within this long.
pub const PROBE_MAX_INTERVAL_MS: i64 = 5_000;
/// A cluster whose result has not come this long after it ended (feedback stopped) failed.
pub const PROBE_GIVE_UP_MS: i64 = 2_000;
/// Padding bytes per probe packet (the RTP padding count is one byte).
pub const PROBE_PADDING_BYTES: usize = 255;
/// Probe packets per tick at most (a late tick catches up only this far).
pub const PROBE_MAX_PACKETS_PER_TICK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// Sending the cluster: since `start_ms`, until `end_ms`, at `target_bps`.
    Sending {
        start_ms: i64,
        end_ms: i64,
        target_bps: u64,
    },
    /// Ended at `since_ms`; waiting for the estimator's verdict.
    Waiting {
        since_ms: i64,
    },
}

/// One subscriber's probing state.
#[derive(Debug, Clone)]
pub struct Prober {
    state: State,
    /// No new probe before this.
    next_ms: i64,
    failures: u32,
    /// Probes started, and those that succeeded.
    pub started: u64,
    pub succeeded: u64,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

/// What a tick of the prober asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Idle,
    /// Open a cluster at this target (`SendSideBwe::start_probe`), then send `Pad`'s bytes.
    Start { target_bps: u64, pad_bytes: usize },
    /// Send about this many bytes of padding now (the cluster is open).
    Pad { pad_bytes: usize },
    /// The cluster's time is up: close it (`SendSideBwe::end_probe`).
    End,
}

impl Prober {
    pub fn new() -> Self {
        Prober {
            state: State::Idle,
            next_ms: i64::MIN,
            failures: 0,
            started: 0,
            succeeded: 0,
        }
    }

    /// Neither sending a cluster nor waiting for one's verdict.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Whether a cluster is being sent.
    pub fn sending(&self) -> bool {
        matches!(self.state, State::Sending { .. })
    }

    /// One tick. `estimate_bps`: the current estimate; `wanted_bps`: what the subscriber's wanted
    /// layers need (0: nothing capped); `healthy`: the estimator's `probe_allowed`; `cluster_bytes`:
    /// bytes sent in the open cluster so far (`probe_sent_bytes`).
    pub fn tick(
        &mut self,
        now_ms: i64,
        estimate_bps: u64,
        wanted_bps: u64,
        healthy: bool,
        max_bps: u64,
        cluster_bytes: u64,
    ) -> Step {
        match self.state {
            State::Idle => {
                if wanted_bps <= estimate_bps || !healthy || now_ms < self.next_ms {
                    return Step::Idle;
                }
                let target = (estimate_bps as f64 * PROBE_GAIN)
                    .min(wanted_bps as f64 * PROBE_WANTED_HEADROOM)
                    .min(max_bps as f64);
                if target < estimate_bps as f64 * PROBE_MIN_STEP {
                    return Step::Idle;
                }
                let target_bps = target as u64;
                self.state = State::Sending {
                    start_ms: now_ms,
                    end_ms: now_ms + PROBE_DURATION_MS,
                    target_bps,
                };
                self.started += 1;
                Step::Start {
                    target_bps,
                    pad_bytes: Self::due(target_bps, 0, 0),
                }
            }
            State::Sending {
                start_ms,
                end_ms,
                target_bps,
            } => {
                if now_ms >= end_ms {
                    self.state = State::Waiting { since_ms: now_ms };
                    return Step::End;
                }
                Step::Pad {
                    pad_bytes: Self::due(target_bps, now_ms - start_ms, cluster_bytes),
                }
            }
            State::Waiting { since_ms } => {
                if now_ms - since_ms >= PROBE_GIVE_UP_MS {
                    self.on_result(false, now_ms);
                }
                Step::Idle
            }
        }
    }

    /// Bytes due by the end of the tick starting `elapsed_ms` into the cluster, less those sent.
    fn due(target_bps: u64, elapsed_ms: i64, sent: u64) -> usize {
        let until = (elapsed_ms.max(0) + PROBE_TICK_MS) as u64;
        let due = target_bps.saturating_mul(until) / 8_000;
        due.saturating_sub(sent) as usize
    }

    /// The estimator judged the cluster. Success: the next probe may follow at once (while the
    /// allocation is still capped), so that probes double the estimate in succession. Failure: wait
    /// `PROBE_INTERVAL_MS`, doubled per further failure, at most `PROBE_MAX_INTERVAL_MS`.
    pub fn on_result(&mut self, success: bool, now_ms: i64) {
        if matches!(self.state, State::Sending { .. }) {
            return; // a stale verdict: the open cluster is another one
        }
        self.state = State::Idle;
        if success {
            self.succeeded += 1;
            self.failures = 0;
            self.next_ms = now_ms;
        } else {
            let wait = PROBE_INTERVAL_MS
                .saturating_mul(1i64 << self.failures.min(16))
                .min(PROBE_MAX_INTERVAL_MS);
            self.failures = self.failures.saturating_add(1);
            self.next_ms = now_ms + wait;
        }
    }

    /// Stop: a cluster being sent is dropped (the worker ends it in the estimator), and the next
    /// probe waits the current backoff.
    pub fn cancel(&mut self, now_ms: i64) {
        if self.state != State::Idle {
            self.state = State::Idle;
            self.next_ms = self.next_ms.max(now_ms + PROBE_INTERVAL_MS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_only_when_capped_and_healthy_and_paces_the_cluster() {
        let mut p = Prober::new();
        assert_eq!(p.tick(0, 1_000_000, 0, true, 10_000_000, 0), Step::Idle);
        assert_eq!(
            p.tick(0, 1_000_000, 900_000, true, 10_000_000, 0),
            Step::Idle
        );
        assert_eq!(
            p.tick(0, 1_000_000, 2_000_000, false, 10_000_000, 0),
            Step::Idle
        );
        // 2x the estimate, under 1.25x the need
        assert_eq!(
            p.tick(0, 1_000_000, 1_875_000, true, 10_000_000, 0),
            Step::Start {
                target_bps: 2_000_000,
                pad_bytes: 2_500
            }
        );
        assert_eq!(
            p.tick(10, 1_000_000, 1_875_000, true, 10_000_000, 2_500),
            Step::Pad { pad_bytes: 2_500 }
        );
        assert_eq!(
            p.tick(20, 1_000_000, 1_875_000, true, 10_000_000, 4_000),
            Step::Pad { pad_bytes: 3_500 },
            "media sent in the cluster counts"
        );
        assert_eq!(
            p.tick(150, 1_000_000, 1_875_000, true, 10_000_000, 37_500),
            Step::End
        );
        assert_eq!(
            p.tick(160, 1_000_000, 1_875_000, true, 10_000_000, 0),
            Step::Idle,
            "waiting for the verdict"
        );
        p.on_result(true, 300);
        // at once after a success; capped by the need x 1.25 and by max
        assert_eq!(
            p.tick(300, 1_800_000, 1_875_000, true, 10_000_000, 0),
            Step::Start {
                target_bps: 2_343_750,
                pad_bytes: 2_929
            }
        );
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_max() {
        let mut p = Prober::new();
        let mut starts = Vec::new();
        let mut t = 0;
        while t < 60_000 {
            match p.tick(t, 400_000, 1_875_000, true, 10_000_000, 0) {
                Step::Start { .. } => starts.push(t),
                Step::End => p.on_result(false, t + 200),
                _ => {}
            }
            t += PROBE_TICK_MS;
        }
        let gaps: Vec<i64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            gaps[..4],
            [2_850, 5_350, 5_350, 5_350],
            "150 ms sending, 200 ms to the verdict, then 2.5, 5, 5, 5 s"
        );
        // a success resets the backoff
        while p.tick(t, 400_000, 1_875_000, true, 10_000_000, 0) != Step::End {
            t += PROBE_TICK_MS;
        }
        p.on_result(true, t);
        assert!(matches!(
            p.tick(t, 400_000, 1_875_000, true, 10_000_000, 0),
            Step::Start { .. }
        ));
        // a lost verdict counts as a failure
        let mut q = Prober::new();
        assert!(matches!(
            q.tick(0, 400_000, 1_875_000, true, 10_000_000, 0),
            Step::Start { .. }
        ));
        assert_eq!(
            q.tick(150, 400_000, 1_875_000, true, 10_000_000, 0),
            Step::End
        );
        assert_eq!(
            q.tick(
                150 + PROBE_GIVE_UP_MS,
                400_000,
                1_875_000,
                true,
                10_000_000,
                0
            ),
            Step::Idle
        );
        assert_eq!(
            q.tick(
                150 + PROBE_GIVE_UP_MS + PROBE_INTERVAL_MS - 10,
                400_000,
                1_875_000,
                true,
                10_000_000,
                0
            ),
            Step::Idle
        );
        // too small a step is not worth a probe (max_bps caps it)
        let mut r = Prober::new();
        assert_eq!(
            r.tick(0, 9_000_000, 20_000_000, true, 10_000_000, 0),
            Step::Idle
        );
    }
}
