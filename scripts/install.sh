#!/bin/sh
# Installs unionfs, unionfs-run and the mount(8) helper, or removes them.
#
#   scripts/install.sh [PREFIX]               build (release) and install; PREFIX=/usr/local
#   scripts/install.sh --uninstall [PREFIX]   remove exactly what an install put there
#
# Binaries go to PREFIX/bin, man pages to PREFIX/share/man/man1, completions to
# PREFIX/share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}. The mount(8) helper is a symlink to PREFIX/bin/unionfs
# named mount.fuse.unionfs (used by `mount -t fuse.unionfs` and fstab lines of type
# fuse.unionfs) and, only when no such file exists, mount.unionfs (`mount -t unionfs`;
# Debian's unionfs-fuse package ships its own, which is never touched). mount(8) looks
# helpers up in /sbin, /sbin/fs.d and /sbin/fs only (on Debian 12 and later /sbin is
# /usr/sbin), so they go to SBINDIR=/sbin whatever the PREFIX.
#
# Environment: SBINDIR (default /sbin), BINDIR_FROM (take the binaries from this
# directory instead of building), DESTDIR (staging root for packagers).
# Every file installed is recorded in PREFIX/share/unionfs/installed-files; uninstall
# removes only files listed there that are still what was installed.
set -eu

uninstall=0
if [ "${1:-}" = "--uninstall" ]; then
    uninstall=1
    shift
fi
PREFIX=${1:-/usr/local}
SBINDIR=${SBINDIR:-/sbin}
DESTDIR=${DESTDIR:-}
here=$(cd "$(dirname "$0")/.." && pwd)
bindir="$PREFIX/bin"
manifest="$DESTDIR$PREFIX/share/unionfs/installed-files"

say() { echo "install.sh: $*" >&2; }

# True when $1 is a symlink to our unionfs binary.
ours() { [ -L "$1" ] && [ "$(readlink "$1")" = "$bindir/unionfs" ]; }

if [ "$uninstall" = 1 ]; then
    if [ ! -f "$manifest" ]; then
        say "nothing recorded in $manifest; nothing removed"
        exit 0
    fi
    while IFS= read -r f; do
        p="$DESTDIR$f"
        case "$f" in
            */mount.*) if ours "$p"; then rm -f "$p"; say "removed $p"; else say "kept $p (not ours any more)"; fi ;;
            *) if [ -f "$p" ]; then rm -f "$p"; say "removed $p"; fi ;;
        esac
    done < "$manifest"
    rm -f "$manifest"
    rmdir "$(dirname "$manifest")" 2>/dev/null || true
    exit 0
fi

if [ -n "${BINDIR_FROM:-}" ]; then
    from=$BINDIR_FROM
else
    (cd "$here" && cargo build --release --workspace --bins)
    from=${CARGO_TARGET_DIR:-$here/target}/release
fi
for b in unionfs unionfs-run; do
    [ -x "$from/$b" ] || { say "$from/$b is missing (build first)"; exit 1; }
done

mkdir -p "$DESTDIR$bindir" "$DESTDIR$SBINDIR" "$(dirname "$manifest")"
: > "$manifest.new"
for b in unionfs unionfs-run; do
    install -m 0755 "$from/$b" "$DESTDIR$bindir/$b"
    echo "$bindir/$b" >> "$manifest.new"
    say "installed $DESTDIR$bindir/$b"
done
for h in mount.fuse.unionfs mount.unionfs; do
    p="$DESTDIR$SBINDIR/$h"
    if [ -e "$p" ] || [ -L "$p" ]; then
        if ours "$p"; then
            echo "$SBINDIR/$h" >> "$manifest.new"
            say "$p already points to $bindir/unionfs"
        else
            say "left $p alone: it is not ours (use mount -t fuse.unionfs)"
        fi
        continue
    fi
    ln -s "$bindir/unionfs" "$p"
    echo "$SBINDIR/$h" >> "$manifest.new"
    say "installed $p -> $bindir/unionfs"
done
# Man pages and shell completions, generated from the command-line definitions.
mandir="$PREFIX/share/man/man1"
mkdir -p "$DESTDIR$mandir"
gen=$(mktemp -d)
"$from/unionfs" generate man "$gen"
"$from/unionfs-run" generate man "$gen"
for m in "$gen"/*.1; do
    install -m 0644 "$m" "$DESTDIR$mandir/$(basename "$m")"
    echo "$mandir/$(basename "$m")" >> "$manifest.new"
done
rm -rf "$gen"
say "installed man pages in $DESTDIR$mandir (man unionfs, man unionfs-run)"
for sh in bash zsh fish; do
    case $sh in
        bash) d="$PREFIX/share/bash-completion/completions"; f=unionfs ;;
        zsh) d="$PREFIX/share/zsh/site-functions"; f=_unionfs ;;
        fish) d="$PREFIX/share/fish/vendor_completions.d"; f=unionfs.fish ;;
    esac
    mkdir -p "$DESTDIR$d"
    for b in unionfs unionfs-run; do
        g=$(echo "$f" | sed "s/unionfs/$b/")
        "$from/$b" generate completions "$sh" > "$DESTDIR$d/$g"
        echo "$d/$g" >> "$manifest.new"
    done
done
say "installed bash, zsh and fish completions"
mv "$manifest.new" "$manifest"
