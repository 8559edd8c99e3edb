"""The dashboard page in a real headless Chromium (Debian's ``chromium``,
installed by scripts/services.sh) against a real sidecar: it loads, its JS
draws the charts from live data (the skill names and numbers of the Stats
RPC end up in the DOM), and a skill's breaker opening shows after a reload."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import pytest_asyncio
from support.admin import Sidecar, admin_sidecar, until

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (scripts/services.sh installs Debian's 'chromium' with apt-get; "
                "it could not here)", allow_module_level=True)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,1900",
         # Let the page's timers and fetches run (virtual time waits for network).
         "--virtual-time-budget=4000")


@dataclass
class Page:
    """What the dumped DOM holds: rows of the skills table, the charts'
    data attributes, and the text of every element with an id."""

    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # skill → {"breaker", "calls", "chips", ...}
    canvases: dict[str, dict[str, str]] = field(default_factory=dict)  # id → data-* attributes
    text: dict[str, str] = field(default_factory=dict)  # id → text
    body: dict[str, str] = field(default_factory=dict)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._row: str | None = None
        self._cell: str | None = None
        self._ids: list[tuple[str, int]] = []  # (id, depth) open elements with an id
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.page.body = a
        if tag == "tr" and "data-skill" in a:
            self._row = a["data-skill"]
            self.page.rows[self._row] = {"breaker": a.get("data-breaker", ""), "chips": ""}
        if tag == "td" and self._row is not None:
            self._cell = a.get("class", "")
        if tag == "canvas":
            self.page.canvases[a.get("id", "")] = {k: v for k, v in a.items() if k.startswith("data-")}
        if tag in ("br", "img", "input", "meta", "link"):
            return
        self._depth += 1
        if "id" in a:
            self._ids.append((a["id"], self._depth))
            self.page.text.setdefault(a["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = None
        while self._ids and self._ids[-1][1] >= self._depth:
            self._ids.pop()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        for id_, _ in self._ids:
            self.page.text[id_] += data
        if self._row is not None and self._cell:
            row = self.page.rows[self._row]
            row[self._cell] = row.get(self._cell, "") + data


async def open_page(url: str, tmp: Path, screenshot: Path | None = None) -> Page:
    args = [*FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = await asyncio.create_subprocess_exec(CHROMIUM, *args, url, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    parser = _Parser()
    parser.feed(out.decode())
    return parser.page


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sidecar]:
    async with admin_sidecar(tmp_path_factory.mktemp("browser")) as s:
        await s.traffic(16)

        async def ready() -> bool:  # two samples (a rate) and every query in the store
            d = await s.get_json("/api/dashboard")
            return len(d["history"]["points"]) >= 2 and d["moe_metrics"]["queries"] >= 16
        await until(ready, "the history and the metrics store")
        yield s


async def test_page_draws_the_live_figures(sidecar: Sidecar, tmp_path: Path) -> None:
    stats = await sidecar.client.stats()
    page = await open_page(sidecar.url + "/", tmp_path)
    assert int(page.body.get("data-loaded", "0")) >= 1, page.text.get("status")
    assert page.text["status"].startswith("live"), page.text["status"]
    names = [s.skill for s in stats.skills]
    # The table: one row per skill, in the Stats order, with Stats' numbers.
    assert list(page.rows) == names
    for s in stats.skills:
        assert int(page.rows[s.skill]["calls"].replace(",", "")) == s.calls
        assert int(page.rows[s.skill]["failures"].replace(",", "")) == s.failures
    assert int(page.text["kpi-queries"].replace(",", "")) == stats.totals.queries
    # The charts were drawn, from these skills.
    for chart in ("chart-utilization", "chart-queue"):
        assert page.canvases[chart]["data-labels"].split(",") == names
        assert int(page.canvases[chart]["data-drawn"]) == len(names)
    assert int(page.canvases["chart-calls"]["data-drawn"]) == len(names)  # one line per skill
    assert int(page.canvases["chart-saved"]["data-drawn"]) == 1
    dist = page.canvases["chart-distribution"]["data-labels"].split(",")
    assert dist and set(dist) <= set(names) and int(page.canvases["chart-distribution"]["data-drawn"]) == len(dist)
    assert int(page.canvases["chart-hourly"]["data-drawn"]) >= 1
    assert all(r["breaker"] == "closed" for r in page.rows.values())
    assert page.text["kpi-open"] == "0"


async def test_breaker_opening_shows_after_reload(sidecar: Sidecar, tmp_path: Path) -> None:
    await sidecar.open_breaker("flaky")
    page = await open_page(sidecar.url + "/", tmp_path)
    assert page.rows["flaky"]["breaker"] == "open"
    assert "broken: open" in page.rows["flaky"]["breakers"]
    assert page.rows["trm"]["breaker"] == "closed"
    assert page.text["kpi-open"] == "1" and "flaky/broken" in page.text["kpi-open-s"]


async def test_screenshot_renders(sidecar: Sidecar, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    await open_page(sidecar.url + "/", tmp_path, screenshot=shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a drawn page, not a blank one
