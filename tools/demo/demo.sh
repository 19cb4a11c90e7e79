#!/usr/bin/env bash
# tandem demo, in two parts.
#
# Part 1, one node: serve a 1 GiB sparse file over NBD, put an ext4
# filesystem on it through a real NBD client, write files, check the
# filesystem, read the files back.
#
# Part 2, two replicas: run two `tandem daemon`s (alpha and beta, plus a
# witness) on 127.0.0.1, create their metadata, promote alpha, put ext4 on
# the replicated device, write files, kill -9 the secondary, keep writing,
# restart it and watch the bitmap resync, then compare both replicas' data
# areas byte for byte. Everything is torn down at the end.
#
# Run as root from anywhere (`make demo` does): it needs nbdfuse (libnbd-bin),
# fusermount3 (fuse3), losetup/mount, mkfs.ext4/e2fsck (e2fsprogs), jq. The kernel
# needs no nbd module: the export becomes a file through FUSE (nbdfuse) and a
# block device through a loop device.
#
# Environment: TANDEM=path/to/tandem uses that binary instead of bin/tandem
# (built if missing); KEEP=1 leaves the work directory for inspection.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TANDEM=${TANDEM:-$ROOT/bin/tandem}
START=${EPOCHREALTIME/[.,]/}
STEP=0
TOTAL=23

say() {
	local us=$((${EPOCHREALTIME/[.,]/} - START))
	printf '[%3d.%02ds] %s\n' $((us / 1000000)) $((us / 10000 % 100)) "$*"
}
step() { STEP=$((STEP + 1)); say "step $STEP/$TOTAL: $*"; }
fail() { say "FAIL: $*" >&2; exit 1; }

# wait_for DESC TENTHS CMD...: poll CMD every 0.1 s, at most TENTHS times.
wait_for() {
	local desc=$1 tries=$2
	shift 2
	for ((i = 0; i < tries; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	fail "timed out waiting for $desc"
}

[ "$(id -u)" -eq 0 ] || fail "run as root (mounting, loop devices and FUSE need it): sudo $0"
for tool in nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount sha256sum jq cmp; do
	command -v "$tool" >/dev/null || fail "$tool not found; run 'make deps' (libnbd-bin fuse3 e2fsprogs mount jq)"
done

# Everything made is recorded here and undone in reverse order on any exit.
WORK="" SERVE_PID="" FUSE_PID="" FUSE_DIR="" LOOP="" MNT=""
declare -A DAEMON_PID=()
# stop_pid PID: SIGTERM, wait up to 30 s, then SIGKILL; by PID only.
stop_pid() {
	local pid=$1
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid"
	for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
	wait "$pid" 2>/dev/null
}
cleanup() {
	local rc=$?
	set +e
	if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount "$MNT" || umount -l "$MNT"; fi
	if [ -n "$LOOP" ]; then losetup -d "$LOOP"; fi
	if [ -n "$FUSE_DIR" ] && mountpoint -q "$FUSE_DIR"; then fusermount3 -u "$FUSE_DIR"; fi
	if [ -n "$FUSE_PID" ]; then
		for ((i = 0; i < 100; i++)); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$FUSE_PID" 2>/dev/null && kill -KILL "$FUSE_PID"
		wait "$FUSE_PID" 2>/dev/null
	fi
	if [ -n "$SERVE_PID" ]; then stop_pid "$SERVE_PID"; fi
	for n in "${!DAEMON_PID[@]}"; do stop_pid "${DAEMON_PID[$n]}"; done
	if [ -n "$WORK" ]; then
		if [ "${KEEP:-0}" = 1 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
	fi
	if [ $rc -ne 0 ]; then
		say "demo FAILED (exit $rc); everything it set up has been removed" >&2
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "build tandem"
if [ ! -x "$TANDEM" ]; then
	command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
	(cd "$ROOT" && CGO_ENABLED=0 go build -o "$TANDEM" ./cmd/tandem)
	say "built $TANDEM"
else
	say "using $TANDEM ($("$TANDEM" version 2>/dev/null | head -n1 || echo 'version unknown'))"
fi

WORK=$(mktemp -d /tmp/tandem-demo.XXXXXX)
IMG=$WORK/disk.img FUSE_DIR=$WORK/fuse MNT=$WORK/mnt
mkdir -p "$FUSE_DIR" "$MNT" "$WORK/run"

step "serve a 1 GiB sparse file over NBD on 127.0.0.1"
"$TANDEM" serve --listen 127.0.0.1:0 --export "demo=$IMG" --size 1G \
	--description "tandem demo disk" \
	--pid-file "$WORK/run/tandem.pid" --ready-file "$WORK/run/tandem.ready" \
	2>"$WORK/serve.log" &
SERVE_PID=$!
ready() {
	kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; fail "tandem serve exited early"; }
	[ -s "$WORK/run/tandem.ready" ]
}
wait_for "tandem serve to listen" 300 ready
ADDR=$(head -n1 "$WORK/run/tandem.ready")
[ "$(cat "$WORK/run/tandem.pid")" = "$SERVE_PID" ] || fail "pid file does not match the server's PID"
URI="nbd://$ADDR/demo"
say "tandem serve (pid $SERVE_PID) exports $URI; backing file uses $(du -k "$IMG" | cut -f1) KiB"
if command -v nbdinfo >/dev/null; then
	nbdinfo "$URI" | grep -E 'export-size|description|can_(flush|fua|trim|zero|multi_conn)' | sed 's/^/           /'
fi

# attach exposes $URI as the block device $LOOP: nbdfuse makes the export a
# file, losetup makes the file a block device. detach undoes it.
attach() {
	rm -f "$WORK/run/nbdfuse.pid"
	nbdfuse -P "$WORK/run/nbdfuse.pid" "$FUSE_DIR/disk" "$URI" 2>"$WORK/nbdfuse.log" &
	FUSE_PID=$!
	wait_for "nbdfuse" 300 fuse_ready
	LOOP=$(losetup -f --show "$FUSE_DIR/disk")
}
fuse_ready() {
	kill -0 "$FUSE_PID" 2>/dev/null || { cat "$WORK/nbdfuse.log" >&2; fail "nbdfuse exited early"; }
	[ -s "$WORK/run/nbdfuse.pid" ]
}
detach() {
	losetup -d "$LOOP"
	LOOP=""
	fusermount3 -u "$FUSE_DIR"
	wait_for "nbdfuse to exit" 300 bash -c "! kill -0 $FUSE_PID 2>/dev/null"
	wait "$FUSE_PID" 2>/dev/null || true
	FUSE_PID=""
}

step "attach: nbdfuse exposes the export as a file, losetup makes it a block device"
attach
say "nbdfuse (pid $FUSE_PID) -> $FUSE_DIR/disk -> $LOOP"

step "mkfs.ext4 and mount"
mkfs.ext4 -q -F -L tandem-demo "$LOOP"
mount -t ext4 "$LOOP" "$MNT"
say "$(df -h --output=source,size,avail,target "$MNT" | tail -n1)"

step "write files and record their checksums"
head -c $((1 << 20)) /dev/urandom >"$MNT/one-mib.bin"
head -c $((24 << 20)) /dev/urandom >"$MNT/twenty-four-mib.bin"
mkdir -p "$MNT/docs/deep/er"
for i in $(seq 1 50); do echo "note $i written through tandem at $(date -Is)" >"$MNT/docs/deep/er/note-$i.txt"; done
cp "$0" "$MNT/docs/demo.sh"
(cd "$MNT" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums"
say "$(wc -l <"$WORK/sums") files, $(du -sh "$MNT" | cut -f1) in use"

step "sync and unmount (the flushes travel as NBD FLUSH to tandem)"
sync
umount "$MNT"

step "e2fsck -fn through the NBD chain"
e2fsck -fn "$LOOP" >"$WORK/fsck1.log" 2>&1 || { cat "$WORK/fsck1.log" >&2; fail "e2fsck found problems"; }
say "$(tail -n1 "$WORK/fsck1.log")"

step "detach, then e2fsck -fn on tandem's backing file itself"
detach
e2fsck -fn "$IMG" >"$WORK/fsck2.log" 2>&1 || { cat "$WORK/fsck2.log" >&2; fail "e2fsck of the backing file found problems"; }
say "backing file clean: $(tail -n1 "$WORK/fsck2.log"); it holds $(du -k "$IMG" | cut -f1) KiB of 1 GiB (sparse)"

step "reattach through a fresh nbdfuse and loop device, remount, verify checksums"
attach
mount -t ext4 -o ro "$LOOP" "$MNT"
(cd "$MNT" && sha256sum --quiet -c "$WORK/sums") || fail "checksums differ after remount"
say "all $(wc -l <"$WORK/sums") checksums match"

step "unmount and detach"
umount "$MNT"
detach

step "stop tandem with SIGTERM (drain, flush, exit 0)"
kill -TERM "$SERVE_PID"
rc=0
wait "$SERVE_PID" || rc=$?
SERVE_PID=""
[ "$rc" -eq 0 ] || { cat "$WORK/serve.log" >&2; fail "tandem serve exited $rc after SIGTERM"; }
[ ! -e "$WORK/run/tandem.ready" ] || fail "tandem left its ready file behind"
say "part 1 done: ext4 on tandem over NBD written, checked, remounted and verified"

# ---------------------------------------------------------------------------
# Part 2: two replicas.

# free_port: a loopback TCP port nothing listens on right now.
free_port() {
	local p
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	fail "no free loopback port found"
}

CL=$WORK/cluster
mkdir -p "$CL"
SIZE=$((256 << 20))
CFG=$CL/tandem.yaml
T=("$TANDEM" --config "$CFG")
NBD_ALPHA=127.0.0.1:$(free_port)

step "write a cluster configuration: alpha and beta hold replicas of r0 (256 MiB), plus a witness"
head -c 32 /dev/urandom | base64 >"$CL/secret"
chmod 600 "$CL/secret"
cat >"$CFG" <<YAML
cluster: demo
secret-file: $CL/secret
nodes:
  - {name: alpha, address: 127.0.0.1, admin-socket: $CL/alpha.sock, data-dir: $CL/alpha}
  - {name: beta, address: 127.0.0.1, admin-socket: $CL/beta.sock, data-dir: $CL/beta}
  - {name: witness, address: 127.0.0.1, admin-socket: $CL/witness.sock, data-dir: $CL/witness}
resources:
  - name: r0
    size: $SIZE
    resync: {max-rate: 8M}     # slow on purpose, so that status can show the resync
    replicas:
      alpha: {device: $CL/alpha.img, address: 127.0.0.1:$(free_port), nbd-listen: $NBD_ALPHA}
      beta: {device: $CL/beta.img, address: 127.0.0.1:$(free_port), nbd-listen: 127.0.0.1:$(free_port)}
YAML
# Each device holds the data and, behind it, the internal metadata.
truncate -s $((SIZE + (1 << 20))) "$CL/alpha.img" "$CL/beta.img"
"${T[@]}" config validate --node alpha | sed 's/^/           /'

step "create-md on both nodes: a brand-new, empty pair shares one generation (--new-blank), no initial sync"
OUT=$("${T[@]}" create-md r0 --node alpha --new-blank)
echo "$OUT" | sed 's/^/           /'
GEN=$(echo "$OUT" | grep -o -- '--generation 0x[0-9a-f]*' | cut -d' ' -f2)
[ -n "$GEN" ] || fail "create-md did not print the generation for beta"
"${T[@]}" create-md r0 --node beta --new-blank --generation "$GEN" | sed 's/^/           /'

# start_daemon NODE: run its daemon in the background until its ready file appears.
start_daemon() {
	local n=$1
	rm -f "$CL/$n.ready"
	"${T[@]}" daemon --node "$n" --ready-file "$CL/$n.ready" --pid-file "$CL/$n.pid" 2>>"$CL/$n.log" &
	DAEMON_PID[$n]=$!
	daemon_ready() {
		kill -0 "${DAEMON_PID[$1]}" 2>/dev/null || { tail -n 20 "$CL/$1.log" >&2; fail "tandem daemon $1 exited early"; }
		[ -s "$CL/$1.ready" ]
	}
	wait_for "tandem daemon $n" 300 daemon_ready "$n"
}
# status_field NODE JQ: evaluate JQ on r0's object in NODE's status --json.
status_field() { "${T[@]}" status r0 --node "$1" --json | jq -r ".resources[0] | $2"; }
in_sync() {
	[ "$(status_field "$1" '.connection + " " + .disk + " " + .peer_disk + " " + (.out_of_sync_bytes|tostring)')" = "Connected UpToDate UpToDate 0" ]
}

step "start the three daemons"
for n in alpha beta witness; do start_daemon "$n"; done
say "daemons: alpha pid ${DAEMON_PID[alpha]}, beta pid ${DAEMON_PID[beta]}, witness pid ${DAEMON_PID[witness]}"
wait_for "alpha and beta to connect" 300 in_sync alpha
"${T[@]}" status --node alpha | sed 's/^/           /'

step "promote alpha: its NBD export nbd://$NBD_ALPHA/r0 starts serving"
"${T[@]}" promote r0 --node alpha | sed 's/^/           /'
URI="nbd://$NBD_ALPHA/r0"

step "attach through nbdfuse + losetup, mkfs.ext4, mount"
attach
mkfs.ext4 -q -F -L tandem-r0 "$LOOP"
mount -t ext4 -o noatime "$LOOP" "$MNT"
say "$(df -h --output=source,size,avail,target "$MNT" | tail -n1)"

step "write files on the replicated filesystem and record their checksums"
head -c $((8 << 20)) /dev/urandom >"$MNT/before-1.bin"
for i in $(seq 1 20); do echo "written with both replicas up: $i" >"$MNT/before-note-$i.txt"; done
sync
wait_for "beta to have every write" 300 in_sync alpha
say "both replicas in sync: $(status_field alpha '.connection + ", peer " + .peer_role + "/" + .peer_disk')"

step "kill -9 the secondary (beta)"
kill -KILL "${DAEMON_PID[beta]}"
wait "${DAEMON_PID[beta]}" 2>/dev/null || true
unset 'DAEMON_PID[beta]'
lost_peer() { [ "$(status_field alpha .connection)" != Connected ]; }
wait_for "alpha to notice" 300 lost_peer
say "alpha: $(status_field alpha '.role + ", " + .disk + ", " + .connection + ", peer " + .peer_disk')"

step "keep writing on alpha: the writes are acknowledged and recorded in its out-of-sync bitmap"
head -c $((16 << 20)) /dev/urandom >"$MNT/while-beta-down.bin"
for i in $(seq 1 20); do echo "written while beta was down: $i" >"$MNT/degraded-note-$i.txt"; done
(cd "$MNT" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums2"
sync
DIRTY=$(status_field alpha .out_of_sync_bytes)
say "alpha marks $((DIRTY >> 10)) KiB out of sync (of $((SIZE >> 20)) MiB)"

step "restart beta: it reconnects and receives only what its bitmap marks (resync at 8 MiB/s)"
start_daemon beta
resync_seen=0
for ((i = 0; i < 600; i++)); do
	line=$(status_field alpha '.connection + " " + (if .resync then "\(.resync.percent|floor)% of \(.resync.total_bytes/1024|floor) KiB, \(.resync.sent_bytes/1024|floor) KiB sent" else "" end)')
	case "$line" in
	SyncSource\ ?*) resync_seen=1; say "  alpha: $line" ;;
	esac
	in_sync alpha && break
	sleep 1
done
in_sync alpha || fail "the resync did not finish"
LAST=$(status_field alpha '.last_resync | "\(.total_bytes) \(.sent_bytes) \(.full)"')
read -r TOTAL_B SENT_B FULL <<<"$LAST"
say "resync done: $((SENT_B >> 10)) KiB sent of $((TOTAL_B >> 10)) KiB out of sync (full sync: $FULL; the device is $((SIZE >> 10)) KiB)"
if [ "$TOTAL_B" -gt "$DIRTY" ]; then
	say "  (a little more than the $((DIRTY >> 10)) KiB seen before the restart: ext4 kept committing its journal meanwhile)"
fi
[ "$FULL" = false ] || fail "the resync after beta's restart was a full sync"
[ "$SENT_B" -le "$TOTAL_B" ] && [ "$TOTAL_B" -lt $((SIZE / 4)) ] || fail "the resync sent $SENT_B bytes of $TOTAL_B, $DIRTY were dirty"
[ "$resync_seen" = 1 ] || say "  (the resync finished between two looks at status)"

step "read everything back through alpha and check the checksums"
(cd "$MNT" && sha256sum --quiet -c "$WORK/sums2") || fail "checksums differ"
say "all $(wc -l <"$WORK/sums2") checksums match"

step "unmount, detach, stop both daemons cleanly (flush, metadata clean)"
umount "$MNT"
detach
for n in alpha beta witness; do stop_pid "${DAEMON_PID[$n]}"; unset "DAEMON_PID[$n]"; done

step "compare the replicas' data areas byte for byte, and e2fsck beta's copy"
cmp -n "$SIZE" "$CL/alpha.img" "$CL/beta.img" || fail "the replicas differ"
say "alpha.img and beta.img: the first $((SIZE >> 20)) MiB are identical"
e2fsck -fn "$CL/beta.img" >"$WORK/fsck3.log" 2>&1 || { cat "$WORK/fsck3.log" >&2; fail "e2fsck of beta's replica found problems"; }
say "beta's replica is a clean filesystem: $(tail -n1 "$WORK/fsck3.log")"

say "PASS: single node and two replicas: ext4 written, secondary killed and resynced by bitmap, replicas identical; everything removed"
