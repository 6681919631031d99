"""Plots of a sweep's results (PNG, matplotlib's non-interactive Agg backend).

Every PNG is written atomically (a report rebuilt while a sweep runs never shows half an image).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from kdci_ray.atomic import atomic_write

_KDCI_STYLE = {False: "--", True: "-"}  # vanilla dashed, KDCI solid
_KDCI_COLOR = {False: "tab:blue", True: "tab:orange"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically and close it."""
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        _pyplot().close(fig)


def plot_vs(rows: pd.DataFrame, x: str, path: str | Path, y: str = "acc",
            group: str | None = None, title: str = "", log_x: bool = False) -> Path:
    """Mean ``y`` (error bars: sample std over seeds) against ``x``, one line per ``group``.

    ``rows`` is the per-trial table of ``kdci_ray.results.table``; trials without ``y`` are left
    out. Accuracies in [0, 1] are drawn in percent. Raises ValueError for a missing column."""
    plt = _pyplot()
    for col in [x, y] + ([group] if group else []):
        if col not in rows.columns:
            raise ValueError(f"cannot plot: the results table has no column {col!r} "
                             f"(columns: {', '.join(map(str, rows.columns))})")
    data = rows.dropna(subset=[y])
    if data.empty:
        raise ValueError(f"cannot plot: no trial has a value for {y!r} yet")
    scale = 100.0 if data[y].between(0, 1).all() else 1.0
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=120)
    groups = data.groupby(group, sort=True) if group else [(None, data)]
    for name, part in groups:
        stats = part.groupby(x, sort=True)[y].agg(["mean", "std", "count"])
        ax.errorbar(stats.index.astype(float), stats["mean"] * scale,
                    yerr=stats["std"].fillna(0.0) * scale, marker="o", capsize=3,
                    label=f"{group}={name}" if group else None)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)" if scale == 100.0 else y)
    if title:
        ax.set_title(title, fontsize=10)
    if group:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(rows: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``acc_vs_<key>.png`` for every searched numeric column with at least 3 values (e.g. the
    dictionary size ``kdci.k``), one line per KDCI setting present; nothing otherwise."""
    from kdci_ray.results.columns import searched_columns

    paths = []
    for col in searched_columns(rows):
        values = pd.to_numeric(rows[col], errors="coerce")
        if values.isna().any() or values.nunique() < 3 or rows[col].map(type).eq(bool).any():
            continue
        data = rows.assign(**{col: values})
        group = "kdci" if data["kdci"].nunique() > 1 else None
        positive = bool((values > 0).all())
        spread = values.max() / values.min() if positive else 0.0
        paths.append(plot_vs(data, col, Path(out_dir) / f"acc_vs_{col}.png", group=group,
                             title=f"student accuracy vs {col}", log_x=spread >= 16))
    return paths


# ----------------------------------------------------------------------------- report plots


def _kdci_label(kdci: bool, series: str) -> str:
    name = "KDCI" if kdci else "vanilla"
    return f"{name} · {series}" if series else name


def _lines(data: pd.DataFrame) -> list[tuple[bool, str]]:
    """The (kdci, series) pairs of ``data`` in order of first appearance."""
    pairs = data[["kdci", "series"]].drop_duplicates()
    return [(bool(k), str(s)) for k, s in zip(pairs["kdci"], pairs["series"], strict=True)]


def _draw_curves(ax: Any, part: pd.DataFrame, colors: dict[tuple[bool, str], Any]
                 ) -> dict[str, Any]:
    """Mean ± std of ``eval_acc`` per round for each line of one method; the legend handles."""
    from matplotlib.ticker import MaxNLocator

    handles = {}
    alpha = 0.15 if len(_lines(part)) <= 3 else 0.07  # many overlapping bands: fainter
    for kdci, series in _lines(part):
        line = part[(part["kdci"].astype(bool) == kdci) & (part["series"] == series)]
        stats = line.groupby("round", sort=True)["eval_acc"].agg(["mean", "std"])
        x, mean, std = stats.index, 100 * stats["mean"], 100 * stats["std"].fillna(0.0)
        label = _kdci_label(kdci, series)
        (handles[label],) = ax.plot(x, mean, _KDCI_STYLE[kdci], color=colors[(kdci, series)],
                                    marker="o", markersize=3, linewidth=1.4, label=label)
        ax.fill_between(x, mean - std, mean + std, color=colors[(kdci, series)], alpha=alpha,
                        linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    return handles


def _line_colors(data: pd.DataFrame) -> dict[tuple[bool, str], Any]:
    """Colour per series when there are several (vanilla / KDCI told apart by line style),
    else per KDCI setting."""
    series = list(dict.fromkeys(data["series"].astype(str)))
    if len(series) <= 1:
        return {line: _KDCI_COLOR[line[0]] for line in _lines(data)}
    palette = _pyplot().get_cmap("tab10" if len(series) <= 10 else "tab20")
    return {line: palette(series.index(line[1]) % palette.N) for line in _lines(data)}


def _figure_legend(fig: Any, handles: dict[str, Any]) -> None:
    """One legend for all panels, under them, as many columns as fit the figure's width."""
    width = fig.get_figwidth()
    col_in = 0.6 + 0.075 * max(len(label) for label in handles)
    ncol = max(1, min(len(handles), int(width // col_in)))
    fig.legend(handles.values(), handles.keys(), loc="lower center", fontsize=8, frameon=False,
               ncol=ncol)
    legend_in = 0.22 * math.ceil(len(handles) / ncol) + 0.15
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))


def plot_curves(curves: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Test accuracy against round, one subplot per method, one line per (``kdci``, ``series``).

    ``curves`` is long: one row per (trial, round) with ``method``, ``kdci``, ``series`` (a
    label of the other searched values, ``""`` when none), ``round`` and ``eval_acc`` in [0, 1].
    Lines are the mean over the trials (seeds) of a line at each round, the band ± their sample
    std; vanilla dashed, KDCI solid; colour per series when there are several, else per KDCI
    setting. Methods and lines keep the order of ``curves``. Returns None (and writes nothing)
    when no row has an ``eval_acc``."""
    data = curves.dropna(subset=["eval_acc"]).assign(kdci=lambda f: f["kdci"].astype(bool))
    if data.empty:
        return None
    methods = list(dict.fromkeys(data["method"].astype(str)))
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = _pyplot().subplots(nrows, ncols, dpi=110, squeeze=False, sharey=True,
                                   figsize=(max(7.5, 4.2 * ncols), 3.1 * nrows + 0.6))
    colors = _line_colors(data)
    handles: dict[str, Any] = {}
    for ax, method in zip(axes.flat, methods, strict=False):
        handles.update(_draw_curves(ax, data[data["method"].astype(str) == method], colors))
        ax.set_title(method, fontsize=10)
    for ax in axes[:, 0]:
        ax.set_ylabel("test acc (%)")
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    fig.suptitle(title or "test accuracy over training (mean ± std over seeds)", fontsize=11)
    _figure_legend(fig, handles)
    return _save(fig, path)


def plot_gain(gains: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Bar per row of ``gains`` (columns ``label``, ``gain``, ``err``, all in accuracy units in
    [0, 1], drawn in percentage points), error bar ``err`` where it is not NaN. Returns None
    (and writes nothing) when ``gains`` is empty."""
    if gains.empty:
        return None
    plt = _pyplot()
    longest = max(len(line) for label in gains["label"].astype(str) for line in label.split("\n"))
    per_bar = max(0.75, 0.08 * longest + 0.2)  # inches, so that tick labels do not overlap
    rotate = per_bar * len(gains) > 14.0
    width = min(16.0, max(4.5, (0.75 if rotate else per_bar) * len(gains) + 1.5))
    fig, ax = plt.subplots(figsize=(width, 3.6 + (0.06 * longest if rotate else 0)), dpi=120)
    x = list(range(len(gains)))
    gain = 100 * gains["gain"].astype(float)
    err = 100 * gains["err"].astype(float).fillna(0.0)  # no bar where the spread is unknown
    colors = ["tab:green" if g >= 0 else "tab:red" for g in gain]
    ax.bar(x, gain, color=colors, alpha=0.8, yerr=err, capsize=4, error_kw={"elinewidth": 1})
    for xi, g, e in zip(x, gain, err, strict=True):
        top = g + e if g >= 0 else g - e
        ax.annotate(f"{g:+.2f}", (xi, top), ha="center", va="bottom" if g >= 0 else "top",
                    fontsize=8, xytext=(0, 2 if g >= 0 else -2), textcoords="offset points")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, gains["label"].astype(str), fontsize=8, rotation=30 if rotate else 0,
                  ha="right" if rotate else "center")
    ax.set_ylabel("KDCI gain (pp)")
    ax.margins(y=0.15)
    ax.set_title(title or "KDCI − vanilla, final test acc\n(error bar: std over seeds)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
