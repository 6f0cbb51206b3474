// The browser side of e2e/browser/harness.py: one RTCPeerConnection per page, driven through
// `window.voxaTest` by playwright's page.evaluate. The Python test is the signaling relay: it moves
// offers, answers and candidates between this page and whatever peer it tests (aiortc, the SFU ...).
//
// Every function is async and returns plain JSON-serialisable data. Errors are thrown as Error with a
// message saying what was expected; the harness reports them together with the page's console log.

import { ToneMeter } from "./tone.js"; // signaling/static/tone.js: the demo's own analyser

const LOOPBACK = new Set(["127.0.0.1"]);

const s = {
  pc: null,
  options: null,
  ctx: null,
  localStream: null,
  mic: null, // { sender, track } of the microphone added by start(): what mute()/unmute() act on
  video: null,
  extraTracks: [],
  muted: false,
  candidates: [],
  gatheringDone: false,
  remote: new Map(), // receiver track id -> { track, streamIds, element }
  meter: new ToneMeter(),
  counters: {
    negotiationNeeded: 0,
    offersCreated: 0,
    answersCreated: 0,
    remoteOffers: 0,
    remoteAnswers: 0,
    rollbacks: 0,
    tracksReceived: 0,
    candidatesAdded: 0,
    replaceTrack: 0,
  },
};

function log(...parts) {
  console.log("[voxa]", ...parts);
}

function setStatus(text) {
  const el = document.getElementById("status");
  if (el) el.textContent = text;
}

function requirePc() {
  if (!s.pc) throw new Error("voxaTest.start() has not been called");
  return s.pc;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function audioContext() {
  if (!s.ctx) s.ctx = new AudioContext({ sampleRate: 48000 });
  return s.ctx;
}

// --- SDP helpers ---------------------------------------------------------------------------------

function isLoopbackCandidate(candidateLine) {
  // a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
  const fields = candidateLine.replace(/^a=/, "").split(" ");
  return fields.length > 5 && LOOPBACK.has(fields[4]);
}

function filterSdp(sdp) {
  if (!s.options.loopbackOnly) return sdp;
  const lines = sdp.split("\r\n");
  const kept = lines.filter((line) => !line.startsWith("a=candidate:") || isLoopbackCandidate(line));
  return kept.map((line) => (line.startsWith("c=IN IP4 ") ? "c=IN IP4 127.0.0.1" : line)).join("\r\n");
}

function describe(desc) {
  if (!desc) return null;
  return { type: desc.type, sdp: filterSdp(desc.sdp) };
}

async function waitGathering(timeoutMs) {
  const pc = requirePc();
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const timer = setTimeout(() => {
      log("ICE gathering still", pc.iceGatheringState, "after", timeoutMs, "ms: using what we have");
      done();
    }, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function localDescription({ waitIce = true, gatherTimeoutMs = 5000 } = {}) {
  if (waitIce) await waitGathering(gatherTimeoutMs);
  return describe(requirePc().localDescription);
}

// --- media ---------------------------------------------------------------------------------------

async function getMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  return stream.getAudioTracks()[0];
}

function onTrack(event) {
  const { track, streams, transceiver } = event;
  s.counters.tracksReceived += 1;
  const streamIds = streams.map((stream) => stream.id);
  let entry = s.remote.get(track.id);
  if (!entry) {
    // Chromium only feeds a remote WebRTC track into WebAudio while a media element plays it
    // (crbug.com/933677), so every remote track gets a muted, autoplaying element.
    const element = document.createElement(track.kind === "video" ? "video" : "audio");
    element.muted = true;
    element.autoplay = true;
    element.playsInline = true;
    element.srcObject = new MediaStream([track]);
    element.dataset.trackId = track.id;
    document.getElementById("media").appendChild(element);
    element.play().catch((err) => log("play() of remote", track.kind, "failed:", err.message));
    entry = { track, streamIds, element };
    s.remote.set(track.id, entry);
  }
  entry.streamIds = streamIds;
  for (const stream of streams) {
    stream.onremovetrack = (ev) => {
      const removed = s.remote.get(ev.track.id);
      if (removed) removed.streamIds = removed.streamIds.filter((id) => id !== stream.id);
    };
  }
  log("track", track.kind, "mid", transceiver.mid, "streams", streamIds.join(",") || "-");
}

// --- public API ----------------------------------------------------------------------------------

// The simulcast layers Voxa clients publish, lowest first (the order the SFU takes as low → high).
const SIMULCAST = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

async function start({
  iceServers = [],
  audio = true,
  video = false,
  simulcast = false,
  width = 320,
  height = 240,
  frameRate = 15,
  loopbackOnly = true,
  bundlePolicy = "max-bundle",
  iceTransportPolicy = "all",
} = {}) {
  if (s.pc) throw new Error("voxaTest.start() was already called on this page");
  s.options = { loopbackOnly };
  const pc = new RTCPeerConnection({ iceServers, bundlePolicy, iceTransportPolicy });
  s.pc = pc;
  pc.onnegotiationneeded = () => {
    s.counters.negotiationNeeded += 1;
    log("negotiationneeded", s.counters.negotiationNeeded);
  };
  pc.onicecandidate = (event) => {
    if (!event.candidate) {
      s.gatheringDone = true;
      return;
    }
    const init = event.candidate.toJSON();
    if (init.candidate && (!loopbackOnly || isLoopbackCandidate(init.candidate))) s.candidates.push(init);
  };
  pc.onsignalingstatechange = () => log("signalingState", pc.signalingState);
  pc.oniceconnectionstatechange = () => log("iceConnectionState", pc.iceConnectionState);
  pc.onconnectionstatechange = () => {
    log("connectionState", pc.connectionState);
    setStatus(pc.connectionState);
  };
  pc.onicecandidateerror = (event) => log("icecandidateerror", event.errorCode, event.errorText, event.url);
  pc.ontrack = onTrack;

  s.localStream = new MediaStream();
  if (audio || video) {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: audio ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false } : false,
      video: video ? { width: { exact: width }, height: { exact: height }, frameRate } : false,
    });
    for (const track of media.getTracks()) {
      s.localStream.addTrack(track);
      let sender;
      if (track.kind === "video" && simulcast) {
        const init = { direction: "sendrecv", streams: [s.localStream], sendEncodings: SIMULCAST.map((e) => ({ ...e })) };
        sender = pc.addTransceiver(track, init).sender;
      } else {
        sender = pc.addTrack(track, s.localStream);
      }
      if (track.kind === "audio") s.mic = { sender, track };
      else s.video = { sender, track };
    }
  }
  // Start the AudioContext now, so that measure() does not wait for it (autoplay is allowed by flag).
  await audioContext().resume();
  setStatus("started");
  return {
    streamId: s.localStream.id,
    audioTrackId: s.mic ? s.mic.track.id : null,
    videoTrackId: s.video ? s.video.track.id : null,
  };
}

async function createOffer({ waitIce = true, iceRestart = false, gatherTimeoutMs = 5000 } = {}) {
  const pc = requirePc();
  const offer = await pc.createOffer({ iceRestart });
  await pc.setLocalDescription(offer);
  s.counters.offersCreated += 1;
  return localDescription({ waitIce, gatherTimeoutMs });
}

async function createAnswer({ waitIce = true, gatherTimeoutMs = 5000 } = {}) {
  const pc = requirePc();
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  s.counters.answersCreated += 1;
  return localDescription({ waitIce, gatherTimeoutMs });
}

async function setRemote(desc) {
  const pc = requirePc();
  await pc.setRemoteDescription(desc);
  if (desc.type === "offer") s.counters.remoteOffers += 1;
  if (desc.type === "answer") s.counters.remoteAnswers += 1;
  return { signalingState: pc.signalingState };
}

// setLocalDescription(desc): without desc, the implicit offer/answer of the current state;
// {type: "rollback"} abandons a local offer.
async function setLocal(desc = undefined, { waitIce = true, gatherTimeoutMs = 5000 } = {}) {
  const pc = requirePc();
  if (desc) await pc.setLocalDescription(desc);
  else await pc.setLocalDescription();
  if (desc && desc.type === "rollback") {
    s.counters.rollbacks += 1;
    return null;
  }
  const type = pc.localDescription.type;
  if (type === "offer") s.counters.offersCreated += 1;
  if (type === "answer") s.counters.answersCreated += 1;
  return localDescription({ waitIce, gatherTimeoutMs });
}

// The remote side's (re-)offer: rolls back a pending local offer (this page is the polite peer),
// applies the offer and returns the answer SDP.
async function handleRemoteOffer(sdp, { waitIce = true, gatherTimeoutMs = 5000 } = {}) {
  const pc = requirePc();
  if (pc.signalingState === "have-local-offer") {
    await pc.setLocalDescription({ type: "rollback" });
    s.counters.rollbacks += 1;
  }
  await setRemote({ type: "offer", sdp });
  const answer = await createAnswer({ waitIce, gatherTimeoutMs });
  return answer.sdp;
}

async function addIceCandidate(candidate) {
  const pc = requirePc();
  await pc.addIceCandidate(candidate ?? undefined);
  s.counters.candidatesAdded += 1;
  return true;
}

// The local candidates gathered since the last call (trickle ICE), and whether gathering is over.
async function takeCandidates() {
  const candidates = s.candidates;
  s.candidates = [];
  return { candidates, done: s.gatheringDone };
}

async function addAudioTrack({ ownStream = true } = {}) {
  const pc = requirePc();
  const track = await getMicrophone();
  const stream = ownStream ? new MediaStream([track]) : s.localStream;
  if (!ownStream) stream.addTrack(track);
  pc.addTrack(track, stream);
  s.extraTracks.push(track);
  return { trackId: track.id, streamId: stream.id };
}

async function addTransceiver(kind, init = {}) {
  const pc = requirePc();
  const transceiver = pc.addTransceiver(kind, init);
  return { index: pc.getTransceivers().indexOf(transceiver), direction: transceiver.direction };
}

// Dynacast as the Voxa client does it: turn simulcast encodings on or off by rid ({q: true, h: false}),
// without renegotiation. Returns the encodings' resulting `active` flags.
async function setEncodingsActive(active) {
  if (!s.video) throw new Error("no camera: start({video: true}) first");
  const params = s.video.sender.getParameters();
  for (const encoding of params.encodings) {
    if (encoding.rid !== undefined && active[encoding.rid] !== undefined) encoding.active = Boolean(active[encoding.rid]);
  }
  await s.video.sender.setParameters(params);
  const result = {};
  for (const encoding of s.video.sender.getParameters().encodings) result[encoding.rid ?? ""] = encoding.active;
  log("encodings active", JSON.stringify(result));
  return result;
}

// A second video source, as screen share is: getDisplayMedia (Chromium's fake capture under
// --use-fake-ui-for-media-stream / --auto-select-desktop-capture-source) on its own transceiver.
async function addScreenShare({ audio = false } = {}) {
  const pc = requirePc();
  const media = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 5 }, audio });
  const stream = new MediaStream(media.getTracks());
  const result = { streamId: stream.id, tracks: [] };
  for (const track of media.getTracks()) {
    const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    s.extraTracks.push(track);
    result.tracks.push({ kind: track.kind, trackId: track.id, index: pc.getTransceivers().indexOf(transceiver) });
  }
  return result;
}

// The mid of each local sending transceiver, by the kind and label of its track (after negotiation).
function localMids() {
  const pc = requirePc();
  return pc.getTransceivers().filter((t) => t.sender.track && t.mid !== null).map((t) => ({
    mid: t.mid, kind: t.sender.track.kind, label: t.sender.track.label, trackId: t.sender.track.id,
  }));
}

// Mute as the Voxa client does it: stop and release the microphone and detach it from its sender
// (replaceTrack(null)); transceivers, directions and SDP stay as they are, so nothing is renegotiated.
async function mute() {
  if (!s.mic) throw new Error("no microphone: start({audio: true}) first");
  if (s.muted) return { muted: true, stoppedTrackId: null };
  const { sender, track } = s.mic;
  track.stop();
  s.localStream.removeTrack(track);
  await sender.replaceTrack(null);
  s.counters.replaceTrack += 1;
  s.mic = { sender, track: null };
  s.muted = true;
  log("muted: stopped", track.id);
  return { muted: true, stoppedTrackId: track.id };
}

async function unmute() {
  if (!s.mic) throw new Error("no microphone: start({audio: true}) first");
  if (!s.muted) return { muted: false, trackId: s.mic.track.id };
  const track = await getMicrophone();
  await s.mic.sender.replaceTrack(track);
  s.counters.replaceTrack += 1;
  s.localStream.addTrack(track);
  s.mic = { sender: s.mic.sender, track };
  s.muted = false;
  log("unmuted: new track", track.id);
  return { muted: false, trackId: track.id };
}

function remoteAudio(mids) {
  const pc = requirePc();
  const out = [];
  for (const transceiver of pc.getTransceivers()) {
    const track = transceiver.receiver.track;
    if (!track || track.kind !== "audio" || transceiver.mid === null || transceiver.stopped) continue;
    if (mids && !mids.includes(transceiver.mid)) continue;
    out.push({ transceiver, track });
  }
  return out;
}

// For each remote audio track: `ms` milliseconds of audio, its dominant frequency, RMS and peak
// (tone.js), with the transceiver's state.
async function measure(ms = 1000, { mids = null } = {}) {
  const targets = remoteAudio(mids);
  if (targets.length === 0) return [];
  const levels = await s.meter.measure(
    audioContext(),
    targets.map((t) => t.track),
    ms,
  );
  return targets.map((t, i) => {
    const entry = s.remote.get(t.track.id);
    return {
      mid: t.transceiver.mid,
      trackId: t.track.id,
      streamIds: entry ? entry.streamIds : [],
      direction: t.transceiver.direction,
      currentDirection: t.transceiver.currentDirection,
      trackMuted: t.track.muted,
      readyState: t.track.readyState,
      ...levels[i],
    };
  });
}

function pick(obj, keys) {
  const out = {};
  for (const key of keys) if (obj[key] !== undefined) out[key] = obj[key];
  return out;
}

// Selected getStats() numbers: inbound/outbound RTP keyed by mid, the selected candidate pair, transport.
async function stats() {
  const pc = requirePc();
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((entry) => byId.set(entry.id, entry));
  const inbound = {};
  const outbound = {};
  let transport = null;
  report.forEach((r) => {
    const codec = r.codecId && byId.get(r.codecId) ? byId.get(r.codecId).mimeType : null;
    if (r.type === "inbound-rtp") {
      inbound[r.mid ?? `ssrc:${r.ssrc}`] = {
        ...pick(r, [
          "kind", "ssrc", "mid", "trackIdentifier", "packetsReceived", "packetsLost", "bytesReceived",
          "jitter", "audioLevel", "totalAudioEnergy", "totalSamplesReceived", "concealedSamples",
          "silentConcealedSamples", "framesDecoded", "frameWidth", "frameHeight", "framesPerSecond",
          "framesReceived", "framesDropped", "keyFramesDecoded", "nackCount", "pliCount", "firCount",
          "retransmittedPacketsReceived", "retransmittedBytesReceived", "freezeCount", "totalFreezesDuration",
          "pauseCount", "totalPausesDuration",
        ]),
        codec,
      };
    } else if (r.type === "outbound-rtp") {
      const key = r.mid !== undefined ? (r.rid ? `${r.mid}:${r.rid}` : r.mid) : `ssrc:${r.ssrc}`;
      outbound[key] = {
        ...pick(r, [
          "kind", "ssrc", "mid", "rid", "packetsSent", "bytesSent", "active", "framesEncoded", "frameWidth",
          "frameHeight", "nackCount", "pliCount", "retransmittedPacketsSent", "qualityLimitationReason",
          "targetBitrate",
        ]),
        codec,
      };
    } else if (r.type === "transport") {
      transport = r;
    }
  });
  let candidatePair = null;
  if (transport && transport.selectedCandidatePairId) {
    const pair = byId.get(transport.selectedCandidatePairId);
    const side = (id) => {
      const c = byId.get(id);
      return c ? pick(c, ["address", "port", "protocol", "candidateType", "networkType"]) : null;
    };
    if (pair) {
      candidatePair = {
        ...pick(pair, ["state", "nominated", "bytesSent", "bytesReceived", "currentRoundTripTime"]),
        local: side(pair.localCandidateId),
        remote: side(pair.remoteCandidateId),
      };
    }
  }
  return {
    inbound,
    outbound,
    candidatePair,
    transport: transport ? pick(transport, ["dtlsState", "iceState", "iceRole", "selectedCandidatePairChanges"]) : null,
  };
}

async function state() {
  const pc = requirePc();
  return {
    signalingState: pc.signalingState,
    iceConnectionState: pc.iceConnectionState,
    iceGatheringState: pc.iceGatheringState,
    connectionState: pc.connectionState,
    muted: s.muted,
    counters: { ...s.counters },
    transceivers: pc.getTransceivers().map((t) => ({
      mid: t.mid,
      kind: t.receiver.track.kind,
      direction: t.direction,
      currentDirection: t.currentDirection,
      stopped: t.stopped ?? false,
      senderTrackId: t.sender.track ? t.sender.track.id : null,
      senderTrackState: t.sender.track ? t.sender.track.readyState : null,
      receiverTrackId: t.receiver.track.id,
      receiverTrackMuted: t.receiver.track.muted,
      remoteStreamIds: s.remote.has(t.receiver.track.id) ? s.remote.get(t.receiver.track.id).streamIds : [],
    })),
  };
}

async function descriptions() {
  const pc = requirePc();
  return { local: describe(pc.currentLocalDescription), remote: pc.currentRemoteDescription };
}

async function waitConnected(timeoutMs = 10000) {
  const pc = requirePc();
  const deadline = performance.now() + timeoutMs;
  while (pc.connectionState !== "connected") {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") {
      throw new Error(`connectionState is ${pc.connectionState}`);
    }
    if (performance.now() > deadline) {
      throw new Error(`not connected within ${timeoutMs} ms: connectionState ${pc.connectionState}`);
    }
    await sleep(25);
  }
  return pc.connectionState;
}

async function close() {
  for (const track of s.localStream ? s.localStream.getTracks() : []) track.stop();
  for (const track of s.extraTracks) track.stop();
  if (s.pc) s.pc.close();
  if (s.ctx) await s.ctx.close();
  s.pc = null;
  s.ctx = null;
  s.meter = new ToneMeter();
  s.remote.clear();
  return true;
}

window.voxaTest = {
  start,
  createOffer,
  createAnswer,
  setRemote,
  setLocal,
  handleRemoteOffer,
  addIceCandidate,
  takeCandidates,
  addAudioTrack,
  addTransceiver,
  setEncodingsActive,
  addScreenShare,
  localMids,
  mute,
  unmute,
  measure,
  stats,
  state,
  descriptions,
  waitConnected,
  close,
};
window.voxaTestReady = true;
setStatus("ready");
