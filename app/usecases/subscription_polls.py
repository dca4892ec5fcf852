"""Polling subscriptions: read the catalog (:mod:`app.usecases.stac_static` or :mod:`app.usecases.stac_search`)
and submit each new item as a scene job, exactly as ``POST /v1/scenes`` with ``{"stac_item": item}`` would.

Once per item: each item (by collection and id) gets a ``subscription_items`` row the first time it is seen (a
unique index), and only the poll that inserted the row, or that moved a failed row on with one conditional update,
submits it; the scene job's ``Idempotency-Key`` is derived from the subscription and the item too. An item that
cannot be submitted is recorded with the error and tried again at the next polls, :data:`MAX_ATTEMPTS` times in all.

One poll of a subscription at a time: a poll claims the subscription with a lease (one conditional update), so
two processes never poll it at once. The job workers' scheduler runs :meth:`SubscriptionPoller.poll_due` every
minute (a huey periodic task), polling the subscriptions whose ``next_poll_at`` has come.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from app import database as db
from app.core.errors import ConflictError, InvalidInputError, NotFoundError, ServiceError
from app.core.validation import iso
from app.usecases import scene_runs, scene_sources, stac_search, stac_static
from app.usecases.catalog_items import Found, FoundItem
from app.usecases.keys import Principal

if TYPE_CHECKING:
    from app.usecases.scene_jobs import SceneJobs

log = logging.getLogger(__name__)

TASK_NAME = "wagon.poll_subscriptions"
#: Seconds a poll's claim on a subscription holds.
LEASE_S = 900.0
#: Tries of an item that cannot be submitted, in all.
MAX_ATTEMPTS = 5
#: A STAC API search looks back this far before the last complete poll (items published late).
SEARCH_OVERLAP = timedelta(days=2)
#: An item left ``submitting`` this long (its poll died) is tried again.
STALE_SUBMITTING = timedelta(minutes=15)


class PollBusyError(ConflictError):
    """Another process is polling this subscription now."""


def item_key(sub_id: str, found: FoundItem) -> str:
    """The scene job's ``Idempotency-Key`` of an item of a subscription."""
    digest = hashlib.sha256(f"{found.collection}\0{found.item_id}".encode()).hexdigest()[:32]
    return f"subscription:{sub_id}:{digest}"


class SubscriptionPoller:
    """Polls subscriptions, submitting scene jobs on ``scenes``; registers the periodic check on its huey."""

    def __init__(self, scenes: SceneJobs, lease_s: float = LEASE_S) -> None:
        from huey import crontab

        self.scenes = scenes
        self.store = scenes.store
        self.settings = scenes.settings
        self.worker_id = scenes.queue.worker_id
        self.lease_s = lease_s
        self.periodic = scenes.queue.huey.periodic_task(crontab(), name=TASK_NAME)(self.poll_due)

    # ---------------------------------------------------------------------------------------------- scheduling

    def due(self, now: datetime | None = None) -> list[str]:
        """Ids of the subscriptions to poll now (due, and not held by a live lease), soonest first."""
        now = now or db.utcnow()
        sub = db.Subscription
        with self.store.session() as session:
            return list(
                session.scalars(
                    select(sub.id)
                    .where(sub.next_poll_at <= now, or_(sub.lease_until.is_(None), sub.lease_until < now))
                    .order_by(sub.next_poll_at)
                )
            )

    def poll_due(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Poll every due subscription (the periodic task); what each poll found."""
        done = []
        for sub_id in self.due(now):
            try:
                done.append(self.poll(sub_id))
            except (PollBusyError, NotFoundError):
                continue  # another process took it, or it was deleted
            except Exception:
                log.exception("subscription %s: poll failed", sub_id)
        return done

    # ---------------------------------------------------------------------------------------------- lease

    def _claim(self, sub_id: str) -> bool:
        now = db.utcnow()
        sub = db.Subscription
        with self.store.transaction() as session:
            result = session.execute(
                update(sub)
                .where(sub.id == sub_id, or_(sub.lease_until.is_(None), sub.lease_until < now))
                .values(claimed_by=self.worker_id, lease_until=now + timedelta(seconds=self.lease_s))
                .execution_options(synchronize_session=False)
            )
            return cast(CursorResult, result).rowcount == 1  # an UPDATE's result is a CursorResult

    def _finish(self, sub_id: str, **fields: Any) -> None:
        sub = db.Subscription
        with self.store.transaction() as session:
            session.execute(
                update(sub)
                .where(sub.id == sub_id, sub.claimed_by == self.worker_id)
                .values(claimed_by=None, lease_until=None, **fields)
                .execution_options(synchronize_session=False)
            )

    # ---------------------------------------------------------------------------------------------- poll

    def poll(self, sub_id: str) -> dict[str, Any]:
        """Poll one subscription now: what it found, submitted and failed to submit. :class:`NotFoundError`;
        :class:`PollBusyError` while another poll holds it."""
        with self.store.session() as session:
            sub = session.get(db.Subscription, sub_id)
            if sub is None:
                raise NotFoundError(f"subscription {sub_id!r} not found")
            session.expunge(sub)
        if not self._claim(sub_id):
            raise PollBusyError(f"subscription {sub_id} is being polled now; try again later")
        started = db.utcnow()
        out: dict[str, Any] = {"subscription_id": sub_id, "polled_at": iso(started), "error": None}
        fields: dict[str, Any] = {
            "last_polled_at": started,
            "next_poll_at": started + timedelta(minutes=sub.interval_minutes),
        }
        try:
            found = self._find(sub)
        except InvalidInputError as exc:
            out.update(items_found=0, submitted=[], failed=[], already_seen=0, problems=[], truncated=False)
            out["error"] = str(exc)[:2000]
            fields["last_error"] = out["error"]
            self._finish(sub_id, **fields)
            log.warning("subscription %s: %s", sub_id, exc)
            return {**out, "next_poll_at": iso(fields["next_poll_at"])}
        submitted: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        seen = 0
        for item in found.items:
            attempt = self._take(sub_id, item)
            if attempt is None:
                seen += 1
                continue
            try:
                job_id = self._submit(sub, item)
            except (ServiceError, PermissionError) as exc:
                final = attempt >= MAX_ATTEMPTS
                self._record(sub_id, item, "given_up" if final else "failed", error=str(exc)[:2000])
                failed.append({**_ids(item), "error": str(exc), "attempts": attempt, "given_up": final})
                continue
            self._record(sub_id, item, "submitted", scene_job_id=job_id)
            submitted.append({**_ids(item), "scene_job_id": job_id})
        if not found.truncated:
            fields["searched_until"] = started
        problem = (failed[0]["error"] if failed else None) or (found.problems[0] if found.problems else None)
        fields["last_error"] = None if problem is None else problem[:2000]
        self._finish(sub_id, **fields)
        log.info("subscription %s polled: %d new scene(s), %d failed", sub_id, len(submitted), len(failed))
        out.update(
            items_found=len(found.items),
            submitted=submitted,
            failed=failed,
            already_seen=seen,
            problems=found.problems[:100],
            truncated=found.truncated,
            next_poll_at=iso(fields["next_poll_at"]),
        )
        return out

    def _find(self, sub: db.Subscription) -> Found:
        if sub.kind == "static":
            return stac_static.walk(self.settings, sub.url, sub.collections)
        since = None if sub.searched_until is None else sub.searched_until - SEARCH_OVERLAP
        return stac_search.search(self.settings, sub.url, sub.collections, since)

    def _submit(self, sub: db.Subscription, found: FoundItem) -> str:
        """Submit an item as ``POST /v1/scenes`` with ``{"stac_item": item}`` by the subscription's creator would."""
        principal = Principal(key_id=None if sub.created_by == "-" else sub.created_by, role="admin")
        chosen, skipped = scene_runs.choose_facilities(self.store, principal, sub.facilities)
        source = scene_sources.source_of_item(self.settings, found.item)[0]
        request = scene_runs.make_request(self.settings, source, None, None, chosen, skipped)
        job_id, _created = self.scenes.submit(request, principal.scope, item_key(sub.id, found))
        return job_id

    # ---------------------------------------------------------------------------------------------- items

    def _take(self, sub_id: str, found: FoundItem) -> int | None:
        """The attempt number if this poll is to submit the item (first seen, or failed before), else None."""
        now = db.utcnow()
        try:
            with self.store.transaction() as session:
                session.add(
                    db.SubscriptionItem(
                        subscription_id=sub_id,
                        collection=found.collection,
                        item_id=found.item_id,
                        status="submitting",
                        attempts=1,
                        first_seen_at=now,
                        updated_at=now,
                    )
                )
            return 1
        except IntegrityError:
            pass  # seen before (or by a concurrent poll)
        item = db.SubscriptionItem
        with self.store.transaction() as session:
            row = session.scalars(select(item).where(*_where(sub_id, found))).first()
            if row is None or row.status in ("submitted", "given_up"):
                return None
            if row.status == "submitting" and row.updated_at > now - STALE_SUBMITTING:
                return None
            result = session.execute(
                update(item)
                .where(item.id == row.id, item.status == row.status, item.attempts == row.attempts)
                .values(status="submitting", attempts=row.attempts + 1, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return row.attempts + 1 if cast(CursorResult, result).rowcount == 1 else None

    def _record(self, sub_id: str, found: FoundItem, status: str, **fields: Any) -> None:
        item = db.SubscriptionItem
        with self.store.transaction() as session:
            session.execute(
                update(item)
                .where(*_where(sub_id, found))
                .values(status=status, updated_at=db.utcnow(), **fields)
                .execution_options(synchronize_session=False)
            )


def _where(sub_id: str, found: FoundItem) -> tuple[Any, ...]:
    item = db.SubscriptionItem
    return (and_(item.subscription_id == sub_id, item.collection == found.collection, item.item_id == found.item_id),)


def _ids(found: FoundItem) -> dict[str, str]:
    return {"collection": found.collection, "item_id": found.item_id}
