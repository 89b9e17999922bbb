// The Pagelane console: sign in, drop files, watch batches, download results.
// Routes live in the URL fragment (#/batches, #/batches/<id>, #/new); the API key never does.

import { api, apiKey, clearApiKey, onUnauthorized, setApiKey } from "./api.js";
import { h, replace } from "./dom.js";
import { renderBatch } from "./batch.js";
import { renderBatches } from "./batches.js";
import { renderUpload } from "./upload.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const accountBox = document.getElementById("account");
const signOutButton = document.getElementById("sign-out");
const statusBox = document.getElementById("status");

let current = null; // { abort: AbortController } of the page on screen

export function announce(message) {
  // The status region is aria-live: screen readers read each new message.
  statusBox.textContent = message;
  clearTimeout(announce.timer);
  announce.timer = setTimeout(() => { statusBox.textContent = ""; }, 6000);
}

export async function refreshAccount() {
  if (!apiKey()) {
    replace(accountBox);
    return;
  }
  try {
    const account = await api("/v1/account");
    const used = account.pages_used + account.pages_reserved;
    if (account.page_quota === null) {
      replace(accountBox, h("span", { id: "quota" }, `${used.toLocaleString("en")} pages used · unlimited quota`));
    } else {
      replace(
        accountBox,
        h(
          "span",
          { id: "quota" },
          `${used.toLocaleString("en")} of ${account.page_quota.toLocaleString("en")} pages used · `,
          h("strong", {}, `${account.pages_remaining.toLocaleString("en")} remaining`),
        ),
        h("progress", {
          max: String(Math.max(1, account.page_quota)),
          value: String(Math.min(used, account.page_quota)),
          "aria-label": "Page quota used",
        }),
      );
    }
  } catch {
    replace(accountBox);
  }
}

function signOut(message) {
  clearApiKey();
  replace(accountBox);
  location.hash = "#/signin";
  if (message) announce(message);
}

onUnauthorized(() => signOut("The API key was refused; sign in again."));
signOutButton.addEventListener("click", () => signOut("Signed out."));

function renderSignIn(root) {
  const error = h("div", { class: "alert", role: "alert", id: "signin-error" });
  // The input has no name: if the script ever failed, a native submit would send nothing.
  const input = h("input", {
    type: "password",
    id: "api-key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "api-key-help",
  });
  const submit = h("button", { type: "submit", id: "sign-in" }, "Sign in");
  const form = h(
    "form",
    { class: "signin", novalidate: true },
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("span", { id: "api-key-help", class: "muted" },
        "Kept in this tab only (session storage) and sent only in the X-API-KEY header."),
    ),
    submit,
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = "Enter an API key.";
      input.focus();
      return;
    }
    submit.disabled = true;
    try {
      await api("/v1/account", { key });
      setApiKey(key);
      input.value = "";
      location.hash = "#/batches";
      announce("Signed in.");
    } catch (exc) {
      error.textContent = exc.status === 401 ? "This API key is not valid." : `Sign-in failed: ${exc.message}`;
      input.focus();
    } finally {
      submit.disabled = false;
    }
  });
  replace(root, h("h1", { tabindex: "-1" }, "Sign in to Pagelane"), form);
  return () => input.focus();
}

function route() {
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  const hash = location.hash || "#/batches";
  const signedIn = Boolean(apiKey());
  nav.hidden = !signedIn;
  signOutButton.hidden = !signedIn;
  let focus = null;
  let page = "signin";
  if (!signedIn) {
    if (hash !== "#/signin") {
      history.replaceState(null, "", "#/signin");
    }
    focus = renderSignIn(main);
  } else {
    const batchMatch = /^#\/batches\/([A-Za-z0-9_-]+)$/.exec(hash);
    if (batchMatch) {
      page = "batch";
      renderBatch(main, batchMatch[1], signal);
    } else if (hash === "#/new") {
      page = "new";
      renderUpload(main, signal);
    } else {
      page = "batches";
      if (hash !== "#/batches") history.replaceState(null, "", "#/batches");
      renderBatches(main, signal);
    }
    refreshAccount();
  }
  document.body.dataset.page = page;
  for (const link of nav.querySelectorAll("a")) {
    const active = (page === "new" && link.id === "nav-new") || (page !== "new" && link.id === "nav-batches");
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Move focus to the new page's heading so keyboard and screen-reader users start there.
  const heading = main.querySelector("h1");
  if (focus) focus();
  else if (heading) heading.focus();
}

window.addEventListener("hashchange", route);
route();
