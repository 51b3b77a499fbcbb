"""memworker's one I/O layer: operations written once as IO-free plans, run by a
sync and an async driver over each client library.

Modules: ``plan`` (the step types, the retry policy, error classes), ``scripts`` (the
Lua loader), ``loops`` (closing a loop's clients as it ends), ``glide`` (the store's
glide faces), ``redispy`` (the redis-py client factory and drivers, used by the queue).
"""

from memworker.io.glide import AsyncConnection, SyncConnection, glide_config
from memworker.io.plan import (
    QUEUE_ERRORS,
    STORE_ERRORS,
    Call,
    ErrorClasses,
    Pipeline,
    Plan,
    Script,
    Step,
    error_text,
    one,
)
from memworker.io.redispy import (
    RedisAsyncDriver,
    RedisSyncDriver,
    async_redis_client,
    redis_client,
    redis_kwargs,
)
from memworker.io.scripts import script_source

__all__ = [
    # plans
    "Call",
    "Pipeline",
    "Plan",
    "Script",
    "Step",
    "one",
    # errors
    "ErrorClasses",
    "QUEUE_ERRORS",
    "STORE_ERRORS",
    "error_text",
    # scripts
    "script_source",
    # glide
    "AsyncConnection",
    "SyncConnection",
    "glide_config",
    # redis-py
    "RedisAsyncDriver",
    "RedisSyncDriver",
    "async_redis_client",
    "redis_client",
    "redis_kwargs",
]
