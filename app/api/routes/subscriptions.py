"""Subscriptions (admin only): follow a vendor's STAC catalog (static, or a STAC API search), submitting each new
item as a scene job; create, list, show, delete, and poll now."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.api.auth import allow, authenticate
from app.api.deps import RuntimeDep
from app.api.routes.common import TextId, errors
from app.core.errors import ModelUnavailableError
from app.core.validation import NO_CONTROL_PATTERN
from app.usecases import subscriptions
from app.usecases.keys import Access
from app.usecases.subscriptions import MAX_INTERVAL, MIN_INTERVAL, NewSubscription

router = APIRouter(tags=["subscriptions"], dependencies=[allow(Access.ADMIN)])


class SubscriptionIn(BaseModel):
    """A catalog to follow."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=4096,
        description="A static STAC catalog or collection (JSON), a STAC API search endpoint or landing page, on a "
        "host of `WAGON_FETCH_ALLOWED_HOSTS`.",
        examples=["https://data.vendor.example/stac/catalog.json"],
    )
    kind: Literal["static", "api"] | None = Field(default=None, description="Default: told from the document.")
    collections: list[str] | None = Field(
        default=None, min_length=1, max_length=100, description="Collection ids to keep (default: all)."
    )
    interval_minutes: int = Field(ge=MIN_INTERVAL, le=MAX_INTERVAL, description="Minutes between two polls.")
    facilities: list[str] | None = Field(
        default=None, min_length=1, max_length=10_000, description="Facility ids to limit the scenes to (default: all)."
    )
    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_CONTROL_PATTERN)


class SubscriptionOut(BaseModel):
    """A subscription with what its polls did."""

    id: str
    name: str | None
    url: str = Field(description="What is polled (for an API: its search endpoint).")
    kind: str = Field(description="`static` or `api`.")
    collections: list[str] | None
    facilities: list[str] | None
    interval_minutes: int
    created_at: datetime
    last_polled_at: datetime | None
    next_poll_at: datetime
    last_error: str | None = Field(description="What went wrong at the last poll (the catalog, or an item).")
    items_seen: int = Field(description="Items found so far (each counted once).")
    scenes_submitted: int = Field(description="Items submitted as scene jobs.")
    failures: int = Field(description="Items not submitted (retried at the next polls, a few times in all).")


class SubscriptionListOut(BaseModel):
    """Every subscription, oldest first."""

    subscriptions: list[SubscriptionOut]


class PollOut(BaseModel):
    """What one poll found: the items submitted (with their scene jobs), those that failed, and those seen before."""

    subscription_id: str
    polled_at: datetime
    error: str | None = Field(description="Why the catalog could not be read (then nothing was submitted).")
    items_found: int
    submitted: list[dict[str, Any]] = Field(description="`{collection, item_id, scene_job_id}` of each new item.")
    failed: list[dict[str, Any]] = Field(description="`{collection, item_id, error, attempts, given_up}`.")
    already_seen: int
    problems: list[str] = Field(description="Links not followed, documents that could not be read.")
    truncated: bool = Field(description="The poll stopped at its bound; the next one goes on.")
    next_poll_at: datetime


def _poller(runtime: Any) -> Any:
    if runtime.subscriptions is None:  # pragma: no cover - the lifespan always makes it
        raise ModelUnavailableError("subscriptions are not available")
    return runtime.subscriptions


@router.post("/subscriptions", status_code=201, response_model=SubscriptionOut, responses=errors(404, 422))
async def create_subscription(body: SubscriptionIn, runtime: RuntimeDep, request: Request) -> SubscriptionOut:
    """Follow a catalog: its URL must be on an allowed host and read as STAC (422 saying why not). The first poll
    is due at once; each new item becomes a scene job as `POST /v1/scenes` with `{"stac_item": item}`."""
    principal = await authenticate(request)
    new = NewSubscription(
        url=body.url,
        interval_minutes=body.interval_minutes,
        kind=body.kind,
        collections=body.collections,
        facilities=body.facilities,
        name=body.name,
    )
    made = await run_in_threadpool(subscriptions.create, runtime.store, runtime.settings, new, principal.scope)
    return SubscriptionOut.model_validate(made)


@router.get("/subscriptions", response_model=SubscriptionListOut)
async def list_subscriptions(runtime: RuntimeDep) -> SubscriptionListOut:
    """Every subscription with its last and next poll, last error and counts."""
    subs = await run_in_threadpool(subscriptions.list_all, runtime.store)
    return SubscriptionListOut(subscriptions=[SubscriptionOut.model_validate(s) for s in subs])


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionOut, responses=errors(404))
async def get_subscription(subscription_id: TextId, runtime: RuntimeDep) -> SubscriptionOut:
    """One subscription."""
    return SubscriptionOut.model_validate(await run_in_threadpool(subscriptions.show, runtime.store, subscription_id))


@router.delete("/subscriptions/{subscription_id}", response_model=SubscriptionOut, responses=errors(404))
async def delete_subscription(subscription_id: TextId, runtime: RuntimeDep) -> SubscriptionOut:
    """Stop following a catalog (the scene jobs it submitted stay)."""
    return SubscriptionOut.model_validate(await run_in_threadpool(subscriptions.delete, runtime.store, subscription_id))


@router.post("/subscriptions/{subscription_id}/poll", response_model=PollOut, responses=errors(404, 409))
async def poll_subscription(subscription_id: TextId, runtime: RuntimeDep) -> PollOut:
    """Poll now (and schedule the next poll an interval later): what was found and submitted. 409 while another
    poll of it runs."""
    poller = _poller(runtime)
    return PollOut.model_validate(await run_in_threadpool(poller.poll, subscription_id))
