// Look up one member's balance and transactions in an environment.
import "./shell.js";
import { get } from "./api.js";
import { formatDate } from "./time.js";
import { el, page, points, showError } from "./ui.js";

const form = document.getElementById("member-form");
const result = document.getElementById("member-result");
const error = document.getElementById("member-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(error, "");
  const userId = form.userId.value.trim();
  if (!userId) {
    showError(error, "Enter a member ID.");
    form.userId.focus();
    return;
  }
  const base = `/console/api/members/${encodeURIComponent(userId)}`;
  const query = `?environment=${form.environment.value}`;
  try {
    const [balance, history] = await Promise.all([
      get(`${base}/balance${query}`),
      get(`${base}/transactions${query}`),
    ]);
    document.getElementById("member-title").textContent =
      `${balance.userId} in ${form.environment.selectedOptions[0].text}`;
    document.getElementById("member-balance").textContent = points(balance.balance);
    document.getElementById("member-transactions").replaceChildren(
      ...history.items.map((item) =>
        el(
          "tr",
          {},
          el("td", {}, formatDate(item.createdAt, page.timeZone)),
          el("td", {}, el("a", { href: `/console/rules/${item.ruleId}`, text: item.ruleId })),
          el("td", {}, item.type),
          el("td", {}, points(item.amount)),
          el("td", {}, item.reason ? `${item.status} (${item.reason})` : item.status),
        ),
      ),
    );
    document.getElementById("member-transactions-empty").hidden = history.items.length > 0;
    result.hidden = false;
  } catch (failure) {
    result.hidden = true;
    showError(error, failure.message);
  }
});
