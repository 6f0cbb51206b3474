// A scriptable peer on the OFFICIAL phoenix JS client that holds several channels on one socket, as a
// calling device does: `user:<me>` for the call events and `call:<id>` for the call's media and Presence.
// client.mjs speaks one topic per process; a call needs two on the same socket, hence this script.
//
// Usage: node e2e/js/multi.mjs --url ws://127.0.0.1:PORT/socket [--lifetime-ms N] [--push-timeout-ms N]
// The token comes from the VOXA_TOKEN environment variable (never argv).
//
// Commands, one JSON object per line on stdin (each answered with an event carrying the same id):
//   {"cmd":"join","id":"1","topic":"user:bob","payload":{"device_id":"bob-1"}} -> {"ev":"join","id","topic","status","response"}
//   {"cmd":"push","id":"2","topic":"user:bob","event":"answer_call","payload":{...}} -> {"ev":"reply","id","topic","status","response"}
//   {"cmd":"leave","id":"3","topic":"call:..."}                                   -> {"ev":"reply","id","topic","status"}
//   {"cmd":"exit"}
//
// Events on stdout: open, close, error, join, reply, msg ({"topic","event","payload"} for every server
// push that is not a reply), sync ({"topic","list"} from each channel's Presence), exit.

import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    "push-timeout-ms": { type: "string", default: "5000" },
    "lifetime-ms": { type: "string", default: "60000" },
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
const pushTimeout = Number(args["push-timeout-ms"]);
setTimeout(() => finish("lifetime"), Number(args["lifetime-ms"]));
process.on("uncaughtException", (err) => {
  emit({ ev: "fatal", message: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});

const token = process.env.VOXA_TOKEN || "";
const socket = new Socket(args.url, {
  transport: WebSocket,
  params: token ? { token } : {},
  reconnectAfterMs: () => 200,
  rejoinAfterMs: () => 200,
  timeout: pushTimeout,
});
socket.onOpen(() => emit({ ev: "open" }));
socket.onClose((event) => emit({ ev: "close", code: event.code }));
socket.onError((error) => emit({ ev: "error", message: error && error.message ? error.message : String(error) }));
socket.onMessage((msg) => {
  if (msg.event === "phx_reply" || msg.topic === "phoenix") return;
  emit({ ev: "msg", topic: msg.topic, event: msg.event, payload: msg.payload });
});

const channels = new Map(); // topic -> Channel

function answer(kind, id, topic, push) {
  push
    .receive("ok", (response) => emit({ ev: kind, id, topic, status: "ok", response }))
    .receive("error", (response) => emit({ ev: kind, id, topic, status: "error", response }))
    .receive("timeout", () => emit({ ev: kind, id, topic, status: "timeout" }));
}

function join(cmd) {
  const channel = socket.channel(cmd.topic, cmd.payload || {});
  channels.set(cmd.topic, channel);
  const presence = new Presence(channel);
  presence.onSync(() => {
    emit({ ev: "sync", topic: cmd.topic, list: presence.list((key, { metas }) => ({ key, metas })) });
  });
  answer("join", cmd.id, cmd.topic, channel.join(pushTimeout));
}

function command(cmd) {
  const channel = channels.get(cmd.topic);
  switch (cmd.cmd) {
    case "join":
      join(cmd);
      break;
    case "push":
    case "leave":
      if (!channel) {
        emit({ ev: "reply", id: cmd.id, topic: cmd.topic, status: "error", response: { reason: "not joined here" } });
      } else if (cmd.cmd === "push") {
        answer("reply", cmd.id, cmd.topic, channel.push(cmd.event, cmd.payload || {}, pushTimeout));
      } else {
        channels.delete(cmd.topic);
        answer("reply", cmd.id, cmd.topic, channel.leave(pushTimeout));
      }
      break;
    case "exit":
      finish("exit command");
      break;
    default:
      emit({ ev: "fatal", message: `unknown command ${JSON.stringify(cmd)}` });
  }
}

socket.connect();
emit({ ev: "start", url: args.url });

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  try {
    command(JSON.parse(line));
  } catch (err) {
    emit({ ev: "fatal", message: `bad command line: ${line}` });
  }
});
input.on("close", () => finish("stdin closed"));
