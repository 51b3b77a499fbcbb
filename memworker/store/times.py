"""Timestamps as the store writes them: epoch seconds with exactly six decimals
(exact, and a NUMERIC value), and the datetimes users give. No I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from memworker.errors import ValidationError

__all__ = ["format_timestamp", "parse_stored_timestamp", "parse_timestamp", "to_utc_naive"]


def to_utc_naive(value: object, field: str) -> datetime:
    """A datetime or ISO text as a naive UTC datetime (``field`` names it in errors).

    Raises:
        ValidationError: Neither a datetime nor ISO datetime text, or out of range in UTC.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{field} is not an ISO datetime") from None
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is not None:
        try:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:  # e.g. year 1 at +05:00: before datetime.min in UTC
            raise ValidationError(f"{field} is out of range in UTC (years 1 to 9999)") from None
    return value


_EPOCH = datetime(1970, 1, 1)


def format_timestamp(value: datetime) -> str:
    """Naive UTC datetime -> ``"<seconds>.<micros>"``: exact, and a NUMERIC value."""
    delta = value - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    sign = "-" if micros < 0 else ""
    seconds, rest = divmod(abs(micros), 1_000_000)
    return f"{sign}{seconds}.{rest:06d}"


def parse_timestamp(raw: bytes | str | float) -> datetime:
    """Inverse of :func:`format_timestamp` (also accepts a float sorted-set score)."""
    if isinstance(raw, float):
        return _EPOCH + timedelta(microseconds=round(raw * 1_000_000))
    text = raw.decode() if isinstance(raw, bytes) else raw
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    micros = int(whole) * 1_000_000 + int((frac + "000000")[:6])
    return _EPOCH + timedelta(microseconds=-micros if negative else micros)


def parse_stored_timestamp(raw: bytes | str) -> datetime:
    """:func:`parse_timestamp` of a stored ``"<seconds>.<6 digits>"`` value, with the
    common non-negative form parsed as one integer of microseconds."""
    if isinstance(raw, bytes) and raw[-7:-6] == b"." and raw[:1] != b"-":
        return _EPOCH + timedelta(microseconds=int(raw[:-7] + raw[-6:]))
    return parse_timestamp(raw)
