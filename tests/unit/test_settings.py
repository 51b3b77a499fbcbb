"""Settings: URL and environment parsing (pure unit tests, no server), and a quiet import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from memworker import ConfigError
from memworker.settings import DEFAULT_NAMESPACE, Settings
from memworker.worker_settings import (
    BROKER_ENV,
    WorkerSettings,
    read_appendfsync,
    read_backend,
    read_broker_options,
    read_embedder,
    read_home,
    read_inference_threads,
    read_model,
)

SECRET = "s3cr3t-PASS"


# ============================================================================ from_url
@pytest.mark.parametrize(
    "url,tls",
    [
        ("valkey://h.example:6380", False),
        ("valkeys://h.example:6380", True),
        ("redis://h.example:6380", False),
        ("rediss://h.example:6380", True),
        ("VALKEYS://h.example:6380", True),
    ],
)
def test_schemes_and_tls(url: str, tls: bool) -> None:
    s = Settings.from_url(url)
    assert (s.host, s.port, s.tls, s.db) == ("h.example", 6380, tls, 0)
    assert s.username is None and s.password is None
    assert not s.embedded


def test_defaults() -> None:
    s = Settings.from_url("valkey://localhost")
    assert (s.host, s.port, s.db, s.tls) == ("localhost", 6379, 0, False)
    assert s.namespace == DEFAULT_NAMESPACE
    assert s.request_timeout_ms > 0 and s.connect_timeout_ms > 0


def test_acl_user_and_password() -> None:
    s = Settings.from_url(f"valkey://alice:{SECRET}@h:7000/2")
    assert (s.username, s.password, s.host, s.port, s.db) == ("alice", SECRET, "h", 7000, 2)


def test_percent_encoded_credentials() -> None:
    s = Settings.from_url("rediss://al%40ice%3Ax:p%40ss%3Aw%2Fo%25rd%20%23@h:6390/3")
    assert s.username == "al@ice:x"
    assert s.password == "p@ss:w/o%rd #"
    assert (s.host, s.port, s.db, s.tls) == ("h", 6390, 3, True)


def test_password_only_and_user_only() -> None:
    s = Settings.from_url(f"valkey://:{SECRET}@h")
    assert (s.username, s.password) == (None, SECRET)
    s = Settings.from_url("valkey://bob@h")
    assert (s.username, s.password) == ("bob", None)


def test_ipv6_host() -> None:
    s = Settings.from_url("valkey://[::1]:6400/1")
    assert (s.host, s.port, s.db) == ("::1", 6400, 1)


@pytest.mark.parametrize("path,db", [("", 0), ("/", 0), ("/0", 0), ("/5", 5), ("/15", 15)])
def test_db_in_path(path: str, db: int) -> None:
    assert Settings.from_url(f"valkey://h:1{path}").db == db


def test_timeouts_as_query_params() -> None:
    s = Settings.from_url("valkey://h?request_timeout_ms=1500&connect_timeout_ms=250")
    assert (s.request_timeout_ms, s.connect_timeout_ms) == (1500, 250)
    s = Settings.from_url("valkey://h?timeout=2.5&socket_connect_timeout=1")
    assert (s.request_timeout_ms, s.connect_timeout_ms) == (2500, 1000)
    s = Settings.from_url("valkey://h?socket_timeout=0.5")
    assert s.request_timeout_ms == 500


def test_tls_params() -> None:
    s = Settings.from_url("valkeys://h?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=none")
    assert (s.tls, s.tls_ca_file, s.tls_insecure) == (True, "/etc/ca.pem", True)
    assert Settings.from_url("valkeys://h?ssl_cert_reqs=required").tls_insecure is False


def test_overrides() -> None:
    s = Settings.from_url("valkey://h", namespace="other", search_mode="exact")
    assert (s.namespace, s.search_mode) == ("other", "exact")


@pytest.mark.parametrize(
    "url,part",
    [
        ("http://h:6379", "scheme"),
        ("h:6379", "scheme"),
        ("unix:///tmp/valkey.sock", "scheme"),
        ("valkey://h:abc", "port"),
        ("valkey://h:70000", "port"),
        ("valkey://h:0", "port"),
        ("valkey://h:-1", "port"),
        ("valkey://h/x", "database"),
        ("valkey://h/1/2", "database"),
        ("valkey://h/-1", "database"),
        ("valkey://h?bogus=1", "bogus"),
        ("valkey://h?timeout=abc", "timeout"),
        ("valkey://h?timeout=0", "timeout"),
        ("valkey://h?request_timeout_ms=-5", "request_timeout_ms"),
        ("valkey://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("valkey://h?db=x", "db"),
        ("valkey://:6379", "host"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_bad_urls_raise_config_error_naming_the_part(url: str, part: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_url(url)
    assert part in str(err.value).lower()


@pytest.mark.parametrize(
    "url",
    [
        f"valkey://alice:{SECRET}@h:abc/0",
        f"valkey://alice:{SECRET}@h:70000/0",
        f"valkey://alice:{SECRET}@h:0/0",
        f"valkey://:{SECRET}@h:abc",
        f"valkey://alice:{SECRET}@h/x",
        f"valkey://alice:{SECRET}@h?nope=1",
        f"valkey://alice:{SECRET}@h?timeout=abc",
        f"http://alice:{SECRET}@h",
        f"valkey://alice:{SECRET}@:6379",
        f"valkey://alice:{SECRET}@[::1",
        f"valkey://alice:{SECRET}@h:6379",  # valid URL, bad namespace below
    ],
)
def test_password_never_in_error_messages(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_url(url, namespace="bad namespace!")
    text = f"{err.value}|{err.value!r}|{err.value.args}"
    assert SECRET not in text
    assert SECRET.lower() not in text.lower()


@pytest.mark.parametrize("sep", ["/", "?", "#"])
def test_password_with_unencoded_url_delimiter_not_leaked(sep: str) -> None:
    """A password that was not percent-encoded and contains '/', '?' or '#' cuts the
    authority short; the resulting error must still not show it."""
    url = f"valkey://alice:{SECRET}{sep}x@h:6379"
    try:
        s = Settings.from_url(url)
    except ConfigError as err:
        assert SECRET not in str(err)
    else:
        assert SECRET not in repr(s) and SECRET not in s.redacted_url()


def test_password_never_in_repr_str_or_redacted_url() -> None:
    s = Settings.from_url(f"valkeys://alice:{SECRET}@h:7000/2?timeout=3")
    for text in (repr(s), str(s), s.redacted_url(), f"{s}", f"{s!r}"):
        assert SECRET not in text
    assert s.redacted_url() == "valkeys://alice:***@h:7000/2"
    assert "alice" in str(s)
    # the unredacted form exists for the client library, and round-trips
    assert Settings.from_url(s.url(redact=False)).password == SECRET


def test_redacted_url_of_embedded_settings_starts_nothing(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    assert s.embedded
    assert s.redacted_url() == f"embedded:{tmp_path / 'home'}"
    assert not (tmp_path / "home").exists()


# ============================================================================ from_env
def test_from_env_precedence() -> None:
    both = {"VALKEY_URL": "valkey://v-host:1", "REDIS_URL": "redis://r-host:2"}
    assert Settings.from_env(both).host == "v-host"
    assert Settings.from_env({"REDIS_URL": "redis://r-host:2"}).host == "r-host"
    assert Settings.from_env({"VALKEY_URL": "", "REDIS_URL": "redis://r-host:2"}).host == "r-host"
    embedded = Settings.from_env({})
    assert embedded.embedded and embedded.host is None and embedded.port is None
    assert Settings.from_env({"VALKEY_URL": "", "REDIS_URL": ""}).embedded


def test_from_env_reads_memworker_variables(tmp_path: Path) -> None:
    env = {
        "VALKEY_URL": "valkey://h:1",
        "MEMWORKER_NAMESPACE": "team-a.prod_1",
        "MEMWORKER_HOME": str(tmp_path / "mw"),
        "MEMWORKER_SEARCH": "exact",
    }
    s = Settings.from_env(env)
    assert (s.host, s.namespace, s.home, s.search_mode) == (
        "h",
        "team-a.prod_1",
        tmp_path / "mw",
        "exact",
    )
    e = Settings.from_env({k: v for k, v in env.items() if k != "VALKEY_URL"})
    assert e.embedded and (e.namespace, e.home, e.search_mode) == (
        "team-a.prod_1",
        tmp_path / "mw",
        "exact",
    )


def test_from_env_ignores_empty_variables() -> None:
    s = Settings.from_env({"MEMWORKER_NAMESPACE": "", "MEMWORKER_HOME": "", "MEMWORKER_SEARCH": ""})
    assert (s.namespace, s.home, s.search_mode) == (DEFAULT_NAMESPACE, Path(".memworker"), "auto")


def test_from_env_keyword_overrides_win() -> None:
    s = Settings.from_env(
        {"MEMWORKER_NAMESPACE": "envns", "VALKEY_URL": "valkey://h"}, namespace="kw"
    )
    assert s.namespace == "kw"


def test_from_env_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VALKEY_URL", "")
    monkeypatch.setenv("REDIS_URL", "redis://from-os:6400")
    monkeypatch.setenv("MEMWORKER_NAMESPACE", "osns")
    s = Settings.from_env()
    assert (s.host, s.port, s.namespace) == ("from-os", 6400, "osns")


def test_explicit_url_does_not_depend_on_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit URL wins; a broken VALKEY_URL/REDIS_URL that is not used must not break it."""
    monkeypatch.setenv("VALKEY_URL", "valkey://h:notaport")
    monkeypatch.setenv("REDIS_URL", "redis://h?bogus=1")
    monkeypatch.setenv("MEMWORKER_NAMESPACE", "envns")
    s = Settings.resolve("valkey://good:6390")
    assert (s.host, s.port, s.namespace) == ("good", 6390, "envns")


def test_resolve_keeps_a_settings_object() -> None:
    base = Settings.from_url(f"valkey://u:{SECRET}@h:1/2")
    assert Settings.resolve(base) is base
    moved = Settings.resolve(base, namespace="other", search_mode=None)
    assert (moved.namespace, moved.password, moved.db) == ("other", SECRET, 2)


@pytest.mark.parametrize("namespace", ["bad namespace", "a:b", "a/b", "é", "x" * 65, "a*", "{a}"])
def test_bad_namespace(namespace: str) -> None:
    with pytest.raises(ConfigError, match="namespace"):
        Settings.from_env({"MEMWORKER_NAMESPACE": namespace})
    with pytest.raises(ConfigError, match="namespace"):
        Settings.from_url("valkey://h", namespace=namespace)


def test_bad_search_mode() -> None:
    with pytest.raises(ConfigError, match="search mode"):
        Settings.from_env({"MEMWORKER_SEARCH": "fast"})


def test_bad_url_in_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="port"):
        Settings.from_env({"VALKEY_URL": f"valkey://u:{SECRET}@h:99999"})


# ============================================================================ import
def test_import_starts_nothing() -> None:
    code = (
        "import memworker, threading, sys; "
        "assert threading.active_count() == 1, threading.enumerate(); "
        "heavy = [m for m in ('glide', 'glide_sync', 'crewai', 'numpy', 'dramatiq', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_url_keeps_tls_for_every_scheme_family() -> None:
    """The URL handed to redis-py (dramatiq, the queue) must keep TLS: 'redis' + TLS
    is 'rediss', never plain 'redis'."""
    tls = Settings.from_url("valkeys://u:p@h:1/2")
    assert tls.url(redact=False, scheme="redis") == "rediss://u:p@h:1/2"
    assert tls.url(redact=False) == "valkeys://u:p@h:1/2"
    plain = Settings.from_url("rediss://h:1").url(scheme="valkey")
    assert plain == "valkeys://h:1/0"
    assert Settings.from_url("redis://h:1").url(scheme="rediss") == "redis://h:1/0"
    with pytest.raises(ConfigError, match="scheme"):
        Settings.from_url("redis://h:1").url(scheme="http")


def test_credentials_of_a_url_are_its_user_and_password() -> None:
    s = Settings.from_url(f"valkey://alice:{SECRET}@h:7000/2")
    assert s.credentials() == ("alice", SECRET)
    assert Settings.from_url("valkey://h").credentials() == (None, None)


# ============================================================================ WorkerSettings
def test_worker_settings_defaults() -> None:
    w = WorkerSettings.from_env({})
    assert (w.max_retries, w.min_backoff_ms, w.max_deliveries, w.commit_step) == (5, 1000, 3, 8)
    assert (w.embedder, w.model, w.inference_threads, w.llm, w.memory_factory) == (None,) * 5
    assert w.home == Path(".memworker") and w.appendfsync is None
    assert w.broker_options() == {
        "max_retries": 5, "min_backoff_ms": 1000, "max_deliveries": 3, "commit_step": 8,
        "inflight_records": 256, "inflight_bytes": 16 * 1024 * 1024, "commit_threads": 2,
    }  # fmt: skip


def test_worker_settings_reads_every_variable(tmp_path: Path) -> None:
    env = {
        "MEMWORKER_MAX_RETRIES": "0",
        "MEMWORKER_MIN_BACKOFF_MS": " 250 ",
        "MEMWORKER_MAX_DELIVERIES": "1",
        "MEMWORKER_COMMIT_STEP": "0",
        "MEMWORKER_EMBEDDER": "pkg.mod:make",
        "MEMWORKER_MODEL": "some/model",
        "MEMWORKER_HOME": str(tmp_path),
        "MEMWORKER_INFERENCE_THREADS": "3",
        "MEMWORKER_LLM": "gpt-x",
        "MEMWORKER_MEMORY_FACTORY": "pkg.mod:config",
        "MEMWORKER_APPENDFSYNC": "always",
    }
    w = WorkerSettings.from_env(env)
    assert w == WorkerSettings(
        max_retries=0, min_backoff_ms=250, max_deliveries=1, commit_step=0,
        embedder="pkg.mod:make", model="some/model", home=tmp_path, inference_threads=3,
        llm="gpt-x", memory_factory="pkg.mod:config", appendfsync="always",
    )  # fmt: skip
    with pytest.raises(Exception):
        w.commit_step = 1  # type: ignore[misc]  # frozen
    # explicit values win over the settings; None keeps them
    assert w.broker_options(max_retries=7, commit_step=None)["max_retries"] == 7
    assert w.broker_options(commit_step=None)["commit_step"] == 0


def test_worker_settings_empty_variables_count_as_unset() -> None:
    env = {name: "" for name in (
        "MEMWORKER_MAX_RETRIES", "MEMWORKER_COMMIT_STEP", "MEMWORKER_EMBEDDER", "MEMWORKER_MODEL",
        "MEMWORKER_HOME", "MEMWORKER_INFERENCE_THREADS", "MEMWORKER_LLM",
        "MEMWORKER_MEMORY_FACTORY", "MEMWORKER_APPENDFSYNC",
    )}  # fmt: skip
    assert WorkerSettings.from_env(env) == WorkerSettings()


@pytest.mark.parametrize(
    "var,value,message",
    [
        ("MEMWORKER_MAX_RETRIES", "x", "MEMWORKER_MAX_RETRIES must be an integer, got 'x'"),
        ("MEMWORKER_MAX_RETRIES", "-1", "MEMWORKER_MAX_RETRIES must be an integer >= 0"),
        ("MEMWORKER_MIN_BACKOFF_MS", "1.5", "MEMWORKER_MIN_BACKOFF_MS must be an integer"),
        ("MEMWORKER_MAX_DELIVERIES", "0", "MEMWORKER_MAX_DELIVERIES must be an integer >= 1"),
        ("MEMWORKER_COMMIT_STEP", "-2", "MEMWORKER_COMMIT_STEP must be an integer >= 0"),
        ("MEMWORKER_INFERENCE_THREADS", "0", "MEMWORKER_INFERENCE_THREADS must be an integer >= 1"),
        ("MEMWORKER_INFERENCE_THREADS", "two", "MEMWORKER_INFERENCE_THREADS must be an integer"),
        ("MEMWORKER_EMBEDDER", "nocolon", "MEMWORKER_EMBEDDER must be 'module:callable'"),
        ("MEMWORKER_MEMORY_FACTORY", "m:", "MEMWORKER_MEMORY_FACTORY must be 'module:function'"),
        ("MEMWORKER_APPENDFSYNC", "sometimes", "MEMWORKER_APPENDFSYNC must be one of always"),
    ],
)
def test_worker_settings_names_the_bad_variable_and_its_limit(
    var: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        WorkerSettings.from_env({var: value})
    assert message in str(info.value)


def test_worker_settings_rejects_bad_fields() -> None:
    with pytest.raises(ConfigError, match="commit_step must be an integer >= 0"):
        WorkerSettings(commit_step=-1)
    with pytest.raises(ConfigError, match="max_deliveries must be an integer >= 1"):
        WorkerSettings().broker_options(max_deliveries=0)
    with pytest.raises(ConfigError, match="inference_threads must be an integer >= 1"):
        WorkerSettings(inference_threads=0)
    with pytest.raises(ConfigError, match="appendfsync must be one of"):
        WorkerSettings(appendfsync="never")


def test_broker_options_reader_matches_the_broker_table() -> None:
    assert set(BROKER_ENV) == {
        "max_retries", "min_backoff_ms", "max_deliveries", "commit_step", "inflight_records",
        "inflight_bytes", "commit_threads",
    }  # fmt: skip
    env = {"MEMWORKER_COMMIT_STEP": "4", "MEMWORKER_INFLIGHT_RECORDS": "0", "MEMWORKER_COMMIT_THREADS": "3"}
    assert read_broker_options(env, max_retries=2) == {
        "max_retries": 2, "min_backoff_ms": 1000, "max_deliveries": 3, "commit_step": 4,
        "inflight_records": 0, "inflight_bytes": 16 * 1024 * 1024, "commit_threads": 3,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="MEMWORKER_INFLIGHT_BYTES must be an integer >= 1024"):
        read_broker_options({"MEMWORKER_INFLIGHT_BYTES": "10"})
    with pytest.raises(ConfigError, match="MEMWORKER_COMMIT_THREADS must be an integer >= 1"):
        read_broker_options({"MEMWORKER_COMMIT_THREADS": "0"})
    with pytest.raises(ConfigError, match="commit_threads must be an integer >= 1"):
        WorkerSettings(commit_threads=0)
    with pytest.raises(ConfigError, match="max_retries must be an integer >= 0"):
        read_broker_options({}, max_retries=True)


@pytest.mark.parametrize(
    "name,var,high",
    [
        ("max_retries", "MEMWORKER_MAX_RETRIES", 1000),
        ("min_backoff_ms", "MEMWORKER_MIN_BACKOFF_MS", 3_600_000),
        ("max_deliveries", "MEMWORKER_MAX_DELIVERIES", 1000),
        ("commit_step", "MEMWORKER_COMMIT_STEP", 1_000_000),
        ("inflight_records", "MEMWORKER_INFLIGHT_RECORDS", 1_000_000),
        ("inflight_bytes", "MEMWORKER_INFLIGHT_BYTES", 64 * 1024**3),
        ("commit_threads", "MEMWORKER_COMMIT_THREADS", 64),
    ],
)
def test_broker_options_have_an_upper_limit(name: str, var: str, high: int) -> None:
    """MEMWORKER_COMMIT_THREADS=100000 started 100,000 threads and connections; the
    other options had no upper limit either (10**30 passed)."""
    assert read_broker_options({var: str(high)})[name] == high
    for bad in (high + 1, 10**30):
        with pytest.raises(ConfigError, match=f"{var} must be an integer >= .* and <= {high}, got"):
            read_broker_options({var: str(bad)})
        with pytest.raises(ConfigError, match=f"{name} must be an integer >= .* and <= {high}, got"):
            read_broker_options({}, **{name: bad})
        with pytest.raises(ConfigError, match=name):
            WorkerSettings(**{name: bad})


def test_inference_threads_have_an_upper_limit() -> None:
    assert read_inference_threads({"MEMWORKER_INFERENCE_THREADS": "256"}) == 256
    with pytest.raises(ConfigError, match="MEMWORKER_INFERENCE_THREADS must be an integer >= 1 and <= 256"):
        read_inference_threads({"MEMWORKER_INFERENCE_THREADS": "257"})
    with pytest.raises(ConfigError, match="inference_threads must be an integer >= 1 and <= 256"):
        WorkerSettings(inference_threads=10**9)


def test_single_variable_readers(tmp_path: Path) -> None:
    assert read_model({}) is None and read_model({"MEMWORKER_MODEL": "m"}) == "m"
    assert read_home({}) == Path(".memworker")
    assert read_home({"MEMWORKER_HOME": str(tmp_path)}) == tmp_path
    assert read_inference_threads({"MEMWORKER_INFERENCE_THREADS": " 2 "}) == 2
    assert read_embedder({"MEMWORKER_EMBEDDER": "bad"}, check=False) == "bad"
    assert read_appendfsync({"MEMWORKER_APPENDFSYNC": "no"}) == "no"
    assert read_backend({}) == "torch" and read_backend({"MEMWORKER_BACKEND": "onnx-int8"}) == "onnx-int8"
    with pytest.raises(ConfigError, match="MEMWORKER_BACKEND must be one of torch, onnx, onnx-int8"):
        read_backend({"MEMWORKER_BACKEND": "cuda"})
    assert WorkerSettings.from_env({"MEMWORKER_BACKEND": "onnx"}).backend == "onnx"
    with pytest.raises(ConfigError, match="backend must be one of"):
        WorkerSettings(backend="tensorrt")
    # a reader checks only its own variable
    assert read_model({"MEMWORKER_MODEL": "m", "MEMWORKER_MAX_RETRIES": "x"}) == "m"


# ============================================================================ embedded endpoint
def test_endpoint_is_hidden_and_not_compared(tmp_path: Path) -> None:
    from memworker.settings import EmbeddedEndpoint

    plain = Settings(home=tmp_path)
    resolved = Settings.resolve(plain, namespace="x")
    ready = Settings(home=tmp_path, endpoint=EmbeddedEndpoint("127.0.0.1", 7001, SECRET))
    assert ready == plain and ready.embedded
    for text in (repr(ready), str(ready), ready.redacted_url()):
        assert SECRET not in text and "7001" not in text
    assert ready.address() == ("127.0.0.1", 7001)
    assert ready.credentials() == (None, SECRET)
    assert SECRET in ready.url(redact=False) and SECRET not in ready.url()
    # another namespace keeps the endpoint; another home or module forgets it
    assert Settings.resolve(ready, namespace="other").endpoint == ready.endpoint
    assert Settings.resolve(ready, home=tmp_path / "b").endpoint is None
    assert Settings.resolve(ready, search_module="none").endpoint is None
    assert resolved.endpoint is None


def test_settings_module_imports_no_server_code() -> None:
    code = (
        "import sys, memworker.settings, memworker.worker_settings; "
        "print(any(m.startswith('memworker.embedded') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MEMWORKER_MAX_RETRIES": "2", "MEMWORKER_COMMIT_STEP": "0"},
        {"MEMWORKER_MIN_BACKOFF_MS": "x"},
        {"MEMWORKER_MAX_DELIVERIES": "0"},
    ],
)
def test_worker_settings_agree_with_the_broker_reader(env: dict[str, str]) -> None:
    """The worker's option reader and WorkerSettings agree (values, defaults and
    error messages)."""
    from memworker.worker import process as broker

    def outcome(read: Callable[[], object]) -> object:
        try:
            return read()
        except ConfigError as exc:
            return str(exc)

    assert outcome(lambda: broker.broker_options(env)) == outcome(
        lambda: WorkerSettings.from_env(env).broker_options()
    )
    assert broker.BROKER_ENV == BROKER_ENV


@pytest.mark.parametrize("spec", ["nocolon", "mod:", ":fn"])
def test_worker_settings_agree_with_the_encoding_reader(spec: str) -> None:
    """The flow's config reader (through WorkerSettings' readers) and WorkerSettings
    reject a malformed factory with the same message."""
    from memworker.crewai.config import load_memory_config

    env = {"MEMWORKER_MEMORY_FACTORY": spec}
    with pytest.raises(ConfigError) as old:
        load_memory_config(env)
    with pytest.raises(ConfigError) as new:
        WorkerSettings.from_env(env)
    assert str(old.value) == str(new.value)
    assert load_memory_config({"MEMWORKER_LLM": "m"}).llm == WorkerSettings.from_env(
        {"MEMWORKER_LLM": "m"}
    ).llm


# ============================================================================ HNSW build effort
def test_hnsw_ef_construction_from_the_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().hnsw_ef_construction == 128
    assert Settings.from_env({"MEMWORKER_HNSW_EF_CONSTRUCTION": "200"}).hnsw_ef_construction == 200
    assert Settings.from_env({"MEMWORKER_HNSW_EF_CONSTRUCTION": ""}).hnsw_ef_construction == 128
    env = {"MEMWORKER_HNSW_EF_CONSTRUCTION": "64", "VALKEY_URL": "valkey://h"}
    assert Settings.from_env(env, hnsw_ef_construction=96).hnsw_ef_construction == 96
    # an explicit URL still reads the MEMWORKER_* variable; a keyword wins over it
    monkeypatch.setenv("MEMWORKER_HNSW_EF_CONSTRUCTION", "300")
    assert Settings.resolve("valkey://h:1").hnsw_ef_construction == 300
    assert Settings.resolve("valkey://h:1", hnsw_ef_construction=50).hnsw_ef_construction == 50
    assert Settings.resolve(Settings(), hnsw_ef_construction=50).hnsw_ef_construction == 50


@pytest.mark.parametrize("raw", ["0", "4097", "-5", "1e3", "12; FT.DROPINDEX x", " "])
def test_bad_hnsw_ef_construction_names_the_variable_and_the_limit(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"MEMWORKER_HNSW_EF_CONSTRUCTION.*from 1 to 4096"):
        Settings.from_env({"MEMWORKER_HNSW_EF_CONSTRUCTION": raw})


@pytest.mark.parametrize("value", [0, 4097, True, 12.0, "64", None])
def test_bad_hnsw_ef_construction_value(value: object) -> None:
    with pytest.raises(ConfigError, match=r"hnsw_ef_construction .*from 1 to 4096"):
        Settings(hnsw_ef_construction=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("digits", ["²", "١", "１２"])  # str.isdigit() yet not ASCII: int() refuses some
def test_non_ascii_digits_are_a_config_error_naming_the_field(digits: str) -> None:
    for url, field in ((f"valkey://h/{digits}", "database"), (f"valkey://h?db={digits}", "'db'")):
        with pytest.raises(ConfigError, match=field):
            Settings.from_url(url)
    for name in ("MEMWORKER_COMMIT_REPLICAS", "MEMWORKER_HNSW_EF_CONSTRUCTION"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: digits})


def test_the_embedded_servers_appendfsync_error_names_the_variable(monkeypatch) -> None:
    from memworker.embedded.launch import resolve_appendfsync

    monkeypatch.setenv("MEMWORKER_APPENDFSYNC", "sometimes")
    with pytest.raises(ConfigError, match="MEMWORKER_APPENDFSYNC must be one of always"):
        resolve_appendfsync(None)
    with pytest.raises(ConfigError, match="^appendfsync must be one of"):
        resolve_appendfsync("never-ever")  # the --appendfsync option's own value
    assert resolve_appendfsync("always") == "always"


@pytest.mark.parametrize("kwargs,message", [
    ({"processes": 257}, "processes must be an integer >= 1 and <= 256"),
    ({"threads": 1025}, "threads must be an integer >= 1 and <= 1024"),
    ({"processes": True}, "processes must be an integer"),
])  # fmt: skip
def test_run_worker_refuses_process_and_thread_counts_out_of_range(kwargs, message) -> None:
    """`memworker worker --processes 100000` spawned processes until the host ran out."""
    from memworker.worker.process import run_worker

    with pytest.raises(ConfigError, match=message):
        run_worker("valkey://127.0.0.1:1", **kwargs)
