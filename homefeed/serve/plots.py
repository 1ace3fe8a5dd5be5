"""Charts for the console's bundle view as inline SVG, drawn from the manifest's metrics and the live counters.

Inline SVG rather than matplotlib: a chart is a few dozen elements, built in well under a millisecond
per request with no extra dependency, no font cache to build on first use and no process-wide
backend state shared between the server's threads; it scales crisply to any screen (a phone
included), and the browser styles and tests it like the rest of the page.

    >>> svg = line_chart({"itemcf": [(20, 0.58), (50, 0.66), (200, 0.80)]}, title="HitRate@K", x_label="K")
    >>> svg.startswith("<svg")
    True
"""
from __future__ import annotations

import math
import re
from html import escape

W, H = 360, 220  # viewBox; the page scales it to the column width
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 26, 34
LEGEND_COLUMNS = 4
COLOURS = ("#2f6db5", "#d9622b", "#3a9a5b", "#b23a48", "#7a5cb8", "#c49a1a", "#3c8d93", "#8a6d3b", "#5f6b7a", "#d0569b")


def _svg(body: list[str], title: str, label: str, extra_h: int = 0) -> str:
    return (f'<svg class="chart" data-chart="{escape(label)}" viewBox="0 0 {W} {H + extra_h}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            f'<text x="{W / 2}" y="16" class="chart-title" text-anchor="middle">{escape(title)}</text>{"".join(body)}</svg>')


def _axes(x_label: str, y_label: str, y_max: float, y_ticks: int = 4) -> list[str]:
    """Frame, horizontal grid lines with their values, and the axis labels."""
    out = [f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" class="axis"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" class="axis"/>']
    for i in range(1, y_ticks + 1):
        v = y_max * i / y_ticks
        y = _y(v, y_max)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">{_fmt(v)}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 4}" text-anchor="middle" class="label">{escape(x_label)}</text>')
    out.append(f'<text x="10" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" class="label" '
               f'transform="rotate(-90 10 {(TOP + H - BOTTOM) / 2})">{escape(y_label)}</text>')
    return out


def _y(v: float, y_max: float) -> float:
    return H - BOTTOM - (H - TOP - BOTTOM) * (v / y_max if y_max > 0 else 0.0)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _nice_max(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above v (a round top for the y axis)."""
    if not v > 0 or not math.isfinite(v):
        return 1.0
    base = 10 ** math.floor(math.log10(v))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= v * 0.999)


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, x_label: str = "", y_label: str = "",
               log_x: bool = False, y_max: float | None = None, diagonal: bool = False, label: str = "") -> str:
    """One polyline with markers per series, a legend, and (diagonal=True) the y = x reference line."""
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    if not points:
        return empty_chart(title, "no values recorded", label=label)
    fx = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    xs = [fx(x) for x, _ in points]
    lo, hi = min(xs), max(xs)
    top = y_max if y_max is not None else _nice_max(max(y for _, y in points))
    if diagonal:
        lo, hi = 0.0, top

    def px(x: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * ((fx(x) - lo) / (hi - lo) if hi > lo else 0.5)

    body = _axes(x_label, y_label, top)
    if diagonal:
        body.append(f'<line x1="{px(0):.1f}" y1="{_y(0, top):.1f}" x2="{px(top):.1f}" y2="{_y(top, top):.1f}" class="ref"/>')
    for x in sorted({x for x, _ in points}):
        if not diagonal:
            body.append(f'<text x="{px(x):.1f}" y="{H - BOTTOM + 12}" text-anchor="middle" class="tick">{_fmt(x)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [(x, y) for x, y in pts if math.isfinite(y)]
        coords = " ".join(f"{px(x):.1f},{_y(min(y, top), top):.1f}" for x, y in pts)
        body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8" class="series"/>')
        body += [f'<circle cx="{px(x):.1f}" cy="{_y(min(y, top), top):.1f}" r="2.4" fill="{colour}">'
                 f'<title>{escape(name)}: {_fmt(x)} -&gt; {y:.4f}</title></circle>' for x, y in pts]
        body.append(f'<text x="{LEFT + (i % LEGEND_COLUMNS) * 78}" y="{H + 8 + (i // LEGEND_COLUMNS) * 12}" '
                    f'class="legend" fill="{colour}">&#9632; {escape(name)}</text>')
    rows = -(-len(series) // LEGEND_COLUMNS) if len(series) > 1 else 0  # a legend only when there are lines to tell apart
    return _svg(body if rows else [b for b in body if 'class="legend"' not in b], title, label or title, 12 * rows)


def bar_chart(bars: list[tuple[str, float]], *, title: str, y_label: str = "", y_max: float | None = None,
              label: str = "") -> str:
    """Vertical bars with their values on top."""
    bars = [(name, v) for name, v in bars if v is not None and math.isfinite(v)]
    if not bars:
        return empty_chart(title, "no values recorded", label=label)
    top = y_max if y_max is not None else _nice_max(1.1 * max(v for _, v in bars))  # room for the value labels
    body = _axes("", y_label, top)
    step = (W - LEFT - RIGHT) / len(bars)
    for i, (name, v) in enumerate(bars):
        x, y = LEFT + i * step + step * 0.15, _y(max(v, 0.0), top)
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{H - BOTTOM - y:.1f}" '
                    f'fill="{COLOURS[i % len(COLOURS)]}" class="bar"><title>{escape(name)}: {v:.4g}</title></rect>')
        body.append(f'<text x="{x + step * 0.35:.1f}" y="{y - 3:.1f}" text-anchor="middle" class="tick">{_fmt(v)}</text>')
        body.append(f'<text x="{x + step * 0.35:.1f}" y="{H - BOTTOM + 12}" text-anchor="middle" class="tick">'
                    f'{escape(name[:14])}</text>')
    return _svg(body, title, label or title)


def empty_chart(title: str, note: str, *, label: str = "") -> str:
    return _svg([f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="label">{escape(note)}</text>'],
                title, label or title)


# --- the bundle's offline metrics -----------------------------------------------------------------
_AT_K = re.compile(r"^hitrate@(\d+)$")


def hitrate_curves(recall_metrics: dict) -> str:
    """HitRate@K against K for every channel and the merge (recall part metrics: channels.{name}.hitrate@K)."""
    rows = dict(recall_metrics.get("channels", {}))
    if "merged" in recall_metrics:
        rows["merged"] = recall_metrics["merged"]
    series = {name: sorted((int(m.group(1)), float(v)) for key, v in row.items() if (m := _AT_K.match(key)))
              for name, row in rows.items() if isinstance(row, dict)}
    return line_chart({k: v for k, v in series.items() if v}, title="Recall: HitRate@K per channel (test days)",
                      x_label="K (log scale)", y_label="HitRate", log_x=True, y_max=1.0, label="hitrate")


def auc_bars(rank_metrics: dict) -> str:
    """AUC of the served model (valid, test, per-user GAUC) beside the baselines when the part recorded them."""
    preset = rank_metrics.get("preset", "model")
    bars = [(f"{preset} valid", rank_metrics.get("valid_auc")), (f"{preset} test", rank_metrics.get("auc")),
            (f"{preset} GAUC", rank_metrics.get("gauc"))]
    for name, row in (rank_metrics.get("baselines") or {}).items():
        bars.append((str(name), (row or {}).get("auc")))
    return bar_chart(bars, title="Rank: AUC per model", y_label="AUC", y_max=1.0, label="auc")


def calibration_curve(rank_metrics: dict) -> str:
    """Observed click rate against predicted CTR per bin (`calibration_bins` when the part recorded them),
    else the one point (mean predicted, observed rate) the metrics hold."""
    bins = rank_metrics.get("calibration_bins") or {}
    pts = [(p, o) for p, o in zip(bins.get("predicted", []), bins.get("observed", [])) if p is not None and o is not None]
    title = "Rank: calibration (test days)"
    if not pts and rank_metrics.get("predicted_mean") is not None and rank_metrics.get("observed_rate") is not None:
        pts, title = [(rank_metrics["predicted_mean"], rank_metrics["observed_rate"])], "Rank: calibration (mean only)"
    top = _nice_max(max([v for pt in pts for v in pt], default=1.0))
    return line_chart({"observed": pts}, title=title, x_label="predicted CTR", y_label="observed CTR",
                      y_max=top, diagonal=True, label="calibration")


# --- live counters ------------------------------------------------------------------------------
def counters(registry) -> dict[str, list[tuple[dict, float]]]:
    """A Prometheus registry's samples by sample name: {name: [(labels, value), ...]}."""
    out: dict[str, list[tuple[dict, float]]] = {}
    for metric in registry.collect():
        for s in metric.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def latency_histogram(samples: dict[str, list[tuple[dict, float]]], stage: str = "total") -> str:
    """Requests per latency bucket of one pipeline stage (from the cumulative `homefeed_stage_seconds` buckets,
    summed over the experiment arms)."""
    by_le: dict[float, float] = {}
    for lab, v in samples.get("homefeed_stage_seconds_bucket", []):
        if lab.get("stage") == stage:
            by_le[float(lab["le"])] = by_le.get(float(lab["le"]), 0.0) + v
    cumulative = sorted(by_le.items())
    bars, below = [], 0.0
    for le, v in cumulative:
        name = f"≤{le * 1000:g}ms" if math.isfinite(le) else "more"
        bars.append((name, v - below))
        below = v
    if not bars or below == 0:
        return empty_chart(f"Latency of '{stage}' since start", "no requests yet", label="latency")
    return bar_chart(bars, title=f"Latency of '{stage}' since start (requests per bucket)", label="latency")
