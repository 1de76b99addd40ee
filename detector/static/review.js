// The review workbench page: loads the queue from /api/queue, shows one listing at a time, and
// posts labels to /api/labels. Every value from the scan is written with textContent (never as
// markup); the server's Content-Security-Policy allows this file and nothing inline.
"use strict";

const state = { items: [], pos: 0, total: 0, labelled: 0, csrf: "" };
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function say(text, bad) {
  const status = $("status");
  status.textContent = text;
  status.className = bad ? "bad" : "good";
}

function filters() {
  const params = new URLSearchParams();
  for (const key of ["brand", "state", "section"]) if ($(key).value) params.set(key, $(key).value);
  return params;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function fillSelect(select, values) {
  if (select.options.length > 1) return;
  for (const value of values) select.appendChild(new Option(value, value));
}

async function load() {
  const params = filters();
  const items = [];
  let offset = 0, total = 0, labelled = 0;
  do {
    params.set("offset", offset);
    params.set("limit", 1000);
    const page = await api(`/api/queue?${params}`);
    fillSelect($("brand"), page.brands);
    fillSelect($("state"), page.states);
    items.push(...page.items);
    total = page.total;
    labelled = page.labelled;
    offset += page.items.length;
    if (!page.items.length) break;
  } while (offset < total);
  state.items = $("unlabelled").checked ? items.filter((item) => !item.label) : items;
  state.total = total;
  state.labelled = labelled;
  const first = state.items.findIndex((item) => !item.label);
  state.pos = first >= 0 ? first : 0;
  render();
}

function money(value, currency) {
  return value === null || value === undefined ? "—" : `${Number(value).toLocaleString()} ${currency || ""}`.trim();
}

function row(table, name, value) {
  const tr = el("tr");
  tr.appendChild(el("th", name));
  tr.appendChild(el("td", value === null || value === undefined || value === "" ? "—" : value));
  table.appendChild(tr);
}

function showImage(img, caption, url, present, text) {
  img.hidden = !present;
  if (present) img.src = url; else img.removeAttribute("src");
  caption.textContent = present ? text : `${text}: no preview`;
}

function render() {
  const progress = $("progress");
  progress.max = Math.max(1, state.total);
  progress.value = state.labelled;
  $("progress-text").textContent = `${state.labelled} of ${state.total} labelled`;
  const item = state.items[state.pos];
  $("item").hidden = !item;
  $("empty").hidden = !!item;
  if (!item) return;
  $("position").textContent = `${state.pos + 1} / ${state.items.length}`;
  $("heading").textContent = `${item.listing_id}${item.brand ? " — " + item.brand + " " + (item.product_id || "") : ""}`;
  const verdict = $("verdict");
  verdict.textContent = item.section === "sample" ? `sample ${item.review_id} · ${item.verdict}` : `${item.verdict} · risk ${item.score}`;
  verdict.className = `badge ${item.verdict}`;
  const current = $("current-label");
  current.textContent = item.label ? `${item.label.label} (${item.label.reviewer})` : "not labelled";
  current.className = `badge label ${item.label ? item.label.label : "none"}`;

  const id = encodeURIComponent(item.listing_id);
  showImage($("photo"), $("photo-caption"), `/img/${id}/photo`, item.has_photo, "listing photo");
  showImage($("reference"), $("reference-caption"), `/img/${id}/reference`, item.has_reference,
            item.reference_image ? `catalogue: ${item.reference_image}` : "catalogue reference");
  const frame = $("photo-frame");
  for (const box of frame.querySelectorAll(".mark-box, .region")) box.remove();
  if (item.region && item.has_photo) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "region");
    svg.setAttribute("viewBox", "0 0 1 1");
    svg.setAttribute("preserveAspectRatio", "none");
    const outline = document.createElementNS(SVG, "polygon");
    outline.setAttribute("points", item.region.map(([x, y]) => `${x},${y}`).join(" "));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `where ${item.product_id} lies in the photo`;
    outline.appendChild(title);
    svg.appendChild(outline);
    frame.appendChild(svg);
  }
  for (const mark of item.marks || []) {
    const [x0, y0, x1, y1] = mark.box;
    const box = el("span", null, "mark-box");
    box.title = `${mark.brand} mark ${mark.mark}`;
    Object.assign(box.style, { left: `${100 * x0}%`, top: `${100 * y0}%`, width: `${100 * (x1 - x0)}%`, height: `${100 * (y1 - y0)}%` });
    frame.appendChild(box);
  }

  const facts = $("facts");
  facts.replaceChildren();
  row(facts, "seller", `${item.seller_id || "—"}${item.seller_authorized ? " (authorised)" : ""}`);
  row(facts, "price", money(item.price, item.currency));
  row(facts, "catalogue price", money(item.catalogue_price, item.catalogue_currency));
  row(facts, "title", item.title);
  row(facts, "visual state", item.visual_state);
  row(facts, "similarity", item.similarity === null ? null : `${item.similarity} (threshold ${item.threshold})`);
  row(facts, "matching keypoints", item.inliers);
  if (item.stratum) row(facts, "sample stratum", item.stratum);
  const findings = $("findings");
  findings.replaceChildren();
  if ((item.reasons || []).length) findings.appendChild(el("li", item.reasons[0], "visual"));
  for (const finding of item.findings || []) {
    const li = el("li", null, finding.weight > 0 ? "counted" : "remark");
    li.appendChild(el("code", finding.code));
    li.appendChild(document.createTextNode(" " + finding.text));
    findings.appendChild(li);
  }
  if (!(item.findings || []).length) findings.appendChild(el("li", "no findings", "remark"));
}

function move(step) {
  if (!state.items.length) return;
  state.pos = Math.min(state.items.length - 1, Math.max(0, state.pos + step));
  render();
}

function nextUnlabelled() {
  const n = state.items.length;
  for (let i = 1; i <= n; i++) {
    const j = (state.pos + i) % n;
    if (!state.items[j].label) { state.pos = j; render(); return; }
  }
  say("every item here is labelled");
}

async function label(value) {
  const item = state.items[state.pos];
  if (!item) return;
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) {
    say("type your name in Reviewer first", true);
    $("reviewer").focus();
    return;
  }
  try {
    const saved = await api("/api/labels", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
      body: JSON.stringify({ listing_id: item.listing_id, label: value, reviewer }),
    });
    if (!item.label) state.labelled += 1;
    item.label = saved;
    say(`saved: ${item.listing_id} ${value}`);
    if (state.pos < state.items.length - 1) state.pos += 1;
    render();
  } catch (error) {
    say(`not saved: ${error.message}`, true);
  }
}

function typing(event) {
  const tag = event.target.tagName;
  return tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA";
}

const KEYS = {
  c: () => label("counterfeit"), 1: () => label("counterfeit"),
  g: () => label("genuine"), 2: () => label("genuine"),
  u: () => label("unsure"), 3: () => label("unsure"),
  j: () => move(1), ArrowRight: () => move(1),
  k: () => move(-1), ArrowLeft: () => move(-1),
  n: () => nextUnlabelled(),
};

document.addEventListener("DOMContentLoaded", () => {
  state.csrf = document.querySelector('meta[name="csrf-token"]').content;
  $("reviewer").value = localStorage.getItem("reviewer") || "";
  $("reviewer").addEventListener("change", () => localStorage.setItem("reviewer", $("reviewer").value.trim()));
  $("reviewer").addEventListener("keydown", (event) => { if (event.key === "Enter") event.target.blur(); });
  for (const key of ["brand", "state", "section", "unlabelled"]) {
    $(key).addEventListener("change", (event) => {
      event.target.blur();  // the keys label again at once
      load().catch((error) => say(error.message, true));
    });
  }
  $("prev").addEventListener("click", () => move(-1));
  $("next").addEventListener("click", () => move(1));
  for (const value of ["counterfeit", "genuine", "unsure"]) $(value).addEventListener("click", () => label(value));
  document.addEventListener("keydown", (event) => {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const action = KEYS[event.key];
    if (action) { event.preventDefault(); action(); }
  });
  load().catch((error) => say(`could not load the queue: ${error.message}`, true));
});
