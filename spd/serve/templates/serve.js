// The page of `run.py serve` (spd/serve/app.py inlines it after panel.js): a prompt's tokens, the components active
// at a chosen position with the target's and the CI-masked model's predictions, the prompt's attribution graph
// (SVG, layers as rows, positions as columns), the component panel (window.SPDPanel) and interventions.
// Every text from the model, the tokenizer or a label goes in through textContent or an attribute (SPDPanel.el),
// never innerHTML. Hooks for tests: body[data-ready="1"]; data-state ("loading" | "done" | "error") on
// #run-info, #predictions, #components, #graph, #panel, #intervention-result, #history; graph nodes carry
// data-node (node id) and, for components, data-key; #panel carries data-key of the open component.
(function () {
  "use strict";
  const P = window.SPDPanel;
  const el = P.el, fmt = P.fmt;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const TOKEN = new URLSearchParams(location.search).get("token");
  // the token stays in memory only: out of the address bar, the history and any link copied from the page
  if (TOKEN !== null) history.replaceState(null, "", location.pathname + location.hash);
  const MAX_EDGES_DRAWN = 20000; // an SVG of more lines than this stalls the page

  const state = {
    run: null, // GET /api/run
    text: null, // the analysed prompt
    prompt: null, // POST /api/prompt answer
    position: 0, // the selected position
    graph: null,
    changes: [], // pending [{key, position, action}]
    result: null, // the shown intervention answer
    results: new Map(), // intervention id -> answer (this page's own, to show again from the history)
    graphSeq: 0,
    panelSeq: 0,
  };

  // ---- the API ----
  function errorText(body, status) {
    const d = body && body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => (e && e.msg ? `${(e.loc || []).slice(1).join(".") || "request"}: ${e.msg}` : String(e))).join("; ");
    return `HTTP ${status}`;
  }

  async function api(path, body) {
    const headers = {};
    if (TOKEN) headers["Authorization"] = "Bearer " + TOKEN;
    const init = { headers };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch("api/" + path, init);
    } catch (e) {
      throw new Error("the server did not answer: " + e.message);
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) throw new Error(errorText(data, resp.status));
    return data;
  }

  function failed(target, message) {
    target.replaceChildren(el("p", { class: "failed", text: message }));
    target.dataset.state = "error";
  }

  function loading(target, message) {
    target.dataset.state = "loading";
    target.replaceChildren(el("p", { class: "muted", text: message || "computing…" }));
  }

  // ---- small views ----
  const known = Object.create(null); // every token text an answer brought: token id (string) -> text
  function texts(answer) {
    if (!answer) return known;
    for (const t of answer.tokens || []) known[String(t.id)] = t.text;
    Object.assign(known, answer.token_texts || {});
    return known;
  }
  const positionName = (p) => (p === null || p === undefined ? "all positions" : `position ${p}`);

  function tokenAt(p) {
    const t = state.prompt && state.prompt.tokens[p];
    return t ? P.lone({ [t.id]: t.text }, t.id) : "?";
  }

  function predictionTable(title, preds, toks, cls) {
    const t = el("table", { class: "preds " + (cls || ""), "data-kind": cls || title });
    t.append(el("tr", {}, el("th", { colspan: "2", text: title })));
    for (const [id, prob] of preds || []) {
      const bar = el("span", { class: "pbar" });
      bar.style.width = `${Math.round(60 * prob)}px`;
      t.append(el("tr", {}, el("td", {}, P.loneToken(toks, id)), el("td", { class: "num" }, fmt(prob), bar)));
    }
    return t;
  }

  function scoresText(scores) {
    const parts = Object.entries(scores || {}).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k} ${fmt(v)}`);
    return parts.join(" · ");
  }

  // ---- the prompt ----
  async function analyse() {
    const text = $("prompt").value;
    const err = $("prompt-error");
    err.hidden = true;
    const body = { text };
    const thr = $("ci-threshold").value;
    if (thr !== "") body.ci_threshold = Number(thr);
    loading($("predictions"));
    loading($("components"));
    $("analyse").disabled = true;
    let answer;
    try {
      answer = await api("prompt", body);
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
      failed($("predictions"), e.message);
      failed($("components"), e.message);
      return false;
    } finally {
      $("analyse").disabled = false;
    }
    if (text !== state.text) {
      state.changes = [];
      state.result = null;
      renderChanges();
      renderResult();
    }
    state.text = text;
    state.prompt = answer;
    state.position = answer.tokens.length - 1;
    renderTokens();
    selectPosition(state.position);
    return true;
  }

  function renderTokens() {
    const strip = $("tokens");
    strip.replaceChildren();
    state.prompt.tokens.forEach((t, p) => {
      const chip = el("button", { type: "button", class: "tok-chip", "data-position": String(p), title: `position ${p} · token ${t.id}`, text: P.lone({ [t.id]: t.text }, t.id) });
      chip.addEventListener("click", () => selectPosition(p));
      strip.append(chip);
    });
  }

  function selectPosition(p) {
    state.position = p;
    for (const chip of $("tokens").children) chip.classList.toggle("selected", chip.dataset.position === String(p));
    const where = `at position ${p} (“${tokenAt(p)}”)`;
    $("components-where").textContent = where;
    $("predictions-where").textContent = `after position ${p} (“${tokenAt(p)}”)`;
    renderComponents();
    renderPredictions();
    renderResult();
    loadGraph();
  }

  function renderComponents() {
    const box = $("components");
    const pos = state.prompt.positions[state.position];
    const facts = state.prompt.components || {};
    if (!pos.active.length) {
      box.replaceChildren(el("p", { class: "muted", text: `no component above the CI threshold ${fmt(state.prompt.ci_threshold)} here` }));
      box.dataset.state = "done";
      return;
    }
    const t = el("table", { class: "active" });
    const anyScores = pos.active.some(([key]) => facts[key] && scoresText(facts[key].scores));
    const heads = ["component", "CI", "label", anyScores ? "scores" : null, "density", "change"].filter((h) => h);
    t.append(el("tr", {}, ...heads.map((h) => el("th", { text: h }))));
    for (const [key, ci] of pos.active) {
      const f = facts[key];
      const label = f && f.label ? el("span", {}, f.label, f.confidence ? el("span", { class: "badge", text: f.confidence }) : null)
        : el("span", { class: "muted", text: f ? "not labelled" : "not in the harvest" });
      const open = el("a", { class: "node", href: "#component=" + encodeURIComponent(key), text: key });
      t.append(el("tr", { "data-key": key },
        el("td", {}, open), el("td", { class: "num", text: fmt(ci) }), el("td", { class: "label-cell" }, label),
        anyScores ? el("td", { class: "muted", text: f ? scoresText(f.scores) : "" }) : null, el("td", { class: "num", text: f ? fmt(f.density) : "–" }),
        el("td", { class: "nowrap" },
          el("button", { type: "button", class: "change-off", "data-key": key, title: "switch it off", onclick: () => addChange(key, "off") }, "off"),
          el("button", { type: "button", class: "change-on", "data-key": key, title: "switch it fully on", onclick: () => addChange(key, "on") }, "on"))));
    }
    box.replaceChildren(el("div", { class: "muted hint", text: `${pos.active.length} above the CI threshold ${fmt(state.prompt.ci_threshold)}, largest CI first` }),
      el("div", { class: "active-wrap" }, t));
    box.dataset.state = "done";
  }

  function renderPredictions() {
    const box = $("predictions");
    const pos = state.prompt.positions[state.position];
    const toks = texts(state.prompt);
    box.replaceChildren(
      el("div", { class: "pred-cols" }, predictionTable("target model", pos.target, toks, "target"), predictionTable("CI-masked model", pos.masked, toks, "masked")),
      el("div", { class: "kl", "data-kl": String(pos.kl_masked) }, "KL(target ‖ CI-masked) = ", el("b", { text: fmt(pos.kl_masked) })));
    box.dataset.state = "done";
  }

  // ---- the graph ----
  function shortLayer(layer) {
    return layer.replace(/^(model\.|transformer\.)/, "").replace(/^layers\.(\d+)\./, "L$1 ").replace(/^h\.(\d+)\./, "L$1 ");
  }

  async function loadGraph() {
    if (!state.prompt) return;
    const svg = $("graph");
    const seq = ++state.graphSeq;
    svg.dataset.state = "loading";
    $("graph-info").textContent = "computing the graph…";
    $("graph-info").className = "hint muted";
    const body = { text: state.text, position: state.position, keep_fraction: Number($("keep-fraction").value), max_edges: Math.min(MAX_EDGES_DRAWN, Number($("max-edges").value) || 1000) };
    const thr = $("ci-threshold").value;
    if (thr !== "") body.ci_threshold = Number(thr);
    let g;
    try {
      g = await api("graph", body);
    } catch (e) {
      if (seq !== state.graphSeq) return;
      svg.replaceChildren();
      svg.setAttribute("width", "0");
      svg.setAttribute("height", "0");
      $("graph-info").textContent = e.message;
      $("graph-info").className = "hint failed";
      svg.dataset.state = "error";
      return;
    }
    if (seq !== state.graphSeq) return;
    state.graph = g;
    drawGraph(g);
    const o = g.output;
    $("graph-info").textContent = `logit of “${P.lone(texts(g), o.token_id)}” after position ${o.position}: ${fmt(o.logit)} (p = ${fmt(o.prob)}) · ` +
      `${g.nodes.length} of ${g.n_nodes} nodes, ${g.edges.length} of ${g.n_edges} edges kept, carrying ${fmt(g.total_abs ? g.kept_abs / g.total_abs : 0)} of the total |attribution|`;
    svg.dataset.state = "done";
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    return node;
  }

  function drawGraph(g) {
    const svg = $("graph");
    svg.replaceChildren();
    const toks = texts(g);
    const rows = g.layers.length;
    const nPos = g.tokens.length;
    const ROW = 72, LEFT = 130, TOP = 26, BOTTOM = 40, STEP = 13, MINW = 40;
    // nodes per cell (layer, position), largest CI first
    const cells = new Map();
    for (const n of g.nodes) {
      const k = n.layer + "@" + n.position;
      if (!cells.has(k)) cells.set(k, []);
      cells.get(k).push(n);
    }
    for (const list of cells.values()) list.sort((a, b) => (b.ci || 0) - (a.ci || 0) || a.index - b.index);
    const widths = new Array(nPos).fill(MINW);
    for (const list of cells.values()) widths[list[0].position] = Math.max(widths[list[0].position], list.length * STEP + 16);
    const xs = [];
    let x = LEFT;
    for (const w of widths) { xs.push(x); x += w; }
    const width = x + 10, height = TOP + (rows - 1) * ROW + BOTTOM;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const rowOf = new Map(g.layers.map((l, i) => [l, i]));
    const yOf = (layer) => TOP + (rows - 1 - rowOf.get(layer)) * ROW;
    const at = new Map();
    for (const list of cells.values()) {
      const n0 = list[0];
      const cx = xs[n0.position] + widths[n0.position] / 2;
      list.forEach((n, i) => at.set(n.id, [cx + (i - (list.length - 1) / 2) * STEP, yOf(n.layer)]));
    }
    // rows and columns
    const grid = svgEl("g", { class: "grid" });
    // row names stay in view when the graph scrolls sideways (moved with the scroll, over a white band)
    const names = svgEl("g", { class: "row-names" });
    names.append(svgEl("rect", { x: 0, y: 0, width: LEFT - 10, height, fill: "#fff", "fill-opacity": 0.85 }));
    g.layers.forEach((layer) => {
      const y = yOf(layer);
      grid.append(svgEl("line", { x1: LEFT - 6, x2: width - 6, y1: y, y2: y, class: "row-line" }));
      const name = layer === "token" ? "input tokens" : layer === "output" ? "output logit" : shortLayer(layer);
      const label = svgEl("text", { x: 6, y: y + 4, class: "row-label", text: name });
      label.append(svgEl("title", { text: layer }));
      names.append(label);
    });
    g.tokens.forEach((t, p) => {
      const cx = xs[p] + widths[p] / 2;
      const label = svgEl("text", { x: cx, y: height - 8, class: "col-label" + (p === g.output.position ? " selected" : ""), "text-anchor": "middle", text: P.lone({ [t.id]: t.text }, t.id) });
      label.append(svgEl("title", { text: `position ${p} · token ${t.id}` }));
      grid.append(label);
    });
    svg.append(grid);
    // edges, drawn under the nodes
    let maxAbs = 1e-12; // a loop: spreading 100K+ values as arguments overflows the call stack
    for (const e of g.edges) maxAbs = Math.max(maxAbs, Math.abs(e[2]));
    const edges = svgEl("g", { class: "edges" });
    const touching = new Map();
    for (const [s, t, v] of g.edges) {
      const a = at.get(s), b = at.get(t);
      if (!a || !b) continue;
      const line = svgEl("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: "edge " + (v >= 0 ? "pos" : "neg"), "stroke-width": (0.4 + 3.6 * Math.abs(v) / maxAbs).toFixed(2), "data-value": v });
      line.append(svgEl("title", { text: `${s} → ${t}: ${fmt(v)}` }));
      edges.append(line);
      for (const id of [s, t]) {
        if (!touching.has(id)) touching.set(id, []);
        touching.get(id).push(line);
      }
    }
    svg.append(edges);
    // nodes
    const nodes = svgEl("g", { class: "nodes" });
    const facts = g.components || {};
    for (const n of g.nodes) {
      const [cx, cy] = at.get(n.id);
      const attrs = { cx, cy, r: n.layer === "output" ? 7 : 5, "data-node": n.id, class: "gnode " + (n.key ? "comp" : n.layer) };
      if (n.key) {
        attrs["data-key"] = n.key;
        attrs["fill-opacity"] = (0.25 + 0.75 * Math.min(1, n.ci || 0)).toFixed(2);
      }
      const c = svgEl("circle", attrs);
      c.addEventListener("mouseenter", (ev) => focusNode(n, touching.get(n.id) || [], facts, toks, ev));
      c.addEventListener("mousemove", moveTip);
      c.addEventListener("mouseleave", unfocus);
      if (n.key) c.addEventListener("click", () => openComponentLink(n.key));
      nodes.append(c);
    }
    svg.append(nodes, names);
    // the output's column in view
    const wrap = svg.parentNode;
    const outX = xs[g.output.position] + widths[g.output.position] / 2;
    wrap.scrollLeft = Math.max(0, outX - wrap.clientWidth + 80);
    const follow = () => names.setAttribute("transform", `translate(${wrap.scrollLeft},0)`);
    wrap.onscroll = follow;
    follow();
  }

  function nodeLines(n, facts, toks) {
    if (n.layer === "token") return [`input token “${P.lone(toks, n.index)}” (id ${n.index})`, `position ${n.position}`];
    if (n.layer === "output") return [`output logit of “${P.lone(toks, n.index)}” (id ${n.index})`, `after position ${n.position}`];
    const f = facts[n.key];
    const lines = [n.key, `position ${n.position} (“${tokenAt(n.position)}”) · CI ${fmt(n.ci)}`];
    if (f && f.label) lines.push(`label: ${f.label}${f.confidence ? ` (${f.confidence})` : ""}`);
    else lines.push(f ? "not labelled" : "not in the harvest");
    if (f && scoresText(f.scores)) lines.push(scoresText(f.scores));
    lines.push("click for its panel");
    return lines;
  }

  function focusNode(n, lines, facts, toks, ev) {
    const svg = $("graph");
    svg.classList.add("focus");
    for (const l of lines) l.classList.add("hl");
    const tip = $("graph-tip");
    tip.replaceChildren(...nodeLines(n, facts, toks).map((s, i) => el("div", { class: i === 0 ? "tip-head" : "", text: s })));
    tip.hidden = false;
    moveTip(ev);
  }

  function moveTip(ev) {
    const tip = $("graph-tip");
    tip.style.left = `${ev.pageX + 14}px`;
    tip.style.top = `${ev.pageY + 14}px`;
  }

  function unfocus() {
    const svg = $("graph");
    svg.classList.remove("focus");
    for (const l of svg.querySelectorAll("line.hl")) l.classList.remove("hl");
    $("graph-tip").hidden = true;
  }

  // ---- the component panel ----
  const linkFor = (key) => "#component=" + encodeURIComponent(key);

  function openComponentLink(key) {
    if (location.hash === linkFor(key)) showComponent(key);
    else location.hash = linkFor(key); // hashchange opens it
  }

  function hashKey() {
    const m = /^#component=(.+)$/.exec(location.hash);
    if (!m) return null;
    try { return decodeURIComponent(m[1]); } catch (e) { return null; }
  }

  async function showComponent(key) {
    const panel = $("panel");
    const seq = ++state.panelSeq;
    panel.hidden = false;
    $("panel-bar").hidden = false;
    panel.dataset.key = key;
    panel.dataset.state = "loading";
    panel.replaceChildren(el("p", { class: "muted", text: `loading ${key}…` }));
    let answer;
    try {
      answer = await api("components/" + encodeURIComponent(key));
    } catch (e) {
      if (seq !== state.panelSeq) return;
      panel.replaceChildren(el("h2", {}, el("code", { text: key })), el("p", { class: "failed", text: e.message }));
      panel.dataset.state = "error";
      return;
    }
    if (seq !== state.panelSeq) return;
    panel.replaceChildren(...P.render(answer.detail, answer.tokens || {}, state.run.panel_meta, { linkFor }));
    panel.dataset.state = "done";
    panel.scrollIntoView({ block: "nearest" });
  }

  function closePanel() {
    $("panel").hidden = true;
    $("panel-bar").hidden = true;
    delete $("panel").dataset.key;
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  }

  // ---- interventions ----
  function addChange(key, action) {
    if (!state.prompt) return;
    const position = $("change-scope").value === "all" ? null : state.position;
    state.changes = state.changes.filter((c) => !(c.key === key && c.position === position));
    state.changes.push({ key, position, action });
    renderChanges();
  }

  function addTypedChange(action) {
    const key = $("change-key").value.trim();
    if (key) addChange(key, action);
  }

  function renderChanges() {
    const list = $("changes");
    list.replaceChildren();
    if (!state.changes.length) {
      list.append(el("li", { class: "muted", text: "no changes yet: use “off” / “on” beside an active component, or type a key" }));
      return;
    }
    state.changes.forEach((c, i) => {
      list.append(el("li", { "data-key": c.key, "data-action": c.action },
        el("b", { class: "action-" + c.action, text: c.action }), " ", el("code", { text: c.key }), " at ",
        c.position === null ? "all positions" : `position ${c.position} (“${tokenAt(c.position)}”)`, " ",
        el("button", { type: "button", class: "remove", title: "remove this change", onclick: () => { state.changes.splice(i, 1); renderChanges(); } }, "×")));
    });
  }

  async function applyIntervention() {
    const box = $("intervention-result");
    if (!state.prompt) {
      failed(box, "analyse a prompt first");
      return;
    }
    loading(box);
    $("apply-intervention").disabled = true;
    let answer;
    try {
      answer = await api("intervene", { text: state.text, changes: state.changes, base: $("base").value });
    } catch (e) {
      failed(box, e.message);
      return;
    } finally {
      $("apply-intervention").disabled = false;
    }
    state.results.set(answer.id, { answer, text: state.text });
    state.result = answer;
    renderResult();
    loadHistory();
  }

  function renderResult() {
    const box = $("intervention-result");
    const r = state.result;
    if (!r) {
      box.replaceChildren();
      box.dataset.state = "empty";
      return;
    }
    const pos = r.positions[state.position];
    if (!pos) {
      failed(box, `intervention #${r.id} has no position ${state.position}`);
      return;
    }
    const toks = texts(r);
    const changes = r.changes.map((c) => `${c.action} ${c.key} at ${positionName(c.position)}`).join("; ") || "no changes";
    box.replaceChildren(
      el("div", { class: "muted hint", text: `intervention #${r.id} · base: ${r.base === "ci" ? "CI-masked model" : "every component on"} · ${changes} · predictions after position ${state.position} (“${tokenAt(state.position)}”)` }),
      el("div", { class: "pred-cols" },
        predictionTable("target model", pos.target, toks, "target"),
        predictionTable("base", pos.base, toks, "base"),
        predictionTable("intervened", pos.intervened, toks, "intervened")),
      el("div", { class: "kl" }, "KL(target ‖ intervened) = ", el("b", { class: "kl-target", text: fmt(pos.kl_target) }),
        " · KL(base ‖ intervened) = ", el("b", { class: "kl-base", text: fmt(pos.kl_base) })));
    box.dataset.state = "done";
    box.dataset.id = String(r.id);
  }

  async function loadHistory() {
    const list = $("history");
    let entries;
    try {
      entries = await api("interventions");
    } catch (e) {
      list.replaceChildren(el("li", { class: "failed", text: e.message }));
      list.dataset.state = "error";
      return;
    }
    list.replaceChildren();
    if (!entries.length) list.append(el("li", { class: "muted", text: "none yet" }));
    for (const h of entries.slice().reverse()) {
      const changes = h.changes.map((c) => `${c.action} ${c.key}@${c.position === null ? "all" : c.position}`).join(", ") || "no changes";
      const li = el("li", { "data-id": String(h.id), tabindex: "0", title: "show it again" },
        el("b", { text: `#${h.id}` }), " ", el("span", { class: "muted", text: h.at }), " · ",
        el("code", { class: "prompt-text", text: h.prompt }), ` · base ${h.base} · ${changes} · last prediction `,
        el("code", { class: "lone", text: P.lone(known, h.last_prediction.base) }), " → ",
        el("code", { class: "lone", text: P.lone(known, h.last_prediction.intervened) }),
        ` · KL to target: last ${fmt(h.kl_target_last)}, mean ${fmt(h.kl_target_mean)}`);
      li.addEventListener("click", () => showHistory(h));
      li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") showHistory(h); });
      list.append(li);
    }
    list.dataset.state = "done";
  }

  // An earlier intervention again: its prompt analysed, its changes pending; its predictions shown when this page
  // made it (else press Apply to compute them again).
  async function showHistory(h) {
    const kept = state.results.get(h.id);
    $("prompt").value = kept ? kept.text : h.prompt;
    $("base").value = h.base;
    if (!(await analyse())) return;
    state.changes = h.changes.map((c) => ({ key: c.key, position: c.position, action: c.action }));
    renderChanges();
    if (kept && kept.answer.tokens.length === state.prompt.tokens.length) {
      state.result = kept.answer;
      renderResult();
    } else {
      state.result = null;
      renderResult();
      const box = $("intervention-result");
      box.replaceChildren(el("p", { class: "muted", text: `intervention #${h.id}'s prompt and changes are restored: press Apply to compute its predictions` }));
    }
    $("intervention-result").scrollIntoView({ block: "nearest" });
  }

  // ---- start ----
  async function start() {
    const info = $("run-info");
    $("analyse").addEventListener("click", analyse);
    $("prompt").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) analyse(); });
    $("keep-fraction").addEventListener("input", () => { $("keep-fraction-value").textContent = $("keep-fraction").value; });
    $("keep-fraction").addEventListener("change", loadGraph);
    $("max-edges").addEventListener("change", loadGraph);
    $("apply-intervention").addEventListener("click", applyIntervention);
    $("add-off").addEventListener("click", () => addTypedChange("off"));
    $("add-on").addEventListener("click", () => addTypedChange("on"));
    $("panel-close").addEventListener("click", closePanel);
    window.addEventListener("hashchange", () => { const k = hashKey(); if (k) showComponent(k); });
    renderChanges();
    try {
      state.run = await api("run");
    } catch (e) {
      failed(info, "could not load the run: " + e.message);
      document.body.dataset.ready = "1";
      return;
    }
    const r = state.run;
    const modules = Object.entries(r.modules).map(([m, c]) => `${m} (${c})`).join(", ");
    info.textContent = `${modules} · vocabulary ${r.vocab_size} · prompts up to ${r.max_tokens === null ? "any number of" : r.max_tokens} tokens · ` +
      `CI threshold ${fmt(r.ci_threshold)} · ${r.n_panels} component panels`;
    info.dataset.state = "done";
    $("ci-threshold").placeholder = String(r.ci_threshold);
    await loadHistory();
    document.body.dataset.ready = "1";
    const k = hashKey();
    if (k) showComponent(k);
  }

  start();
})();
