package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/lab"
	"github.com/fanout/fanout/internal/redistest"
)

// TestHandoffs: twelve minions with one upload slot each, without
// pipelining, so a host offers its slots only once it holds the
// generation: the hosts that find no source at first are queued, and each
// slot freed or offered is handed to the next host waiting (a "claim"
// event with message "handed") instead of waiting in the free sets for a
// host's next poll. Every copy is identical and no handed slot is left to
// expire. (A pipelined chain no longer queues as it forms: each claim
// offers the chain's new end in the same call.)
func TestHandoffs(t *testing.T) {
	for _, srv := range redistest.Servers(t) {
		t.Run(srv.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			const n = 12
			l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Minions: n, RedisURL: srv.URL, Prefix: "{fanout}:",
				Uploads: 1, BWLimit: 8 << 20, Poll: time.Second, WholeFile: true})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Stop()
			src := filepath.Join(l.Master.Root, task)
			mustMkdir(t, src)
			if err := lab.SampleTree(src, 2<<20, 20); err != nil {
				t.Fatal(err)
			}
			if err := l.Set(ctx, task); err != nil {
				t.Fatal(err)
			}
			st, err := l.WaitGeneration(ctx, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Finished) != n {
				t.Fatalf("finished = %d hosts, want %d", len(st.Finished), n)
			}
			checkCopies(t, l, src, -1)
			events, err := l.Coord.Events(ctx, "0", 0)
			if err != nil {
				t.Fatal(err)
			}
			gen := fmt.Sprint(st.Generation.ID)
			handed, expired := 0, 0
			for _, e := range events {
				switch {
				case e.Gen != gen:
				case e.Type == "claim" && e.Msg == "handed":
					handed++
				case e.Type == "lease_expired":
					expired++
				}
			}
			t.Logf("%d claims were hand-offs, %d leases expired", handed, expired)
			// At --poll 1s a waiting host would claim every 50 ms; with
			// hand-offs most slots are handed on.
			if handed < n/2 {
				t.Errorf("%d claims were hand-offs, want at least %d of the %d hosts' first claims", handed, n/2, n)
			}
			// A hand-off not taken up in 5 s is reaped (a lease_expired
			// event); one on a loaded machine is tolerated, not more.
			if expired > 1 {
				t.Errorf("%d leases expired (hand-offs not taken up?)", expired)
			}
		})
	}
}
