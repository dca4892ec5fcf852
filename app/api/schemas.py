"""Request and response models of API v1 (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.core.validation import FACILITY_ID_PATTERN, NO_CONTROL_PATTERN

Point = tuple[float, float]


class ErrorOut(BaseModel):
    """Every refusal: a human-readable reason."""

    detail: str


class FieldErrorOut(BaseModel):
    """One invalid field: where (``captured_at``, ``observations[2].counts``) and why."""

    loc: str
    msg: str


class ValidationErrorOut(BaseModel):
    """A 422 refusal: the reason, and each bad field (request validation) or row (imports)."""

    detail: str
    errors: list[FieldErrorOut | str] | None = None


class FacilityCreate(BaseModel):
    """A facility to create."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=FACILITY_ID_PATTERN, description="Lowercase slug, e.g. `tumangang`.", examples=["tumangang"]
    )
    name: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL_PATTERN, examples=["Tumangang rail yard"])
    kind: Literal["rail", "port", "mixed"]
    footprint: dict[str, Any] | None = Field(
        default=None,
        description="GeoJSON Polygon in WGS84 (lon, lat): counts of georeferenced images are of "
        "detections centred inside it, and only the part of the scene covering it (plus a margin) is read.",
        examples=[
            {
                "type": "Polygon",
                "coordinates": [[[130.45, 42.43], [130.46, 42.43], [130.46, 42.42], [130.45, 42.42], [130.45, 42.43]]],
            }
        ],
    )


class FacilityPatch(BaseModel):
    """Fields of a facility to change; `footprint: null` removes the footprint."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_CONTROL_PATTERN)
    footprint: dict[str, Any] | None = Field(default=None, description="GeoJSON Polygon in WGS84, or null.")


class ClassCalibrationOut(BaseModel):
    """What a facility's reviews taught about the detector there, for one class (docs/reviews.md)."""

    reviews: int = Field(description="Reviews in force that calibrate this class.")
    threshold: float = Field(description="Operating threshold in force at this facility (shrunk towards the model's).")
    fitted_threshold: float | None = Field(description="The facility's own best threshold, before shrinking.")
    count_bias: float = Field(description="Relative count error left at the threshold ((detected - true) / true).")
    count_rel_sd: float = Field(description="Its spread: replaces the assumed count error in the anomaly scores.")
    updated_at: datetime


class FacilityOut(BaseModel):
    """A facility."""

    id: str
    name: str
    kind: str
    created_at: datetime
    observation_count: int
    footprint: dict[str, Any] | None = None
    calibration: dict[str, ClassCalibrationOut] | None = Field(
        default=None,
        description="Per class, the calibration learnt from the facility's reviews (one facility only; a class "
        "never reviewed is absent and counted at the model's threshold).",
    )


class AnomalyOut(BaseModel):
    """Score of one class count against the facility's earlier counts of that class."""

    score: float | None = Field(
        description="Surge score: -log10 of the mid-p upper-tail probability under the facility's model "
        "(>= 2 about 1 % of the time when nothing is happening). Null only with no earlier observation and no "
        "other facility of the same kind to pool a prior from. See docs/anomaly.md."
    )
    expected: float | None = Field(description="Predicted count at this time (fitted mean; seasonal/trend when used).")
    history_size: int
    history_max: int | None
    exceeds_history_max: bool
    history_span_days: float | None
    reason: str
    drop_score: float | None = Field(default=None, description="Drop score: -log10 of the mid-p lower tail.")
    model: str | None = Field(default=None, description="How the prediction was made (GLM terms or cold start).")
    count_sd: float | None = Field(
        default=None, description="Uncertainty (sd) of a detector count, integrated into the scores; null: exact."
    )
    highest_in_days: float | None = Field(
        default=None, description="The count is the highest in this many days (since an equal or higher count)."
    )
    lowest_in_days: float | None = Field(
        default=None, description="The count is the lowest in this many days (since an equal or lower count)."
    )
    expected_lo: float | None = Field(
        default=None, description="5 % quantile of the predicted count (with `expected_hi`: the 90 % band)."
    )
    expected_hi: float | None = Field(default=None, description="95 % quantile of the predicted count.")


class DetectionOut(BaseModel):
    """One oriented detection in pixel coordinates of the (EXIF-oriented) image."""

    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", serialization_alias="class")
    confidence: float
    obb: list[Point] = Field(min_length=4, max_length=4, description="Four corner points [x, y].")
    bbox: tuple[float, float, float, float] = Field(description="Axis-aligned box [x1, y1, x2, y2].")
    obb_lonlat: list[Point] | None = Field(
        default=None, description="The four corners as WGS84 [lon, lat] (georeferenced images only)."
    )
    score: float | None = Field(
        default=None,
        description="The score the counting threshold compares (the network's; `confidence` may be calibrated "
        "from it). Null for detections stored before candidates were kept.",
    )


class ModelOut(BaseModel):
    """The detector that produced the counts."""

    name: str
    version: str


class ImageOut(BaseModel):
    """The analysed image."""

    width: int
    height: int
    format: str | None = None
    gsd_m: float | None
    sha256: str
    crs: str | None = Field(default=None, description="CRS of a georeferenced image (EPSG code or WKT).")
    gsd_source: Literal["request", "geotransform", "facility", "estimated"] | None = Field(
        default=None,
        description="Where gsd_m came from: the request, the image's geotransform, the GSD the facility's recent "
        "uploads were given (when they agree), or estimated from the sizes of the objects a first detector pass "
        "found (WAGON_ESTIMATE_GSD).",
    )
    window: list[int] | None = Field(default=None, description="Region read [col, row, width, height].")
    bands: str | None = Field(default=None, description="How the RGB bands were chosen.")


class CoverageOut(BaseModel):
    """How much of the facility footprint the image covered with valid data."""

    share: float = Field(description="Share of the footprint covered by valid (not nodata) pixels, 0-1.")
    in_scene_share: float = Field(description="Share of the footprint inside the image bounds, 0-1.")
    nodata_cut: bool = Field(description="Whether nodata (or alpha) cut the footprint inside the image.")
    edge_cut: bool = Field(description="Whether the image edge cut the footprint.")


class ReviewObjectOut(BaseModel):
    """A true object an analyst marked."""

    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", serialization_alias="class")
    obb: list[Point] = Field(min_length=4, max_length=4)


class ReviewOut(BaseModel):
    """An analyst's review of an observation."""

    id: int
    status: Literal["current", "replaced", "withdrawn"]
    reviewed_at: datetime
    reviewer: str = Field(description="The id of the API key that reviewed (`-` with authentication off).")
    exhaustive: bool = Field(description="Whether every object of the reviewed classes was marked.")
    counts: dict[str, int | None] = Field(description="Verified count per class (null: not verified).")
    objects: list[ReviewObjectOut] | None = Field(default=None, description="The true objects (box reviews).")
    ignore: list[list[Point]] | None = Field(default=None, description="Regions the analyst could not decide.")
    ended_at: datetime | None = None
    ended_by: str | None = None


class ReviewTrailOut(BaseModel):
    """Every review of an observation, oldest first (the one in force has `status` current)."""

    reviews: list[ReviewOut]


class ObservationOut(BaseModel):
    """One observation of a facility. A class with null count is unknown (not counted), not zero."""

    id: int
    facility_id: str
    captured_at: datetime
    source: str
    has_image: bool
    counts: dict[str, int | None]
    anomaly: dict[str, AnomalyOut | None]
    image: ImageOut | None
    model: ModelOut | None
    coverage: CoverageOut | None = Field(default=None, description="Footprint coverage (footprint applied only).")
    exposure: float | None = Field(
        default=None,
        description="Covered share of the footprint, for the anomaly score; null when no footprint applied.",
    )
    review: ReviewOut | None = Field(
        default=None, description="The analyst's review in force (null: not reviewed); lists omit its boxes."
    )
    verified_counts: dict[str, int | None] = Field(
        default_factory=dict,
        description="Counts the review verifies (null: not verified). The history and its anomaly scores use a "
        "verified count wherever there is one; `counts` stays the detector's.",
    )


class ObservationPageOut(BaseModel):
    """A page of a facility's observations; `next_cursor` is null on the last page."""

    observations: list[ObservationOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class FacilityPageOut(BaseModel):
    """A page of facilities (ordered by id); `next_cursor` is null on the last page."""

    facilities: list[FacilityOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class ObservationDetailOut(ObservationOut):
    """One observation with its detections (the counted ones) and, when asked for, its candidates."""

    detections: list[DetectionOut]
    candidates: list[DetectionOut] | None = Field(
        default=None,
        description="Detections kept below the counting threshold, down to the candidate floor "
        "(`?include=candidates` only).",
    )


class TimingOut(BaseModel):
    """Where the time went, in milliseconds."""

    decode: float
    detect: float
    store: float
    total: float


class UploadOut(ObservationDetailOut):
    """Result of an image upload."""

    timing_ms: TimingOut


class JobAcceptedOut(BaseModel):
    """A large upload accepted for background analysis."""

    job_id: str
    status: str
    status_url: str
    image_sha256: str


class ImportJobAcceptedOut(BaseModel):
    """A large import accepted (validated) and queued: follow it at ``status_url``."""

    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    status_url: str


class ImportJobResultOut(BaseModel):
    """What a background import stored."""

    imported: int = Field(description="Observations stored by this import.")
    duplicates: int = Field(description="Rows not stored because they repeat stored observations (or earlier rows).")
    observation_ids: list[int] = Field(description="Ids of the observations stored, oldest first.")


class JobOut(BaseModel):
    """A background job: progress, and the observation (upload) or what was imported (import) when done."""

    id: str
    kind: Literal["upload", "import"] = Field(description="`upload`: a large image; `import`: a large import.")
    status: Literal["queued", "running", "done", "failed"]
    progress: float = Field(description="Share done, 0-1: the scene's windows, or an import's points scored.")
    facility_id: str
    captured_at: datetime | None = Field(description="The upload's capture time (null for an import).")
    image_sha256: str | None = Field(description="The upload's image (null for an import).")
    created_at: datetime
    updated_at: datetime
    error: str | None
    error_status: int | None = Field(description="HTTP status the error would have had in a direct request.")
    observation_id: int | None
    result: UploadOut | None = Field(description="An upload's observation when done.")
    import_result: ImportJobResultOut | None = Field(description="What an import stored, when done.")


class SceneIn(BaseModel):
    """A scene by reference: exactly one of `href`, `stac_item` and `stac_item_href`."""

    model_config = ConfigDict(extra="forbid")

    href: str | None = Field(
        default=None,
        max_length=4096,
        description="URL of a GeoTIFF/COG (JPEG 2000, NITF) on a host of `WAGON_FETCH_ALLOWED_HOSTS`, or the path "
        "of a file under `WAGON_SCENE_DIRS`.",
    )
    stac_item: dict[str, Any] | None = Field(default=None, description="A STAC Item (JSON).")
    stac_item_href: str | None = Field(default=None, max_length=4096, description="URL of a STAC Item.")
    captured_at: str | None = Field(
        default=None,
        description="Acquisition time, ISO 8601 with timezone; required unless the STAC item has a `datetime`.",
    )
    gsd_m: float | None = Field(default=None, description="Ground sample distance, m/pixel (overrides the image's).")
    facilities: list[str] | None = Field(
        default=None, max_length=10_000, description="Facility ids to limit the scene to (default: all)."
    )


class SceneAcceptedOut(BaseModel):
    """A scene accepted for background analysis."""

    job_id: str
    status: str
    status_url: str


class SceneSkipOut(BaseModel):
    """A facility the scene made no observation for, and why."""

    facility_id: str
    reason: str = Field(
        description="`not granted`, `no footprint`, `outside the scene`, `all nodata` or `facility deleted`."
    )


class SceneObservationOut(BaseModel):
    """The observation a scene made at one facility (`created` false: it had been made before)."""

    facility_id: str
    created: bool
    observation: ObservationDetailOut


class SceneResultOut(BaseModel):
    """What a scene job did."""

    observations: list[SceneObservationOut]
    skipped: list[SceneSkipOut]
    source: dict[str, Any] = Field(description="For a URL: `bytes_read`, `size` and `requests` of the fetch.")
    timing_ms: dict[str, float]


class SceneJobOut(BaseModel):
    """A scene job: progress, then the observations per facility and the facilities skipped."""

    id: str
    status: Literal["queued", "running", "done", "failed"]
    progress: float
    captured_at: datetime
    source: dict[str, Any] = Field(description="`kind` (upload, path or url) and `location`.")
    facilities: list[str] = Field(description="The facilities the scene was sent to and may reach.")
    created_at: datetime
    updated_at: datetime
    error: str | None
    error_status: int | None = Field(description="HTTP status that best says why the job failed.")
    result: SceneResultOut | None


class ImportRowIn(BaseModel):
    """One historical observation (documentation of the JSON import body)."""

    model_config = ConfigDict(extra="forbid")

    captured_at: AwareDatetime = Field(examples=["2021-03-04T09:30:00Z"])
    counts: dict[Literal["railcar", "container"], int | None] = Field(
        description="Known counts; a class left out (or null) is unknown, not zero.", examples=[{"railcar": 12}]
    )
    source: str = Field("import", min_length=1, max_length=64, examples=["analyst"])


class ImportIn(BaseModel):
    """JSON import body."""

    model_config = ConfigDict(extra="forbid")

    observations: list[ImportRowIn]


class ImportOut(BaseModel):
    """Result of an import."""

    imported: int = Field(description="Observations stored by this import.")
    observations: list[ObservationOut]
    duplicates: int = Field(
        default=0,
        description="Rows not stored because the facility already had an "
        "observation with the same captured_at, source and counts (or an earlier row did).",
    )


class HealthOut(BaseModel):
    """Liveness and readiness."""

    status: Literal["ok", "degraded"]
    db: bool
    model: ModelOut | None
    version: str
    auth: Literal["enabled", "disabled"] = Field(
        description="`disabled`: WAGON_AUTH is off and anyone who can reach the service may do anything."
    )
    warnings: list[str] = Field(default_factory=list, description="Configuration an operator should fix.")
