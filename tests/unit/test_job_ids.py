"""uuid4_texts: the ids of a job's message, job and records, many from one random read."""

from __future__ import annotations

import uuid
from collections import Counter

from memworker.keys import QueueKeys
from memworker.queue.jobs import uuid4_texts
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
