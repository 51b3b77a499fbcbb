"""The deployment files agree with the code.

Every ``memworker ...`` command line in ``deploy/**`` and the ``Procfile`` (Dockerfile
CMD/HEALTHCHECK/RUN, compose command/healthcheck, Kubernetes command/args/exec probes,
systemd Exec* lines, Procfile lines) names a command of
:func:`memworker.cli.make_argument_parser` and parses with it. The URLs parse with
:meth:`Settings.from_url`, the KEDA list key is the worker namespace's dramatiq queue,
and no file holds a real password. Docker is not needed: the files are only read.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from memworker.cli import make_argument_parser
from memworker.settings import DEFAULT_NAMESPACE, Settings

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML is in the dev environment
    yaml = None

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
PROCFILE = ROOT / "Procfile"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------- YAML
if yaml is not None:

    class _UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last one)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def _load_yaml(path: Path) -> list[Any]:
    assert yaml is not None
    return [d for d in yaml.load_all(path.read_text(), Loader=_UniqueKeyLoader) if d is not None]


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.y*ml")) for d in _load_yaml(p)]


def _k8s_find(kind: str, path: Path | None = None) -> list[dict[str, Any]]:
    return [d for p, d in _k8s_docs() if d.get("kind") == kind and (path is None or p == path)]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if "template" in spec:
        return spec["template"]["spec"]
    return None


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod_spec(doc) or {}
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _worker_deployment() -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker Deployment of worker.yaml and its memworker container."""
    deployments = _k8s_find("Deployment", K8S / "worker.yaml")
    assert len(deployments) == 1, "worker.yaml must hold exactly one Deployment"
    deployment = deployments[0]
    for container in _containers(deployment):
        if container.get("name") == "worker" or "memworker" in json.dumps(container.get("command")):
            return deployment, container
    raise AssertionError("worker.yaml: no container runs memworker")


# --------------------------------------------------------------------------- command lines
_SHELLS = {"sh", "bash", "dash", "ash"}
_SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


def _memworker_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``memworker`` if ``argv`` (one simple command) runs it."""
    i = 0
    while i < len(argv) and (
        argv[i] in ("exec", "env", "command") or _ASSIGNMENT.fullmatch(argv[i])
    ):
        i += 1
    argv = argv[i:]
    if argv and Path(argv[0]).name == "memworker":
        return argv[1:]
    return None


def _shell_invocations(script: str) -> list[list[str]]:
    """``memworker`` argument lists in a shell command string."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    found, segment = [], []
    for token in [*lexer, ";"]:
        if token in _SEPARATORS:
            args = _memworker_args(segment)
            if args is not None:
                found.append(args)
            segment = []
        else:
            segment.append(token)
    return found


def _argv_invocations(argv: list[str]) -> list[list[str]]:
    """``memworker`` argument lists in an exec-form argv (``sh -c`` scripts included)."""
    argv = [str(a) for a in argv]
    if argv and Path(argv[0]).name in _SHELLS and "-c" in argv[1:]:
        script_at = argv.index("-c") + 1
        return _shell_invocations(argv[script_at]) if script_at < len(argv) else []
    args = _memworker_args(argv)
    return [] if args is None else [args]


def _dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            instruction, _, rest = buf.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
        buf = ""
    return out


def _docker_command(value: str) -> list[list[str]]:
    """Invocations in a CMD/ENTRYPOINT/RUN argument (exec form or shell form)."""
    if value.startswith("["):
        return _argv_invocations(json.loads(value))
    return _shell_invocations(value)


def _healthcheck_command(value: str) -> str | None:
    """The CMD part of a HEALTHCHECK instruction (``None`` for ``HEALTHCHECK NONE``)."""
    tokens = value.split(None, 1)
    while tokens and tokens[0].startswith("--"):
        tokens = tokens[1].split(None, 1) if len(tokens) > 1 else []
    if not tokens or tokens[0].upper() == "NONE":
        return None
    assert tokens[0].upper() == "CMD", f"HEALTHCHECK without CMD: {value!r}"
    return tokens[1].strip()


def _dockerfile_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for instruction, value in _dockerfile_instructions():
        if instruction in ("CMD", "ENTRYPOINT", "RUN"):
            found += [(f"{_rel(DOCKERFILE)} {instruction}", a) for a in _docker_command(value)]
        elif instruction == "HEALTHCHECK":
            command = _healthcheck_command(value)
            if command is not None:
                found += [(f"{_rel(DOCKERFILE)} HEALTHCHECK", a) for a in _docker_command(command)]
    return found


def _compose_test_invocations(test: Any) -> list[list[str]]:
    if isinstance(test, str):
        return _shell_invocations(test)
    if not test or test[0] == "NONE":
        return []
    if test[0] == "CMD":
        return _argv_invocations(test[1:])
    if test[0] == "CMD-SHELL":
        return _shell_invocations(" ".join(test[1:]))
    return _argv_invocations(test)


def _compose_invocations(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for doc in _load_yaml(path):
        for name, service in (doc.get("services") or {}).items():
            label = f"{_rel(path)} services.{name}"
            for key in ("entrypoint", "command"):
                value = service.get(key)
                if isinstance(value, str):
                    found += [(f"{label}.{key}", a) for a in _shell_invocations(value)]
                elif value:
                    found += [(f"{label}.{key}", a) for a in _argv_invocations(value)]
            test = (service.get("healthcheck") or {}).get("test")
            if test:
                found += [(f"{label}.healthcheck", a) for a in _compose_test_invocations(test)]
    return found


def _k8s_invocations(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for doc in _load_yaml(path):
        for container in _containers(doc):
            label = f"{_rel(path)} {doc['kind']}/{doc['metadata']['name']} {container.get('name')}"
            argv = list(container.get("command") or []) + list(container.get("args") or [])
            found += [(f"{label}.command", a) for a in _argv_invocations(argv)]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                command = ((container.get(probe) or {}).get("exec") or {}).get("command")
                if command:
                    found += [(f"{label}.{probe}", a) for a in _argv_invocations(command)]
            for hook in ("postStart", "preStop"):
                command = (
                    ((container.get("lifecycle") or {}).get(hook) or {}).get("exec") or {}
                ).get("command")
                if command:
                    found += [(f"{label}.{hook}", a) for a in _argv_invocations(command)]
    return found


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: section -> [(key, value)], keys repeated as written."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{_rel(path)}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{_rel(path)}: not a key=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def _unit_value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def _systemd_invocations(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for key, value in _unit(path).get("Service", []):
        if key.startswith("Exec"):
            command = value.lstrip("@-:+!")
            args = _memworker_args(shlex.split(command))
            if args is not None:
                found.append((f"{_rel(path)} {key}", args))
    return found


def _procfile() -> dict[str, str]:
    entries = {}
    for raw in PROCFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        assert sep and name.strip(), f"Procfile: not a `name: command` line: {raw!r}"
        assert name.strip() not in entries, f"Procfile: duplicate process type {name!r}"
        entries[name.strip()] = command.strip()
    return entries


def _procfile_invocations() -> list[tuple[str, list[str]]]:
    return [
        (f"Procfile {name}", a)
        for name, cmd in _procfile().items()
        for a in _shell_invocations(cmd)
    ]


def _all_invocations() -> list[tuple[str, list[str]]]:
    found = _dockerfile_invocations()
    for path in sorted(SYSTEMD.glob("*.service")):
        found += _systemd_invocations(path)
    found += _procfile_invocations()
    if yaml is not None:
        for path in _yaml_files():
            if path.parent == K8S:
                found += _k8s_invocations(path)
            else:
                found += _compose_invocations(path)
    return found


def _params() -> list[Any]:
    try:
        found = _all_invocations()
    except Exception as exc:  # noqa: BLE001 - reported by the test, not at collection
        return [
            pytest.param(f"collecting command lines failed: {exc!r}", None, id="collection-error")
        ]
    return [
        pytest.param(label, args, id=f"{label}: memworker {' '.join(args)}")
        for label, args in found
    ]


# --------------------------------------------------------------------------- the CLI
class _ParseError(Exception):
    pass


def _raise(message: str) -> None:
    raise _ParseError(message)


def _strict_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The real parser, raising instead of exiting, and its subcommands."""
    parser = make_argument_parser()
    stack, commands = [parser], {}
    while stack:
        current = stack.pop()
        current.error = _raise  # type: ignore[method-assign]
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                if current is parser:
                    commands = dict(action.choices)
                stack.extend(action.choices.values())
    return parser, commands


def _command_name(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """The first positional token, skipping the global options and their values."""
    takes_value = {
        option
        for action in parser._actions
        if action.option_strings and action.nargs != 0
        for option in action.option_strings
    }
    i = 0
    while i < len(args):
        token = args[i]
        if token in takes_value:
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            return token
    return None


@pytest.mark.parametrize(("source", "args"), _params())
def test_memworker_command_line_parses(source: str, args: list[str] | None) -> None:
    if args is None:
        pytest.fail(source)
    parser, commands = _strict_parser()
    line = "memworker " + " ".join(args)
    command = _command_name(parser, args)
    assert command in commands, (
        f"{source}: `{line}` runs command {command!r}, which "
        f"`memworker.cli.make_argument_parser()` does not have (it has {sorted(commands)})"
    )
    try:
        parsed = parser.parse_args(args)
    except _ParseError as exc:
        pytest.fail(f"{source}: `{line}` does not parse: {exc}")
    assert parsed.command == command


def test_every_deployment_runs_the_expected_commands() -> None:
    """The extraction is not vacuous: each file contributes the lines it must."""
    found = {
        (label, (_command_name(make_argument_parser(), a) or "")) for label, a in _all_invocations()
    }
    expected = {
        (f"{_rel(DOCKERFILE)} CMD", "worker"),
        (f"{_rel(DOCKERFILE)} HEALTHCHECK", "check"),
        ("deploy/systemd/memworker-worker.service ExecStart", "worker"),
        ("deploy/systemd/memworker-valkey.service ExecStart", "server"),
        ("Procfile valkey", "server"),
        ("Procfile worker", "worker"),
    }
    if yaml is not None:
        worker = "deploy/kubernetes/worker.yaml Deployment/memworker-worker worker"
        expected |= {
            ("deploy/docker-compose.yml services.worker.command", "worker"),
            ("deploy/docker-compose.yml services.worker.healthcheck", "check"),
            (f"{worker}.command", "worker"),
            (f"{worker}.livenessProbe", "check"),
            (f"{worker}.readinessProbe", "check"),
        }
    assert expected <= found, f"missing: {sorted(expected - found)}"


def test_extraction_helpers() -> None:
    assert _shell_invocations("valkey-cli ping | grep -q PONG") == []
    assert _shell_invocations(
        "X=1 exec /opt/v/bin/memworker --url valkey://h:1/0 check && echo ok"
    ) == [["--url", "valkey://h:1/0", "check"]]
    assert _argv_invocations(["sh", "-c", "memworker status; memworker check"]) == [
        ["status"],
        ["check"],
    ]
    assert (
        _healthcheck_command('--interval=5s --retries=3 CMD ["memworker", "check"]')
        == '["memworker", "check"]'
    )


# --------------------------------------------------------------------------- Dockerfile
def _env_pairs(value: str) -> dict[str, str]:
    tokens = shlex.split(value)
    if len(tokens) == 2 and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: tokens[1]}
    return dict(t.split("=", 1) for t in tokens)


def test_dockerfile() -> None:
    instructions = _dockerfile_instructions()
    froms = [v for i, v in instructions if i == "FROM"]
    assert froms and froms[0].split()[0] == "python:3.11-slim"

    args = dict(v.split("=", 1) for i, v in instructions if i == "ARG" and "=" in v)
    assert args.get("TORCH_INDEX_URL") == TORCH_CPU_INDEX

    runs = [v for i, v in instructions if i == "RUN"]
    torch_at = next((n for n, r in enumerate(runs) if re.search(r"pip install .*torch==", r)), None)
    src_at = next(
        (n for n, r in enumerate(runs) if re.search(r"pip install .*/src\[[^\]]*onnx", r)), None
    )
    assert torch_at is not None, "no RUN pip install torch==..."
    assert src_at is not None, "no RUN pip install /src[onnx]"
    assert torch_at < src_at, "torch must be installed before memworker"
    torch_run = runs[torch_at]
    assert re.search(r"--index-url\s+\"?\$\{?TORCH_INDEX_URL\}?\"?", torch_run), torch_run
    pin = re.search(r"torch==([\w.+]+)", torch_run).group(1)
    dev = re.search(r'"MEMWORKER_TORCH",\s*"torch==([\w.+]+)"', (ROOT / "dev.py").read_text())
    if dev:
        assert pin == dev.group(1), "the image's torch pin differs from dev.py's"

    env: dict[str, str] = {}
    for i, v in instructions:
        if i == "ENV":
            env.update(_env_pairs(v))
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("CREWAI_TRACING_ENABLED") == "false"

    users = [v for i, v in instructions if i == "USER"]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0")

    hosts = {
        urlsplit(url).hostname
        for _, v in instructions
        for url in re.findall(r"https?://[^\s\"']+", v)
    }
    assert hosts <= {urlsplit(TORCH_CPU_INDEX).hostname}, f"hard-coded hosts: {hosts}"

    cmds = [v for i, v in instructions if i == "CMD"]
    assert _docker_command(cmds[-1]) == [["worker", "--processes", "1", "--threads", "8"]]
    checks = [_healthcheck_command(v) for i, v in instructions if i == "HEALTHCHECK"]
    assert checks and _docker_command(checks[-1]) == [["check"]]


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", ".memworker"} <= patterns


# --------------------------------------------------------------------------- YAML files
@needs_yaml
@pytest.mark.parametrize("path", _yaml_files(), ids=_rel)
def test_yaml_parses(path: Path) -> None:
    docs = _load_yaml(path)
    assert docs, f"{_rel(path)} is empty"
    if path.parent == K8S:
        for doc in docs:
            assert (
                doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name")
            ), doc


@needs_yaml
def test_compose() -> None:
    (doc,) = _load_yaml(COMPOSE)
    services = doc["services"]

    valkey = services["valkey"]
    assert valkey["image"] == "valkey/valkey-bundle:8.1"
    command = (
        valkey["command"] if isinstance(valkey["command"], list) else shlex.split(valkey["command"])
    )
    command = [str(c) for c in command]
    assert command[0] == "valkey-server", "the bundle loads its modules only for valkey-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert any(str(v).endswith(":/data") for v in valkey.get("volumes", []))
    assert "valkey-cli ping" in " ".join(valkey["healthcheck"]["test"])
    # A password, from the environment: compose refuses to start without it.
    secret = command[command.index("--requirepass") + 1]
    assert secret.startswith("${VALKEY_PASSWORD:?"), secret
    assert "REDISCLI_AUTH" in " ".join(valkey["healthcheck"]["test"])

    worker = services["worker"]
    build = worker["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert ((COMPOSE.parent / build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE
    url = _compose_env(worker)["VALKEY_URL"]
    settings = Settings.from_url(url)
    assert settings.password == "${VALKEY_PASSWORD}"
    assert urlsplit(url).scheme in ("valkey", "valkeys")
    assert settings.host in services, f"VALKEY_URL host {settings.host!r} is not a compose service"
    assert settings.port == 6379
    assert worker["deploy"]["replicas"] == 2
    assert worker["depends_on"]["valkey"]["condition"] == "service_healthy"
    assert _compose_test_invocations(worker["healthcheck"]["test"]) == [["check"]]


@needs_yaml
def test_kubernetes_worker() -> None:
    deployment, container = _worker_deployment()
    pod = _pod_spec(deployment)
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env["VALKEY_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("memworker-valkey", "url")
    for probe in ("livenessProbe", "readinessProbe"):
        assert _argv_invocations(container[probe]["exec"]["command"]) == [["check"]], probe
    assert pod["terminationGracePeriodSeconds"] >= 60
    requests = container["resources"]["requests"]
    assert "cpu" in requests and "memory" in requests
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"


def _secret_example() -> dict[str, str]:
    (secret,) = _k8s_find("Secret", K8S / "secret.example.yaml")
    assert secret["metadata"]["name"] == "memworker-valkey"
    values = dict(secret.get("stringData") or {})
    values.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
    return values


@needs_yaml
def test_kubernetes_secret_example() -> None:
    values = _secret_example()
    settings = Settings.from_url(values["url"])
    assert values["address"] == f"{settings.host}:{settings.port}"
    assert _is_placeholder(values["password"])
    assert settings.password is None or _is_placeholder(settings.password)


@needs_yaml
def test_kubernetes_valkey() -> None:
    path = K8S / "valkey.yaml"
    (workload,) = [d for d in _k8s_find("StatefulSet", path) + _k8s_find("Deployment", path)]
    (container,) = _containers(workload)
    assert container["image"].startswith("valkey/valkey-bundle:")
    assert "command" not in container, "use args: the bundle's entrypoint adds the modules"
    args = [str(a) for a in container["args"]]
    assert args[0] == "valkey-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] in ("everysec", "always")
    has_claim = bool(workload["spec"].get("volumeClaimTemplates")) or bool(
        _k8s_find("PersistentVolumeClaim", path)
    )
    assert has_claim, "Valkey's data needs a PersistentVolumeClaim"
    services = {s["metadata"]["name"] for s in _k8s_find("Service", path)}
    host = Settings.from_url(_secret_example()["url"]).host
    assert host in services, f"the secret's URL host {host!r} is not a Service of valkey.yaml"


@needs_yaml
def test_keda_scales_the_worker_on_its_queue() -> None:
    deployment, container = _worker_deployment()
    env = {e["name"]: e for e in container.get("env", [])}
    namespace = env.get("MEMWORKER_NAMESPACE", {}).get("value") or DEFAULT_NAMESPACE

    (scaled,) = _k8s_find("ScaledObject", K8S / "keda-scaledobject.yaml")
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == deployment["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]

    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
    meta = trigger["metadata"]
    assert meta["listName"] == f"{{{namespace}}}:dq:default"
    try:
        keys = importlib.import_module("memworker.queue.jobs").QueueKeys(namespace)
    except (ImportError, AttributeError):
        pass
    else:
        assert meta["listName"] == keys.q()
    assert int(meta["listLength"]) > 0

    secret = _secret_example()
    for option in ("addressFromEnv", "passwordFromEnv"):
        name = meta.get(option)
        if name is None:
            continue
        assert name in env, f"KEDA {option}={name!r} is not in the worker container's env"
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "memworker-valkey" and ref["key"] in secret
    settings = Settings.from_url(secret["url"])
    assert int(meta.get("databaseIndex", 0)) == settings.db
    if "addressFromEnv" in meta:
        ref = env[meta["addressFromEnv"]]["valueFrom"]["secretKeyRef"]
        assert secret[ref["key"]] == f"{settings.host}:{settings.port}"
    assert (meta.get("enableTLS", "false") == "true") == settings.tls


# --------------------------------------------------------------------------- systemd + Procfile
@pytest.mark.parametrize(
    ("unit_name", "command"),
    [("memworker-worker.service", "worker"), ("memworker-valkey.service", "server")],
)
def test_systemd_unit(unit_name: str, command: str) -> None:
    path = SYSTEMD / unit_name
    unit = _unit(path)
    service = dict(unit["Service"])
    assert service["EnvironmentFile"].lstrip("-") == "/etc/memworker/env"
    assert service["Restart"] == "always"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "60"
    assert service.get("User") not in (None, "", "root", "0")
    assert _unit_value(unit, "Install", "WantedBy")
    (exec_start,) = _systemd_invocations(path)
    assert _command_name(make_argument_parser(), exec_start[1]) == command


def test_procfile() -> None:
    entries = _procfile()
    assert entries["valkey"] == "memworker server"
    assert _shell_invocations(entries["worker"])[0][0] == "worker"


# --------------------------------------------------------------------------- secrets
_PLACEHOLDER = re.compile(
    r"change[-_]?me|replace[-_]?me|placeholder|your[-_]?password"
    r"|^<[^<>]+>$|^\$[({]?[A-Za-z_][A-Za-z0-9_]*[)}]?$|^\$\{[A-Za-z_][A-Za-z0-9_]*:?\?[^}]*\}$"
    r"|^\*{3,}$|^x{3,}$",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"\b(?:valkeys?|rediss?)://([^\s'\"@/]*)@")
_SECRET_NAME = re.compile(r"pass(word|wd)?$|secret$|token$|requirepass", re.IGNORECASE)


def _is_placeholder(value: str) -> bool:
    return value == "" or bool(_PLACEHOLDER.search(value))


def _text_leaks(text: str) -> list[str]:
    leaks = []
    for userinfo in _URL_USERINFO.findall(text):
        if ":" in userinfo and not _is_placeholder(userinfo.split(":", 1)[1]):
            leaks.append(f"URL password in {userinfo!r}")
    # `--requirepass X` on a command line, `requirepass X` in a valkey.conf.
    for value in re.findall(
        r"(?:--|^[ \t]*)requirepass[ \t=\"']+([^\s\"',\]]+)", text, re.MULTILINE
    ):
        if not _is_placeholder(value):
            leaks.append(f"requirepass {value!r}")
    for key, value in re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", text, re.MULTILINE):
        value = value.strip().strip("'\"")
        if _SECRET_NAME.search(key) and not _is_placeholder(value):
            leaks.append(f"{key}={value!r}")
    return leaks


def _yaml_leaks(node: Any, where: str = "") -> list[str]:
    leaks: list[str] = []
    if isinstance(node, dict):
        name = node.get("name")
        value = node.get("value")
        if (
            isinstance(name, str)
            and _SECRET_NAME.search(name)
            and isinstance(value, str)
            and not _is_placeholder(value)
        ):
            leaks.append(f"{where}: env {name}={value!r}")
        for key, value in node.items():
            if key == "data" and isinstance(value, dict) and node.get("kind") == "Secret":
                for k, v in value.items():
                    decoded = base64.b64decode(str(v)).decode(errors="replace")
                    leaks += [f"{where}.data.{k}: {leak}" for leak in _text_leaks(decoded)]
                    if _SECRET_NAME.search(k) and not _is_placeholder(decoded):
                        leaks.append(f"{where}.data.{k}")
            elif (
                isinstance(key, str)
                and _SECRET_NAME.search(key)
                and not key.endswith("FromEnv")
                and isinstance(value, (str, int))
                and not _is_placeholder(str(value))
            ):
                leaks.append(f"{where}.{key}={value!r}")
            else:
                leaks += _yaml_leaks(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if (
                item == "--requirepass"
                and i + 1 < len(node)
                and not _is_placeholder(str(node[i + 1]))
            ):
                leaks.append(f"{where}[{i + 1}]: --requirepass {node[i + 1]!r}")
            leaks += _yaml_leaks(item, f"{where}[{i}]")
    return leaks


def _deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file()) + [PROCFILE]


def test_no_plaintext_passwords() -> None:
    leaks = []
    for path in _deploy_files():
        text = path.read_text()
        leaks += [f"{_rel(path)}: {leak}" for leak in _text_leaks(text)]
        if yaml is not None and path.suffix in (".yml", ".yaml"):
            for doc in _load_yaml(path):
                leaks += [f"{_rel(path)}: {leak}" for leak in _yaml_leaks(doc)]
    assert not leaks, "plaintext passwords (use a placeholder such as CHANGE_ME):\n" + "\n".join(
        leaks
    )


def test_password_scan_catches_real_passwords() -> None:
    assert _text_leaks("VALKEY_URL=valkey://:hunter2@valkey:6379/0")
    assert _text_leaks("valkey-server --requirepass hunter2")
    assert _text_leaks("VALKEY_PASSWORD=hunter2")
    assert not _text_leaks("url: valkey://:CHANGE_ME@valkey:6379/0 and valkey://:<password>@h:1/0")
    assert not _text_leaks("--requirepass $(VALKEY_PASSWORD)")
    assert not _text_leaks("--requirepass ${VALKEY_PASSWORD:?required}")
    assert _text_leaks("--requirepass ${VALKEY_PASSWORD:-hunter2}")  # a default is a password
    if yaml is not None:
        assert _yaml_leaks({"stringData": {"password": "hunter2"}})
        assert _yaml_leaks({"env": [{"name": "VALKEY_PASSWORD", "value": "hunter2"}]})
        assert _yaml_leaks({"args": ["valkey-server", "--requirepass", "hunter2"]})
        assert not _yaml_leaks({"metadata": {"passwordFromEnv": "VALKEY_PASSWORD"}})
