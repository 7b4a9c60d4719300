package coord

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestValidZone(t *testing.T) {
	for _, z := range []string{"", "a", "rack-7", "eu-west-1a", "R_2.b", strings.Repeat("z", MaxZoneLen)} {
		if err := ValidZone("--zone", z); err != nil {
			t.Errorf("ValidZone(%q) = %v", z, err)
		}
	}
	for _, z := range []string{"rack 7", "-a", ".a", "{fanout}", "a/b", "a#1", "a,b", "é", "a\n", strings.Repeat("z", MaxZoneLen+1)} {
		err := ValidZone("--zone", z)
		if err == nil {
			t.Errorf("ValidZone(%q) accepted it", z)
			continue
		}
		if !strings.Contains(err.Error(), "--zone") || !strings.Contains(err.Error(), "letters, digits") {
			t.Errorf("ValidZone(%q) = %q: should name the flag and what is allowed", z, err)
		}
	}
	if !CrossZone("a", "b") || CrossZone("a", "a") || CrossZone("", "b") || CrossZone("a", "") {
		t.Error("CrossZone: only two named, different zones cross")
	}
}

// zoned returns a client of f's Redis for a host in zone.
func (f *fixture) zoned(zone string, lease time.Duration) *Client {
	return New(f.rdb, Config{Prefix: "{fanout}:", LeaseTTL: lease, HostGrace: 30 * time.Second, Now: f.clock, Zone: zone})
}

// register heartbeats host into the registry with zone and uploads.
func (f *fixture) register(c *Client, host, zone string, uploads int) {
	f.t.Helper()
	if _, err := c.Heartbeat(context.Background(), Host{ID: host, Addr: host + ":7070", Role: "minion", Zone: zone, Uploads: uploads}, Beat{Register: true, Uploads: uploads}); err != nil {
		f.t.Fatal(err)
	}
}

// TestZoneClaims: a host's claims take a source of its own zone whenever
// one is free, whole before partial, and any other source only when none
// is (never with SameZone); every path that returns a slot puts it back
// in its source's zone index; a zone index entry whose slot left the
// global index is dropped, never claimed.
func TestZoneClaims(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		za, zb := f.zoned("a", 15*time.Second), f.zoned("b", 15*time.Second)
		g, err := za.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", OriginZone: "a"}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if cur, _ := f.c.Current(ctx); cur.OriginZone != "a" {
			t.Fatalf("generation origin zone %q", cur.OriginZone)
		}
		if got := f.members(k.SyncFullZone("a")); !slices.Equal(got, []string{"master#0"}) {
			t.Fatalf("sync_full:a after publish = %v", got)
		}
		for _, h := range []string{"a1", "a2", "a3"} {
			f.register(za, h, "a", 2)
		}
		for _, h := range []string{"b1", "b2"} {
			f.register(zb, h, "b", 2)
		}

		// b1: nothing in zone b, so the origin, of zone a.
		b1, err := zb.Claim(ctx, "b1", g.Ref(), ClaimOptions{})
		if err != nil || b1.Slot != "master#0" || b1.SourceZone != "a" {
			t.Fatalf("b1's claim = %+v, %v", b1, err)
		}
		// Taken through the global index, master#0 stays in zone a's index
		// (b1's claim names zone b's keys, not a's): a hint that a zone-a
		// claim finds stale, drops, and does not take.
		if _, err := za.Claim(ctx, "a1", g.Ref(), ClaimOptions{SameZone: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a zone-a claim with the origin taken: %v", err)
		}
		if len(f.members(k.SyncFullZone("a"))) != 0 {
			t.Fatalf("a claimed slot stayed in its zone index after a claim met it: %v", f.members(k.SyncFullZone("a")))
		}
		if rec := f.rdb.HGet(ctx, k.Claims(), "b1").Val(); !strings.HasSuffix(rec, " a") {
			t.Fatalf("claim record %q does not name the source's zone", rec)
		}
		if err := zb.Finish(ctx, b1, 2); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.SyncFullZone("a")); !slices.Equal(got, []string{"master#0"}) {
			t.Fatalf("the origin's slot did not return to zone a: %v", got)
		}
		if got := f.members(k.SyncFullZone("b")); !slices.Equal(got, []string{"b1#0", "b1#1"}) {
			t.Fatalf("b1's slots not in zone b: %v", got)
		}

		// With master#0 (a) and b1#0, b1#1 (b) free, a zone-a host takes
		// the origin and a zone-b host a b1 slot, every time (a choice
		// blind to zones would be wrong a third to two thirds of the time).
		for i := range 20 {
			for _, tc := range []struct {
				c          *Client
				host, zone string
			}{{za, "a1", "a"}, {zb, "b2", "b"}} {
				cl, err := tc.c.Claim(ctx, tc.host, g.Ref(), ClaimOptions{})
				if err != nil || cl.SourceZone != tc.zone {
					t.Fatalf("round %d: %s (zone %s) claimed %+v, %v", i, tc.host, tc.zone, cl, err)
				}
				if err := tc.c.Release(ctx, cl); err != nil {
					t.Fatal(err)
				}
			}
		}
		if got := f.members(k.SyncFullZone("b")); !slices.Equal(got, []string{"b1#0", "b1#1"}) {
			t.Fatalf("released slots not back in zone b: %v", got)
		}

		// A partial source of the host's zone comes before a whole one of
		// another zone.
		a2, err := za.Claim(ctx, "a2", g.Ref(), ClaimOptions{})
		if err != nil || a2.Source != "master" {
			t.Fatalf("a2's claim = %+v, %v", a2, err)
		}
		if err := za.OfferSlots(ctx, "a2", g.Ref(), 2, false); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.SyncPartialZone("a")); !slices.Equal(got, []string{"a2#0", "a2#1"}) {
			t.Fatalf("a2's partial slots not in zone a: %v", got)
		}
		a3, err := za.Claim(ctx, "a3", g.Ref(), ClaimOptions{})
		if err != nil || a3.Source != "a2" || !a3.Partial || a3.SourceZone != "a" {
			t.Fatalf("a3 took %+v, %v; want a2's partial slot", a3, err)
		}
		// a2 finishes: its free slot moves to zone a's whole index.
		if err := za.Finish(ctx, a2, 2); err != nil {
			t.Fatal(err)
		}
		free := "a2#0"
		if a3.Slot == free {
			free = "a2#1"
		}
		if got := f.members(k.SyncFullZone("a")); !slices.Equal(got, []string{free, "master#0"}) {
			t.Fatalf("zone a's whole index after a2 finished: %v", got)
		}
		if len(f.members(k.SyncPartialZone("a"))) != 0 {
			t.Fatalf("zone a's partial index after a2 finished: %v", f.members(k.SyncPartialZone("a")))
		}

		// SameZone: only zone b's slots, none when they are all taken.
		f.register(zb, "b3", "b", 1)
		f.register(zb, "b4", "b", 1)
		b3, err := zb.Claim(ctx, "b3", g.Ref(), ClaimOptions{SameZone: true})
		if err != nil || b3.SourceZone != "b" {
			t.Fatalf("b3: %+v, %v", b3, err)
		}
		b4, err := zb.Claim(ctx, "b4", g.Ref(), ClaimOptions{SameZone: true})
		if err != nil || b4.SourceZone != "b" {
			t.Fatalf("b4: %+v, %v", b4, err)
		}
		if _, err := zb.Claim(ctx, "b2", g.Ref(), ClaimOptions{SameZone: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("same-zone claim with zone b full: %v", err)
		}
		other, err := zb.Claim(ctx, "b2", g.Ref(), ClaimOptions{})
		if err != nil || other.SourceZone != "a" {
			t.Fatalf("b2 without SameZone: %+v, %v", other, err)
		}
		zb.Release(ctx, other)

		// A host of a fanout before zones takes b4's slot back through the
		// global index only, leaving a stale entry in zone b's index; a
		// zoned claim drops it and never takes the slot twice.
		if err := zb.Release(ctx, b4); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(f.members(k.SyncFullZone("b")), b4.Slot) {
			t.Fatalf("%s not back in zone b", b4.Slot)
		}
		old := f.c // no zone: the scripts keep only the global indexes for it
		f.heartbeat("old")
		var oldCl Claim
		for range 50 {
			cl, err := old.Claim(ctx, "old", g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if cl.Slot == b4.Slot {
				oldCl = cl
				break
			}
			old.Release(ctx, Claim{Host: cl.Host, Gen: cl.Gen, Slot: cl.Slot})
		}
		if oldCl.Slot == "" {
			t.Fatalf("the zone-less host never drew %s", b4.Slot)
		}
		if !slices.Contains(f.members(k.SyncFullZone("b")), b4.Slot) {
			t.Fatal("test premise: the zone-less claim should leave its entry in zone b's index")
		}
		if _, err := zb.Claim(ctx, "b2", g.Ref(), ClaimOptions{SameZone: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a stale zone entry was claimed: %v", err)
		}
		if slices.Contains(f.members(k.SyncFullZone("b")), b4.Slot) {
			t.Fatal("the stale zone entry was not dropped")
		}
	})
}

// TestZoneReapForgetPublish: a reaped claim's slot returns to its
// source's zone index (the claim record names the zone; a record written
// by a host before zones has none and returns it to the global indexes);
// forget takes a host's slots out of its zone's index; cross-zone bytes
// count only for the current generation, show in status, and are reset by
// a publish and by forget.
func TestZoneReapForgetPublish(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		za := f.zoned("a", 15*time.Second)
		short := f.zoned("b", 200*time.Millisecond)
		g, err := za.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", OriginZone: "a"}, 2)
		if err != nil {
			t.Fatal(err)
		}
		f.register(short, "b1", "b", 1)
		f.register(short, "b2", "b", 1)
		cl, err := short.Claim(ctx, "b1", g.Ref(), ClaimOptions{})
		if err != nil || cl.SourceZone != "a" {
			t.Fatalf("claim: %+v, %v", cl, err)
		}
		// b2's claim record as a host before zones writes it.
		if _, err := short.Claim(ctx, "b2", g.Ref(), ClaimOptions{}); err != nil {
			t.Fatal(err)
		}
		rec := f.rdb.HGet(ctx, k.Claims(), "b2").Val()
		f.rdb.HSet(ctx, k.Claims(), "b2", strings.TrimSuffix(rec, " a"))
		// Both claims took the slots through the global index; a zone-a
		// claim drops their entries from zone a's.
		if _, err := za.Claim(ctx, "a1", g.Ref(), ClaimOptions{SameZone: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a zone-a claim with both slots taken: %v", err)
		}
		if got := f.members(k.SyncFullZone("a")); len(got) != 0 {
			t.Fatalf("zone a index with both slots claimed: %v", got)
		}
		expire(t, f, 300*time.Millisecond)
		if n, err := f.c.Reap(ctx); n != 2 || err != nil {
			t.Fatalf("reap: %d, %v", n, err)
		}
		if got := f.members(k.SyncFull()); !slices.Equal(got, []string{"master#0", "master#1"}) {
			t.Fatalf("reaped slots not back: %v", got)
		}
		if got := f.members(k.SyncFullZone("a")); !slices.Equal(got, []string{cl.Slot}) {
			t.Fatalf("zone a index after reap = %v, want only %s (the other record named no zone)", got, cl.Slot)
		}

		// Cross-zone bytes.
		if err := short.AddCrossZone(ctx, "b1", g.Ref(), 1000); err != nil {
			t.Fatal(err)
		}
		if err := short.AddCrossZone(ctx, "b1", g.Ref(), 24); err != nil {
			t.Fatal(err)
		}
		if err := short.AddCrossZone(ctx, "b2", g.Ref(), 500); err != nil {
			t.Fatal(err)
		}
		if err := short.AddCrossZone(ctx, "b2", Ref{ID: g.ID - 1, Digest: g.Digest}, 7); err != nil {
			t.Fatal(err)
		}
		st, err := f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.CrossZone["b1"] != 1024 || st.CrossZone["b2"] != 500 || st.CrossZoneTotal() != 1524 {
			t.Fatalf("status cross-zone bytes %v (total %d)", st.CrossZone, st.CrossZoneTotal())
		}
		for _, h := range st.Hosts {
			if h.Zone != "b" {
				t.Errorf("host %s registered zone %q", h.ID, h.Zone)
			}
		}

		// b2 finishes and offers its slot in zone b; forget takes it out.
		again, err := short.Claim(ctx, "b2", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := short.Finish(ctx, again, 1); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(f.members(k.SyncFullZone("b")), "b2#0") {
			t.Fatalf("zone b index: %v", f.members(k.SyncFullZone("b")))
		}
		if err := f.c.Forget(ctx, "b2"); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(f.members(k.SyncFullZone("b")), "b2#0") || slices.Contains(f.members(k.Sync()), "b2#0") {
			t.Fatalf("forgotten host's slot still offered: zone b %v, sync %v", f.members(k.SyncFullZone("b")), f.members(k.Sync()))
		}
		if st, _ := f.c.Status(ctx); st.CrossZone["b2"] != 0 || st.CrossZone["b1"] != 1024 {
			t.Fatalf("after forget b2: %v", st.CrossZone)
		}

		if _, err := za.Publish(ctx, Generation{Path: "/data/m43", Digest: strings.Repeat("e", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", OriginZone: "a"}, 1); err != nil {
			t.Fatal(err)
		}
		if st, _ := f.c.Status(ctx); len(st.CrossZone) != 0 {
			t.Fatalf("publish did not reset cross-zone bytes: %v", st.CrossZone)
		}
		if got := f.members(k.SyncFullZone("a")); !slices.Equal(got, []string{"master#0"}) {
			t.Fatalf("zone a index after the next publish: %v", got)
		}
	})
}

// TestZoneCrossesOnce: while a serving host of zone b pulls (here from
// outside its zone), another host of zone b with no source of its zone
// free waits for its slots rather than bring the content across a second
// time, and then takes them; a host that does not serve makes no one
// wait; the wait ends with the claim, and with the generation.
func TestZoneCrossesOnce(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		za, zb := f.zoned("a", 15*time.Second), f.zoned("b", 15*time.Second)
		publish := func(digest string) Generation {
			g, err := za.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat(digest, 64), Origin: "master", OriginAddr: "10.0.0.1:7070", OriginZone: "a"}, 2)
			if err != nil {
				t.Fatal(err)
			}
			return g
		}
		g := publish("d")
		for _, h := range []string{"b1", "b2", "b3", "b4"} {
			f.register(zb, h, "b", 1)
		}
		// A host that does not serve crosses without holding others back.
		quiet, err := zb.Claim(ctx, "b4", g.Ref(), ClaimOptions{})
		if err != nil || quiet.SourceZone != "a" {
			t.Fatalf("b4: %+v, %v", quiet, err)
		}
		b1, err := zb.Claim(ctx, "b1", g.Ref(), ClaimOptions{Serves: true})
		if err != nil || b1.SourceZone != "a" {
			t.Fatalf("b1: %+v, %v", b1, err)
		}
		if got := f.members(k.ZonePulling("b")); !slices.Equal(got, []string{"b1"}) {
			t.Fatalf("zone b serving pullers %v, want [b1]", got)
		}
		zb.Release(ctx, quiet) // a master slot is free again
		if _, err := zb.Claim(ctx, "b2", g.Ref(), ClaimOptions{Serves: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("b2 crossed too while b1 pulls: %v", err)
		}
		// Zone a is not held back by zone b's pullers.
		f.register(za, "a1", "a", 1)
		if a1, err := za.Claim(ctx, "a1", g.Ref(), ClaimOptions{Serves: true}); err != nil || a1.Source != "master" {
			t.Fatalf("a1: %+v, %v", a1, err)
		}
		// b1 offers its slot in zone b (pipelining): b2 takes it, and b3
		// now waits for b2's.
		if err := zb.OfferSlots(ctx, "b1", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		b2, err := zb.Claim(ctx, "b2", g.Ref(), ClaimOptions{Serves: true})
		if err != nil || b2.Source != "b1" {
			t.Fatalf("b2: %+v, %v", b2, err)
		}
		if err := zb.Finish(ctx, b1, 1); err != nil {
			t.Fatal(err)
		}
		if got := f.members(k.ZonePulling("b")); !slices.Equal(got, []string{"b2"}) {
			t.Fatalf("zone b serving pullers after b1 finished: %v, want [b2]", got)
		}
		if _, err := zb.Claim(ctx, "b3", g.Ref(), ClaimOptions{Serves: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("b3 crossed while b2 pulls in its zone: %v", err)
		}
		// b2's claim ends without a finish (a failure): b3 may cross.
		if err := zb.Fail(ctx, b2, SourceOK, "test", 1); err != nil {
			t.Fatal(err)
		}
		b3, err := zb.Claim(ctx, "b3", g.Ref(), ClaimOptions{Serves: true})
		if err != nil || b3.Source != "b1" {
			t.Fatalf("b3 after b2 failed: %+v, %v (b1's slot is free again, in zone b)", b3, err)
		}
		// A claim of an older generation holds no one back.
		g2 := publish("e")
		if _, err := zb.Claim(ctx, "b4", g2.Ref(), ClaimOptions{Serves: true}); err != nil {
			t.Fatalf("b4 in the next generation: %v", err)
		}
		if got := f.members(k.ZonePulling("b")); !slices.Equal(got, []string{"b4"}) {
			t.Fatalf("zone b serving pullers in the next generation %v, want [b4] (b3's of the last dropped)", got)
		}
	})
}

// TestRenewFreeCountsTheZone: a renewal counts the slots free for the
// host's extra claims, which take only sources of its zone: a zoned host
// counts its zone's whole sources' free slots, a host of no zone every
// whole source's.
func TestRenewFreeCountsTheZone(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		za, zb := f.zoned("a", 15*time.Second), f.zoned("b", 15*time.Second)
		g, err := za.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", OriginZone: "a"}, 3)
		if err != nil {
			t.Fatal(err)
		}
		f.register(za, "a1", "a", 1)
		f.register(zb, "b1", "b", 1)
		f.heartbeat("n1")
		var claims []Claim
		for _, c := range []struct {
			co   *Client
			host string
		}{{za, "a1"}, {zb, "b1"}} {
			cl, err := c.co.Claim(ctx, c.host, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			claims = append(claims, cl)
		}
		// One origin slot is free, in zone a. Zone a's index still holds
		// the one b1 took (a claim clears only its own zone's index; the
		// next claim that samples the entry drops it), so a1 may count 2.
		if res, err := za.RenewReport(ctx, claims[0], Progress{Gen: g.ID}, nil, nil); err != nil || res.Free < 1 || res.Free > 2 {
			t.Errorf("a1's renewal: %d slots free (%v), want 1 (2 with the stale entry)", res.Free, err)
		}
		if res, err := zb.RenewReport(ctx, claims[1], Progress{Gen: g.ID}, nil, nil); err != nil || res.Free != 0 {
			t.Errorf("b1's renewal: %d slots free (%v), want 0: zone b has none", res.Free, err)
		}
		n1, err := f.c.Claim(ctx, "n1", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// a1 became a partial source with its one slot free: not counted
		// (the end of a chain is a newcomer's); then a1 finishes.
		if err := za.OfferPartial(ctx, "a1", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		if res, err := f.c.RenewReport(ctx, n1, Progress{Gen: g.ID}, nil, nil); err != nil || res.Free != 0 {
			t.Errorf("a zone-less host's renewal: %d slots free (%v), want 0 (a1's is a partial source's)", res.Free, err)
		}
		if err := za.Finish(ctx, claims[0], 1); err != nil {
			t.Fatal(err)
		}
		if res, err := f.c.RenewReport(ctx, n1, Progress{Gen: g.ID}, nil, nil); err != nil || res.Free != 2 {
			t.Errorf("a zone-less host's renewal: %d slots free (%v), want 2 (a1's, whole, and the origin's its claim gave back)", res.Free, err)
		}
	})
}

// A zoned host's extra claim (SameZone, as the minion makes it) takes no
// partial source of its zone, and the host's renewals and outlooks count
// none as free for it: only its zone's whole sources.
func TestZonedExtraClaimTakesWholeSources(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		za := f.zoned("a", 15*time.Second)
		g, err := za.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", OriginZone: "a"}, 1)
		if err != nil {
			t.Fatal(err)
		}
		f.register(za, "a1", "a", 2)
		f.register(za, "a2", "a", 2)
		a1, err := za.Claim(ctx, "a1", g.Ref(), ClaimOptions{Slots: 2, Offer: 2})
		if err != nil || a1.Slot != "master#0" || !a1.Offered {
			t.Fatalf("a1's claim: %+v, %v; want master#0, offered", a1, err)
		}
		if got := f.members(za.Keys().SyncPartialZone("a")); !slices.Equal(got, []string{"a1#0", "a1#1"}) {
			t.Fatalf("zone a's partial slots %v, want a1#0 a1#1", got)
		}
		extra := ClaimOptions{Index: 2, SameZone: true, Acyclic: true}
		if cl, err := za.Claim(ctx, "a2", g.Ref(), extra); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a2's extra claim took %s (%v); want none: only a partial source of its zone is free", cl.Slot, err)
		}
		if o, err := za.Outlook(ctx); err != nil || o.Free != 0 {
			t.Fatalf("zone a's outlook: %+v, %v; want no slot free for an extra claim", o, err)
		}
		if r, err := za.RenewReport(ctx, a1, Progress{Gen: g.ID}, nil, nil); err != nil || r.Free != 0 {
			t.Fatalf("a1's renewal: %+v, %v; want no slot free for an extra claim", r, err)
		}
		// The origin offers a second slot, a whole source of zone a.
		if err := za.OfferOrigin(ctx, "master", g.Ref(), 2); err != nil {
			t.Fatal(err)
		}
		if r, err := za.RenewReport(ctx, a1, Progress{Gen: g.ID}, nil, nil); err != nil || r.Free != 1 {
			t.Fatalf("a1's renewal: %+v, %v; want master#1 free", r, err)
		}
		if cl, err := za.Claim(ctx, "a2", g.Ref(), extra); err != nil || cl.Slot != "master#1" {
			t.Fatalf("a2's extra claim: %+v, %v; want master#1", cl, err)
		}
	})
}
