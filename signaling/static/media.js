// One WebRTC session with the channel's SFU: one RTCPeerConnection, negotiated over the voice channel
// with `sdp` and `ice` pushes (docs/protocol.md, "Media"). This client is the POLITE peer of perfect
// negotiation: it never ignores an SFU offer; an offer that collides with its own rolls the local one
// back (setRemoteDescription does that implicitly) and is answered.
//
// A MediaSession lives for one join: a rejoin, a `media_reset` or a leave closes it, and the next join
// starts a new one from scratch. The microphone track belongs to the app (it survives sessions); mute
// and unmute only swap it on the sender (replaceTrack), so nothing is renegotiated.
//
// Video (docs/protocol.md, "Video"): the camera is one sendonly transceiver publishing simulcast layers
// q, h, f (lowest first); a screen share is a second video transceiver (one layer) and, with tab audio,
// a second audio one. Turning either off detaches the track and makes the transceiver inactive (a
// renegotiation: the SFU stops forwarding it); turning it on again reuses the transceiver, so mids stay
// put. Every offer names what each of our m-sections carries (`sources`). The SFU's `publish_layers`
// turns layers nobody receives off (`setLayers`: encodings[i].active by rid, no renegotiation).

import { ToneMeter } from "./tone.js";

let sharedAudioContext = null;

export function audioContext() {
  if (!sharedAudioContext) sharedAudioContext = new AudioContext();
  return sharedAudioContext;
}

// The camera's simulcast layers, lowest first: the order of the rids in a=simulcast:send is the order
// the SFU numbers layers in (0 = lowest). The bitrate caps keep the low layers cheap for the uplink.
export const CAMERA_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// mid -> {kind, direction, streamId, trackId} of every m-section of an SDP (the SFU names the sending
// participant's session_id as the stream id in a=msid, and the producer id `<session_id>:<mid>` as the
// track id: what `video_quality` names).
export function parseSections(sdp) {
  const sections = new Map();
  let current = null;
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith("m=")) {
      current = { kind: line.slice(2).split(" ")[0], mid: null, direction: "sendrecv", streamId: null, trackId: null };
    } else if (current) {
      if (line.startsWith("a=mid:")) {
        current.mid = line.slice(6).trim();
        sections.set(current.mid, current);
      } else if (/^a=(sendrecv|sendonly|recvonly|inactive)$/.test(line)) {
        current.direction = line.slice(2);
      } else if (line.startsWith("a=msid:")) {
        const [streamId, trackId] = line.slice(7).trim().split(" ");
        current.streamId = streamId && streamId !== "-" ? streamId : null;
        current.trackId = trackId || null;
      }
    }
  }
  return sections;
}

export class MediaSession {
  /**
   * @param {object} opts
   * @param {RTCIceServer[]} opts.iceServers
   * @param {RTCIceTransportPolicy} [opts.iceTransportPolicy]
   * @param {MediaStreamTrack|null} opts.track  the microphone (null while muted)
   * @param {boolean} [opts.simulcast]  publish the camera as CAMERA_LAYERS (default true)
   * @param {(event: string, payload: object) => Promise<object>} opts.push  a channel push, resolved with the reply
   * @param {HTMLElement} opts.audioContainer  where the remote <audio> elements go
   * @param {() => {deafened: boolean, sinkId: string}} opts.playback  current playback settings
   * @param {() => void} opts.onChange  remote tracks or connection state changed
   * @param {(where: string, err: Error) => void} opts.onError
   * @param {(...parts: any[]) => void} opts.log
   */
  constructor(opts) {
    this.opts = opts;
    this.closed = false;
    this.makingOffer = false;
    this.polite = true;
    this.remote = new Map(); // receiver track id -> {track, mid, sessionId, element, active}
    this.remoteVideo = new Map(); // mid -> {track, mid, sessionId, trackId, active}
    this.camera = null; // the camera's transceiver, once there was a camera
    this.screenVideo = null; // the screen share's transceivers
    this.screenAudio = null;
    this.cameraStream = new MediaStream();
    this.screenStream = new MediaStream();
    this.layers = new Map(); // mid -> the last publish_layers `active` applied
    this.layerOps = Promise.resolve(); // getParameters/setParameters, one at a time
    this.meter = new ToneMeter(); // what window.voxa.measure reports
    this.queue = Promise.resolve(); // the SFU's descriptions, applied one at a time in arrival order
    this.counters = { offers: 0, answers: 0, remoteOffers: 0, remoteAnswers: 0, collisions: 0, ignoredOffers: 0 };
    this.lastError = null;
    this.blockedPlayback = false;

    const config = { iceServers: opts.iceServers || [], bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" };
    if (opts.iceTransportPolicy) config.iceTransportPolicy = opts.iceTransportPolicy;
    const pc = (this.pc = new RTCPeerConnection(config));
    this.localStream = new MediaStream();
    // One sendrecv audio transceiver for the whole session; mute swaps its track, never the transceiver.
    this.transceiver = pc.addTransceiver(opts.track || "audio", {
      direction: "sendrecv",
      streams: [this.localStream],
    });
    pc.onnegotiationneeded = () => this.negotiate();
    pc.onicecandidate = (event) => this.onCandidate(event.candidate);
    pc.ontrack = (event) => this.onTrack(event);
    pc.onconnectionstatechange = () => {
      this.opts.log("peer connection", pc.connectionState);
      this.opts.onChange();
    };
    pc.oniceconnectionstatechange = () => this.opts.onChange();
  }

  get sender() {
    return this.transceiver.sender;
  }

  // --- negotiation ------------------------------------------------------------------------------
  async negotiate() {
    if (this.closed) return;
    const pc = this.pc;
    try {
      this.makingOffer = true;
      await pc.setLocalDescription();
      // An SFU offer applied meanwhile rolled this offer back: nothing to send.
      if (this.closed || pc.signalingState !== "have-local-offer") return;
      this.counters.offers += 1;
      const reply = await this.opts.push("sdp", { type: "offer", sdp: pc.localDescription.sdp, sources: this.sources() });
      if (reply && reply.ignored) {
        // The SFU had an offer of its own in flight: it wins; ours is rolled back when it arrives.
        this.counters.ignoredOffers += 1;
        this.opts.log("our offer collided with the SFU's; waiting for its offer");
      }
    } catch (err) {
      if (!this.closed) this.fail("offer", err);
    } finally {
      this.makingOffer = false;
    }
  }

  // A server `sdp` push: the SFU's answer to our offer, or an offer of its own.
  handleRemote(desc) {
    const step = this.queue.then(() => this.applyRemote(desc));
    this.queue = step.catch((err) => {
      if (!this.closed) this.fail(`remote ${desc && desc.type}`, err);
    });
    return this.queue;
  }

  async applyRemote(desc) {
    if (this.closed) return;
    const pc = this.pc;
    if (!desc || (desc.type !== "offer" && desc.type !== "answer") || typeof desc.sdp !== "string") {
      throw new Error("the server sent an sdp push without type offer/answer and sdp");
    }
    const offerCollision = desc.type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
    const ignoreOffer = !this.polite && offerCollision; // never, for the polite peer
    if (ignoreOffer) return;
    if (offerCollision) this.counters.collisions += 1;
    if (desc.type === "answer" && pc.signalingState !== "have-local-offer") {
      this.opts.log("dropping an answer in state", pc.signalingState, "(its offer was rolled back)");
      return;
    }
    // For an offer in have-local-offer this rolls our offer back implicitly (perfect negotiation).
    await pc.setRemoteDescription({ type: desc.type, sdp: desc.sdp });
    if (desc.type === "answer") {
      this.counters.remoteAnswers += 1;
    } else {
      this.counters.remoteOffers += 1;
      await pc.setLocalDescription();
      this.counters.answers += 1;
      this.syncRemote();
      await this.opts.push("sdp", { type: "answer", sdp: pc.localDescription.sdp });
    }
    this.syncRemote();
  }

  onCandidate(candidate) {
    if (this.closed) return;
    if (candidate && !candidate.candidate) return; // legacy per-section end markers; the null one follows
    // A null candidate ends gathering: an empty `candidate` ends the list for the SFU.
    const payload = candidate
      ? { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex }
      : { candidate: "" };
    this.opts.push("ice", payload).catch((err) => {
      if (!this.closed) this.opts.log("ice push failed:", err.message);
    });
  }

  // What each of our m-sections carries ({mid: source}), for the SFU (and the `stream` permission).
  sources() {
    const out = {};
    const label = (transceiver, source) => {
      if (transceiver && transceiver.mid !== null) out[transceiver.mid] = source;
    };
    label(this.transceiver, "microphone");
    label(this.camera, "camera");
    label(this.screenVideo, "screen");
    label(this.screenAudio, "screen_audio");
    return out;
  }

  fail(where, err) {
    this.lastError = `${where}: ${err && err.message ? err.message : err}`;
    this.opts.onError(where, err);
    this.opts.onChange();
  }

  // --- microphone -------------------------------------------------------------------------------
  // Mute/unmute and device switches: replaceTrack only (no transceiver change, no renegotiation).
  async setTrack(track) {
    if (this.closed) return;
    await this.sender.replaceTrack(track);
    this.localStream.getTracks().forEach((t) => this.localStream.removeTrack(t));
    if (track) this.localStream.addTrack(track);
  }

  // --- camera and screen share -----------------------------------------------------------------------
  // `track` on a sendonly transceiver (created the first time, reused after), or off: no track and the
  // transceiver inactive. A direction change renegotiates (negotiationneeded); a track swap does not.
  async attach(transceiver, track, stream, init = {}) {
    if (this.closed) return transceiver;
    if (track) {
      if (!transceiver) return this.pc.addTransceiver(track, { direction: "sendonly", streams: [stream], ...init });
      await transceiver.sender.replaceTrack(track);
      if (transceiver.direction !== "sendonly") transceiver.direction = "sendonly";
      return transceiver;
    }
    if (transceiver) {
      await transceiver.sender.replaceTrack(null);
      if (transceiver.direction !== "inactive") transceiver.direction = "inactive";
    }
    return transceiver;
  }

  async setCamera(track) {
    const simulcast = this.opts.simulcast !== false;
    const init = simulcast ? { sendEncodings: CAMERA_LAYERS.map((e) => ({ ...e })) } : {};
    this.camera = await this.attach(this.camera, track, this.cameraStream, init);
  }

  /** @param {{video: MediaStreamTrack, audio: MediaStreamTrack|null}|null} screen */
  async setScreen(screen) {
    this.screenVideo = await this.attach(this.screenVideo, screen ? screen.video : null, this.screenStream);
    const audio = screen ? screen.audio : null;
    if (audio || this.screenAudio) this.screenAudio = await this.attach(this.screenAudio, audio, this.screenStream);
  }

  // Dynacast: the SFU says which layers of our simulcast video someone receives ({rid: bool}); the
  // others stop being encoded. Applied by rid (a sender without rids is the one layer "").
  setLayers(mid, active) {
    const step = this.layerOps.then(async () => {
      if (this.closed || !active || typeof active !== "object") return;
      const transceiver = this.pc.getTransceivers().find((t) => t.mid === mid);
      if (!transceiver) return;
      const params = transceiver.sender.getParameters();
      let changed = false;
      for (const encoding of params.encodings || []) {
        const want = active[encoding.rid ?? ""];
        if (typeof want === "boolean" && encoding.active !== want) {
          encoding.active = want;
          changed = true;
        }
      }
      if (changed) await transceiver.sender.setParameters(params);
      this.layers.set(mid, { ...active });
      this.opts.log("publish layers", mid, JSON.stringify(active));
    });
    this.layerOps = step.catch((err) => this.opts.log("setParameters failed:", err.message));
    return this.layerOps;
  }

  // What we publish, for the test hook: each video sender's encodings and whether they are active.
  publishing() {
    const out = [];
    for (const [source, transceiver] of [["camera", this.camera], ["screen", this.screenVideo]]) {
      if (!transceiver) continue;
      const encodings = (transceiver.sender.getParameters().encodings || []).map((e) => ({
        rid: e.rid ?? null,
        active: e.active !== false,
        scaleResolutionDownBy: e.scaleResolutionDownBy ?? 1,
      }));
      out.push({
        source,
        mid: transceiver.mid,
        direction: transceiver.direction,
        sending: Boolean(transceiver.sender.track),
        encodings,
        requested: this.layers.get(transceiver.mid) || null,
      });
    }
    return out;
  }

  // --- remote audio and video -------------------------------------------------------------------------
  onTrack(event) {
    const { track, streams, transceiver } = event;
    if (track.kind !== "audio") {
      this.syncRemote();
      return;
    }
    const entry = this.entryFor(track);
    entry.mid = transceiver.mid;
    if (streams[0]) entry.sessionId = streams[0].id;
    for (const stream of streams) {
      stream.onremovetrack = () => this.syncRemote();
      stream.onaddtrack = () => this.syncRemote();
    }
    this.opts.log("remote track", track.id, "mid", transceiver.mid, "stream", entry.sessionId);
    this.syncRemote();
  }

  entryFor(track) {
    let entry = this.remote.get(track.id);
    if (entry) return entry;
    const element = document.createElement("audio");
    element.autoplay = true;
    element.srcObject = new MediaStream([track]);
    element.dataset.trackId = track.id;
    this.opts.audioContainer.appendChild(element);
    entry = { track, mid: null, sessionId: null, element, active: true };
    this.remote.set(track.id, entry);
    this.applyPlayback(entry);
    return entry;
  }

  // Which participant each receiver carries, from the current remote description: the SFU reuses
  // m-sections as people come and go, so the a=msid of each section is the authority.
  syncRemote() {
    if (this.closed) return;
    const remoteSdp = this.pc.remoteDescription ? this.pc.remoteDescription.sdp : "";
    const sections = parseSections(remoteSdp);
    for (const transceiver of this.pc.getTransceivers()) {
      const track = transceiver.receiver.track;
      if (!track || transceiver.mid === null) continue;
      const section = sections.get(transceiver.mid);
      const sending = section && (section.direction === "sendonly" || section.direction === "sendrecv");
      const stopped = transceiver.stopped || transceiver.currentDirection === "stopped";
      if (track.kind === "video") {
        this.syncVideo(transceiver, section, Boolean(sending && !stopped && section.streamId));
        continue;
      }
      if (!sending || stopped || !section.streamId) {
        const old = this.remote.get(track.id);
        if (old) {
          old.active = false;
          old.sessionId = null;
        }
        continue;
      }
      const entry = this.entryFor(track);
      entry.mid = transceiver.mid;
      entry.sessionId = section.streamId;
      entry.active = true;
      entry.element.dataset.session = section.streamId;
    }
    this.opts.onChange();
  }

  // A remote video: the SFU reuses m-sections, so the section's msid says whose producer it carries now.
  syncVideo(transceiver, section, active) {
    const mid = transceiver.mid;
    let entry = this.remoteVideo.get(mid);
    if (!active) {
      if (entry) entry.active = false;
      return;
    }
    if (!entry) {
      entry = { mid, track: transceiver.receiver.track, sessionId: null, trackId: null, active: true };
      this.remoteVideo.set(mid, entry);
    }
    entry.track = transceiver.receiver.track;
    entry.sessionId = section.streamId;
    entry.trackId = section.trackId;
    entry.active = true;
  }

  remoteVideos() {
    return [...this.remoteVideo.values()]
      .filter((e) => e.active)
      .map((e) => ({ mid: e.mid, track: e.track, sessionId: e.sessionId, trackId: e.trackId }));
  }

  // `video_quality`: how large a tile shows a remote video (device pixels), or paused when unseen.
  videoQuality(trackId, quality) {
    if (this.closed) return Promise.resolve();
    return this.opts.push("video_quality", { track: trackId, ...quality });
  }

  applyPlayback(entry) {
    const { deafened, sinkId } = this.opts.playback();
    entry.element.muted = deafened;
    if (sinkId && typeof entry.element.setSinkId === "function" && entry.element.sinkId !== sinkId) {
      entry.element.setSinkId(sinkId).catch((err) => this.opts.log("setSinkId failed:", err.message));
    }
    const playing = entry.element.play();
    if (playing) {
      playing.then(
        () => {
          if (this.blockedPlayback) {
            this.blockedPlayback = false;
            this.opts.onChange();
          }
        },
        (err) => {
          if (err.name === "NotAllowedError") {
            this.blockedPlayback = true;
            this.opts.onChange();
          }
        },
      );
    }
  }

  // Deafen/undeafen, output device changes and the "enable audio" click all come here.
  refreshPlayback() {
    for (const entry of this.remote.values()) this.applyPlayback(entry);
  }

  remoteTracks() {
    return [...this.remote.values()]
      .filter((e) => e.active)
      .map((e) => ({ trackId: e.track.id, mid: e.mid, sessionId: e.sessionId, muted: e.track.muted }));
  }

  // --- measurement (window.voxa.measure) ----------------------------------------------------------
  // For each active remote track: `ms` milliseconds of audio, its dominant frequency, RMS and peak
  // (tone.js).
  async measure(ms = 1000) {
    const live = [...this.remote.values()].filter((e) => e.active && e.track.readyState === "live");
    if (live.length === 0) {
      await sleep(ms);
      return [];
    }
    const levels = await this.meter.measure(
      audioContext(),
      live.map((e) => e.track),
      ms,
    );
    return live.map((e, i) => ({
      sessionId: e.sessionId,
      mid: e.mid,
      trackId: e.track.id,
      hz: levels[i].hz,
      rms: levels[i].rms,
      peak: levels[i].peak,
    }));
  }

  state() {
    const pc = this.pc;
    return {
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
      sending: Boolean(this.sender.track),
      camera: Boolean(this.camera && this.camera.sender.track),
      screen: Boolean(this.screenVideo && this.screenVideo.sender.track),
      transceivers: pc.getTransceivers().length,
      counters: { ...this.counters },
      lastError: this.lastError,
    };
  }

  /**
   * The ICE route in use (a test hook): the selected candidate pair's local candidate type, its remote
   * address, and the transport policy, or null before a pair is selected.
   */
  async route() {
    const stats = await this.pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    return {
      local: local ? local.candidateType : null,
      remote: remote ? remote.address : null,
      policy: this.pc.getConfiguration().iceTransportPolicy,
    };
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.meter.close();
    for (const entry of this.remote.values()) {
      entry.element.srcObject = null;
      entry.element.remove();
    }
    this.remote.clear();
    this.remoteVideo.clear();
    this.pc.onnegotiationneeded = null;
    this.pc.onicecandidate = null;
    this.pc.ontrack = null;
    this.pc.onconnectionstatechange = null;
    this.pc.oniceconnectionstatechange = null;
    this.pc.close();
  }
}
