// The invitation page: the invitee chooses a password, then signs in as usual.
// The link's token is the last part of this page's path; it is sent only to
// this service, in the path of the one request that accepts the invitation.
import { ApiError, post } from "./api.js";
import { showError } from "./ui.js";

const form = document.getElementById("invitation-form");
const error = document.getElementById("invitation-error");
const token = decodeURIComponent(location.pathname.split("/").pop() || "");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(error, "");
  const password = form.password.value;
  if (password.length < 8) {
    showError(error, "Choose a password of at least 8 characters.");
    form.password.focus();
    return;
  }
  if (password !== form.repeat.value) {
    showError(error, "The two passwords differ.");
    form.repeat.focus();
    return;
  }
  try {
    await post(`/v1/invitations/${encodeURIComponent(token)}/accept`, { password });
  } catch (failure) {
    showError(
      error,
      failure instanceof ApiError && failure.code === "INVITATION_INVALID"
        ? "This invitation link is unknown, used or expired. Ask an admin of your organisation to invite you again."
        : failure.message,
    );
    return;
  }
  form.hidden = true;
  document.getElementById("invitation-done").hidden = false;
  location.assign("/console/login?joined=1");
});
