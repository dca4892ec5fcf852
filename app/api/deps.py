"""Typed dependencies shared by the routes: settings, store, detector, the inference gate and the anomaly prefitter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.core.backpressure import InferenceGate
from app.core.settings import Settings
from app.database import Store
from app.scoring.fit_cache import Prefitter
from app.usecases.images import DetectorProtocol
from app.usecases.jobs import JobQueue
from app.usecases.scene_jobs import SceneJobs
from app.usecases.subscription_polls import SubscriptionPoller


@dataclass
class Runtime:
    """Per-process state created by the lifespan and kept in ``app.state.runtime``."""

    settings: Settings
    store: Store
    detector: DetectorProtocol | None
    inference_gate: InferenceGate
    jobs: JobQueue | None = None
    scenes: SceneJobs | None = None  # scene jobs, on the same queue
    subscriptions: SubscriptionPoller | None = None  # polls subscriptions, submitting scene jobs
    prefitter: Prefitter | None = None  # fits a facility's next anomaly models after its writes


def get_runtime(request: Request) -> Runtime:
    """The running app's :class:`Runtime`."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def request_prefit(request: Request, facility_id: str) -> None:
    """After a write to a facility's history has committed: fit its next anomaly models in the background."""
    prefitter = get_runtime(request).prefitter
    if prefitter is not None:
        prefitter.request(facility_id)


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return get_runtime(request).settings


def get_store(request: Request) -> Store:
    """The app's store."""
    return get_runtime(request).store


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
