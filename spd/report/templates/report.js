// The component table (sorted, filtered and paged in memory; only one page is in the DOM) and the component
// panel (its data inflated on demand from a gzip+base64 chunk). All data text goes in through textContent.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const META = JSON.parse($("report-meta").textContent);
  const TABLE = JSON.parse($("table-data").textContent);
  const COLS = TABLE.columns;
  const ROWS = TABLE.rows;
  const COL = Object.fromEntries(COLS.map((c, i) => [c.id, i]));
  const ROW_OF_KEY = new Map(ROWS.map((r, i) => [r[0], i]));
  const state = { sortCol: COL.density, sortDir: -1, filters: {}, search: "", page: 0, pageSize: 100, view: [] };
  const chunkCache = new Map();  // chunk number -> Promise of its details, least recently used first
  const CHUNKS_KEPT = 16;
  let tokens = null;
  let selectedRow = -1;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function fmt(v, col) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (col && col.id === "firings") return v.toLocaleString();
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
    return String(Number(v.toPrecision(3)));
  }

  // ---- filters ------------------------------------------------------------------------------------------
  function numericTest(expr) {
    const s = expr.trim().toLowerCase();
    if (!s) return null;
    if (s === "none" || s === "-" || s === "missing") return (v) => v === null || v === undefined;
    const range = s.match(/^(-?[\d.e+-]+)\s*\.\.\s*(-?[\d.e+-]+)$/);
    if (range) {
      const lo = parseFloat(range[1]), hi = parseFloat(range[2]);
      return (v) => v !== null && v !== undefined && v >= lo && v <= hi;
    }
    const m = s.match(/^(>=|<=|>|<|=)?\s*(-?[\d.]+(?:e[+-]?\d+)?)$/);
    if (!m) return () => false;
    const x = parseFloat(m[2]);
    const op = m[1] || ">=";
    return (v) => {
      if (v === null || v === undefined) return false;
      return op === ">" ? v > x : op === "<" ? v < x : op === ">=" ? v >= x : op === "<=" ? v <= x : v === x;
    };
  }

  function textTest(expr) {
    const s = expr.trim().toLowerCase();
    if (!s) return null;
    if (s.startsWith("=")) return (v) => v !== null && v !== undefined && String(v).toLowerCase() === s.slice(1);
    if (s === "none" || s === "-" || s === "missing") return (v) => v === null || v === undefined || v === "";
    return (v) => v !== null && v !== undefined && String(v).toLowerCase().includes(s);
  }

  function computeView() {
    const tests = [];
    for (const [id, expr] of Object.entries(state.filters)) {
      const col = COLS[COL[id]];
      const t = col.type === "num" ? numericTest(expr) : textTest(expr);
      if (t) tests.push([COL[id], t]);
    }
    const q = state.search.trim().toLowerCase();
    const view = [];
    for (let i = 0; i < ROWS.length; i++) {
      const r = ROWS[i];
      if (q && ![r[COL.key], r[COL.label], r[COL.tokens]].some((v) => (v || "").toLowerCase().includes(q))) continue;
      if (tests.every(([c, t]) => t(r[c]))) view.push(i);
    }
    const c = state.sortCol, d = state.sortDir;
    view.sort((a, b) => {
      const x = ROWS[a][c], y = ROWS[b][c];
      const xm = x === null || x === undefined, ym = y === null || y === undefined;
      if (xm || ym) return xm === ym ? a - b : xm ? 1 : -1; // missing values last, whatever the direction
      if (x < y) return -d;
      if (x > y) return d;
      return a - b;
    });
    state.view = view;
    const pages = Math.max(1, Math.ceil(view.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
  }

  // ---- table ----------------------------------------------------------------------------------------------
  function buildHeader() {
    const head = $("header-row"), filters = $("filter-row");
    COLS.forEach((col, i) => {
      const th = el("th", { class: col.type === "num" ? "num" : "", "data-col": col.id, text: col.title });
      th.addEventListener("click", () => {
        state.sortDir = state.sortCol === i ? -state.sortDir : col.type === "num" ? -1 : 1;
        state.sortCol = i;
        refresh();
      });
      head.append(th);
      const input = el("input", {
        type: "text", "data-col": col.id, placeholder: col.type === "num" ? ">=, <, a..b" : "contains",
        "aria-label": "filter " + col.title,
      });
      input.addEventListener("input", debounce(() => { state.filters[col.id] = input.value; state.page = 0; refresh(); }));
      filters.append(el("th", {}, input));
    });
  }

  function renderTable() {
    const body = $("table-body");
    const start = state.page * state.pageSize;
    const slice = state.view.slice(start, start + state.pageSize);
    const frag = document.createDocumentFragment();
    for (const i of slice) {
      const r = ROWS[i];
      const tr = el("tr", { "data-row": String(i), "data-key": r[COL.key] });
      if (i === selectedRow) tr.classList.add("selected");
      COLS.forEach((col, c) => {
        const td = el("td", { class: col.type === "num" ? "num" : "", text: fmt(r[c], col) });
        if (col.id === "label") td.classList.add("label-cell");
        tr.append(td);
      });
      tr.tabIndex = 0;
      tr.addEventListener("click", () => openComponent(i, true));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openComponent(i, true); });
      frag.append(tr);
    }
    body.replaceChildren(frag);
    const pages = Math.max(1, Math.ceil(state.view.length / state.pageSize));
    $("page-info").textContent = `page ${state.page + 1} of ${pages}`;
    $("prev-page").disabled = state.page === 0;
    $("next-page").disabled = state.page >= pages - 1;
    $("match-count").textContent = `${state.view.length.toLocaleString()} of ${ROWS.length.toLocaleString()} components`;
    document.querySelectorAll("#header-row th").forEach((th, c) => {
      th.classList.toggle("sorted-asc", c === state.sortCol && state.sortDir === 1);
      th.classList.toggle("sorted-desc", c === state.sortCol && state.sortDir === -1);
    });
  }

  function refresh() { computeView(); renderTable(); }

  function debounce(fn, ms = 150) {
    let t = null;
    return () => { clearTimeout(t); t = setTimeout(fn, ms); };
  }

  // ---- data chunks ------------------------------------------------------------------------------------------
  // The panels' data live beside the page in components/ (render.py): each file is one statement,
  // SPD_REPORT_CHUNK(build, name, "<gzip+base64 JSON>"), loaded by a script element (fetch() does not work from
  // file://, a script tag does). A file of another build than this page is refused, never mixed in.
  const arrived = new Map();
  window.SPD_REPORT_CHUNK = (build, name, data) => { arrived.set(name, { build, data }); };

  function loadSidecar(name) {
    const file = `${META.components}/${name}.js`;
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = file;
      script.onload = () => {  // fires right after the script ran
        script.remove();
        const got = arrived.get(name);
        arrived.delete(name);
        if (!got) reject(new Error(`${file} holds no data for this page: rebuild the report`));
        else if (got.build !== META.build) {
          reject(new Error(`${file} is from another build of the report than this page: reload the page`));
        } else resolve(got.data);
      };
      script.onerror = () => { script.remove(); reject(new Error(`missing file ${file}: rebuild the report`)); };
      document.head.append(script);
    });
  }

  async function inflate(text) {
    if (typeof DecompressionStream === "undefined") throw new Error("this browser has no DecompressionStream");
    const bin = atob(text);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }

  // Inflated chunks kept: the most recently used CHUNKS_KEPT (memory stays bounded however many are opened).
  // A failed load is forgotten, so opening the component again tries again.
  function chunk(n) {
    let p = chunkCache.get(n);
    if (p !== undefined) chunkCache.delete(n);
    else {
      p = loadSidecar("chunk-" + n).then(inflate);
      p.catch(() => { if (chunkCache.get(n) === p) chunkCache.delete(n); });
    }
    chunkCache.set(n, p);
    while (chunkCache.size > CHUNKS_KEPT) chunkCache.delete(chunkCache.keys().next().value);
    return p;
  }

  function tokenTable() {
    if (tokens === null) {
      const parts = Array.from({ length: META.token_files }, (_, k) => loadSidecar("tokens-" + k).then(inflate));
      const p = Promise.all(parts).then((ps) => Object.assign({}, ...ps));
      p.catch(() => { if (tokens === p) tokens = null; });
      tokens = p;
    }
    return tokens;
  }

  // -> Promise<[detail, toks]>: the component of table row `row`, and the token id -> text table.
  async function detailOf(row) {
    const [details, toks] = await Promise.all([chunk(Math.floor(row / META.chunk_size)), tokenTable()]);
    return [details[row % META.chunk_size], toks];
  }

  // ---- component panel ----------------------------------------------------------------------------------------
  async function openComponent(row, updateHash) {
    selectedRow = row;
    document.querySelectorAll("#table-body tr.selected").forEach((tr) => tr.classList.remove("selected"));
    const tr = document.querySelector(`#table-body tr[data-row="${row}"]`);
    if (tr) tr.classList.add("selected");
    const panel = $("panel");
    panel.hidden = false;
    panel.replaceChildren(el("p", { class: "muted", text: "loading…" }));
    let detail, toks;
    try {
      [detail, toks] = await detailOf(row);
    } catch (e) {
      panel.replaceChildren(el("p", { class: "failed", text: "cannot read this component's data: " + e.message }));
      return;
    }
    if (selectedRow !== row) return;
    panel.replaceChildren(...renderPanel(detail, toks));
    panel.dataset.key = detail.key;
    if (updateHash) history.replaceState(null, "", "#component=" + encodeURIComponent(detail.key));
    panel.scrollIntoView({ block: "nearest" });
  }

  function tokenText(toks, id) {
    const t = toks[String(id)];
    return t === undefined ? `#${id}` : t;
  }

  // A token standing alone (in a list, not in running text): every space shown as a middle dot, so " 2" and "2"
  // differ at a glance; hover gives the token id.
  function lone(toks, id) {
    return tokenText(toks, id).replace(/ /g, "·") || "∅";
  }

  function loneToken(toks, id) {
    return el("code", { class: "lone", title: `token ${id}`, text: lone(toks, id) });
  }

  function renderPanel(d, toks) {
    const out = [];
    const facts = [`module ${d.module}`];
    if (d.density !== undefined) facts.push(`density ${fmt(d.density)}`, `${fmt(d.firings, { id: "firings" })} firings`);
    if (d.mean_ci_firing !== undefined && d.mean_ci_firing !== null) facts.push(`mean CI when firing ${fmt(d.mean_ci_firing)}`);
    out.push(el("h2", {}, el("code", { text: d.key })), el("div", { class: "muted", text: facts.join(" · ") }));

    const cols = el("div", { class: "cols" });
    cols.append(labelBlock(d), scoresBlock(d));
    out.push(cols);
    out.push(examplesBlock(d, toks));
    const cols2 = el("div", { class: "cols" });
    cols2.append(tokenStatsBlock(d, toks), logitEffectsBlock(d, toks), attributionsBlock(d, toks), cofiringBlock(d));
    out.push(cols2);
    return out;
  }

  function labelBlock(d) {
    const box = el("div", { class: "label-block" }, el("h3", { text: "Label" }));
    if (!META.sections.autointerp) {
      box.append(el("p", { class: "muted", text: "autointerp not run" }));
      return box;
    }
    const l = d.label;
    if (!l) box.append(el("p", { class: "muted", text: "not labelled" }));
    else if (l.label === null) box.append(el("p", { class: "failed", text: "labelling failed: " + (l.error || "unknown error") }));
    else {
      box.append(el("div", { class: "label-text" }, l.label, l.confidence ? el("span", { class: "badge", text: l.confidence + " confidence" }) : null));
      if (l.reasoning) box.append(el("p", { class: "reasoning", text: l.reasoning }));
      box.append(el("div", { class: "muted", text: `${l.provider} / ${l.model}` }));
    }
    return box;
  }

  function scoresBlock(d) {
    const box = el("div", {}, el("h3", { text: "Scores" }));
    const table = el("table", { class: "scores" });
    table.append(el("tr", {}, el("th", { text: "scorer" }), el("th", { text: "score" }), el("th", { text: "trials" }),
      el("th", { text: "interval" }), el("th", { text: "chance" })));
    for (const [name, info] of Object.entries(META.scorers)) {
      const tr = el("tr", { "data-scorer": name }, el("td", { text: name }));
      const s = (d.scores || {})[name];
      if (!info.available) tr.append(el("td", { class: "muted", colspan: "4", text: "not run" }));
      else if (!s) tr.append(el("td", { class: "muted", colspan: "4", text: "not scored" }));
      else if (s.score === null) tr.append(el("td", { class: "failed", colspan: "4", text: "failed: " + (s.error || "unknown error") }));
      else {
        const interval = s.ci_low !== undefined ? `${fmt(s.ci_low)} – ${fmt(s.ci_high)}` : "–";
        const chance = s.chance !== undefined ? s.chance : info.chance;
        const trials = s.n_trials_ok !== undefined ? `${s.n_trials_ok} of ${s.n_trials}` : fmt(s.n_trials);
        tr.append(el("td", { class: "num", text: fmt(s.score) }), el("td", { class: "num", text: trials }),
          el("td", { class: "num", text: interval }), el("td", { class: "num", text: fmt(chance) }));
      }
      table.append(tr);
    }
    box.append(table);
    return box;
  }

  function exampleLine(ex, scale, label, toks, mode) {
    const [ids, act, ci, center] = ex;
    const line = el("div", { class: "example" }, el("span", { class: "rank", text: label }));
    const thr = META.ci_threshold === null ? null : 100 * META.ci_threshold;
    ids.forEach((id, i) => {
      const span = el("span", { class: "tok", text: tokenText(toks, id) });
      let alpha, color;
      if (mode === "ci") { alpha = ci[i] / 100; color = "34,160,90"; }
      else { alpha = Math.abs(act[i]) / 100; color = act[i] >= 0 ? "249,115,22" : "59,130,246"; }
      span.style.backgroundColor = `rgba(${color},${Math.min(1, alpha).toFixed(2)})`;
      if (thr !== null && ci[i] > thr) span.classList.add("firing");
      if (i === center) span.classList.add("fire");
      const value = scale === null ? 0 : (act[i] * scale) / 100;
      span.title = `token ${id}  act ≈ ${fmt(value)}  CI ${fmt(ci[i] / 100)}${i === center ? "  (firing token)" : ""}`;
      line.append(span);
    });
    return line;
  }

  // The examples in groups: the top activations, then the uniform sample of firings split into activation
  // quantile bands (highest first), then the uniform sample as drawn; `count` examples per group.
  function exampleGroups(d) {
    const top = d.examples.top || [], random = d.examples.random || [];
    const size = (ex) => Math.abs(ex[1][ex[3]]);
    const ranked = random.map((ex, i) => [ex, i]).sort((a, b) => size(b[0]) - size(a[0]) || a[1] - b[1]);
    const groups = [{ id: "top", title: "Top activations", examples: top.map((ex, i) => [ex, `#${i + 1}`]) }];
    const n = ranked.length;
    const bands = [[], [], [], []]; // example of rank r (largest first) sits in quantile band floor(4 r / n)
    ranked.forEach(([ex, i], r) => bands[Math.floor((4 * r) / n)].push([ex, `r${i + 1}`]));
    bands.forEach((part, q) => {
      if (part.length) groups.push({ id: `band-${q}`, title: `Firings, activation quantile ${100 - 25 * (q + 1)}–${100 - 25 * q}%`, examples: part });
    });
    groups.push({ id: "random", title: "Uniform sample of firings", examples: random.map((ex, i) => [ex, `r${i + 1}`]) });
    return groups;
  }

  // Bars of a histogram (counts over equal bins between lo and hi), each with its range and count on hover.
  // Values arrive as the page's stored steps (whole percents): bins of whole steps, so none falls between two.
  function histogram(title, steps, unit, bins) {
    const lo = Math.min(0, ...steps), hi = Math.max(0, ...steps) + 1;
    const per = Math.max(1, Math.ceil((hi - lo) / bins));
    const counts = new Array(Math.ceil((hi - lo) / per)).fill(0);
    for (const v of steps) counts[Math.floor((v - lo) / per)]++;
    return histogramBars(title, steps.length, counts, lo * unit, per * unit);
  }

  function histogramBars(title, n, counts, lo, width) {
    const box = el("div", { class: "histogram", "data-histogram": title });
    box.append(el("div", { class: "muted", text: `${title} (n = ${n})` }));
    const top = Math.max(1, ...counts);
    const bars = el("div", { class: "bars" });
    counts.forEach((c, i) => {
      const bar = el("span", { class: "hbar", "data-count": String(c), title: `${fmt(lo + i * width)} – ${fmt(lo + (i + 1) * width)}: ${c}` });
      bar.style.height = `${Math.round((40 * c) / top)}px`;
      bars.append(bar);
    });
    box.append(bars, el("div", { class: "axis muted", text: `${fmt(lo)} … ${fmt(lo + counts.length * width)}` }));
    return box;
  }

  function histogramsBlock(d) {
    const random = d.examples.random || [];
    const box = el("div", { class: "cols histograms" });
    if (!random.length) return box;
    // activations are stored as whole percents of the component's largest |activation| shown, CIs as percents
    const acts = random.map((ex) => ex[1][ex[3]]), cis = random.map((ex) => ex[2][ex[3]]);
    box.append(histogram("activation at the firing token, uniform sample of firings", acts, (d.examples.scale || 0) / 100, 20),
      histogram("CI at the firing token, uniform sample of firings", cis, 0.01, 20));
    return box;
  }

  function examplesBlock(d, toks) {
    const box = el("div", { class: "examples" });
    if (!d.examples) {
      box.append(el("h3", { text: "Examples" }), el("p", { class: "muted", text: "harvest not run" }));
      return box;
    }
    const mode = el("select", { "aria-label": "shade by" }, el("option", { value: "ci", text: "CI" }), el("option", { value: "act", text: "activation" }));
    const count = el("select", { "aria-label": "examples per group" },
      ...["3", "5", "10", "20", "all"].map((v) => el("option", { value: v, text: v })));
    count.value = "5";
    const groups = exampleGroups(d);
    const lists = el("div");
    const draw = () => {
      lists.replaceChildren();
      const limit = count.value === "all" ? Infinity : parseInt(count.value, 10);
      for (const g of groups) {
        const shown = g.examples.slice(0, limit);
        const section = el("div", { class: "example-group", "data-group": g.id });
        section.append(el("h3", { text: `${g.title} (${shown.length} of ${g.examples.length})` }));
        if (!g.examples.length) section.append(el("p", { class: "muted", text: "none" }));
        for (const [ex, label] of shown) section.append(exampleLine(ex, d.examples.scale, label, toks, mode.value));
        lists.append(section);
      }
    };
    mode.addEventListener("change", draw);
    count.addEventListener("change", draw);
    box.append(histogramsBlock(d));
    box.append(el("div", { class: "muted" }, "shade tokens by ", mode, " · examples per group ", count,
      " · boxed: the firing token · dotted underline: other tokens above the CI threshold · hover for values and token ids"));
    draw();
    box.append(lists);
    return box;
  }

  // Tokens a residual-stream writer pushes up and down along the direct path (W_U (g * u_c)); see the page docs.
  function logitEffectsBlock(d, toks) {
    const box = el("div", {}, el("h3", { text: "Logit effects (direct path)" }));
    if (d.logit_effects === undefined) {
      box.append(el("p", { class: "muted", text: "decomposition not available" }));
      return box;
    }
    if (d.logit_effects === null) {
      box.append(el("p", { class: "muted", text: "not a residual-stream writer: its output does not reach the unembedding directly" }));
      return box;
    }
    for (const [dir, title] of [["pos", "promotes"], ["neg", "suppresses"]]) {
      const t = el("table", { class: "logit-effects", "data-direction": dir });
      t.append(el("tr", {}, el("th", { text: title }), el("th", { text: "logit" })));
      for (const [id, value] of d.logit_effects[dir]) t.append(el("tr", {}, el("td", {}, loneToken(toks, id)), el("td", { class: "num", text: fmt(value) })));
      box.append(t);
    }
    return box;
  }

  function cofiringBlock(d) {
    const box = el("div", {}, el("h3", { text: "Fires together with (Jaccard)" }));
    if (!d.cofiring) {
      box.append(el("p", { class: "muted", text: "harvest not run" }));
      return box;
    }
    const t = el("table", { class: "cofiring" });
    t.append(el("tr", {}, ...["component", "Jaccard", "both fire"].map((h) => el("th", { text: h }))));
    for (const [key, jaccard, both] of d.cofiring) {
      const cell = ROW_OF_KEY.has(key) ? el("a", { class: "node", href: "#component=" + encodeURIComponent(key), text: key }) : el("span", { text: key });
      t.append(el("tr", {}, el("td", {}, cell), el("td", { class: "num", text: fmt(jaccard) }), el("td", { class: "num", text: fmt(both, { id: "firings" }) })));
    }
    if (!d.cofiring.length) t.append(el("tr", {}, el("td", { class: "muted", colspan: "3", text: "none recorded (the harvest keeps pairs seen together often enough)" })));
    box.append(t);
    return box;
  }

  function tokenStatsBlock(d, toks) {
    const minCount = (META.options || {}).pmi_min_count;
    const box = el("div", {}, el("h3", { text: `Token statistics (by PMI${minCount ? `, count ≥ ${minCount}` : ""})` }));
    if (!d.token_stats) {
      box.append(el("p", { class: "muted", text: "harvest not run" }));
      return box;
    }
    for (const dir of ["input", "output"]) {
      const rows = d.token_stats[dir] || [];
      box.append(el("div", { class: "muted", text: dir === "input" ? "input: token at the firing" : "output: among the model's top predictions" }));
      const t = el("table", { class: "token-stats", "data-direction": dir });
      t.append(el("tr", {}, ...["token", "count", "precision", "recall", "PMI"].map((h) => el("th", { text: h }))));
      for (const [id, count, p, r, pmi] of rows) {
        t.append(el("tr", {}, el("td", {}, loneToken(toks, id)), el("td", { class: "num", text: fmt(count, { id: "firings" }) }),
          el("td", { class: "num", text: fmt(p) }), el("td", { class: "num", text: fmt(r) }), el("td", { class: "num", text: fmt(pmi) })));
      }
      if (!rows.length) t.append(el("tr", {}, el("td", { class: "muted", colspan: "5", text: "none" })));
      box.append(t);
    }
    return box;
  }

  function nodeCell(node, toks) {
    const i = node.lastIndexOf(":");
    const kind = node.slice(0, i), index = node.slice(i + 1);
    if (kind === "token") return el("span", {}, "token ", loneToken(toks, index));
    if (kind === "output") return el("span", {}, "logit ", loneToken(toks, index));
    if (ROW_OF_KEY.has(node)) return el("a", { class: "node", href: "#component=" + encodeURIComponent(node), text: node });
    return el("span", { text: node });
  }

  function attributionsBlock(d, toks) {
    const box = el("div", {}, el("h3", { text: "Top attributions" }));
    if (!d.attributions) {
      box.append(el("p", { class: "muted", text: "attributions not run" }));
      return box;
    }
    for (const [dir, title] of [["in", "in: sources → this component"], ["out", "out: this component → targets"]]) {
      const rows = d.attributions[dir] || [];
      box.append(el("div", { class: "muted", text: title }));
      const t = el("table", { class: "attributions", "data-direction": dir });
      const maxAbs = Math.max(1e-12, ...rows.map((r) => Math.abs(r[1])));
      for (const [node, value] of rows) {
        const bar = el("span", { class: "bar " + (value >= 0 ? "pos" : "neg") });
        bar.style.width = `${Math.round((60 * Math.abs(value)) / maxAbs)}px`;
        t.append(el("tr", {}, el("td", {}, nodeCell(node, toks)), el("td", { class: "num", text: fmt(value) }), el("td", {}, bar)));
      }
      if (!rows.length) t.append(el("tr", {}, el("td", { class: "muted", text: "none" })));
      box.append(t);
    }
    return box;
  }

  // ---- module overview ----------------------------------------------------------------------------------------
  function miniBars(counts, title) {
    const top = Math.max(1, ...counts);
    const bars = el("div", { class: "bars", title });
    for (const c of counts) {
      const bar = el("span", { class: "hbar", title: String(c) });
      bar.style.height = `${Math.round((22 * c) / top)}px`;
      bars.append(bar);
    }
    return bars;
  }

  // One row per module: components, alive, a density histogram (log10), CI-L0, labels, and per scorer the mean
  // and a histogram of scores; clicking a module filters the table to it.
  function renderOverview(modules) {
    const host = $("module-overview");
    if (!host || !modules.length) return;
    const scorers = Object.keys(META.scorers).filter((n) => META.scorers[n].available);
    const thresholds = [...new Set(modules.flatMap((m) => Object.keys(m.l0 || {})))];
    const t = el("table", { class: "modules" });
    t.append(el("tr", {}, ...["module", "components", "alive", "density (log10 1e-7 … 1)", ...thresholds.map((x) => `CI-L0 (${x})`),
      "labelled", ...scorers.map((n) => `${n} mean / histogram`)].map((h) => el("th", { text: h }))));
    for (const m of modules) {
      const link = el("a", { href: "#", text: m.module, onclick: (e) => {
        e.preventDefault();
        state.filters = { ...state.filters, module: "=" + m.module }; // exact: not also <module>.pre_identity
        const input = document.querySelector('#filter-row input[data-col="module"]');
        if (input) input.value = "=" + m.module;
        state.page = 0; refresh();
      } });
      const row = el("tr", { "data-module": m.module }, el("td", {}, el("code", {}, link)),
        el("td", { class: "num", text: fmt(m.n_components) }), el("td", { class: "num", text: fmt(m.n_alive) }),
        el("td", {}, miniBars(m.density.counts, `never fired: ${m.density.dead}`)),
        ...thresholds.map((x) => el("td", { class: "num", text: fmt((m.l0 || {})[x]) })),
        el("td", { class: "num", text: fmt(m.n_labelled) }));
      for (const n of scorers) {
        const sc = m.scores[n] || { n: 0, mean: null, counts: [] };
        row.append(el("td", {}, el("span", { class: "num", text: `${fmt(sc.mean)} (n ${sc.n}) ` }), miniBars(sc.counts, "scores 0 … 1")));
      }
      t.append(row);
    }
    host.replaceChildren(t);
  }

  // ---- wiring -------------------------------------------------------------------------------------------------
  function openFromHash() {
    const m = location.hash.match(/^#component=(.+)$/);
    if (!m) return;
    const row = ROW_OF_KEY.get(decodeURIComponent(m[1]));
    if (row === undefined) return;
    const pos = state.view.indexOf(row);
    if (pos >= 0) { state.page = Math.floor(pos / state.pageSize); renderTable(); }
    openComponent(row, false);
  }

  buildHeader();
  renderOverview(META.modules || []);
  $("prev-page").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); renderTable(); });
  $("next-page").addEventListener("click", () => {
    state.page = Math.min(state.page + 1, Math.max(0, Math.ceil(state.view.length / state.pageSize) - 1));
    renderTable();
  });
  $("page-size").addEventListener("change", (e) => { state.pageSize = parseInt(e.target.value, 10); state.page = 0; refresh(); });
  $("search").addEventListener("input", debounce(() => { state.search = $("search").value; state.page = 0; refresh(); }));
  $("clear-filters").addEventListener("click", () => {
    state.filters = {}; state.search = ""; $("search").value = "";
    document.querySelectorAll("#filter-row input").forEach((i) => { i.value = ""; });
    state.page = 0; refresh();
  });
  window.addEventListener("hashchange", openFromHash);
  refresh();
  if (!ROWS.length) {
    $("table-body").append(el("tr", {}, el("td", { colspan: String(COLS.length), class: "muted",
      text: META.sections.harvest ? "no alive components" : "no components yet: the harvest has not run" })));
  }
  document.body.dataset.ready = "1";
  openFromHash();
})();
