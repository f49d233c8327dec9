# Calico dataplane agent image: the `agent` binary and the kernel tools it executes, nothing else.
#
# Stages (in this order, so that `--target runtime` never touches the builder):
#   runtime-base  ${BASE} + iproute2, iptables (legacy and nft backends), nftables, ipset,
#                 wireguard-tools, ca-certificates; labels, USER 0, ENTRYPOINT/CMD.
#   runtime       runtime-base + a PREBUILT binary from the build context (ARG AGENT_BINARY).
#   builder       Debian bookworm + rustup (stable 1.95 and the nightly with rust-src) +
#                 bpf-linker 0.13.0 (llvm-22, linked against the nightly's own libLLVM);
#                 `cargo build --release -p agent`.
#   release       runtime-base + the binary the builder compiled. The last stage: the default.
#
# Real-world build, from source:
#   docker build -t calico-dataplane-agent .
# BuildKit and buildah >= 1.29 skip the unused `runtime` stage; buildah 1.28 (podman 4.3,
# Debian 12) builds every stage, so there ${AGENT_BINARY} must exist in the context as well.
# Behind a TLS-intercepting egress proxy the builder's downloads (rustup, crates.io) need its CA:
#   buildah bud -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro …
# (verified that way: the from-source build takes about 9 minutes on 2 cores).
# From a binary built on the host (what `cargo xtask image` does, with buildah and a local
# debootstrapped base; the binary must be inside the build context, see .dockerignore):
#   cargo build --release -p agent
#   docker build --target runtime --build-arg AGENT_BINARY=target/release/agent -t calico-dataplane-agent .
#
# Run it the way the chart does: as uid 0 without `privileged`, `capabilities: drop [ALL]`,
# add NET_ADMIN, NET_RAW, BPF, PERFMON, SYS_RESOURCE; read-only root filesystem with a writable
# emptyDir at /run/calico-dataplane-agent; host network; /sys/fs/bpf and /run/xtables.lock
# from the host.

# Any Debian-bookworm-compatible root filesystem with apt (glibc >= 2.36 for the agent).
ARG BASE=debian:bookworm-slim
# The builder's base: Debian bookworm, so the binary links against the runtime's glibc.
ARG BUILDER_BASE=debian:bookworm

############################################################################################
FROM ${BASE} AS runtime-base

# Only what the agent executes: `ip`/`bridge` (bundle capture), iptables-legacy-save and
# iptables-nft-save (+ ip6tables; both backends, the agent reads both), `nft -j`, ipset (the
# set types iptables-save prints), `wg show all dump` (WireGuard nodes), CA roots (Kubernetes
# API, collector).
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
      iproute2 \
      ipset \
      iptables \
      nftables \
      wireguard-tools \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
# DL3008 (pin apt versions) is ignored on purpose: bookworm's point and security releases
# replace package versions on the mirror, so pins would break the build instead of patching it.

# After the packages, so that a new revision does not invalidate their cached layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG BASE=debian:bookworm-slim
LABEL org.opencontainers.image.title="calico-dataplane-agent" \
      org.opencontainers.image.description="Checks a node's Linux dataplane against what Calico Felix should have programmed, and counts flows and drops with observe-only eBPF programs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE}"

# The agent runs as root with a bounded capability set (see the header): Kubernetes adds
# capabilities to the effective set only for uid 0 (there are no ambient capabilities).
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["agent"]
CMD ["run"]

############################################################################################
FROM runtime-base AS runtime

# A prebuilt agent binary, relative to the build context.
ARG AGENT_BINARY=target/release/agent
COPY --chmod=0755 ${AGENT_BINARY} /usr/local/bin/agent
# hadolint ignore=DL3002
USER 0

############################################################################################
FROM ${BUILDER_BASE} AS builder

# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      binutils \
      build-essential \
      ca-certificates \
      curl \
      pkg-config \
 && rm -rf /var/lib/apt/lists/*

ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH

# Stable builds the agent; the nightly (LLVM 22) builds agent-ebpf with -Z build-std=core.
# aya-build runs the toolchain named plain `nightly`, so the dated one is installed under that
# name (a plain `rustup toolchain install nightly` would take whatever nightly is newest).
ARG RUST_STABLE=1.95.0
ARG RUST_NIGHTLY=nightly-2026-05-19
ARG RUSTUP_VERSION=1.29.0
RUN curl --proto '=https' --tlsv1.2 -sSfo /tmp/rustup-init \
      "https://static.rust-lang.org/rustup/archive/${RUSTUP_VERSION}/x86_64-unknown-linux-gnu/rustup-init" \
 && chmod +x /tmp/rustup-init \
 && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain "${RUST_STABLE}" \
 && rm /tmp/rustup-init \
 && rustup toolchain install "${RUST_NIGHTLY}" --profile minimal --component rust-src \
 && mv "${RUSTUP_HOME}/toolchains/${RUST_NIGHTLY}-x86_64-unknown-linux-gnu" \
       "${RUSTUP_HOME}/toolchains/nightly-x86_64-unknown-linux-gnu" \
 && case "$(rustc +nightly --version --verbose)" in \
      *"LLVM version: 22."*) ;; \
      *) echo "the nightly must ship LLVM 22 (bpf-linker's llvm-22)" >&2; exit 1 ;; \
    esac

# bpf-linker must use the nightly's LLVM (22). The nightly ships libLLVM.so.<ver> but no
# libLLVM.so link name: give it one in a prefix (xtask/src/setup.rs does the same).
ARG BPF_LINKER_VERSION=0.13.0
RUN nightly_lib="$(rustc +nightly --print sysroot)/lib" \
 && mkdir -p /opt/llvm-rust-nightly/lib \
 && for so in "${nightly_lib}"/libLLVM*; do ln -sf "${so}" /opt/llvm-rust-nightly/lib/; done \
 && for so in "${nightly_lib}"/libLLVM.so.*; do ln -sf "${so}" /opt/llvm-rust-nightly/lib/libLLVM.so; done \
 && LLVM_PREFIX=/opt/llvm-rust-nightly cargo install "bpf-linker@${BPF_LINKER_VERSION}" \
      --locked --no-default-features --features llvm-22 \
 && rm -rf "${CARGO_HOME}/registry" "${CARGO_HOME}/git"

WORKDIR /src
COPY . .
RUN cargo build --release --locked -p agent \
 && strip -o /agent target/release/agent

############################################################################################
FROM runtime-base AS release

COPY --from=builder --chmod=0755 /agent /usr/local/bin/agent
# hadolint ignore=DL3002
USER 0
