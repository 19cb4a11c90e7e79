package nbd_test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/nbd"
	"github.com/tandem-ha/tandem/tools/testenv"
)

// writeRandomFile writes size random bytes to a new file, leaving holes
// (never-written ranges) where holes says, so that sparse copies are
// exercised as well as data copies.
func writeRandomFile(t *testing.T, path string, size int64, holes func(off int64) bool) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, mib)
	for off := int64(0); off < size; off += mib {
		if holes != nil && holes(off) {
			continue
		}
		if _, err := rand.Read(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRealClientNbdcopy copies a random image into an export and back out
// over four connections with 64 requests in flight each, then a sparse one
// over it (so the holes must be written as zeroes over old data), and
// compares checksums of the source, the backing file and the copy.
func TestRealClientNbdcopy(t *testing.T) {
	testenv.RequireTool(t, "nbdcopy")
	const size = 64 * mib
	dev, backing := fileDevice(t, size)
	if !dev.Features().MultiConn {
		t.Fatalf("backend.File does not advertise multi-conn; nbdcopy would use one connection")
	}
	s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "copy", Device: dev}}})
	uri := s.uri("copy")
	dir := t.TempDir()
	par := []string{"--connections", "4", "--requests", "64"}

	for _, c := range []struct {
		name  string
		holes func(off int64) bool
	}{
		{"dense", nil},
		{"sparse", func(off int64) bool { return (off/mib)%3 != 0 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := filepath.Join(dir, c.name+".src")
			dst := filepath.Join(dir, c.name+".dst")
			writeRandomFile(t, src, size, c.holes)
			want := sha256File(t, src)

			testenv.Run(t, "nbdcopy", append(par, "--flush", src, uri)...)
			if got := sha256File(t, backing); got != want {
				t.Fatalf("backing file after upload: sha256 %s, want %s", got, want)
			}
			testenv.Run(t, "nbdcopy", append(par, uri, dst)...)
			if got := sha256File(t, dst); got != want {
				t.Fatalf("downloaded copy: sha256 %s, want %s", got, want)
			}
		})
	}
}

// fioResult is the part of fio's JSON output this test reads.
type fioResult struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"write"`
		Read struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
	} `json:"jobs"`
}

// TestRealClientFioVerify: four fio jobs, each its own connection with 32
// requests in flight, write random 4k blocks with checksums into their own
// quarter of the export, flushing now and then, and read them back
// verifying every block.
func TestRealClientFioVerify(t *testing.T) {
	testenv.RequireTool(t, "fio")
	const (
		jobs    = 4
		perJob  = 16 * mib
		size    = jobs * perJob
		jobName = "verify"
	)
	for _, backendName := range []string{"file", "memory"} {
		t.Run(backendName, func(t *testing.T) {
			var dev nbd.Device
			if backendName == "file" {
				dev, _ = fileDevice(t, size)
			} else {
				dev = memDevice(t, size)
			}
			s := startServer(t, nbd.Options{Exports: []nbd.Export{{Name: "fio", Device: dev}}})
			out := filepath.Join(t.TempDir(), "fio.json")
			testenv.Run(t, "fio",
				"--name="+jobName,
				"--ioengine=nbd",
				"--uri="+s.uri("fio"),
				"--rw=randwrite",
				"--bs=4k",
				"--iodepth=32",
				fmt.Sprintf("--numjobs=%d", jobs),
				fmt.Sprintf("--size=%d", perJob),
				fmt.Sprintf("--offset_increment=%d", perJob),
				"--fsync=256",
				"--verify=crc32c",
				"--verify_fatal=1",
				// fio saves verify state files in its working directory
				// unless told not to.
				"--verify_state_save=0",
				"--do_verify=1",
				"--runtime=120", // a bound, not a target: the size ends the run
				"--output-format=json",
				"--output="+out,
			)
			raw, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			var res fioResult
			if err := json.Unmarshal(raw, &res); err != nil {
				t.Fatalf("parsing fio output: %v\n%s", err, raw)
			}
			if len(res.Jobs) != jobs {
				t.Fatalf("fio reported %d jobs, want %d", len(res.Jobs), jobs)
			}
			for i, j := range res.Jobs {
				if j.Error != 0 {
					t.Errorf("fio job %d: error %d", i, j.Error)
				}
				// Every block written once and read back once by the verify
				// pass; less means the run stopped early.
				if j.Write.IOBytes != perJob || j.Read.IOBytes != perJob {
					t.Errorf("fio job %d: wrote %d and verified %d bytes, want %d each",
						i, j.Write.IOBytes, j.Read.IOBytes, perJob)
				}
			}
			if t.Failed() {
				t.Logf("fio output:\n%s", strings.TrimSpace(string(raw)))
			}
		})
	}
}
