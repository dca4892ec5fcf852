"""Where a scene comes from, checked when it is submitted and opened when it is analysed: an upload kept in the
archive, a file under ``WAGON_SCENE_DIRS`` read in place, or a URL (plain, or a STAC item's asset) read by range
requests through :class:`app.core.remote_file.RemoteFile` (only from ``WAGON_FETCH_ALLOWED_HOSTS``).

Every scene has an **identity**, stored as the observations' ``image_sha256``, so that the same scene delivered
twice makes no second observation at any facility: an upload's SHA-256; for a file, the SHA-256 of its real path,
size and modification time; for a STAC item's asset, of the item id and the asset's href; for a plain URL, of the
final URL (after redirects), its ``ETag`` and size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.core.errors import InvalidInputError, NotFoundError
from app.core.remote_file import FetchError, RemoteFile
from app.core.url_policy import UrlRefused
from app.detection.raster import OpenedSource, SceneHints
from app.usecases.remote_json import MAX_JSON_BYTES, fetch_json, policy_of, with_self_link
from app.usecases.stac import StacScene, parse_item

if TYPE_CHECKING:
    from app.core.settings import Settings

#: Largest STAC item fetched by URL, bytes.
MAX_ITEM_BYTES = MAX_JSON_BYTES

SourceKind = Literal["upload", "path", "url"]


@dataclass(frozen=True)
class SceneSource:
    """A scene's location: ``kind`` upload (``location`` = SHA-256 in the archive), path or url; ``stac_item``: the
    STAC item it is an asset of (as given)."""

    kind: SourceKind
    location: str
    stac_item: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored with a scene job)."""
        return {"kind": self.kind, "location": self.location, "stac_item": self.stac_item}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSource:
        """Inverse of :meth:`to_dict`."""
        return cls(kind=data["kind"], location=data["location"], stac_item=data.get("stac_item"))

    @property
    def stac(self) -> StacScene | None:
        """The STAC item read (None without one)."""
        return None if self.stac_item is None else parse_item(self.stac_item)


# ---------------------------------------------------------------------------------------------- submission


def source_of_href(settings: Settings, href: str, stac_item: dict[str, Any] | None = None) -> SceneSource:
    """Check a scene's href as submitted: a path (or ``file://`` URL) must be a file under ``WAGON_SCENE_DIRS``, a
    URL must be allowed and resolve to allowed addresses (:class:`InvalidInputError` saying why not)."""
    if not isinstance(href, str) or not href.strip():
        raise InvalidInputError("href must be a non-empty string")
    href = href.strip()
    if href.startswith("file://") or href.startswith("/"):
        return SceneSource("path", str(_allowed_path(settings, href.removeprefix("file://"))), stac_item)
    policy_of(settings).check(href)
    return SceneSource("url", href, stac_item)


def _allowed_path(settings: Settings, raw: str) -> Path:
    path = Path(raw).resolve()
    roots = [Path(d).expanduser().resolve() for d in settings.scene_dirs]
    if not roots:
        raise InvalidInputError("scenes are not read by path: no directory is allowed (WAGON_SCENE_DIRS is empty)")
    if not any(path.is_relative_to(root) for root in roots):
        raise InvalidInputError(f"{raw} is not under a directory of WAGON_SCENE_DIRS")
    if not path.is_file():
        raise NotFoundError(f"no scene file at {raw}")
    return path


def source_of_item(settings: Settings, item: Any, base_url: str | None = None) -> tuple[SceneSource, StacScene]:
    """Check a STAC item as submitted: a usable asset whose href is allowed (:class:`InvalidInputError` if not)."""
    stac = parse_item(item, base_url=base_url)
    return source_of_href(settings, stac.href, stac_item=stac.item), stac


def fetch_item(settings: Settings, url: str) -> dict[str, Any]:
    """Fetch a STAC item by URL (allowed hosts only, at most :data:`MAX_ITEM_BYTES`); the JSON, with a ``self``
    link to where it was found so that relative asset hrefs resolve. :class:`InvalidInputError` saying why not."""
    item, final = fetch_json(settings, url, "the STAC item")
    if not isinstance(item, dict):
        raise InvalidInputError(f"the document at {url} is not a STAC item")
    return with_self_link(item, final)


# ---------------------------------------------------------------------------------------------- opening


@dataclass
class OpenedScene:
    """A scene ready to be read: what :func:`app.usecases.scenes.analyse_source` takes, its identity digest, what
    to store about it with each observation, and the remote file (for byte counts and the cause of a failure)."""

    source: Path | OpenedSource
    digest: str
    scene_source: dict[str, Any] | None
    hints: SceneHints | None
    geometry: dict[str, Any] | None
    remote: RemoteFile | None = None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def open_source(settings: Settings, source: SceneSource) -> Iterator[OpenedScene]:
    """Open a scene for reading (for a URL: the first range request, so a 404, a stall or a file over the cap is
    refused here with :class:`FetchError`, and a disallowed host or redirect with :class:`UrlRefused`)."""
    stac = source.stac
    hints = None if stac is None else stac.hints
    geometry = None if stac is None else stac.geometry
    item_fields = {} if stac is None else {"stac_item": stac.item, "asset": stac.asset_key}
    if source.kind == "upload":
        from app.usecases.scenes import archive_path

        path = archive_path(settings.archive_dir, source.location)
        if not path.exists():
            raise NotFoundError("the uploaded scene is no longer in the archive")
        yield OpenedScene(path, source.location, None, hints, geometry)
        return
    if source.kind == "path":
        path = Path(source.location)
        st = path.stat()
        identity = f"path:{path}:{st.st_size}:{st.st_mtime_ns}"
        scene_source = {"href": str(path), "size": st.st_size, "identity": identity, **item_fields}
        yield OpenedScene(path, _digest(identity), scene_source, hints, geometry)
        return
    policy = policy_of(settings)
    with RemoteFile(
        source.location,
        policy,
        max_bytes=settings.fetch_max_bytes,
        connect_timeout_s=settings.fetch_connect_timeout_s,
        read_timeout_s=settings.fetch_read_timeout_s,
        retries=settings.fetch_retries,
    ) as remote:
        remote.open()
        if stac is not None:
            identity = f"stac:{stac.item_id}:{stac.href}"
        else:
            identity = f"url:{remote.final_url}:{remote.etag or ''}:{remote.size}"
        name = f"/wagon-scene/{_digest(identity)[:16]}/{Path(remote.final_url.split('?')[0]).name or 'scene'}"
        opened = OpenedSource(name, remote.opener(name), remote.read(0, 16), _digest(identity))
        scene_source = {
            "href": source.location,
            "final_url": remote.final_url,
            "etag": remote.etag,
            "size": remote.size,
            "identity": identity,
            **item_fields,
        }
        yield OpenedScene(opened, opened.sha256, scene_source, hints, geometry, remote)


__all__ = [
    "FetchError",
    "OpenedScene",
    "SceneSource",
    "UrlRefused",
    "fetch_item",
    "open_source",
    "source_of_href",
    "source_of_item",
]
