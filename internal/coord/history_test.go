package coord

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestCompleteHistoryRoundsProgressEvents(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		f.heartbeat("a", "b", "c")
		// a pulls from the origin, b from a, c from b: three rounds.
		var prev string
		for _, h := range []string{"a", "b", "c"} {
			for {
				cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if prev == "" && cl.Source == "master" || cl.Source == prev {
					if _, err := f.c.ReportProgress(ctx, h, Progress{Gen: g.ID, Source: cl.Slot, Done: 10, Total: 10}, nil); err != nil {
						t.Fatal(err)
					}
					if err := f.c.Finish(ctx, cl, 1); err != nil {
						t.Fatal(err)
					}
					break
				}
				f.c.Fail(ctx, cl, SourceOK, "want another source", 1)
			}
			prev = h
		}
		if n, err := f.c.Rounds(ctx, g.ID); err != nil || n != 3 {
			t.Fatalf("Rounds = %d, %v; want 3", n, err)
		}
		st, _ := f.c.Status(ctx)
		if p := st.Progress["c"]; p.Done != 10 || p.Source != "b#0" {
			t.Errorf("progress of c: %+v", p)
		}
		rec, ok, err := f.c.Complete(ctx, st.Generation, len(st.Finished))
		if err != nil || !ok || rec.Rounds != 3 || rec.Hosts != 3 || rec.Bytes != 300 {
			t.Fatalf("Complete = %+v %v %v", rec, ok, err)
		}
		if _, ok, _ := f.c.Complete(ctx, st.Generation, 3); ok {
			t.Error("completed twice")
		}
		hist, err := f.c.History(ctx, 10)
		if err != nil || len(hist) != 1 || hist[0].Gen != g.ID {
			t.Fatalf("History = %+v, %v", hist, err)
		}
		// A new generation clears progress.
		g2 := f.publish(1)
		if st, _ := f.c.Status(ctx); len(st.Progress) != 0 {
			t.Errorf("progress survived publish of generation %d: %+v", g2.ID, st.Progress)
		}
		evs, err := f.c.Events(ctx, "0", 0)
		if err != nil {
			t.Fatal(err)
		}
		types := map[string]int{}
		for _, e := range evs {
			types[e.Type]++
		}
		if types["published"] != 2 || types["claim"] < 3 || types["finish"] != 3 || types["done"] != 1 {
			t.Errorf("event types %v", types)
		}
		// Following: a new event arrives within the blocking read.
		last := evs[len(evs)-1].ID
		go func() {
			time.Sleep(100 * time.Millisecond)
			f.c.Lookup(ctx)
			f.c.Claim(ctx, "z", g2.Ref(), ClaimOptions{})
		}()
		more, err := f.c.Events(ctx, last, 3*time.Second)
		if err != nil || len(more) == 0 || more[0].Type != "claim" || more[0].Host != "z" {
			t.Errorf("followed events: %+v, %v", more, err)
		}
	})
}

// eachEvent reads the whole stream a page at a time, in order, each event
// once, across page boundaries and ids with the same millisecond.
func TestEachEventPages(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		const n = 2*eventsPage + 17
		_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range n {
				// Explicit ids: several in one millisecond, so a page can
				// end mid-millisecond.
				p.XAdd(ctx, &redis.XAddArgs{Stream: k.Events(), ID: fmt.Sprintf("%d-%d", 1+i/3, i%3), Values: []any{"i", i}})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		next := 0
		if err := f.c.eachEvent(ctx, func(m redis.XMessage) {
			if got := fmt.Sprint(m.Values["i"]); got != fmt.Sprint(next) {
				t.Fatalf("event %d read as %s", next, got)
			}
			next++
		}); err != nil {
			t.Fatal(err)
		}
		if next != n {
			t.Fatalf("read %d events of %d", next, n)
		}
	})
}

func TestAfterID(t *testing.T) {
	for _, c := range []struct{ id, want string }{
		{"5-0", "5-1"},
		{"1700000000000-41", "1700000000000-42"},
		{"7-18446744073709551615", "8-0"},
	} {
		if got, err := afterID(c.id); err != nil || got != c.want {
			t.Errorf("afterID(%q) = %q, %v; want %q", c.id, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "5", "x-1", "5-y"} {
		if _, err := afterID(bad); err == nil {
			t.Errorf("afterID(%q) accepted", bad)
		}
	}
}

// TestReportProgressBeats: once the client knows Redis's clock, a progress
// report carries the host's heartbeat (in its groups' indexes too), so a
// pull's first report stands for the beat the host would send before its
// first renewal; before that, it writes the progress alone and says so.
func TestReportProgressBeats(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		p := Progress{Gen: g.ID, Source: "master#0", Total: 10}
		fresh := New(f.rdb, Config{Prefix: "{fanout}:", LeaseTTL: 15 * time.Second, HostGrace: 30 * time.Second, Now: f.clock})
		if beat, err := fresh.ReportProgress(ctx, "a", p, []string{"web"}); err != nil || beat {
			t.Fatalf("report before the clock is known: beat %v, %v; want the progress alone", beat, err)
		}
		if !f.rdb.HExists(ctx, k.Progress(), "a").Val() {
			t.Fatal("the report wrote no progress")
		}
		for _, key := range []string{k.Heartbeats(), k.GroupHeartbeats("web")} {
			if err := f.rdb.ZScore(ctx, key, "a").Err(); !errors.Is(err, redis.Nil) {
				t.Fatalf("%s scored a before its clock was known: %v", key, err)
			}
		}
		f.heartbeat("a")
		before := f.rdb.ZScore(ctx, k.Heartbeats(), "a").Val()
		f.advance(3 * time.Second)
		time.Sleep(5 * time.Millisecond) // Redis TIME moves on
		beat, err := f.c.ReportProgress(ctx, "a", p, []string{"web"})
		if err != nil || !beat {
			t.Fatalf("report: beat %v, %v; want the heartbeat with it", beat, err)
		}
		if after := f.rdb.ZScore(ctx, k.Heartbeats(), "a").Val(); after <= before {
			t.Errorf("heartbeat score %v, was %v: the report did not beat", after, before)
		}
		if err := f.rdb.ZScore(ctx, k.GroupHeartbeats("web"), "a").Err(); err != nil {
			t.Errorf("group heartbeat index: %v", err)
		}
	})
}
