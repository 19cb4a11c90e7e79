package testenv

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The block device as porcupine sees it: every 4 KiB block a register,
// zero to begin with. The linearizability tests of replicate/ (in-process
// pair) and tools/lab/ (real daemons and libnbd clients through a
// failover) record histories of these operations.

// BlockSize is the size of one register.
const BlockSize = 4096

// BlockInput is one operation: a write of Value, or a read.
type BlockInput struct {
	Write bool
	Block int
	Value uint64
}

// BlockOutput is what a read returned; writes have none.
type BlockOutput struct{ Value uint64 }

// BlockModel is a register per block, partitioned by block.
func BlockModel(blocks int) porcupine.Model {
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			by := make([][]porcupine.Operation, blocks)
			for _, op := range h {
				b := op.Input.(BlockInput).Block
				by[b] = append(by[b], op)
			}
			return by
		},
		Init: func() any { return uint64(0) },
		Step: func(state, input, output any) (bool, any) {
			in := input.(BlockInput)
			if in.Write {
				return true, in.Value
			}
			return output.(BlockOutput).Value == state.(uint64), state
		},
		DescribeOperation: func(input, output any) string {
			in := input.(BlockInput)
			if in.Write {
				return fmt.Sprintf("write(%d, %#x)", in.Block, in.Value)
			}
			return fmt.Sprintf("read(%d) -> %#x", in.Block, output.(BlockOutput).Value)
		},
	}
}

// BlockOf is a block holding v: v in every 8 bytes, so that a read can
// tell a whole value from a mix of two.
func BlockOf(v uint64) []byte {
	b := make([]byte, BlockSize)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], v)
	}
	return b
}

// BlockValue is the value b holds; false when b mixes values (torn).
func BlockValue(b []byte) (uint64, bool) {
	v := binary.LittleEndian.Uint64(b)
	for i := 8; i < len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != v {
			return 0, false
		}
	}
	return v, true
}

// CheckLinearizable fails t unless the history over blocks registers is
// linearizable; a failing history is written as porcupine's HTML
// visualisation into a test directory, named in the failure.
func CheckLinearizable(t testing.TB, blocks int, ops []porcupine.Operation) {
	t.Helper()
	model := BlockModel(blocks)
	res, info := porcupine.CheckOperationsVerbose(model, ops, time.Minute)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Fatalf("porcupine did not finish checking %d operations within a minute", len(ops))
	default:
		path := filepath.Join(t.TempDir(), "history.html")
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			t.Logf("visualising: %v", err)
		}
		t.Fatalf("the history of %d operations is not linearizable (visualisation: %s)%s", len(ops), path, explain(model, ops))
	}
}

// explain names the first block whose own history is not linearizable
// and lists its operations, oldest first, for the failure message.
func explain(model porcupine.Model, ops []porcupine.Operation) string {
	for _, part := range model.Partition(ops) {
		if len(part) == 0 || porcupine.CheckOperations(model, part) {
			continue
		}
		part = slices.Clone(part)
		slices.SortFunc(part, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
		var b strings.Builder
		fmt.Fprintf(&b, "\nblock %d, %d operations (call, return in ns; return - for a write of unknown outcome):", part[0].Input.(BlockInput).Block, len(part))
		for _, op := range part {
			ret := fmt.Sprint(op.Return)
			if op.Return == math.MaxInt64 {
				ret = "-"
			}
			fmt.Fprintf(&b, "\n  client %d %s [%d, %s]", op.ClientId, model.DescribeOperation(op.Input, op.Output), op.Call, ret)
		}
		return b.String()
	}
	return ""
}
