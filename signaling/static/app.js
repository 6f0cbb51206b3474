// Voxa's browser client: presence, mute/deafen, voice, camera and screen share in one channel, and
// calls (calls.js).
//
// URL: /?token=JWT&channel=lobby[&server=ID][&answer=CALL_ID][&camera=WxH][&simulcast=0]  (the voice
// server id defaults to the token's `server` claim; `answer` comes from a call notification of the
// service worker, sw.js; `camera` asks the camera for another size than 1280x720, `simulcast=0`
// publishes it as one layer)
// Protocol: docs/protocol.md (Phoenix Channels v2 socket, topic voice:<server>:<channel>, presence metas,
// `sdp`/`ice`/`media_reset` for media, `video_quality`/`publish_layers` for video). Media negotiation
// lives in media.js, the video grid in video.js.
//
// Test hook: window.voxa = {state(), participants(), measure(ms), route(), calls(), video()}.

import { Presence, Socket } from "/vendor/phoenix.mjs";
import { icon } from "./icons.js";
import { Calls } from "./calls.js";
import { MediaSession, audioContext } from "./media.js";
import { registerPush } from "./push.js";
import { VideoGrid } from "./video.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const STORAGE_KEY = "voxa.audio";
const INVITE_KEY = "voxa.invite"; // the last invite, for a page a call notification opens without one
const FAILED_MEDIA_RETRY_MS = 10000;
const MAX_MEDIA_RETRIES = 3;
const NO_MEDIA_RETRY_MS = 3000;
// Join refusals worth retrying (the phoenix client rejoins by itself); anything else stops the client.
const RETRYABLE_JOIN = ["channel is full", "join rate limit exceeded", "unavailable"];

function log(...parts) {
  console.info("[voxa]", ...parts);
}

// --- token -----------------------------------------------------------------------------------------
export function decodeJwt(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("the token is not a JWT (expected three dot-separated parts)");
  const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  const claims = JSON.parse(new TextDecoder().decode(bytes));
  if (!claims || typeof claims !== "object") throw new Error("the token payload is not a JSON object");
  return claims;
}

// --- state -----------------------------------------------------------------------------------------
const app = {
  token: null,
  resume: null, // {session_id, token} of the current join, for the next join after a lost socket
  claims: null,
  serverId: null,
  channelId: null,
  socket: null,
  channel: null,
  presence: null,
  status: "connecting", // connecting | connected | reconnecting | error | left
  statusDetail: "",
  fatal: null, // the reason the client gave up (refused connection or join)
  joined: false,
  everJoined: false,
  leaving: false,
  closeCause: null, // {kind: "disconnected"|"moved", ...} announced by the server before phx_close
  reply: null, // the last join reply
  sessionId: null,
  permissions: [],
  local: { muted: false, deafened: false, mutedBeforeDeafen: false },
  self: null, // our own presence meta
  mic: null, // the live microphone track, or null
  micError: null,
  camera: null, // the live camera track, or null (the camera is off)
  screen: null, // {video, audio} of a running screen share, or null
  media: null, // MediaSession
  voiceHeld: false, // a call's media is up: the voice channel's is closed meanwhile
  mediaNote: null, // why there is no voice (no media server, failure ...)
  mediaRetries: 0,
  ops: Promise.resolve(), // mute/deafen/device operations, one at a time
  busy: false,
  notices: [],
  noticeSeq: 0,
  lastDiagnosis: 0,
  settings: loadSettings(),
};

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}") || {};
  } catch {
    saved = {};
  }
  const settings = {
    micId: saved.micId || "",
    speakerId: saved.speakerId || "",
    processing: saved.processing !== false,
    screenAudio: saved.screenAudio === true,
  };
  const processing = query.get("processing");
  if (processing !== null) settings.processing = !["0", "off", "false", "no"].includes(processing.toLowerCase());
  return settings;
}

function saveSettings() {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(app.settings));
  } catch {
    // private mode: settings last for this page only
  }
}

// --- calls (calls.js) -------------------------------------------------------------------------------
const calls = new Calls({
  socket: () => app.socket,
  me: () => ({ id: app.claims.sub, name: app.claims.name || app.claims.sub }),
  notify: (...args) => notify(...args),
  dismiss: (key) => dismiss(key),
  log: (...parts) => log(...parts),
  render: () => render(),
  openMedia: (opts) => openMedia(opts),
  holdVoice: (held) => holdVoice(held),
  listPresence: (presence, sessionId) => listPresence(presence, sessionId),
  selfState: () => ({ muted: app.local.muted, deafened: app.local.deafened }),
  nameOf: (userId) => (participants().find((p) => p.id === userId) || { name: userId }).name,
});

function canCall() {
  return app.permissions.includes("call") && calls.joined;
}

// --- notices ---------------------------------------------------------------------------------------
function notify(level, text, { key = null, timeoutMs = level === "info" ? 8000 : 0 } = {}) {
  if (key) app.notices = app.notices.filter((n) => n.key !== key);
  const notice = { id: ++app.noticeSeq, level, text, key, at: Date.now() };
  app.notices.push(notice);
  if (app.notices.length > 6) app.notices.shift();
  if (level === "error") console.warn("[voxa]", text);
  else log(text);
  if (timeoutMs) setTimeout(() => dismiss(notice.id), timeoutMs);
  renderNotices();
  return notice;
}

function dismiss(idOrKey) {
  const before = app.notices.length;
  app.notices = app.notices.filter((n) => n.id !== idOrKey && n.key !== idOrKey);
  if (app.notices.length !== before) renderNotices();
}

function errorText(err) {
  if (!err) return "unknown error";
  if (typeof err === "string") return err;
  return err.message || String(err);
}

class PushError extends Error {
  constructor(event, response) {
    const reason = response && response.reason ? response.reason : JSON.stringify(response);
    super(`${event}: ${reason}`);
    this.event = event;
    this.reason = reason;
    this.response = response;
  }
}

// --- channel pushes ----------------------------------------------------------------------------------
function push(event, payload = {}, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const channel = app.channel;
    if (!channel || !app.joined) {
      reject(new Error(`${event}: not in a channel`));
      return;
    }
    channel
      .push(event, payload, timeoutMs)
      .receive("ok", (response) => resolve(response || {}))
      .receive("error", (response) => reject(new PushError(event, response)))
      .receive("timeout", () => reject(new Error(`${event}: no reply from the server`)));
  });
}

// Self-state pushes fail only while disconnected; the join payload carries the state on rejoin.
function pushState(event) {
  push(event).catch((err) => {
    if (app.joined) notify("error", `Could not ${event}: ${errorText(err.reason || err)}`, { key: "state" });
  });
  calls.pushState(event);
}

// --- connection ------------------------------------------------------------------------------------
function setStatus(status, detail = "") {
  app.status = status;
  app.statusDetail = detail;
  render();
}

function connect() {
  app.fatal = null;
  app.leaving = false;
  app.closeCause = null;
  app.everJoined = false;
  setStatus("connecting");
  const socket = (app.socket = new Socket("/socket", { params: { token: app.token } }));
  socket.onOpen(() => {
    if (socket !== app.socket) return;
    log("socket open");
    if (!app.joined) setStatus(app.everJoined ? "reconnecting" : "connecting", "joining the channel");
  });
  socket.onError(() => {
    if (socket !== app.socket || app.leaving) return;
    if (!socket.isConnected()) diagnose(socket);
  });
  socket.onClose((event) => {
    if (socket !== app.socket || app.leaving || app.fatal) return;
    log("socket closed", event && event.code);
    const wasJoined = app.joined;
    app.joined = false;
    if (wasJoined || app.everJoined) {
      // The peer connection outlives the socket: the rejoin resumes the session (docs/protocol.md,
      // "Resuming a session") and media never stops. Without resume data it starts over.
      if (!canResume()) stopMedia();
      const why = event && event.code === 1012 ? "the server is restarting" : "connection lost";
      setStatus("reconnecting", why);
    }
  });
  socket.connect();
  joinChannel();
  calls.join();
}

// A WebSocket that fails tells the page nothing: signaling refuses before the upgrade with a plain-text
// reason (docs/protocol.md, "Connecting"), which a plain GET of the same URL reads.
async function diagnose(socket) {
  const now = Date.now();
  if (now - app.lastDiagnosis < 4000) return;
  app.lastDiagnosis = now;
  let status = 0;
  let text = "";
  try {
    const url = `/socket/websocket?vsn=2.0.0&token=${encodeURIComponent(app.token)}`;
    const response = await fetch(url, { cache: "no-store" });
    status = response.status;
    text = (await response.text()).trim();
  } catch (err) {
    if (socket === app.socket && !app.fatal) {
      setStatus(app.everJoined ? "reconnecting" : "connecting", "the server is unreachable; retrying");
    }
    return;
  }
  if (socket !== app.socket || app.fatal || socket.isConnected()) return;
  if (status === 403 || (status === 400 && !/expected a WebSocket upgrade/i.test(text))) {
    fail(`Connection refused: ${text || `HTTP ${status}`}`);
  } else if (status === 503) {
    setStatus("reconnecting", text || "the server is shutting down; retrying");
  } else {
    setStatus(app.everJoined ? "reconnecting" : "connecting", "connection failed; retrying");
  }
}

function fail(reason) {
  app.fatal = reason;
  app.joined = false;
  stopMedia();
  const socket = app.socket;
  if (app.channel) {
    const channel = app.channel;
    app.channel = null;
    channel.leave();
  }
  calls.reset();
  if (socket) socket.disconnect();
  releaseMic();
  dismiss("join");
  $("left-title").textContent = app.everJoined ? "Disconnected" : "Cannot connect";
  $("left-detail").textContent = reason;
  $("rejoin").textContent = "Try again";
  console.warn("[voxa]", reason);
  setStatus("error", reason);
}

function topic() {
  return `voice:${app.serverId}:${app.channelId}`;
}

function joinChannel() {
  const channel = socketChannel();
  app.channel = channel;
  app.presence = new Presence(channel);
  app.presence.onSync(() => {
    if (channel === app.channel) onPresence();
  });
  channel.on("sdp", (payload) => {
    if (channel === app.channel && app.media) app.media.handleRemote(payload);
  });
  channel.on("publish_layers", (payload) => {
    // Dynacast: the SFU says which layers of our camera anyone receives.
    if (channel === app.channel && app.media && payload) app.media.setLayers(payload.mid, payload.active);
  });
  channel.on("media_reset", (payload) => {
    // While a call holds the voice its session is closed on purpose: the SFU noticing is no news.
    if (channel !== app.channel || app.voiceHeld) return;
    notify("info", `Voice moved to another media server${payload && payload.reason ? ` (${payload.reason})` : ""}.`, {
      key: "media",
    });
    app.mediaRetries = 0;
    startMedia("media_reset");
  });
  channel.on("disconnected", (payload) => {
    if (channel === app.channel) app.closeCause = { kind: "disconnected", by: payload && payload.by };
  });
  channel.on("moved", (payload) => {
    if (channel === app.channel) app.closeCause = { kind: "moved", by: payload && payload.by, channel: payload.channel_id };
  });
  channel.onError((reason) => {
    if (channel !== app.channel || app.leaving || app.fatal) return;
    if (app.joined) log("channel error", reason);
    app.joined = false;
    // A lost socket errors its channels too: keep media for the resume. A channel that crashed on a
    // live socket has lost its session on the server.
    if (app.socket.isConnected() || !canResume()) stopMedia();
    if (app.everJoined) setStatus("reconnecting", "rejoining the channel");
  });
  channel.onClose(() => {
    if (channel !== app.channel) return;
    onChannelClosed();
  });
  channel
    .join()
    .receive("ok", (reply) => {
      if (channel === app.channel) onJoined(reply);
    })
    .receive("error", (response) => {
      if (channel !== app.channel) return;
      const reason = (response && response.reason) || "refused";
      const retry = (response && response.retry) || RETRYABLE_JOIN.includes(reason);
      if (retry) {
        setStatus(app.everJoined ? "reconnecting" : "connecting", `${reason}; retrying`);
        notify("error", `Cannot join ${app.channelId}: ${reason}. Retrying…`, { key: "join" });
      } else {
        fail(`Cannot join ${app.channelId}: ${reason}`);
      }
    })
    .receive("timeout", () => {
      if (channel === app.channel) setStatus(app.everJoined ? "reconnecting" : "connecting", "join timed out; retrying");
    });
}

function socketChannel() {
  // The join payload is evaluated on every (re)join: it carries the current self state, and the
  // session to resume while the peer connection of the lost socket still runs.
  return app.socket.channel(topic(), () => {
    const payload = { muted: app.local.muted, deafened: app.local.deafened };
    if (canResume()) payload.resume = app.resume;
    return payload;
  });
}

function canResume() {
  return Boolean(app.resume && app.media);
}

function onJoined(reply) {
  const resumed = Boolean(reply.resumed) && canResume();
  app.resume = reply.resume_token ? { session_id: reply.session_id, token: reply.resume_token } : null;
  app.reply = reply;
  app.sessionId = reply.session_id;
  app.permissions = reply.permissions || [];
  app.joined = true;
  const again = app.everJoined;
  app.everJoined = true;
  dismiss("join");
  dismiss("fatal");
  log(again ? "rejoined" : "joined", reply.server_id, reply.channel_id, "session", reply.session_id);
  setStatus("connected");
  if (!canSpeak()) {
    releaseMic(); // a listener: nothing it sends would be forwarded
  } else if (!app.local.muted && !app.mic) {
    app.ops = app.ops.then(() => acquireOrMute());
  }
  if (resumed) {
    log("resumed session", reply.session_id, "(media kept)");
  } else {
    startMedia(again ? "rejoin" : "join");
  }
  // A rejoin starts with `video` off in presence; the camera that stayed on says so again.
  if (app.camera) push("video", { enabled: true }).catch((err) => log("video push failed:", errorText(err)));
}

function onChannelClosed() {
  const cause = app.closeCause;
  app.closeCause = null;
  app.joined = false;
  stopMedia();
  if (app.leaving || app.fatal) return;
  if (cause && cause.kind === "moved" && cause.channel) {
    notify("info", `${cause.by || "A moderator"} moved you to ${cause.channel}.`, { key: "moved" });
    app.channelId = cause.channel;
    const url = new URL(location.href);
    url.searchParams.set("channel", cause.channel);
    history.replaceState(null, "", url);
    setStatus("connecting", `joining ${cause.channel}`);
    joinChannel();
    return;
  }
  const title = cause && cause.kind === "disconnected" ? "You were disconnected" : "The channel was closed";
  const detail =
    cause && cause.kind === "disconnected"
      ? `${cause.by || "A moderator"} disconnected you from ${app.channelId}.`
      : "The server closed this channel for you (another tab may have joined it).";
  teardown(title, detail);
}

function leave() {
  teardown("You left the channel", `You were in ${app.channelId} on ${app.serverId}.`);
}

function teardown(title, detail) {
  app.leaving = true;
  app.joined = false;
  stopMedia();
  releaseMic();
  releaseCamera();
  releaseScreen();
  const channel = app.channel;
  const socket = app.socket;
  app.channel = null;
  app.presence = null;
  if (channel) channel.leave();
  calls.reset();
  if (socket) setTimeout(() => socket.disconnect(), 200);
  app.socket = null;
  app.self = null;
  setMediaNote(null);
  $("left-title").textContent = title;
  $("left-detail").textContent = detail;
  $("rejoin").textContent = "Rejoin";
  setStatus("left");
}

function rejoin() {
  app.notices = [];
  renderNotices();
  connect();
}

// --- media -----------------------------------------------------------------------------------------
function canSpeak() {
  return app.permissions.includes("speak");
}

function playback() {
  const deafened = app.local.deafened || Boolean(app.self && app.self.server_deafened);
  return { deafened, sinkId: app.settings.speakerId };
}

function startMedia(reason) {
  stopMedia();
  if (!app.joined || !app.reply) return;
  if (app.voiceHeld) return; // a call has the microphone; the voice starts again after it
  log("starting media", reason);
  const session = openMedia({
    reply: app.reply,
    push: (event, payload) => push(event, payload),
    isCurrent: (candidate) => candidate === app.media,
    onFailed: (failed) => retryMedia(failed),
    onConnected: () => {
      app.mediaRetries = 0;
      dismiss("media");
      if (app.mediaNote) setMediaNote(null);
    },
    onNoMediaServer: () =>
      // Retryable: an SFU may register any moment (the demo's starts next to signaling).
      setMediaNote("No media server is available yet: you can see who is here; voice starts when one is."),
    retry: () => {
      if (app.joined) startMedia("retry");
    },
  });
  app.media = session;
  if (session) {
    // Camera and screen share survive sessions, as the microphone does: the new peer connection
    // publishes them from its first offer.
    if (app.camera) session.setCamera(app.camera);
    if (app.screen) session.setScreen(app.screen);
  }
  render();
}

// One MediaSession on a joined media topic: the voice channel, or a call's `call:` topic (they negotiate
// alike, docs/protocol.md). `isCurrent(session)` says whether it is still its topic's live session: a
// stale session's pushes and callbacks go nowhere.
function openMedia({ reply, push: send, isCurrent, onFailed, onConnected, onNoMediaServer, retry }) {
  if (typeof RTCPeerConnection === "undefined") {
    setMediaNote("This browser has no WebRTC: voice is unavailable.");
    return null;
  }
  // A null media_server in the join reply is not final: the first offer asks signaling to assign one.
  const session = new MediaSession({
    iceServers: reply.ice_servers || [],
    iceTransportPolicy: reply.ice_transport_policy,
    track: app.local.muted ? null : app.mic,
    simulcast: query.get("simulcast") !== "0",
    push: (event, payload) =>
      isCurrent(session) ? send(event, payload) : Promise.reject(new Error("stale media session")),
    audioContainer: $("audio"),
    playback,
    onChange: () => {
      if (!isCurrent(session)) return;
      const state = session.pc.connectionState;
      if (state === "connected" && onConnected) onConnected();
      else if (state === "failed" && onFailed) onFailed(session);
      render();
    },
    onError: (where, err) => {
      if (!isCurrent(session)) return;
      const reason = err && err.reason ? err.reason : errorText(err);
      if (/no media server/i.test(reason)) {
        if (onNoMediaServer) onNoMediaServer();
        setTimeout(() => {
          if (isCurrent(session) && retry) retry();
        }, NO_MEDIA_RETRY_MS);
        return;
      }
      notify("error", `Voice: ${where} failed: ${reason}`, { key: "media" });
    },
    log: (...parts) => log("[media]", ...parts),
  });
  return session;
}

// A call's media holds the voice channel's (one microphone, one conversation at a time); once the call
// is over the voice channel is joined afresh, which negotiates a new session (the old SFU peer is gone).
function holdVoice(held) {
  if (app.voiceHeld === held) return;
  app.voiceHeld = held;
  if (held) stopMedia();
  else if (app.joined) rejoinChannel();
  render();
}

// Every live MediaSession of the page: the voice channel's and the call's.
function sessions() {
  return [app.media, calls.session()].filter(Boolean);
}

function setMediaNote(text) {
  app.mediaNote = text;
  if (text) notify("info", text, { key: "media-note", timeoutMs: 0 });
  else dismiss("media-note");
  render();
}

// A failed RTCPeerConnection: the SFU notices too (consent timeout), drops its peer and signaling sends
// `media_reset`, which starts a new session. The SFU does not take ICE restarts or a second transport
// for the same peer, so if no reset comes, rejoin the channel: a new join is a new SFU peer.
function retryMedia(session) {
  if (session.retryScheduled) return;
  session.retryScheduled = true;
  if (app.mediaRetries >= MAX_MEDIA_RETRIES) {
    notify("error", "Voice connection failed. Leave and rejoin to try again.", { key: "media" });
    return;
  }
  app.mediaRetries += 1;
  notify("error", "Voice connection lost; reconnecting…", { key: "media" });
  setTimeout(() => {
    if (session === app.media && session.pc.connectionState === "failed" && app.joined) {
      log("no media_reset after the failure: rejoining the channel");
      rejoinChannel();
    }
  }, FAILED_MEDIA_RETRY_MS);
}

function rejoinChannel() {
  const old = app.channel;
  app.channel = null; // its close is ours: not shown as "the channel was closed"
  app.joined = false;
  stopMedia();
  if (old) old.leave();
  setStatus("reconnecting", "rejoining the channel");
  joinChannel();
}

function stopMedia() {
  if (app.media) {
    app.media.close();
    app.media = null;
  }
  render();
}

function micConstraints(deviceId) {
  const processing = app.settings.processing;
  const audio = { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing };
  if (deviceId) audio.deviceId = { exact: deviceId };
  return { audio };
}

async function getMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error(
      window.isSecureContext
        ? "this browser cannot capture audio"
        : "the microphone needs a secure page (https:// or http://localhost)",
    );
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(micConstraints(app.settings.micId));
  } catch (err) {
    if (!app.settings.micId || (err.name !== "OverconstrainedError" && err.name !== "NotFoundError")) throw err;
    // The saved device is gone: fall back to the default one.
    stream = await navigator.mediaDevices.getUserMedia(micConstraints(""));
  }
  const track = stream.getAudioTracks()[0];
  track.addEventListener("ended", () => {
    if (track !== app.mic) return;
    notify("error", "The microphone stopped (unplugged or revoked). You are muted.", { key: "mic" });
    app.ops = app.ops.then(() => setMuted(true));
  });
  refreshDevices();
  return track;
}

function micErrorText(err) {
  switch (err && err.name) {
    case "NotAllowedError":
      return "microphone permission was denied: allow it in the browser, then unmute";
    case "NotFoundError":
      return "no microphone was found";
    case "NotReadableError":
      return "the microphone is in use by another application or failed to start";
    case "OverconstrainedError":
      return "the selected microphone is not available";
    default:
      return errorText(err);
  }
}

async function acquireOrMute() {
  if (app.mic || app.local.muted) return;
  try {
    const track = await getMicrophone();
    if (app.local.muted || !app.joined) {
      track.stop();
      return;
    }
    app.mic = track;
    app.micError = null;
    dismiss("mic");
    for (const session of sessions()) await session.setTrack(track);
  } catch (err) {
    app.micError = micErrorText(err);
    notify("error", `Listening only: ${app.micError}.`, { key: "mic" });
    app.local.muted = true;
    pushState("mute");
  }
  render();
}

function releaseMic() {
  if (app.mic) {
    app.mic.stop();
    app.mic = null;
  }
}

// Mute: stop and release the microphone, replaceTrack(null) (transceivers untouched), push `mute`.
// Unmute: a new microphone track, replaceTrack(track), push `unmute`. No renegotiation either way.
async function setMuted(muted) {
  if (muted) {
    app.local.muted = true;
    releaseMic();
    for (const session of sessions()) await session.setTrack(null);
    render();
    pushState("mute");
    return;
  }
  if (!canSpeak() || (app.self && app.self.server_muted)) return;
  if (app.local.deafened) {
    await setDeafened(false, { unmute: false });
  }
  let track;
  try {
    track = await getMicrophone();
  } catch (err) {
    app.micError = micErrorText(err);
    notify("error", `Cannot unmute: ${app.micError}.`, { key: "mic" });
    render();
    return;
  }
  releaseMic();
  app.mic = track;
  app.micError = null;
  dismiss("mic");
  app.local.muted = false;
  for (const session of sessions()) await session.setTrack(track);
  render();
  pushState("unmute");
}

// Deafen: silence every remote <audio> here and mute the microphone (the server mutes a deafened
// participant too). Undeafen restores the mute state from before.
async function setDeafened(deafened, { unmute = true } = {}) {
  if (deafened) {
    app.local.mutedBeforeDeafen = app.local.muted;
    app.local.deafened = true;
    for (const session of sessions()) session.refreshPlayback();
    if (!app.local.muted) {
      app.local.muted = true;
      releaseMic();
      for (const session of sessions()) await session.setTrack(null);
    }
    render();
    pushState("deafen");
    return;
  }
  app.local.deafened = false;
  for (const session of sessions()) session.refreshPlayback();
  render();
  pushState("undeafen");
  if (unmute && !app.local.mutedBeforeDeafen) await setMuted(false);
}

function queue(operation) {
  app.busy = true;
  render();
  app.ops = app.ops
    .then(operation)
    .catch((err) => notify("error", errorText(err)))
    .finally(() => {
      app.busy = false;
      render();
    });
  return app.ops;
}

// --- devices ---------------------------------------------------------------------------------------
async function refreshDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  const inputs = devices.filter((d) => d.kind === "audioinput");
  const outputs = devices.filter((d) => d.kind === "audiooutput");
  fillSelect($("mic-select"), inputs, app.settings.micId, "Microphone");
  const sinkSupported = typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;
  $("speaker-field").hidden = !sinkSupported || outputs.length === 0;
  if (sinkSupported) fillSelect($("speaker-select"), outputs, app.settings.speakerId, "Speaker");
  const unlabeled = inputs.length > 0 && inputs.every((d) => !d.label);
  $("device-hint").textContent = unlabeled ? "Device names appear once the microphone is allowed." : "";
}

function fillSelect(select, devices, selected, fallback) {
  select.replaceChildren();
  const def = document.createElement("option");
  def.value = "";
  def.textContent = "System default";
  select.appendChild(def);
  devices
    .filter((d) => d.deviceId && d.deviceId !== "default")
    .forEach((d, i) => {
      const option = document.createElement("option");
      option.value = d.deviceId;
      option.textContent = d.label || `${fallback} ${i + 1}`;
      select.appendChild(option);
    });
  select.value = [...select.options].some((o) => o.value === selected) ? selected : "";
}

// A different microphone (or processing setting): replaceTrack only, no renegotiation.
async function switchMicrophone() {
  if (app.local.muted || !app.mic) return;
  let track;
  try {
    track = await getMicrophone();
  } catch (err) {
    notify("error", `Cannot switch microphone: ${micErrorText(err)}.`, { key: "mic" });
    return;
  }
  const old = app.mic;
  app.mic = track;
  for (const session of sessions()) await session.setTrack(track);
  if (old) old.stop();
  notify("info", `Microphone: ${track.label || "switched"}.`, { key: "mic" });
}

// --- camera and screen share ---------------------------------------------------------------------------
function canVideo() {
  return app.permissions.includes("video");
}

function canStream() {
  return app.permissions.includes("stream") && Boolean(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
}

function cameraConstraints() {
  const [w, h] = (query.get("camera") || "").split("x").map((n) => Number.parseInt(n, 10));
  const width = Number.isFinite(w) && w > 0 ? w : 1280;
  const height = Number.isFinite(h) && h > 0 ? h : 720;
  return { video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 24, max: 30 } } };
}

function cameraErrorText(err) {
  switch (err && err.name) {
    case "NotAllowedError":
      return "camera permission was denied: allow it in the browser";
    case "NotFoundError":
      return "no camera was found";
    case "NotReadableError":
      return "the camera is in use by another application or failed to start";
    default:
      return errorText(err);
  }
}

function releaseCamera() {
  if (app.camera) {
    app.camera.stop();
    app.camera = null;
  }
}

function releaseScreen() {
  if (app.screen) {
    app.screen.video.stop();
    if (app.screen.audio) app.screen.audio.stop();
    app.screen = null;
  }
}

// Camera on: a camera track on the session's camera transceiver (simulcast), then `video` in presence.
// Off: the track stops (the light goes out), the transceiver goes inactive.
async function setCamera(on) {
  if (on) {
    if (app.camera || !canVideo()) return;
    let track;
    try {
      const stream = await navigator.mediaDevices.getUserMedia(cameraConstraints());
      track = stream.getVideoTracks()[0];
    } catch (err) {
      notify("error", `Cannot start the camera: ${cameraErrorText(err)}.`, { key: "camera" });
      return;
    }
    if (!app.joined) {
      track.stop();
      return;
    }
    track.addEventListener("ended", () => {
      if (track === app.camera) queue(() => setCamera(false));
    });
    app.camera = track;
    dismiss("camera");
    if (app.media) await app.media.setCamera(track);
  } else {
    if (!app.camera) return;
    releaseCamera();
    if (app.media) await app.media.setCamera(null);
  }
  render();
  push("video", { enabled: on }).catch((err) => {
    if (app.joined) notify("error", `Could not turn the camera ${on ? "on" : "off"}: ${errorText(err.reason || err)}`);
  });
}

// Screen share (Go Live): getDisplayMedia, on its own transceiver (and the tab's audio on another, when
// asked for and given). The browser's own "Stop sharing" ends the track, which ends the share.
async function setScreen(on) {
  if (on) {
    if (app.screen || !canStream()) return;
    let media;
    try {
      media = await navigator.mediaDevices.getDisplayMedia({
        video: { frameRate: { ideal: 15, max: 30 } },
        audio: app.settings.screenAudio,
      });
    } catch (err) {
      if (err && err.name === "NotAllowedError") return; // the picker was cancelled
      notify("error", `Cannot share the screen: ${errorText(err)}.`, { key: "screen" });
      return;
    }
    const video = media.getVideoTracks()[0];
    const audio = media.getAudioTracks()[0] || null;
    if (!app.joined || !video) {
      media.getTracks().forEach((t) => t.stop());
      return;
    }
    video.contentHint = "detail";
    const screen = { video, audio };
    video.addEventListener("ended", () => {
      if (app.screen === screen) queue(() => setScreen(false));
    });
    app.screen = screen;
    dismiss("screen");
    if (app.media) await app.media.setScreen(screen);
  } else {
    if (!app.screen) return;
    releaseScreen();
    if (app.media) await app.media.setScreen(null);
  }
  render();
}

// --- video grid --------------------------------------------------------------------------------------
let grid = null;

function videoGrid() {
  if (!grid && typeof ResizeObserver !== "undefined" && typeof IntersectionObserver !== "undefined") {
    grid = new VideoGrid({
      container: $("grid"),
      send: (trackId, quality) =>
        app.media ? app.media.videoQuality(trackId, quality) : Promise.reject(new Error("no media session")),
      log: (...parts) => log("[video]", ...parts),
    });
  }
  return grid;
}

// The tiles to show: ours first (camera, screen), then screen shares, then cameras, in join order.
// Whose video a receiver carries comes from its m-section's msid (session id, producer id); whether it
// is a camera or a screen, and whether it is live, from the publisher's presence (`tracks`, `video`).
function tiles() {
  const people = participants();
  const me = people.find((p) => p.you);
  const myName = me ? me.name : app.claims ? app.claims.name || app.claims.sub : "You";
  const myId = app.claims ? app.claims.sub : "";
  const out = [];
  if (app.camera) {
    out.push({ key: "local:camera", track: app.camera, label: `${myName} (you)`, user: myId, source: "camera", local: true, trackId: null, speaking: Boolean(me && me.speaking) });
  }
  if (app.screen) {
    out.push({ key: "local:screen", track: app.screen.video, label: `${myName}'s screen (you)`, user: myId, source: "screen", local: true, trackId: null, speaking: false });
  }
  if (!app.media) return out;
  const bySession = new Map(people.map((p) => [p.session_id, p]));
  const remote = [];
  for (const video of app.media.remoteVideos()) {
    const p = video.sessionId ? bySession.get(video.sessionId) : null;
    if (!p || p.you) continue;
    const info = p.tracks.find((t) => t.track === video.trackId);
    const reported = p.tracks.some((t) => t.kind === "video");
    // A track the SFU does not list (it reports tracks) is not live; without reports, `video` decides.
    const source = info ? (info.source === "screen" ? "screen" : "camera") : "camera";
    const live = info ? source === "screen" || p.video : !reported && p.video;
    if (!live) continue;
    remote.push({
      key: `${video.mid}|${video.trackId}`,
      track: video.track,
      label: source === "screen" ? `${p.name}'s screen` : p.name,
      user: p.id,
      source,
      local: false,
      trackId: video.trackId,
      speaking: source === "camera" && p.speaking,
      joined: p.joined_at,
    });
  }
  remote.sort((a, b) => (a.source === b.source ? a.joined - b.joined : a.source === "screen" ? -1 : 1));
  return out.concat(remote);
}

function renderGrid() {
  const g = videoGrid();
  if (g) g.update(app.joined || app.status === "reconnecting" ? tiles() : []);
}

// --- rendering -------------------------------------------------------------------------------------
const STATUS_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  error: "Error",
  left: "Not connected",
};

function participants() {
  return listPresence(app.presence, app.sessionId);
}

// The people of a media topic's Presence, one entry per session, oldest first.
function listPresence(presence, ownSession) {
  if (!presence) return [];
  const out = [];
  presence.list((id, { metas }) => {
    for (const meta of metas) {
      out.push({
        id,
        name: meta.name || id,
        session_id: meta.session_id,
        muted: Boolean(meta.muted),
        deafened: Boolean(meta.deafened),
        server_muted: Boolean(meta.server_muted),
        server_deafened: Boolean(meta.server_deafened),
        speaking: Boolean(meta.speaking),
        suppressed: Boolean(meta.suppressed),
        video: Boolean(meta.video),
        streaming: Boolean(meta.streaming),
        tracks: Array.isArray(meta.tracks) ? meta.tracks : [],
        priority_speaker: Boolean(meta.priority_speaker),
        joined_at: meta.joined_at || 0,
        you: meta.session_id === ownSession,
      });
    }
  });
  out.sort((a, b) => a.joined_at - b.joined_at || a.name.localeCompare(b.name));
  return out;
}

function onPresence() {
  const me = participants().find((p) => p.you) || null;
  const before = app.self;
  app.self = me;
  if (me && app.media && (!before || before.server_deafened !== me.server_deafened)) app.media.refreshPlayback();
  if (me && before && me.server_muted && !before.server_muted) {
    notify("info", "A moderator muted you.", { key: "server-mute" });
  } else if (me && before && !me.server_muted && before.server_muted) {
    notify("info", "A moderator lifted your server mute.", { key: "server-mute" });
  }
  render();
}

function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : (words[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

function flag(name, label, cls) {
  const span = document.createElement("span");
  span.className = `flag ${cls}`;
  span.title = label;
  span.innerHTML = icon(name, { label, size: 18 });
  return span;
}

function describePerson(p) {
  const bits = [p.name];
  if (p.you) bits.push("you");
  if (p.speaking) bits.push("speaking");
  if (p.server_muted) bits.push("muted by a moderator");
  else if (p.muted) bits.push("muted");
  if (p.server_deafened) bits.push("deafened by a moderator");
  else if (p.deafened) bits.push("deafened");
  if (p.suppressed) bits.push("cannot speak here");
  if (p.video) bits.push("camera on");
  if (p.streaming) bits.push("sharing their screen");
  return bits.join(", ");
}

function renderParticipants(list) {
  const ul = $("participants");
  const remote = app.media ? app.media.remoteTracks() : [];
  const withAudio = new Set(remote.map((t) => t.sessionId));
  const canModerate = app.permissions.includes("mute_members") && app.joined;
  ul.replaceChildren(
    ...list.map((p) => {
      const li = document.createElement("li");
      li.className = "person";
      li.dataset.user = p.id;
      li.dataset.session = p.session_id;
      li.dataset.speaking = String(p.speaking);
      li.dataset.muted = String(p.muted || p.server_muted);
      if (p.you) li.dataset.you = "true";
      li.setAttribute("aria-label", describePerson(p));

      const avatar = document.createElement("div");
      avatar.className = "avatar";
      avatar.style.setProperty("--hue", String(hue(p.id)));
      avatar.textContent = initials(p.name);
      avatar.setAttribute("aria-hidden", "true");

      const who = document.createElement("div");
      who.className = "who";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = p.name;
      who.appendChild(name);
      if (p.you) {
        const you = document.createElement("span");
        you.className = "you-badge";
        you.textContent = "you";
        who.appendChild(you);
      }
      const sub = document.createElement("span");
      sub.className = "sub";
      sub.textContent = p.speaking
        ? "speaking"
        : p.suppressed
          ? "listener"
          : !p.you && app.media && !withAudio.has(p.session_id) && !p.muted && !p.server_muted
            ? "no audio yet"
            : "";
      if (sub.textContent) who.appendChild(sub);

      const flags = document.createElement("div");
      flags.className = "flags";
      if (p.server_muted) flags.appendChild(flag("shieldMic", "Muted by a moderator", "server"));
      else if (p.muted) flags.appendChild(flag("micOff", "Muted", "muted"));
      if (p.server_deafened) flags.appendChild(flag("headphonesOff", "Deafened by a moderator", "server"));
      else if (p.deafened) flags.appendChild(flag("headphonesOff", "Deafened", "deafened"));
      if (p.video) flags.appendChild(flag("camera", "Camera on", "video"));
      if (p.streaming) flags.appendChild(flag("screen", "Sharing their screen", "video"));

      li.append(avatar, who, flags);
      if (canCall() && !p.you && p.id !== app.claims.sub) {
        const call = document.createElement("button");
        call.type = "button";
        call.className = "call";
        call.setAttribute("aria-label", `Call ${p.name}`);
        call.title = `Call ${p.name}`;
        call.innerHTML = icon("phone", { size: 16 }) + '<span class="call-label">Call</span>';
        call.disabled = Boolean(calls.current);
        call.addEventListener("click", () => calls.start(p.id, p.name));
        li.appendChild(call);
      }
      if (canModerate && !p.you) {
        const mod = document.createElement("button");
        mod.type = "button";
        mod.className = "mod";
        const action = p.server_muted ? "unmute" : "mute";
        mod.setAttribute("aria-pressed", String(p.server_muted));
        mod.setAttribute("aria-label", `Server mute ${p.name}`);
        mod.title = p.server_muted ? `Lift ${p.name}'s server mute` : `Server mute ${p.name}`;
        mod.innerHTML = icon("shield", { size: 16 });
        mod.addEventListener("click", () => {
          push("moderate", { target: p.id, action }).catch((err) =>
            notify("error", `Could not ${action} ${p.name}: ${errorText(err.reason || err)}`),
          );
        });
        li.appendChild(mod);
      }
      return li;
    }),
  );
  $("count").textContent = list.length ? `(${list.length})` : "";
  $("empty").hidden = list.length > 0 || !app.joined;
}

function renderNotices() {
  const box = $("notices");
  box.replaceChildren(
    ...app.notices.map((n) => {
      const div = document.createElement("div");
      div.className = `notice ${n.level}`;
      div.setAttribute("role", n.level === "error" ? "alert" : "status");
      const text = document.createElement("span");
      text.textContent = n.text;
      const close = document.createElement("button");
      close.type = "button";
      close.className = "icon-button";
      close.setAttribute("aria-label", "Dismiss");
      close.innerHTML = icon("close", { size: 16 });
      close.addEventListener("click", () => dismiss(n.id));
      div.append(text, close);
      return div;
    }),
  );
}

function mediaStatusText() {
  if (!app.joined) return app.status === "left" || app.status === "error" ? "Voice off" : "Voice waiting for the channel";
  if (app.voiceHeld) return "Voice on hold during the call";
  if (app.mediaNote) return "Voice unavailable";
  if (!app.media) return "Voice off";
  switch (app.media.pc.connectionState) {
    case "connected":
      return "Voice connected";
    case "failed":
      return "Voice connection failed";
    case "disconnected":
      return "Voice interrupted…";
    default:
      return "Voice connecting…";
  }
}

function render() {
  const root = $("app");
  root.dataset.state = app.status;
  const status = $("status");
  status.dataset.status = app.status;
  const detail = app.status === "error" ? app.fatal || app.statusDetail : app.statusDetail;
  $("status-text").textContent = STATUS_TEXT[app.status] + (detail && app.status !== "connected" ? ` — ${detail}` : "");
  status.title = detail || STATUS_TEXT[app.status];

  if (app.channelId) {
    $("channel-name").textContent = `# ${app.channelId}`;
    $("server-name").textContent = app.serverId || "";
    document.title = `# ${app.channelId} · Voxa`;
  }
  const list = participants();
  renderParticipants(app.joined || app.status === "reconnecting" ? list : []);

  const self = app.self;
  const serverMuted = Boolean(self && self.server_muted);
  const serverDeafened = Boolean(self && self.server_deafened);
  const suppressed = app.joined && !canSpeak();
  const muted = app.local.muted || serverMuted || suppressed;

  const mute = $("mute");
  mute.innerHTML = icon(muted ? "micOff" : "mic", { size: 22 });
  mute.setAttribute("aria-pressed", String(muted));
  let muteTitle = muted ? "Unmute microphone" : "Mute microphone";
  if (serverMuted) muteTitle = "A moderator muted you: you cannot unmute";
  else if (suppressed) muteTitle = "You do not have permission to speak in this channel";
  // A toggle keeps one label; aria-pressed says whether it is on (the tooltip says what a click does).
  mute.setAttribute("aria-label", "Mute microphone");
  mute.title = muteTitle;
  mute.dataset.server = String(serverMuted);
  mute.disabled = !app.joined || app.busy || serverMuted || suppressed;
  if (serverMuted || suppressed) mute.setAttribute("aria-description", muteTitle);
  else mute.removeAttribute("aria-description");

  const deafen = $("deafen");
  const deafened = app.local.deafened || serverDeafened;
  deafen.innerHTML = icon(deafened ? "headphonesOff" : "headphones", { size: 22 });
  deafen.setAttribute("aria-pressed", String(deafened));
  deafen.setAttribute("aria-label", "Deafen");
  deafen.title = serverDeafened ? "A moderator deafened you" : deafened ? "Undeafen" : "Deafen (mute everyone for you)";
  deafen.disabled = !app.joined || app.busy || serverDeafened;

  const camera = $("camera");
  const cameraOn = Boolean(app.camera);
  camera.innerHTML = icon(cameraOn ? "camera" : "cameraOff", { size: 22 });
  camera.setAttribute("aria-pressed", String(cameraOn));
  camera.setAttribute("aria-label", "Camera");
  camera.title = !canVideo() && app.joined
    ? "You do not have permission to use a camera in this channel"
    : cameraOn
      ? "Turn the camera off"
      : "Turn the camera on";
  camera.disabled = !app.joined || app.busy || (!canVideo() && !cameraOn);

  const screen = $("screen");
  const sharing = Boolean(app.screen);
  screen.innerHTML = icon(sharing ? "screen" : "screenOff", { size: 22 });
  screen.setAttribute("aria-pressed", String(sharing));
  screen.setAttribute("aria-label", "Share screen");
  screen.title = !app.permissions.includes("stream") && app.joined
    ? "You do not have permission to share your screen in this channel"
    : sharing
      ? "Stop sharing your screen"
      : "Share your screen";
  screen.disabled = !app.joined || app.busy || (!canStream() && !sharing);

  const leaveButton = $("leave");
  leaveButton.innerHTML = icon("leave", { size: 22 });
  leaveButton.disabled = app.status === "left" || app.status === "error";

  $("settings-button").innerHTML = icon("settings", { size: 22 });
  $("me-name").textContent = app.claims ? app.claims.name || app.claims.sub : "";
  const mediaStatus = $("media-status");
  mediaStatus.textContent = mediaStatusText();
  mediaStatus.dataset.media = app.media ? app.media.pc.connectionState : "none";

  const over = app.status === "left" || app.status === "error";
  $("room").hidden = over;
  $("left").hidden = !over;
  $("left").setAttribute("role", app.status === "error" ? "alert" : "region");
  $("left").dataset.kind = app.status;
  $("unlock").hidden = !sessions().some((session) => session.blockedPlayback);
  renderGrid();
  renderCalls();
}

// The call screens: an incoming ring (answer/decline), the current call (who, mute, end), the call form.
function renderCalls() {
  // Names as the topics' Presence knows them: a call rebuilt from call_state only has user ids.
  const known = new Map([...participants(), ...calls.participants()].map((p) => [p.id, p.name]));
  const nameOf = (id, given) => (given && given !== id ? given : known.get(id) || given || id);
  const ringing = [...calls.incoming.values()];
  const ring = calls.current ? null : ringing[0];
  const incoming = $("incoming");
  const appeared = Boolean(ring) && incoming.dataset.call !== (ring && ring.call_id);
  incoming.hidden = !ring;
  if (ring) {
    incoming.dataset.call = ring.call_id;
    const caller = nameOf(ring.caller.id, ring.caller.name);
    $("incoming-from").textContent = `${caller} is calling you${ring.video ? " (video)" : ""}.`;
    $("answer").setAttribute("aria-label", `Answer the call from ${caller}`);
    $("decline").setAttribute("aria-label", `Decline the call from ${caller}`);
    // An alert dialog takes the focus, so a keyboard answers with Enter.
    if (appeared) $("answer").focus();
  } else {
    delete incoming.dataset.call;
  }

  const call = calls.current;
  const view = $("call");
  view.hidden = !call;
  if (call) {
    view.dataset.call = call.call_id;
    view.dataset.phase = call.phase;
    const names = call.peers.map((id) => nameOf(id, call.names[id]));
    $("call-title").textContent = names.length ? `Call with ${names.join(", ")}` : "Call";
    const session = calls.session();
    const connected = session && session.pc.connectionState === "connected";
    $("call-status").textContent =
      call.phase === "calling"
        ? "Calling…"
        : call.phase === "ringing"
          ? "Ringing…"
          : connected
            ? "In the call"
            : "Connecting the call…";
    const inCall = calls.participants();
    $("call-members").replaceChildren(
      ...inCall.map((p) => {
        const li = document.createElement("li");
        li.dataset.user = p.id;
        li.textContent = p.you ? `${p.name} (you)` : p.name;
        if (p.muted || p.server_muted) li.appendChild(flag("micOff", "Muted", "muted"));
        return li;
      }),
    );
    const muted = app.local.muted;
    const mute = $("call-mute");
    mute.innerHTML = icon(muted ? "micOff" : "mic", { size: 20 }) + `<span>${muted ? "Unmute" : "Mute"}</span>`;
    mute.setAttribute("aria-pressed", String(muted));
    mute.disabled = app.busy;
    $("call-end").innerHTML = icon("phoneOff", { size: 20 }) + "<span>End call</span>";
  } else {
    delete view.dataset.call;
    delete view.dataset.phase;
  }
  $("call-form").hidden = !app.permissions.includes("call") || !app.joined;
  $("call-submit").disabled = !calls.joined || Boolean(call);
}

// --- test hook -------------------------------------------------------------------------------------
// What this page hears: the call's media while there is one (the voice channel's is held), else the voice
// channel's; keyed by user id through the topic's Presence.
async function measure(ms = 1000) {
  const callSession = calls.session();
  const session = callSession || app.media;
  if (!session) return {};
  const results = await session.measure(ms);
  const people = callSession ? calls.participants() : participants();
  const bySession = new Map(people.map((p) => [p.session_id, p]));
  const out = {};
  for (const r of results) {
    const p = r.sessionId ? bySession.get(r.sessionId) : null;
    const key = p ? p.id : r.sessionId ? `session:${r.sessionId}` : `mid:${r.mid}`;
    const entry = { hz: r.hz, rms: r.rms, peak: r.peak, name: p ? p.name : null, session_id: r.sessionId, mid: r.mid };
    if (!out[key] || out[key].rms < entry.rms) out[key] = entry;
  }
  return out;
}

function state() {
  const self = app.self;
  return {
    status: app.status,
    detail: app.statusDetail,
    error: app.fatal,
    server: app.serverId,
    channel: app.channelId,
    topic: app.serverId && app.channelId ? topic() : null,
    user: app.claims ? { id: app.claims.sub, name: app.claims.name || app.claims.sub } : null,
    session_id: app.sessionId,
    joined: app.joined,
    permissions: app.permissions,
    media_server: app.reply ? app.reply.media_server : null,
    muted: app.local.muted || Boolean(self && self.server_muted),
    self_muted: app.local.muted,
    deafened: app.local.deafened,
    server_muted: Boolean(self && self.server_muted),
    server_deafened: Boolean(self && self.server_deafened),
    mic: app.mic ? { id: app.mic.id, label: app.mic.label, readyState: app.mic.readyState } : null,
    mic_error: app.micError,
    media: app.media ? app.media.state() : null,
    media_note: app.mediaNote,
    remote: app.media ? app.media.remoteTracks() : [],
    notices: app.notices.map((n) => ({ level: n.level, text: n.text })),
  };
}

/** The ICE route of the voice connection (see Media.route), or null. */
async function route() {
  return app.media ? app.media.route() : null;
}

/** Camera, screen share, what we publish (encodings, dynacast) and the grid's tiles. */
function video() {
  return {
    camera: app.camera ? { id: app.camera.id, label: app.camera.label, readyState: app.camera.readyState } : null,
    screen: app.screen ? { id: app.screen.video.id, label: app.screen.video.label, audio: Boolean(app.screen.audio) } : null,
    publishing: app.media ? app.media.publishing() : [],
    sources: app.media ? app.media.sources() : {},
    tiles: grid ? grid.state() : [],
    quality_pushes: grid ? grid.sent : 0,
  };
}

window.voxa = { state, participants, measure, route, calls: () => calls.state(), video };

// --- boot ------------------------------------------------------------------------------------------
function showJoinForm(message) {
  app.status = "left";
  $("join-form").hidden = false;
  $("room").hidden = true;
  $("status-text").textContent = "Not connected";
  $("status").dataset.status = "left";
  $("app").dataset.state = "form";
  if (message) notify("error", message, { key: "form" });
}

function wire() {
  $("mute").addEventListener("click", () => {
    const muted = app.local.muted;
    queue(() => setMuted(!muted));
  });
  $("deafen").addEventListener("click", () => {
    const deafened = app.local.deafened;
    queue(() => setDeafened(!deafened));
  });
  $("leave").addEventListener("click", leave);
  $("camera").addEventListener("click", () => {
    const on = Boolean(app.camera);
    queue(() => setCamera(!on));
  });
  $("screen").addEventListener("click", () => {
    const on = Boolean(app.screen);
    queue(() => setScreen(!on));
  });
  $("answer").addEventListener("click", () => {
    const id = $("incoming").dataset.call;
    if (id) calls.answer(id);
  });
  $("decline").addEventListener("click", () => {
    const id = $("incoming").dataset.call;
    if (id) calls.decline(id);
  });
  $("call-end").addEventListener("click", () => calls.hangUp());
  $("call-mute").addEventListener("click", () => {
    const muted = app.local.muted;
    queue(() => setMuted(!muted));
  });
  $("call-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("call-user");
    calls.start(input.value.trim()).then((reply) => {
      if (reply) input.value = "";
    });
  });
  if (navigator.serviceWorker) {
    // A notification's action reaches an open page as a message (sw.js).
    navigator.serviceWorker.addEventListener("message", (event) => {
      const data = event.data || {};
      if (data.type === "answer" && data.call_id) calls.answer(data.call_id);
      else if (data.type === "decline" && data.call_id) calls.decline(data.call_id);
    });
  }
  $("rejoin").addEventListener("click", rejoin);
  const settingsPanel = $("settings");
  const settingsButton = $("settings-button");
  const toggleSettings = (open) => {
    settingsPanel.hidden = !open;
    settingsButton.setAttribute("aria-expanded", String(open));
    if (open) refreshDevices();
  };
  settingsButton.addEventListener("click", () => toggleSettings(settingsPanel.hidden));
  $("settings-close").innerHTML = icon("close", { size: 18 });
  $("settings-close").addEventListener("click", () => toggleSettings(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !settingsPanel.hidden) toggleSettings(false);
  });
  $("mic-select").addEventListener("change", (event) => {
    app.settings.micId = event.target.value;
    saveSettings();
    queue(switchMicrophone);
  });
  $("speaker-select").addEventListener("change", (event) => {
    app.settings.speakerId = event.target.value;
    saveSettings();
    for (const session of sessions()) session.refreshPlayback();
  });
  $("processing").checked = app.settings.processing;
  $("processing").addEventListener("change", (event) => {
    app.settings.processing = event.target.checked;
    saveSettings();
    queue(switchMicrophone);
  });
  $("screen-audio").checked = app.settings.screenAudio;
  $("screen-audio").addEventListener("change", (event) => {
    app.settings.screenAudio = event.target.checked;
    saveSettings();
  });
  $("unlock-button").addEventListener("click", () => {
    audioContext().resume();
    for (const session of sessions()) session.refreshPlayback();
  });
  if (navigator.mediaDevices && "ondevicechange" in navigator.mediaDevices) {
    navigator.mediaDevices.addEventListener("devicechange", refreshDevices);
  }
  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const raw = $("invite-input").value.trim();
    let token = raw;
    let channel = $("channel-input").value.trim() || "lobby";
    try {
      const url = new URL(raw);
      token = url.searchParams.get("token") || "";
      channel = url.searchParams.get("channel") || channel;
    } catch {
      // not a URL: a bare token
    }
    const next = new URL(location.href);
    next.search = "";
    next.searchParams.set("token", token);
    next.searchParams.set("channel", channel);
    location.assign(next);
  });
}

function boot() {
  wire();
  let token = query.get("token");
  let channelId = query.get("channel");
  const saved = loadInvite();
  if (!token && (query.get("answer") || query.get("decline")) && saved) {
    // Opened by a call notification (sw.js) without an invite: use the last one of this browser.
    token = saved.token;
    channelId = channelId || saved.channel;
  }
  if (!token) {
    showJoinForm(null);
    return;
  }
  try {
    app.claims = decodeJwt(token);
  } catch (err) {
    showJoinForm(`This invite's token cannot be read: ${errorText(err)}.`);
    return;
  }
  app.token = token;
  app.serverId = query.get("server") || app.claims.server;
  app.channelId = channelId || "lobby";
  saveInvite(token, app.channelId);
  calls.autoAnswer = query.get("answer");
  if (query.get("decline")) calls.autoDecline = query.get("decline");
  if (calls.autoAnswer || calls.autoDecline) {
    const url = new URL(location.href);
    url.searchParams.delete("answer");
    url.searchParams.delete("decline");
    history.replaceState(null, "", url);
  }
  if (!app.serverId) {
    showJoinForm("The token names no voice server (`server` claim): add &server=<id> to the link.");
    return;
  }
  if (query.get("muted") === "1") app.local.muted = true;
  refreshDevices();
  connect();
  registerPush({ token: app.token, deviceId: calls.deviceId, log }).catch((err) =>
    log("web push not registered:", errorText(err)),
  );
}

function loadInvite() {
  try {
    const saved = JSON.parse(localStorage.getItem(INVITE_KEY) || "null");
    return saved && typeof saved.token === "string" ? saved : null;
  } catch {
    return null;
  }
}

function saveInvite(token, channel) {
  try {
    localStorage.setItem(INVITE_KEY, JSON.stringify({ token, channel }));
  } catch {
    // private mode
  }
}

boot();
