// One batch, live: from the event stream when the server has one (fetch() streaming, so the key
// travels in a header), else by cursor polling. Counts, progress in pages, the items with
// their errors, cancel, retry-failed, and every download.

import { api, ApiError, download, features, randomId, streamEvents } from "./api.js";
import { announce, refreshAccount } from "./app.js";
import { badge, duration, h, num, replace, sleep, when } from "./dom.js";

const TERMINAL = new Set(["completed", "partially_failed", "failed", "cancelled"]);
const ITEM_STATUSES = ["pending", "running", "succeeded", "failed", "cancelled"];
const POLL_LIMIT = 500;
const POLL_INTERVAL_MS = 1000;
const ROWS_STEP = 200;

// file_id → file name: known for files this tab uploaded, looked up for the rest on demand.
const fileNames = new Map();
const lookups = new Set();

export function rememberNames(pairs) {
  for (const [id, name] of pairs) fileNames.set(id, name);
}

export function renderBatch(root, batchId, signal) {
  const items = new Map();
  const state = { batch: null, filter: "", shown: ROWS_STEP, mode: "", done: false };
  let scheduled = false;

  const heading = h("h1", { tabindex: "-1" }, "Batch ", h("span", { class: "mono" }, batchId));
  const error = h("div", { class: "alert", role: "alert", id: "batch-error" });
  const summary = h("p", { id: "batch-summary" });
  const counts = h("ul", { class: "counts", id: "batch-counts", "aria-label": "Item counts" });
  const progress = h("progress", { id: "batch-progress", max: "1", "aria-labelledby": "batch-progress-label" });
  const progressLabel = h("span", { id: "batch-progress-label", "aria-live": "polite" }, "Loading…");
  const mode = h("span", { class: "muted", id: "live-mode" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel-batch", hidden: true }, "Cancel batch");
  const retry = h("button", { type: "button", class: "secondary", id: "retry-failed", hidden: true }, "Retry failed items");
  const zip = h("button", { type: "button", id: "download-zip" }, "Download all results (zip)");
  const csv = h("button", { type: "button", class: "secondary", id: "download-errors", hidden: true }, "Errors (CSV)");
  const filter = h(
    "select",
    { id: "item-filter" },
    h("option", { value: "" }, "all"),
    ITEM_STATUSES.map((s) => h("option", { value: s }, s)),
  );
  const body = h("tbody");
  const more = h("button", { type: "button", class: "secondary", id: "show-more", hidden: true }, "Show more");
  const shownInfo = h("span", { class: "muted", id: "items-shown" });

  filter.addEventListener("change", () => { state.filter = filter.value; state.shown = ROWS_STEP; schedule(); });
  more.addEventListener("click", () => { state.shown += ROWS_STEP; schedule(); });
  zip.addEventListener("click", () => guarded(zip, async () => {
    const name = await download(`/v1/batches/${batchId}/results.zip`, `${batchId}-results.zip`);
    announce(`Downloaded ${name}.`);
  }));
  csv.addEventListener("click", () => guarded(csv, async () => {
    const name = await download(`/v1/batches/${batchId}/errors.csv`, `${batchId}-errors.csv`);
    announce(`Downloaded ${name}.`);
  }));
  cancel.addEventListener("click", () => guarded(cancel, async () => {
    const batch = await api(`/v1/batches/${batchId}/cancel`, { method: "POST", signal });
    state.batch = { ...state.batch, ...batch };
    announce("Cancel requested: pending items are cancelled, running ones finish.");
    schedule();
  }));
  retry.addEventListener("click", () => guarded(retry, async () => {
    try {
      const child = await api(`/v1/batches/${batchId}/retry`, {
        method: "POST",
        body: {},
        headers: { "Idempotency-Key": retry.dataset.key || (retry.dataset.key = randomId("retry")) },
        signal,
      });
      announce(`Retry batch ${child.id} created.`);
      location.hash = `#/batches/${child.id}`;
    } catch (exc) {
      if (exc.code === "nothing_to_retry") announce("Nothing to retry: no item failed with a retryable error.");
      else throw exc;
    }
  }));

  async function guarded(button, action) {
    button.disabled = true;
    try {
      error.textContent = "";
      await action();
    } catch (exc) {
      if (!signal.aborted) error.textContent = `${button.textContent} failed: ${exc.message}`;
    } finally {
      button.disabled = false;
    }
  }

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; if (!signal.aborted) render(); });
  }

  function countsNow() {
    // Item events carry no batch counts: count the items themselves once all are known.
    const batch = state.batch;
    if (items.size < batch.total_items) return batch.counts;
    const tally = Object.fromEntries(ITEM_STATUSES.map((s) => [s, 0]));
    for (const item of items.values()) tally[item.status] += 1;
    return tally;
  }

  function render() {
    const batch = state.batch;
    if (!batch) return;
    const tally = countsNow();
    replace(summary,
      badge(batch.status), ` · ${num(batch.total_items)} items · created ${when(batch.created_at)}`,
      batch.completed_at ? ` · finished ${when(batch.completed_at)}` : "",
      ` · ${num(batch.pages_billed)} pages billed`,
      batch.parent_batch_id ? h("span", {}, " · retry of ", h("a", { href: `#/batches/${batch.parent_batch_id}`, class: "mono" }, batch.parent_batch_id)) : "",
    );
    replace(counts, ITEM_STATUSES.map((s) => h("li", { "data-status": s }, h("strong", {}, num(tally[s])), s)));

    let pagesTotal = 0;
    let pagesDone = 0;
    let finished = 0;
    for (const item of items.values()) {
      const terminal = !["pending", "running"].includes(item.status);
      if (terminal) finished += 1;
      if (item.page_count) {
        pagesTotal += item.page_count;
        pagesDone += terminal ? item.page_count : Math.min(item.pages_done || 0, item.page_count);
      }
    }
    if (TERMINAL.has(batch.status)) finished = batch.total_items;
    if (pagesTotal > 0 || TERMINAL.has(batch.status)) {
      progress.max = String(Math.max(pagesTotal, 1));
      progress.value = String(TERMINAL.has(batch.status) ? Math.max(pagesTotal, 1) : pagesDone);
    } else {
      progress.removeAttribute("value"); // indeterminate until page counts are known
    }
    progressLabel.textContent = `${num(pagesDone)} of ${num(pagesTotal)} pages extracted · ${num(finished)} of ${num(batch.total_items)} items finished`;

    const terminal = TERMINAL.has(batch.status);
    cancel.hidden = terminal || Boolean(batch.cancel_requested_at);
    csv.hidden = !(tally.failed > 0 || tally.cancelled > 0);
    retry.hidden = !(state.features && state.features.retry && terminal && (tally.failed > 0 || tally.cancelled > 0));
    zip.disabled = !(tally.succeeded > 0);

    const rows = Array.from(items.values())
      .filter((item) => !state.filter || item.status === state.filter)
      .sort((a, b) => a.position - b.position);
    const visible = rows.slice(0, state.shown);
    replace(body, visible.length ? visible.map(itemRow) : h("tr", {}, h("td", { colspan: "7", class: "muted" }, items.size ? "No item has this status." : "Loading items…")));
    more.hidden = rows.length <= state.shown;
    shownInfo.textContent = `Showing ${visible.length} of ${rows.length} item${rows.length === 1 ? "" : "s"}`;
    lookUpNames(visible);
  }

  function itemRow(item) {
    const name = fileNames.get(item.file_id);
    const err = item.error;
    const actions = [];
    if (item.status === "succeeded") {
      actions.push(
        h("button", { type: "button", class: "link", "aria-label": `Download result of ${name || item.id} as JSON`, onClick: (event) => guarded(event.currentTarget, () => download(`/v1/batches/${batchId}/items/${item.id}/result?inline=true`, `${item.id}.json`)) }, "JSON"),
        h("button", { type: "button", class: "link", "aria-label": `Download result of ${name || item.id} as Markdown`, onClick: (event) => guarded(event.currentTarget, () => download(`/v1/batches/${batchId}/items/${item.id}/result.md?download=true`, `${item.id}.md`)) }, "Markdown"),
      );
    }
    return h("tr", { "data-item-id": item.id, "data-status": item.status },
      h("td", { class: "num" }, String(item.position + 1)),
      h("td", {}, name || h("span", { class: "mono" }, item.file_id)),
      h("td", {}, badge(item.status)),
      h("td", { class: "num" }, item.page_count == null ? "—" : item.status === "running" ? `${item.pages_done}/${item.page_count}` : num(item.page_count)),
      h("td", { class: "num" }, duration(item.started_at, item.completed_at)),
      h("td", { class: "item-error" }, err ? [h("code", { class: "error-code" }, err.code), " ", h("span", { class: "error-message" }, err.message)] : ""),
      h("td", {}, actions),
    );
  }

  async function lookUpNames(visible) {
    const wanted = visible.map((i) => i.file_id).filter((id) => !fileNames.has(id) && !lookups.has(id)).slice(0, 50);
    for (const id of wanted) lookups.add(id);
    for (const id of wanted) {
      if (signal.aborted) return;
      try {
        const file = await api(`/v1/files/${encodeURIComponent(id)}`, { signal });
        fileNames.set(id, file.filename || id);
      } catch {
        fileNames.set(id, id); // expired or deleted: show the id
      }
    }
    if (wanted.length) schedule();
  }

  function applyItem(item) {
    const known = items.get(item.id);
    // Events and polls may overlap: never let an older state replace a newer one.
    if (known && known.updated_at > item.updated_at) return;
    items.set(item.id, item);
  }

  function applyBatch(batch) {
    const { items: page, next_cursor: _cursor, ...rest } = batch;
    state.batch = { ...(state.batch || {}), ...rest };
    if (page) page.forEach(applyItem);
  }

  async function poll() {
    state.mode = "polling";
    mode.textContent = "Updating by polling.";
    let cursor = null;
    while (!signal.aborted) {
      const query = new URLSearchParams({ limit: String(POLL_LIMIT) });
      if (cursor) query.set("cursor", cursor);
      const batch = await api(`/v1/batches/${batchId}?${query}`, { signal });
      applyBatch(batch);
      cursor = batch.next_cursor;
      schedule();
      if (batch.items.length === POLL_LIMIT) continue; // more changes waiting: no pause
      if (TERMINAL.has(batch.status)) return;
      await sleep(POLL_INTERVAL_MS, signal);
    }
  }

  async function stream() {
    state.mode = "events";
    mode.textContent = "Live (event stream).";
    let lastEventId = null;
    for (let attempt = 0; attempt < 5 && !signal.aborted; attempt += 1) {
      try {
        const outcome = await streamEvents(batchId, {
          lastEventId,
          signal,
          onEvent: (event) => {
            lastEventId = event.id || lastEventId;
            const data = event.payload.data || {};
            if (event.type.startsWith("item.")) applyItem(data);
            else if (event.type.startsWith("batch.")) applyBatch(data);
            schedule();
          },
        });
        if (outcome === "unsupported") return false;
        // The stream ends after batch.completed: one last read for the final figures.
        applyBatch(await api(`/v1/batches/${batchId}?limit=1`, { signal }));
        schedule();
        if (TERMINAL.has(state.batch.status)) return true;
      } catch (exc) {
        if (signal.aborted) return true;
        if (exc instanceof ApiError && exc.status === 429) return false; // too many open streams
        await sleep(1000 * (attempt + 1), signal); // reconnect after Last-Event-ID
      }
    }
    return false;
  }

  async function start() {
    try {
      applyBatch(await api(`/v1/batches/${batchId}?limit=1`, { signal }));
      schedule();
      state.features = await features();
      if (state.features.events && !TERMINAL.has(state.batch.status)) {
        if (await stream()) {
          mode.textContent = "Finished.";
          if (items.size < state.batch.total_items) await poll();
          refreshAccount();
          return;
        }
      }
      await poll();
      mode.textContent = "Finished.";
      refreshAccount();
    } catch (exc) {
      if (signal.aborted) return;
      error.textContent = exc.status === 404 ? "No such batch." : `Could not load the batch: ${exc.message}`;
      progressLabel.textContent = "";
    }
  }

  replace(
    root,
    heading,
    error,
    summary,
    counts,
    h("div", { class: "progress" }, progress, h("div", {}, progressLabel, " ", mode)),
    h("div", { class: "row actions" }, zip, csv, cancel, retry),
    h("h2", {}, "Items"),
    h("div", { class: "row" }, h("label", { for: "item-filter" }, "Show items with status"), filter, shownInfo),
    h("table", { id: "items" },
      h("caption", { class: "visually-hidden" }, "Items of this batch"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col", class: "num" }, "#"),
        h("th", { scope: "col" }, "File"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col", class: "num" }, "Pages"),
        h("th", { scope: "col", class: "num" }, "Duration"),
        h("th", { scope: "col" }, "Error"),
        h("th", { scope: "col" }, "Result"),
      )),
      body,
    ),
    more,
  );
  start();
}
