#!/usr/bin/env bash
# Builds tenantry's OCI image from this repository, with no container daemon
# and no registry: the release binary, the glibc files `ldd` says it links and
# the CA bundle (both from Debian 12 packages), a non-root user (65532), put
# together FROM scratch by Debian's buildah (vfs storage, chroot isolation)
# and written as an OCI archive. It prints the archive's path on stdout.
#
#   hack/image.sh        # build (or reuse) the image, print the archive path
#
# Then, e.g.: skopeo copy oci-archive:<path> docker://registry.example/tenantry:0.1.0
# (docs/install.md, "The image"). Where a registry is reachable,
# `docker build .` builds the same image from the Dockerfile at the root.
#
# Environment:
#   CARGO_TARGET_DIR       default ${TENANTRY_CACHE_DIR:-~/.cache/tenantry}/target
#                          (as hack/test.sh); the archive goes to <it>/image/
#   TENANTRY_IMAGE_SOURCE  the org.opencontainers.image.source label
#                          (default https://github.com/tenantry/tenantry)
#
# Fast when nothing changed: the archive is rebuilt only when the binary, the
# git revision or the recipe (this script, hack/lib/image.Dockerfile) changed.
# buildah's storage lives in a throwaway directory under the cache, removed
# when the script ends; nothing is written into the repository.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf 'image: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

cache=${TENANTRY_CACHE_DIR:-$HOME/.cache/tenantry}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
mkdir -p "$cache/logs"
log=$cache/logs/image.log

# Debian packages the build needs, installed when missing (as hack/localenv.sh does).
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $EUID -eq 0 ]] || die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
  say "installing Debian packages: ${missing[*]} ..."
  {
    timeout 600 apt-get -o DPkg::Lock::Timeout=300 update &&
      DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}"
  } </dev/null >>"$log" 2>&1 || die "apt-get install ${missing[*]} failed (log: $log)"
}
ensure_pkgs buildah umoci

# The metadata of the image: from Cargo.toml and git.
cargo_field() { sed -n "s/^$1 = \"\\(.*\\)\"\$/\\1/p" Cargo.toml | head -n 1; }
version=$(cargo_field version)
description=$(cargo_field description)
licenses=$(cargo_field license)
[[ -n $version && -n $description && -n $licenses ]] || die "cannot read version, description and license from Cargo.toml"
revision=$(git rev-parse HEAD)
# created: the commit's time, so the same commit and binary give the same image.
commit_time=$(git log -1 --format=%ct HEAD)
created=$(date -u -d "@$commit_time" +%Y-%m-%dT%H:%M:%SZ)
source_url=${TENANTRY_IMAGE_SOURCE:-https://github.com/tenantry/tenantry}

say "cargo build --release --bin tenantry (CARGO_TARGET_DIR=$CARGO_TARGET_DIR) ..."
# The same environment whoever calls this (hack/test.sh, a test, a person):
# a build script that reads a variable would otherwise make it another build.
env -i PATH="$PATH" HOME="$HOME" CARGO_TARGET_DIR="$CARGO_TARGET_DIR" \
  ${CARGO_HOME:+CARGO_HOME="$CARGO_HOME"} ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} \
  ${RUSTUP_TOOLCHAIN:+RUSTUP_TOOLCHAIN="$RUSTUP_TOOLCHAIN"} \
  cargo build --release --locked -p tenantry --bin tenantry
binary=$CARGO_TARGET_DIR/release/tenantry
[[ -x $binary ]] || die "no binary at $binary after the build"

out_dir=$CARGO_TARGET_DIR/image
archive=$out_dir/tenantry-$version.oci.tar
key=$(
  {
    sha256sum <"$binary"
    printf '%s\n' "$revision" "$source_url"
    sha256sum <hack/image.sh
    sha256sum <hack/lib/image.Dockerfile
  } | sha256sum | cut -d' ' -f1
)
if [[ -s $archive && -r $archive.key && $(cat "$archive.key") == "$key" ]]; then
  say "up to date: $archive"
  printf '%s\n' "$archive"
  exit 0
fi

work=$(mktemp -d "$cache/image-build.XXXXXX")
cleanup() {
  # vfs layers are owned by root with odd modes; buildah is done with them.
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
rootfs=$work/context/rootfs
mkdir -p "$rootfs"

# The Debian packages the binary needs at run time, downloaded (not
# installed) into a cache keyed by their versions, and unpacked.
debs=$cache/debs
mkdir -p "$debs"
pkgs=(libc6 ca-certificates)
linked=$(ldd "$binary") || die "ldd $binary failed"
if grep -q 'libgcc_s\.so' <<<"$linked"; then pkgs+=(libgcc-s1); fi
for p in "${pkgs[@]}"; do
  v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) || v=""
  deb=$(compgen -G "$debs/${p}_*.deb" | head -n 1 || true)
  # The host's version (the binary was linked against it), else apt's candidate.
  if [[ -n $v && -n $deb && $deb == "$debs/${p}_${v//:/%3a}_"* ]]; then continue; fi
  rm -f "$debs/${p}"_*.deb
  say "apt-get download $p${v:+=$v} ..."
  (cd "$debs" && { apt-get download "$p${v:+=$v}" || apt-get download "$p"; }) >>"$log" 2>&1 ||
    die "apt-get download $p failed (log: $log)"
done
for p in "${pkgs[@]}"; do
  mkdir -p "$work/pkg/$p"
  dpkg-deb -x "$(compgen -G "$debs/${p}_*.deb" | head -n 1)" "$work/pkg/$p"
done

# The binary, and every file `ldd` lists, taken from the packages at the
# path the binary asks for (the loader at its PT_INTERP path).
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/tenantry"
while read -r path; do
  name=${path##*/}
  src=""
  for p in "${pkgs[@]}"; do
    for dir in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do
      if [[ -f $work/pkg/$p/$dir/$name && ! -L $work/pkg/$p/$dir/$name ]]; then
        src=$work/pkg/$p/$dir/$name
      fi
    done
  done
  [[ -n $src ]] || die "$path, which the binary links, is in none of the packages ${pkgs[*]}"
  install -D -m 0755 "$src" "$rootfs$path"
done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$linked" | sort -u)

# CA certificates: the bundle update-ca-certificates would make from the
# package's Mozilla set, at the path Debian (and rustls-native-certs) use.
certs=("$work"/pkg/ca-certificates/usr/share/ca-certificates/mozilla/*.crt)
((${#certs[@]} > 10)) || die "the ca-certificates package holds no certificates"
mkdir -p "$rootfs/etc/ssl/certs"
for c in "${certs[@]}"; do
  cat "$c"
  [[ $(tail -c 1 "$c") == "" ]] || echo
done >"$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$rootfs/etc/ssl/certs/ca-certificates.crt"

# The non-root user the chart runs as, and a writable /tmp.
printf 'root:x:0:0:root:/root:/sbin/nologin\ntenantry:x:65532:65532:tenantry:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\ntenantry:x:65532:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
install -d -m 1777 "$rootfs/tmp"
cp hack/lib/image.Dockerfile "$work/context/Dockerfile"

# buildah, with every piece of its state in the throwaway directory.
mkdir -p "$work/tmp"
printf '{"default": [{"type": "insecureAcceptAnything"}]}\n' >"$work/policy.json"
bh() {
  TMPDIR=$work/tmp buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"
}
tag=localhost/tenantry:$version
say "buildah bud (FROM scratch) ..."
bh bud --isolation chroot --format oci --signature-policy "$work/policy.json" \
  --timestamp "$commit_time" \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --build-arg CREATED="$created" --build-arg SOURCE="$source_url" \
  --build-arg DESCRIPTION="$description" --build-arg LICENSES="$licenses" \
  -f "$work/context/Dockerfile" -t "$tag" "$work/context" >>"$log" 2>&1 ||
  die "buildah bud failed (log: $log)"
mkdir -p "$out_dir"
rm -f "$archive" "$archive.key"
bh push --signature-policy "$work/policy.json" "$tag" "oci-archive:$archive.tmp:tenantry:$version" >>"$log" 2>&1 ||
  die "buildah push to oci-archive failed (log: $log)"
mv "$archive.tmp" "$archive"
printf '%s\n' "$key" >"$archive.key"
say "built $archive ($(du -h "$archive" | cut -f1)): tenantry $version, revision $revision"
printf '%s\n' "$archive"
