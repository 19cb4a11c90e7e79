package e2e_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/tandem-ha/tandem/tools/testenv"
)

// TestSIGTERMUnderLoad: SIGTERM while fio (four connections, 32 requests in
// flight each) and qemu-io are writing. The server must drain and exit 0,
// every write qemu-io saw acknowledged must be in the file, and no write may
// be torn or misplaced: every block holds either nothing or exactly what
// was written there.
func TestSIGTERMUnderLoad(t *testing.T) {
	testenv.RequireTool(t, "fio", "qemu-io", "nbdcopy")
	const (
		size      = 64 * mib
		fioSize   = 32 * mib // fio writes [0, 32M)
		fioJobs   = 4
		qemuBase  = 32 * mib // qemu-io writes [32M, 64M)
		qemuBlock = 4 << 10
		qemuCount = 8192
	)
	img := filepath.Join(t.TempDir(), "disk.img")
	s := startServe(t, "--export", "d="+img, "--size", strconv.Itoa(size))

	// fio writes each 4k block's own offset into it (verify_pattern=%o,
	// little-endian, repeated), so any block can be checked alone later.
	// time_based: it is still running when the signal comes; runtime only
	// bounds a run whose server never stops.
	fio := testenv.Start(t, "fio", "--name=load", "--ioengine=nbd", "--uri="+s.uri("d"),
		"--rw=randwrite", "--bs=4k", "--iodepth=32",
		fmt.Sprintf("--numjobs=%d", fioJobs),
		fmt.Sprintf("--size=%d", fioSize/fioJobs),
		fmt.Sprintf("--offset_increment=%d", fioSize/fioJobs),
		"--verify=pattern", "--verify_pattern=%o", "--do_verify=0",
		"--verify_state_save=0", // else fio leaves state files in the working directory
		"--time_based=1", "--runtime=120", "--output-format=terse")

	fio.WaitFor(t, "a block written by fio", func() bool { return fioWroteSomething(img) })

	// qemu-io reports each write it saw acknowledged; those are the
	// writes that must survive. It starts once fio is busy, so that the
	// signal finds it in the middle of its list.
	var cmds []string
	for i := range qemuCount {
		cmds = append(cmds, fmt.Sprintf("write -P 0x%02x %d %d", qemuPattern(i), qemuBase+i*qemuBlock, qemuBlock))
	}
	qio := testenv.Start(t, "qemu-io", qemuIOArgs(s.uri("d"), cmds...)...)
	wrote := regexp.MustCompile(`wrote \d+/\d+ bytes at offset (\d+)`)
	qio.WaitFor(t, "64 writes acknowledged to qemu-io", func() bool {
		return len(wrote.FindAllString(qio.Stdout(), -1)) >= 64
	})
	qemuMidway := qio.Running()

	if err := s.Stop(t); err != nil {
		t.Fatalf("tandem serve after SIGTERM under load: %v\n%s", err, s.Stderr())
	}
	// The clients lose their server; they fail, which is expected. They
	// must end, though.
	_ = fio.Wait(t)
	_ = qio.Wait(t)

	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != size {
		t.Fatalf("backing file is %d bytes, want %d", len(data), size)
	}

	// fio's region: each block empty or holding its own offset.
	written := 0
	want := make([]byte, 4096)
	for off := 0; off < fioSize; off += 4096 {
		blk := data[off : off+4096]
		if isPattern(blk, 0) {
			continue
		}
		for i := 0; i < len(want); i += 8 {
			binary.LittleEndian.PutUint64(want[i:], uint64(off))
		}
		if !bytes.Equal(blk, want) {
			t.Fatalf("fio block at %d is torn or misplaced: %s", off, describe(blk))
		}
		written++
	}
	if written == 0 {
		t.Fatalf("no fio block reached the file")
	}

	// qemu-io's region: acknowledged writes present, the others all or
	// nothing.
	acked := map[int]bool{}
	for _, m := range wrote.FindAllStringSubmatch(qio.Stdout(), -1) {
		off, _ := strconv.Atoi(m[1])
		acked[off] = true
	}
	for i := range qemuCount {
		off := qemuBase + i*qemuBlock
		blk := data[off : off+qemuBlock]
		switch {
		case isPattern(blk, qemuPattern(i)):
		case acked[off]:
			t.Errorf("acknowledged write at %d lost: %s", off, describe(blk))
		case !isPattern(blk, 0):
			t.Errorf("unacknowledged write at %d is torn: %s", off, describe(blk))
		}
	}
	t.Logf("%d fio blocks and %d of %d acknowledged qemu-io writes in the file after SIGTERM (qemu-io still writing at the signal: %v)",
		written, len(acked), qemuCount, qemuMidway)

	// A new server on the same file serves exactly these bytes.
	s2 := startServe(t, "--export", "d="+img)
	out := filepath.Join(t.TempDir(), "copy.img")
	testenv.Run(t, "nbdcopy", s2.uri("d"), out)
	if err := s2.Stop(t); err != nil {
		t.Fatalf("second server: %v\n%s", err, s2.Stderr())
	}
	copied, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(copied, data) {
		t.Fatalf("the restarted server serves different bytes than the file holds")
	}
}

// qemuPattern is the byte qemu-io's i-th write fills its block with: never
// zero, and different for neighbours.
func qemuPattern(i int) byte { return byte(1 + i%251) }

// fioWroteSomething reports whether any of fio's blocks is non-zero yet.
func fioWroteSomething(img string) bool {
	f, err := os.Open(img)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 1*mib)
	for off := int64(0); off < 32*mib; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil {
			return false
		}
		if !isPattern(buf, 0) {
			return true
		}
	}
	return false
}
