#!/usr/bin/env bash
# Builds archway's own image for several architectures and assembles one manifest list with
# buildah: the per-architecture workflow archway's fallbacks exist for, applied to ourselves.
#
#   deploy/build-multiarch.sh [REGISTRY/REPO:TAG]     (default: localhost/archway:latest)
#   ARCHES="amd64 arm64 s390x ppc64le" deploy/build-multiarch.sh ...
#
# Each architecture is built natively with cargo when its Rust target is installed
# (rustup target add <triple>, plus a cross linker for foreign targets); architectures whose
# target is missing are skipped with a message. Each image is assembled from scratch: the
# binary, the shared libraries it links, the container config, `--arch/--os` set, so an
# image's config always names the architecture its binary was built for. With a REGISTRY the
# list is pushed with `buildah manifest push --all`.
#
# Built and verified on the development machine (2026-11-28): linux/amd64 only — the image
# runs (`podman run --rm localhost/archway:build-amd64 --version` prints `archway 0.1.0`) and
# the list is assembled. arm64, s390x and ppc64le were skipped: that machine can install no
# Rust cross targets or cross linkers, and reaches no registry for base images (so
# deploy/Containerfile, which starts from docker.io/library/rust and distroless, was not built
# there either).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-localhost/archway:latest}
arches=${ARCHES:-"amd64 arm64 s390x ppc64le"}
list=archway-multiarch-$$
buildah manifest create "$list" >/dev/null
built=()
for arch in $arches; do
  case $arch in
    amd64) triple=x86_64-unknown-linux-gnu ;;
    arm64) triple=aarch64-unknown-linux-gnu ;;
    s390x) triple=s390x-unknown-linux-gnu ;;
    ppc64le) triple=powerpc64le-unknown-linux-gnu ;;
    *) echo "unknown arch $arch" >&2; exit 2 ;;
  esac
  host=$(rustc -vV | sed -n 's/^host: //p')
  if [ "$triple" = "$host" ]; then
    cargo build --release --locked --bin archway
    bin=target/release/archway
  elif rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    cargo build --release --locked --bin archway --target "$triple"
    bin=target/$triple/release/archway
  else
    echo "skipping $arch: Rust target $triple is not installed" >&2
    continue
  fi
  ctr=$(buildah from scratch)
  buildah copy "$ctr" "$bin" /usr/local/bin/archway >/dev/null
  buildah copy "$ctr" deploy/archway-container.toml /etc/archway/archway.toml >/dev/null
  # The dynamic loader and the libraries the binary links (glibc, libgcc).
  if [ "$triple" = "$host" ]; then
    for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
      buildah copy "$ctr" "$lib" "$lib" >/dev/null
    done
  fi
  buildah config --arch "$arch" --os linux --user 65532:65532 \
    --port 5000 --port 9090 --volume /var/cache/archway \
    --entrypoint '["/usr/local/bin/archway"]' \
    --cmd 'serve --config /etc/archway/archway.toml' "$ctr"
  img=$(buildah commit --rm "$ctr" "localhost/archway:build-$arch")
  buildah manifest add --arch "$arch" --os linux "$list" "$img" >/dev/null
  built+=("$arch")
done
[ ${#built[@]} -gt 0 ] || { echo "nothing built" >&2; exit 1; }
echo "built: ${built[*]}"
case $dest in
  localhost/*) buildah manifest inspect "$list" ;;
  *) buildah manifest push --all --tls-verify="${TLS_VERIFY:-true}" "$list" "docker://$dest" ;;
esac
