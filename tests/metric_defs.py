"""The metrics the platform defines, read from the metric objects in the code (never copied by hand), for the
tests that check what services export and what the Helm chart's dashboard and alerts query."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path
from types import ModuleType

from prometheus_client import ProcessCollector
from prometheus_client.metrics import MetricWrapperBase
from voice_devstack.stack import SERVICES
from voice_runtime import metrics

REPO = Path(__file__).resolve().parents[1]
PACKAGES = tuple(module for _, module, _ in SERVICES)


def metric_objects(module: ModuleType) -> list[MetricWrapperBase]:
    return [v for v in vars(module).values() if isinstance(v, MetricWrapperBase)]


def defined_metrics(package: str) -> list[MetricWrapperBase]:
    """voice_runtime.metrics plus every metric defined at module level in a service's package (whatever
    ``python -m <package>`` imports on its way to the service class)."""
    importlib.import_module(f"{package}.service")
    own = [
        m
        for name, mod in list(sys.modules.items())
        if mod is not None and (name == package or name.startswith(package + "."))
        for m in metric_objects(mod)
    ]
    return metric_objects(metrics) + own


def all_defined_metrics() -> list[MetricWrapperBase]:
    seen: dict[str, MetricWrapperBase] = {}
    for package in PACKAGES:
        for m in defined_metrics(package):
            seen[m._name] = m
    return list(seen.values())


def series(m: MetricWrapperBase) -> set[str]:
    """The series names Prometheus scrapes for one metric."""
    name, kind = m._name, m._type
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


def process_series() -> set[str]:
    """What prometheus_client's process collector exports on this platform (CPU, memory, ...)."""
    return {s.name for family in ProcessCollector(registry=None).collect() for s in family.samples}


def stage_labels() -> set[str]:
    """Every ``stage`` value the services observe on ``voice_turn_stage_seconds``: the literal second argument
    of each ``STAGE_SECONDS.labels(service, "<stage>")`` call in the services' code."""
    stages: set[str] = set()
    for path in sorted((REPO / "services").glob("*/voice_*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "labels"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "STAGE_SECONDS"
            ):
                continue
            stage = (
                node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "stage"), None)
            )
            if not (isinstance(stage, ast.Constant) and isinstance(stage.value, str)):
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno}: a stage that is not a literal")
            stages.add(stage.value)
    return stages
