#!/usr/bin/env bash
# Build a container image from an Apptainer definition file the way `apptainer build` does, without
# Apptainer (it is not packaged for Debian 12): a root file system made by debootstrap from the
# def's header, its %setup run on the host, %files copied, %post run in a chroot, %environment,
# %runscript, %test, %labels and %help written where Apptainer puts them (/.singularity.d), %test
# run in the chroot, and the result packed as a SquashFS image, which Charliecloud's ch-run runs as
# it is, or as a tar of the root file system (IMAGE ending in .tar), which `podman import` makes an
# OCI image of (scripts/build-oci.sh). Every section is read from the def file itself.
#
#   bash scripts/build-image.sh [DEF] [IMAGE]      (as root; `make image` builds the CPU image)
#
# DEF defaults to apptainer/hpcmorph-cpu.def, IMAGE to DEF's name with .sqfs in the current
# directory. Run it from the repository root, as `apptainer build` is: %setup takes the files git
# tracks in the checkout around the current directory.
#
# Environment:
#   HPCMORPH_CACHE      kept between builds on this machine (default /var/cache/hpcmorph): the
#                       debootstrap result as a tarball (refreshed after 30 days), pip's cache and
#                       the wheels scripts/setup.sh keeps there (the host's `make setup` too)
#   HPCMORPH_BUILD_TMP  a folder to assemble the ~7 GB root file system in; by default it is
#                       assembled in memory (tmpfs) when 16 GiB are available, else in /var/tmp
#   HPCMORPH_SQUASHFS   mksquashfs compression options (default "-comp zstd -Xcompression-level 1", below)
#   HPCMORPH_NO_TEST=1  skip %test (apptainer build --notest)
#   HPCMORPH_NO_APT=1   never install the build tools with apt
#
# The build host's own ways of reaching the package registries (its pip configuration and PIP_*
# variables, with the local wheel folders and indexes they name, its CA bundle, its proxies) are
# handed to %post for the build only, as a site's build node would, and never written into the
# image: they live in /.hpcmorph-build, bind-mounted read-only and removed before packing.
set -euo pipefail

say() { printf 'build-image: %s\n' "$*"; }
# User mistakes: one line, exit 2 (the project's rule for every command).
usage_error() { printf 'hpcmorph: error: %s\n' "$*" >&2; exit 2; }
fail() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

def=${1:-apptainer/hpcmorph-cpu.def}
[[ $# -le 2 ]] || usage_error "build-image.sh takes DEF and IMAGE, not more arguments"
[[ -f "$def" ]] || usage_error "no definition file $def"
image=${2:-$(basename "$def" .def).sqfs}
[[ $image == *.sqfs || $image == *.tar ]] \
    || usage_error "IMAGE must end in .sqfs (a SquashFS image) or .tar (the root file system for podman import), not '$image'"
[[ -d "$(dirname "$image")" ]] || usage_error "no directory $(dirname "$image") for $image"
[[ $(id -u) -eq 0 ]] || usage_error "build-image.sh must run as root (debootstrap, chroot and mounts), as apptainer build does"
# The whole build runs in a mount namespace of its own: every mount it makes (the tmpfs it builds
# in, the chroot's /proc, /dev and binds) is private to it and gone when it ends, however it ends.
if [[ -z ${HPCMORPH_BUILD_NAMESPACE:-} ]]; then
    HPCMORPH_BUILD_NAMESPACE=1 exec unshare --mount --propagation private -- /bin/bash "$0" "$@"
fi
def=$(cd "$(dirname "$def")" && pwd)/$(basename "$def")
image=$(cd "$(dirname "$image")" && pwd)/$(basename "$image")

cache=${HPCMORPH_CACHE:-/var/cache/hpcmorph}
squashfs_opts=${HPCMORPH_SQUASHFS:--comp zstd -Xcompression-level 1}

# --- the build tools -------------------------------------------------------------------------
# ch-run is not needed to build; it is installed here because what is built is run with it
# (the container tests, and anyone checking the image on this machine).
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v ch-run >/dev/null || need+=(charliecloud-runtime)
if [[ ${#need[@]} -gt 0 ]]; then
    if [[ -n "${HPCMORPH_NO_APT:-}" ]] || ! command -v apt-get >/dev/null; then
        [[ " ${need[*]} " == *" charliecloud-runtime "* && ${#need[@]} -eq 1 ]] \
            || usage_error "missing ${need[*]} (install them, or run without HPCMORPH_NO_APT as root on Debian)"
    else
        say "installing ${need[*]} with apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
    fi
fi

# --- the definition file ---------------------------------------------------------------------
# header KEY: its value (keys are case-insensitive, as Apptainer reads them).
header() {
    awk -v key="$(tr '[:upper:]' '[:lower:]' <<<"$1")" '
        /^%/ { exit }
        /^[ \t]*#/ { next }
        { i = index($0, ":"); if (i == 0) next
          k = tolower(substr($0, 1, i - 1)); gsub(/^[ \t]+|[ \t]+$/, "", k)
          if (k == key) { v = substr($0, i + 1); gsub(/^[ \t]+|[ \t]+$/, "", v); print v; exit } }' "$def"
}
# section NAME: its lines as written. A section header with arguments (%post -c /bin/bash) is not
# supported here: refused rather than run with another shell than the def asks for.
section() {
    awk -v want="$1" '
        /^%[A-Za-z]+/ { name = substr($1, 2); on = (name == want)
                        if (on && NF > 1) { print "ARGS" > "/dev/stderr"; exit 3 }
                        next }
        on' "$def"
}
# section_line NAME: the line number of its header (for pointing at a failing line).
section_line() { awk -v want="%$1" '$1 == want { print NR; exit }' "$def"; }

# shellcheck disable=SC2013  # section names are single words
for name in $(awk '/^%[A-Za-z]+/ { print substr($1, 2) }' "$def"); do
    case $name in
        setup|files|post|environment|runscript|test|labels|help) ;;
        *) usage_error "$def: section %$name is not supported by build-image.sh" ;;
    esac
    section "$name" >/dev/null 2>&1 || usage_error "$def: %$name has arguments; build-image.sh runs sections with /bin/sh only"
done
bootstrap=$(header bootstrap)
[[ $bootstrap == debootstrap ]] \
    || usage_error "$def: Bootstrap: ${bootstrap:-(none)}; build-image.sh builds debootstrap definitions only (use apptainer build)"
osversion=$(header osversion)
mirror=$(header mirrorurl)
include=$(header include)
[[ -n $osversion && -n $mirror ]] || usage_error "$def: a debootstrap definition needs OSVersion and MirrorURL"
arch=$(dpkg --print-architecture)

# --- the work area, cleaned up however the build ends ------------------------------------------
mkdir -p "$cache/rootfs" "$cache/pip"
work=$(mktemp -d "${HPCMORPH_BUILD_TMP:-/var/tmp}/hpcmorph-image.XXXXXX")
rootfs=$work/rootfs
partial="$image.partial.$$"
# In memory when there is room: faster to fill, and gone at once (deleting the 68,000 files of the
# tree from this machine's disk took 1 to 2 minutes).
in_memory=
if [[ -z ${HPCMORPH_BUILD_TMP:-} ]] && (( $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) >= 16 * 1024 * 1024 )); then
    mount -t tmpfs -o size=12g,mode=0755 hpcmorph-build "$work"
    in_memory=1
fi
cleanup() {
    rm -f -- "$partial"
    if [[ -n $in_memory ]]; then
        umount "$work" 2>/dev/null || umount -l "$work"
        rmdir "$work"
    else
        # The chroot's mounts lived in namespaces of their own (in_chroot), gone with their
        # processes, so nothing of /dev or /proc is under $rootfs; --one-file-system is a second guard.
        rm -rf --one-file-system -- "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$rootfs"
elapsed() { echo $((SECONDS - $1)); }

# --- 1. the base system: debootstrap, cached as a tarball --------------------------------------
# Apptainer's debootstrap agent runs exactly this command line.
# shellcheck disable=SC2054  # the commas separate debootstrap's --exclude list, not array elements
deboot=(debootstrap --variant=minbase --exclude=openssl,udev,debconf-i18n,e2fsprogs "--include=apt${include:+,${include// /,}}"
        "--arch=$arch" "$osversion" "$rootfs" "$mirror")
key=$(printf '%s\n' "${deboot[@]/#$rootfs/ROOTFS}" "$(dpkg-query -W -f '${Version}' debootstrap)" | sha256sum | cut -c1-16)
tarball=$cache/rootfs/$osversion-$arch-$key.tar
t0=$SECONDS
# Refreshed monthly: %post upgrades nothing it does not install, so an old base would stay old.
if [[ -f $tarball ]] && [[ -z $(find "$tarball" -mtime +30) ]]; then
    tar -C "$rootfs" --xattrs --xattrs-include='*' -xf "$tarball"
    say "base system: $osversion from the cache ($tarball), $(elapsed $t0) s${in_memory:+ (building in memory)}"
else
    say "base system: debootstrap $osversion from $mirror${in_memory:+ (building in memory)}"
    "${deboot[@]}" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
    tar -C "$rootfs" --xattrs --xattrs-include='*' -cf "$tarball.$$" . && mv "$tarball.$$" "$tarball"
    say "base system: debootstrap done in $(elapsed $t0) s, cached as $tarball"
fi
# debootstrap copies the build host's resolv.conf and hostname: not the image's business (the
# runtime binds its own resolv.conf and hosts; these must exist as bind targets).
: >"$rootfs/etc/resolv.conf"
echo hpcmorph >"$rootfs/etc/hostname"
[[ -f $rootfs/etc/hosts ]] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$rootfs/etc/hosts"
mkdir -p "$rootfs/.singularity.d/env" "$rootfs/.singularity.d/actions"
: >"$rootfs/.singularity.d/env/91-environment.sh"

# --- 2. %setup on the host, %files -------------------------------------------------------------
if [[ -n $(section setup) ]]; then
    section setup >"$work/setup.sh"
    say "%setup (on the host, in $PWD)"
    APPTAINER_ROOTFS=$rootfs SINGULARITY_ROOTFS=$rootfs /bin/sh -ex "$work/setup.sh" \
        || fail "%setup failed (exit $?)"
fi
while read -r src dst _; do
    [[ -z $src || $src == \#* ]] && continue
    dst=${dst:-$src}
    mkdir -p "$rootfs$(dirname "$dst")"
    cp -a -- "$src" "$rootfs$dst"
done < <(section files)

# --- 3. %post in a chroot ----------------------------------------------------------------------
build=/.hpcmorph-build            # inside the root file system; removed before packing
mkdir -p "$rootfs$build/pip-cache" "$rootfs$build/host"
binds=$work/binds                 # host path <TAB> path in the root file system, mounted read-only
: >"$binds"
# pip's cache, and the wheels scripts/setup.sh keeps (the parallel h5py: taken only when built on
# the same system, Python, MPI and HDF5, as the host's `make setup` on Debian 12 builds it), are
# this machine's caches, read and written by the build.
mkdir -p "$cache/wheels"
post_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
          APPTAINER_ENVIRONMENT=/.singularity.d/env/91-environment.sh
          SINGULARITY_ENVIRONMENT=/.singularity.d/env/91-environment.sh
          "PIP_CACHE_DIR=$build/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1 "HPCMORPH_CACHE=$build/cache")
mkdir -p "$rootfs$build/cache/wheels"
printf '%s\t%s\n' "$cache/pip" "$build/pip-cache" "$cache/wheels" "$build/cache/wheels" >>"$binds"

# A host path as %post sees it: bound read-only under $build/host. An index page (a PEP 503
# "simple" folder) links to files beside it (../../files/...), so its parent is bound.
# (No command substitution here: `bound` must be filled in this shell, not a subshell.)
declare -A bound=()
# translate KEY VALUE: sets $translated to VALUE with every local path or file: URL in it made
# visible to %post.
translate() {
    local key=$1 value=$2 word path out=() kind=path
    [[ $key == index-url || $key == extra-index-url ]] && kind=index
    for word in $value; do
        path=${word#file://}
        if [[ $path == /* && -e $path ]]; then
            if [[ $kind == index ]]; then bound[$(dirname "$path")]=1; else bound[$path]=1; fi
            out+=("${word%"$path"}$build/host$path")
        else
            out+=("$word")
        fi
    done
    translated=${out[*]}
}
# pip's settings as the host's pip sees them (its config files, then PIP_* variables, which win),
# as PIP_* variables for %post.
declare -A pip_setting=()
if command -v python3 >/dev/null && pip_config=$(python3 -m pip config list 2>/dev/null); then
    for pass in file env; do
        while IFS= read -r line; do
            [[ $line =~ ^([^=]+)\.([A-Za-z0-9_-]+)=\'(.*)\'$ ]] || continue
            variant=${BASH_REMATCH[1]} key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
            [[ $pass == env && $variant != :env: ]] && continue
            [[ $pass == file && $variant == :env: ]] && continue
            [[ $key == cache-dir || $key == no-cache-dir ]] && continue   # the build's own cache
            pip_setting[$key]=$value
        done <<<"$pip_config"
    done
fi
for key in "${!pip_setting[@]}"; do
    var=PIP_$(tr 'a-z-' 'A-Z_' <<<"$key")
    translate "$key" "${pip_setting[$key]}"
    post_env+=("$var=$translated")
done
# The CA bundle and proxies other tools of %post use (git, curl, requests), where the host sets them.
for var in SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO \
           http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -n ${!var:-} ]] || continue
    translate "$var" "${!var}"
    post_env+=("$var=$translated")
done
# apt's proxy, where the host's apt has one (an APT_CONFIG file in $build, not /etc/apt).
if apt_proxy=$(apt-config dump 2>/dev/null | grep -E '^Acquire::[a-z]+::Proxy ') && [[ -n $apt_proxy ]]; then
    printf '%s\n' "$apt_proxy" >"$rootfs$build/apt.conf"
    post_env+=("APT_CONFIG=$build/apt.conf")
fi

# The binds: each host path once, and none inside another (SSL_CERT_DIR=/etc/ssl/certs and
# PIP_CERT=/etc/ssl/certs/ca-certificates.crt is one bind), since a mount point cannot be made in
# a read-only bind, and must not be made in the host's folder.
inside_kept() {
    local k
    for k in "${kept[@]}"; do [[ $1 == "$k" || $1 == "${k%/}"/* ]] && return 0; done
    return 1
}
kept=()
while IFS= read -r path; do
    [[ -z $path ]] || inside_kept "$path" && continue
    kept+=("$path")
    printf '%s\t%s\n' "$path" "$build/host$path" >>"$binds"
done < <(printf '%s\n' "${!bound[@]}" | LC_ALL=C sort)

# in_chroot ENV... COMMAND...: run COMMAND in the root file system with /proc, /sys, /dev,
# a private /tmp and /dev/shm, the host's resolv.conf and hosts, and the read-only binds, all in
# a mount namespace of its own: the kernel takes every mount down when the command ends, however
# it ends, and the host never sees them.
in_chroot() {
    unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
        r=$1 binds=$2; shift 2
        mount -t proc proc "$r/proc"
        mount -t sysfs -o ro sysfs "$r/sys"
        mount --rbind /dev "$r/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$r/dev/shm"
        mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
        for f in resolv.conf hosts; do [[ -e /etc/$f ]] && mount --bind "/etc/$f" "$r/etc/$f"; done
        while IFS=$'"'\t'"' read -r src dst; do
            [[ -d $src ]] && mkdir -p "$r$dst" || { mkdir -p "$(dirname "$r$dst")"; touch "$r$dst"; }
            mount --bind "$src" "$r$dst"
            [[ $dst == */pip-cache || $dst == */cache/wheels ]] || mount -o remount,bind,ro "$r$dst"
        done <"$binds"
        exec chroot "$r" /usr/bin/env -i "$@"' in_chroot "$rootfs" "$binds" "$@"
}

section post >"$rootfs$build/post.script"
say "%post (in a chroot of $rootfs)"
t0=$SECONDS
set +e
# Apptainer runs %post as /bin/sh -ex in a clean environment, from /.
in_chroot "${post_env[@]}" /bin/sh -c "cd / && exec /bin/sh -ex $build/post.script" 2>&1 | tee "$work/post.log"
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 ]]; then
    # -x traces every command of the script as "+ command": the last trace is the line that failed.
    last=$(grep -E '^\+ ' "$work/post.log" | tail -n 1 || true)
    fail "%post failed (exit $status) in $def (%post at line $(section_line post)); the last line it ran: ${last:-(none traced)}"
fi
say "%post done in $(elapsed $t0) s"

# --- 4. what Apptainer writes into /.singularity.d ---------------------------------------------
sd=$rootfs/.singularity.d
{ echo '#!/bin/sh'; section environment; } >"$sd/env/90-environment.sh"
{ echo '#!/bin/sh'; section runscript; } >"$sd/runscript"
{ echo '#!/bin/sh'; section test; } >"$sd/test"
section help >"$sd/runscript.help"
chmod 755 "$sd/runscript" "$sd/test" "$sd/env/90-environment.sh"
# labels.json: one "key": "value" per %labels line (the value is the rest of the line).
section labels | awk '
    function q(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return "\"" s "\"" }
    NF { key = $1; sub(/^[ \t]*[^ \t]+[ \t]*/, ""); out = out (n++ ? ",\n" : "") "  " q(key) ": " q($0) }
    END { print "{\n" out "\n}" }' >"$sd/labels.json"
# The actions a runtime that reads no %environment can call: ch-run IMAGE -- /.singularity.d/actions/run ARGS
for action in exec run test; do
    case $action in
        exec) last='exec "$@"' ;;
        run) last='exec /.singularity.d/runscript "$@"' ;;
        test) last='exec /bin/sh -ex /.singularity.d/test "$@"' ;;
    esac
    printf '#!/bin/sh\nfor f in /.singularity.d/env/*.sh; do [ -f "$f" ] && . "$f"; done\n%s\n' "$last" >"$sd/actions/$action"
    chmod 755 "$sd/actions/$action"
done

# --- 5. %test in the chroot, as apptainer build runs it (before packing) -----------------------
if [[ -z "${HPCMORPH_NO_TEST:-}" && -n $(section test) ]]; then
    say "%test"
    t0=$SECONDS
    in_chroot PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        /bin/sh -c 'cd / && exec /.singularity.d/actions/test' || fail "%test failed (exit $?); no image written"
    say "%test passed in $(elapsed $t0) s"
fi

# --- 6. pack -----------------------------------------------------------------------------------
rm -rf --one-file-system -- "${rootfs:?}$build"
t0=$SECONDS
# zstd at level 1: the 7.1 GB root file system (mostly torch's CUDA libraries) packed on 2 busy cores
# in 27 s to 3.5 GB, against 754 s to 3.4 GB with mksquashfs's default gzip, 22 s to 4.1 GB with
# lz4 (docs/hpc.md). squashfuse (ch-run) and the kernel read zstd.
if [[ $image == *.tar ]]; then
    # Numeric owners: the image's users are its own /etc/passwd's, not this host's.
    tar -C "$rootfs" --numeric-owner --xattrs --xattrs-include='*' -cf "$partial" .
else
    # shellcheck disable=SC2086  # the options are words
    mksquashfs "$rootfs" "$partial" -noappend -quiet -no-progress $squashfs_opts >/dev/null
fi
mv -f "$partial" "$image"
say "image: $image ($(du -h "$image" | cut -f1)), packed in $(elapsed $t0) s"
