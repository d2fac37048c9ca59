// The page at /ui: try the served model on photos or rows, keep the gallery, read /model,
// follow and start a migration to another version.
// Plain JavaScript, no build step. It calls the server's HTTP API as any client does; the key
// lives in this tab's sessionStorage only and goes out as the Authorization header. Text from
// the server (names, messages) is set as textContent, never parsed as HTML.
"use strict";

const KEY_STORE = "zoo-key";
const TOP_K = 5;
const PAGE_SIZE = 20;
const POLL_MS = 1000;  // how often a running migration is asked how far it is
const START_POLLS = 30;  // how long a migration just asked for may take to show up
const SWITCH_POLLS = 60;  // how long the workers may take to answer with the version that passed
const RUNNING = ["waiting", "loading", "carrying", "gating"];  // a migration's unfinished stages
const state = { model: null, page: 1, search: "", total: 0, detail: null,
                migration: null, watch: null, timer: null };

const $ = (id) => document.getElementById(id);

function element(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value);
  }
  for (const child of children) if (child != null) el.append(child);
  return el;
}

function key() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

// One API call. Paths are relative to the page (/ui/), so the page works behind a prefix.
// Answers {ok, status, data, message}: data is the parsed JSON (or a Blob for images),
// message the server's own words for an error.
async function api(path, { method = "GET", form = null, json = null, blob = false } = {}) {
  const headers = {};
  if (key()) headers.Authorization = `Bearer ${key()}`;
  let body = null;
  if (form) body = form;
  if (json) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(`../${path}`, { method, headers, body, cache: "no-store" });
  } catch (err) {
    return { ok: false, status: 0, message: `the server did not answer (${err.message})` };
  }
  const type = response.headers.get("content-type") || "";
  if (response.ok) {
    const data = blob ? await response.blob() : await response.json();
    return { ok: true, status: response.status, data, headers: response.headers };
  }
  let message = `${response.status} ${response.statusText}`;
  if (type.includes("json")) {
    const data = await response.json().catch(() => null);
    message = `${response.status}: ${errorText(data) || response.statusText}`;
  } else {
    const text = (await response.text().catch(() => "")).slice(0, 300);
    if (text) message = `${response.status}: ${text}`;
  }
  return { ok: false, status: response.status, message };
}

// The message of an error answer: the server's one shape, or OpenAI's under /v1/.
function errorText(data) {
  if (!data) return "";
  if (typeof data.error === "string") return data.error;
  if (data.error && data.error.message) return data.error.message;
  return JSON.stringify(data);
}

// A status line: the text, shown as an error or not.
function say(id, text, error = false) {
  $(id).textContent = text;
  $(id).className = error ? "error" : "";
}

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

// ---- the key ---------------------------------------------------------------------------

function showKeyState() {
  $("key-state").textContent = key() ? "a key is set for this tab" : "no key";
}

function setUpKey() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("key").value.trim();
    if (value) sessionStorage.setItem(KEY_STORE, value);
    $("key").value = "";
    showKeyState();
    start();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    showKeyState();
    start();
  });
  showKeyState();
}

// ---- tabs ------------------------------------------------------------------------------

function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const tab of ["try", "gallery", "model"]) $(`tab-${tab}`).hidden = tab !== name;
  if (name === "gallery") loadIdentities();
  if (name === "model") openModelTab();
  else stopWatching();  // polling stops when the tab is left
}

// ---- the model -------------------------------------------------------------------------

async function start() {
  const got = await api("model");
  if (!got.ok) {
    state.model = null;
    $("image-input").hidden = true;
    $("row-input").hidden = true;
    $("model-title").textContent = "";
    $("answering").textContent = "";
    stopWatching();
    $("migration").hidden = true;
    notice(got.status === 401
      ? `${got.message}. Enter the server's key above.`
      : `The model could not be read: ${got.message}`);
    return;
  }
  notice("");
  state.model = got.data;
  renderModel(got.data);
  showAnswering(got.data, got.headers);
  const table = got.data.kind === "tabular";
  $("image-input").hidden = table;
  $("row-input").hidden = !table;
  $("enroll-files").hidden = table;
  $("enroll-rows").hidden = !table;
  $("verify-form").hidden = table;
  setUpFar(got.data);
  if (table) setUpRows(got.data);
  if (!$("tab-gallery").hidden) loadIdentities();  // a new key may open it
  if (!$("tab-model").hidden) followMigration();  // and the migration part
}

function renderModel(model) {
  $("model-title").textContent = `${model.name}${model.version ? ` v${model.version}` : ""}`;
  const gallery = model.gallery || {};
  const facts = [
    ["Name", model.name], ["Version", model.version], ["Alias", model.alias],
    ["URI", model.uri], ["Run", model.run_id], ["Backbone", model.model], ["Loss", model.loss],
    ["Input", `${model.kind} ${(model.input_size || []).join("×")}`],
    ["Face stage", model.faces ? `${model.faces.mode}, ${model.faces.size} px chips` : "none"],
    ["Embedding", `${model.embedding_dim} dimensions`],
    ["Classes", model.classes ? `${model.classes.length}` : "none"],
    ["Runtime", model.runtime],
    ["Gallery", `${gallery.entries} entries of ${gallery.identities} identities`],
    ["Threshold", gallery.threshold == null ? "none" : `${fixed(gallery.threshold)} (FAR ${gallery.far})`],
    ["Index", gallery.index ? describeIndex(gallery.index) : ""],
    ["Database", gallery.database],
  ];
  const list = $("model-info");
  list.replaceChildren();
  for (const [name, value] of facts) {
    if (value == null || value === "") continue;
    list.append(element("dt", { text: name }), element("dd", { text: String(value) }));
  }
  const link = $("run-link");
  link.hidden = !model.run_url;
  if (model.run_url && /^https?:\/\//.test(model.run_url)) link.href = model.run_url;
  const metrics = $("model-metrics").tBodies[0];
  metrics.replaceChildren();
  for (const [name, value] of Object.entries(model.metrics || {})) {
    metrics.append(element("tr", {}, element("th", { text: name }),
      element("td", { text: fixed(value) })));
  }
  $("migrate-to").placeholder = `models:/${model.name}@champion or models:/${model.name}/2`;
}

// The version answering: /model's, or what its answer's X-Zoo-Model-Version header says
// (the run, for an unregistered model).
function showAnswering(model, headers) {
  const said = headers ? headers.get("X-Zoo-Model-Version") : null;
  let text = `Answering: ${model.version ? `version ${model.version}` : said || "an unregistered model"}`;
  if (said && model.version && said !== String(model.version)) text += ` (this answer came from ${said})`;
  $("answering").textContent = text;
}

// /model again, e.g. once a migration has ended; null when it could not be read.
async function refreshModel() {
  const got = await api("model");
  if (!got.ok) {
    notice(got.status === 401
      ? `${got.message}. Enter the server's key above.`
      : `The model could not be read: ${got.message}`);
    return null;
  }
  notice("");
  state.model = got.data;
  renderModel(got.data);
  showAnswering(got.data, got.headers);
  return got.data;
}

function describeIndex(index) {
  return Object.entries(index).filter(([, v]) => v != null)
    .map(([k, v]) => `${k} ${typeof v !== "object" ? v : Object.keys(v).length ? `(${describeIndex(v)})` : "none"}`)
    .join(", ");
}

function fixed(x, digits = 3) {
  return typeof x === "number" ? x.toFixed(digits) : String(x);
}

// ---- the model tab: the version answering and its migrations -----------------------------

async function openModelTab() {
  await refreshModel();
  await followMigration();
}

// The latest migration, and, while it runs, every second until it ends.
async function followMigration() {
  stopWatching();
  const status = await loadMigration();
  if (status && isRunning(status) && !$("tab-model").hidden) watchMigration(undefined);
}

function isRunning(status) {
  const m = status.migration;
  return status.running || Boolean(m && RUNNING.includes(m.stage));
}

// GET /gallery/migration, shown; null where it is refused (no admin key) or failed.
async function loadMigration() {
  const got = await api("gallery/migration");
  if (!got.ok) {
    state.migration = null;
    $("migration").hidden = true;
    const needsKey = got.status === 401 || got.status === 403;
    say("migration-hint", needsKey ? "Following and starting a migration need the admin key."
      : `The migration could not be read: ${got.message}`, !needsKey);
    if (needsKey) $("migration-hint").className = "hint";
    $("migration-hint").hidden = false;
    return null;
  }
  $("migration-hint").hidden = true;
  $("migration").hidden = false;
  renderMigration(got.data);
  return got.data;
}

function renderMigration(status) {
  state.migration = status;
  const follow = status.follow;
  $("migration-follow").hidden = !follow;
  $("migrate-form").hidden = Boolean(follow);  // the alias decides: move it instead
  if (follow) {
    $("migration-follow").textContent = `This server follows ${follow.alias} every ${follow.every_s} s: `
      + "it migrates when the alias moves to another version.";
  }
  $("migrate-start").disabled = isRunning(status);
  const m = status.migration;
  for (const id of ["migration-progress", "migration-times", "migration-error", "migration-gate"]) {
    $(id).hidden = true;
  }
  if (!m) {
    say("migration-stage", "No migration has run yet: the version answering is the one the "
      + "server started with.");
  } else {
    renderStage(m);
  }
  const refused = Object.entries(status.refused || {});
  $("migration-refused").hidden = !refused.length;
  $("refused-list").replaceChildren(...refused.map(([uri, reason]) => element("li", {},
    element("span", { class: "mono", text: uri }), `: ${reason}`)));
}

function renderStage(m) {
  const running = RUNNING.includes(m.stage);
  say("migration-stage", `Migration to ${m.to}: ${stageText(m)}.`,
    ["refused", "failed", "interrupted"].includes(m.stage));
  if (running || m.total) {
    const bar = $("migration-bar");
    if (m.total) {
      bar.max = m.total;
      bar.value = m.done;
    } else {
      bar.removeAttribute("value");  // no count yet: an indeterminate bar
    }
    let count = m.total ? `${m.done} of ${m.total} entries carried` : "counting the entries to carry";
    if (running && m.total && m.eta_s != null) count += `, ${about(m.eta_s)} left`;
    $("migration-count").textContent = count;
    $("migration-progress").hidden = false;
  }
  const times = [`started ${clock(m.started_at)}`];
  if (m.finished_at) times.push(`ended ${clock(m.finished_at)} (took ${about(m.finished_at - m.started_at)})`);
  if (m.uncarried) times.push(`${m.uncarried} kept entries could not be carried`);
  $("migration-times").textContent = `${times.join("; ")}.`;
  $("migration-times").hidden = !m.started_at;
  $("migration-error").textContent = m.error || "";
  $("migration-error").hidden = !m.error;
  if (m.gate) renderGate(m.gate, m.version);
}

function stageText(m) {
  const version = m.version ? `version ${m.version}` : "the version";
  const forced = m.force && m.gate && !m.gate.passed ? ", forced past the gate" : "";
  return {
    waiting: `waiting for ${version} to be exported`,
    loading: `loading ${version}`,
    carrying: `carrying the gallery to ${version}`,
    gating: `the gate is judging ${version} on the enrolled people`,
    passed: `${version} passed the gate`,
    switched: `${version} answers now${forced}`,
    refused: `the gate refused ${version}; the old version answers on`,
    failed: `${version} failed; the old version answers on`,
    interrupted: `interrupted (the worker running it stopped); start it again to go on`,
  }[m.stage] || m.stage;
}

// The gate's verdict, and both versions' figures on the enrolled people.
function renderGate(gate, version) {
  $("gate-verdict").textContent = `Gate: ${gate.passed ? "passed" : "refused"}${gate.judged ? "" : " (not judged)"}.`;
  $("gate-verdict").className = gate.passed ? "passed" : "error";
  $("gate-reason").textContent = gate.reason;
  $("gate-old").textContent = gate.old ? "Old (answering before)" : "Old: no earlier gallery";
  $("gate-new").textContent = `New (${version ? `version ${version}` : "the version"})`;
  const figures = [["Identities", "identities", String], ["Queries", "queries", String],
    ["Top-1", "top1", percent], ["Unknown rate", "unknown", percent],
    ["Threshold", "threshold", (x) => fixed(x)]];
  const cell = (side, field, format) => {
    const value = side ? side[field] : null;
    return element("td", { text: value == null ? "—" : format(value) });
  };
  $("gate-figures").tBodies[0].replaceChildren(...figures.map(([name, field, format]) =>
    element("tr", {}, element("th", { text: name }), cell(gate.old, field, format),
      cell(gate.new, field, format))));
  $("migration-gate").hidden = false;
}

// A time in seconds as people say it: "about 40 s", "about 2 min", "about 1.5 h".
function about(seconds) {
  if (seconds < 90) return `about ${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 90 * 60) return `about ${Math.round(seconds / 60)} min`;
  return `about ${(seconds / 3600).toFixed(1)} h`;
}

function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString();
}

async function startMigration(event) {
  event.preventDefault();
  const to = $("migrate-to").value.trim();
  const force = $("migrate-force").checked;
  if (!to) return;
  if (force && !window.confirm(`Switch to ${to} even if the gate refuses it?`)) return;
  const latest = state.migration && state.migration.migration;
  $("migrate-start").disabled = true;
  const got = await api("gallery/migrate", { method: "POST", json: { to, force } });
  $("migrate-start").disabled = false;
  if (!got.ok) {
    say("migrate-message", got.message, true);
    return;
  }
  say("migrate-message", `Started: migrating to version ${got.data.version}${got.data.force ? ", forced" : ""}.`);
  $("migrate-start").disabled = true;
  watchMigration(latest ? latest.started_at : null);
}

// Poll GET /gallery/migration every second until the migration ends, then /model. ``before``:
// the start time of the latest migration before this page asked for one (null: none), so
// that one is waited for even before it shows up; undefined: one already running.
function watchMigration(before) {
  stopWatching();
  state.watch = { before, polls: 0, switching: 0 };
  state.timer = setTimeout(pollMigration, POLL_MS);
}

function stopWatching() {
  clearTimeout(state.timer);
  state.timer = null;
  state.watch = null;
}

async function pollMigration() {
  const watch = state.watch;
  if (!watch || $("tab-model").hidden) return;
  const again = () => { state.timer = setTimeout(pollMigration, POLL_MS); };
  watch.polls += 1;
  const status = await loadMigration();
  if (state.watch !== watch) return;  // the tab was left, or another watch began
  if (!status) {
    stopWatching();
    return;
  }
  const m = status.migration;
  const shown = m && m.started_at !== watch.before;
  if (isRunning(status) || (watch.before !== undefined && !shown && watch.polls < START_POLLS)) {
    again();
    return;
  }
  const model = await refreshModel();  // it ended: the version answering now
  if (state.watch !== watch) return;
  if (model && m && m.stage === "switched" && String(model.version) !== String(m.version)
      && watch.switching < SWITCH_POLLS) {
    watch.switching += 1;  // every worker loads the new version, then switches to it
    $("answering").textContent += ` (the workers are switching to version ${m.version}…)`;
    again();
    return;
  }
  if (watch.before !== undefined) {  // the one this page started has ended: its stage says how
    say("migrate-message", shown ? "" : "The migration has not shown up: the server's log "
      + "says why.", !shown);
  }
  stopWatching();
}

// ---- try: images -----------------------------------------------------------------------

function setUpImages() {
  const drop = $("drop");
  $("files").addEventListener("change", () => {
    tryImages([...$("files").files]);
    $("files").value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    tryImages([...event.dataTransfer.files].filter((f) => f.type.startsWith("image/")));
  });
}

async function tryImages(files) {
  const results = $("results");
  results.replaceChildren();
  await Promise.all(files.map((file) => tryImage(file, results)));
}

function imageForm(file, extra = {}, field = "images") {
  const form = new FormData();
  form.append(field, file, file.name);
  for (const [name, value] of Object.entries(extra)) form.append(name, value);
  return form;
}

async function tryImage(file, results) {
  const url = URL.createObjectURL(file);
  const photo = element("img", { src: url, alt: file.name, class: "photo" });
  const boxes = element("div", { class: "boxes" });
  const figure = element("figure", {}, element("div", { class: "frame" }, photo, boxes),
    element("figcaption", { text: file.name }));
  const answer = element("div", { class: "answer" }, element("p", { class: "pending", text: "asking the model…" }));
  const card = element("article", { class: "result" }, figure, answer);
  card.dataset.file = file.name;
  results.append(card);
  const model = state.model;
  const asks = [api("identify", { method: "POST", form: imageForm(file, { top_k: String(TOP_K), ...farAsked() }) })];
  if (model && model.classes) {
    asks.push(api("classify", { method: "POST", form: imageForm(file, { top_k: "3" }) }));
  }
  const [identified, classified] = await Promise.all(asks);
  await photo.decode().catch(() => null);
  answer.replaceChildren();
  const failed = [identified, classified].find((got) => got && !got.ok);
  if (failed) {
    answer.append(element("p", { class: "error", text: failed.message }));
    card.classList.add("failed");
    return;
  }
  if (classified) answer.append(classLine(classified.data.predictions[0]));
  const id = identified.data;
  answer.append(identityLine(id.results[0], id.threshold), matchList(id.results[0]));
  if (id.faces) drawFaces(boxes, photo, id.faces[0], id.threshold);
  if (model && model.kind === "image") answer.append(gradcamButton(file, card));
}

// The false accept rates whose thresholds the model's export kept; identify and verify
// decide at the one chosen (1e-3 unless another is).
function setUpFar(model) {
  const thresholds = model.thresholds || {};
  const rates = Object.keys(thresholds).sort((a, b) => Number(b) - Number(a));
  $("far").replaceChildren(...rates.map((rate) => element("option",
    { value: rate, text: `${rate} (threshold ${fixed(thresholds[rate])})` })));
  if (rates.includes("1e-3")) $("far").value = "1e-3";
  $("decide").hidden = !rates.length;
}

function farAsked() {
  return $("far").value ? { far: $("far").value } : {};
}

function rateText(far) {
  return far == null ? "" : ` at FAR ${Number(far).toExponential(0)}`;
}

// /verify: two photos, or one photo and an enrolled name; the server's words on a refusal.
async function verify(event) {
  event.preventDefault();
  const form = new FormData();
  for (const input of [$("verify-a"), $("verify-b")]) {
    if (input.files[0]) form.append("images", input.files[0], input.files[0].name);
  }
  const name = $("verify-identity").value.trim();
  if (name) form.append("identity", name);
  for (const [field, value] of Object.entries(farAsked())) form.append(field, value);
  say("verify-result", "asking the model…");
  const got = await api("verify", { method: "POST", form });
  if (!got.ok) {
    say("verify-result", got.message, true);
    return;
  }
  say("verify-result", verdictText(got.data));
}

// "One person: yes (similarity 0.931, threshold 0.712 at FAR 1e-3)", or "Ada: no (...)".
function verdictText(v) {
  const question = v.identity == null ? "One person" : v.identity;
  const sim = v.similarity == null ? "similarity shown to the admin only" : `similarity ${fixed(v.similarity)}`;
  if (v.same == null) return `${question}: no threshold to decide with (${sim})`;
  return `${question}: ${v.same ? "yes" : "no"} (${sim}, threshold ${fixed(v.threshold)}${rateText(v.far)})`;
}

function classLine(predictions) {
  const top = predictions[0];
  const others = predictions.slice(1).map((p) => `${p.label} at ${percent(p.probability)}`).join(", ");
  return element("p", { class: "class" }, "Class ", element("strong", { text: top.label }),
    ` ${percent(top.probability)}`, others ? element("span", { class: "quiet", text: ` (then ${others})` }) : null);
}

function identityLine(result, threshold) {
  const sim = result.similarity == null ? "no gallery entries" : `similarity ${fixed(result.similarity)}`;
  const bar = threshold == null ? "" : `, threshold ${fixed(threshold)}`;
  return element("p", { class: "identity" }, "Identity ",
    element("strong", { class: result.known ? "known" : "unknown", text: result.identity }),
    ` (${sim}${bar})`);
}

function matchList(result) {
  const list = element("ol", { class: "matches" });
  for (const match of result.matches) {
    list.append(element("li", {}, element("span", { text: match.identity }),
      element("span", { class: "quiet", text: ` ${fixed(match.similarity)}` })));
  }
  if (!result.matches.length) list.append(element("li", { class: "quiet", text: "no matches" }));
  return element("div", {}, element("h4", { text: "Top matches" }), list);
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

// The boxes of a face model's faces, in percent of the photo's own pixels (the server's
// coordinates), so they stay on the faces however the photo is scaled.
function drawFaces(layer, photo, faces, threshold) {
  const w = photo.naturalWidth, h = photo.naturalHeight;
  if (!w || !h) return;
  for (const face of faces) {
    const [x0, y0, x1, y1] = face.box;
    const box = element("div", { class: face.known ? "box known" : "box" });
    box.style.left = `${(100 * x0) / w}%`;
    box.style.top = `${(100 * y0) / h}%`;
    box.style.width = `${(100 * (x1 - x0)) / w}%`;
    box.style.height = `${(100 * (y1 - y0)) / h}%`;
    const sim = face.similarity == null ? "" : ` ${fixed(face.similarity, 2)}`;
    box.append(element("span", { class: "label", text: `${face.identity}${sim}` }));
    box.title = threshold == null ? face.identity : `${face.identity}: threshold ${fixed(threshold)}`;
    layer.append(box);
  }
}

function gradcamButton(file, card) {
  const button = element("button", { type: "button", text: "Show GradCAM" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "GradCAM…";
    const got = await api("gradcam", { method: "POST", form: imageForm(file, {}, "image"), blob: true });
    button.disabled = false;
    button.textContent = "Show GradCAM";
    card.querySelector(".gradcam")?.remove();
    if (!got.ok) {
      card.querySelector(".answer").append(element("p", { class: "error gradcam", text: got.message }));
      return;
    }
    const target = decodeURIComponent(got.headers.get("X-Zoo-Target") || "");
    const heat = element("img", { class: "heatmap", alt: `GradCAM of ${file.name}`, src: URL.createObjectURL(got.data) });
    card.querySelector("figure").append(element("div", { class: "gradcam" }, heat,
      element("p", { class: "quiet", text: `GradCAM for ${target || "the predicted class"}` })));
  });
  return button;
}

// ---- try: rows -------------------------------------------------------------------------

function columnsOf(model) {
  if (model.columns) return model.columns.map((c) => ({ name: c.name, kind: c.kind, categories: c.categories }));
  return (model.feature_names || []).map((name) => ({ name, kind: "numeric" }));
}

function setUpRows(model) {
  const columns = columnsOf(model);
  const head = $("rows-table").tHead;
  head.replaceChildren(element("tr", {}, ...columns.map((c) => element("th", { text: c.name }))));
  $("rows-table").tBodies[0].replaceChildren();
  addRow();
}

function addRow() {
  const columns = columnsOf(state.model);
  const row = element("tr");
  for (const column of columns) {
    const input = element("input", { "aria-label": column.name, "data-column": column.name });
    if (column.kind !== "numeric") input.setAttribute("list", listFor(column));
    else input.setAttribute("inputmode", "decimal");
    row.append(element("td", {}, input));
  }
  $("rows-table").tBodies[0].append(row);
}

function listFor(column) {
  const id = `categories-${[...column.name].map((ch) => ch.charCodeAt(0)).join("-")}`;
  if (!document.getElementById(id)) {
    const list = element("datalist", { id });
    for (const category of column.categories || []) list.append(element("option", { value: String(category) }));
    document.body.append(list);
  }
  return id;
}

// The table's rows as records keyed by column: an empty cell is left out (a missing value).
function records() {
  const kinds = Object.fromEntries(columnsOf(state.model).map((c) => [c.name, c.kind]));
  return [...$("rows-table").tBodies[0].rows].map((row) => {
    const record = {};
    for (const input of row.querySelectorAll("input")) {
      const text = input.value.trim();
      if (!text) continue;
      const number = Number(text);
      record[input.dataset.column] = kinds[input.dataset.column] === "numeric" && !Number.isNaN(number) ? number : text;
    }
    return record;
  }).filter((record) => Object.keys(record).length);
}

async function tryRows() {
  const rows = records();
  const results = $("results");
  results.replaceChildren();
  if (!rows.length) {
    results.append(element("p", { class: "error", text: "Fill in at least one cell." }));
    return;
  }
  const asks = [api("identify", { method: "POST", json: { rows, top_k: TOP_K } })];
  if (state.model.classes) asks.push(api("classify", { method: "POST", json: { rows, top_k: 3 } }));
  const [identified, classified] = await Promise.all(asks);
  const failed = [identified, classified].find((got) => got && !got.ok);
  rows.forEach((row, i) => {
    const answer = element("div", { class: "answer" });
    const card = element("article", { class: "result" },
      element("pre", { class: "row", text: JSON.stringify(row, null, 1) }), answer);
    results.append(card);
    if (failed) {
      answer.append(element("p", { class: "error", text: failed.message }));
      return;
    }
    if (classified) answer.append(classLine(classified.data.predictions[i]));
    const result = identified.data.results[i];
    answer.append(identityLine(result, identified.data.threshold), matchList(result));
  });
}

// ---- the gallery -----------------------------------------------------------------------

async function loadIdentities() {
  const query = new URLSearchParams({ page: String(state.page), page_size: String(PAGE_SIZE) });
  if (state.search) query.set("search", state.search);
  const got = await api(`identities?${query}`);
  const body = $("identities").tBodies[0];
  body.replaceChildren();
  if (!got.ok) {
    say("gallery-message", got.message, true);
    $("page-info").textContent = "";
    return;
  }
  if ($("gallery-message").className === "error") say("gallery-message", "");  // now answered
  state.total = got.data.total;
  for (const { name, entries } of got.data.identities) {
    const open = element("button", { type: "button", class: "link", text: name });
    open.addEventListener("click", () => showIdentity(name));
    body.append(element("tr", {}, element("td", {}, open), element("td", { text: String(entries) })));
  }
  if (!got.data.identities.length) {
    body.append(element("tr", {}, element("td", { colspan: "2", class: "quiet", text: state.search ? "no identity holds that text" : "the gallery is empty" })));
  }
  const pages = Math.max(1, Math.ceil(state.total / PAGE_SIZE));
  const noun = state.total === 1 ? "identity" : "identities";
  $("page-info").textContent = `page ${state.page} of ${pages}, ${state.total} ${noun}`;
  $("prev-page").disabled = state.page <= 1;
  $("next-page").disabled = state.page >= pages;
}

async function showIdentity(name) {
  const got = await api(`identities/${encodeURIComponent(name)}`);
  const detail = $("identity-detail");
  if (!got.ok) {
    say("gallery-message", got.message, true);
    detail.hidden = true;
    return;
  }
  state.detail = got.data;
  $("detail-name").textContent = `${got.data.name}: ${got.data.entries} entries`;
  const rows = got.data.enrollments.map((e) => element("tr", {},
    element("td", { text: new Date(e.enrolled_at).toLocaleString() }),
    element("td", { class: "mono", text: e.sha256 || "" })));
  $("detail-entries").replaceChildren(...rows);
  detail.hidden = false;
}

async function deleteIdentity() {
  const detail = state.detail;
  if (!detail) return;
  if (!window.confirm(`Delete ${detail.name} and its ${detail.entries} entries from the gallery?`)) return;
  const got = await api(`identities/${encodeURIComponent(detail.name)}`, { method: "DELETE" });
  say("gallery-message", got.ok
    ? `Deleted ${got.data.name} (${got.data.removed} entries); the gallery holds ${got.data.gallery_size}.`
    : got.message, !got.ok);
  if (got.ok) {
    state.detail = null;
    $("identity-detail").hidden = true;
    await loadIdentities();
  }
}

async function enroll(event) {
  event.preventDefault();
  const name = $("enroll-name").value.trim();
  let got;
  if (state.model && state.model.kind === "tabular") {
    let rows;
    try {
      rows = JSON.parse($("enroll-rows").value || "[]");
    } catch (err) {
      say("enroll-message", `The rows are not JSON: ${err.message}`, true);
      return;
    }
    got = await api("enroll", { method: "POST", json: { identity: name, rows } });
  } else {
    const form = new FormData();
    form.append("identity", name);
    for (const file of $("enroll-files").files) form.append("images", file, file.name);
    got = await api("enroll", { method: "POST", form });
  }
  say("enroll-message", got.ok
    ? `Enrolled ${got.data.added} into ${got.data.identity} (${got.data.entries} entries; the gallery holds ${got.data.gallery_size}).`
    : got.message, !got.ok);
  if (got.ok) {
    $("enroll-files").value = "";
    await loadIdentities();
  }
}

function setUpGallery() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.search = $("search").value.trim();
    state.page = 1;
    loadIdentities();
  });
  $("prev-page").addEventListener("click", () => { state.page -= 1; loadIdentities(); });
  $("next-page").addEventListener("click", () => { state.page += 1; loadIdentities(); });
  $("delete-identity").addEventListener("click", deleteIdentity);
  $("enroll-form").addEventListener("submit", enroll);
  $("migrate-form").addEventListener("submit", startMigration);
  $("verify-form").addEventListener("submit", verify);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpKey();
  setUpImages();
  setUpGallery();
  $("add-row").addEventListener("click", addRow);
  $("send-rows").addEventListener("click", tryRows);
  for (const button of document.querySelectorAll("nav button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  start();
});
