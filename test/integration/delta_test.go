package integration

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

// TestDeltaRenameDedup: format 3 moves only what a host lacks. After a
// generation of a 32 MiB file, 1 MiB inserted in its middle moves a few
// chunks, not the file; the file renamed (with --delete, so the old name
// goes) moves nothing; a copy of it beside it moves nothing either.
//
// FANOUT_DELTA_MIB sets the file's size: the issue-10 row "1 MiB inserted
// into 1 GiB, renamed" is
//
//	FANOUT_DELTA_MIB=1024 TMPDIR=/dev/shm go test -count=1 -run TestDeltaRenameDedup -v ./test/integration/
func TestDeltaRenameDedup(t *testing.T) {
	size := 32
	if v := os.Getenv("FANOUT_DELTA_MIB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 4 {
			t.Fatalf("FANOUT_DELTA_MIB=%q: want a size in MiB of at least 4", v)
		}
		size = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute+time.Duration(size)*200*time.Millisecond)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, size<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	big := filepath.Join(src, "model.bin")
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	gen := func(after int64, opts coord.TaskOptions) coord.Status {
		t.Helper()
		st := setTask(ctx, t, l, after, opts)
		for _, h := range l.Minions {
			if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
				t.Fatalf("generation %d: %v", st.Generation.ID, err)
			}
		}
		return st
	}
	received := func(st coord.Status) []int64 {
		var out []int64
		for _, h := range l.Minions {
			n, _ := h.Minion.ProgressOf(st.Generation.ID)
			out = append(out, n)
		}
		return out
	}
	st := gen(0, coord.TaskOptions{})
	for i, n := range received(st) {
		if n != int64(len(data)) {
			t.Errorf("minion %d received %d bytes of the first generation, want the file (%d)", i, n, len(data))
		}
	}

	inserted := make([]byte, 1<<20)
	for i := range inserted {
		inserted[i] = byte(r.Uint32())
	}
	mid := len(data) / 2
	data = append(data[:mid:mid], append(inserted, data[mid:]...)...)
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	st = gen(st.Generation.ID, coord.TaskOptions{})
	for i, n := range received(st) {
		t.Logf("1 MiB inserted in the middle of %d MiB: minion %d received %.2f MiB", size, i, float64(n)/(1<<20))
		if n < 1<<20 || n > 8<<20 {
			t.Errorf("minion %d received %d bytes for 1 MiB inserted, want the inserted MiB and at most 8 MiB", i, n)
		}
	}

	if err := os.Rename(big, filepath.Join(src, "renamed.bin")); err != nil {
		t.Fatal(err)
	}
	st = gen(st.Generation.ID, coord.TaskOptions{Delete: true})
	for i, n := range received(st) {
		t.Logf("%d MiB file renamed: minion %d received %d bytes", size, i, n)
		if n != 0 {
			t.Errorf("minion %d received %d bytes for a rename, want none", i, n)
		}
	}

	if err := os.WriteFile(filepath.Join(src, "copy.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	st = gen(st.Generation.ID, coord.TaskOptions{Delete: true})
	for i, n := range received(st) {
		if n != 0 {
			t.Errorf("minion %d received %d bytes for a copy of a file it holds, want none", i, n)
		}
	}
}
