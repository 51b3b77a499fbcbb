"""Hostile review of session 32's changes (git 4a22908..b244bcd, memworker/).

Each test checks one suspicion about what a fix left incomplete on a twin path:

* 5af7a66 made Settings errors quote a bad value through ``shown()`` (a 10 KB
  ``MEMWORKER_*`` value was echoed whole); the worker's, tracing's, CrewAI factory's
  and embedded server's readers of other ``MEMWORKER_*`` values, and QueuedStore's
  index config, still quote it whole.
* 1869019/25b99de/779db8b redact URL passwords in CLI *usage* errors; an error the
  CLI prints after parsing (a URL given by mistake to ``--namespace``, ``--producer``
  or ``import-lancedb``) quotes the argument as typed.
* 25b99de/b244bcd deduplicate a put's index paths by tokens, the index read as a
  number (``t[0]``/``t[00]``); spellings ``int()`` also reads as 0 (``t[+0]``,
  ``t[0_0]``) and the store's own ``index['fields']`` are not deduplicated.
* 57102b2's ``reindex`` (first vector write after another process reset the
  namespace): pinned on a module server.
* adecf90's UTF-8 jobs: QueuedStore cuts a batch of non-ASCII puts into jobs that fit
  ``max_job_bytes`` by their UTF-8 size (pinned).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from memworker.errors import ConfigError, ValidationError
from memworker.settings import Settings

MB = 1 << 20
SECRET = "S3cretPw9"
URL_WITH_PASSWORD = f"redis://alice:{SECRET}@db.example.com:6379/0"


# ----------------------------------------------------------------------------- huge values echoed
def _sweep_interval() -> None:
    from memworker.worker_settings import read_sweep_interval

    read_sweep_interval({"MEMWORKER_SWEEP_INTERVAL": "9" * 10_000})


def _otel_setup() -> None:
    from memworker.tracing import setup_worker_tracing

    setup_worker_tracing({"MEMWORKER_OTEL_SETUP": ":" + "x" * 10_000})


def _memory_factory() -> None:
    from memworker.crewai.config import load_memory_config

    load_memory_config({"MEMWORKER_MEMORY_FACTORY": "m" * 10_000 + ":f"})


def _appendfsync() -> None:
    from memworker.embedded.launch import resolve_appendfsync

    resolve_appendfsync("x" * 10_000)


def _index_dims(settings: Settings) -> None:
    from memworker.langgraph import QueuedStore

    QueuedStore(settings, index={"dims": "9" * 10_000, "fields": ["text"]})


HUGE_VALUE_READERS = [
    ("MEMWORKER_SWEEP_INTERVAL", lambda s: _sweep_interval()),
    ("MEMWORKER_OTEL_SETUP", lambda s: _otel_setup()),
    ("MEMWORKER_MEMORY_FACTORY", lambda s: _memory_factory()),
    ("appendfsync", lambda s: _appendfsync()),
    ("QueuedStore index dims", _index_dims),
]


@pytest.mark.parametrize("call", [c for _, c in HUGE_VALUE_READERS], ids=[i for i, _ in HUGE_VALUE_READERS])
def test_a_10kb_configuration_value_is_quoted_cut_not_whole(plain_server, namespace, call) -> None:
    """5af7a66: "Settings errors quote a bad value through shown() (first 64
    characters, escaped): a 10 KB MEMWORKER_* value or URL parameter was echoed whole".
    These readers of configuration still quote the value with ``!r``, whole."""
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    with pytest.raises(ConfigError) as info:
        call(settings)
    message = str(info.value)
    assert len(message) < 1_000, f"{len(message)} characters: {message[:120]}..."


# ----------------------------------------------------------------------------- CLI secrets
CLI_MISTAKES = [
    ("--namespace", ["--namespace", URL_WITH_PASSWORD, "status"]),
    ("drain --producer", ["drain", "--producer", URL_WITH_PASSWORD, "--timeout", "0"]),
    ("import-lancedb path", ["import-lancedb", URL_WITH_PASSWORD]),
    ("import-lancedb --table", ["import-lancedb", "/", "--table", URL_WITH_PASSWORD]),
]


@pytest.mark.parametrize("argv", [a for _, a in CLI_MISTAKES], ids=[i for i, _ in CLI_MISTAKES])
def test_the_cli_never_prints_a_url_password_given_to_the_wrong_option(plain_server, tmp_path, argv) -> None:
    """docs/guarantees.md: "A password in a URL ... is never shown: not in an error
    message ... a CLI usage error (a URL given without --url is quoted with ***)".
    A URL pasted into another option is refused after parsing, and the CLI prints the
    error with the argument as typed, password and all (_Parser's redaction covers only
    argparse's usage errors)."""
    env = {
        **os.environ,
        "MEMWORKER_URL": plain_server.url,
        "MEMWORKER_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("MEMWORKER_NAMESPACE", None)
    done = subprocess.run(
        [sys.executable, "-m", "memworker.cli", *argv],
        env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    out = done.stdout + done.stderr
    assert "alice" in out or "***" in out or "URL" in out or "error" in out.lower(), out  # it did complain
    assert SECRET not in out, out


# ----------------------------------------------------------------------------- index paths
def _queued_store(plain_server, namespace, **index):
    from memworker.langgraph import QueuedStore

    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    return QueuedStore(settings, index={"dims": 4, "fields": ["text"], **index})


@pytest.fixture
def queued(plain_server, namespace):
    made = []

    def make(**index):
        s = _queued_store(plain_server, namespace, **index)
        made.append(s)
        return s

    yield make
    if made:
        made[0].store.reset()
    for s in made:
        s.close()


# 50,000 characters: a value well within its 64 KiB limit; 30 copies of it are 1.5 MB,
# over the indexed text's 1 MiB limit, one copy is not.
TEXT = "apple " * 8_333


def test_index_path_spellings_of_one_element_are_collected_once(queued) -> None:
    """25b99de/b244bcd: a put's index paths are deduplicated "by tokens with the index
    as a number (t[0], t[00])". LangGraph's get_text_at_path reads an index with int(),
    so t[+0], t[+00], t[0_0] ... also name element 0; _index_token keeps them as
    written (only '-' is taken as a sign), so 30 spellings of element 0 collect the
    text 30 times and the put is refused for its indexed text (1.5 MB), while 30
    spellings with leading zeros are accepted."""
    from langgraph.store.base import get_text_at_path, tokenize_path

    lg = queued()
    value = {"t": [TEXT]}
    zeros = [f"t[{'0' * k}]" for k in range(1, 31)]
    signed = [f"t[+{'0' * k}]" for k in range(1, 16)] + [f"t[0{'_0' * k}]" for k in range(1, 16)]
    for path in signed:  # each names the same element as t[0], as LangGraph reads it
        assert get_text_at_path(value, tokenize_path(path)) == [TEXT], path
    lg.put(("a",), "zeros", value, index=zeros)  # accepted: one path
    lg.put(("a",), "signed", value, index=signed)  # the same one path


def test_a_store_index_field_repeated_is_collected_once_as_a_put_index_is(queued) -> None:
    """10a9356: "the indexed text collects each field path once" -- for a put's own
    ``index=[...]``. The store's ``index['fields']`` (``_check_index``: paths kept as
    given) is not deduplicated: with fields=["text"] * 30, a put of a 50 KB text is
    refused as 1.5 MB of indexed text, though the same put with
    ``index=["text"] * 30`` on a store indexing "text" is accepted."""
    per_put = queued()
    per_put.put(("a",), "per-put", {"text": TEXT}, index=["text"] * 30)  # accepted
    config = queued(fields=["text"] * 30)
    config.put(("b",), "config", {"text": TEXT})


# ----------------------------------------------------------------------------- reindex (module)
def test_first_vector_write_after_another_process_reset_is_searchable_at_once(module_server, namespace) -> None:
    """57102b2: after another process's reset (index dropped), a store that still
    believes its index is ready makes the namespace's first vector write, recreates the
    index and has the module index the chunk with ``reindex`` (a field set to its own
    value) instead of writing it again. The record must be found by a search at once,
    whole, and a record of that chunk deleted before the catch-up stays deleted."""
    from valkey_servers import store_maker

    maker = store_maker(module_server.url, namespace, "module")
    make = next(maker)
    try:
        a, b = make(), make()
        a.save([{"id": "warm", "content": "warm", "scope": "/s", "embedding": [1.0, 0.0, 0.0, 0.0]}])
        assert [r.id for r, _ in a.search([1.0, 0.0, 0.0, 0.0], limit=5)] == ["warm"]
        for round_ in range(5):
            b.reset()  # drops the index; a still thinks it is ready
            rows = [
                {"id": f"r{round_}-{i}", "content": f"text {i}", "scope": "/s", "categories": ["c"],
                 "embedding": [1.0, float(i), 0.0, 0.0]}
                for i in range(3)
            ]  # fmt: skip
            a.save(rows)
            hits = a.search([1.0, 0.0, 0.0, 0.0], limit=10, min_score=-1.0)
            assert sorted(r.id for r, _ in hits) == sorted(r["id"] for r in rows), round_
            got = a.get_record(f"r{round_}-1")
            assert (got.content, got.scope, got.categories) == ("text 1", "/s", ["c"])
            assert a.list_categories() == {"c": 3}
    finally:
        next(maker, None)


# ----------------------------------------------------------------------------- UTF-8 jobs
def test_a_batch_of_cjk_puts_is_cut_into_jobs_that_fit_by_their_utf8_bytes(queued, plain_server, namespace) -> None:
    """adecf90: jobs carry UTF-8 text; QueuedStore cuts a batch into jobs by each put's
    UTF-8 size. 40 puts of 20,000 CJK characters (60 KB each, 2.4 MB in all) must all
    be enqueued, every job within max_job_bytes (counted in bytes, not characters)."""
    import redis
    from langgraph.store.base import PutOp

    from memworker.queue.jobs import DEFAULT_MAX_JOB_BYTES, QueueKeys

    lg = queued()
    text = "記憶" * 10_000
    ops = [PutOp(("cjk",), f"k{i}", {"text": text}, index=False) for i in range(40)]
    lg.batch(ops)
    client = redis.Redis(host="127.0.0.1", port=plain_server.port)
    try:
        keys = QueueKeys(namespace)
        sizes = [len(v) for v in client.hvals(keys.msgs())]
    finally:
        client.close()
    assert sum(sizes) > 2 * MB and len(sizes) >= 3, sizes
    assert max(sizes) <= DEFAULT_MAX_JOB_BYTES, sizes


def test_a_lone_surrogate_in_a_put_is_refused_naming_the_put(queued) -> None:
    """adecf90: build_message now refuses a lone surrogate ("job holds a string that is
    not valid unicode text"); QueuedStore sizes jobs with surrogatepass. A put whose
    value holds one is refused, as ValidationError, naming the put's key."""
    lg = queued()
    with pytest.raises(ValidationError) as info:
        lg.put(("a",), "bad-key", {"text": "half \ud83d of an emoji"})
    assert "bad-key" in str(info.value), str(info.value)
