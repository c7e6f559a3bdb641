#!/usr/bin/env bash
# Names any missing system prerequisite clearly, before an install fails obscurely.
# `prereqs.sh browser`: Chromium for the browser tests (installed with apt-get when missing and run as root).
# `prereqs.sh sip`: SIPp for the SIP tests (Debian's sip-tester, installed the same way).
if [ "${1:-}" = "browser" ]; then
  if [ -n "${CHROMIUM_PATH:-}" ] && [ -x "${CHROMIUM_PATH}" ]; then exit 0; fi
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Chromium for the browser tests (apt-get install chromium)"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null \
        && command -v chromium >/dev/null 2>&1; then
      exit 0
    fi
  fi
  echo "error: the browser tests need Chromium: install Debian's chromium package (sudo apt-get install chromium)," >&2
  echo "       or set CHROMIUM_PATH to a Chromium binary" >&2
  exit 1
fi
if [ "${1:-}" = "sip" ]; then
  if command -v sipp >/dev/null 2>&1 && [ -f /usr/share/sip-tester/g711a.pcap ]; then exit 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing SIPp for the SIP tests (apt-get install sip-tester)"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends sip-tester >/dev/null \
        && command -v sipp >/dev/null 2>&1; then
      exit 0
    fi
  fi
  echo "error: the SIP tests need SIPp with its captures: install Debian's sip-tester package" >&2
  echo "       (sudo apt-get install sip-tester)" >&2
  exit 1
fi
missing=()
command -v python3.11 >/dev/null 2>&1 || missing+=("python3.11 (CPython 3.11 with venv, e.g. apt-get install python3.11 python3.11-venv)")
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=("a C compiler (gcc) to build llama-cpp-python")
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=("a C++ compiler (g++) to build llama-cpp-python")
command -v make >/dev/null 2>&1 || missing+=("make")
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: missing system prerequisites:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 1
fi
