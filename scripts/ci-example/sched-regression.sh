#!/bin/sh
# sched-regression.sh: fail a CI build when a change makes goroutines wait
# longer to run, the way a benchstat regression would.
#
# It checks out the baseline (BASE_REF, default origin/main) in a git
# worktree beside the change, builds the benchmark binary of PKG at both,
# runs both RUNS times under `gmpwatch ci run` (interleaved, so a slow patch
# of the CI machine hits both alike), and compares them with
# `gmpwatch ci compare`. The exit status is compare's:
#   0  no significant regression beyond the threshold
#   1  a scheduling-latency regression (the report says which metric, by how
#      much, with its p-value)
#   2  no verdict: too few runs, a failing run, bad input
#
# Run it from the root of the module under test:
#   BASE_REF=origin/main PKG=./server BENCH=BenchmarkServe sh sched-regression.sh
#
# Settings (environment):
#   BASE_REF    git revision of the baseline            (origin/main)
#   PKG         the one package whose benchmarks run    (.)
#   BENCH       -test.bench pattern                     (.)
#   BENCHTIME   -test.benchtime: a fixed count such as 200x keeps the work
#               the same from run to run                (200x)
#   RUNS        runs of each side; gmpwatch refuses too few for a verdict (10)
#   THRESHOLD   smallest worsening that fails the build (10%)
#   EXTRA       more `gmpwatch ci compare` flags, e.g. "--threshold-metric p99=5%"
#   OUT         where records and reports go            (gmpwatch-ci)
#   GMPWATCH    the gmpwatch command                    (gmpwatch)
#
# Outputs in OUT: base.json and new.json (every run, for the record),
# report.txt (the benchstat-style table), report.md (for a pull-request
# comment), junit.xml (for CI test reports), bench.txt (Go benchmark lines:
# `benchstat -col record bench.txt`).
set -eu

BASE_REF=${BASE_REF:-origin/main}
PKG=${PKG:-.}
BENCH=${BENCH:-.}
BENCHTIME=${BENCHTIME:-200x}
RUNS=${RUNS:-10}
THRESHOLD=${THRESHOLD:-10%}
EXTRA=${EXTRA:-}
OUT=${OUT:-gmpwatch-ci}
GMPWATCH=${GMPWATCH:-gmpwatch}

say() { echo "sched-regression: $*" >&2; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
worktree="$OUT/base-src"
rm -rf "$worktree"
git worktree prune
say "checking out the baseline $BASE_REF"
git worktree add --quiet --detach "$worktree" "$BASE_REF"
trap 'git worktree remove --force "$worktree" >/dev/null 2>&1 || true' EXIT

# The package's path inside the module is the same at both revisions.
say "building the benchmarks of $PKG at $BASE_REF and at the change"
(cd "$worktree" && go test -c -o "$OUT/base.test" "$PKG")
go test -c -o "$OUT/new.test" "$PKG"

# The measured program must be the benchmark binary itself (not `go test`),
# so gmpwatch reads that program's scheduler.
args="-test.run=^\$ -test.bench=$BENCH -test.benchtime=$BENCHTIME"
# shellcheck disable=SC2086 # $args and $EXTRA are word lists
"$GMPWATCH" ci run -n "$RUNS" -o "$OUT/new.json" --baseline-out "$OUT/base.json" \
	--baseline-cmd "'$OUT/base.test' $args" -- "$OUT/new.test" $args

status=0
# shellcheck disable=SC2086
"$GMPWATCH" ci compare "$OUT/base.json" "$OUT/new.json" --threshold "$THRESHOLD" $EXTRA >"$OUT/report.txt" || status=$?
# The other formats carry the same verdict; their status is the same.
# shellcheck disable=SC2086
"$GMPWATCH" ci compare "$OUT/base.json" "$OUT/new.json" --threshold "$THRESHOLD" $EXTRA --format markdown >"$OUT/report.md" 2>/dev/null || true
# shellcheck disable=SC2086
"$GMPWATCH" ci compare "$OUT/base.json" "$OUT/new.json" --threshold "$THRESHOLD" $EXTRA --format junit >"$OUT/junit.xml" 2>/dev/null || true
"$GMPWATCH" ci compare "$OUT/base.json" "$OUT/new.json" --format benchstat >"$OUT/bench.txt" 2>/dev/null || true

cat "$OUT/report.txt"
case $status in
0) say "no scheduling-latency regression" ;;
1) say "scheduling-latency regression: failing the build" ;;
*) say "no verdict (exit status $status): failing the build" ;;
esac
exit "$status"
