package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

func listNames(t *testing.T, addr string) []string {
	t.Helper()
	c := dial(t, addr)
	rs := c.opt(optList, nil)
	if lastType(rs) != repAck {
		t.Fatalf("LIST: last reply %#x", lastType(rs))
	}
	var got []string
	for _, r := range rs[:len(rs)-1] {
		n := binary.BigEndian.Uint32(r.data)
		got = append(got, string(r.data[4:4+n]))
	}
	return got
}

// TestAddAndRemoveExports: exports come and go while the server runs;
// a connection to a removed export is closed, the others go on.
func TestAddAndRemoveExports(t *testing.T) {
	noLeaks(t)
	s, addr := startServer(t, twoExports())
	added := newMem(8192, allFeatures)
	if err := s.AddExport(Export{Name: "new", Device: added}); err != nil {
		t.Fatal(err)
	}
	if got := listNames(t, addr); !slices.Equal(got, []string{"disk", "ro", "new"}) {
		t.Fatalf("LIST after AddExport: %q", got)
	}
	for _, bad := range []Export{{Name: "new", Device: added}, {Name: "nodev"}, {Name: "tls", Device: added, TLSOnly: true}} {
		if err := s.AddExport(bad); err == nil {
			t.Fatalf("AddExport(%q) accepted", bad.Name)
		}
	}
	if got := s.Exports(); !slices.Equal(got, []string{"disk", "ro", "new"}) {
		t.Fatalf("refused AddExport changed the list: %q", got)
	}

	onNew, onDisk := dial(t, addr), dial(t, addr)
	onNew.goExport("new", false)
	onDisk.goExport("disk", false)
	p := bytes.Repeat([]byte{0xab}, 4096)
	if r := onNew.do(cmdWrite, 0, 0, 4096, p); r.errno != 0 {
		t.Fatalf("write to the added export: error %d", r.errno)
	}
	if !bytes.Equal(added.snapshot()[:4096], p) {
		t.Fatal("the added export's device did not get the write")
	}

	if err := s.RemoveExport("new"); err != nil {
		t.Fatal(err)
	}
	onNew.expectClosed()
	if r := onDisk.do(cmdWrite, 0, 0, 4096, p); r.errno != 0 {
		t.Fatalf("write to a remaining export after a removal: error %d", r.errno)
	}
	if got := listNames(t, addr); !slices.Equal(got, []string{"disk", "ro"}) {
		t.Fatalf("LIST after RemoveExport: %q", got)
	}
	c := dial(t, addr)
	if rs := c.opt(optGo, nameData("new", 0, 0)); lastType(rs) != repErrUnknown {
		t.Fatalf("GO to a removed export: %#x", lastType(rs))
	}
	if err := s.RemoveExport("new"); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("removing it twice: %v", err)
	}

	// Every export removed: clients are refused, the server still runs
	// and serves an export added again.
	for _, n := range []string{"disk", "ro"} {
		if err := s.RemoveExport(n); err != nil {
			t.Fatal(err)
		}
	}
	c = dial(t, addr)
	if rs := c.opt(optGo, nameData("", 0, 0)); lastType(rs) != repErrUnknown {
		t.Fatalf("GO to the default export with none: %#x", lastType(rs))
	}
	if err := s.AddExport(Export{Name: "again", Device: newMem(4096, allFeatures)}); err != nil {
		t.Fatal(err)
	}
	c = dial(t, addr)
	c.goExport("", false)
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatalf("read from the export added again: error %d", r.errno)
	}
}
