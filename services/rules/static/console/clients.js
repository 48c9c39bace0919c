// API clients: the list per environment for every role; for admins, creating a client,
// rotating its secret, revoking it and setting its rate limit.
//
// A client's secrets exist in this page only in the panel that shows them once: they
// are never written to storage, the panel's text is cleared when it is closed or the
// page is left, and the API never answers them again.
import "./shell.js";
import { confirmAction } from "./actions.js";
import { api, get, post } from "./api.js";
import { formatDate } from "./time.js";
import { ENVIRONMENT_LABELS, announce, el, keepFocus, menuButton, openDialog, page, showError } from "./ui.js";

const isAdmin = document.body.dataset.isAdmin === "true";
const filters = document.getElementById("client-filters");
const body = document.getElementById("clients-body");
const empty = document.getElementById("clients-empty");
const panel = document.getElementById("issued-panel");
const CLIENT_STATUS = { active: "Active", revoked: "Revoked" };

const environment = () => filters.environment.value;
const clientUrl = (client, action) => `/v1/clients/${encodeURIComponent(client.clientId)}/${action}`;
const when = (iso, never) => (iso ? formatDate(iso, page.timeZone) : never);

function rateLimitText(limit) {
  if (!limit) return "Gateway default";
  const rate = new Intl.NumberFormat("en-GB", { maximumFractionDigits: 3 }).format(limit.perSecond);
  return `${rate}/s, burst ${limit.burst}`;
}

// --- the list -------------------------------------------------------------------------

function actions(client) {
  const items = [];
  if (isAdmin && client.status === "active") {
    items.push({ text: "Rotate secret", run: () => rotate(client) });
    items.push({ text: "Set rate limit", run: () => setRateLimit(client) });
    items.push({ text: "Revoke", run: () => revoke(client) });
  }
  return items;
}

function row(client) {
  const cell = (label, ...content) => el("td", { "data-label": label }, ...content);
  const items = actions(client);
  return el(
    "tr",
    { "data-client-id": client.clientId },
    el("th", { scope: "row" }, client.name),
    cell("Client ID", el("code", { text: client.clientId })),
    cell("Created", when(client.createdAt, "")),
    cell("Last token issued", when(client.lastTokenIssuedAt, "Never")),
    cell(
      "Status",
      el("span", { class: `badge status-${client.status}`, text: CLIENT_STATUS[client.status] }),
    ),
    cell("Rate limit", rateLimitText(client.rateLimit)),
    cell("Signed requests", client.requestSigningKeySet ? "Required" : "No"),
    cell(
      "Actions",
      el(
        "div",
        { class: "row-actions" },
        el("a", {
          href: `/console/callbacks?clientId=${encodeURIComponent(client.clientId)}`,
          text: "Callbacks",
          "aria-label": `Callbacks of ${client.name}`,
        }),
        items.length ? menuButton(`Actions for ${client.name}`, items) : null,
      ),
    ),
  );
}

async function load() {
  const { items } = await get(`/v1/clients?environment=${environment()}`);
  keepFocus(body, () => body.replaceChildren(...items.map(row)));
  empty.hidden = items.length > 0;
  document.getElementById("clients-count").textContent =
    `${items.length} ${environment()} API clients`;
}

filters.addEventListener("submit", (event) => event.preventDefault());
filters.addEventListener("change", async () => {
  const url = new URL(location.href);
  url.searchParams.set("environment", environment());
  history.replaceState(null, "", url);
  await load();
  announce(`Showing ${environment()} API clients.`);
});

// --- the secrets, shown once ----------------------------------------------------------

const SECRET_SLOTS = ["issued-client-id", "issued-client-secret", "issued-callback-secret"];

function showIssued(title, issued, overlapNote) {
  document.getElementById("issued-title").textContent = title;
  document.getElementById("issued-client-id").textContent = issued.clientId;
  document.getElementById("issued-client-secret").textContent = issued.clientSecret;
  document.getElementById("issued-callback-secret").textContent = issued.callbackSigningSecret;
  const overlap = document.getElementById("issued-overlap");
  overlap.textContent = overlapNote || "";
  overlap.hidden = !overlapNote;
  panel.hidden = false;
  panel.focus();
}

function forgetIssued() {
  for (const id of SECRET_SLOTS) document.getElementById(id).textContent = "";
  panel.hidden = true;
}

if (panel) {
  panel.addEventListener("click", async (event) => {
    const button = event.target.closest("button.copy");
    if (!button) return;
    const value = document.getElementById(button.dataset.copy).textContent;
    const what = button.textContent.replace(/^Copy /, "");
    try {
      await navigator.clipboard.writeText(value);
      announce(`${what[0].toUpperCase()}${what.slice(1)} copied to the clipboard.`);
    } catch {
      announce(`Could not copy the ${what}; select it and copy it by hand.`);
    }
  });
  document.getElementById("issued-close").addEventListener("click", () => {
    forgetIssued();
    announce("The secrets are no longer shown.");
    document.getElementById("main").focus();
  });
  // Leaving the page (or the back-forward cache keeping it) must not keep the secrets.
  window.addEventListener("pagehide", forgetIssued);
}

// --- create -----------------------------------------------------------------------------

const newClient = document.getElementById("new-client");
if (newClient) newClient.addEventListener("click", createClient);

function createClient() {
  const dialog = document.getElementById("create-client-dialog");
  const name = dialog.querySelector("#client-name");
  const fieldError = dialog.querySelector("#client-name-error");
  const error = dialog.querySelector("[data-slot=error]");
  const create = dialog.querySelector("[data-action=create]");
  const target = environment();
  dialog.querySelector("[data-slot=environment]").textContent = ENVIRONMENT_LABELS[target];
  name.value = "";
  name.removeAttribute("aria-invalid");
  showError(fieldError, "");
  showError(error, "");
  create.disabled = false;
  create.onclick = async () => {
    const chosen = name.value.trim();
    if (!chosen) {
      showError(fieldError, "Enter a name for the client.");
      name.setAttribute("aria-invalid", "true");
      name.focus();
      return;
    }
    create.disabled = true;
    try {
      const issued = await post("/v1/clients", { name: chosen, environment: target });
      dialog.close();
      showIssued(`${issued.name} is created`, issued);
      announce(`${issued.name} is created. Copy its secrets now: they are shown only this once.`);
      await load();
    } catch (failure) {
      const fieldProblem = failure.problem?.errors?.find((item) => item.field === "name");
      if (fieldProblem) {
        showError(fieldError, fieldProblem.message);
        name.setAttribute("aria-invalid", "true");
      } else {
        showError(error, failure.message);
      }
      create.disabled = false;
    }
  };
  openDialog(dialog, name);
}

// --- rotate -----------------------------------------------------------------------------

function rotate(client) {
  confirmAction({
    title: `Rotate the secret of ${client.name}?`,
    text:
      "A new client secret and callback signing secret are shown once. The current secret " +
      "keeps working for a while, so the developer can switch without an outage.",
    action: "Rotate secret",
    run: async () => {
      const issued = await post(clientUrl(client, "rotate-secret"));
      const until = issued.previousSecretValidUntil;
      const note = until
        ? `The previous secret keeps working until ${formatDate(until, page.timeZone)}.`
        : "";
      showIssued(`New secret for ${issued.name}`, issued, note);
      announce(`The secret of ${issued.name} is rotated. Copy it now: it is shown only this once.`);
      await load();
    },
  });
}

// --- revoke -----------------------------------------------------------------------------

// The rules that name the client among their authorised clients.
async function rulesAuthorising(client) {
  const { items } = await get(`/v1/rules?environment=${client.environment}`);
  return items.filter((rule) => rule.authorizedClientIds.includes(client.clientId));
}

async function revoke(client) {
  const dialog = document.getElementById("revoke-dialog");
  const confirm = dialog.querySelector("[data-action=confirm]");
  const error = dialog.querySelector("[data-slot=error]");
  const rulesBox = dialog.querySelector("[data-slot=rules]");
  dialog.querySelector("[data-slot=name]").textContent = client.name;
  showError(error, "");
  const rules = await rulesAuthorising(client);
  rulesBox.querySelector("ul").replaceChildren(
    ...rules.map((rule) =>
      el("li", {}, el("a", { href: `/console/rules/${rule.id}`, text: rule.name }), ` (${rule.displayStatus})`),
    ),
  );
  rulesBox.hidden = rules.length === 0;
  dialog.querySelector("[data-slot=no-rules]").hidden = rules.length > 0;
  confirm.disabled = false;
  confirm.onclick = async () => {
    confirm.disabled = true;
    try {
      await post(clientUrl(client, "revoke"));
      dialog.close();
      announce(`${client.name} is revoked; its triggers are refused from now on.`);
      await load();
    } catch (failure) {
      showError(error, failure.message);
      confirm.disabled = false;
    }
  };
  openDialog(dialog, dialog.querySelector("button[value=cancel]"));
}

// --- rate limit -------------------------------------------------------------------------

function setRateLimit(client) {
  const dialog = document.getElementById("rate-limit-dialog");
  const perSecond = dialog.querySelector("#rate-per-second");
  const burst = dialog.querySelector("#rate-burst");
  const error = dialog.querySelector("#rate-error");
  const save = dialog.querySelector("[data-action=save]");
  dialog.querySelector("[data-slot=name]").textContent = client.name;
  perSecond.value = client.rateLimit ? client.rateLimit.perSecond : "";
  burst.value = client.rateLimit ? client.rateLimit.burst : "";
  showError(error, "");
  save.disabled = false;
  save.onclick = async () => {
    const rate = Number(perSecond.value);
    const size = Number(burst.value);
    if (!(rate > 0 && rate <= 1_000_000) || !(Number.isInteger(size) && size >= 1 && size <= 1_000_000)) {
      showError(
        error,
        "Enter triggers a second above 0 and at most 1,000,000, and a whole burst from 1 to 1,000,000.",
      );
      return;
    }
    save.disabled = true;
    try {
      const limit = await api("PUT", clientUrl(client, "rate-limit"), { perSecond: rate, burst: size });
      dialog.close();
      announce(`${client.name} is limited to ${rateLimitText(limit)}.`);
      await load();
    } catch (failure) {
      showError(error, failure.message);
      save.disabled = false;
    }
  };
  openDialog(dialog, perSecond);
}

load();
