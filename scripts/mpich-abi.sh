#!/usr/bin/env bash
# Make Debian's MPICH swappable the way the MPICH ABI means: everything that links it asks for
# libmpi.so.12, the name a site's replacement library has (cray-mpich-abi on Polaris and Frontier,
# podman-hpc --mpi on Perlmutter), instead of Debian's own name for it, libmpich.so.12.
#
#   bash scripts/mpich-abi.sh [DIR...]           (in the image's %post: apptainer/hpcmorph-mpich.def)
#   bash scripts/mpich-abi.sh --check [DIR...]   (exit 1, naming them, if anything still asks for libmpich.so.12)
#
# Why: the dynamic linker looks a library up by the name a program asks for. A site puts a folder
# holding its libmpi.so.12 first on LD_LIBRARY_PATH; a program that asks for libmpich.so.12 passes
# that folder by and loads the image's MPICH, which knows neither the site's network nor its
# launcher. So: the library is renamed to the ABI's name (patchelf --set-soname libmpi.so.12, and
# ldconfig makes the libmpi.so.12 link beside Debian's libmpich.so.12 link; what is built against it
# later asks for libmpi.so.12 too), and every shared library and program under DIR (default /usr/lib
# /usr/bin) that needs libmpich.so.12 is made to need libmpi.so.12 instead (patchelf
# --replace-needed: the list of needed names is all that changes). Then the image runs on its own
# MPICH as before, and on the site's where the site puts it.
set -euo pipefail

say() { printf 'mpich-abi: %s\n' "$*"; }
die() { printf 'mpich-abi: %s\n' "$*" >&2; exit 1; }

check=
if [[ ${1:-} == --check ]]; then check=1; shift; fi
dirs=("$@")
[[ ${#dirs[@]} -gt 0 ]] || dirs=(/usr/lib /usr/bin)
command -v patchelf >/dev/null || die "patchelf not found (Debian: apt-get install patchelf)"

# Everything (shared libraries, extension modules, programs) under the folders that needs $1.
needing() {
    local name=$1 f needed
    while IFS= read -r -d '' f; do
        # Not an ELF file, or one without a dynamic section: patchelf says so and it is skipped.
        needed=$(patchelf --print-needed "$f" 2>/dev/null) || continue
        if grep -qxF "$name" <<<"$needed"; then printf '%s\n' "$f"; fi
    done < <(find "${dirs[@]}" -xdev -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0 2>/dev/null)
    return 0
}

if [[ -n $check ]]; then
    left=$(needing libmpich.so.12)
    [[ -z $left ]] || die "these still need libmpich.so.12, not libmpi.so.12: $(tr '\n' ' ' <<<"$left")"
    ldconfig -p | grep -q 'libmpi\.so\.12 ' || die "no libmpi.so.12 known to the dynamic linker"
    say "ok: nothing needs libmpich.so.12; libmpi.so.12 is $(readlink -f "$(ldconfig -p | awk '/libmpi\.so\.12 /{print $NF; exit}')")"
    exit 0
fi

link=$(ldconfig -p | awk '/libmpich\.so\.12 /{print $NF; exit}')
[[ -n $link ]] || die "no libmpich.so.12 known to the dynamic linker (Debian: apt-get install libmpich12)"
real=$(readlink -f "$link")
patchelf --set-soname libmpi.so.12 "$real"
ln -sf "$(basename "$real")" "$(dirname "$real")/libmpi.so.12"
n=0
while IFS= read -r f; do
    patchelf --replace-needed libmpich.so.12 libmpi.so.12 "$f"
    n=$((n + 1))
done < <(needing libmpich.so.12)
ldconfig
say "libmpi.so.12 -> $real; $n file(s) now need libmpi.so.12 instead of libmpich.so.12"
