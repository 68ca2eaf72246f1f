# syntax=docker/dockerfile:1
#
# Twill's image: twill-node, twill-cni and twillctl as static binaries.
#
# Build:   docker build -t ghcr.io/twill-dev/twill:0.1.0 .
#
# Stage 1 builds on Alpine, where Rust's host target is
# x86_64-unknown-linux-musl (or aarch64-…-musl) and executables are linked
# statically by default, so no cross toolchain or `rustup target add` is
# needed; gcc and musl-dev compile the C parts (ring, SQLite). The build
# fails if any binary ends up dynamically linked.
#
# Stage 2 is Alpine too, not scratch/distroless: the init container needs a
# shell and cp/mv to install twill-cni on the host, and the nftables crate
# applies rulesets through the `nft` executable, which comes from Alpine's
# nftables package. The result is about 15 MB.

ARG RUST_VERSION=1.95
ARG ALPINE_VERSION=3.22

FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS build
RUN apk add --no-cache build-base musl-dev binutils
WORKDIR /src
# Dependencies first, so a source change does not rebuild them: copy only
# the manifests and build against placeholder crates (allowed to fail: it
# only fills the cache), remove the placeholders, then copy the sources.
COPY Cargo.toml Cargo.lock ./
COPY api/Cargo.toml api/
COPY bgpd/Cargo.toml bgpd/
COPY ipam/Cargo.toml ipam/
COPY felix/Cargo.toml felix/
COPY policy/Cargo.toml policy/
COPY cni/Cargo.toml cni/
COPY ctl/Cargo.toml ctl/
COPY tests/Cargo.toml tests/
COPY bench/Cargo.toml bench/
RUN for c in api bgpd ipam felix policy cni ctl tests bench; do \
      mkdir -p $c/src $c/src/bin && echo '' > $c/src/lib.rs; \
    done \
 && echo 'fn main() {}' > felix/src/bin/twill-node.rs \
 && echo 'fn main() {}' > cni/src/main.rs \
 && echo 'fn main() {}' > ctl/src/main.rs \
 && (cargo build --release --locked -p twill-felix -p twill-cni -p twillctl || true) \
 && rm -rf api/src bgpd/src ipam/src felix/src policy/src cni/src ctl/src tests/src bench/src
COPY . .
# Make cargo see the real sources as newer than the placeholder builds.
RUN find api bgpd ipam felix policy cni ctl -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p twill-felix -p twill-cni -p twillctl \
 && mkdir -p /out \
 && for b in twill-node twill-cni twillctl; do \
      cp target/release/$b /out/$b; \
      if readelf -d /out/$b | grep -q NEEDED; then \
        echo "$b is dynamically linked" >&2; exit 1; \
      fi; \
      strip --strip-debug /out/$b; \
    done

FROM alpine:${ALPINE_VERSION}
RUN apk add --no-cache nftables iproute2-minimal
COPY --from=build /out/twill-node /out/twill-cni /out/twillctl /usr/local/bin/
# twillctl as a kubectl plugin (`kubectl twill ...` inside the container).
RUN ln -s twillctl /usr/local/bin/kubectl-twill
LABEL org.opencontainers.image.source="https://github.com/twill-dev/twill" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.description="Twill: twill-node, twill-cni, twillctl"
ENTRYPOINT ["/usr/local/bin/twill-node"]
