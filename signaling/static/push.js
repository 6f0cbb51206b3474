// Web Push for calls: the page registers the service worker (sw.js, scope "/") and, when the server
// offers push (`GET /push/vapid-public-key`; 404 when it is not configured), subscribes and registers the
// subscription as this device (`POST /push/devices`). A callee whose page is closed is then rung by a
// notification. Everything here is optional: any failure leaves calls on the open page working.

function base64UrlToBytes(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

// The key as the endpoint sends it: a JSON object naming it, or the bare base64url text.
async function readKey(response) {
  const text = (await response.text()).trim();
  try {
    const body = JSON.parse(text);
    if (typeof body === "string") return body;
    return body.public_key || body.vapid_public_key || body.key || null;
  } catch {
    return text || null;
  }
}

/** The service worker's registration, or null where the browser has none (or the page is not secure). */
export async function registerServiceWorker() {
  if (!("serviceWorker" in navigator) || !window.isSecureContext) return null;
  return navigator.serviceWorker.register("/sw.js", { scope: "/" });
}

/**
 * Register the service worker, and for Web Push when the server offers it.
 * @returns {Promise<string>} what happened: "no-service-worker", "not-offered", "denied", "registered"
 */
export async function registerPush({ token, deviceId, log }) {
  const registration = await registerServiceWorker();
  if (!registration) return "no-service-worker";
  const keyResponse = await fetch("/push/vapid-public-key", { cache: "no-store" });
  if (keyResponse.status === 404) return "not-offered"; // push is not configured: nothing to do
  if (!keyResponse.ok) throw new Error(`GET /push/vapid-public-key answered ${keyResponse.status}`);
  const key = await readKey(keyResponse);
  if (!key) throw new Error("GET /push/vapid-public-key sent no key");
  if (!registration.pushManager) return "no-service-worker";
  if (typeof Notification !== "undefined" && Notification.permission === "default") {
    await Notification.requestPermission();
  }
  if (typeof Notification !== "undefined" && Notification.permission === "denied") return "denied";
  await navigator.serviceWorker.ready;
  const subscription = await registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: base64UrlToBytes(key),
  });
  const response = await fetch("/push/devices", {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ device_id: deviceId, kind: "webpush", subscription: subscription.toJSON() }),
  });
  if (!response.ok) throw new Error(`POST /push/devices answered ${response.status}: ${(await response.text()).slice(0, 200)}`);
  log("web push registered for device", deviceId);
  return "registered";
}
