#!/usr/bin/env bash
# Installs what building the eBPF programs needs, when missing (verified
# recipe: ../shared/notes/ebpf-toolchain.md): nightly's rust-src, and
# bpf-linker built against the nightly toolchain's own libLLVM.
set -euo pipefail
rustup component add rust-src --toolchain nightly >/dev/null
if rustup run nightly bpf-linker --version >/dev/null 2>&1; then
  exit 0
fi
sysroot=$(rustup run nightly rustc --print sysroot)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
mkdir -p "$prefix/lib"
llvm=$(ls "$sysroot"/lib/libLLVM.so.*-rust-*-nightly | head -n 1)
ln -sf "$llvm" "$prefix/lib/libLLVM.so"
LLVM_PREFIX="$prefix" cargo +nightly install bpf-linker --locked --no-default-features --features llvm-22
rustup run nightly bpf-linker --version
