"""The README's worked demo: five years of hand counts at a rail facility, then one busy image.

Against a running server (``scripts/serve.sh``, or ``wagon-detector serve``)::

    .venv/bin/python scripts/demo_tumangang.py --url http://127.0.0.1:8000 --api-key wd_...

The key (``--api-key``, or ``WAGON_API_KEY``) is an admin key, e.g. the one the server prints on its first start
(an uploader key for ``tumangang`` does once the facility exists); a server started with ``WAGON_AUTH=off`` needs
none.

1. creates the facility ``tumangang`` (an existing one is reused);
2. imports 60 monthly hand counts, October 2018 to September 2023, as CSV (railcars drawn from a seeded negative
   binomial and kept between 5 and 30; a few containers);
3. renders a busy synthetic rail-yard chip (``training.synth.generate_chip``, the first seed from 9,100,000 whose
   chip holds 60-100 railcars; drawn without the generator's heavy-noise sensor mode, which imitates a
   failed acquisition rather than a delivered chip) and uploads it as captured on 2023-10-15;
4. prints the detected and true counts, the railcar anomaly block, and the response JSON.

Running it again against the same database imports the history a second time (imports are not deduplicated),
while the upload, the same image at the same time, answers 200 with the original observation instead of storing a
second; use a fresh database for a clean run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from training.synth import SynthChip, SynthConfig, generate_chip

FACILITY = {"id": "tumangang", "name": "Tumangang rail facility", "kind": "rail"}
HISTORY_SEED = 20231015
FIRST_CHIP_SEED = 9_100_000
MIN_RAILCARS = 60
MAX_RAILCARS = 100  # a busy day like Tumangang's 73, not a marshalling yard
CAPTURED_AT = "2023-10-15T02:30:00Z"


def history_csv(seed: int = HISTORY_SEED) -> str:
    """One hand count a month, 2018-10 to 2023-09: railcars NB(mean 14, var ~47) kept in 5..30, containers 0..4."""
    rng = np.random.default_rng(seed)
    lines = ["captured_at,railcar,container,source"]
    for i in range(60):
        year, month = 2018 + (9 + i) // 12, (9 + i) % 12 + 1
        day = int(rng.integers(3, 27))
        minute = int(rng.integers(10, 50))
        railcars = 0
        while not 5 <= railcars <= 30:
            railcars = int(rng.negative_binomial(6, 6 / (6 + 14)))
        containers = int(min(rng.poisson(1.2), 4))
        lines.append(f"{year}-{month:02d}-{day:02d}T02:{minute:02d}:00Z,{railcars},{containers},hand-count")
    return "\n".join(lines) + "\n"


def busy_chip(
    first_seed: int = FIRST_CHIP_SEED, min_railcars: int = MIN_RAILCARS, max_railcars: int = MAX_RAILCARS
) -> SynthChip:
    """The first synthetic chip from ``first_seed`` on that holds ``min_railcars..max_railcars`` railcars."""
    for seed in range(first_seed, first_seed + 1000):
        chip = generate_chip(seed, SynthConfig(heavy_noise_probability=0.0))
        if min_railcars <= chip.counts()["railcar"] <= max_railcars:
            return chip
    raise SystemExit(f"no chip with {min_railcars}-{max_railcars} railcars in seeds {first_seed}..{first_seed + 999}")


def check(response: httpx.Response, *ok: int) -> Any:
    """The JSON body of ``response``, or exit with the server's reason."""
    if response.status_code == 401 and 401 not in ok:
        raise SystemExit(
            f"{response.request.url}: 401 {response.json().get('detail')}; pass --api-key or set "
            "WAGON_API_KEY (the server prints its first admin key on its first start)"
        )
    if response.status_code not in ok:
        raise SystemExit(f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}")
    return response.json()


def wait_ready(http: httpx.Client, seconds: float) -> Any:
    """Poll ``/healthz`` until it answers 200 (a starting server loads its model first); return its body."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            r = http.get("/healthz")
            if r.status_code == 200 or time.monotonic() > deadline:
                return check(r, 200)
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"no server at {http.base_url}: {exc}") from None
        time.sleep(1.0)


def compact_json(response: dict[str, Any], detections: list[Any]) -> str:
    """``response`` as indented JSON with ``detections`` in its place, one detection per line."""
    placeholder = "@@detections@@"
    text = json.dumps({**response, "detections": placeholder}, indent=2)
    items = ",\n".join("    " + json.dumps(d) for d in detections)
    return text.replace(f'"{placeholder}"', f"[\n{items}\n  ]" if detections else "[]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of a running wagon-detector")
    ap.add_argument(
        "--api-key",
        default=os.environ.get("WAGON_API_KEY"),
        help="API key sent as 'Authorization: Bearer' (default: $WAGON_API_KEY)",
    )
    ap.add_argument("--full-json", action="store_true", help="print every detection in the raw JSON")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the upload's answer")
    ap.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the server to become ready")
    a = ap.parse_args(argv)

    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    with httpx.Client(base_url=a.url.rstrip("/"), timeout=a.timeout, headers=headers) as http:
        health = wait_ready(http, a.wait)
        print(f"server {a.url}: {health['status']}, model {health['model']}")

        r = http.post("/v1/facilities", json=FACILITY)
        check(r, 201, 409)
        print(f"facility {FACILITY['id']!r}: " + ("created" if r.status_code == 201 else "exists already (409)"))

        csv_text = history_csv()
        imported = check(
            http.post(
                f"/v1/facilities/{FACILITY['id']}/observations", content=csv_text, headers={"Content-Type": "text/csv"}
            ),
            201,
        )
        if imported["observations"]:
            railcars = [o["counts"]["railcar"] for o in imported["observations"]]
            first, last = imported["observations"][0], imported["observations"][-1]
            print(
                f"imported {imported['imported']} hand counts, {first['captured_at'][:10]} .. "
                f"{last['captured_at'][:10]}: railcars min {min(railcars)}, mean {np.mean(railcars):.1f}, "
                f"max {max(railcars)}"
            )
        if imported.get("duplicates"):
            print(f"{imported['duplicates']} hand counts were stored already (duplicates, not imported again)")

        chip = busy_chip()
        truth = chip.counts()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"synth_{chip.seed}.png"
            Image.fromarray(chip.image).save(path)
            print(
                f"chip: synthetic seed {chip.seed}, {chip.image.shape[1]}x{chip.image.shape[0]} px, "
                f"GSD {chip.gsd_m:.3f} m/px; uploading as captured {CAPTURED_AT} ..."
            )
            with path.open("rb") as f:
                r = http.post(
                    f"/v1/facilities/{FACILITY['id']}/images",
                    files={"file": (path.name, f, "image/png")},
                    data={"captured_at": CAPTURED_AT, "gsd_m": repr(chip.gsd_m)},
                )
                out = check(r, 201, 200)
                if r.status_code == 200:
                    print("(uploaded before: the server answered with the original observation, 200)")

    print()
    print(
        f"observation {out['id']} at {out['captured_at']} (model {out['model']['name']} "
        f"{out['model']['version']}, {out['timing_ms']['total']:.0f} ms)"
    )
    print(f"{'class':<10} {'detected':>8} {'true':>6}")
    for cls, n in out["counts"].items():
        print(f"{cls:<10} {n if n is not None else '-':>8} {truth.get(cls, '-'):>6}")
    rail = out["anomaly"]["railcar"]
    print()
    print("railcar anomaly")
    for key in (
        "score",
        "drop_score",
        "expected",
        "count_sd",
        "history_size",
        "history_max",
        "exceeds_history_max",
        "history_span_days",
        "highest_in_days",
        "model",
        "reason",
    ):
        if key in rail:
            print(f"  {key:<20} {rail[key]}")
    if rail["score"] is not None:
        print(f"  (mid-p upper-tail probability about 10^-{rail['score']:.1f})")

    dets = out["detections"]
    shown = dets if a.full_json else dets[:2]
    note = "" if len(shown) == len(dets) else f" ({len(shown)} of {len(dets)} detections shown; --full-json for all)"
    print()
    print(f"response JSON{note}:")
    print(compact_json(out, shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
