// The component table (sorted, filtered and paged in memory; only one page is in the DOM), the module overview,
// and the loading of a component's data (inflated on demand from a gzip+base64 chunk) for the component panel,
// which panel.js draws (window.SPDPanel, inlined before this file). All data text goes in through textContent.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { el, fmt } = window.SPDPanel;
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
  // The panel's link to a component: its URL hash where this page has that component (a table row), else none.
  const componentLink = (key) => (ROW_OF_KEY.has(key) ? "#component=" + encodeURIComponent(key) : null);

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
    panel.replaceChildren(...window.SPDPanel.render(detail, toks, META, { linkFor: componentLink }));
    panel.dataset.key = detail.key;
    if (updateHash) history.replaceState(null, "", "#component=" + encodeURIComponent(detail.key));
    panel.scrollIntoView({ block: "nearest" });
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
