// One rule: what it is, how to share it, what it has moved, and its history.
import "./shell.js";
import { ruleActions, shareList } from "./actions.js";
import { activityPanel } from "./activity.js";
import { ApiError, get } from "./api.js";
import { formatDate, formatExpiry, formatPeriod } from "./time.js";
import {
  ENVIRONMENT_LABELS,
  TYPE_LABELS,
  capUsage,
  definitionList,
  el,
  keepFocus,
  page,
  points,
  statusBadge,
} from "./ui.js";

const root = document.getElementById("rule-detail");
const ruleId = root.dataset.ruleId;
const path = encodeURIComponent(ruleId);

function renderHeader(rule) {
  document.title = `${rule.name} · Points console`;
  document.getElementById("rule-name").textContent = rule.name;
  document.getElementById("rule-status").replaceWith(
    Object.assign(statusBadge(rule.displayStatus), { id: "rule-status" }),
  );
  document.getElementById("rule-facts").textContent = [
    ENVIRONMENT_LABELS[rule.environment],
    TYPE_LABELS[rule.type],
    rule.apiTrigger ? "API trigger on" : "API trigger off",
    `${formatPeriod(rule, page.timeZone)} (${page.timeZone})`,
    formatExpiry(rule, page.timeZone),
    `version ${rule.version}`,
  ]
    .filter(Boolean)
    .join(" · ");
  const actions = ruleActions(rule, render).map(({ text, run }) => {
    const button = el("button", { type: "button", text });
    button.addEventListener("click", () => run(button));
    return button;
  });
  const bar = document.getElementById("rule-actions");
  keepFocus(bar, () => bar.replaceChildren(...actions));
}

async function renderShare(rule) {
  const target = document.getElementById("share-info");
  const note = document.getElementById("share-note");
  if (rule.status !== "active") {
    target.replaceChildren();
    note.hidden = false;
    return;
  }
  note.hidden = true;
  const share = await get(`/v1/rules/${path}/share`);
  shareList(target, share);
  // The expiry policy is shown with the share information (not in the e-mail's fixed list).
  if (rule.type === "earn") {
    const expiry = formatExpiry({ ...share, type: rule.type }, page.timeZone);
    target.append(el("dt", { text: "Points Expiry" }), el("dd", { id: "share-expiry" }, expiry));
  }
}

async function renderUsage(rule) {
  const usage = document.getElementById("usage");
  usage.replaceChildren(capUsage(rule));
  try {
    const totals = await get(`/console/api/rules/${path}/totals?environment=${rule.environment}`);
    const list = el("dl", { class: "summary" });
    definitionList(list, [
      ["Earned", points(totals.earned)],
      ["Redeemed", points(totals.redeemed)],
      ["Reversed", points(totals.reversed)],
      ["Net in members' hands", points(totals.net)],
      ["Rejected requests", points(totals.rejected)],
    ]);
    usage.append(list);
  } catch (failure) {
    usage.append(el("p", { class: "form-error", text: `Ledger totals unavailable: ${failure.message}` }));
  }
}

let activity = null;

// Built once; a change to the rule (an action) reloads its figures.
function renderActivity() {
  if (activity) {
    activity.reload();
    return;
  }
  activity = activityPanel(document.getElementById("rule-activity"), {
    path: `/v1/rules/${path}/activity`,
    idPrefix: "rule-activity",
  });
}

async function renderTransactions(rule) {
  const body = document.getElementById("transactions");
  const { items } = await get(
    `/console/api/rules/${path}/transactions?environment=${rule.environment}`,
  );
  body.replaceChildren(
    ...items.map((item) =>
      el(
        "tr",
        {},
        el("td", {}, formatDate(item.createdAt, page.timeZone)),
        el("td", {}, item.userId),
        el("td", {}, item.type),
        el("td", {}, points(item.amount)),
        el("td", {}, item.reason ? `${item.status} (${item.reason})` : item.status),
      ),
    ),
  );
  document.getElementById("transactions-empty").hidden = items.length > 0;
}

function auditText(line) {
  const details = line.details || {};
  if (details.fields) return `changed ${details.fields.join(", ")}`;
  if (details.recipients) return `sent to ${details.recipients.join(", ")}`;
  if (details.promotedFrom) return `promoted from ${details.promotedFrom}`;
  if (details.after?.status) return `${details.before.status} → ${details.after.status}`;
  return "";
}

async function renderAudit() {
  const { items } = await get(`/v1/audit?ruleId=${path}&limit=50`);
  document.getElementById("audit").replaceChildren(
    ...items.map((line) =>
      el(
        "li",
        {},
        el("time", { datetime: line.at }, formatDate(line.at, page.timeZone)),
        " ",
        el("strong", {}, line.action),
        ` by ${line.actorEmail ?? line.actor} `,
        el("span", { class: "hint" }, auditText(line)),
      ),
    ),
  );
}

async function render() {
  let rule;
  try {
    rule = await get(`/v1/rules/${path}`);
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 404) {
      document.getElementById("rule-name").textContent = "Rule not found";
      return;
    }
    throw failure;
  }
  renderHeader(rule);
  renderActivity();
  await Promise.all([renderShare(rule), renderUsage(rule), renderTransactions(rule), renderAudit()]);
}

if (new URLSearchParams(location.search).has("saved")) {
  const notice = document.getElementById("rule-notice");
  notice.textContent = "Saved. A draft stays inactive until you activate it.";
  notice.hidden = false;
}
render();
