package testenv

import (
	"math"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"
)

func TestExplainNamesTheBlock(t *testing.T) {
	op := func(client, block int, write bool, v uint64, call, ret int64) porcupine.Operation {
		o := porcupine.Operation{ClientId: client, Input: BlockInput{Write: write, Block: block, Value: v}, Call: call, Return: ret, Output: BlockOutput{}}
		if !write {
			o.Input, o.Output = BlockInput{Block: block}, BlockOutput{Value: v}
		}
		return o
	}
	ops := []porcupine.Operation{
		op(0, 1, true, 5, 0, 10), op(1, 1, false, 5, 20, 30), // fine
		op(0, 2, true, 7, 0, 10), op(0, 2, true, 8, 20, math.MaxInt64), op(1, 2, false, 0, 40, 50), // 0 after 7: lost
	}
	m := BlockModel(4)
	if porcupine.CheckOperations(m, ops) {
		t.Fatal("a lost write passed")
	}
	got := explain(m, ops)
	for _, want := range []string{"block 2, 3 operations", "client 0 write(2, 0x7) [0, 10]", "client 0 write(2, 0x8) [20, -]", "client 1 read(2) -> 0x0 [40, 50]"} {
		if !strings.Contains(got, want) {
			t.Errorf("explain lacks %q:\n%s", want, got)
		}
	}
	if explain(m, ops[:2]) != "" {
		t.Error("explain found fault with a linearizable history")
	}
}
