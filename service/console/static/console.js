/* strop console: plain JavaScript over the REST API (docs/api.md), no build step.
 * The API key lives in this tab's sessionStorage and goes out as `Authorization: Bearer <key>`,
 * exactly as any other client sends it. Every value from the server is put into the page as text
 * (textContent), never as markup; highlight.js escapes the code it colours. */
"use strict";
(() => {
  const KEY = "strop.apiKey";
  const body = document.body;
  const PAGE = body.dataset.page;
  const COLLECTION = body.dataset.collection || "";
  const AUTH_REQUIRED = body.dataset.auth === "required";

  // -- small helpers ------------------------------------------------------------------------
  const $ = (sel, root = document) => root.querySelector(sel);
  const enc = encodeURIComponent;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmt = (x, digits = 3) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");
  const fmtInt = (x) => (typeof x === "number" ? x.toLocaleString("en") : "–");
  const fmtMetric = (k, x) => (k === "n" ? fmtInt(x) : fmt(x, 4));  // JSON's 0.0 arrives as the integer 0
  const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");

  function fmtBytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  function fmtDuration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    const m = Math.floor(s / 60);
    return m ? `${m} min ${s % 60} s` : `${s} s`;
  }

  // -- the API and its key ------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  const getKey = () => sessionStorage.getItem(KEY) || "";

  function headers(json) {
    const h = {};
    const key = getKey();
    if (key) h.Authorization = `Bearer ${key}`;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(method, path, payload) {
    if (AUTH_REQUIRED && !getKey()) throw new ApiError(401, "unauthorized", "this server needs an API key");
    const res = await fetch(path, {
      method, headers: headers(payload !== undefined),
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (!res.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(res.status, err.code || "http_" + res.status, err.message || res.statusText);
    }
    return data;
  }

  function alertBox(message, kind = "error") {
    const box = $("#alert");
    box.textContent = message;
    box.className = kind === "error" ? "alert" : "alert info";
    box.hidden = !message;
  }

  function report(e) {
    if (e instanceof ApiError && e.status === 401) {
      alertBox(getKey() ? "The server did not accept this API key: type another one above."
                        : "This server needs an API key: type it above.");
      $("#key-input").focus();
    } else if (e instanceof ApiError) {
      alertBox(`${e.status} ${e.code}: ${e.message}`);
    } else {
      alertBox(String((e && e.message) || e));
    }
  }

  function keyForm() {
    const form = $("#key-form"), input = $("#key-input"), forget = $("#key-forget"), state = $("#key-state");
    const show = () => {
      const set = !!getKey();
      forget.hidden = !set;
      state.textContent = set ? "key in use for this tab" : (AUTH_REQUIRED ? "no key yet" : "");
    };
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (!v) return;
      sessionStorage.setItem(KEY, v);
      input.value = "";
      show();
      alertBox("");
      start();
    });
    forget.addEventListener("click", () => { sessionStorage.removeItem(KEY); show(); start(); });
    show();
  }

  function confirmAction(message) { return window.confirm(message); }

  function button(label, onclick, cls = "quiet", attrs = {}) {
    return el("button", { type: "button", class: cls, onclick, ...attrs }, label);
  }

  // -- collections --------------------------------------------------------------------------
  async function collectionsPage() {
    const tbody = $("#collections tbody");
    const { collections } = await api("GET", "/collections");
    const versions = await Promise.all(collections.map((c) =>
      api("GET", `/collections/${enc(c.name)}/versions`).catch(() => null)));
    tbody.replaceChildren();
    if (!collections.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No collections yet." })));
    }
    collections.forEach((c, i) => {
      const vl = versions[i];
      const active = vl && vl.versions.find((v) => v.id === vl.active);
      const disk = vl ? vl.versions.reduce((s, v) => s + (v.bytes || 0), 0) : null;
      tbody.append(el("tr", { "data-name": c.name },
        el("th", { scope: "row" }, el("a", { href: `/console/collections/${enc(c.name)}` }, c.name)),
        el("td", {}, c.modality), el("td", { class: "num" }, fmtInt(c.count)),
        el("td", {}, c.version.id), el("td", {}, (active && active.index) || "–"),
        el("td", { class: "num" }, fmtBytes(disk)),
        el("td", {}, button("Delete", () => deleteCollection(c.name), "danger",
                            { "aria-label": `Delete collection ${c.name}` }))));
    });
  }

  async function deleteCollection(name) {
    if (!confirmAction(`Delete collection "${name}", its documents and all its versions? This cannot be undone.`)) return;
    try {
      await api("DELETE", `/collections/${enc(name)}`);
      alertBox(`Deleted ${name}.`, "info");
      await collectionsPage();
    } catch (e) { report(e); }
  }

  function collectionsForms() {
    $("#create-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = ev.target;
      try {
        const c = await api("POST", "/collections", {
          name: f.name.value.trim(), modality: f.modality.value, index: { kind: f.index.value } });
        alertBox(`Created ${c.name} (${c.modality}).`, "info");
        f.reset();
        await collectionsPage();
      } catch (e) { report(e); }
    });
  }

  // -- search playground --------------------------------------------------------------------
  const LANGS = { py: "python", js: "javascript", mjs: "javascript", cjs: "javascript", jsx: "javascript",
                  ts: "typescript", tsx: "typescript", go: "go", java: "java", rs: "rust" };
  let info = null;

  function languageOf(meta) {
    const lang = (meta.language || "").toLowerCase();
    if (lang && window.hljs && hljs.getLanguage(lang)) return lang;
    const ext = String(meta.path || "").split(".").pop().toLowerCase();
    return LANGS[ext] || "python";
  }

  function codeBlock(text, meta) {
    const code = el("code", { class: "hljs" });
    const lang = languageOf(meta);
    if (window.hljs && hljs.getLanguage(lang)) {
      code.innerHTML = hljs.highlight(text, { language: lang, ignoreIllegals: true }).value;  // escaped by hljs
      code.classList.add(`language-${lang}`);
    } else {
      code.textContent = text;
    }
    return el("pre", { class: "code", tabindex: 0, "aria-label": "source" }, code);
  }

  function sniffMime(b64) {
    const head = atob(b64.slice(0, 64));
    if (head.startsWith("\x89PNG")) return "image/png";
    if (head.startsWith("\xff\xd8")) return "image/jpeg";
    if (head.startsWith("RIFF") && head.slice(8, 12) === "WEBP") return "image/webp";
    return "image/svg+xml";
  }

  async function thumbnail(id, img) {
    try {
      const doc = await api("GET", `/collections/${enc(COLLECTION)}/documents/${enc(id)}`);
      if (doc.image) img.src = `data:${sniffMime(doc.image)};base64,${doc.image}`;
    } catch (e) { img.alt = `no image: ${e.message}`; }
  }

  function parseFilter(text) {
    const out = {};
    for (const part of text.split(",")) {
      if (!part.trim()) continue;
      const i = part.indexOf("=");
      if (i < 1) throw new Error(`filter "${part.trim()}" is not key=value`);
      const key = part.slice(0, i).trim(), raw = part.slice(i + 1).trim();
      let value = raw;
      try { const v = JSON.parse(raw); if (v === null || typeof v !== "object") value = v; } catch (_) { value = raw; }
      out[key] = value;
    }
    return out;
  }

  function readFileB64(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(String(r.result).split(",", 2)[1] || "");
      r.onerror = () => reject(r.error);
      r.readAsDataURL(file);
    });
  }

  /** The collection as GET /collections lists it: modality, live count, active version. (Not GET
   * /collections/{c}, which also sums the bytes each version holds: work these pages do not show.) */
  async function collectionInfo() {
    const { collections } = await api("GET", "/collections");
    const found = collections.find((c) => c.name === COLLECTION);
    if (!found) throw new ApiError(404, "not_found", `collection "${COLLECTION}" does not exist`);
    return found;
  }

  async function searchPage() {
    info = await collectionInfo();
    $("#summary").textContent =
      `· ${info.modality} · ${fmtInt(info.count)} documents · version ${info.version.id}`;
    const image = info.modality === "image";
    $("#query-field").hidden = image;
    $("#image-field").hidden = !image;
    document.querySelectorAll(".text-only").forEach((n) => { n.hidden = image; });
    $("#docs-images-field").hidden = !image;
  }

  function searchForms() {
    const file = $("#q-image");
    file.addEventListener("change", () => {
      const preview = $("#q-preview");
      if (file.files[0]) { preview.src = URL.createObjectURL(file.files[0]); preview.hidden = false; }
    });
    $("#docs-file").addEventListener("change", async (ev) => {
      const f = ev.target.files[0];
      if (f) $("#docs-jsonl").value = await f.text();
    });
    $("#docs-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      alertBox("");
      try { await addDocuments(); } catch (e) { report(e); }
    });
    $("#search-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      alertBox("");
      try { await runSearch(); } catch (e) { report(e); }
    });
  }

  /** PUT /collections/{c}/documents in batches of BATCH (the server's default per-request limit). */
  const BATCH = 1000;
  async function addDocuments() {
    const docs = [];
    const text = $("#docs-jsonl").value;
    if (text.trim()) {
      text.split(/\r?\n/).forEach((line, i) => {
        if (!line.trim()) return;
        let d;
        try { d = JSON.parse(line); } catch (e) { throw new Error(`documents line ${i + 1}: not JSON (${e.message})`); }
        if (!d || typeof d !== "object" || typeof d.id !== "string") throw new Error(`documents line ${i + 1}: needs an "id" string`);
        docs.push(d);
      });
    }
    for (const f of $("#docs-images").files) {
      const id = f.name.replace(/\.[^.]+$/, "");
      docs.push({ id, text: id, image: await readFileB64(f) });
    }
    if (!docs.length) throw new Error("nothing to add: paste JSONL, load a file or choose images");
    const status = $("#docs-status");
    let done = 0, truncated = 0;
    for (let i = 0; i < docs.length; i += BATCH) {
      const r = await api("PUT", `/collections/${enc(COLLECTION)}/documents`, { documents: docs.slice(i, i + BATCH) });
      done += r.upserted;
      truncated += r.truncated || 0;
      status.textContent = `${fmtInt(done)} of ${fmtInt(docs.length)} documents stored`;
    }
    status.textContent = `${fmtInt(done)} document${done === 1 ? "" : "s"} stored and searchable` +
      (truncated ? ` (${fmtInt(truncated)} embedded from their first tokens only)` : "");
    $("#docs-jsonl").value = "";
    $("#docs-images").value = "";
    await searchPage();
  }

  async function runSearch() {
    if (!info) await searchPage();
    const image = info.modality === "image";
    const req = { top_k: Number($("#top-k").value) || 10 };
    const filter = parseFilter($("#filters").value);
    if (Object.keys(filter).length) req.filter = filter;
    let query = "";
    if (image) {
      const f = $("#q-image").files[0];
      if (!f) throw new Error("choose a query image first");
      req.image = await readFileB64(f);
    } else {
      query = $("#q").value.trim();
      if (!query) throw new Error("type a query first");
      req.query = query;
      if ($("#lexical").value !== "") req.lexical = Number($("#lexical").value);
      if ($("#rerank").checked) req.rerank = true;
    }
    const res = await api("POST", `/collections/${enc(COLLECTION)}/search`, req);
    $("#search-meta").textContent =
      `${res.hits.length} hits from version ${res.version} in ${fmt(res.took_ms, 1)} ms`;
    $("#search-meta").dataset.version = res.version;
    const verdict = $("#verdict");
    verdict.hidden = !image;
    if (image) {
      verdict.replaceChildren(res.match
        ? el("span", {}, el("span", { class: "badge match" }, "match"), ` ${res.match.id} (score ${fmt(res.match.score)} ≥ threshold ${fmt(res.threshold)})`)
        : el("span", {}, el("span", { class: "badge unknown" }, "unknown"),
             ` not in the gallery (best score ${fmt(res.hits[0] && res.hits[0].score)} < threshold ${fmt(res.threshold)})`));
    }
    renderHits(res, query);
  }

  function renderHits(res, query) {
    const list = $("#hits");
    list.replaceChildren();
    res.hits.forEach((h, i) => {
      const meta = h.metadata || {};
      const parts = h.scores ? Object.entries(h.scores).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : "";
      const head = el("div", { class: "hit-head" },
        el("span", { class: "muted" }, `#${i + 1}`), el("span", { class: "id" }, h.id),
        el("span", {}, `score ${fmt(h.score)}`), parts ? el("span", { class: "parts" }, parts) : null);
      const item = el("li", { "data-id": h.id }, head);
      if (info.modality !== "image" && query) {
        head.append(button("Relevant", async (ev) => {
          const b = ev.currentTarget;
          const fb = { query, positive_ids: [h.id] };
          if (res.search_id) fb.search_id = res.search_id;
          try {
            await api("POST", `/collections/${enc(COLLECTION)}/feedback`, fb);
            b.textContent = "Marked relevant";
            b.disabled = true;
          } catch (e) { report(e); }
        }, "quiet feedback", { "aria-label": `Mark ${h.id} as relevant to the query` }));
      }
      const shown = new Set();
      if (info.modality === "code") {
        if (meta.path) {
          item.append(el("div", { class: "loc" }, `${meta.path}:${meta.line ?? ""}`));
          shown.add("path").add("line");
        }
        if (meta.signature) { item.append(el("div", { class: "loc" }, meta.signature)); shown.add("signature"); }
        for (const k of ["end_line", "qualname", "module", "docstring"]) shown.add(k);  // in the id and the source
        if (h.text) item.append(codeBlock(h.text, meta));
      } else if (info.modality === "image") {
        const img = el("img", { class: "thumb", alt: `reference image of ${h.id}` });
        item.append(img);
        thumbnail(h.id, img);
        if (h.text) item.append(el("p", { class: "text" }, h.text));
      } else if (h.text) {
        item.append(el("p", { class: "text" }, h.text.length > 800 ? h.text.slice(0, 800) + "…" : h.text));
      }
      const rest = Object.entries(meta).filter(([k]) => !shown.has(k));
      if (rest.length) item.append(el("div", { class: "meta" }, rest.map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(" · ")));
      list.append(item);
    });
    if (!res.hits.length) list.append(el("li", { class: "muted" }, "No hits."));
  }

  // -- versions -----------------------------------------------------------------------------
  let versionChart = null;

  function versionMetrics(versions) {
    return versions.map((v) => {
      const own = v.metrics && v.metrics.after;
      const child = versions.find((w) => w.parent === v.id && w.metrics && w.metrics.before);
      const m = own || (child && child.metrics.before) || {};
      const gate = v.metrics && v.metrics.gate;
      return { mrr: m["mrr@10"], recall: m["recall@10"], gate };
    });
  }

  function drawVersionChart(versions, values) {
    const box = $("#chart");
    const ids = versions.map((v) => v.id);
    const xs = ids.map((_, i) => i + 1);
    const num = (x) => (typeof x === "number" ? x : null);
    const data = [xs, values.map((m) => num(m.mrr)), values.map((m) => num(m.recall))];
    box.dataset.points = String(values.filter((m) => num(m.mrr) !== null || num(m.recall) !== null).length);
    if (versionChart) versionChart.destroy();
    box.replaceChildren();
    if (!window.uPlot) return;
    const width = Math.max(280, Math.min(box.clientWidth || 800, 900));
    versionChart = new uPlot({
      width, height: 240, legend: { live: false },
      scales: { x: { time: false, range: [0.5, xs.length + 0.5] }, y: { range: [0, 1] } },
      axes: [{ splits: () => xs, values: (u, splits) => splits.map((s) => ids[s - 1] || "") }, {}],
      series: [{ label: "version", value: (u, x) => (x ? ids[x - 1] : "–") },
               { label: "MRR@10", stroke: "#1f5fbf", width: 2, points: { size: 8 } },
               { label: "recall@10", stroke: "#d0731f", width: 2, dash: [6, 4], points: { size: 8 } }],
    }, data, box);
  }

  async function versionsPage() {
    const { versions, active } = await api("GET", `/collections/${enc(COLLECTION)}/versions`);
    const values = versionMetrics(versions);
    const activeIdx = versions.findIndex((v) => v.id === active);
    const tbody = $("#versions tbody");
    tbody.replaceChildren();
    versions.forEach((v, i) => {
      const m = values[i];
      const gate = m.gate ? (m.gate.passed === false || m.gate.judged === false ? "rejected" : "passed") : "–";
      let action = el("span", { class: "badge succeeded" }, "active");
      if (v.id !== active) {
        const label = i < activeIdx ? `Roll back to ${v.id}` : `Activate ${v.id}`;
        action = button(label, () => activate(v.id, active), "quiet");
      }
      tbody.append(el("tr", { class: v.id === active ? "active" : "", "data-id": v.id },
        el("th", { scope: "row" }, v.id, v.id === active ? el("span", { class: "visually-hidden" }, " (active)") : null),
        el("td", {}, fmtTime(v.created_at)), el("td", {}, v.job ? v.job.slice(0, 8) : "base"),
        el("td", { class: "num" }, fmtInt(v.count)), el("td", {}, v.index || "–"),
        el("td", { class: "num" }, fmt(m.mrr)), el("td", { class: "num" }, fmt(m.recall)),
        el("td", {}, gate), el("td", { class: "num" }, fmtBytes(v.bytes)), el("td", {}, action)));
    });
    drawVersionChart(versions, values);
  }

  async function activate(vid, current) {
    if (!confirmAction(`Serve version ${vid} instead of ${current}? Searches keep answering during the swap.`)) return;
    try {
      const r = await api("POST", `/collections/${enc(COLLECTION)}/versions/${enc(vid)}/activate`);
      alertBox(`Now serving ${r.active} (was ${r.previous}).`, "info");
      await versionsPage();
    } catch (e) { report(e); }
  }

  // -- evaluate -----------------------------------------------------------------------------
  function parseJsonl(text, what) {
    const out = [];
    text.split(/\r?\n/).forEach((line, i) => {
      if (!line.trim()) return;
      let row;
      try { row = JSON.parse(line); } catch (e) { throw new Error(`${what} line ${i + 1}: not JSON (${e.message})`); }
      if (!row || typeof row !== "object" || typeof row.query !== "string") {
        throw new Error(`${what} line ${i + 1}: needs a "query" string`);
      }
      out.push(row);
    });
    if (!out.length) throw new Error(`${what}: no pairs`);
    return out;
  }

  function evaluateForms() {
    $("#eval-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      alertBox("");
      try {
        const f = $("#pairs-file").files[0];
        if (!f) throw new Error("choose a JSONL file of pairs");
        const pairs = parseJsonl(await f.text(), f.name).map((p) => ({
          query: p.query, positive_ids: p.positive_ids || (p.positive_id !== undefined ? [p.positive_id] : []) }));
        const req = { pairs, k: Number($("#eval-k").value) || 10, per_query: true };
        if ($("#eval-lexical").value !== "") req.lexical = Number($("#eval-lexical").value);
        if ($("#eval-rerank").checked) req.rerank = true;
        const res = await api("POST", `/collections/${enc(COLLECTION)}/evaluate`, req);
        renderEvaluation(res, req.k);
      } catch (e) { report(e); }
    });
  }

  function renderEvaluation(res, k) {
    $("#eval-result").hidden = false;
    $("#eval-version").textContent = `· version ${res.version} · ${res.n} queries`;
    const dl = $("#metrics");
    dl.replaceChildren();
    for (const [k, v] of Object.entries(res)) {
      if (typeof v === "number" && k !== "n") dl.append(el("dt", {}, k), el("dd", { "data-metric": k }, fmt(v, 4)));
    }
    const worst = (res.queries || []).map((q, i) => ({ ...q, i }))
      .sort((a, b) => a.reciprocal_rank - b.reciprocal_rank || a.i - b.i).slice(0, 20);
    const tbody = $("#worst tbody");
    tbody.replaceChildren();
    for (const q of worst) {
      tbody.append(el("tr", {}, el("td", {}, q.query), el("td", {}, q.positive_ids.join(", ")),
        el("td", { class: "num" }, q.rank === null ? `not in top ${k}` : String(q.rank)),
        el("td", {}, q.top.join(", ") || "–")));
    }
  }

  // -- jobs ---------------------------------------------------------------------------------
  const TERMINAL = ["succeeded", "rejected", "failed", "cancelled"];
  let follower = null;  // the open event stream
  let lossChart = null;
  let losses = [[], []];

  async function jobsPage() {
    const select = $("#j-collection");
    const [{ collections }, jobs] = await Promise.all([api("GET", "/collections"), loadJobs()]);
    const wanted = select.dataset.selected || select.value;
    select.replaceChildren(...collections.map((c) =>
      el("option", { value: c.name, "data-modality": c.modality }, `${c.name} (${c.modality})`)));
    if (wanted) select.value = wanted;
    const job = new URLSearchParams(location.search).get("job") || (jobs[0] && !TERMINAL.includes(jobs[0].state) ? jobs[0].job_id : "");
    if (job && (!follower || follower.id !== job)) follow(job);
  }

  async function loadJobs() {
    const q = COLLECTION ? `?collection=${enc(COLLECTION)}` : "";
    const { jobs } = await api("GET", `/jobs${q}`);
    const tbody = $("#jobs tbody");
    tbody.replaceChildren();
    if (!jobs.length) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No jobs yet." })));
    for (const j of jobs) {
      const p = j.progress || {};
      tbody.append(el("tr", { "data-id": j.job_id },
        el("th", { scope: "row" }, el("a", { href: `?job=${enc(j.job_id)}`, onclick: (ev) => {
          ev.preventDefault();
          history.pushState(null, "", `?${new URLSearchParams({ ...(COLLECTION ? { collection: COLLECTION } : {}), job: j.job_id })}`);
          follow(j.job_id);
        } }, j.job_id.slice(0, 8))),
        el("td", {}, j.collection), el("td", {}, j.kind),
        el("td", {}, el("span", { class: `badge ${j.state}` }, j.state)), el("td", {}, j.stage || "–"),
        el("td", { class: "num" }, p.total_steps ? `${p.step || 0} / ${p.total_steps}` : "–"),
        el("td", {}, j.version || "–"), el("td", {}, fmtTime(j.created_at))));
    }
    return jobs;
  }

  function drawLoss() {
    const box = $("#loss-chart");
    if (!window.uPlot || losses[0].length < 1) return;
    if (!lossChart) {
      box.replaceChildren();
      lossChart = new uPlot({
        width: Math.max(280, Math.min(box.clientWidth || 600, 640)), height: 180, legend: { live: false },
        scales: { x: { time: false } },
        series: [{ label: "step" }, { label: "loss", stroke: "#1f5fbf", width: 2, points: { size: 5 } }],
      }, losses, box);
    } else {
      lossChart.setData(losses);
    }
    box.dataset.points = String(losses[0].length);
  }

  function showJob(rec) {
    const p = rec.progress || {};
    $("#live-id").textContent = rec.job_id;
    const state = $("#live-state");
    state.textContent = rec.state;
    state.className = `badge ${rec.state}`;
    $("#live-stage").textContent = `${rec.collection} · ${rec.kind} · stage ${rec.stage || "–"}`;
    const bar = $("#live-progress");
    if (rec.state === "succeeded") { bar.max = 1; bar.value = 1; }
    else if (p.total_steps) { bar.max = p.total_steps; bar.value = p.step || 0; }
    $("#live-step").textContent = p.total_steps ? `${p.step || 0} / ${p.total_steps}` : "–";
    $("#live-loss").textContent = fmt(p.loss, 4);
    $("#live-eta").textContent = TERMINAL.includes(rec.state) ? "–" : fmtDuration(p.eta_s);
    $("#live-version").textContent = rec.version || "–";
    if (typeof p.step === "number" && typeof p.loss === "number" && losses[0][losses[0].length - 1] !== p.step) {
      losses[0].push(p.step);
      losses[1].push(p.loss);
      drawLoss();
    }
    const m = rec.metrics || {};
    const box = $("#live-metrics");
    box.replaceChildren();
    if (m.before || m.after) {
      const keys = [...new Set([...Object.keys(m.before || {}), ...Object.keys(m.after || {})])]
        .filter((k) => typeof (m.before || m.after)[k] === "number" || typeof (m.after || {})[k] === "number");
      box.append(el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "metric"), el("th", { scope: "col", class: "num" }, "before"),
                        el("th", { scope: "col", class: "num" }, "after"))),
        el("tbody", {}, keys.map((k) => el("tr", {}, el("th", { scope: "row" }, k),
          el("td", { class: "num" }, fmtMetric(k, (m.before || {})[k])), el("td", { class: "num" }, fmtMetric(k, (m.after || {})[k])))))));
      if (m.gate && m.gate.reason) box.append(el("p", { class: "muted" }, `gate: ${m.gate.reason}`));
    }
    const err = $("#live-error");
    err.hidden = !rec.error;
    err.textContent = rec.error || "";
    $("#live-cancel").hidden = TERMINAL.includes(rec.state);
    $("#live").dataset.state = rec.state;
  }

  /** Follow a job over GET /jobs/{id}/events. fetch() rather than EventSource: EventSource cannot send
   * the Authorization header. A dropped stream is reopened until the job ends. */
  function follow(jobId) {
    if (follower) follower.abort.abort();
    const ctl = { id: jobId, abort: new AbortController() };
    follower = ctl;
    losses = [[], []];
    if (lossChart) { lossChart.destroy(); lossChart = null; }
    $("#loss-chart").replaceChildren();
    $("#live").hidden = false;
    $("#live-cancel").onclick = async () => {
      if (!confirmAction(`Cancel job ${jobId.slice(0, 8)}? The active version stays as it is.`)) return;
      try { showJob(await api("DELETE", `/jobs/${enc(jobId)}`)); await loadJobs(); } catch (e) { report(e); }
    };
    const run = async (attempt) => {
      let ended = false;
      try {
        const res = await fetch(`/jobs/${enc(jobId)}/events`, { headers: headers(false), signal: ctl.abort.signal });
        if (!res.ok) {
          let err = {};
          try { err = (await res.json()).error || {}; } catch (_) { /* not JSON */ }
          throw new ApiError(res.status, err.code || "http_" + res.status, err.message || res.statusText);
        }
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let event = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
            }
            if (!data) continue;
            if (event === "job") { showJob(JSON.parse(data)); attempt = 0; }
            else if (event === "end") ended = true;
          }
        }
      } catch (e) {
        if (ctl.abort.signal.aborted) return;
        if (e instanceof ApiError && e.status < 500 && e.status !== 429) { report(e); return; }
      }
      if (ctl.abort.signal.aborted) return;
      if (ended) { loadJobs().catch(report); return; }
      setTimeout(() => run(attempt + 1), Math.min(10000, 1000 * 2 ** attempt));
    };
    run(0);
    loadJobs().catch(report);
  }

  function jobForms() {
    const source = $("#j-source");
    const toggle = () => { $("#j-pairs-field").hidden = source.value !== "pairs"; };
    source.addEventListener("change", toggle);
    toggle();
    $("#j-pairs-file").addEventListener("change", async (ev) => {
      const f = ev.target.files[0];
      if (f) $("#j-pairs").value = await f.text();
    });
    window.addEventListener("popstate", () => {
      const job = new URLSearchParams(location.search).get("job");
      if (job) follow(job);
    });
    $("#job-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      alertBox("");
      try {
        const f = ev.target;
        const collection = f.collection.value;
        if (!collection) throw new Error("create a collection first");
        const spec = { kind: f.kind.value, epochs: Number(f.epochs.value), batch_size: Number(f.batch_size.value),
                       mining: { negatives_per_query: Number(f.negatives_per_query.value) } };
        spec.train = f.source.value === "pairs"
          ? { pairs: parseJsonl(f.pairs.value, "training pairs").map((p) => ({ query: p.query, positive_id: p.positive_id })) }
          : { source: f.source.value };
        if (f.eval.value.trim()) {
          spec.eval = { pairs: parseJsonl(f.eval.value, "evaluation pairs").map((p) => ({
            query: p.query, positive_ids: p.positive_ids || [p.positive_id] })) };
        } else if (Number(f.holdout.value) !== 0.2) {
          spec.eval = { holdout: Number(f.holdout.value) };
        }
        if (f.max_steps.value) spec.max_steps = Number(f.max_steps.value);
        if (f.learning_rate.value) spec.learning_rate = Number(f.learning_rate.value);
        if (f.teacher.value.trim()) spec.teacher = f.teacher.value.trim();
        if (f.min_pairs.value || f.min_delta.value) {
          spec.gate = {};
          if (f.min_pairs.value) spec.gate.min_pairs = Number(f.min_pairs.value);
          if (f.min_delta.value) spec.gate.min_delta = Number(f.min_delta.value);
        }
        const r = await api("POST", `/collections/${enc(collection)}/jobs`, spec);
        alertBox(`Queued job ${r.job_id.slice(0, 8)} on ${collection}.`, "info");
        history.pushState(null, "", `?${new URLSearchParams({ ...(COLLECTION ? { collection: COLLECTION } : {}), job: r.job_id })}`);
        follow(r.job_id);
      } catch (e) { report(e); }
    });
  }

  // -- start --------------------------------------------------------------------------------
  const PAGES = {
    collections: [collectionsPage, collectionsForms],
    search: [searchPage, searchForms],
    versions: [versionsPage, null],
    evaluate: [async () => {
      const c = await collectionInfo();
      $("#eval-summary").textContent = `· ${c.modality} · ${fmtInt(c.count)} documents · version ${c.version.id}`;
    }, evaluateForms],
    jobs: [jobsPage, jobForms],
  };

  async function start() {
    const [load] = PAGES[PAGE] || [];
    if (!load) return;
    delete body.dataset.ready;
    try {
      await load();
      if (!$("#alert").classList.contains("info")) alertBox("");  // an earlier error is resolved
      body.dataset.readyMs = String(Math.round(performance.now()));  // since navigation began
      body.dataset.ready = "true";
    } catch (e) {
      report(e);
      body.dataset.ready = "error";
    }
  }

  keyForm();
  const [, wire] = PAGES[PAGE] || [];
  if (wire) wire();
  start();
})();
