// A new batch: drop files or a folder, register them in bulk, PUT the bytes straight to the
// presigned URLs with a progress bar, get a quote when the server offers one, submit once.

import { api, features, randomId } from "./api.js";
import { announce, refreshAccount } from "./app.js";
import { rememberNames } from "./batch.js";
import { badge, bytes, h, num, replace } from "./dom.js";

const BULK = 1000; // POST /v1/files/bulk takes at most 1,000 files
const PARALLEL_PUTS = 4;

// Walk a dropped folder (DataTransfer items → FileSystemEntry tree).
async function filesFromEntry(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, path: prefix + file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      // readEntries returns at most ~100 entries per call: read until it returns none.
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await filesFromEntry(child, `${prefix}${entry.name}/`, out);
    }
  }
}

async function filesFromDrop(dataTransfer) {
  const out = [];
  const items = Array.from(dataTransfer.items || []);
  const entries = items.map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  if (entries.length && entries.every(Boolean)) {
    for (const entry of entries) await filesFromEntry(entry, "", out);
  } else {
    for (const file of Array.from(dataTransfer.files || [])) out.push({ file, path: file.name });
  }
  return out;
}

export function renderUpload(root, signal) {
  const staged = []; // { file, path, id, upload, status, sent, error }
  let idempotencyKey = null;
  let submitting = false;

  const error = h("div", { class: "alert", role: "alert", id: "upload-error" });
  const fileInput = h("input", { type: "file", id: "file-input", multiple: true, class: "visually-hidden", tabindex: "-1" });
  const folderInput = h("input", { type: "file", id: "folder-input", webkitdirectory: true, class: "visually-hidden", tabindex: "-1" });
  const pickFiles = h("button", { type: "button", class: "secondary", id: "pick-files" }, "Choose files…");
  const pickFolder = h("button", { type: "button", class: "secondary", id: "pick-folder" }, "Choose a folder…");
  const drop = h(
    "section",
    { class: "dropzone", id: "dropzone", "aria-labelledby": "drop-title" },
    h("p", { id: "drop-title" }, "Drop documents or a whole folder here"),
    h("div", { class: "row actions" }, pickFiles, pickFolder),
    h("label", { for: "file-input", class: "visually-hidden" }, "Files to upload"),
    fileInput,
    h("label", { for: "folder-input", class: "visually-hidden" }, "Folder to upload"),
    folderInput,
  );
  const progress = h("progress", { id: "upload-progress", max: "1", value: "0", "aria-labelledby": "upload-progress-label" });
  const progressLabel = h("span", { id: "upload-progress-label", "aria-live": "polite" }, "Nothing uploaded yet");
  const list = h("tbody");
  const ocr = h("select", { id: "opt-ocr" }, ["auto", "force", "never"].map((v) => h("option", { value: v }, v)));
  const languages = h("input", { type: "text", id: "opt-languages", value: "eng", "aria-describedby": "opt-languages-help" });
  const quoteBox = h("section", { class: "quote", id: "quote", "aria-live": "polite", hidden: true });
  const quoteButton = h("button", { type: "button", class: "secondary", id: "get-quote", hidden: true, disabled: true }, "Get a quote");
  const submit = h("button", { type: "button", id: "submit-batch", disabled: true }, "Submit batch");

  pickFiles.addEventListener("click", () => fileInput.click());
  pickFolder.addEventListener("click", () => folderInput.click());
  fileInput.addEventListener("change", () => { add(Array.from(fileInput.files, (file) => ({ file, path: file.name }))); fileInput.value = ""; });
  folderInput.addEventListener("change", () => {
    add(Array.from(folderInput.files, (file) => ({ file, path: file.webkitRelativePath || file.name })));
    folderInput.value = "";
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    add(await filesFromDrop(event.dataTransfer));
  });
  for (const control of [ocr, languages]) control.addEventListener("change", () => { idempotencyKey = null; });

  function uploaded() {
    return staged.filter((s) => s.status === "uploaded");
  }

  function refresh() {
    const total = staged.reduce((sum, s) => sum + s.file.size, 0);
    const sent = staged.reduce((sum, s) => sum + (s.status === "uploaded" ? s.file.size : s.sent || 0), 0);
    progress.max = String(Math.max(total, 1));
    progress.value = String(sent);
    const done = uploaded().length;
    const busy = staged.some((s) => s.status === "registering" || s.status === "uploading" || s.status === "waiting");
    const failed = staged.filter((s) => s.status === "failed").length;
    progressLabel.textContent = staged.length
      ? `${done} of ${staged.length} files uploaded (${bytes(sent)} of ${bytes(total)})${failed ? `, ${failed} failed` : ""}`
      : "Nothing uploaded yet";
    submit.disabled = submitting || busy || done === 0;
    quoteButton.disabled = busy || done === 0;
    submit.textContent = done ? `Submit batch of ${done} file${done === 1 ? "" : "s"}` : "Submit batch";
  }

  function rowFor(entry) {
    const status = h("td", {});
    const tr = h("tr", {}, h("td", {}, entry.path), h("td", { class: "num" }, bytes(entry.file.size)), status);
    entry.render = () => {
      const percent = entry.file.size ? Math.round((100 * (entry.sent || 0)) / entry.file.size) : 0;
      replace(
        status,
        badge(entry.status),
        entry.status === "uploading" ? ` ${percent} %` : "",
        entry.error ? h("span", { class: "error" }, ` ${entry.error}`) : "",
      );
    };
    entry.render();
    return tr;
  }

  async function add(found) {
    error.textContent = "";
    // Empty files cannot be registered (size_bytes > 0); hidden files (.DS_Store) are noise.
    const skipped = found.filter((f) => f.file.size === 0 || f.path.split("/").some((p) => p.startsWith(".")));
    const fresh = found.filter((f) => !skipped.includes(f)).map((f) => ({ ...f, status: "waiting", sent: 0 }));
    if (skipped.length) error.textContent = `Skipped ${skipped.length} empty or hidden file${skipped.length === 1 ? "" : "s"}.`;
    if (!fresh.length) return;
    idempotencyKey = null; // a different set of files is a different batch
    quoteBox.hidden = true;
    staged.push(...fresh);
    list.append(...fresh.map(rowFor));
    refresh();
    announce(`Uploading ${fresh.length} file${fresh.length === 1 ? "" : "s"}…`);
    await register(fresh);
    await putAll(fresh.filter((s) => s.status === "registered"));
    refresh();
    const done = uploaded().length;
    announce(`${done} of ${staged.length} files uploaded.`);
    const feats = await features();
    if (feats.quotes && !staged.some((s) => s.status === "failed")) getQuote();
  }

  async function register(entries) {
    for (let start = 0; start < entries.length; start += BULK) {
      const chunk = entries.slice(start, start + BULK);
      chunk.forEach((s) => { s.status = "registering"; s.render(); });
      try {
        const body = {
          files: chunk.map((s) => ({
            size_bytes: s.file.size,
            filename: s.path.slice(-512),
            content_type: s.file.type ? s.file.type.slice(0, 128) : null,
          })),
        };
        const result = await api("/v1/files/bulk", { method: "POST", body, signal });
        result.data.forEach((file, i) => {
          chunk[i].id = file.id;
          chunk[i].upload = file.upload;
          chunk[i].status = "registered";
        });
      } catch (exc) {
        const tooLarge = exc.code === "document_too_large" ? new Set(exc.body.indexes || []) : null;
        chunk.forEach((s, i) => {
          s.status = "failed";
          s.error = tooLarge && !tooLarge.has(i) ? "not registered (another file is too large)" : exc.message;
        });
        error.textContent = `Registering files failed: ${exc.message}`;
      }
      chunk.forEach((s) => s.render());
      refresh();
    }
  }

  function put(entry) {
    // XMLHttpRequest, not fetch: only it reports upload progress.
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open(entry.upload.method || "PUT", entry.upload.url);
      for (const [name, value] of Object.entries(entry.upload.headers || {})) xhr.setRequestHeader(name, value);
      xhr.upload.addEventListener("progress", (event) => {
        entry.sent = event.loaded;
        entry.render();
        refresh();
      });
      xhr.addEventListener("load", () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          entry.status = "uploaded";
        } else {
          entry.status = "failed";
          entry.error = `upload refused (HTTP ${xhr.status})`;
        }
        resolve();
      });
      xhr.addEventListener("error", () => {
        entry.status = "failed";
        entry.error = "upload failed (network or CORS)";
        resolve();
      });
      entry.status = "uploading";
      entry.render();
      // The File itself, not a slice with another type: its type is the signed Content-Type.
      xhr.send(entry.file);
    }).then(() => { entry.render(); refresh(); });
  }

  async function putAll(entries) {
    const queue = entries.slice();
    const lanes = Array.from({ length: Math.min(PARALLEL_PUTS, queue.length) }, async () => {
      while (queue.length && !signal.aborted) await put(queue.shift());
    });
    await Promise.all(lanes);
  }

  function requestBody() {
    const langs = languages.value.split(/[\s,]+/).filter(Boolean);
    return {
      file_ids: uploaded().map((s) => s.id),
      options: { ocr: ocr.value, languages: langs.length ? langs : ["eng"] },
    };
  }

  async function getQuote() {
    quoteBox.hidden = false;
    replace(quoteBox, h("h2", {}, "Quote"), h("p", { class: "muted" }, "Counting pages…"));
    try {
      let quote = await api("/v1/quotes", { method: "POST", body: requestBody(), signal });
      while (quote.status !== "completed" && !signal.aborted) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        quote = await api(`/v1/quotes/${encodeURIComponent(quote.id)}`, { signal });
      }
      const t = quote.totals || {};
      replace(
        quoteBox,
        h("h2", {}, "Quote"),
        h("dl", {},
          h("dt", {}, "Files"), h("dd", {}, num(quote.file_count)),
          h("dt", {}, "Pages"), h("dd", {}, num(t.pages)),
          h("dt", {}, "Billable pages"), h("dd", { id: "quote-billable" }, num(t.billable_pages)),
          h("dt", {}, "Pages needing OCR"), h("dd", {}, num(t.ocr_pages)),
          h("dt", {}, "Predicted failures"), h("dd", {}, num(t.predicted_failures)),
          h("dt", {}, "Quota remaining"), h("dd", {}, t.quota_remaining === null ? "unlimited" : num(t.quota_remaining)),
          h("dt", {}, "Fits the quota"), h("dd", {}, t.fits_quota ? "yes" : h("strong", { class: "error" }, "no")),
          h("dt", {}, "Estimated time"), h("dd", {}, t.estimated_seconds == null ? "—" : `${Math.ceil(t.estimated_seconds)} s`),
        ),
      );
    } catch (exc) {
      if (!signal.aborted) replace(quoteBox, h("h2", {}, "Quote"), h("p", { class: "error" }, `No quote: ${exc.message}`));
    }
  }

  quoteButton.addEventListener("click", getQuote);
  submit.addEventListener("click", async () => {
    if (submitting) return; // a double click makes one request (and the key one batch)
    submitting = true;
    refresh();
    // One key per set of files and options: resubmitting after a network error returns the
    // batch the first attempt may already have created.
    idempotencyKey = idempotencyKey || randomId("console");
    const body = requestBody();
    try {
      const batch = await api("/v1/batches", {
        method: "POST",
        body,
        headers: { "Idempotency-Key": idempotencyKey },
        signal,
      });
      rememberNames(uploaded().map((s) => [s.id, s.path]));
      announce(`Batch ${batch.id} submitted.`);
      refreshAccount();
      location.hash = `#/batches/${batch.id}`;
    } catch (exc) {
      submitting = false;
      const reason = {
        payment_required: "Your page quota is used up.",
        file_not_uploaded: "Some files have not finished uploading.",
        file_not_found: "Some files expired or are unknown; add them again.",
        rate_limited: "Too many submissions; wait a moment and retry.",
      }[exc.code];
      error.textContent = `Submit failed: ${reason || exc.message}`;
      refresh();
    }
  });

  replace(
    root,
    h("h1", { tabindex: "-1" }, "New batch"),
    drop,
    error,
    h("div", { class: "progress" }, progress, h("div", {}, progressLabel)),
    h("table", { id: "staged" },
      h("caption", { class: "visually-hidden" }, "Files in this batch"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"), h("th", { scope: "col", class: "num" }, "Size"), h("th", { scope: "col" }, "Upload"))),
      list,
    ),
    h("h2", {}, "Options"),
    h("div", { class: "row options" },
      h("div", { class: "field" }, h("label", { for: "opt-ocr" }, "OCR"), ocr),
      h("div", { class: "field" },
        h("label", { for: "opt-languages" }, "OCR languages"),
        languages,
        h("span", { id: "opt-languages-help", class: "muted" }, "Tesseract codes, comma-separated (eng, fra, deu…)"),
      ),
    ),
    quoteBox,
    h("div", { class: "row actions" }, quoteButton, submit),
  );
  features().then((feats) => { quoteButton.hidden = !feats.quotes; });
  refresh();
}
