// Voxa's service worker: incoming-call notifications from Web Push, for a callee whose page is closed
// or in the background (served at /sw.js so its scope covers the page at /).
//
// Push payloads (JSON): {"type": "call_started" | "stop_ringing", "call_id", "caller": {"id", "name"},
// "video", "expires_at", "reason"}. A ring is a notification tagged `call-<call_id>` that stays until
// acted on; the follow-up `stop_ringing` closes it (or turns it into a missed-call notice on a timeout).
// Clicking it (or its Answer action) opens or focuses the page with ?answer=<call_id>; Decline tells an
// open page to decline, or opens one with ?decline=<call_id>.

const tagOf = (callId) => `call-${callId}`;

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function readPush(event) {
  if (!event.data) return null;
  try {
    const data = event.data.json();
    return data && typeof data === "object" && typeof data.call_id === "string" ? data : null;
  } catch {
    return null;
  }
}

async function closeRing(callId) {
  const shown = await self.registration.getNotifications({ tag: tagOf(callId) });
  for (const notification of shown) notification.close();
  return shown.length;
}

async function onPush(data) {
  const caller = (data.caller && (data.caller.name || data.caller.id)) || "Someone";
  if (data.type === "call_started") {
    if (data.expires_at && data.expires_at < Date.now()) return; // delivered after the ring ended
    await self.registration.showNotification(`${caller} is calling`, {
      body: data.video ? "Incoming video call" : "Incoming call",
      tag: tagOf(data.call_id),
      renotify: true,
      requireInteraction: true,
      actions: [
        { action: "answer", title: "Answer" },
        { action: "decline", title: "Decline" },
      ],
      data: { call_id: data.call_id, caller: data.caller || null },
    });
  } else if (data.type === "stop_ringing") {
    await closeRing(data.call_id);
    if (data.reason === "timeout") {
      await self.registration.showNotification(`Missed call from ${caller}`, {
        tag: tagOf(data.call_id),
        data: { call_id: data.call_id, missed: true },
      });
    }
  }
}

self.addEventListener("push", (event) => {
  const data = readPush(event);
  if (data) event.waitUntil(onPush(data));
});

async function pageClients() {
  const all = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const scope = new URL(self.registration.scope);
  return all.filter((c) => new URL(c.url).origin === scope.origin);
}

async function onClick(notification, action) {
  const data = notification.data || {};
  notification.close();
  if (!data.call_id || data.missed) {
    const [page] = await pageClients();
    return page ? page.focus() : self.clients.openWindow("/");
  }
  const kind = action === "decline" ? "decline" : "answer";
  const pages = await pageClients();
  if (pages.length > 0) {
    // An open page answers or declines on its own socket (app.js listens for these messages).
    const page = pages[0];
    page.postMessage({ type: kind, call_id: data.call_id });
    // Focus is only allowed while handling a click; the answer is already on its way either way.
    if (kind === "answer") return page.focus().catch(() => page);
    return undefined;
  }
  return self.clients.openWindow(`/?${kind}=${encodeURIComponent(data.call_id)}`);
}

self.addEventListener("notificationclick", (event) => {
  event.waitUntil(onClick(event.notification, event.action));
});

// The handlers by name, so a test can run them in this worker without a push service or a click.
self.voxaSw = { onPush, onClick, closeRing };
