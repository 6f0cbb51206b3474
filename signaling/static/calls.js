// Calls in the browser client: this device on `user:<me>` (docs/protocol.md, "Calls") and the call's
// media on `call:<call_id>`.
//
// The page has one voice channel (app.js); a call is a second media topic on the same socket. Its media
// goes through the same MediaSession code as the voice channel (app.js hands us `openMedia`), because a
// `call:` topic negotiates exactly like a `voice:` one. While a call's media is up the voice channel's
// media is held (app.js closes it and starts a fresh one afterwards), so the page never sends the
// microphone to two rooms at once.
//
// Everything the UI shows is derived from server events: `call_started` (a ring), `stop_ringing`,
// `call_ringing` (ringback for the caller), `call_accepted` / `call_declined` / `call_left`,
// `call_ended`, `missed_call`, and `call_state`, which after a reconnect is enough to rebuild the view.

import { Presence } from "/vendor/phoenix.mjs";
import { audioContext } from "./media.js";

const DEVICE_KEY = "voxa.device";
// The call whose media this device is in: call_state names users, not devices, so after a reload this
// is how a device knows the call was its own (and another device of the same user's does not join).
const CALL_KEY = "voxa.call";
const PUSH_TIMEOUT_MS = 10000;

function storedCall() {
  try {
    return localStorage.getItem(CALL_KEY);
  } catch {
    return null;
  }
}

function storeCall(callId) {
  try {
    if (callId) localStorage.setItem(CALL_KEY, callId);
    else localStorage.removeItem(CALL_KEY);
  } catch {
    // private mode: a reload forgets the call
  }
}

/** The stable id of this browser profile's device (localStorage), so a reload is the same device. */
export function deviceId() {
  let id = null;
  try {
    id = localStorage.getItem(DEVICE_KEY);
  } catch {
    id = null;
  }
  if (!id || !/^[A-Za-z0-9_.-]{1,64}$/.test(id)) {
    const random = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
    id = `web-${random}`.slice(0, 64);
    try {
      localStorage.setItem(DEVICE_KEY, id);
    } catch {
      // private mode: a new device id per page
    }
  }
  return id;
}

// --- tones ---------------------------------------------------------------------------------------------
// A synthesised ring (for an incoming call) and ringback (for the caller once the callee's device rings):
// WebAudio oscillators, so the page ships no audio files. Each is a repeating pattern of bursts.
const PATTERNS = {
  ring: { freqs: [880, 660], bursts: [[0, 0.4], [0.6, 0.4]], period: 3, gain: 0.18 },
  ringback: { freqs: [440, 480], bursts: [[0, 2]], period: 6, gain: 0.08 },
};

class Tone {
  constructor() {
    this.kind = null;
    this.timer = null;
    this.nodes = [];
  }

  play(kind) {
    if (this.kind === kind) return;
    this.stop();
    const pattern = PATTERNS[kind];
    if (!pattern) return;
    this.kind = kind;
    let ctx;
    try {
      ctx = audioContext();
      if (ctx.state !== "running") ctx.resume().catch(() => {});
    } catch {
      return; // no WebAudio: the screen still shows the call
    }
    const schedule = () => {
      const start = ctx.currentTime + 0.05;
      for (const [offset, length] of pattern.bursts) {
        const gain = ctx.createGain();
        gain.gain.setValueAtTime(0, start + offset);
        gain.gain.linearRampToValueAtTime(pattern.gain, start + offset + 0.02);
        gain.gain.setValueAtTime(pattern.gain, start + offset + length - 0.02);
        gain.gain.linearRampToValueAtTime(0, start + offset + length);
        gain.connect(ctx.destination);
        for (const freq of pattern.freqs) {
          const osc = ctx.createOscillator();
          osc.frequency.value = freq;
          osc.connect(gain);
          osc.start(start + offset);
          osc.stop(start + offset + length);
          this.nodes.push(osc);
        }
        this.nodes.push(gain);
      }
      // Only the last period's nodes are kept: older ones have stopped by themselves.
      if (this.nodes.length > 32) this.nodes = this.nodes.slice(-16);
    };
    schedule();
    this.timer = setInterval(schedule, pattern.period * 1000);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const node of this.nodes) {
      try {
        if (node.stop) node.stop();
        node.disconnect();
      } catch {
        // already stopped
      }
    }
    this.nodes = [];
    this.kind = null;
  }
}

// --- the controller ------------------------------------------------------------------------------------
export class Calls {
  /**
   * @param {object} host  what app.js lends: socket(), me(), notify(), dismiss(), log(), render(),
   *   openMedia({reply, push, isCurrent}) -> MediaSession, holdVoice(bool), listPresence(presence, sessionId),
   *   selfState() -> {muted, deafened}, nameOf(userId) -> a display name (the voice channel's, else the id)
   */
  constructor(host) {
    this.host = host;
    this.deviceId = deviceId();
    this.channel = null; // user:<me>
    this.joined = false;
    this.incoming = new Map(); // call_id -> call_started payload (ringing here)
    this.rang = new Set(); // call ids that rang here (for "answered on another device")
    this.current = null; // {call_id, caller: bool, peers: [ids], phase: calling|ringing|active, names}
    this.media = null; // {channel, presence, session, reply, joined}
    this.states = new Map(); // call_id -> last call_state
    this.missed = []; // [{call_id, caller, at}]
    this.seenMissed = new Set();
    this.ended = null; // {call_id, reason, with} of the last call, for the screen and tests
    this.tone = new Tone();
    this.autoAnswer = null; // a call id to answer once joined (?answer=<id> from a notification)
    this.autoDecline = null; // likewise to decline (?decline=<id>)
    this.lastError = null;
  }

  // --- the user topic ------------------------------------------------------------------------------
  join() {
    const socket = this.host.socket();
    if (!socket) return;
    const me = this.host.me();
    const channel = socket.channel(`user:${me.id}`, () => ({ device_id: this.deviceId }));
    this.channel = channel;
    const mine = (handler) => (payload) => {
      if (channel === this.channel) handler(payload || {});
    };
    channel.on("call_started", mine((p) => this.onStarted(p)));
    channel.on("call_ringing", mine((p) => this.onRinging(p)));
    channel.on("call_accepted", mine((p) => this.onAccepted(p)));
    channel.on("call_declined", mine((p) => this.onDeclined(p)));
    channel.on("call_left", mine((p) => this.onLeft(p)));
    channel.on("stop_ringing", mine((p) => this.onStopRinging(p)));
    channel.on("call_ended", mine((p) => this.onEnded(p)));
    channel.on("missed_call", mine((p) => this.addMissed(p, true)));
    channel.on("call_state", mine((p) => this.onState(p)));
    channel.onError(() => {
      if (channel === this.channel) this.joined = false;
    });
    channel.onClose(() => {
      if (channel === this.channel) this.joined = false;
    });
    channel
      .join()
      .receive("ok", (reply) => {
        if (channel !== this.channel) return;
        this.joined = true;
        for (const missed of (reply && reply.missed_calls) || []) this.addMissed(missed, false);
        this.host.log("calls: joined", channel.topic, "as device", this.deviceId);
        if (this.autoAnswer) {
          const callId = this.autoAnswer;
          this.autoAnswer = null;
          this.answer(callId);
        } else if (this.autoDecline) {
          const callId = this.autoDecline;
          this.autoDecline = null;
          this.decline(callId);
        }
        this.host.render();
      })
      .receive("error", (response) => {
        if (channel !== this.channel) return;
        const reason = (response && response.reason) || "refused";
        this.lastError = reason;
        this.host.notify("error", `Calls are unavailable: ${reason}`, { key: "calls" });
        this.host.render();
      });
  }

  /** The page left (or lost) its socket for good: forget every call here. */
  reset() {
    this.tone.stop();
    this.closeMedia();
    if (this.channel) this.channel.leave();
    this.channel = null;
    this.joined = false;
    this.incoming.clear();
    this.current = null;
    this.host.render();
  }

  push(event, payload, channel = this.channel) {
    return new Promise((resolve, reject) => {
      if (!channel || (channel === this.channel && !this.joined)) {
        reject(new Error("calls are not connected"));
        return;
      }
      channel
        .push(event, payload, PUSH_TIMEOUT_MS)
        .receive("ok", (response) => resolve(response || {}))
        .receive("error", (response) => reject(new Error((response && response.reason) || "refused")))
        .receive("timeout", () => reject(new Error("no reply from the server")));
    });
  }

  // --- actions -------------------------------------------------------------------------------------
  async start(userId, name = null) {
    const me = this.host.me();
    const target = String(userId || "").trim();
    if (!target) return this.fail("Enter the user id to call.");
    if (target === me.id) return this.fail("You cannot call yourself.");
    if (this.current) return this.fail("You are already in a call: end it first.");
    let reply;
    // Until the reply, a call_state of this new call must not be taken for a call to rebuild.
    this.starting = true;
    try {
      reply = await this.push("start_call", { invitees: [target], video: false });
    } catch (err) {
      return this.fail(`Could not call ${name || target}: ${err.message}`);
    } finally {
      this.starting = false;
    }
    this.ended = null;
    const names = { [target]: name || target };
    // Glare: the callee was ringing us and the server answered their call instead.
    const ringingHere = this.incoming.get(reply.call_id);
    if (ringingHere) {
      this.incoming.delete(reply.call_id);
      names[ringingHere.caller.id] = ringingHere.caller.name;
    }
    const phase = ringingHere ? "active" : "calling";
    const known = this.current && this.current.call_id === reply.call_id ? this.current : null;
    this.current = { call_id: reply.call_id, caller: true, peers: [target], phase: known ? known.phase : phase, names };
    storeCall(reply.call_id);
    this.updateTone();
    this.joinMedia(reply.topic || `call:${reply.call_id}`);
    this.host.render();
    return reply;
  }

  async answer(callId) {
    const ring = this.incoming.get(callId);
    let reply;
    try {
      reply = await this.push("answer_call", { call_id: callId });
    } catch (err) {
      this.incoming.delete(callId);
      this.updateTone();
      return this.fail(`Could not answer: ${err.message}`);
    }
    this.incoming.delete(callId);
    this.ended = null;
    const caller = ring ? ring.caller : null;
    const peers = caller ? [caller.id] : [];
    const names = caller ? { [caller.id]: caller.name } : {};
    this.current = { call_id: callId, caller: false, peers, phase: "active", names };
    storeCall(callId);
    this.updateTone();
    this.joinMedia(reply.topic || `call:${callId}`);
    this.host.render();
    return reply;
  }

  async decline(callId) {
    this.incoming.delete(callId);
    this.updateTone();
    this.host.render();
    try {
      await this.push("decline_call", { call_id: callId, reason: "declined" });
    } catch (err) {
      this.fail(`Could not decline: ${err.message}`);
    }
  }

  async hangUp() {
    const call = this.current;
    if (!call) return;
    try {
      await this.push("end_call", { call_id: call.call_id });
    } catch (err) {
      this.fail(`Could not end the call: ${err.message}`);
    }
    // The server's call_ended closes the view; if it never comes (connection lost) close it here.
    if (this.current === call) this.finish(call.call_id, "hangup");
  }

  fail(text) {
    this.lastError = text;
    this.host.notify("error", text, { key: "call-error" });
    this.host.render();
    return null;
  }

  // --- server events -------------------------------------------------------------------------------
  onStarted(p) {
    if (!p.call_id || !p.caller) return;
    this.incoming.set(p.call_id, p);
    this.rang.add(p.call_id);
    this.updateTone();
    this.host.render();
  }

  onRinging(p) {
    const call = this.current;
    if (call && call.call_id === p.call_id && call.phase === "calling") call.phase = "ringing";
    this.updateTone();
    this.host.render();
  }

  onAccepted(p) {
    const call = this.current;
    if (call && call.call_id === p.call_id) {
      call.phase = "active";
      if (p.user_id && !call.peers.includes(p.user_id)) call.peers.push(p.user_id);
    }
    this.updateTone();
    this.host.render();
  }

  onDeclined(p) {
    const call = this.current;
    if (!call || call.call_id !== p.call_id) return;
    const who = call.names[p.user_id] || p.user_id;
    const busy = p.reason === "busy";
    this.host.notify("info", busy ? `${who} is busy.` : `${who} declined the call.`, { key: `declined-${p.call_id}` });
    this.declined = { call_id: p.call_id, user_id: p.user_id, reason: p.reason || "declined" };
    this.host.render();
  }

  onLeft(p) {
    const call = this.current;
    if (call && call.call_id === p.call_id) {
      this.host.notify("info", `${call.names[p.user_id] || p.user_id} left the call.`);
      this.host.render();
    }
  }

  onStopRinging(p) {
    const ringing = this.incoming.delete(p.call_id);
    if (!ringing && !this.rang.has(p.call_id)) return;
    if (p.reason === "answered_elsewhere") this.host.notify("info", "Answered on another device.");
    else if (p.reason === "declined_elsewhere") this.host.notify("info", "Declined on another device.");
    this.updateTone();
    this.host.render();
  }

  onEnded(p) {
    this.incoming.delete(p.call_id);
    if (storedCall() === p.call_id) storeCall(null);
    this.states.delete(p.call_id);
    if (this.current && this.current.call_id === p.call_id) this.finish(p.call_id, p.reason || "hangup");
    this.updateTone();
    this.host.render();
  }

  finish(callId, reason) {
    const call = this.current;
    if (!call || call.call_id !== callId) return;
    const others = call.peers.map((id) => call.names[id] || id);
    this.ended = { call_id: callId, reason, with: call.peers };
    this.current = null;
    if (storedCall() === callId) storeCall(null);
    this.closeMedia();
    this.updateTone();
    const text = {
      hangup: "Call ended.",
      declined: `${others.join(", ") || "They"} declined the call.`,
      timeout: "No answer.",
      cancelled: "Call cancelled.",
      busy: `${others.join(", ") || "They"} is busy.`,
      failed: "The call failed.",
    }[reason];
    this.host.notify("info", text || `Call ended (${reason}).`, { key: "call-ended" });
    this.host.render();
  }

  addMissed(p, live) {
    if (!p.call_id || this.seenMissed.has(p.call_id)) return;
    this.seenMissed.add(p.call_id);
    this.missed.unshift({ call_id: p.call_id, caller: p.caller || { id: "?", name: "someone" }, at: p.at });
    const caller = (p.caller && (p.caller.name || p.caller.id)) || "someone";
    const when = p.at ? new Date(p.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
    this.host.notify("info", `Missed call from ${caller}${when ? ` at ${when}` : ""}.`, {
      key: `missed-${p.call_id}`,
      timeoutMs: 0,
    });
    if (live) this.incoming.delete(p.call_id);
    this.updateTone();
    this.host.render();
  }

  // A whole call's state: after a (re)join one arrives per call we are part of, so the view is rebuilt
  // from these alone (who rings, whether we are in an active call's media).
  onState(p) {
    if (!p.call_id) return;
    const me = this.host.me().id;
    const members = p.members || {};
    if (p.state === "ended") {
      this.onEnded({ call_id: p.call_id, reason: this.current && this.current.call_id === p.call_id ? "hangup" : "" });
      return;
    }
    this.states.set(p.call_id, p);
    const mine = members[me];
    const others = Object.keys(members).filter((id) => id !== me);
    if (mine === "ringing" && p.state === "ringing" && !this.incoming.has(p.call_id)) {
      // Rebuilt after a reconnect: call_started is not repeated, so the caller is the member already in.
      const callerId = others.find((id) => members[id] === "joined") || others[0] || "?";
      const caller = { id: callerId, name: this.host.nameOf(callerId) };
      this.incoming.set(p.call_id, { call_id: p.call_id, caller, rebuilt: true });
      this.rang.add(p.call_id);
    } else if (mine !== "ringing") {
      this.incoming.delete(p.call_id);
    }
    if (mine === "joined" && !this.current && !this.starting && storedCall() === p.call_id) {
      // We are in this call (this device or another): a reconnecting page rejoins its media.
      const names = Object.fromEntries(others.map((id) => [id, this.host.nameOf(id)]));
      this.current = {
        call_id: p.call_id,
        caller: p.state === "ringing",
        peers: others,
        phase: p.state === "active" ? "active" : "ringing",
        names,
        rebuilt: true,
      };
      this.joinMedia(`call:${p.call_id}`);
    } else if (this.current && this.current.call_id === p.call_id) {
      const call = this.current;
      for (const id of others) if (!call.peers.includes(id)) call.peers.push(id);
      if (p.state === "active") call.phase = "active";
      else if (call.phase === "calling" && others.some((id) => members[id] === "ringing")) call.phase = "calling";
      if (mine === "left" || mine === "declined") this.finish(p.call_id, "hangup");
    }
    this.updateTone();
    this.host.render();
  }

  updateTone() {
    if (this.incoming.size > 0 && !this.current) this.tone.play("ring");
    else if (this.current && this.current.caller && this.current.phase === "ringing") this.tone.play("ringback");
    else this.tone.stop();
  }

  // --- the call's media ----------------------------------------------------------------------------
  joinMedia(topic) {
    if (this.media && this.media.topic === topic) return; // already joined (or joining)
    this.closeMedia({ keepVoiceHeld: true });
    const socket = this.host.socket();
    if (!socket) return;
    this.host.holdVoice(true);
    const channel = socket.channel(topic, () => {
      const self = this.host.selfState();
      return { muted: self.muted, deafened: self.deafened };
    });
    const link = { topic, channel, presence: new Presence(channel), session: null, reply: null, joined: false };
    this.media = link;
    link.presence.onSync(() => {
      if (link === this.media) this.host.render();
    });
    channel.on("sdp", (payload) => {
      if (link === this.media && link.session) link.session.handleRemote(payload);
    });
    channel.on("media_reset", () => {
      if (link === this.media && link.joined) this.startSession(link);
    });
    channel.onError(() => {
      if (link !== this.media) return;
      link.joined = false;
      this.stopSession(link);
    });
    channel
      .join()
      .receive("ok", (reply) => {
        if (link !== this.media) return;
        link.reply = reply;
        link.joined = true;
        this.startSession(link);
      })
      .receive("error", (response) => {
        if (link !== this.media) return;
        const reason = (response && response.reason) || "refused";
        this.host.notify("error", `Cannot join the call's audio: ${reason}`, { key: "call-media" });
        // A refused join will not succeed by itself (the call may have ended while we were away): stop
        // the channel's rejoin attempts and close the call here.
        const call = this.current;
        if (call && `call:${call.call_id}` === topic) this.finish(call.call_id, "failed");
        else this.closeMedia();
        this.host.render();
      });
  }

  startSession(link) {
    this.stopSession(link);
    const push = (event, payload) =>
      link === this.media && link.joined
        ? this.push(event, payload, link.channel)
        : Promise.reject(new Error("the call's media is closed"));
    link.session = this.host.openMedia({
      reply: link.reply,
      push,
      isCurrent: (session) => link === this.media && link.session === session,
      onFailed: () => this.host.notify("error", "The call's audio connection failed.", { key: "call-media" }),
      onConnected: () => this.host.dismiss("call-media"),
      onNoMediaServer: () => this.host.notify("info", "Waiting for a media server for the call…", { key: "call-media" }),
      retry: () => {
        if (link === this.media && link.joined) this.startSession(link);
      },
    });
    this.host.render();
  }

  stopSession(link) {
    if (link.session) {
      link.session.close();
      link.session = null;
    }
  }

  closeMedia({ keepVoiceHeld = false } = {}) {
    const link = this.media;
    if (!link) return;
    this.media = null;
    this.stopSession(link);
    link.channel.leave();
    if (!keepVoiceHeld) this.host.holdVoice(false);
  }

  /** The live MediaSession of the call, or null. */
  session() {
    return this.media ? this.media.session : null;
  }

  /** Self-state pushes (mute, deafen ...) for the call's channel too; errors are the voice code's. */
  pushState(event) {
    const link = this.media;
    if (!link || !link.joined) return Promise.resolve();
    return this.push(event, {}, link.channel).catch((err) => this.host.log("call", event, "failed:", err.message));
  }

  /** Who is in the call's media (Presence of `call:<id>`), as app.js lists the voice channel. */
  participants() {
    const link = this.media;
    if (!link) return [];
    return this.host.listPresence(link.presence, link.reply ? link.reply.session_id : null);
  }

  state() {
    const call = this.current;
    const session = this.session();
    return {
      joined: this.joined,
      device_id: this.deviceId,
      incoming: [...this.incoming.values()].map((p) => ({ call_id: p.call_id, caller: p.caller, video: Boolean(p.video) })),
      current: call ? { ...call, names: { ...call.names }, peers: [...call.peers] } : null,
      media: session ? session.state() : null,
      media_topic: this.media ? this.media.topic : null,
      in_call: this.participants().map((p) => p.id),
      tone: this.tone.kind,
      missed: this.missed.map((m) => ({ ...m })),
      ended: this.ended,
      declined: this.declined || null,
      error: this.lastError,
    };
  }
}
