package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/manifest"
)

// TestPipelineResume: with pipelining, a host streams from a source that is
// itself still pulling, so a chain origin -> A -> B forms before A holds
// the file. When A is stopped mid-file, B releases it, claims another
// source and resumes the file from the byte it has: one pull, a "switch"
// event, no failure, and every copy verified. B also holds the origin's
// rescue slot (its grandparent's); once its own source is the whole
// origin there is no relay left to step around, and it gives that slot
// back while still pulling.
func TestPipelineResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// 8 MiB at 2 MiB/s: four seconds a link, time enough to stop A mid-file.
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: 2, BWLimit: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	if err := lab.SampleTree(src, 8<<20, 3); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}

	// Wait for the chain: one minion pulls from the origin, the other from
	// that minion, and has some bytes of it.
	var a, b *lab.Host
	waitFor(ctx, t, "a chain origin -> A -> B with bytes flowing to B", func() bool {
		claims, err := l.Redis.HGetAll(ctx, l.Coord.Keys().Claims()).Result()
		if err != nil {
			return false
		}
		src := map[string]string{} // each host's own source; extra claims ("host/n") left out
		for host, v := range claims {
			if strings.Contains(host, "/") {
				continue
			}
			f := strings.Fields(v)
			if len(f) < 2 {
				return false
			}
			src[host] = strings.SplitN(f[1], "#", 2)[0]
		}
		if len(src) != 2 {
			return false
		}
		for _, h := range l.Minions {
			if src[h.ID] == "master" {
				a = h
			}
		}
		for _, h := range l.Minions {
			if a != nil && src[h.ID] == a.ID {
				b = h
			}
		}
		if a == nil || b == nil || b.Minion == nil {
			return false
		}
		got, _ := b.Minion.Progress()
		return got > 1<<20 && rescueHeld(claims, b.ID, l.Master.ID)
	})
	st, err := l.Coord.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gen := st.Generation.ID
	for _, f := range st.Finished {
		if f == a.ID {
			t.Fatalf("%s already holds the generation: B did not stream from a partial source", a.ID)
		}
	}
	// B's progress when its rescue claim is gone, sampled from now on (a
	// stop may take a while to return).
	released := make(chan int64, 1)
	go func() {
		defer close(released)
		for ctx.Err() == nil {
			got, planned := b.Minion.Progress()
			claims, err := l.Redis.HGetAll(ctx, l.Coord.Keys().Claims()).Result()
			if err == nil && (!rescueHeld(claims, b.ID, l.Master.ID) || got == planned) {
				released <- got
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if err := a.Stop(); err != nil {
		t.Logf("stopping %s: %v", a.ID, err)
	}

	waitFor(ctx, t, "B to finish from another source", func() bool {
		now, err := l.Coord.Status(ctx)
		if err != nil || now.Generation.ID != gen {
			return false
		}
		for _, f := range now.Finished {
			if f == b.ID {
				return true
			}
		}
		return false
	})
	if err := lab.Compare(src, filepath.Join(b.Root, task)); err != nil {
		t.Fatal(err)
	}
	events, err := l.Coord.Events(ctx, "0", 0)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range events {
		if e.Host == b.ID && e.Gen == fmt.Sprint(gen) {
			kinds = append(kinds, e.Type)
		}
	}
	if !containsType(kinds, "switch") || containsType(kinds, "fail") || count(kinds, "finish") != 1 {
		t.Errorf("events of %s: %v; want a switch, no fail, one finish", b.ID, kinds)
	}
	// The resumed pull received each byte once.
	got, planned := b.Minion.Progress()
	if got != planned {
		t.Errorf("%s received %d bytes for a plan of %d", b.ID, got, planned)
	}
	if releasedAt, ok := <-released; !ok || releasedAt >= planned {
		t.Errorf("%s gave the origin's rescue slot back at %d bytes of %d: want it given back while pulling from the whole origin", b.ID, releasedAt, planned)
	}
	if temps, err := lab.TempFiles(b.Root, manifest.IsTemp); err != nil || len(temps) > 0 {
		t.Errorf("temporary files left on %s: %v %v", b.ID, temps, err)
	}
}

func containsType(kinds []string, k string) bool { return count(kinds, k) > 0 }

func count(kinds []string, k string) int {
	n := 0
	for _, x := range kinds {
		if x == k {
			n++
		}
	}
	return n
}

// rescueHeld reports whether host holds an extra claim ("host/n") on
// origin's rescue slot in claims (the claims hash: claim id → "gen slot
// ...").
func rescueHeld(claims map[string]string, host, origin string) bool {
	slot := fmt.Sprintf("%s#%d", origin, coord.RescueSlot)
	for cid, rec := range claims {
		if f := strings.Fields(rec); strings.HasPrefix(cid, host+"/") && len(f) > 1 && f[1] == slot {
			return true
		}
	}
	return false
}
