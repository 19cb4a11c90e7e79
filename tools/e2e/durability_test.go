package e2e_test

// FLUSH and FUA durability of `tandem serve`, observed from outside.
//
// What "durable" would mean is "survives a power cut", and nothing on one
// machine without a power switch can show that. What these tests prove
// instead is the server's half of the contract, which is the half it owns:
//
//  1. A FUA write, or a write followed by FLUSH, is acknowledged only after
//     the server made the kernel put it on stable storage: strace shows, in
//     this order, the data reaching the backing file (pwrite), an fdatasync
//     or fsync of that same file descriptor returning 0 (or the data write
//     itself carrying RWF_DSYNC), and only then the reply to the client.
//     A server that acknowledges first, syncs the wrong descriptor, or does
//     not sync at all fails. strace serialises the events it reports, and
//     the server cannot send the reply before the sync's exit stop was
//     reported, so a correct server never fails this check; a wrong one
//     could slip through only if the kernel reordered two stops of
//     different threads in the report, which needs the very ordering bug
//     to coincide with that race.
//  2. After SIGKILL the acknowledged bytes are in the backing file. The
//     page cache would show them even without any sync, so this only
//     proves that the server holds no acknowledged data in its own memory.
//
// Not covered: whether the filesystem and the disk honour fdatasync (a
// power-cut test, e.g. with dm-log-writes or a VM kill, is outside a unit
// test's reach), and O_DIRECT mode (--direct), which uses the same calls.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// traced is one system call from strace -f output, with the positions (line
// numbers) of its entry and exit, which differ when strace had to split it
// into "<unfinished ...>" and "<... resumed>".
type traced struct {
	name        string
	args        string // everything between the parentheses, both halves
	ret         string // after " = "
	entry, exit int
}

var (
	traceLine    = regexp.MustCompile(`^(\d+) +(.*)$`)
	traceCall    = regexp.MustCompile(`^([a-z0-9_]+)\((.*)$`)
	traceResumed = regexp.MustCompile(`^<\.\.\. ([a-z0-9_]+) resumed>(.*)$`)
	traceRet     = regexp.MustCompile(`^(.*)\) += (.*)$`)
	// errorChunkType matches a structured reply type with the high bit set
	// (NBD_REPLY_TYPE_ERROR*), as strace -xx prints it.
	errorChunkType = regexp.MustCompile(`^\\x[89a-f]`)
)

// parseStrace reads the output of `strace -f -o FILE`.
func parseStrace(t *testing.T, path string) []traced {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var calls []traced
	pending := map[string]*traced{} // pid -> unfinished call
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for n := 0; sc.Scan(); n++ {
		m := traceLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		pid, rest := m[1], m[2]
		if r := traceResumed.FindStringSubmatch(rest); r != nil {
			c := pending[pid]
			delete(pending, pid)
			if c == nil || c.name != r[1] {
				continue
			}
			if rr := traceRet.FindStringSubmatch(r[2]); rr != nil {
				c.args += rr[1]
				c.ret = rr[2]
			}
			c.exit = n
			calls = append(calls, *c)
			continue
		}
		cm := traceCall.FindStringSubmatch(rest)
		if cm == nil {
			continue // signals, exits
		}
		if args, ok := strings.CutSuffix(cm[2], " <unfinished ...>"); ok {
			pending[pid] = &traced{name: cm[1], args: args, entry: n}
			continue
		}
		c := traced{name: cm[1], entry: n, exit: n}
		if rr := traceRet.FindStringSubmatch(cm[2]); rr != nil {
			c.args, c.ret = rr[1], rr[2]
		} else {
			c.args = cm[2]
		}
		calls = append(calls, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return calls
}

// hexBytes renders b the way `strace -xx` prints strings.
func hexBytes(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, `\x%02x`, c)
	}
	return s.String()
}

func firstArg(args string) string {
	a, _, _ := strings.Cut(args, ",")
	return strings.TrimSpace(a)
}

func succeeded(c traced) bool {
	return c.ret != "" && !strings.HasPrefix(c.ret, "-1") && !strings.HasPrefix(c.ret, "?")
}

// requestHandle finds the request header of the given command type in what
// the server read from the socket and returns its handle as strace prints it.
func requestHandle(calls []traced, cmdType uint16, flags uint16) (string, int, bool) {
	hdr := binary.BigEndian.AppendUint32(nil, 0x25609513)
	hdr = binary.BigEndian.AppendUint16(hdr, flags)
	hdr = binary.BigEndian.AppendUint16(hdr, cmdType)
	prefix := hexBytes(hdr)
	for _, c := range calls {
		switch c.name {
		case "read", "readv", "recvfrom", "recvmsg":
		default:
			continue
		}
		i := strings.Index(c.args, prefix)
		if i < 0 || !succeeded(c) {
			continue
		}
		h := c.args[i+len(prefix):]
		if len(h) < 32 {
			continue // cut off by -s: the test's strace limit is too small
		}
		return h[:32], c.exit, true
	}
	return "", 0, false
}

// replyFor finds the reply to handle (simple or structured) written to the
// socket after position from, and whether it reports success.
func replyFor(calls []traced, handle string, from int) (traced, bool, bool) {
	simple := hexBytes(binary.BigEndian.AppendUint32(nil, 0x67446698))
	structured := hexBytes(binary.BigEndian.AppendUint32(nil, 0x668e33ef))
	for _, c := range calls {
		if c.entry <= from {
			continue
		}
		switch c.name {
		case "write", "writev", "sendmsg", "sendto":
		default:
			continue
		}
		// Both reply headers have the handle 8 bytes (32 characters as
		// printed) after the magic: error for a simple reply, flags and
		// type for a structured chunk.
		if i := strings.Index(c.args, simple); i >= 0 && strings.HasPrefix(tailFrom(c.args, i+len(simple)+16), handle) {
			ok := strings.HasPrefix(tailFrom(c.args, i+len(simple)), hexBytes(make([]byte, 4)))
			return c, ok, true
		}
		if i := strings.Index(c.args, structured); i >= 0 && strings.HasPrefix(tailFrom(c.args, i+len(structured)+16), handle) {
			// A structured error chunk has the high bit of its type set.
			typ := tailFrom(c.args, i+len(structured)+8)
			ok := !errorChunkType.MatchString(typ)
			return c, ok, true
		}
	}
	return traced{}, false, false
}

// tailFrom returns s from i on, or "" when s is shorter.
func tailFrom(s string, i int) string {
	if i > len(s) {
		return ""
	}
	return s[i:]
}

// dataWrites returns the successful positional writes of the pattern at
// offset off.
func dataWrites(calls []traced, pattern byte, off int64) []traced {
	pat := hexBytes([]byte{pattern, pattern, pattern, pattern})
	offArg := ", " + strconv.FormatInt(off, 10)
	var out []traced
	for _, c := range calls {
		switch c.name {
		case "pwrite64", "pwritev", "pwritev2":
		default:
			continue
		}
		if strings.Contains(c.args, pat) && strings.Contains(c.args, offArg) && succeeded(c) {
			out = append(out, c)
		}
	}
	return out
}

// syncedBefore reports whether the data writes were made durable before
// position before: each one carries RWF_DSYNC/RWF_SYNC, or an fsync or
// fdatasync of their descriptor started after the last of them returned
// and itself returned 0 before position before.
func syncedBefore(calls []traced, writes []traced, before int) (string, bool) {
	fd := firstArg(writes[0].args)
	allDsync := true
	last := 0
	for _, w := range writes {
		if firstArg(w.args) != fd {
			return "data written through two descriptors", false
		}
		if !strings.Contains(w.args, "RWF_DSYNC") && !strings.Contains(w.args, "RWF_SYNC") {
			allDsync = false
		}
		last = max(last, w.exit)
	}
	if last >= before {
		return "the reply was sent before the data write returned", false
	}
	if allDsync {
		return "pwritev2 with RWF_DSYNC", true
	}
	for _, c := range calls {
		if (c.name == "fdatasync" || c.name == "fsync") && firstArg(c.args) == fd &&
			c.ret == "0" && c.entry > last && c.exit < before {
			return c.name + "(" + fd + ")", true
		}
	}
	return "no fdatasync/fsync of fd " + fd + " between the data write and the reply", false
}

// traceServer attaches strace to the server and returns the path of its
// output and the strace process. It returns once every thread is traced.
func traceServer(t *testing.T, s *server) (string, *testenv.Proc) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "strace.out")
	st := testenv.Start(t, "strace", "-f", "-xx", "-s", "64", "-o", out,
		"-e", "trace=pwrite64,pwritev,pwritev2,write,writev,sendmsg,sendto,read,readv,recvfrom,recvmsg,fdatasync,fsync,sync_file_range,syncfs",
		"-e", "signal=none",
		"-p", strconv.Itoa(s.Pid()))
	st.WaitFor(t, "strace to attach", func() bool {
		return strings.Contains(st.Stderr(), "attached") || refused(st)
	})
	if refused(st) {
		// A property of the machine (no CAP_SYS_PTRACE, a seccomp
		// profile), not of tandem.
		msg := "strace may not attach here: " + st.Stderr()
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return out, st
}

// refused reports whether strace exited because it may not trace.
func refused(st *testenv.Proc) bool {
	return !st.Running() && strings.Contains(st.Stderr(), "Operation not permitted")
}

func TestFUAAndFlushDurability(t *testing.T) {
	testenv.RequireTool(t, "qemu-io", "strace")
	const size = 64 * mib
	cases := []struct {
		name    string
		pattern byte
		off     int64
		cmds    []string
		// the request whose reply promises durability: NBD_CMD_WRITE with
		// FUA, or NBD_CMD_FLUSH
		cmdType, cmdFlags uint16
		// durable is false for the control: a plain write promises
		// nothing, and the server should not pay for a sync it was not
		// asked for. It shows that the check tells the cases apart.
		durable bool
	}{
		{"write FUA", 0x5a, 1 * mib, []string{"write -f -P 0x5a 1M 64k"}, 1, 1, true},
		{"write then flush", 0x6b, 2 * mib, []string{"write -P 0x6b 2M 64k", "flush"}, 3, 0, true},
		{"plain write (control)", 0x7c, 3 * mib, []string{"write -P 0x7c 3M 64k"}, 1, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "disk.img")
			s := startServe(t, "--export", "d="+img, "--size", strconv.Itoa(size))
			traceOut, st := traceServer(t, s)

			qemuIO(t, s.uri("d"), tc.cmds...)
			// The moment qemu-io is done: no chance for a lazy write-back.
			s.Signal(t, syscall.SIGKILL)
			if err := s.Wait(t); err == nil {
				t.Fatalf("tandem serve exited 0 after SIGKILL?")
			}
			_ = st.Wait(t) // strace ends with its tracee

			data, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if got := data[tc.off : tc.off+64*1024]; !isPattern(got, tc.pattern) {
				t.Fatalf("backing file at %d after SIGKILL: %s, want 0x%02x", tc.off, describe(got), tc.pattern)
			}

			calls := parseStrace(t, traceOut)
			writes := dataWrites(calls, tc.pattern, tc.off)
			if len(writes) == 0 {
				t.Fatalf("strace shows no write of 0x%02x at %d to the backing file", tc.pattern, tc.off)
			}
			handle, readAt, ok := requestHandle(calls, tc.cmdType, tc.cmdFlags)
			if !ok {
				t.Fatalf("strace shows no request of type %d flags %d read from the socket", tc.cmdType, tc.cmdFlags)
			}
			reply, replyOK, ok := replyFor(calls, handle, readAt)
			if !ok {
				t.Fatalf("strace shows no reply to handle %s", handle)
			}
			if !replyOK {
				t.Fatalf("the server answered the request with an error: %s(%s)", reply.name, reply.args)
			}
			how, ok := syncedBefore(calls, writes, reply.entry)
			switch {
			case tc.durable && !ok:
				t.Fatalf("acknowledged without durability: %s", how)
			case !tc.durable && ok:
				t.Fatalf("a plain write was synced before its reply (%s): every write pays for a sync nobody asked for", how)
			}
			t.Logf("before the reply: %s", how)
		})
	}
}
