package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// TestClockSkew: one minion's clock is five minutes ahead, another's five
// minutes behind. Liveness is judged by Redis TIME and peers sign requests
// with their clock corrected to it, so the skewed hosts pull from and serve
// their peers like any other: no host is expired, no request refused, and
// the generation is done only once every host holds it.
func TestClockSkew(t *testing.T) {
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// No minion at start: each gets its clock before it starts.
			l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), RedisURL: srv.URL, Prefix: "{fanout}:", BWLimit: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Stop()
			for _, skew := range []time.Duration{5 * time.Minute, -5 * time.Minute, 0} {
				h := l.NewHost()
				h.Skew = skew
				if err := l.StartMinion(ctx, h); err != nil {
					t.Fatal(err)
				}
			}
			src := filepath.Join(l.Master.Root, task)
			mustMkdir(t, src)
			if err := lab.SampleTree(src, 2<<20, 10); err != nil {
				t.Fatal(err)
			}
			waitFor(ctx, t, "three registered hosts", func() bool {
				hosts, _ := l.Coord.Hosts(ctx)
				return len(hosts) == 3
			})
			if err := l.Set(ctx, task); err != nil {
				t.Fatal(err)
			}
			premature := false
			st, err := l.WaitGeneration(ctx, 0, func(st coord.Status) {
				if st.State == coord.StateDone && len(st.Finished) < 3 {
					premature = true
				}
				for _, h := range st.Hosts {
					if !h.Alive {
						t.Errorf("%s judged lost (clock skew)", h.ID)
					}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if premature || len(st.Finished) != 3 {
				t.Errorf("done with %d of 3 hosts finished (premature %v)", len(st.Finished), premature)
			}
			for _, h := range l.Minions {
				if err := lab.Compare(src, filepath.Join(h.Root, task)); err != nil {
					t.Errorf("%s (skew %v): %v", h.ID, h.Skew, err)
				}
				if f, ok := st.Failures[h.ID]; ok {
					t.Errorf("%s (skew %v) failed a pull: %s", h.ID, h.Skew, f.Error)
				}
			}
			evs, err := l.Coord.Events(ctx, "0", 0)
			if err != nil {
				t.Fatal(err)
			}
			served := false
			for _, e := range evs {
				switch {
				case e.Type == "lease_expired", e.Type == "fail", e.Type == "switch":
					t.Errorf("event %s for %s: %s", e.Type, e.Host, e.Msg)
				case e.Type == "claim" && !strings.HasPrefix(e.Slot, "master#"):
					served = true // a minion served a peer: skewed clocks signed or checked it
				}
			}
			if !served {
				t.Error("no minion served a peer: the test did not exercise signatures between skewed hosts")
			}
		})
	}
}
