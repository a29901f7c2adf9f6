"""The report's plots, drawn with matplotlib and inlined as SVG (no files, no network).

Figures are built with the object API (`matplotlib.figure.Figure`), never pyplot, so nothing global is
touched and no display backend is needed. Text stays text in the SVG (`svg.fonttype: none`): smaller, and
searchable in the page. A plot whose data is missing is returned with the reason instead of a picture.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from typing import Any

import matplotlib
from matplotlib.figure import Figure

SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "spd-report", "font.size": 9, "axes.titlesize": 10}
SCORERS = ("detection", "fuzzing", "intruder")
SCORER_COLORS = {"detection": "#4c72b0", "fuzzing": "#dd8452", "intruder": "#55a868"}


def figure_svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (XML prolog and DOCTYPE stripped; fixed size removed so CSS
    can scale it)."""
    buf = io.StringIO()
    with matplotlib.rc_context(SVG_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", svg, count=1)


def _plot(title: str, draw: Callable[[], Figure | str]) -> dict[str, Any]:
    """Run a drawing function; a string result is the reason there is no plot."""
    with matplotlib.rc_context(SVG_RC):
        result = draw()
    if isinstance(result, str):
        return {"title": title, "svg": None, "reason": result}
    return {"title": title, "svg": figure_svg(result), "reason": None}


def density_histogram(densities: list[list[Any]], n_components: int) -> Figure | str:
    """Histogram of log10 firing density of components that fired, stacked by module."""
    if not densities:
        return "no harvest yet"
    by_module: dict[str, list[float]] = {}
    for module, density in densities:
        if density and density > 0:
            by_module.setdefault(module, []).append(math.log10(density))
    dead = n_components - sum(len(v) for v in by_module.values())
    if not by_module:
        return f"no component fired ({n_components} components)"
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot()
    values = list(by_module.values())
    lo, hi = min(min(v) for v in values), max(max(v) for v in values)
    bins = 30 if hi > lo else 1
    ax.hist(values, bins=bins, range=(lo - 0.05, hi + 0.05), stacked=True, label=list(by_module), alpha=0.85)
    ax.set_xlabel("log10 firing density (fraction of tokens with CI above threshold)")
    ax.set_ylabel("components")
    ax.set_title(f"{n_components - dead} components fired, {dead} never fired")
    if len(by_module) > 1:
        ax.legend(fontsize=7, frameon=False)
    return fig


def l0_per_module(l0: dict[str, dict[str, float]]) -> Figure | str:
    """Bars of CI-L0 per module at the final evaluation, one group per CI threshold."""
    if not l0:
        return "no CI-L0 in the decomposition's summary"
    thresholds = sorted(l0, key=float)
    modules = sorted({m for values in l0.values() for m in values})
    fig = Figure(figsize=(6.4, 0.6 + 0.32 * len(modules) * len(thresholds) + 0.6))
    ax = fig.add_subplot()
    height = 0.8 / len(thresholds)
    for i, threshold in enumerate(thresholds):
        ys = [j + i * height for j in range(len(modules))]
        xs = [l0[threshold].get(m, float("nan")) for m in modules]
        bars = ax.barh(ys, xs, height=height, label=f"CI > {threshold}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_yticks([j + height * (len(thresholds) - 1) / 2 for j in range(len(modules))], modules)
    ax.invert_yaxis()
    ax.set_xlabel("CI-L0: components active per token")
    ax.set_title("CI-L0 per module (final evaluation)")
    if len(thresholds) > 1:
        ax.legend(fontsize=7, frameon=False)
    return fig


def l0_training(curves: dict[str, list[list[float]]]) -> Figure | str:
    """CI-L0 per module over training steps (the training log)."""
    if not curves:
        return "no CI-L0 in the training log"
    fig = Figure(figsize=(6.4, 3.0))
    ax = fig.add_subplot()
    for module, points in sorted(curves.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], label=module, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("CI-L0")
    values = [p[1] for points in curves.values() for p in points if p[1] > 0]
    if values and max(values) > 20 * min(values):
        ax.set_yscale("log")
    ax.set_title("CI-L0 per module during training")
    ax.legend(fontsize=7, frameon=False)
    return fig


def score_distributions(scores: dict[str, dict[str, Any]], scorers: tuple[str, ...]) -> Figure | str:
    """One histogram per scorer of the per-component scores, with its chance level as a dashed line; a scorer
    without scores keeps its panel, saying why, so the panels line up from one report to the next."""
    if not any(s.get("values") for s in scores.values()):
        return "no scores yet" if not scores else "every score is missing (all failed)"
    fig = Figure(figsize=(3.0 * len(scorers), 2.6))
    axes = fig.subplots(1, len(scorers), squeeze=False, sharey=False)[0]
    for ax, name in zip(axes, scorers, strict=True):
        ax.set_xlim(0, 1)
        ax.set_xlabel("score")
        s = scores.get(name)
        values = (s or {}).get("values") or []
        if not values:
            ax.set_title(name)
            ax.text(0.5, 0.5, "not run" if s is None else "no scores", ha="center", va="center", color="#888888")
            ax.set_yticks([])
            continue
        ax.hist(values, bins=20, range=(0.0, 1.0), color=SCORER_COLORS.get(name, "#777777"))
        chance = s.get("chance")
        if chance is not None:
            ax.axvline(chance, color="black", linestyle="--", linewidth=1, label=f"chance {chance:.2g}")
            ax.legend(fontsize=7, frameon=False, loc="upper right")
        ax.set_title(f"{name} (n={len(values)}, mean {sum(values) / len(values):.2f})")
    axes[0].set_ylabel("components")
    return fig


def render_plots(plot_data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every plot of the report as {title, svg or None, reason}."""
    return [
        _plot(
            "Firing density",
            lambda: density_histogram(plot_data.get("densities") or [], int(plot_data.get("n_components") or 0)),
        ),
        _plot("CI-L0 per module", lambda: l0_per_module(plot_data.get("l0") or {})),
        _plot("CI-L0 during training", lambda: l0_training(plot_data.get("l0_curve") or {})),
        _plot("Score distributions", lambda: score_distributions(plot_data.get("scores") or {}, SCORERS)),
    ]
