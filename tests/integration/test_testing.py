"""memworker.testing: the throwaway servers every test and benchmark runs on."""

from __future__ import annotations

import pytest

from memworker import ValkeyStore, testing


def test_throwaway_server_serves_then_leaves_nothing_behind() -> None:
    with testing.throwaway_server() as srv:
        assert srv.kind == "plain" and not srv.module
        with ValkeyStore(srv.url, namespace="t", search_mode="exact") as store:
            assert store.count() == 0
        workdir, process = srv.workdir, srv.process
        assert workdir.is_dir() and process.poll() is None
    assert process.poll() is not None and not workdir.exists()


def test_a_module_server_without_the_module_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(testing, "search_module_path", lambda: None)
    with pytest.raises(testing.SearchModuleMissing, match=r"memworker\[search\]"):
        testing.start_server(True)


def test_a_server_that_cannot_start_names_its_log() -> None:
    with pytest.raises(testing.ServerStartError, match="did not start"):
        testing.start_server(False, "--no-such-option", "1", startup_timeout=5)
