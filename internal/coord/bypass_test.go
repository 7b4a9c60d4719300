package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// A chain master → P → S → C, where C holds P's rescue slot: C bypasses S,
// its slow relay. C's first claim is P's slot now, S's claim on it ended
// (its renewal finds it lost, and it is woken), the rescue slot is free
// again, and S's slots are withdrawn for the generation; S, with nothing
// pulling from it, claims the end of the chain, C's slot.
func TestBypass(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("P", "S", "C")
		claim := func(host string, o ClaimOptions) Claim {
			t.Helper()
			o.Serves, o.Slots = true, 1
			cl, err := f.c.Claim(ctx, host, g.Ref(), o)
			if err != nil {
				t.Fatalf("%s claims: %v", host, err)
			}
			return cl
		}
		offer := func(host string) {
			t.Helper()
			if err := f.c.OfferPartial(ctx, host, g.Ref(), 1); err != nil {
				t.Fatal(err)
			}
		}
		if cl := claim("P", ClaimOptions{}); cl.Slot != "master#0" {
			t.Fatalf("P claimed %s", cl.Slot)
		}
		offer("P")
		clS := claim("S", ClaimOptions{})
		offer("S")
		clC := claim("C", ClaimOptions{})
		offer("C")
		rescue := claim("C", ClaimOptions{Index: 1, Rescue: true, Acyclic: true})
		if clS.Slot != "P#0" || clC.Slot != "S#0" || rescue.Slot != "P#64" {
			t.Fatalf("chain: S on %s, C on %s, C's rescue on %s", clS.Slot, clC.Slot, rescue.Slot)
		}
		// A host that was bypassed itself never bypasses.
		f.rdb.SAdd(ctx, k.SlowRelays(), slowMember("C", g.ID))
		if _, err := f.c.Bypass(ctx, clC, rescue); !errors.Is(err, ErrMoved) {
			t.Fatalf("bypass by a slow relay: %v, want ErrMoved", err)
		}
		f.rdb.SRem(ctx, k.SlowRelays(), slowMember("C", g.ID))
		woken, err := f.c.Subscribe(ctx, k.WakeChannel("S"))
		if err != nil {
			t.Fatal(err)
		}
		defer woken.Close()

		cl, err := f.c.Bypass(ctx, clC, rescue)
		if err != nil {
			t.Fatal(err)
		}
		if cl.Slot != "P#0" || cl.Source != "P" || !cl.Partial || cl.Index != 0 || cl.SourceAddr != rescue.SourceAddr {
			t.Fatalf("bypass gave %+v", cl)
		}
		if h := f.rdb.HGet(ctx, k.Holders(), "P#0").Val(); h != "C" {
			t.Errorf("P#0 held by %q, want C", h)
		}
		if f.rdb.HExists(ctx, k.Claims(), "S").Val() || f.rdb.Exists(ctx, k.Lease("S"), k.Lease("C/1")).Val() != 0 {
			t.Error("S's claim or C's rescue claim outlived the bypass")
		}
		if v := f.rdb.Get(ctx, k.Lease("C")).Val(); v != fmt.Sprintf("%d P#0", g.ID) {
			t.Errorf("C's lease %q", v)
		}
		if !slices.Contains(f.members(k.Rescue()), "P#64") {
			t.Errorf("P's rescue slot not free again: %v", f.members(k.Rescue()))
		}
		if slices.Contains(f.members(k.Sync()), "S#0") || slices.Contains(f.members(k.Rescue()), "S#64") {
			t.Errorf("S's slots still offered: sync %v rescue %v", f.members(k.Sync()), f.members(k.Rescue()))
		}
		if run := f.members(k.Running()); slices.Contains(run, "S") || !slices.Contains(run, "C") {
			t.Errorf("running %v: want C, and S only once it claims again", run)
		}
		if !slices.Equal(f.members(k.SlowRelays()), []string{slowMember("S", g.ID)}) || !hasEvent(t, f, "bypass", "C") {
			t.Errorf("slow relays %v, or no bypass event", f.members(k.SlowRelays()))
		}
		if st, err := f.c.Status(ctx); err != nil || !slices.Equal(st.SlowRelays, []string{"S"}) {
			t.Errorf("status: slow relays %v (%v), want [S]", st.SlowRelays, err)
		}
		select {
		case <-woken.C:
		case <-time.After(5 * time.Second):
			t.Error("S was not woken")
		}
		if _, err := f.c.Renew(ctx, cl); err != nil {
			t.Errorf("C renews its new claim: %v", err)
		}
		if _, err := f.c.Renew(ctx, clS); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("S renews its bypassed claim: %v, want ErrLeaseLost", err)
		}

		// S claims again, avoiding P: the end of the chain is C's slot, and
		// no cycle closes since C no longer pulls from S.
		if again := claim("S", ClaimOptions{Avoid: []string{"P"}}); again.Slot != "C#0" {
			t.Fatalf("S claimed %s again, want C#0", again.Slot)
		}
		if !slices.Contains(f.members(k.Running()), "S") {
			t.Error("S not running after its claim")
		}
		offer("S")
		if slices.Contains(f.members(k.Sync()), "S#0") {
			t.Error("S offered its slot again")
		}
		// A second bypass of the same claims finds them moved.
		if _, err := f.c.Bypass(ctx, clC, rescue); !errors.Is(err, ErrMoved) {
			t.Errorf("second bypass: %v, want ErrMoved", err)
		}
		// The mark lasts one generation.
		g2 := f.publish(1)
		if n := f.rdb.Exists(ctx, k.SlowRelays()).Val(); n != 0 {
			t.Errorf("slow relays outlived generation %d", g2.ID)
		}
		// A mark of an older generation, as a master that predates the
		// bypass leaves in place (its publish does not empty the set),
		// withdraws nothing: R offers its slot in g2, and status names no
		// slow relay.
		f.heartbeat("R")
		f.rdb.SAdd(ctx, k.SlowRelays(), slowMember("R", g.ID))
		if _, err := f.c.Claim(ctx, "R", g2.Ref(), ClaimOptions{Serves: true, Slots: 1}); err != nil {
			t.Fatal(err)
		}
		if err := f.c.OfferPartial(ctx, "R", g2.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(f.members(k.Sync()), "R#0") {
			t.Errorf("R's slot not offered in generation %d, withdrawn by an older generation's mark: free slots %v", g2.ID, f.members(k.Sync()))
		}
		if st, err := f.c.Status(ctx); err != nil || len(st.SlowRelays) != 0 {
			t.Errorf("status in generation %d: slow relays %v (%v), want none", g2.ID, st.SlowRelays, err)
		}
	})
}

// A whole relay (finished meanwhile) is never bypassed: it is a whole
// source, and its slot is worth keeping.
func TestBypassRefusesWholeRelay(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		f.heartbeat("P", "S", "C")
		o := ClaimOptions{Serves: true, Slots: 1}
		if _, err := f.c.Claim(ctx, "P", g.Ref(), o); err != nil {
			t.Fatal(err)
		}
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(f.c.OfferPartial(ctx, "P", g.Ref(), 1))
		clS, err := f.c.Claim(ctx, "S", g.Ref(), o)
		must(err)
		must(f.c.OfferPartial(ctx, "S", g.Ref(), 1))
		clC, err := f.c.Claim(ctx, "C", g.Ref(), o)
		must(err)
		rescue, err := f.c.Claim(ctx, "C", g.Ref(), ClaimOptions{Index: 1, Rescue: true, Acyclic: true})
		must(err)
		must(f.c.Finish(ctx, clS, 1))
		if _, err := f.c.Bypass(ctx, clC, rescue); !errors.Is(err, ErrMoved) {
			t.Fatalf("bypass of a finished relay: %v, want ErrMoved", err)
		}
		if h := f.rdb.HGet(ctx, f.c.Keys().Holders(), "S#0").Val(); h != "C" {
			t.Errorf("S#0 held by %q, want C still", h)
		}
	})
}

// An extra claim never takes the slot of the claimer's own puller: what
// that puller has came from the claimer. Here the puller S holds the
// generation and repairs drift from P, so its slot is a whole source's,
// which another host's extra claim takes.
func TestExtraClaimSkipsOwnPuller(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("P", "S", "X")
		o := ClaimOptions{Serves: true, Slots: 1}
		if _, err := f.c.Claim(ctx, "P", g.Ref(), o); err != nil {
			t.Fatal(err)
		}
		if err := f.c.OfferSlots(ctx, "P", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		f.rdb.SAdd(ctx, k.Finished(), "S")
		if cl, err := f.c.Claim(ctx, "S", g.Ref(), ClaimOptions{Serves: true, Slots: 1, Repair: true}); err != nil || cl.Slot != "P#0" {
			t.Fatalf("S's repair claim: %+v, %v; want P#0", cl, err)
		}
		if err := f.c.OfferSlots(ctx, "S", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.SyncFull()); !slices.Equal(got, []string{"S#0"}) {
			t.Fatalf("whole sources' free slots %v, want S#0", got)
		}
		extra := ClaimOptions{Index: 1, Acyclic: true}
		if cl, err := f.c.Claim(ctx, "P", g.Ref(), extra); !errors.Is(err, ErrNoSource) {
			t.Fatalf("P's extra claim took %s, its own puller's slot (%v)", cl.Slot, err)
		}
		if cl, err := f.c.Claim(ctx, "X", g.Ref(), extra); err != nil || cl.Slot != "S#0" {
			t.Fatalf("X's extra claim: %+v, %v; want S#0", cl, err)
		}
	})
}
