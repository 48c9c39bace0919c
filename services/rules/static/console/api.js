// Calls the rules service's JSON API with the console's cookie session.
// Changes carry the page's CSRF token; a 401 means the session ended, so the
// browser goes back to the sign-in page.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `request failed (${status})`);
    this.status = status;
    this.problem = problem;
  }

  get code() {
    return this.problem.code;
  }
}

const csrfToken = () => document.body.dataset.csrf || "";

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && document.body.dataset.page !== "login") {
    const next = location.pathname + location.search;
    location.assign(`/console/login?next=${encodeURIComponent(next)}`);
    throw new ApiError(401, { detail: "the session has ended; sign in again" });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { detail: text };
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);
export const patch = (path, body) => api("PATCH", path, body);
