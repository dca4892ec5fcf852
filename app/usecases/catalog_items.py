"""What reading a vendor's catalog finds: its items (each with the collection it belongs to), the problems met on
the way (a link to a host not allowed, a document that cannot be read), and whether the reading stopped at a
bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Most items one reading of a catalog returns.
MAX_ITEMS = 2000
#: Most documents (catalogs, collections, items, search pages) one reading fetches.
MAX_DOCUMENTS = 4000


@dataclass(frozen=True)
class FoundItem:
    """A STAC item found: its collection (``""`` when none), id and JSON (with a ``self`` link where known)."""

    collection: str
    item_id: str
    item: dict[str, Any]


@dataclass
class Found:
    """The items found, the problems met, and whether a bound stopped the reading early."""

    items: list[FoundItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False
    documents: int = 0

    def room(self) -> bool:
        """Whether another document may be fetched (else mark the reading truncated)."""
        if len(self.items) >= MAX_ITEMS or self.documents >= MAX_DOCUMENTS:
            self.truncated = True
            return False
        return True


def found_item(data: Any, collection: str | None, where: str) -> FoundItem | str:
    """A :class:`FoundItem` of a JSON item, or a problem saying why it is not one."""
    if not isinstance(data, dict) or data.get("type") != "Feature":
        return f"{where} is not a STAC item"
    item_id = data.get("id")
    if not isinstance(item_id, str) or not item_id or len(item_id) > 255:
        return f"{where}: a STAC item needs an id (a string of 1 to 255 characters)"
    named = data.get("collection")
    coll = named if isinstance(named, str) and named else (collection or "")
    return FoundItem(coll[:255], item_id, data)
