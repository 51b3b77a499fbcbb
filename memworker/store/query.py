"""Search filters -> FT query text, and the same filter as a predicate. No I/O.

One :class:`SearchFilter` is rendered two ways that must agree:

- :meth:`SearchFilter.ft_query` for a search module: only the subset both
  valkey-search and RediSearch accept, ``(<tag filters>)=>[KNN k @embedding $vec AS dist]``
  or ``*=>[KNN ...]`` with no filter, run with ``PARAMS``, ``RETURN``, ``LIMIT``
  and ``DIALECT 2``;
- :meth:`SearchFilter.matches` for the exact path, over the same token fields.

Every user string is turned into a token (:func:`memworker.store.tokens.token`) before
it gets here, so no value can change the structure of the query.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memworker.errors import ValidationError, shown
from memworker.store.tokens import (
    PUBLIC_TOKEN,
    RANGE_PREFIX,
    float_range,
    metadata_token,
    range_cover,
    sortable_bits,
    token,
    visibility_token,
)
from memworker.store.validate import check_source, check_unicode, normalize_scope_prefix

__all__ = ["SearchFilter", "TOKEN_FIELDS", "MAX_LIMIT"]

#: Hash fields holding filter tokens, in the order the exact path reads them.
TOKEN_FIELDS: tuple[str, ...] = ("scope_anc", "cat_t", "meta_t", "src_t", "vis")
#: Largest ``limit`` a search accepts.
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class SearchFilter:
    """A conjunction of token filters; the empty filter matches everything.

    Attributes:
        scope: Normalized scope prefix (``/`` = everything).
        categories_any: Tokens of which a record needs at least one.
        metadata_all: Tokens a record needs every one of.
        source: Token the record's source must equal, or ``None``.
        visible: Tokens of which the record's ``vis`` must be one; ``None`` = no privacy filter.
        metadata_any: Groups of tokens; a record needs one token of every group (the
            range filters: each group covers one key's range, see
            :func:`~memworker.store.tokens.range_cover`).
        exclude: Normalized scope whose records (it and below) never match, or ``None``.
    """

    scope: str = "/"
    categories_any: tuple[str, ...] = ()
    metadata_all: tuple[str, ...] = ()
    source: str | None = None
    visible: tuple[str, ...] | None = None
    metadata_any: tuple[tuple[str, ...], ...] = ()
    exclude: str | None = None
    _scope_token: str = field(init=False, repr=False, compare=False)
    _exclude_token: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_scope_token", token("s", self.scope))
        object.__setattr__(self, "_exclude_token", None if self.exclude is None else token("s", self.exclude))

    @property
    def exclude_token(self) -> str | None:
        """The scope token of :attr:`exclude` (records below it carry it), or ``None``."""
        return self._exclude_token

    @classmethod
    def build(
        cls,
        *,
        scope_prefix: str | None = None,
        categories: Sequence[str] | None = None,
        metadata_filter: Mapping[str, Any] | None = None,
        source: str | None = None,
        include_private: bool = True,
        viewer: str | None = None,
        metadata_ranges: Mapping[str, Any] | None = None,
        exclude_scope: str | None = None,
    ) -> SearchFilter:
        """Validate user filter values and turn them into tokens.

        Args:
            scope_prefix: Records in this scope or below it (path components, not characters:
                ``/a`` matches ``/a`` and ``/a/b``, not ``/ab``).
            categories: Records carrying at least one of these categories.
            metadata_filter: Records whose metadata has every one of these pairs.
            source: Records whose source equals this.
            include_private: False hides private records except those of ``viewer``.
            viewer: The source asking; its own private records stay visible.
            metadata_ranges: Key -> ``(low, low_inclusive, high, high_inclusive)``
                (``None`` bounds: open): records whose number under that key is in
                range. Only keys starting with ``=`` have range tokens.
            exclude_scope: Records in this scope or below it never match (``/`` is
                refused: it would exclude everything).

        Raises:
            ValidationError: Naming the bad field.
        """
        scope = normalize_scope_prefix(scope_prefix)
        exclude: str | None = None
        if exclude_scope is not None:
            exclude = normalize_scope_prefix(exclude_scope, field="exclude_scope")
            if exclude == "/":
                raise ValidationError("exclude_scope must be a scope below the root, got '/'")
            if scope != "/" and not exclude.startswith(scope + "/") and not within_scope(scope, exclude):
                exclude = None  # beside the searched scope: nothing it could exclude is searched
        cats: list[str] = []
        if categories:
            if isinstance(categories, (str, bytes, Mapping)) or not isinstance(categories, Iterable):
                raise ValidationError(
                    f"categories must be a list of strings, got {type(categories).__name__}"
                )
            for i, cat in enumerate(categories):
                if not isinstance(cat, str):
                    raise ValidationError(f"categories[{i}] must be a string")
                cats.append(token("c", check_unicode(cat, f"categories[{i}]")))
        metas: list[str] = []
        if metadata_filter:
            if not isinstance(metadata_filter, Mapping):
                raise ValidationError("metadata_filter must be a mapping")
            for key, value in metadata_filter.items():
                if not isinstance(key, str):
                    raise ValidationError("metadata_filter keys must be strings")
                try:
                    metas.append(metadata_token(key, value))
                except (TypeError, ValueError) as exc:
                    raise ValidationError(
                        f"metadata_filter[{shown(key)}] is not JSON-serializable: {exc}"
                    ) from None
                check_unicode(key, f"metadata_filter key {shown(key)}")
                if not (value is None or type(value) in (int, float, bool)):
                    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
                    check_unicode(text, f"metadata_filter[{shown(key)}]")
        check_source(source, "source")
        check_source(viewer, "viewer")
        if type(include_private) is not bool and not isinstance(include_private, np.bool_):
            # ``bool("false")`` is True: a flag read from text must not show private records
            raise ValidationError(
                f"include_private must be a boolean (True or False), got {type(include_private).__name__}"
            )
        visible: tuple[str, ...] | None = None
        if not include_private:
            visible = (PUBLIC_TOKEN,) if viewer is None else (PUBLIC_TOKEN, visibility_token(viewer))
        if metadata_ranges is not None and not isinstance(metadata_ranges, Mapping):
            raise ValidationError(
                f"metadata_ranges must be a mapping, got {type(metadata_ranges).__name__}"
            )
        groups: list[tuple[str, ...]] = []
        for key, bounds in (metadata_ranges or {}).items():
            if isinstance(key, str):
                check_unicode(key, f"metadata_ranges key {shown(key)}")
            groups.append(_range_group(key, bounds))
        return cls(
            scope=scope,
            categories_any=tuple(dict.fromkeys(cats)),
            metadata_all=tuple(dict.fromkeys(metas)),
            metadata_any=tuple(groups),
            source=token("u", source) if source is not None else None,
            visible=visible,
            exclude=exclude,
        )

    # ------------------------------------------------------------------ module path
    def clauses(self) -> list[str]:
        """The tag clauses, ANDed; empty for the identity filter."""
        out: list[str] = []
        if self.scope != "/":
            out.append(f"@scope_anc:{{{self._scope_token}}}")
        if self.categories_any:
            out.append("@cat_t:{" + "|".join(self.categories_any) + "}")
        for tok in self.metadata_all:
            out.append(f"@meta_t:{{{tok}}}")
        for group in self.metadata_any:
            out.append("@meta_t:{" + "|".join(group) + "}")
        if self.source is not None:
            out.append(f"@src_t:{{{self.source}}}")
        if self.visible is not None:
            out.append("@vis:{" + "|".join(self.visible) + "}")
        if self._exclude_token is not None:
            out.append(f"-@scope_anc:{{{self._exclude_token}}}")
        return out

    def ft_query(self, k: int) -> str:
        """The FT.SEARCH query text for the top ``k`` neighbours under this filter."""
        clauses = self.clauses()
        head = "(" + " ".join(clauses) + ")" if clauses else "*"
        return f"{head}=>[KNN {int(k)} @embedding $vec AS dist]"

    # ------------------------------------------------------------------ exact path
    @property
    def needs_tokens(self) -> bool:
        """True when the exact path must read token fields (more than a scope filter)."""
        return bool(
            self.categories_any or self.metadata_all or self.metadata_any
            or self.source is not None or self.visible is not None or self.exclude is not None
        )  # fmt: skip

    def matches(self, tokens: Sequence[Any], *, scope: bool = False) -> bool:
        """Whether a record's token fields (:data:`TOKEN_FIELDS` order) pass the filter.

        The scope part is checked only with ``scope=True``: the exact path takes its
        candidates from the scope's sorted set; the re-check of fetched records
        (:meth:`~memworker.store.plans.read.ReadPlans._p_fetch` with ``passing``) needs it.
        """
        scope_anc, cat_t, meta_t, src_t, vis = (_split(v) for v in tokens)
        if scope and self.scope != "/" and self._scope_token not in scope_anc:
            return False
        if self._exclude_token is not None and self._exclude_token in scope_anc:
            return False
        if self.categories_any and not cat_t.intersection(self.categories_any):
            return False
        if self.metadata_all and not meta_t.issuperset(self.metadata_all):
            return False
        if any(meta_t.isdisjoint(group) for group in self.metadata_any):
            return False
        if self.source is not None and self.source not in src_t:
            return False
        if self.visible is not None and not vis.intersection(self.visible):
            return False
        return True


#: A token no record carries: the group of an empty range.
_NOTHING = token("r", "empty")


def _range_group(key: Any, bounds: Any) -> tuple[str, ...]:
    """The tokens covering one key's range (:meth:`SearchFilter.build`)."""
    if not isinstance(key, str) or not key.startswith(RANGE_PREFIX):
        raise ValidationError(
            f"metadata_ranges keys must be strings starting with {RANGE_PREFIX!r}, got "
            + (shown(key) if isinstance(key, str) else type(key).__name__)
        )
    try:
        low, low_in, high, high_in = bounds
    except (TypeError, ValueError):
        raise ValidationError(
            f"metadata_ranges[{shown(key)}] must be (low, low_inclusive, high, high_inclusive)"
        ) from None
    edges = []
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, int) and not isinstance(value, bool) and not float_range(value):
            raise ValidationError(
                f"metadata_ranges[{shown(key)}] {name} is beyond the float64 range (about 1.8e308)"
            )
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
        ):
            raise ValidationError(f"metadata_ranges[{shown(key)}] {name} must be a number or None")
        edges.append(value)
    lo = 0 if low is None else sortable_bits(low) + (0 if low_in else 1)
    hi = (1 << 64) - 1 if high is None else sortable_bits(high) - (0 if high_in else 1)
    group = tuple(range_cover(key, lo, hi)) if lo <= hi else ()
    return group or (_NOTHING,)


def within_scope(scope: str, ancestor: str) -> bool:
    """Whether the normalized ``scope`` is ``ancestor`` or below it."""
    return ancestor == "/" or scope == ancestor or scope.startswith(ancestor + "/")


def _split(raw: Any) -> set[str]:
    if raw is None:
        return set()
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return set(text.split(",")) if text else set()
