package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

// TestBadTaskChangesNothing distributes a good tree, then sets the task to
// each kind of bad value: every one becomes a failed generation whose error
// names the value, and every host's copy stays exactly as it was.
func TestBadTaskChangesNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 1<<20, 10); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(l.Master.Root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(l.Master.Root, "data/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}

	bad := []struct{ value, want string }{
		{"", "empty"},
		{"data/models/m42", "relative"},
		{"/data/models/missing", "does not exist"},
		{"/escape", "outside --root"},
		{"/data/fifo", "special file"},
		{"/data/../etc", ".."},
	}
	last := st.Generation.ID
	for _, b := range bad {
		if err := l.Set(ctx, b.value); err != nil {
			t.Fatal(err)
		}
		got, err := waitFailed(ctx, l, last)
		if err != nil {
			t.Fatalf("task %q: %v", b.value, err)
		}
		last = got.Generation.ID
		if got.State != coord.StateFailed || !strings.Contains(got.Generation.Error, b.want) {
			t.Errorf("task %q: state %s, error %q; want failed mentioning %q", b.value, got.State, got.Generation.Error, b.want)
		}
		// Give minions a few polls to (wrongly) act, then check every copy.
		time.Sleep(300 * time.Millisecond)
		for _, h := range l.Minions {
			if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
				t.Errorf("after bad task %q, %s changed: %v", b.value, h.ID, err)
			}
		}
	}
}

func waitFailed(ctx context.Context, l *lab.Lab, after int64) (coord.Status, error) {
	for {
		st, err := l.Coord.Status(ctx)
		if err == nil && st.Generation.ID > after && st.Generation.State == coord.StateFailed {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
