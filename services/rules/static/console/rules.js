// Points → Rules: the list, its filters and each row's kebab menu.
import "./shell.js";
import { ruleActions } from "./actions.js";
import { get } from "./api.js";
import { formatPeriod } from "./time.js";
import {
  TYPE_LABELS,
  announce,
  capUsage,
  el,
  keepFocus,
  menuButton,
  page,
  statusBadge,
} from "./ui.js";

const filters = document.getElementById("filters");
const body = document.getElementById("rules-body");
const empty = document.getElementById("rules-empty");
const newRule = document.getElementById("new-rule");
let rules = [];

const environment = () => filters.environment.value;

function matches(rule) {
  const search = filters.search.value.trim().toLowerCase();
  return (
    (!filters.status.value || rule.displayStatus === filters.status.value) &&
    (!filters.type.value || rule.type === filters.type.value) &&
    (!search || rule.name.toLowerCase().includes(search))
  );
}

function row(rule) {
  const cell = (label, ...content) => el("td", { "data-label": label }, ...content);
  return el(
    "tr",
    { "data-rule-id": rule.id },
    el("th", { scope: "row" }, el("a", { href: `/console/rules/${rule.id}`, text: rule.name })),
    cell("Type", TYPE_LABELS[rule.type]),
    cell("Status", statusBadge(rule.displayStatus)),
    cell("Period", formatPeriod(rule, page.timeZone)),
    cell("Cap usage", capUsage(rule)),
    cell("Actions", menuButton(`Actions for ${rule.name}`, ruleActions(rule, load, { withView: true }))),
  );
}

function render() {
  const shown = rules.filter(matches);
  keepFocus(body, () => body.replaceChildren(...shown.map(row)));
  empty.hidden = shown.length > 0;
  document.getElementById("rules-count").textContent =
    `${shown.length} of ${rules.length} ${environment()} rules`;
}

async function load() {
  const { items } = await get(`/v1/rules?environment=${environment()}`);
  rules = items;
  render();
}

filters.addEventListener("submit", (event) => event.preventDefault());
filters.addEventListener("input", (event) => {
  if (event.target.name !== "environment") render();
});
filters.addEventListener("change", async (event) => {
  if (event.target.name !== "environment") return;
  const url = new URL(location.href);
  url.searchParams.set("environment", environment());
  history.replaceState(null, "", url);
  if (newRule) newRule.href = `/console/rules/new?environment=${environment()}`;
  await load();
  announce(`Showing ${environment()} rules.`);
});

load();
