"""ValkeyCache: a small JSON key-value cache with optional TTL, sync and async.

It shares :class:`~memworker.settings.Settings` (and so the embedded default)
with the store, and the plan driver of :mod:`memworker.io`: each operation
is written once and run by either face.
"""

from __future__ import annotations

import json
import math
from typing import Any

from memworker.io import AsyncConnection, Call, Plan, SyncConnection
from memworker.errors import ValidationError, shown
from memworker.keys import Keys
from memworker.settings import Settings
from memworker.store.validate import check_unicode

__all__ = ["ValkeyCache"]

#: Longest key accepted, in characters.
MAX_KEY_LENGTH = 1024
#: Largest value accepted, in bytes of JSON.
MAX_VALUE_BYTES = 16 * 1024 * 1024

_MISSING = object()


class ValkeyCache:
    """JSON values under ``<namespace>:cache:[<prefix>:]<key>``.

    A prefix holds no ``:``, so caches of different prefixes never share a key (the
    prefix ``sessions`` with the key ``alice:token`` cannot be the prefix
    ``sessions:alice`` with the key ``token``). A cache *without* a prefix sees the
    whole ``cache:`` space: its key ``sessions:alice:token`` is the prefix
    ``sessions``' key ``alice:token`` (the layout of existing keys is unchanged). To
    keep caches apart, give each one a prefix.

    Args:
        url: URL, :class:`Settings`, or ``None`` for the environment / embedded server.
        namespace: Key namespace (shared with the store by default).
        prefix: Extra key prefix, to keep several caches apart: no ``:`` and no
            control characters (``""``: no prefix).
        default_ttl: Seconds a value lives when ``set`` is given no ``ttl``;
            ``None`` keeps values until deleted.
    """

    def __init__(
        self,
        url: str | Settings | None = None,
        *,
        namespace: str | None = None,
        prefix: str = "",
        default_ttl: float | None = None,
    ) -> None:
        self.settings = Settings.resolve(url, namespace=namespace)
        self.keys = Keys(self.settings.namespace)
        if not isinstance(prefix, str) or any(ord(c) < 32 for c in prefix):
            raise ValidationError("prefix must be a string without control characters")
        if ":" in prefix:
            # 'a' + 'b:c' and 'a:b' + 'c' would be one key: caches would share keys.
            raise ValidationError(f"prefix must not contain ':', got {shown(prefix)}")
        self.prefix = prefix
        self.default_ttl = _check_ttl(default_ttl, "default_ttl")
        self._sync = SyncConnection(self.settings)
        self._async = AsyncConnection(self.settings)

    def __repr__(self) -> str:
        return f"ValkeyCache({self.settings.redacted_url()!r}, namespace={self.keys.namespace!r})"

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValidationError("key must be a non-empty string")
        if len(key) > MAX_KEY_LENGTH:
            raise ValidationError(f"key is {len(key)} characters, the limit is {MAX_KEY_LENGTH}")
        check_unicode(key, "key")
        return self.keys.cache(f"{self.prefix}:{key}" if self.prefix else key)

    # ------------------------------------------------------------------ plans
    def _p_get(self, key: str, default: Any) -> Plan[Any]:
        raw = yield Call(["GET", self._key(key)])
        if raw is None:
            return default
        return json.loads(raw)

    def _p_set(self, key: str, value: Any, ttl: Any) -> Plan[None]:
        name = self._key(key)
        seconds = self.default_ttl if ttl is _MISSING else _check_ttl(ttl, "ttl")
        try:
            payload = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"value is not JSON-serializable: {exc}") from None
        check_unicode(payload, "value")
        if len(payload.encode("utf-8")) > MAX_VALUE_BYTES:
            raise ValidationError(f"value is larger than {MAX_VALUE_BYTES} bytes of JSON")
        command = ["SET", name, payload]
        if seconds is not None:
            command += ["PX", str(max(1, math.ceil(seconds * 1000)))]
        yield Call(command)

    def _p_delete(self, key: str) -> Plan[bool]:
        return bool((yield Call(["DEL", self._key(key)])))

    def _p_exists(self, key: str) -> Plan[bool]:
        return bool((yield Call(["EXISTS", self._key(key)])))

    # ------------------------------------------------------------------ sync face
    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        return self._sync.run(self._p_get(key, default))

    def set(self, key: str, value: Any, ttl: float | None | object = _MISSING) -> None:
        """Store a JSON-serializable value; ``ttl`` in seconds (``None``: no expiry)."""
        self._sync.run(self._p_set(key, value, ttl))

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return self._sync.run(self._p_delete(key))

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value."""
        return self._sync.run(self._p_exists(key))

    def close(self) -> None:
        """Close the sync client."""
        self._sync.close()

    # ------------------------------------------------------------------ async face
    async def aget(self, key: str, default: Any = None) -> Any:
        """Async :meth:`get`."""
        return await self._async.run(self._p_get(key, default))

    async def aset(self, key: str, value: Any, ttl: float | None | object = _MISSING) -> None:
        """Async :meth:`set`."""
        await self._async.run(self._p_set(key, value, ttl))

    async def adelete(self, key: str) -> bool:
        """Async :meth:`delete`."""
        return await self._async.run(self._p_delete(key))

    async def aexists(self, key: str) -> bool:
        """Async :meth:`exists`."""
        return await self._async.run(self._p_exists(key))

    async def aclose(self) -> None:
        """Close the async client."""
        await self._async.close()


def _check_ttl(ttl: Any, field: str) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise ValidationError(f"{field} must be a positive number of seconds or None, got {shown(ttl)}")
    return float(ttl)
