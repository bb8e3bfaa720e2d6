"""The replay's HTML report: one self-contained file, plots drawn as inline SVG (no network)."""

from __future__ import annotations

import html
import math
from typing import Any

import orjson

__all__ = ["html_report"]

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td.l{text-align:left}pre{margin:0;font-size:12px;
white-space:pre-wrap;max-width:420px}svg{background:#fafafa;border:1px solid #ddd}
"""


def html_report(result: Any) -> str:
    r = result.report
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>shadowstream replay"
             f"</title><style>{_STYLE}</style></head><body>",
             "<h1>shadowstream replay</h1>",
             f"<p>source {_e(orjson.dumps(r['source']).decode())}: {r['requests']} requests, "
             f"{r['dead_lettered']} dead-lettered, windows of {r['window_ms'] / 1000:g} s; "
             f"replayed in {result.timing['seconds']:.1f} s.</p>"]
    for cid, cand in r["candidates"].items():
        timing = result.timing["candidates"][cid]
        for model, rep in cand["models"].items():
            parts.append(_model_section(cid, model, rep, timing))
        parts.append(_top_section(cid, cand["top"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _model_section(cid: str, model: str, rep: dict[str, Any], timing: dict[str, Any]) -> str:
    o = rep["overall"]
    lat = o.get("latency", {})
    rows = [("requests", o["requests"]), ("pairs", o["pairs"]),
            ("unmatched (live / shadow)", f"{o['unmatched_live']} / {o['unmatched_shadow']}"),
            ("dead-lettered", o["dead_lettered"]), ("candidate errors", o["candidate_errors"]),
            ("coverage", _n(o.get("coverage"))), ("disagreement rate",
                                                   _n(o.get("disagreement_rate"))),
            *((f"divergence {k}", _n(v)) for k, v in o.get("divergence", {}).items()),
            ("live latency p50 / p99 (ms)", f"{_n(lat.get('live_p50'))} / "
                                            f"{_n(lat.get('live_p99'))}"),
            ("candidate engine time (ms per request, this machine)",
             f"{timing['ms_per_request']:.3f}")]
    table = "".join(f"<tr><td class=l>{_e(k)}</td><td>{_e(str(v))}</td></tr>" for k, v in rows)
    windows = [w for w in rep["windows"] if "segment" not in w]
    series = {name: [(w["window_start"], w.get(name)) for w in windows]
              for name in ("disagreement_rate", "coverage")}
    series["divergence p99"] = [(w["window_start"], w.get("divergence", {}).get("p99"))
                                for w in windows]
    drift = sorted(((f, d["psi"]) for f, d in o.get("drift", {}).items() if "psi" in d),
                   key=lambda t: -t[1])
    hist = rep.get("divergence_histogram", [])
    return (f"<h2>{_e(cid)} on {_e(model)}</h2><table>{table}</table>"
            f"<h3>Divergence distribution (count per sketch bucket, log scale of score)</h3>"
            f"{_bars([(f'{v:.3g}', n) for v, n in hist], 'requests')}"
            f"<h3>Per window</h3>{_lines(series)}"
            f"<h3>Drift per feature (PSI against the reference; 0.2 is the alert default)</h3>"
            f"{_bars(drift, 'PSI')}")


def _top_section(cid: str, top: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td class=l>{_e(t['request_id'])}</td><td>{t['score']:.4g}</td>"
        f"<td>{'yes' if t['disagree'] else 'no'}</td>"
        f"<td class=l><pre>{_e(_j(t['inputs']))}</pre></td>"
        f"<td class=l><pre>{_e(_j(t['live']))}</pre></td>"
        f"<td class=l><pre>{_e(_j(t['candidate']))}</pre></td></tr>" for t in top)
    return (f"<h3>Most divergent requests of {_e(cid)}</h3><table><tr><th>request</th>"
            f"<th>score</th><th>disagree</th><th>inputs</th><th>live answer</th>"
            f"<th>candidate answer</th></tr>{rows}</table>")


def _bars(items: list[tuple[str, float]], unit: str, width: int = 900) -> str:
    if not items:
        return "<p>(no data)</p>"
    items = items[:60]
    top = max(v for _, v in items) or 1.0
    bar_w = width / len(items)
    h = 160
    rects = []
    for i, (label, v) in enumerate(items):
        bh = h * v / top
        rects.append(f"<rect x='{i * bar_w + 1:.1f}' y='{h - bh + 10:.1f}' "
                     f"width='{max(bar_w - 2, 1):.1f}' height='{bh:.1f}' fill='#4a7ab7'>"
                     f"<title>{_e(str(label))}: {v:.4g} {unit}</title></rect>")
    return (f"<svg width='{width}' height='{h + 20}' role='img'>{''.join(rects)}"
            f"<text x='4' y='12' font-size='11'>max {top:.4g} {unit}</text></svg>")


def _lines(series: dict[str, list[tuple[int, float | None]]], width: int = 900) -> str:
    points = [(x, y) for s in series.values() for x, y in s if y is not None]
    if not points:
        return "<p>(no data)</p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y1 = max(max(p[1] for p in points), 1e-9)
    h, colours = 180, ("#c0392b", "#27ae60", "#8e44ad")
    paths, legend = [], []
    for (name, s), colour in zip(series.items(), colours, strict=False):
        xy = [(10 + (width - 20) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5),
               h + 10 - h * y / y1) for x, y in s if y is not None and math.isfinite(y)]
        if xy:
            d = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in
                         enumerate(xy))
            paths.append(f"<path d='{d}' fill='none' stroke='{colour}' stroke-width='2'/>")
            legend.append(f"<tspan fill='{colour}'>{_e(name)} </tspan>")
    return (f"<svg width='{width}' height='{h + 30}' role='img'>{''.join(paths)}"
            f"<text x='10' y='{h + 26}' font-size='12'>{''.join(legend)} (max {y1:.4g})</text>"
            f"</svg>")


def _j(v: Any) -> str:
    return orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()


def _n(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _e(s: str) -> str:
    return html.escape(s, quote=True)
