#!/usr/bin/env bash
# Names any missing system prerequisite clearly, before an install fails obscurely.
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
