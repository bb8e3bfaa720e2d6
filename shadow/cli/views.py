"""Tables and panels the commands print: what a person reads, built from plain results."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def replay_table(result: Any) -> Group:
    """One row per candidate and model, and the reasons behind errors and dead letters."""
    reports = result.report["candidates"]
    # With a control, each candidate's disagreement beyond it (what rules and verdicts judge).
    controlled = any(rep["overall"].get("is_control") for cand in reports.values()
                     for rep in cand["models"].values())
    table = Table("candidate", "model", "requests", "pairs", "coverage", "disagree rate",
                  *(["excess over control"] if controlled else []),
                  "div p50", "div p99", "max PSI", "errors", "dead-lettered",
                  "engine ms/req", title="replay", title_justify="left")
    notes: list[Text] = []
    for cid, cand in reports.items():
        timing = result.timing["candidates"][cid]
        for model, rep in cand["models"].items():
            o = rep["overall"]
            psi = max((d["psi"] for d in o.get("drift", {}).values() if "psi" in d),
                      default=None)
            excess = ("control" if o.get("is_control") else
                      fmt((o.get("control") or {}).get("excess_disagreement_rate")))
            table.add_row(f"{cid} (control)" if o.get("is_control") else cid, model,
                          str(o["requests"]), str(o["pairs"]),
                          fmt(o.get("coverage")), fmt(o.get("disagreement_rate")),
                          *([excess] if controlled else []),
                          fmt(o["divergence"].get("p50")), fmt(o["divergence"].get("p99")),
                          fmt(psi), str(o["candidate_errors"]), str(o["dead_lettered"]),
                          f"{timing['ms_per_request']:.3f}")
            fired = {}
            for a in rep.get("alerts", []):
                if a["state"] == "firing":
                    fired.setdefault(a["rule"], a["window_start"])
            if fired:
                notes.append(Text(f"{cid} on {model}: alerts firing: " + ", ".join(
                    f"{rule} (from the window of {_hms(start)} UTC)"
                    for rule, start in fired.items())))
        errors = cand.get("errors", {})
        if errors.get("count"):
            notes.append(Text(f"{cid}: {errors['count']} requests answered with an error: "
                              f"{_reasons(errors['reasons'])}"))
    for warning in result.report.get("rule_warnings", []):
        notes.append(Text(f"warning: {warning}: it can never fire", style="yellow"))
    reasons = result.report.get("dead_letter_reasons")
    if reasons:
        notes.append(Text(f"dead letters ({result.report['dead_lettered']}): "
                          f"{_reasons(reasons)}"))
    return Group(table, *notes)


def _hms(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _reasons(counts: dict[str, int], n: int = 3) -> str:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return "; ".join(f"{c} x {r}" for r, c in top)


def demo_view(t: dict[str, Any]) -> Table:
    table = Table("", "", title="shadowstream demo", title_justify="left", show_header=False)
    if not t:
        table.add_row("starting", "stack, topics, join app, worker...")
        return table
    rows = [("elapsed", f"{t['elapsed_s']:.0f} s"),
            ("requests mirrored", f"{t['sent']} ({t['rate']:.0f}/s)"),
            ("answered by the candidate", str(t["answered"])),
            ("pairs joined", str(t["pairs"])), ("windows closed", str(t["windows"])),
            ("disagreement (last window)", fmt(t["disagreement"])),
            ("largest PSI (last window)", fmt(t["psi_max"])),
            ("publish() p99", f"{fmt(t['publish_p99_us'])} us"),
            ("firing", ", ".join(t["firing"]) or "-")]
    rows += [("alert", a) for a in t["alerts"]]
    for k, v in rows:
        table.add_row(k, v)
    return table


def demo_summary(d: dict[str, Any]) -> Group:
    verdict = Text("pipeline behaved as designed", "bold green") if d["ok"] else \
        Text("pipeline did NOT behave as designed: " + "; ".join(d["reasons"]), "bold red")
    table = Table("what", "value", title="summary", title_justify="left")
    for key in ("scenario", "seconds", "requests", "pairs", "unmatched", "dead_lettered",
                "windows", "turn_at", "shift_at", "dropped"):
        value = d.get(key)
        if value in (None, ""):
            continue  # turn_at and shift_at are the fraud scenario's
        table.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
    for cid, c in d.get("candidates", {}).items():
        excess = c.get("excess_over_control")
        table.add_row(f"{c['role']} {cid}",
                      f"disagreement {fmt(c.get('disagreement_rate'))}"
                      + (f", excess over the control {excess:+.3f}" if excess is not None
                         else "")
                      + (f", verdict {c['verdict']}" if "verdict" in c else "")
                      + (", disagreement alert firing" if c.get("disagreement_alert") else ""))
    table.add_row("publish() p50 / p99", f"{d['publish_us']['p50']:.1f} / "
                                         f"{d['publish_us']['p99']:.1f} us")
    for a in d["alerts"]:
        who = f" {a['candidate']}" if "candidate" in a else ""
        table.add_row(f"alert {a['rule']}{who}", f"{a['state']} (window ending {a['window_end']}, "
                                            f"value {fmt(a['value'])})")
    for k, v in d["where"].items():
        table.add_row(f"look in {k}", v)
    return Group(verdict, table, Text("The servers are left running to look at: stop them "
                                      "with `shadow stack down`."))
