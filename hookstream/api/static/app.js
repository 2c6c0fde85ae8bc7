// hookstream console: Organization > Webhooks.
//
// Plain ES module, no build step, no external assets. Every piece of API text reaches the page
// through textContent / DOM nodes (the `h` helper), never through innerHTML.

const KEY_STORAGE = "hookstream.apiKey";
const EVENTS_PAGE_SIZE = 20;
const EVENTS_REFRESH_MS = 3000;
const ATTEMPTS_REFRESH_MS = 1500;
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
  events: null,   // { webhook, cursor, back: [], next, rows, inFlight, timer }
  attempts: null, // { webhookId, row, timer, inFlight }
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

function timeCell(iso) {
  return h("time", { datetime: iso || "", title: iso || "" }, formatTime(iso));
}

function statusBadge(status, testid) {
  const label = STATUS_LABELS[status] || String(status || "unknown");
  return h("span", { class: `status status-${status}`, "data-testid": testid, "data-status": status }, label);
}

/** A delivery's status; one stored behind an earlier event of its resource (ordering per_resource) says whose. */
function deliveryStatusLabel(row) {
  if (row.status === "pending" && row.waiting_behind) return `waiting behind ${row.waiting_behind}`;
  return STATUS_LABELS[row.status] || String(row.status || "unknown");
}

function deliveryStatusBadge(row, testid) {
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
  stopEventsTimer();
  stopAttemptsTimer();
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  state.webhooks = [];
  state.events = null;
  $("webhooks-body").replaceChildren();
  $("events-body").replaceChildren();
  show($("sign-out"), false);
  show($("webhooks-view"), false);
  show($("events-view"), false);
  show($("crumb-events"), false);
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
// Routing: #/webhooks and #/webhooks/<id>/events

function route() {
  if (!state.key) return;
  const match = /^#\/webhooks\/([^/]+)\/events$/.exec(location.hash);
  if (match) showEventsView(decodeURIComponent(match[1]));
  else showWebhooksView();
}

function goToWebhooks() {
  if (location.hash === "#/webhooks") route();
  else location.hash = "#/webhooks";
}

// ---------------------------------------------------------------------------------------------
// Webhooks list

function showWebhooksView() {
  stopEventsTimer();
  state.events = null;
  show($("events-view"), false);
  show($("crumb-events"), false);
  $("crumb-webhooks").setAttribute("aria-current", "page");
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
    h("td", { class: "num" },
      h("span", { class: failures > 0 ? "failures-some" : "failures-zero", "data-testid": "wh-failures",
        title: `${failures} failed attempt${failures === 1 ? "" : "s"} in the last 24 hours` }, String(failures))),
    h("td", { class: "cell-actions" },
      action("View events", "wh-view-events", () => { location.hash = `#/webhooks/${encodeURIComponent(wh.id)}/events`; }),
      action("Send test", "wh-test", (ev) => sendTest(wh, ev.currentTarget)),
      action("Edit", "wh-edit", () => openWebhookForm(wh)),
      action("Rotate secret", "wh-rotate", () => rotateSecret(wh)),
      action("Delete", "wh-delete", () => deleteWebhook(wh), "btn-danger-text")));
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

async function sendTest(wh, button) {
  button.disabled = true;
  try {
    const res = await api("POST", `/v1/webhooks/${encodeURIComponent(wh.id)}/test`, {});
    toast(`Test event ${res?.event_id || ""} sent${res?.status ? ` (${res.status})` : ""}. See “View events”.`);
  } catch (err) {
    reportError(err);
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
  if (!url) missing.push("an endpoint URL");
  if (!events.length) missing.push("at least one event");
  if (!stores.length) missing.push("at least one store");
  $("wh-save-hint").textContent = missing.length ? `Enter ${missing.join(", ")}.` : "";
  $("wh-save").disabled = missing.length > 0 || Boolean(state.form?.submitting);
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

async function showEventsView(webhookId) {
  show($("webhooks-view"), false);
  show($("events-view"));
  show($("crumb-events"));
  $("crumb-webhooks").removeAttribute("aria-current");
  stopEventsTimer();
  let wh = state.webhooks.find((w) => w.id === webhookId);
  state.events = { webhook: wh || { id: webhookId }, cursor: null, back: [], next: null, rows: [], inFlight: false, timer: null };
  $("events-body").replaceChildren();
  show($("events-empty"), false);
  setMessage($("events-message"), "");
  $("events-endpoint").textContent = wh?.url || "";
  $("events-updated").textContent = "";
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
  $("events-title").textContent = "Events";
  $("events-endpoint").textContent = wh.url;
  $("crumb-events-label").textContent = `Events · ${wh.description || wh.url}`;
  document.title = `Events · ${wh.url} · hookstream`;
  fillFilterOptions(wh);
  await loadEvents();
  startEventsTimer();
}

function fillFilterOptions(wh) {
  const types = (wh.event_types && wh.event_types.length) ? wh.event_types : state.eventTypes.map((t) => t.type);
  $("filter-status").value = "";
  $("filter-event-type").replaceChildren(h("option", { value: "" }, "Any event type"),
    ...types.map((t) => h("option", { value: t }, t)),
    h("option", { value: TEST_EVENT_TYPE }, `${TEST_EVENT_TYPE} (“Send test”)`));
  const stores = (wh.store_ids && wh.store_ids.length) ? wh.store_ids : state.stores.map((s) => s.id);
  $("filter-store").replaceChildren(h("option", { value: "" }, "Any store"),
    ...stores.map((id) => h("option", { value: id }, storeName(id))));
}

function eventFilters() {
  return {
    status: $("filter-status").value,
    event_type: $("filter-event-type").value,
    store_id: $("filter-store").value,
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

function lastErrorText(row) {
  if (row.status === "succeeded") return "";
  const parts = [];
  if (row.last_http_status) parts.push(`HTTP ${row.last_http_status}`);
  if (row.last_error) parts.push(row.last_error);
  return parts.join(" · ");
}

function eventRow(row) {
  const open = () => openAttempts(row);
  const errorText = lastErrorText(row);
  const retryNote = row.status === "pending" && row.next_attempt_at
    ? h("div", { class: "muted", title: row.next_attempt_at }, `next attempt ${formatTime(row.next_attempt_at)}`) : null;
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
  h("td", { class: "cell-error", title: errorText }, errorText || h("span", { class: "muted" }, "—")),
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
  if (!state.events) return;
  state.events.cursor = null;
  state.events.back = [];
  loadEvents();
}

// ---------------------------------------------------------------------------------------------
// Attempts of one delivery

function openAttempts(row) {
  const webhookId = state.events?.webhook.id;
  if (!webhookId) return;
  stopAttemptsTimer();
  state.attempts = { webhookId, row, timer: null, inFlight: false, count: null };
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
  const item = (label, value) => [h("dt", {}, label), h("dd", {}, value)];
  $("attempts-summary").replaceChildren(
    ...item("Event type", h("span", { class: "mono" }, row.event_type)),
    ...item("Status", deliveryStatusBadge(row, "attempts-delivery-status")),
    ...item("Store", storeName(row.store_id)),
    ...item("Created", timeCell(row.created_at)));
}

function refreshAttemptsSummary() {
  const at = state.attempts;
  if (!at || !state.events) return;
  const fresh = state.events.rows.find((r) => r.event_id === at.row.event_id);
  if (fresh) { at.row = fresh; renderAttemptsSummary(fresh); }
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
      a.error ? h("p", { class: "err", "data-testid": "attempt-error" }, a.error) : null,
      a.response_excerpt ? h("pre", { "data-testid": "attempt-response", "aria-label": "Response body excerpt" }, a.response_excerpt) : null)));
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

  $("events-back").addEventListener("click", goToWebhooks);
  $("events-refresh").addEventListener("click", () => loadEvents());
  $("events-auto").addEventListener("change", (ev) => { if (ev.target.checked) loadEvents({ quiet: true }); });
  for (const id of ["filter-status", "filter-event-type", "filter-store"]) {
    $(id).addEventListener("change", onFiltersChanged);
  }
  $("events-filters").addEventListener("submit", (e) => e.preventDefault());
  $("filters-clear").addEventListener("click", () => {
    for (const id of ["filter-status", "filter-event-type", "filter-store"]) $(id).value = "";
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
