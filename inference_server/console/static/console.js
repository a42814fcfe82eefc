// The console: sign in, keys, usage, jobs and (admins) users, over the server's own JSON API.
//
// Tokens live in this page's memory only (never localStorage or cookies): a reload signs out.
// Every value from the server or the user is put in the page as text (textContent, never
// innerHTML), so a key named <img src=x onerror=alert(1)> shows as those characters, and the
// page's Content-Security-Policy (default-src 'self') refuses any script but this file.
"use strict";

const session = { access: null, refresh: null, me: null, renewing: null };
const JOB_FINISHED = new Set(["completed", "failed", "cancelled"]);
let jobsTimer = null;

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.details = error.details;
  }
}

// -- calling the API -------------------------------------------------------------------------

async function send(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
  });
  return response;
}

async function failure(response) {
  let error = { code: `HTTP_${response.status}`, message: response.statusText };
  try {
    error = (await response.json()).error || error;
  } catch (ignored) {
    // not the server's JSON error: keep the status line
  }
  return new ApiError(response.status, error);
}

// One renewal at a time: the server rotates a refresh token on use and ends the session when
// one is used twice, so calls that meet an expired token together wait for the same renewal.
function renew() {
  if (!session.renewing) {
    session.renewing = (async () => {
      const response = await send("POST", "/auth/refresh", { refresh_token: session.refresh });
      if (!response.ok) throw await failure(response);
      const tokens = await response.json();
      session.access = tokens.access_token;
      session.refresh = tokens.refresh_token;
    })().finally(() => {
      session.renewing = null;
    });
  }
  return session.renewing;
}

async function call(method, path, body, { raw = false } = {}) {
  let response = await send(method, path, body, session.access);
  if (response.status === 401 && session.refresh) {
    const error = await failure(response.clone());
    if (error.code === "TOKEN_EXPIRED") {
      await renew();
      response = await send(method, path, body, session.access);
    }
  }
  if (!response.ok) throw await failure(response);
  return raw ? response : response.json();
}

// -- the page --------------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  return tr;
}

function button(label, onClick) {
  const node = element("button", label, { type: "button" });
  node.addEventListener("click", () => guarded(onClick));
  return node;
}

function say(message, ok = false) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.classList.toggle("ok", ok);
  notice.hidden = !message;
}

async function guarded(action) {
  try {
    say("");
    await action();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && session.access) {
      signOut("Your session has ended: sign in again.");
    } else {
      say(error.code ? `${error.message} (${error.code})` : String(error.message || error));
    }
  }
}

function show(view) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== view;
  }
  for (const tab of document.querySelectorAll("nav [data-view]")) {
    tab.classList.toggle("current", tab.dataset.view === view);
  }
  clearTimeout(jobsTimer);
  const load = { keys: loadKeys, usage: loadUsage, jobs: loadJobs, users: loadUsers }[view];
  if (load) guarded(load);
}

const when = (value) => (value ? String(value).replace("T", " ").replace(/\.\d+/, "") : "");

// -- signing in ------------------------------------------------------------------------------

async function signIn(form) {
  const body = { username: form.username.value, password: form.password.value };
  const response = await send("POST", "/auth/login", body);
  if (!response.ok) throw await failure(response);
  const tokens = await response.json();
  session.access = tokens.access_token;
  session.refresh = tokens.refresh_token;
  form.reset();
  await enter();
}

async function enter() {
  session.me = await call("GET", "/auth/me");
  if (session.me.must_change_password) {
    show("change-password");
    return;
  }
  const admin = session.me.scopes.includes("admin");
  for (const tab of document.querySelectorAll("[data-admin]")) tab.hidden = !admin;
  $("#whoami").textContent = `${session.me.username} (${session.me.role})`;
  $("#nav").hidden = false;
  fillScopes(session.me.scopes);
  show("keys");
}

async function changePassword(form) {
  await call("POST", "/auth/change-password", {
    current_password: form.current_password.value,
    new_password: form.new_password.value,
  });
  form.reset();
  say("Password changed.", true);
  await enter();
}

function signOut(message = "") {
  if (session.access) send("POST", "/auth/logout", undefined, session.access).catch(() => {});
  Object.assign(session, { access: null, refresh: null, me: null });
  $("#nav").hidden = true;
  $("#new-key").hidden = true;
  show("sign-in");
  say(message);
}

// -- keys --------------------------------------------------------------------------------------

function fillScopes(scopes) {
  const box = $("#key-scopes");
  box.replaceChildren(element("legend", "Scopes"));
  for (const scope of scopes) {
    const label = element("label");
    const input = element("input", null, { type: "checkbox", name: "scope", value: scope });
    input.checked = scope === "predict" || scope === "models:read";
    label.append(input, scope);
    box.append(label);
  }
}

async function createKey(form) {
  const scopes = [...form.querySelectorAll("input[name=scope]:checked")].map((i) => i.value);
  const body = { name: form.name.value, scopes };
  const models = form.models.value.split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  if (form.expires_days.value) body.expires_days = Number(form.expires_days.value);
  const made = await call("POST", "/auth/api-keys", body);
  form.reset();
  fillScopes(session.me.scopes);
  $("#new-key-value").textContent = made.key;
  $("#new-key").hidden = false;
  await loadKeys();
}

async function copyKey() {
  await navigator.clipboard.writeText($("#new-key-value").textContent);
  say("Key copied.", true);
}

async function loadKeys() {
  const { keys } = await call("GET", "/auth/api-keys");
  const body = $("#keys-table tbody");
  body.replaceChildren(
    ...keys.map((key) =>
      row([
        key.name,
        key.prefix,
        key.scopes.join(", "),
        key.models ? key.models.join(", ") : "all",
        when(key.created_at),
        when(key.last_used),
        when(key.expires_at) || "never",
        key.is_active ? "yes" : "revoked",
        key.is_active
          ? button("Revoke", async () => {
              await call("DELETE", `/auth/api-keys/${encodeURIComponent(key.id)}`);
              say(`Key ${key.name} revoked.`, true);
              await loadKeys();
            })
          : "",
      ]),
    ),
  );
}

// -- usage -------------------------------------------------------------------------------------

function barChart(svg, rows, label) {
  const width = svg.clientWidth || 600;
  const height = svg.clientHeight || 180;
  const most = Math.max(1, ...rows.map((r) => r.requests));
  const slot = width / Math.max(1, rows.length);
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  rows.forEach((r, i) => {
    const barHeight = ((height - 30) * r.requests) / most;
    const bar = document.createElementNS(ns, "rect");
    const barWidth = Math.min(60, slot * 0.7);
    bar.setAttribute("x", String(i * slot + (slot - barWidth) / 2));
    bar.setAttribute("y", String(height - 18 - barHeight));
    bar.setAttribute("width", String(barWidth));
    bar.setAttribute("height", String(barHeight));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${r[label]}: ${r.requests} requests, ${r.samples} samples`;
    bar.append(title);
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", String(i * slot + slot / 2));
    text.setAttribute("y", String(height - 4));
    text.setAttribute("text-anchor", "middle");
    text.textContent = String(r[label]);
    svg.append(bar, text);
  });
}

async function loadUsage() {
  const [byDay, byModel] = await Promise.all([
    call("GET", "/auth/usage?group_by=day"),
    call("GET", "/auth/usage?group_by=model"),
  ]);
  barChart($("#usage-by-day"), byDay.rows, "day");
  barChart($("#usage-by-model"), byModel.rows, "model");
  $("#quotas-table tbody").replaceChildren(
    ...byDay.quotas.map((q) => row([q.quota, q.limit, q.used, q.remaining, when(q.resets_at)])),
  );
  if (!byDay.quotas.length) {
    $("#quotas-table tbody").replaceChildren(row(["no quotas", "", "", "", ""]));
  }
}

// -- jobs --------------------------------------------------------------------------------------

async function download(job) {
  const response = await call("GET", `/jobs/${encodeURIComponent(job.id)}/result?format=jsonl`, undefined, {
    raw: true,
  });
  const link = element("a", null, { download: `${job.id}.jsonl` });
  link.href = URL.createObjectURL(await response.blob());
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function loadJobs() {
  const { jobs } = await call("GET", "/jobs?limit=100");
  const counts = (job) => {
    const c = job.request_counts;
    return `${c.completed + c.failed} / ${c.total}${c.failed ? ` (${c.failed} failed)` : ""}`;
  };
  $("#jobs-table tbody").replaceChildren(
    ...jobs.map((job) => {
      const actions = element("span");
      if (!JOB_FINISHED.has(job.status)) {
        actions.append(
          button("Cancel", async () => {
            await call("POST", `/jobs/${encodeURIComponent(job.id)}/cancel`);
            await loadJobs();
          }),
        );
      } else {
        actions.append(button("Download result", () => download(job)));
      }
      const tr = row([job.id, job.model, job.project, job.status, counts(job), when(job.created_at), actions]);
      tr.dataset.job = job.id;
      tr.dataset.status = job.status;
      return tr;
    }),
  );
  clearTimeout(jobsTimer);
  if (!$("#jobs").hidden) {
    jobsTimer = setTimeout(() => guarded(loadJobs), 2000); // new jobs and their progress
  }
}

// -- users (admins) ----------------------------------------------------------------------------

async function createUser(form) {
  await call("POST", "/auth/register", {
    username: form.username.value,
    email: form.email.value,
    password: form.password.value,
    role: form.role.value,
  });
  form.reset();
  say("User created.", true);
  await loadUsers();
}

async function loadUsers() {
  const { users } = await call("GET", "/admin/users?limit=500");
  const patch = (user, change) => async () => {
    await call("PATCH", `/admin/users/${encodeURIComponent(user.id)}`, change);
    await loadUsers();
  };
  $("#users-table tbody").replaceChildren(
    ...users.map((user) => {
      const actions = element("span");
      actions.append(
        button(user.is_active ? "Disable" : "Enable", patch(user, { is_active: !user.is_active })),
        button(user.role === "admin" ? "Make user" : "Make admin", patch(user, {
          role: user.role === "admin" ? "user" : "admin",
        })),
        button("Set tier", async () => {
          const tier = prompt(`Tier of ${user.username} (empty: the default tier)`, user.tier || "");
          if (tier !== null) await patch(user, { tier: tier || null })();
        }),
        button("Reset password", async () => {
          const password = prompt(`A temporary password for ${user.username}`);
          if (!password) return;
          await call("POST", `/admin/users/${encodeURIComponent(user.id)}/reset-password`, {
            new_password: password,
          });
          say(`${user.username} must choose a new password at their next sign-in.`, true);
        }),
      );
      return row([user.username, user.email, user.role, user.tier || "default", user.is_active ? "yes" : "no", actions]);
    }),
  );
}

// -- wiring ------------------------------------------------------------------------------------

function onSubmit(selector, action) {
  $(selector).addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => action(event.target));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  onSubmit("#sign-in-form", signIn);
  onSubmit("#change-password-form", changePassword);
  onSubmit("#create-key-form", createKey);
  onSubmit("#create-user-form", createUser);
  $("#copy-key").addEventListener("click", () => guarded(copyKey));
  $("#sign-out").addEventListener("click", () => signOut());
  for (const tab of document.querySelectorAll("nav [data-view]")) {
    tab.addEventListener("click", () => show(tab.dataset.view));
  }
  show("sign-in");
});
