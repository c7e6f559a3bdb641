"""Offline check of the Helm chart: `make helm-check`.

Lints deploy/helm/voice-platform, renders it with its default values, with values-production.yaml
and with an external-NATS variant, then validates every rendered manifest strictly against the
Kubernetes JSON schemas shipped in `kubernetes-validate`. Prometheus Operator objects
(ServiceMonitor, PodMonitor, PrometheusRule) have no built-in schema and are checked against the
subset schemas below. Needs no cluster, no network and no helm binary (`helm-python-sdk` embeds
Helm v4). Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

CHART_DIR = Path(__file__).resolve().parent / "voice-platform"
PRODUCTION_VALUES = CHART_DIR / "values-production.yaml"
RELEASE_NAME = "voice"
NAMESPACE = "voice"
# The chart's minimum (Chart.yaml kubeVersion) and the newest schema set shipped.
KUBE_VERSIONS = ("1.27", kubernetes_validate.latest_version())
MISSING_NATS_WARNING = "chart directory is missing these dependencies: nats"

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# Prometheus duration: 0, or units from years to milliseconds in order, e.g. 1h30m, 15s.
DURATION = {
    "type": "string",
    "pattern": r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_RELABELING = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "hashmod",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
                "Replace",
                "Keep",
                "Drop",
                "HashMod",
                "LabelMap",
                "LabelDrop",
                "LabelKeep",
                "Lowercase",
                "Uppercase",
                "KeepEqual",
                "DropEqual",
            ]
        },
    },
}


def _metadata_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
        },
    }


def _endpoint_schema(port_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [port_key],
        "properties": {
            port_key: {"type": "string"},
            "path": {"type": "string"},
            "scheme": {"enum": ["http", "https"]},
            "interval": DURATION,
            "scrapeTimeout": DURATION,
            "honorLabels": {"type": "boolean"},
            "honorTimestamps": {"type": "boolean"},
            "relabelings": {"type": "array", "items": _RELABELING},
            "metricRelabelings": {"type": "array", "items": _RELABELING},
        },
    }


# Subsets of the Prometheus Operator CRD schemas (monitoring.coreos.com/v1), strict on every object
# they describe: unknown fields are typos here, because the chart only renders these fields.
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _metadata_schema(),
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "selector": _LABEL_SELECTOR,
                    "endpoints": {"type": "array", "minItems": 1, "items": _endpoint_schema("port")},
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        # Rendered by the NATS subchart, so only its top-level shape is checked.
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _metadata_schema(),
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "selector": {"type": "object"},
                    "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _metadata_schema(),
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": DURATION,
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": DURATION,
                                            "keep_firing_for": DURATION,
                                            "labels": STRING_MAP,
                                            "annotations": STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


@dataclass
class Scenario:
    """One set of values the chart must render and validate with."""

    name: str
    values: dict[str, Any] | None


@dataclass
class Result:
    """What checking one scenario found."""

    scenario: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    documents: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # kinds without a built-in schema, checked with CRD_SCHEMAS or skipped (listed in notes)
    crd_kinds: set[str] = field(default_factory=set)


def scenarios() -> dict[str, Scenario]:
    """The values sets the chart is checked with, by name."""
    production = helm.values_from_yaml(PRODUCTION_VALUES.read_text())
    return {
        "default": Scenario("default", None),
        "production": Scenario("production", production),
        "external-nats": Scenario(
            "external-nats",
            {"nats": {"enabled": False}, "externalNats": {"url": "nats://nats.messaging.svc:4222"}},
        ),
    }


def nats_subchart_present() -> bool:
    return (CHART_DIR / "charts").is_dir() and any((CHART_DIR / "charts").glob("nats*"))


def lint(values: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """Helm lint findings as (problems, notes). Warnings count as problems, except the
    missing NATS subchart, which is expected until `helm dependency build` has run."""
    report = helm.lint(str(CHART_DIR), values)
    problems, notes = [], []
    for message in report.get("messages", []):
        severity, text = message.get("severity", 0), message.get("error", "")
        where = f"{message.get('path', '')}: {text}"
        if severity >= 2 and MISSING_NATS_WARNING in text and not nats_subchart_present():
            notes.append(
                "NATS subchart not fetched (charts/ is empty); rendered without it. "
                "Run `helm dependency build deploy/helm/voice-platform` to include it."
            )
        elif severity >= 2:
            problems.append(f"lint: {where}")
    problems.extend(f"lint: {e}" for e in report.get("errors", []) if MISSING_NATS_WARNING not in e)
    return problems, notes


def render(values: dict[str, Any] | None) -> dict[str, str]:
    """Rendered templates by path (offline; `lookup` returns nothing)."""
    with helm.Chart.load(str(CHART_DIR)) as chart:
        return chart.render(values, name=RELEASE_NAME, namespace=NAMESPACE, is_install=True)


def documents(manifests: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every non-empty YAML document of the rendered manifests, with the template it came from."""
    for source in sorted(manifests):
        if not source.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(manifests[source]):
            if doc:
                yield source, doc


@cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    schema = CRD_SCHEMAS.get((api_version, kind))
    return None if schema is None else jsonschema.Draft202012Validator(schema)


def _names_problems(source: str, doc: dict[str, Any]) -> list[str]:
    meta = doc.get("metadata") or {}
    name, kind = meta.get("name", ""), doc.get("kind", "")
    problems = []
    if kind in {"Service", "Namespace"} and not DNS_LABEL.match(name):
        problems.append(f"{source}: {kind} name {name!r} is not a DNS-1035 label (<= 63 chars)")
    elif not DNS_SUBDOMAIN.match(name):
        problems.append(f"{source}: {kind} name {name!r} is not a DNS-1123 subdomain")
    for key, value in (meta.get("labels") or {}).items():
        if len(str(value)) > 63:
            problems.append(f"{source}: label {key} of {kind}/{name} is longer than 63 characters")
    return problems


def validate(result: Result) -> None:
    """Strict schema validation of every document collected in ``result``."""
    seen: set[tuple[str, str, str]] = set()
    for source, doc in result.documents:
        kind, api_version = doc.get("kind"), doc.get("apiVersion")
        meta = doc.get("metadata") or {}
        if not (kind and api_version and meta.get("name")):
            result.problems.append(f"{source}: document without apiVersion, kind or metadata.name")
            continue
        ident = (kind, meta.get("namespace", ""), meta["name"])
        if ident in seen:
            result.problems.append(f"{source}: duplicate {kind} {meta['name']}")
        seen.add(ident)
        result.problems.extend(_names_problems(source, doc))
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                result.problems.append(
                    f"{source}: {kind}/{meta['name']} invalid for Kubernetes {e.version}: {path}: {e.message}"
                )
            except SchemaNotFoundError:
                result.crd_kinds.add(f"{api_version} {kind}")
                validator = _crd_validator(api_version, kind)
                if validator is None:
                    result.notes.append(f"{source}: no schema for {api_version} {kind}; not validated")
                else:
                    for err in validator.iter_errors(doc):
                        path = ".".join(str(p) for p in err.path)
                        result.problems.append(f"{source}: {kind}/{meta['name']}: {path}: {err.message}")
                break  # CRDs do not depend on the Kubernetes version
    if result.crd_kinds:
        result.notes.append(
            "no built-in schema, checked against this script's subset schemas: " + ", ".join(sorted(result.crd_kinds))
        )


def check_dashboards(result: Result) -> None:
    """The dashboard ConfigMap must hold JSON that Grafana can load."""
    for source, doc in result.documents:
        if doc.get("kind") != "ConfigMap" or "grafana_dashboard" not in (doc["metadata"].get("labels") or {}):
            continue
        for key, text in (doc.get("data") or {}).items():
            try:
                dashboard = json.loads(text)
            except json.JSONDecodeError as e:
                result.problems.append(f"{source}: {key} is not valid JSON: {e}")
                continue
            if not dashboard.get("panels") or not dashboard.get("uid"):
                result.problems.append(f"{source}: {key} has no panels or uid")


def check_scenario(scenario: Scenario) -> Result:
    """Lint, render and validate the chart with one set of values."""
    result = Result(scenario.name)
    problems, notes = lint(scenario.values)
    result.problems.extend(problems)
    result.notes.extend(notes)
    try:
        manifests = render(scenario.values)
    except helm.HelmError as e:
        result.problems.append(f"render: {e}")
        return result
    result.documents = list(documents(manifests))
    if not any(
        doc.get("metadata", {}).get("annotations", {}).get("helm.sh/hook") == "test" for _, doc in result.documents
    ):
        result.problems.append("no `helm test` hook rendered")
    validate(result)
    check_dashboards(result)
    return result


def main() -> int:
    started = time.monotonic()
    failed = False
    for scenario in scenarios().values():
        result = check_scenario(scenario)
        kinds: dict[str, int] = {}
        for _, doc in result.documents:
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        status = "FAIL" if result.problems else "ok"
        print(f"[{status}] {scenario.name}: {len(result.documents)} manifests ({summary})")
        for note in dict.fromkeys(result.notes):
            print(f"    note: {note}")
        for problem in result.problems:
            print(f"    {problem}")
        failed = failed or bool(result.problems)
    print(
        f"helm-check {'failed' if failed else 'passed'} in {time.monotonic() - started:.1f}s "
        f"(Helm {helm.helm_sdk_version()}, Kubernetes schemas {', '.join(KUBE_VERSIONS)})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
