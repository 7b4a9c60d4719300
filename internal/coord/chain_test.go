package coord

import (
	"context"
	"errors"
	"fmt"
	"github.com/redis/go-redis/v9"
	"slices"
	"strings"
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

// TestClaimAloneTakesEndOfLongChain: a host none of whose slots is claimed
// (Slots) has nothing downstream, so it takes the end of a chain longer
// than the walk's bound, and the slot it takes was not withdrawn; a host
// with a claimed slot (a puller switching sources) still may not, since
// the walk cannot rule out a cycle.
func TestClaimAloneTakesEndOfLongChain(t *testing.T) {
	each(t, 30*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		const n = 100
		for i := range n {
			h := fmt.Sprintf("h%03d", i)
			f.heartbeat(h)
			cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{Slots: 2})
			if err != nil {
				t.Fatalf("claim %d of the chain: %v", i, err)
			}
			if want := fmt.Sprintf("h%03d#0", i-1); i > 0 && cl.Slot != want {
				t.Fatalf("claim %d: %s, want %s (the end of the chain)", i, cl.Slot, want)
			}
			if err := f.c.OfferSlots(ctx, h, g.Ref(), 1, false); err != nil {
				t.Fatal(err)
			}
		}
		// "busy" takes the end (h099#0) too, offers its slot, and "down"
		// pulls from it.
		f.heartbeat("busy", "down")
		busy, err := f.c.Claim(ctx, "busy", g.Ref(), ClaimOptions{Slots: 1})
		if err != nil || busy.Slot != fmt.Sprintf("h%03d#0", n-1) {
			t.Fatalf("busy: %+v, %v; want the end of the chain", busy, err)
		}
		if err := f.c.OfferSlots(ctx, "busy", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "down", g.Ref(), ClaimOptions{Slots: 1}); err != nil || cl.Slot != "busy#0" {
			t.Fatalf("down: %+v, %v; want busy#0", cl, err)
		}
		// busy gives its source back and claims again (switching): with
		// down pulling from it, the chain above h099 is walked, found too
		// long to rule out a cycle, and refused.
		if err := f.c.Release(ctx, busy); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "busy", g.Ref(), ClaimOptions{Slots: 1}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a host with a puller downstream claimed %+v, %v; want ErrNoSource", cl, err)
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

// TestExtraClaimYieldsToWaiting: a swarm's extra claim (Index > 0) takes
// no slot while a host waits for its first source (its last first claim
// found none), even a free one; once that host has a source, or its entry
// is old (a host that died waiting), it does.
func TestExtraClaimYieldsToWaiting(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(2)
		f.heartbeat("a", "b", "c")
		for _, h := range []string{"a", "c"} {
			if _, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{}); err != nil {
				t.Fatalf("%s: %v", h, err)
			}
		}
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("b with both master slots taken: %v, want ErrNoSource", err)
		}
		if err := f.c.OfferSlots(ctx, "master", g.Ref(), 4, true); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "c", g.Ref(), ClaimOptions{Index: 1, Acyclic: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("extra claim with b waiting and two master slots free: %+v, %v; want ErrNoSource", cl, err)
		}
		if cl, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); err != nil || cl.Source != "master" {
			t.Fatalf("b's claim: %+v, %v; want a master slot (the free slot went to the extra claim?)", cl, err)
		}
		cl, err := f.c.Claim(ctx, "c", g.Ref(), ClaimOptions{Index: 1, Acyclic: true})
		if err != nil || cl.Source != "master" {
			t.Fatalf("extra claim with none waiting: %+v, %v; want the last master slot", cl, err)
		}
		// A host that waited long ago and went silent does not hold
		// extras back.
		f.rdb.ZAdd(ctx, f.c.Keys().Starved(), redis.Z{Score: 1, Member: "dead"})
		if err := f.c.Release(ctx, cl); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Index: 1, Acyclic: true}); err != nil || cl.Source != "master" {
			t.Fatalf("extra claim with only an old starved entry: %+v, %v; want the master slot c gave back", cl, err)
		}
	})
}

// TestExtraClaimSkipsDescendants: the end of a chain goes to a host with
// no source (as a relay bypassed for its slow uplink is, which must take
// the end of a chain), not to an ancestor's extra claim that would bring
// nothing, nor to a host outside the chain: extra claims take only whole
// sources.
func TestExtraClaimSkipsDescendants(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		chain := []string{"a", "b", "c", "d"}
		for i, h := range chain {
			f.heartbeat(h)
			cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatalf("%s: %v", h, err)
			}
			want := "master#0"
			if i > 0 {
				want = chain[i-1] + "#0"
			}
			if cl.Slot != want {
				t.Fatalf("%s claimed %s, want %s", h, cl.Slot, want)
			}
			if err := f.c.OfferSlots(ctx, h, g.Ref(), 1, false); err != nil {
				t.Fatal(err)
			}
		}
		// d#0, the end of the chain, is the only free slot; a, b and c are
		// d's ancestors.
		for _, h := range []string{"a", "b", "c"} {
			if cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{Index: 1, Acyclic: true}); !errors.Is(err, ErrNoSource) {
				t.Fatalf("%s's extra claim with only its descendant's slot free: %+v, %v; want ErrNoSource", h, cl, err)
			}
		}
		f.heartbeat("e", "x")
		if cl, err := f.c.Claim(ctx, "e", g.Ref(), ClaimOptions{}); err != nil || cl.Slot != "d#0" {
			t.Fatalf("e's first claim: %+v, %v; want d#0, left free by the extra claims", cl, err)
		}
		// Nor does a host outside the chain take it: an extra claim takes
		// only whole sources (see TestExtraClaimTakesWholeSources).
		if err := f.c.OfferSlots(ctx, "e", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "x", g.Ref(), ClaimOptions{Index: 1, Acyclic: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("x's extra claim: %+v, %v; want ErrNoSource (e#0 ends the chain)", cl, err)
		}
	})
}

// TestAcyclicClaimSkipsDescendants: a first claim made acyclic (chunked
// generations) by a host with a puller takes no partial source that pulls
// from it through at most 16 first claims, as a plain claim would not
// either (a plain claim for the cycle, an acyclic one because the
// descendant has little to give and its slot ends a chain).
func TestAcyclicClaimSkipsDescendants(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		f.heartbeat("h", "y", "z", "w")
		// h lost its source (it has none) but serves y, which serves z.
		if err := f.c.OfferSlots(ctx, "h", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Claim(ctx, "w", g.Ref(), ClaimOptions{}); err != nil { // takes master#0, offers nothing
			t.Fatal(err)
		}
		for _, p := range [][2]string{{"y", "h#0"}, {"z", "y#0"}} {
			if err := f.c.OfferSlots(ctx, p[0], g.Ref(), 1, false); err != nil {
				t.Fatal(err)
			}
			if cl, err := f.c.Claim(ctx, p[0], g.Ref(), ClaimOptions{Avoid: []string{"w", "z"}}); err != nil || cl.Slot != p[1] {
				t.Fatalf("%s's claim: %+v, %v; want %s", p[0], cl, err, p[1])
			}
		}
		// z#0 is the only free slot, and z pulls from h through y.
		for _, o := range []ClaimOptions{{Slots: 1}, {Slots: 1, Acyclic: true}} {
			if cl, err := f.c.Claim(ctx, "h", g.Ref(), o); !errors.Is(err, ErrNoSource) {
				t.Fatalf("h's claim (acyclic %v) took %s (%v); want none: z pulls from h", o.Acyclic, cl.Slot, err)
			}
		}
	})
}

// TestRescueSlot: a partial source's rescue slot (OfferPartial) is taken
// only by the rescue claim of a host two links below it in the chain, even
// while others wait; first claims never see it; it returns to the rescue
// set when released, and its source offers none once whole.
func TestRescueSlot(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		claims := map[string]Claim{}
		for _, h := range []string{"a", "b", "c"} {
			f.heartbeat(h)
			cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatalf("claim of %s: %v", h, err)
			}
			claims[h] = cl
			if err := f.c.OfferPartial(ctx, h, g.Ref(), 1); err != nil {
				t.Fatal(err)
			}
		}
		if got := f.members(k.Rescue()); !slices.Equal(got, []string{"a#64", "b#64", "c#64"}) {
			t.Fatalf("rescue slots on offer: %v", got)
		}
		rescueIn := func(key string) bool {
			return slices.ContainsFunc(f.members(key), func(s string) bool { return s[len(s)-3:] == "#64" })
		}
		for _, key := range []string{k.Sync(), k.SyncPartial(), k.SyncFull()} {
			if rescueIn(key) {
				t.Fatalf("%s offers a rescue slot: %v", key, f.members(key))
			}
		}
		f.heartbeat("d")
		d, err := f.c.Claim(ctx, "d", g.Ref(), ClaimOptions{})
		if err != nil || d.Slot != "c#0" {
			t.Fatalf("d's first claim: %+v, %v; want c#0, the end of the chain", d, err)
		}
		f.heartbeat("e")
		if _, err := f.c.Claim(ctx, "e", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("e's first claim with only rescue slots free: %v, want ErrNoSource", err)
		}
		// b's grandparent is the origin: OfferSlots offers no rescue
		// slot, OfferOrigin does, and it returns on release though the
		// origin is whole.
		if err := f.c.OfferSlots(ctx, "master", g.Ref(), 1, true); err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{Index: 1, Rescue: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("b's rescue claim: %v, want ErrNoSource", err)
		}
		if err := f.c.OfferOrigin(ctx, "master", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		if rescueIn(k.Sync()) {
			t.Fatalf("the origin's rescue slot is in synchronize_queue: %v", f.members(k.Sync()))
		}
		ro, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{Index: 1, Rescue: true, Avoid: []string{"a"}})
		if err != nil || ro.Slot != "master#64" || ro.Partial {
			t.Fatalf("b's rescue claim: %+v, %v; want whole master#64", ro, err)
		}
		if err := f.c.Release(ctx, ro); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.Rescue()); !slices.Contains(got, "master#64") {
			t.Fatalf("the origin's rescue slot released is not on offer again: %v", got)
		}
		// c (a → b → c) takes a's, though e waits for a first source.
		r, err := f.c.Claim(ctx, "c", g.Ref(), ClaimOptions{Index: 1, Rescue: true, Avoid: []string{"b"}})
		if err != nil || r.Slot != "a#64" || !r.Partial || r.Source != "a" {
			t.Fatalf("c's rescue claim: %+v, %v; want partial a#64", r, err)
		}
		rd, err := f.c.Claim(ctx, "d", g.Ref(), ClaimOptions{Index: 1, Rescue: true})
		if err != nil || rd.Slot != "b#64" {
			t.Fatalf("d's rescue claim: %+v, %v; want b#64", rd, err)
		}
		if _, err := f.c.Claim(ctx, "c", g.Ref(), ClaimOptions{Index: 2, Rescue: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("c's second rescue claim: %v, want ErrNoSource (a#64 is held)", err)
		}
		// A rescue claim is an extra one: never a first claim.
		if _, err := f.c.Claim(ctx, "e", g.Ref(), ClaimOptions{Rescue: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a first claim asking for rescue: %v, want ErrNoSource", err)
		}
		if err := f.c.Release(ctx, r); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.Rescue()); !slices.Contains(got, "a#64") {
			t.Fatalf("a#64 released is not on offer again: %v", got)
		}
		if rescueIn(k.Sync()) {
			t.Fatalf("a released rescue slot went to synchronize_queue: %v", f.members(k.Sync()))
		}
		if err := f.c.Finish(ctx, claims["a"], 2); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.Rescue()); slices.Contains(got, "a#64") {
			t.Fatalf("a holds the generation whole and still offers a rescue slot: %v", got)
		}
		if _, err := f.c.Claim(ctx, "c", g.Ref(), ClaimOptions{Index: 1, Rescue: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("c's rescue claim once a finished: %v, want ErrNoSource", err)
		}
		// b finishes while d pulls through its rescue slot; when d lets
		// go, the whole host's rescue slot is not offered again.
		if err := f.c.Finish(ctx, claims["b"], 2); err != nil {
			t.Fatal(err)
		}
		if err := f.c.Release(ctx, rd); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.Rescue()); slices.Contains(got, "b#64") {
			t.Fatalf("whole b's rescue slot offered again: %v", got)
		}
		if rescueIn(k.Sync()) {
			t.Fatalf("a rescue slot went to synchronize_queue: %v", f.members(k.Sync()))
		}
		// A forgotten host's rescue slot goes with it.
		if !slices.Contains(f.members(k.Rescue()), "c#64") {
			t.Fatalf("c#64 not on offer before c is forgotten: %v", f.members(k.Rescue()))
		}
		if err := f.c.Forget(ctx, "c"); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.Rescue()); slices.Contains(got, "c#64") {
			t.Fatalf("forgotten c's rescue slot still on offer: %v", got)
		}
	})
}

// TestRescueWithFirstClaim: a first claim with RescueIndex that takes a
// partial source makes the host's rescue claim in the same call, exactly
// as a rescue claim made after it would (the same slot, lease, record and
// event), and none when the source is whole, the grandparent offers no
// rescue slot, or the index is held already; the rescue claim renews,
// and the finish that names it gives its slot back.
func TestRescueWithFirstClaim(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		if err := f.c.OfferOrigin(ctx, "master", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		chain := func(h string, o ClaimOptions) Claim {
			t.Helper()
			f.heartbeat(h)
			o.Offer, o.OfferRescue = 1, true
			cl, err := f.c.Claim(ctx, h, g.Ref(), o)
			if err != nil || !cl.Offered {
				t.Fatalf("claim of %s: %+v, %v", h, cl, err)
			}
			return cl
		}
		// a's source is whole: no rescue, though asked.
		a := chain("a", ClaimOptions{RescueIndex: 1})
		if a.Slot != "master#0" || a.Rescue != nil {
			t.Fatalf("a's claim: slot %s, rescue %+v; want master#0 and none", a.Slot, a.Rescue)
		}
		// b's source a is partial, and a's source, the origin, offers its
		// rescue slot.
		b := chain("b", ClaimOptions{RescueIndex: 1})
		if b.Slot != "a#0" || b.Rescue == nil {
			t.Fatalf("b's claim: %+v; want a#0 with a rescue claim", b)
		}
		if r := *b.Rescue; r.Slot != "master#64" || r.Source != "master" || r.Partial || r.Index != 1 || r.Host != "b" {
			t.Fatalf("b's rescue claim: %+v; want whole master#64 at index 1", r)
		}
		c := chain("c", ClaimOptions{RescueIndex: 2})
		if c.Slot != "b#0" || c.Rescue == nil || c.Rescue.Slot != "a#64" || !c.Rescue.Partial || c.Rescue.Index != 2 {
			t.Fatalf("c's claim: %+v, rescue %+v; want b#0 with partial a#64 at index 2", c, c.Rescue)
		}
		// What a rescue claim writes, the one made with the first claim
		// wrote: holder, lease, claim record, lease index.
		if h, _ := f.rdb.HGet(ctx, k.Holders(), "a#64").Result(); h != "c/2" {
			t.Fatalf("holder of a#64: %q, want c/2", h)
		}
		if v, _ := f.rdb.Get(ctx, k.Lease("c/2")).Result(); v != "1 a#64" {
			t.Fatalf("lease of c/2: %q, want %q", v, "1 a#64")
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "c/2").Result(); !strings.HasPrefix(rec, "1 a#64 ") {
			t.Fatalf("claim record of c/2: %q", rec)
		}
		if _, err := f.rdb.ZScore(ctx, k.LeaseIndex(), "c/2").Result(); err != nil {
			t.Fatalf("c/2 not in the lease index: %v", err)
		}
		if got := f.members(k.Rescue()); slices.Contains(got, "a#64") {
			t.Fatalf("a#64 still on offer once claimed: %v", got)
		}
		if _, err := f.c.Renew(ctx, *c.Rescue); err != nil {
			t.Fatalf("renew the rescue claim: %v", err)
		}
		// d's grandparent b offers its rescue slot, but d's index 1 is
		// held (a claim left by an earlier pull): no rescue.
		if err := f.rdb.Set(ctx, k.Lease("d/1"), "1 x#0", 0).Err(); err != nil {
			t.Fatal(err)
		}
		d := chain("d", ClaimOptions{RescueIndex: 1})
		if d.Slot != "c#0" || d.Rescue != nil {
			t.Fatalf("d's claim: %+v, rescue %+v; want c#0 and no rescue (index 1 held)", d, d.Rescue)
		}
		if !slices.Contains(f.members(k.Rescue()), "b#64") {
			t.Fatalf("b#64 taken by a claim that made no rescue: %v", f.members(k.Rescue()))
		}
		// A later rescue claim finds what the first claim left.
		if _, err := f.c.Claim(ctx, "c", g.Ref(), ClaimOptions{Index: 1, Rescue: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("c's second rescue claim: %v, want ErrNoSource (a#64 is held)", err)
		}
		// Without RescueIndex, no rescue.
		e := chain("e", ClaimOptions{})
		if e.Slot != "d#0" || e.Rescue != nil {
			t.Fatalf("e's claim: %+v, rescue %+v; want d#0, no rescue", e, e.Rescue)
		}
		var events int
		msgs, err := f.rdb.XRange(ctx, k.Events(), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.Values["type"] == "claim" && m.Values["host"] == "c" {
				events++
			}
		}
		if events != 2 {
			t.Fatalf("%d claim events of c, want 2 (the first claim and its rescue)", events)
		}
		// The finish that names the rescue claim gives a#64 back.
		if err := f.c.Finish(ctx, c, 1, *c.Rescue); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(f.members(k.Rescue()), "a#64") {
			t.Fatalf("a#64 not on offer once c finished: %v", f.members(k.Rescue()))
		}
		if n, _ := f.rdb.Exists(ctx, k.Lease("c/2")).Result(); n != 0 {
			t.Fatal("the rescue claim's lease outlived the finish")
		}
	})
}
