"""memworker.langgraph's record ids and namespace placement: pure functions, cached
per namespace. A stored item is found again only if its id is computed the same way
on every release, so the ids are pinned here; and the cache must never hand one
namespace's scope (another tenant's) to another."""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("langgraph.store.base")

from memworker.langgraph import namespace_path, namespace_scope, record_id  # noqa: E402


def spec_id(namespace: tuple[str, ...], key: str) -> str:
    """The documented id: BLAKE2b-128 of the compact JSON text ``[[labels], key]``."""
    raw = json.dumps([list(namespace), key], ensure_ascii=False, separators=(",", ":"))
    return "lg" + hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


HOSTILE = [
    (("users", "u1"), "m1"),
    ((), "k"),
    (('a"b', "\\"), 'k"]'),
    (("é", "\ud800"), "\udfff"),  # lone surrogates: LangGraph lets them through
    (("a/b", "%2F"), "\n\t"),
    (("x",) * 6, ""),
    (("*", "?"), "[1,2]"),
]


def test_record_ids_are_pinned() -> None:
    # Values from the release that stored them; a change orphans every stored item.
    assert record_id(("users", "u1"), "m1") == "lg" + hashlib.blake2b(
        b'[["users","u1"],"m1"]', digest_size=16
    ).hexdigest()
    assert record_id((), "k") == "lg" + hashlib.blake2b(b'[[],"k"]', digest_size=16).hexdigest()


@pytest.mark.parametrize(("namespace", "key"), HOSTILE)
def test_record_id_follows_the_spec_for_any_labels(namespace: tuple[str, ...], key: str) -> None:
    for _ in range(2):  # the second call comes from the cache
        assert record_id(namespace, key) == spec_id(namespace, key)
        assert record_id(list(namespace), key) == spec_id(namespace, key)


class Impostor(str):
    """A label that hashes and compares like another namespace's."""

    def __hash__(self) -> int:
        return hash("victim")

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False


def test_a_str_subclass_never_gets_another_namespaces_entry() -> None:
    assert namespace_scope(("victim",)) == "/langgraph/victim"  # cached now
    assert namespace_scope((Impostor("attacker"),)) == "/langgraph/attacker"
    assert namespace_path((Impostor("attacker"),)) == "attacker"
    assert record_id((Impostor("attacker"),), "k") == spec_id(("attacker",), "k")
    assert namespace_scope(("victim",)) == "/langgraph/victim"


def test_placement_percent_encodes_each_label() -> None:
    assert namespace_path(("a/b", "c d", "%")) == "a%2Fb/c%20d/%25"
    assert namespace_scope(("a/b", "c")) == "/langgraph/a%2Fb/c"
    assert namespace_scope(()) == "/langgraph"
    assert namespace_path(["list", "ok"]) == "list/ok"


@pytest.mark.parametrize("namespace", [("\ud800",), ("ok", "a\udfffb")])
def test_a_label_that_is_not_unicode_text_is_a_validation_error_naming_it(namespace: tuple[str, ...]) -> None:
    from memworker.errors import ValidationError

    with pytest.raises(ValidationError, match=rf"namespace label {len(namespace) - 1} is not valid unicode text"):
        namespace_path(namespace)
    with pytest.raises(ValidationError, match="not valid unicode text"):
        namespace_scope(namespace)
    assert record_id(namespace, "k") == spec_id(namespace, "k")  # a get or delete still finds nothing
