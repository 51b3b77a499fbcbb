"""A crew whose memory writes go through memworker, fully offline.

    .venv/bin/python examples/crew_offline.py

It starts the embedded Valkey (or uses VALKEY_URL), runs one memworker worker in
this process's threads (in production: `memworker worker` processes), and kicks off
a two-task crew with QueuedMemory. The embedder is memworker's bundled
all-MiniLM-L6-v2 (offline).

THE LLM IS A STAND-IN: memworker.crewai.testing.StandInLLM answers with fixed
rules, not a language model, so that this example runs without network or API
keys. Replace it with a real LLM (llm="gpt-4o-mini", MEMWORKER_LLM=...) for real use.
"""

from __future__ import annotations

import os

os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")  # no trace upload prompt/network
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model is loaded from disk
# The worker's EncodingFlow LLM (field inference, consolidation): the stand-in here.
os.environ.setdefault("MEMWORKER_MEMORY_FACTORY", "memworker.crewai.testing:standin_memory_config")

from crewai import Agent, Crew, Task  # noqa: E402

from memworker.crewai import LocalEmbedder, QueuedMemory, install  # noqa: E402
from memworker.crewai.testing import StandInLLM  # noqa: E402  # NOT a real LLM
from memworker.settings import Settings  # noqa: E402
from memworker.worker.process import running_worker  # noqa: E402


def main() -> None:
    install()  # "valkey://..." / "valkey" storage specs now work for any crewai Memory
    settings = Settings.from_env(namespace="example-crew")
    llm = StandInLLM()  # deterministic local stand-in, clearly not a model
    with running_worker(settings, threads=4):
        memory = QueuedMemory(
            storage="valkey",  # VALKEY_URL > REDIS_URL > embedded server
            namespace="example-crew",
            embedder=LocalEmbedder(),
            llm=llm,
            root_scope="/crew/example",
        )
        memory.remember(
            "Our biggest customer, Acme, renews in March.",
            scope="/customers", categories=["customers"], importance=0.8,
        )  # fmt: skip
        researcher = Agent(role="Researcher", goal="Find facts", backstory="Thorough.", llm=llm)
        writer = Agent(role="Writer", goal="Summarize", backstory="Concise.", llm=llm)
        crew = Crew(
            agents=[researcher, writer],
            tasks=[
                Task(description="List what we know about Acme.", expected_output="Facts.", agent=researcher),
                Task(description="Write a one-line summary.", expected_output="One line.", agent=writer),
            ],
            memory=memory,
        )
        result = crew.kickoff()
        print("crew output:", result.raw)
        print(memory.tree())
        for match in memory.recall("When does Acme renew?", depth="shallow", limit=3):
            print(f"{match.score:.2f}  {match.record.scope}  {match.record.content}")
        memory.reset_all()
        memory.close()


if __name__ == "__main__":
    main()
