package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// problemCase is one table entry of the tests that edit a valid file and
// expect exactly the problems marked in it (see TestParseProblems).
type problemCase struct {
	name  string
	edits []string // old, new, old, new ... applied once each, in order
	want  []want
}

// runProblemCases applies each case's edits to base, parses the result and
// checks that exactly its problems come out, in order: at the line of the
// marker, under the key path, with substr in the message, and with a fix.
func runProblemCases(t *testing.T, base string, cases []problemCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			text := base
			for i := 0; i+1 < len(tc.edits); i += 2 {
				if !strings.Contains(text, tc.edits[i]) {
					t.Fatalf("edit %d: %q is not in the file", i/2, tc.edits[i])
				}
				text = strings.Replace(text, tc.edits[i], tc.edits[i+1], 1)
			}
			cfg, err := Parse("tandem.yaml", []byte(text))
			if err == nil || cfg != nil {
				t.Fatalf("Parse succeeded, want %d problems", len(tc.want))
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			got := Problems(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				prefix := fmt.Sprintf("tandem.yaml:%d: ", lineOf(t, text, w.mark))
				if w.path != "" {
					prefix += w.path + ": "
				}
				if msg := got[i].Error(); !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, w.substr) || got[i].Fix == "" {
					t.Errorf("problem %d:\n  got  %s\n  want %s...%s (and a fix)", i, msg, prefix, w.substr)
				}
			}
		})
	}
}
