"""The replay's HTML report in a real browser: Debian's chromium (headless), driven by
playwright. No console error, and every chart readable without hovering: a visible title,
both axes titled, tick labels, a legend when it has several series, no text cut off."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shadow.offline.report import html_report
from shadow.sim.traffic import TrafficSpec, build_model
from tests.unit.test_replay import candidate, recorded, run

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

_CHECK = """() => {
  const problems = [];
  const charts = [...document.querySelectorAll('svg.chart')];
  for (const svg of charts) {
    const title = svg.querySelector('text.chart-title')?.textContent || '(untitled)';
    const box = svg.getBoundingClientRect();
    for (const axis of ['x', 'y']) {
      const label = svg.querySelector(`text.axis-label.${axis}`);
      if (!label || !label.textContent.trim()) problems.push(`${title}: no ${axis} axis title`);
    }
    if (svg.querySelectorAll('text.tick').length < 2) problems.push(`${title}: no tick labels`);
    const series = Number(svg.dataset.series);
    const legend = svg.querySelectorAll('g.legend text').length;
    if (series > 1 && legend !== series) problems.push(`${title}: legend ${legend}/${series}`);
    for (const t of svg.querySelectorAll('text')) {  // on screen, after any rotation
      const b = t.getBoundingClientRect();
      if (b.left < box.left - 1 || b.right > box.right + 1 || b.top < box.top - 1
          || b.bottom > box.bottom + 1) problems.push(`${title}: '${t.textContent}' cut`);
    }
  }
  const verdict = document.querySelector('#verdict').getBoundingClientRect().top;
  const firstChart = charts[0].getBoundingClientRect().top;
  const header = [...document.querySelectorAll('table')[1].rows[0].cells].map(c => c.textContent);
  return {charts: charts.length, problems, verdictFirst: verdict < firstChart, header,
          badges: [...document.querySelectorAll('.badge')].map(b => b.textContent)};
}"""


@contextmanager
def _page(console: list[str]) -> Iterator[Any]:
    """A chromium page (headless, Debian's chromium) whose console errors and warnings and
    page errors land in ``console``."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium "
                    "(apt-get install chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: console.append(f"page error: {e}"))
            yield page
        finally:
            browser.close()


def test_the_report_reads_in_chromium_with_labelled_charts(tmp_path: Path) -> None:
    messages = recorded(3000, TrafficSpec(seed=3, shift_at_index=2000),
                        build_model(0))
    result = run(messages, candidate("v13"), candidate("v14", "shadow.sim.traffic:build_retrained"),
                 candidate("broken", "tests.models_for_tests:broken"))
    page_file = tmp_path / "report.html"
    page_file.write_text(html_report(result))
    console: list[str] = []
    with _page(console) as page:
        page.goto(page_file.as_uri(), wait_until="load")
        found = page.evaluate(_CHECK)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        # The check itself can fail: the same page with one axis title gone.
        broken = tmp_path / "broken.html"
        broken.write_text(page_file.read_text().replace("class='axis-label y'",
                                                        "class='unlabelled'", 1))
        page.goto(broken.as_uri(), wait_until="load")
        assert page.evaluate(_CHECK)["problems"] == [
            "Disagreement rate per window: no y axis title"]
    assert console == []
    assert found["charts"] >= 6 and found["problems"] == [], found["problems"]
    assert found["verdictFirst"]  # the decision before any chart
    assert found["header"][1:] == ["v13", "v14", "broken"]  # candidates side by side
    assert found["badges"] == ["PROMOTE", "ROLLBACK", "ROLLBACK"]
    assert (tmp_path / "report.png").stat().st_size > 50_000


_SIDE_BY_SIDE = """() => {
  const cells = [...document.querySelectorAll('td.diff')];
  const page = document.documentElement.clientWidth;
  const wide = cells.filter(c => c.getBoundingClientRect().right > page + 1).length;
  return {cells: cells.length, wide,
          del: document.querySelectorAll('td.diff del').length,
          ins: document.querySelectorAll('td.diff ins').length,
          fields: [...document.querySelectorAll('td.diff tr.different td.s')].length,
          badges: [...document.querySelectorAll('.badge')].map(b => b.textContent)};
}"""


@pytest.mark.parametrize("kind", ["text", "json"])
def test_text_and_json_answers_read_side_by_side_in_chromium(tmp_path: Path,
                                                             kind: str) -> None:
    """The most divergent requests of a text model with the differing words marked, of a
    JSON model as a table of fields; the control is named as such, not judged."""
    import itertools

    from shadow.sim import chat, quotes
    from tests.unit.test_generative import VERDICT, _recorded, _replay

    if kind == "text":
        rows = [(p.request_id, {"message": p.message}, p.segment)
                for p in itertools.islice(chat.prompts(seed=2), 4000)]
        result = _replay(_recorded("support-chat", "shadow.sim.chat:build_chat", rows),
                         chat.TOLERANCES, "shadow.sim.chat",
                         {"same": "build_chat_same", "v2": "build_chat_retrained"},
                         "build_chat_control")
    else:
        rows = [(q.request_id, q.inputs, q.segment)
                for q in itertools.islice(quotes.requests(seed=2), 4000)]
        result = _replay(_recorded("shipping-quote", "shadow.sim.quotes:build_quotes", rows),
                         quotes.TOLERANCES, "shadow.sim.quotes",
                         {"same": "build_quotes_same", "v2": "build_quotes_retrained"},
                         "build_quotes_control")
    page_file = tmp_path / "report.html"
    page_file.write_text(html_report(result, VERDICT))
    console: list[str] = []
    with _page(console) as page:
        page.goto(page_file.as_uri(), wait_until="load")
        found = page.evaluate(_CHECK)
        side = page.evaluate(_SIDE_BY_SIDE)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert console == [] and found["problems"] == [], found["problems"]
    assert side["badges"] == ["PROMOTE", "ROLLBACK", "control"]
    assert side["cells"] > 0 and side["wide"] == 0  # nothing runs off the page
    if kind == "text":
        assert side["del"] > 0 and side["ins"] > 0
    else:
        assert side["fields"] > 0
