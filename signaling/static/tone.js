// The one tone analyser of the pages: the demo's `window.voxa.measure` (media.js) and the browser
// tests' page (e2e/browser/page/voxa-test.js, served this file by e2e/browser/harness.py) both measure
// what a remote track carries with it, so a test that asserts a tone checks what the demo shows.
//
// A ToneMeter keeps one AnalyserNode per track (fed into a muted gain node, so Chromium pulls audio
// through it without playing it twice). `measure` takes `ms` milliseconds of snapshots of every track
// at once and returns, per track, the dominant frequency of the averaged power spectrum (parabolic
// interpolation between bins, so a tone is found to a fraction of the 5.9 Hz bin width), the mean
// RMS and the peak of the signal.

export const FFT_SIZE = 8192;
const SNAPSHOT_MS = 50;
const MIN_HZ = 30;
const MAX_HZ = 20000;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class ToneMeter {
  constructor() {
    this.entries = new Map(); // track id -> { analyser, source, sink, created }
  }

  ensure(ctx, track) {
    let entry = this.entries.get(track.id);
    if (entry) return entry;
    const source = ctx.createMediaStreamSource(new MediaStream([track]));
    const analyser = ctx.createAnalyser();
    analyser.fftSize = FFT_SIZE;
    analyser.smoothingTimeConstant = 0;
    const sink = ctx.createGain();
    sink.gain.value = 0;
    source.connect(analyser);
    analyser.connect(sink);
    sink.connect(ctx.destination);
    entry = { analyser, source, sink, created: performance.now() };
    this.entries.set(track.id, entry);
    return entry;
  }

  // One result per track, in order: { hz (null: no tone), rms, peak, db, snapshots, sampleRate }.
  async measure(ctx, tracks, ms = 1000) {
    if (ctx.state !== "running") await ctx.resume();
    const entries = tracks.map((track) => this.ensure(ctx, track));
    if (entries.length === 0) return [];
    // A fresh analyser needs one full FFT window of real input before its snapshots mean anything.
    const windowMs = (FFT_SIZE / ctx.sampleRate) * 1000;
    const youngest = Math.max(...entries.map((e) => e.created));
    const warm = youngest + windowMs + 50 - performance.now();
    if (warm > 0) await sleep(warm);

    const bins = FFT_SIZE / 2;
    const acc = entries.map(() => ({ power: new Float64Array(bins), rms: 0, peak: 0, snapshots: 0 }));
    const freq = new Float32Array(bins);
    const time = new Float32Array(FFT_SIZE);
    const deadline = performance.now() + ms;
    do {
      entries.forEach((entry, i) => {
        const a = acc[i];
        entry.analyser.getFloatFrequencyData(freq);
        for (let b = 0; b < bins; b += 1) {
          if (Number.isFinite(freq[b])) a.power[b] += 10 ** (freq[b] / 10);
        }
        entry.analyser.getFloatTimeDomainData(time);
        let sum = 0;
        for (let k = 0; k < time.length; k += 1) {
          sum += time[k] * time[k];
          a.peak = Math.max(a.peak, Math.abs(time[k]));
        }
        a.rms += Math.sqrt(sum / time.length);
        a.snapshots += 1;
      });
      await sleep(SNAPSHOT_MS);
    } while (performance.now() < deadline);

    const binHz = ctx.sampleRate / FFT_SIZE;
    const lo = Math.ceil(MIN_HZ / binHz);
    const hi = Math.min(bins - 2, Math.floor(MAX_HZ / binHz));
    return acc.map((a) => {
      let best = -1;
      let bestPower = 0;
      for (let b = lo; b <= hi; b += 1) {
        if (a.power[b] > bestPower) {
          bestPower = a.power[b];
          best = b;
        }
      }
      let hz = null;
      if (best > 0) {
        const [l, c, r] = [a.power[best - 1], a.power[best], a.power[best + 1]].map((p) =>
          Math.log(Math.max(p, 1e-30)),
        );
        const denom = l - 2 * c + r;
        const offset = denom === 0 ? 0 : (0.5 * (l - r)) / denom;
        hz = (best + Math.max(-0.5, Math.min(0.5, offset))) * binHz;
      }
      return {
        hz,
        rms: a.snapshots ? a.rms / a.snapshots : 0,
        peak: a.peak,
        db: bestPower > 0 ? 10 * Math.log10(bestPower / a.snapshots) : null,
        snapshots: a.snapshots,
        sampleRate: ctx.sampleRate,
      };
    });
  }

  close() {
    for (const entry of this.entries.values()) {
      entry.source.disconnect();
      entry.sink.disconnect();
    }
    this.entries.clear();
  }
}
