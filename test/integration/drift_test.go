package integration

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// repairDeadline is the promise: a daemon repairs drift within 15 s
// of the change, with default flags.
const repairDeadline = 15 * time.Second

// TestDriftRepaired: after a generation is done, a finished host's tree is
// changed by hand: a file deleted, a file edited (same size, mtime put
// back), a mode changed, a directory deleted, a file replaced by a
// directory. Its daemon notices each (inotify), repairs it from a peer or
// on the spot, and status counts the repairs. The generation stays done.
func TestDriftRepaired(t *testing.T) {
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			l, src := startLab(ctx, t, lab.Config{Minions: 2, RedisURL: srv.URL, Prefix: "{fanout}:"})
			done, err := l.WaitGeneration(ctx, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			h := l.Minions[0]
			root := filepath.Join(h.Root, task)
			drifts := []struct {
				name  string
				drift func(t *testing.T)
			}{
				{"file deleted", func(t *testing.T) { must(t, os.Remove(filepath.Join(root, "weights/model.bin"))) }},
				{"file edited, size and mtime kept", func(t *testing.T) { must(t, lab.Corrupt(filepath.Join(root, "weights/model.bin"))) }},
				{"mode changed", func(t *testing.T) { must(t, os.Chmod(filepath.Join(root, "config/run.sh"), 0o600)) }},
				{"directory deleted", func(t *testing.T) { must(t, os.RemoveAll(filepath.Join(root, "config"))) }},
				{"file replaced by a directory", func(t *testing.T) {
					p := filepath.Join(root, "weights/model.bin")
					must(t, os.Remove(p))
					must(t, os.Mkdir(p, 0o755))
				}},
			}
			for i, d := range drifts {
				start := time.Now()
				d.drift(t)
				var st coord.Status
				deadline := time.Now().Add(repairDeadline)
				for {
					st, err = l.Coord.Status(ctx)
					if err == nil && st.Repairs[h.ID] == int64(i+1) && lab.Compare(src, root) == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: not repaired within %v: repairs %v, compare: %v", d.name, repairDeadline, st.Repairs, lab.Compare(src, root))
					}
					time.Sleep(50 * time.Millisecond)
				}
				t.Logf("%s: repaired in %v", d.name, time.Since(start).Round(time.Millisecond))
				// Read again: a status is several commands, and on miniredis
				// the finish script that counted the repair may run between
				// them (repairing read before it, repairs after). The repair
				// is counted now, so this read comes after all of that script.
				if st, err = l.Coord.Status(ctx); err != nil {
					t.Fatal(err)
				}
				if st.Generation.ID != done.Generation.ID || st.Generation.State != coord.StateDone {
					t.Fatalf("%s: generation %d %s, want %d still done", d.name, st.Generation.ID, st.Generation.State, done.Generation.ID)
				}
				if len(st.Repairing) != 0 || !contains(st.Finished, h.ID) {
					t.Fatalf("%s: repairing %v finished %v", d.name, st.Repairing, st.Finished)
				}
			}
			if err := lab.Compare(src, filepath.Join(l.Minions[1].Root, task)); err != nil {
				t.Errorf("the other host: %v", err)
			}
			evs, err := l.Coord.Events(ctx, "0", 0)
			if err != nil {
				t.Fatal(err)
			}
			var drift, repaired int
			for _, e := range evs {
				if e.Host == h.ID && e.Type == "drift" {
					drift++
				}
				if e.Host == h.ID && e.Type == "repaired" {
					repaired++
				}
			}
			if drift != len(drifts) || repaired != len(drifts) {
				t.Errorf("events: %d drift, %d repaired; want %d each", drift, repaired, len(drifts))
			}
		})
	}
}

// TestWipedStateAndTree: a finished host restarts with its state directory
// wiped (its tree intact), then with its tree wiped (its state intact).
// Neither is taken for "holding": the first is verified against the
// generation without moving file content, the second is repaired.
func TestWipedStateAndTree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, src := startWithTree(ctx, t, 2)
	done, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := l.Minions[0]
	root := filepath.Join(h.Root, task)
	restart := func(wipe string) {
		t.Helper()
		if err := h.Stop(); err != nil {
			t.Fatal(err)
		}
		must(t, os.RemoveAll(wipe))
		if err := l.StartMinion(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	waitRepaired := func(what string, n int64) {
		t.Helper()
		waitFor(ctx, t, what, func() bool {
			st, err := l.Coord.Status(ctx)
			return err == nil && st.Repairs[h.ID] == n && len(st.Repairing) == 0 && lab.Compare(src, root) == nil
		})
	}

	restart(h.StateDir)
	waitFor(ctx, t, "the host with a wiped state dir to verify its tree", func() bool {
		_, err := os.Stat(filepath.Join(h.StateDir, "held.json"))
		return err == nil
	})
	if got, _ := h.Minion.Progress(); got != 0 {
		t.Errorf("wiped state dir: %d bytes moved for an intact tree", got)
	}
	if err := lab.Compare(src, root); err != nil {
		t.Fatal(err)
	}

	restart(root)
	waitRepaired("the host with a wiped tree to repair it", 1)
	st, _ := l.Coord.Status(ctx)
	if st.Generation.ID != done.Generation.ID || st.Generation.State != coord.StateDone {
		t.Errorf("generation %d %s after the repairs, want %d done", st.Generation.ID, st.Generation.State, done.Generation.ID)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
