package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/lab"
)

// TestLostHostLeavesExpected stops a minion for good: once its heartbeat is
// older than the grace (5 s in the lab) it is no longer expected, its
// source slot is withdrawn, and a new generation completes without it.
func TestLostHostLeavesExpected(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the heartbeat grace")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, src := startWithTree(ctx, t, 3)
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	lost := l.Minions[2]
	if err := lost.Stop(); err != nil {
		t.Fatal(err)
	}
	// The host leaves expected when its heartbeat ages out, and its slot
	// goes at the master's next reap: wait for both.
	offers := func(sources []string) bool {
		return slices.ContainsFunc(sources, func(s string) bool { return strings.HasPrefix(s, lost.ID+"#") })
	}
	for {
		now, err := l.Coord.Status(ctx)
		if err == nil && len(now.Expected) == 2 && !slices.Contains(now.Expected, lost.ID) && !offers(now.Sources) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("lost host never left: expected %v, sources %v", now.Expected, now.Sources)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(src, "config/run.sh"), []byte("#!/bin/sh\necho v2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st2, err := l.WaitGeneration(ctx, st.Generation.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st2.Finished, []string{l.Minions[0].ID, l.Minions[1].ID}) {
		t.Errorf("finished %v, want the two live hosts", st2.Finished)
	}
	for _, h := range l.Minions[:2] {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Error(err)
		}
	}
}
