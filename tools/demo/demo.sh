#!/usr/bin/env bash
# tandem demo, in three parts; the third is the main story.
#
# Part 1, one node: serve a 1 GiB sparse file over NBD, put an ext4
# filesystem on it through a real NBD client, write files, check the
# filesystem, read the files back.
#
# Part 2, two replicas: run two `tandem daemon`s (alpha and beta, plus a
# witness) on 127.0.0.1, create their metadata, promote alpha, put ext4 on
# the replicated device, write files, kill -9 the secondary, keep writing,
# restart it and watch the bitmap resync, then compare both replicas' data
# areas byte for byte.
#
# Part 3, the lab with the cluster layer: `tandem lab up --cluster-layer`
# (alpha, bravo, a witness and a client in network namespaces, a BMC per
# data node); the daemons elect alpha and put the VIP on it. The client
# mounts ext4 through the VIP (qemu-nbd with reconnect-delay in the client
# namespace, nbdfuse + losetup on its unix socket), writes files with
# checksums; alpha is crashed with a write under way; the script prints how
# long until a fresh client's read at the VIP succeeds, bravo's failover
# steps (detect, fence over IPMI, commit, promote, VIP, serve) and when the
# filesystem's write completed; then checks every file read back from
# bravo, restarts alpha and waits for its resync, compares the replicas
# (tandem verify online, then cmp), and takes the lab down.
#
# Everything is torn down at the end, or on any failure or Ctrl-C.
#
# Run as root from anywhere (`make demo` does): it needs nbdfuse (libnbd-bin),
# fusermount3 (fuse3), losetup/mount, mkfs.ext4/e2fsck (e2fsprogs), jq, and
# for the lab ip (iproute2), nft (nftables), ipmi_sim (openipmi), qemu-nbd
# and qemu-io (qemu-utils). The kernel
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
TOTAL=33

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
for tool in nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount sha256sum jq cmp ip nft ipmi_sim qemu-nbd qemu-io timeout; do
	command -v "$tool" >/dev/null || fail "$tool not found; run 'make deps' (libnbd-bin fuse3 e2fsprogs mount jq iproute2 nftables openipmi qemu-utils)"
done

# Everything made is recorded here and undone in reverse order on any exit.
WORK="" SERVE_PID="" FUSE_PID="" FUSE_DIR="" LOOP="" MNT=""
LAB_UP="" PROXY_PID="" PROXY_EXEC="" FS_WRITER=""
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
# is_mounted DIR: DIR is a mount point, read from the mount table (mountpoint
# -q cannot tell on a FUSE mount whose server died: stat fails).
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }
cleanup() {
	local rc=$?
	set +e
	# The lab's client first: with it gone, whatever still waits on the
	# filesystem fails at once instead of waiting for a reconnection.
	if [ -n "$PROXY_PID" ]; then stop_pid "$PROXY_PID"; fi
	if [ -n "$PROXY_EXEC" ]; then wait "$PROXY_EXEC" 2>/dev/null; fi
	if [ -n "$FS_WRITER" ]; then wait "$FS_WRITER" 2>/dev/null; fi
	# A failed run shows the end of each lab node's log before the lab is
	# removed: the cause is usually there (and nowhere once it is gone).
	if [ "$rc" -ne 0 ] && [ -n "$LAB_UP" ] && [ -d "$WORK/lab/log" ]; then
		for f in "$WORK"/lab/log/*.log; do
			[ -f "$f" ] || continue
			say "--- last lines of ${f##*/} ---" >&2
			tail -n 25 "$f" >&2
		done
	fi
	# The lab next: its processes hold copies of our mounts.
	if [ -n "$LAB_UP" ]; then "$TANDEM" lab --dir "$WORK/lab" down >/dev/null || say "tandem lab --dir $WORK/lab down failed" >&2; fi
	if [ -n "$MNT" ] && is_mounted "$MNT"; then umount "$MNT" || umount -l "$MNT"; fi
	if [ -n "$LOOP" ]; then losetup -d "$LOOP"; fi
	if [ -n "$FUSE_DIR" ] && is_mounted "$FUSE_DIR"; then fusermount3 -u "$FUSE_DIR" || umount -l "$FUSE_DIR"; fi
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

say "part 2 done: two replicas, secondary killed and resynced by bitmap, replicas identical"

# ---------------------------------------------------------------------------
# Part 3: the lab, automatic failover.

LAB=$WORK/lab
LABCFG=$LAB/tandem.yaml
LABSIZE=$((256 << 20))
VIPURI=nbd://198.51.100.100:10809/r0
LT=("$TANDEM" lab --dir "$LAB")
C=("$TANDEM" --config "$LABCFG")
SOCK=$WORK/run/client-nbd.sock

step "the lab: tandem lab up --cluster-layer (alpha, bravo, a witness and a client, each in a network namespace; a BMC per data node)"
LAB_UP=1
"${LT[@]}" up --cluster-layer --size 256M >"$WORK/lab-up.out" 2>"$WORK/lab-up.log" || { cat "$WORK/lab-up.out" "$WORK/lab-up.log" >&2; fail "tandem lab up failed"; }
grep -Ev '^(try:|     |\(add|$)' "$WORK/lab-up.out" | sed 's/^/           /'
# lab_field JQ: evaluate JQ on tandem lab status --json.
lab_field() { "${LT[@]}" status --json | jq -r "$1"; }
NODE_STATE='.nodes[] | select(.name==$n) | "\(.role // "down")/\(.disk // "-"), \(.resources[0].connection // "-")"'
lab_node() { "${LT[@]}" status --json | jq -r --arg n "$1" "$NODE_STATE"; }
say "nobody promoted by hand: the daemons elected $(lab_field .resources[0].primary), which holds the VIP ($(lab_field .resources[0].vip_holder)); bravo: $(lab_node bravo)"

step "the client: a reconnecting NBD client in the client namespace, nbdfuse + losetup on it, mkfs.ext4, mount"
# nbdfuse (libnbd) does not reconnect when its server goes away; qemu's
# NBD client does (reconnect-delay: requests wait for a new connection to
# the VIP and are sent again). So qemu-nbd, inside the client's namespace,
# is the client of the VIP, and re-exports it on a unix socket that
# nbdfuse uses from here; the root namespace never talks to a lab address.
rm -f "$SOCK" "$WORK/run/qemu-nbd.pid"
"${LT[@]}" exec client -- qemu-nbd --image-opts \
	"driver=nbd,server.type=inet,server.host=198.51.100.100,server.port=10809,export=r0,reconnect-delay=60" \
	--socket "$SOCK" --shared 4 --persistent --pid-file "$WORK/run/qemu-nbd.pid" 2>"$WORK/qemu-nbd.log" &
PROXY_EXEC=$!
proxy_ready() {
	kill -0 "$PROXY_EXEC" 2>/dev/null || { cat "$WORK/qemu-nbd.log" >&2; fail "qemu-nbd exited early"; }
	[ -S "$SOCK" ] && [ -s "$WORK/run/qemu-nbd.pid" ]
}
wait_for "qemu-nbd to connect to the VIP" 300 proxy_ready
PROXY_PID=$(cat "$WORK/run/qemu-nbd.pid")
URI="nbd+unix:///?socket=$SOCK"
attach
say "client: qemu-nbd (pid $PROXY_PID, reconnect-delay 60 s) -> $VIPURI; nbdfuse (pid $FUSE_PID) -> $LOOP"
mkfs.ext4 -q -F -L tandem-lab "$LOOP"
mount -t ext4 -o noatime "$LOOP" "$MNT"
say "$(df -h --output=source,size,avail,target "$MNT" | tail -n1)"

step "write files through the VIP and record their checksums"
head -c $((16 << 20)) /dev/urandom >"$MNT/sixteen-mib.bin"
mkdir -p "$MNT/notes"
for i in $(seq 1 30); do echo "note $i, written to alpha through the VIP at $(date -Is)" >"$MNT/notes/note-$i.txt"; done
(cd "$MNT" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums3"
head -c $((4 << 20)) /dev/urandom >"$WORK/during-failover.bin"
echo "$(sha256sum <"$WORK/during-failover.bin" | cut -d' ' -f1)  ./during-failover.bin" >>"$WORK/sums3"
sync
lab_in_sync() { [ "$(lab_node bravo)" = "Secondary/UpToDate, Connected" ]; }
wait_for "bravo to have every write" 300 lab_in_sync
say "$(find "$MNT" -type f ! -path '*/lost+found/*' | wc -l) files synced; alpha $(lab_node alpha), bravo $(lab_node bravo)"

step "crash alpha (tandem lab crash: SIGKILL and link down, like a power cut), then write 4 MiB to the mounted ext4 at once"
CRASH=${EPOCHREALTIME/[.,]/}
"${LT[@]}" crash alpha | sed 's/^/           /' || fail "tandem lab crash alpha failed"
# The filesystem write is issued right after the crash: it waits in the
# client while bravo takes over, then completes.
(cp "$WORK/during-failover.bin" "$MNT/during-failover.bin" && sync -f "$MNT/during-failover.bin" && echo "${EPOCHREALTIME/[.,]/}" >"$WORK/fs-resumed") 2>"$WORK/fs-write.log" &
FS_WRITER=$!
# A fresh client reading at the VIP, every 0.1 s (each try at most 2 s).
resumed=""
for ((i = 0; i < 300; i++)); do
	if "${LT[@]}" exec client -- timeout 2 qemu-io -r -f raw -c 'read 0 64k' "$VIPURI" >"$WORK/probe.log" 2>&1 && ! grep -qi 'fail\|error' "$WORK/probe.log"; then
		resumed=${EPOCHREALTIME/[.,]/}
		break
	fi
	[ $(((${EPOCHREALTIME/[.,]/} - CRASH) / 1000000)) -lt 60 ] || break
	sleep 0.1
done
[ -n "$resumed" ] || { cat "$WORK/probe.log" >&2; fail "the VIP did not serve again within 60 s of the crash"; }
ms=$(((resumed - CRASH) / 1000))
say "I/O at the VIP resumed $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s after the crash (first read of a fresh client that succeeded)"

step "bravo's failover, step by step (tandem status --node bravo)"
failover_recorded() {
	"${C[@]}" status --node bravo --json | jq -e '.cluster_layer.last_failover.r0.steps | map(.name) | index("serve")' >/dev/null
}
wait_for "bravo's failover record" 100 failover_recorded
"${C[@]}" status --node bravo --json |
	jq -r '.cluster_layer.last_failover.r0 | "from \(.from) at epoch \(.epoch), \(.seconds * 1000 | floor) ms in all:", (.steps[] | "  \(.name): \(.seconds * 1000 | floor) ms (at \(.elapsed_seconds * 1000 | floor) ms) \(.detail // "")")' |
	sed 's/^/           /'
say "now: primary $(lab_field .resources[0].primary), VIP on $(lab_field .resources[0].vip_holder), alpha's BMC reports power $(lab_field '.nodes[] | select(.name=="alpha") | .power')"
# The lab's alert program (alerts in its tandem.yaml) got every event of
# bravo's daemon, as an on-call's mail or pager program would.
alerted() { grep -q ' failover r0 failover step serve' "$WORK/lab/log/bravo.alerts" 2>/dev/null; }
wait_for "bravo's alert program to get the failover" 50 alerted
say "bravo's alert program was told (log/bravo.alerts, fence and failover events):"
grep -E '^[^ ]+ (fence|failover) ' "$WORK/lab/log/bravo.alerts" | cut -c1-150 | sed 's/^/           /'

step "the mounted filesystem carried on: its write waited in the client, which reconnected to the VIP"
for ((i = 0; i < 900; i++)); do kill -0 "$FS_WRITER" 2>/dev/null || break; sleep 0.1; done
kill -0 "$FS_WRITER" 2>/dev/null && fail "the filesystem write did not complete within 90 s of the crash"
wait "$FS_WRITER" || { cat "$WORK/fs-write.log" >&2; fail "the filesystem write failed"; }
FS_WRITER=""
ms=$(($(cat "$WORK/fs-resumed") - CRASH))
ms=$((ms / 1000))
say "4 MiB written and fsynced on ext4 $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s after the crash: qemu-nbd held the request and reconnected to the VIP, now on bravo"

step "read everything back from bravo: unmount, e2fsck, a fresh nbdfuse and loop device, remount, check the checksums, unmount"
umount "$MNT"
e2fsck -fn "$LOOP" >"$WORK/fsck4.log" 2>&1 || { cat "$WORK/fsck4.log" >&2; fail "e2fsck after the failover found problems"; }
say "$(tail -n1 "$WORK/fsck4.log")"
detach
attach
mount -t ext4 -o noatime "$LOOP" "$MNT"
(cd "$MNT" && sha256sum --quiet -c "$WORK/sums3") || fail "checksums differ after the failover"
say "all $(wc -l <"$WORK/sums3") checksums match, read from bravo"
# Unmount before alpha's daemon starts again: a process started through
# ip netns exec gets a copy of every mount, and its copies would keep the
# loop device and the FUSE file busy.
umount "$MNT"
detach
stop_pid "$PROXY_PID" || true
PROXY_PID=""
wait "$PROXY_EXEC" 2>/dev/null || true
PROXY_EXEC=""
say "client unmounted and disconnected"

step "restart alpha (power on): it comes back as Secondary and resyncs from bravo"
"${LT[@]}" restart alpha | sed 's/^/           /' || fail "tandem lab restart alpha failed"
lab_rejoined() {
	[ "$(lab_node alpha)" = "Secondary/UpToDate, Connected" ] && [ "$(lab_node bravo)" = "Primary/UpToDate, Connected" ]
}
last=""
for ((i = 0; i < 600; i++)); do
	lab_rejoined && break
	r=$(lab_field '.nodes[] | select(.name=="alpha") | .resources[0] | select(.resync) | "\(.connection) \(.resync)"' 2>/dev/null || true)
	[ -z "$r" ] || [ "$r" = "$last" ] || say "  alpha: $r"
	last=$r
	sleep 0.2
done
lab_rejoined || fail "alpha did not rejoin as an UpToDate Secondary: alpha $(lab_node alpha), bravo $(lab_node bravo)"
say "alpha $(lab_node alpha), bravo $(lab_node bravo), VIP on $(lab_field .resources[0].vip_holder); last resync: $("${C[@]}" status r0 --node bravo --json | jq -r '.resources[0].last_resync | if . then "\(.sent_bytes/1024|floor) KiB sent, full \(.full)" else "none" end')"

step "compare the replicas: tandem verify online, then byte for byte"
"${C[@]}" verify r0 --node bravo 2>&1 | sed 's/^/           /' || fail "tandem verify failed or found differences"
cmp -n "$LABSIZE" "$LAB/disks/alpha-r0.img" "$LAB/disks/bravo-r0.img" || fail "the replicas differ"
say "alpha-r0.img and bravo-r0.img: the first $((LABSIZE >> 20)) MiB are identical"

step "tandem lab down"
"${LT[@]}" down | sed 's/^/           /' || fail "tandem lab down failed"
LAB_UP=""

say "PASS: single node, two replicas, and the lab: alpha crashed, bravo fenced it and took over, ext4 kept its data, alpha resynced, replicas identical; everything removed"
