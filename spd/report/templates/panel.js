// The component panel: what a component's details (one entry of the report's chunk data, or the same JSON from
// the `serve` app, spd/serve/) look like on a page. It lives in its own file because two pages show it: the static
// run report (inlined before report.js by spd/report/render.py) and the local `serve` app. Nothing here reads the
// page it is on; the caller hands everything in:
//
//   window.SPDPanel.render(detail, toks, meta, opts) -> array of DOM nodes (put them in a container,
//       e.g. panel.replaceChildren(...nodes)); the container's class "panel" scopes part of panel.css.
//     detail  one component's details (render.py / data.py: key, module, density, firings, label, scores,
//             examples, token_stats, logit_effects, attributions, cofiring; a missing section says "not run").
//     toks    token id (string) -> token text; an id not in it shows as #<id>.
//     meta    what the panel reads of the report's META: ci_threshold (number or null), sections
//             ({stage: available}, autointerp read), scorers ({name: {available, chance}}), options
//             ({pmi_min_count}, optional). The report passes its whole META.
//     opts    {linkFor(key)}: an href for a component key, or null when that key is not browsable (shown as
//             plain text); links get class "node". Without linkFor no component is a link.
//   el(tag, attrs, ...children), fmt(value, col), tokenText(toks, id), lone(toks, id), loneToken(toks, id): the
//   helpers it is built from, for the page around it.
//
// Every data text goes in through textContent or an attribute, never innerHTML.
(function () {
  "use strict";
  // A new element: attrs "class" -> className, "text" -> textContent, "on<event>" -> a listener, any other key ->
  // an attribute; children (nodes or strings, null/undefined skipped) appended.
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

  // A value as the page shows it: "–" when missing, 3 significant digits (exponent when tiny or huge); a column
  // {id: "firings"} gets a whole number with thousands separators.
  function fmt(v, col) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (col && col.id === "firings") return v.toLocaleString();
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
    return String(Number(v.toPrecision(3)));
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

  // -> the panel's nodes for component `d` (see the top of this file for the arguments).
  function render(d, toks, meta, opts) {
    const linkFor = (opts && opts.linkFor) || (() => null);
    const out = [];
    const facts = [`module ${d.module}`];
    if (d.density !== undefined) facts.push(`density ${fmt(d.density)}`, `${fmt(d.firings, { id: "firings" })} firings`);
    if (d.mean_ci_firing !== undefined && d.mean_ci_firing !== null) facts.push(`mean CI when firing ${fmt(d.mean_ci_firing)}`);
    out.push(el("h2", {}, el("code", { text: d.key })), el("div", { class: "muted", text: facts.join(" · ") }));

    const cols = el("div", { class: "cols" });
    cols.append(labelBlock(d, meta), scoresBlock(d, meta));
    out.push(cols);
    out.push(examplesBlock(d, toks, meta));
    const cols2 = el("div", { class: "cols" });
    cols2.append(tokenStatsBlock(d, toks, meta), logitEffectsBlock(d, toks), attributionsBlock(d, toks, linkFor), cofiringBlock(d, linkFor));
    out.push(cols2);
    return out;
  }

  function labelBlock(d, meta) {
    const box = el("div", { class: "label-block" }, el("h3", { text: "Label" }));
    if (!(meta.sections || {}).autointerp) {
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

  function scoresBlock(d, meta) {
    const box = el("div", {}, el("h3", { text: "Scores" }));
    const table = el("table", { class: "scores" });
    table.append(el("tr", {}, el("th", { text: "scorer" }), el("th", { text: "score" }), el("th", { text: "trials" }),
      el("th", { text: "interval" }), el("th", { text: "chance" })));
    for (const [name, info] of Object.entries(meta.scorers || {})) {
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

  function exampleLine(ex, scale, label, toks, mode, meta) {
    const [ids, act, ci, center] = ex;
    const line = el("div", { class: "example" }, el("span", { class: "rank", text: label }));
    const thr = meta.ci_threshold === null || meta.ci_threshold === undefined ? null : 100 * meta.ci_threshold;
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

  function examplesBlock(d, toks, meta) {
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
        for (const [ex, label] of shown) section.append(exampleLine(ex, d.examples.scale, label, toks, mode.value, meta));
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

  // A component key: a link (class "node") where the page can show that component, else plain text.
  function keyCell(key, linkFor) {
    const href = linkFor(key);
    return href ? el("a", { class: "node", href, text: key }) : el("span", { text: key });
  }

  function cofiringBlock(d, linkFor) {
    const box = el("div", {}, el("h3", { text: "Fires together with (Jaccard)" }));
    if (!d.cofiring) {
      box.append(el("p", { class: "muted", text: "harvest not run" }));
      return box;
    }
    const t = el("table", { class: "cofiring" });
    t.append(el("tr", {}, ...["component", "Jaccard", "both fire"].map((h) => el("th", { text: h }))));
    for (const [key, jaccard, both] of d.cofiring) {
      t.append(el("tr", {}, el("td", {}, keyCell(key, linkFor)), el("td", { class: "num", text: fmt(jaccard) }), el("td", { class: "num", text: fmt(both, { id: "firings" }) })));
    }
    if (!d.cofiring.length) t.append(el("tr", {}, el("td", { class: "muted", colspan: "3", text: "none recorded (the harvest keeps pairs seen together often enough)" })));
    box.append(t);
    return box;
  }

  function tokenStatsBlock(d, toks, meta) {
    const minCount = (meta.options || {}).pmi_min_count;
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

  function nodeCell(node, toks, linkFor) {
    const i = node.lastIndexOf(":");
    const kind = node.slice(0, i), index = node.slice(i + 1);
    if (kind === "token") return el("span", {}, "token ", loneToken(toks, index));
    if (kind === "output") return el("span", {}, "logit ", loneToken(toks, index));
    return keyCell(node, linkFor);
  }

  function attributionsBlock(d, toks, linkFor) {
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
        t.append(el("tr", {}, el("td", {}, nodeCell(node, toks, linkFor)), el("td", { class: "num", text: fmt(value) }), el("td", {}, bar)));
      }
      if (!rows.length) t.append(el("tr", {}, el("td", { class: "muted", text: "none" })));
      box.append(t);
    }
    return box;
  }
  window.SPDPanel = Object.freeze({ el, fmt, render, lone, loneToken, tokenText });
})();
