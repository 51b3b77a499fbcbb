"""The embedded server's home folder: its files, their modes, the password and config.

Loopback is open to every local user, so the server requires a password
(``requirepass``): generated at the first start, kept in ``home/valkey.password``
and given to the server in ``home/valkey.conf``, never on its command line (which
every local user can read in ``/proc``). The home and ``data/`` are 0700, every file
0600, and a home made by an older memworker is tightened the same way
(:func:`prepare_home`).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from memworker.errors import EmbeddedServerError

__all__ = [
    "CONFIG_FILE",
    "DATA_DIR",
    "DIR_MODE",
    "FILE_MODE",
    "LOCK_FILE",
    "LOG_FILE",
    "MIN_PASSWORD",
    "PASSWORD_FILE",
    "STATE_FILE",
    "ensure_password",
    "prepare_home",
    "read_password",
    "write_config",
    "write_private",
]

#: State file (pid, port, module) of the server of a home folder.
STATE_FILE = "valkey.json"
#: Lock file serializing start/stop across processes.
LOCK_FILE = "valkey.lock"
#: Log file of detached servers.
LOG_FILE = "valkey.log"
#: The server's password (0600), generated at the first start.
PASSWORD_FILE = "valkey.password"
#: The server's config file (0600): ``requirepass``, kept off the command line.
CONFIG_FILE = "valkey.conf"
#: Shortest password accepted in :data:`PASSWORD_FILE` (a generated one has 43 characters).
MIN_PASSWORD = 16
_PASSWORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: Mode of the home and data folders: the owner only.
DIR_MODE = 0o700
#: Mode of every file under the home: the owner only.
FILE_MODE = 0o600
#: Working directory of the server (AOF files live here).
DATA_DIR = "data"


def prepare_home(home: Path | str) -> Path:
    """Create ``home`` and ``home/data`` (0700), and make what an older memworker left
    there private: folders 0700, files 0600 (the home itself, its own files, and
    everything under ``data``)."""
    path = Path(home).expanduser().resolve()
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        (path / DATA_DIR).mkdir(mode=DIR_MODE, exist_ok=True)
        _make_private(path)
        for name in (STATE_FILE, LOCK_FILE, LOG_FILE, PASSWORD_FILE, CONFIG_FILE):
            _make_private(path / name)
        for folder, dirs, files in os.walk(path / DATA_DIR):
            _make_private(Path(folder))
            for name in files:
                _make_private(Path(folder) / name)
    except OSError as exc:
        raise EmbeddedServerError(f"cannot prepare the memworker home {path}: {exc}") from None
    return path


def _make_private(path: Path) -> None:
    """chmod ``path`` to :data:`DIR_MODE`/:data:`FILE_MODE` if group or others have
    any access; a missing path is skipped, a symlink is not followed."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
        return
    path.chmod(DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE)


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically (temp file + ``os.replace``), readable by the owner only."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an old temp file may have had another mode
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_password(home: Path) -> str | None:
    """The password in ``home/valkey.password``, or ``None`` if missing or empty."""
    try:
        password = (home / PASSWORD_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return password or None


def ensure_password(home: Path) -> str:
    """The home's password, generated (and kept in a 0600 file) if there is none yet.
    Called with the start lock held."""
    password = read_password(home)
    if password is None:
        password = secrets.token_urlsafe(32)  # letters, digits, '-' and '_' only
        write_private(home / PASSWORD_FILE, password + "\n")
    elif len(password) < MIN_PASSWORD or not all(c in _PASSWORD_CHARS for c in password):
        # The config file holds it as written, and Valkey quotes a bad config line in
        # its log, which an error would quote in turn: refuse, never show it.
        raise EmbeddedServerError(
            f"{home / PASSWORD_FILE} must hold one password of at least {MIN_PASSWORD} "
            "ASCII letters, digits, '-' or '_' (delete the file while no server runs: "
            "the next start generates one)"
        )
    return password


def write_config(home: Path, password: str) -> Path:
    """The server's config file (0600), holding what must not be on its command line."""
    path = home / CONFIG_FILE
    write_private(
        path,
        "# Written by memworker at each start of the embedded server; do not edit.\n"
        f"requirepass {password}\n",
    )
    return path
