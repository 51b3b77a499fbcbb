"""Move a namespace to another shard of a Valkey Cluster while its writers run
(``memworker reshard``), with or without a search module loaded.

A namespace is one hash slot (:mod:`memworker.keys`). Valkey 9's atomic slot migration
(``CLUSTER MIGRATESLOTS``) moves a slot online, but Valkey refuses it while a module that
does not declare support for it is loaded, and RediSearch 2.10 does not. The older
key-by-key move (``SETSLOT MIGRATING/IMPORTING`` + ``MIGRATE`` in batches, as
``valkey-cli --cluster reshard`` does) splits the slot across two nodes while it runs, and
a memworker script (which touches keys it does not declare: records, side indexes, the
queue's message hash) would then see half of a namespace on either node.

:func:`move_namespace` moves the slot whole instead:

1. the target imports the slot (``SETSLOT <slot> IMPORTING``: clients see no change, the
   source still owns it and never answers ``ASK``);
2. the source stops taking writes (``CLIENT PAUSE <ms> WRITE``: writes and scripts of
   every client wait, reads go on), and every key of the slot is copied to the target
   (``DUMP`` and ``PTTL`` on the source, ``ASKING`` + ``RESTORE`` on the target, in
   pipelined chunks);
3. the target takes the slot (``SETSLOT <slot> NODE``, a new config epoch); the source
   learns it over the cluster bus and drops its copy of the slot's keys itself (Valkey
   deletes the keys of a slot a primary lost), then the other primaries are told;
4. the source takes writes again (``CLIENT UNPAUSE``): the writes that waited are
   answered ``MOVED`` and clients send them to the target.

Every command sees the whole namespace on one node: before the hand-over on the source
(no write can change it while it is copied), after it on the target. A failure before
step 3 removes the copies from the target, ends the import and resumes the source as it
was. The price: the source shard takes no writes (of any namespace) for the copy, about
50-80 ms per thousand keys on this project's 2-core test machine (the report gives the
time; docs/scaling.md the figures); a namespace large enough to pause its shard for long
is better moved with ``CLUSTER MIGRATESLOTS`` where no module forbids it. The source's
index is dropped before the pause (it would otherwise delete every record from its HNSW
graph as the source drops the keys, writes paused). (One script on the source that
copies, deletes and hands the slot over would not pause other namespaces, but Valkey 8+
replicates ``CLUSTER SETSLOT`` to a primary's replicas before it runs and blocks for
their acknowledgement, which a script cannot do: Valkey 9.1 aborts on it.) The search
module's index does not move: it is made again on the target (:meth:`ValkeyStore.ensure_index`); until it is built, searches answer
on the exact path.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from memworker.errors import ConfigError, MemworkerError, shown
from memworker.keys import Keys, tag
from memworker.queue.admin import as_text
from memworker.settings import Settings

__all__ = ["ReshardError", "ReshardReport", "move_namespace"]

#: Keys copied per pipeline.
_CHUNK = 500

#: How long the source waits (at most) for the cluster bus to tell it the slot moved.
_HANDOVER_S = 30.0


class ReshardError(MemworkerError):
    """A namespace could not be moved (the namespace stays whole on its source)."""


@dataclass(frozen=True)
class ReshardReport:
    """What :func:`move_namespace` did.

    Attributes:
        namespace: The namespace moved.
        slot: Its hash slot (other namespaces whose tag hashes to it moved with it).
        source: ``host:port`` of the primary that owned the slot.
        target: ``host:port`` of the primary that owns it now.
        keys: Keys moved (0 if the namespace already lived on the target).
        paused_ms: How long the source took no writes (of any namespace).
        index: ``True`` if the search index was made on the target and is built,
            ``False`` if it was still building at the timeout, ``None`` without a
            search module or records.
        also_moved: Other namespaces whose tag hashes to the same slot, found by
            their search index on the source: they moved too, and their indexes were
            dropped on the source and made on the target like the namespace's own
            (without a search module nothing lists them; their keys move all the same).
    """

    namespace: str
    slot: int
    source: str
    target: str
    keys: int
    paused_ms: float
    index: bool | None
    also_moved: tuple[str, ...] = ()


def _primaries(nodes: str) -> dict[str, tuple[str, int]]:
    """Node id -> (host, port) of every live primary, from ``CLUSTER NODES``."""
    out: dict[str, tuple[str, int]] = {}
    for line in nodes.splitlines():
        parts = line.split()
        if len(parts) < 3 or "master" not in parts[2].split(",") or "fail" in parts[2]:
            continue
        address = parts[1].split("@")[0]
        host, _, port = address.rpartition(":")
        out[parts[0]] = (host, int(port))
    return out


def _slot_owner(client: Any, slot: int) -> str | None:
    """The node id that owns ``slot``, as ``client``'s node sees the cluster."""
    return _owner(as_text(client.execute_command("CLUSTER", "NODES")), slot)


def _owner(nodes: str, slot: int) -> str | None:
    """The node id that owns ``slot`` in a ``CLUSTER NODES`` answer."""
    for line in nodes.splitlines():
        parts = line.split()
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being imported or migrated, not owned
            lo, _, hi = item.partition("-")
            if int(lo) <= slot <= int(hi or lo):
                return parts[0]
    return None


def move_namespace(
    settings: Settings, to: str, *, pause_ms: int = 4_000, index_timeout: float = 600.0
) -> ReshardReport:
    """Move ``settings.namespace`` (its hash slot) to the primary ``to`` (``host:port``
    or a node id) of the cluster ``settings`` name; see the module docstring for how.

    Args:
        settings: The cluster and the namespace.
        to: The target primary.
        pause_ms: The longest the source may pause its writes: a copy that takes more
            than three quarters of it is abandoned (nothing moves). The default stays
            under the clients' default request timeout (5 s), past which a paused
            write fails in the client instead of waiting; raise both together.
        index_timeout: Seconds to wait for the search index to be built on the target.

    Raises:
        ConfigError: The URL does not name a cluster, ``to`` is not a primary of it, or
            ``pause_ms`` is not from 1 to 3,600,000.
        ReshardError: The target already holds keys of the slot, or the copy failed or
            ran out of ``pause_ms`` (the namespace stays whole on its source; the
            target's copies are removed, or the error says how to remove them when the
            target stopped answering), or the hand-over was sent and neither node can
            say whether it happened. The source takes writes again in every case.
    """
    import redis

    from memworker.io.redispy import is_cluster, redis_client, redis_kwargs

    if isinstance(pause_ms, bool) or not isinstance(pause_ms, int) or not 1 <= pause_ms <= 3_600_000:
        raise ConfigError(f"pause_ms must be an integer from 1 to 3600000 (ms), got {shown(pause_ms)}")
    if not is_cluster(settings):
        raise ConfigError("memworker reshard moves a namespace between shards of a Valkey Cluster; "
                          f"{settings.redacted_url()} is a standalone server")  # fmt: skip
    cluster = redis_client(settings)
    user, password = settings.credentials()
    nodes: dict[tuple[str, int], Any] = {}

    def node(address: tuple[str, int]) -> Any:
        if address not in nodes:
            nodes[address] = redis.Redis(host=address[0], port=address[1], username=user,
                                         password=password, ssl=settings.tls,
                                         socket_timeout=pause_ms / 1000 + 30,
                                         **redis_kwargs(settings))  # fmt: skip
        return nodes[address]

    try:
        ns_tag = tag(settings.namespace)
        slot = int(cluster.keyslot(ns_tag))
        entry = cluster.get_node_from_key(ns_tag)
        nodes_text = as_text(node((entry.host, int(entry.port))).execute_command("CLUSTER", "NODES"))
        primaries = _primaries(nodes_text)
        target_id = _target_id(primaries, to)
        source_id = _owner(nodes_text, slot)
        if source_id is None or source_id not in primaries:
            raise ReshardError(f"slot {slot} of namespace {settings.namespace!r} has no live owner")
        where = {i: f"{h}:{p}" for i, (h, p) in primaries.items()}
        if source_id == target_id:
            # Nothing to move; a rerun after a move killed past its hand-over makes the
            # namespace's index there (other namespaces of the slot, unlisted now that
            # their source indexes are gone, get theirs at their first search).
            return ReshardReport(settings.namespace, slot, where[source_id], where[target_id], 0, 0.0,
                                 _build_index(settings, index_timeout))  # fmt: skip
        source, target = node(primaries[source_id]), node(primaries[target_id])
        if int(target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)):
            raise ReshardError(
                f"the target {where[target_id]} already holds keys of slot {slot} (an interrupted "
                f"move?); delete them there (ASKING, then DEL) and run `CLUSTER SETSLOT {slot} "
                "STABLE` on it, then move again"
            )
        # every namespace of the slot moves; each one's index is dropped and made again
        others = _slot_namespaces(source, cluster, slot, settings.namespace)
        indexes = [Keys(ns).index for ns in (settings.namespace, *others)]
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        # sent: SETSLOT NODE went out (its reply may be lost); owned: the target owns the
        # slot. The source takes writes again whatever the target answers, or fails to:
        # at once before the hand-over, else once its old owner learnt it.
        sent = owned = False
        refused: redis.RedisError | None = None
        try:
            # The source's indexes go first: it would otherwise delete each record from
            # its HNSW graph as the source drops the slot's keys, with writes paused (30x
            # longer for 5,000 records). Searches meanwhile answer on the exact path.
            for index in indexes:
                _drop_index(source, index, slot=None, target_id=target_id)
            started = time.monotonic()
            source.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
            try:
                moved = _copy_slot(source, target, slot, deadline=started + 0.75 * pause_ms / 1000)
                sent = True
                try:
                    target.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
                    owned = True
                except redis.RedisError as exc:  # refused, or its reply lost: asked below
                    refused = exc
            finally:
                try:
                    owned = owned or (sent and _took_slot(source, target, slot, target_id))
                    if owned:
                        _wait_handover(source, slot, target_id, _HANDOVER_S)
                finally:
                    source.execute_command("CLIENT", "UNPAUSE")
            if refused is not None and not owned:
                raise refused
        except BaseException as exc:  # an interrupt too: the target must not keep half a slot
            if owned:
                raise  # handed over: the target holds the namespace now
            if sent:
                try:
                    took = _slot_owner(target, slot) == target_id
                except redis.RedisError:
                    raise ReshardError(
                        f"moving slot {slot} to {where[target_id]}: the hand-over was sent, and "
                        f"neither node says whether it happened ({_answer(exc)}); check `CLUSTER "
                        "NODES` on both, and move again once the target answers"
                    ) from exc
                if took:
                    raise
            try:
                _abort_import(target, slot)
            except redis.RedisError as cleanup:
                raise ReshardError(
                    f"moving slot {slot} to {where[target_id]} failed, nothing moved: {_answer(exc)}; "
                    f"its copies stay on the target ({_answer(cleanup)}): delete them there (ASKING, "
                    f"then DEL) and run `CLUSTER SETSLOT {slot} STABLE` on it, then move again"
                ) from exc
            if isinstance(exc, (redis.RedisError, ReshardError)):
                raise ReshardError(f"moving slot {slot} to {where[target_id]} failed, nothing moved: "
                                   f"{_answer(exc)}") from exc  # fmt: skip
            raise
        paused_ms = (time.monotonic() - started) * 1000
        for other, address in primaries.items():
            if other not in (target_id, source_id):
                try:
                    node(address).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
                except redis.RedisError:  # best effort: the cluster bus tells it too
                    pass
        # a search that found no index between the drop and the pause made it again
        for index in indexes:
            _drop_index(source, index, slot=slot, target_id=target_id)
        built = _build_index(settings, index_timeout)
        for ns in others:
            _build_index(settings.with_namespace(ns), index_timeout)
        return ReshardReport(settings.namespace, slot, where[source_id], where[target_id], moved,
                             round(paused_ms, 1), built, others)  # fmt: skip
    finally:
        for client in nodes.values():
            client.close()
        cluster.close()


def _copy_slot(source: Any, target: Any, slot: int, *, deadline: float) -> int:
    """Copy every key of ``slot`` (value and time to live) from the paused source to
    the importing target; returns how many."""
    count = int(source.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
    keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, count) if count else []
    moved = 0
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        read = source.pipeline(transaction=False)
        for key in chunk:
            read.execute_command("DUMP", key)
            read.execute_command("PEXPIRETIME", key)
        replies = read.execute()
        write = target.pipeline(transaction=False)
        for key, dump, at in zip(chunk, replies[0::2], replies[1::2]):
            if dump is None or int(at) == -2:
                continue  # expired since it was listed
            write.execute_command("ASKING")  # the slot is only importing on the target
            if int(at) == -1:  # no expiry
                write.execute_command("RESTORE", key, 0, dump)
            else:
                # the same moment, not the time left (a key read in its last
                # millisecond had PTTL 0: RESTORE's "no expiry"); one already past
                # is not created
                write.execute_command("RESTORE", key, int(at), dump, "ABSTTL")
            moved += 1
        write.execute()
        if time.monotonic() > deadline:  # checked before the hand-over, too
            raise ReshardError(f"the copy would outlast the pause ({len(keys)} keys; raise --pause-ms)")
    return moved


def _took_slot(source: Any, target: Any, slot: int, target_id: str) -> bool:
    """Whether the target owns ``slot`` after a ``SETSLOT NODE`` whose reply was lost:
    as the target says, or, if it cannot answer, as the source learns over the
    cluster bus within :data:`_HANDOVER_S` (its writes paused meanwhile)."""
    import redis

    try:
        return _slot_owner(target, slot) == target_id
    except redis.RedisError:
        try:
            _wait_handover(source, slot, target_id, _HANDOVER_S)
        except ReshardError:
            return False
        return True


def _wait_handover(source: Any, slot: int, target_id: str, timeout: float) -> None:
    """Wait until the source knows the target owns ``slot`` and dropped its keys, its
    writes paused meanwhile (until then a write there would be lost with its keys)."""
    deadline = time.monotonic() + timeout
    while True:
        source.execute_command("CLIENT", "PAUSE", 1_000, "WRITE")  # extends, never shortens
        owner = _slot_owner(source, slot)
        if owner == target_id and not int(source.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)):
            return
        if time.monotonic() > deadline:
            raise ReshardError(
                f"the target owns slot {slot}, but its old owner did not learn it within {timeout:.0f} s "
                "over the cluster bus; check `CLUSTER NODES` on both (the old owner's writes resume "
                "now, and any it takes for that slot are lost when it learns)"
            )
        time.sleep(0.01)


def _answer(exc: BaseException) -> str:
    """An error's text without redis-py's copy of a pipeline's command (RESTORE's key
    names and DUMP payloads, with the records' text), printable."""
    text = str(exc)
    if "of pipeline caused error: " in text:
        text = text.split("of pipeline caused error: ", 1)[1]
    return text if text.isprintable() else repr(text)


def _target_id(primaries: dict[str, tuple[str, int]], to: str) -> str:
    if to in primaries:
        return to
    for node_id, (host, port) in primaries.items():
        if to == f"{host}:{port}" or (to.startswith(":") and to == f":{port}"):
            return node_id
    known = ", ".join(sorted(f"{h}:{p}" for h, p in primaries.values()))
    raise ConfigError(f"--to {shown(to)} is not a primary of this cluster (primaries: {known})")


def _abort_import(target: Any, slot: int) -> None:
    """Remove the copies a failed move left on the target and end its import."""
    while True:
        keys = target.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 500)
        if not keys:
            break
        pipe = target.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("ASKING")  # the slot is only importing here
            pipe.execute_command("DEL", key)
        pipe.execute()
    target.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


#: A namespace's index name (memworker.keys: ``{ns}:idx``), its namespace captured.
_INDEX_NAME = re.compile(r"\{([A-Za-z0-9_.-]+)\}:idx")


def _slot_namespaces(source: Any, cluster: Any, slot: int, namespace: str) -> tuple[str, ...]:
    """The other namespaces of ``slot`` that have a search index on ``source``
    (none without a search module), sorted."""
    try:
        names = source.execute_command("FT._LIST")
    except Exception:  # noqa: BLE001 - no search module on the source
        return ()
    found = set()
    for name in names:
        match = _INDEX_NAME.fullmatch(as_text(name))
        if match and match.group(1) != namespace and int(cluster.keyslot(tag(match.group(1)))) == slot:
            found.add(match.group(1))
    return tuple(sorted(found))


def _drop_index(source: Any, index: str, *, slot: int | None, target_id: str) -> None:
    """Drop ``index`` on ``source`` if it has it (not the records). ``slot``: the slot
    the source no longer owns, for an index a search made again during the move."""
    try:
        if index.encode() not in source.execute_command("FT._LIST"):
            return
    except Exception:  # noqa: BLE001 - no search module on the source
        return
    if slot is None:
        try:
            source.execute_command("FT.DROPINDEX", index)
        except Exception:  # noqa: BLE001 - dropped meanwhile by another client
            pass
        return
    # FT.DROPINDEX names the index as a key of the slot, which the source no longer
    # serves: it serves it to an ASKING client while it "imports" the slot (no other
    # client sends ASKING to it: the target is not migrating the slot)
    source.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", target_id)
    try:
        drop = source.pipeline(transaction=False)
        drop.execute_command("ASKING")
        drop.execute_command("FT.DROPINDEX", index)
        drop.execute(raise_on_error=False)
    finally:
        source.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def _build_index(settings: Settings, timeout: float) -> bool | None:
    """Make the namespace's search index on its new shard and wait until it is built."""
    from memworker.store import ValkeyStore

    with ValkeyStore(settings) as store:
        return store.ensure_index(timeout)
