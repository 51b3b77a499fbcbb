"""A deterministic, offline LLM STAND-IN for tests, examples and benchmarks.

NOT A LANGUAGE MODEL. :class:`StandInLLM` answers CrewAI's memory prompts with
fixed rules (no network, no weights) so that a crew, the EncodingFlow and the
RecallFlow run offline and reproducibly:

- field inference (``analyze_for_save``): scope ``/<first word of the content>``,
  categories ``[<first word>]``, importance 0.6, capitalized words as entities;
- consolidation (``analyze_for_consolidation``): an existing record whose first
  four words equal the new content's is *updated* to the new content and nothing
  new is inserted (a newer fact supersedes an older one); otherwise keep all and
  insert;
- memory extraction: one memory per sentence (at most 3);
- query analysis: the query itself as the only recall query;
- an agent's task: ``Final Answer:`` followed by a fixed sentence naming the task.

:class:`ScriptedConsolidationLLM` is the same stand-in with a scripted consolidation
decision (update or delete the first candidate shown) that records what each
consolidation call was shown: for tests of what the EncodingFlow may see and touch.

Use a real LLM (``MEMWORKER_LLM``, ``QueuedMemory(llm=...)``) for anything real.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

from crewai.llms.base_llm import BaseLLM

__all__ = [
    "SCRIPT_LOG_ENV",
    "SCRIPT_PLAN_ENV",
    "ScriptedConsolidationLLM",
    "StandInLLM",
    "scripted_memory_config",
    "standin_memory_config",
]

_ID_RE = re.compile(r"- id=(\S+) \| scope=.*?\n\s+content: (.*)")
_SHOWN_ID_RE = re.compile(r"^- id=(\S+) \| ", re.MULTILINE)
_CONSOLIDATION = "New content to consider storing:"
#: Plan of :func:`scripted_memory_config`'s LLM (``update``, ``delete`` or ``auto``).
SCRIPT_PLAN_ENV = "MEMWORKER_SCRIPTED_PLAN"
#: File to which :func:`scripted_memory_config`'s LLM appends what each call was shown.
SCRIPT_LOG_ENV = "MEMWORKER_SCRIPTED_LOG"


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", text.lower())


def _text_of(messages: Any) -> tuple[str, str]:
    if isinstance(messages, str):
        return "", messages
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    user = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    return str(system), user


class StandInLLM(BaseLLM):
    """Deterministic LLM stand-in (see the module docstring). Counts its calls by kind."""

    model: str = "memworker-standin"
    llm_type: str = "memworker-standin"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("model", "memworker-standin")
        super().__init__(**kwargs)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        object.__setattr__(self, "_counts_lock", threading.Lock())
        object.__setattr__(self, "calls", {})

    def _count(self, kind: str) -> None:
        with self._counts_lock:  # type: ignore[attr-defined]
            self.calls[kind] = self.calls.get(kind, 0) + 1  # type: ignore[attr-defined]

    def supports_function_calling(self) -> bool:
        return False

    def supports_stop_words(self) -> bool:
        return False

    def get_context_window_size(self) -> int:
        return 8192

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
             response_model: Any = None) -> Any:  # fmt: skip
        system, user = _text_of(messages)
        if user.startswith("Content to store:"):
            self._count("save")
            content = user.split("\n", 1)[1].split("\n\nExisting scopes:", 1)[0].strip()
            words = _words(content) or ["misc"]
            return json.dumps(
                {
                    "suggested_scope": f"/{words[0]}",
                    "categories": [words[0]],
                    "importance": 0.6,
                    "extracted_metadata": {
                        "entities": sorted(set(re.findall(r"\b[A-Z][a-z]+\b", content)))[:5],
                        "dates": [],
                        "topics": words[:2],
                    },
                }
            )
        if user.startswith("New content to consider storing:"):
            self._count("consolidation")
            new = user.split("\n", 1)[1].split("\n\nExisting similar memories:", 1)[0].strip()
            actions, insert = [], True
            for record_id, content in _ID_RE.findall(user):
                if insert and _words(content)[:4] == _words(new)[:4]:
                    actions.append({"action": "update", "record_id": record_id,
                                    "new_content": new, "reason": "superseded"})  # fmt: skip
                    insert = False
            return json.dumps({"actions": actions, "insert_new": insert, "insert_reason": ""})
        if user.startswith("Content:\n") and "Extract memory statements" in user:
            self._count("extract")
            content = user[len("Content:\n") :].split("\n\nExtract memory statements", 1)[0]
            parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", content) if len(p.strip()) > 3]
            return json.dumps({"memories": parts[:3] or [content.strip()[:200]]})
        if user.startswith("Query: "):
            self._count("query")
            query = user[len("Query: ") :].split("\n\nAvailable scopes:", 1)[0]
            return json.dumps({"keywords": _words(query)[:3], "suggested_scopes": [],
                               "complexity": "simple", "recall_queries": [query],
                               "time_filter": None})  # fmt: skip
        self._count("agent")
        task = " ".join(_words(user)[:12])
        return (
            "Thought: I now can give a great answer\n"
            f"Final Answer: Stand-in answer for the task about: {task}."
        )


class ScriptedConsolidationLLM(StandInLLM):
    """:class:`StandInLLM` whose consolidation decision is scripted (tests only).

    Every consolidation call (CrewAI's ``analyze_for_consolidation``) is recorded in
    :attr:`shown` as ``{"new": <new content>, "ids": [<ids of the records shown>],
    "prompt": <the user message>}`` (and appended as one JSON line to ``log``, when
    set), then answered by ``plan`` applied to the FIRST record shown:

    - ``update``: update it to the new content, insert nothing;
    - ``delete``: delete it, insert the new content;
    - ``auto``: ``delete`` when the new content contains ``DELETE``, else ``update``.

    ``target``, when set, is the record id the action names instead of the first
    shown (an LLM that hallucinates an id, or was told one by an injected text).

    Every other prompt is answered as :class:`StandInLLM` answers it.
    """

    plan: str = "update"
    log: str | None = None
    target: str | None = None

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        if self.plan not in ("update", "delete", "auto"):
            raise ValueError(f"plan must be 'update', 'delete' or 'auto', got {self.plan!r}")
        object.__setattr__(self, "shown", [])

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
             response_model: Any = None) -> Any:  # fmt: skip
        _, user = _text_of(messages)
        if not user.startswith(_CONSOLIDATION):
            return super().call(messages, tools, callbacks, available_functions, from_task,
                                from_agent, response_model)  # fmt: skip
        self._count("consolidation")
        new = user.split("\n", 1)[1].split("\n\nExisting similar memories:", 1)[0].strip()
        ids = _SHOWN_ID_RE.findall(user)
        entry = {"new": new, "ids": ids, "prompt": user}
        with self._counts_lock:  # type: ignore[attr-defined]
            self.shown.append(entry)  # type: ignore[attr-defined]
            if self.log:
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
        plan = self.plan
        if plan == "auto":
            plan = "delete" if "DELETE" in new else "update"
        if not ids:
            return json.dumps({"actions": [], "insert_new": True, "insert_reason": ""})
        target = self.target or ids[0]
        if plan == "delete":
            action = {"action": "delete", "record_id": target, "reason": "scripted"}
            return json.dumps({"actions": [action], "insert_new": True, "insert_reason": ""})
        action = {"action": "update", "record_id": target, "new_content": new, "reason": "scripted"}
        return json.dumps({"actions": [action], "insert_new": False, "insert_reason": ""})


def scripted_memory_config() -> dict[str, Any]:
    """``MEMWORKER_MEMORY_FACTORY=memworker.crewai.testing:scripted_memory_config``: a
    :class:`ScriptedConsolidationLLM` with the plan ``$MEMWORKER_SCRIPTED_PLAN``
    (default ``update``) logging to ``$MEMWORKER_SCRIPTED_LOG`` (tests only)."""
    plan = os.environ.get(SCRIPT_PLAN_ENV) or "update"
    return {"llm": ScriptedConsolidationLLM(plan=plan, log=os.environ.get(SCRIPT_LOG_ENV) or None)}


def standin_memory_config() -> dict[str, Any]:
    """``MEMWORKER_MEMORY_FACTORY=memworker.crewai.testing:standin_memory_config``:
    the stand-in LLM and the default embedder (tests and the offline example only)."""
    return {"llm": StandInLLM()}
