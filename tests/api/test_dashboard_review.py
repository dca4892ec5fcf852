"""Reviewing an observation's image in the dashboard, end to end in a real headless Chromium (Debian's
``chromium`` driven by Playwright for Python) against a real uvicorn server on loopback.

An analyst key signs in, opens the uploaded image, rejects one detector box, draws a rotated box and an undecided
(ignore) region with the mouse, ticks "exhaustive" and saves with the keyboard; the API then holds that review.
Then a typed-count review, a withdrawal, and a reader key that sees the review but may not save one.

Skipped like ``test_dashboard.py`` when ``/usr/bin/chromium`` (or ``WAGON_TEST_CHROMIUM``) or the ``playwright``
package is missing. The screenshot goes to ``build/test-artifacts/dashboard-review.png`` (``WAGON_TEST_ARTIFACTS``
overrides); with ``WAGON_UPDATE_SCREENSHOTS=1`` also to ``docs/dashboard-review.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import PROJECT_ROOT
from tests.support.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, multipart, serve
from tests.support.images import encode_image, first_busy_yard

ROOT = PROJECT_ROOT
ADMIN_KEY = "wd_5e1f5e1f5e1f_dashboard-review-test-admin-key"
FACILITY = "reviewyard"

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not found (apt-get install chromium)"),
]


# ------------------------------------------------------------------------------------------------ HTTP helpers


def _call(
    base: str,
    path: str,
    *,
    key: str = ADMIN_KEY,
    method: str = "GET",
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """(status, parsed JSON or None) of one API call; HTTP errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Authorization": f"Bearer {key}"}
    if data is not None:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, None


def _ok(base: str, path: str, **kwargs: Any) -> Any:
    status, out = _call(base, path, **kwargs)
    assert 200 <= status < 300, (path, status, out)
    return out


def _seed(base: str, chip: Any) -> dict[str, Any]:
    """One rail facility: 24 monthly hand counts, then one uploaded synthetic chip (the real model counts it)."""
    _ok(base, "/v1/facilities", method="POST", body={"id": FACILITY, "name": "Review yard", "kind": "rail"})
    t0 = datetime(2021, 1, 10, 2, 30, tzinfo=UTC)
    rows = ["captured_at,railcar,container"] + [
        f"{(t0 + timedelta(days=30.4 * i)).isoformat()},{12 + (i * 7) % 9},{30 + (i * 5) % 11}" for i in range(24)
    ]
    _ok(
        base,
        f"/v1/facilities/{FACILITY}/observations",
        method="POST",
        raw=("\n".join(rows) + "\n").encode(),
        content_type="text/csv",
    )
    body, ctype = multipart({"captured_at": "2023-02-01T02:30:00Z", "gsd_m": str(chip.gsd_m)}, encode_image(chip.image))
    upload = _ok(base, f"/v1/facilities/{FACILITY}/images", method="POST", raw=body, content_type=ctype)
    return {"upload": upload}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def review_chip() -> Any:
    """A small held-out synthetic rail-yard chip (640 x 640 px, a few dozen objects)."""
    return first_busy_yard(5, 40)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, detector: Any, review_chip: Any) -> Iterator[dict[str, Any]]:
    from pydantic import SecretStr

    from app.api.main import create_app
    from app.core.settings import Settings

    tmp = tmp_path_factory.mktemp("dashboard-review")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'wagon.db'}",
        load_model=False,
        archive_dir=tmp / "originals",
        jobs_sqlite_path=tmp / "jobs.db",
        log_level="WARNING",
        admin_key=SecretStr(ADMIN_KEY),
    )
    with serve(create_app(settings, detector=detector)) as base:
        seeded = _seed(base, review_chip)
        analyst = _ok(base, "/v1/keys", method="POST", body={"role": "analyst", "name": "dashboard analyst"})
        reader = _ok(base, "/v1/keys", method="POST", body={"role": "reader", "name": "dashboard reader"})
        yield {"base": base, "analyst": analyst, "reader": reader, **seeded}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _screenshot(page: Any, name: str, selector: str | None = None) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    if selector:
        page.locator(selector).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    if os.environ.get("WAGON_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / name)


# ------------------------------------------------------------------------------------------------ page helpers


def _open_observation(page: Any, base: str, key: str, obs_id: int) -> None:
    page.goto(f"{base}/dashboard?facility={FACILITY}&api_key={key}")
    page.wait_for_selector("body[data-ready=facility]")
    page.locator(f"#observations tr[data-obs='{obs_id}']").click()
    page.wait_for_selector(f"#review[data-obs='{obs_id}']")


def _seq(page: Any) -> int:
    return int(page.evaluate("document.getElementById('review').dataset.seq || '0'"))


def _wait_outcome(page: Any, before: int, outcome: str) -> None:
    """Wait for the review message after ``before`` that is not a progress note; it must be ``outcome``."""
    page.wait_for_function(
        """(before) => { const r = document.getElementById('review');
            return Number(r.dataset.seq || 0) > before && r.dataset.last !== 'info'; }""",
        arg=before,
    )
    last = page.evaluate("document.getElementById('review').dataset.last")
    assert last == outcome, (last, page.locator("#review-message").inner_text())


def _client(page: Any, x: float, y: float) -> dict[str, float]:
    """Where image pixel (x, y) is on the screen."""
    return page.evaluate("([x, y]) => wagonDashboard.review.toClient(x, y)", [x, y])


def _draw_rotated(page: Any, a: tuple[float, float], b: tuple[float, float], width: float) -> list[list[float]]:
    """Draw a rotated box with the mouse: drag the long side a -> b, move sideways ``width`` image pixels, click.
    Returns the four corners the gesture means, in image pixels."""
    (ax, ay), (bx, by) = a, b
    length = math.hypot(bx - ax, by - ay)
    nx, ny = -(by - ay) / length, (bx - ax) / length
    c = (bx + nx * width, by + ny * width)
    pa, pb, pc = _client(page, *a), _client(page, *b), _client(page, *c)
    page.mouse.move(pa["x"], pa["y"])
    page.mouse.down()
    page.mouse.move(pb["x"], pb["y"], steps=6)
    page.mouse.up()
    page.mouse.move(pc["x"], pc["y"], steps=6)
    page.mouse.down()
    page.mouse.up()
    return [[ax, ay], [bx, by], [c[0], c[1]], [ax + nx * width, ay + ny * width]]


def _close(quad_a: list[list[float]], quad_b: list[list[float]], tol: float) -> bool:
    return len(quad_a) == len(quad_b) and all(math.dist(p, q) <= tol for p, q in zip(quad_a, quad_b, strict=True))


def _summary(page: Any) -> dict[str, str]:
    return page.evaluate("({...document.getElementById('review-summary').dataset})")


# ------------------------------------------------------------------------------------------------ tests


def test_analyst_reviews_boxes_then_counts_then_withdraws(server: dict[str, Any], browser: Any) -> None:
    base, analyst = server["base"], server["analyst"]
    obs_id = server["upload"]["id"]
    before = _ok(base, f"/v1/observations/{obs_id}?include=candidates")
    assert before["review"] is None and before["detections"], before.get("review")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if r.url.split("?")[0].endswith("/review") else None)
    _open_observation(page, base, analyst["key"], obs_id)
    assert page.locator("#review-existing").get_attribute("data-reviewed") == "false"
    page.locator("#review-wide").click()  # the image gets the full width
    page.wait_for_function("document.getElementById('review-canvas').clientWidth > 500")
    dets = page.evaluate("wagonDashboard.review.state.dets.map(d => ({cls: d.cls, obb: d.obb}))")
    assert len(dets) == len(before["detections"]) and int(_summary(page)["objects"]) == len(dets)

    # reject one detector box: click the centre of a box that no smaller box overlaps there (nearest the middle)
    target = page.evaluate(
        """() => { const R = wagonDashboard.review, s = R.state, [c0, r0, w, h] = s.win;
            let best = null, bestDist = Infinity;
            for (const d of s.dets) {
              const cx = d.obb.reduce((a, p) => a + p[0], 0) / 4, cy = d.obb.reduce((a, p) => a + p[1], 0) / 4;
              const hit = R.hitTest([cx, cy]), dist = Math.hypot(cx - c0 - w / 2, cy - r0 - h / 2);
              if (hit && hit.item === d && dist < bestDist) {
                best = {cls: d.cls, obb: d.obb, ...R.toClient(cx, cy)};
                bestDist = dist;
              }
            }
            return best; }"""
    )
    assert target is not None
    page.mouse.click(target["x"], target["y"])
    assert _summary(page)["rejected"] == "1"

    # add a container box: `a`, class `2`, drag the long side, move for the width, click
    page.keyboard.press("a")
    page.keyboard.press("2")
    drawn = _draw_rotated(page, (40, 600), (130, 565), 30)
    assert _summary(page)["added"] == "1"
    # a slip: draw another, remove it with Delete; a drawing cancelled with Esc adds nothing
    _draw_rotated(page, (200, 300), (260, 330), 20)
    assert _summary(page)["added"] == "2"
    page.keyboard.press("Delete")
    assert _summary(page)["added"] == "1"
    p1, p2 = _client(page, 500, 500), _client(page, 560, 520)
    page.mouse.move(p1["x"], p1["y"])
    page.mouse.down()
    page.mouse.move(p2["x"], p2["y"], steps=4)
    page.mouse.up()
    assert page.evaluate("wagonDashboard.review.state.draft.phase") == "width"
    page.keyboard.press("Escape")
    assert page.evaluate("wagonDashboard.review.state.draft") is None and _summary(page)["added"] == "1"

    # an undecided region: `i`, the same gesture
    page.keyboard.press("i")
    region = _draw_rotated(page, (330, 60), (470, 60), 70)
    assert _summary(page)["ignore"] == "1"
    page.locator("#review-exhaustive").check()
    seq = _seq(page)
    page.keyboard.press("s")
    _wait_outcome(page, seq, "saved")

    saved = _ok(base, f"/v1/observations/{obs_id}")
    review = saved["review"]
    assert review is not None and review["exhaustive"] is True
    assert review["reviewer"] == analyst["id"]
    objects = review["objects"]
    assert len(objects) == len(dets) - 1 + 1
    assert len(review["ignore"]) == 1 and _close(review["ignore"][0], region, 2.0)
    added = [o for o in objects if not any(_close(o["obb"], d["obb"], 0.01) for d in dets)]
    assert len(added) == 1 and added[0]["class"] == "container" and _close(added[0]["obb"], drawn, 2.0)
    assert not any(o["class"] == target["cls"] and _close(o["obb"], target["obb"], 0.01) for o in objects)
    per_class = {c: sum(1 for o in objects if o["class"] == c) for c in ("railcar", "container")}
    assert saved["verified_counts"] == per_class
    assert review["counts"] == per_class
    # the page shows it: who and when, a ring on each chart, a tag in the table
    existing = page.locator("#review-existing")
    assert existing.get_attribute("data-reviewed") == "true" and analyst["id"] in existing.inner_text()
    for cls in ("railcar", "container"):
        assert page.locator(f".chart[data-class={cls}]").get_attribute("data-reviewed") == "1"
    rings = page.evaluate("wagonDashboard.state.charts.map(ch => ch.plot.data[7].filter(v => v != null))")
    assert sorted(v for r in rings for v in r) == sorted(per_class.values())
    assert page.locator(f"#observations tr[data-obs='{obs_id}'] .reviewed-tag").count() == 1
    # reopening the observation shows the stored review as it was drawn
    _open_observation(page, base, analyst["key"], obs_id)
    s = _summary(page)  # (the review recalibrated the facility: its counted boxes may have moved to candidates)
    assert (s["objects"], s["added"], s["ignore"]) == (str(len(objects)), "1", "1") and int(s["rejected"]) >= 1
    assert page.locator("#review-exhaustive").is_checked()
    page.set_viewport_size({"width": 1100, "height": 760})  # (a smaller picture for the docs)
    page.locator("#review-wide").click()
    page.mouse.move(0, 0)  # (nothing hovered)
    _screenshot(page, "dashboard-review.png", "#observation")
    page.set_viewport_size({"width": 1400, "height": 1000})

    # a typed count instead of boxes
    page.locator("input[name=review-by][value=counts]").check()
    page.locator("#review-count-railcar").fill("41")
    seq = _seq(page)
    page.locator("#review-save").click()
    _wait_outcome(page, seq, "saved")
    counted = _ok(base, f"/v1/observations/{obs_id}")
    assert counted["review"]["objects"] is None and counted["review"]["counts"]["railcar"] == 41
    assert counted["verified_counts"]["railcar"] == 41 and counted["verified_counts"]["container"] is None
    assert "typed counts" in page.locator("#review-existing").inner_text()
    assert page.locator("#review-count-railcar").input_value() == "41"

    # withdraw with `w`
    seq = _seq(page)
    page.keyboard.press("w")
    _wait_outcome(page, seq, "withdrawn")
    gone = _ok(base, f"/v1/observations/{obs_id}")
    assert gone["review"] is None and gone["verified_counts"] == {"railcar": None, "container": None}
    assert page.locator("#review-existing").get_attribute("data-reviewed") == "false"
    assert page.locator(".chart[data-class=railcar]").get_attribute("data-reviewed") == "0"

    assert [r.method for r in requests] == ["PUT", "PUT", "DELETE"]
    assert all(r.headers.get("authorization") == f"Bearer {analyst['key']}" for r in requests)
    assert not errors, errors
    page.close()


def test_reader_sees_the_review_but_may_not_save(server: dict[str, Any], browser: Any) -> None:
    base, analyst, reader = server["base"], server["analyst"], server["reader"]
    obs_id = server["upload"]["id"]
    stored = _ok(
        base, f"/v1/observations/{obs_id}/review", key=analyst["key"], method="PUT", body={"counts": {"railcar": 17}}
    )
    assert stored["review"]["reviewer"] == analyst["id"]
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        _open_observation(page, base, reader["key"], obs_id)
        existing = page.locator("#review-existing")
        assert existing.get_attribute("data-reviewed") == "true"
        assert analyst["id"] in existing.inner_text() and "railcars 17" in existing.inner_text()
        assert page.locator(".chart[data-class=railcar]").get_attribute("data-reviewed") == "1"
        seq = _seq(page)
        page.keyboard.press("s")
        _wait_outcome(page, seq, "refused")
        message = page.locator("#review-message").inner_text()
        assert "403" in message and "analyst" in message
        assert page.locator("#review-save").is_disabled() and page.locator("#review-withdraw").is_disabled()
        page.keyboard.press("w")  # refused without asking the server again
        assert page.evaluate("document.getElementById('review').dataset.last") == "refused"
        after = _ok(base, f"/v1/observations/{obs_id}")
        assert after["review"]["id"] == stored["review"]["id"] and after["verified_counts"]["railcar"] == 17
        page.close()
    finally:
        _call(base, f"/v1/observations/{obs_id}/review", method="DELETE")
