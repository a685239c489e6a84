# syntax=docker/dockerfile:1
# The nodeward image: one static-ish binary (the SK_LOOKUP program is embedded
# in it) on a distroless base. From the repository root:
#   docker build -t registry.example.com/nodeward:0.1.0 .
# The example's development IdP is a separate image that the agent's never
# contains (it signs any token it is asked for):
#   docker build --target dev-idp -t registry.example.com/nodeward-dev-idp:0.1.0 .

# --- build ----------------------------------------------------------------
# Debian 12 like the runtime image, so the binary links the glibc it will find.
FROM docker.io/library/rust:1.95-bookworm AS build

# agent/build.rs builds the BPF program (agent-ebpf) through aya-build, which
# runs `rustup run nightly cargo build -Z build-std=core` and links with
# bpf-linker; bpf-linker must be built against that nightly's own LLVM
# (scripts/bpf-toolchain.sh does the same on a host; see ARCHITECTURE.md).
# Pinned to the nightly the project is tested with (rustc 1.97.0-nightly
# e50aa6fba 2026-05-19, LLVM 22) and made the toolchain called `nightly`.
ARG NIGHTLY=nightly-2026-05-20
ARG BPF_LINKER_VERSION=0.13.0
RUN set -eux; \
    rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src; \
    host="$(rustc -vV | sed -n 's/^host: //p')"; \
    ln -s "$RUSTUP_HOME/toolchains/$NIGHTLY-$host" "$RUSTUP_HOME/toolchains/nightly-$host"; \
    sysroot="$(rustup run nightly rustc --print sysroot)"; \
    mkdir -p /opt/llvm/lib; \
    ln -s "$(ls "$sysroot"/lib/libLLVM.so.*-rust-*-nightly | head -n 1)" /opt/llvm/lib/libLLVM.so; \
    LLVM_PREFIX=/opt/llvm cargo +nightly install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
        --no-default-features --features llvm-22; \
    rustup run nightly bpf-linker --version

# llvm-profdata of the stable toolchain's own LLVM, for the PGO build below.
RUN rustup component add llvm-tools

WORKDIR /src
# The whole workspace: cargo needs every member's manifest even to build one
# package (.dockerignore leaves out target/, .git, node_modules, fuzz/).
# The agent: `cargo xtask dist`, the `dist` profile (fat LTO, Cargo.toml)
# built again with the profile of a 30 s training run on loopback (dev IdP,
# echo upstream, every answer checked; xtask/src/dist.rs): profile-guided
# optimisation, about a fifth less CPU per request (docs/benchmarks.md). The
# dev IdP: plain `dist`. Line tables are for local profiling: stripped.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo xtask dist; \
    cargo build --profile dist --locked -p nodeward-dev-idp; \
    cp target/pgo/dist/nodeward /nodeward; \
    cp target/dist/nodeward-dev-idp /nodeward-dev-idp; \
    strip --strip-debug /nodeward /nodeward-dev-idp; \
    /nodeward --version; \
    ! /nodeward dev-idp --help >/dev/null 2>&1

# --- the example's development IdP (not the agent; never in its image) ------
FROM gcr.io/distroless/cc-debian12 AS dev-idp
COPY --from=build /nodeward-dev-idp /nodeward-dev-idp
USER 65532:65532
EXPOSE 9000
ENTRYPOINT ["/nodeward-dev-idp"]

# --- runtime --------------------------------------------------------------
# `ldd nodeward`: libc, libm, libgcc_s and the loader, nothing else (TLS is
# rustls with aws-lc-rs, built in). distroless/cc has exactly those, and no
# shell or package manager.
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /nodeward /nodeward
# Root, and no way around it for the agent: its capabilities (CAP_SYS_ADMIN for
# setns, CAP_BPF/CAP_NET_ADMIN, CAP_SYS_PTRACE) must be effective in the initial
# user namespace, and Kubernetes only makes added capabilities effective for
# uid 0 (no ambient capabilities; file capabilities need privilege escalation,
# which the DaemonSet forbids). The pinned state in the host's bpffs is also
# owned by root, mode 0700. The DaemonSet still drops every other capability.
USER 0:0
EXPOSE 15020
ENTRYPOINT ["/nodeward"]
