"""A cache backend that raises on every call, as a stopped Redis does, and counts the calls."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.base import BaseCache


class BrokenCache(BaseCache):
    #: Calls made, by all instances (Django builds one per thread and settings change).
    calls = 0
    #: Switched off by a test to play the cache coming back.
    broken = True

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._data: dict[str, Any] = {}

    def _touch(self) -> None:
        type(self).calls += 1
        if type(self).broken:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        self._touch()
        return self._data.get(key, default)

    def set(self, key: str, value: Any, timeout: Any = None, version: int | None = None) -> None:
        self._touch()
        self._data[key] = value

    def add(self, key: str, value: Any, timeout: Any = None, version: int | None = None) -> bool:
        self._touch()
        if key in self._data:
            return False
        self._data[key] = value
        return True

    def delete(self, key: str, version: int | None = None) -> bool:
        self._touch()
        return self._data.pop(key, None) is not None

    def get_many(self, keys: Any, version: int | None = None) -> dict[str, Any]:
        self._touch()
        return {k: self._data[k] for k in keys if k in self._data}

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        self._touch()
        if key not in self._data:
            raise ValueError(f"Key {key!r} not found.")
        self._data[key] += delta
        return int(self._data[key])

    def clear(self) -> None:
        self._touch()
        self._data.clear()
