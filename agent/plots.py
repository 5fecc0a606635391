"""Small matplotlib figures of a run, as PNG bytes: for the viewer's pages and `refloop bench` reports.

Figures are built with `matplotlib.figure.Figure` on the Agg canvas, never through pyplot, so no figure
is left registered in a global state and the viewer's threads cannot see each other's plots. Rendering
is serialised by a lock anyway (matplotlib does not promise thread safety), and the PNG carries no
version metadata, so the same numbers always give the same bytes.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_LOCK = threading.Lock()
_SIZE = (5.0, 3.2)  # inches; at 100 dpi a 500x320 image
_DPI = 100


def _png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes without version metadata (deterministic output)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _lines_png(series: dict[str, list[float]], title: str, ylabel: str, ylim: tuple[float, float] | None) -> bytes:
    """One line per label over rounds 0, 1, 2, ...; 'overall' drawn thick and black so it stands out."""
    with _LOCK:
        fig = Figure(figsize=_SIZE, layout="constrained")
        ax = fig.add_subplot()
        for label, values in series.items():
            style = {"color": "black", "linewidth": 2.5} if label == "overall" else {"linewidth": 1.2}
            ax.plot(range(len(values)), values, marker="o", markersize=3, label=label, **style)
        longest = max((len(v) for v in series.values()), default=0)
        ax.set_xticks(range(longest))
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return _png(fig)


def accuracy_by_round_png(series: dict[str, list[float]], title: str = "accuracy by round") -> bytes:
    """Accuracy at round 0, 1, 2, ... per label (a family, or 'overall'); lists may differ in length."""
    return _lines_png(series, title, "accuracy", (-0.02, 1.02))


def reward_curves_png(series: dict[str, list[float]], title: str = "mean reward by round") -> bytes:
    """Mean reward per round per reward name (e.g. 'verifier', 'judge'); rewards are not bounded."""
    return _lines_png(series, title, "reward", None)


def stop_reasons_png(counts: dict[str, int], title: str = "stop reasons") -> bytes:
    """Horizontal bars, most frequent on top, so long reason names stay readable."""
    with _LOCK:
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        fig = Figure(figsize=(_SIZE[0], max(1.6, 0.9 + 0.3 * len(items))), layout="constrained")
        ax = fig.add_subplot()
        labels = [k for k, _ in items][::-1]
        ax.barh(range(len(items)), [v for _, v in items][::-1], color="#4c72b0")
        ax.set_yticks(range(len(items)), labels, fontsize=8)
        ax.set_xlabel("sessions")
        ax.set_title(title)
        if not items:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return _png(fig)


def save_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes from one of the functions above to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
