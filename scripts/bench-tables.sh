#!/usr/bin/env bash
# Regenerates the tables in docs/benchmarks.md from the result files the
# benchmarks wrote under bench/results/ (between the page's
# `<!-- bench-results NAME begin/end -->` markers; prose is left alone).
#   scripts/bench-tables.sh           # rewrite the page
#   scripts/bench-tables.sh --check   # exit 1 if the page is stale
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet -p twill-bench --bin tables -- "$@"
