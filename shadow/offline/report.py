"""The replay's HTML report: one self-contained file (inline SVG, no script, no network) that a
person reads at a glance: the verdict and its reasons on top, candidates side by side, charts
with labelled axes and units, then the requests where candidates differ most."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import orjson

from consumers.verdict import JudgeConfig, judge
from shadow.offline.charts import PALETTE, bars, hbars, lines

__all__ = ["html_report"]

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;color:#222;max-width:1120px;
padding:0 1em}h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;
border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1.05em;margin:1.4em 0 .3em}
.meta{color:#555}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:4px 9px;text-align:right;vertical-align:top}th{background:#f3f3f3}td.l,th.l{
text-align:left}pre{margin:0;font-size:12px;white-space:pre-wrap;max-width:330px}
svg.chart{background:#fff;border:1px solid #ddd;margin:.3em 0 1em;max-width:100%;height:auto}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.PROMOTE{background:#2e7d32}.control{background:#555}.HOLD{background:#b26a00}.ROLLBACK{background:#c62828}
.fail{color:#c62828;font-weight:600}.pass{color:#2e7d32}.nodata{color:#777}.inconclusive{color:#b26a00}
.empty{color:#777;font-style:italic}.note{color:#555;font-size:13px;max-width:820px}
.diff{font-size:12px;max-width:330px;text-align:left}del{background:#fdd;text-decoration:none}
ins{background:#dfd;text-decoration:none}tr.equal td{color:#777}tr.different td.s,
tr.missing td.s,tr.extra td.s{color:#c62828;font-weight:600}
"""

# What a reader calls each number; the score's own unit depends on the output kind.
_SCORE = {"probs": "JS divergence, bits", "scores": "1 - rank-biased overlap",
          "embedding": "cosine distance", "regression": "absolute error",
          "text": "1 - token F1", "json": "share of fields that differ"}
_MEANS = {"mean_js_divergence": "mean JS divergence (bits)",
          "mean_total_variation": "mean total variation distance",
          "mean_confidence_delta": "mean confidence change (candidate - live)",
          "mean_top1_agree": "top-1 agreement", "mean_topk_overlap": "mean top-k overlap",
          "mean_rbo": "mean rank-biased overlap", "mean_cosine_distance": "mean cosine distance",
          "mean_abs_error": "mean absolute error", "mean_rel_error": "mean relative error",
          "mean_mean_abs_error": "mean of per-vector mean absolute error",
          "mean_exact_match": "exact match (normalised)", "mean_token_f1": "mean token F1",
          "mean_rouge_l": "mean ROUGE-L", "mean_edit_distance": "mean edit distance "
          "(normalised)", "mean_length_ratio": "mean length ratio (candidate / live words)",
          "mean_field_difference_rate": "mean share of fields that differ",
          "mean_fields_compared": "fields compared per answer",
          "mean_fields_different": "fields different per answer",
          "mean_fields_missing": "fields missing per answer",
          "mean_fields_extra": "fields extra per answer"}
_DECADES = [("0", 0.0, 0.0), ("< 0.0001", 0.0, 1e-4), ("0.0001-0.001", 1e-4, 1e-3),
            ("0.001-0.01", 1e-3, 1e-2), ("0.01-0.1", 1e-2, 0.1), ("0.1-1", 0.1, 1.0),
            ("≥ 1", 1.0, float("inf"))]


def _decade(v: float) -> int:
    """The bucket of _DECADES a divergence score falls in: [lo, hi), and 0 on its own."""
    if v <= 0:
        return 0
    return next(i for i, (_, lo, hi) in enumerate(_DECADES) if i and lo <= v < hi)


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _n(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else \
        str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.3g} %"


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.3g} %"


def _clock(ms: float) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H:%M:%S")


def _source(source: dict[str, Any]) -> str:
    if "file" in source:
        return f"Recording {source['file']}"
    if "topic" in source:
        return f"Topic {source['topic']} from {source.get('from')} to {source.get('to')}"
    return "Replayed requests"


def _kind(overall: dict[str, Any]) -> str:
    names = set(overall.get("divergence", {}))
    for metric, kind in (("mean_js_divergence", "probs"), ("mean_rbo", "scores"),
                         ("mean_cosine_distance", "embedding"), ("mean_token_f1", "text"),
                         ("mean_field_difference_rate", "json")):
        if metric in names:
            return kind
    return "regression"


def html_report(result: Any, verdict: JudgeConfig | None = None) -> str:
    r = result.report
    config = verdict or JudgeConfig()
    cids = list(r["candidates"])
    colours = {cid: PALETTE[i % len(PALETTE)] for i, cid in enumerate(cids)}
    models = sorted({m for c in r["candidates"].values() for m in c["models"]})
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>shadowstream replay: {_e(', '.join(cids))}</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1>shadowstream replay report</h1>",
             f"<p class='meta'>{_e(_source(r['source']))}: "
             f"{r['requests']:,} requests, {r['dead_lettered']:,} dead-lettered, windows of "
             f"{r['window_ms'] / 1000:g} s, replayed in {result.timing['seconds']:.1f} s. "
             f"Candidates: {_e(', '.join(cids))}.</p>",
             _verdicts(r, models, config), _alerts(r)]
    for model in models:
        present = [c for c in cids if model in r["candidates"][c]["models"]]
        parts.append(_model_section(r, model, present, colours, result.timing))
    parts.append(_problems(r))
    parts.append(_top_requests(r, cids))
    parts.append("</body></html>")
    return "\n".join(parts)


def _alerts(r: dict[str, Any]) -> str:
    """Every transition of the alert rules, as the live join would have raised them."""
    return _alert_rows(r) + "".join(
        f"<p class='note fail'>Warning: {_e(w)}: it can never fire.</p>"
        for w in r.get("rule_warnings", []))


def _alert_rows(r: dict[str, Any]) -> str:
    rows = [(a["window_start"], cid, model, a) for cid, cand in r["candidates"].items()
            for model, rep in cand["models"].items() for a in rep.get("alerts", [])]
    if not rows:
        return ("<h2 id='alerts'>Alerts</h2><p>None: no alert rule left ok on any window "
                "(the join's rules: the shipped ones, or <code>--rules</code>).</p>")
    body = "".join(
        f"<tr><td class=l>{_e(_clock(start))}</td><td class=l><b>{_e(cid)}</b></td>"
        f"<td class=l>{_e(model)}</td><td class=l>{_e(a['rule'])}</td>"
        f"<td class=l>{_e(a['previous_state'])} &rarr; <b>{_e(a['state'])}</b></td>"
        f"<td class=l>{_e(a['message'])}</td></tr>"
        for start, cid, model, a in sorted(rows, key=lambda t: (t[0], t[1], t[2],
                                                                t[3]["rule"])))
    return ("<h2 id='alerts'>Alerts</h2><table><tr><th class=l>window (UTC)</th>"
            "<th class=l>candidate</th><th class=l>model</th><th class=l>rule</th>"
            f"<th class=l>transition</th><th class=l>what</th></tr>{body}</table>"
            "<p class='note'>The join's alert rules evaluated on each closed window, exactly "
            "as the live join evaluates them.</p>")


def _verdicts(r: dict[str, Any], models: list[str], config: JudgeConfig) -> str:
    rows = []
    for cid, cand in r["candidates"].items():
        for model in models:
            rep = cand["models"].get(model)
            if rep is None:
                continue
            if rep["overall"].get("is_control"):
                rows.append(f"<tr><td class=l><b>{_e(cid)}</b></td><td class=l>{_e(model)}"
                            "</td><td class=l><span class='badge control'>control</span>"
                            "</td><td class=l>The noise floor: a "
                            "second copy of the live model. Not judged; the candidates are "
                            "judged on their disagreement beyond its.</td></tr>")
                continue
            v = judge([w for w in rep["windows"] if "segment" not in w], config)
            checks = "".join(
                f"<li class='{'nodata' if m.outcome == 'no data' else m.outcome}'>"
                f"{_e(m.outcome)}{' (critical)' if m.critical else ''}: {_e(m.reason)}</li>"
                for m in v.results)
            rows.append(f"<tr><td class=l><b>{_e(cid)}</b></td><td class=l>{_e(model)}</td>"
                        f"<td class=l><span class='badge {v.decision}'>{v.decision}</span>"
                        f"</td><td class=l>{_e(v.reason)}<ul>{checks}</ul></td></tr>")
    return ("<h2 id='verdict'>Verdict</h2><table><tr><th class=l>candidate</th>"
            "<th class=l>model</th><th class=l>decision</th><th class=l>why</th></tr>"
            f"{''.join(rows)}</table><p class='note'>The judge of <code>shadow verdict</code> "
            f"with {'its default configuration' if config == JudgeConfig() else '--verdict-config'}"
            f" (at least {config.min_windows} windows of "
            f"{config.min_pairs} pairs; critical metrics decide alone). "
            + ("Candidate latency is the inference time on the machine that replayed "
               "(--latency), against the live latency recorded in production.</p>"
               if r.get("candidate_latency") == "measured" else
               "Candidate latency was left out (replay --latency measures it).</p>"))


def _model_section(r: dict[str, Any], model: str, cids: list[str], colours: dict[str, str],
                   timing: dict[str, Any]) -> str:
    reps = {c: r["candidates"][c]["models"][model] for c in cids}
    overall = {c: rep["overall"] for c, rep in reps.items()}
    kind = _kind(next(iter(overall.values())))
    score = _SCORE[kind]
    mine = {c: colours[c] for c in cids}
    return (f"<h2>{_e(model)}: candidates side by side</h2>"
            + _comparison(overall, cids, score, timing)
            + _window_charts(reps, cids, mine, score, r["window_ms"])
            + _distribution(reps, cids, mine, score)
            + _drift(overall, cids, mine))


def _comparison(overall: dict[str, dict[str, Any]], cids: list[str], score: str,
                timing: dict[str, Any]) -> str:
    def row(label: str, values: list[str]) -> str:
        return f"<tr><td class=l>{_e(label)}</td>{''.join(f'<td>{v}</td>' for v in values)}</tr>"

    o = [overall[c] for c in cids]
    rows = [row("requests", [_n(x["requests"]) for x in o]),
            row("pairs", [_n(x["pairs"]) for x in o]),
            row("coverage (pairs / requests)", [_pct(x.get("coverage")) for x in o]),
            row("disagreement rate", [_pct(x.get("disagreement_rate")) for x in o]),
            *([row("excess over the control (disagreement rate)",
                   ["control" if x.get("is_control") else
                    _signed(x.get("control", {}).get("excess_disagreement_rate"))
                    for x in o])] if any(x.get("is_control") for x in o) else []),
            row("unmatched: no live answer / no candidate answer",
                [f"{x['unmatched_live']:,} / {x['unmatched_shadow']:,}" for x in o]),
            row("dead-lettered", [_n(x["dead_lettered"]) for x in o]),
            row("candidate errors", [_n(x["candidate_errors"]) for x in o])]
    for q in ("p50", "p90", "p99", "max", "mean"):
        rows.append(row(f"divergence {q} ({score})",
                        [_n(x.get("divergence", {}).get(q)) for x in o]))
    names = {k for x in o for k in x.get("divergence", {}) if k.startswith("mean_")}
    fields = [k for k in names if k.startswith("mean_field:")]
    # A JSON model's fields: the most divergent first, at most ten.
    top_fields = sorted(fields, key=lambda k: (-max(x.get("divergence", {}).get(k, 0.0)
                                                    for x in o), k))[:_FIELD_ROWS]
    for k in sorted(names - set(fields)) + top_fields:
        label = (f"{k.removeprefix('mean_field:')} differs (share of pairs)"
                 if k.startswith("mean_field:") else
                 _MEANS.get(k, k.removeprefix("mean_").replace("_", " ")))
        rows.append(row(label, [_n(x.get("divergence", {}).get(k)) for x in o]))
    rows.append(row("engine time per request (ms, this machine)",
                    [f"{timing['candidates'][c]['ms_per_request']:.3f}" for c in cids]))
    head = "".join(f"<th>{_e(c)}</th>" for c in cids)
    return f"<table><tr><th class=l>over the whole replay</th>{head}</tr>{''.join(rows)}</table>"


def _window_charts(reps: dict[str, dict[str, Any]], cids: list[str], colours: dict[str, str],
                   score: str, window_ms: int) -> str:
    def per_window(get: Any) -> dict[str, list[tuple[float, float | None]]]:
        return {c: [(w["window_start"], get(w)) for w in reps[c]["windows"]
                    if "segment" not in w] for c in cids}

    def pct(v: float) -> str:
        return f"{100 * v:.3g} %"

    x_label = "window start (UTC)"
    return (
        "<h3>Per window</h3>"
        + lines("Disagreement rate per window", per_window(lambda w: w.get("disagreement_rate")),
                x_label=x_label, y_label="disagreement rate (%)", x_fmt=_clock, y_fmt=pct,
                colours=colours, gap=window_ms)
        + lines("Divergence p99 per window", per_window(
            lambda w: w.get("divergence", {}).get("p99")), x_label=x_label,
            y_label=f"divergence p99 ({score})", x_fmt=_clock, y_fmt=lambda v: f"{v:.3g}",
            colours=colours, gap=window_ms)
        + lines("Coverage per window", per_window(lambda w: w.get("coverage")),
                x_label=x_label, y_label="coverage: pairs / requests (%)", x_fmt=_clock,
                y_fmt=pct, colours=colours, gap=window_ms))


def _distribution(reps: dict[str, dict[str, Any]], cids: list[str], colours: dict[str, str],
                  score: str) -> str:
    series = {}
    for c in cids:
        hist = reps[c].get("divergence_histogram", [])
        total = sum(n for _, n in hist) or 1
        counts = [0] * len(_DECADES)
        for v, n in hist:
            counts[_decade(v)] += n
        series[c] = [100 * n / total for n in counts]
    return ("<h3>Divergence distribution</h3>"
            + bars("Share of pairs by divergence", [d[0] for d in _DECADES], series,
                   x_label=f"divergence ({score})", y_label="share of compared pairs (%)",
                   y_fmt=lambda v: f"{v:.3g} %", colours=colours))


def _drift(overall: dict[str, dict[str, Any]], cids: list[str],
           colours: dict[str, str]) -> str:
    first = overall[cids[0]].get("drift", {})
    shared = {f: d for f, d in first.items() if not f.startswith("candidate.")}
    numeric = sorted(((f, d["psi"]) for f, d in shared.items() if "psi" in d),
                     key=lambda t: -t[1])
    categorical = sorted(((f, d["js"]) for f, d in shared.items() if "psi" not in d
                          and "js" in d), key=lambda t: -t[1])
    grey = {"replayed requests": "#555"}
    psi_rows: dict[str, dict[str, float]] = {}
    js_rows: dict[str, dict[str, float]] = {}
    for c in cids:
        for f, d in overall[c].get("drift", {}).items():
            if not f.startswith("candidate."):
                continue
            rows, stat = (psi_rows, "psi") if "psi" in d else (js_rows, "js")
            if stat in d:
                rows.setdefault(f.removeprefix("candidate."), {})[c] = d[stat]
    return (
        "<h3>Drift against the reference</h3><p class='note'>Inputs and the live answers, "
        "against the drift reference (the first requests, or a profile): the same for every "
        "candidate. Then each candidate's answers against the live answers to the same "
        "requests: how differently the candidate answers, apart from the inputs' drift.</p>"
        + hbars("Numeric features: population stability index",
                [(f, {"replayed requests": v}) for f, v in numeric[:30]],
                x_label="PSI against the reference (deciles)", y_label="feature",
                x_fmt=lambda v: f"{v:.3g}", colours=grey)
        + hbars("Categorical features: Jensen-Shannon distance",
                [(f, {"replayed requests": v}) for f, v in categorical[:30]],
                x_label="JS distance against the reference (0 to 1)", y_label="feature",
                x_fmt=lambda v: f"{v:.3g}", colours=grey)
        + hbars("Answers, numeric: population stability index", sorted(psi_rows.items()),
                x_label="PSI against the live answers", y_label="answer feature",
                x_fmt=lambda v: f"{v:.3g}", colours=colours)
        + hbars("Answers, categorical: Jensen-Shannon distance", sorted(js_rows.items()),
                x_label="JS distance against the live answers (0 to 1)",
                y_label="answer feature", x_fmt=lambda v: f"{v:.3g}", colours=colours))


def _problems(r: dict[str, Any]) -> str:
    rows = [f"<tr><td class=l>{_e(cid)}</td><td>{n:,}</td><td class=l>{_e(reason)}</td></tr>"
            for cid, cand in r["candidates"].items()
            for reason, n in sorted(cand.get("errors", {}).get("reasons", {}).items(),
                                    key=lambda kv: -kv[1])]
    dead = [f"<tr><td class=l>dead letter</td><td>{n:,}</td><td class=l>{_e(reason)}</td></tr>"
            for reason, n in sorted(r.get("dead_letter_reasons", {}).items(),
                                    key=lambda kv: -kv[1])]
    if not rows and not dead:
        return ("<h2>Errors and dead letters</h2><p>None: every request was answered by "
                "every candidate and decoded.</p>")
    return ("<h2>Errors and dead letters</h2><table><tr><th class=l>candidate</th>"
            f"<th>requests</th><th class=l>reason</th></tr>{''.join(rows + dead)}</table>")


def _top_requests(r: dict[str, Any], cids: list[str]) -> str:
    out = ["<h2>Requests where the candidates differ most</h2>"]
    for cid in cids:
        every = r["candidates"][cid]["top"]
        top = [t for t in every if t["score"] > _ROUNDING][:10]
        if not top:
            largest = f" (the largest divergence is {every[0]['score']:.2g})" if every else ""
            out.append(f"<h3>{_e(cid)}</h3><p>No request differs beyond float rounding"
                       f"{largest}.</p>")
            continue
        rows = "".join(
            f"<tr><td class=l>{_e(t['request_id'])}</td><td>{t['score']:.4g}</td>"
            f"<td>{'yes' if t['disagree'] else 'no'}</td>"
            f"<td class=l><pre>{_e(_j(t['inputs']))}</pre></td>"
            + (_side_by_side(t) if "diff" in t else
               f"<td class=l><pre>{_e(_j(t['live']))}</pre></td>"
               f"<td class=l><pre>{_e(_j(t['candidate']))}</pre></td>")
            + "</tr>" for t in top)
        out.append(f"<h3>{_e(cid)}</h3><table><tr><th class=l>request</th><th>divergence</th>"
                   f"<th>disagree</th><th class=l>inputs</th><th class=l>live answer</th>"
                   f"<th class=l>candidate answer</th></tr>{rows}</table>")
    return "".join(out)


def _side_by_side(t: dict[str, Any]) -> str:
    """Two text answers with the words that differ marked, or two JSON answers as a table of
    their fields (those that differ first)."""
    if t["live"]["kind"] == "text":
        live, cand = [], []
        for tag, a, b in t["diff"]:
            if tag == "equal":
                live.append(_e(a))
                cand.append(_e(b))
                continue
            if a:
                live.append(f"<del>{_e(a)}</del>")
            if b:
                cand.append(f"<ins>{_e(b)}</ins>")
        return (f"<td class='l diff'>{' '.join(live)}</td>"
                f"<td class='l diff'>{' '.join(cand)}</td>")
    rows = "".join(
        f"<tr class='{_e(status)}'><td class=l>{_e(path)}</td><td class='l s'>{_e(status)}"
        f"</td><td class=l>{_e(_j(a) if status != 'extra' else '')}</td>"
        f"<td class=l>{_e(_j(b) if status != 'missing' else '')}</td></tr>"
        for path, status, a, b in t["diff"])
    return (f"<td class='l diff' colspan=2><table><tr><th class=l>field</th>"
            f"<th class=l></th><th class=l>live</th><th class=l>candidate</th></tr>{rows}"
            "</table></td>")


_FIELD_ROWS = 10
_ROUNDING = 1e-9  # divergences below this are float rounding, not a different answer


def _j(v: Any) -> str:
    return orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
