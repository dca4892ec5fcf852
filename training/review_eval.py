"""What reviews do for a facility's later counts, measured through the API on real labelled images.

The labelled Swiss yard (``../shared/real-eval/swiss_yard_left_*``) is cut into parts side by side. Each fold
uploads some parts of both resolutions to a facility and reviews them with their labels (true railcars as boxes;
the annotators' undecided objects, and railcars cut by a part's edge, as undecided regions), then uploads the held-
back parts to that facility and to an unreviewed twin and scores both against the labels: count error (against the
labels ... labels + undecided range), and railcar precision and recall at rotated IoU >= 0.5. The held-back parts
never take part in the review that calibrates their counts.

    python -m training.review_eval --parts 2 --json review_eval.json

Everything runs in-process on a temporary SQLite database with the shipped model (or ``--weights``).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.core.offline import configure_offline
from app.detection.matching import Outcome, match_detections
from training.evaluate import ROOT, label_corners, label_gsd

REAL_DIR = ROOT.parent / "shared" / "real-eval"
SWISS = ("swiss_yard_left_0p5m", "swiss_yard_left_0p25m")
#: A railcar with less of its area inside a part than this is an undecided region there, not a true object.
MIN_VISIBLE = 0.6
ADMIN_KEY = "wd_0123456789ab_review-eval-admin-key-0123456789"


def _clip_share(corners: np.ndarray, x0: float, x1: float, height: float) -> tuple[float, np.ndarray]:
    import shapely

    box = shapely.Polygon(corners)
    part = shapely.box(x0, 0, x1, height)
    inter = box.intersection(part)
    share = inter.area / box.area if box.area > 0 else 0.0
    if inter.is_empty or inter.geom_type != "Polygon" or inter.area < 4.0:  # a sliver is nothing to decide
        return share, np.zeros((0, 2))
    return share, np.asarray(inter.exterior.coords)[:-1]


def cut_parts(name: str, parts: int) -> list[dict[str, Any]]:
    """The image cut into ``parts`` vertical strips, each with its truth in strip pixels."""
    meta = json.loads((REAL_DIR / f"{name}.json").read_text())
    image = np.asarray(Image.open(REAL_DIR / f"{name}.png").convert("RGB"))
    h, w = image.shape[:2]
    edges = np.linspace(0, w, parts + 1).round().astype(int)
    out = []
    for k in range(parts):
        x0, x1 = int(edges[k]), int(edges[k + 1])
        objects, ignore = [], []
        for obj in meta["objects"]:
            if obj["class"] != "railcar":
                continue
            corners = label_corners(obj)
            share, clipped = _clip_share(corners, x0, x1, h)
            if share >= MIN_VISIBLE:
                objects.append((corners - [x0, 0]).clip([0, 0], [x1 - x0, h]))
            elif share > 0 and len(clipped) >= 3:
                ignore.append(clipped - [x0, 0])
        for obj in meta.get("uncertain", []):
            share, clipped = _clip_share(label_corners(obj), x0, x1, h)
            if share > 0 and len(clipped) >= 3:
                ignore.append(clipped - [x0, 0])
        out.append(
            {
                "name": f"{name}[{k + 1}/{parts}]",
                "image": np.ascontiguousarray(image[:, x0:x1]),
                "gsd_m": label_gsd(meta["gsd_m_per_px"]),
                "objects": objects,
                "ignore": ignore,
            }
        )
    return out


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def score_part(part: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, Any]:
    """Count error and railcar precision/recall of one uploaded part's detections against its labels."""
    dets = [d for d in detections if d["class"] == "railcar"]
    outcomes = match_detections(
        [np.asarray(d["obb"], float) for d in dets],
        [d.get("score") or d["confidence"] for d in dets],
        part["objects"],
        part["ignore"],
    )
    tp = sum(o is Outcome.HIT for o in outcomes)
    fp = sum(o is Outcome.FALSE for o in outcomes)
    lo, hi = len(part["objects"]), len(part["objects"]) + len(part["ignore"])
    n = len(dets)
    err = 0 if lo <= n <= hi else min(abs(n - lo), abs(n - hi))
    return {
        "part": part["name"],
        "true": lo,
        "true_max": hi,
        "counted": n,
        "count_error": err,
        "tp": tp,
        "fp": fp,
        "precision": round(tp / max(tp + fp, 1), 3),
        "recall": round(tp / max(lo, 1), 3),
    }


def run(parts: int, weights: Path | None = None) -> dict[str, Any]:
    """Every fold: review all parts but one (both resolutions), then count the held-back one with and without."""
    configure_offline()
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.core.settings import Settings

    cut = {name: cut_parts(name, parts) for name in SWISS}
    folds = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp}/eval.db",
            "archive_dir": Path(tmp) / "originals",
            "jobs_sqlite_path": Path(tmp) / "jobs.db",
            "admin_key": ADMIN_KEY,
            "log_level": "WARNING",
        }
        if weights is not None:
            overrides["model_path"] = weights
        settings = Settings(**overrides)
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            day = 0

            def upload(facility: str, part: dict[str, Any]) -> dict[str, Any]:
                nonlocal day
                day += 1
                r = client.post(
                    f"/v1/facilities/{facility}/images",
                    files={"file": (f"{part['name']}.png", _png(part["image"]), "image/png")},
                    data={
                        "captured_at": f"2024-01-{day % 28 + 1:02d}T10:{day // 28:02d}:00Z",
                        "gsd_m": str(part["gsd_m"]),
                    },
                )
                r.raise_for_status()
                return r.json()

            for held in range(parts):
                reviewed, control = f"yard-fold-{held}", f"twin-fold-{held}"
                for fid in (reviewed, control):
                    client.post("/v1/facilities", json={"id": fid, "name": fid, "kind": "rail"}).raise_for_status()
                for name in SWISS:
                    for k, part in enumerate(cut[name]):
                        if k == held:
                            continue
                        obs = upload(reviewed, part)
                        body = {
                            "objects": [{"class": "railcar", "obb": o.round(2).tolist()} for o in part["objects"]],
                            "ignore": [g.round(2).tolist() for g in part["ignore"]],
                            "exhaustive": True,
                            "classes": ["railcar"],
                        }
                        r = client.put(f"/v1/observations/{obs['id']}/review", json=body)
                        if r.status_code != 200:
                            raise RuntimeError(f"review of {part['name']} refused: {r.text}")
                calibration = client.get(f"/v1/facilities/{reviewed}").json()["calibration"]
                rows = []
                for name in SWISS:
                    part = cut[name][held]
                    before = score_part(part, upload(control, part)["detections"])
                    after = score_part(part, upload(reviewed, part)["detections"])
                    rows.append({"before": before, "after": after})
                folds.append({"held_back": held + 1, "calibration": calibration, "parts": rows})
    return {"parts": parts, "folds": folds, "summary": summarise(folds)}


def summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over every held-back part, before and after the reviews."""
    out = {}
    for when in ("before", "after"):
        rows = [p[when] for f in folds for p in f["parts"]]
        tp, fp = sum(r["tp"] for r in rows), sum(r["fp"] for r in rows)
        true, err = sum(r["true"] for r in rows), sum(r["count_error"] for r in rows)
        out[when] = {
            "parts": len(rows),
            "true": true,
            "counted": sum(r["counted"] for r in rows),
            "count_error_over_true": round(err / max(true, 1), 3),
            "precision": round(tp / max(tp + fp, 1), 3),
            "recall": round(tp / max(true, 1), 3),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=2, help="strips each image is cut into (one held back per fold)")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    result = run(a.parts, a.weights)
    for f in result["folds"]:
        print(f"fold {f['held_back']}: calibration {json.dumps(f['calibration'].get('railcar'))}")
        for p in f["parts"]:
            b, c = p["before"], p["after"]
            print(
                f"  {b['part']}: true {b['true']}-{b['true_max']}  counted {b['counted']} -> {c['counted']}  "
                f"P {b['precision']} -> {c['precision']}  R {b['recall']} -> {c['recall']}"
            )
    print(json.dumps(result["summary"], indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
