#!/usr/bin/env bash
# tandem single-node demo: serve a 1 GiB sparse file over NBD, put an ext4
# filesystem on it through a real NBD client, write files, check the
# filesystem, read the files back, and tear everything down.
#
# Run as root from anywhere (`make demo` does): it needs nbdfuse (libnbd-bin),
# fusermount3 (fuse3), losetup/mount, mkfs.ext4/e2fsck (e2fsprogs). The kernel
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
TOTAL=11

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
for tool in nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount sha256sum; do
	command -v "$tool" >/dev/null || fail "$tool not found; run 'make deps' (libnbd-bin fuse3 e2fsprogs mount)"
done

# Everything made is recorded here and undone in reverse order on any exit.
WORK="" SERVE_PID="" FUSE_PID="" FUSE_DIR="" LOOP="" MNT=""
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
	if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
		kill -TERM "$SERVE_PID"
		for ((i = 0; i < 300; i++)); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$SERVE_PID" 2>/dev/null && kill -KILL "$SERVE_PID"
		wait "$SERVE_PID" 2>/dev/null
	fi
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

say "PASS: ext4 on tandem over NBD: written, checked, remounted and verified; everything removed"
