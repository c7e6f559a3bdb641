"""The Helm chart renders and validates offline, and its dashboard and alerts query real metrics.

Runs deploy/helm/check.py (the `make helm-check` script) for each values file, then checks that
every metric the Grafana dashboard and the PrometheusRule name is one the services export, and
that every key of the chart's values files carries a comment.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.utils import floatToGoString
from voice_runtime import metrics

from .metric_defs import all_defined_metrics, process_series, series, stage_labels

REPO = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = REPO / "deploy" / "helm" / "check.py"
CHART = REPO / "deploy" / "helm" / "voice-platform"
DASHBOARD = CHART / "dashboards" / "voice-platform.json"

# What the services export, from the metric objects in the code (voice_runtime.metrics and each service's own)
# and prometheus_client's process collector: a metric renamed, retyped or re-bucketed in code without the
# dashboard and alert rules following fails these tests.
DEFINED = {m._name: m for m in all_defined_metrics()}
KNOWN_SERIES = set().union(*(series(m) for m in DEFINED.values())) | process_series()
GAUGES = {name for name, m in DEFINED.items() if m._type == "gauge"}
STAGES = stage_labels()
VOICE_TO_VOICE = "voice_to_voice"  # the stage the latency objective is about
# the bucket bounds of the turn-latency histogram as Prometheus writes them in `le`
STAGE_BUCKETS = {floatToGoString(b) for b in metrics.STAGE_SECONDS._upper_bounds}

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
}


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_check", CHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["helm_check"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return _load_check()


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels removed)."""
    label_values = re.fullmatch(r"\s*label_values\((.*)\)\s*", expr, re.S)
    if label_values:  # Grafana variable query: label_values([selector,] label)
        args = label_values.group(1)
        if "," not in args:
            return set()
        expr = args.rsplit(",", 1)[0]
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "{}", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "[]", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    s = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", s)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        following = s[match.end() :].lstrip()
        if following.startswith("("):  # function or aggregation
            continue
        if match.group(0) in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def uncommented_keys(text: str) -> list[str]:
    """Keys of a YAML file with no comment on their own line or on the line right above."""
    missing = []
    previous_is_comment = False
    block_indent: int | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:  # inside a | or > block scalar
            if stripped and indent <= block_indent:
                block_indent = None
            else:
                continue
        if not stripped:
            previous_is_comment = False
            continue
        if stripped.startswith("#"):
            previous_is_comment = True
            continue
        key = re.match(r"^(\s*)(?:-\s+)?([^\s#'\"{\[-][^:#]*?|\"[^\"]+\"|'[^']+'):(\s|$)", line)
        if key and not previous_is_comment and not re.search(r"\s#\s", line):
            missing.append(f"line {number}: {key.group(2)}")
        if key and re.search(r":\s*[|>][-+]?\s*$", line):
            block_indent = indent
        previous_is_comment = False
    return missing


@pytest.mark.unit
def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) (rate(voice_turn_stage_seconds_bucket"
        '{stage="voice_to_voice", namespace=~"$namespace"}[$__rate_interval]))) > 1.5 '
        "and on (service) voice_active_calls offset 5m"
    )
    assert metric_names(expr) == {"voice_turn_stage_seconds_bucket", "voice_active_calls"}
    assert metric_names('label_values(process_resident_memory_bytes{namespace=~"$ns"}, service)') == {
        "process_resident_memory_bytes"
    }
    assert metric_names("label_values(namespace)") == set()


@pytest.mark.unit
def test_dashboard_queries_name_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert queries, "the dashboard has no queries"
    used = set().union(*(metric_names(q) for q in queries))
    assert used - KNOWN_SERIES == set(), f"unknown metrics in the dashboard: {used - KNOWN_SERIES}"
    # what an SRE opens it for
    joined = "\n".join(queries)
    stage_bucket = re.escape(f"{metrics.STAGE_SECONDS._name}_bucket")
    for quantile in ("0.5", "0.95", "0.99"):
        panel = rf"histogram_quantile\({quantile}, sum by \(le\) \(rate\({stage_bucket}\{{"
        assert re.search(panel + f'stage="{VOICE_TO_VOICE}"', joined), f"no voice-to-voice p{quantile} panel"
    shown = [metrics.ACTIVE_CALLS, metrics.CONSUMER_PENDING, metrics.DEAD_LETTERS, metrics.ERRORS, metrics.AUDIO_FRAMES]
    for metric in shown:
        assert series(metric) & used, f"no panel shows {metric._name}"
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert name in used and name in KNOWN_SERIES, f"no panel shows {name}"
    # a bucket bound may be a Grafana variable (the objective picker): each value it offers must be a bound
    choices = {
        var["name"]: {v.strip() for v in var["query"].split(",")} | {o["value"] for o in var.get("options", [])}
        for var in dashboard.get("templating", {}).get("list", [])
        if var.get("type") == "custom"
    }
    les: set[str] = set()
    for le in re.findall(r'le="([^"]+)"', joined):
        variable = re.fullmatch(r"\$\{?(\w+)\}?", le)
        les |= choices[variable.group(1)] if variable else {le}
    assert les and les <= STAGE_BUCKETS, f"bucket bounds the histogram does not have: {les - STAGE_BUCKETS}"
    stages = set(re.findall(r'stage=~?"([^"]+)"', joined))
    named = {s for group in stages for s in group.split("|")}
    assert named <= STAGES, f"unknown stages: {named - STAGES}"


@pytest.mark.unit
def test_every_values_key_is_commented() -> None:
    for path in (CHART / "values.yaml", CHART / "values-production.yaml"):
        assert uncommented_keys(path.read_text()) == [], f"uncommented keys in {path.name}"


@pytest.mark.unit
def test_uncommented_key_detection() -> None:
    text = "# ok\na: 1\nb: 2\nc: 3  # inline\nlist:\n  # item\n  - name: x\n    value: y\n"
    assert uncommented_keys(text) == ["line 3: b", "line 5: list", "line 8: value"]


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["default", "production"])
def test_chart_lints_renders_and_validates(check: ModuleType, scenario: str) -> None:
    result = check.check_scenario(check.scenarios()[scenario])
    assert result.problems == []
    kinds = {doc["kind"] for _, doc in result.documents}
    assert {"Deployment", "Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap"} <= kinds
    deployments = [doc for _, doc in result.documents if doc["kind"] == "Deployment"]
    assert len(deployments) == 7
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"][:2] == ["python", "-m"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["securityContext"]["runAsNonRoot"] is True
        env = {e["name"] for e in container["env"]}
        assert {"NATS_URL", "HTTP_HOST", "HTTP_PORT", "SHUTDOWN_GRACE_S"} <= env
    if scenario == "production":
        assert {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} <= kinds
        sip = [
            doc for _, doc in result.documents if doc["kind"] == "Service" and doc["spec"].get("type") == "LoadBalancer"
        ]
        ports = {(p["name"], p["protocol"]) for p in sip[0]["spec"]["ports"]}
        assert {("sip", "UDP"), ("sip-tcp", "TCP"), ("rtp-0", "UDP")} <= ports


@pytest.mark.integration
def test_chart_renders_with_external_nats(check: ModuleType) -> None:
    result = check.check_scenario(check.scenarios()["external-nats"])
    assert result.problems == []
    urls = {
        e["value"]
        for _, doc in result.documents
        if doc["kind"] == "Deployment"
        for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "NATS_URL"
    }
    assert urls == {"nats://nats.messaging.svc:4222"}


@pytest.mark.integration
def test_alert_rules_query_exported_metrics(check: ModuleType) -> None:
    manifests = check.render(check.scenarios()["production"].values)
    rules = [
        rule
        for _, doc in check.documents(manifests)
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    alerts = {rule["alert"] for rule in rules}
    assert {
        "VoiceToVoiceLatencyBudgetFastBurn",
        "VoiceToVoiceP95AboveObjective",
        "VoiceErrorsHigh",
        "VoiceConsumerLag",
        "VoiceDeadLetters",
    } <= alerts
    used = set().union(*(metric_names(rule["expr"]) for rule in rules))
    assert used - KNOWN_SERIES == set(), f"unknown metrics in alert rules: {used - KNOWN_SERIES}"
    # the latency objective must be an exposed bucket bound, or the burn-rate alerts never fire
    les = {le for rule in rules for le in re.findall(r'le="([^"]+)"', rule["expr"])}
    assert les and les <= STAGE_BUCKETS, f"bucket bounds the histogram does not have: {les - STAGE_BUCKETS}"
    stages = {s for rule in rules for group in re.findall(r'stage=~?"([^"]+)"', rule["expr"]) for s in group.split("|")}
    assert VOICE_TO_VOICE in stages and stages <= STAGES, f"unknown stages: {stages - STAGES}"


@pytest.mark.integration
def test_autoscaling_metrics_are_exported(check: ModuleType) -> None:
    """The custom metrics the production HPAs scale on (through prometheus-adapter) are gauges the services
    export."""
    docs = [doc for _, doc in check.documents(check.render(check.scenarios()["production"].values))]
    named = {
        spec[spec["type"][0].lower() + spec["type"][1:]]["metric"]["name"]
        for doc in docs
        if doc["kind"] == "HorizontalPodAutoscaler"
        for spec in doc["spec"]["metrics"]
        if spec["type"] in ("Pods", "Object", "External")
    }
    assert named, "no HPA scales on a custom metric"
    assert named <= GAUGES, f"HPAs scale on metrics no service exports as a gauge: {named - GAUGES}"


@pytest.mark.unit
def test_known_metrics_come_from_the_code() -> None:
    """The sets the checks above compare against are read from the metric objects (the shared ones and each
    service's own), the process collector and the services' code, not written out here."""
    from voice_control_api.middleware import REQUESTS
    from voice_media.service import TURNS

    for metric in (metrics.STAGE_SECONDS, metrics.ACTIVE_CALLS, metrics.DEAD_LETTERS, TURNS, REQUESTS):
        assert DEFINED[metric._name] is metric and series(metric) <= KNOWN_SERIES
    stage = metrics.STAGE_SECONDS._name
    assert {f"{stage}_bucket", f"{stage}_count"} <= KNOWN_SERIES and f"{stage}_total" not in KNOWN_SERIES
    assert "process_cpu_seconds_total" in KNOWN_SERIES and metrics.ACTIVE_CALLS._name in GAUGES
    assert VOICE_TO_VOICE in STAGES and "llm_first_sentence" in STAGES
    assert {floatToGoString(b) for b in metrics.LATENCY_BUCKETS} | {"+Inf"} == STAGE_BUCKETS


@pytest.mark.integration
def test_broken_manifest_is_reported(check: ModuleType) -> None:
    """Strict validation is on: an unknown field in a probe fails the check."""
    result = check.Result("broken")
    manifests = check.render({"services": {"ingress": {"probes": {"liveness": {"bogus": 1}}}}})
    result.documents = list(check.documents(manifests))
    check.validate(result)
    assert any("bogus" in p for p in result.problems)


def _twilio_view(check: ModuleType, values: dict[str, Any] | None) -> tuple[set[str], dict[str, Any]]:
    """The Ingress paths routed to the ingress service, and the ingress container's env by name."""
    docs = [doc for _, doc in check.documents(check.render(values))]
    paths = {
        p["path"]
        for doc in docs
        if doc["kind"] == "Ingress"
        for rule in doc["spec"]["rules"]
        for p in rule["http"]["paths"]
        if p["backend"]["service"]["name"].endswith("-ingress")
    }
    [ingress] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-ingress")]
    env = {e["name"]: e for e in ingress["spec"]["template"]["spec"]["containers"][0]["env"]}
    return paths, env


@pytest.mark.integration
def test_twilio_routes_render_only_with_a_token_secret(check: ModuleType) -> None:
    # enabled without a token: ingress would refuse every request (or an operator would reach for the dev flag)
    with pytest.raises(Exception, match=r"twilio\.existingSecret"):
        check.render({"twilio": {"enabled": True}})
    # not enabled (the default): no public Twilio route
    paths, env = _twilio_view(check, None)
    assert not paths and "TWILIO_AUTH_TOKEN" not in env
    # enabled with a Secret: the route, and the token from that Secret
    paths, env = _twilio_view(check, {"twilio": {"enabled": True, "existingSecret": "tw"}})
    assert paths == {"/twilio"}
    assert env["TWILIO_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tw", "key": "TWILIO_AUTH_TOKEN"}
    assert "TWILIO_ALLOW_UNSIGNED" not in env
    production = check.scenarios()["production"].values
    paths, env = _twilio_view(check, production)
    assert paths == {"/twilio"} and env["TWILIO_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    # the chart owns the route: a hand-written one (as older values had) is refused rather than doubled
    with pytest.raises(Exception, match="remove the path /twilio"):
        check.render(
            {
                "ingress": {
                    "hosts": [
                        {
                            "host": "a.example.com",
                            "paths": [{"path": "/twilio", "pathType": "Prefix", "service": "ingress"}],
                        }
                    ]
                }
            }
        )
    # the local-development flag is never rendered into a cluster
    with pytest.raises(Exception, match="TWILIO_ALLOW_UNSIGNED"):
        check.render(
            {
                "twilio": {"enabled": True, "existingSecret": "tw"},
                "services": {"ingress": {"env": {"TWILIO_ALLOW_UNSIGNED": "true"}}},
            }
        )


@pytest.mark.integration
def test_summaries_and_more_model_servers_reach_only_the_service_that_uses_them(check: ModuleType) -> None:
    def env_of(values: dict[str, Any]) -> dict[str, dict[str, str]]:
        docs = [doc for _, doc in check.documents(check.render(values))]
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        return {d["metadata"]["name"].rsplit("-", 1)[-1]: {
            e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            for d in deployments}

    plain = env_of({"llm": {"baseUrl": "http://vllm:8000/v1"}})
    assert "SUMMARY_LLM_BASE_URL" not in plain["analytics"]  # analytics summarises on llm.baseUrl
    split = env_of({"llm": {"baseUrl": "http://vllm:8000/v1", "summaryBaseUrl": "http://batch:8000/v1"}})
    assert split["analytics"]["SUMMARY_LLM_BASE_URL"] == "http://batch:8000/v1"
    assert split["analytics"]["LLM_BASE_URL"] == "http://vllm:8000/v1"
    assert "SUMMARY_LLM_BASE_URL" not in split["brain"]  # live turns stay on llm.baseUrl
    assert "LLM_BASE_URL_REPLICAS" not in split["brain"]
    spread = env_of({"llm": {"baseUrl": "http://a:8000/v1", "replicaBaseUrls": ["http://b:8000/v1", "http://c/v1"]}})
    assert spread["brain"]["LLM_BASE_URL_REPLICAS"] == "http://b:8000/v1,http://c/v1"
    assert "LLM_BASE_URL_REPLICAS" not in spread["analytics"]
