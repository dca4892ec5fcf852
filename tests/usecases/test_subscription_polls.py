"""The periodic check polls only due subscriptions not held by another poll's lease, and is a huey periodic task."""

from __future__ import annotations

from datetime import timedelta

from app import database as db
from app.core.settings import Settings
from app.usecases import subscriptions
from app.usecases.jobs import JobQueue
from app.usecases.scene_jobs import SceneJobs
from app.usecases.subscription_polls import TASK_NAME, PollBusyError, SubscriptionPoller
from tests.support.range_server import RangeServer
from tests.support.stac_catalogs import serve_static_catalog, stac_item


def _add(store: db.Store, sub_id: str, url: str, next_in: timedelta, leased: bool = False) -> None:
    now = db.utcnow()
    with store.transaction() as session:
        session.add(
            db.Subscription(
                id=sub_id,
                url=url,
                kind="static",
                interval_minutes=30,
                created_by="-",
                created_at=now,
                next_poll_at=now + next_in,
                claimed_by="another-process" if leased else None,
                lease_until=now + timedelta(hours=2) if leased else None,
            )
        )


def test_poll_due_polls_only_due_unleased_subscriptions(settings: Settings, store: db.Store) -> None:
    settings = settings.model_copy(update={"fetch_allowed_hosts": ["127.0.0.1"]})
    poller = SubscriptionPoller(SceneJobs(JobQueue(settings, store, None)))
    with RangeServer() as server:
        url = serve_static_catalog(server, [stac_item("a", server.url("/a.tif"), "2023-10-15T02:30:00Z")])
        from app.usecases import facilities

        facilities.create_facility(store, "yard", "Yard", "rail")
        _add(store, "due", url, -timedelta(minutes=1))
        _add(store, "later", url, timedelta(minutes=10))
        _add(store, "held", url, -timedelta(minutes=1), leased=True)

        assert poller.due() == ["due"]
        polled = poller.poll_due()
        assert [p["subscription_id"] for p in polled] == ["due"] and [s["item_id"] for s in polled[0]["submitted"]] == [
            "a"
        ]
        shown = {s["id"]: s for s in subscriptions.list_all(store)}
        assert shown["due"]["last_polled_at"] is not None and shown["due"]["scenes_submitted"] == 1
        assert shown["later"]["last_polled_at"] is None and shown["held"]["last_polled_at"] is None
        assert poller.due() == []  # the next poll an interval later
        later = db.utcnow() + timedelta(minutes=31)
        assert sorted(poller.due(later)) == ["due", "later"]  # "held" still under its lease
        try:
            poller.poll("held")
        except PollBusyError as exc:
            assert "being polled" in str(exc)
        else:
            raise AssertionError("a subscription held by another poll was polled")
        # polled again when due: nothing submitted twice
        again = poller.poll_due(later)
        assert sorted(p["subscription_id"] for p in again) == ["due", "later"]
        assert {p["subscription_id"]: len(p["submitted"]) for p in again} == {"due": 0, "later": 1}
    with store.session() as session:
        assert session.query(db.SceneJob).count() == 2


def test_the_periodic_check_is_a_huey_periodic_task_every_minute(settings: Settings, store: db.Store) -> None:
    poller = SubscriptionPoller(SceneJobs(JobQueue(settings, store, None)))
    huey = poller.scenes.queue.huey
    for minute in (0, 17, 59):
        when = db.utcnow().replace(minute=minute, tzinfo=None)
        assert TASK_NAME in [t.name for t in huey.read_periodic(when)]
