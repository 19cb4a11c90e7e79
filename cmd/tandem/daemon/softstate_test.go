package daemon

import (
	"strings"
	"testing"
)

func TestDisagreements(t *testing.T) {
	same := SoftState{Version: "v1", ConfigHash: "aaaaaaaaaaaaaaaa"}
	if got := Disagreements("alpha", map[string]SoftState{"alpha": same, "beta": same}); got != nil {
		t.Errorf("agreeing nodes: %v", got)
	}
	got := Disagreements("alpha", map[string]SoftState{"alpha": same, "beta": {Version: "v2", ConfigHash: same.ConfigHash},
		"witness": {Version: "v1", ConfigHash: "bbbbbbbbbbbbbbbb"}})
	if len(got) != 2 || !strings.Contains(got[0], "node beta runs version v2 (here v1)") ||
		!strings.Contains(got[1], "node witness runs configuration hash bbbbbbbbbbbb (here aaaaaaaaaaaa)") {
		t.Errorf("disagreements: %q", got)
	}
	if Disagreements("alpha", nil) != nil {
		t.Error("no soft state at all: a disagreement")
	}
}

func TestStatusCarriesOwnSoftState(t *testing.T) {
	l := newLab(t)
	l.createMD(t, "alpha")
	l.start(t, "alpha")
	ns, err := l.client("alpha").Status(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	s, ok := ns.Nodes["alpha"]
	if !ok || s.Version != "test" || s.ConfigHash != l.cfg.Hash() || len(Disagreements("alpha", ns.Nodes)) != 0 {
		t.Errorf("status nodes: %+v", ns.Nodes)
	}
}
