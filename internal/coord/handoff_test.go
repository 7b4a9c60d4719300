package coord

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// claimQueued is a first claim of host that may queue (ClaimOptions.Queue)
// and must find no source: it reports whether the host was queued.
func (f *fixture) claimQueued(c *Client, host string, g Generation) bool {
	f.t.Helper()
	_, err := c.Claim(context.Background(), host, g.Ref(), ClaimOptions{Queue: true, Slots: 1})
	var none *NoSourceError
	if !errors.As(err, &none) {
		f.t.Fatalf("claim of %s: %v, want no source", host, err)
	}
	return none.Queued
}

// TestHandoff: a host that finds no source and listens on its wake channel
// is queued; the next slot freed is written as its claim (no other host's
// claim takes it, the free sets never list it) and it is told on its wake
// channel; its next claim takes the slot up and starts the lease. Hosts
// are served in the order they queued. A handed slot not taken up is ended
// by the reaper like an expired lease and goes to the next host waiting.
// A host that found a source otherwise leaves the queue; one from which
// a host pulls never enters it.
func TestHandoff(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("h1", "h2", "h3", "h4")
		first, err := f.c.Claim(ctx, "h1", g.Ref(), ClaimOptions{Queue: true, Slots: 1})
		if err != nil || first.Slot != "master#0" {
			t.Fatalf("first claim: %+v, %v; want master#0", first, err)
		}
		if !f.claimQueued(f.c, "h2", g) {
			t.Fatal("h2 found no source but was not queued")
		}
		f.advance(time.Millisecond)
		if !f.claimQueued(f.c, "h3", g) {
			t.Fatal("h3 found no source but was not queued")
		}
		// Without Queue a claim is not queued (a host that does not listen).
		if _, err := f.c.Claim(ctx, "h4", g.Ref(), ClaimOptions{Slots: 1}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("claim of h4: %v, want ErrNoSource", err)
		}
		if got, _ := f.rdb.ZRange(ctx, k.Waiting(), 0, -1).Result(); !slices.Equal(got, []string{"h2", "h3"}) {
			t.Fatalf("waiting queue = %v, want [h2 h3]", got)
		}
		wake, err := f.c.Subscribe(ctx, k.WakeChannel("h2"))
		if err != nil {
			t.Fatal(err)
		}
		defer wake.Close()

		// h1 pulls and offers its slot: it is h2's, not anyone's to claim.
		if err := f.c.OfferPartial(ctx, "h1", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case <-wake.C:
		case <-time.After(5 * time.Second):
			t.Fatal("h2 was not told on its wake channel")
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "h2").Result(); rec == "" || !slices.Contains(f.members(k.Running()), "h2") {
			t.Fatalf("h2's claim record %q, running %v: the slot was not handed", rec, f.members(k.Running()))
		}
		for _, key := range []string{k.Sync(), k.SyncPartial()} {
			if slices.Contains(f.members(key), "h1#0") {
				t.Fatalf("%s lists h1#0, handed to h2", key)
			}
		}
		if _, err := f.c.Claim(ctx, "h4", g.Ref(), ClaimOptions{Slots: 1}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("h4 claimed with the only slot handed to h2: %v", err)
		}
		cl, err := f.c.Claim(ctx, "h2", g.Ref(), ClaimOptions{Queue: true, Slots: 1})
		if err != nil || cl.Slot != "h1#0" || !cl.Partial || cl.SourceAddr != "h1:7070" {
			t.Fatalf("h2 taking the slot up: %+v, %v; want partial h1#0 at h1:7070", cl, err)
		}
		if v, _ := f.rdb.Get(ctx, k.Lease("h2")).Result(); v != fmt.Sprintf("%d h1#0", g.ID) {
			t.Fatalf("h2's lease = %q after taking the slot up", v)
		}
		if _, err := f.c.Renew(ctx, cl); err != nil {
			t.Fatalf("renewing a handed claim: %v", err)
		}
		if _, err := f.c.Claim(ctx, "h2", g.Ref(), ClaimOptions{Queue: true, Slots: 1}); !errors.Is(err, ErrBusy) {
			t.Fatalf("a second claim of h2: %v, want ErrBusy", err)
		}

		// h2's slot goes to h3, which never takes it up: once its time
		// is over (the lease index says so), the reaper ends the claim
		// and hands the slot to the next host waiting, h4.
		if err := f.c.OfferPartial(ctx, "h2", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "h3").Result(); rec == "" {
			t.Fatal("h2's slot was not handed to h3")
		}
		if !f.claimQueued(f.c, "h4", g) {
			t.Fatal("h4 not queued")
		}
		if err := f.rdb.ZAdd(ctx, k.LeaseIndex(), redis.Z{Score: 1, Member: "h3"}).Err(); err != nil {
			t.Fatal(err)
		}
		if n, err := f.c.Reap(ctx); err != nil || n != 1 {
			t.Fatalf("reap: %d, %v; want the handed claim of h3 ended", n, err)
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "h3").Result(); rec != "" {
			t.Fatalf("h3's untaken claim still there: %q", rec)
		}
		cl, err = f.c.Claim(ctx, "h4", g.Ref(), ClaimOptions{Queue: true, Slots: 1})
		if err != nil || cl.Slot != "h2#0" {
			t.Fatalf("h4 after the reaper: %+v, %v; want h2#0 handed on", cl, err)
		}

		// A host that found a source otherwise leaves the queue; a host
		// from which another pulls never enters it.
		f.heartbeat("h5", "old")
		if !f.claimQueued(f.c, "h5", g) {
			t.Fatal("h5 not queued")
		}
		// A slot offered by a fanout built before hand-offs (no index, no
		// queue): h5's next claim finds it, and h5 leaves the queue.
		if err := f.rdb.SAdd(ctx, k.Sync(), "old#0").Err(); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "h5", g.Ref(), ClaimOptions{Queue: true, Slots: 1}); err != nil || cl.Slot != "old#0" {
			t.Fatalf("h5's claim: %+v, %v; want old#0", cl, err)
		}
		if got, _ := f.rdb.ZRange(ctx, k.Waiting(), 0, -1).Result(); len(got) != 0 {
			t.Fatalf("waiting queue = %v, want empty", got)
		}
		f.heartbeat("h6")
		if _, err := f.rdb.HSet(ctx, k.Holders(), "h6#0", "h7").Result(); err != nil {
			t.Fatal(err)
		}
		if err := f.rdb.HSet(ctx, k.Claims(), "h7", fmt.Sprintf("%d h6#0 0 %s", g.ID, g.Digest)).Err(); err != nil {
			t.Fatal(err)
		}
		if f.claimQueued(f.c, "h6", g) {
			t.Fatal("h6, from which h7 pulls, was queued")
		}
		// With nobody waiting, a slot given back is free for any claim.
		if err := f.c.Release(ctx, first); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(f.members(k.SyncFull()), "master#0") {
			t.Fatalf("master#0 not free after its release with nobody waiting: %v", f.members(k.SyncFull()))
		}
	})
}

// A zone's waiting hosts are handed slots of that zone's sources only,
// and queue only while a host of their zone pulls (its slots are coming);
// a host whose zone has none polls, to cross into the zone.
func TestHandoffByZone(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		za, zb := f.zoned("a", 15*time.Second), f.zoned("b", 15*time.Second)
		g, err := za.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", OriginZone: "a"}, 1)
		if err != nil {
			t.Fatal(err)
		}
		f.register(za, "a1", "a", 1)
		f.register(za, "a2", "a", 1)
		f.register(zb, "b1", "b", 1)
		if _, err := za.Claim(ctx, "a1", g.Ref(), ClaimOptions{Queue: true, Slots: 1, Serves: true}); err != nil {
			t.Fatal(err)
		}
		if f.claimQueued(zb, "b1", g) {
			t.Fatal("b1 queued with no host of zone b pulling: it would wait for zone a's queue to empty")
		}
		if !f.claimQueued(za, "a2", g) {
			t.Fatal("a2 not queued while a1, of its zone, pulls")
		}
		if err := za.OfferPartial(ctx, "a1", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		rec, _ := f.rdb.HGet(ctx, k.Claims(), "a2").Result()
		if !strings.HasSuffix(rec, " a") {
			t.Fatalf("a2's handed claim record %q: want a1's slot, naming the source's zone a", rec)
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "b1").Result(); rec != "" {
			t.Fatalf("b1 was handed a slot: %q", rec)
		}
		cl, err := za.Claim(ctx, "a2", g.Ref(), ClaimOptions{Queue: true, Slots: 1, Serves: true})
		if err != nil || cl.Slot != "a1#0" || cl.SourceZone != "a" {
			t.Fatalf("a2 taking its slot up: %+v, %v", cl, err)
		}
		if !slices.Contains(f.members(k.ZonePulling("a")), "a2") {
			t.Fatalf("a2's taken-up claim is not listed as pulling in zone a: %v", f.members(k.ZonePulling("a")))
		}
	})
}

// A hand-off never closes a cycle: a queued host on any of whose slots a
// host pulls meanwhile is passed over. A handed slot whose source went
// bad before it was taken up is not taken up: the claim ends and the
// search goes on. A queued host that has not claimed for 35 s (dead) is
// passed over.
func TestHandoffRefusals(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("h1", "v", "w", "x", "y", "z")
		// u serves 16 slots (registered so).
		if _, err := f.c.Heartbeat(ctx, Host{ID: "u", Addr: "u:7070", Uploads: 16}, Beat{Register: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Claim(ctx, "h1", g.Ref(), ClaimOptions{Queue: true, Slots: 2}); err != nil {
			t.Fatal(err)
		}
		if !f.claimQueued(f.c, "u", g) || !f.claimQueued(f.c, "v", g) || !f.claimQueued(f.c, "w", g) || !f.claimQueued(f.c, "y", g) {
			t.Fatal("not queued")
		}
		// Since they queued, x pulls from w's second slot (w switched
		// away from a dead source and kept its slots on offer), a rescue
		// claim of x from v's rescue slot, and a newcomer n from u's
		// thirteenth slot.
		for slot, cid := range map[string]string{"w#1": "x", "v#64": "x/1", "u#12": "n"} {
			if err := f.rdb.HSet(ctx, k.Holders(), slot, cid).Err(); err != nil {
				t.Fatal(err)
			}
			if err := f.rdb.HSet(ctx, k.Claims(), cid, fmt.Sprintf("%d %s 0 %s", g.ID, slot, g.Digest)).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.c.OfferPartial(ctx, "h1", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"u", "v", "w"} {
			if rec, _ := f.rdb.HGet(ctx, k.Claims(), h).Result(); rec != "" {
				t.Fatalf("h1's slot handed to %s, which x pulls from: %q", h, rec)
			}
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "y").Result(); rec == "" {
			t.Fatal("h1's slot not handed to y, next in the queue")
		}
		// h1 is found bad before y takes its slot up.
		if err := f.rdb.SAdd(ctx, k.BadSources(), "h1").Err(); err != nil {
			t.Fatal(err)
		}
		_, err := f.c.Claim(ctx, "y", g.Ref(), ClaimOptions{Queue: true, Slots: 1})
		if !errors.Is(err, ErrNoSource) {
			t.Fatalf("y taking up a slot of a bad source: %v, want no source", err)
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "y").Result(); rec != "" || slices.Contains(f.members(k.Running()), "y") {
			t.Fatalf("y's claim on the bad source's slot stays: record %q, running %v", rec, f.members(k.Running()))
		}
		// z queued, then silent for 35 s (its last claim's mark ages out):
		// a slot freed now is not handed to it.
		if !f.claimQueued(f.c, "z", g) {
			t.Fatal("z not queued")
		}
		if err := f.rdb.ZAdd(ctx, k.Starved(), redis.Z{Score: 1, Member: "z"}).Err(); err != nil {
			t.Fatal(err)
		}
		if err := f.rdb.ZRem(ctx, k.Waiting(), "y").Err(); err != nil {
			t.Fatal(err)
		}
		if err := f.c.OfferSlots(ctx, "master", g.Ref(), 2, true); err != nil {
			t.Fatal(err)
		}
		if rec, _ := f.rdb.HGet(ctx, k.Claims(), "z").Result(); rec != "" {
			t.Fatalf("a slot handed to z, silent for 35 s: %q", rec)
		}
		if !slices.Contains(f.members(k.SyncFull()), "master#1") {
			t.Fatalf("master#1, handed to nobody, is not free: %v", f.members(k.SyncFull()))
		}
	})
}

// A script that may hand a slot off (its own text offers, releases or
// frees a slot, and it declares a waiting queue that those calls pass)
// declares every key handoff writes, so it never fails on a missing key
// in the middle of a hand-off.
func TestHandoffScriptsDeclareKeys(t *testing.T) {
	need := []string{"generation", "claims", "holders", "running", "finished", "leases", "events", "starved", "sync", "full", "part"}
	for name, s := range scriptNames {
		frees := strings.Contains(s.body, "offer(") || strings.Contains(s.body, "release(") || strings.Contains(s.body, "freeSlot(")
		if !frees || (!slices.Contains(s.keys, "zwait") && !slices.Contains(s.keys, "szwait")) {
			continue
		}
		for _, k := range need {
			if !slices.Contains(s.keys, k) {
				t.Errorf("script %s declares a waiting queue but not %q, which a hand-off writes", name, k)
			}
		}
	}
	// offer() reads the dead slots and the zone indexes unguarded: a
	// script missing one would fail halfway, its writes kept.
	for name, s := range scriptNames {
		if !strings.Contains(s.body, "offer(host") && !strings.Contains(s.body, "offer(ARGV") {
			continue
		}
		for _, k := range []string{"dead", "zfull", "zpart", "sync", "full", "part", "generation", "finished"} {
			if !slices.Contains(s.keys, k) {
				t.Errorf("script %s offers slots but does not declare %q, which offer reads or writes", name, k)
			}
		}
	}
}

// TestClaimOffers: a first claim with ClaimOptions.Offer offers the host
// as a partial source in the same call (its rescue slot with
// OfferRescue), whether it found a free slot or took up a handed one; its
// offered slot goes to the host waiting in the queue at once. A claim
// that finds nothing, an extra claim, and a bad host's claim offer
// nothing.
func TestClaimOffers(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("h1", "h2", "h3")
		offer := ClaimOptions{Queue: true, Slots: 2, Offer: 2, OfferRescue: true}
		h1, err := f.c.Claim(ctx, "h1", g.Ref(), offer)
		if err != nil || !h1.Offered {
			t.Fatalf("h1's claim: %+v, %v; want offered", h1, err)
		}
		if got := f.members(k.SyncPartial()); !slices.Equal(got, []string{"h1#0", "h1#1"}) {
			t.Fatalf("partial sources %v after h1's claim, want h1#0 h1#1", got)
		}
		if !slices.Contains(f.members(k.Rescue()), "h1#64") {
			t.Fatalf("rescue slots %v, want h1#64", f.members(k.Rescue()))
		}
		// An extra claim offers nothing.
		f.rdb.SRem(ctx, k.Sync(), "h1#0", "h1#1")
		f.rdb.SRem(ctx, k.SyncPartial(), "h1#0", "h1#1")
		f.heartbeat("w")
		f.rdb.SAdd(ctx, k.Finished(), "w")
		f.rdb.SAdd(ctx, k.Sync(), "w#0")
		f.rdb.SAdd(ctx, k.SyncFull(), "w#0")
		x, err := f.c.Claim(ctx, "h2", g.Ref(), ClaimOptions{Index: 1, Acyclic: true, Offer: 2})
		if err != nil || x.Offered || slices.Contains(f.members(k.Sync()), "h2#0") {
			t.Fatalf("extra claim: %+v, %v, free slots %v; want claimed, nothing offered", x, err, f.members(k.Sync()))
		}
		if err := f.c.Release(ctx, x); err != nil {
			t.Fatal(err)
		}
		f.rdb.SRem(ctx, k.Sync(), "w#0")
		f.rdb.SRem(ctx, k.SyncFull(), "w#0")
		// h2 finds nothing (offering nothing) and queues; h1's slot,
		// offered again, is handed to it, and h2's take-up offers h2.
		var none *NoSourceError
		if nc, err := f.c.Claim(ctx, "h2", g.Ref(), offer); !errors.As(err, &none) || !none.Queued || nc.Offered || slices.Contains(f.members(k.Sync()), "h2#0") {
			t.Fatalf("h2's claim: %v (offered %v), free slots %v; want queued, nothing offered", err, nc.Offered, f.members(k.Sync()))
		}
		if err := f.c.OfferPartial(ctx, "h1", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		// h5 queues behind h2; the slot h2's take-up offers is handed to
		// h5 within that same call.
		f.heartbeat("h5")
		if _, err := f.c.Claim(ctx, "h5", g.Ref(), offer); !errors.As(err, &none) || !none.Queued {
			t.Fatalf("h5's claim: %v, want queued", err)
		}
		h2, err := f.c.Claim(ctx, "h2", g.Ref(), offer)
		if err != nil || h2.Slot != "h1#0" || !h2.Offered {
			t.Fatalf("h2's take-up: %+v, %v; want h1#0, h2 offered", h2, err)
		}
		if holder := f.rdb.HGet(ctx, k.Holders(), "h2#0").Val(); holder != "h5" || slices.Contains(f.members(k.Sync()), "h2#0") {
			t.Fatalf("h2#0 held by %q (free slots %v), want handed to h5 by h2's claim", holder, f.members(k.Sync()))
		}
		h5, err := f.c.Claim(ctx, "h5", g.Ref(), offer)
		if err != nil || h5.Slot != "h2#0" || !h5.Offered || !slices.Contains(f.members(k.Sync()), "h5#0") {
			t.Fatalf("h5's take-up: %+v, %v, free slots %v; want h2#0, h5 offered", h5, err, f.members(k.Sync()))
		}
		// A relay withdrawn as slow (bypassed) stays withdrawn: its claim
		// does not offer its slots again.
		f.heartbeat("h4")
		f.rdb.SAdd(ctx, k.SlowRelays(), slowMember("h4", g.ID))
		f.rdb.SAdd(ctx, k.Sync(), "h1#1")
		if h4, err := f.c.Claim(ctx, "h4", g.Ref(), offer); err != nil || h4.Offered || slices.Contains(f.members(k.Sync()), "h4#0") || slices.Contains(f.members(k.Rescue()), "h4#64") {
			t.Fatalf("slow relay h4's claim: %+v, %v, free slots %v, rescue %v; want claimed, nothing offered", h4, err, f.members(k.Sync()), f.members(k.Rescue()))
		}
		// A bad host claims, but offers nothing.
		f.rdb.SAdd(ctx, k.BadSources(), "h3")
		h3, err := f.c.Claim(ctx, "h3", g.Ref(), offer)
		if err != nil || h3.Offered || slices.Contains(f.members(k.Sync()), "h3#0") {
			t.Fatalf("bad h3's claim: %+v, %v, free slots %v; want claimed, nothing offered", h3, err, f.members(k.Sync()))
		}
	})
}

// TestNoQueueBeforeTheOriginOffers: a host that read a generation before
// its origin offered slots (published with none, announced next) finds no
// source but neither queues nor counts as waiting for one, so the origin's
// first slot stays free for the claims its announcement wakes; once the
// origin offered, a host that finds nothing queues as before. So does one
// of a generation whose publisher (an older fanout) wrote no
// origin_pending, even when an earlier generation's value is left, and one
// of a rollback, whose origin offers nothing.
func TestNoQueueBeforeTheOriginOffers(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(0)
		f.heartbeat("early", "a", "b")
		if f.claimQueued(f.c, "early", g) {
			t.Fatal("a host queued before the origin offered its slots")
		}
		if n, _ := f.rdb.ZCard(ctx, k.Waiting()).Result(); n != 0 {
			t.Fatalf("%d hosts in the waiting queue, want 0", n)
		}
		if n, _ := f.rdb.ZCard(ctx, k.Starved()).Result(); n != 0 {
			t.Fatalf("%d hosts counted as waiting for a source, want 0", n)
		}
		if err := f.c.Announce(ctx, "master", g.Ref(), 1); err != nil {
			t.Fatal(err)
		}
		if n, _ := f.rdb.HExists(ctx, k.Generation(), "origin_pending").Result(); n {
			t.Fatal("origin_pending still set once the origin offered")
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"master#0"}) {
			t.Fatalf("free slots once announced: %v, want master#0 (not handed to the early host)", got)
		}
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Queue: true, Slots: 1})
		if err != nil || cl.Slot != "master#0" {
			t.Fatalf("a's claim: %+v, %v; want master#0", cl, err)
		}
		if !f.claimQueued(f.c, "b", g) {
			t.Fatal("b found no source once the origin offered, and was not queued")
		}
		// An older master publishes the next generation: it neither writes
		// nor clears the field, which still names an older one.
		g2 := f.publish(0)
		if err := f.rdb.HSet(ctx, k.Generation(), "origin_pending", strconv.FormatInt(g2.ID-1, 10)).Err(); err != nil {
			t.Fatal(err)
		}
		if !f.claimQueued(f.c, "early", g2) {
			t.Fatal("a host of a generation whose origin_pending names an older one was not queued")
		}
		// A rollback: the hosts that kept the release serve it.
		g3, err := f.c.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("e", 64), Origin: "master", OriginAddr: "10.0.0.1:7070", Rollback: g.ID}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := f.rdb.HExists(ctx, k.Generation(), "origin_pending").Result(); n {
			t.Fatal("a rollback's publish set origin_pending")
		}
		if !f.claimQueued(f.c, "early", g3) {
			t.Fatal("a host of a rollback that found no source was not queued")
		}
	})
}
