// Look up one member in an environment: balance, points due to expire, transactions,
// and whether the member is blocked (editors and admins can block and unblock).
import "./shell.js";
import { confirmAction } from "./actions.js";
import { get, post } from "./api.js";
import { formatDate } from "./time.js";
import { ENVIRONMENT_LABELS, announce, el, page, points, showError } from "./ui.js";

const form = document.getElementById("member-form");
const result = document.getElementById("member-result");
const standingCard = document.getElementById("member-standing-card");
const error = document.getElementById("member-error");
const blockButton = document.getElementById("block-member");
const unblockButton = document.getElementById("unblock-member");

// The member on show: { userId, environment }.
let member = null;

const memberPath = (userId) => `/v1/members/${encodeURIComponent(userId)}`;

// The ledger lists the lots due to expire, soonest first; an older ledger sends no list.
function renderExpiring(balance) {
  const box = document.getElementById("member-expiry");
  box.hidden = !Array.isArray(balance.expiring);
  if (box.hidden) return;
  document.getElementById("member-expiring").replaceChildren(
    ...balance.expiring.map((lot) =>
      el("li", {}, `${points(lot.amount)} points on ${formatDate(lot.expiresAt, page.timeZone)}`),
    ),
  );
  document.getElementById("member-expiring-empty").hidden = balance.expiring.length > 0;
}

function renderTransactions(history) {
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
}

function standingText(standing) {
  const where = ENVIRONMENT_LABELS[standing.environment];
  if (!standing.blocked) return `Not blocked in ${where}: triggers for this member are accepted.`;
  const since = formatDate(standing.changedAt, page.timeZone);
  const why = standing.reason ? ` Reason: ${standing.reason}` : "";
  return `Blocked in ${where} since ${since}: triggers are refused with MEMBER_BLOCKED.${why}`;
}

function renderStanding(standing) {
  document.getElementById("member-standing").textContent = standingText(standing);
  standingCard.dataset.blocked = String(standing.blocked);
  if (blockButton) {
    blockButton.hidden = standing.blocked;
    document.getElementById("block-controls").hidden = standing.blocked;
    unblockButton.hidden = !standing.blocked;
  }
  standingCard.hidden = false;
}

async function changeStanding(action) {
  const { userId, environment } = member;
  const where = ENVIRONMENT_LABELS[environment];
  const blocking = action === "block";
  const reason = document.getElementById("block-reason").value.trim();
  confirmAction({
    title: blocking ? `Block ${userId} in ${where}?` : `Unblock ${userId} in ${where}?`,
    text: blocking
      ? "Triggers for this member are refused at once with MEMBER_BLOCKED, and requests " +
        "already accepted but not yet applied are rejected. You can unblock the member later."
      : "Triggers for this member are accepted again from now on.",
    action: blocking ? "Block member" : "Unblock member",
    run: async () => {
      const body = blocking ? { environment, reason: reason || null } : { environment };
      const standing = await post(`${memberPath(userId)}/${action}`, body);
      renderStanding(standing);
      showBlocked();
      announce(`${userId} is ${standing.blocked ? "blocked" : "unblocked"} in ${where}.`);
    },
  });
}

// The environment's blocked members, a page at a time; each opens its lookup.
async function showBlocked(after = null) {
  const environment = form.environment.value;
  const query = new URLSearchParams({ environment });
  if (after) query.set("after", after);
  const list = document.getElementById("blocked-members");
  const more = document.getElementById("blocked-more");
  try {
    const found = await get(`/v1/members/blocked?${query}`);
    const items = found.items.map((standing) => {
      const open = el("button", { type: "button", class: "link-button", text: standing.userId });
      open.addEventListener("click", () => {
        form.userId.value = standing.userId;
        form.requestSubmit();
      });
      return el("li", {}, open, standing.reason ? ` · ${standing.reason}` : "");
    });
    if (after) list.append(...items);
    else list.replaceChildren(...items);
    document.getElementById("blocked-environment").textContent = ENVIRONMENT_LABELS[environment];
    document.getElementById("blocked-empty").hidden = list.children.length > 0;
    more.hidden = !found.nextAfter;
    more.onclick = () => showBlocked(found.nextAfter);
  } catch (failure) {
    showError(error, failure.message);
  }
}

form.environment.addEventListener("change", () => showBlocked());
showBlocked();

blockButton?.addEventListener("click", () => changeStanding("block"));
unblockButton?.addEventListener("click", () => changeStanding("unblock"));

async function showStanding(userId, environment) {
  try {
    renderStanding(await get(`${memberPath(userId)}/standing?environment=${environment}`));
  } catch (failure) {
    standingCard.hidden = true;
    showError(error, failure.message);
  }
}

async function showBalance(userId, environment) {
  const base = `/console/api/members/${encodeURIComponent(userId)}`;
  const query = `?environment=${environment}`;
  try {
    const [balance, history] = await Promise.all([
      get(`${base}/balance${query}`),
      get(`${base}/transactions${query}`),
    ]);
    document.getElementById("member-title").textContent =
      `${balance.userId} in ${ENVIRONMENT_LABELS[environment]}`;
    document.getElementById("member-balance").textContent = points(balance.balance);
    renderExpiring(balance);
    renderTransactions(history);
    result.hidden = false;
  } catch (failure) {
    result.hidden = true;
    showError(error, failure.message);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(error, "");
  const userId = form.userId.value.trim();
  if (!userId) {
    showError(error, "Enter a member ID.");
    form.userId.focus();
    return;
  }
  member = { userId, environment: form.environment.value };
  await Promise.all([showBalance(userId, member.environment), showStanding(userId, member.environment)]);
});
