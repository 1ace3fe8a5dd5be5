"""The experiment report: one self-contained HTML file, its matplotlib figures embedded as PNG.

    metric per day    a line per arm with its 95% band, one panel per metric
    differences       each arm against the control, bars with their intervals, one panel per metric
    latency           the per-stage distribution of the pipeline's timings, per arm
    example pages     the first pages each arm served: the shop's item images with channel and reason

plus the tables of the CLI and the note that this is a simulation.

    >>> write_report(result, "out/experiment/report.html", world="out/tiny")    # doctest: +SKIP
"""
from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from pathlib import Path

import numpy as np
import polars as pl

from homefeed.experiment.metrics import LOWER_IS_BETTER, METRICS

STAGES = ("state", "recall", "rank", "mechanism", "total")
EXAMPLE_ITEMS = 12  # items drawn per example page (the first slot's)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _horizontal() -> dict:
    """Horizontal boxplots: `orientation` since matplotlib 3.10, `vert` before."""
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _grid(n: int, cols: int = 3):
    plt = _plt()
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def _metrics_of(result: dict) -> list[str]:
    first = next(iter(result["metrics"].values()))
    return [m for m in METRICS if m in first]


def daily_figure(result: dict) -> str:
    metrics = _metrics_of(result)
    fig, axes = _grid(len(metrics))
    for ax, m in zip(axes, metrics):
        for arm, daily in result["daily"].items():
            rows = daily[m]
            days = [r["day"] + 1 for r in rows]
            ax.plot(days, [r["value"] for r in rows], marker="o", label=arm)
            ax.fill_between(days, [r["low"] for r in rows], [r["high"] for r in rows], alpha=0.2)
        ax.set_title(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""), fontsize=10)
        ax.set_xlabel("day")
        ax.set_xticks(sorted({r["day"] + 1 for d in result["daily"].values() for r in d[m]}))
    axes[0].legend(fontsize=7)
    return _png(fig)


def difference_figure(result: dict) -> str | None:
    vs = result.get("vs_control") or {}
    if not vs:
        return None
    metrics = _metrics_of(result)
    fig, axes = _grid(len(metrics))
    arms = list(vs)
    for ax, m in zip(axes, metrics):
        val = np.array([vs[a][m]["value"] for a in arms]) * 100
        lo = np.array([vs[a][m]["low"] for a in arms]) * 100
        hi = np.array([vs[a][m]["high"] for a in arms]) * 100
        colors = ["tab:green" if vs[a][m]["significant"] and ((v > 0) != (m in LOWER_IS_BETTER)) else
                  "tab:red" if vs[a][m]["significant"] else "tab:gray" for a, v in zip(arms, val)]
        ax.barh(arms, val, xerr=np.nan_to_num(np.vstack([val - lo, hi - val])), color=colors, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{m}: % vs {result['control']}", fontsize=10)
        ax.tick_params(labelsize=8)
    return _png(fig)


def latency_figure(result: dict) -> str:
    lat = result["latency_ms"]
    stages = [s for s in STAGES if any(s in v for v in lat.values())]
    fig, axes = _grid(len(stages))
    for ax, s in zip(axes, stages):
        arms = [a for a in lat if s in lat[a]]
        ax.boxplot([np.maximum(lat[a][s]["values"], 1e-3) for a in arms], showfliers=False, **_horizontal())
        ax.set_yticks(range(1, len(arms) + 1), arms, fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(_plt().NullFormatter())  # minor labels collide on short log ranges
        ax.set_title(f"{s} (ms)", fontsize=10)
    return _png(fig)


def _image_table(world: Path) -> tuple[dict[str, int], np.ndarray | None]:
    """Raw item id -> row of images.npy, and the images (None when the shop has none)."""
    items_path, npy = world / "items.parquet", world / "images.npy"
    if not (items_path.exists() and npy.exists()):
        return {}, None
    items = pl.read_parquet(items_path, columns=["item_id", "image"])
    rows = {str(i): int(img.split(":", 1)[1]) for i, img in items.iter_rows() if img and str(img).startswith("npy:")}
    return rows, np.load(npy, mmap_mode="r")


def example_figure(arm: str, examples: list[dict], world: Path) -> str | None:
    rows, images = _image_table(world)
    if not examples:
        return None
    plt = _plt()
    n = min(EXAMPLE_ITEMS, max(len(e["items"]) for e in examples))
    fig, axes = plt.subplots(len(examples), n, figsize=(1.35 * n, 2.5 * len(examples)), squeeze=False)
    for r, page in enumerate(examples):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(page["items"]):
                continue
            it = page["items"][c]
            if images is not None and it["item_id"] in rows:
                ax.imshow(images[rows[it["item_id"]]], interpolation="nearest")
            ax.set_title(f"{it['item_id']}\n{it['channel']}", fontsize=7)
            ax.text(0.5, -0.04, textwrap.fill(it["reason"], 22), transform=ax.transAxes, ha="center", va="top", fontsize=5)
        axes[r, 0].text(-0.2, 0.5, f"user {page['user']}\ntemplate {page['template']}", fontsize=7,
                        transform=axes[r, 0].transAxes, ha="right", va="center")
    fig.suptitle(f"{arm}: first pages served (slot {examples[0]['items'][0]['slot'] if examples[0]['items'] else ''})",
                 fontsize=9)
    return _png(fig)


def fmt(v: float, pct: bool = False) -> str:
    """A value for a table: 4 significant digits, or a signed percentage; '-' for none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 100:+.1f}%" if pct else f"{v:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def tables_html(result: dict) -> str:
    metrics = _metrics_of(result)
    rows = [[html.escape(a)] + [f"{fmt(v[m]['value'])} <small>[{fmt(v[m]['low'])}, {fmt(v[m]['high'])}]</small>"
                                for m in metrics] for a, v in result["metrics"].items()]
    out = "<h2>Metrics (95% bootstrap interval over users)</h2>" + _table(["arm", *metrics], rows)
    for title, diffs in ((f"Against {result['control']}", result.get("vs_control")),
                         ("Compared arms", result.get("pairs"))):
        if not diffs:
            continue
        rows = [[html.escape(a)] + [f"{'<b>' if d[m]['significant'] else ''}{fmt(d[m]['value'], True)}"
                                    f"{'</b>' if d[m]['significant'] else ''} <small>[{fmt(d[m]['low'], True)}, "
                                    f"{fmt(d[m]['high'], True)}]</small>" for m in metrics] for a, d in diffs.items()]
        out += (f"<h2>{html.escape(title)} (relative; bold: the interval excludes 0)</h2>"
                + _table(["arm", *metrics], rows))
    rows = [[html.escape(a), str(v["users"]), str(v["visits"]), str(v["pages"]), f"{v['visits_per_s']:.1f}",
             html.escape(v["description"])] for a, v in result["arms"].items()]
    out += "<h2>Arms</h2>" + _table(["arm", "users", "visits", "pages", "visits/s (in process)", "what"], rows)
    return out


def write_report(result: dict, out: str | Path, *, world: str | Path | None = None) -> Path:
    """Write the HTML report of `result` (from `run_experiment`); item images are read from `world`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    world = Path(world or result["world"])
    figures = [("Metrics per day", daily_figure(result)), ("Differences", difference_figure(result)),
               ("Latency per stage", latency_figure(result))]
    figures += [(f"Example pages: {a}", example_figure(a, ex, world)) for a, ex in result["examples"].items()]
    imgs = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{png}'>"
                   for t, png in figures if png)
    title = f"homefeed experiment: {', '.join(result['arms'])}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;font-size:13px}}img{{max-width:100%;display:block}}
.note{{background:#fff4d6;padding:0.8em;border-left:4px solid #e0a800}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>world <code>{html.escape(str(result['world']))}</code>, {result['days']} day(s), {result['users']} users,
retrain {html.escape(result['retrain'])}, seed {result['seed']}, control <b>{html.escape(result['control'])}</b>,
{result['n_boot']} bootstrap replicates, {result['seconds']['total']:.0f} s in all.</p>
<p class="note">{html.escape(result['note'])}</p>
{tables_html(result)}
{imgs}
<script>/* for headless checks: how many figures decoded */ window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  document.body.dataset.loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + imgs.length; }});
</script>
</body></html>"""
    out.write_text(page)
    return out
