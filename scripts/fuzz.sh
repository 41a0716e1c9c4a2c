#!/usr/bin/env bash
# A short, bounded fuzzing pass over every target in fuzz/ (the parsers in
# Hopwire crates that read bytes from a peer), for CI.
#
#   scripts/fuzz.sh                 # every target, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh cell control
#
# Needs cargo-fuzz (installed if missing) and libFuzzer's unstable rustc
# flags: on stable Rust, RUSTC_BOOTSTRAP=1 allows them. Builds into
# fuzz/target; the corpus grows in fuzz/corpus/TARGET (cache it in CI to
# start where the last run stopped); crashes land in fuzz/artifacts/TARGET.
#
# No sanitizer: the crates fuzzed have no unsafe code (`unsafe_code = "deny"`),
# so what there is to find is panics, overflows (debug assertions are on),
# hangs and broken invariants, which the targets assert. AddressSanitizer
# would slow the build and every run for little gain here; run a target by
# hand with `cargo fuzz run -s address TARGET` to use it.
#
# Exits non-zero if any target crashes, hangs, or fails to build.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
build_flags=(--sanitizer none --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no targets found (cargo fuzz list)" >&2
    exit 1
fi

start=$(date +%s)
# One build for every target: they share all their dependencies.
echo "fuzz: building ${targets[*]}"
if [ $# -gt 0 ]; then
    for t in "${targets[@]}"; do cargo fuzz build "${build_flags[@]}" "$t"; done
else
    cargo fuzz build "${build_flags[@]}"
fi
echo "fuzz: built in $(($(date +%s) - start)) s; running each target for ${seconds} s"

mkdir -p target/fuzz-logs
failed=()
for t in "${targets[@]}"; do
    log=target/fuzz-logs/$t.log
    # The targets write generated seed inputs into their corpus at start-up.
    if HOPWIRE_FUZZ_SEEDS="$PWD/corpus/$t" cargo fuzz run "${build_flags[@]}" "$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[^ ]*' "$log" | tail -1 || true)
        printf 'fuzz: %-8s ok    %10s runs in %ss  %s\n' "$t" "${runs:-?}" "$seconds" "$cov"
    else
        printf 'fuzz: %-8s FAILED (log: fuzz/%s)\n' "$t" "$log"
        { grep -m1 -B1 -A4 'panicked at' "$log" || true; echo '    …'; tail -n 20 "$log"; } | sed 's/^/    /'
        failed+=("$t")
    fi
done

echo "fuzz: total $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (crash inputs in fuzz/artifacts/; reproduce with" \
        "\`cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a TARGET artifacts/TARGET/crash-…\`)"
    exit 1
fi
