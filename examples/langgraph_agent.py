"""A LangGraph agent whose long-term memory writes go through memworker, fully offline.

    .venv/bin/python examples/langgraph_agent.py

Needs the ``langgraph`` package (``StateGraph``) besides memworker's ``langgraph``
extra. It starts the embedded Valkey (or uses VALKEY_URL), runs one memworker worker
in this process's threads (in production: `memworker worker` processes), and compiles
a small StateGraph with ``store=QueuedStore(...)``. Several users talk to the graph
at once, one thread each: a statement is remembered (``store.put``: enqueued, the
call returns at once; the worker embeds it with the bundled all-MiniLM-L6-v2 and
commits it), a question recalls (``store.search``: the store first waits for its own
pending puts, so a user's last statement is already searchable).

THERE IS NO LLM: the graph's nodes route on a question mark and answer with the
memories they recall verbatim, so that this example runs without network or API
keys. Put a model call in ``respond`` (and, e.g., one that extracts the facts worth
keeping in ``remember``) for real use.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TypedDict

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model is loaded from disk

from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.runtime import Runtime  # noqa: E402

from memworker.langgraph import QueuedStore  # noqa: E402
from memworker.settings import Settings  # noqa: E402
from memworker.worker.process import running_worker  # noqa: E402

#: What each user tells the agent, then asks it (one thread per user).
CONVERSATIONS = {
    "alice": (
        ["I am allergic to peanuts.", "My daughter's name is Maya.", "I moved to Lisbon last spring."],
        "What food should you avoid suggesting to me?",
    ),
    "bob": (
        ["I prefer short answers without emojis.", "Our team deploys on Thursdays.", "I play the cello."],
        "When does my team ship releases?",
    ),
    "chen": (
        ["My cat is called Biscuit.", "I am training for a marathon in October.", "I drink tea, never coffee."],
        "Which race am I preparing for?",
    ),
}


class Context(TypedDict):
    user_id: str


class State(TypedDict, total=False):
    message: str
    recalled: list[str]
    reply: str


def memories(runtime: Runtime[Context]) -> tuple[str, ...]:
    """The user's namespace in the store."""
    return ("users", runtime.context["user_id"], "memories")


def route(state: State) -> str:
    return "recall" if state["message"].rstrip().endswith("?") else "remember"


def remember(state: State, runtime: Runtime[Context]) -> State:
    """Write-behind: the put is enqueued and returns; a worker embeds and commits it."""
    assert runtime.store is not None
    key = hashlib.sha256(state["message"].encode()).hexdigest()[:16]
    runtime.store.put(memories(runtime), key, {"text": state["message"]})
    return {"recalled": []}


def recall(state: State, runtime: Runtime[Context]) -> State:
    """A semantic search of the user's memories (after this store's pending puts)."""
    assert runtime.store is not None
    hits = runtime.store.search(memories(runtime), query=state["message"], limit=2)
    return {"recalled": [hit.value["text"] for hit in hits]}


def respond(state: State) -> State:
    """A stand-in for the model's answer: the recalled memories, verbatim."""
    if not state.get("recalled"):
        return {"reply": "Noted."}
    return {"reply": "From memory: " + " | ".join(state["recalled"])}


def build_graph(store: QueuedStore):  # -> CompiledStateGraph
    """route -> remember | recall -> respond, compiled with the memworker store: the nodes
    reach it as ``runtime.store``."""
    graph = StateGraph(State, context_schema=Context)
    graph.add_node("remember", remember)
    graph.add_node("recall", recall)
    graph.add_node("respond", respond)
    graph.add_conditional_edges(START, route, ["remember", "recall"])
    graph.add_edge("remember", "respond")
    graph.add_edge("recall", "respond")
    graph.add_edge("respond", END)
    return graph.compile(store=store)


def main() -> None:
    settings = Settings.from_env(namespace="example-langgraph")  # VALKEY_URL > REDIS_URL > embedded
    with running_worker(settings, threads=2):
        # Without index["embed"], the worker embeds the "text" field with its model (the
        # bundled all-MiniLM-L6-v2, 384 dims) and the store embeds queries with the same.
        with QueuedStore(settings, index={"dims": 384, "fields": ["text"]}) as store:
            agent = build_graph(store)
            answers: dict[str, str] = {}

            def session(user: str) -> None:
                statements, question = CONVERSATIONS[user]
                for message in statements:
                    agent.invoke({"message": message}, context={"user_id": user})
                out = agent.invoke({"message": question}, context={"user_id": user})
                answers[user] = f"{user}: {question}\n  -> {out['reply']}"

            threads = [threading.Thread(target=session, args=(user,)) for user in CONVERSATIONS]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for user in CONVERSATIONS:
                print(answers[user])
            print("namespaces:", store.list_namespaces(prefix=("users",)))
            store.store.reset()  # the example's own namespace: leave nothing behind


if __name__ == "__main__":
    main()
