"""The worker's module layering (issue 12): no import cycle among memworker's modules
(module-level imports), each worker-side module importable alone in a fresh
interpreter, and none of them importing the crewai library."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The worker side, leaves first.
WORKER_MODULES = [
    "memworker.worker.priority",
    "memworker.crewai.config",
    "memworker.worker.runtime",
    "memworker.worker.logs",
    "memworker.worker.dedup",
    "memworker.worker._dramatiq_compat",
    "memworker.crewai.locks",
    "memworker.crewai.flow",
    "memworker.worker.middleware",
    "memworker.worker.broker",
    "memworker.worker.actors",
    "memworker.worker.process",
    "memworker.worker",
    "memworker.crewai",
]


def _modules() -> dict[str, pathlib.Path]:
    out: dict[str, pathlib.Path] = {}
    for path in ROOT.joinpath("memworker").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _top_level_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """memworker modules a module imports when it is imported (not in functions, classes
    or ``if TYPE_CHECKING:``), with the packages each import runs first."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
                found.update(f"{sub.module}.{a.name}" for a in sub.names)
    out: set[str] = set()
    for name in found:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out & modules


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        parts = name.split(".")
        own_packages = {".".join(parts[:i]) for i in range(1, len(parts))}
        graph[name] = _top_level_imports(path, set(modules)) - own_packages - {name}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_worker_modules_import_alone_without_crewai() -> None:
    """Each worker-side module imports alone in a fresh interpreter (a cycle broken by
    import order would fail here), and none imports the crewai library."""
    code = (
        "import importlib, sys; "
        "importlib.import_module(sys.argv[1]); "
        "assert 'crewai' not in sys.modules, 'imports crewai'"
    )
    failed = {}
    for module in WORKER_MODULES:
        result = subprocess.run(
            [sys.executable, "-c", code, module],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode:
            failed[module] = result.stderr.strip().splitlines()[-1:]
    assert not failed, failed


@pytest.mark.parametrize("name", ["QueuedMemory", "install", "LocalEmbedder", "JobFailedError"])
def test_crewai_package_names_resolve_lazily(name: str) -> None:
    pytest.importorskip("crewai")
    import memworker.crewai

    assert getattr(memworker.crewai, name).__name__ == name
