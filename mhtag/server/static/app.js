// mhtag gallery: plain JS over the JSON API. The view's state lives in the URL, so it can be bookmarked.
"use strict";
const PAGE = 40;
const SHOWN_VALUES = 12;  // facet values listed before "show all"
const RESERVED = new Set(["source", "minconf", "like", "disputed", "sort", "page", "text"]);
const $ = (id) => document.getElementById(id);
const state = { filters: {}, source: "any", minconf: 0, like: null, text: null, disputed: false, sort: "auto", start: 0,
  queryImage: null, matched: 0, results: [], attributes: [], texts: [], expanded: new Set(), loading: false,
  reviewSkipped: 0, review: null };

// The API key, where the server asks for one (`--private` reads, every write): kept in this browser only, sent as
// `Authorization: Bearer`, and as a same-site cookie so that the page's own image requests carry it too.
const KEY = "mhtag_key";
function authHeaders() {
  const key = localStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function useKey(key) {
  localStorage.setItem(KEY, key);
  document.cookie = `${KEY}=${key}; path=/; SameSite=Strict`;
}

function askForKey() {
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  const body = await response.json();
  if (response.status === 401) askForKey();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const send = (path, method, body) => api(path, { method, headers: { "Content-Type": "application/json" },
  body: JSON.stringify(body) });

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) node.append(c);
  return node;
}

const shown = (v) => (Array.isArray(v) ? v.join("|") : v);
const percent = (p) => `${(p * 100).toFixed(0)}%`;

function showError(error) {
  $("banner-text").textContent = error.message || String(error);
  $("banner").hidden = false;
}

// ------------------------------------------------------------------ URL state
function readURL() {
  const params = new URLSearchParams(location.search);
  state.filters = {};
  for (const [key, value] of params) {
    if (!RESERVED.has(key)) (state.filters[key] = state.filters[key] || []).push(value);
  }
  state.source = params.get("source") || "any";
  state.minconf = parseFloat(params.get("minconf") || "0") || 0;
  state.like = params.get("like") || null;  // row ids are strings: 64-bit integers do not fit a JS number
  state.text = params.get("text") || null;
  state.disputed = params.get("disputed") === "1";
  state.sort = params.get("sort") || "auto";
  state.start = Math.max(0, (parseInt(params.get("page") || "1", 10) || 1) - 1) * PAGE;
}

function writeURL() {
  const params = new URLSearchParams();
  for (const [name, values] of Object.entries(state.filters)) for (const v of values) params.append(name, v);
  if (state.source !== "any") params.set("source", state.source);
  if (state.minconf > 0) params.set("minconf", String(state.minconf));
  if (state.like !== null) params.set("like", String(state.like));
  if (state.text) params.set("text", state.text);
  if (state.disputed) params.set("disputed", "1");
  if (state.sort !== "auto") params.set("sort", state.sort);
  if (state.start > 0) params.set("page", String(state.start / PAGE + 1));
  const query = params.toString();
  history.replaceState(null, "", query ? `/?${query}` : "/");
}

// A change of what is searched starts again at the first page.
function changed() {
  state.start = 0;
  writeURL();
  runSearch();
}

// ------------------------------------------------------------------ searching
function rowFilter() {
  return { filters: state.filters, source: state.source, min_confidence: state.minconf > 0 ? state.minconf : null,
    disputed: state.disputed };
}

function searchBody(offset) {
  return { ...rowFilter(), like_id: state.queryImage ? null : state.like, text: state.queryImage ? null : state.text,
    limit: PAGE, offset, facets: true, sort: state.sort };
}

async function exportCSV() {
  const response = await fetch("/api/export", { method: "POST", headers: { "Content-Type": "application/json",
    ...authHeaders() },
    body: JSON.stringify({ ...rowFilter(), format: "csv" }) });
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  const blob = await response.blob();
  el("a", { href: URL.createObjectURL(blob), download: "mhtag-export.csv" }).click();
}

async function fetchPage(offset) {
  if (!state.queryImage) return send("/api/search", "POST", searchBody(offset));
  const form = new FormData();
  form.append("image", state.queryImage);
  form.append("query", JSON.stringify(searchBody(offset)));
  return api("/api/search/image", { method: "POST", body: form });
}

async function runSearch(reset = true) {
  if (state.loading) return;
  state.loading = true;
  $("banner").hidden = true;
  const offset = state.start + (reset ? 0 : state.results.length);
  try {
    const result = await fetchPage(offset);
    state.matched = result.matched;
    state.results = reset ? result.results : state.results.concat(result.results);
    if (reset) renderSidebar(result.facets);
    renderGrid(result.results, reset);
    renderQuery();
  } catch (error) {
    showError(error);
  } finally {
    state.loading = false;
  }
}

// ------------------------------------------------------------------ the grid
function answerOf(row, a) {
  const label = row[`${a.name}_label`];
  const pred = row[`${a.name}_pred`];
  const conf = row[`${a.name}_confidence`];
  const known = label !== undefined && label !== null && label !== "" && !(Array.isArray(label) && !label.length);
  return { value: shown(row[a.name]), known, label: shown(label), pred: shown(pred), conf };
}

function describe(row) {
  const lines = state.attributes.map((a) => {
    const x = answerOf(row, a);
    if (x.known) return `${a.name}: ${x.label}` + (x.pred && x.pred !== x.label ? ` (predicted ${x.pred})` : "");
    return `${a.name}: ${x.value || "–"}` + (x.conf != null ? ` (predicted, ${percent(x.conf)})` : "");
  });
  return [row.rel || row.path, ...state.texts.filter((t) => row[t]).map((t) => row[t]), ...lines].join("\n");
}

function labelChips(row) {
  return state.attributes.slice(0, 4).map((a) => {
    const x = answerOf(row, a);
    const chip = el("span", { textContent: x.value || "–" });
    if (x.known && x.pred && x.pred !== x.label) {
      chip.className = "disagree";
      chip.title = `${a.name}: labelled ${x.label}, predicted ${x.pred}`;
    }
    return chip;
  });
}

function card(row) {
  const img = el("img", { src: `/api/images/${row.id}/thumb`, alt: (row.rel || row.path).split("/").pop(),
    loading: "lazy" });
  img.addEventListener("click", () => openDetail(row.id));
  const text = state.texts.map((t) => row[t]).find((t) => t);
  const similar = el("button", { type: "button", className: "secondary", textContent: "find similar" });
  similar.addEventListener("click", () => { state.queryImage = null; state.text = null; state.like = row.id; changed(); });
  const node = el("div", { className: "card", title: describe(row) }, img,
    el("div", { className: "meta" }, el("div", { className: "score", textContent: row.score.toFixed(3) }),
      ...(text ? [el("div", { className: "text", textContent: text })] : []),
      el("div", { className: "labels" }, ...labelChips(row))),
    el("div", { className: "actions" }, similar));
  node.dataset.id = row.id;
  return node;
}

function renderGrid(rows, reset) {
  const grid = $("grid");
  if (reset) grid.replaceChildren();
  for (const row of rows) grid.append(card(row));
  const first = state.matched ? state.start + 1 : 0;
  $("matched").textContent = `${state.matched} matched · ${first}–${state.start + state.results.length} shown`;
  $("more").hidden = state.start + state.results.length >= state.matched;
  const pages = Math.max(1, Math.ceil(state.matched / PAGE));
  $("pages").textContent = String(pages);
  $("page").max = String(pages);
  $("page").value = String(state.start / PAGE + 1);
  $("jump").hidden = pages < 2;
  if (!state.matched) grid.append(el("p", { className: "muted", textContent: "nothing matches: loosen a filter" }));
}

function renderQuery() {
  const box = $("query");
  if (!state.queryImage && state.like === null && !state.text) { box.hidden = true; return; }
  const clear = el("button", { type: "button", className: "secondary", textContent: "clear" });
  clear.addEventListener("click", () => {
    state.queryImage = null; state.like = null; state.text = null; $("text-query").value = ""; changed();
  });
  if (state.text && !state.queryImage) {
    box.replaceChildren(el("span", { textContent: `matching the words “${state.text}”` }), clear);
    box.hidden = false;
    return;
  }
  const src = state.queryImage ? URL.createObjectURL(state.queryImage) : `/api/images/${state.like}/thumb`;
  box.replaceChildren(el("img", { src, alt: "query" }), el("span", { textContent: "similar to this image" }), clear);
  box.hidden = false;
}

// ------------------------------------------------------------------ filters
function facetValues(a, counts, chosen) {
  const all = a.values.map(({ value }) => ({ value, n: counts[value] || 0 }));
  all.sort((x, y) => y.n - x.n || x.value.localeCompare(y.value));
  if (state.expanded.has(a.name)) return { listed: all, hidden: 0 };
  const listed = all.filter((v, i) => chosen.includes(v.value) || (v.n > 0 && i < SHOWN_VALUES));
  return { listed, hidden: all.length - listed.length };
}

function renderSidebar(facets) {
  const nav = $("sidebar");
  nav.replaceChildren();
  for (const a of state.attributes) {
    const chosen = state.filters[a.name] || [];
    const { listed, hidden } = facetValues(a, facets[a.name] || {}, chosen);
    nav.append(el("h3", { textContent: a.name + (a.kind === "multi" ? " (tags)" : "") }));
    for (const { value, n } of listed) {
      const box = el("input", { type: "checkbox", checked: chosen.includes(value) });
      box.dataset.attribute = a.name;
      box.dataset.value = value;
      box.addEventListener("change", () => toggleFilter(a.name, value, box.checked));
      nav.append(el("label", { className: n ? "" : "empty" }, el("span", {}, box, " " + value),
        el("span", { className: "count", textContent: String(n) })));
    }
    if (hidden) {
      const more = el("button", { type: "button", className: "more", textContent: `show all (${hidden} more)` });
      more.addEventListener("click", () => { state.expanded.add(a.name); renderSidebar(facets); });
      nav.append(more);
    }
  }
}

function toggleFilter(name, value, on) {
  const values = new Set(state.filters[name] || []);
  if (on) values.add(value); else values.delete(value);
  if (values.size) state.filters[name] = [...values]; else delete state.filters[name];
  changed();
}

async function loadAttributes() {
  const body = await api("/api/attributes");
  state.attributes = body.attributes;
  state.texts = body.texts || [];
}

// ------------------------------------------------------------------ answers, detail and label editing
function answersTable(attributes) {
  const fmt = (pairs) => pairs.map(([l, p]) => `${l} ${percent(p)}`).join(", ") || "–";
  const rows = Object.entries(attributes).map(([name, a]) => {
    const fused = Array.isArray(a.fused.label) ? a.fused.label.join("|") || "(none)" : a.fused.label;
    const tr = el("tr", { className: a.agree === false ? "disagree" : "" }, el("td", { textContent: name }),
      el("td", { textContent: fmt(a.head) }), el("td", { textContent: fmt(a.neighbours) }),
      el("td", { textContent: `${fused} (${percent(a.fused.confidence)})` }));
    if (a.agree === false) tr.title = "head and neighbours disagree";
    return tr;
  });
  const head = el("tr", {}, ...["attribute", "head (top 3)", "neighbours", "fused"].map((t) => el("th", { textContent: t })));
  return el("table", { className: "answers" }, head, ...rows);
}

// One editor per attribute: a select for a single label, a checkbox per tag for a tag group. `value()` is what
// the person chose (null: no label), `added` whether it is a value the index never had.
function singleEditor(a, current) {
  const select = el("select");
  select.setAttribute("aria-label", a.name);
  select.dataset.attribute = a.name;
  const option = (v, text = v) => el("option", { value: v, textContent: text, selected: v === (current || "") });
  select.append(option("", "(no label)"), ...a.values.map(({ value }) => option(value)), option("\u0000", "add value…"));
  if (current && !a.values.some((v) => v.value === current)) select.append(option(current));
  const editor = { node: select, added: false, value: () => select.value || null };
  select.addEventListener("change", () => {
    if (select.value !== "\u0000") return;
    const value = (prompt(`a new ${a.name} value`) || "").trim();
    if (value) { select.insertBefore(option(value), select.lastChild); select.value = value; editor.added = true; }
    else select.value = current || "";
  });
  return editor;
}

function tagsEditor(a, current) {
  const have = new Set(current || []);
  const boxes = a.values.map(({ value }) => {
    const box = el("input", { type: "checkbox", checked: have.has(value), value });
    box.dataset.attribute = a.name;
    return box;
  });
  const node = el("div", { className: "tags" }, ...boxes.map((b) => el("label", {}, b, " " + b.value)));
  return { node, added: false, value: () => { const on = boxes.filter((b) => b.checked).map((b) => b.value);
    return on.length ? on : null; } };
}

const same = (x, y) => JSON.stringify(x ?? null) === JSON.stringify(y ?? null);

function labelEditor(row) {
  const editors = {};
  const rows = state.attributes.map((a) => {
    const current = row.labels[a.name];
    editors[a.name] = a.kind === "multi" ? tagsEditor(a, current) : singleEditor(a, current);
    const answer = row.attributes[a.name];
    const fused = answer ? `${shown(answer.fused.label) || "(none)"} ${percent(answer.fused.confidence)}` : "–";
    return el("tr", {}, el("th", { textContent: a.name }), el("td", {}, editors[a.name].node),
      el("td", { className: "muted", textContent: `model: ${fused}` }),
      el("td", {}, ...(current === undefined ? [] : [confirmButton(row, a.name)])));
  });
  const save = el("button", { type: "button", id: "save-labels", textContent: "save labels" });
  const status = el("span", { className: "muted", id: "save-status" });
  save.addEventListener("click", async () => {
    const labels = {};
    let addValues = false;
    for (const [name, editor] of Object.entries(editors)) {
      const value = editor.value();
      if (!same(value, row.labels[name] ?? null)) { labels[name] = value; addValues ||= editor.added; }
    }
    if (!Object.keys(labels).length) { status.textContent = "nothing changed"; return; }
    await saveLabels(row.id, labels, addValues, status);
  });
  return el("div", {}, el("h3", { textContent: "labels" }), el("table", { className: "labels" }, ...rows),
    el("div", { className: "review-actions" }, save, addAttributeForm(row), status));
}

// "This label is right": recorded, so the row leaves the review queue and a later labels CSV leaves it too.
function confirmButton(row, name) {
  const button = el("button", { type: "button", className: "secondary small", textContent: "✓",
    title: "the label is right: keep it" });
  button.dataset.confirm = name;
  button.addEventListener("click", () => saveLabels(row.id, {}, false, $("save-status"), [name]));
  return button;
}

function addAttributeForm(row) {
  const open = el("button", { type: "button", className: "secondary", textContent: "add attribute" });
  open.addEventListener("click", async () => {
    const name = (prompt("attribute name") || "").trim();
    const value = name && (prompt(`${name} of this image`) || "").trim();
    if (name && value) await saveLabels(row.id, { [name]: value }, true, $("save-status"));
  });
  return open;
}

async function saveLabels(id, labels, addValues, status, confirm = []) {
  status.textContent = "saving…";
  try {
    await send(`/api/rows/${id}`, "PATCH", { labels, add_values: addValues, confirm, source: "gallery" });
    await catalogueChanged();
    await openDetail(id);
    $("save-status").textContent = "saved";
  } catch (error) { status.textContent = error.message; status.className = "disagree"; }
}

// After a label changes: new values in the filters, the grid and the "retrain" notice follow.
async function catalogueChanged() {
  await loadAttributes();
  await runSearch();
  await checkHealth();
}

function describedAs(phrases) {
  if (!phrases.length) return [];
  return [el("h3", { textContent: "described as" }),
    el("p", { className: "described" }, ...phrases.map(([w, s]) => el("span", { textContent: w,
      title: `alignment ${s.toFixed(2)}` })))];
}

function neighbours(ids) {
  const box = el("div", { className: "neighbours" });
  for (const id of ids) {
    const img = el("img", { src: `/api/images/${id}/thumb`, alt: `neighbour ${id}`, title: "open this neighbour" });
    img.addEventListener("click", () => openDetail(id));
    box.append(img);
  }
  return box;
}

function historyList(changes) {
  const latest = {};
  for (const c of changes) latest[c.attribute] = c.id;
  const items = changes.slice().reverse().map((c) => {
    const li = el("li", { textContent: `${c.at.slice(0, 19).replace("T", " ")} · ${c.attribute}: ` +
      `${shown(c.old) ?? "–"} → ${shown(c.new) ?? "–"} (${c.source}${c.note ? ", " + c.note : ""}) ` });
    if (latest[c.attribute] === c.id && c.note !== "kept") {
      const undo = el("button", { type: "button", className: "secondary small", textContent: "undo" });
      undo.dataset.change = c.id;
      undo.addEventListener("click", async () => {
        try {
          await send(`/api/changes/${c.id}/undo`, "POST", {});
          await catalogueChanged();
          await openDetail(c.row);
        } catch (error) { li.append(el("span", { className: "disagree", textContent: error.message })); }
      });
      li.append(undo);
    }
    return li;
  });
  return items.length ? el("ul", { className: "history" }, ...items) : el("p", { className: "muted",
    textContent: "no label changes yet" });
}

async function openDetail(id) {
  try {
    const row = await api(`/api/rows/${id}`);
    const disagreements = Object.values(row.attributes).filter((a) => a.agree === false).length;
    const texts = Object.entries(row.texts || {}).filter(([, t]) => t).map(([, t]) => el("p", { textContent: t }));
    $("detail-body").replaceChildren(
      el("img", { className: "full", src: `/api/images/${id}`, alt: row.rel || row.path }),
      el("p", { textContent: `${row.rel || row.path} · ${row.width}×${row.height} · ${row.split || ""}` }),
      ...texts,
      labelEditor(row),
      el("h3", { textContent: "what the model says" }),
      el("p", { className: disagreements ? "disagree" : "", textContent: disagreements
        ? `⚠ head and neighbours disagree on ${disagreements} attribute(s): worth a human look` : "head and neighbours agree" }),
      answersTable(row.attributes),
      ...describedAs(row.described || []),
      el("h3", { textContent: "nearest labelled images" }), neighbours(row.neighbour_ids || []),
      el("h3", { textContent: "history" }), historyList(row.history || []));
    $("detail").dataset.id = row.id;
    openPanel("detail");
  } catch (error) { showError(error); }
}

// ------------------------------------------------------------------ the review queue
async function nextReview() {
  const body = $("review-body");
  try {
    const queue = await api(`/api/review?limit=1&offset=${state.reviewSkipped}`);
    $("review-left").textContent = `${queue.total} left`;
    state.review = queue.items[0] || null;
    if (!state.review) {
      body.replaceChildren(el("p", { textContent: queue.total ? "the rest were skipped" : "nothing to review: " +
        "the model and the neighbours agree with every label" }));
      return;
    }
    body.replaceChildren(reviewItem(state.review));
  } catch (error) { body.replaceChildren(el("p", { className: "disagree", textContent: error.message })); }
}

function reviewItem(item) {
  const fmt = (pairs) => pairs.map(([l, p]) => `${l} ${percent(p)}`).join(", ") || "–";
  const button = (text, key, action) => {
    const b = el("button", { type: "button", textContent: `${text} (${key})` });
    b.dataset.key = key;
    b.addEventListener("click", action);
    return b;
  };
  return el("div", { className: "review-item" },
    el("img", { className: "full", src: `/api/images/${item.id}`, alt: item.rel }),
    el("p", { textContent: item.rel }),
    el("p", { className: "verdict" }, `${item.attribute}: labelled `, el("b", { textContent: item.given }),
      ", suggested ", el("strong", { textContent: item.suggested }),
      el("span", { className: "muted", textContent: ` (doubt ${percent(item.score)})` })),
    el("div", { className: "review-actions" },
      button("accept suggestion", "a", () => answerReview(true)),
      button("keep label", "k", () => answerReview(false)),
      button("skip", "s", () => { state.reviewSkipped += 1; nextReview(); })),
    el("p", { className: "muted", textContent: `head: ${fmt(item.head)} · neighbours: ${fmt(item.neighbours)}` }),
    neighbours(item.neighbour_ids));
}

async function answerReview(accept) {
  const item = state.review;
  if (!item) return;
  state.review = null;  // a second key press before the answer lands does nothing
  try {
    await send("/api/review", "POST", { row: item.id, attribute: item.attribute, accept });
    await nextReview();
    checkHealth();
  } catch (error) {
    $("review-body").prepend(el("p", { className: "disagree", textContent: error.message }));
    state.review = item;
  }
}

// Panels open below the header (its buttons stay in reach), one at a time.
function openPanel(id) {
  const header = document.querySelector("header");
  document.documentElement.style.setProperty("--header", `${header.offsetHeight}px`);
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== id;
}

function openReview() {
  state.reviewSkipped = 0;
  openPanel("review");
  nextReview();
}

function panelKeys(event) {
  if (event.key === "Escape") {
    for (const panel of document.querySelectorAll(".panel:not([hidden])")) closePanel(panel.id);
    return;
  }
  if ($("review").hidden || event.target.matches("input, select, textarea")) return;
  const button = document.querySelector(`#review-body button[data-key="${event.key}"]`);
  if (button) { event.preventDefault(); button.click(); }
}

function closePanel(id) {
  $(id).hidden = true;
  if (id === "review") runSearch();
}

// ------------------------------------------------------------------ retraining and the notice
async function checkHealth() {
  try {
    const health = await api("/api/health");
    const notice = $("notice");
    notice.hidden = !health.changes_since_model;
    notice.textContent = `${health.changes_since_model} label change(s) since the model was trained: ` +
      "retrain to learn from them.";
    $("retrain").disabled = !health.model;
    $("text-form").hidden = !health.text_search;
  } catch (error) { showError(error); }
}

async function retrain() {
  const button = $("retrain");
  button.disabled = true;
  try {
    let status = await send("/api/retrain", "POST", {});
    while (status.state === "running") {
      button.textContent = `retraining: ${status.phase || "starting"}…`;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      status = await api("/api/retrain");
    }
    if (status.state === "failed") throw new Error(`retraining failed: ${status.error}`);
    const r = status.report;
    await catalogueChanged();
    const notice = $("notice");
    notice.textContent = `retrained on ${r.labelled_rows} labelled rows in ${r.train_seconds.toFixed(1)} s; ` +
      `${r.rows_refreshed} rows have new predictions.`;
    notice.hidden = false;
  } catch (error) { showError(error); } finally {
    button.textContent = "retrain";
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ tagging an image
async function tagImage(file) {
  const form = new FormData();
  form.append("image", file);
  try {
    const result = await api("/api/predict", { method: "POST", body: form });
    const p = result.predictions[0];
    $("tag-body").replaceChildren(el("img", { className: "full", src: URL.createObjectURL(file), alt: file.name }),
      answersTable(p.attributes), el("h3", { textContent: "nearest labelled images" }), neighbours(p.neighbour_ids));
  } catch (error) { $("tag-body").replaceChildren(el("p", { className: "disagree", textContent: error.message })); }
}

function queryFrom(file) {
  if (!file) return;
  state.queryImage = file;
  state.like = null;
  state.text = null;
  changed();
}

// ------------------------------------------------------------------ wiring
function wireSearch() {
  for (const radio of document.querySelectorAll("#source input")) {
    radio.checked = radio.value === state.source;
    radio.addEventListener("change", () => { state.source = radio.value; changed(); });
  }
  const disputed = $("disputed");
  disputed.checked = state.disputed;
  disputed.addEventListener("change", () => { state.disputed = disputed.checked; changed(); });
  const slider = $("minconf");
  slider.value = state.minconf;
  $("minconf-value").textContent = state.minconf;
  slider.addEventListener("input", () => { $("minconf-value").textContent = slider.value; });
  slider.addEventListener("change", () => { state.minconf = parseFloat(slider.value); changed(); });
  const text = $("text-query");
  text.value = state.text || "";
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.text = text.value.trim() || null;
    state.queryImage = null;
    state.like = null;
    changed();
  });
  const sort = $("sort");
  sort.value = state.sort;
  sort.addEventListener("change", () => { state.sort = sort.value; changed(); });
  $("query-file").addEventListener("change", (e) => queryFrom(e.target.files[0]));
  const drop = $("query-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("drag"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("drag"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("drag"); queryFrom(e.dataTransfer.files[0]); });
}

function wirePaging() {
  $("more").addEventListener("click", () => runSearch(false));
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !$("more").hidden) runSearch(false);
  }).observe($("sentinel"));
  $("page").addEventListener("change", () => {
    const pages = Math.max(1, Math.ceil(state.matched / PAGE));
    const page = Math.min(pages, Math.max(1, parseInt($("page").value, 10) || 1));
    state.start = (page - 1) * PAGE;
    writeURL();
    runSearch();
    window.scrollTo(0, 0);
  });
}

function wirePanels() {
  $("tag-open").addEventListener("click", () => openPanel("tag"));
  $("tag-file").addEventListener("change", (e) => e.target.files[0] && tagImage(e.target.files[0]));
  $("review-open").addEventListener("click", openReview);
  $("retrain").addEventListener("click", retrain);
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => closePanel(button.dataset.close));
  }
  document.addEventListener("keydown", panelKeys);
  $("banner-reset").addEventListener("click", () => { location.href = "/"; });
  $("download").addEventListener("click", () => {
    const blob = new Blob([JSON.stringify({ matched: state.matched, results: state.results }, null, 2)],
      { type: "application/json" });
    el("a", { href: URL.createObjectURL(blob), download: "mhtag-results.json" }).click();
  });
  $("export").addEventListener("click", () => exportCSV().catch(showError));
  $("key-form").addEventListener("submit", () => { useKey($("key-input").value.trim()); location.reload(); });
  if (window.matchMedia("(max-width: 700px)").matches) $("filters").open = false;
}

async function start() {
  readURL();
  wireSearch();
  wirePaging();
  wirePanels();
  try {
    await loadAttributes();
  } catch (error) { showError(error); return; }
  checkHealth();
  await runSearch();
}

start();
