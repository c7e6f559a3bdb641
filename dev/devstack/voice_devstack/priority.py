"""Real-time work first under `make run` (README "Real-time work first").

On a few shared cores, ingress (the 20 ms playout clock), media (VAD on every frame) and NATS (every frame crosses
it) must get the CPU the moment they wake; model inference (stt, tts, brain's intents, the LLM server) can wait a few
milliseconds without anyone hearing it. So `make run` starts the model processes at a lower priority
(``MODEL_NICE``, 10 by default; 0 turns it off) and gives every service one BLAS/OpenMP thread (each engine sets its
own compute threads: see ``THREAD_SETTINGS``).

Priority is lowered, never raised: no privilege is needed, and a niced process still gets every idle cycle.
``python -m voice_devstack.priority --nice N [--own-session] -- CMD...`` lowers its own priority and runs CMD in its
place. honcho starts every process in a session of its own, and where the kernel groups processes by session
(``sched_autogroup``, on by default on desktop and many server kernels, for processes outside a CPU cgroup) a
process's nice value only ranks it within its session: ``--own-session`` also lowers the session's group
(``/proc/self/autogroup``), which only `make run` asks for, because it knows the session holds that process alone.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from .llm_models import LlmProfile

# the processes `make run` starts at MODEL_NICE; ingress, media, NATS, PostgreSQL, control-api and the demo's
# booking service keep the normal priority (analytics: post-call work, nobody waits on it)
MODEL_PROCESSES = frozenset({"stt", "tts", "brain", "llm", "analytics"})
DEFAULT_MODEL_NICE = 10  # CPU weight 110 against 1024 at nice 0: ~10x less CPU than ingress/media when both want it

# BLAS/OpenMP pools that numpy (OpenBLAS) and others size to all cores and spin in; the engines set their own
# compute threads, so these stay at 1 unless the user chose otherwise
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# each engine's compute threads and the setting that changes them (README "Real-time work first")
THREAD_SETTINGS = {
    "moonshine (stt)": "MOONSHINE_THREADS",
    "whisper (stt)": "STT_CPU_THREADS",
    "piper (tts)": "TTS_THREADS",
    "silero VAD (media)": "1, fixed",
    "smart-turn (media)": "TURN_MODEL_THREADS",
    "MiniLM intents (brain)": "1, fixed",
    "llama.cpp (make run's LLM)": "LLM_THREADS / LLM_THREADS_BATCH",
}


def _int_setting(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise SystemExit(f"{name} must be a whole number from {low} to {high}, not {raw!r}")
    return value


def model_nice(environ: Mapping[str, str]) -> int:
    """``MODEL_NICE``: the nice value of the model processes (0 to 19; 0: they run at the normal priority)."""
    return _int_setting(environ, "MODEL_NICE", DEFAULT_MODEL_NICE, 0, 19)


def nice_for(process: str, environ: Mapping[str, str]) -> int:
    """The nice value `make run` starts ``process`` (a service name, or ``llm``) at."""
    return model_nice(environ) if process in MODEL_PROCESSES else 0


def thread_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What `make run` adds to every service's environment: one BLAS/OpenMP thread, unless the user set one."""
    return {k: v for k, v in THREAD_ENV.items() if k not in environ}


def llm_threads(p: LlmProfile, environ: Mapping[str, str]) -> LlmProfile:
    """The profile with ``LLM_THREADS`` / ``LLM_THREADS_BATCH`` applied (generation / prompt threads of the embedded
    llama.cpp server; the profile's own, 1-2, by default)."""
    cores = os.cpu_count() or 1
    return replace(p, n_threads=_int_setting(environ, "LLM_THREADS", p.n_threads, 1, max(64, cores)),
                   n_threads_batch=_int_setting(environ, "LLM_THREADS_BATCH", p.n_threads_batch, 1, max(64, cores)))


def banner_line(environ: Mapping[str, str]) -> str:
    """`make run`'s banner line on priorities."""
    nice = model_nice(environ)
    if not nice:
        return "   priorities  all at the normal priority (MODEL_NICE=0)"
    return (f"   priorities  {', '.join(sorted(MODEL_PROCESSES))} at nice {nice}: ingress, media and NATS first "
            "(MODEL_NICE=0: off)")


def niced(cmd: Sequence[str], nice: int, *, own_session: bool = True) -> list[str]:
    """``cmd`` started at nice value ``nice`` (unchanged when 0)."""
    if nice <= 0:
        return list(cmd)
    flags = ["--own-session"] if own_session else []
    return [sys.executable, "-m", "voice_devstack.priority", "--nice", str(nice), *flags, "--", *cmd]


AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int, *, own_session: bool = False, autogroup: Path = AUTOGROUP) -> int:
    """Raise this process's nice value to ``nice`` (never lowers it) and, ``own_session``, its session's scheduling
    group's where the kernel has one. Returns the process's nice value."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if own_session and nice > 0:
        with contextlib.suppress(OSError):  # no autogroups (other kernels, macOS): the process's nice is enough
            autogroup.write_text(f"{nice}\n")
    return os.getpriority(os.PRIO_PROCESS, 0)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(prog="python -m voice_devstack.priority",
                                     usage="%(prog)s --nice N [--own-session] -- CMD...")
    parser.add_argument("--nice", type=int, choices=range(20), metavar="0-19", default=DEFAULT_MODEL_NICE)
    parser.add_argument("--own-session", action="store_true")
    opts, cmd = parser.parse_args(args[:split]), args[split + 1:]
    if not cmd:
        parser.error("nothing to run after --")
    lower_priority(opts.nice, own_session=opts.own_session)
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
