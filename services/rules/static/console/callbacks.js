// The callback log: the organisation's callbacks from the notifier (through the
// console's same-origin proxy), filtered by API client and status, newest first,
// a page at a time. Editors and admins replay a parked callback; the page then
// follows it until the receiver has answered.
import "./shell.js";
import { get, post } from "./api.js";
import { formatDate } from "./time.js";
import { announce, el, page, showError } from "./ui.js";

const form = document.getElementById("callback-filters");
const rows = document.getElementById("callbacks");
const more = document.getElementById("callbacks-more");
const error = document.getElementById("callbacks-error");

const STATUS_LABELS = {
  pending: "Pending",
  delivered: "Delivered",
  parked: "Parked",
  failed: "Failed",
};
// How often, and how long, the page looks again after a replay.
const FOLLOW_EVERY_MS = 1000;
const FOLLOW_FOR_MS = 60000;

let clientNames = {};
let following = null;

function filters() {
  const query = new URLSearchParams();
  if (form.clientId.value) query.set("clientId", form.clientId.value);
  if (form.status.value) query.set("status", form.status.value);
  return query;
}

function lastResponse(item) {
  if (item.lastAttemptAt === null && item.lastStatusCode === null && !item.lastError) return "—";
  const what = item.lastStatusCode !== null ? `HTTP ${item.lastStatusCode}` : item.lastError;
  const when = item.lastAttemptAt ? ` · ${formatDate(item.lastAttemptAt, page.timeZone)}` : "";
  return `${what || "—"}${when}`;
}

function nextRetry(item) {
  if (item.status !== "pending") return "—";
  return formatDate(item.nextAttemptAt, page.timeZone);
}

function replayButton(item) {
  if (!page.canEdit) return null;
  if (item.status !== "parked") return el("td", {});
  const button = el("button", {
    type: "button",
    text: "Replay",
    "aria-label": `Replay callback ${item.requestId}`,
  });
  button.addEventListener("click", () => replay(item, button));
  return el("td", {}, button);
}

function row(item) {
  const client = clientNames[item.clientId] || item.clientId;
  return el(
    "tr",
    { "data-delivery": item.id, "data-status": item.status },
    el("td", {}, el("code", { text: item.requestId })),
    el("td", { text: client }),
    el("td", {}, el("span", { class: `badge status-${item.status}`, text: STATUS_LABELS[item.status] || item.status })),
    el("td", { text: String(item.attempts) }),
    el("td", { text: lastResponse(item), title: item.lastError || "" }),
    el("td", { text: nextRetry(item) }),
    el("td", { text: item.host || "" }),
    replayButton(item),
  );
}

async function show(cursor = null) {
  const query = filters();
  if (cursor) query.set("cursor", cursor);
  try {
    const found = await get(`/console/api/deliveries?${query}`);
    const items = found.items.map(row);
    if (cursor) rows.append(...items);
    else rows.replaceChildren(...items);
    showError(error, "");
    document.getElementById("callbacks-empty").hidden = rows.children.length > 0;
    more.hidden = !found.nextCursor;
    more.onclick = () => show(found.nextCursor);
    return found.items;
  } catch (failure) {
    showError(error, failure.message);
    return [];
  }
}

// After a replay the delivery is pending again; look again until it is not (the
// receiver answered, or the callback was parked again) or a minute has passed.
function follow(deliveryId) {
  clearInterval(following);
  const until = Date.now() + FOLLOW_FOR_MS;
  following = setInterval(async () => {
    const items = await show();
    const replayed = items.find((item) => item.id === deliveryId);
    const settled = !replayed || replayed.status !== "pending";
    if (settled || Date.now() > until) {
      clearInterval(following);
      if (replayed && replayed.status === "delivered") {
        announce(`Callback ${replayed.requestId} delivered.`);
      }
    }
  }, FOLLOW_EVERY_MS);
}

async function replay(item, button) {
  button.disabled = true;
  try {
    await post(`/console/api/deliveries/${item.id}/replay`);
    announce(`Callback ${item.requestId} is being sent again.`);
    await show();
    follow(item.id);
  } catch (failure) {
    button.disabled = false;
    showError(error, failure.message);
  }
}

async function fillClients() {
  const wanted = new URLSearchParams(location.search);
  const select = form.clientId;
  try {
    const clients = (await get("/v1/clients")).items;
    clientNames = Object.fromEntries(clients.map((client) => [client.clientId, client.name]));
    select.append(
      ...clients.map((client) =>
        el("option", { value: client.clientId, text: `${client.name} (${client.environment})` }),
      ),
    );
  } catch (failure) {
    showError(error, failure.message);
  }
  const clientId = wanted.get("clientId");
  if (clientId && !(clientId in clientNames)) {
    select.append(el("option", { value: clientId, text: clientId }));
  }
  select.value = clientId || "";
  form.status.value = STATUS_LABELS[wanted.get("status")] ? wanted.get("status") : "";
}

form.addEventListener("change", () => {
  const query = filters().toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
  clearInterval(following);
  show();
});
form.addEventListener("submit", (event) => event.preventDefault());
document.getElementById("callbacks-refresh").addEventListener("click", () => show());

await fillClients();
await show();
