#!/usr/bin/env bash
# The quick start: build unionfs and unionfs-run, then run a container whose
# root is a copy-on-write view of this machine's own / (no image to
# download), change things inside it, and show what changed — in the upper
# only; the host is untouched. Needs root on Linux with FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v fusermount3 >/dev/null || {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
    { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null; }
}
cargo build --release --quiet --workspace
run=$PWD/target/release/unionfs-run
name=demo-$$
state=${UNIONFS_RUN_DIR:-/dev/shm/unionfs-run}/$name
trap 'rm -rf "$state"' EXIT

echo "== a container on a copy-on-write view of this machine"
"$run" --name "$name" --hostname demo --memory 512M --pids 256 -- sh -c '
  echo "inside: hostname=$(hostname), pid of this shell=$$, processes visible: $(ls /proc | grep -c "^[0-9]")"
  echo "network interfaces: $(ls /sys/class/net)"
  echo "hello from the container" > /root/hello.txt
  rm -f /etc/motd
  chmod 600 /etc/hostname
  echo "wrote /root/hello.txt, removed /etc/motd, chmod-ed /etc/hostname"'

upper=$state/upper
echo
echo "== what changed (the upper branch: $upper)"
# What `docker diff` prints (A added, C changed, D deleted), read from the
# upper alone with the lowers it was mounted on: this machine's /.
"$PWD/target/release/unionfs" diff "$upper" --lowers /
echo
echo "== the host is untouched"
ls -l /root/hello.txt 2>&1 | sed 's/^/host: /' || true
[ -e /etc/motd ] && echo "host: /etc/motd is still there"
stat -c 'host: /etc/hostname mode %a' /etc/hostname
