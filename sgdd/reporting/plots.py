"""PNG plots of an eval report (matplotlib, Agg backend; ``pip install 'sgdd[report]'``).

Every function returns the path it wrote, or None when there is nothing to plot (or no
matplotlib), so the report links only the pictures that exist.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sgdd.reporting.labels import label
from sgdd.decoding.trajectory import TokenTrajectory

CHARS_PER_LINE = 72  # wrap long sequences in the trajectory picture


def plots_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def quality_vs_steps(results: list[dict], metric: str, path: Path) -> Path | None:
    """``metric`` against steps, one line per combination of the other swept settings."""
    swept = [r for r in results if "steps" in r["changes"] and metric in r["metrics"]]
    if len({r["changes"]["steps"] for r in swept}) < 2 or not plots_available():
        return None
    groups: dict[str, list[tuple[int, float]]] = {}
    for r in swept:
        rest = {k: v for k, v in r["changes"].items() if k != "steps"}
        groups.setdefault(label(rest), []).append((r["changes"]["steps"], r["metrics"][metric]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in groups.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("steps (most forward passes per sequence)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs decoding steps")
    ax.grid(alpha=0.3)
    if len(groups) > 1 or next(iter(groups)) != "default":
        ax.legend(fontsize=8)
    return _save(fig, path)


def quality_vs_speed(results: list[dict], metric: str, path: Path, unit: str = "sentences") -> Path | None:
    """``metric`` against throughput, one labelled point per setting."""
    points = [r for r in results if metric in r["metrics"]]
    if len(points) < 2 or not plots_available():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in points:
        x, y = r["speed"]["sequences_per_s"], r["metrics"][metric]
        ax.scatter([x], [y])
        ax.annotate(r["setting"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{unit} per second")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs speed")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _lines(traj: TokenTrajectory) -> list[list[int]]:
    """Indices of the shown tokens, wrapped into lines of about CHARS_PER_LINE characters."""
    lines, current, used = [], [], 0
    for i, tok in enumerate(traj.tokens):
        width = max(len(tok), 2) + 1
        if current and used + width > CHARS_PER_LINE:
            lines.append(current)
            current, used = [], 0
        current.append(i)
        used += width
    return lines + ([current] if current else [])


def trajectory_figure(samples: list[tuple[str, TokenTrajectory]], path: Path) -> Path | None:
    """Each sample's tokens in order, each box coloured by the step that committed it (number
    below the box): the picture of which token was committed when."""
    if not samples or not plots_available():
        return None
    plt = _pyplot()
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    steps = max(max(t.steps for _, t in samples), 1)
    norm, cmap = Normalize(1, max(steps, 2)), colormaps["viridis"]
    wrapped = [(title, traj, _lines(traj)) for title, traj in samples]
    height = sum(1 + 1.2 * len(lines) for _, _, lines in wrapped)
    fig, ax = plt.subplots(figsize=(12, 0.5 * height + 0.6))
    y = 0.0
    for title, traj, lines in wrapped:
        ax.text(0, y, title, fontsize=9, fontweight="bold", va="top")
        y -= 0.8
        for line in lines:
            x = 0.0
            for i in line:
                tok, at = traj.tokens[i], traj.committed_at[i]
                width = max(len(tok), 2) * 0.9 + 0.6
                colour = cmap(norm(at))
                ax.add_patch(Rectangle((x, y - 0.6), width, 0.6, facecolor=colour, edgecolor="white"))
                dark = sum(colour[:3]) < 1.5
                ax.text(x + width / 2, y - 0.3, tok, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
                ax.text(x + width / 2, y - 0.75, str(at), ha="center", va="top", fontsize=6, color="0.35")
                x += width
            if line is lines[-1] and traj.hidden_tail:
                steps_note = f", steps {traj.tail_steps[0]}-{traj.tail_steps[1]}" if traj.tail_steps else ""
                ax.text(x + 0.4, y - 0.3, f"+ {traj.hidden_tail} padding{steps_note}", va="center", fontsize=7,
                        color="0.4", style="italic")
            y -= 1.2
        y -= 0.2
    ax.set_xlim(-0.2, CHARS_PER_LINE * 0.95)
    ax.set_ylim(y, 0.4)
    ax.axis("off")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="step at which the token was committed",
                       fraction=0.025, pad=0.01)
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return _save(fig, path)
