"""Documentation truth: what README.md, docs/, deploy/ and examples/ tell a user must be
what the code does.

Every check parses the documentation (code spans, code blocks, tables, deploy files)
and compares what it names with the code: environment variables and their defaults,
CLI commands and flags, Python names and keyword arguments, and numbers stated next
to a named constant. No server is needed.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "memworker"

# --------------------------------------------------------------------------- corpus


def _existing(paths):
    return [p for p in paths if p.is_file()]


#: Prose documentation (markdown).
MD_FILES = _existing(
    [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "deploy" / "README.md",
        *sorted((ROOT / "deploy").glob("*/README.md")),
        *sorted((ROOT / "examples").glob("*.md")),
    ]
)
#: Deploy files a user runs as they are.
DEPLOY_FILES = _existing(
    [
        ROOT / "Procfile",
        ROOT / "deploy" / "Dockerfile",
        *sorted((ROOT / "deploy").glob("**/docker-compose.yml")),
        *sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")),
        *sorted((ROOT / "deploy" / "systemd").glob("*")),
    ]
)
EXAMPLE_PY = sorted((ROOT / "examples").glob("*.py"))
ALL_DOCS = MD_FILES + DEPLOY_FILES + EXAMPLE_PY


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def code_pieces(path: Path):
    """``(line, code)`` of every fenced block and inline code span of a markdown file."""
    text = text_of(path)
    for m in _FENCE.finditer(text):
        yield line_of(text, m.start(1)), m.group(1)
    blanked = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in re.finditer(r"``?([^`\n]+?)``?", blanked):
        yield line_of(blanked, m.start()), m.group(1)


@cache
def code_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


@cache
def code_string_literals() -> dict[str, set[str]]:
    """Every string constant of memworker/ -> the files holding it."""
    found: dict[str, set[str]] = {}
    for path in code_files():
        for node in ast.walk(ast.parse(text_of(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.setdefault(node.value, set()).add(rel(path))
    return found


ENV_NAME = re.compile(r"\b(?:MEMWORKER|VALKEY|REDIS|OTEL|PROMETHEUS)_[A-Z0-9_]*[A-Z0-9]\b")
#: memworker's own prefixes: a documented name with one of these must be read by the code.
OWN_ENV = re.compile(r"^(?:MEMWORKER_[A-Z0-9_]+|VALKEY_URL|REDIS_URL)$")


def doc_env_names() -> dict[str, list[str]]:
    """Env-var-looking names in every doc -> where (file:line)."""
    out: dict[str, list[str]] = {}
    for path in ALL_DOCS:
        text = text_of(path)
        for m in ENV_NAME.finditer(text):
            out.setdefault(m.group(0), []).append(f"{rel(path)}:{line_of(text, m.start())}")
    return out


def dev_py_env_names() -> set[str]:
    """Variables dev.py (the documented entry point `python3 dev.py ...`) reads."""
    dev = ROOT / "dev.py"
    if not dev.is_file():
        return set()
    return set(re.findall(r"environ\.get\(\s*[\"']([A-Z0-9_]+)[\"']", text_of(dev)))


# --------------------------------------------------------------------------- env vars


def test_every_documented_memworker_variable_is_read_by_the_code():
    """A MEMWORKER_*/VALKEY_URL/REDIS_URL named in a doc is a string the code reads."""
    literals = code_string_literals()
    dev_names = dev_py_env_names()
    missing = {
        name: where
        for name, where in doc_env_names().items()
        if OWN_ENV.match(name) and name not in literals and name not in dev_names
    }
    assert not missing, f"documented but never read by memworker/ (or dev.py): {missing}"


def _env_reads_in_code() -> dict[str, set[str]]:
    """Names the code reads from the environment: string literals that look like env
    variables and occur in a file that touches os.environ / getenv / an ``env`` mapping."""
    reads: dict[str, set[str]] = {}
    for path in code_files():
        source = text_of(path)
        if not re.search(r"environ|getenv|\benv\b", source):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(r"(?:MEMWORKER|VALKEY|REDIS|OTEL|PROMETHEUS)_[A-Z0-9_]+", node.value):
                    reads.setdefault(node.value, set()).add(rel(path))
    return reads


def test_every_variable_the_code_reads_is_documented():
    documented = set(doc_env_names())
    undocumented = {
        name: sorted(files)
        for name, files in _env_reads_in_code().items()
        if name not in documented
        # test doubles of the CrewAI flow (memworker.crewai.testing) are not user settings
        and not all(f.endswith("/testing.py") for f in files)
    }
    assert not undocumented, f"read by the code but named in no doc: {undocumented}"


def readme_env_table() -> list[tuple[int, list[str], str, str]]:
    """``(line, variables, meaning, default)`` rows of the README's variable table."""
    readme = text_of(ROOT / "README.md")
    rows = []
    in_table = False
    for number, line in enumerate(readme.splitlines(), 1):
        if re.match(r"^\|\s*variable\s*\|", line):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if set("".join(cells)) <= set("-: "):
                continue
            names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
            rows.append((number, names, cells[1], cells[-1]))
    return rows


def test_readme_env_table_is_found():
    rows = readme_env_table()
    assert len(rows) >= 10, "the README's `| variable | meaning | default |` table was not parsed"


def _code_default(name: str):
    """The code's default for a variable: what it reads with an empty environment."""
    from memworker import settings as s
    from memworker import worker_settings as ws

    empty: dict[str, str] = {}
    broker = {var: default for var, default, _lo, _hi in ws.BROKER_ENV.values()}
    if name in broker:
        return broker[name]
    base = s.Settings.from_env(empty)
    by_settings = {
        "MEMWORKER_NAMESPACE": base.namespace,
        "MEMWORKER_HOME": base.home,
        "MEMWORKER_SEARCH_MODULE": base.search_module,
        "MEMWORKER_SEARCH": base.search_mode,
        "MEMWORKER_VECTOR_TYPE": base.vector_type,
        "MEMWORKER_COMMIT_REPLICAS": base.commit_replicas,
        "MEMWORKER_HNSW_EF_CONSTRUCTION": base.hnsw_ef_construction,
    }
    if name in by_settings:
        return by_settings[name]
    if name == "MEMWORKER_APPENDFSYNC":
        from memworker.embedded.launch import resolve_appendfsync

        return resolve_appendfsync(None) if not ws.read_appendfsync(empty) else None
    if name == "MEMWORKER_BACKEND":
        return ws.read_backend(empty)
    if name == "MEMWORKER_SWEEP_INTERVAL":
        return ws.read_sweep_interval(empty) / 1000
    if name == "MEMWORKER_METRICS_PORT":
        return ws.read_metrics_port(None, empty)
    return NotImplemented


def _same(doc: str, code) -> bool:
    if code is None:
        return doc.lower() in ("off", "-", "none")
    if isinstance(code, Path):
        return Path(doc) == code
    if isinstance(code, (int, float)) and not isinstance(code, bool):
        try:
            return float(doc.replace(",", "").replace("_", "")) == float(code)
        except ValueError:
            return False
    return doc == str(code)


def test_readme_env_table_defaults_match_the_code(monkeypatch):
    for row in readme_env_table():
        for name in row[1]:
            monkeypatch.delenv(name, raising=False)
    wrong = []
    checked = 0
    for line, names, _meaning, default in readme_env_table():
        doc_values = re.findall(r"`([^`]+)`", default)
        if not doc_values:
            doc_values = [default.strip()] if default.strip().lower() in ("off", "-") else []
        if not doc_values:
            continue
        if len(doc_values) != len(names):
            doc_values = doc_values[:1] * len(names) if len(doc_values) == 1 else doc_values
        for name, doc in zip(names, doc_values):
            code = _code_default(name)
            if code is NotImplemented:
                continue
            checked += 1
            if not _same(doc, code):
                wrong.append(f"README.md:{line} {name}: doc default {doc!r}, code {code!r}")
    assert checked >= 10
    assert not wrong, wrong


_NUM = r"(\d[\d,]*(?:\.\d+)?)\s*(KiB|MiB|GiB)?"


def _number(text: str, unit: str | None) -> float:
    value = float(text.replace(",", ""))
    return value * {None: 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]


def test_readme_env_table_ranges_match_the_code():
    """"A to B" in the meaning of a broker/worker variable is the range the code accepts."""
    from memworker import settings as s
    from memworker import worker_settings as ws

    limits = {var: (lo, hi) for var, _d, lo, hi in ws.BROKER_ENV.values()}
    limits["MEMWORKER_INFERENCE_THREADS"] = (1, ws.MAX_INFERENCE_THREADS)
    limits["MEMWORKER_HNSW_EF_CONSTRUCTION"] = (1, s.MAX_HNSW_EF_CONSTRUCTION)
    wrong, checked = [], 0
    for line, names, meaning, _default in readme_env_table():
        ranges = re.findall(_NUM + r"\s+to\s+" + _NUM, meaning)
        for name in names:
            if name not in limits:
                continue
            # a byte variable's range has units (KiB, GiB); a count's has none
            mine = [r for r in ranges if bool(r[1] or r[3]) == name.endswith("BYTES")]
            code = tuple(float(v) for v in limits[name])
            if mine:
                lo_t, lo_u, hi_t, hi_u = mine[0]
                doc = (_number(lo_t, lo_u or None), _number(hi_t, hi_u or None))
            else:
                most = re.search(r"at most " + _NUM, meaning)
                if not most:
                    continue
                doc = (code[0], _number(most.group(1), most.group(2) or None))
            checked += 1
            if doc != code:
                wrong.append(f"README.md:{line} {name}: doc {doc}, code {limits[name]}")
    assert checked >= 6
    assert not wrong, wrong


# --------------------------------------------------------------------------- CLI


@cache
def cli_parser():
    from memworker.cli import make_argument_parser

    return make_argument_parser()


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _options(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _takes_value(parser, flag: str) -> bool:
    for a in parser._actions:
        if flag in a.option_strings:
            return a.nargs != 0 and a.const is None or a.nargs == "?"
    return False


def memworker_invocations():
    """``(where, tokens)``: every ``memworker ...`` command line of the docs and deploy
    files, cut after ``memworker`` at the end of the command (``;``, ``|`` used as a
    pipe, ``&&``, a closing parenthesis...)."""
    found = []
    for path in MD_FILES:
        for line, piece in code_pieces(path):
            for offset, code_line in enumerate(piece.splitlines()):
                for m in re.finditer(r"(?:^|[\s\"'(]|bin/)memworker(?=\s+-|\s+[a-z])(.*)", code_line):
                    if re.search(r"(?:\bfrom|\bimport|-u|--gid|-g)\s+$", code_line[: m.start() + 1]):
                        continue  # `from memworker import ...`, `sudo -u memworker sh`
                    found.append((f"{rel(path)}:{line + offset}", m.group(1)))
    for path in DEPLOY_FILES:
        text = text_of(path)
        for number, code_line in enumerate(text.splitlines(), 1):
            if code_line.lstrip().startswith("#"):
                continue
            arr = re.search(r"\[\s*(?:\"CMD\"\s*,\s*)?\"memworker\"\s*,(.*?)\]", code_line)
            if arr:
                words = re.findall(r"\"([^\"]*)\"", arr.group(1))
                found.append((f"{rel(path)}:{number}", " ".join(shlex.quote(w) for w in words)))
                continue
            m = re.search(r"(?:^|[\s/:])memworker\s+(-.*|[a-z].*)", code_line)
            if m and not re.search(r"^\s*(name|image|app\.|[\w.-]+/name)\b", code_line):
                found.append((f"{rel(path)}:{number}", m.group(1)))
    out = []
    for where, rest in found:
        rest = re.split(r"\s(?:;|&&|\|\||>|2>)|[`)']|\s\|\s(?=[a-z]+\s*$)", rest)[0]
        try:
            # `[--nice N\|idle]`, `[--json]`: optional parts of a usage line are still flags
            tokens = shlex.split(re.sub(r"[\[\]]", " ", rest.replace("\\|", "|")))
        except ValueError:
            tokens = rest.split()
        out.append((where, tokens))
    return out


def _resolve(tokens: list[str]):
    """Walk tokens through the parser: ``(parser, path, flags, problems)``."""
    parser = cli_parser()
    path: list[str] = []
    flags: list[tuple[object, str]] = []
    problems: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-") and tok != "-" and not re.fullmatch(r"-?\d+(\.\d+)?", tok):
            flag = tok.split("=", 1)[0]
            flags.append((parser, flag))
            if flag in _options(parser) and "=" not in tok and _takes_value(parser, flag):
                i += 1  # its value
            i += 1
            continue
        subs = _subparsers(parser)
        if subs:
            if re.fullmatch(r"[a-z][a-z-]*", tok) and tok in subs:
                parser = subs[tok]
                path.append(tok)
            elif re.fullmatch(r"[a-z][a-z-]*", tok) and tok not in ("and", "or", "with"):
                problems.append(f"unknown command {' '.join(['memworker', *path, tok])!r}")
                break
            else:
                break
        i += 1
    return parser, path, flags, problems


def test_cli_invocations_are_found():
    invocations = memworker_invocations()
    commands = {tuple(_resolve(t)[1][:1]) for _w, t in invocations}
    assert len(invocations) >= 20
    assert ("worker",) in commands and ("check",) in commands and ("status",) in commands


def test_every_documented_cli_command_and_flag_exists():
    """Each ``memworker [global options] COMMAND [ACTION] --flag`` in a doc or deploy file
    names a command the CLI has and flags that command (or the global parser) accepts."""
    root_flags = _options(cli_parser())
    wrong = []
    for where, tokens in memworker_invocations():
        parser, path, flags, problems = _resolve(tokens)
        wrong += [f"{where}: {p}" for p in problems]
        for owner, flag in flags:
            if flag in _options(owner) or (owner is cli_parser() and flag in root_flags):
                continue
            wrong.append(f"{where}: `memworker {' '.join(path)}` has no option {flag!r}")
    assert not wrong, "\n".join(wrong)


def test_readme_command_table_names_every_cli_command():
    """The README's command table, plus commands the README names elsewhere, covers
    every subcommand the CLI has (a command no doc mentions is a hidden feature)."""
    documented = {tuple(_resolve(t)[1][:1]) for _w, t in memworker_invocations()}
    missing = [c for c in _subparsers(cli_parser()) if (c,) not in documented]
    assert not missing, f"CLI commands named in no doc: {missing}"


def test_every_cli_flag_is_documented():
    """Every option of every command (suppressed ones aside) is named in some doc."""
    import argparse

    corpus = "\n".join(text_of(p) for p in ALL_DOCS)

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            elif action.help != argparse.SUPPRESS:
                longs = [s for s in action.option_strings if s.startswith("--")]
                if longs and "--help" not in longs and "--version" not in longs:
                    yield path, longs, action.option_strings

    missing = [
        f"memworker {' '.join(path)} {'/'.join(longs)}"
        for path, longs, flags in walk(cli_parser(), [])
        if not any(re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", corpus) for flag in flags)
    ]
    assert not missing, f"CLI options named in no doc: {missing}"


def _help(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memworker.cli", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_documented_commands_answer_help_in_a_subprocess():
    """``python -m memworker.cli <command> --help`` exits 0 for every documented command
    path (the entry point a user runs, not only the parser object)."""
    paths = sorted({tuple(_resolve(t)[1]) for _w, t in memworker_invocations()} - {()})
    failed = []
    for path in paths:
        result = _help(*path)
        if result.returncode != 0:
            failed.append(f"memworker {' '.join(path)} --help -> {result.returncode}: {result.stderr[-300:]}")
    assert not failed, failed


def test_deploy_command_lines_parse_completely():
    """Deploy files run their command lines verbatim: the whole line must parse."""
    parser = cli_parser()
    wrong = []
    for where, tokens in memworker_invocations():
        if not any(where.startswith(rel(p) + ":") for p in DEPLOY_FILES):
            continue
        try:
            parser.parse_args(tokens)
        except SystemExit as exc:
            wrong.append(f"{where}: memworker {' '.join(tokens)} -> exit {exc.code}")
    assert not wrong, wrong


def test_verbose_flag_does_what_the_readme_says(monkeypatch):
    """README: "`memworker -v` puts memworker's and dramatiq's loggers at debug level,
    not other libraries'" (an LLM client's debug log may print prompts)."""
    readme = text_of(ROOT / "README.md")
    assert re.search(r"`memworker -v` puts memworker's and dramatiq's\s+loggers at debug level", readme)
    from memworker import cli

    seen = {}

    def fake(args):
        seen["third_party"] = logging.getLogger("some_llm_client").getEffectiveLevel()
        seen["memworker"] = logging.getLogger("memworker").getEffectiveLevel()
        seen["dramatiq"] = logging.getLogger("dramatiq").getEffectiveLevel()
        return 0

    monkeypatch.setitem(cli._COMMANDS, "status", fake)
    saved = {n: logging.getLogger(n).level for n in ("memworker", "dramatiq", "")}
    try:
        assert cli.main(["-v", "status"]) == 0
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
    assert seen["memworker"] == logging.DEBUG and seen["dramatiq"] == logging.DEBUG
    assert seen["third_party"] > logging.DEBUG

def test_readme_worker_ranges_match_the_cli():
    """README: "P from 1 to 256, T from 1 to 1,024"."""
    from memworker.worker import process

    readme = text_of(ROOT / "README.md")
    m = re.search(r"P from ([\d,]+) to ([\d,]+), T from ([\d,]+) to ([\d,]+)", readme)
    assert m, "the README's worker ranges were not found"
    doc = [int(x.replace(",", "")) for x in m.groups()]
    assert doc == [1, process.MAX_PROCESSES, 1, process.MAX_THREADS]


def test_readme_respawn_limits_match_the_code():
    """README: "three dying within 10 s of their start stop the worker"."""
    from memworker.worker import process

    readme = text_of(ROOT / "README.md")
    m = re.search(r"(\w+) dying within (\d+) s of their start", readme)
    assert m
    words = {"two": 2, "three": 3, "four": 4, "five": 5}
    assert words.get(m.group(1), m.group(1)) == process.RESPAWN_LIMIT
    assert float(m.group(2)) == process.RESPAWN_UPTIME_S


# --------------------------------------------------------------------------- Python API

API_MODULES = (
    "memworker",
    "memworker.langgraph",
    "memworker.crewai",
    "memworker.embedding",
    "memworker.queue",
    "memworker.store",
    "memworker.testing",
    "memworker.embedded",
)


@cache
def public_objects() -> dict[str, object]:
    objs: dict[str, object] = {}
    for name in API_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra is not installed
            continue
        for attr in getattr(module, "__all__", [a for a in dir(module) if not a.startswith("_")]):
            try:
                obj = getattr(module, attr)
            except (AttributeError, ImportError):
                continue
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and (
                getattr(obj, "__module__", "") or ""
            ).startswith("memworker"):
                objs.setdefault(attr, obj)
    return objs


def _accepts(func, keyword: str) -> bool | None:
    """Whether ``func`` takes ``keyword``; ``None`` when it cannot be told (``**kwargs``)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    params = sig.parameters
    if keyword in params and params[keyword].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return False


def _init_accepts(cls, keyword: str) -> bool | None:
    fields = getattr(cls, "model_fields", None)  # pydantic models (QueuedMemory)
    if fields is not None and keyword in fields:
        return True
    return _accepts(cls, keyword)


def _calls(code: str):
    """``(receiver, name, keywords)`` of each call in a code piece."""
    for m in re.finditer(r"(?:\b([A-Za-z_]\w*)\.)?\b([A-Za-z_]\w*)\(", code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"(": 1, ")": -1}.get(code[j], 0)
            j += 1
        args = code[m.end() : j - 1]
        flat = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", args)
        keywords = re.findall(r"(?:^|,)\s*([a-z_]\w*)\s*=(?!=)", flat)
        yield m.group(1), m.group(2), keywords


def documented_calls():
    """``(where, Class-or-None, method-or-None, keywords)`` of every call in the docs'
    code that names a memworker class (directly, or through a variable assigned from one
    in the same code piece) or a method a memworker class has."""
    objs = public_objects()
    for path in MD_FILES:
        for line, piece in code_pieces(path):
            variables = {
                var: cls
                for var, cls in re.findall(r"\b([a-z_]\w*)\s*=\s*(?:await\s+)?([A-Z]\w*)\(", piece)
                if cls in objs
            }
            for receiver, name, keywords in _calls(piece):
                where = f"{rel(path)}:{line}"
                if receiver is None and name in objs:
                    yield where, name, None, keywords
                elif receiver in objs and inspect.isclass(objs[receiver]):
                    yield where, receiver, name, keywords
                elif receiver in variables:
                    yield where, variables[receiver], name, keywords
                elif receiver is None or receiver not in ("os", "re", "json", "builder", "crewai"):
                    yield where, None, name, keywords


def _classes():
    return {n: o for n, o in public_objects().items() if inspect.isclass(o)}


def test_documented_calls_exist_with_their_keywords():
    """``QueuedStore(url, index=, ttl=)``, ``store.search(..., viewer=)``,
    ``drain(job_ids=..., consume=...)``: the class, method and keywords exist."""
    objs = public_objects()
    classes = _classes()
    wrong, checked = [], 0
    for where, cls_name, method, keywords in documented_calls():
        if cls_name is not None and method is None:
            obj = objs[cls_name]
            for kw in keywords:
                ok = _init_accepts(obj, kw) if inspect.isclass(obj) else _accepts(obj, kw)
                checked += 1
                if ok is False:
                    wrong.append(f"{where}: {cls_name}() takes no keyword {kw!r}")
        elif cls_name is not None:
            cls = objs[cls_name]
            func = getattr(cls, method, None)
            checked += 1
            if func is None:
                wrong.append(f"{where}: {cls_name} has no method {method!r}")
                continue
            for kw in keywords:
                checked += 1
                if _accepts(func, kw) is False:
                    wrong.append(f"{where}: {cls_name}.{method}() takes no keyword {kw!r}")
        elif keywords and method and not method[0].isupper():
            # a bare `drain(consume=False)`: some memworker class's method of that name
            owners = [getattr(c, method) for c in classes.values() if callable(getattr(c, method, None))]
            if not owners:
                continue
            for kw in keywords:
                checked += 1
                if all(_accepts(f, kw) is False for f in owners):
                    wrong.append(f"{where}: no memworker {method}() takes keyword {kw!r}")
    assert checked >= 20
    assert not wrong, "\n".join(wrong)


def test_documented_class_dot_method_names_exist():
    """Every ``Class.method`` in a code span (``MemoryQueue.drain()``,
    ``Settings.redacted_url()``, ``WorkerSettings.from_env()``) exists."""
    classes = _classes()
    wrong, checked = [], 0
    for path in MD_FILES:
        for line, piece in code_pieces(path):
            for cls, attr in re.findall(r"\b([A-Z]\w+)\.([a-z_]\w*)\b(?![*])", piece):
                if cls in classes:
                    checked += 1
                    fields = getattr(classes[cls], "__dataclass_fields__", {})
                    if not hasattr(classes[cls], attr) and attr not in fields:
                        wrong.append(f"{rel(path)}:{line}: {cls}.{attr}")
    assert checked >= 3
    assert not wrong, wrong


def test_documented_import_lines_work():
    """``from memworker... import A, B`` in the docs' code imports."""
    wrong, checked = [], 0
    for path in MD_FILES + EXAMPLE_PY:
        pieces = code_pieces(path) if path.suffix == ".md" else [(1, text_of(path))]
        for line, piece in pieces:
            for module, names in re.findall(
                r"^\s*from\s+(memworker[\w.]*)\s+import\s+\(?([\w ,\n]+?)\)?\s*(?:#.*)?$", piece, re.M
            ):
                try:
                    mod = importlib.import_module(module)
                except ImportError as exc:
                    if "memworker" in str(exc):
                        wrong.append(f"{rel(path)}:{line}: {module}: {exc}")
                    continue
                for name in (n.strip() for n in names.split(",")):
                    if not name:
                        continue
                    name = name.split(" as ")[0].strip()
                    checked += 1
                    try:
                        getattr(mod, name)
                    except AttributeError:
                        wrong.append(f"{rel(path)}:{line}: from {module} import {name}")
                    except ImportError:
                        pass  # an optional extra
    assert checked >= 5
    assert not wrong, wrong


# ---------------------------------------------------------------- numbers by constant


@cache
def module_constants() -> dict[str, list[tuple[str, object]]]:
    """UPPER_CASE module-level constants of memworker/ with a literal value."""
    out: dict[str, list[tuple[str, object]]] = {}
    for path in code_files():
        for node in ast.parse(text_of(path)).body:
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                value = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                targets, value = [node.target.id], node.value
            for name in targets:
                if re.fullmatch(r"_?[A-Z][A-Z0-9_]+", name):
                    try:
                        out.setdefault(name, []).append((rel(path), ast.literal_eval(value)))
                    except ValueError:
                        try:
                            out.setdefault(name, []).append(
                                (rel(path), eval(compile(ast.Expression(value), "c", "eval"), {}))  # noqa: S307
                            )
                        except Exception:  # noqa: BLE001 - not a plain expression
                            out.setdefault(name, []).append((rel(path), None))
    return out


#: External (Valkey, Linux, Docker, CrewAI, test) names written like constants.
_NOT_OURS = re.compile(
    r"^(SCHED_\w+|SORT_RO|EF_\w+|REDISCLI_AUTH|CHANGE_ME|TORCH_INDEX_URL|ON_CLUSTER|"
    r"CREWAI_\w+|HF_\w+|GF_\w+|GRAFANA_\w+|OTEL_\w+|VALKEY_\w+|REDIS_URL|MEMWORKER_\w+|"
    r"PROMETHEUS_\w+|[A-Z]+_[A-Z]+_[A-Z]+LIST|FT\.\w+)$"
)

_UNIT_MS = {"ms": 1, "s": 1000, "h": 3_600_000, "days": 86_400_000, "day": 86_400_000}
_UNIT_BYTES = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _quantities(window: str):
    for m in re.finditer(r"(?<![\w-])(\d[\d,]*(?:\.\d+)?)\s*(ms|s|h|days?|KiB|MiB|GiB|levels|characters|tokens|number fields)?\b", window):
        yield float(m.group(1).replace(",", "")), m.group(2)


def test_numbers_stated_next_to_a_named_constant_match_it():
    """"32 levels (`MAX_SCOPE_DEPTH`)", "kept 7 days (`TOMB_KEEP_MS`)",
    "(`HEALTH_INTERVAL_MS`, 1 s)": the number beside a constant's name is its value."""
    constants = module_constants()
    wrong, checked = [], 0
    for path in MD_FILES:
        text = text_of(path)
        for m in re.finditer(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", text):
            name = m.group(1)
            if _NOT_OURS.match(name) or name not in constants:
                continue
            values = [v for _f, v in constants[name] if isinstance(v, (int, float))]
            if not values:
                continue
            before = text[max(0, m.start() - 40) : m.start()].split(".")[-1].split(";")[-1]
            after = text[m.end() : m.end() + 12]
            candidates = list(_quantities(before))[-1:] + list(_quantities(after.split(")")[0]))[:1]
            for number, unit in candidates:
                if unit in _UNIT_MS and name.endswith("_MS"):
                    number *= _UNIT_MS[unit]
                elif unit in _UNIT_BYTES:
                    number *= _UNIT_BYTES[unit]
                elif unit in _UNIT_MS:
                    continue
                checked += 1
                if number not in values:
                    wrong.append(f"{rel(path)}:{line_of(text, m.start())}: {name} stated {number:g}, code {values}")
                break
    assert checked >= 5
    assert not wrong, wrong


def test_backticked_constants_exist_in_the_code():
    """A constant a doc names in backticks (``MAX_SCOPE_DEPTH``, ``CHANGES_CAP``) is
    defined somewhere in memworker/ (else a user grepping for it finds nothing)."""
    constants = module_constants()
    wrong = []
    for path in MD_FILES:
        text = text_of(path)
        for m in re.finditer(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", text):
            name = m.group(1)
            if _NOT_OURS.match(name) or name in constants:
                continue
            if name in code_string_literals():
                continue
            wrong.append(f"{rel(path)}:{line_of(text, m.start())}: {name}")
    assert not wrong, wrong


def test_readme_queue_limits_match_the_code():
    """README: "more than `max_items` items (1,000) or a job over `max_job_bytes` (1 MiB)",
    "a 200 ms poll", "atomic batches of 200"."""
    from memworker import MemoryQueue, ValkeyStore
    from memworker.queue import drain

    readme = text_of(ROOT / "README.md")
    sig = inspect.signature(MemoryQueue.__init__).parameters
    for name in ("max_items", "max_job_bytes"):
        m = re.search(rf"`{name}`[^(]{{0,12}}\({_NUM}\)", readme)
        assert m, name
        assert _number(m.group(1), m.group(2)) == sig[name].default, name
    m = re.search(r"with a (\d+) ms poll", readme)
    assert m and int(m.group(1)) == drain.DRAIN_POLL_MS
    m = re.search(r"atomic batches of (\d+)", readme)
    assert m and int(m.group(1)) == inspect.signature(ValkeyStore.__init__).parameters["batch_size"].default


def test_readme_batcher_numbers_match_the_code():
    """README: "takes up to 64 texts (or waits 5 ms after the first; beside a batch
    already running, it waits for 8)"."""
    from memworker.embedding import batcher

    readme = text_of(ROOT / "README.md")
    m = re.search(r"takes up to (\d+) texts \(or waits (\d+) ms after the first; beside a batch\s+already running, it waits for (\d+)\)", readme)
    assert m, "the README's sentence on the batcher changed: update this test with it"
    params = inspect.signature(batcher.EmbeddingBatcher.__init__).parameters
    assert int(m.group(1)) == params["batch_size"].default
    assert float(m.group(2)) == params["max_wait_ms"].default
    assert int(m.group(3)) == batcher.SIDE_BATCH_MIN


def test_redelivery_time_matches_heartbeat_timeouts():
    """Docs: a dead worker's jobs are redelivered "within about 6 s" / its heartbeat
    "expires (about 6 s)": the broker's heartbeat timeout plus its worker timeout."""
    from memworker.worker import broker

    stated = set()
    for path in MD_FILES + DEPLOY_FILES:
        for m in re.finditer(r"(?:redelivered[^.]{0,80}?|heartbeat expires[^.]{0,10}?)about (\d+) s", text_of(path)):
            stated.add((rel(path), int(m.group(1))))
    assert stated
    expected = round((broker.HEARTBEAT_TIMEOUT_MS + broker.WORKER_TIMEOUT_MS) / 1000)
    assert all(v == expected for _p, v in stated), (stated, expected)


def test_deploy_env_values_are_valid_for_the_code():
    """MEMWORKER_* values set in deploy files pass the code's own validation."""
    from memworker import settings as s
    from memworker import worker_settings as ws

    env: dict[str, list[tuple[str, str]]] = {}
    for path in DEPLOY_FILES:
        text = text_of(path)
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            for m in re.finditer(r"\b(MEMWORKER_\w+)\s*[:=]\s*\"?([^\"\s#]+)\"?", line):
                env.setdefault(m.group(1), []).append((f"{rel(path)}:{number}", m.group(2)))
            k8s = re.search(r"-\s*name:\s*(MEMWORKER_\w+)", line)
            if k8s:
                nxt = text.splitlines()[number] if number < len(text.splitlines()) else ""
                v = re.search(r"value:\s*\"?([^\"\s#]+)\"?", nxt)
                if v:
                    env.setdefault(k8s.group(1), []).append((f"{rel(path)}:{number}", v.group(1)))
    assert env
    wrong = []
    for name, uses in env.items():
        for where, value in uses:
            try:
                s.Settings.from_env({name: value})
                ws.WorkerSettings.from_env({name: value})
                ws.read_metrics_port(None, {name: value})
            except Exception as exc:  # noqa: BLE001 - a ConfigError is the finding
                wrong.append(f"{where}: {name}={value}: {exc}")
    assert not wrong, wrong


def test_procfile_and_units_run_documented_commands():
    """The Procfile and systemd units start `memworker server` / `memworker worker`."""
    lines = [t for w, t in memworker_invocations() if w.startswith(("Procfile", "deploy/systemd"))]
    commands = {t[0] for t in lines if t}
    assert {"server", "worker"} <= commands
