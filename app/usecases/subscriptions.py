"""Subscriptions: a vendor's STAC catalog followed. Create (the URL checked against ``WAGON_FETCH_ALLOWED_HOSTS``
and read once to learn its kind), list, show and delete; polling is :mod:`app.usecases.subscription_polls`.

Kinds: ``static`` (a catalog or collection JSON, walked with pystac) or ``api`` (a STAC API: the URL of its item
search, or its landing page, whose ``search`` link is then followed). Without ``kind`` it is told from the document:
a FeatureCollection is a search endpoint; a catalog with a ``search`` link is an API; another catalog is static.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select

from app import database as db
from app.core.errors import InvalidInputError, NotFoundError
from app.core.validation import iso
from app.usecases.remote_json import fetch_json

if TYPE_CHECKING:
    from app.core.settings import Settings

#: Least and most minutes between two polls.
MIN_INTERVAL, MAX_INTERVAL = 5, 10080
KINDS = ("static", "api")


@dataclass(frozen=True)
class NewSubscription:
    """What a subscription is made of, as asked."""

    url: str
    interval_minutes: int
    kind: str | None = None
    collections: list[str] | None = None
    facilities: list[str] | None = None
    name: str | None = None


def detect_kind(settings: Settings, url: str, kind: str | None) -> tuple[str, str]:
    """``(kind, url to poll)`` of a catalog URL, read once; :class:`InvalidInputError` saying why it cannot be
    followed (a host not allowed, unreachable, not STAC, or not of the kind asked for)."""
    doc, final = fetch_json(settings, url, "the catalog")
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{url} is not a STAC catalog, collection or API (not a JSON object)")
    doc_type = doc.get("type")
    if doc_type == "FeatureCollection":
        if kind == "static":
            raise InvalidInputError(f"{url} is a STAC API search page, not a static catalog (use kind api)")
        return "api", url
    if doc_type not in ("Catalog", "Collection"):
        raise InvalidInputError(f"{url} is not a STAC catalog, collection or API (its type is {doc_type!r})")
    search = _search_link(doc, final)
    if kind == "api" or (kind is None and search is not None):
        if search is None:
            raise InvalidInputError(f"{url} is a STAC catalog without a search link: not a STAC API (use kind static)")
        return "api", search
    return "static", url


def _search_link(doc: dict[str, Any], base: str) -> str | None:
    from urllib.parse import urljoin

    for link in doc.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "search" and isinstance(link.get("href"), str):
            if str(link.get("method", "GET")).upper() == "GET":
                return urljoin(base, link["href"])
    return None


def _check(new: NewSubscription) -> None:
    if not MIN_INTERVAL <= new.interval_minutes <= MAX_INTERVAL:
        raise InvalidInputError(f"interval_minutes must be from {MIN_INTERVAL} to {MAX_INTERVAL}")
    if new.kind is not None and new.kind not in KINDS:
        raise InvalidInputError(f"kind must be static or api, not {new.kind!r}")
    if new.collections is not None and not new.collections:
        raise InvalidInputError("collections, when given, must name at least one collection")
    if new.facilities is not None and not new.facilities:
        raise InvalidInputError("facilities, when given, must name at least one facility")


def create(store: db.Store, settings: Settings, new: NewSubscription, created_by: str) -> dict[str, Any]:
    """Check and store a subscription (first poll due at once); its :func:`show` form."""
    _check(new)
    if new.facilities is not None:
        with store.session() as session:
            known = {f.id for f, _ in db.list_facilities(session)}
        unknown = [f for f in new.facilities if f not in known]
        if unknown:
            raise NotFoundError(f"facilities not found: {', '.join(repr(f) for f in unknown)}")
    kind, url = detect_kind(settings, new.url.strip(), new.kind)
    sub_id = str(uuid.uuid4())
    now = db.utcnow()
    with store.transaction() as session:
        session.add(
            db.Subscription(
                id=sub_id,
                name=new.name,
                url=url,
                kind=kind,
                collections=None if new.collections is None else list(dict.fromkeys(new.collections)),
                facilities=None if new.facilities is None else list(dict.fromkeys(new.facilities)),
                interval_minutes=new.interval_minutes,
                created_by=created_by,
                created_at=now,
                next_poll_at=now,
            )
        )
    return show(store, sub_id)


def _counts(session: Any, ids: list[str]) -> dict[str, dict[str, int]]:
    item = db.SubscriptionItem
    rows = session.execute(
        select(
            item.subscription_id,
            func.count(),
            func.sum(case((item.scene_job_id.is_not(None), 1), else_=0)),
            func.sum(case((item.status.in_(("failed", "given_up")), 1), else_=0)),
        )
        .where(item.subscription_id.in_(ids))
        .group_by(item.subscription_id)
    )
    return {
        sid: {"items_seen": int(n), "scenes_submitted": int(s or 0), "failures": int(f or 0)} for sid, n, s, f in rows
    }


def _when(value: datetime | None) -> str | None:
    return None if value is None else iso(value)


def _to_dict(sub: db.Subscription, counts: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": sub.id,
        "name": sub.name,
        "url": sub.url,
        "kind": sub.kind,
        "collections": sub.collections,
        "facilities": sub.facilities,
        "interval_minutes": sub.interval_minutes,
        "created_at": iso(sub.created_at),
        "last_polled_at": _when(sub.last_polled_at),
        "next_poll_at": iso(sub.next_poll_at),
        "last_error": sub.last_error,
        **(counts or {"items_seen": 0, "scenes_submitted": 0, "failures": 0}),
    }


def list_all(store: db.Store) -> list[dict[str, Any]]:
    """Every subscription, oldest first, with its counts."""
    with store.session() as session:
        subs = list(session.scalars(select(db.Subscription).order_by(db.Subscription.created_at, db.Subscription.id)))
        counts = _counts(session, [s.id for s in subs]) if subs else {}
        return [_to_dict(s, counts.get(s.id)) for s in subs]


def show(store: db.Store, sub_id: str) -> dict[str, Any]:
    """One subscription with its counts; :class:`NotFoundError`."""
    with store.session() as session:
        sub = session.get(db.Subscription, sub_id)
        if sub is None:
            raise NotFoundError(f"subscription {sub_id!r} not found")
        return _to_dict(sub, _counts(session, [sub_id]).get(sub_id))


def items(store: db.Store, sub_id: str) -> list[dict[str, Any]]:
    """The items a subscription found, in the order found."""
    with store.session() as session:
        rows = session.scalars(
            select(db.SubscriptionItem)
            .where(db.SubscriptionItem.subscription_id == sub_id)
            .order_by(db.SubscriptionItem.id)
        )
        return [
            {
                "collection": r.collection,
                "item_id": r.item_id,
                "status": r.status,
                "attempts": r.attempts,
                "scene_job_id": r.scene_job_id,
                "error": r.error,
            }
            for r in rows
        ]


def delete(store: db.Store, sub_id: str) -> dict[str, Any]:
    """Delete a subscription and its items' records (scene jobs it submitted stay); its last form."""
    last = show(store, sub_id)
    with store.transaction() as session:
        session.query(db.SubscriptionItem).filter(db.SubscriptionItem.subscription_id == sub_id).delete()
        session.query(db.Subscription).filter(db.Subscription.id == sub_id).delete()
    return last
