"""The dashboard end to end in a real headless Chromium (Debian's ``chromium`` driven by Playwright for Python),
against a real uvicorn server on loopback with seeded facilities.

Skipped when ``/usr/bin/chromium`` (or ``WAGON_TEST_CHROMIUM``) or the ``playwright`` package is missing; never
runs ``playwright install`` (no browser download). Screenshots and the exported CSV go to ``build/test-artifacts/``
(``WAGON_TEST_ARTIFACTS`` overrides); with ``WAGON_UPDATE_SCREENSHOTS=1`` the screenshots are also written to
``docs/dashboard-list.png`` and ``docs/dashboard-facility.png``.

The image upload runs the real shipped model on a held-out synthetic rail-yard chip, so the overlay in the
screenshots shows real detections.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import PROJECT_ROOT
from tests.support.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, multipart, serve
from tests.support.images import encode_image

ROOT = PROJECT_ROOT
#: Seeds the server (admin); the pages sign in with a reader key made from it (what an analyst gets).
ADMIN_KEY = "wd_7d1f7d1f7d1f_dashboard-browser-test-admin-key"

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not found (apt-get install chromium)"),
]


def _http(
    base: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", **(headers or {})}
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.status, dict(resp.headers), resp.read()


def _json(base: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return json.loads(_http(base, path, data=data, headers={"Content-Type": content_type})[2])


def _seed(base: str, chip: Any) -> dict[str, Any]:
    """tumangang: 60 monthly hand counts and one uploaded busy chip (the anomaly); harbour: 24 quiet counts;
    empty: no observations; big: 2,000 observations (for the load time)."""
    rng = random.Random(7)
    for fid, name, kind in (
        ("tumangang", "Tumangang rail facility", "rail"),
        ("harbour", "Quiet harbour", "port"),
        ("empty", "Empty yard", "mixed"),
        ("big", "Busy junction", "rail"),
    ):
        _json(base, "/v1/facilities", {"id": fid, "name": name, "kind": kind})
    t0 = datetime(2018, 10, 20, 2, 30, tzinfo=UTC)
    rows = ["captured_at,railcar,container"]
    for i in range(60):
        rows.append(f"{(t0 + timedelta(days=30.4 * i)).isoformat()},{rng.randint(6, 24)},{rng.randint(0, 4)}")
    _json(base, "/v1/facilities/tumangang/observations", ("\n".join(rows) + "\n").encode(), "text/csv")
    body, ctype = multipart({"captured_at": "2023-10-15T02:30:00Z", "gsd_m": str(chip.gsd_m)}, encode_image(chip.image))
    upload = json.loads(_http(base, "/v1/facilities/tumangang/images", data=body, headers={"Content-Type": ctype})[2])
    rows = ["captured_at,railcar,container"]
    for i in range(24):
        rows.append(f"{(t0 + timedelta(days=15 * i)).isoformat()},,{rng.randint(40, 50)}")
    _json(base, "/v1/facilities/harbour/observations", ("\n".join(rows) + "\n").encode(), "text/csv")
    rows = ["captured_at,railcar,container"]
    for i in range(2000):
        rows.append(f"{(t0 + timedelta(hours=20 * i)).isoformat()},{rng.randint(5, 30)},{rng.randint(0, 6)}")
    _json(base, "/v1/facilities/big/observations", ("\n".join(rows) + "\n").encode(), "text/csv")
    return {"upload": upload}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, detector: Any, busy_yard: Any) -> Iterator[dict[str, Any]]:
    from app.api.main import create_app
    from app.core.settings import Settings

    tmp = tmp_path_factory.mktemp("dashboard")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'wagon.db'}",
        load_model=False,
        archive_dir=tmp / "originals",
        jobs_sqlite_path=tmp / "jobs.db",
        log_level="WARNING",
        admin_key=ADMIN_KEY,
    )
    with serve(create_app(settings, detector=detector)) as base:
        seeded = _seed(base, busy_yard)
        reader_key = _json(base, "/v1/keys", {"role": "reader", "name": "dashboard test"})["key"]
        yield {"base": base, "reader_key": reader_key, **seeded}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _artefact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def _screenshot(page: Any, name: str) -> None:
    path = _artefact(name)
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("WAGON_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / name)


def test_list_signs_in_once_and_sorts_most_anomalous_first(server: dict[str, Any], browser: Any) -> None:
    base = server["base"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if "/v1/" in r.url else None)
    key = server["reader_key"]
    page.goto(f"{base}/dashboard?api_key={key}")
    page.wait_for_selector("body[data-ready=list]")
    assert "api_key" not in page.url and key not in page.url
    assert page.evaluate("sessionStorage.getItem('wagon.api_key')") == key
    assert requests and all(r.headers.get("authorization") == f"Bearer {key}" for r in requests)
    assert not any(key in r.url for r in requests)
    rows = page.locator("#facilities tbody tr")
    assert rows.count() == 4
    assert rows.nth(0).get_attribute("data-facility-row") == "tumangang"
    badges = rows.nth(0).locator(".badge")  # railcars surge; the real model may also see a container surge
    assert badges.count() >= 1 and "Railcars" in " ".join(badges.all_inner_texts())
    first = rows.nth(0).inner_text()
    assert "2023-10-15 02:30" in first and str(server["upload"]["counts"]["railcar"]) in first
    assert rows.nth(3).get_attribute("data-facility-row") == "empty"
    assert rows.locator(".badge").count() == badges.count()  # only tumangang crosses its thresholds
    _screenshot(page, "dashboard-list.png")
    # keyboard: tab to the first facility link and open it
    page.locator("#facilities tbody tr >> nth=0 >> a").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-ready=facility]")
    assert page.url.endswith("/dashboard?facility=tumangang")
    page.close()


def test_facility_view_chart_overlay_and_csv(server: dict[str, Any], browser: Any) -> None:
    base = server["base"]
    api = json.loads(_http(base, "/v1/facilities/tumangang/observations?limit=10000")[2])["observations"]
    events = json.loads(_http(base, "/v1/facilities/tumangang/anomalies")[2])["anomalies"]
    railcar_events = [e for e in events if e["class"] == "railcar"]
    busy = server["upload"]["counts"]["railcar"]  # what the real model counted on the busy chip
    assert [e["count"] for e in railcar_events] == [busy]
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{base}/dashboard?facility=tumangang&api_key={server['reader_key']}")  # deep link
    page.wait_for_selector("body[data-ready=facility]")
    assert page.locator("#facility-title").inner_text() == "Tumangang rail facility"

    chart = page.locator(".chart[data-class=railcar]")
    n_railcar = sum(1 for o in api if o["counts"]["railcar"] is not None)
    assert chart.get_attribute("data-points") == str(n_railcar) == "61"
    assert chart.get_attribute("data-anomalies") == str(len(railcar_events)) == "1"
    drawn = page.evaluate("""() => { const u = wagonDashboard.state.charts[0].plot;
        return {points: u.data[4].length, surge: u.data[5].filter(v => v != null),
                band: u.data[1].filter(v => v != null).length}; }""")
    assert drawn["points"] == 61 and drawn["surge"] == [busy] and drawn["band"] >= 59

    # hover the anomaly marker: the tooltip shows time, count, expected and score
    pos = page.evaluate("""() => {
        const u = wagonDashboard.state.charts[0].plot; const i = u.data[5].findIndex(v => v != null);
        const r = u.over.getBoundingClientRect();
        return {x: r.left + u.valToPos(u.data[0][i], 'x'), y: r.top + u.valToPos(u.data[4][i], 'y')}; }""")
    page.mouse.move(pos["x"], pos["y"])
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    upload = server["upload"]
    assert "2023-10-15 02:30" in text and f"Railcars: {busy}" in text and "ANOMALY" in text
    assert f"{upload['anomaly']['railcar']['expected']:.1f}" in text
    assert f"{upload['anomaly']['railcar']['score']:.2f}" in text

    # open the anomalous observation (clicking the marker) and see its overlay image
    page.mouse.click(pos["x"], pos["y"])
    page.wait_for_selector(f"#overlay[data-loaded='{upload['id']}']")
    size = page.evaluate(
        "() => [document.getElementById('overlay').naturalWidth, document.getElementById('overlay').naturalHeight]"
    )
    assert size[0] > 100 and size[1] > 100
    assert "ANOMALY (surge)" in page.locator("#observation-facts").inner_text()
    assert page.locator(f"#observations tr.selected[data-obs='{upload['id']}']").count() == 1
    page.mouse.move(pos["x"] - 3, pos["y"])
    page.mouse.move(pos["x"], pos["y"])
    tip.wait_for(state="visible")
    _screenshot(page, "dashboard-facility.png")

    # the table lists every observation; CSV export equals the API's CSV and the JSON's counts
    assert page.locator("#observations tbody tr").count() == len(api)
    with page.expect_download() as dl:
        page.locator("#export").click()
    exported = Path(dl.value.path()).read_bytes().decode()
    _artefact("tumangang-observations.csv").write_bytes(exported.encode())
    assert exported == _http(base, "/v1/facilities/tumangang/observations?format=csv&limit=10000")[2].decode()
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [int(r["id"]) for r in rows] == [o["id"] for o in api]
    assert [r["railcar"] for r in rows] == [str(o["counts"]["railcar"]) for o in api]

    # the time-range selector narrows the chart, the table and the export
    page.select_option("#range-preset", "365")
    in_year = [o for o in api if datetime.fromisoformat(o["captured_at"]) >= datetime(2022, 10, 15, 2, 30, tzinfo=UTC)]
    assert chart.get_attribute("data-points") == str(len(in_year))
    assert page.locator("#observations tbody tr").count() == len(in_year)
    with page.expect_download() as dl:
        page.locator("#export").click()
    assert len(list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))) == len(in_year)

    # keyboard: arrow keys move along the chart, Enter opens the count
    page.locator(".chart[data-class=railcar] .plot").focus()
    page.keyboard.press("End")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")
    assert page.locator("#observations tr.selected").get_attribute("data-obs") == str(in_year[-2]["id"])
    assert not errors, errors
    page.close()


def test_facility_with_2000_observations_loads_fast(server: dict[str, Any], browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server['base']}/dashboard?facility=big&api_key={server['reader_key']}")  # warm-up (first launch)
    page.wait_for_selector("body[data-ready=facility]")
    timings = []
    for _ in range(3):
        page.reload()
        page.wait_for_selector("body[data-ready=facility]")
        timings.append(int(page.evaluate("document.body.dataset.loadMs")))
    assert page.locator(".chart[data-class=railcar]").get_attribute("data-points") == "2000"
    assert page.locator("#observations tbody tr").count() == 2000
    _artefact("load-time-2000.json").write_text(json.dumps({"observations": 2000, "load_ms": timings}))
    print(f"dashboard load with 2000 observations: {timings} ms")
    assert min(timings) < 1000, timings
