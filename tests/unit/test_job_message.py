"""A job's message as the producer writes it: its ids (uuid4_texts, many from one random
read) and its bytes (build_message: exactly what dramatiq's Message.encode writes)."""

from __future__ import annotations

import json
import uuid
from collections import Counter

from memworker.keys import QueueKeys
import dramatiq
import pytest
from dramatiq.encoder import PickleEncoder

from memworker.queue.jobs import ENCODE_ACTOR, JOB_SCHEMA, build_message, embed_items, uuid4_texts
from memworker.queue.producer import enqueue_head, enqueue_step


def test_every_id_is_a_random_version_4_uuid_in_its_canonical_text() -> None:
    ids = uuid4_texts(4000)
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_the_bits_outside_version_and_variant_are_random() -> None:
    ids = uuid4_texts(4000)
    # the variant's nibble keeps its two random bits: 8, 9, a and b about equally
    variant = Counter(text[19] for text in ids)
    assert set(variant) == set("89ab") and min(variant.values()) > 800
    # each of the 30 random hex digits takes every value
    digits = [i for i in range(36) if i not in (8, 13, 14, 18, 19, 23)]
    for i in digits:
        assert len({text[i] for text in ids}) == 16, i


def test_the_queues_cached_head_is_the_head_of_an_enqueue_step() -> None:
    keys = QueueKeys("ns")
    step = enqueue_step(keys, "producer-1", "job", "msg", b"data")
    assert step.args[:7] == enqueue_head(keys, "producer-1")
    assert step.args[7:9] == ["msg", b"data"] and step.args[10] == "job"


def _message(data: bytes, job_id: str, redis_id: str, items: list, trace: dict | None) -> dramatiq.Message:
    """The Message the bytes must be, field for field (its timestamp taken from them)."""
    stamp = dramatiq.get_encoder().decode(data)["message_timestamp"]
    options = {"redis_message_id": redis_id, **({"trace": trace} if trace else {})}
    job = {"v": JOB_SCHEMA, "job": job_id, "producer": "p-1", "items": items}
    return dramatiq.Message(queue_name="default", actor_name=ENCODE_ACTOR, args=(job,), kwargs={},
                            options=options, message_id=job_id, message_timestamp=stamp)  # fmt: skip


@pytest.mark.parametrize("trace", [None, {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}])
def test_the_bytes_are_what_dramatiqs_message_encodes(trace: dict | None) -> None:
    items = embed_items(["caf\u00e9 \u2603 \"quoted\" \\ text", {"text": "two", "metadata": {"k": [1, 2.5, None]}}], 10)
    redis_id, data = build_message(ENCODE_ACTOR, "job-1", "p-1", items, 1 << 20, trace=trace, redis_id="msg-1")
    assert redis_id == "msg-1"
    want = _message(data, "job-1", "msg-1", items, trace).encode()
    # dramatiq's fields in its order, compact, its text as UTF-8 rather than escapes
    assert data == json.dumps(json.loads(want), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "caf\u00e9 \u2603".encode() in data
    assert dramatiq.Message.decode(data).args[0]["items"] == items
    ascii_items = embed_items(["plain \"quoted\" \\ text"], 10)
    _, plain = build_message(ENCODE_ACTOR, "job-3", "p-1", ascii_items, 1 << 20, trace=trace, redis_id="msg-3")
    assert plain == _message(plain, "job-3", "msg-3", ascii_items, trace).encode()  # byte for byte


def test_a_text_in_utf_8_takes_its_utf_8_bytes_in_the_job() -> None:
    """300,000 CJK characters (900 KB of UTF-8, within the 1 MiB content limit) fit a
    1 MiB job: as JSON escapes they took 1.8 MB and the job was refused."""
    items = embed_items(["\u4e2d" * 300_000], 10)
    _, data = build_message(ENCODE_ACTOR, "job-4", "p-1", items, 1 << 20, redis_id="msg-4")
    assert 900_000 < len(data) < 901_000
    assert dramatiq.Message.decode(data).args[0]["items"][0]["content"] == "\u4e2d" * 300_000


def test_another_global_encoder_encodes_the_message_itself() -> None:
    items = embed_items(["text"], 10)
    before = dramatiq.get_encoder()
    dramatiq.set_encoder(PickleEncoder())
    try:
        _, data = build_message(ENCODE_ACTOR, "job-2", "p-1", items, 1 << 20, redis_id="msg-2")
        assert data == _message(data, "job-2", "msg-2", items, None).encode()
        assert data[:1] == b"\x80"  # a pickle, not JSON
    finally:
        dramatiq.set_encoder(before)
