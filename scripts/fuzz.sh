#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (libFuzzer -max_total_time), one after another,
# and prints the executions per target.
#
# Owns: toolchain checks and the run loop. On a crash it copies the crash input to
# tests/fuzz-regressions/<target>/ (replayed by tests/fuzz_regressions.rs on the stable
# toolchain) and exits non-zero after the remaining targets ran.
# Must never: modify the committed seed corpora — new inputs libFuzzer finds go to
# fuzz/corpus-work/<target>/ (git-ignored), the seeds in fuzz/corpus/<target>/ are read only.
#
# Usage: scripts/fuzz.sh SECONDS [TARGET...]     (default: all targets)
# Env:   FUZZ_JOBS (default 1) - libFuzzer -fork jobs per target; the machine is small.
set -uo pipefail

SECONDS_PER_TARGET="${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}"
shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ALL_TARGETS=(bencode_decode metainfo_parse magnet_parse wire_stream extended_and_metadata config_parse mse_handshake http_request)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz.sh: cargo-fuzz not found; installing it (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked || { echo "fuzz.sh: cannot install cargo-fuzz" >&2; exit 2; }
fi

# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer). Prefer a real nightly; without one,
# RUSTC_BOOTSTRAP=1 makes stable accept them (unsupported by the Rust project, but it works).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    TOOLCHAIN=(+nightly)
    echo "fuzz.sh: using the nightly toolchain ($(rustc +nightly --version))"
else
    TOOLCHAIN=()
    export RUSTC_BOOTSTRAP=1
    echo "fuzz.sh: WARNING: no nightly toolchain installed; using stable with RUSTC_BOOTSTRAP=1" \
        "($(rustc --version)). Install one with: rustup toolchain install nightly" >&2
fi

failed=()
summary=()
for target in "${TARGETS[@]}"; do
    work="fuzz/corpus-work/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$work" "$artifacts" "fuzz/corpus/$target"
    log="fuzz/artifacts/$target.log"
    echo "fuzz.sh: $target for ${SECONDS_PER_TARGET}s"
    cargo "${TOOLCHAIN[@]}" fuzz run "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
    per_sec=$(grep -E '^stat::average_exec_per_sec:' "$log" | tail -1 | awk '{print $2}')
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    summary+=("$(printf '%-24s executions=%-10s exec/s=%-8s cov=%-6s rc=%s' "$target" "${execs:-?}" "${per_sec:-?}" "${cov:-?}" "$rc")")
    if ((rc != 0)); then
        failed+=("$target")
        mkdir -p "tests/fuzz-regressions/$target"
        for crash in "$artifacts"/crash-* "$artifacts"/oom-* "$artifacts"/timeout-* "$artifacts"/leak-*; do
            [[ -f $crash ]] || continue
            cp "$crash" "tests/fuzz-regressions/$target/"
            echo "fuzz.sh: $target: saved $(basename "$crash") to tests/fuzz-regressions/$target/" >&2
        done
        tail -40 "$log" >&2
    fi
done

echo
echo "fuzz.sh: ${SECONDS_PER_TARGET}s per target, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs in tests/fuzz-regressions/; logs in fuzz/artifacts/)" >&2
    exit 1
fi
