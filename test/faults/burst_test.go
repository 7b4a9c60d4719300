package faults

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/fleet"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/manifest"
)

// kill -9 of a minion in the middle of its rename burst (a new generation
// changes every one of many small files): each file on its disk is then
// either the old version or the new one, whole, and its state agrees with
// its disk (no state vouches for a half-changed tree). Restarted, it
// finishes the new generation.
func TestKillDuringRenameBurst(t *testing.T) {
	e := newEnv(t, redisURL(t))
	e.master(64 << 10)
	const files = 1500
	burst := filepath.Join(e.src, "burst")
	content := func(version, i int) []byte {
		return bytes.Repeat(fmt.Appendf(nil, "v%d file %d\n", version, i), 40)
	}
	write := func(version int) {
		t.Helper()
		if err := os.MkdirAll(burst, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range files {
			if err := os.WriteFile(filepath.Join(burst, fmt.Sprintf("f%04d", i)), content(version, i), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(1)
	// The victim receives slowly, so its renames spread over seconds.
	victim := e.minion("victim", "--bwlimit", "256K")
	if err := e.WaitRegistered(e.ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.set(task)
	first := e.waitDone(0)
	write(2)
	e.set(task)
	tree := filepath.Join(victim.Root, task, "burst")
	versions := func() (old, new int) {
		t.Helper()
		for i := range files {
			b, err := os.ReadFile(filepath.Join(tree, fmt.Sprintf("f%04d", i)))
			switch {
			case err != nil:
				t.Fatalf("f%04d: %v (a file must never be missing)", i, err)
			case bytes.Equal(b, content(1, i)):
				old++
			case bytes.Equal(b, content(2, i)):
				new++
			default:
				t.Fatalf("f%04d is neither the old nor the new version (%d bytes)", i, len(b))
			}
		}
		return old, new
	}
	err := fleet.Poll(e.ctx, "the victim mid-burst", func() (bool, error) {
		old, new := versions()
		return old > 0 && new > 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	victim.Kill()
	old, new := versions()
	t.Logf("killed with %d old and %d new files", old, new)
	if old == 0 || new == 0 {
		t.Fatalf("not killed mid-burst: %d old, %d new", old, new)
	}
	// The state: none (a pull clears it before it changes the tree), or
	// one whose manifest the tree matches.
	if _, err := os.Stat(filepath.Join(victim.StateDir, "held.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("held state present after a kill mid-pull (%v): it vouches for a half-changed tree", err)
	}
	if err := victim.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the victim to finish the new generation", func(st coord.Status) bool {
		return st.Generation.ID > first.Generation.ID && contains(st.Finished, "victim")
	})
	if old, _ := versions(); old != 0 {
		t.Errorf("%d files still old after the restart", old)
	}
	e.check(task, victim)
	temps, err := lab.TempFiles(victim.Root, manifest.IsTemp)
	if err != nil || len(temps) > 0 {
		t.Errorf("temporary files left: %v %v", temps, err)
	}
}
