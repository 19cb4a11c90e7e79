package config

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// ErrInvalid is wrapped by every Problem, so a caller can tell "the file says
// something wrong" (the daemon must not start, the admin must edit the file)
// from "the file could not be read" with errors.Is.
var ErrInvalid = errors.New("config: invalid")

// ErrUnknownNode is returned by Node and LocalNode for a name that is not in
// the file; `tandem config validate` without --node branches on it to skip the
// checks of local files instead of failing on a host that is not a node.
var ErrUnknownNode = errors.New("config: unknown node")

// Problem is one thing wrong in a configuration file: where it is, what is
// wrong, and what to do about it. Its message reads
//
//	tandem.yaml:14: resources[0].replicas.alpha.meta: WHAT; FIX
//
// so that an editor can jump to it and the admin knows the next step.
type Problem struct {
	File string // as given to Load; "" for a Config built in code
	Line int    // 1-based; 0 when unknown (a Config built in code)
	Path string // key path, e.g. nodes[1].address
	Msg  string // what is wrong
	Fix  string // how to fix it
}

func (p *Problem) Error() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		b.WriteString(":")
		if p.Line > 0 {
			fmt.Fprintf(&b, "%d:", p.Line)
		}
		b.WriteString(" ")
	} else if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	if p.Fix != "" {
		b.WriteString("; ")
		b.WriteString(p.Fix)
	}
	return b.String()
}

func (p *Problem) Unwrap() error { return ErrInvalid }

// Problems returns the problems inside an error returned by Load or
// Validate, in the order they were reported (by line).
func Problems(err error) []*Problem {
	var p *Problem
	switch e := err.(type) {
	case nil:
		return nil
	case interface{ Unwrap() []error }:
		var out []*Problem
		for _, x := range e.Unwrap() {
			out = append(out, Problems(x)...)
		}
		return out
	default:
		if errors.As(err, &p) {
			return []*Problem{p}
		}
		return nil
	}
}

// problems collects what is wrong while walking a file, so that one run of
// `tandem config validate` reports everything, not just the first mistake.
type problems struct {
	file string
	list []*Problem
}

func (ps *problems) add(line int, path, msg, fix string) {
	ps.list = append(ps.list, &Problem{File: ps.file, Line: line, Path: path, Msg: msg, Fix: fix})
}

// err sorts by line (the order an admin edits in) and joins; nil when clean.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	sort.SliceStable(ps.list, func(i, j int) bool { return ps.list[i].Line < ps.list[j].Line })
	errs := make([]error, len(ps.list))
	for i, p := range ps.list {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// suggest returns the known word closest to an unknown one, or "" if none is
// close: a typo, another case, or snake_case instead of kebab-case.
func suggest(word string, known []string) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "_", "-") }
	w := norm(word)
	best, bestDist := "", -1
	for _, k := range known {
		d := editDistance(w, norm(k))
		if bestDist < 0 || d < bestDist {
			best, bestDist = k, d
		}
	}
	// Short words need a tight bound, or "D" would "mean" "A"; long ones
	// can take more: "discard-youngest-primary" means "discard-younger-primary".
	limit := max(2, len(w)/5)
	switch {
	case len(w) <= 2:
		limit = 0 // only another case: "c" for "C"
	case len(w) <= 4:
		limit = 1
	}
	if bestDist >= 0 && bestDist <= limit {
		return best
	}
	return ""
}

// editDistance is the Levenshtein distance, small strings only.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// quoteList renders known values for a fix hint: "a", "b" or "c".
func quoteList(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = fmt.Sprintf("%q", w)
	}
	switch len(q) {
	case 0:
		return ""
	case 1:
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
