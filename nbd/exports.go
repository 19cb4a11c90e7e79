package nbd

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Exports come and go while the server runs (a resource added to or
// removed from the daemon's configuration by tandem adjust): the list is
// replaced, never changed in place, so that a negotiation reads one
// consistent list without a lock and a session keeps the *Export it found.

// ErrUnknownExport: RemoveExport was given a name the server does not
// export.
var ErrUnknownExport = errors.New("nbd: no such export")

// checkExport is NewServer's and AddExport's check of one export (the
// i-th); seen holds the names already exported.
func checkExport(i int, e Export, haveTLS bool, seen map[string]bool) error {
	switch {
	case e.Device == nil:
		return fmt.Errorf("nbd: export %q has no device", e.Name)
	case seen[e.Name]:
		return fmt.Errorf("nbd: export %q configured twice", e.Name)
	case len(e.Name) > maxStringLen || strings.IndexByte(e.Name, 0) >= 0:
		return fmt.Errorf("nbd: export %d: invalid name", i)
	case len(e.Description) > maxStringLen:
		return fmt.Errorf("nbd: export %q: description longer than %d bytes", e.Name, maxStringLen)
	case e.Device.Size() < 0:
		return fmt.Errorf("nbd: export %q: negative size", e.Name)
	case e.TLSOnly && !haveTLS:
		return fmt.Errorf("nbd: export %q requires TLS but no TLS configuration is given", e.Name)
	}
	return nil
}

// exportsNow is the current list; callers must not change it.
func (s *Server) exportsNow() []Export { return *s.exports.Load() }

// lookup finds an export by name; "" is the default export (the one
// named "", else the first).
func (s *Server) lookup(name string) *Export {
	exports := s.exportsNow()
	for i := range exports {
		if exports[i].Name == name {
			return &exports[i]
		}
	}
	if name == "" && len(exports) > 0 {
		return &exports[0]
	}
	return nil
}

// Exports are the names exported now, in NBD_OPT_LIST's order.
func (s *Server) Exports() []string {
	var out []string
	for _, e := range s.exportsNow() {
		out = append(out, e.Name)
	}
	return out
}

// AddExport offers one more export, to the clients that connect from now
// on; it is checked as NewServer checks its exports.
func (s *Server) AddExport(e Export) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.exportsNow()
	seen := map[string]bool{}
	for _, x := range old {
		seen[x.Name] = true
	}
	if err := checkExport(len(old), e, s.tlsConfig != nil, seen); err != nil {
		return err
	}
	next := append(slices.Clip(slices.Clone(old)), e)
	s.exports.Store(&next)
	return nil
}

// RemoveExport stops offering the export called name and closes the
// connections that use it (their requests in flight see their context
// cancelled): a client must not go on writing to a device its server no
// longer exports. The last export may be removed too; the server then
// refuses every client until one is added.
func (s *Server) RemoveExport(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.exportsNow()
	i := slices.IndexFunc(old, func(e Export) bool { return e.Name == name })
	if i < 0 {
		return fmt.Errorf("%w: %q", ErrUnknownExport, name)
	}
	next := slices.Delete(slices.Clone(old), i, i+1)
	s.exports.Store(&next)
	// A connection sets its export before it checks the list again
	// (conn.go): either it sees the new list or this sees its export.
	for c := range s.conns {
		if c.usesExport(name) {
			c.abort()
		}
	}
	return nil
}

// exported reports whether an export called name is offered.
func (s *Server) exported(name string) bool {
	return slices.ContainsFunc(s.exportsNow(), func(e Export) bool { return e.Name == name })
}
