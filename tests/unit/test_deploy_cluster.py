"""The Valkey Cluster deployment (``deploy/cluster/``) agrees with the code.

``deploy/cluster/docker-compose.yml`` runs six cluster-enabled valkey-bundle nodes with
the password from ``VALKEY_PASSWORD``, AOF and ``noeviction``; a one-shot
``cluster-init`` forms the cluster over exactly those six nodes with one replica per
primary, idempotently; the worker's command line parses with the real CLI and its
``VALKEY_URL`` with :meth:`Settings.from_url` as a cluster URL on database 0. The
Kubernetes notes name KEDA's ``redis-cluster`` scaler and the queue's list. Docker is
not needed: the files are only read. (``tests/unit/test_deploy.py`` also scans these
files: YAML syntax, every ``memworker`` command line, plaintext passwords.)
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from memworker.cli import make_argument_parser
from memworker.settings import DEFAULT_NAMESPACE, Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CLUSTER = DEPLOY / "cluster"
COMPOSE = CLUSTER / "docker-compose.yml"
CLUSTER_README = CLUSTER / "README.md"
DEPLOY_README = DEPLOY / "README.md"
IMAGE = "valkey/valkey-bundle:8.1"
NODE_COUNT = 6
# What ${VALKEY_PASSWORD:?...} must look like: required, no default.
_REQUIRED_PASSWORD = re.compile(r"^\$\{VALKEY_PASSWORD:\?[^}]*\}$")


# --------------------------------------------------------------------------- helpers
from test_deploy import _UniqueKeyLoader  # noqa: E402  (rejects duplicate YAML keys)


def _compose() -> dict[str, Any]:
    docs = [d for d in yaml.load_all(COMPOSE.read_text(), Loader=_UniqueKeyLoader) if d]
    assert len(docs) == 1, f"{COMPOSE} must hold one YAML document"
    doc: dict[str, Any] = docs[0]
    return doc


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _argv(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    at = argv.index(name)
    assert at + 1 < len(argv), f"{name} has no value in {argv}"
    return argv[at + 1]


def _nodes() -> dict[str, dict[str, Any]]:
    """The services that run valkey-server (the cluster's nodes)."""
    return {
        name: svc
        for name, svc in _services().items()
        if svc.get("command") and _argv(svc["command"])[0] == "valkey-server"
    }


def _compose_vars(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:?msg}``, ``${VAR:-default}`` and ``$$`` escapes."""
    pattern = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op and op.endswith("-"):
            return arg
        raise AssertionError(f"${{{name}}} is not set")

    return pattern.sub(sub, text)


def _strict_parse(args: list[str]) -> argparse.Namespace:
    """``args`` parsed by memworker's own parser, failing the test instead of exiting."""
    parser = make_argument_parser()
    stack = [parser]
    while stack:
        current = stack.pop()

        def error(message: str, _parser: argparse.ArgumentParser = current) -> None:
            pytest.fail(f"`memworker {' '.join(args)}` does not parse ({_parser.prog}): {message}")

        current.error = error  # type: ignore[method-assign,assignment]
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return parser.parse_args(args)


def _init_script(comments: bool = False) -> str:
    """cluster-init's ``sh -c`` script, without its comment lines unless ``comments``."""
    command = _argv(_services()["cluster-init"]["command"])
    assert command[0] in ("sh", "bash") and command[1] == "-c", command
    lines = command[2].splitlines()
    return "\n".join(line for line in lines if comments or not line.lstrip().startswith("#"))


# --------------------------------------------------------------------------- the nodes
def test_compose_parses_and_has_the_services() -> None:
    doc = _compose()
    services = doc["services"]
    assert {"cluster-init", "worker"} <= set(services)
    assert len(_nodes()) == NODE_COUNT, f"expected {NODE_COUNT} nodes, got {sorted(_nodes())}"
    # A project name of its own: its volumes never mix with deploy/docker-compose.yml's.
    assert doc.get("name") and doc["name"] != "memworker"


def test_nodes() -> None:
    for name, node in sorted(_nodes().items()):
        _check_node(name, node)


def _check_node(name: str, node: dict[str, Any]) -> None:
    assert node["image"] == IMAGE
    argv = _argv(node["command"])
    assert argv[0] == "valkey-server", "the bundle loads valkey-search only for valkey-server"
    assert _option(argv, "--cluster-enabled") == "yes"
    assert _option(argv, "--cluster-config-file") == "nodes.conf"
    assert _option(argv, "--cluster-node-timeout") == "5000"
    assert _option(argv, "--appendonly") == "yes"
    assert _option(argv, "--appendfsync") == "everysec"
    assert _option(argv, "--maxmemory-policy") == "noeviction"
    # The password comes from the environment, required, in both roles.
    for option in ("--requirepass", "--masterauth"):
        assert _REQUIRED_PASSWORD.match(_option(argv, option)), (option, _option(argv, option))
    assert _REQUIRED_PASSWORD.match(_env(node)["VALKEY_PASSWORD"])

    volumes = [str(v) for v in node.get("volumes") or []]
    (data,) = [v for v in volumes if v.endswith(":/data")]
    assert data.split(":")[0] in (_compose().get("volumes") or {}), f"{name}: not a named volume"

    test = " ".join(node["healthcheck"]["test"])
    assert "valkey-cli ping" in test and "REDISCLI_AUTH" in test

    for port in node.get("ports") or []:
        published = str(port if not isinstance(port, dict) else port.get("host_ip", ""))
        assert published.startswith("127.0.0.1:") or published == "127.0.0.1", (
            f"{name}: port {port!r} is published beyond loopback"
        )


def test_each_node_has_its_own_volume_and_fixed_address() -> None:
    doc = _compose()
    nodes = _nodes()
    volumes = {
        next(str(v) for v in n["volumes"] if str(v).endswith(":/data")).split(":")[0]
        for n in nodes.values()
    }
    assert len(volumes) == NODE_COUNT, "nodes share a data volume"

    (pool,) = doc["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    dynamic = ipaddress.ip_network(pool["ip_range"])
    assert dynamic.subnet_of(subnet)  # type: ignore[arg-type]
    addresses = set()
    for name, node in nodes.items():
        address = ipaddress.ip_address(node["networks"]["default"]["ipv4_address"])
        assert address in subnet, f"{name}: {address} is outside {subnet}"
        assert address not in dynamic, f"{name}: {address} may be handed to another container"
        addresses.add(address)
    assert len(addresses) == NODE_COUNT


# --------------------------------------------------------------------------- cluster-init
def test_cluster_init_creates_the_cluster_over_the_six_nodes() -> None:
    services = _services()
    init = services["cluster-init"]
    assert init["image"] == IMAGE
    assert str(init.get("restart", "no")) == "no", "a one-shot service must not restart"
    assert _REQUIRED_PASSWORD.match(_env(init)["VALKEY_PASSWORD"])

    listed = _env(init)["VALKEY_NODES"].split()
    assert len(listed) == len(set(listed)) == NODE_COUNT
    hosts = {entry.rsplit(":", 1)[0] for entry in listed}
    assert hosts == set(_nodes()), f"VALKEY_NODES {sorted(hosts)} != nodes {sorted(_nodes())}"
    assert {entry.rsplit(":", 1)[1] for entry in listed} == {"6379"}
    for host in hosts:
        assert init["depends_on"][host]["condition"] == "service_healthy"

    script = _init_script()
    creates = [line for line in script.splitlines() if "--cluster create" in line]
    assert len(creates) == 1, creates
    argv = shlex.split(creates[0])
    assert argv[0] == "valkey-cli"
    assert _option(argv, "--cluster-replicas") == "1"
    assert "--cluster-yes" in argv
    # The create runs over the addresses built from VALKEY_NODES, nothing else.
    assert argv[argv.index("create") + 1] == "$$addresses", argv
    assert argv.index("--cluster-replicas") == argv.index("create") + 2
    assert "for node in $$VALKEY_NODES" in script
    # The password through the environment, never on a command line.
    assert 'REDISCLI_AUTH="$$VALKEY_PASSWORD"' in script
    assert not re.search(r"(^|\s)-a\s", script)


def test_cluster_init_is_idempotent_and_waits_for_ok() -> None:
    script = _init_script()
    lines = script.splitlines()
    create_at = next(i for i, line in enumerate(lines) if "--cluster create" in line)
    known_at = next(i for i, line in enumerate(lines) if "cluster_known_nodes" in line)
    assert known_at < create_at, "the known-nodes check must come before the create"
    # The create sits in the branch taken when no node knows a peer.
    guard = "\n".join(lines[known_at:create_at])
    assert re.search(r"-gt 1", guard) and re.search(r"\belse\b", guard), guard
    assert "cluster_state:ok" in "\n".join(lines[create_at:])
    assert script.lstrip().startswith("set -e")


_STUB_VALKEY_CLI = r"""#!/bin/sh
# Records each call; CLUSTER INFO answers as a fresh node until --cluster create ran.
echo "$*" >> "$STUB_DIR/calls"
echo "${REDISCLI_AUTH:-}" >> "$STUB_DIR/auth"
case "$*" in
  *"--cluster create"*) touch "$STUB_DIR/formed" ;;
  *"cluster info"*)
    if [ -f "$STUB_DIR/formed" ]; then state=ok known=6; else state=fail known=1; fi
    printf 'cluster_state:%s\r\ncluster_known_nodes:%s\r\n' "$state" "$known" ;;
esac
"""

_STUB_GETENT = r"""#!/bin/sh
# getent hosts valkey-N -> 10.9.9.N
echo "10.9.9.${2##*-}      $2"
"""


def test_cluster_init_script_runs_once_and_then_only_checks(tmp_path: Path) -> None:
    """The script (after compose's ``$$`` unescaping) against a stub valkey-cli: the
    first run creates the cluster over the six resolved addresses, the second does not."""
    sh = shutil.which("sh")
    if sh is None or not all(shutil.which(tool) for tool in ("awk", "sed", "tr", "grep")):
        pytest.skip("needs sh, awk, sed, tr, grep")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("valkey-cli", _STUB_VALKEY_CLI), ("getent", _STUB_GETENT)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    script = tmp_path / "init.sh"
    script.write_text(_compose_vars(_init_script(comments=True), {}))
    assert subprocess.run([sh, "-n", str(script)], capture_output=True, text=True).returncode == 0

    init_env = _env(_services()["cluster-init"])
    env = {
        "PATH": f"{stubs}{os.pathsep}{os.environ.get('PATH', '')}",
        "STUB_DIR": str(tmp_path),
        "VALKEY_PASSWORD": "dummy-password",
        "VALKEY_NODES": init_env["VALKEY_NODES"],
    }
    calls = tmp_path / "calls"

    def run() -> list[str]:
        calls.write_text("")
        result = subprocess.run(
            [sh, str(script)], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return [c for c in calls.read_text().splitlines() if "--cluster create" in c]

    (create,) = run()
    hosts = [entry.split(":")[0] for entry in init_env["VALKEY_NODES"].split()]
    addresses = [f"10.9.9.{host.rsplit('-', 1)[1]}:6379" for host in hosts]
    assert create.split() == [
        *("--cluster", "create"), *addresses, *("--cluster-replicas", "1", "--cluster-yes")
    ]
    assert run() == [], "a formed cluster was created again"
    assert set((tmp_path / "auth").read_text().split()) == {"dummy-password"}


# --------------------------------------------------------------------------- the worker
def test_worker_command_line_parses() -> None:
    worker = _services()["worker"]
    argv = _argv(worker["command"])
    assert Path(argv[0]).name == "memworker"
    parsed = _strict_parse(argv[1:])
    assert parsed.command == "worker"
    assert (parsed.processes, parsed.threads) == (1, 8)

    check = worker["healthcheck"]["test"]
    assert check[0] == "CMD" and Path(check[1]).name == "memworker", check
    assert _strict_parse(list(check[2:])).command == "check"


def test_worker_build_and_depends_on_the_formed_cluster() -> None:
    worker = _services()["worker"]
    build = worker["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT, f"build context {context} is not the repository root"
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert worker["image"] == "memworker:latest"
    assert worker["depends_on"]["cluster-init"]["condition"] == "service_completed_successfully"
    assert int(worker["deploy"]["replicas"]) >= 1
    assert "--scale worker=" in COMPOSE.read_text()


def test_worker_url_is_a_cluster_url_on_database_0() -> None:
    worker = _services()["worker"]
    env = _env(worker)
    raw = env["VALKEY_URL"]
    assert "${VALKEY_PASSWORD}" in raw, "the URL's password must come from VALKEY_PASSWORD"
    url = _compose_vars(raw, {"VALKEY_PASSWORD": "dummy-password"})
    namespace = env.get("MEMWORKER_NAMESPACE") or DEFAULT_NAMESPACE
    settings = Settings.from_url(url, namespace=namespace)
    assert settings.cluster is True
    assert settings.db == 0
    assert settings.password == "dummy-password"
    assert settings.host in _nodes(), f"VALKEY_URL host {settings.host!r} is not a node"
    assert settings.port == 6379
    assert env.get("MEMWORKER_SEARCH") == "auto"


def test_compose_vars_helper() -> None:
    assert _compose_vars("a${X}b$$c", {"X": "1"}) == "a1b$c"
    assert _compose_vars("${X:?set X}", {"X": "1"}) == "1"
    assert _compose_vars("${Y:-d}", {}) == "d"
    with pytest.raises(AssertionError):
        _compose_vars("${X:?set X}", {})


# --------------------------------------------------------------------------- docs
def _queue_list(namespace: str = DEFAULT_NAMESPACE) -> str:
    try:
        from memworker.keys import QueueKeys
    except ImportError:  # pragma: no cover - the key layout module moved
        return "{" + namespace + "}:dq:default"
    return QueueKeys(namespace).q()


def test_kubernetes_notes_name_the_cluster_scaler_and_the_queue() -> None:
    text = DEPLOY_README.read_text()
    assert "## A Valkey Cluster" in text
    section = text.split("## A Valkey Cluster", 1)[1].split("\n## ", 1)[0]
    assert "redis-cluster" in section
    assert _queue_list() == "{memworker}:dq:default"
    assert _queue_list() in section
    assert "?cluster=yes" in section
    assert "cluster/README.md" in section
    snippet = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert snippet, "no KEDA trigger example"
    (trigger,) = yaml.safe_load(snippet.group(1))["triggers"]
    assert trigger["type"] == "redis-cluster"
    assert trigger["metadata"]["listName"] == _queue_list()
    assert "databaseIndex" not in trigger["metadata"]


def test_cluster_readme_covers_start_check_and_scale() -> None:
    text = CLUSTER_README.read_text()
    for needle in (
        "VALKEY_PASSWORD",
        "docker compose -f deploy/cluster/docker-compose.yml up",
        "--scale worker=",
        "memworker status",
        "memworker check",
        "?cluster=yes",
    ):
        assert needle in text, f"{CLUSTER_README.relative_to(ROOT)} does not mention {needle!r}"
