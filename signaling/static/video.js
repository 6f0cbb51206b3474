// The video grid: one tile per camera or screen share (ours and the others'), in a CSS grid that
// reflows with the window. Each remote tile tells the SFU how large it shows its video: a
// ResizeObserver and an IntersectionObserver feed a debounced `video_quality` push (the tile's size
// in device pixels, or paused while it is off-screen, hidden, or the page is in the background), so
// the SFU forwards the smallest simulcast layer that looks sharp and nothing for what nobody sees
// (LiveKit's "adaptive stream"). docs/protocol.md, "Video".

const QUALITY_DEBOUNCE_MS = 250;
const QUALITY_RETRY_MS = 2000;
const QUALITY_RETRIES = 5;

/**
 * @typedef {object} TileSpec
 * @property {string} key          stable while the tile shows the same video
 * @property {MediaStreamTrack} track
 * @property {string} label        the caption ("Alice", "Alice's screen", "Alice (you)")
 * @property {string} user
 * @property {"camera"|"screen"} source
 * @property {boolean} local       our own preview (no video_quality)
 * @property {string|null} trackId the producer id the SFU knows (remote tiles)
 * @property {boolean} speaking
 */

export class VideoGrid {
  /**
   * @param {object} opts
   * @param {HTMLElement} opts.container
   * @param {(trackId: string, quality: {max_width: number, max_height: number, paused: boolean}) => Promise<unknown>} opts.send
   * @param {(...parts: any[]) => void} opts.log
   */
  constructor(opts) {
    this.opts = opts;
    this.tiles = new Map(); // key -> {spec, element, video, caption, visible, timer, sent}
    this.sent = 0;
    this.resize = new ResizeObserver((entries) => {
      for (const entry of entries) this.schedule(entry.target.dataset.key);
    });
    this.intersect = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        const tile = this.tiles.get(entry.target.dataset.key);
        if (!tile) continue;
        tile.visible = entry.isIntersecting;
        this.schedule(tile.spec.key);
      }
    });
    document.addEventListener("visibilitychange", () => {
      for (const key of this.tiles.keys()) this.schedule(key);
    });
  }

  /** Show exactly these tiles (in this order), reusing the elements of tiles that stay. */
  update(specs) {
    const wanted = new Set(specs.map((s) => s.key));
    for (const [key, tile] of this.tiles) {
      if (!wanted.has(key)) this.remove(key, tile);
    }
    const elements = specs.map((spec) => {
      let tile = this.tiles.get(spec.key);
      if (!tile) tile = this.create(spec);
      this.refresh(tile, spec);
      return tile.element;
    });
    const container = this.opts.container;
    // Reorder only when needed: moving a playing <video> in the DOM pauses it in some browsers.
    const current = [...container.children];
    if (current.length !== elements.length || current.some((el, i) => el !== elements[i])) {
      container.replaceChildren(...elements);
      for (const tile of this.tiles.values()) tile.video.play().catch(() => {});
    }
    container.hidden = elements.length === 0;
    container.dataset.count = String(elements.length);
  }

  create(spec) {
    const element = document.createElement("figure");
    element.className = "tile";
    element.dataset.key = spec.key;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true; // sound comes through the audio elements
    const caption = document.createElement("figcaption");
    element.append(video, caption);
    const tile = { spec, element, video, caption, visible: false, timer: null, sent: null, track: null };
    this.tiles.set(spec.key, tile);
    if (!spec.local) {
      this.resize.observe(element);
      this.intersect.observe(element);
    }
    return tile;
  }

  refresh(tile, spec) {
    tile.spec = spec;
    const { element, video, caption } = tile;
    if (tile.track !== spec.track) {
      tile.track = spec.track;
      video.srcObject = new MediaStream([spec.track]);
      video.play().catch(() => {});
    }
    element.dataset.user = spec.user;
    element.dataset.source = spec.source;
    element.dataset.local = String(spec.local);
    element.dataset.speaking = String(Boolean(spec.speaking));
    if (spec.trackId) element.dataset.track = spec.trackId;
    element.classList.toggle("screen", spec.source === "screen");
    element.setAttribute("aria-label", spec.label);
    if (caption.textContent !== spec.label) caption.textContent = spec.label;
  }

  remove(key, tile) {
    clearTimeout(tile.timer);
    this.resize.unobserve(tile.element);
    this.intersect.unobserve(tile.element);
    tile.video.srcObject = null;
    tile.element.remove();
    this.tiles.delete(key);
  }

  clear() {
    for (const [key, tile] of this.tiles) this.remove(key, tile);
    this.opts.container.hidden = true;
  }

  // --- video_quality -----------------------------------------------------------------------------
  schedule(key) {
    const tile = this.tiles.get(key);
    if (!tile || tile.spec.local || !tile.spec.trackId) return;
    clearTimeout(tile.timer);
    tile.timer = setTimeout(() => this.report(tile), QUALITY_DEBOUNCE_MS);
  }

  quality(tile) {
    const rect = tile.element.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(rect.width * ratio);
    const height = Math.round(rect.height * ratio);
    const paused = !tile.visible || document.hidden || width === 0 || height === 0;
    return { max_width: paused ? 0 : width, max_height: paused ? 0 : height, paused };
  }

  report(tile) {
    if (this.tiles.get(tile.spec.key) !== tile) return;
    const quality = this.quality(tile);
    const last = tile.sent;
    const same =
      last &&
      last.trackId === tile.spec.trackId &&
      last.paused === quality.paused &&
      last.max_width === quality.max_width &&
      last.max_height === quality.max_height;
    if (same) return;
    tile.sent = { trackId: tile.spec.trackId, ...quality };
    this.sent += 1;
    this.opts.send(tile.spec.trackId, quality).then(
      () => {
        tile.failures = 0;
      },
      (err) => {
        // The SFU may not know the consumer yet (its offer raced the tile): try again a few times.
        tile.sent = null;
        tile.failures = (tile.failures || 0) + 1;
        this.opts.log("video_quality failed:", err && err.message ? err.message : err);
        if (tile.failures <= QUALITY_RETRIES) {
          clearTimeout(tile.timer);
          tile.timer = setTimeout(() => this.report(tile), QUALITY_RETRY_MS);
        }
      },
    );
  }

  // --- test hook ---------------------------------------------------------------------------------
  state() {
    return [...this.tiles.values()].map((tile) => {
      const quality = tile.video.getVideoPlaybackQuality ? tile.video.getVideoPlaybackQuality() : null;
      return {
        key: tile.spec.key,
        user: tile.spec.user,
        source: tile.spec.source,
        local: tile.spec.local,
        label: tile.spec.label,
        track: tile.spec.trackId,
        videoWidth: tile.video.videoWidth,
        videoHeight: tile.video.videoHeight,
        frames: quality ? quality.totalVideoFrames : null,
        visible: tile.visible,
        sent: tile.sent,
      };
    });
  }
}
