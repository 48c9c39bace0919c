// Activity at a glance: points moved and triggers answered per hour or day, as charts
// and, behind a toggle, as a table with the same figures. Used by the rule page (with
// the rule's cap) and the Overview page (a whole environment).
import { get } from "./api.js";
import { lineChart } from "./chart.js";
import { el, points } from "./ui.js";

const RANGES = {
  "24h": { label: "Last 24 hours", hours: 24 },
  "7d": { label: "Last 7 days", hours: 24 * 7 },
  "30d": { label: "Last 30 days", hours: 24 * 30 },
};
const PART_NAMES = { ledger: "the ledger's points", gateway: "the gateway's requests" };

function bucketLabel(iso, bucket, timeZone) {
  const options =
    bucket === "hour"
      ? { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }
      : { day: "numeric", month: "short" };
  return new Intl.DateTimeFormat("en-GB", { timeZone, ...options }).format(new Date(iso));
}

const sum = (values) => values.reduce((total, value) => total + value, 0);
const refusedTotal = (refused) => (refused === null ? null : sum(Object.values(refused)));
const figure = (value) => (value === null || value === undefined ? "—" : points(value));

function refusedText(refused) {
  if (refused === null) return "—";
  const codes = Object.entries(refused).sort(([a], [b]) => a.localeCompare(b));
  return codes.length ? codes.map(([code, count]) => `${code}: ${points(count)}`).join(", ") : "0";
}

// Points the rule moved against its cap by the end of each bucket: what it has moved in
// all (capUsed) less what the window moved after, so the line ends where the cap bar does.
function cumulative(answer) {
  if (answer.buckets.some((bucket) => bucket.earned === null)) return null;
  const moved = answer.buckets.map((bucket) =>
    (answer.ruleType === "redeem" ? bucket.redeemed : bucket.earned) - bucket.reversed,
  );
  let running = Math.max(0, (answer.capUsed ?? 0) - sum(moved));
  return moved.map((value) => (running = Math.max(0, running + value)));
}

function table(answer, labels, moved, id) {
  const withCap = moved !== null && answer.ruleId !== null;
  const head = [
    answer.bucket === "hour" ? "Hour" : "Day",
    "Earned",
    "Redeemed",
    "Reversed",
    "Expired",
    ...(withCap ? ["Moved against cap"] : []),
    "Accepted",
    "Refused",
    "Refused by code",
  ];
  const rows = answer.buckets.map((bucket, index) =>
    el(
      "tr",
      {},
      el("th", { scope: "row" }, labels[index]),
      el("td", {}, figure(bucket.earned)),
      el("td", {}, figure(bucket.redeemed)),
      el("td", {}, figure(bucket.reversed)),
      el("td", {}, figure(bucket.expired)),
      withCap ? el("td", {}, figure(moved[index])) : null,
      el("td", {}, figure(bucket.accepted)),
      el("td", {}, figure(refusedTotal(bucket.refused))),
      el("td", {}, refusedText(bucket.refused)),
    ),
  );
  return el(
    "table",
    { class: "compact activity-table", id },
    el("caption", {
      text: `Activity by ${answer.bucket} (${answer.timezone})` + (answer.capMax ? `, cap ${points(answer.capMax)}` : ""),
    }),
    el("thead", {}, el("tr", {}, ...head.map((text) => el("th", { scope: "col", text })))),
    el("tbody", {}, ...rows),
  );
}

// Builds the controls, charts and table in `container` and loads them from `path` (an
// API path, with or without a query); returns { reload }.
export function activityPanel(container, { path, idPrefix = "activity" }) {
  const bucket = el(
    "select",
    { id: `${idPrefix}-bucket` },
    el("option", { value: "hour", text: "By hour" }),
    el("option", { value: "day", text: "By day", selected: true }),
  );
  const range = el(
    "select",
    { id: `${idPrefix}-range` },
    ...Object.entries(RANGES).map(([value, { label }]) =>
      el("option", { value, text: label, selected: value === "7d" }),
    ),
  );
  const tableId = `${idPrefix}-table`;
  const toggle = el("button", {
    type: "button",
    id: `${idPrefix}-table-toggle`,
    "aria-expanded": "false",
    "aria-controls": tableId,
    text: "Show as table",
  });
  const notice = el("p", { class: "notice", hidden: true, id: `${idPrefix}-missing` });
  const charts = el("div", { class: "activity-charts", id: `${idPrefix}-charts` });
  const tableSlot = el("div", { class: "activity-table-wrap", hidden: true });
  const status = el("p", { class: "hint", id: `${idPrefix}-status`, text: "Loading…" });

  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Hide table" : "Show as table";
    tableSlot.hidden = !open;
  });
  container.replaceChildren(
    el(
      "div",
      { class: "filters" },
      el("div", { class: "field" }, el("label", { for: bucket.id, text: "Bucket" }), bucket),
      el("div", { class: "field" }, el("label", { for: range.id, text: "Range" }), range),
      el("div", { class: "field" }, toggle),
    ),
    status,
    notice,
    charts,
    tableSlot,
  );

  async function reload() {
    const to = new Date();
    const from = new Date(to.getTime() - RANGES[range.value].hours * 3600 * 1000);
    const query = new URLSearchParams({ bucket: bucket.value, from: from.toISOString(), to: to.toISOString() });
    status.textContent = "Loading…";
    let answer;
    try {
      answer = await get(`${path}${path.includes("?") ? "&" : "?"}${query}`);
    } catch (failure) {
      status.textContent = `Activity unavailable: ${failure.message}`;
      return;
    }
    const labels = answer.buckets.map((b) => bucketLabel(b.start, answer.bucket, answer.timezone));
    const column = (name) => answer.buckets.map((b) => b[name]);
    const moved = answer.ruleId !== null ? cumulative(answer) : null;
    const pointSeries = [
      { name: "Earned", className: "series-earned", values: column("earned") },
      { name: "Redeemed", className: "series-redeemed", values: column("redeemed") },
      { name: "Reversed", className: "series-reversed", values: column("reversed") },
      { name: "Expired", className: "series-expired", values: column("expired") },
    ];
    if (moved !== null) {
      pointSeries.push({ name: "Moved against cap", className: "series-moved", values: moved });
    }
    charts.replaceChildren(
      lineChart({
        title: `Points by ${answer.bucket} (${answer.timezone})`,
        labels,
        series: pointSeries,
        limit: moved !== null && answer.capMax ? { name: "Cap", value: answer.capMax } : null,
      }),
      lineChart({
        title: `Requests by ${answer.bucket} (${answer.timezone})`,
        labels,
        series: [
          { name: "Accepted", className: "series-accepted", values: column("accepted") },
          {
            name: "Refused",
            className: "series-refused",
            values: answer.buckets.map((b) => refusedTotal(b.refused)),
          },
        ],
      }),
    );
    tableSlot.replaceChildren(table(answer, labels, moved, tableId));
    notice.hidden = answer.missing.length === 0;
    notice.textContent = answer.missing.length
      ? `Not shown: ${answer.missing.map((part) => PART_NAMES[part]).join(" and ")} cannot be read right now; try again shortly.`
      : "";
    status.textContent = `${RANGES[range.value].label}, by ${answer.bucket}, in ${answer.timezone}.`;
  }

  bucket.addEventListener("change", reload);
  range.addEventListener("change", reload);
  reload();
  return { reload };
}
