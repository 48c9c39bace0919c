// The team: every role sees who is in it; admins invite, change roles and remove.
import "./shell.js";
import { confirmAction } from "./actions.js";
import { api, get, patch, post } from "./api.js";
import { formatDate } from "./time.js";
import { announce, el, page, showError } from "./ui.js";

const ROLE_LABELS = { admin: "Admin", editor: "Editor", viewer: "Viewer" };
const isAdmin = document.body.dataset.role === "admin";
const me = document.getElementById("team-table").dataset.me;
const error = document.getElementById("team-error");
const userPath = (user) => `/v1/users/${encodeURIComponent(user.id)}`;

function statusText(user) {
  if (user.status === "active") return "Active";
  if (!user.invitationExpiresAt) return "Invited (link used or withdrawn)";
  const expires = new Date(user.invitationExpiresAt);
  return expires < new Date()
    ? "Invited (link expired; invite again)"
    : `Invited (link works until ${formatDate(user.invitationExpiresAt, page.timeZone)})`;
}

function roleControl(user) {
  if (!isAdmin) return ROLE_LABELS[user.role];
  const select = el(
    "select",
    { "aria-label": `Role of ${user.email}`, "data-user": user.email },
    ...Object.entries(ROLE_LABELS).map(([value, label]) =>
      el("option", { value, selected: value === user.role }, label),
    ),
  );
  select.addEventListener("change", async () => {
    showError(error, "");
    try {
      const changed = await patch(userPath(user), { role: select.value });
      announce(`${user.email} is now ${ROLE_LABELS[changed.role].toLowerCase()}.`);
      if (user.id === me && changed.role !== "admin") location.reload();
      else show();
    } catch (failure) {
      select.value = user.role;
      showError(error, failure.message);
    }
  });
  return select;
}

function removeButton(user) {
  const invited = user.status === "invited";
  return el("button", {
    type: "button",
    class: "danger",
    text: invited ? "Withdraw invitation" : "Remove",
    "aria-label": `${invited ? "Withdraw the invitation of" : "Remove"} ${user.email}`,
    onclick: () =>
      confirmAction({
        title: invited ? `Withdraw the invitation of ${user.email}?` : `Remove ${user.email}?`,
        text: invited
          ? "The invitation link stops working at once."
          : "Their console sessions and tokens stop working at once. You can invite them again later.",
        action: invited ? "Withdraw invitation" : "Remove user",
        run: async () => {
          await api("DELETE", userPath(user));
          announce(`${user.email} is removed.`);
          if (user.id === me) location.assign("/console/login");
          else show();
        },
      }),
  });
}

function row(user) {
  const cells = [
    el("td", {}, user.email, user.id === me ? " (you)" : ""),
    el("td", {}, roleControl(user)),
    el("td", {}, statusText(user)),
    el("td", {}, user.lastSignInAt ? formatDate(user.lastSignInAt, page.timeZone) : "—"),
  ];
  if (isAdmin) cells.push(el("td", {}, removeButton(user)));
  return el("tr", { "data-email": user.email }, ...cells);
}

async function show() {
  try {
    const team = await get("/v1/users");
    document.getElementById("team-users").replaceChildren(...team.items.map(row));
  } catch (failure) {
    showError(error, failure.message);
  }
}

const form = document.getElementById("invite-form");
form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const inviteError = document.getElementById("invite-error");
  showError(inviteError, "");
  const email = form.email.value.trim();
  if (!email || !form.email.checkValidity()) {
    showError(inviteError, "Enter an e-mail address, such as name@example.com.");
    form.email.focus();
    return;
  }
  try {
    await post("/v1/users", { email, role: form.role.value });
    form.email.value = "";
    announce(`Invitation sent to ${email}.`);
    show();
  } catch (failure) {
    showError(inviteError, failure.message);
  }
});

show();
