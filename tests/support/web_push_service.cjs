// The npm package web-push-testing's push service (RFC 8030 delivery, RFC 8291 decryption, VAPID
// checks), run for Voxa's tests with two changes its CLI cannot make: it listens on 127.0.0.1 only
// (its CLI binds every interface) and it also records the headers of each push it accepts or refuses
// (TTL, Urgency, Topic, and when it arrived: bench/calls.py's push latency), which the package does
// not keep. Usage: node web_push_service.cjs PORT
"use strict";
const http = require("http");
const path = require("path");

const root = path.dirname(require.resolve("web-push-testing/package.json", {
  paths: [path.resolve(__dirname, "..", "..")],
}));
const TestingServer = require(path.join(root, "src", "server.js"));
const { PushApiModel } = require(path.join(root, "src", "PushApiModel.js"));

const port = Number(process.argv[2]);
const model = new PushApiModel();
const server = new TestingServer(model, port);
model.notifyUrl = `http://127.0.0.1:${port}/notify/`;

const headersSeen = {};
const app = server._app;
app.use((req, res, next) => {
  const match = req.method === "POST" && /^\/notify\/([0-9a-f]+)$/.exec(req.path);
  if (match) {
    (headersSeen[match[1]] = headersSeen[match[1]] || []).push({
      ttl: req.get("TTL") ?? null,
      urgency: req.get("Urgency") ?? null,
      topic: req.get("Topic") ?? null,
      vapid: (req.get("Authorization") || "").startsWith("vapid "),
      received_at: Date.now(),
    });
  }
  next();
});
app.post("/voxa/headers", (req, res) => {
  res.status(200).send({ data: headersSeen[req.body.clientHash] || [] });
});
app.listen = (listenPort, callback) => http.createServer(app).listen(listenPort, "127.0.0.1", callback);
server.startServer();
