// What can be done to a rule, from the rules list's kebab menu or the rule's page.
import { ApiError, get, post } from "./api.js";
import { formatExpiry, formatPeriod } from "./time.js";
import {
  ENVIRONMENT_LABELS,
  TYPE_LABELS,
  announce,
  definitionList,
  el,
  openDialog,
  page,
  points,
  showError,
} from "./ui.js";

const ruleUrl = (rule, action = "") => `/v1/rules/${encodeURIComponent(rule.id)}${action}`;

// The actions this user may take on `rule` now; `changed` is called after a change.
export function ruleActions(rule, changed, { withView = false } = {}) {
  const actions = [];
  if (withView) {
    actions.push({ text: "View details", run: () => location.assign(`/console/rules/${rule.id}`) });
  }
  const live = rule.status !== "archived";
  if (page.canEdit && live) {
    actions.push({ text: "Edit", run: () => location.assign(`/console/rules/${rule.id}/edit`) });
    if (rule.status === "active") actions.push({ text: "Pause", run: () => pause(rule, changed) });
    else actions.push({ text: "Activate", run: (opener) => activate(rule, changed, opener) });
  }
  actions.push({ text: "Share Rule ID", run: () => shareRuleId(rule) });
  if (page.canEdit && rule.status === "active") {
    actions.push({ text: "Send Email", run: () => sendEmail(rule) });
  }
  if (page.canEdit && live && rule.environment === "staging") {
    actions.push({ text: "Promote to production", run: () => promote(rule) });
  }
  if (page.canEdit && live) actions.push({ text: "Archive", run: () => archive(rule, changed) });
  return actions;
}

function failureMessage(failure) {
  if (failure instanceof ApiError && failure.code === "STALE_VERSION") {
    return "Someone changed this rule since this page loaded; reload the page and try again.";
  }
  return failure.message;
}

// --- Share Rule ID ---------------------------------------------------------------

export async function shareRuleId(rule) {
  try {
    await navigator.clipboard.writeText(rule.id);
    announce(`Rule ID ${rule.id} copied to the clipboard.`);
  } catch {
    announce(`Could not copy to the clipboard. The rule ID is ${rule.id}.`);
  }
}

// --- Activate with caution -------------------------------------------------------------

async function clientNames(environment) {
  const { items } = await get(`/v1/clients?environment=${environment}`);
  return Object.fromEntries(items.map((client) => [client.clientId, client.name]));
}

function capSummary(rule) {
  const parts = [rule.capMax ? `${points(rule.capMax)} points in total` : "no total cap"];
  if (rule.capPerMember) parts.push(`${points(rule.capPerMember)} per member`);
  if (rule.maxAmountPerRequest) parts.push(`${points(rule.maxAmountPerRequest)} per request`);
  return parts.join(", ");
}

function showProblems(container, problems, names) {
  const list = container.querySelector("ul");
  list.replaceChildren(
    ...problems.map((problem) => {
      const client = problem.clientId ? names[problem.clientId] || problem.clientId : null;
      const text = client ? problem.detail.replace(problem.clientId, `"${client}"`) : problem.detail;
      return el("li", { "data-field": problem.field || "" }, text);
    }),
  );
  container.hidden = problems.length === 0;
}

export async function activate(rule, changed) {
  const dialog = document.getElementById("activate-dialog");
  const confirm = dialog.querySelector("[data-action=confirm]");
  const problemsBox = dialog.querySelector("[data-slot=problems]");
  const error = dialog.querySelector("[data-slot=error]");
  showError(error, "");
  dialog.querySelector("[data-slot=name]").textContent = rule.name;
  const [names, { problems }] = await Promise.all([
    clientNames(rule.environment),
    get(`/console/api/rules/${encodeURIComponent(rule.id)}/activation-problems`),
  ]);
  const clients = rule.authorizedClientIds.map((id) => names[id] || id);
  const summary = [
    ["Environment", ENVIRONMENT_LABELS[rule.environment]],
    ["Type", TYPE_LABELS[rule.type]],
    ["API trigger", rule.apiTrigger ? "On" : "Off"],
    ["Authorised clients", clients.length ? clients.join(", ") : "none"],
    ["Cap", capSummary(rule)],
    ["Period", `${formatPeriod(rule, page.timeZone)} (${page.timeZone})`],
  ];
  if (rule.type === "earn") summary.push(["Expiry", formatExpiry(rule, page.timeZone)]);
  definitionList(dialog.querySelector("[data-slot=summary]"), summary);
  showProblems(problemsBox, problems, names);
  confirm.disabled = problems.length > 0;
  confirm.onclick = async () => {
    confirm.disabled = true;
    try {
      const updated = await post(ruleUrl(rule, "/activate"), { version: rule.version });
      dialog.close();
      announce(`${updated.name} is active in ${ENVIRONMENT_LABELS[updated.environment]}.`);
      changed(updated);
    } catch (failure) {
      if (failure instanceof ApiError && failure.problem.problems) {
        showProblems(problemsBox, failure.problem.problems, names);
      } else {
        showError(error, failureMessage(failure));
        confirm.disabled = false;
      }
    }
  };
  openDialog(dialog, problems.length ? dialog.querySelector("button[value=cancel]") : confirm);
}

// --- Send Email ---------------------------------------------------------------------

export async function sendEmail(rule) {
  const dialog = document.getElementById("email-dialog");
  const recipients = dialog.querySelector("#email-recipients");
  const fieldError = dialog.querySelector("#email-recipients-error");
  const error = dialog.querySelector("[data-slot=error]");
  const send = dialog.querySelector("[data-action=send]");
  const share = await get(ruleUrl(rule, "/share"));
  shareList(dialog.querySelector("[data-slot=share]"), share);
  recipients.value = "";
  showError(fieldError, "");
  showError(error, "");
  recipients.removeAttribute("aria-invalid");
  send.disabled = false;
  send.onclick = async () => {
    const to = recipients.value.split(/[,;\s]+/).filter(Boolean);
    if (to.length === 0) {
      showError(fieldError, "Enter at least one e-mail address.");
      recipients.setAttribute("aria-invalid", "true");
      recipients.focus();
      return;
    }
    send.disabled = true;
    try {
      await post(ruleUrl(rule, "/share/email"), { to });
      dialog.close();
      announce(`E-mail with the details of ${rule.name} sent to ${to.join(", ")}.`);
    } catch (failure) {
      const fieldProblem = failure.problem?.errors?.find((item) => item.field.startsWith("to"));
      if (fieldProblem) {
        const index = Number(fieldProblem.field.split(".")[1]);
        const address = Number.isInteger(index) ? `${to[index]}: ` : "";
        showError(fieldError, `${address}${fieldProblem.message}`);
        recipients.setAttribute("aria-invalid", "true");
        recipients.focus();
      } else {
        showError(error, failureMessage(failure));
      }
      send.disabled = false;
    }
  };
  openDialog(dialog, recipients);
}

// The six share fields, as the developer receives them.
export function shareList(target, share) {
  definitionList(target, [
    ["Rule Name", share.ruleName],
    ["Rule ID", el("code", { text: share.ruleId })],
    ["Rule Type", share.ruleType],
    ["Environment", share.environment],
    ["URL Endpoint", el("code", { text: share.urlEndpoint })],
    ["API Integration Guide", el("a", { href: share.integrationGuideUrl, text: share.integrationGuideUrl })],
  ]);
}

// --- Pause, promote, archive -----------------------------------------------------------

async function pause(rule, changed) {
  try {
    const updated = await post(ruleUrl(rule, "/pause"), { version: rule.version });
    announce(`${updated.name} is paused; triggers are refused until it is activated again.`);
    changed(updated);
  } catch (failure) {
    announce(`Could not pause ${rule.name}: ${failureMessage(failure)}`);
  }
}

export function confirmAction({ title, text, action, run }) {
  const dialog = document.getElementById("confirm-dialog");
  const confirm = dialog.querySelector("[data-action=confirm]");
  const error = dialog.querySelector("[data-slot=error]");
  dialog.querySelector("[data-slot=title]").textContent = title;
  dialog.querySelector("[data-slot=text]").textContent = text;
  confirm.textContent = action;
  confirm.disabled = false;
  showError(error, "");
  confirm.onclick = async () => {
    confirm.disabled = true;
    try {
      await run();
      dialog.close();
    } catch (failure) {
      showError(error, failureMessage(failure));
      confirm.disabled = false;
    }
  };
  openDialog(dialog, confirm);
}

async function promote(rule) {
  confirmAction({
    title: `Promote ${rule.name} to production?`,
    text:
      "A production draft is created with the same settings. Production clients are " +
      "separate, so you choose them next; nothing changes in staging.",
    action: "Promote to production",
    run: async () => {
      const copy = await post(ruleUrl(rule, "/promote"));
      location.assign(`/console/rules/${copy.id}/edit?promoted=1`);
    },
  });
}

async function archive(rule, changed) {
  confirmAction({
    title: `Archive ${rule.name}?`,
    text: "An archived rule accepts no triggers and can never be activated again.",
    action: "Archive rule",
    run: async () => {
      const updated = await post(ruleUrl(rule, "/archive"), { version: rule.version });
      announce(`${updated.name} is archived.`);
      changed(updated);
    },
  });
}
