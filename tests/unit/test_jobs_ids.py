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


@pytest.mark.parametrize("given", ["", 0, False])
def test_an_empty_producer_id_is_refused_not_replaced_by_a_random_one(given) -> None:
    """``producer_id=""`` (an unset variable, say) used to become a new random id: the
    caller's drains then waited on nobody's jobs and reported success."""
    from memworker.errors import ValidationError

    with pytest.raises(ValidationError, match="producer_id"):
        producer_mod.MemoryQueue("valkey://127.0.0.1:1", producer_id=given)  # connects lazily
    assert ID_RE.match(producer_mod.MemoryQueue("valkey://127.0.0.1:1", producer_id=None).producer_id)
