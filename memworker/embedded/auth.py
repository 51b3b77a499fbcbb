"""The embedded server's home folder: its files, their modes, the password and config.

Loopback is open to every local user, so the server requires a password
(``requirepass``): generated at the first start, kept in ``home/valkey.password``
and given to the server in ``home/valkey.conf``, never on its command line (which
every local user can read in ``/proc``). The home and ``data/`` are 0700, every file
0600, and a home made by an older memworker is tightened the same way
(:func:`prepare_home`).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from memworker.errors import EmbeddedServerError, shown

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
    "UnsafeHomeError",
    "ensure_password",
    "open_private",
    "prepare_home",
    "read_password",
    "read_private",
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


class UnsafeHomeError(EmbeddedServerError):
    """An entry of the home is a symlink, not of the expected type, or not owned by the
    current user (planted while the home was open to others): memworker refuses it
    rather than follow it. The message names the path."""


def prepare_home(home: Path | str) -> Path:
    """Create ``home`` and ``home/data`` (0700), and make what an older memworker left
    there private: folders 0700, files 0600 (the home itself, its own files, and
    everything under ``data``).

    The home is made private first, so nobody else can plant anything after the
    checks; then ``data`` (and everything under it) and every file of the home the
    server uses must be real folders and files owned by the current user.

    Raises:
        UnsafeHomeError: A symlink, or an entry owned by another user (named).
        EmbeddedServerError: The home cannot be created or changed.
    """
    path = home_path(home)
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        _check_entry(path, directory=True)
        _make_private(path)
        data = path / DATA_DIR
        try:
            data.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made before, or by a caller racing this one
            pass
        _check_entry(data, directory=True)
        for name in (STATE_FILE, LOCK_FILE, LOG_FILE, PASSWORD_FILE, CONFIG_FILE):
            try:
                _check_entry(path / name, directory=False)
            except FileNotFoundError:
                continue
            _make_private(path / name)
        for folder, dirs, files in os.walk(data):
            _make_private(Path(folder))
            for name in dirs:
                _check_entry(Path(folder) / name, directory=True)
            for name in files:
                _check_entry(Path(folder) / name, directory=False)
                _make_private(Path(folder) / name)
    except OSError as exc:
        raise EmbeddedServerError(f"cannot prepare the memworker home {path}: {exc}") from None
    return path


def home_path(home: str | os.PathLike[str]) -> Path:
    """The home as an absolute path, symlinks resolved.

    Raises:
        EmbeddedServerError: It cannot be resolved (a symlink loop: a RuntimeError on
            Python 3.11; a NUL character; an empty path).
    """
    if not str(home):
        raise EmbeddedServerError("the memworker home is an empty path")
    try:
        return Path(home).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        problem = "a symlink loop" if isinstance(exc, RuntimeError) else type(exc).__name__
        raise EmbeddedServerError(f"cannot resolve the memworker home {shown(str(home), 200)}: {problem}") from None


def _check_entry(path: Path, *, directory: bool) -> os.stat_result:
    """``lstat`` of ``path``, which must be a real folder (or regular file) owned by the
    current user.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeHomeError: It is a symlink, of another type, or owned by another user.
    """
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeHomeError(
            f"{path} is a symlink (to {os.readlink(path)}): the embedded server's home must "
            "hold its own files, never follow links out of it (planted while the home was "
            "open to others?): remove it, or use another MEMWORKER_HOME"
        )
    _check_info(path, info, directory=directory)
    return info


def _check_info(path: Path, info: os.stat_result, *, directory: bool) -> None:
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        raise UnsafeHomeError(
            f"{path} is not a {'folder' if directory else 'regular file'}: remove it, "
            "or use another MEMWORKER_HOME"
        )
    if info.st_uid != os.geteuid():
        raise UnsafeHomeError(
            f"{path} is owned by uid {info.st_uid}, not by you (uid {os.geteuid()}): the "
            "embedded server's home must be yours alone: remove it, or use another "
            "MEMWORKER_HOME"
        )


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


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of a file of the home, never through a symlink (``O_NOFOLLOW``); the
    file must be a regular file owned by the current user. Created 0600 with
    ``os.O_CREAT`` in ``flags``.

    Raises:
        UnsafeHomeError: ``path`` is a symlink, not a regular file, or another user's.
        OSError: As ``os.open`` (e.g. ``FileNotFoundError``).
    """
    try:
        # O_NONBLOCK: a FIFO planted under the name would block the open for ever (and
        # a stop holding the start lock with it); it is refused below, not a regular file
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: O_NOFOLLOW refused it
            _check_entry(path, directory=False)  # raises UnsafeHomeError
        raise
    try:
        _check_info(path, os.fstat(fd), directory=False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path) -> str:
    """The text of a file of the home, read as :func:`open_private` opens it.

    Raises:
        UnsafeHomeError: As :func:`open_private`.
        OSError, UnicodeDecodeError: The file is missing or unreadable.
    """
    with open(open_private(path, os.O_RDONLY), encoding="utf-8") as file:
        return file.read()


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically (temp file + ``os.replace``), readable by the owner only.

    The temp file is created anew (``O_EXCL | O_NOFOLLOW``, after removing whatever had
    its name), so a symlink planted under that name is never written through; and
    ``path`` itself must not be a symlink or another user's (:class:`UnsafeHomeError`).
    """
    try:
        _check_entry(path, directory=False)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_password(home: Path) -> str | None:
    """The password in ``home/valkey.password``, or ``None`` if missing or empty.

    Raises:
        UnsafeHomeError: The file is a symlink or another user's (never followed).
    """
    try:
        password = read_private(home / PASSWORD_FILE).strip()
    except UnsafeHomeError:
        raise
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
