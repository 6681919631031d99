"""Plots of a sweep's results (PNG, matplotlib's non-interactive Agg backend)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_vs(rows: pd.DataFrame, x: str, path: str | Path, y: str = "acc",
            group: str | None = None, title: str = "", log_x: bool = False) -> Path:
    """Mean ``y`` (error bars: sample std over seeds) against ``x``, one line per ``group``.

    ``rows`` is the per-trial table of ``kdci_ray.tune.table``; trials without ``y`` are left
    out. Accuracies in [0, 1] are drawn in percent. Raises ValueError for a missing column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(rows: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``acc_vs_<key>.png`` for every searched numeric column with at least 3 values (e.g. the
    dictionary size ``kdci.k``), one line per KDCI setting present; nothing otherwise."""
    from kdci_ray.tune.table import searched_columns

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
