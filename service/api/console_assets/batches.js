// The customer's batches, newest first, a page at a time (GET /v1/batches with its cursor).

import { api } from "./api.js";
import { badge, h, num, replace, when } from "./dom.js";

const PAGE_SIZE = 20;
const STATUSES = ["", "pending", "running", "completed", "partially_failed", "failed", "cancelled"];

export function renderBatches(root, signal) {
  const state = { cursors: [null], status: "" };
  const error = h("div", { class: "alert", role: "alert" });
  const body = h("tbody");
  const info = h("p", { class: "muted", "aria-live": "polite", id: "batches-info" });
  const prev = h("button", { type: "button", class: "secondary", id: "prev-page" }, "Newer");
  const next = h("button", { type: "button", class: "secondary", id: "next-page" }, "Older");
  const filter = h(
    "select",
    { id: "batch-status-filter" },
    STATUSES.map((s) => h("option", { value: s }, s ? s.replace("_", " ") : "any status")),
  );

  async function load() {
    const cursor = state.cursors[state.cursors.length - 1];
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (state.status) query.set("status", state.status);
    if (cursor) query.set("cursor", cursor);
    prev.disabled = next.disabled = true;
    try {
      const page = await api(`/v1/batches?${query}`, { signal });
      error.textContent = "";
      replace(body, page.data.length ? page.data.map(row) : h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No batches yet. ", h("a", { href: "#/new" }, "Start one"), ".")));
      state.next = page.next_cursor;
      prev.disabled = state.cursors.length === 1;
      next.disabled = !page.next_cursor;
      info.textContent = `Page ${state.cursors.length} · ${page.data.length} batch${page.data.length === 1 ? "" : "es"}`;
    } catch (exc) {
      if (signal.aborted) return;
      error.textContent = `Could not load batches: ${exc.message}`;
    }
  }

  prev.addEventListener("click", () => { state.cursors.pop(); load(); });
  next.addEventListener("click", () => { if (state.next) { state.cursors.push(state.next); load(); } });
  filter.addEventListener("change", () => { state.status = filter.value; state.cursors = [null]; load(); });

  replace(
    root,
    h("h1", { tabindex: "-1" }, "Batches"),
    h("div", { class: "row" },
      h("a", { href: "#/new", class: "button", id: "new-batch-link" }, "New batch"),
      h("label", { for: "batch-status-filter" }, "Status"), filter,
    ),
    error,
    h("table", { id: "batches" },
      h("caption", { class: "visually-hidden" }, "Your batches, newest first"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Batch"),
        h("th", { scope: "col" }, "Created"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col", class: "num" }, "Items"),
        h("th", { scope: "col", class: "num" }, "Succeeded"),
        h("th", { scope: "col", class: "num" }, "Failed"),
        h("th", { scope: "col", class: "num" }, "Pages billed"),
      )),
      body,
    ),
    h("nav", { class: "row", "aria-label": "Pages of batches" }, prev, next, info),
  );
  load();
}

function row(batch) {
  return h("tr", { "data-batch-id": batch.id },
    h("td", {}, h("a", { href: `#/batches/${batch.id}`, class: "mono" }, batch.id)),
    h("td", {}, when(batch.created_at)),
    h("td", {}, badge(batch.status)),
    h("td", { class: "num" }, num(batch.total_items)),
    h("td", { class: "num" }, num(batch.counts.succeeded)),
    h("td", { class: "num" }, num(batch.counts.failed)),
    h("td", { class: "num" }, num(batch.pages_billed)),
  );
}
