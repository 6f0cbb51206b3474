// A raw `ws` socket that opens and then never sends a frame: the server's idle timeout must close it.
//
// Usage: VOXA_TOKEN=<jwt> node e2e/js/raw_idle.mjs --url ws://127.0.0.1:PORT/socket/websocket [--lifetime-ms N]
// Prints {"ev":"open"}, then {"ev":"close","code":...,"reason":...} (or {"ev":"error",...}) and exits after
// the close, or after --lifetime-ms (default 15000) with {"ev":"exit","reason":"lifetime"}.

import { parseArgs } from "node:util";
import WebSocket from "ws";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    "lifetime-ms": { type: "string", default: "15000" },
  },
});

function emit(event) {
  process.stdout.write(JSON.stringify({ t: Date.now(), ...event }) + "\n");
}

function finish(reason) {
  emit({ ev: "exit", reason });
  process.exit(0);
}

const url = new URL(args.url);
url.searchParams.set("vsn", "2.0.0");
if (process.env.VOXA_TOKEN) url.searchParams.set("token", process.env.VOXA_TOKEN);

setTimeout(() => finish("lifetime"), Number(args["lifetime-ms"]));
const ws = new WebSocket(url);
ws.on("open", () => emit({ ev: "open" }));
ws.on("message", (data) => emit({ ev: "message", data: data.toString() }));
ws.on("error", (err) => emit({ ev: "error", message: err.message }));
ws.on("close", (code, reason) => {
  emit({ ev: "close", code, reason: reason.toString() });
  finish("closed");
});
