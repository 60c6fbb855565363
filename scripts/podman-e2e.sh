#!/usr/bin/env bash
# End-to-end check of unionfs as the `mount_program` of containers-storage's
# overlay driver, with the real podman and buildah of this machine: import a
# Debian root, check that container roots really are fuse.unionfs mounts, run
# containers that write, delete and rename lower files (restart, diff, export,
# commit, re-run), a --uidmap container, a multi-step `podman build` and a
# buildah build with the opaque-directory case reported against
# fuse-overlayfs, 10 containers at once, and a Pod from a Kubernetes manifest
# (`podman kube play`). Every podman file (config, storage, locks, runtime
# state, events, temp files) lives under one temp dir, removed on exit with
# whatever podman left in fixed host paths and cgroups that this run created.
#
# Needs root and /dev/fuse. Installs podman, netavark, runc, buildah, catatonit
# and fuse3 with apt-get when missing; builds (or updates) target/debug/unionfs
# (UNIONFS_BIN tests another binary). The root filesystem comes from
# scripts/debian-rootfs.sh (UNIONFS_TEST_ROOTFS overrides it); the temp dir is
# made in /var/tmp (UNIONFS_PODMAN_E2E_DIR). Exit status 0 only when every
# check passed; a failed check prints one line starting with FAIL.
# docs/PODMAN.md describes the setup and the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

t_start=$(date +%s.%N)
log() { printf '== %s %s\n' "$(date +%T.%3N)" "$*" >&2; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || fail "podman-e2e.sh needs root (podman as root, FUSE mounts with allow_other)"
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

# --- packages ---------------------------------------------------------------
need=()
# (netavark: the network stack this machine's podman uses; without recommends
# apt might pick the CNI plugins instead.)
command -v podman >/dev/null || need+=(podman netavark)
command -v runc >/dev/null || need+=(runc)
command -v buildah >/dev/null || need+=(buildah)
command -v fusermount3 >/dev/null || need+=(fuse3)
# catatonit is the pause process of podman's locally built infra image
# (kube play); podman only recommends it.
command -v catatonit >/dev/null || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- the binary under test ----------------------------------------------------
bin=${UNIONFS_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/unionfs}
# Built when missing, and brought up to date when it is the default one (a
# stale binary would test old code).
if [ -n "${UNIONFS_BIN:-}" ]; then
  [ -x "$bin" ] || fail "UNIONFS_BIN=$bin is not an executable"
else
  [ -x "$bin" ] || log "building $bin"
  cargo build --quiet --bin unionfs
fi
bin=$(realpath "$bin")
"$bin" --version >/dev/null || fail "$bin --version failed (containers-storage runs it at store init)"

rootfs=${UNIONFS_TEST_ROOTFS:-$(scripts/debian-rootfs.sh)}
[ -x "$rootfs/bin/sh" ] || fail "no root filesystem at $rootfs"

# --- a private podman world under one temp dir --------------------------------
tmp=$(mktemp -d "${UNIONFS_PODMAN_E2E_DIR:-/var/tmp}/unionfs-podman-e2e.XXXXXX")
chmod 755 "$tmp"
mkdir -p "$tmp"/{graph,run,libpod,tmp,networks,xdg/config,xdg/data,xdg/cache,xdg/runtime,ctx}
chmod 700 "$tmp/xdg/runtime"

# With cgroup_manager = cgroupfs podman puts containers, pods and conmon under
# libpod_parent cgroups that it does not always remove (the named systemd and
# unified v1 hierarchies keep some). The cleanup removes the empty ones this
# run created (rmdir: never a cgroup in use, never one that was already there).
cgroup_dirs() { find /sys/fs/cgroup -maxdepth 4 -type d -path '*/libpod_parent*' 2>/dev/null | sort; }
cgroups_before=$(cgroup_dirs)

# A few paths podman 4.3 / buildah 1.28 use as root whatever the config says
# (the blob-info cache of import/commit, netavark's run dir, ...): the ones
# this run creates are removed again.
host_paths=(/var/lib/containers/cache /var/lib/containers /run/containers/networks /run/containers /run/libpod)
created=()
for p in "${host_paths[@]}"; do [ -e "$p" ] || created+=("$p"); done

cleanup() {
  local rc=$?
  local p i m d new busy
  set +e
  trap - EXIT INT TERM
  export TMPDIR=/tmp
  # podman only ever with this run's config: a reset with the default one
  # would wipe the host's store.
  if [ -d "$tmp" ] && [ "${CONTAINERS_STORAGE_CONF:-}" = "$tmp/storage.conf" ] &&
    [ "${CONTAINERS_CONF:-}" = "$tmp/containers.conf" ] && [ -f "$tmp/storage.conf" ]; then
    # Containers and pods first (their mounts go away with them), then the
    # whole store of this run.
    podman pod rm -af -t 0 >/dev/null 2>&1
    podman rm -af -t 0 >/dev/null 2>&1
    # conmon's exit commands (podman container cleanup) may still run: let
    # them finish before the store goes.
    for i in $(seq 100); do
      busy=""
      for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = $$ ] && continue
        grep -qsF "$tmp" "$p/cmdline" 2>/dev/null && busy=1 && break
      done
      [ -z "$busy" ] && break
      sleep 0.1
    done
    podman system reset --force >/dev/null 2>&1
  fi
  if [ -d "$tmp" ]; then
    # Leftover mounts under the temp dir, deepest first.
    awk -v p="$tmp/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    # Processes of this run still alive (conmon, a unionfs daemon whose
    # unmount failed): only those whose command line names the temp dir.
    for p in /proc/[0-9]*; do
      grep -qsF "$tmp" "$p/cmdline" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null
    done
    rm -rf "$tmp" 2>/dev/null || { sleep 1; rm -rf "$tmp"; }
  fi
  for p in "${created[@]}"; do
    case $p in
      /var/lib/containers | /run/containers) rmdir "$p" 2>/dev/null ;; # only when empty
      *) rm -rf "$p" ;;
    esac
  done
  for i in $(seq 50); do
    new=$(comm -13 <(echo "$cgroups_before") <(cgroup_dirs) | sort -r)
    [ -n "$new" ] || break
    for d in $new; do rmdir "$d" 2>/dev/null; done
    sleep 0.1
  done
  [ "$rc" = 0 ] || echo "podman-e2e: FAILED (exit $rc)" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$tmp/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$tmp/graph"
runroot = "$tmp/run"

[storage.options.overlay]
mount_program = "$bin"
mountopt = "nodev"
EOF

# What this host needs (../shared/FORMATS.md): cgroupfs, no network, runc,
# fixed ulimits (rlimits cannot be raised here). File locks and every state
# directory under $tmp keep this run apart from any other podman on the host.
cat >"$tmp/containers.conf" <<EOF
[containers]
netns = "none"
log_driver = "k8s-file"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "$tmp/libpod/events.log"
lock_type = "file"
tmp_dir = "$tmp/libpod/tmp"
static_dir = "$tmp/graph/libpod"
volume_path = "$tmp/graph/volumes"
image_copy_tmp_dir = "$tmp/tmp"

[network]
network_config_dir = "$tmp/networks"
EOF

cat >"$tmp/registries.conf" <<EOF
unqualified-search-registries = []
EOF

export CONTAINERS_CONF=$tmp/containers.conf
export CONTAINERS_STORAGE_CONF=$tmp/storage.conf
export CONTAINERS_REGISTRIES_CONF=$tmp/registries.conf
export XDG_CONFIG_HOME=$tmp/xdg/config XDG_DATA_HOME=$tmp/xdg/data
export XDG_CACHE_HOME=$tmp/xdg/cache XDG_RUNTIME_DIR=$tmp/xdg/runtime
export TMPDIR=$tmp/tmp
unset CONTAINER_HOST CONTAINER_CONNECTION

# Timed steps: "name seconds" lines for the summary.
timings=()
t0=0
begin() {
  log "$1"
  step=$1
  t0=$(date +%s.%N)
}
end() {
  timings+=("$(awk -v s="$step" -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%-48s %6.1fs", s, b - a}')")
}

# --- 0. the store really uses unionfs ------------------------------------------
begin "store: overlay driver with mount_program = unionfs"
info=$(podman info --format '{{.Store.GraphDriverName}} {{.Store.GraphRoot}} {{.Store.GraphOptions}}')
case $info in
  "overlay $tmp/graph "*"$bin"*) ;;
  *) fail "podman does not use the temp store with mount_program=$bin: $info" ;;
esac
end

# --- 1. import a root filesystem ----------------------------------------------
begin "import $rootfs as localhost/base"
tar -C "$rootfs" -c . | podman import -q - localhost/base >/dev/null
podman image exists localhost/base || fail "podman import did not create localhost/base"
end

# While a container runs, its root must be a FUSE mount served by this binary
# (a podman that fell back to kernel overlay would make everything below
# meaningless).
begin "a running container's root is a fuse.unionfs mount"
cid=$(podman run -d --name probe localhost/base sleep 600)
merged=$(podman inspect --format '{{.GraphDriver.Data.MergedDir}}' "$cid")
[ -n "$merged" ] || fail "no MergedDir for the probe container"
fstype=$(awk -v m="$merged" '$2 == m {print $3}' /proc/mounts)
[ "$fstype" = fuse.unionfs ] || fail "$merged is mounted as '${fstype:-nothing}', expected fuse.unionfs"
if awk -v p="$tmp/" 'index($2, p) == 1 && $3 == "overlay"' /proc/mounts | grep -q .; then
  fail "a kernel overlay mount exists under $tmp"
fi
daemon=""
for p in /proc/[0-9]*; do
  [ "$(readlink "$p/exe" 2>/dev/null)" = "$bin" ] || continue
  tr '\0' ' ' <"$p/cmdline" | grep -qF "$merged" && daemon=${p#/proc/}
done
[ -n "$daemon" ] || fail "no $bin process serves $merged"
log "served by pid $daemon: $(tr '\0' ' ' <"/proc/$daemon/cmdline" | sed "s|$tmp|\$TMP|g")"
out=$(podman exec probe sh -c 'echo via-fuse > /probe && cat /probe') &&
  grep -qx via-fuse <<<"$out" || fail "write+read through the probe container's root: ${out:-nothing}"
[ -f "$(podman inspect --format '{{.GraphDriver.Data.UpperDir}}' "$cid")/probe" ] ||
  fail "/probe written in the container is not in its upperdir"
podman rm -f -t 0 probe >/dev/null
grep -qF " $merged " /proc/mounts && fail "$merged still mounted after podman rm"
for _ in $(seq 50); do [ -d "/proc/$daemon" ] || break; sleep 0.1; done
[ -d "/proc/$daemon" ] && fail "unionfs daemon $daemon still running after its unmount"
end

# --- 2. write, delete and rename lower files; commit; check from a new run ---
# The checks of the changed root, run inside the container after a restart and
# inside a new container of the committed image.
cat >"$tmp/check-changed.sh" <<'EOF'
fail() { echo "FAIL: $*"; exit 1; }
[ "$(cat /etc/created)" = created ] || fail "/etc/created"
[ "$(tail -n1 /etc/motd)" = appended ] || fail "/etc/motd not appended"
[ ! -e /etc/issue ] || fail "/etc/issue is back"
[ ! -e /usr/share/doc/apt ] || fail "/usr/share/doc/apt is back"
[ -d /usr/share/doc ] || fail "/usr/share/doc went with /usr/share/doc/apt"
[ ! -e /etc/debian_version ] || fail "/etc/debian_version is back"
grep -q "^12" /etc/debian_version.moved || fail "/etc/debian_version.moved content"
[ ! -e /usr/share/common-licenses ] || fail "renamed dir /usr/share/common-licenses is back"
[ -s /usr/share/licenses-moved/GPL-3 ] || fail "renamed dir lost GPL-3"
[ "$(stat -c %a /etc/issue.net)" = 600 ] || fail "chmod of /etc/issue.net lost"
[ "$(cat /newdir/sub/f)" = deep ] || fail "/newdir/sub/f"
[ "$(stat -c %i /etc/created)" = "$(stat -c %i /etc/created.link)" ] || fail "hard link split"
[ ! -e /var/tmp/x ] || fail "/var/tmp/x"
echo ok
EOF

begin "run: write/delete/rename lower files, restart, diff, commit"
podman run -d --name changer -v "$tmp/check-changed.sh:/check.sh:ro" localhost/base sleep 600 >/dev/null
podman exec changer sh -ec '
  echo created > /etc/created
  echo appended >> /etc/motd
  rm /etc/issue
  rm -r /usr/share/doc/apt
  mv /etc/debian_version /etc/debian_version.moved
  mv /usr/share/common-licenses /usr/share/licenses-moved
  chmod 600 /etc/issue.net
  mkdir -p /newdir/sub && echo deep > /newdir/sub/f
  ln /etc/created /etc/created.link
  echo tmpfile > /var/tmp/x && rm /var/tmp/x
  ls /usr/share/licenses-moved/GPL-3 >/dev/null
' || fail "the changes inside the container failed"
# Stop and start: the same upper is mounted again and must read back the same.
podman stop -t 0 changer >/dev/null
grep -qF "$tmp/graph/overlay/$(podman inspect --format '{{.Id}}' changer)" /proc/mounts &&
  fail "the stopped container's root is still mounted"
podman start changer >/dev/null
podman exec changer sh /check.sh >"$tmp/restart.out" 2>&1 || fail "after a restart: $(cat "$tmp/restart.out")"
podman stop -t 0 changer >/dev/null
diff_out=$(podman diff changer)
for want in "A /etc/created" "C /etc/motd" "D /etc/issue" "D /usr/share/doc/apt" \
  "D /etc/debian_version" "A /etc/debian_version.moved" "A /newdir/sub/f" \
  "D /usr/share/common-licenses" "A /usr/share/licenses-moved"; do
  grep -qxF "$want" <<<"$diff_out" || fail "podman diff changer lacks '$want'; it printed:
$diff_out"
done
grep -qx "A /var/tmp/x" <<<"$diff_out" && fail "podman diff shows /var/tmp/x, created and deleted"
# podman export: the flattened root, read through a unionfs mount.
podman export changer | tar -t | sed 's|^\./||; s|/$||' >"$tmp/export.list"
for want in etc/created etc/debian_version.moved usr/share/licenses-moved/GPL-3 newdir/sub/f; do
  grep -qxF "$want" "$tmp/export.list" || fail "podman export lacks $want"
done
for gone in etc/issue etc/debian_version usr/share/doc/apt usr/share/common-licenses/GPL-3; do
  grep -qxF "$gone" "$tmp/export.list" && fail "podman export still has deleted $gone"
done
podman commit -q changer localhost/changed >/dev/null
podman rm changer >/dev/null
end

begin "run the committed image: the changes are there"
podman run --rm -v "$tmp/check-changed.sh:/check.sh:ro" localhost/changed sh /check.sh >"$tmp/changed.out" 2>&1 ||
  fail "committed image: $(cat "$tmp/changed.out")"
end

# --- 2b. a user namespace: podman hands unionfs ID-shifted lowers -------------
# With --uidmap, containers-storage makes a chowned copy of the lowers
# ("mapped/") and appends uidmapping=/gidmapping= (ignored by unionfs: the
# copy is already shifted). Inside, IDs must look unshifted; in the upper they
# are the host's. (podman 4.3 commits such a container with the host IDs, on
# kernel overlay too, so a commit is not checked here.)
begin "user namespace: --uidmap 0:100000:65536"
podman run --name mapped --uidmap 0:100000:65536 --gidmap 0:100000:65536 localhost/base sh -ec '
  touch /x && chown 1:1 /etc/issue
  [ "$(stat -c %u:%g /x /etc/passwd /etc/issue | tr "\n" " ")" = "0:0 0:0 1:1 " ]
' || fail "IDs inside a --uidmap container are not the unshifted ones"
upper=$(podman inspect --format '{{.GraphDriver.Data.UpperDir}}' mapped)
[ "$(stat -c %u:%g "$upper/x" "$upper/etc/issue" | tr '\n' ' ')" = "100000:100000 100001:100001 " ] ||
  fail "the upper of a --uidmap container does not hold host IDs: $(stat -c '%n %u:%g' "$upper/x" "$upper/etc/issue")"
# podman 4.3 races with itself here (kernel overlay too, 4 in 15 runs): the
# attached run returns while conmon's cleanup still holds the container's
# shm mount, and rm fails with EBUSY on userdata/shm. Retry a little.
for i in $(seq 20); do
  podman rm mapped >/dev/null 2>&1 && break
  sleep 0.25
done
podman container exists mapped && fail "podman rm of the --uidmap container kept failing"
end

# --- 3. podman build, several layers, the opaque-directory case --------------
begin "podman build: multi-step image with /opq replaced"
echo "copied in" >"$tmp/ctx/file.txt"
cat >"$tmp/ctx/Containerfile" <<'EOF'
FROM localhost/base
RUN mkdir /opq && touch /opq/a && mkdir -p /keep && echo 1 > /keep/one
RUN rm -rf /opq && mkdir /opq && touch /opq/b
RUN echo 2 > /keep/two && rm /etc/issue.net && mv /etc/motd /etc/motd.moved && rm -rf /usr/share/doc
COPY file.txt /keep/file.txt
RUN mv /keep /kept && test "$(cat /kept/file.txt)" = "copied in"
EOF
podman build -q --network=none --pull=never --layers -t localhost/built -f "$tmp/ctx/Containerfile" "$tmp/ctx" >"$tmp/build.log" 2>&1 ||
  fail "podman build failed: $(tail -n 20 "$tmp/build.log")"
opq=$(podman run --rm localhost/built ls -A /opq | tr '\n' ' ')
[ "$opq" = "b " ] || fail "/opq in the built image holds '$opq', expected only 'b' (the opaque-directory bug)"
podman run --rm localhost/built sh -ec '
  fail() { echo "FAIL: $*"; exit 1; }
  [ "$(ls /kept | tr "\n" " ")" = "file.txt one two " ] || fail "/kept: $(ls /kept)"
  [ ! -e /keep ] || fail "/keep is back after mv"
  [ ! -e /etc/issue.net ] && [ ! -e /etc/motd ] && [ -f /etc/motd.moved ] || fail "step 3 changes"
  [ ! -e /usr/share/doc ] || fail "/usr/share/doc is back"
  echo ok
' >"$tmp/built.out" 2>&1 || fail "built image: $(cat "$tmp/built.out")"
# The layer of step 2 itself, as podman saves it: b, something that hides the
# lower a (a layer is a valid OCI layer for any consumer, not only unionfs), not a.
podman save -q --format oci-dir -o "$tmp/built-oci" localhost/built >/dev/null
found=""
for blob in "$tmp"/built-oci/blobs/sha256/*; do
  tar -tf "$blob" >"$tmp/layer.list" 2>/dev/null || continue
  grep -qE '^(\./)?opq/b$' "$tmp/layer.list" || continue
  found=1
  # Either form hides the lower /opq/a: an opaque marker, or a whiteout of a.
  grep -qE '^(\./)?opq/\.wh\.(\.wh\.\.opq|a)$' "$tmp/layer.list" ||
    fail "the layer that makes /opq/b hides nothing of the lower /opq: $(grep opq "$tmp/layer.list" | tr '\n' ' ')"
  grep -qE '^(\./)?opq/a$' "$tmp/layer.list" && fail "the layer that makes /opq/b also has /opq/a"
done
[ -n "$found" ] || fail "no layer of localhost/built holds opq/b"
end

# --- 3b. buildah itself, same storage.conf ------------------------------------
begin "buildah from/run/commit: /opq2 replaced"
bc=$(buildah from -q --pull=never localhost/base)
buildah run --network none "$bc" sh -ec 'mkdir /opq2 && touch /opq2/a'
buildah commit -q --rm "$bc" localhost/b1 >/dev/null
bc=$(buildah from -q --pull=never localhost/b1)
buildah run --network none "$bc" sh -ec 'rm -rf /opq2 && mkdir /opq2 && touch /opq2/b && rm /etc/issue'
buildah commit -q --rm "$bc" localhost/b2 >/dev/null
out=$(podman run --rm localhost/b2 sh -c 'ls -A /opq2; if [ -e /etc/issue ]; then echo issue; fi' | tr '\n' ' ')
[ "$out" = "b " ] || fail "buildah image: /opq2 and /etc/issue gave '$out', expected only 'b'"
end

# --- 4. ten containers at once --------------------------------------------------
begin "10 containers at once"
pids=()
for i in $(seq 10); do
  podman run --rm --name "par$i" localhost/changed sh -ec "
    echo $i > /etc/created
    dd if=/dev/urandom of=/big bs=64k count=64 2>/dev/null
    cp /big /big2 && cmp /big /big2
    rm /etc/motd /big && mv /big2 /usr/big
    [ \"\$(cat /etc/created)\" = $i ] && [ ! -e /etc/motd ] && [ -s /usr/big ]
    grep -q . /usr/share/licenses-moved/GPL-3
    echo par$i-ok
  " >"$tmp/par$i.out" 2>&1 &
  pids+=($!)
done
failed=()
for i in $(seq 10); do
  wait "${pids[$((i - 1))]}" || failed+=("par$i: $(tr '\n' ' ' <"$tmp/par$i.out")")
  grep -qx "par$i-ok" "$tmp/par$i.out" || failed+=("par$i printed: $(tr '\n' ' ' <"$tmp/par$i.out")")
done
[ ${#failed[@]} = 0 ] || fail "parallel containers: ${failed[*]}"
out=$(podman run --rm localhost/changed cat /etc/created) && grep -qx created <<<"$out" ||
  fail "a parallel container's write leaked into the image: ${out:-nothing}"
end

# --- 5. a Pod from a Kubernetes manifest -----------------------------------------
begin "podman kube play / kube down"
cat >"$tmp/pod.yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: e2epod
spec:
  restartPolicy: Never
  containers:
    - name: writer
      image: localhost/changed:latest
      imagePullPolicy: Never
      command: ["sh", "-ec"]
      args:
        - |
          echo hello-from-kube > /written
          rm /etc/created && mv /etc/motd /etc/motd.kube
          test ! -e /etc/created && test -f /etc/motd.kube
          cat /written
EOF
podman kube play --network none "$tmp/pod.yaml" >"$tmp/kube.log" 2>&1 ||
  fail "podman kube play: $(tail -n 20 "$tmp/kube.log")"
rc=$(podman wait e2epod-writer) || fail "podman wait e2epod-writer"
[ "$rc" = 0 ] || fail "the pod's container exited $rc: $(podman logs e2epod-writer 2>&1 | tail -n 5)"
# (Output captured before it is matched: podman prints line by line, in map
# order, and `podman ... | grep -q` under pipefail fails whenever grep has
# matched and left before podman's next line, which then meets EPIPE.)
out=$(podman logs e2epod-writer 2>&1) || fail "podman logs e2epod-writer: $out"
grep -qx hello-from-kube <<<"$out" || fail "the pod's container did not print hello-from-kube: $out"
out=$(podman diff e2epod-writer) || fail "podman diff e2epod-writer: $out"
grep -qx "A /written" <<<"$out" || fail "podman diff of the pod's container lacks A /written: $(tr '\n' ' ' <<<"$out")"
infra=$(podman pod inspect e2epod --format '{{.InfraContainerID}}')
[ -n "$infra" ] && infra_image=$(podman inspect --format '{{.ImageName}}' "$infra") ||
  infra_image="(no infra container)"
log "pod e2epod ran; its infra container's image: $infra_image"
podman kube down "$tmp/pod.yaml" >"$tmp/kube-down.log" 2>&1 ||
  fail "podman kube down: $(tail -n 20 "$tmp/kube-down.log")"
podman pod exists e2epod && fail "pod e2epod still exists after kube down"
end

# --- 5b. how long a container start takes (informational) --------------------
begin "podman run --rm true, 10 times in a row"
lat=()
for i in $(seq 10); do
  a=$(date +%s%N)
  podman run --rm localhost/base true
  lat+=($((($(date +%s%N) - a) / 1000000)))
done
median=$(printf '%s\n' "${lat[@]}" | sort -n | sed -n 5p)
log "podman run --rm true: median ${median} ms (runs: ${lat[*]})"
end

# --- 6. nothing left mounted by the containers ---------------------------------
begin "no container mounts left"
left=$(awk -v p="$tmp/graph/overlay/" 'index($2, p) == 1 {print $2}' /proc/mounts)
[ -z "$left" ] || fail "mounts left after every container was removed: $left"
end

echo
echo "podman-e2e: PASS (podman $(podman version --format '{{.Client.Version}}'), mount_program $bin)"
for t in "${timings[@]}"; do echo "  $t"; done
echo "  podman run --rm true: median ${median} ms"
awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN {printf "  %-48s %6.1fs\n", "total so far (build, setup, the steps)", b - a}'
