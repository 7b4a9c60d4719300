package integration

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/manifest"
)

// TestShutdownDuringPull stops a minion in the middle of a pull (what
// SIGTERM does to the binary: its context is cancelled). The pull stops, the
// lease and the source slot are released at once rather than by expiry, no
// temporary file is left, and after a restart the task completes.
func TestShutdownDuringPull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 2, BWLimit: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 8<<20, 10); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	// Wait for some host to be well into its pull.
	var victim *lab.Host
	for victim == nil {
		st, err := l.Coord.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Minions {
			if p, ok := st.Progress[h.ID]; ok && slices.Contains(st.Running, h.ID) && p.Done > 1<<20 {
				victim = h
			}
		}
		if ctx.Err() != nil {
			t.Fatal("no host started pulling")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := victim.Stop(); err != nil {
		t.Fatalf("stop %s: %v", victim.ID, err)
	}
	st, err := l.Coord.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(st.Running, victim.ID) || st.Claims[victim.ID] != "" {
		t.Errorf("%s still running or claiming after shutdown: running %v claims %v", victim.ID, st.Running, st.Claims)
	}
	if n := l.Redis.Exists(ctx, l.Coord.Keys().Lease(victim.ID)).Val(); n != 0 {
		t.Errorf("%s's lease survived its shutdown", victim.ID)
	}
	if f := st.Failures[victim.ID]; f.Error == "" {
		t.Errorf("interrupted pull not recorded as a failure: %+v", st.Failures)
	}
	// An interrupted pull keeps the part files of the chunked files it was
	// building (resumed at the next start), and nothing else.
	temps, err := lab.TempFiles(victim.Root, func(name string) bool {
		return manifest.IsTemp(name) && !strings.HasPrefix(name, manifest.TempPrefix+"part-")
	})
	if err != nil || len(temps) > 0 {
		t.Errorf("temporary files other than part files left by the interrupted pull: %v %v", temps, err)
	}
	if err := l.StartMinion(ctx, victim); err != nil {
		t.Fatal(err)
	}
	// Wait for both hosts by name: under load the stopped host may have
	// dropped out of expected (its heartbeat older than the grace) and the
	// generation been marked done without it.
	waitFor(ctx, t, "both minions to hold the generation", func() bool {
		now, err := l.Coord.Status(ctx)
		return err == nil && slices.Contains(now.Finished, l.Minions[0].ID) && slices.Contains(now.Finished, l.Minions[1].ID)
	})
	for _, h := range l.Minions {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Error(err)
		}
	}
	if temps, err := lab.TempFiles(victim.Root, manifest.IsTemp); err != nil || len(temps) > 0 {
		t.Errorf("temporary files left once the pull completed: %v %v", temps, err)
	}
}
