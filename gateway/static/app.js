// The Conveyor gateway page: vanilla JS, no framework, nothing from a CDN.
// Every piece of data goes into the page through textContent or attributes, never innerHTML.

const UNFINISHED = new Set(["PENDING", "RUNNING", "DELEGATED"]);
const POLL_BUSY_MS = 1000;   // while any job is waiting or running
const POLL_IDLE_MS = 5000;   // otherwise (jobs added from elsewhere still show)
const SVG = "http://www.w3.org/2000/svg";

const state = {
  csrf: null, user: null, models: [], model: null, page: 1, openJob: null,
  timer: null, lastSignature: "", detailSignature: "",
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  if (text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

// -- talking to the API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body = null) {
  const headers = { "X-Requested-With": "conveyor" };
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  if (body !== null && !(body instanceof FormData)) headers["Content-Type"] = "application/json";
  let answer;
  try {
    answer = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === null ? undefined : (body instanceof FormData ? body : JSON.stringify(body)),
    });
  } catch (err) {
    showStore("Conveyor cannot be reached. Is it still running? Retrying…");
    throw new ApiError(0, "network");
  }
  return handle(answer);
}

async function handle(answer) {
  let data = null;
  const type = answer.headers.get("content-type") || "";
  if (type.startsWith("application/json")) data = await answer.json();
  if (answer.status === 503) {
    showStore("The storage behind Conveyor cannot be reached right now, so files cannot be uploaded " +
              "or listed. Your files are safe; this page retries by itself.", data && data.error ? data.error : null);
    throw new ApiError(503, data ? data.error : "store down");
  }
  if (answer.status === 401) {
    showLogin();
    throw new ApiError(401, data ? data.error : "log in");
  }
  if (!answer.ok) throw new ApiError(answer.status, data && data.error ? data.error : answer.statusText);
  showStore(null);
  return data;
}

function showStore(message, detail = null) {
  const box = $("store-status");
  box.replaceChildren();
  if (message) box.append(el("span", {}, message));
  if (message && detail) box.append(el("small", { class: "detail" }, `Details: ${detail}`));
  box.hidden = !message;
}

// -- logging in and out ------------------------------------------------------------------------

function showLogin() {
  stopPolling();
  clearSession();
  state.user = null; state.csrf = null;
  $("app").hidden = true;
  $("account").hidden = true;
  $("login-panel").hidden = false;
}

// Nothing of one person's session stays on the page for the next one to log in on it.
function clearSession() {
  closeDetail();
  state.page = 1; state.lastSignature = ""; state.detailSignature = "";
  $("jobs").tBodies[0].replaceChildren();
  $("jobs").hidden = true;
  $("jobs-empty").hidden = true;
  $("jobs-page").textContent = "";
  $("jobs-live").textContent = "";
  $("jobs-older").hidden = true;
  $("jobs-newer").hidden = true;
  $("upload-message").textContent = "";
  $("upload-message").className = "";
  $("upload-progress").hidden = true;
  $("file").value = "";
  $("timing-chart").replaceChildren();
  $("timing-summary").textContent = "";
  $("whoami").textContent = "";
  $("password").value = "";
  showStore(null);
}

async function enter(session) {
  state.user = session.user; state.csrf = session.csrf_token;
  $("whoami").textContent = session.user;
  $("account").hidden = false;
  $("login-panel").hidden = true;
  $("app").hidden = false;
  $("login-error").textContent = "";
  await loadModels();
  refresh();
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  try {
    const answer = await fetch("/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Requested-With": "conveyor" },
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    const data = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      $("login-error").textContent = answer.status === 401
        ? "Wrong user name or password." : (data.error || `Log in failed (${answer.status}).`);
      return;
    }
    $("password").value = "";
    await enter(data);
  } catch (err) {
    $("login-error").textContent = "Conveyor cannot be reached.";
  } finally {
    $("login-submit").disabled = false;
  }
}

async function logout() {
  try { await api("POST", "/logout"); } catch (err) { /* logged out either way */ }
  showLogin();
}

// -- models ------------------------------------------------------------------------------------

async function loadModels() {
  state.models = await api("GET", "/api/models");
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.name }, m.title)));
  const remembered = localStorage.getItem("conveyor-model");
  if (state.models.some((m) => m.name === remembered)) select.value = remembered;
  chooseModel();
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value) || null;
}

function chooseModel() {
  const model = currentModel();
  state.model = model; state.page = 1; state.lastSignature = "";
  if (!model) return;
  localStorage.setItem("conveyor-model", model.name);
  $("model-description").textContent = model.description || "";
  $("model-accepts").textContent = model.accepts.length
    ? `Accepts ${model.accepts.join(", ")} files, up to ${formatBytes(model.max_upload_bytes)} each.`
    : `Accepts any file, up to ${formatBytes(model.max_upload_bytes)} each.`;
  $("file").setAttribute("accept", model.accepts.join(","));
  const example = $("example-link");
  $("model-example").hidden = !model.example_url;
  if (model.example_url) {
    example.href = model.example_url;
    example.textContent = `example file (${model.example_name})`;
  }
  closeDetail();
  refresh();
}

// -- uploading ---------------------------------------------------------------------------------

function upload() {
  const model = currentModel();
  const files = $("file").files;
  const message = $("upload-message");
  message.className = "";
  if (!model) return;
  if (!files.length) { message.textContent = "Choose one or more files first."; return; }
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const progress = $("upload-progress");
  progress.hidden = false; progress.value = 0;
  $("upload").disabled = true;
  message.textContent = `Uploading ${files.length} file(s)…`;
  const request = new XMLHttpRequest();  // fetch cannot report upload progress
  request.open("POST", `/api/models/${encodeURIComponent(model.name)}/files`);
  request.setRequestHeader("X-CSRF-Token", state.csrf || "");
  request.setRequestHeader("X-Requested-With", "conveyor");
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) progress.value = Math.round(100 * event.loaded / event.total);
  };
  const who = state.user;
  request.onerror = () => finishUpload(0, null, who);
  request.onload = () => {
    let data = null;
    try { data = JSON.parse(request.responseText); } catch (err) { data = null; }
    finishUpload(request.status, data, who);
  };
  request.send(form);
}

function finishUpload(status, data, who) {
  if (state.user !== who) return;  // the person who uploaded has logged out
  const message = $("upload-message");
  $("upload").disabled = false;
  $("upload-progress").hidden = true;
  if (status === 201) {
    const count = data.jobs.length;
    message.className = "ok";
    message.textContent = `${count} file(s) uploaded: ${count === 1 ? "its job is" : "their jobs are"} below. ` +
      "The table updates by itself.";
    $("file").value = "";
    state.page = 1;
    refresh();
    return;
  }
  message.className = "error";
  if (status === 503) showStore("The storage behind Conveyor cannot be reached right now: nothing was uploaded. Try again in a moment.");
  if (status === 401) { showLogin(); return; }
  message.textContent = status === 0 ? "The upload did not reach Conveyor." :
    (data && data.error ? data.error : `The upload failed (${status}).`);
}

// -- the job table, polled -----------------------------------------------------------------------

function stopPolling() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

async function refresh() {
  stopPolling();
  if (!state.user || !state.model) return;
  let busy = false;
  const who = state.user;
  try {
    const query = new URLSearchParams({ model: state.model.name, page: state.page, per_page: 50 });
    const data = await api("GET", `/api/jobs?${query}`);
    if (state.user !== who) return;  // logged out (or in as someone else) meanwhile
    renderJobs(data);
    busy = data.jobs.some((j) => UNFINISHED.has(j.status));
    const signature = data.jobs.map((j) => `${j.id}:${j.status}:${j.batch_state}`).join(",") + `|${data.total}`;
    if (signature !== state.lastSignature) {
      state.lastSignature = signature;
      loadStats();
    }
    if (state.openJob) await loadDetail(state.openJob, false);
    $("jobs-live").textContent = busy ? "Updating every second while jobs are waiting or running." : "";
  } catch (err) {
    if (err.status === 401) return;
    if (!$("jobs").tBodies[0].rows.length) {
      $("jobs").hidden = true;
      $("jobs-empty").hidden = false;
      $("jobs-empty").textContent = "Your jobs cannot be listed right now (see the message at the top).";
    }
    busy = true;  // retry soon (the store may be back)
  }
  if (state.user) state.timer = setTimeout(refresh, busy ? POLL_BUSY_MS : POLL_IDLE_MS);
}

function stateBadge(status, batchState) {
  const span = el("span", { class: `state ${status}` }, status);
  if (status === "DELEGATED" && batchState) span.textContent = `DELEGATED · Batch: ${batchState}`;
  return span;
}

// Rows are kept and updated in place (keyed by data-job-id), never rebuilt: the row a person (or a
// test) is about to click stays the same element while the table refreshes every second.
function renderJobs(data) {
  const body = $("jobs").tBodies[0];
  const existing = new Map([...body.querySelectorAll("tr.job")].map((row) => [row.dataset.jobId, row]));
  const wanted = new Set(data.jobs.map((job) => job.id));
  for (const [id, row] of existing) if (!wanted.has(id)) row.remove();
  data.jobs.forEach((job, index) => {
    const row = existing.get(job.id) || newJobRow(job);
    updateJobRow(row, job);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
  });
  $("jobs-empty").hidden = data.total > 0;
  $("jobs-empty").textContent = "No jobs yet: upload a file above.";
  $("jobs").hidden = data.total === 0;
  $("jobs-newer").hidden = data.page <= 1;
  $("jobs-older").hidden = !data.next_page;
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  $("jobs-page").textContent = pages > 1 ? `Page ${data.page} of ${pages} (${data.total} jobs)` : "";
}

function newJobRow(job) {
  const row = el("tr", { class: "job", "data-job-id": job.id, tabindex: "0" });
  const file = el("td", { class: "file", title: job.file });
  file.append(el("a", { class: "open", href: `#job=${job.id}` }, job.file));
  row.append(file, el("td", { class: "status" }), el("td", { class: "uploaded" }, formatTime(job.uploaded_at)),
    el("td", { class: "wait" }), el("td", { class: "run" }), el("td", { class: "more" }, "›"));
  row.addEventListener("click", (event) => { event.preventDefault(); openDetail(job.id); });
  row.addEventListener("keydown", (event) => { if (event.key === "Enter") openDetail(job.id); });
  return row;
}

function updateJobRow(row, job) {
  row.classList.toggle("selected", state.openJob === job.id);
  const label = job.status === "DELEGATED" && job.batch_state ? `DELEGATED · Batch: ${job.batch_state}` : job.status;
  const cell = row.querySelector("td.status");
  if (row.dataset.status !== job.status || cell.textContent !== label) {
    row.dataset.status = job.status;
    cell.replaceChildren(stateBadge(job.status, job.batch_state));
  }
  setText(row.querySelector("td.wait"), formatSeconds(job.wait_s));
  setText(row.querySelector("td.run"), formatSeconds(job.run_s));
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// -- one job ---------------------------------------------------------------------------------------

async function openDetail(id) {
  state.openJob = id; state.detailSignature = "";
  for (const row of document.querySelectorAll("tr.job")) {
    row.classList.toggle("selected", row.dataset.jobId === id);
  }
  await loadDetail(id, true);
}

function closeDetail() {
  state.openJob = null;
  $("job-detail").hidden = true;
  $("job-detail").removeAttribute("data-job-id");
  for (const row of document.querySelectorAll("tr.job.selected")) row.classList.remove("selected");
}

async function loadDetail(id, scroll) {
  let job;
  const who = state.user;
  try {
    job = await api("GET", `/api/jobs/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err.status === 404) closeDetail();
    return;
  }
  if (state.openJob !== id || state.user !== who) return;
  const signature = `${job.status}:${job.batch_state}:${job.run_s}:${job.outputs.length}`;
  if (signature === state.detailSignature && !scroll) return;
  state.detailSignature = signature;
  renderDetail(job);
  if (scroll) $("job-detail").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function renderDetail(job) {
  const panel = $("job-detail");
  panel.hidden = false;
  panel.dataset.jobId = job.id;
  $("job-title").textContent = job.file;
  const line = $("job-state");
  line.replaceChildren(stateBadge(job.status, job.batch_state), document.createTextNode(" " + explain(job)));
  const times = [`uploaded ${formatTime(job.uploaded_at)}`];
  if (job.wait_s !== null) times.push(`waited ${formatSeconds(job.wait_s)}`);
  if (job.run_s !== null) times.push(`ran ${formatSeconds(job.run_s)}`);
  $("job-times").textContent = times.join(" · ");

  const failed = job.status === "FAILED";
  $("job-error-box").hidden = !failed;
  $("job-error").textContent = failed && job.error ? `${job.error.kind} error: ${job.error.message}` : "";
  $("job-log").textContent = failed ? (job.log_tail || "(the model printed nothing)") : "";

  const outputs = $("job-outputs");
  outputs.replaceChildren();
  if (job.outputs.length) outputs.append(el("h3", {}, "Results"));
  for (const output of job.outputs) outputs.append(renderOutput(output));
  if (!job.outputs.length && job.status === "SUCCEEDED") outputs.append(el("p", { class: "hint" }, "The model wrote no result file."));
  if (UNFINISHED.has(job.status)) outputs.append(el("p", { class: "hint" }, "The results appear here when the job is done."));

  const zip = $("download-zip");
  zip.hidden = !job.zip_url;
  if (job.zip_url) zip.href = job.zip_url;
  $("download-input").href = `${job.input_url}?download=1`;
}

function explain(job) {
  switch (job.status) {
    case "PENDING": return "Waiting for the model to pick the file up.";
    case "RUNNING": return "The model is working on it.";
    case "SUCCEEDED": return "Done.";
    case "FAILED": return "The model could not process this file.";
    case "DELEGATED": return "Handed to AWS Batch (larger machines); it runs there.";
    default: return "";
  }
}

function renderOutput(output) {
  const box = el("div", { class: "output", "data-name": output.name });
  const head = el("div", { class: "output-head" });
  head.append(el("span", { class: "output-name" }, output.name),
    el("span", { class: "hint" }, output.size !== null ? formatBytes(output.size) : ""));
  const link = el("a", { class: "download", href: `${output.url}?download=1`, download: baseName(output.name) }, "Download");
  head.append(link);
  box.append(head);
  const type = output.media_type || "";
  if (/^image\/(png|jpeg|gif|webp|bmp)$/.test(type)) {
    box.append(el("img", { class: "output-image", src: output.url, alt: `Result image ${output.name}` }));
  } else if (type.startsWith("audio/")) {
    const audio = el("audio", { class: "output-audio", controls: "", preload: "metadata", src: output.url });
    box.append(audio);
  } else if (type === "application/json") {
    const pre = el("pre", { class: "output-json" }, "Loading…");
    box.append(pre);
    fetch(output.url, { credentials: "same-origin", headers: { "X-Requested-With": "conveyor" } })
      .then((r) => r.text())
      .then((text) => {
        try { pre.textContent = JSON.stringify(JSON.parse(text), null, 2); } catch (err) { pre.textContent = text; }
      })
      .catch(() => { pre.textContent = "(could not load this file)"; });
  } else if (type === "text/plain" || type === "text/csv") {
    const pre = el("pre", { class: "output-text" }, "Loading…");
    box.append(pre);
    fetch(output.url, { credentials: "same-origin" }).then((r) => r.text())
      .then((text) => { pre.textContent = text.length > 20000 ? text.slice(0, 20000) + "\n…" : text; })
      .catch(() => { pre.textContent = "(could not load this file)"; });
  }
  return box;
}

async function deleteJob() {
  const id = $("job-detail").dataset.jobId;
  if (!id) return;
  $("delete-job").disabled = true;
  try {
    await api("DELETE", `/api/jobs/${encodeURIComponent(id)}`);
    closeDetail();
    $("upload-message").className = "ok";
    $("upload-message").textContent = "The job was deleted.";
    state.lastSignature = "";
    refresh();
  } catch (err) {
    $("job-error-box").hidden = false;
    $("job-error").textContent = `Could not delete the job: ${err.message}`;
  } finally {
    $("delete-job").disabled = false;
  }
}

// -- the timing panel ----------------------------------------------------------------------------------

async function loadStats() {
  if (!state.model) return;
  const who = state.user;
  try {
    const stats = await api("GET", `/api/models/${encodeURIComponent(state.model.name)}/stats`);
    if (state.user === who) drawChart(stats);
  } catch (err) { /* the banner says why */ }
}

function drawChart(stats) {
  const chart = $("timing-chart");
  const width = 800, height = 220, left = 80, bottom = 24, top = 10;
  chart.replaceChildren();
  const jobs = stats.jobs;
  const values = jobs.flatMap((j) => [j.wait_s || 0, j.run_s || 0]);
  const max = niceMax(Math.max(1, ...values));
  const plotH = height - top - bottom, plotW = width - left - 8;
  const y = (v) => top + plotH - (plotH * v) / max;
  for (const tick of [0, max / 2, max]) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width - 8, y1: y(tick), y2: y(tick) }));
    const label = svg("text", { class: "axis", x: left - 6, y: y(tick) + 4, "text-anchor": "end" });
    label.textContent = formatSeconds(tick);
    chart.append(label);
  }
  if (!jobs.length) {
    const empty = svg("text", { class: "axis", x: width / 2, y: height / 2, "text-anchor": "middle" });
    empty.textContent = "No jobs yet";
    chart.append(empty);
  }
  const slot = plotW / Math.max(jobs.length, 1);
  const barW = Math.max(1, Math.min(18, slot * 0.4));
  jobs.forEach((job, index) => {
    const x = left + index * slot + slot / 2 - barW;
    const group = svg("g", { class: `bar ${job.status}`, "data-job-id": job.id, "data-status": job.status });
    const wait = job.wait_s || 0, run = job.run_s || 0;
    const waitRect = svg("rect", { class: "wait", x, y: y(wait), width: barW, height: Math.max(0, y(0) - y(wait)) });
    const runRect = svg("rect", { class: "run", x: x + barW, y: y(run), width: barW, height: Math.max(0, y(0) - y(run)) });
    const title = svg("title");
    title.textContent = `${job.file}: waited ${formatSeconds(job.wait_s)}, ran ${formatSeconds(job.run_s)} (${job.status})`;
    group.append(title, waitRect, runRect);
    group.addEventListener("click", () => openDetail(job.id));
    chart.append(group);
  });
  const parts = [`${stats.count} job${stats.count === 1 ? "" : "s"}`, `${stats.failures} failed`];
  parts.push(stats.median === null ? "no finished job yet" : `median run ${formatSeconds(stats.median)}`);
  if (stats.p95 !== null) parts.push(`95% of runs within ${formatSeconds(stats.p95)}`);
  if (stats.shown < stats.count) parts.push(`chart shows the newest ${stats.shown}`);
  $("timing-summary").textContent = parts.join(" · ");
}

function niceMax(value) {
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return value;
}

// -- formatting ------------------------------------------------------------------------------------

function formatSeconds(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "0 s";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 60) return `${value.toFixed(value < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(value / 60), seconds = Math.round(value % 60);
  if (minutes < 60) return `${minutes} min ${seconds} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  return today ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function baseName(name) {
  return name.split("/").pop();
}

// -- start -----------------------------------------------------------------------------------------

async function start() {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("model").addEventListener("change", chooseModel);
  $("upload").addEventListener("click", upload);
  $("delete-job").addEventListener("click", deleteJob);
  $("close-detail").addEventListener("click", closeDetail);
  $("jobs-older").addEventListener("click", () => { state.page += 1; refresh(); });
  $("jobs-newer").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); refresh(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && state.user) refresh(); });
  try {
    const answer = await fetch("/api/session", { credentials: "same-origin", headers: { "X-Requested-With": "conveyor" } });
    const session = answer.ok ? await answer.json() : null;
    if (session && session.user) { await enter(session); return; }
  } catch (err) { /* shown as the login form */ }
  showLogin();
}

start();
