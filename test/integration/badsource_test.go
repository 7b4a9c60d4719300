package integration

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

// TestCorruptSourceIsBarred: a finished host's copy rots on disk (same size
// and mtime, one byte changed), so it serves bytes that fail verification.
// Its pullers detect the mismatch, discard the data, bar it for the
// generation, and get the file from another source.
func TestCorruptSourceIsBarred(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Bit rot changes no metadata, so verification cannot see it in time;
	// the test's edit does change the ctime, so the hosts here verify only
	// hourly (no watcher): the rotten copy stays rotten and is served.
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 1, NoWatch: true, VerifyEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 1<<20, 5); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	rotten := l.Minions[0]
	if err := lab.Corrupt(filepath.Join(rotten.Root, task, "weights/model.bin")); err != nil {
		t.Fatal(err)
	}
	// The origin's slot is held so the new hosts must try the rotten one
	// first; it comes back after the rotten host is barred.
	release, err := lab.HoldSlot(ctx, l.Redis, l.Config().Prefix, st.Generation.Ref(), "master#0")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := l.AddMinion(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(ctx, t, "the rotten source to be barred", func() bool {
		bad, _ := l.Redis.SMembers(ctx, l.Coord.Keys().BadSources()).Result()
		return slices.Contains(bad, rotten.ID)
	})
	if err := release(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the new hosts to finish", func() bool {
		now, _ := l.Coord.Status(ctx)
		return len(now.Finished) == 3
	})
	for _, h := range l.Minions[1:] {
		if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
			t.Error(err)
		}
	}
	now, _ := l.Coord.Status(ctx)
	for _, s := range now.Sources {
		if strings.HasPrefix(s, rotten.ID+"#") {
			t.Errorf("barred source still offered: %s", s)
		}
	}
}

// TestStalledSourceIsSkipped: a "source" that accepts connections and never
// answers. The puller gives up on it after the stall timeout, drops its
// slot, and completes from the origin.
func TestStalledSourceIsSkipped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stall, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go http.Serve(stall, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-stop }))
	defer stall.Close()

	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 1<<20, 5); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	var gen coord.Ref
	waitFor(ctx, t, "the generation", func() bool {
		g, _ := l.Coord.Current(ctx)
		gen = g.Ref()
		return g.State == coord.StateRunning
	})
	// The staller registers and offers the only slot: the origin's is held.
	if _, err := l.Coord.Heartbeat(ctx, coord.Host{ID: "staller", Addr: stall.Addr().String()}, coord.Beat{Register: true}); err != nil {
		t.Fatal(err)
	}
	release, err := lab.HoldSlot(ctx, l.Redis, l.Config().Prefix, gen, "master#0")
	if err != nil {
		t.Fatal(err)
	}
	l.Redis.SAdd(ctx, l.Coord.Keys().Sync(), "staller#0")
	h, err := l.AddMinion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the puller to give up on the staller", func() bool {
		now, _ := l.Coord.Status(ctx)
		f, ok := now.Failures[h.ID]
		return ok && f.Source == "staller"
	})
	if err := release(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the puller to finish from the origin", func() bool {
		now, _ := l.Coord.Status(ctx)
		return slices.Contains(now.Finished, h.ID)
	})
	if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
		t.Error(err)
	}
	// The stalled source was judged dead: its slot backs off (it is
	// retried later, not dropped for good).
	evs, err := l.Coord.Events(ctx, "0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(evs, func(e coord.Event) bool { return e.Type == "dead_source" && e.Host == "staller" }) {
		t.Error("no dead_source event for the staller")
	}
}

func waitFor(ctx context.Context, t *testing.T, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
