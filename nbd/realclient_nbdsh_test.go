package nbd_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// runNbdsh connects nbdsh to uri and runs the python snippet, in which h is
// the connected handle. Assertions in the snippet fail the test.
func runNbdsh(t *testing.T, uri, script string) string {
	t.Helper()
	nbdsh := testenv.Nbdsh(t)
	return testenv.Run(t, nbdsh[0], append(nbdsh[1:], "--base-allocation", "-u", uri, "-c", script)...)
}

// TestRealClientStructuredReplies drives the parts of the protocol that only
// libnbd exposes: structured read chunks, DF, block status with and without
// REQ_ONE, CACHE, FAST_ZERO and out-of-range errors delivered as error
// chunks.
func TestRealClientStructuredReplies(t *testing.T) {
	const size = 8 * mib
	dev, _ := fileDevice(t, size)
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "s", Device: dev}}})

	script := `
import errno
size = ` + strconv.FormatInt(size, 10) + `
assert h.get_structured_replies_negotiated(), "structured replies not negotiated"
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated"
assert h.get_size() == size

# Data in [0,1M), a hole everywhere else.
h.pwrite(b"\xa5" * (1 << 20), 0, nbd.CMD_FLAG_FUA)
h.flush()

# A structured read must cover the request exactly, with data where the
# data is and (data or hole) chunks that read as zero elsewhere.
chunks = []
def chunk(subbuf, offset, status, err):
    chunks.append((offset, len(subbuf), status))
    return 0
buf = h.pread_structured(2 << 20, 0, chunk)
assert buf[: 1 << 20] == b"\xa5" * (1 << 20), "data mismatch"
assert buf[1 << 20 :] == bytes(1 << 20), "hole does not read as zero"
covered = sorted((o, o + n) for o, n, _ in chunks)
pos = 0
for a, b in covered:
    assert a == pos, "chunks overlap or leave a gap at %d: %s" % (pos, chunks)
    pos = b
assert pos == 2 << 20, "chunks end at %d" % pos
for o, n, st in chunks:
    assert st in (nbd.READ_DATA, nbd.READ_HOLE), "unexpected chunk status %d" % st

# With DF the server must answer in one chunk.
chunks.clear()
h.pread_structured(2 << 20, 0, chunk, nbd.CMD_FLAG_DF)
assert len(chunks) == 1 and chunks[0][:2] == (0, 2 << 20), "DF read in %s" % chunks

# Block status: data then hole, extents in order and within the request.
entries = []
def extent(metacontext, offset, e, err):
    assert metacontext == nbd.CONTEXT_BASE_ALLOCATION
    entries.append((offset, list(e)))
    return 0
h.block_status(size, 0, extent)
assert entries, "no block status reply"
off, e = entries[0]
assert off == 0
pairs = list(zip(e[0::2], e[1::2]))
assert (pairs[0][1] & nbd.STATE_HOLE) == 0, "first extent should be data: %s" % pairs
total = sum(n for n, _ in pairs)
assert 0 < total <= size, "extents cover %d of %d" % (total, size)
pos = 0
for n, flags in pairs:
    if pos >= (1 << 20) and pos + n <= size:
        assert flags & nbd.STATE_HOLE and flags & nbd.STATE_ZERO, "no hole at %d: %s" % (pos, pairs)
    pos += n

# REQ_ONE: exactly one extent, not past the request.
entries.clear()
h.block_status(2 << 20, 0, extent, nbd.CMD_FLAG_REQ_ONE)
assert len(entries) == 1 and len(entries[0][1]) == 2, "REQ_ONE gave %s" % entries
assert 0 < entries[0][1][0] <= 2 << 20

# CACHE is advertised and succeeds.
assert h.can_cache()
h.cache(1 << 20, 0)

# Fast zero either succeeds and zeroes, or fails with ENOTSUP leaving the
# data alone; never anything else.
assert h.can_fast_zero()
h.pwrite(b"\x5a" * 4096, 4 << 20)
try:
    h.zero(4096, 4 << 20, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(4096, 4 << 20) == bytes(4096), "fast zero did not zero"
except nbd.Error as ex:
    assert ex.errnum == errno.ENOTSUP, "fast zero failed with %s" % ex
    assert h.pread(4096, 4 << 20) == b"\x5a" * 4096, "refused fast zero changed data"

# Out-of-range requests are refused with the spec's errors, and the
# connection stays usable.
h.set_strict_mode(0)
for name, fn, want in [
        ("read", lambda: h.pread(4096, size - 2048), errno.EINVAL),
        ("write", lambda: h.pwrite(b"x" * 4096, size - 2048), errno.ENOSPC),
        ("trim", lambda: h.trim(4096, size - 2048), errno.EINVAL),
        ("zero", lambda: h.zero(4096, size - 2048), errno.ENOSPC),
        ("block_status", lambda: h.block_status(4096, size, extent), errno.EINVAL)]:
    try:
        fn()
    except nbd.Error as ex:
        assert ex.errnum == want, "%s out of range: errno %s, want %s" % (name, ex.errnum, want)
    else:
        raise AssertionError(name + " out of range succeeded")
assert h.pread(4096, 0) == b"\xa5" * 4096
print("ok")
`
	if out := runNbdsh(t, s.uri("s"), script); !strings.Contains(out, "ok") {
		t.Fatalf("nbdsh script did not finish:\n%s", out)
	}
}

// TestRealClientStructuredOff: a client that does not ask for structured
// replies gets simple replies, and still reads correctly.
func TestRealClientStructuredOff(t *testing.T) {
	testenv.RequireTool(t, "nbdsh")
	mem := memDevice(t, 1*mib)
	if err := mem.WriteAt(t.Context(), fillPattern(64*kib, 3), 0, false); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "p", Device: mem}}})
	// -u connects before -c runs, so this script connects a second handle.
	script := `
h2 = nbd.NBD()
h2.set_request_structured_replies(False)
h2.connect_uri("` + s.uri("p") + `")
assert not h2.get_structured_replies_negotiated()
data = h2.pread(64 * 1024, 0)
assert data == h.pread(64 * 1024, 0)
assert data != bytes(64 * 1024)
h2.shutdown()
print("ok")
`
	if out := runNbdsh(t, s.uri("p"), script); !strings.Contains(out, "ok") {
		t.Fatalf("nbdsh script did not finish:\n%s", out)
	}
}
