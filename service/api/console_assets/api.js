// The console's only door to the server: the public API with the key in the X-API-KEY header.
// The key lives in this tab's sessionStorage; it is never put in a cookie or a URL, and every
// request is made with credentials: "omit" so no cookie of this origin is ever sent either.

const KEY_SLOT = "pagelane.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_SLOT);
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_SLOT, key);
}

export function clearApiKey() {
  sessionStorage.removeItem(KEY_SLOT);
}

export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.message) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body || {};
    this.code = this.body.error || `http_${status}`;
  }
}

// Listeners told when the server refuses the key (401): the app signs out.
const unauthorizedListeners = [];
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

function headersWith(extra, key) {
  const headers = { Accept: "application/json", ...extra };
  const value = key === undefined ? apiKey() : key;
  if (value) headers["X-API-KEY"] = value;
  return headers;
}

async function readBody(response) {
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }
  return null;
}

// A JSON call: resolves to the parsed body, rejects with ApiError.
export async function api(path, { method = "GET", body, headers = {}, key, signal } = {}) {
  const init = {
    method,
    headers: headersWith(headers, key),
    credentials: "omit",
    cache: "no-store",
    signal,
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await readBody(response);
  if (!response.ok) {
    if (response.status === 401 && key === undefined) {
      unauthorizedListeners.forEach((listener) => listener());
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

// Fetch an authenticated download and hand it to the browser as a file.
export async function download(path, fallbackName) {
  const response = await fetch(path, {
    headers: headersWith({ Accept: "*/*" }),
    credentials: "omit",
    cache: "no-store",
  });
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const anchor = document.createElement("a");
  anchor.href = url;
  anchor.download = match ? match[1] : fallbackName;
  anchor.hidden = true;
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return anchor.download;
}

// What this server offers beyond the core API, read once from its OpenAPI document.
let featuresPromise = null;
export function features() {
  if (!featuresPromise) {
    featuresPromise = fetch("/openapi.json", { credentials: "omit", cache: "no-store" })
      .then((response) => (response.ok ? response.json() : { paths: {} }))
      .catch(() => ({ paths: {} }))
      .then((doc) => {
        const paths = doc.paths || {};
        const has = (path, method) => Boolean(paths[path] && paths[path][method]);
        return {
          events: has("/v1/batches/{batch_id}/events", "get"),
          retry: has("/v1/batches/{batch_id}/retry", "post"),
          quotes: has("/v1/quotes", "post"),
          markdown: has("/v1/batches/{batch_id}/items/{item_id}/result.md", "get"),
        };
      });
  }
  return featuresPromise;
}

// Idempotency keys and other unguessable ids (crypto.randomUUID needs a secure context;
// getRandomValues does not).
export function randomId(prefix = "console") {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return prefix + "-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Server-Sent Events over fetch(): EventSource cannot send the X-API-KEY header.
// Calls onEvent(event) per parsed event; resolves "ended" when the server closes the stream,
// "unsupported" on a 404 (no such endpoint on this server); rejects on other failures.
export async function streamEvents(batchId, { lastEventId, onEvent, signal }) {
  const headers = headersWith({ Accept: "text/event-stream" });
  if (lastEventId !== undefined && lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(`/v1/batches/${encodeURIComponent(batchId)}/events`, {
    headers,
    credentials: "omit",
    cache: "no-store",
    signal,
  });
  // No such endpoint on this server (or no such batch: the poll that follows will say so).
  if (response.status === 404 || response.status === 405) return "unsupported";
  if (!response.ok || !response.body) throw new ApiError(response.status, await readBody(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, type: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      let line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (event.data.length) {
          let parsed = null;
          try {
            parsed = JSON.parse(event.data.join("\n"));
          } catch {
            parsed = null;
          }
          if (parsed) onEvent({ id: event.id, type: event.type, payload: parsed });
        }
        event = { id: null, type: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue; // keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "data") event.data.push(text);
      else if (field === "id") event.id = text;
      else if (field === "event") event.type = text;
    }
  }
  return "ended";
}
