"""The metrics deployment agrees with the metrics the code exports.

``deploy/grafana/memworker.json`` (the dashboard), ``deploy/prometheus/prometheus.yml``,
the Grafana provisioning files, the ``prometheus`` and ``grafana`` services of
``deploy/docker-compose.yml``, the worker's metrics port (compose and Kubernetes) and
``deploy/kubernetes/keda-scaledobject-prometheus.yaml``: the dashboard queries only the
metrics memworker exports (:data:`METRIC_NAMES`), filters by the ``namespace`` variable
wherever the metric has that label, and builds its quantiles from ``_bucket`` series by
``le``; Prometheus scrapes the port the workers serve. With ``promtool`` on ``PATH``,
every PromQL expression (the dashboard's and KEDA's) must parse. Nothing runs: the files
are only read.

:data:`DASHBOARD` and :func:`dashboard_metric_names` are imported by the integration
test that scrapes a real worker.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML is in the dev environment
    yaml = None

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "memworker.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
GRAFANA_DATASOURCES = GRAFANA_PROVISIONING / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = GRAFANA_PROVISIONING / "dashboards" / "memworker.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
WORKER_YAML = K8S / "worker.yaml"
KEDA_REDIS = K8S / "keda-scaledobject.yaml"
KEDA_PROMETHEUS = K8S / "keda-scaledobject-prometheus.yaml"
DEPLOY_README = DEPLOY / "README.md"

#: The worker's metrics port in every deployment file.
METRICS_PORT = 9464
#: The Grafana data source's uid (provisioning) and the dashboard's default.
DATASOURCE_UID = "prometheus"
#: Where the compose file mounts the dashboard in the grafana container.
GRAFANA_DASHBOARD_PATH = "/var/lib/grafana/dashboards/memworker.json"

# --------------------------------------------------------------------------- the metrics
#: Counters, by their exposed name (``_total`` included).
COUNTERS = frozenset(
    {
        "memworker_jobs_total",
        "memworker_records_committed_total",
        "memworker_drain_timeouts_total",
    }
)
#: Histograms, by base name (exposed as ``_bucket``, ``_sum``, ``_count``).
HISTOGRAMS = frozenset(
    {
        "memworker_embed_batch_texts",
        "memworker_inference_seconds",
        "memworker_commit_seconds",
        "memworker_enqueue_to_searchable_seconds",
        "memworker_job_attempts",
        "memworker_enqueue_seconds",
        "memworker_drain_wait_seconds",
    }
)
#: The queue's gauges, read from Valkey at scrape time: every worker replica reports
#: the same value.
VALKEY_GAUGES = frozenset(
    {
        "memworker_valkey_up",
        "memworker_queue_depth",
        "memworker_in_flight",
        "memworker_delayed",
        "memworker_dead_letters",
        "memworker_pending",
        "memworker_live_workers",
    }
)
GAUGES = VALKEY_GAUGES | {"memworker_model_info"}
#: Every metric memworker exports (workers and producers).
METRIC_NAMES = COUNTERS | HISTOGRAMS | GAUGES
#: Metrics without a ``namespace`` label.
NO_NAMESPACE_METRICS = frozenset(
    {"memworker_embed_batch_texts", "memworker_inference_seconds", "memworker_model_info"}
)
#: Producer-side metrics: in the agents' processes, absent from a worker's scrape.
PRODUCER_METRICS = frozenset(
    {
        "memworker_enqueue_seconds",
        "memworker_drain_wait_seconds",
        "memworker_drain_timeouts_total",
    }
)
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_METRIC = re.compile(r"memworker_[a-z_]+")
# A metric name and the label matchers right after it, if any.
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(memworker_[a-z_]+)(?![A-Za-z0-9_:])(\s*\{[^}]*\})?")
_NAMESPACE_MATCHER = re.compile(r'\bnamespace\s*=~?\s*"\$(?:namespace|\{namespace\})"')


def base_metric_name(name: str) -> str:
    """``name`` as listed in :data:`METRIC_NAMES`: a histogram's ``_bucket``/``_sum``/
    ``_count`` series -> the histogram; anything else unchanged (an unknown name stays
    unknown)."""
    if name in METRIC_NAMES:
        return name
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- the dashboard
@cache
def _dashboard_text() -> str:
    return DASHBOARD.read_text()


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON (a fresh copy)."""
    doc: dict[str, Any] = json.loads(_dashboard_text())
    return doc


def _panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    found = []
    for panel in doc.get("panels") or []:
        found.append(panel)
        found += list(panel.get("panels") or [])
    return found


def _query_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (rows only lay them out)."""
    return [p for p in _panels(doc) if p.get("type") != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(panel title, PromQL expr)`` for every target of every panel."""
    return [
        (str(panel.get("title")), str(target["expr"]))
        for panel in _query_panels(load_dashboard())
        for target in panel.get("targets") or []
        if target.get("expr")
    ]


def _variables(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in (doc.get("templating") or {}).get("list") or []}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return str(query or variable.get("definition") or "")


def _variable_queries() -> list[str]:
    return [
        _variable_query(v)
        for v in _variables(load_dashboard()).values()
        if v.get("type") == "query"
    ]


def dashboard_metric_names(*, producer: bool = True) -> set[str]:
    """The metrics the dashboard queries (panels and variables), by the names of
    :data:`METRIC_NAMES`: ``memworker_jobs_total`` stays itself,
    ``memworker_commit_seconds_bucket`` -> ``memworker_commit_seconds``.

    ``producer=False`` leaves out :data:`PRODUCER_METRICS` (which a worker's scrape
    does not have: they live in the agents' processes)."""
    exprs = [expr for _, expr in dashboard_exprs()] + _variable_queries()
    names = {base_metric_name(m) for expr in exprs for m in _METRIC.findall(expr)}
    return names if producer else names - PRODUCER_METRICS


def _exprs_of(metric: str) -> list[str]:
    return [
        expr
        for _, expr in dashboard_exprs()
        if any(base_metric_name(m) == metric for m in _METRIC.findall(expr))
    ]


def test_dashboard_parses_and_lays_out_its_panels() -> None:
    doc = load_dashboard()
    assert doc["uid"] == "memworker"
    assert doc["title"]
    assert 36 <= int(doc["schemaVersion"]) <= 41, doc["schemaVersion"]
    panels = _panels(doc)
    assert len(_query_panels(doc)) >= 12
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']!r} overflows the 24 columns"
        if panel.get("type") == "row" and panel.get("collapsed"):
            continue
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_panel_queries_the_dashboards_data_source() -> None:
    doc = load_dashboard()
    for panel in _query_panels(doc):
        title = panel.get("title")
        targets = panel.get("targets") or []
        assert any(str(t.get("expr") or "").strip() for t in targets), f"{title!r}: no expr"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{title!r}: refIds repeat"
        assert panel.get("description"), f"{title!r}: no description"
        for where in [panel, *targets]:
            source = where.get("datasource") or {}
            assert source.get("type") == "prometheus", f"{title!r}: {source}"
            assert source.get("uid") == "${datasource}", f"{title!r}: {source}"


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_data_source_variable_defaults_to_the_provisioned_one() -> None:
    variable = _variables(load_dashboard())["datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == DATASOURCE_UID

    (provisioning,) = _load_yaml(GRAFANA_DATASOURCES)
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"
    assert source.get("access", "proxy") == "proxy"
    # $__rate_interval is four scrape intervals: tell Grafana the scrape interval.
    assert source["jsonData"]["timeInterval"] == _prometheus_config()["global"]["scrape_interval"]


def test_namespace_variable() -> None:
    variable = _variables(load_dashboard())["namespace"]
    assert variable["type"] == "query"
    assert _variable_query(variable) == "label_values(memworker_queue_depth, namespace)"
    assert variable["datasource"]["uid"] == "${datasource}"
    if variable.get("includeAll"):
        # The panels match with =~: "All" must be a regex matching every namespace.
        assert variable.get("allValue") == ".*"


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = [expr for _, expr in dashboard_exprs()] + _variable_queries()
    for expr in exprs:
        for name in _METRIC.findall(expr):
            base = base_metric_name(name)
            assert base in METRIC_NAMES, f"{name} (in {expr!r}) is not a memworker metric"
            if base in HISTOGRAMS:
                assert name != base, f"{name}: a histogram is queried by _bucket/_sum/_count"
    assert dashboard_metric_names() <= METRIC_NAMES
    assert not dashboard_metric_names(producer=False) & PRODUCER_METRICS


def test_dashboard_metric_names_helper() -> None:
    names = dashboard_metric_names()
    assert "memworker_jobs_total" in names
    assert "memworker_commit_seconds" in names
    assert "memworker_commit_seconds_bucket" not in names
    assert "memworker_drain_wait_seconds" in names
    assert "memworker_drain_wait_seconds" not in dashboard_metric_names(producer=False)
    assert base_metric_name("memworker_embed_batch_texts_sum") == "memworker_embed_batch_texts"
    assert base_metric_name("memworker_jobs_total") == "memworker_jobs_total"
    assert base_metric_name("memworker_queue_depth_count") == "memworker_queue_depth_count"


def test_dashboard_has_the_expected_panels() -> None:
    names = dashboard_metric_names()
    wanted = {
        "memworker_jobs_total",
        "memworker_records_committed_total",
        "memworker_enqueue_to_searchable_seconds",
        "memworker_embed_batch_texts",
        "memworker_queue_depth",
        "memworker_in_flight",
        "memworker_delayed",
        "memworker_dead_letters",
        "memworker_commit_seconds",
        "memworker_inference_seconds",
        "memworker_live_workers",
        "memworker_drain_wait_seconds",
    }
    assert wanted <= names, f"not on the dashboard: {sorted(wanted - names)}"

    def quantiles(metric: str) -> set[float]:
        return {
            float(q)
            for expr in _exprs_of(metric)
            for q in re.findall(r"histogram_quantile\(\s*([0-9.]+)", expr)
        }

    assert {0.5, 0.99} <= quantiles("memworker_enqueue_to_searchable_seconds")
    assert 0.99 in quantiles("memworker_commit_seconds")
    assert 0.5 in quantiles("memworker_inference_seconds")
    assert 0.5 in quantiles("memworker_embed_batch_texts")
    assert 0.99 in quantiles("memworker_drain_wait_seconds")
    # Batch fill: the average is rate(_sum) / rate(_count).
    average = re.compile(r"embed_batch_texts_sum.*\)\s*/\s*.*embed_batch_texts_count")
    assert any(average.search(e) for e in _exprs_of("memworker_embed_batch_texts"))
    # Throughput: committed jobs; failures: every other outcome.
    jobs = " ".join(_exprs_of("memworker_jobs_total"))
    for outcome in ("committed", "retried", "failed", "poisoned"):
        assert outcome in jobs, f"outcome {outcome!r} is not on the dashboard"
    # The producer-side panels say where their data comes from.
    for panel in _query_panels(load_dashboard()):
        exprs = " ".join(t.get("expr", "") for t in panel.get("targets") or [])
        if {base_metric_name(m) for m in _METRIC.findall(exprs)} & PRODUCER_METRICS:
            assert re.search(r"producer", panel["description"], re.I), panel["title"]
            assert "scrape" in panel["description"], panel["title"]


def test_quantiles_come_from_buckets_by_le() -> None:
    for title, expr in dashboard_exprs():
        if "histogram_quantile" in expr:
            assert "_bucket" in expr, f"{title!r}: {expr}"
            assert re.search(r"\bby\s*\([^)]*\ble\b[^)]*\)", expr), f"{title!r}: not by le: {expr}"
            for q in re.findall(r"histogram_quantile\(\s*([^,]+),", expr):
                assert 0 < float(q) < 1, f"{title!r}: quantile {q}"
        if "_bucket" in expr:
            assert "histogram_quantile" in expr, f"{title!r}: _bucket outside a quantile"


def test_rates_are_taken_of_counters_only() -> None:
    for title, expr in dashboard_exprs():
        for name in re.findall(r"\b(?:rate|irate|increase)\(\s*(memworker_[a-z_]+)", expr):
            assert name in COUNTERS or name.endswith(_HISTOGRAM_SUFFIXES), (
                f"{title!r}: rate of the gauge {name}"
            )
            assert "$__rate_interval" in expr or re.search(r"\[\d+[smh]\]", expr), expr


def test_every_selector_filters_by_the_namespace_variable() -> None:
    for title, expr in dashboard_exprs():
        selectors = _SELECTOR.findall(expr)
        assert selectors, f"{title!r}: no memworker metric in {expr!r}"
        for name, matchers in selectors:
            if base_metric_name(name) in NO_NAMESPACE_METRICS:
                assert "namespace" not in matchers, (
                    f"{title!r}: {name} has no namespace label, the filter empties it"
                )
            else:
                assert _NAMESPACE_MATCHER.search(matchers), (
                    f'{title!r}: {name} is not filtered by namespace=~"$namespace" in {expr!r}'
                )


def test_valkey_gauges_are_not_summed_over_replicas() -> None:
    """Every worker replica reports the same queue gauges: a sum counts them N times."""
    for title, expr in dashboard_exprs():
        names = {base_metric_name(m) for m in _METRIC.findall(expr)}
        if names & VALKEY_GAUGES:
            assert not re.search(r"\bsum\b", expr), f"{title!r}: {expr}"


# --------------------------------------------------------------------------- promtool
def _promql_for_promtool(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by what they expand to."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{?namespace\}?", ".*", expr)
    assert "$" not in expr, f"an unexpanded variable in {expr!r}"
    return expr


def _keda_queries() -> list[str]:
    """The query of the prometheus ScaledObject and those of its commented alternatives."""
    active = [t["metadata"]["query"] for t in _keda_prometheus()["spec"]["triggers"]]
    commented = re.findall(r"^\s*#\s*query:\s*(.+?)\s*$", KEDA_PROMETHEUS.read_text(), re.M)
    return active + commented


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool is not on PATH (it comes with Prometheus, e.g. the Debian package "
            "`prometheus`): the PromQL expressions were not parsed"
        )
    return promtool


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = _promtool()
    exprs = [_promql_for_promtool(e) for _, e in dashboard_exprs()] + _keda_queries()
    rules = {
        "groups": [
            {
                "name": "memworker-deploy-check",
                "rules": [
                    {"record": f"memworker_deploy_check:expr_{i}", "expr": e}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules, indent=2))  # JSON is YAML
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool() -> None:
    promtool = _promtool()
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Prometheus
def _load_yaml(path: Path) -> list[Any]:
    assert yaml is not None
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _prometheus_config() -> dict[str, Any]:
    (doc,) = _load_yaml(PROMETHEUS_CONFIG)
    config: dict[str, Any] = doc
    return config


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_prometheus_scrapes_every_worker_on_the_metrics_port() -> None:
    config = _prometheus_config()
    assert config["global"]["scrape_interval"] == "15s"
    jobs = config["scrape_configs"]
    names = [job["job_name"] for job in jobs]
    assert len(names) == len(set(names))
    services = _compose_services()
    worker_jobs = []
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        hosts = []
        for sd in job.get("dns_sd_configs") or []:
            # Type A with a port: one target per replica's address.
            assert sd.get("type", "SRV") == "A", sd
            assert int(sd["port"]) == METRICS_PORT, sd
            hosts += list(sd["names"])
        for static in job.get("static_configs") or []:
            for target in static["targets"]:
                host, _, port = str(target).rpartition(":")
                assert int(port) == METRICS_PORT, target
                hosts.append(host)
        for host in hosts:
            assert host in services, f"{job['job_name']}: {host!r} is not a compose service"
        if "worker" in hosts:
            worker_jobs.append(job)
    (job,) = worker_jobs
    # Not a static target: `--scale worker=N` must be followed.
    assert any("worker" in sd["names"] for sd in job["dns_sd_configs"])


# --------------------------------------------------------------------------- compose
def _compose_services() -> dict[str, dict[str, Any]]:
    (doc,) = _load_yaml(COMPOSE)
    services: dict[str, dict[str, Any]] = doc["services"]
    return services


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (source, mode) of a service's short-syntax volumes."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mode = "ro" if volume.get("read_only") else "rw"
            found[volume["target"]] = (volume["source"], mode)
            continue
        parts = str(volume).split(":")
        source, target = parts[0], parts[1]
        found[target] = (source, parts[2] if len(parts) > 2 else "rw")
    return found


def _assert_loopback_ports(name: str, service: dict[str, Any]) -> None:
    ports = service.get("ports") or []
    assert ports, f"{name}: no published port"
    for port in ports:
        host_ip = port.get("host_ip", "") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"{name}: port {port!r} is published beyond loopback"
        if not isinstance(port, dict):
            assert str(port).count(":") == 2, f"{name}: port {port!r} has no host address"


def _worker_metrics_port(argv: list[str], env: dict[str, str]) -> int | None:
    """The port a ``memworker worker`` command line with ``env`` serves metrics on, by
    memworker's own parser and settings."""
    from memworker.cli import make_argument_parser
    from memworker.worker_settings import read_metrics_port

    assert Path(argv[0]).name == "memworker", argv
    args = make_argument_parser().parse_args(argv[1:])
    assert args.command == "worker"
    return read_metrics_port(args.metrics_port, env)


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_compose_worker_serves_metrics_inside_the_network_only() -> None:
    worker = _compose_services()["worker"]
    port = _worker_metrics_port(_argv(worker["command"]), _compose_env(worker))
    assert port == METRICS_PORT
    # Replicas: a published host port would clash; Prometheus reaches them by DNS.
    assert not worker.get("ports"), "the worker's metrics port must not be published"


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_compose_prometheus() -> None:
    services = _compose_services()
    prometheus = services["prometheus"]
    image = prometheus["image"]
    assert image.startswith("prom/prometheus:v") and not image.endswith(":latest"), image
    _assert_loopback_ports("prometheus", prometheus)
    argv = _argv(prometheus.get("command"))
    config = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--config.file=")),
        "/etc/prometheus/prometheus.yml",  # the image's default
    )
    source, mode = _mounts(prometheus)[config]
    assert (COMPOSE.parent / source).resolve() == PROMETHEUS_CONFIG
    assert mode == "ro"


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_compose_grafana() -> None:
    services = _compose_services()
    grafana = services["grafana"]
    image = grafana["image"]
    assert image.startswith("grafana/grafana:") and not image.endswith(":latest"), image
    _assert_loopback_ports("grafana", grafana)
    env = _compose_env(grafana)
    # The admin password is required from the environment, like VALKEY_PASSWORD.
    assert re.fullmatch(
        r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env.get("GF_SECURITY_ADMIN_PASSWORD", "")
    ), env.get("GF_SECURITY_ADMIN_PASSWORD")
    if env.get("GF_AUTH_ANONYMOUS_ENABLED", "false").lower() == "true":
        assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"

    mounts = _mounts(grafana)
    source, mode = mounts["/etc/grafana/provisioning"]
    assert (COMPOSE.parent / source).resolve() == GRAFANA_PROVISIONING and mode == "ro"
    source, mode = mounts[GRAFANA_DASHBOARD_PATH]
    assert (COMPOSE.parent / source).resolve() == DASHBOARD and mode == "ro"

    (provisioning,) = _load_yaml(GRAFANA_DASHBOARDS)
    (provider,) = provisioning["providers"]
    assert provider.get("type", "file") == "file"
    path = provider["options"]["path"].rstrip("/")
    assert GRAFANA_DASHBOARD_PATH in (path, f"{path}/{DASHBOARD.name}"), path
    # The data source's host is the compose service.
    (datasources,) = _load_yaml(GRAFANA_DATASOURCES)
    (source_config,) = datasources["datasources"]
    assert urlsplit(source_config["url"]).hostname in services
    assert urlsplit(source_config["url"]).port == 9090


# --------------------------------------------------------------------------- Kubernetes
def _k8s_doc(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _load_yaml(path) if d.get("kind") == kind]
    found: dict[str, Any] = doc
    return found


def _keda_prometheus() -> dict[str, Any]:
    return _k8s_doc(KEDA_PROMETHEUS, "ScaledObject")


def _worker_container() -> dict[str, Any]:
    deployment = _k8s_doc(WORKER_YAML, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "worker"]
    found: dict[str, Any] = container
    return found


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_kubernetes_worker_serves_metrics() -> None:
    container = _worker_container()
    ports = {p.get("name"): p for p in container.get("ports") or []}
    assert ports["metrics"]["containerPort"] == METRICS_PORT
    argv = _argv(container.get("command")) + _argv(container.get("args"))
    assert _worker_metrics_port(argv, _container_env(container)) == METRICS_PORT


@pytest.mark.skipif(yaml is None, reason="PyYAML is not installed")
def test_keda_prometheus_scaledobject() -> None:
    redis = _k8s_doc(KEDA_REDIS, "ScaledObject")
    scaled = _keda_prometheus()
    assert scaled["spec"]["scaleTargetRef"] == redis["spec"]["scaleTargetRef"]
    deployment = _k8s_doc(WORKER_YAML, "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # Same name: applying one replaces the other (one ScaledObject per Deployment).
    assert scaled["metadata"]["name"] == redis["metadata"]["name"]
    assert "only one" in KEDA_PROMETHEUS.read_text().lower() or "ONE of the two" in (
        KEDA_PROMETHEUS.read_text()
    )
    # The gauges come from the workers' own /metrics: never scale to zero.
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]

    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert urlsplit(meta["serverAddress"]).scheme in ("http", "https")
    assert float(meta["threshold"]) > 0
    query = meta["query"]
    assert "memworker_queue_depth" in query
    assert not re.search(r"\bsum\b", query), "every replica reports the queue depth: use max"
    namespace = _container_env(_worker_container()).get("MEMWORKER_NAMESPACE", "memworker")
    assert re.search(rf'namespace\s*=\s*"{re.escape(namespace)}"', query), query
    for q in _keda_queries():
        for name in _METRIC.findall(q):
            assert base_metric_name(name) in METRIC_NAMES, name


# --------------------------------------------------------------------------- docs
def test_readme_describes_metrics_and_dashboards() -> None:
    text = DEPLOY_README.read_text()
    table = text.split("\n## ", 1)[0]
    for row in ("`grafana/`", "`prometheus/`", "keda-scaledobject-prometheus.yaml"):
        assert row in table, f"the README's table of files lacks {row}"
    assert "## Metrics and dashboards" in text
    section = text.split("## Metrics and dashboards", 1)[1].split("\n## ", 1)[0]
    for needle in ("GRAFANA_ADMIN_PASSWORD", "9464", "--metrics-port", "MEMWORKER_METRICS_PORT"):
        assert needle in section, f"the metrics section does not mention {needle!r}"
