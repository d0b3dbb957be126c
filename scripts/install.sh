#!/usr/bin/env bash
# Builds a release and installs umdev: the programs (umdev, the benchmark
# tool umdev-bench, vfio-user-conformance), man pages (made by
# swift-argument-parser's generate-manual plugin), the vfio-user backend
# descriptions (share/vfio-user), the systemd units, the conformance suite's
# profiles and the documentation.
#
#   scripts/install.sh [--prefix DIR] [--destdir DIR] [--configuration release|debug] [--no-build]
#   scripts/install.sh --uninstall [--prefix DIR] [--destdir DIR]
#
# --prefix (default /usr/local) is where the files will live; --destdir
# stages them under another root for a package (DESTDIR=pkg/ ...), with every
# path inside the files still naming --prefix. The list of what was
# installed is kept in PREFIX/share/umdev/install-manifest, so --uninstall
# removes exactly that. --no-build installs what is built already;
# --configuration debug installs the debug build (the tests do, to save a
# release build).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=
build=1
uninstall=0
configuration=release
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix takes a directory}; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --destdir) destdir=${2:?--destdir takes a directory}; shift 2 ;;
        --destdir=*) destdir=${1#--destdir=}; shift ;;
        --no-build) build=0; shift ;;
        --configuration) configuration=${2:?--configuration takes release or debug}; shift 2 ;;
        --configuration=*) configuration=${1#--configuration=}; shift ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be an absolute path" >&2; exit 2 ;; esac
case "$configuration" in release|debug) ;; *) echo "install.sh: --configuration is release or debug" >&2; exit 2 ;; esac
prefix=${prefix%/}
root="$destdir$prefix"
manifest="$root/share/umdev/install-manifest"

if [ "$uninstall" = 1 ]; then
    [ -f "$manifest" ] || { echo "install.sh: nothing installed under $root (no $manifest)" >&2; exit 1; }
    while IFS= read -r f; do rm -f "$root/$f"; done < "$manifest"
    rm -f "$manifest"
    # Directories of ours that are now empty go too; shared ones (bin, man1) stay if anything is left in them.
    for d in share/umdev share/doc/umdev share/vfio-user-conformance/profiles share/vfio-user-conformance share/vfio-user; do
        rmdir "$root/$d" 2>/dev/null || true
    done
    echo "removed umdev from $root"
    exit 0
fi

programs=(umdev umdev-bench vfio-user-conformance)
# A release carries the Swift runtime and Foundation inside the programs
# (--static-swift-stdlib, its own build directory): every start of umdev,
# and so every live upgrade and every restart after a crash, then spends
# no time resolving them from shared libraries (8 ms instead of 11 from
# exec to READY=1 here; the binary is about 100 MB with ICU's data).
build_path=.build
static=()
if [ "$configuration" = release ]; then build_path=.build-static; static=(--static-swift-stdlib); fi
if [ "$build" = 1 ]; then
    for p in "${programs[@]}"; do swift build -c "$configuration" "${static[@]}" --build-path "$build_path" --product "$p"; done
    # Every ArgumentParser program's manual, one page per subcommand (umdev.serve.1, …).
    swift package generate-manual --configuration "$configuration" --multi-page >/dev/null
fi
bin=$build_path/$configuration
man=.build/plugins/GenerateManual/outputs
for p in "${programs[@]}"; do [ -x "$bin/$p" ] || { echo "install.sh: $bin/$p is not built (drop --no-build)" >&2; exit 1; }; done

installed=()
put() { # put MODE SOURCE DEST (relative to the prefix)
    install -D -m "$1" "$2" "$root/$3"
    installed+=("$3")
}
for p in "${programs[@]}"; do put 755 "$bin/$p" "bin/$p"; done
for page in "$man"/*/*.1; do
    [ -f "$page" ] && put 644 "$page" "share/man/man1/$(basename "$page")"
done

# The spec's backend descriptions, naming the installed binary.
descriptions=$(mktemp -d)
trap 'rm -rf "$descriptions"' EXIT
"$bin/umdev" backend-json --binary "$prefix/bin/umdev" --output "$descriptions"
for f in "$descriptions"/*.json; do put 644 "$f" "share/vfio-user/$(basename "$f")"; done

# systemd units, pointing at the installed binary and documentation.
for unit in Samples/umdev.service Samples/umdev.socket Samples/umdev-serve@.service Samples/umdev-serve@.socket; do
    sed -e "s|/usr/local/bin/umdev|$prefix/bin/umdev|g" -e "s|/usr/local/share/doc/umdev|$prefix/share/doc/umdev|g" \
        "$unit" > "$descriptions/$(basename "$unit")"
    put 644 "$descriptions/$(basename "$unit")" "lib/systemd/system/$(basename "$unit")"
done

for doc in README.md Protocol/README.md Protocol/CONTROL.md Protocol/BACKEND.md Protocol/vfio-user-backend.schema.json \
           Protocol/vfio-user-wire.h; do
    name=$(basename "$doc"); [ "$doc" = Protocol/README.md ] && name=PROTOCOL.md
    put 644 "$doc" "share/doc/umdev/$name"
done
put 644 Tests/Conformance/README.md share/doc/umdev/CONFORMANCE.md
for profile in Tests/Conformance/profiles/*.json; do
    put 644 "$profile" "share/vfio-user-conformance/profiles/$(basename "$profile")"
done

mkdir -p "$(dirname "$manifest")"
printf '%s\n' "${installed[@]}" share/umdev/install-manifest > "$manifest"
echo "installed ${#installed[@]} files under $root (prefix $prefix)"
