#!/usr/bin/env bash
# Fuzzes the sidecar's parsers of untrusted input with libFuzzer (cargo-fuzz): the frame codec,
# the postgres_changes filter parser and JWT/JWKS verification. The targets and the properties
# they check are in sidecar/fuzz/ (src/lib.rs lists them).
#
#   scripts/fuzz.sh quick          every target for QUICK_SECONDS (default 15), FUZZ_JOBS (default
#                                  2) at a time: about 65 s of fuzzing on 2 cores, so that with an
#                                  incremental rebuild it stays within 2 minutes (make test)
#   scripts/fuzz.sh long [SECONDS] every target, SECONDS (default 1200) of wall time in all (make fuzz)
#
# Each target starts from the committed seeds (sidecar/fuzz/seeds/<target>), the inputs of past
# findings (sidecar/fuzz/regressions/<target>) and the corpus of earlier runs
# (target/fuzz/work/corpus/<target>); all of them are replayed first. Prints, per target, the
# inputs executed and the crashes found; exits non-zero on any crash, panic, violated property,
# timeout or out-of-memory, naming the input that caused it (target/fuzz/work/artifacts/).
#
# cargo-fuzz needs nightly flags (-Z, sanitizer coverage); the stable toolchain accepts them
# with RUSTC_BOOTSTRAP=1. No sanitizer: the sidecar forbids unsafe code, and the findings
# sought are panics and violated properties; debug assertions (overflow checks) are on.
set -euo pipefail

mode=${1:-}
case "$mode" in
quick)
    per_target=${QUICK_SECONDS:-15}
    ;;
long)
    total=${2:-1200}
    [[ "$total" =~ ^[0-9]+$ && "$total" -gt 0 ]] || {
        echo "fuzz.sh: SECONDS must be a positive number, got '$total'" >&2
        exit 2
    }
    ;;
*)
    echo "usage: scripts/fuzz.sh quick | long [SECONDS]" >&2
    exit 2
    ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir=$root/sidecar/fuzz
target_dir=$root/target/fuzz
work=$target_dir/work
jobs=${FUZZ_JOBS:-2}
targets=(codec_text codec_binary codec_roundtrip filter_text filter_binding jwt_verify jwks_config)

if [[ "$mode" == long ]]; then
    # Every target gets the same share of the wall time, FUZZ_JOBS running at once.
    rounds=$(((${#targets[@]} + jobs - 1) / jobs))
    per_target=$((total / rounds))
    ((per_target > 0)) || per_target=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$root"
echo "fuzz.sh: building the targets (release, debug assertions, libFuzzer coverage)"
RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir "$fuzz_dir" --sanitizer none --debug-assertions \
    --target-dir "$target_dir"
bin_dir=$target_dir/x86_64-unknown-linux-gnu/release

# The list here and the crate's binaries must agree: a target left out is never fuzzed.
declared=$(sed -n 's/^name = "\([a-z_0-9]*\)"$/\1/p' "$fuzz_dir/Cargo.toml" | grep -v '^pg-realtime' | sort)
listed=$(printf '%s\n' "${targets[@]}" | sort)
if [[ "$declared" != "$listed" ]]; then
    echo "fuzz.sh: targets in sidecar/fuzz/Cargo.toml ($(echo $declared)) differ from this script's ($(echo $listed))" >&2
    exit 1
fi

mkdir -p "$work/logs"
rm -f "$work"/logs/*.rc "$work"/logs/*.log
run_target() {
    local t=$1
    local corpus=$work/corpus/$t artifacts=$work/artifacts/$t/
    mkdir -p "$corpus" "$artifacts"
    local dirs=("$corpus")
    for extra in "$fuzz_dir/seeds/$t" "$fuzz_dir/regressions/$t"; do
        [[ -d "$extra" ]] && dirs+=("$extra")
    done
    "$bin_dir/$t" "${dirs[@]}" -max_total_time="$per_target" -timeout=20 -rss_limit_mb=3072 \
        -print_final_stats=1 -artifact_prefix="$artifacts" >"$work/logs/$t.log" 2>&1
}

echo "fuzz.sh: $mode run, ${per_target}s per target, $jobs at a time; logs in $work/logs"
started=$(date +%s)
declare -A status
running=0
for t in "${targets[@]}"; do
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
    (
        rc=0
        run_target "$t" || rc=$?
        echo "$rc" >"$work/logs/$t.rc"
    ) &
    running=$((running + 1))
done
wait

failed=0
total_execs=0
printf '%-16s %12s %8s %8s  %s\n' target inputs seconds crashes result
for t in "${targets[@]}"; do
    log=$work/logs/$t.log
    rc=$(cat "$work/logs/$t.rc")
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)$/\1/p' "$log" | tail -n1)
    if [[ -z "$execs" ]]; then
        # No final stats after a crash: the last progress line counts the inputs run.
        execs=$(grep -aoE '^#[0-9]+' "$log" | tail -n1 | tr -d '#')
    fi
    execs=${execs:-0}
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second(s)$/\1/p' "$log" | tail -n1)
    crashes=$(grep -ac '^Test unit written to\|^artifact_prefix=.*Test unit written' "$log" || true)
    if [[ "$rc" == 0 ]]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed=1
        ((crashes > 0)) || crashes=1
    fi
    total_execs=$((total_execs + execs))
    printf '%-16s %12s %8s %8s  %s\n' "$t" "$execs" "${secs:--}" "$crashes" "$result"
done
echo "fuzz.sh: $total_execs inputs in all, $(($(date +%s) - started))s of wall time"

if ((failed)); then
    for t in "${targets[@]}"; do
        [[ "$(cat "$work/logs/$t.rc")" == 0 ]] && continue
        echo
        echo "---- $t: $work/logs/$t.log (last lines)"
        grep -aE "panicked at|^Test unit written to|==ERROR|SUMMARY" "$work/logs/$t.log" | head -n 5 || true
        tail -n 25 "$work/logs/$t.log"
        echo "reproduce: $bin_dir/$t <artifact>; once fixed, commit the artifact to sidecar/fuzz/regressions/$t/"
    done
    exit 1
fi
