"""The server's clock, as a worker process estimates it.

Hosts' clocks disagree (NTP off, a VM resumed). A worker stamps what other processes
compare with their own stamps (its jobs' commit markers, trimmed by age) from the
Valkey server's clock, which every process of a namespace shares: the health thread
reads ``TIME`` with each beat and keeps this process's offset from it. Until the
first beat, the offset is 0 (the host's clock). A worker's user needs ``TIME``
(the store's write script reads the server's clock too).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["learn_offset", "offset_ms", "server_now_ms"]

#: The server's clock less this host's, in milliseconds (the latest beat's estimate).
_offset_ms = 0.0


def server_now_ms() -> int:
    """Now by the server's clock (ms): this host's clock plus the last offset learnt."""
    return int(time.time() * 1000 + _offset_ms)


def offset_ms(server_ms: float, before: float, after: float) -> float:
    """The server's clock less this host's (ms), from a ``TIME`` reply of ``server_ms``
    read between this host's ``before`` and ``after`` (``time.time()``): taken at the
    middle of the round trip."""
    return server_ms - (before + after) * 500


def learn_offset(client: Any, key: str | None = None) -> None:
    """Read the server's ``TIME`` through ``client`` (redis-py) and keep the offset of
    this host's clock from it. On a cluster it asks the primary of ``key`` (a key of the
    namespace: the node whose clock its scripts read; redis-py would send ``TIME`` to any
    node)."""
    global _offset_ms
    before = time.time()
    if key is not None and hasattr(client, "get_node_from_key"):
        node = client.get_node_from_key(key)
        seconds, micros = client.execute_command("TIME", target_nodes=node)
    else:
        seconds, micros = client.time()
    after = time.time()
    _offset_ms = offset_ms(int(seconds) * 1000 + int(micros) / 1000, before, after)
