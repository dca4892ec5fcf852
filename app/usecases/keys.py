"""API keys and what each role may do; shared by the API and the CLI (nothing here knows about HTTP).

A key reads ``wd_<id>_<secret>``: ``id`` (12 hex digits) is a public handle shown in listings, ``secret`` 32 random
bytes. Only the SHA-256 of the whole key is stored, so a key is shown once, when it is created. Roles:

- ``admin``: everything (facilities, thresholds, keys, uploads to any facility, reading);
- ``reader``: reads everything (facilities, observations, anomalies, deliveries, jobs);
- ``uploader``: uploads images and imports counts to the facilities it was granted, and reads its uploads' jobs.

``last_used_at`` is written at most once per :data:`LAST_USED_INTERVAL_S` per key, so a busy key does not turn
every request into a database write; the API writes it in a background thread, so a request never waits for the
database's write lock just to record that a key was used.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from app import database as db
from app.core.errors import ConflictError, InvalidInputError, NotFoundError
from app.core.validation import check_text, iso

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("admin", "reader", "uploader", "analyst")
#: Roles that may read everything.
READING_ROLES: frozenset[str] = frozenset({"reader", "analyst"})
KEY_PREFIX = "wd_"
KEY_PATTERN = re.compile(r"^wd_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}$")
#: Shortest key accepted from ``WAGON_ADMIN_KEY``.
MIN_KEY_LENGTH = 32
#: ``last_used_at`` is refreshed at most this often per key.
LAST_USED_INTERVAL_S = 60.0
#: Idempotency scope of requests made while authentication is off.
ANONYMOUS_SCOPE = "-"


class Access(StrEnum):
    """What a route needs."""

    PUBLIC = "public"  # anyone, no key
    READ = "read"  # readers, analysts and admins
    REVIEW = "review"  # analysts and admins
    UPLOAD = "upload"  # admins, and uploaders granted the facility
    JOB = "job"  # readers and admins, and uploaders granted the job's facility
    SCENE = "scene"  # admins, and uploaders (reaching the facilities they were granted)
    SCENE_JOB = "scene_job"  # readers and admins, and the uploader who submitted the scene
    ADMIN = "admin"  # admins only


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, role and granted facilities (``key_id`` None: authentication is off)."""

    key_id: str | None
    role: str
    facilities: frozenset[str] = frozenset()

    @property
    def scope(self) -> str:
        """Scope of this caller's ``Idempotency-Key`` values."""
        return self.key_id or ANONYMOUS_SCOPE

    def allows(self, access: Access, facility_id: str | None = None) -> bool:
        """Whether this caller may do what ``access`` names (on ``facility_id`` for UPLOAD and JOB)."""
        if access is Access.PUBLIC or self.role == "admin":
            return True
        if access is Access.READ:
            return self.role in READING_ROLES
        if access is Access.REVIEW:
            return self.role == "analyst"
        if access is Access.UPLOAD:
            return self.role == "uploader" and facility_id in self.facilities
        if access is Access.JOB:
            return self.role in READING_ROLES or (self.role == "uploader" and facility_id in self.facilities)
        if access is Access.SCENE:
            return self.role == "uploader"
        if access is Access.SCENE_JOB:
            return self.role in READING_ROLES or self.role == "uploader"
        return False


#: The caller when authentication is switched off: may do everything.
ANONYMOUS = Principal(key_id=None, role="admin")
#: The caller of a public route (no key looked at): may do nothing else.
NOBODY = Principal(key_id=None, role="none")
#: Said at start-up (log) and by ``/healthz`` while authentication is off.
AUTH_OFF_WARNING = (
    "authentication is disabled (WAGON_AUTH=off): anyone who can reach this service can read, "
    "upload and administer it; use only for local demos"
)


@dataclass(frozen=True)
class KeyRecord:
    """A key as listed (never its secret)."""

    id: str
    role: str
    name: str | None
    facilities: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "role": self.role,
            "name": self.name,
            "facilities": list(self.facilities),
            "created_at": iso(self.created_at),
            "last_used_at": None if self.last_used_at is None else iso(self.last_used_at),
            "revoked_at": None if self.revoked_at is None else iso(self.revoked_at),
        }


@dataclass(frozen=True)
class NewKey:
    """A key just created: the secret ``key`` is in no other place."""

    record: KeyRecord
    key: str


def hash_key(key: str) -> str:
    """SHA-256 (hex) of a key: what is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> tuple[str, str]:
    """A fresh ``(id, key)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str:
    """The public id of a key: the one it carries, or (a key made elsewhere) the start of its hash."""
    match = KEY_PATTERN.match(key)
    return match.group(1) if match else hash_key(key)[:12]


def _record(row: db.ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        role=row.role,
        name=row.name,
        facilities=tuple(f.facility_id for f in row.facilities),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _check_grant(role: str, facilities: Iterable[str]) -> list[str]:
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} must be one of {', '.join(ROLES)}")
    granted = sorted(set(facilities))
    if role == "uploader" and not granted:
        raise InvalidInputError('an uploader key needs at least one facility (--facility / "facilities")')
    if role != "uploader" and granted:
        raise InvalidInputError(f"only uploader keys are granted facilities; a {role} key reaches every facility")
    for facility_id in granted:
        check_text(facility_id, "facility id")
    return granted


def create_key(
    store: db.Store, role: str, facilities: Iterable[str] = (), name: str | None = None, key: str | None = None
) -> NewKey:
    """Create a key (``key`` given: store that one, e.g. ``WAGON_ADMIN_KEY``); the secret is returned only here."""
    granted = _check_grant(role, facilities)
    if name is not None and not 1 <= len(name.strip()) <= 200:
        raise InvalidInputError("name must be 1 to 200 characters")
    if name is not None:
        check_text(name, "name")
    if key is not None and len(key) < MIN_KEY_LENGTH:
        raise InvalidInputError(f"a key must be at least {MIN_KEY_LENGTH} characters long")
    for _attempt in range(3):
        key_id, secret = (key_id_of(key), key) if key is not None else generate_key()
        try:
            with store.transaction() as session:
                missing = [f for f in granted if db.get_facility(session, f) is None]
                if missing:
                    raise InvalidInputError(f"unknown facility: {', '.join(missing)} (create it first)")
                row = db.ApiKey(
                    id=key_id,
                    key_hash=hash_key(secret),
                    role=role,
                    name=None if name is None else name.strip(),
                    created_at=db.utcnow(),
                )
                row.facilities = [db.ApiKeyFacility(facility_id=f) for f in granted]
                session.add(row)
                session.flush()
                record = _record(row)
        except IntegrityError:
            if key is not None:
                raise ConflictError("this key exists already") from None
            continue  # an id collision (12 hex digits): draw again
        log.info("created %s key %s", role, key_id)
        return NewKey(record=record, key=secret)
    raise ConflictError("could not draw an unused key id")  # pragma: no cover - 2^-48 odds, three times


def list_keys(store: db.Store) -> list[KeyRecord]:
    """Every key, revoked ones included, oldest first."""
    with store.session() as session:
        rows = session.scalars(select(db.ApiKey).order_by(db.ApiKey.created_at, db.ApiKey.id)).all()
        return [_record(r) for r in rows]


def revoke_key(store: db.Store, key_id: str, allow_last_admin: bool = False) -> KeyRecord:
    """Revoke a key (it stops working at once; revoking twice keeps the first time). Refuses to revoke the last
    active admin key unless ``allow_last_admin``: without one, keys can only be managed on the database."""
    with store.transaction() as session:
        row = session.get(db.ApiKey, key_id)
        if row is None:
            raise NotFoundError(f"key {key_id!r} not found")
        if row.revoked_at is None:
            if row.role == "admin" and not allow_last_admin:
                admins = session.scalar(
                    select(func.count())
                    .select_from(db.ApiKey)
                    .where(db.ApiKey.role == "admin", db.ApiKey.revoked_at.is_(None))
                )
                if int(admins or 0) <= 1:
                    raise ConflictError(f"key {key_id!r} is the last active admin key; create another admin key first")
            row.revoked_at = db.utcnow()
        session.flush()
        record = _record(row)
    log.info("revoked key %s", key_id)
    return record


_touch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wagon-key-use")
_touch_pending: set[str] = set()
_touch_lock = threading.Lock()


def _touch(store: db.Store, key_id: str, now: datetime, stale_before: datetime) -> None:
    with store.transaction() as session:
        session.execute(
            update(db.ApiKey)
            .where(
                db.ApiKey.id == key_id,
                or_(db.ApiKey.last_used_at.is_(None), db.ApiKey.last_used_at < stale_before),
            )
            .values(last_used_at=now)
        )


def _touch_later(store: db.Store, key_id: str, now: datetime, stale_before: datetime) -> None:
    try:
        _touch(store, key_id, now, stale_before)
    except Exception:
        # a missed last-use time must not fail anything
        log.warning("could not record the use of key %s", key_id, exc_info=True)
    finally:
        with _touch_lock:
            _touch_pending.discard(key_id)


def authenticate(store: db.Store, key: str, now: datetime | None = None, wait: bool = True) -> Principal | None:
    """The caller a key belongs to, or None (unknown or revoked). Records the use (at most once a minute): at once,
    or with ``wait=False`` in a background thread."""
    now = now or db.utcnow()
    with store.session() as session:
        row = session.scalars(select(db.ApiKey).where(db.ApiKey.key_hash == hash_key(key))).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        principal = Principal(key_id=row.id, role=row.role, facilities=frozenset(f.facility_id for f in row.facilities))
        stale_before = now - timedelta(seconds=LAST_USED_INTERVAL_S)
        stale = row.last_used_at is None or row.last_used_at < stale_before
    if stale and principal.key_id is not None:
        if wait:
            _touch(store, principal.key_id, now, stale_before)
        else:
            with _touch_lock:
                if principal.key_id in _touch_pending:
                    return principal
                _touch_pending.add(principal.key_id)
            _touch_pool.submit(_touch_later, store, principal.key_id, now, stale_before)
    return principal


def bootstrap_admin(store: db.Store, configured: str | None = None) -> NewKey | None:
    """On a database without keys, create the first admin key (``configured``, from ``WAGON_ADMIN_KEY``, or a
    fresh one) and return it; None when keys exist already. Safe against concurrent start-ups (one transaction,
    the table locked on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite)."""
    if configured is not None and len(configured) < MIN_KEY_LENGTH:
        raise InvalidInputError(f"WAGON_ADMIN_KEY must be at least {MIN_KEY_LENGTH} characters long")
    key_id, secret = (key_id_of(configured), configured) if configured is not None else generate_key()
    with store.transaction() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("LOCK TABLE api_keys IN EXCLUSIVE MODE"))
        if session.scalar(select(func.count()).select_from(db.ApiKey)):
            return None
        row = db.ApiKey(
            id=key_id, key_hash=hash_key(secret), role="admin", name="first admin key", created_at=db.utcnow()
        )
        session.add(row)
        session.flush()
        record = _record(row)
    log.info("created the first admin key %s", key_id)
    return NewKey(record=record, key=secret)
