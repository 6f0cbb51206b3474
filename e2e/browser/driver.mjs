// Headless Chromium peers for Voxa's tests, driven from Python (e2e/browser/harness.py).
//
// Usage: node e2e/browser/driver.mjs CONFIG.json
//   {
//     "executablePath": "/usr/bin/chromium",
//     "url": "http://127.0.0.1:PORT/index.html",     the test page (window.voxaTest)
//     "browsers": [{"args": ["--use-file-for-fake-audio-capture=/tmp/x/tone-440.wav", ...]}, ...],
//     "pages": [0, 1],                                 browser index of each page, in page order
//     "permissions": ["microphone", "camera"],        granted to every page's browser context
//     "launchTimeoutMs": 30000, "callTimeoutMs": 20000, "lifetimeMs": 600000
//   }
// One Chromium process per entry of "browsers" (the fake microphone file is a per-process flag); each
// page gets its own browser context (own cookies, permissions, media devices) in its browser.
//
// Commands, one JSON object per line on stdin:
//   {"id":1,"page":0,"call":"createOffer","args":[{}],"timeoutMs":5000}  window.voxaTest.createOffer(...)
//   {"id":2,"page":0,"call":"$screenshot","args":["/tmp/x/shot.png"]}    page.screenshot({path})
//   {"id":3,"page":0,"call":"$evaluate","args":["document.title"]}       page.evaluate(expression)
//   {"id":5,"page":0,"call":"$goto","args":["http://127.0.0.1:4000/?token=..."]}  page.goto(url): another
//                                                                          page (window.voxaTest is gone)
//   {"id":6,"page":0,"call":"$viewport","args":[390, 844]}                 page.setViewportSize
//   {"id":7,"page":0,"call":"$grant","args":[["notifications"]]}          context.grantPermissions for the page's origin
//   {"id":8,"page":0,"call":"$swPush","args":["{...}"]}                   delivers a push message to the service
//                      worker registered for the page's origin (DevTools ServiceWorker.deliverPushMessage)
//   {"id":9,"page":0,"call":"$swEvaluate","args":["self.registration.scope"]} evaluates in the service worker
//                      of the page's origin (awaits a promise)
//   {"id":4,"call":"$exit"}                                                closes the browsers and exits
// Replies: {"id":1,"ok":true,"result":...} or {"id":1,"ok":false,"error":"message"}.
// Events: {"event":"ready","pages":N,"version":"..."}, {"event":"console","page":0,"level":"log","text":...},
//         {"event":"pageerror",...}, {"event":"crash",...}, {"event":"fatal","message":...}, {"event":"exit"}.
// Closing stdin also closes the browsers and exits; so does the "lifetimeMs" hard bound.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const callTimeoutMs = config.callTimeoutMs ?? 20000;
const browsers = [];
const pages = [];
let exiting = false;

let stdoutClosed = false;

function emit(message) {
  if (stdoutClosed) return;
  process.stdout.write(JSON.stringify(message) + "\n");
}

// Python went away (stdout is a broken pipe): nobody is listening, so close the browsers and leave.
process.stdout.on("error", () => {
  stdoutClosed = true;
  shutdown("stdout closed");
});

async function shutdown(reason, code = 0) {
  if (exiting) return;
  exiting = true;
  const closing = browsers.map((browser) => browser.close().catch(() => {}));
  await Promise.race([Promise.all(closing), new Promise((resolve) => setTimeout(resolve, 5000))]);
  emit({ event: "exit", reason });
  process.exit(code);
}

process.on("uncaughtException", (err) => {
  emit({ event: "fatal", message: String(err && err.stack ? err.stack : err) });
  shutdown("uncaughtException", 1);
});
process.on("unhandledRejection", (err) => {
  emit({ event: "fatal", message: String(err && err.stack ? err.stack : err) });
});
process.on("SIGTERM", () => shutdown("SIGTERM"));
setTimeout(() => shutdown("lifetime", 3), config.lifetimeMs ?? 600000).unref();

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function attach(page, index) {
  page.on("console", (msg) => emit({ event: "console", page: index, level: msg.type(), text: msg.text() }));
  page.on("pageerror", (err) => emit({ event: "pageerror", page: index, text: String(err.stack || err) }));
  page.on("crash", () => emit({ event: "crash", page: index }));
  page.on("requestfailed", (req) =>
    emit({ event: "requestfailed", page: index, text: `${req.url()} ${req.failure()?.errorText ?? ""}` }),
  );
}

async function launch() {
  for (const spec of config.browsers) {
    const browser = await chromium.launch({
      executablePath: config.executablePath,
      headless: true,
      args: spec.args,
      timeout: config.launchTimeoutMs ?? 30000,
    });
    browser.on("disconnected", () => {
      if (!exiting) emit({ event: "fatal", message: "a Chromium process disconnected" });
    });
    browsers.push(browser);
  }
  for (const [index, browserIndex] of config.pages.entries()) {
    const context = await browsers[browserIndex].newContext({
      viewport: { width: 640, height: 480 },
      permissions: config.permissions ?? ["microphone", "camera"],
    });
    const page = await context.newPage();
    attach(page, index);
    await page.goto(config.url, { timeout: config.launchTimeoutMs ?? 30000 });
    await page.waitForFunction(() => window.voxaTestReady === true, null, { timeout: 10000 });
    pages.push(page);
  }
  emit({ event: "ready", pages: pages.length, version: browsers[0]?.version() ?? null });
}

async function run(command) {
  const { call, args = [] } = command;
  if (call === "$exit") {
    await shutdown("exit command");
    return null;
  }
  const page = pages[command.page];
  if (!page) throw new Error(`no page ${command.page} (there are ${pages.length})`);
  if (call === "$screenshot") {
    await page.screenshot({ path: args[0], fullPage: true });
    return args[0];
  }
  if (call === "$evaluate") return await page.evaluate(args[0]);
  if (call === "$goto") {
    const response = await page.goto(args[0], { timeout: config.launchTimeoutMs ?? 30000 });
    return { url: page.url(), status: response ? response.status() : null };
  }
  if (call === "$grant") {
    await page.context().grantPermissions(args[0], { origin: new URL(page.url()).origin });
    return args[0];
  }
  if (call === "$swPush") return await deliverPush(page, args[0]);
  if (call === "$swEvaluate") {
    const origin = new URL(page.url()).origin;
    const worker = page.context().serviceWorkers().find((w) => w.url().startsWith(origin));
    if (!worker) throw new Error(`no service worker for ${origin}`);
    return await worker.evaluate(args[0]);
  }
  if (call === "$viewport") {
    await page.setViewportSize({ width: args[0], height: args[1] });
    return page.viewportSize();
  }
  return await page.evaluate(
    async ([name, params]) => {
      const api = window.voxaTest;
      if (!api || typeof api[name] !== "function") throw new Error(`window.voxaTest.${name} is not a function`);
      const result = await api[name](...params);
      return result === undefined ? null : result;
    },
    [call, args],
  );
}

// A push message straight into the page origin's service worker, as a push service would deliver it.
async function deliverPush(page, data) {
  const origin = new URL(page.url()).origin;
  const cdp = await page.context().newCDPSession(page);
  try {
    const registrations = new Map();
    cdp.on("ServiceWorker.workerRegistrationUpdated", (event) => {
      for (const r of event.registrations) registrations.set(r.registrationId, r);
    });
    await cdp.send("ServiceWorker.enable");
    const deadline = Date.now() + 10000;
    let found = null;
    while (!found) {
      found = [...registrations.values()].find((r) => !r.isDeleted && r.scopeURL.startsWith(origin));
      if (found) break;
      if (Date.now() > deadline) throw new Error(`no service worker registration for ${origin}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await cdp.send("ServiceWorker.deliverPushMessage", { origin, registrationId: found.registrationId, data });
    return { registrationId: found.registrationId, scope: found.scopeURL };
  } finally {
    await cdp.detach().catch(() => {});
  }
}

async function handle(line) {
  let command;
  try {
    command = JSON.parse(line);
  } catch (err) {
    emit({ event: "fatal", message: `bad command line: ${line.slice(0, 200)}` });
    return;
  }
  const ms = command.timeoutMs ?? callTimeoutMs;
  try {
    const result = await withTimeout(run(command), ms);
    emit({ id: command.id, ok: true, result });
  } catch (err) {
    // page.evaluate prefixes errors thrown in the page with "page.evaluate: "; keep the message only.
    const message = String(err && err.message ? err.message : err)
      .split("\n    at ")[0]
      .replace(/^page\.evaluate: /, "");
    emit({ id: command.id, ok: false, error: message });
  }
}

try {
  await launch();
} catch (err) {
  emit({ event: "fatal", message: `launch failed: ${String(err && err.stack ? err.stack : err)}` });
  await shutdown("launch failed", 1);
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (line.trim()) handle(line);
});
rl.on("close", () => shutdown("stdin closed"));
