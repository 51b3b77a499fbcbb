"""Every use of dramatiq internals by the worker, in one place.

memworker's broker and consumer build on dramatiq's Redis broker beyond its public API:
the private consumer class, the broker's ``do_*`` dispatch commands, the dispatch
script's ``nack`` arguments, the exception a ``MessageProxy`` keeps, and the key layout
that script and ``RedisBroker.enqueue`` use (``<ns>:<queue>`` list of message ids,
``<ns>:<queue>.msgs`` hash id -> encoded message, ``<ns>:__acks__.<broker id>.<queue>``
set of fetched ids, ``<ns>:<queue>.XQ`` dead letters), and the ``redis_message_id``
option that ``RedisBroker.enqueue`` sets.
This module names them once; ``tests/integration/test_dramatiq_compat.py`` checks them against the
installed dramatiq on a real server.

The consumer subclass (:class:`~memworker.worker.broker.WakeConsumer`) also relies on
:class:`RedisConsumer`'s attributes ``message_cache``, ``queued_message_ids``,
``outstanding_message_count``, ``prefetch``, ``timeout`` and ``queue_name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.brokers.redis import _RedisConsumer as RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import DecodeError
from dramatiq.message import Message

__all__ = [
    "MAINTENANCE_SCALE",
    "REDIS_ID_OPTION",
    "RedisBroker",
    "RedisConsumer",
    "ack_commands",
    "acks_key",
    "decode_message",
    "enqueue_commands",
    "fetch",
    "dispatcher",
    "heartbeat",
    "message_exception",
    "msgs_key",
    "nack_eval_args",
    "queue_key",
    "requeue",
]

#: The message option holding the id a message has in redis (set by ``RedisBroker.enqueue``).
REDIS_ID_OPTION = "redis_message_id"


def queue_key(namespace: str, queue_name: str) -> str:
    """``<ns>:<queue>``: the list of the ids of the queue's waiting messages."""
    return f"{namespace}:{queue_name}"


def msgs_key(namespace: str, queue_name: str) -> str:
    """``<ns>:<queue>.msgs``: the hash of the queue's encoded messages by redis id."""
    return f"{namespace}:{queue_name}.msgs"


def acks_key(namespace: str, broker_id: str, queue_name: str) -> str:
    """``<ns>:__acks__.<broker id>.<queue>``: the ids a broker fetched and holds."""
    return f"{namespace}:__acks__.{broker_id}.{queue_name}"


def ack_commands(
    namespace: str, broker_id: str, queue_name: str, redis_ids: list[str]
) -> list[list[str]]:
    """The commands of the dispatch script's ``ack``, for many messages at once (its id
    out of the broker's acks set, its body out of ``.msgs``): the batched path runs
    them in the atomic step that commits the messages' jobs."""
    return [
        ["SREM", acks_key(namespace, broker_id, queue_name), *redis_ids],
        ["HDEL", msgs_key(namespace, queue_name), *redis_ids],
    ]


def decode_message(data: Any) -> Message[Any] | None:
    """The message in ``data`` with its redis id, or None if dramatiq cannot decode it
    or it has no usable id (the id is read from the decoded ``options``, never from
    the bytes: user text in ``args`` cannot pose as it)."""
    try:
        message = Message.decode(data)
    except DecodeError:
        return None
    options = message.options
    if not isinstance(options, dict) or not isinstance(options.get(REDIS_ID_OPTION), str):
        return None
    return message


def message_exception(message: Any) -> BaseException | None:
    """The exception dramatiq stored on a ``MessageProxy`` when its actor raised, if any
    (dramatiq keeps it in a private attribute)."""
    return getattr(message, "_exception", None)


def enqueue_commands(
    pipe: Any, namespace: str, queue_name: str, message_id: str, data: bytes
) -> None:
    """Queue on ``pipe`` what ``RedisBroker.do_enqueue`` writes for one message (its
    body in the ``.msgs`` hash, its id at the tail of the queue list)."""
    pipe.hset(msgs_key(namespace, queue_name), message_id, data)
    pipe.rpush(queue_key(namespace, queue_name), message_id)


def dispatcher(broker: RedisBroker, command: str, clock: Callable[[], int]) -> Callable[..., Any]:
    """``RedisBroker._dispatch``: a call of the dispatch script's ``command``, with
    its arguments in dramatiq's order, but the time it passes (which the script
    compares with every broker's heartbeat, and stamps the broker's own with) read
    from ``clock``."""
    script = broker.scripts["dispatch"]
    keys = [broker.namespace]

    def call(queue_name: str, *args: Any) -> Any:
        head = [command, clock(), queue_name, broker.broker_id, broker.heartbeat_timeout, broker.dead_message_ttl]
        tail = [broker._should_do_maintenance(command), broker._max_unpack_size()]
        return script(args=[*head, *tail, *args], keys=keys)

    return call


def nack_eval_args(broker: RedisBroker, queue_name: str, redis_id: str, now: int | None = None) -> list[Any]:
    """``EVAL`` arguments (script, numkeys, keys, argv) of the dispatch script's ``nack``
    of one message (move it to ``<q>.XQ``), without maintenance."""
    return [
        broker.scripts["dispatch"].script, 1, broker.namespace,
        "nack", current_millis() if now is None else now, queue_name, broker.broker_id, broker.heartbeat_timeout,
        broker.dead_message_ttl, 0, broker._max_unpack_size(), redis_id,
    ]  # fmt: skip


def fetch(broker: RedisBroker, queue_name: str, count: int) -> Any:
    """The dispatch script's ``fetch``: up to ``count`` encoded messages, their ids
    added to the broker's acks set."""
    return broker.do_fetch(queue_name, count)


def heartbeat(broker: RedisBroker, queue_name: str) -> Any:
    """The dispatch script's ``heartbeat`` (keeps the broker's acks from a requeue)."""
    return broker.do_heartbeat(queue_name)


def requeue(broker: RedisBroker, queue_name: str, *redis_ids: str) -> Any:
    """The dispatch script's ``requeue``: the ids from the broker's acks set back on
    the queue."""
    return broker.do_requeue(queue_name, *redis_ids)
