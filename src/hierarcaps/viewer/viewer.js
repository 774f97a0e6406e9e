/* hierarcaps viewer: the page of every site `hierarcaps view` writes.
 *
 * data/meta.js calls HC.meta(meta): the totals and, per row, a reason code and a source code, so filters run over
 * every row without its text. data/chunk-NNNNN.js calls HC.chunk(k, rows): meta.chunk_rows rows each, injected as
 * <script> tags when a page needs them (browsers refuse fetch() of file:// URLs). A text search loads every chunk once.
 * Review mode (a site of a review kit, meta.review set): each item's positive hierarchy and negative tiers are marked
 * valid / invalid; the marks stay in localStorage under the sheet's sha256 and download as the labels file that
 * `hierarcaps review score` reads (docs/review.md).
 */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const TIERS = 4;
  const state = { meta: null, matches: [], page: 0, size: 50, status: "", reason: -1, source: -1, query: "",
                  token: 0, shown: false, marks: {}, storageKey: null };
  const chunks = new Map();
  const waiting = new Map();
  let searchText = null;

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const fmt = (n) => Number(n).toLocaleString("en-US");
  const num = (v) => (v == null ? "-" : Number(v).toFixed(3));

  function loadChunk(k) {
    if (chunks.has(k)) return Promise.resolve(chunks.get(k));
    if (waiting.has(k)) return waiting.get(k).promise;
    const entry = {};
    entry.promise = new Promise((resolve, reject) => { entry.resolve = resolve; entry.reject = reject; });
    waiting.set(k, entry);
    const script = document.createElement("script");
    script.src = "data/chunk-" + String(k).padStart(5, "0") + ".js";
    script.onerror = () => { waiting.delete(k); entry.reject(new Error("cannot load " + script.src)); };
    document.head.appendChild(script);
    return entry.promise;
  }

  async function loadAll(token, what) {
    const total = state.meta.chunks;
    for (let k = 0; k < total; k += 8) {
      const batch = [];
      for (let j = k; j < Math.min(total, k + 8); j++) batch.push(loadChunk(j));
      await Promise.all(batch);
      if (token !== state.token) return false;
      if (total > 8) $("status-line").textContent = what + ": loaded " + fmt(Math.min(total, k + 8)) + " of " + fmt(total) + " chunks";
    }
    return true;
  }

  const rowAt = (i) => chunks.get(Math.floor(i / state.meta.chunk_rows))[i % state.meta.chunk_rows];

  window.HC = {
    meta(meta) { state.meta = meta; start(); },
    chunk(k, rows) {
      chunks.set(k, rows);
      const entry = waiting.get(k);
      if (entry) { waiting.delete(k); entry.resolve(rows); }
    },
  };

  // --- set-up ---

  function options(select, entries) {
    select.innerHTML = entries.map(([value, label]) => `<option value="${esc(value)}">${esc(label)}</option>`).join("");
  }

  function start() {
    const m = state.meta;
    const what = { run: "run", release: "release", csv: "HierarCaps CSV", review: "review kit" }[m.kind] || m.kind;
    document.title = m.name + " - hierarcaps viewer";
    $("title").textContent = `${what}: ${m.name}` + (m.stage ? ` (stage ${m.stage})` : "");
    const c = m.counts;
    $("summary").textContent = m.review
      ? `${fmt(m.rows)} items of the sheet (blind: no source, no image). Source: ${m.source}`
      : `${fmt(m.rows)} rows: ${fmt(c.accepted)} accepted, ${fmt(c.rejected)} rejected · images: ${fmt(c.images_local)} local, `
        + `${fmt(c.images_remote)} by URL · ${m.source}`;
    const reason = m.facets.reason, source = m.facets.source;
    if (m.review) options($("f-status"), [["", "all items"], ["todo", "not fully marked"], ["done", "fully marked"]]);
    else options($("f-status"), [["", "all"], ["accepted", `accepted (${fmt(c.accepted)})`], ["rejected", `rejected (${fmt(c.rejected)})`]]);
    options($("f-reason"), [["-1", "all reasons"], ...reason.values.slice(1).map((v, k) => [String(k + 1), `${v} (${fmt(reason.counts[k + 1])})`])]);
    options($("f-source"), [["-1", "all sources"], ...source.values.map((v, k) => [String(k), `${v || "(none)"} (${fmt(source.counts[k])})`])]);
    $("reason-box").hidden = reason.values.length < 2;
    $("source-box").hidden = source.values.length < 2;
    const refilter = () => { state.page = 0; update(); };
    $("f-status").onchange = (e) => { state.status = e.target.value; refilter(); };
    $("f-reason").onchange = (e) => { state.reason = Number(e.target.value); refilter(); };
    $("f-source").onchange = (e) => { state.source = Number(e.target.value); refilter(); };
    let timer = null;
    $("f-search").oninput = (e) => { clearTimeout(timer); timer = setTimeout(() => { state.query = e.target.value.trim().toLowerCase(); refilter(); }, 200); };
    $("page-size").onchange = (e) => { state.size = Number(e.target.value); refilter(); };
    $("prev").onclick = () => { if (state.page > 0) { state.page--; update(); } };
    $("next").onclick = () => { state.page++; update(); };
    if (m.review) startReview();
    update();
  }

  // --- filtering and paging ---

  function rowText(row) {
    return [row.id, row.c, row.r, row.d, row.s, row.st, ...(row.p || []), ...(row.n || [])].filter((v) => v != null).join("\n").toLowerCase();
  }

  function computeMatches() {
    const m = state.meta, R = m.facets.reason.codes, S = m.facets.source.codes;
    const { status, reason, source, query } = state;
    if (query && !searchText) searchText = Array.from({ length: m.rows }, (_, i) => rowText(rowAt(i)));
    const out = [];
    for (let i = 0; i < m.rows; i++) {
      if (status === "accepted" && R[i] !== 0) continue;
      if (status === "rejected" && R[i] === 0) continue;
      if (status === "todo" || status === "done") { if (complete(rowAt(i).id) !== (status === "done")) continue; }
      if (reason >= 0 && R[i] !== reason) continue;
      if (source >= 0 && S[i] !== source) continue;
      if (query && !searchText[i].includes(query)) continue;
      out.push(i);
    }
    state.matches = out;
  }

  async function update() {
    const token = ++state.token;
    const needAll = state.query || state.status === "todo" || state.status === "done";
    try {
      if (needAll && !(await loadAll(token, state.query ? "searching" : "filtering"))) return;
      computeMatches();
      await renderPage(token);
    } catch (err) {
      $("status-line").textContent = "error: " + err.message + " (is the site complete? rerun hierarcaps view)";
    }
  }

  async function renderPage(token) {
    const m = state.meta, total = state.matches.length, size = state.size;
    const pages = Math.max(1, Math.ceil(total / size));
    state.page = Math.min(state.page, pages - 1);
    const rows = state.matches.slice(state.page * size, (state.page + 1) * size);
    await Promise.all([...new Set(rows.map((i) => Math.floor(i / m.chunk_rows)))].map(loadChunk));
    if (token !== state.token) return;
    $("rows").innerHTML = rows.map((i) => rowHtml(i, rowAt(i))).join("");
    const first = total ? state.page * size + 1 : 0;
    $("page-info").textContent = `page ${state.page + 1} of ${fmt(pages)}`;
    $("status-line").textContent = total
      ? `rows ${fmt(first)}-${fmt(first + rows.length - 1)} of ${fmt(total)} matching` + (total < m.rows ? ` (${fmt(m.rows)} in all)` : "")
      : "no row matches these filters";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    document.body.dataset.matches = String(total);
    document.body.dataset.ready = "1";
    if (!state.shown && rows.length) { state.shown = true; performance.mark("hc-first-rows"); }
  }

  // --- one row ---

  function imageHtml(i, row) {
    if (state.meta.review) return "";
    const linkable = /^(https?|file):/i.test(row.u || "");  // never a javascript: URL from the data
    const url = row.u ? (linkable ? `<a href="${esc(row.u)}" title="image URL">${esc(row.u)}</a>` : `<span>${esc(row.u)}</span>`) : "";
    const remote = state.meta.remote_images && /^https?:\/\//i.test(row.u || "");
    const src = row.img || (remote ? row.u : null);
    const img = src ? `<img src="${esc(src)}" loading="lazy" alt="image of row ${i + 1}">` : `<div class="noimg">no image</div>`;
    return `<div class="image">${img}${url}</div>`;
  }

  function markButtons(id, verdict) {
    const value = (state.marks[id] || {}).v?.[verdict];
    const button = (v, label, title) => `<button type="button" class="mark" data-verdict="${verdict}" data-value="${v}"`
      + ` aria-pressed="${value === (v === 1)}" title="${title}">${label}</button>`;
    return `<span class="marks">${button(1, "&check;", "valid")}${button(0, "&cross;", "invalid")}</span>`;
  }

  function ladderHtml(row) {
    if (!row.p) return `<p class="caption">${esc(row.c || "(no text)")}</p>`;
    const review = !!state.meta.review, x = row.x || {};
    const cell = (side, t, text) => {
      const failing = x.side === side && x.tier === t + 1 ? " failing" : "";
      const marks = review && side === "negative" && row.n ? markButtons(row.id, t + 1) : "";
      return `<td class="${side}${failing}" data-tier="${t + 1}">${marks}${text == null ? "&mdash;" : esc(text)}</td>`;
    };
    const head = `<tr><th class="tier">tier</th><th>positive${review ? markButtons(row.id, 0) : ""}</th><th>negative</th></tr>`;
    const body = [];
    const count = Math.max(TIERS, row.p.length, row.n ? row.n.length : 0);
    for (let t = 0; t < count; t++) {
      body.push(`<tr><td class="tier">${t + 1}</td>${cell("positive", t, row.p[t])}${cell("negative", t, row.n ? row.n[t] : null)}</tr>`);
    }
    return `<table class="ladder"><thead>${head}</thead><tbody>${body.join("")}</tbody></table>`;
  }

  function nliHtml(row) {
    if (row.x) {
      const x = row.x, p = x.probs || {};
      const probs = ["entailment", "neutral", "contradiction"].map((k) => `${k} ${num(p[k])}`).join(" · ");
      const also = x.also_failed && x.also_failed.length ? `; also failed: ${esc(x.also_failed.join(", "))}` : "";
      return `<div class="nli">NLI <b>${esc(x.rule || "")}</b>, ${esc(x.side || "")} tier ${esc(x.tier ?? "")}: `
        + `&ldquo;${esc(x.premise || "")}&rdquo; &rArr; &ldquo;${esc(x.hypothesis || "")}&rdquo;: <span class="probs">${probs}</span>`
        + (x.needs ? ` (needs ${esc(x.needs)} &ge; ${num(x.threshold)})` : "") + also + "</div>";
    }
    if (row.me != null || row.mc != null) {
      return `<div class="nli">NLI: every pair passed; weakest entailment <span class="probs">${num(row.me)}</span>, `
        + `weakest contradiction <span class="probs">${num(row.mc)}</span></div>`;
    }
    return "";
  }

  function rowHtml(i, row) {
    const review = !!state.meta.review;
    const cls = review ? "review" : row.r ? "rejected" : "accepted";
    const badge = review ? (complete(row.id) ? `<span class="done-tag">marked</span>` : "")
      : `<span class="badge ${cls}">${esc(row.r || "accepted")}</span>`;
    const bits = [`<span>#${fmt(i + 1)}</span>`, row.id != null ? `<code>${esc(row.id)}</code>` : "", badge,
      row.st ? `<span>stage ${esc(row.st)}</span>` : "", row.s ? `<span>source ${esc(row.s)}</span>` : ""];
    const tools = review ? `<div class="review-tools"><button type="button" class="rest">rest valid</button>`
      + `<input class="note" placeholder="note (optional, not scored)" value="${esc((state.marks[row.id] || {}).note || "")}"></div>` : "";
    return `<article class="row ${cls}" data-index="${i}" data-id="${esc(row.id ?? "")}">${imageHtml(i, row)}<div class="body">`
      + `<div class="head">${bits.join("")}</div>${ladderHtml(row)}${nliHtml(row)}`
      + (row.d ? `<div class="detail">${esc(row.d)}</div>` : "") + (row.raw ? `<div class="raw">${esc(row.raw)}</div>` : "")
      + `${tools}</div></article>`;
  }

  // --- review mode ---

  function complete(id) {
    const v = (state.marks[id] || {}).v;
    return !!v && v.length === TIERS + 1 && v.every((x) => x === true || x === false);
  }

  function save() {
    try { localStorage.setItem(state.storageKey, JSON.stringify(state.marks)); } catch (err) { $("review-note").textContent = "marks not saved: " + err.message; }
    const done = Object.keys(state.marks).filter(complete).length;
    $("review-progress").textContent = `${fmt(done)} of ${fmt(state.meta.rows)} items fully marked`;
  }

  function startReview() {
    state.storageKey = "hierarcaps-labels:" + state.meta.review.sheet_sha256;
    try { state.marks = JSON.parse(localStorage.getItem(state.storageKey) || "{}") || {}; } catch (err) { state.marks = {}; }
    $("review-bar").hidden = false;
    save();
    const entry = (id) => (state.marks[id] = state.marks[id] || { v: Array(TIERS + 1).fill(null), note: "" });
    const redraw = (article) => {
      const i = Number(article.dataset.index);
      article.outerHTML = rowHtml(i, rowAt(i));
    };
    $("rows").addEventListener("click", (e) => {
      const article = e.target.closest(".row");
      if (!article) return;
      const id = article.dataset.id;
      const mark = e.target.closest("button.mark");
      if (mark) {
        const v = entry(id).v, k = Number(mark.dataset.verdict), value = mark.dataset.value === "1";
        v[k] = v[k] === value ? null : value;
      } else if (e.target.closest("button.rest")) {
        entry(id).v = entry(id).v.map((x) => (x === null ? true : x));
      } else return;
      save();
      redraw(article);
    });
    $("rows").addEventListener("change", (e) => {
      if (!e.target.classList.contains("note")) return;
      entry(e.target.closest(".row").dataset.id).note = e.target.value;
      save();
    });
    $("download").onclick = download;
    $("clear-marks").onclick = () => { state.marks = {}; save(); update(); };
  }

  async function download() {
    if (!(await loadAll(state.token, "collecting"))) return;
    const items = [];
    let left = 0;
    for (let i = 0; i < state.meta.rows; i++) {
      const id = rowAt(i).id;
      if (!complete(id)) { left++; continue; }
      const { v, note } = state.marks[id];
      items.push({ id, positive_valid: v[0], negative_valid: v.slice(1), note: note || "" });
    }
    const blob = new Blob([JSON.stringify(items, null, 2) + "\n"], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = state.meta.review.labels_file;
    document.body.appendChild(link);
    link.click();
    setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
    $("review-note").textContent = left
      ? `${fmt(left)} item(s) not fully marked were left out of the file: hierarcaps review score needs every item`
      : "";
  }
})();
