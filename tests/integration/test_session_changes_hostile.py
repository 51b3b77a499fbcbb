"""Hostile review of the last hour's changes (4a22908..HEAD): CLI usage-error redaction,
QueuedMemory's redacted ``storage`` field and its ``__init__``, QueuedStore's key and
indexed-text limits, store.lua's flush().

Real servers only (tests/conftest.py); a failing test here names a defect.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time

import numpy as np
import pytest

from memworker.errors import ConfigError, MemworkerError, ValidationError
from memworker.settings import Settings

PW = "Zq8SecretPw7xK2m"
DIM = 8


def _cli(argv: list[str], env: dict[str, str] | None = None, monkeypatch=None) -> tuple[int, str]:
    from memworker.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue() + err.getvalue()


# ----------------------------------------------------------------------------- CLI redaction
def test_cli_usage_error_hides_a_password_holding_an_unencoded_at() -> None:
    """``valkey://u:p@ss@host`` is a URL memworker accepts (Settings.from_url reads the
    password ``p@ss``: urlsplit splits at the last '@'), but _SECRET's ``[^@\\s]*@``
    stops at the first '@': the usage error prints ``u:***@<rest of password>@host``."""
    url = f"valkey://u:{PW[:8]}@{PW[8:]}@127.0.0.1:6379"
    assert Settings.from_url(url).password == f"{PW[:8]}@{PW[8:]}"  # accepted as a URL
    rc, text = _cli([url])
    assert rc == 2
    assert PW[8:] not in text, text


def test_cli_usage_error_hides_a_password_holding_a_space() -> None:
    """A password with a space (accepted by Settings.from_url) is printed whole: the
    regex's ``[^@\\s]*`` stops at the space and the first alternative does not match."""
    url = f"valkey://u:{PW[:8]} {PW[8:]}@127.0.0.1:6379"
    assert Settings.from_url(url).password == f"{PW[:8]} {PW[8:]}"
    rc, text = _cli([url])
    assert rc == 2
    assert PW[:8] not in text and PW[8:] not in text, text


@pytest.mark.parametrize(
    "argv",
    [
        [f"valkey://:{PW}@[::1]:6379/0"],  # IPv6 host
        [f"valkey://u:a:{PW}@h:6379"],  # ':' in the password
        [f"valkey://u:{PW}%40x@h"],  # percent-encoded '@'
        [f"rediss://h:6379/0?ssl_cert_reqs=none&PASSWORD={PW}&x=1"],  # param, upper case
        ["status", f"valkey://u:{PW}@h", f"rediss://u2:{PW}@h2/0?password={PW}"],  # several
        ["dead", f"valkey://u:{PW}@h"],  # nested invalid choice
        ["retention", f"valkey://u:{PW}@h"],
        ["dead", "list", "--limit", f"valkey://u:{PW}@h"],  # a type's error
        ["retention", "set", f"valkey://u:{PW}@h", "--days", "1"],
        ["--url", f"valkey://u:{PW}@h"],  # no command
        [f"--url=valkey://u:{PW}@h"],
        ["status", "--url", f"valkey://u:{PW}@h", "--url"],  # expected one argument
        ["dead", "list", "--url", f"valkey://u:{PW}@h", "--namespace"],
    ],
)
def test_cli_usage_errors_hold_no_password(argv) -> None:
    rc, text = _cli(argv)
    assert rc == 2, text
    assert PW not in text, text


def test_cli_help_holds_no_password_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("VALKEY_URL", f"valkey://u:{PW}@127.0.0.1:1")
    for argv in (["--help"], ["dead", "list", "--help"], ["retention", "set", "-h"]):
        rc, text = _cli(argv)
        assert rc == 0 and PW not in text, text


def test_cli_retention_set_on_langgraph_is_a_usage_error(plain_server, namespace) -> None:
    for scope in ("/langgraph", "/langgraph/a/b", "langgraph/x"):
        rc, text = _cli(["retention", "set", scope, "--days", "1", "--url", plain_server.url,
                         "--namespace", namespace])  # fmt: skip
        assert rc == 2, text
    # the root and a sibling are fine (above it: passes over it)
    rc, text = _cli(["retention", "set", "/", "--days", "1", "--url", plain_server.url, "--namespace", namespace])
    assert rc == 0, text
    rc, text = _cli(["retention", "list", "--url", plain_server.url, "--namespace", namespace])
    assert rc == 0 and "/" in text, text
    rc, text = _cli(["retention", "clear", "/", "--url", plain_server.url, "--namespace", namespace])
    assert rc == 0, text


def test_cli_nested_actions_take_url_and_namespace_after_the_action(plain_server, namespace) -> None:
    """``dead list --url`` must use that URL, not $VALKEY_URL / the embedded server."""
    from memworker.cli import make_argument_parser

    for argv in (["dead", "list"], ["dead", "purge"], ["retention", "list"], ["retention", "clear", "/x"]):
        args = make_argument_parser().parse_args([*argv, "--url", plain_server.url, "--namespace", namespace])
        assert args.url == plain_server.url and args.namespace == namespace
        # the later one wins, as for the top-level options
        args = make_argument_parser().parse_args(["--namespace", "early", *argv, "--namespace", namespace])
        assert args.namespace == namespace
    rc, text = _cli(["dead", "list", "--json", "--url", plain_server.url, "--namespace", namespace])
    assert rc == 0, text


# ----------------------------------------------------------------------------- QueuedMemory
class _Embedder:
    def __call__(self, texts):
        return [[float(len(t) % 7 + 1)] + [0.5] * (DIM - 1) for t in texts]


def _memory(storage, namespace, **kw):
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory
    from memworker.crewai.testing import StandInLLM

    kw.setdefault("embedder", _Embedder())
    kw.setdefault("llm", StandInLLM())
    kw.setdefault("model_id", "hostile-session")
    return QueuedMemory(storage=storage, namespace=namespace, **kw)


def test_queued_memory_storage_field_keeps_the_url_as_given_but_the_password(plain_server, namespace) -> None:
    """The field is documented (``_memory.py``) as "the field as given, a URL's password
    replaced by ***", but it is ``Settings.redacted_url()``, which drops every query
    parameter: timeouts, ``cluster``, ``ssl_ca_certs``, ``ssl_cert_reqs``. Whoever rebuilds
    a memory from its fields (model_dump -> QueuedMemory(**fields), a CrewAI checkpoint
    restore) gets other settings silently."""
    url = f"{plain_server.url}?request_timeout_ms=1234&connect_timeout_ms=2345&cluster=no"
    memory = _memory(url, namespace)
    try:
        again = Settings.from_url(memory.storage)
        given = Settings.from_url(url)
        assert (again.request_timeout_ms, again.connect_timeout_ms, again.cluster) == (
            given.request_timeout_ms, given.connect_timeout_ms, given.cluster,
        ), memory.storage
    finally:
        memory.close()


def test_queued_memory_model_validate_refusal_quotes_no_part_of_the_password() -> None:
    """The new ``__init__`` unwraps memworker's own error, but ``model_validate`` (and
    ``model_validate_json``: CrewAI's checkpoint restore path) skip ``__init__``: pydantic's
    wrapper quotes the arguments, and its truncated repr keeps the password's first
    characters (a short password whole)."""
    pytest.importorskip("crewai")
    from memworker.crewai import QueuedMemory

    for url in ("redis://:pw9@h", f"redis://:{PW}@h"):
        for validate in (QueuedMemory.model_validate, lambda d: QueuedMemory.model_validate_json(__import__("json").dumps(d))):
            with pytest.raises(Exception) as info:
                validate({"storage": url, "drain_timeout": -1})
            text = str(info.value)
            secret = "pw9" if "pw9" in url else PW[:3]
            assert secret not in text, text


def test_queued_memory_init_keeps_pydantics_error_for_a_bad_field_type() -> None:
    pytest.importorskip("crewai")
    from pydantic import ValidationError as PydanticValidationError

    from memworker.crewai import QueuedMemory

    with pytest.raises(PydanticValidationError):
        QueuedMemory(storage="valkey://127.0.0.1:1", drain_timeout="abc")
    with pytest.raises(PydanticValidationError):
        QueuedMemory(storage="valkey://127.0.0.1:1", background_enqueue=[1])
    # memworker's own refusals come as memworker's, unchained from pydantic's
    with pytest.raises(ValidationError) as info:
        QueuedMemory(storage=f"valkey://u:{PW}@127.0.0.1:1", drain_timeout=-1)
    assert PW not in str(info.value)
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert all(isinstance(x, MemworkerError) for x in chain), chain  # no pydantic wrapper
    with pytest.raises(ConfigError) as cinfo:
        QueuedMemory(storage=f"memcached://u:{PW}@h")
    assert PW not in str(cinfo.value) and "memcached" in str(cinfo.value)
    with pytest.raises(ConfigError):
        QueuedMemory(storage=12)


def test_queued_memory_copies_views_and_crew_keep_working(plain_server, namespace) -> None:
    pytest.importorskip("crewai")
    from crewai import Agent, Crew, Task

    memory = _memory(plain_server.url, namespace)
    try:
        assert memory.storage == plain_server.url  # as given (no password here)
        shallow = memory.model_copy()
        for m in (shallow,):
            assert m.store.settings.namespace == namespace
            assert m.store.settings.port == plain_server.port
            m.store.ping() if hasattr(m.store, "ping") else m.store.count("/")
        scoped = memory.scope("/hostile/a")
        sliced = memory.slice(["/hostile/a", "/hostile/b"])
        assert scoped.list_scopes() == [] or isinstance(scoped.list_scopes(), list)
        assert isinstance(sliced.list_categories(), dict)
        agent = Agent(role="r", goal="g", backstory="b", llm=memory.llm)
        crew = Crew(agents=[agent], tasks=[Task(description="d", expected_output="o", agent=agent)], memory=memory)
        assert crew._memory is memory
        crew2 = Crew(agents=[agent], tasks=[Task(description="d", expected_output="o", agent=agent)], memory=scoped)
        assert crew2._memory is scoped
    finally:
        memory.close()


def test_queued_memory_store_instance_and_bare_valkey_spec(plain_server, namespace, monkeypatch) -> None:
    from memworker import ValkeyStore

    store = ValkeyStore(plain_server.url, namespace=namespace, search_mode="exact")
    memory = _memory(store, None)
    try:
        assert memory.storage is store and memory.store is store
    finally:
        memory.close()
        store.close()
    monkeypatch.setenv("VALKEY_URL", plain_server.url)
    memory = _memory("valkey", namespace)
    try:
        assert memory.storage == "valkey"
        assert memory.store.settings.port == plain_server.port
        assert memory.store.settings.namespace == namespace
    finally:
        memory.store.reset()
        memory.close()


# ----------------------------------------------------------------------------- LangGraph limits
class _WordEmbedder:
    dimension = DIM

    def encode(self, texts):
        out = np.full((len(texts), DIM), 0.1, dtype=np.float32)
        for row, t in zip(out, texts):
            row[len(t) % DIM] = 1.0
        return out


@pytest.fixture
def lg(plain_server, namespace):
    pytest.importorskip("langgraph")
    from memworker import worker as worker_mod
    from memworker.langgraph import QueuedStore

    worker_mod.set_embedder_factory(_WordEmbedder)
    settings = Settings.from_url(plain_server.url, namespace=namespace, search_mode="exact")
    with worker_mod.running_worker(settings, threads=1, min_backoff_ms=10, max_backoff_ms=50,
                                   max_retries=2, worker_timeout_ms=100):  # fmt: skip
        s = QueuedStore(settings, index={"dims": DIM, "fields": ["text"]})
        try:
            yield s
        finally:
            try:
                s.store.reset()
            finally:
                s.close()
                worker_mod.set_embedder_factory(None)


def _wait_for(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_langgraph_key_limit_is_the_same_on_every_path_and_long_deletes_work(lg) -> None:
    from langgraph.store.base import GetOp, PutOp

    ok, long = "k" * 4096, "k" * 4097
    lg.put(("a",), ok, {"text": "fits"})
    assert _wait_for(lambda: lg.get(("a",), ok)) is not None
    assert lg.get(("a",), ok).key == ok
    for put in (
        lambda: lg.put(("a",), long, {"text": "x"}),
        lambda: lg.batch([PutOp(("a",), long, {"text": "x"})]),
        lambda: asyncio.run(lg.aput(("a",), long, {"text": "x"})),
        lambda: asyncio.run(lg.abatch([PutOp(("a",), long, {"text": "x"})])),
    ):
        with pytest.raises(ValidationError, match="4096"):
            put()
    # reads and deletes of a long key are no puts: nothing to refuse
    assert lg.get(("a",), long) is None
    assert lg.batch([GetOp(("a",), long)]) == [None]
    assert asyncio.run(lg.aget(("a",), long)) is None
    lg.delete(("a",), long)
    asyncio.run(lg.adelete(("a",), long))
    lg.batch([PutOp(("a",), long, None)])
    # and a delete of the 4096-character key removes it
    lg.delete(("a",), ok)
    assert lg.get(("a",), ok) is None


def test_langgraph_equivalent_index_paths_are_collected_once(lg) -> None:
    """~560k characters of 'é' (1.12 MB of UTF-8) were collected from one 16 KB text
    by 71 spellings of one path (``t[0]``, ``t[00]``, ...) and the put refused for its
    indexed text: each path is now taken once, by its tokens with the index as a
    number, so the put goes through with the text once."""
    paths = ["t[0]", "t[ 0 ]"] + [f"t[{'0' * i}]" for i in range(2, 72)]
    lg.put(("a",), "e", {"t": ["é" * 8000]}, index=paths)
    lg.put(("a",), "emoji", {"t": ["😀" * 4000]}, index=paths)
    assert _wait_for(lambda: lg.get(("a",), "e")) is not None
    contents = {r.content for r in lg.store.list_records("/langgraph/a")}
    assert contents == {"é" * 8000, "😀" * 4000}


def test_langgraph_an_index_path_with_a_5000_digit_index_is_no_error(lg) -> None:
    """Deduplicating index paths read ``t[99...9]`` with int(): 5,000 digits raised
    Python's ValueError (its 4,300-digit limit) where LangGraph's path reader finds
    nothing there; the put goes through, indexed by its other path."""
    lg.put(("a",), "digits", {"t": ["x"], "text": "apple"}, index=["t[" + "9" * 5000 + "]", "text"])
    assert _wait_for(lambda: lg.get(("a",), "digits")) is not None
    assert {r.content for r in lg.store.list_records("/langgraph/a")} == {"apple"}


# ----------------------------------------------------------------------------- store.lua flush()
def test_sweep_of_overlapping_policies_keeps_counters_exact(plain_server, namespace, raw) -> None:
    """Nested and sibling policies deleting in one sweep call (one record matched by
    two of them): every side-index counter equals the records that remain."""
    from datetime import datetime, timedelta, timezone

    from memworker import ValkeyStore

    store = ValkeyStore(plain_server.url, namespace=namespace, search_mode="exact")
    try:
        old = datetime.now(timezone.utc) - timedelta(days=40)
        mid = datetime.now(timezone.utc) - timedelta(days=20)
        now = datetime.now(timezone.utc)
        recs = []
        for scope, when, n in (("/a/b", old, 3), ("/a/b", mid, 2), ("/a/x", old, 2), ("/a", now, 1),
                               ("/c", old, 2), ("/c/d", now, 1), ("/e", old, 1)):
            recs += [{"id": f"{scope.replace('/', '_')}-{when.day}-{i}", "content": "x", "scope": scope,
                      "categories": ["k", scope], "created_at": when, "embedding": [1.0, 0.0]}
                     for i in range(n)]  # fmt: skip
        store.save(recs)
        for scope, days in (("/a", 30), ("/a/b", 10), ("/c", 30), ("/e", 365)):
            store.set_retention(scope, days)
        store.sweep(limit=100)
        store.sweep(limit=100)
        # left: /a (now), /c/d (now), /e (old, kept 365 days)
        assert store.count("/") == 3
        assert store.list_categories("/") == {"k": 3, "/a": 1, "/c/d": 1, "/e": 1}
        assert sorted(store.list_scopes("/")) == ["/a", "/c", "/e"]
        assert [store.get_scope_info(s).record_count for s in ("/a", "/a/b", "/c", "/c/d", "/e")] == [1, 0, 1, 1, 1]
        assert store.list_categories("/a") == {"k": 1, "/a": 1}
        # the root's tree holds exactly the records left
        trees = [k for k in raw.scan_iter(match=f"*{namespace}*:tree:/", count=1000)]
        assert trees and raw.zcard(trees[0]) == 3
    finally:
        store.reset()
        store.close()


@pytest.fixture
def raw(plain_server):
    import valkey

    client = valkey.Valkey(host="127.0.0.1", port=plain_server.port)
    yield client
    client.close()
