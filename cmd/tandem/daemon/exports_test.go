package daemon

import (
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// TestSharedListenerExportsFollowRoles: r0 and r1 share alpha's NBD
// listener (one server, two exports); a real client sees both, and only
// the export of the resource alpha is Primary for passes I/O.
func TestSharedListenerExportsFollowRoles(t *testing.T) {
	testenv.RequireTool(t, "nbdinfo", "qemu-io")
	l := newLab(t)
	l.createMD(t, "alpha")
	d, _, logs := l.start(t, "alpha")
	if got := d.NBDAddrs(); len(got) != 1 || got[0] != "unix:"+l.dir+"/alpha.nbd" {
		t.Fatalf("NBD listeners %v, want alpha's one shared socket", got)
	}
	uri := func(name string) string { return "nbd+unix:///" + name + "?socket=" + l.dir + "/alpha.nbd" }

	list := testenv.Run(t, "nbdinfo", "--list", uri(""))
	for _, name := range []string{"export=\"r0\"", "export=\"r1\""} {
		contains(t, "nbdinfo --list", list, name)
	}
	if _, err := l.client("alpha").Promote(t.Context(), "r0", false); err != nil {
		t.Fatal(err)
	}
	out := testenv.Run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "read -P 0x5a 0 64k", uri("r0"))
	if strings.Contains(out, "failed") || !strings.Contains(out, "read 65536/65536") {
		t.Errorf("I/O on the primary's export: %s", out)
	}
	// The secondary's export is refused at connect time, with the reason.
	out, stderr, _ := testenv.RunErr("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", uri("r1"))
	if !strings.Contains(out+stderr, "not available") || !strings.Contains(out+stderr, "not Primary here") || strings.Contains(out, "read 4096") {
		t.Errorf("open of the secondary's export: %s%s", out, stderr)
	}
	// Listing still describes both (NBD_OPT_INFO answers).
	if list := testenv.Run(t, "nbdinfo", "--list", uri("")); strings.Count(list, "export-size") != 2 {
		t.Errorf("nbdinfo --list after the promotion of r0 does not describe both exports:\n%s", list)
	}
	waitUntil(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), "nbd request refused") })
	contains(t, "log", logs.String(), "not Primary here")
}
