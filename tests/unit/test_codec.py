"""The record codec without a server: what a decoded record is made of."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

from memworker.store.codec import WRITE_FIELDS
from memworker.store.codec import to_row as encode_record
from memworker.store.codec import to_rows as encode_records
from memworker.store.decode import RECORD_FIELDS, _constructor, decode_record, decode_rows
from memworker.store.embeddings import vector_bytes
from memworker.store.times import format_timestamp, parse_timestamp
from memworker.errors import ValidationError
from memworker.records import record_types


def row_of(record: Any) -> list[Any]:
    """The hash values of a record in RECORD_FIELDS order, as the read script returns
    them (the id comes from the key)."""
    fields = {k: (v.encode() if isinstance(v, str) else v) for k, v in encode_record(record).fields}
    assert "id" not in fields
    fields["id"] = record.id.encode()
    return [fields.get(name) for name in RECORD_FIELDS]


def sample(**over: Any) -> Any:
    cls = record_types()[0]
    values = dict(
        id="r1", content="hello", scope="/a/b", categories=["x", "y"], metadata={"k": [1, 2.5]},
        importance=0.25, created_at=datetime(2025, 5, 6, 7, 8, 9, 123456),
        last_accessed=datetime(2025, 5, 6, 7, 8, 9, 123456), embedding=[0.5, -0.25, 1.0],
        source="alice", private=True,
    )  # fmt: skip
    values.update(over)
    return cls(**values)


def test_decoded_record_is_what_model_construct_builds() -> None:
    cls = record_types()[0]
    record = sample()
    got = decode_record(row_of(record), cls, 3)
    want = cls.model_construct(**{name: getattr(record, name) for name in cls.model_fields})
    assert got == want == record
    assert got.model_fields_set == want.model_fields_set
    assert got.__pydantic_extra__ == want.__pydantic_extra__
    assert list(got.__dict__) == list(want.__dict__)
    got.categories.append("z")  # a fresh list each time, though decoding caches lists
    assert decode_record(row_of(record), cls, 3).categories == ["x", "y"]
    assert _constructor(cls).__name__ == "fast"


def test_decode_rows_is_decode_record_per_row() -> None:
    """The page decoder: missing rows stay None, float16 bytes are told from float32 by
    the dimension, and timestamps before 1970 and with odd forms parse exactly."""
    import numpy as np

    cls = record_types()[0]
    records = [
        sample(id="a"),
        sample(id="b", created_at=datetime(1969, 12, 31, 23, 59, 58, 1),
               last_accessed=datetime(1960, 1, 1, 0, 0, 0, 999999), metadata={}, categories=[]),
        sample(id="c", source=None, private=False),
    ]  # fmt: skip
    rows = [row_of(r) for r in records]
    rows[2][RECORD_FIELDS.index("embedding")] = None
    records[2] = records[2].model_copy(update={"embedding": None})
    rows.insert(1, [None] * len(RECORD_FIELDS))
    half = row_of(sample(id="d"))
    half[RECORD_FIELDS.index("embedding")] = np.array([0.5, -0.25, 1.0], dtype="<f2").tobytes()
    half[RECORD_FIELDS.index("created_at")] = b"1700000000.5"  # a short fraction still parses
    rows.append(half)
    got = decode_rows(rows, cls, 3)
    assert got == [decode_record(row, cls, 3) for row in rows]
    assert got[0] == records[0] and got[1] is None and got[2] == records[1] and got[3] == records[2]
    assert got[2].created_at == datetime(1969, 12, 31, 23, 59, 58, 1)
    assert got[2].last_accessed == datetime(1960, 1, 1, 0, 0, 0, 999999)
    assert got[4].embedding == [0.5, -0.25, 1.0]
    assert got[4].created_at == parse_timestamp("1700000000.5") == datetime(2023, 11, 14, 22, 13, 20, 500000)
    assert format_timestamp(got[2].created_at) == "-1.999999"


def test_last_accessed_is_stored_only_once_it_differs() -> None:
    cls = record_types()[0]
    same = sample()
    assert "last_accessed" not in dict(encode_record(same).fields)
    assert decode_record(row_of(same), cls, 3).last_accessed == same.created_at
    later = sample(last_accessed=datetime(2026, 1, 1))
    assert decode_record(row_of(later), cls, 3).last_accessed == datetime(2026, 1, 1)
    assert "v" not in WRITE_FIELDS and "private" not in WRITE_FIELDS


def test_private_comes_from_the_visibility_token() -> None:
    cls = record_types()[0]
    assert decode_record(row_of(sample(private=True)), cls, 3).private is True
    assert decode_record(row_of(sample(private=False)), cls, 3).private is False
    assert decode_record(row_of(sample(private=True, source=None)), cls, 3).private is True


class Other(BaseModel):
    """A model with a post-init hook: the documented model_construct path is kept."""

    id: str
    content: str
    scope: str
    categories: list[str]
    metadata: dict[str, Any]
    importance: float
    created_at: datetime
    last_accessed: datetime
    embedding: list[float] | None = None
    source: str | None = None
    private: bool = False
    seen: int = 0

    def model_post_init(self, context: Any) -> None:
        object.__setattr__(self, "seen", 1)


def test_other_models_fall_back_to_model_construct() -> None:
    record = sample()
    got = decode_record(row_of(record), Other, 3)
    assert _constructor(Other).__name__ == "slow"
    assert isinstance(got, Other) and got.seen == 1 and got.content == "hello"


@pytest.mark.parametrize(
    "values, message",
    [
        ([1e39, 1.0], "beyond the float32 range"),
        ([float("nan"), 1.0], "non-finite"),
        ([float("inf"), 1.0], "non-finite"),
        ([0.0, 0.0], "all zeros"),
        (["a", 1.0], "sequence of numbers"),
        ([[1.0], 2.0], "sequence of numbers"),
        ([], "non-empty"),
    ],
)
def test_bad_vectors_name_the_problem(values: list[Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        vector_bytes(values)


def test_vectors_with_huge_or_cancelling_values_are_checked_exactly() -> None:
    assert vector_bytes([3e38, 3e38])[1] == 2  # a float32 sum would overflow
    assert vector_bytes([1.0, -1.0])[1] == 2  # sums to zero, yet not all zeros
    assert vector_bytes([1e-45, 0.0])[1] == 2


def test_a_batch_checks_its_vectors_in_one_pass_and_names_the_first_bad_record() -> None:
    good = [sample(id=f"g{i}", embedding=[0.5, -0.25, 1.0]) for i in range(4)]
    cancelling = sample(id="c", embedding=[1.0, -1.0, 0.0])  # sums to zero, not all zeros
    assert [e.id for e in encode_records([*good, cancelling])] == ["g0", "g1", "g2", "g3", "c"]
    for bad, message in (([float("nan"), 1.0, 1.0], "non-finite"), ([float("nan")] * 3, "non-finite")):
        batch = [*good, sample(id="b", embedding=bad)]
        with pytest.raises(ValidationError, match=rf"records\[4\]\.embedding .*{message}"):
            encode_records(batch)
    # zeros are no embedding (stored without one), their dimension kept for the checks
    zeros = encode_records([*good, sample(id="z", embedding=[0.0, 0.0, 0.0])])[4]
    assert (zeros.dim, zeros.embedding, zeros.mode) == (3, b"", "2")
    # a later record's other error does not hide an earlier record's bad vector
    batch = [good[0], sample(id="n", embedding=[float("inf"), 1.0, 1.0]), sample(id="s", scope="")]
    with pytest.raises(ValidationError, match=r"records\[1\]\.embedding"):
        encode_records(batch)
    # and the other way round: the first bad record is the one named
    batch = [sample(id="s", scope=""), sample(id="n", embedding=[float("inf"), 1.0, 1.0])]
    with pytest.raises(ValidationError, match=r"records\[0\]\.scope"):
        encode_records(batch)


@pytest.mark.parametrize("size", [1, 5])
def test_rows_of_an_inference_batch_are_checked_like_lists(size: int) -> None:
    """The worker's vectors are rows of a float32 array: a job of one text (a scalar
    check) or of several (one pass) refuses NaN and infinity by index, stores zeros
    without an embedding, and keeps the bytes a list of the same floats gives."""
    import numpy as np

    def sample(**over: Any) -> dict[str, Any]:  # a dict, as the worker builds: the array stays one
        record = {"id": "r1", "content": "hello", "scope": "/a", "embedding": None}
        record.update(over)
        return record

    rows = np.array([[0.5, -0.25, 1.0]] * size, dtype=np.float32)
    got = encode_records([sample(id=f"v{i}", embedding=rows[i]) for i in range(size)])
    assert [e.embedding for e in got] == [encode_record(sample(embedding=[0.5, -0.25, 1.0])).embedding] * size
    assert type(sample(embedding=rows[0])["embedding"]) is np.ndarray
    assert {e.dim for e in got} == {3}
    for bad, message in ((np.nan, "non-finite"), (np.inf, "non-finite")):
        broken = rows.copy()
        broken[size - 1, 0] = bad
        with pytest.raises(ValidationError, match=rf"records\[{size - 1}\]\.embedding .*{message}"):
            encode_records([sample(id=f"v{i}", embedding=broken[i]) for i in range(size)])
    zeros = rows.copy()
    zeros[size - 1] = 0.0
    last = encode_records([sample(id=f"v{i}", embedding=zeros[i]) for i in range(size)])[-1]
    assert (last.dim, last.embedding) == (3, b"")
    cancelling = np.array([1.0, -1.0, 0.0], dtype=np.float32)  # sums to zero, not all zeros
    assert encode_records([sample(id="c", embedding=cancelling)])[0].embedding == cancelling.tobytes()
    big_endian = rows[0].astype(">f4")  # not the stored byte order: converted
    assert encode_records([sample(id="b", embedding=big_endian)])[0].embedding == rows[0].tobytes()
    column = np.asfortranarray(np.tile(rows[:1], (2, 1)))[0]  # a strided view
    assert encode_records([sample(id="s", embedding=column)])[0].embedding == rows[0].tobytes()


def test_rows_built_once_then_given_vectors_are_what_to_rows_builds() -> None:
    """The batched worker builds an encode job's rows at fetch, without vectors, and
    attaches the model's afterwards (with_vectors): the same rows as to_rows of the
    records with their vectors, and the same checks (finite, one dimension, ids
    unique; zeros stored without an embedding)."""
    import numpy as np

    from memworker.errors import DimensionMismatchError, JobPayloadError
    from memworker.queue.payload import encode_job_rows
    from memworker.store.codec import with_vectors

    stamp = datetime(2025, 5, 6, 7, 8, 9)
    items = [
        {"id": f"i{n}", "content": f"text {n}", "scope": "/a", "categories": ["x"],
         "metadata": {"k": n, "quote\"": "\\"}, "created_at": stamp, "source": "s",
         "private": bool(n % 2)}
        for n in range(3)
    ]  # fmt: skip
    vectors = np.array([[0.5, -0.25, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    expected = encode_records([{**item, "embedding": vectors[n]} for n, item in enumerate(items)])
    built = encode_job_rows(items)
    assert [(r.embedding, r.dim) for r in built] == [(b"", 0)] * 3  # no vector yet
    assert with_vectors(built, vectors) == expected
    assert (expected[1].dim, expected[1].embedding, expected[1].mode) == (3, b"", "2")

    bad = vectors.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValidationError, match=r"records\[2\]\.embedding .*non-finite"):
        with_vectors(encode_job_rows(items), bad)
    with pytest.raises(DimensionMismatchError):
        with_vectors(encode_job_rows(items[:2]), [vectors[0], np.ones(4, dtype=np.float32)])
    with pytest.raises(ValidationError, match="appears more than once"):
        with_vectors(encode_job_rows([items[0], items[0]]), vectors[:2])
    with pytest.raises(ValidationError, match="3 rows for 2 vectors"):
        with_vectors(encode_job_rows(items), vectors[:2])
    # a bad item fails the job at fetch, named as the per-message path names it
    with pytest.raises(JobPayloadError, match=r"items\[1\]\.scope"):
        encode_job_rows([items[0], {**items[1], "scope": ""}])
