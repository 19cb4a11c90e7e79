package kernel

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		uri  string
		want Target
	}{
		{"nbd://127.0.0.1:10810/disk", Target{"tcp", "127.0.0.1:10810", "disk"}},
		{"nbd://localhost/disk", Target{"tcp", "localhost:10809", "disk"}},
		{"nbd://[::1]:5000/a/b", Target{"tcp", "[::1]:5000", "a/b"}},
		{"nbd://host", Target{"tcp", "host:10809", ""}},
		{"nbd+unix:///disk?socket=/run/t.sock", Target{"unix", "/run/t.sock", "disk"}},
	} {
		got, err := ParseURI(tc.uri)
		if err != nil || got != tc.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", tc.uri, got, err, tc.want)
		}
	}
	for _, uri := range []string{"nbd:///disk", "nbd+unix:///disk", "nbds://h/disk", "http://h/disk", "%zz"} {
		if got, err := ParseURI(uri); err == nil {
			t.Errorf("ParseURI(%q) = %+v, want an error", uri, got)
		}
	}
}

func TestCheckDevice(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nbd0")
	err := CheckDevice(missing)
	if !errors.Is(err, ErrNoModule) || !strings.Contains(err.Error(), "modprobe nbd") {
		t.Fatalf("CheckDevice(missing) = %v, want ErrNoModule", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckDevice(file); err == nil || errors.Is(err, ErrNoModule) {
		t.Fatalf("CheckDevice(regular file) = %v, want not-a-block-device", err)
	}
	if err := CheckDevice("/dev/null"); err == nil {
		t.Fatal("CheckDevice(/dev/null) accepted a character device")
	}
}

func TestAttachRefusesBadOptions(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nbd0")
	for _, tc := range []struct {
		opts    Options
		wantErr string
	}{
		{Options{}, "export name"},
		{Options{Export: "d", BlockSize: 1000}, "block size"},
		{Options{Export: "d", BlockSize: 8192}, "block size"},
		{Options{Export: "d"}, "modprobe nbd"},
	} {
		c1, c2 := net.Pipe()
		err := Attach(context.Background(), c1, missing, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Attach(%+v) = %v, want an error containing %q", tc.opts, err, tc.wantErr)
		}
		// Attach owns the connection: the peer must see it closed.
		if _, rerr := c2.Read(make([]byte, 1)); rerr == nil {
			t.Errorf("Attach(%+v) left the connection open", tc.opts)
		}
		c2.Close()
	}
}

func TestDetachWithoutModule(t *testing.T) {
	err := Detach(filepath.Join(t.TempDir(), "nbd0"))
	if !errors.Is(err, ErrNoModule) {
		t.Fatalf("Detach(missing) = %v, want ErrNoModule", err)
	}
}
