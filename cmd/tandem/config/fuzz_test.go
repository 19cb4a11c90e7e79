package config

import (
	"strings"
	"testing"
)

// Whatever the file holds, Parse returns a configuration or problems,
// never a panic; each problem names the file; a configuration it returns
// hashes and diffs against itself as equal. (Not Validate: it looks
// host names up, which a fuzzer would turn into DNS traffic.)
func FuzzParse(f *testing.F) {
	for _, s := range []string{base, alertsBase, "", "cluster: [\n", "nodes: {a: 1}\n", "cluster: lab\nresources:\n  - name: r0\n    size: -1\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		cfg, err := Parse("tandem.yaml", []byte(text))
		if err != nil {
			if cfg != nil {
				t.Fatalf("a configuration and an error: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "tandem.yaml") {
				t.Fatalf("the error does not name the file: %q", err)
			}
			return
		}
		again, err := Parse("tandem.yaml", []byte(text))
		if err != nil {
			t.Fatalf("parsed once, refused the second time: %v", err)
		}
		if cfg.Hash() != again.Hash() {
			t.Fatal("the hash is not stable")
		}
		if d := Diff(cfg, again); len(d) != 0 {
			t.Fatalf("differs from itself: %v", d)
		}
	})
}
