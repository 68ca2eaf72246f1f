# Twill's image as it is built and tested here: twill-node, twill-cni and
# twillctl on a minimal Debian 12 (bookworm) base.
#
# Build:   scripts/image.sh            (→ localhost/twill:dev)
#
# Base: no Docker engine or image registry is reachable where Twill is
# built and tested, so neither the rust:alpine nor the alpine image behind
# Dockerfile.alpine (static musl binaries, ~15 MB) can be pulled. The base
# is made locally instead: `debootstrap --variant=minbase
# --include=nftables,iproute2 bookworm` from the Debian mirror apt uses,
# imported with `podman import` as localhost/twill-base:bookworm (about
# 230 MB). Debian rather than distroless/scratch for the same reasons as
# the Alpine image: the init container needs /bin/sh, cp, chmod and mv to
# install twill-cni on the host, and twill-node applies rulesets through
# the `nft` executable.
#
# Binaries: built by cargo on the build machine (Debian 12, so the same
# glibc as this base; no Rust toolchain can be fetched into the image
# either) and passed in the build context's dist/ directory.
ARG BASE=localhost/twill-base:bookworm
FROM ${BASE}
COPY dist/twill-node dist/twill-cni dist/twillctl /usr/local/bin/
CMD ["/usr/local/bin/twill-node"]
