package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/hook"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// readLines returns the lines of p; none when it does not exist.
func readLines(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// TestHookOnlyForVerifiedGenerations: a minion's hook never runs for a
// generation its pull could not bring into place, runs once the
// generation is verified in place, not again after a drift repair, and
// once for each new generation (with no changed path when the host
// already held the content).
func TestHookOnlyForVerifiedGenerations(t *testing.T) {
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			l, src := startLab(ctx, t, lab.Config{RedisURL: srv.URL, Prefix: "{fanout}:"})
			runs := filepath.Join(t.TempDir(), "runs")
			hooks, err := hook.NewSet([]string{`default=echo "$FANOUT_GENERATION $FANOUT_CHANGED" >> ` + runs}, "", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			h := l.NewHost()
			h.Hooks = hooks
			// A file where the task's parent directory must go: every
			// pull fails before it writes a byte.
			blocker := filepath.Join(h.Root, strings.Split(task, "/")[1])
			mustMkdir(t, h.Root)
			writeFile(t, blocker, "in the way")
			must(t, l.StartMinion(ctx, h))
			waitFor(ctx, t, "a failed pull", func() bool {
				st, err := l.Coord.Status(ctx)
				return err == nil && st.Failures[h.ID].Error != ""
			})
			st, err := l.Coord.Status(ctx)
			must(t, err)
			if got := readLines(t, runs); len(got) != 0 || len(st.Hooks) != 0 {
				t.Fatalf("hook ran for a generation that failed to pull: runs %q, records %+v", got, st.Hooks)
			}
			must(t, os.Remove(blocker))
			g1, err := l.WaitGeneration(ctx, 0, nil)
			must(t, err)
			files, _ := treeSize(t, src)
			if got := readLines(t, runs); len(got) != 1 || !strings.HasPrefix(got[0], fmt.Sprintf("%d ", g1.Generation.ID)) || got[0] == fmt.Sprintf("%d 0", g1.Generation.ID) {
				t.Fatalf("runs after the first generation: %q (the tree has %d files)", got, files)
			}
			if r := g1.Hooks[h.ID]; r.State != coord.HookOK || r.Exit != 0 {
				t.Errorf("hook record %+v", r)
			}
			// Drift repaired from a peer: no hook.
			must(t, os.Remove(filepath.Join(h.Root, task, "weights/model.bin")))
			waitFor(ctx, t, "the repair", func() bool {
				st, err := l.Coord.Status(ctx)
				return err == nil && st.Repairs[h.ID] == 1 && len(st.Repairing) == 0
			})
			// The same content published again: a new generation the host
			// holds already (no path changed); then a changed file.
			must(t, l.Set(ctx, task))
			g2, err := l.WaitGeneration(ctx, g1.Generation.ID, nil)
			must(t, err)
			writeFile(t, filepath.Join(src, "weights/model.bin"), "changed")
			must(t, l.Set(ctx, task))
			g3, err := l.WaitGeneration(ctx, g2.Generation.ID, nil)
			must(t, err)
			got := readLines(t, runs)
			if len(got) != 3 || got[1] != fmt.Sprintf("%d 0", g2.Generation.ID) ||
				!strings.HasPrefix(got[2], fmt.Sprintf("%d ", g3.Generation.ID)) || got[2] == fmt.Sprintf("%d 0", g3.Generation.ID) {
				t.Errorf("runs = %q, want the first generation's, then %d with no changed path, then %d with some", got, g2.Generation.ID, g3.Generation.ID)
			}
			if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
				t.Error(err)
			}
		})
	}
}
