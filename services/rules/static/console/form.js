// Create or edit a rule. Save keeps it a draft (activation is its own, cautious
// step); every problem the API names is shown next to the field it concerns.
import "./shell.js";
import { ApiError, get, patch, post } from "./api.js";
import { fromLocalInput, toLocalInput } from "./time.js";
import { ENVIRONMENT_LABELS, el, page, showError } from "./ui.js";

const form = document.getElementById("rule-form");
const FIELDS = [
  "name",
  "description",
  "type",
  "apiTrigger",
  "authorizedClientIds",
  "capMax",
  "capPerMember",
  "maxAmountPerRequest",
  "startsAt",
  "endsAt",
  "pointsExpireAfterDays",
  "pointsExpireAt",
];
// Problems the API reports by code alone, and the field each concerns.
const FIELD_OF_CODE = {
  INVALID_PERIOD: "endsAt",
  INVALID_AUTHORIZED_CLIENTS: "authorizedClientIds",
  INVALID_RULE_TYPE: "type",
  CAP_BELOW_USAGE: "capMax",
};

let rule = null;

function notice(text) {
  const node = document.getElementById("form-notice");
  node.textContent = text;
  node.hidden = !text;
}

async function loadClients(environment, chosen) {
  const { items } = await get(`/v1/clients?environment=${environment}`);
  const select = form.authorizedClientIds;
  const options = items
    .filter((client) => client.status === "active" || chosen.includes(client.clientId))
    .map((client) =>
      el(
        "option",
        { value: client.clientId, selected: chosen.includes(client.clientId) },
        client.status === "active" ? client.name : `${client.name} (revoked)`,
      ),
    );
  select.replaceChildren(...options);
  if (options.length === 0) {
    document.getElementById("authorizedClientIds-hint").textContent =
      `This organisation has no active ${environment} API clients yet; an operator creates them.`;
  }
}

// The expiry policy belongs to earn rules; its inputs follow the chosen policy.
function showExpiryPolicy() {
  const earn = form.type.value === "earn";
  const policy = form.expiryPolicy.value;
  document.getElementById("expiry").hidden = !earn;
  document.getElementById("expiry-after").hidden = policy !== "after";
  document.getElementById("expiry-at").hidden = policy !== "at";
}

function expiryPolicy() {
  const policy = form.type.value === "earn" ? form.expiryPolicy.value : "none";
  return {
    pointsExpireAfterDays: policy === "after" ? numberOrNull(form.pointsExpireAfterDays) : null,
    pointsExpireAt:
      policy === "at" ? fromLocalInput(form.pointsExpireAt.value, page.timeZone) : null,
  };
}

function fill(current) {
  form.name.value = current.name;
  form.description.value = current.description;
  form.type.value = current.type;
  form.apiTrigger.checked = current.apiTrigger;
  for (const field of ["capMax", "capPerMember", "maxAmountPerRequest"]) {
    form[field].value = current[field] ?? "";
  }
  form.startsAt.value = toLocalInput(current.startsAt, page.timeZone);
  form.endsAt.value = toLocalInput(current.endsAt, page.timeZone);
  form.pointsExpireAfterDays.value = current.pointsExpireAfterDays ?? "";
  form.pointsExpireAt.value = toLocalInput(current.pointsExpireAt, page.timeZone);
  form.expiryPolicy.value =
    current.pointsExpireAfterDays != null ? "after" : current.pointsExpireAt ? "at" : "none";
  showExpiryPolicy();
  // Type and environment are fixed once a rule has been activated.
  const fixed = current.status !== "draft";
  form.querySelectorAll("input[name=type]").forEach((input) => (input.disabled = fixed));
}

const numberOrNull = (input) => (input.value.trim() === "" ? null : Number(input.value));

function values() {
  return {
    name: form.name.value.trim(),
    description: form.description.value,
    type: form.type.value,
    apiTrigger: form.apiTrigger.checked,
    authorizedClientIds: [...form.authorizedClientIds.selectedOptions].map((o) => o.value),
    capMax: numberOrNull(form.capMax),
    capPerMember: numberOrNull(form.capPerMember),
    maxAmountPerRequest: numberOrNull(form.maxAmountPerRequest),
    startsAt: fromLocalInput(form.startsAt.value, page.timeZone),
    endsAt: fromLocalInput(form.endsAt.value, page.timeZone),
    ...expiryPolicy(),
  };
}

function clearErrors() {
  for (const field of FIELDS) {
    showError(document.getElementById(`${field}-error`), "");
    form.querySelectorAll(`[name=${field}]`).forEach((input) => input.removeAttribute("aria-invalid"));
  }
  showError(document.getElementById("form-error"), "");
}

function fieldError(field, message) {
  const node = document.getElementById(`${field}-error`);
  if (!node) return false;
  const joined = node.hidden ? message : `${node.textContent} ${message}`;
  showError(node, joined);
  form.querySelectorAll(`[name=${field}]`).forEach((input) => input.setAttribute("aria-invalid", "true"));
  return true;
}

// Puts each problem of a problem+json answer next to its field; the rest above Save.
function showProblem(failure) {
  const problem = failure.problem || {};
  if (problem.code === "STALE_VERSION") {
    const reload = el("a", { href: location.pathname, text: "Reload the latest version" });
    const node = document.getElementById("form-error");
    node.replaceChildren(
      `Someone else changed this rule since you opened it (it is now at version ` +
        `${problem.currentVersion}). Your changes were not saved. `,
      reload,
    );
    node.hidden = false;
    return;
  }
  const items = problem.errors || problem.problems || [];
  const field = problem.field || FIELD_OF_CODE[problem.code];
  let placed = false;
  for (const item of items) {
    const name = (item.field || "").split(".")[0];
    placed = fieldError(name, item.message || item.detail) || placed;
  }
  if (!items.length && field) placed = fieldError(field, problem.detail);
  if (!placed) showError(document.getElementById("form-error"), failure.message);
  const first = form.querySelector("[aria-invalid=true]");
  (first || document.getElementById("form-error")).focus?.();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const save = document.getElementById("save");
  save.disabled = true;
  try {
    const saved = rule
      ? await patch(`/v1/rules/${encodeURIComponent(rule.id)}`, { version: rule.version, ...values() })
      : await post("/v1/rules", { ...values(), environment: form.dataset.environment });
    location.assign(`/console/rules/${saved.id}?saved=1`);
  } catch (failure) {
    if (!(failure instanceof ApiError)) throw failure;
    showProblem(failure);
    save.disabled = false;
  }
});

form?.addEventListener("change", (event) => {
  if (["type", "expiryPolicy"].includes(event.target.name)) showExpiryPolicy();
});

async function start() {
  const ruleId = form.dataset.ruleId;
  showExpiryPolicy();
  if (ruleId) {
    rule = await get(`/v1/rules/${encodeURIComponent(ruleId)}`);
    form.dataset.environment = rule.environment;
    document.getElementById("form-title").textContent = `Edit ${rule.name}`;
    fill(rule);
    if (new URLSearchParams(location.search).has("promoted")) {
      notice(
        "Promoted: this is a production draft. Choose its production clients, save, then activate it.",
      );
    }
  }
  document.getElementById("rule-environment").textContent =
    ENVIRONMENT_LABELS[form.dataset.environment];
  await loadClients(form.dataset.environment, rule ? rule.authorizedClientIds : []);
}

if (form) start();
