"""Documentation truth, second pass: claims tests/unit/test_docs_truth.py does not parse.

Links and file paths the docs point a reader to, the README's package tree and
docs/architecture.md's module table, the error classes the docs name and their
hierarchy, every Valkey key name the docs show, limits and CLI defaults stated in
prose, span names, extras and the Python version. Every check reads the number or
name from the doc and compares it with the code. No server is needed.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import subprocess
import tokenize
from functools import cache
from pathlib import Path

import pytest

from test_docs_truth import PKG, ROOT, _existing, line_of, rel, text_of  # the same corpus helpers

MD_FILES = _existing(
    [
        ROOT / "README.md",
        ROOT / "RELIABILITY.md",
        ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "deploy").glob("**/README.md")),
        *sorted((ROOT / "examples").glob("*.md")),
    ]
)


@cache
def repo_files() -> tuple[str, ...]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return tuple(out.stdout.split())


def _doc(name: str) -> str:
    return text_of(ROOT / name)


def _find(doc: str, pattern: str) -> re.Match[str]:
    m = re.search(pattern, re.sub(r"\s+", " ", _doc(doc)))
    assert m, f"{doc}: the sentence matching {pattern!r} changed: update this test with it"
    return m


def _int(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


# ------------------------------------------------------------------ links and paths


def test_relative_markdown_links_resolve():
    """Every ``[text](path)`` and ``![img](path)`` of a doc points at a file or folder."""
    wrong, checked = [], 0
    for path in MD_FILES:
        text = text_of(path)
        for m in re.finditer(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            checked += 1
            if not (path.parent / target).exists():
                wrong.append(f"{rel(path)}:{line_of(text, m.start())}: {target}")
    assert checked >= 20
    assert not wrong, wrong


#: Paths the docs name that are not files of this repository, with why.
_EXTERNAL_PATHS = {
    "MEMWORKER_HOME/valkey.json",  # made at run time under the home
    "myapp/memory.py",  # the user's own module in an example
    "tests/memory/test_unified_memory.py",  # CrewAI's test suite
    "test_memory_root_scope.py",  # CrewAI's test suite
    "nodes.conf",  # written by each cluster node
}


def test_backticked_file_paths_exist_in_the_repository():
    """``memworker/metrics.py``, ``lua/store.lua``, ``test_crash.py``,
    ``benchmarks/crewai_bench.py``: a file a doc names is a file of the repository
    (a bare name: some file with that name; a path: a file ending with it)."""
    files = repo_files()
    wrong, checked = [], 0
    for path in MD_FILES:
        text = text_of(path)
        for m in re.finditer(r"`([\w./-]+\.(?:py|json|ya?ml|md|lua|toml|png|service|sh|conf))`", text):
            name = m.group(1)
            if name in _EXTERNAL_PATHS:
                continue
            checked += 1
            if name.startswith("../"):
                ok = (path.parent / name).exists()
            else:
                ok = any(f == name or f.endswith("/" + name) for f in files)
            if not ok:
                wrong.append(f"{rel(path)}:{line_of(text, m.start())}: {name}")
    assert checked >= 50
    assert not wrong, wrong


def _readme_tree() -> list[tuple[str, str]]:
    """``(top folder, entry)`` of the README's ``memworker/ ... tests/ ... benchmarks/`` tree."""
    readme = _doc("README.md")
    block = re.search(r"```\n(memworker/\n.*?)```", readme, re.S)
    assert block, "the README's package tree was not found"
    entries = []
    for line in block.group(1).splitlines():
        if not line.startswith(" "):
            top = line.split()[0]
            entries.append(("", top))
            continue
        # entries come before the description: `errors.py  settings.py ...  errors, ...`
        for word in line.split():
            if re.fullmatch(r"[\w]+\.py|[\w]+/", word):
                entries.append(("memworker/", word))
            elif not word.startswith("("):
                # `lua/        server-side scripts        cli.py  demo.py  testing.py`
                continue
    return entries


def test_readme_package_tree_names_existing_files_and_every_subpackage():
    entries = _readme_tree()
    assert len(entries) >= 15
    missing = [top + e for top, e in entries if not (ROOT / (top + e)).exists()]
    assert not missing, f"README tree names what does not exist: {missing}"
    listed = {e for top, e in entries if top == "memworker/"}
    subpackages = sorted(p.name + "/" for p in PKG.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    unlisted = [d for d in subpackages if d not in listed]
    assert not unlisted, f"memworker/ folders missing from the README's tree: {unlisted}"


def _architecture_table() -> list[str]:
    text = _doc("docs/architecture.md")
    section = text.split("## Packages and what each owns", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names += re.findall(r"`([\w/]+(?:\.py)?/?)`", first)
    return names


def test_architecture_table_names_existing_modules_and_covers_every_module():
    """docs/architecture.md: "a module imports only modules above it in this list": the
    list names modules that exist and leaves none of memworker's out."""
    names = _architecture_table()
    assert len(names) >= 15
    missing = [n for n in names if not (PKG / n).exists()]
    assert not missing, missing
    top = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in PKG.iterdir()
        if not p.name.startswith(("_", ".")) and (p.suffix == ".py" or (p.is_dir() and p.name != "lua"))
    )
    uncovered = [m for m in top if m not in names]
    assert not uncovered, f"memworker modules absent from docs/architecture.md's ordered list: {uncovered}"


def test_architecture_lua_folder_holds_the_scripts_it_names():
    """"`lua/` holds the four server-side scripts (`store.lua`, `read.lua`, `lock.lua`,
    `queue.lua` ...)"."""
    m = _find("docs/architecture.md", r"`lua/` holds the (\w+) server-side scripts \(([^)]*)\)")
    words = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    named = set(re.findall(r"`(\w+\.lua)`", m.group(2)))
    actual = {p.name for p in (PKG / "lua").glob("*.lua")}
    assert named == actual
    assert words[m.group(1)] == len(actual)


def _sloc(path: Path) -> int:
    """Lines holding code: no blank line, comment or docstring."""
    source = text_of(path)
    docs: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            docs.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docs)
    return len(lines)


def test_architecture_module_size_claim():
    """docs/architecture.md: "Most modules are under ~400 lines of code (...). The
    exceptions: `langgraph.py` (..., about 1,030 ...), ...". Code lines only (no
    docstring, comment or blank line); "~400" read as up to 500, "about N" as N +- 25 %."""
    m = _find("docs/architecture.md", r"Most modules are under ~(\d+) lines of code[^.]*\.\s+The exceptions:(.*?)\)\.(?: |$)")
    limit = int(m.group(1))
    exceptions = {
        name: int(about.replace(",", ""))
        for name, about in re.findall(r"`([\w/]+\.py)` \([^)]*?about ([\d,]+)", m.group(2), re.S)
    }
    assert "langgraph.py" in exceptions and "crewai/_memory.py" in exceptions, m.group(2)
    over = {
        str(p.relative_to(PKG)): _sloc(p)
        for p in PKG.rglob("*.py")
        if str(p.relative_to(PKG)) not in exceptions and _sloc(p) > limit * 1.25
    }
    assert not over, f"modules far over ~{limit} code lines and not named as exceptions: {over}"
    for name, about in exceptions.items():
        assert about * 0.75 <= _sloc(PKG / name) <= about * 1.25, (name, _sloc(PKG / name), about)


# ------------------------------------------------------------------------- errors

#: Names the docs write like errors that are not memworker's.
_FOREIGN_ERRORS = {"RuntimeError", "ValueError", "RecursionError", "ClosingError", "EmbeddingDimensionMismatchError"}


@cache
def memworker_errors() -> dict[str, type]:
    import memworker.errors as errors
    import memworker.layout as layout

    found = {n: getattr(errors, n) for n in errors.__all__ if inspect.isclass(getattr(errors, n))}
    found.update({n: o for n, o in vars(layout).items() if inspect.isclass(o) and issubclass(o, Exception)})
    return found


def test_documented_error_classes_are_memworker_errors():
    """README: "Its errors derive from `memworker.MemworkerError` (an `Exception`, never a
    `RuntimeError`)": every error class a doc names exists and is one."""
    import memworker

    errors = memworker_errors()
    wrong, checked = [], 0
    for path in MD_FILES:
        text = text_of(path)
        for m in re.finditer(r"`(?:memworker\.)?([A-Z]\w*(?:Error|Timeout|Missing))`", text):
            name = m.group(1)
            if name in _FOREIGN_ERRORS:
                continue
            checked += 1
            cls = errors.get(name) or getattr(memworker, name, None)
            where = f"{rel(path)}:{line_of(text, m.start())}"
            if cls is None:
                wrong.append(f"{where}: {name} is no memworker error class")
            elif not issubclass(cls, errors["MemworkerError"]) or issubclass(cls, RuntimeError):
                wrong.append(f"{where}: {name} {cls.__mro__}")
    assert checked >= 15
    assert not wrong, wrong


def test_every_memworker_error_derives_from_memworker_error_not_runtime_error():
    errors = memworker_errors()
    base = errors["MemworkerError"]
    bad = [n for n, c in errors.items() if not issubclass(c, base) or issubclass(c, RuntimeError)]
    assert not bad


def test_documented_error_relations_hold():
    """"`QueueConnectionLostError` (also a `ConnectionLostError`)", "`JobPayloadError`
    (a `ValidationError` ...)": a class named, then "(also) a `X`", subclasses X."""
    errors = memworker_errors()
    wrong, checked = [], 0
    for path in MD_FILES:
        text = re.sub(r"\s+", " ", text_of(path))
        for m in re.finditer(r"`(\w+(?:Error|Timeout))` \((?:also |which is |is )?an? `(\w+(?:Error|Timeout))`", text):
            sub, sup = m.group(1), m.group(2)
            if sub not in errors or sup not in errors:
                continue
            checked += 1
            if not issubclass(errors[sub], errors[sup]):
                wrong.append(f"{rel(path)}: {sub} is not a {sup}")
    assert checked >= 1
    assert not wrong, wrong


# ----------------------------------------------------------------------- key names


@cache
def generated_keys() -> list[re.Pattern[str]]:
    """Every key name memworker.keys builds for namespace ``N``, placeholders as ``.+``."""
    from memworker import keys as k

    ph = "\x00"
    names: list[str] = []

    def harvest(obj):
        for field_name in getattr(obj, "__dataclass_fields__", {}):
            value = getattr(obj, field_name)
            if isinstance(value, str) and value.startswith("{N}"):
                names.append(value)
        for attr in dir(type(obj)):
            if attr.startswith("_"):
                continue
            fn = getattr(obj, attr)
            if not callable(fn) or attr == "producer":
                continue
            params = list(inspect.signature(fn).parameters.values())
            try:
                value = fn(*[ph] * len(params))
            except Exception:  # noqa: BLE001 - not a key builder
                continue
            if isinstance(value, str) and value.startswith("{N}"):
                names.append(value)

    harvest(k.Keys("N"))
    qk = k.QueueKeys("N")
    harvest(qk)
    harvest(qk.producer(ph))
    harvest(k.ProducerKeys("N", ph))
    names += [k.lock_key("N", ph), k.lock_under_key("N", ph), k.result_key("N", ph)]
    return [re.compile(re.escape(n).replace("\x00", ".+")) for n in set(names)]


def _doc_key_names():
    """``(where, name)`` of every ``{ns}:...`` / ``ns:...`` key a doc shows, as ``{N}:...``
    with each placeholder ``<x>`` made ``X``."""
    for path in [*MD_FILES, PKG / "keys.py"]:
        text = text_of(path)
        if path.suffix == ".py":
            text = ast.get_docstring(ast.parse(text)) or ""
        for m in re.finditer(r"(?<![\w{])(?:\{ns\}|ns):([\w:<>\[\].-]*[\w>])", text):
            rest = m.group(1)
            if not rest or rest.startswith("<") and rest.endswith(">") and ":" not in rest:
                continue
            if rest == "epoch" and "Departure from the brief" in text[max(0, m.start() - 80) : m.start()]:
                continue  # design.md: the brief's `ns:epoch`, named as what was not built
            rest = re.sub(r"<[^>]*>", "X", rest)
            rest = re.sub(r"^meta\.\w+$", "meta", rest)  # `ns:meta.dim`: a field of `ns:meta`
            yield f"{rel(path)}:{line_of(text, m.start())}", "{N}:" + rest


def test_documented_key_names_are_built_by_memworker_keys():
    """README: "the key layout is in `memworker/keys.py`"; docs/design.md's tables: every
    key name a doc shows is one memworker.keys builds."""
    patterns = generated_keys()
    wrong, checked = [], 0
    for where, name in _doc_key_names():
        if name.startswith("{N}:dq:") and re.search(r"\.(?:DQ|XQ)\b|\.\.\.|\[", name):
            continue  # dramatiq's own key families, named loosely
        checked += 1
        # `ns:rec:...`, `ns:pending`: a key family written by its prefix
        if not any(p.fullmatch(name) or p.fullmatch(name + ":X") for p in patterns):
            wrong.append(f"{where}: {name}")
    assert checked >= 30
    assert not wrong, wrong


def test_keys_module_doc_lists_every_key_it_builds():
    """memworker/keys.py's docstring says "Every key name of a namespace, in one place"
    (the README sends readers there, and "the docs point here rather than restate the
    layout"): every key family its classes and functions build appears in it."""
    doc_names = {name for where, name in _doc_key_names() if where.startswith("memworker/keys.py")}
    assert len(doc_names) >= 20
    missing = []
    for pattern in generated_keys():
        shown = pattern.pattern.replace("\\", "")
        if shown in ("{N}", "{N}:rec:", "{N}:done:*") or shown.startswith("{N}:dq:"):
            continue  # the tag, the records' prefix, the channels' pattern; dramatiq's own keys
        if not any(pattern.fullmatch(n) for n in doc_names):
            missing.append(pattern.pattern.replace("\\", "").replace(".+", "<x>"))
    assert not missing, f"built by memworker.keys but absent from its layout docstring: {sorted(missing)}"


# ------------------------------------------------------------------ limits in prose


def _limits():
    """``(doc, pattern, group -> code value)``: numbers the docs state in sentences."""
    from memworker import cli
    from memworker import langgraph as lg
    from memworker import settings as s
    from memworker import worker_settings as ws
    from memworker.queue import jobs
    from memworker.store import embeddings, validate
    from memworker.worker import actors, sweep

    parser = cli.make_argument_parser()

    def default(*path_and_dest):
        *path, dest = path_and_dest
        p = parser
        for name in path:
            p = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
        return next(a.default for a in p._actions if a.dest == dest)

    return [
        ("README.md", r"at most ([\d,]+) characters and (\d+) levels \(`MAX_SCOPE_DEPTH`",
         [validate.MAX_SCOPE_LENGTH, validate.MAX_SCOPE_DEPTH]),
        ("README.md", r"A record id is at most ([\d,]+) characters", [validate.MAX_ID_LENGTH]),
        ("README.md", r"metadata over (\d+) KiB of JSON", [validate.MAX_METADATA_BYTES // 1024]),
        ("README.md", r"doubled per retry up to (\d+) s", [actors.DEFAULT_MAX_BACKOFF_MS // 1000]),
        ("README.md", r"shows the first N, default (\d+), each traceback cut to ([\d,]+) characters",
         [default("dead", "list", "limit"), jobs.MAX_ERROR_CHARS]),
        ("README.md", r"`S` from 0 to a year, default (\d+)", [default("drain", "timeout")]),
        ("README.md", r"`--records` up to ([\d,]+), `--batch` up to ([\d,]+)",
         [cli.MAX_DEMO_RECORDS, jobs.DEFAULT_MAX_ITEMS]),
        ("README.md", r"lets (\d+) simulated agents enqueue ([\d,]+) memories",
         [default("demo", "agents"), default("demo", "records")]),
        ("README.md", r"fetches as many jobs as it has room for \((\d+) records in flight",
         [ws.DEFAULT_INFLIGHT_RECORDS]),
        ("docs/langgraph.md", r"percent-encoded at most (\d+) characters, (\d+) labels",
         [validate.MAX_CATEGORY_LENGTH, lg.MAX_LABELS]),
        ("docs/langgraph.md", r"a `namespace_prefix` at most (\d+) characters", [validate.MAX_CATEGORY_LENGTH]),
        ("docs/langgraph.md", r"minutes above 0 and at most ([\d,]+) \(", [lg._MAX_MINUTES]),
        ("docs/langgraph.md", r"at most ([\d,]+), a day", [validate.MAX_SWEEP_MS // 60_000]),
        ("docs/langgraph.md", r"number above 0 and at most ([\d,]+):", [validate.MAX_RETENTION_DAYS]),
        ("docs/langgraph.md", r"deletes up to (\d+) × (\d+) due records", [sweep.MAX_STEPS, sweep.SWEEP_STEP]),
        ("docs/langgraph.md", r"else `MEMWORKER_SWEEP_INTERVAL` seconds \(default (\d+)\)",
         [sweep.DEFAULT_SWEEP_INTERVAL_S]),
        ("docs/langgraph.md", r"past ([\d,]+) candidates", [lg._MAX_K]),
        ("docs/langgraph.md", r"newest first, a page of (\d+) at a time", [lg._PAGE]),
        ("docs/scaling.md", r"`--pause-ms` \(default ([\d,]+)\)", [default("reshard", "pause_ms")]),
        ("docs/scaling.md", r"default request timeout \((\d+) s", [s.DEFAULT_REQUEST_TIMEOUT_MS // 1000]),
        ("README.md", r"between (3e-8) and (65504) in magnitude",
         [float(f"{embeddings.FLOAT16_TINY:.0e}"), embeddings.FLOAT16_MAX]),
    ]


def test_limits_stated_in_prose_match_the_code():
    wrong = []
    for doc, pattern, values in _limits():
        m = _find(doc, pattern)
        stated = [float(g.replace(",", "")) for g in m.groups()]
        if stated != [float(v) for v in values]:
            wrong.append(f"{doc}: {m.group(0)!r}: code {values}")
    assert not wrong, wrong


def test_drain_timeout_range_is_a_year():
    """README: "`S` from 0 to a year"."""
    from memworker import cli

    _find("README.md", r"`S` from 0 to a year")
    assert cli.MAX_DRAIN_SECONDS == 365 * 86_400


def test_demo_namespace_and_options():
    """README: the demo runs "in its own namespace `memworker-demo`" and
    "`python3 dev.py demo --help` lists its options (`--records`, ...)": dev.py passes
    its arguments to `memworker demo`, whose parser has each of them."""
    from memworker import cli

    ns = _find("README.md", r"in its own namespace `([\w-]+)`").group(1)
    source = text_of(PKG / "cli.py") + text_of(PKG / "demo.py")
    assert f'"{ns}"' in source or f"'{ns}'" in source
    opts = re.findall(r"`(--[\w-]+)`", _find("README.md", r"lists its options \(([^)]*)\)").group(1))
    assert len(opts) >= 5
    demo = next(
        a for a in cli.make_argument_parser()._actions if a.__class__.__name__ == "_SubParsersAction"
    ).choices["demo"]
    flags = {s for a in demo._actions for s in a.option_strings}
    assert set(opts) <= flags, set(opts) - flags
    assert re.search(r'\[\s*str\(_bin\("memworker"\)\),\s*"demo",\s*\*rest\]', _doc("dev.py"))


def test_dev_torch_default():
    """README: "`MEMWORKER_TORCH`, default `torch==X`"."""
    stated = _find("README.md", r"\(`MEMWORKER_TORCH`, default `([^`]+)`\)").group(1)
    m = re.search(r'environ\.get\("MEMWORKER_TORCH",\s*"([^"]+)"\)', _doc("dev.py"))
    assert m and m.group(1) == stated


def test_embedded_home_file_names_and_modes():
    """README: pid and port in `MEMWORKER_HOME/valkey.json`, the password in
    `MEMWORKER_HOME/valkey.password`, the home and its `data/` 0700, files 0600."""
    from memworker.embedded import auth

    readme = _doc("README.md")
    assert "`MEMWORKER_HOME/valkey.json`" in readme and auth.STATE_FILE == "valkey.json"
    assert "`MEMWORKER_HOME/valkey.password`" in readme and auth.PASSWORD_FILE == "valkey.password"
    assert "its `data/` are 0700, every\nfile in them 0600" in readme or re.search(
        r"`data/` are 0700, every file in them 0600", re.sub(r"\s+", " ", readme)
    )
    assert auth.DATA_DIR == "data" and auth.DIR_MODE == 0o700 and auth.FILE_MODE == 0o600


# -------------------------------------------------------------------- tracing, pyproject


def test_documented_span_names_and_service_name():
    """README: "`memworker.enqueue`, then the worker's `memworker.embed` and
    `memworker.commit`"; "`OTEL_SERVICE_NAME`, default `memworker-worker`"."""
    from memworker import tracing

    m = _find("README.md", r"`(memworker\.\w+)`, then the worker's `(memworker\.\w+)` and `(memworker\.\w+)`")
    literals = set()
    for path in PKG.rglob("*.py"):
        tree = ast.parse(text_of(path))
        literals |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    missing = [name for name in m.groups() if name not in literals]
    assert not missing, missing
    service = _find("README.md", r"`OTEL_SERVICE_NAME`, default `([\w-]+)`").group(1)
    assert re.search(rf'"OTEL_SERVICE_NAME",\s*"{re.escape(service)}"', inspect.getsource(tracing))


@cache
def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(_doc("pyproject.toml"))


def test_extras_named_in_docs_exist():
    """``pip install "memworker[langgraph,search]"``, "the `metrics` extra", "the `otel`
    extra", "needs the `onnx` extra": each extra is in pyproject.toml."""
    extras = set(pyproject()["project"]["optional-dependencies"])
    wrong, checked = [], 0
    for path in [*MD_FILES, ROOT / "deploy" / "Dockerfile"]:
        if not path.is_file():
            continue
        text = text_of(path)
        for m in re.finditer(r"memworker\[([\w,-]+)\]", text):
            for name in m.group(1).split(","):
                checked += 1
                if name not in extras:
                    wrong.append(f"{rel(path)}:{line_of(text, m.start())}: [{name}]")
        for m in re.finditer(r"the `(\w+)` extra", re.sub(r"\s+", " ", text)):
            checked += 1
            if m.group(1) not in extras:
                wrong.append(f"{rel(path)}: the `{m.group(1)}` extra")
    assert checked >= 5
    assert not wrong, wrong


def test_python_version_and_entry_point():
    """README: "You need Python 3.10+"; the `memworker` command is `memworker.cli:main`."""
    stated = _find("README.md", r"You need Python (\d+\.\d+)\+").group(1)
    assert pyproject()["project"]["requires-python"] == f">={stated}"
    target = pyproject()["project"]["scripts"]["memworker"]
    module, func = target.split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), func))
    lua = [p.name for p in (PKG / "lua").glob("*.lua")]
    assert "lua/*.lua" in pyproject()["tool"]["setuptools"]["package-data"]["memworker"] and lua
