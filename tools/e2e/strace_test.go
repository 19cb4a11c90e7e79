package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The strace checks of durability_test.go are only worth something if they
// reject the wrong orderings; these synthetic traces show they do.

const (
	tReq   = `\x25\x60\x95\x13\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x2a\x00\x00\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00\x5a\x5a\x5a\x5a`
	tReply = `\x67\x44\x66\x98\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x2a`
	tErr   = `\x67\x44\x66\x98\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x2a`
	tSRep  = `\x66\x8e\x33\xef\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x2a\x00\x00\x00\x00`
	tWrite = `pwrite64(5, "\x5a\x5a\x5a\x5a\x5a\x5a"..., 65536, 1048576) = 65536`
)

func TestStraceOrderingCheck(t *testing.T) {
	cases := []struct {
		name    string
		trace   []string
		ok      bool
		replyOK bool
	}{
		{"sync then reply", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`10 ` + tWrite,
			`10 fdatasync(5)                      = 0`,
			`10 write(9, "` + tReply + `", 16) = 16`,
		}, true, true},
		{"RWF_DSYNC write", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`10 pwritev2(5, [{iov_base="\x5a\x5a\x5a\x5a"..., iov_len=65536}], 1, 1048576, RWF_DSYNC) = 65536`,
			`10 write(9, "` + tReply + `", 16) = 16`,
		}, true, true},
		{"structured reply after sync on another thread", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`11 ` + tWrite,
			`12 fdatasync(5 <unfinished ...>`,
			`11 futex(0x1, FUTEX_WAKE, 1) = 1`,
			`12 <... fdatasync resumed>)          = 0`,
			`10 write(9, "` + tSRep + `", 20) = 20`,
		}, true, true},
		{"reply before sync", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`10 ` + tWrite,
			`10 write(9, "` + tReply + `", 16) = 16`,
			`10 fdatasync(5)                      = 0`,
		}, false, true},
		{"reply while the sync is still running", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`10 ` + tWrite,
			`11 fdatasync(5 <unfinished ...>`,
			`10 write(9, "` + tReply + `", 16) = 16`,
			`11 <... fdatasync resumed>)          = 0`,
		}, false, true},
		{"sync of another descriptor", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`10 ` + tWrite,
			`10 fdatasync(6)                      = 0`,
			`10 write(9, "` + tReply + `", 16) = 16`,
		}, false, true},
		{"sync started before the write returned", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`11 pwrite64(5, "\x5a\x5a\x5a\x5a"..., 65536, 1048576 <unfinished ...>`,
			`10 fdatasync(5)                      = 0`,
			`11 <... pwrite64 resumed>)           = 65536`,
			`10 write(9, "` + tReply + `", 16) = 16`,
		}, false, true},
		{"failed sync", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`10 ` + tWrite,
			`10 fdatasync(5)                      = -1 EIO (Input/output error)`,
			`10 write(9, "` + tReply + `", 16) = 16`,
		}, false, true},
		{"error reply", []string{
			`10 read(9, "` + tReq + `"..., 131072) = 65564`,
			`10 ` + tWrite,
			`10 fdatasync(5)                      = 0`,
			`10 write(9, "` + tErr + `", 16) = 16`,
		}, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "trace")
			if err := os.WriteFile(path, []byte(strings.Join(tc.trace, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			calls := parseStrace(t, path)
			writes := dataWrites(calls, 0x5a, 1<<20)
			if len(writes) != 1 {
				t.Fatalf("found %d data writes, want 1: %+v", len(writes), calls)
			}
			handle, readAt, ok := requestHandle(calls, 1, 1)
			if !ok || handle != `\x00\x00\x00\x00\x00\x00\x00\x2a` {
				t.Fatalf("request handle %q, found %v", handle, ok)
			}
			reply, replyOK, ok := replyFor(calls, handle, readAt)
			if !ok {
				t.Fatalf("no reply found")
			}
			if replyOK != tc.replyOK {
				t.Errorf("reply success = %v, want %v", replyOK, tc.replyOK)
			}
			how, ok := syncedBefore(calls, writes, reply.entry)
			if ok != tc.ok {
				t.Errorf("durable = %v (%s), want %v", ok, how, tc.ok)
			}
		})
	}
}
