"""API keys (admin only): create (the key is in the answer, and nowhere else), list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.api.auth import allow
from app.api.deps import StoreDep
from app.api.routes.common import TextId, errors
from app.core.validation import NO_CONTROL_PATTERN
from app.usecases import keys
from app.usecases.keys import Access

router = APIRouter(tags=["keys"], dependencies=[allow(Access.ADMIN)])


class KeyCreateIn(BaseModel):
    """A key to create. Uploader keys name the facilities they may upload to; other roles reach every facility."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "reader", "uploader", "analyst"]
    facilities: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Facility ids (uploader keys only, at least one).",
        examples=[["tumangang"]],
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=NO_CONTROL_PATTERN,
        description="Who holds the key.",
        examples=["vendor A uploads"],
    )


class KeyOut(BaseModel):
    """A key as listed (its secret is never shown again)."""

    id: str = Field(description="Public handle of the key (the 12 hex digits after `wd_`).")
    role: str
    name: str | None
    facilities: list[str]
    created_at: datetime
    last_used_at: datetime | None = Field(description="Last request with the key (refreshed at most once a minute).")
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    """A new key: `key` is shown only in this answer."""

    key: str = Field(description="The secret key: send it as `Authorization: Bearer <key>`. Store it now.")


class KeyListOut(BaseModel):
    """Every key, revoked ones included, oldest first."""

    keys: list[KeyOut]


@router.post("/keys", status_code=201, response_model=KeyCreatedOut, responses=errors(409, 422))
async def create_key(body: KeyCreateIn, store: StoreDep) -> KeyCreatedOut:
    """Create a key. The answer holds the secret key; only its hash is stored."""
    new = await run_in_threadpool(keys.create_key, store, body.role, body.facilities, body.name)
    return KeyCreatedOut.model_validate({**new.record.to_dict(), "key": new.key})


@router.get("/keys", response_model=KeyListOut)
async def list_keys(store: StoreDep) -> KeyListOut:
    """Every key with its role, facilities, creation, last use and revocation."""
    records = await run_in_threadpool(keys.list_keys, store)
    return KeyListOut(keys=[KeyOut.model_validate(r.to_dict()) for r in records])


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=errors(404, 409))
async def revoke_key(key_id: TextId, store: StoreDep) -> KeyOut:
    """Revoke a key: it stops working at once. The last active admin key cannot be revoked (409)."""
    return KeyOut.model_validate((await run_in_threadpool(keys.revoke_key, store, key_id)).to_dict())
