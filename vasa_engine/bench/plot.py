"""The renderer's frames per second against batch size, one line per implementation (PNG, needs matplotlib)."""

from __future__ import annotations

import io
import os

from .figures import is_measured
from .files import write_atomic
from .implementations import IMPLEMENTATIONS


def write_plot(report: dict, path: str | os.PathLike) -> str | None:
    """Draws the report's renderer scan into `path`. Returns a reason when there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    scan = report["figures"].get("renderer_scan", {})
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    try:
        drawn = 0
        for name in IMPLEMENTATIONS:
            points = sorted((int(b), f["units_per_s"]) for b, f in scan.get(name, {}).items() if is_measured(f))
            if points:
                dtype = report["settings"]["dtypes"].get(name, "")
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{name} ({dtype})")
                drawn += 1
        if not drawn:
            return "no renderer figure measured: no plot"
        ax.set_xscale("log", base=2)
        batches = sorted({int(b) for runs in scan.values() for b in runs})
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size (frames per call)")
        ax.set_ylabel("frames per second (renderer)")
        out = report["sizes"]["renderer_output"]
        ax.set_title(f"renderer {out}, {report['device']['name']}\n{report['date'][:10]}, commit {report['commit']}",
                     fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, png.getvalue())
    return None
