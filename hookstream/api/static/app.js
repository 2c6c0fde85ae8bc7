// hookstream console: Webhooks (list, one webhook's delivery log, health and recovery) and Events
// (every event of the organization, with where it went).
//
// Plain ES module, no build step, no external assets. Every piece of API text reaches the page
// through textContent / DOM nodes (the `h` helper), never through innerHTML.

const KEY_STORAGE = "hookstream.apiKey";
const EVENTS_PAGE_SIZE = 20;
const EVENTS_REFRESH_MS = 3000;
const ATTEMPTS_REFRESH_MS = 1500;
const RECOVERY_POLL_MS = 1500;
const HEALTH_REFRESH_MS = 15000; // a webhook page's chart, at most this often while the log auto-refreshes
const RECOVER_DEFAULT_SINCE_MS = 24 * 3600 * 1000; // the recovery form starts at "the last 24 hours"
const TOAST_MS = 5000;
const MAX_LIST_PAGES = 50; // stores / event types / webhooks fetched in full, bounded

// Used only if GET /v1/event-types cannot be read, so the form still works.
const FALLBACK_EVENT_TYPES = [
  ["product.created", "product"], ["product.updated", "product"], ["product.deleted", "product"],
  ["order.created", "order"], ["order.confirmed", "order"], ["order.updated", "order"],
  ["order.cancelled", "order"], ["order.closed", "order"], ["order.out_for_delivery", "order"],
  ["order.ready_for_pickup", "order"], ["order.delivered", "order"], ["order.shipped", "order"],
].map(([type, group]) => ({ type, group }));

const TEST_EVENT_TYPE = "webhook.test"; // what "Send test" puts in the delivery log
const STATUS_LABELS = { succeeded: "successful", failed: "failed", pending: "pending", retrying: "retrying" };
const ORDERING_LABELS = { none: "Any order", per_resource: "In order per product/order" };

const state = {
  key: null,
  stores: [],
  storesById: new Map(),
  eventTypes: [],
  webhooks: [],
  webhooksCursor: null,
  unauthorizedShown: false,
  events: null,   // { webhook, cursor, back: [], next, rows, inFlight, timer, health, recovery }
  explorer: null, // { cursor, back: [], next, rows, inFlight, timer }
  attempts: null, // { webhookId, webhookUrl, row, timer, inFlight, open: Set, details: Map }
  healthWindow: "24h",
  form: null,     // { webhook | null, submitting }
};

// ---------------------------------------------------------------------------------------------
// DOM helpers

const $ = (id) => document.getElementById(id);

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (typeof v !== "string" && k in el) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function show(el, visible = true) { el.hidden = !visible; }

function setMessage(el, text, kind = "error") {
  el.textContent = text || "";
  el.classList.toggle("info", kind === "info");
  show(el, Boolean(text));
}

const dateFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

function formatTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : dateFormat.format(d);
}

const timeOfDayFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/** A time soon to come or just past: the time of day if it is today, else the full date. */
function formatWhen(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toDateString() === new Date().toDateString() ? timeOfDayFormat.format(d) : dateFormat.format(d);
}

const pad2 = (n) => String(n).padStart(2, "0");

/** An RFC 3339 time as the value of an <input type="datetime-local" step="1"> (local time); "" if unreadable. */
function toLocalInput(iso) {
  const d = new Date(iso || "");
  if (!iso || Number.isNaN(d.getTime())) return "";
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`
    + `T${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** A datetime-local input's value (local time) as RFC 3339 in UTC, whole seconds; "" if empty or invalid. */
function fromLocalInput(value) {
  if (!value) return "";
  const d = new Date(value); // a date-time without an offset is local time
  return Number.isNaN(d.getTime()) ? "" : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function timeCell(iso) {
  return h("time", { datetime: iso || "", title: iso || "" }, formatTime(iso));
}

function statusBadge(status, testid) {
  const label = STATUS_LABELS[status] || String(status || "unknown");
  return h("span", { class: `status status-${status}`, "data-testid": testid, "data-status": status }, label);
}

/** A pending delivery that has failed at least once and has its next automatic attempt set is retrying. */
function isRetrying(row) {
  return row.status === "pending" && !row.waiting_behind && Boolean(row.next_attempt_at) && Number(row.attempts || 0) > 0;
}

/** "next at 10:15:02", or "next now" when that time has come (the attempt is being made). */
function nextAttemptText(iso) {
  const due = new Date(iso).getTime();
  return !Number.isNaN(due) && due <= Date.now() ? "next now" : `next at ${formatWhen(iso)}`;
}

/** A delivery's status; one stored behind an earlier event of its resource (ordering per_resource) says whose. */
function deliveryStatusLabel(row) {
  if (row.status === "pending" && row.waiting_behind) return `waiting behind ${row.waiting_behind}`;
  if (isRetrying(row)) return `retrying, ${nextAttemptText(row.next_attempt_at)}`;
  return STATUS_LABELS[row.status] || String(row.status || "unknown");
}

function deliveryStatusBadge(row, testid) {
  if (isRetrying(row)) {
    const badge = statusBadge("retrying", testid);
    badge.dataset.status = row.status;
    badge.title = `Pending: attempt ${Number(row.attempts) + 1} is due ${formatTime(row.next_attempt_at)}`;
    return badge;
  }
  const badge = statusBadge(row.status, testid);
  if (row.status === "pending" && row.waiting_behind) {
    badge.textContent = deliveryStatusLabel(row);
    badge.classList.add("status-waiting");
    badge.dataset.waitingBehind = row.waiting_behind;
    badge.title = `Pending: delivered in order after event ${row.waiting_behind} (its delivery has not finished yet)`;
  }
  return badge;
}

function toast(text, { error = false } = {}) {
  const el = h("div", { class: error ? "toast error" : "toast" }, text);
  $("toasts").append(el);
  setTimeout(() => el.remove(), TOAST_MS);
}

function safeId(value) { return String(value).replace(/[^A-Za-z0-9_-]/g, "_"); }

// ---------------------------------------------------------------------------------------------
// API client

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${state.key}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network_error", "Cannot reach the hookstream API. Check your connection and try again.");
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (res.status === 401) {
    const err = new ApiError(401, "unauthorized", data?.error?.message || "Not signed in.");
    handleUnauthorized();
    throw err;
  }
  if (!res.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(res.status, e.code || `http_${res.status}`,
      e.message || `The request failed (HTTP ${res.status}).`, e.field);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function fetchAll(path) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < MAX_LIST_PAGES; page++) {
    const res = await api("GET", path + query({ limit: 100, cursor }));
    items.push(...(res?.data || []));
    cursor = res?.next_cursor;
    if (!cursor) break;
  }
  return items;
}

/** Report an error from an action; a 401 has already sent the user to sign-in. */
function reportError(err, target) {
  if (err instanceof ApiError && err.status === 401) return;
  const message = err instanceof Error ? err.message : String(err);
  if (target) setMessage(target, message);
  else toast(message, { error: true });
}

// ---------------------------------------------------------------------------------------------
// Sign in / out

function handleUnauthorized() {
  if (state.unauthorizedShown) return;
  const wasSigningIn = state.signingIn;
  signOut({
    message: wasSigningIn
      ? "That API key was not accepted. Check it and try again."
      : "Your session has expired or the API key is no longer valid. Sign in again.",
  });
  state.unauthorizedShown = true;
}

function signOut({ message = "", keepLocation = true } = {}) {
  state.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  leaveViews();
  stopAttemptsTimer();
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  state.webhooks = [];
  $("webhooks-body").replaceChildren();
  $("events-body").replaceChildren();
  $("explorer-body").replaceChildren();
  show($("sign-out"), false);
  show($("mainnav"), false);
  show($("signin-view"));
  setMessage($("signin-message"), message);
  $("api-key").value = "";
  if (!keepLocation && location.hash) history.replaceState(null, "", location.pathname);
  $("api-key").focus();
}

async function onSignIn(ev) {
  ev.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    setMessage($("signin-message"), "Enter an API key.");
    $("api-key").focus();
    return;
  }
  const button = $("signin-submit");
  button.disabled = true;
  button.textContent = "Signing in…";
  state.key = key;
  state.signingIn = true;
  state.unauthorizedShown = false;
  try {
    await loadReferenceData({ strict: true });
    sessionStorage.setItem(KEY_STORAGE, key);
    setMessage($("signin-message"), "");
    enterApp();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      state.key = null;
      setMessage($("signin-message"), err.message);
    }
  } finally {
    state.signingIn = false;
    button.disabled = false;
    button.textContent = "Sign in";
  }
}

function enterApp() {
  state.unauthorizedShown = false;
  show($("signin-view"), false);
  show($("sign-out"));
  show($("mainnav"));
  route();
}

// Stores and event types, needed by the list, the form and the filters.
async function loadReferenceData({ strict = false } = {}) {
  const [stores, types] = await Promise.allSettled([fetchAll("/v1/stores"), fetchAll("/v1/event-types")]);
  if (stores.status === "rejected" && (strict || stores.reason?.status === 401)) throw stores.reason;
  if (types.status === "rejected" && types.reason?.status === 401) throw types.reason;
  if (stores.status === "fulfilled") setStores(stores.value);
  state.eventTypes = types.status === "fulfilled" && types.value.length ? types.value : FALLBACK_EVENT_TYPES;
}

function setStores(stores) {
  state.stores = stores;
  state.storesById = new Map(stores.map((s) => [s.id, s]));
}

function storeName(id) { return state.storesById.get(id)?.name || id; }

// ---------------------------------------------------------------------------------------------
// Routing: #/webhooks, #/webhooks/<id>/events?<filters> and #/events?<filters>. A view's filters live in
// the hash's query string, so a filtered view can be shared and survives a reload.

function parseHash() {
  const raw = location.hash.replace(/^#/, "");
  const at = raw.indexOf("?");
  return { path: at < 0 ? raw : raw.slice(0, at), params: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1)) };
}

/** Put a view's filters in the address bar without a navigation (no hashchange, no history entry). */
function writeHashParams(path, params) {
  const hash = `#${path}${query(params)}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function route() {
  if (!state.key) return;
  const { path, params } = parseHash();
  const match = /^\/webhooks\/([^/]+)\/events$/.exec(path);
  if (match) showEventsView(decodeURIComponent(match[1]), params);
  else if (path === "/events") showExplorerView(params);
  else showWebhooksView();
}

/** Hide every page and stop its timers; the caller shows one. */
function leaveViews() {
  stopEventsTimer();
  stopRecoveryPoll();
  state.events = null;
  stopExplorerTimer();
  state.explorer = null;
  for (const id of ["webhooks-view", "events-view", "explorer-view"]) show($(id), false);
}

function setNav(current) {
  for (const [id, name] of [["nav-webhooks", "webhooks"], ["nav-events", "events"]]) {
    if (name === current) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
}

function goToWebhooks() {
  if (location.hash === "#/webhooks") route();
  else location.hash = "#/webhooks";
}

// ---------------------------------------------------------------------------------------------
// Webhooks list

function showWebhooksView() {
  leaveViews();
  setNav("webhooks");
  show($("webhooks-view"));
  document.title = "Webhooks · hookstream";
  loadWebhooks();
}

async function loadWebhooks({ append = false } = {}) {
  const message = $("webhooks-message");
  if (!append) show($("webhooks-loading"), state.webhooks.length === 0);
  try {
    const res = await api("GET", "/v1/webhooks" + query({ limit: 50, cursor: append ? state.webhooksCursor : null }));
    const rows = res?.data || [];
    state.webhooks = append ? [...state.webhooks, ...rows] : rows;
    state.webhooksCursor = res?.next_cursor || null;
    setMessage(message, "");
    renderWebhooks();
  } catch (err) {
    reportError(err, message);
  } finally {
    show($("webhooks-loading"), false);
  }
}

function renderWebhooks() {
  const body = $("webhooks-body");
  body.replaceChildren(...state.webhooks.map(webhookRow));
  show($("webhooks-empty"), state.webhooks.length === 0);
  show($("webhooks-table"), state.webhooks.length > 0);
  show($("webhooks-more"), Boolean(state.webhooksCursor));
  loadListHealth(state.webhooks);
}

/** Each listed webhook's last 24 h, drawn into its row when it arrives (a failure leaves the row's count). */
function loadListHealth(webhooks) {
  for (const wh of webhooks) {
    api("GET", `/v1/webhooks/${encodeURIComponent(wh.id)}/stats?window=24h`).then((stats) => {
      const cell = [...document.querySelectorAll('[data-testid="wh-health"]')].find((c) => c.dataset.webhookId === wh.id);
      if (!cell || !stats) return;
      cell.querySelector(".health-mini-chart").replaceChildren(healthChart(stats, { width: 96, height: 22, compact: true }));
      cell.querySelector(".health-mini-rate").textContent = rateText(stats, { short: true });
    }, () => {}); // the chart is an extra: the list stands without it
  }
}

function chipList(labels, fullList, max = 3) {
  const shown = labels.length > max ? labels.slice(0, max - 1) : labels;
  const rest = labels.length - shown.length;
  return h("div", { class: "chips", title: fullList.join(", ") },
    shown.map((l) => h("span", { class: "chip" }, l)),
    rest > 0 ? h("span", { class: "chip" }, `+${rest} more`) : null);
}

function groupLabel(group) {
  const g = String(group || "").toLowerCase();
  if (g.startsWith("product")) return "Product";
  if (g.startsWith("order")) return "Orders";
  return group ? String(group).charAt(0).toUpperCase() + String(group).slice(1) : "Other";
}

function groupedEventTypes() {
  const groups = new Map();
  for (const t of state.eventTypes) {
    const label = groupLabel(t.group);
    if (!groups.has(label)) groups.set(label, []);
    groups.get(label).push(t.type);
  }
  return groups;
}

function compactEvents(types) {
  const chosen = new Set(types);
  const all = state.eventTypes.map((t) => t.type);
  if (all.length && all.every((t) => chosen.has(t))) return chipList(["All events"], types);
  const labels = [];
  const covered = new Set();
  for (const [label, members] of groupedEventTypes()) {
    if (members.length > 1 && members.every((t) => chosen.has(t))) {
      labels.push(`All ${label === "Orders" ? "order" : label.toLowerCase()} events`);
      members.forEach((t) => covered.add(t));
    }
  }
  for (const t of types) if (!covered.has(t)) labels.push(t);
  return chipList(labels, types);
}

function compactStores(ids) {
  const chosen = new Set(ids);
  if (state.stores.length > 1 && state.stores.every((s) => chosen.has(s.id))) {
    return chipList([`All stores (${state.stores.length})`], ids.map(storeName));
  }
  return chipList(ids.map(storeName), ids.map(storeName), 3);
}

function webhookRow(wh) {
  const urlId = `wh-url-${safeId(wh.id)}`;
  const failures = Number(wh.failures_24h || 0);
  const toggle = h("input", {
    type: "checkbox", role: "switch", checked: Boolean(wh.enabled),
    "aria-label": "Enabled", "aria-describedby": urlId, "data-testid": "wh-enabled-toggle",
    onchange: (ev) => toggleEnabled(wh, ev.target),
  });
  const action = (label, testid, onclick, extra = "") =>
    h("button", { type: "button", class: `btn btn-sm ${extra}`, "data-testid": testid, "aria-describedby": urlId, onclick }, label);
  return h("tr", { "data-testid": "webhook-row", "data-webhook-id": wh.id },
    h("td", { class: "cell-endpoint" },
      h("div", { class: "url", id: urlId, "data-testid": "wh-row-url" }, wh.url),
      wh.description ? h("div", { class: "desc" }, wh.description) : null,
      wh.ordering === "per_resource"
        ? h("div", { class: "desc" }, h("span", { class: "chip chip-ordering", "data-testid": "wh-row-ordering",
            title: "Events of one product or order are delivered one at a time, in publish order" },
          ORDERING_LABELS.per_resource))
        : null,
      wh.filter ? h("div", { class: "desc mono", "data-testid": "wh-row-filter", title: "Filter" }, `filter: ${wh.filter}`) : null,
      Number(wh.filter_errors_24h || 0) > 0
        ? h("div", { class: "failures-some", "data-testid": "wh-row-filter-errors",
            title: wh.last_filter_error ? `last: ${wh.last_filter_error.error} (event ${wh.last_filter_error.event_id})` : "" },
          `${wh.filter_errors_24h} filter error${Number(wh.filter_errors_24h) === 1 ? "" : "s"} in the last 24 h`)
        : null),
    h("td", {}, compactEvents(wh.event_types || [])),
    h("td", {}, compactStores(wh.store_ids || [])),
    h("td", {}, h("label", { class: "switch", title: wh.enabled ? "Enabled" : "Disabled" }, toggle, h("span", { class: "track", "aria-hidden": "true" }))),
    h("td", { class: "cell-health", "data-testid": "wh-health", "data-webhook-id": wh.id },
      h("div", { class: "health-mini-chart" }),
      h("div", { class: "health-mini-text" },
        h("span", { class: "health-mini-rate" }),
        h("span", { class: failures > 0 ? "failures-some" : "failures-zero",
          title: `${failures} failed attempt${failures === 1 ? "" : "s"} in the last 24 hours` },
        h("span", { "data-testid": "wh-failures" }, String(failures)), " failed"))),
    h("td", { class: "cell-actions" }, h("div", { class: "actions-grid" },
      action("View events", "wh-view-events", () => { location.hash = `#/webhooks/${encodeURIComponent(wh.id)}/events`; }),
      action("Send test", "wh-test", () => sendTest(wh)),
      action("Edit", "wh-edit", () => openWebhookForm(wh)),
      action("Rotate secret", "wh-rotate", () => rotateSecret(wh)),
      action("Delete", "wh-delete", () => deleteWebhook(wh), "btn-danger-text"))));
}

async function toggleEnabled(wh, input) {
  const enabled = input.checked;
  input.disabled = true;
  try {
    const updated = await api("PATCH", `/v1/webhooks/${encodeURIComponent(wh.id)}`, { enabled });
    Object.assign(wh, updated || { enabled });
    toast(enabled ? "Webhook enabled." : "Webhook disabled: no events are sent to it.");
  } catch (err) {
    input.checked = !enabled;
    reportError(err);
  } finally {
    input.disabled = false;
  }
}

/** "Send test": choose the type (a ping, or one the webhook subscribes to; the body is its schema example). */
function sendTest(wh) {
  state.testWebhook = wh;
  $("test-subtitle").textContent = wh.url;
  setMessage($("test-error"), "");
  $("test-event-type").replaceChildren(
    h("option", { value: "" }, `${TEST_EVENT_TYPE} (a ping)`),
    ...(wh.event_types || []).map((t) => h("option", { value: t }, t)));
  $("test-send").disabled = false;
  $("test-dialog").showModal();
  $("test-event-type").focus();
}

async function onSubmitTest(ev) {
  ev.preventDefault();
  const wh = state.testWebhook;
  if (!wh) return;
  const eventType = $("test-event-type").value;
  const button = $("test-send");
  button.disabled = true;
  try {
    const res = await api("POST", `/v1/webhooks/${encodeURIComponent(wh.id)}/test`, eventType ? { event_type: eventType } : {});
    $("test-dialog").close();
    toast(`Test event ${res?.event_id || ""} (${eventType || TEST_EVENT_TYPE}) sent. See “View events”.`);
  } catch (err) {
    reportError(err, $("test-error"));
  } finally {
    button.disabled = false;
  }
}

async function deleteWebhook(wh) {
  const ok = await confirmDialog({
    title: "Delete webhook?",
    text: `${wh.url} will stop receiving events immediately, and its delivery log is deleted. This cannot be undone.`,
    confirm: "Delete webhook",
  });
  if (!ok) return;
  try {
    await api("DELETE", `/v1/webhooks/${encodeURIComponent(wh.id)}`);
    toast("Webhook deleted.");
    state.webhooks = state.webhooks.filter((w) => w.id !== wh.id);
    renderWebhooks();
    loadWebhooks();
  } catch (err) {
    reportError(err);
  }
}

async function rotateSecret(wh) {
  const ok = await confirmDialog({
    title: "Rotate signing secret?",
    text: `A new secret is generated for ${wh.url}. The current secret keeps signing (alongside the new one) for 24 hours, so you can update your endpoint without dropping events.`,
    confirm: "Rotate secret",
    danger: false,
  });
  if (!ok) return;
  try {
    const res = await api("POST", `/v1/webhooks/${encodeURIComponent(wh.id)}/rotate-secret`, {});
    const until = res?.previous_secret_expires_at;
    showSecret(res?.secret || "", until ? `The previous secret keeps working until ${formatTime(until)}.` : "");
  } catch (err) {
    reportError(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Confirm and secret dialogs

function confirmDialog({ title, text, confirm = "Confirm", danger = true }) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  const ok = $("confirm-ok");
  ok.textContent = confirm;
  ok.className = danger ? "btn btn-danger" : "btn btn-primary";
  return new Promise((resolve) => {
    let answer = false;
    const onOk = () => { answer = true; dialog.close(); };
    const onCancel = () => dialog.close();
    const onClose = () => {
      ok.removeEventListener("click", onOk);
      $("confirm-cancel").removeEventListener("click", onCancel);
      resolve(answer);
    };
    ok.addEventListener("click", onOk);
    $("confirm-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("close", onClose, { once: true });
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

function showSecret(secret, note = "") {
  const dialog = $("secret-dialog");
  $("secret-value").value = secret;
  $("secret-copied").textContent = "";
  $("secret-note").textContent = note;
  show($("secret-note"), Boolean(note));
  dialog.showModal();
  $("secret-value").select();
}

async function copySecret() {
  const input = $("secret-value");
  let copied = false;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch {
    input.select();
    try { copied = document.execCommand("copy"); } catch { copied = false; }
  }
  $("secret-copied").textContent = copied ? "Copied to the clipboard." : "Select the secret and copy it (Ctrl+C).";
}

// ---------------------------------------------------------------------------------------------
// Add / edit form

function checkbox(props, labelText, extra = null) {
  return h("label", { class: props.class || "check" },
    h("input", { ...props, class: null, type: "checkbox" }), labelText, extra);
}

async function openWebhookForm(wh = null) {
  state.form = { webhook: wh, submitting: false };
  try {
    setStores(await fetchAll("/v1/stores")); // stores may have been added since sign-in
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
  }
  const form = $("webhook-form");
  form.reset();
  clearFormErrors();
  $("webhook-dialog-title").textContent = wh ? "Edit webhook" : "Add webhook";
  $("wh-url").value = wh?.url || "";
  $("wh-description").value = wh?.description || "";
  $("wh-filter").value = wh?.filter || "";
  $("wh-filter-result").textContent = "";
  $("wh-filter-sample").replaceChildren(...state.eventTypes.map((t) => h("option", { value: t.type }, t.type)));
  if (wh?.event_types?.length) $("wh-filter-sample").value = wh.event_types[0];
  $("wh-enabled").checked = wh ? Boolean(wh.enabled) : true;
  $("wh-ordering").value = wh?.ordering === "per_resource" ? "per_resource" : "none";
  renderEventChoices(new Set(wh?.event_types || []));
  renderStoreChoices(new Set(wh?.store_ids || []));
  updateFormState();
  $("webhook-dialog").showModal();
  $("wh-url").focus();
}

function renderEventChoices(selected) {
  const groups = [...groupedEventTypes()];
  const container = $("wh-events-groups");
  container.replaceChildren(...groups.map(([label, types]) => {
    const groupId = `evgroup-${safeId(label)}`;
    const groupBox = h("input", {
      type: "checkbox", "data-testid": `event-group-${label.toLowerCase()}`, "aria-controls": groupId,
      onchange: (ev) => {
        for (const box of document.querySelectorAll(`#${groupId} input`)) box.checked = ev.target.checked;
        onFormInput("event_types");
      },
    });
    return h("div", { class: `event-group${types.length > 4 ? " group-wide" : ""}`, "data-group": label },
      h("label", { class: "check check-group" }, groupBox, label),
      h("div", { class: "items", id: groupId, role: "group", "aria-label": `${label} events` },
        types.map((type) => checkbox({
          name: "event_types", value: type, checked: selected.has(type), "data-testid": `event-${type}`,
          onchange: () => onFormInput("event_types"),
        }, h("span", { class: "mono" }, type)))));
  }));
  // Types the webhook has that this console does not know about are kept, not silently dropped.
  const known = new Set(state.eventTypes.map((t) => t.type));
  const unknown = [...selected].filter((t) => !known.has(t));
  if (unknown.length) {
    container.append(h("div", { class: "event-group" },
      h("div", { class: "check check-group" }, "Other"),
      h("div", { class: "items" }, unknown.map((type) => checkbox({
        name: "event_types", value: type, checked: true, onchange: () => onFormInput("event_types"),
      }, h("span", { class: "mono" }, type))))));
  }
}

function renderStoreChoices(selected) {
  const stores = [...state.stores];
  for (const id of selected) if (!state.storesById.has(id)) stores.push({ id, name: id });
  const list = $("wh-stores-list");
  if (!stores.length) {
    list.replaceChildren(h("p", { class: "muted" }, "This organization has no stores yet (POST /v1/stores)."));
    return;
  }
  list.replaceChildren(...stores.map((s) => checkbox({
    name: "store_ids", value: s.id, checked: selected.has(s.id), "data-testid": `store-${s.id}`,
    onchange: () => onFormInput("store_ids"),
  }, s.name, s.name !== s.id ? h("span", { class: "store-id" }, s.id) : null)));
}

function chosen(name) {
  return [...$("webhook-form").querySelectorAll(`input[name="${name}"]:checked`)].map((i) => i.value);
}

function updateFormState() {
  const events = chosen("event_types");
  const stores = chosen("store_ids");
  const url = $("wh-url").value.trim();
  // Tri-state group boxes.
  for (const group of $("wh-events-groups").querySelectorAll(".event-group[data-group]")) {
    const boxes = [...group.querySelectorAll(".items input")];
    const on = boxes.filter((b) => b.checked).length;
    const groupBox = group.querySelector(".check-group input");
    groupBox.checked = on === boxes.length && on > 0;
    groupBox.indeterminate = on > 0 && on < boxes.length;
  }
  const storeBoxes = [...$("wh-stores-list").querySelectorAll("input")];
  const allStores = $("wh-stores-all");
  const storesOn = storeBoxes.filter((b) => b.checked).length;
  allStores.checked = storeBoxes.length > 0 && storesOn === storeBoxes.length;
  allStores.indeterminate = storesOn > 0 && storesOn < storeBoxes.length;
  allStores.disabled = storeBoxes.length === 0;

  $("wh-events-count").textContent = events.length ? `(${events.length} selected)` : "";
  $("wh-stores-count").textContent = stores.length ? `(${stores.length} selected)` : "";

  const missing = [];
  const hint = [];
  if (!url) hint.push("Enter an endpoint URL.");
  if (!events.length) missing.push("at least one event type");
  if (!stores.length) missing.push("at least one store");
  if (missing.length) hint.push(`Choose ${missing.join(" and ")}.`);
  $("wh-save-hint").textContent = hint.join(" ");
  $("wh-save").disabled = hint.length > 0 || Boolean(state.form?.submitting);
}

function onFormInput(field) {
  clearFieldError(field);
  updateFormState();
}

const FIELD_CONTROLS = {
  url: "wh-url", event_types: "wh-events", store_ids: "wh-stores", description: "wh-description",
  enabled: "wh-enabled", ordering: "wh-ordering", filter: "wh-filter",
};

function clearFieldError(field) {
  const err = $("webhook-form").querySelector(`[data-field-error="${field}"]`);
  if (err) { err.textContent = ""; show(err, false); }
  const control = $(FIELD_CONTROLS[field]);
  if (control) control.removeAttribute("aria-invalid");
}

function clearFormErrors() {
  setMessage($("form-error"), "");
  for (const field of Object.keys(FIELD_CONTROLS)) clearFieldError(field);
}

/** Show an API error beside the field it names ("url", "event_types[1]", ...) or at the top. */
function showFormError(err, body) {
  const raw = err.field || "";
  const base = raw.replace(/[[.].*$/, "");
  const el = base && $("webhook-form").querySelector(`[data-field-error="${base}"]`);
  if (!el) {
    setMessage($("form-error"), raw ? `${raw}: ${err.message}` : err.message);
    $("form-error").scrollIntoView({ block: "nearest" });
    return;
  }
  // The API may prefix the message with the field name; beside the field it is redundant.
  let message = err.message.startsWith(`${raw}: `) ? err.message.slice(raw.length + 2) : err.message;
  const index = /\[(\d+)\]/.exec(raw);
  const value = index && Array.isArray(body?.[base]) ? body[base][Number(index[1])] : null;
  if (value !== null && value !== undefined && !message.includes(String(value))) {
    message = `${base === "store_ids" ? storeName(value) : value}: ${message}`;
  }
  el.textContent = message;
  show(el);
  const control = $(FIELD_CONTROLS[base]);
  if (control) {
    control.setAttribute("aria-invalid", "true");
    (control.matches("input, textarea, select") ? control : control.querySelector("input"))?.focus();
  }
}

/** "Test this filter": evaluate the filter on the schemas' sample event of the chosen type. */
async function testFilter() {
  const out = $("wh-filter-result");
  clearFieldError("filter");
  const filter = $("wh-filter").value.trim();
  if (!filter) { out.textContent = "No filter: every event of the chosen types and stores is sent."; return; }
  out.textContent = "Testing…";
  try {
    const res = await api("POST", "/v1/filters/test", { filter, event_type: $("wh-filter-sample").value });
    out.textContent = res.error
      ? `Error on this sample (such an event would not be sent): ${res.error}`
      : res.result ? "Matches: this sample event would be sent." : "Does not match: this sample event would not be sent.";
  } catch (err) {
    out.textContent = "";
    if (err instanceof ApiError && err.status === 401) return;
    if (err instanceof ApiError) showFormError(err, { filter });
    else out.textContent = String(err);
  }
}

async function onSubmitWebhook(ev) {
  ev.preventDefault();
  if ($("wh-save").disabled) return;
  clearFormErrors();
  const wh = state.form?.webhook;
  const body = {
    url: $("wh-url").value.trim(),
    event_types: chosen("event_types"),
    store_ids: chosen("store_ids"),
    description: $("wh-description").value.trim(),
    enabled: $("wh-enabled").checked,
    ordering: $("wh-ordering").value,
    filter: $("wh-filter").value.trim() || null,
  };
  state.form.submitting = true;
  const save = $("wh-save");
  save.textContent = "Saving…";
  updateFormState();
  try {
    const res = wh
      ? await api("PATCH", `/v1/webhooks/${encodeURIComponent(wh.id)}`, body)
      : await api("POST", "/v1/webhooks", body);
    $("webhook-dialog").close();
    if (wh) {
      toast("Webhook saved.");
    } else {
      showSecret(res?.secret || "", "");
    }
    loadWebhooks();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    if (err instanceof ApiError) showFormError(err, body);
    else setMessage($("form-error"), String(err));
  } finally {
    if (state.form) state.form.submitting = false;
    save.textContent = "Save";
    updateFormState();
  }
}

// ---------------------------------------------------------------------------------------------
// Delivery log ("View events")

const EVENT_FILTER_INPUTS = { status: "filter-status", event_type: "filter-event-type", store_id: "filter-store",
  since: "filter-since", until: "filter-until" };

async function showEventsView(webhookId, params = new URLSearchParams()) {
  leaveViews();
  setNav("webhooks");
  show($("events-view"));
  let wh = state.webhooks.find((w) => w.id === webhookId);
  state.events = { webhook: wh || { id: webhookId }, cursor: null, back: [], next: null, rows: [], inFlight: false,
    timer: null, params, healthAt: 0, recovery: null, recoveryTimer: null };
  $("events-body").replaceChildren();
  show($("events-empty"), false);
  setMessage($("events-message"), "");
  setMessage($("recover-message"), "");
  show($("recover-progress"), false);
  $("recover-start").disabled = false;
  $("health-summary").textContent = "";
  $("health-chart").replaceChildren();
  $("events-endpoint").textContent = wh?.url || "";
  $("events-updated").textContent = "";
  if (!$("recover-since").value) $("recover-since").value = toLocalInput(new Date(Date.now() - RECOVER_DEFAULT_SINCE_MS).toISOString());
  if (!wh) {
    try {
      wh = await api("GET", `/v1/webhooks/${encodeURIComponent(webhookId)}`);
      if (state.events?.webhook.id !== webhookId) return;
      state.events.webhook = wh;
    } catch (err) {
      reportError(err, $("events-message"));
      return;
    }
  }
  $("events-title").textContent = wh.description || "Events";
  $("events-endpoint").textContent = wh.url;
  document.title = `Events · ${wh.url} · hookstream`;
  fillFilterOptions(wh, state.events.params);
  loadHealth();
  loadRecoveries();
  await loadEvents();
  startEventsTimer();
}

/** A <select>'s options, keeping one for a value the URL asks for that is not among them (shown, not lost). */
function selectOptions(select, anyLabel, options, wanted) {
  const known = new Set(options.map(([value]) => value));
  select.replaceChildren(h("option", { value: "" }, anyLabel),
    ...options.map(([value, label]) => h("option", { value }, label)),
    wanted && !known.has(wanted) ? h("option", { value: wanted }, wanted) : null);
  select.value = wanted || "";
}

function fillFilterOptions(wh, params) {
  const types = (wh.event_types && wh.event_types.length) ? wh.event_types : state.eventTypes.map((t) => t.type);
  selectOptions($("filter-status"), "Any status", [["succeeded", "Successful"], ["failed", "Failed"], ["pending", "Pending"]],
    params.get("status"));
  selectOptions($("filter-event-type"), "Any event type",
    [...types.map((t) => [t, t]), [TEST_EVENT_TYPE, `${TEST_EVENT_TYPE} (“Send test”)`]], params.get("event_type"));
  const stores = (wh.store_ids && wh.store_ids.length) ? wh.store_ids : state.stores.map((s) => s.id);
  selectOptions($("filter-store"), "Any store", stores.map((id) => [id, storeName(id)]), params.get("store_id"));
  $("filter-since").value = toLocalInput(params.get("since"));
  $("filter-until").value = toLocalInput(params.get("until"));
}

function eventFilters() {
  return {
    status: $("filter-status").value,
    event_type: $("filter-event-type").value,
    store_id: $("filter-store").value,
    since: fromLocalInput($("filter-since").value),
    until: fromLocalInput($("filter-until").value),
  };
}

async function loadEvents({ quiet = false } = {}) {
  const ev = state.events;
  if (!ev || ev.inFlight) return;
  ev.inFlight = true;
  const button = $("events-refresh");
  if (!quiet) button.disabled = true;
  const webhookId = ev.webhook.id;
  try {
    const res = await api("GET", `/v1/webhooks/${encodeURIComponent(webhookId)}/events`
      + query({ limit: EVENTS_PAGE_SIZE, ...eventFilters(), cursor: ev.cursor }));
    if (state.events !== ev) return; // the user navigated away meanwhile
    const rows = res?.data || [];
    const changed = JSON.stringify(rows) !== JSON.stringify(ev.rows) || (res?.next_cursor || null) !== ev.next
      || !ev.rendered;
    ev.rows = rows;
    ev.next = res?.next_cursor || null;
    setMessage($("events-message"), "");
    // Re-render only on change, so auto-refresh does not disturb hover, focus or a click in progress.
    if (changed) renderEvents();
    if (changed && ev.rendered && Date.now() - ev.healthAt > HEALTH_REFRESH_MS) loadHealth();
    ev.rendered = true;
    $("events-updated").textContent = `Updated ${dateFormat.format(new Date())}`;
    refreshAttemptsSummary();
  } catch (err) {
    if (state.events === ev) reportError(err, $("events-message"));
  } finally {
    ev.inFlight = false;
    button.disabled = false;
  }
}

function renderEvents() {
  const ev = state.events;
  const focusedId = document.activeElement?.closest?.("tr[data-event-id]")?.dataset.eventId;
  const body = $("events-body");
  body.replaceChildren(...ev.rows.map(eventRow));
  const empty = ev.rows.length === 0;
  show($("events-empty"), empty);
  show($("events-table"), !empty);
  $("events-empty").querySelector("strong").textContent =
    Object.values(eventFilters()).some(Boolean) || ev.cursor ? "No events match these filters." : "No events yet.";
  show($("events-next"), Boolean(ev.next));
  show($("events-first"), ev.back.length > 0);
  if (focusedId) {
    const row = [...body.querySelectorAll("tr[data-event-id]")].find((r) => r.dataset.eventId === focusedId);
    row?.focus();
  }
}

/** The last error once: the recorded error often is the HTTP status itself ("HTTP 500"), so it is not repeated. */
function lastErrorText(row) {
  if (row.status === "succeeded") return "";
  const http = row.last_http_status ? `HTTP ${row.last_http_status}` : "";
  const error = String(row.last_error || "").trim();
  if (!error) return http;
  if (!http || error.includes(http)) return error;
  return `${http} · ${error}`;
}

function eventRow(row) {
  const open = () => openAttempts(row);
  const errorText = lastErrorText(row);
  const retryNote = isRetrying(row)
    ? h("div", { class: "status-note", "data-testid": "event-next", title: row.next_attempt_at },
      nextAttemptText(row.next_attempt_at), scheduleNote(row))
    : row.status === "pending" && row.next_attempt_at && !row.waiting_behind
      ? h("div", { class: "status-note", title: row.next_attempt_at }, `due ${formatWhen(row.next_attempt_at)}`) : null;
  return h("tr", {
    tabindex: "0", "data-testid": "event-row", "data-event-id": row.event_id, "data-status": row.status,
    "aria-label": `${row.event_type}, ${deliveryStatusLabel(row)}, ${row.attempts} attempt(s). Open attempts.`,
    onclick: open,
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } },
  },
  h("td", {}, timeCell(row.created_at)),
  h("td", { class: "mono", "data-testid": "event-type" }, row.event_type),
  h("td", { title: row.store_id }, storeName(row.store_id)),
  h("td", {}, deliveryStatusBadge(row, "event-status"), retryNote),
  h("td", { class: "num", "data-testid": "event-attempts" }, String(row.attempts ?? 0)),
  h("td", { class: "cell-error", title: errorText, "data-testid": "event-error" }, errorText || h("span", { class: "muted" }, "—")),
  h("td", { class: "cell-actions" }, h("button", {
    type: "button", class: "btn btn-sm", tabindex: "-1",
    onclick: (e) => { e.stopPropagation(); open(); },
  }, "Attempts")));
}

function startEventsTimer() {
  stopEventsTimer();
  if (!state.events) return;
  state.events.timer = setInterval(() => {
    if (!state.events || !$("events-auto").checked || document.hidden) return;
    loadEvents({ quiet: true });
  }, EVENTS_REFRESH_MS);
}

function stopEventsTimer() {
  if (state.events?.timer) clearInterval(state.events.timer);
  if (state.events) state.events.timer = null;
}

function onFiltersChanged() {
  const ev = state.events;
  if (!ev) return;
  ev.cursor = null;
  ev.back = [];
  writeHashParams(`/webhooks/${encodeURIComponent(ev.webhook.id)}/events`, eventFilters());
  loadEvents();
}

/** The retries a pending delivery still has: "retry 2 at 10:15:02; retry 3 about 10:20". */
function retryScheduleText(schedule) {
  return (schedule || []).map((r) => `retry ${r.retry} ${r.estimate ? "about" : "at"} ${formatWhen(r.at)}`).join("; ");
}

function scheduleNote(row) {
  const rest = (row.retry_schedule || []).length;
  return rest > 1 ? ` (${rest} retries left)` : rest === 1 ? " (last retry)" : "";
}

// ---------------------------------------------------------------------------------------------
// A webhook's health: attempts per bucket from GET /v1/webhooks/{id}/stats, as an inline SVG

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const child of children) if (child !== null && child !== undefined) el.append(child);
  return el;
}

function successRate(stats) {
  const attempts = Number(stats?.attempts || 0);
  if (!attempts) return null;
  let rate = stats.success_rate;
  if (rate === null || rate === undefined) rate = Number(stats.succeeded || 0) / attempts;
  rate = Number(rate);
  return rate <= 1 ? rate * 100 : rate; // a fraction by the contract; a percentage read as one
}

function percentText(pct) {
  if (pct >= 100) return "100 %";
  return `${(Math.floor(pct * 10) / 10).toLocaleString(undefined, { maximumFractionDigits: 1 })} %`;
}

const WINDOW_LABELS = { "24h": "the last 24 hours", "7d": "the last 7 days" };

function rateText(stats, { short = false } = {}) {
  const pct = successRate(stats);
  if (pct === null) return short ? "No attempts · " : `No attempts in ${WINDOW_LABELS[stats?.window] || "this window"}.`;
  if (short) return `${percentText(pct)} · `;
  const n = Number(stats.attempts);
  return `${percentText(pct)} successful: ${n} attempt${n === 1 ? "" : "s"}, ${Number(stats.succeeded || 0)} successful, `
    + `${Number(stats.failed || 0)} failed in ${WINDOW_LABELS[stats.window] || stats.window}.`;
}

/** Bars per bucket, successful (green) under failed (red), scaled to the busiest bucket; a <title> per bar. */
function healthChart(stats, { width, height, compact = false }) {
  const buckets = stats?.buckets || [];
  const max = Math.max(1, ...buckets.map((b) => Number(b.succeeded || 0) + Number(b.failed || 0)));
  const n = Math.max(1, buckets.length);
  const gap = compact ? 1 : 2;
  const barWidth = Math.max(1, (width - gap * (n - 1)) / n);
  const label = `Attempts per ${Math.round(Number(stats?.bucket_seconds || 3600) / 60)} minutes over `
    + `${WINDOW_LABELS[stats?.window] || "the window"}: ${rateText(stats)}`;
  const chart = svg("svg", { class: compact ? "chart chart-mini" : "chart", viewBox: `0 0 ${width} ${height}`,
    width, height, role: "img", "aria-label": label, preserveAspectRatio: "none" });
  chart.append(svg("title", {}, label));
  buckets.forEach((b, i) => {
    const x = i * (barWidth + gap);
    const ok = Number(b.succeeded || 0);
    const bad = Number(b.failed || 0);
    const okHeight = ok ? Math.max(1, (ok / max) * (height - 1)) : 0;
    const badHeight = bad ? Math.max(1, (bad / max) * (height - 1)) : 0;
    const bar = svg("g", { class: "bar" },
      svg("title", {}, `${formatTime(b.start)}: ${Number(b.attempts || ok + bad)} attempts, ${ok} successful, ${bad} failed`),
      svg("rect", { class: "slot", x, y: 0, width: barWidth, height }));
    if (ok) bar.append(svg("rect", { class: "ok", x, y: height - okHeight, width: barWidth, height: okHeight }));
    if (bad) bar.append(svg("rect", { class: "bad", x, y: height - okHeight - badHeight, width: barWidth, height: badHeight }));
    chart.append(bar);
  });
  return chart;
}

async function loadHealth() {
  const ev = state.events;
  if (!ev) return;
  ev.healthAt = Date.now();
  const win = state.healthWindow;
  for (const b of document.querySelectorAll("#health-panel [data-window]")) {
    b.setAttribute("aria-pressed", String(b.dataset.window === win));
  }
  try {
    const stats = await api("GET", `/v1/webhooks/${encodeURIComponent(ev.webhook.id)}/stats` + query({ window: win }));
    if (state.events !== ev || state.healthWindow !== win) return;
    $("health-summary").textContent = rateText(stats);
    $("health-chart").replaceChildren(healthChart(stats, { width: 480, height: 64 }),
      h("div", { class: "chart-axis muted" },
        h("span", {}, formatWhen(stats?.buckets?.[0]?.start)), h("span", {}, "now")));
  } catch (err) {
    if (state.events !== ev) return;
    $("health-chart").replaceChildren();
    $("health-summary").textContent = err instanceof ApiError && err.status === 401 ? "" : `Health unavailable: ${err.message}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Recovery: redeliver every failed delivery of this webhook since a time (POST .../recover), with progress

function stopRecoveryPoll() {
  if (state.events?.recoveryTimer) clearTimeout(state.events.recoveryTimer);
  if (state.events) state.events.recoveryTimer = null;
}

function renderRecovery(r) {
  const box = $("recover-progress");
  show(box);
  box.dataset.status = r.status;
  const total = Number(r.total || 0);
  const done = Number(r.done || 0);
  const range = r.until ? `between ${formatTime(r.since)} and ${formatTime(r.until)}` : `since ${formatTime(r.since)}`;
  const bar = $("recover-bar");
  bar.max = Math.max(total, 1);
  bar.value = total ? done : r.status === "finished" ? 1 : 0;
  const outcome = `${Number(r.succeeded || 0)} succeeded, ${Number(r.failed || 0)} failed`;
  $("recover-text").textContent = r.status === "finished"
    ? total
      ? `Recovery finished: ${total} failed deliver${total === 1 ? "y" : "ies"} ${range} redelivered; ${outcome}.`
      : `Recovery finished: no failed deliveries ${range}.`
    : `Recovering ${range}: ${done} of ${total} redelivered; ${outcome} so far.`;
  $("recover-start").disabled = r.status !== "finished";
}

async function loadRecoveries() {
  const ev = state.events;
  if (!ev) return;
  try {
    const res = await api("GET", `/v1/webhooks/${encodeURIComponent(ev.webhook.id)}/recoveries`);
    if (state.events !== ev) return;
    const latest = res?.data?.[0];
    if (!latest) return;
    ev.recovery = latest;
    renderRecovery(latest);
    if (latest.status !== "finished") pollRecovery();
  } catch {
    // (the form still works; starting a recovery reports its own errors)
  }
}

function pollRecovery() {
  const ev = state.events;
  if (!ev?.recovery) return;
  stopRecoveryPoll();
  ev.recoveryTimer = setTimeout(async () => {
    if (state.events !== ev) return;
    try {
      const r = await api("GET", `/v1/webhooks/${encodeURIComponent(ev.webhook.id)}/recoveries/${encodeURIComponent(ev.recovery.id)}`);
      if (state.events !== ev) return;
      ev.recovery = r;
      renderRecovery(r);
      setMessage($("recover-message"), "");
      if (r.status === "finished") {
        loadEvents({ quiet: true });
        loadHealth();
        return;
      }
    } catch (err) {
      if (state.events !== ev) return;
      reportError(err, $("recover-message"));
    }
    pollRecovery();
  }, RECOVERY_POLL_MS);
}

async function startRecovery(e) {
  e.preventDefault();
  const ev = state.events;
  if (!ev) return;
  const since = fromLocalInput($("recover-since").value);
  const until = fromLocalInput($("recover-until").value);
  if (!since) {
    setMessage($("recover-message"), "Choose since when to recover failed deliveries.");
    $("recover-since").focus();
    return;
  }
  setMessage($("recover-message"), "");
  const range = until ? `between ${formatTime(since)} and ${formatTime(until)}` : `since ${formatTime(since)}`;
  const ok = await confirmDialog({
    title: "Recover failed deliveries?",
    text: `Every delivery to ${ev.webhook.url || "this webhook"} that ended failed ${range} is sent again.`,
    confirm: "Recover", danger: false,
  });
  if (!ok || state.events !== ev) return;
  const button = $("recover-start");
  button.disabled = true;
  try {
    const r = await api("POST", `/v1/webhooks/${encodeURIComponent(ev.webhook.id)}/recover`, until ? { since, until } : { since });
    if (state.events !== ev) return;
    ev.recovery = r;
    renderRecovery(r);
    if (r.status !== "finished") pollRecovery();
  } catch (err) {
    button.disabled = false;
    reportError(err, $("recover-message"));
  }
}

// ---------------------------------------------------------------------------------------------
// Events explorer (#/events): every event of the organization, newest first, and where each went

const EXPLORER_FILTER_INPUTS = { event_id: "explorer-event-id", status: "explorer-status",
  event_type: "explorer-event-type", store_id: "explorer-store", since: "explorer-since", until: "explorer-until" };

function showExplorerView(params = new URLSearchParams()) {
  leaveViews();
  setNav("events");
  show($("explorer-view"));
  document.title = "Events · hookstream";
  state.explorer = { cursor: null, back: [], next: null, rows: [], inFlight: false, timer: null, rendered: false };
  $("explorer-body").replaceChildren();
  show($("explorer-empty"), false);
  setMessage($("explorer-message"), "");
  $("explorer-updated").textContent = "";
  $("explorer-event-id").value = params.get("event_id") || "";
  selectOptions($("explorer-status"), "Any status", [["succeeded", "Successful"], ["failed", "Failed"], ["pending", "Pending"]],
    params.get("status"));
  selectOptions($("explorer-event-type"), "Any event type",
    [...state.eventTypes.map((t) => [t.type, t.type]), [TEST_EVENT_TYPE, `${TEST_EVENT_TYPE} (“Send test”)`]],
    params.get("event_type"));
  selectOptions($("explorer-store"), "Any store", state.stores.map((st) => [st.id, st.name || st.id]), params.get("store_id"));
  $("explorer-since").value = toLocalInput(params.get("since"));
  $("explorer-until").value = toLocalInput(params.get("until"));
  loadExplorer();
  startExplorerTimer();
}

function explorerFilters() {
  return {
    event_id: $("explorer-event-id").value.trim(),
    status: $("explorer-status").value,
    event_type: $("explorer-event-type").value,
    store_id: $("explorer-store").value,
    since: fromLocalInput($("explorer-since").value),
    until: fromLocalInput($("explorer-until").value),
  };
}

function onExplorerFiltersChanged() {
  const ex = state.explorer;
  if (!ex) return;
  ex.cursor = null;
  ex.back = [];
  writeHashParams("/events", explorerFilters());
  loadExplorer();
}

async function loadExplorer({ quiet = false } = {}) {
  const ex = state.explorer;
  if (!ex || ex.inFlight) return;
  ex.inFlight = true;
  const button = $("explorer-refresh");
  if (!quiet) button.disabled = true;
  try {
    const res = await api("GET", "/v1/events" + query({ limit: EVENTS_PAGE_SIZE, ...explorerFilters(), cursor: ex.cursor }));
    if (state.explorer !== ex) return;
    const rows = res?.data || [];
    const changed = !ex.rendered || JSON.stringify(rows) !== JSON.stringify(ex.rows) || (res?.next_cursor || null) !== ex.next;
    ex.rows = rows;
    ex.next = res?.next_cursor || null;
    setMessage($("explorer-message"), "");
    if (changed) renderExplorer();
    ex.rendered = true;
    $("explorer-updated").textContent = `Updated ${dateFormat.format(new Date())}`;
    refreshAttemptsSummary();
  } catch (err) {
    if (state.explorer === ex) reportError(err, $("explorer-message"));
  } finally {
    ex.inFlight = false;
    button.disabled = false;
  }
}

function renderExplorer() {
  const ex = state.explorer;
  const focused = document.activeElement?.closest?.("[data-delivery-key]")?.dataset.deliveryKey;
  const body = $("explorer-body");
  body.replaceChildren(...ex.rows.map(explorerRow));
  const empty = ex.rows.length === 0;
  show($("explorer-empty"), empty);
  show($("explorer-table"), !empty);
  const filters = explorerFilters();
  $("explorer-empty").querySelector("strong").textContent = filters.event_id
    ? `No event with the id ${filters.event_id}${Object.entries(filters).some(([k, v]) => k !== "event_id" && v) ? " matches these filters" : ""}.`
    : Object.values(filters).some(Boolean) || ex.cursor ? "No events match these filters." : "No events yet.";
  show($("explorer-next"), Boolean(ex.next));
  show($("explorer-first"), ex.back.length > 0);
  if (focused) [...body.querySelectorAll("[data-delivery-key]")].find((b) => b.dataset.deliveryKey === focused)?.focus();
}

/** An explorer delivery in the shape of a delivery log item, for the attempts dialog. */
function explorerDeliveryRow(event, d) {
  return {
    event_id: event.event_id, event_type: event.event_type, store_id: event.store_id, created_at: event.received_at,
    status: d.status, attempts: d.attempts, last_http_status: d.last_http_status, next_attempt_at: d.next_attempt_at,
    retry_schedule: d.retry_schedule, waiting_behind: d.waiting_behind,
  };
}

function explorerRow(event) {
  const deliveries = event.deliveries || [];
  return h("tr", { "data-testid": "explorer-row", "data-event-id": event.event_id },
    h("td", { class: "cell-time" }, timeCell(event.received_at),
      event.occurred_at && event.occurred_at !== event.received_at
        ? h("div", { class: "muted small", title: event.occurred_at }, "occurred ", formatWhen(event.occurred_at)) : null),
    h("td", { class: "cell-event" },
      h("div", { class: "mono", "data-testid": "explorer-type" }, event.event_type),
      h("div", { class: "mono muted small break", "data-testid": "explorer-id" }, event.event_id)),
    h("td", { title: event.store_id }, storeName(event.store_id)),
    h("td", { class: "cell-deliveries" }, deliveries.length
      ? h("ul", { class: "deliveries" }, deliveries.map((d) => {
        const row = explorerDeliveryRow(event, d);
        const attempts = Number(d.attempts || 0);
        const facts = [`${attempts} attempt${attempts === 1 ? "" : "s"}`];
        if (d.last_http_status) facts.push(`HTTP ${d.last_http_status}`);
        const open = () => openAttempts(row, d.webhook_id, d.webhook_url);
        return h("li", {}, h("button", {
          type: "button", class: "delivery", "data-testid": "explorer-delivery", "data-webhook-id": d.webhook_id,
          "data-delivery-key": `${event.event_id} ${d.webhook_id}`,
          "aria-label": `${d.webhook_url}: ${deliveryStatusLabel(row)}, ${facts.join(", ")}. Open attempts.`,
          onclick: open,
        },
        h("span", { class: "delivery-url" }, h("span", { class: "mono" }, d.webhook_url),
          d.webhook_description ? h("span", { class: "muted small delivery-desc" }, d.webhook_description) : null),
        h("span", { class: "delivery-facts" },
          deliveryStatusBadge(row, "explorer-delivery-status"),
          isRetrying(row) ? h("span", { class: "status-note-inline" }, nextAttemptText(d.next_attempt_at)) : null,
          h("span", { class: "muted" }, facts.join(" · ")))));
      }))
      : h("span", { class: "muted", "data-testid": "explorer-no-delivery" }, "Went to no webhook"),
    Number(event.deliveries_total || 0) > deliveries.length
      ? h("p", { class: "muted small more-deliveries" },
        `and ${Number(event.deliveries_total) - deliveries.length} more webhooks (see each webhook's “View events”)`)
      : null));
}

function startExplorerTimer() {
  stopExplorerTimer();
  if (!state.explorer) return;
  state.explorer.timer = setInterval(() => {
    if (!state.explorer || !$("explorer-auto").checked || document.hidden) return;
    loadExplorer({ quiet: true });
  }, EVENTS_REFRESH_MS);
}

function stopExplorerTimer() {
  if (state.explorer?.timer) clearInterval(state.explorer.timer);
  if (state.explorer) state.explorer.timer = null;
}

// ---------------------------------------------------------------------------------------------
// Attempts of one delivery

/** The attempts dialog of one delivery: ``row`` is a delivery log item (or one made from the events explorer). */
function openAttempts(row, webhookId = state.events?.webhook.id, webhookUrl = state.events?.webhook.url) {
  if (!webhookId) return;
  stopAttemptsTimer();
  state.attempts = { webhookId, webhookUrl, row, timer: null, inFlight: false, count: null, open: new Set(), details: new Map() };
  $("attempts-subtitle").textContent = row.event_id;
  $("attempts-list").replaceChildren(h("p", { class: "muted" }, "Loading…"));
  $("attempts-status").textContent = "";
  setMessage($("attempts-message"), "");
  renderAttemptsSummary(row);
  const dialog = $("attempts-dialog");
  if (!dialog.open) dialog.showModal();
  loadAttempts();
  state.attempts.timer = setInterval(() => { if (!document.hidden) loadAttempts(); }, ATTEMPTS_REFRESH_MS);
}

function stopAttemptsTimer() {
  if (state.attempts?.timer) clearInterval(state.attempts.timer);
  state.attempts = null;
}

function renderAttemptsSummary(row) {
  const item = (label, value, wide = false) => [h("dt", {}, label), h("dd", { class: wide ? "wide" : null }, value)];
  const schedule = row.status === "pending" ? retryScheduleText(row.retry_schedule) : "";
  const at = state.attempts;
  $("attempts-summary").replaceChildren(
    ...item("Event type", h("span", { class: "mono" }, row.event_type)),
    ...item("Status", h("span", {}, deliveryStatusBadge(row, "attempts-delivery-status"),
      isRetrying(row) ? h("span", { class: "status-note-inline" }, nextAttemptText(row.next_attempt_at)) : null)),
    ...item("Store", storeName(row.store_id)),
    ...item("Created", timeCell(row.created_at)),
    ...(at?.webhookUrl ? item("Webhook", h("span", {},
      h("span", { class: "mono break", "data-testid": "attempts-webhook" }, at.webhookUrl),
      state.events?.webhook.id === at.webhookId ? null : h("a", {
        class: "summary-link", href: `#/webhooks/${encodeURIComponent(at.webhookId)}/events`, "data-testid": "attempts-webhook-log",
        onclick: () => $("attempts-dialog").close(),
      }, "its delivery log")), true) : []),
    ...(schedule ? item("Retries left", h("span", { "data-testid": "retry-schedule" }, schedule), true) : []));
}

/** The dialog's delivery, fresh from the page behind it (the delivery log or the events explorer). */
function refreshAttemptsSummary() {
  const at = state.attempts;
  if (!at) return;
  let fresh = null;
  if (state.events?.webhook.id === at.webhookId) fresh = state.events.rows.find((r) => r.event_id === at.row.event_id);
  if (!fresh && state.explorer) {
    const event = state.explorer.rows.find((e) => e.event_id === at.row.event_id);
    const delivery = event?.deliveries?.find((d) => d.webhook_id === at.webhookId);
    if (delivery) fresh = explorerDeliveryRow(event, delivery);
  }
  if (fresh && JSON.stringify(fresh) !== JSON.stringify(at.row)) { at.row = fresh; renderAttemptsSummary(fresh); }
}

async function loadAttempts() {
  const at = state.attempts;
  if (!at || at.inFlight) return;
  at.inFlight = true;
  try {
    const res = await api("GET", `/v1/webhooks/${encodeURIComponent(at.webhookId)}/events/${encodeURIComponent(at.row.event_id)}/attempts`);
    if (state.attempts !== at) return;
    const data = res?.data || [];
    // (with what the delivery waits behind, which the text shown while there are no attempts names)
    const snapshot = JSON.stringify([data, at.row.status === "pending" ? at.row.waiting_behind || null : null]);
    if (snapshot !== at.snapshot) {
      if (at.snapshot !== undefined && at.redelivering) {
        $("attempts-status").textContent = "";
        at.redelivering = false;
      }
      renderAttempts(data);
    }
    at.snapshot = snapshot;
    setMessage($("attempts-message"), "");
  } catch (err) {
    if (state.attempts === at) reportError(err, $("attempts-message"));
  } finally {
    at.inFlight = false;
  }
}

function renderAttempts(attempts) {
  const list = $("attempts-list");
  const sorted = [...attempts].sort((a, b) => (a.attempt ?? 0) - (b.attempt ?? 0));
  if (!sorted.length) {
    const behind = state.attempts?.row.status === "pending" ? state.attempts.row.waiting_behind : null;
    list.replaceChildren(h("p", { class: "muted", "data-testid": "attempts-count", "data-count": "0" }, behind
      ? `No attempts yet: delivered in order, it waits behind the delivery of ${behind}.`
      : "No attempts yet: the delivery is queued."));
    return;
  }
  const at = state.attempts;
  list.replaceChildren(
    h("p", { class: "muted", "data-testid": "attempts-count", "data-count": String(sorted.length) },
      `${sorted.length} attempt${sorted.length === 1 ? "" : "s"}`),
    ...sorted.map((a) => h("article", { class: "attempt", "data-testid": "attempt", "data-attempt": String(a.attempt) },
      h("div", { class: "attempt-head" },
        h("span", { class: "n" }, `Attempt ${a.attempt}`),
        statusBadge(a.status, "attempt-status"),
        h("span", { class: "http", "data-testid": "attempt-http" },
          a.http_status ? `HTTP ${a.http_status}` : "No HTTP response"),
        h("span", { class: "muted" }, timeCell(a.started_at)),
        h("span", { class: "muted" }, a.duration_ms != null ? `${Math.round(Number(a.duration_ms))} ms` : "")),
      a.error && a.error !== `HTTP ${a.http_status}` ? h("p", { class: "err", "data-testid": "attempt-error" }, a.error) : null,
      !a.response && a.response_excerpt
        ? h("pre", { "data-testid": "attempt-response", "aria-label": "Response body excerpt" }, a.response_excerpt) : null,
      attemptDetail(a, at))));
}

// One attempt's request as sent and response as received: tenant data, so text nodes only.

function headersTable(headers, testid) {
  const entries = Object.entries(headers || {});
  if (!entries.length) return h("p", { class: "muted" }, "No headers.");
  return h("table", { class: "headers", "data-testid": testid },
    h("tbody", {}, entries.map(([name, value]) => h("tr", {},
      h("th", { scope: "row" }, name), h("td", {}, Array.isArray(value) ? value.join(", ") : String(value))))));
}

function renderAttemptDetail(container, a, full) {
  const request = (full || a).request;
  const response = (full || a).response;
  const body = full?.request?.body;
  const requestPart = request
    ? [h("p", { class: "detail-line" }, h("span", { class: "method" }, "POST"), " ",
      h("span", { class: "mono break", "data-testid": "attempt-request-url" }, request.url)),
    h("h4", {}, "Headers"), headersTable(request.headers, "attempt-request-headers"),
    h("h4", {}, "Body"),
    body !== undefined && body !== null
      ? h("pre", { class: "body", "data-testid": "attempt-request-body" }, String(body))
      : h("p", { class: "muted" }, full === undefined ? "Loading the body…" : "The body is not available.")]
    : [h("p", { class: "muted" }, "The request of this attempt was not recorded.")];
  const responsePart = response
    ? [h("p", { class: "detail-line" }, h("span", { class: "mono", "data-testid": "attempt-response-status" }, `HTTP ${response.status}`)),
      h("h4", {}, "Headers"), headersTable(response.headers, "attempt-response-headers"),
      h("h4", {}, "Body excerpt"),
      response.excerpt
        ? h("pre", { class: "body", "data-testid": "attempt-response-excerpt" }, String(response.excerpt))
        : h("p", { class: "muted" }, "Empty body.")]
    : [h("p", { class: "muted", "data-testid": "attempt-no-response" },
      a.error ? `No response: ${a.error}` : "No response was received.")];
  container.replaceChildren(
    h("section", { class: "detail-part", "data-testid": "attempt-request" }, h("h3", {}, "Request"), ...requestPart),
    h("section", { class: "detail-part", "data-testid": "attempt-response-detail" }, h("h3", {}, "Response"), ...responsePart));
}

function attemptDetail(a, at) {
  const n = a.attempt;
  const content = h("div", { class: "detail-content" });
  const details = h("details", { class: "attempt-detail", "data-testid": "attempt-detail" },
    h("summary", {}, "Request and response"), content);
  const fill = () => renderAttemptDetail(content, a, at?.details.get(n));
  fill();
  details.addEventListener("toggle", async () => {
    if (!at) return;
    if (!details.open) { at.open.delete(n); return; }
    at.open.add(n);
    if (at.details.has(n)) return;
    try {
      const full = await api("GET", `/v1/webhooks/${encodeURIComponent(at.webhookId)}/events/`
        + `${encodeURIComponent(at.row.event_id)}/attempts/${encodeURIComponent(n)}`);
      at.details.set(n, full || null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      at.details.set(n, null);
    }
    if (state.attempts === at && details.isConnected) fill();
  });
  if (at?.open.has(n)) details.open = true;
  return details;
}

async function redeliver() {
  const at = state.attempts;
  if (!at) return;
  const button = $("attempts-redeliver");
  button.disabled = true;
  $("attempts-status").textContent = "Redelivering…";
  try {
    await api("POST", `/v1/webhooks/${encodeURIComponent(at.webhookId)}/events/${encodeURIComponent(at.row.event_id)}/redeliver`, {});
    if (state.attempts === at) {
      at.redelivering = true;
      $("attempts-status").textContent = "Redelivery queued; the new attempt appears below.";
    }
    loadEvents({ quiet: true });
    loadAttempts();
  } catch (err) {
    $("attempts-status").textContent = "";
    reportError(err, $("attempts-message"));
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  $("signin-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", () => signOut({ keepLocation: false }));
  $("add-webhook").addEventListener("click", () => openWebhookForm(null));
  $("webhooks-more").addEventListener("click", () => loadWebhooks({ append: true }));

  const form = $("webhook-form");
  form.addEventListener("submit", onSubmitWebhook);
  $("wh-url").addEventListener("input", () => onFormInput("url"));
  $("wh-description").addEventListener("input", () => onFormInput("description"));
  $("wh-filter").addEventListener("input", () => { onFormInput("filter"); $("wh-filter-result").textContent = ""; });
  $("wh-filter-test").addEventListener("click", testFilter);
  $("wh-enabled").addEventListener("change", () => onFormInput("enabled"));
  $("wh-ordering").addEventListener("change", () => onFormInput("ordering"));
  $("wh-stores-all").addEventListener("change", (ev) => {
    for (const box of $("wh-stores-list").querySelectorAll("input")) box.checked = ev.target.checked;
    onFormInput("store_ids");
  });

  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  $("webhook-dialog").addEventListener("close", () => { state.form = null; });
  $("attempts-dialog").addEventListener("close", stopAttemptsTimer);
  $("attempts-redeliver").addEventListener("click", redeliver);

  $("secret-copy").addEventListener("click", copySecret);
  $("secret-done").addEventListener("click", () => $("secret-dialog").close());
  // Shown once: the secret leaves the page when the dialog closes.
  $("secret-dialog").addEventListener("close", () => { $("secret-value").value = ""; $("secret-copied").textContent = ""; });

  $("test-form").addEventListener("submit", onSubmitTest);
  $("test-dialog").addEventListener("close", () => { state.testWebhook = null; });
  $("recover-form").addEventListener("submit", startRecovery);
  for (const button of document.querySelectorAll("#health-panel [data-window]")) {
    button.addEventListener("click", () => { state.healthWindow = button.dataset.window; loadHealth(); });
  }

  $("explorer-search").addEventListener("submit", (e) => { e.preventDefault(); onExplorerFiltersChanged(); });
  $("explorer-event-id").addEventListener("search", onExplorerFiltersChanged); // the field's clear (×) button
  $("explorer-filters").addEventListener("submit", (e) => e.preventDefault());
  for (const [key, id] of Object.entries(EXPLORER_FILTER_INPUTS)) {
    if (key !== "event_id") $(id).addEventListener("change", onExplorerFiltersChanged);
  }
  $("explorer-clear").addEventListener("click", () => {
    for (const id of Object.values(EXPLORER_FILTER_INPUTS)) $(id).value = "";
    onExplorerFiltersChanged();
  });
  $("explorer-refresh").addEventListener("click", () => loadExplorer());
  $("explorer-auto").addEventListener("change", (ev) => { if (ev.target.checked) loadExplorer({ quiet: true }); });
  $("explorer-next").addEventListener("click", () => {
    const ex = state.explorer;
    if (!ex?.next) return;
    ex.back.push(ex.cursor);
    ex.cursor = ex.next;
    loadExplorer();
  });
  $("explorer-first").addEventListener("click", () => {
    const ex = state.explorer;
    if (!ex) return;
    ex.cursor = null;
    ex.back = [];
    loadExplorer();
  });

  $("events-back").addEventListener("click", goToWebhooks);
  $("events-refresh").addEventListener("click", () => loadEvents());
  $("events-auto").addEventListener("change", (ev) => { if (ev.target.checked) loadEvents({ quiet: true }); });
  for (const id of Object.values(EVENT_FILTER_INPUTS)) $(id).addEventListener("change", onFiltersChanged);
  $("events-filters").addEventListener("submit", (e) => e.preventDefault());
  $("filters-clear").addEventListener("click", () => {
    for (const id of Object.values(EVENT_FILTER_INPUTS)) $(id).value = "";
    onFiltersChanged();
  });
  $("events-next").addEventListener("click", () => {
    const ev = state.events;
    if (!ev?.next) return;
    ev.back.push(ev.cursor);
    ev.cursor = ev.next;
    loadEvents();
  });
  $("events-first").addEventListener("click", () => {
    const ev = state.events;
    if (!ev) return;
    ev.cursor = null;
    ev.back = [];
    loadEvents();
  });

  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.events && $("events-auto").checked) loadEvents({ quiet: true });
    if (!document.hidden && state.explorer && $("explorer-auto").checked) loadExplorer({ quiet: true });
  });
}

async function boot() {
  wire();
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (!key) {
    signOut();
    return;
  }
  state.key = key;
  try {
    await loadReferenceData();
    enterApp();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      enterApp(); // the API is unreachable right now; the views show the error
      reportError(err);
    }
  }
}

boot();
