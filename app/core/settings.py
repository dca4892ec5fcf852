"""The one settings object: every knob of the service, read from ``WAGON_*`` environment variables."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.validation import CAPTURE_EARLIEST, CAPTURE_MAX_FUTURE_DAYS, CaptureWindow

#: Directory holding the ``app`` package; relative model paths are resolved against it.
PROJECT_ROOT: Path = Path(__file__).resolve().parents[2]

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Service configuration. Each field ``x`` is set by the environment variable ``WAGON_X``."""

    model_config = SettingsConfigDict(env_prefix="WAGON_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite:///./var/wagon.db",
        description="SQLAlchemy database URL: SQLite, or PostgreSQL as "
        "`postgresql+psycopg://USER:PASSWORD@HOST:5432/DB`. For SQLite files the parent directory is created on "
        "start-up; the schema is migrated to the newest at every start-up.",
    )
    model_path: Path = Field(
        default=Path("models/wagon-obb.pt"),
        description="Detector weights. A relative path is resolved against the project directory "
        "(the directory that contains the `app` package), not the working directory.",
    )
    load_model: bool = Field(
        default=True,
        description="Load the detector at start-up. When false the service runs without a model "
        "(facility and observation-import routes work; image uploads answer 503).",
    )
    max_upload_mb: float = Field(
        default=512, gt=0, description="Largest accepted image upload in MiB; larger requests are refused with 413."
    )
    max_pixels: int = Field(
        default=100_000_000,
        gt=0,
        description="Largest JPEG/PNG (decoded whole) in pixels (width x height), checked from the image header "
        "before decoding; larger ones are refused with 413 (send such a scene as a GeoTIFF, which is read window "
        "by window under `WAGON_MAX_SCENE_PIXELS`).",
    )
    inference_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads the detector may use per inference (passed to the model loader). "
        "Unset: the loader decides. Keep workers x threads <= CPU cores.",
    )
    runtime: Literal["auto", "torch", "onnx", "openvino"] = Field(
        default="auto",
        description="Inference runtime: `openvino` (OpenVINO on `<weights>_openvino_model/`), `onnx` (ONNX Runtime "
        "on `<weights>.onnx`; both exports made by `wagon-detector export`), `torch` (PyTorch eager), or `auto` "
        "(the fastest export present: OpenVINO, then ONNX, else PyTorch). All give the same detections "
        "(docs/performance.md).",
    )
    openvino_precision: Literal["f32", "auto", "bf16"] = Field(
        default="f32",
        description="OpenVINO inference precision. `f32` matches PyTorch; `auto`/`bf16` use bfloat16 on CPUs with "
        "AMX or AVX512-BF16 (about 3x faster there, but counts differ from PyTorch's on a quarter of chips; "
        "see docs/performance.md).",
    )
    tta: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Test-time augmentation: `on` runs every tile also mirrored three ways and joins the views' "
        "boxes (four network passes: better counts and boxes, about four times the inference time), `off` runs "
        "it once, `auto` does what the model's sidecar JSON says (the shipped model: one pass; models/MODEL_CARD.md).",
    )
    candidate_floor: float = Field(
        default=0.1,
        ge=0.01,
        le=0.9,
        description="Lowest detector score kept as a candidate. Counts are of the detections at or above the "
        "operating threshold in force for the facility and class; candidates below it are stored too "
        "(`?include=candidates`), so that a facility's calibrated threshold can recount stored images without "
        "running the model again (docs/reviews.md).",
    )
    max_concurrent_inferences: int = Field(
        default=1,
        ge=1,
        description="How many image analyses may run at once in one process; further uploads wait their turn "
        "without blocking the event loop.",
    )
    max_queued_inferences: int = Field(
        default=8,
        ge=0,
        description="How many uploads may wait for an inference slot beyond those running; further uploads are "
        "refused at once with 503 and a `Retry-After` header.",
    )
    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest time one request may take, body upload included; a request still running then "
        "answers 504 (an inference already running finishes in its thread and is discarded, its slot released "
        "when it ends).",
    )
    log_format: Literal["json", "plain"] = Field(
        default="json",
        description="Log line format of the service: `json` (one object per line, with `request_id`) or `plain`.",
    )
    count_rel_error: float = Field(
        default=0.20,
        ge=0,
        le=1,
        description="Detector count error assumed for an uploaded count, as a share of the true count (kept above "
        "what the shipped model measures on its evaluation images: models/MODEL_CARD.md); with the detection "
        "confidences it sets the uncertainty the count is scored with.",
    )
    capture_earliest: datetime = Field(
        default=CAPTURE_EARLIEST,
        description="Earliest capture time accepted (`captured_at` of uploads, imports and jobs), ISO 8601 with "
        "timezone; earlier ones are refused with 422.",
    )
    capture_max_future_days: float = Field(
        default=CAPTURE_MAX_FUTURE_DAYS,
        ge=0,
        le=366,
        description="How far ahead of the server's clock a capture time may lie, days (clock skew); later ones are "
        "refused with 422.",
    )
    max_railcars: int = Field(
        default=5_000,
        ge=1,
        le=1_000_000,
        description="Most railcars one imported observation may count; a row with more is refused with 422 (a "
        "count that no yard holds would distort every facility's cold-start prior).",
    )
    max_containers: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000,
        description="Most containers one imported observation may count; a row with more is refused with 422.",
    )
    webhook_url: str | None = Field(
        default=None,
        description="Alerts (counts crossing a facility's thresholds) are POSTed here as JSON; unset: none are "
        "sent (they are still queued and listed).",
    )
    webhook_poll_s: float = Field(default=5.0, gt=0, description="How often due webhook deliveries are tried.")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one webhook POST.")
    webhook_backoff_s: float = Field(default=5.0, gt=0, description="Wait after a first failed delivery; doubles.")
    webhook_max_backoff_s: float = Field(default=3600.0, gt=0, description="Longest wait between retries.")
    webhook_max_attempts: int = Field(
        default=0,
        ge=0,
        description="Attempts before a delivery is marked failed (kept; requeue via the API); 0: retry forever.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Logging level of the service and the CLI."
    )
    # ---- imagery as vendors deliver it (GeoTIFF scenes, footprints, big scenes, jobs, archive)
    max_scene_pixels: int = Field(
        default=2_500_000_000,
        gt=0,
        description="Largest GeoTIFF / JPEG 2000 / NITF scene in pixels (width x height). These are read window "
        "by window, so `WAGON_MAX_PIXELS` (whole-image decoding) does not apply to them; larger scenes get 413.",
    )
    max_aspect_ratio: float = Field(
        default=50.0,
        ge=1.0,
        description="Longest side of an image at most this many times its shortest; thinner strips get 422 before "
        "decoding (they hold no facility and cost hundreds of empty tiles).",
    )
    max_upsample: float = Field(
        default=4.0,
        ge=1.0,
        description="Most an image is enlarged to reach the model's working GSD (4 at 0.4 m/px: gsd_m up to 1.6); "
        "coarser images get 422 before decoding (wagons are not resolved, and enlarging costs the square of it). "
        "An image's pixels once resampled are also bounded by `WAGON_MAX_SCENE_PIXELS` (413).",
    )
    stretch_8bit: bool = Field(
        default=False,
        description="Apply the per-band percentile stretch to 8-bit rasters too (deeper data is always stretched).",
    )
    estimate_gsd: bool = Field(
        default=True,
        description="When an image comes with no GSD (no gsd_m, no geotransform, and no agreeing GSD given to the "
        "facility's recent uploads), estimate it from a first detector pass (the sizes of the containers and "
        "railcars found) and resample to the working GSD; off runs such an image at its own scale.",
    )
    gdal_cache_mb: int = Field(default=256, ge=16, description="GDAL block cache while a scene is read, MiB.")
    footprint_margin_m: float = Field(
        default=50.0, ge=0, description="Margin around a facility footprint read with it, metres."
    )
    archive_dir: Path = Field(
        default=Path("var/originals"),
        description="Where original uploads are kept, content-addressed (`<sha256[:2]>/<sha256>`), for overlays "
        "and `wagon-detector reprocess`. A relative path is taken from the working directory.",
    )
    async_upload_mb: float = Field(
        default=64,
        ge=0,
        description="Uploads larger than this (MiB) are analysed in the background: 202 with a job id.",
    )
    async_import_rows: int = Field(
        default=5000,
        ge=0,
        description="Imports of more rows than this are validated, then stored in the background: 202 with a job id.",
    )
    jobs_backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="Task queue of background jobs (huey): `sqlite` (embedded, no server) or `redis` "
        "(several machines; needs the `redis` package and `WAGON_REDIS_URL`).",
    )
    jobs_sqlite_path: Path = Field(
        default=Path("var/jobs.db"), description="Huey's SQLite queue file (jobs_backend=sqlite)."
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis URL (jobs_backend=redis).")
    jobs_queue_name: str = Field(
        default="wagon-detector",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Name of the job queue: deployments sharing one Redis need different names.",
    )
    jobs_worker: bool = Field(
        default=True,
        description="Run a job worker thread inside the API process. Set false when separate "
        "`wagon-detector worker` processes consume the queue.",
    )
    jobs_periodic: bool = Field(
        default=True,
        description="Run the periodic tasks (polling due subscriptions, every minute) in this process's job "
        "workers. Several processes may: a lease lets one at a time poll a subscription.",
    )
    scene_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories whose scenes `POST /v1/scenes` may read in place by path (a JSON list, e.g. "
        '`["/data/scenes"]`). Empty: no path is read.',
    )
    fetch_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts scenes and STAC items may be fetched from by URL (a JSON list of host names, IP "
        'addresses or networks, e.g. `["data.vendor.example", "10.1.2.0/24"]`). A host name reaches public '
        "addresses only: an address in a private, loopback or link-local range is reached only when it (or its "
        "network) is listed itself. Empty: scenes by reference are off.",
    )
    fetch_max_mb: float = Field(
        default=4096, gt=0, description="Largest scene fetched by URL, MiB (its size, and the bytes read of it)."
    )
    fetch_connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds to connect to a scene's server before giving up."
    )
    fetch_read_timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds a scene's server may stay silent during a response before giving up."
    )
    fetch_retries: int = Field(
        default=3, ge=0, le=10, description="Retries (with backoff) of a scene request answered 5xx or dropped."
    )
    overlay_max_px: int = Field(default=2048, ge=128, description="Longest side of `overlay.png`, pixels.")
    cors_origins: str = Field(
        default="",
        description="Browser origins allowed to call the API from other sites (CORS), comma-separated, e.g. "
        "`https://dash.example.org`; `*` allows any. Empty: no CORS headers (same-origin only).",
    )

    # ---- access control
    auth: bool = Field(
        default=True,
        description="Require an API key (`Authorization: Bearer <key>`) on every route except `/healthz`, the "
        "docs and the dashboard page. `false`/`off` opens everything to anyone who can reach the service (local "
        "demos only; logged as a warning at start-up and reported by `/healthz`).",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="The first admin key (at least 32 characters), stored on a first start with no keys. Unset: "
        "the service makes one and prints it once on stderr. Ignored once any key exists.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def resolved_model_path(self) -> Path:
        """``model_path`` made absolute (relative paths are taken from the project directory)."""
        path = Path(self.model_path).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def cors_origin_list(self) -> list[str]:
        """``cors_origins`` as a list (empty: CORS off)."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def admin_key_value(self) -> str | None:
        """``admin_key`` in clear (also when set by ``model_copy`` as a plain string)."""
        key = self.admin_key
        return key.get_secret_value() if isinstance(key, SecretStr) else key

    @field_validator("capture_earliest")
    @classmethod
    def _aware_capture_earliest(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("capture_earliest needs a timezone (e.g. 1960-01-01T00:00:00Z)")
        return value

    @property
    def capture_window(self) -> CaptureWindow:
        """The capture times accepted (``capture_earliest``, ``capture_max_future_days``)."""
        return CaptureWindow(self.capture_earliest, self.capture_max_future_days)

    @property
    def max_counts(self) -> dict[str, int]:
        """The most objects of each class one observation may count."""
        return {"railcar": self.max_railcars, "container": self.max_containers}

    @property
    def fetch_max_bytes(self) -> int:
        """``fetch_max_mb`` in bytes."""
        return int(self.fetch_max_mb * MIB)

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * MIB)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment (cached for the process)."""
    return Settings()
