// mhtag gallery: plain JS over the JSON API. The view's state lives in the URL, so it can be bookmarked.
"use strict";
const PAGE = 40;
const RESERVED = new Set(["source", "minconf", "like", "disputed"]);
const $ = (id) => document.getElementById(id);
const state = { filters: {}, source: "any", minconf: 0, like: null, disputed: false, queryImage: null, offset: 0,
  matched: 0, results: [], attributes: [], loading: false };

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

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) node.append(c);
  return node;
}

function showError(error) {
  $("banner").textContent = error.message || String(error);
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
  state.like = params.get("like") || null;
  state.disputed = params.get("disputed") === "1";  // row ids are strings: 64-bit integers do not fit a JS number
}

function writeURL() {
  const params = new URLSearchParams();
  for (const [name, values] of Object.entries(state.filters)) for (const v of values) params.append(name, v);
  if (state.source !== "any") params.set("source", state.source);
  if (state.minconf > 0) params.set("minconf", String(state.minconf));
  if (state.like !== null) params.set("like", String(state.like));
  if (state.disputed) params.set("disputed", "1");
  const query = params.toString();
  history.replaceState(null, "", query ? `/?${query}` : "/");
}

// ------------------------------------------------------------------ searching
function rowFilter() {
  return { filters: state.filters, source: state.source, min_confidence: state.minconf > 0 ? state.minconf : null,
    disputed: state.disputed };
}

function searchBody(offset) {
  return { ...rowFilter(), like_id: state.queryImage ? null : state.like, limit: PAGE, offset, facets: true };
}

async function exportCSV() {
  const response = await fetch("/api/export", { method: "POST", headers: { "Content-Type": "application/json",
    ...authHeaders() },
    body: JSON.stringify({ ...rowFilter(), format: "csv" }) });
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  const blob = await response.blob();
  el("a", { href: URL.createObjectURL(blob), download: "mhtag-export.csv" }).click();
}

async function runSearch(reset = true) {
  if (state.loading) return;
  state.loading = true;
  $("banner").hidden = true;
  const offset = reset ? 0 : state.results.length;
  try {
    let result;
    if (state.queryImage) {
      const form = new FormData();
      form.append("image", state.queryImage);
      form.append("query", JSON.stringify(searchBody(offset)));
      result = await api("/api/search/image", { method: "POST", body: form });
    } else {
      result = await api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(searchBody(offset)) });
    }
    state.matched = result.matched;
    state.results = reset ? result.results : state.results.concat(result.results);
    if (reset) renderSidebar(result.facets);
    renderGrid(reset ? result.results : result.results, reset);
    renderQuery();
  } catch (error) {
    showError(error);
  } finally {
    state.loading = false;
  }
}

function mainLabels(row) {
  return state.attributes.slice(0, 4).map((a) => {
    const v = row[a.name];
    return Array.isArray(v) ? v.join("|") : v;
  }).filter((v) => v);
}

function card(row) {
  const img = el("img", { src: `/api/images/${row.id}/thumb`, alt: row.path.split("/").pop(), loading: "lazy" });
  img.addEventListener("click", () => openDetail(row.id));
  const labels = el("div", { className: "labels" }, ...mainLabels(row).map((t) => el("span", { textContent: t })));
  const similar = el("button", { type: "button", className: "secondary", textContent: "find similar" });
  similar.addEventListener("click", () => { state.queryImage = null; state.like = row.id; writeURL(); runSearch(); });
  const node = el("div", { className: "card" }, img,
    el("div", { className: "meta" }, el("div", { className: "score", textContent: row.score.toFixed(3) }), labels),
    el("div", { className: "actions" }, similar));
  node.dataset.id = row.id;
  return node;
}

function renderGrid(rows, reset) {
  const grid = $("grid");
  if (reset) grid.replaceChildren();
  for (const row of rows) grid.append(card(row));
  $("matched").textContent = `${state.matched} matched · ${state.results.length} shown`;
  $("more").hidden = state.results.length >= state.matched;
}

function renderQuery() {
  const box = $("query");
  if (!state.queryImage && state.like === null) { box.hidden = true; return; }
  const clear = el("button", { type: "button", className: "secondary", textContent: "clear" });
  clear.addEventListener("click", () => { state.queryImage = null; state.like = null; writeURL(); runSearch(); });
  const src = state.queryImage ? URL.createObjectURL(state.queryImage) : `/api/images/${state.like}/thumb`;
  box.replaceChildren(el("img", { src, alt: "query" }), el("span", { textContent: "similar to this image" }), clear);
  box.hidden = false;
}

function renderSidebar(facets) {
  const nav = $("sidebar");
  nav.replaceChildren();
  for (const a of state.attributes) {
    const chosen = state.filters[a.name] || [];
    const counts = facets[a.name] || {};
    nav.append(el("h3", { textContent: a.name + (a.kind === "multi" ? " (tags)" : "") }));
    for (const { value } of a.values) {
      const n = counts[value] || 0;
      const box = el("input", { type: "checkbox", checked: chosen.includes(value) });
      box.dataset.attribute = a.name;
      box.dataset.value = value;
      box.addEventListener("change", () => toggleFilter(a.name, value, box.checked));
      nav.append(el("label", { className: n ? "" : "empty" }, el("span", {}, box, " " + value),
        el("span", { className: "count", textContent: String(n) })));
    }
  }
}

function toggleFilter(name, value, on) {
  const values = new Set(state.filters[name] || []);
  if (on) values.add(value); else values.delete(value);
  if (values.size) state.filters[name] = [...values]; else delete state.filters[name];
  writeURL();
  runSearch();
}

// ------------------------------------------------------------------ detail and tagging
function answersTable(attributes) {
  const fmt = (pairs) => pairs.map(([l, p]) => `${l} ${(p * 100).toFixed(0)}%`).join(", ") || "–";
  const rows = Object.entries(attributes).map(([name, a]) => {
    const fused = Array.isArray(a.fused.label) ? a.fused.label.join("|") || "(none)" : a.fused.label;
    const tr = el("tr", { className: a.agree === false ? "disagree" : "" }, el("td", { textContent: name }),
      el("td", { textContent: fmt(a.head) }), el("td", { textContent: fmt(a.neighbours) }),
      el("td", { textContent: `${fused} (${(a.fused.confidence * 100).toFixed(0)}%)` }));
    if (a.agree === false) tr.title = "head and neighbours disagree";
    return tr;
  });
  const head = el("tr", {}, ...["attribute", "head (top 3)", "neighbours", "fused"].map((t) => el("th", { textContent: t })));
  return el("table", { className: "answers" }, head, ...rows);
}

async function openDetail(id) {
  try {
    const row = await api(`/api/rows/${id}`);
    const known = Object.entries(row.labels).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join("|") : v}`);
    const disagreements = Object.values(row.attributes).filter((a) => a.agree === false).length;
    $("detail-body").replaceChildren(
      el("img", { className: "full", src: `/api/images/${id}`, alt: row.path }),
      el("p", { textContent: `${row.path} · ${row.width}×${row.height} · ${row.split || ""}` }),
      el("p", { textContent: known.length ? `known labels: ${known.join(", ")}` : "no known labels" }),
      el("p", { className: disagreements ? "disagree" : "", textContent: disagreements
        ? `⚠ head and neighbours disagree on ${disagreements} attribute(s): worth a human look` : "head and neighbours agree" }),
      answersTable(row.attributes));
    $("detail").hidden = false;
  } catch (error) { showError(error); }
}

async function tagImage(file) {
  const form = new FormData();
  form.append("image", file);
  try {
    const result = await api("/api/predict", { method: "POST", body: form });
    const p = result.predictions[0];
    $("tag-body").replaceChildren(el("img", { className: "full", src: URL.createObjectURL(file), alt: file.name }),
      answersTable(p.attributes));
  } catch (error) { $("tag-body").replaceChildren(el("p", { className: "disagree", textContent: error.message })); }
}

function queryFrom(file) {
  if (!file) return;
  state.queryImage = file;
  state.like = null;
  writeURL();
  runSearch();
}

// ------------------------------------------------------------------ wiring
function wire() {
  for (const radio of document.querySelectorAll("#source input")) {
    radio.checked = radio.value === state.source;
    radio.addEventListener("change", () => { state.source = radio.value; writeURL(); runSearch(); });
  }
  const disputed = $("disputed");
  disputed.checked = state.disputed;
  disputed.addEventListener("change", () => { state.disputed = disputed.checked; writeURL(); runSearch(); });
  const slider = $("minconf");
  slider.value = state.minconf;
  $("minconf-value").textContent = state.minconf;
  slider.addEventListener("input", () => { $("minconf-value").textContent = slider.value; });
  slider.addEventListener("change", () => { state.minconf = parseFloat(slider.value); writeURL(); runSearch(); });
  $("query-file").addEventListener("change", (e) => queryFrom(e.target.files[0]));
  const drop = $("query-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("drag"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("drag"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("drag"); queryFrom(e.dataTransfer.files[0]); });
  $("more").addEventListener("click", () => runSearch(false));
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !$("more").hidden) runSearch(false);
  }).observe($("sentinel"));
  $("tag-open").addEventListener("click", () => { $("tag").hidden = false; });
  $("tag-file").addEventListener("change", (e) => e.target.files[0] && tagImage(e.target.files[0]));
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => { $(button.dataset.close).hidden = true; });
  }
  $("download").addEventListener("click", () => {
    const blob = new Blob([JSON.stringify({ matched: state.matched, results: state.results }, null, 2)],
      { type: "application/json" });
    el("a", { href: URL.createObjectURL(blob), download: "mhtag-results.json" }).click();
  });
  $("export").addEventListener("click", () => exportCSV().catch(showError));
  $("key-form").addEventListener("submit", () => { useKey($("key-input").value.trim()); location.reload(); });
}

async function start() {
  readURL();
  wire();
  try {
    state.attributes = (await api("/api/attributes")).attributes;
  } catch (error) { showError(error); return; }
  await runSearch();
}

start();
