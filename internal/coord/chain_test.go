package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// A chain of partial sources is followed for 64 hosts at most: the slot at
// the end of a longer one is refused to every claimer, and withdrawn from
// the free sets when a claim meets it, so hosts waiting for a source do
// not walk the chain again at each poll. The source offers it again when
// it finishes, and a waiting host then takes it.
func TestClaimWithdrawsSlotOfChainTooLong(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		var chain []Claim
		for i := range 64 {
			h := fmt.Sprintf("h%02d", i)
			f.heartbeat(h)
			cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatalf("claim %d of the chain: %v", i, err)
			}
			if want := "master#0"; i > 0 {
				want = fmt.Sprintf("h%02d#0", i-1)
				if cl.Slot != want || !cl.Partial {
					t.Fatalf("claim %d: %+v, want partial %s", i, cl, want)
				}
			}
			if err := f.c.OfferSlots(ctx, h, g.Ref(), 1, false); err != nil {
				t.Fatal(err)
			}
			chain = append(chain, cl)
		}
		end := "h63#0"
		if !slices.Contains(f.members(k.SyncPartial()), end) {
			t.Fatalf("the chain's last slot is not on offer: %v", f.members(k.SyncPartial()))
		}
		f.heartbeat("waiter")
		if _, err := f.c.Claim(ctx, "waiter", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("claim at the end of a chain of 64: %v, want ErrNoSource", err)
		}
		for _, key := range []string{k.Sync(), k.SyncPartial(), k.SyncFull()} {
			if got := f.members(key); slices.Contains(got, end) {
				t.Fatalf("%s still offers %s after a claim refused it: %v", key, end, got)
			}
		}
		// A chunked pull (acyclic) follows no chain: it is not offered the
		// slot either until its source offers it again.
		if _, err := f.c.Claim(ctx, "waiter", g.Ref(), ClaimOptions{Acyclic: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("acyclic claim with the slot withdrawn: %v, want ErrNoSource", err)
		}
		last := chain[63]
		if err := f.c.Finish(ctx, last, 1); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.SyncFull()); !slices.Contains(got, end) {
			t.Fatalf("after its source finished, %s is not offered as whole: %v", end, got)
		}
		cl, err := f.c.Claim(ctx, "waiter", g.Ref(), ClaimOptions{})
		if err != nil || cl.Slot != end || cl.Partial {
			t.Fatalf("claim after the source finished: %+v, %v; want whole %s", cl, err, end)
		}
	})
}

// A claim that finds no source says how many hosts wait for one: those
// that counted their discovery in lookup, less the running and the
// finished.
func TestNoSourceCountsWaiting(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		f.heartbeat("a", "b", "c", "d")
		for range 4 {
			if err := f.c.Lookup(ctx); err != nil {
				t.Fatal(err)
			}
		}
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{})
		var none *NoSourceError
		if !errors.Is(err, ErrNoSource) || !errors.As(err, &none) || none.Waiting != 3 {
			t.Fatalf("claim with a running and none finished of 4: %v, want ErrNoSource with 3 waiting", err)
		}
		if err := f.c.Finish(ctx, cl, 0); err != nil { // finished, not a source: master#0 is free again
			t.Fatal(err)
		}
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err = f.c.Claim(ctx, "c", g.Ref(), ClaimOptions{}); !errors.As(err, &none) || none.Waiting != 2 {
			t.Fatalf("claim with one running and one finished of 4: %v, want 2 waiting", err)
		}
	})
}
