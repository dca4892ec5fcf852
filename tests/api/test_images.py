"""End to end with the real model: the Tumangang story on a generated busy chip against a quiet imported history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.support.images import encode_image

pytestmark = pytest.mark.slow


def test_busy_chip_scores_high_against_quiet_history(
    make_client: Callable[..., Any], detector: Any, busy_yard: Any
) -> None:
    client = make_client(detector=detector)
    assert (
        client.post("/v1/facilities", json={"id": "tumangang", "name": "Tumangang", "kind": "rail"}).status_code == 201
    )
    rng = np.random.default_rng(2023)
    rows = ["captured_at,railcar,container"]
    for k in range(60):  # five years of roughly monthly hand counts between 5 and 30 wagons
        year, month = 2018 + (9 + k) // 12, (9 + k) % 12 + 1
        rows.append(f"{year}-{month:02d}-{int(rng.integers(1, 28)):02d}T02:00:00Z,{int(rng.integers(5, 31))},")
    r = client.post(
        "/v1/facilities/tumangang/observations", content="\n".join(rows) + "\n", headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 201, r.text

    chip = busy_yard  # a held-out synthetic yard with 60-150 railcars
    true_railcars = chip.counts()["railcar"]
    r = client.post(
        "/v1/facilities/tumangang/images",
        files={"file": ("busy.png", encode_image(chip.image, "PNG"), "image/png")},
        data={"captured_at": "2023-10-15T02:30:00Z", "gsd_m": str(chip.gsd_m)},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    counted = body["counts"]["railcar"]
    assert abs(counted - true_railcars) <= 0.25 * true_railcars  # the stated tolerance
    a = body["anomaly"]["railcar"]
    assert a["history_size"] == 60 and a["history_max"] <= 30 and a["exceeds_history_max"] is True
    assert a["score"] > 3 and 5 <= a["expected"] <= 30  # far beyond a 1-in-1000 surprise
    assert a["history_span_days"] > 4 * 365
    # containers were never counted by hand: unknown history, so no score
    assert body["anomaly"]["container"]["score"] is None

    series = client.get("/v1/facilities/tumangang/observations").json()["observations"]
    items = series["observations"] if isinstance(series, dict) else series
    assert len(items) == 61 and items[-1]["id"] == body["id"]
