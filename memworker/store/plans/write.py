"""Write plans: save, update, touch. Every write is one call of ``lua/store.lua`` per
chunk of :attr:`~memworker.store.ValkeyStore.batch_size` records, so a record and all
its side-index entries (and the change-log entry) change in one atomic step.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memworker.errors import StoreError, ValidationError
from memworker.io import Plan, Script, error_text
from memworker.keys import CHANGES_CAP
from memworker.records import dimension_mismatch, utcnow
from memworker.store.codec import WRITE_FIELDS_JSON, Row, to_rows
from memworker.store.embeddings import vectors_to_float16
from memworker.store.plans.server import ServerPlans
from memworker.store.times import format_timestamp
from memworker.store.validate import check_ids

__all__ = ["JobWrite", "NotPending", "WritePlans"]

#: A store script's refusal: its code (the first word; clients may add a colon),
#: then the rest. Only the code is matched: the rest may quote an id or a job id,
#: which could spell another code ("NOTFOUND x DIMMISMATCH 3 4").
_CODE_RE = re.compile(r"\s*([A-Z]+):?(?:\s+(.*))?\Z", re.S)
_DIM_RE = re.compile(r"(\d+) (\d+)")


def _refusal(exc: BaseException) -> tuple[str, str]:
    """``(code, rest)`` of a store script's error reply (``("", text)`` for another error)."""
    text = error_text(exc)
    found = _CODE_RE.match(text)
    return (found.group(1), found.group(2) or "") if found else ("", text)


def _dims(code: str, rest: str) -> tuple[int, int] | None:
    """``(stored, given)`` of a ``DIMMISMATCH`` refusal."""
    found = _DIM_RE.fullmatch(rest.strip()) if code == "DIMMISMATCH" else None
    return (int(found.group(1)), int(found.group(2))) if found else None


class NotPending(StoreError):
    """A guarded write found its job no longer pending (it committed or failed)."""


@dataclass(frozen=True)
class JobWrite:
    """One job's part of a many-job commit (:meth:`WritePlans._p_write_jobs`).

    Attributes:
        rows: The job's validated records.
        pending: The job's pending set; the job writes only while ``job_id`` is in it.
        job_id: The job's id (its member in ``pending``).
        commands: Run after the records, in the same atomic step, only if the job
            was pending (its pending-mark removal, marker, counters, wake-up).
        stamp: Stamp the job's unversioned records with its enqueue time (``upd``,
            the pending mark's score), so that a job enqueued earlier that commits
            later (one handed back to the per-message path) leaves them as they are.
    """

    rows: list[Row]
    pending: str
    job_id: str
    commands: list[list[str]] = field(default_factory=list)
    stamp: bool = False


class WritePlans(ServerPlans):
    """Plans that write records (the worker's commit too: :meth:`_p_write` with a guard)."""

    def _p_write(
        self,
        encoded: list[Row],
        extra: Sequence[Sequence[Any]] = (),
        *,
        retried: bool = False,
        guard: tuple[str, str] | None = None,
    ) -> Plan[int]:
        """Write validated records in atomic chunks; ``extra`` commands run in the last one.

        With ``guard`` (a job's pending set and id: a worker's commit), each chunk
        writes only while the job is pending (else :class:`NotPending`), and leaves a
        record whose ``upd`` stamp is later than the job's enqueue time (the pending
        mark's score) as it is. Without, a record replaced gets ``upd`` = now (ms):
        a user's ``update`` or re-save is never reverted by a late job."""
        dims = {e.dim for e in encoded if e.dim}
        dim = dims.pop() if dims else 0
        if dim:
            yield from self._p_check_dim(dim)
        vtype = yield from self._p_vector_type()
        stored = self._state.dim or dim
        if stored:
            yield from self._p_ensure_index(stored)
        inserted = 0
        stamp = str(int(time.time() * 1000))
        chunks = [encoded[i : i + self.batch_size] for i in range(0, len(encoded), self.batch_size)]
        if not chunks and extra:
            chunks = [[]]
        # Every chunk's arguments are built (and float16 conversion checked) before the
        # first one is written.
        blobs = [b"".join([rec.embedding for rec in chunk]) for chunk in chunks]
        if vtype == "float16" and dim:
            done = 0
            for i, chunk in enumerate(chunks):
                if blobs[i]:
                    # the k-th vector of the blob is the k-th record carrying one
                    rows = [done + j for j, rec in enumerate(chunk) if rec.embedding]
                    blobs[i] = vectors_to_float16(
                        # called (on an error) only within this call: no need to bind ``rows``
                        blobs[i], dim, lambda k: f"records[{rows[k]}].embedding"
                    )
                done += len(chunk)
        for n, chunk in enumerate(chunks):
            args: list[Any] = [
                "save",
                self.keys.prefix,
                str(CHANGES_CAP),
                str(dim) if dim else "",
                vtype,
                str(len(chunk)),
                "".join([rec.mode for rec in chunk]),
                "[" + ",".join([WRITE_FIELDS_JSON, *[rec.row_json for rec in chunk]]) + "]",
                blobs[n],
                *(guard or ("", stamp)),
            ]
            if n == len(chunks) - 1:
                for command in extra:
                    args.append(str(len(command)))
                    args += list(command)
            try:
                reply = yield Script("store", args)
            except Exception as exc:  # noqa: BLE001
                code, rest = _refusal(exc)
                if code == "VTYPEMISMATCH":
                    # The namespace was (re)created with another vector type since this
                    # store looked (the script refused before writing): learn it, redo.
                    yield from self._p_stored_dim(refresh=True)
                    if n == 0 and not retried and self._state.vtype != vtype:
                        return (yield from self._p_write(encoded, extra, retried=True, guard=guard))
                    raise StoreError(
                        f"namespace {self.keys.namespace!r} stores {self._state.vtype} vectors, "
                        f"this write was encoded as {vtype}"
                    ) from None
                sizes = _dims(code, rest)
                if sizes:
                    self._state.dim = sizes[0]
                    raise dimension_mismatch(*sizes) from None
                if guard is not None and code == "NOTPENDING":
                    raise NotPending(f"job {guard[1]} is no longer pending") from None
                if code == "NOTFOUND":
                    raise ValidationError(
                        f"update: record {rest!r} does not exist and has no embedding"
                    ) from None
                raise
            inserted += int(reply[0])
            if int(reply[1]) and dim:
                # First write since the namespace was empty: another process may have
                # dropped the index (reset). Make sure it exists, then have the module
                # index the chunk's records at once, as they are now (never the chunk
                # written again: a record it left, or one updated since, would revert).
                self._state.dim = dim
                if self._state.module and self._state.index_ready:
                    self._state.index_ready = False
                    yield from self._p_ensure_index(dim)
                    yield from self._p_reindex([rec.id for rec in chunk])
        return inserted

    def _p_write_jobs(
        self, jobs: Sequence[JobWrite], tail: Sequence[Sequence[str]] = (), *, retried: bool = False
    ) -> Plan[tuple[int, list[int]]]:
        """Commit many jobs in ONE atomic script call: each job's records and commands
        only while that job is pending (a job no longer pending is skipped whole), then
        ``tail`` (e.g. the acks of every job) unconditionally.

        The caller keeps record ids distinct across the jobs of one call and the call
        small (the server runs it at once). Returns ``(inserted, skipped)``: records
        that did not exist, and the indexes of the jobs skipped as no longer pending.
        """
        rows = [row for job in jobs for row in job.rows]
        dims = {e.dim for e in rows if e.dim}
        if len(dims) > 1:
            raise ValidationError(f"jobs of one commit have vectors of dimensions {sorted(dims)}")
        dim = dims.pop() if dims else 0
        if dim:
            yield from self._p_check_dim(dim)
        vtype = yield from self._p_vector_type()
        stored = self._state.dim or dim
        if stored:
            yield from self._p_ensure_index(stored)
        blob = b"".join([rec.embedding for rec in rows])
        if vtype == "float16" and dim and blob:
            with_vector = [i for i, rec in enumerate(rows) if rec.embedding]
            blob = vectors_to_float16(blob, dim, lambda k: f"records[{with_vector[k]}].embedding")
        spec = json.dumps(
            [[job.pending, job.job_id, len(job.rows), job.commands, *([True] if job.stamp else [])]
             for job in jobs],
            separators=(",", ":"),
        )
        args: list[Any] = [
            "save", self.keys.prefix, str(CHANGES_CAP), str(dim) if dim else "", vtype,
            str(len(rows)), "".join([rec.mode for rec in rows]),
            "[" + ",".join([WRITE_FIELDS_JSON, *[rec.row_json for rec in rows]]) + "]",
            blob, "*", spec,
        ]  # fmt: skip
        for command in tail:
            args += [str(len(command)), *command]
        try:
            reply = yield Script("store", args)
        except Exception as exc:  # noqa: BLE001
            code, rest = _refusal(exc)
            if code == "VTYPEMISMATCH" and not retried:
                yield from self._p_stored_dim(refresh=True)
                return (yield from self._p_write_jobs(jobs, tail, retried=True))
            sizes = _dims(code, rest)
            if sizes:
                self._state.dim = sizes[0]
                raise dimension_mismatch(*sizes) from None
            raise
        skipped = [int(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
        if int(reply[1]) and dim:
            # First write since the namespace was empty (see _p_write): make sure the
            # index exists, then have the module index the committed jobs' records as
            # they are now (a record a job left, updated after it was enqueued, stays).
            self._state.dim = dim
            if self._state.module and self._state.index_ready:
                self._state.index_ready = False
                yield from self._p_ensure_index(dim)
                gone = set(skipped)
                yield from self._p_reindex(
                    [row.id for i, job in enumerate(jobs) if i not in gone for row in job.rows]
                )
        return int(reply[0]), skipped

    def _p_save(self, records: Iterable[Any]) -> Plan[None]:
        encoded = to_rows(records)
        if encoded:
            yield from self._p_write(encoded)

    def _p_update(self, record: Any) -> Plan[None]:
        encoded = to_rows([record], keep_embedding=True)
        yield from self._p_write(encoded)

    def _p_reindex(self, record_ids: list[str]) -> Plan[None]:
        """Have the search module index these records now, as they are (the
        script's ``reindex``), in calls of at most ``batch_size`` ids."""
        for start in range(0, len(record_ids), self.batch_size):
            ids = record_ids[start : start + self.batch_size]
            yield Script("store", ["reindex", self.keys.prefix, str(CHANGES_CAP), *ids])

    def _p_touch(self, record_ids: Sequence[str]) -> Plan[int]:
        ids = [] if record_ids is None else check_ids(record_ids)
        if not ids:
            return 0
        now = format_timestamp(utcnow())
        touched = yield Script("store", ["touch", self.keys.prefix, str(CHANGES_CAP), now, *ids])
        return int(touched)
