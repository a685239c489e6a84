#!/bin/bash
# Profile-guided optimisation of the agent trained on the benchmark's own
# scenarios (NGINX, wrk), as first measured in docs/benchmarks.md ("Tried:
# profile-guided optimisation"). What ships is `cargo xtask dist`, trained on
# a node's mix without NGINX or wrk (xtask/src/dist.rs); this script stays to
# compare the two trainings, and builds the untrained binary beside its own.
#
#   bash scripts/pgo-experiment.sh            # ~15 min on 2 cores
#   PROFILE=dist bash scripts/pgo-experiment.sh   # fat LTO, as shipped: ~35 min
#   cargo xtask bench --instructions --nodeward target/pgo/release/plain/nodeward
#   cargo xtask bench --instructions --nodeward target/pgo/release/optimized/nodeward
#
# 1. an instrumented build (-Cprofile-generate) of $PROFILE (default release);
# 2. training: `cargo xtask bench --quick` on the request-path scenarios and
#    the per-node N = 10 window (start-up, the provider fetch, the pod-less
#    per-node layout), every agent writing its profile at exit;
# 3. the profiles merged with the toolchain's own llvm-profdata (rustup
#    component llvm-tools: the profile format follows rustc's LLVM);
# 4. the same profile built again with -Cprofile-use, and without it for the
#    comparison.
# The flags are x86_64-only, so the eBPF programs build.rs compiles for the
# BPF target are not instrumented.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
toolchain=$(rustc --version | awk '{print $2}')
rustup component add llvm-tools --toolchain "$toolchain" >/dev/null
profdata=$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-profdata
out=$PWD/target/pgo/$profile
raw=$out/raw
rm -rf "$raw" && mkdir -p "$raw" "$out/plain" "$out/optimized"
flags=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS

env CARGO_TARGET_DIR="$out/build" "$flags=-Cprofile-generate=$raw" cargo build --profile "$profile" -p nodeward
cp "$out/build/$profile/nodeward" "$out/nodeward-instrumented"
LLVM_PROFILE_FILE="$raw/agent-%p-%m.profraw" cargo xtask bench --quick \
    --scenarios nodeward-cached,nodeward-anonymous,nodeward-denied,nodeward-miss-rs256 --pods 10 \
    --nodeward "$out/nodeward-instrumented" --out "$out/training"
# Only the agents' profiles: the instrumented build scripts leave theirs too.
"$profdata" merge -o "$out/agent.profdata" "$raw"/agent-*.profraw

env CARGO_TARGET_DIR="$out/build" "$flags=-Cprofile-use=$out/agent.profdata" cargo build --profile "$profile" -p nodeward
cp "$out/build/$profile/nodeward" "$out/optimized/nodeward"
cargo build --profile "$profile" -p nodeward
cp "target/$profile/nodeward" "$out/plain/nodeward"
echo "built $out/plain/nodeward and $out/optimized/nodeward"
