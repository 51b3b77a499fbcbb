"""The default producer id: a valid id on any host name."""

from __future__ import annotations

import pytest

from memworker.queue import producer as producer_mod
from memworker.queue.jobs import ID_RE, check_producer_id


@pytest.mark.parametrize("host", ["café-01", "ホスト", "Straße.local", "", "-", "a" * 300, "x\u0660\u00b2"])
def test_the_default_producer_id_is_valid_on_any_host_name(monkeypatch, host):
    monkeypatch.setattr(producer_mod.socket, "gethostname", lambda: host)
    pid = producer_mod.default_producer_id()
    assert ID_RE.match(pid), pid
    assert check_producer_id(pid) == pid
