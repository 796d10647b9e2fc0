#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, on the stable toolchain.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Installs cargo-fuzz if missing, builds all targets once (libFuzzer with
# SanitizerCoverage, no sanitizer: the project forbids unsafe code; debug
# assertions and overflow checks on), then runs each target for SECONDS on
# its seed corpus (fuzz/corpus/<target>, read only: new inputs go to
# fuzz/target/corpus/<target>). Prints one summary line per target and
# exits non-zero if any target crashed, timed out or ran out of memory; the
# input that did it is saved in fuzz/artifacts/<target>/ and the libFuzzer
# log is in fuzz/target/logs/<target>.log.
#
# Works on the stable toolchain: with `--sanitizer none` cargo-fuzz passes only
# stable rustc flags (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*,
# --cfg fuzzing, -Cdebug-assertions); the sanitizers are what need nightly
# (or RUSTC_BOOTSTRAP=1). Do not set RUSTC_BOOTSTRAP: some dependencies'
# build scripts probe for nightly features when it is set, which would also
# make the build differ from (and not share artifacts with) this one.
set -euo pipefail

usage() { echo "usage: $0 SECONDS [TARGET...]" >&2; exit 2; }
[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
per_target=$1
shift

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$fuzz_dir"
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir="$fuzz_dir/target"
build_flags=(--sanitizer none --target "$triple" --target-dir "$target_dir" --fuzz-dir "$fuzz_dir")

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "no fuzz targets" >&2; exit 1; }

echo "== building ${#targets[@]} fuzz targets ($(cargo fuzz --version))"
build_start=$(date +%s)
if [[ $# -gt 0 ]]; then
  for t in "${targets[@]}"; do cargo fuzz build "${build_flags[@]}" "$t"; done
else
  cargo fuzz build "${build_flags[@]}"
fi
build_secs=$(( $(date +%s) - build_start ))
echo "== built in ${build_secs}s"

mkdir -p "$target_dir/logs"
failed=0
summary=()
for t in "${targets[@]}"; do
  bin="$target_dir/$triple/release/$t"
  work="$target_dir/corpus/$t"
  seeds="$fuzz_dir/corpus/$t"
  log="$target_dir/logs/$t.log"
  mkdir -p "$work" "$seeds" "$fuzz_dir/artifacts/$t"
  echo "== fuzzing $t for ${per_target}s"
  set +e
  "$bin" "$work" "$seeds" \
    -max_total_time="$per_target" \
    -print_final_stats=1 \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -artifact_prefix="$fuzz_dir/artifacts/$t/" \
    >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$({ grep -oE 'DONE +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" || true; } | tail -n 1 \
        | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+)/cov=\1 ft=\2 corpus=\3/')
  if [[ $rc -eq 0 ]]; then
    status=ok
  else
    status="FAILED (exit $rc)"
    failed=1
    echo "---- $t: last lines of $log"
    tail -n 40 "$log"
    ls -1 "$fuzz_dir/artifacts/$t" 2>/dev/null | sed "s|^|artifact: fuzz/artifacts/$t/|"
  fi
  summary+=("$(printf 'fuzz %-18s %-18s execs=%-10s %s' "$t" "$status" "${execs:-?}" "${cov:-}")")
done

echo "== summary (${per_target}s per target, build ${build_secs}s)"
printf '%s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
  echo "== a fuzz target failed: see above" >&2
  exit 1
fi
