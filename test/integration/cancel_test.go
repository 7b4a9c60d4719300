package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

// TestCancel: a generation cancelled mid-pull is marked failed with the
// reason, the pulling host stops within a lease renewal and writes no
// more, nothing half-written appears at the model's path, and the next
// publish of the same tree resumes from the chunks the host verified.
func TestCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	h := l.NewHost()
	h.BWLimit = 512 << 10
	if err := l.StartMinion(ctx, h); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(l.Master.Root, task)
	const size = 6 << 20
	writeRandomModel(t, src, 11, size)
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	var g coord.Generation
	waitFor(ctx, t, "the host to be 1 MiB into the model", func() bool {
		st, err := l.Coord.Status(ctx)
		if err != nil {
			return false
		}
		g = st.Generation
		return st.Progress[h.ID].Done >= 1<<20
	})
	if err := l.Coord.Cancel(ctx, g.Ref(), "cancelled in a test"); err != nil {
		t.Fatal(err)
	}
	if err := l.Coord.Cancel(ctx, g.Ref(), "twice"); err == nil {
		t.Error("a cancelled generation was cancelled again")
	}
	waitFor(ctx, t, "the pull to stop", func() bool {
		st, err := l.Coord.Status(ctx)
		return err == nil && len(st.Running) == 0
	})
	st, err := l.Coord.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != coord.StateFailed || !strings.Contains(st.Generation.Error, "cancelled in a test") {
		t.Fatalf("after cancel: state %s, error %q", st.State, st.Generation.Error)
	}
	got, _ := h.Minion.ProgressOf(g.ID)
	time.Sleep(2 * time.Second)
	if later, _ := h.Minion.ProgressOf(g.ID); later != got || got >= size {
		t.Fatalf("the host received %d bytes at the stop, %d two seconds later (of %d)", got, later, size)
	}
	model := filepath.Join(h.Root, task, "model.bin")
	if _, err := os.Lstat(model); !os.IsNotExist(err) {
		t.Fatalf("%s exists after a cancelled pull: %v", model, err)
	}
	// The same tree again: the host resumes.
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st2, err := l.WaitGeneration(ctx, g.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
		t.Fatal(err)
	}
	if n := l.Received(st2.Generation.ID); n > size-got+(1<<20) {
		t.Errorf("the next pull received %d bytes after %d were verified of %d: it did not resume", n, got, size)
	}
	t.Logf("cancelled at %d of %d bytes; the next pull received %d", got, size, l.Received(st2.Generation.ID))
}
