import { ApiError, post } from "./api.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const body = { email: form.email.value.trim(), password: form.password.value };
  try {
    await post("/v1/auth/session", body);
    location.assign(form.dataset.next || "/console/rules");
  } catch (failure) {
    const tooMany = failure instanceof ApiError && failure.status === 429;
    error.textContent = tooMany
      ? failure.message
      : failure instanceof ApiError && failure.status === 401
        ? "The e-mail or password is wrong."
        : `Could not sign in: ${failure.message}`;
    error.hidden = false;
    form.password.focus();
  }
});
