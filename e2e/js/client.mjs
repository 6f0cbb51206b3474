// A scriptable peer built on the OFFICIAL phoenix JS client (Socket, Channel, Presence) over `ws`.
//
// Usage: node e2e/js/client.mjs --url ws://127.0.0.1:PORT/socket [--topic voice:S:C] [options]
// The token comes from the VOXA_TOKEN environment variable (never argv, so it stays out of `ps`).
//
// Options:
//   --auth params|authToken   how the token is sent: ?token=... (default) or the
//                             Sec-WebSocket-Protocol "base64url.bearer.phx.<b64>" header
//   --join-payload JSON       payload of phx_join (default {})
//   --reconnect-ms N          constant reconnectAfterMs (default 200)
//   --rejoin-ms N             constant rejoinAfterMs (default 200)
//   --heartbeat-ms N          heartbeatIntervalMs (default 30000)
//   --push-timeout-ms N       timeout of joins and pushes (default 5000)
//   --lifetime-ms N           hard bound: the process exits after this long (default 60000)
//   --frames                  also print every inbound frame as {"ev":"frame",...}
//
// Commands, one JSON object per line on stdin:
//   {"cmd":"push","id":"1","event":"mute","payload":{}}   -> {"ev":"reply","id":"1","status":...,"response":...}
//   {"cmd":"leave","id":"2"}                               -> {"ev":"reply","id":"2","status":"ok",...}
//   {"cmd":"disconnect","id":"3"}                          -> {"ev":"disconnected","id":"3"}
//   {"cmd":"exit"}                                         -> exits (so does closing stdin)
//
// Events, one JSON object per line on stdout: start, open, close, error, join, chan_error, chan_close,
// presence_state, presence_diff, sync, presence_join, presence_leave, heartbeat, reply, frame, exit.

import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    topic: { type: "string" },
    auth: { type: "string", default: "params" },
    "join-payload": { type: "string", default: "{}" },
    "reconnect-ms": { type: "string", default: "200" },
    "rejoin-ms": { type: "string", default: "200" },
    "heartbeat-ms": { type: "string", default: "30000" },
    "push-timeout-ms": { type: "string", default: "5000" },
    "lifetime-ms": { type: "string", default: "60000" },
    frames: { type: "boolean", default: false },
  },
});

function emit(event) {
  process.stdout.write(JSON.stringify({ t: Date.now(), ...event }) + "\n");
}

function finish(reason, code = 0) {
  emit({ ev: "exit", reason });
  process.exit(code);
}

if (!args.url) {
  emit({ ev: "fatal", message: "--url is required" });
  process.exit(2);
}
if (!["params", "authToken"].includes(args.auth)) {
  emit({ ev: "fatal", message: `--auth must be params or authToken, got ${args.auth}` });
  process.exit(2);
}

const token = process.env.VOXA_TOKEN || "";
const reconnectMs = Number(args["reconnect-ms"]);
const rejoinMs = Number(args["rejoin-ms"]);
const pushTimeout = Number(args["push-timeout-ms"]);

setTimeout(() => finish("lifetime"), Number(args["lifetime-ms"]));
process.on("uncaughtException", (err) => {
  emit({ ev: "fatal", message: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});

const opts = {
  transport: WebSocket,
  reconnectAfterMs: () => reconnectMs,
  rejoinAfterMs: () => rejoinMs,
  heartbeatIntervalMs: Number(args["heartbeat-ms"]),
  timeout: pushTimeout,
};
if (args.auth === "authToken") {
  if (token) opts.authToken = token;
} else if (token) {
  opts.params = { token };
}

const socket = new Socket(args.url, opts);
let opens = 0;
socket.onOpen(() => {
  opens += 1;
  emit({ ev: "open", n: opens, protocol: socket.conn ? socket.conn.protocol : null });
});
socket.onClose((event) => {
  emit({ ev: "close", code: event.code, reason: event.reason, wasClean: event.wasClean });
});
socket.onError((error) => {
  emit({ ev: "error", message: error && error.message ? error.message : String(error) });
});
socket.onMessage((msg) => {
  if (msg.topic === "phoenix" && msg.event === "phx_reply") {
    emit({ ev: "heartbeat", ref: msg.ref, status: msg.payload.status });
  }
  if (args.frames) {
    emit({ ev: "frame", frame: [msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload] });
  }
});

const metasOf = (presence) => (presence ? presence.metas : []);
let channel = null;
if (args.topic) {
  channel = socket.channel(args.topic, JSON.parse(args["join-payload"]));
  const presence = new Presence(channel);
  presence.onSync(() => {
    emit({ ev: "sync", join_ref: channel.joinRef(), list: presence.list((key, { metas }) => ({ key, metas })) });
  });
  presence.onJoin((key, current, joined) => {
    emit({ ev: "presence_join", key, had: metasOf(current).length, joined: metasOf(joined) });
  });
  presence.onLeave((key, current, left) => {
    emit({ ev: "presence_leave", key, remaining: metasOf(current).length, left: metasOf(left) });
  });
  channel.on("presence_state", (payload) => emit({ ev: "presence_state", payload }));
  channel.on("presence_diff", (payload) => emit({ ev: "presence_diff", payload }));
  channel.onError((reason) => emit({ ev: "chan_error", reason: reason === undefined ? null : reason }));
  channel.onClose(() => emit({ ev: "chan_close" }));
  channel
    .join(pushTimeout)
    .receive("ok", (response) => emit({ ev: "join", status: "ok", join_ref: channel.joinRef(), response }))
    .receive("error", (response) => emit({ ev: "join", status: "error", response }))
    .receive("timeout", () => emit({ ev: "join", status: "timeout" }));
}
socket.connect();
emit({ ev: "start", url: args.url, auth: args.auth, topic: args.topic || null });

function reply(id, push) {
  push
    .receive("ok", (response) => emit({ ev: "reply", id, status: "ok", response }))
    .receive("error", (response) => emit({ ev: "reply", id, status: "error", response }))
    .receive("timeout", () => emit({ ev: "reply", id, status: "timeout" }));
}

function command(cmd) {
  switch (cmd.cmd) {
    case "push":
      reply(cmd.id, channel.push(cmd.event, cmd.payload || {}, pushTimeout));
      break;
    case "leave":
      reply(cmd.id, channel.leave(pushTimeout));
      break;
    case "disconnect":
      socket.disconnect(() => emit({ ev: "disconnected", id: cmd.id }));
      break;
    case "exit":
      finish("exit command");
      break;
    default:
      emit({ ev: "fatal", message: `unknown command ${JSON.stringify(cmd)}` });
  }
}

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    emit({ ev: "fatal", message: `bad command line: ${line}` });
    return;
  }
  command(cmd);
});
input.on("close", () => finish("stdin closed"));
