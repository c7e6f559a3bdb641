// Small behaviours every console page shares. Pages work without it (plain forms and links).
"use strict";

/** The session's CSRF token, which every state-changing request sends (X-CSRF-Token). */
function consoleCsrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** fetch() to this origin's API with the console session: JSON in and out, the CSRF header, and an Error carrying
 * the problem+json detail when the answer is not 2xx. */
async function consoleApi(method, path, body) {
  const headers = { "X-CSRF-Token": consoleCsrfToken() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && (data.detail || data.title) ? (data.detail || data.title) : res.statusText;
    const err = new Error(`${res.status}: ${detail}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

document.addEventListener("submit", (event) => {
  const message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.getAttribute("data-copy"));
  if (source && navigator.clipboard) {
    navigator.clipboard.writeText(source.textContent.trim()).then(() => { button.textContent = "Copied"; });
  }
});

// htmx requests carry the CSRF token too (htmx is only used for GETs today, but a POST must never go without it)
document.addEventListener("htmx:configRequest", (event) => {
  event.detail.headers["X-CSRF-Token"] = consoleCsrfToken();
});

// the API-key role select shows the user select only where it matters (a supervisor key acts as a user)
document.addEventListener("change", (event) => {
  if (event.target.matches("[data-toggle-when]")) syncToggles();
});
function syncToggles() {
  document.querySelectorAll("[data-toggle-when]").forEach((select) => {
    const [value, targetId] = select.getAttribute("data-toggle-when").split(":");
    const target = document.getElementById(targetId);
    if (target) target.hidden = select.value !== value;
  });
}
document.addEventListener("DOMContentLoaded", syncToggles);
