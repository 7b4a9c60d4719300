package coord

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// After a data loss, a generation id can come back with other content: the
// scripts must tell the two apart by digest.
func TestGenerationNamedByIDAndDigest(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a")
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Redis forgets and the same id is published again for other content.
		other := strings.Repeat("e", 64)
		f.rdb.HSet(ctx, k.Generation(), "digest", other)
		if err := f.c.Finish(ctx, cl, 1); !errors.Is(err, ErrStale) {
			t.Fatalf("finish for the old content of id %d: %v", g.ID, err)
		}
		if slices.Contains(f.members(k.Finished()), "a") {
			t.Fatal("host counted finished for content it does not hold")
		}
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrStale) {
			t.Errorf("claim with the old digest: %v", err)
		}
		if ok, _ := f.c.MarkDone(ctx, g.Ref()); ok {
			t.Error("marked done with the old digest")
		}
		p, err := f.c.Heartbeat(ctx, Host{ID: "a"}, Beat{Held: g.Ref(), Uploads: 1})
		if err != nil || p.Reasserted || slices.Contains(f.members(k.Finished()), "a") {
			t.Errorf("heartbeat with the old digest re-asserted a: %+v %v", p, err)
		}
		if p.Current != (Ref{ID: g.ID, Digest: other}) || p.State != StateRunning {
			t.Errorf("heartbeat reports generation %+v %q, want %d/%.8s running", p.Current, p.State, g.ID, other)
		}
		if err := f.c.OfferSlots(ctx, "a", g.Ref(), 1, false); err != nil || slices.Contains(f.members(k.Sync()), "a#0") {
			t.Errorf("offer with the old digest: %v, sync %v", err, f.members(k.Sync()))
		}
	})
}

// The id never goes back: a master passes the last id it published.
func TestPublishFloor(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		f.rdb.Del(ctx, f.c.Keys().Generation()) // Redis lost it all
		g2, err := f.c.Publish(ctx, Generation{ID: g.ID + 5, Path: "/d", Digest: g.Digest, Origin: "master"}, 1)
		if err != nil || g2.ID != g.ID+6 {
			t.Fatalf("publish above floor %d: id %d, %v", g.ID+5, g2.ID, err)
		}
		cur, err := f.c.Current(ctx)
		if err != nil || cur.ID != g2.ID || cur.Proto != ProtoDest-1 || cur.Published.IsZero() { // no destination: readable by protocol 4
			t.Fatalf("current %+v, %v", cur, err)
		}
		g3 := f.publish(1)
		if g3.ID != g2.ID+1 {
			t.Errorf("next id %d, want %d", g3.ID, g2.ID+1)
		}
	})
}

// A finish Redis lost is announced again by the host's next heartbeat, with
// its slots.
func TestHeartbeatReasserts(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.c.Finish(ctx, cl, 2); err != nil {
			t.Fatal(err)
		}
		// A failover loses the finish.
		f.rdb.SRem(ctx, k.Finished(), "a")
		f.rdb.SRem(ctx, k.Sync(), "a#0", "a#1")
		if p, err := f.c.Heartbeat(ctx, Host{ID: "a"}, Beat{}); p.Reasserted || err != nil {
			t.Fatalf("heartbeat holding nothing: %+v %v", p, err)
		}
		if slices.Contains(f.members(k.Finished()), "a") {
			t.Fatal("re-asserted without a verified hold")
		}
		p, err := f.c.Heartbeat(ctx, Host{ID: "a"}, Beat{Held: g.Ref(), Uploads: 2})
		if !p.Reasserted || err != nil {
			t.Fatalf("heartbeat holding g: %+v %v", p, err)
		}
		if !slices.Contains(f.members(k.Finished()), "a") || !slices.Contains(f.members(k.Sync()), "a#1") {
			t.Fatalf("not re-asserted: finished %v sync %v", f.members(k.Finished()), f.members(k.Sync()))
		}
		if !hasEvent(t, f, "reassert", "a") {
			t.Error("no reassert event")
		}
		// Nothing to re-assert the next time; a claimed slot is not doubled.
		b, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p, _ := f.c.Heartbeat(ctx, Host{ID: "a"}, Beat{Held: g.Ref(), Uploads: 2, Offer: true}); p.Reasserted {
			t.Error("re-asserted twice")
		}
		if slices.Contains(f.members(k.Sync()), b.Slot) {
			t.Errorf("heartbeat offered %s, claimed by b", b.Slot)
		}
	})
}

// A lease Redis lost is re-created from its claim record; a claim lost with
// its record takes its slot again if nobody else has.
func TestLeaseRecreated(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.rdb.Del(ctx, k.Lease("a"))
		f.rdb.SRem(ctx, k.Running(), "a")
		restored, err := f.c.Renew(ctx, cl)
		if !restored || err != nil {
			t.Fatalf("renew of a lost lease: %v, %v", restored, err)
		}
		if ttl := f.rdb.PTTL(ctx, k.Lease("a")).Val(); ttl <= 0 || !slices.Contains(f.members(k.Running()), "a") {
			t.Fatalf("lease not re-created: ttl %v running %v", ttl, f.members(k.Running()))
		}
		if n, _ := f.c.Reap(ctx); n != 0 || len(f.members(k.Sync())) != 0 {
			t.Fatalf("reaped a re-created lease (%d), sync %v", n, f.members(k.Sync()))
		}
		// Both lost, the slot back on offer (Redis restored from before the claim).
		f.rdb.Del(ctx, k.Lease("a"))
		f.rdb.HDel(ctx, k.Claims(), "a")
		f.rdb.SAdd(ctx, k.Sync(), cl.Slot)
		if restored, err := f.c.Renew(ctx, cl); !restored || err != nil {
			t.Fatalf("renew of a lost claim with its slot free: %v, %v", restored, err)
		}
		if len(f.members(k.Sync())) != 0 || !hasEvent(t, f, "claim_restored", "a") {
			t.Fatalf("claim not restored: sync %v", f.members(k.Sync()))
		}
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrNoSource) {
			t.Errorf("b claimed while a's claim was restored: %v", err)
		}
		if err := f.c.Finish(ctx, cl, 1); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f.members(k.Sync()), []string{"a#0", "master#0"}) {
			t.Errorf("after finish: sync %v", f.members(k.Sync()))
		}
	})
}

// A slot judged dead comes back after a back-off that doubles with each
// strike against its source; a good transfer through it clears the strikes.
func TestDeadSlotBackoff(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		f.c = New(f.rdb, Config{Prefix: "{fanout}:", DeadBackoff: 300 * time.Millisecond, DeadBackoffMax: 10 * time.Second})
		g := f.publish(1)
		f.heartbeat("a")
		deadOnce := func() {
			t.Helper()
			cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.c.Fail(ctx, cl, SourceDead, "connection refused", 1); err != nil {
				t.Fatal(err)
			}
		}
		back := func() bool {
			t.Helper()
			if _, err := f.c.Reap(ctx); err != nil {
				t.Fatal(err)
			}
			return slices.Contains(f.members(k.Sync()), "master#0")
		}
		deadOnce()
		if back() {
			t.Fatal("dead slot back at once")
		}
		time.Sleep(400 * time.Millisecond)
		if !back() {
			t.Fatal("dead slot not back after its back-off")
		}
		deadOnce() // second strike: 600ms
		time.Sleep(400 * time.Millisecond)
		if back() {
			t.Fatal("second strike did not double the back-off")
		}
		time.Sleep(400 * time.Millisecond)
		if !back() {
			t.Fatal("dead slot not back after its doubled back-off")
		}
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.c.Finish(ctx, cl, 1); err != nil {
			t.Fatal(err)
		}
		if n := f.rdb.HLen(ctx, k.Strikes()).Val(); n != 0 {
			t.Errorf("strikes kept after a good transfer: %d", n)
		}
		if !hasEvent(t, f, "dead_source", "master") {
			t.Error("no dead_source event")
		}
	})
}

// Drift: a finished host repairing its tree stays finished, is listed as
// repairing (the generation is not done meanwhile), and counts a repair.
func TestRepairClaimAndDrift(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a", "b")
		for _, h := range []string{"a", "b"} {
			cl, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.c.Finish(ctx, cl, 1); err != nil {
				t.Fatal(err)
			}
		}
		if st, _ := f.c.Status(ctx); st.State != StateDone {
			t.Fatalf("state %s before drift", st.State)
		}
		if err := f.c.Drift(ctx, "a", g.Ref(), "1 file missing"); err != nil {
			t.Fatal(err)
		}
		st, _ := f.c.Status(ctx)
		if st.State != StateRunning || !slices.Equal(st.Repairing, []string{"a"}) || !slices.Contains(st.Finished, "a") {
			t.Fatalf("after drift: state %s repairing %v finished %v", st.State, st.Repairing, st.Finished)
		}
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrFinished) {
			t.Fatalf("plain claim by a finished host: %v", err)
		}
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Repair: true})
		if err != nil || !cl.Repair || cl.Source == "a" {
			t.Fatalf("repair claim: %+v, %v", cl, err)
		}
		if slices.Contains(f.members(k.Running()), "a") || !slices.Contains(f.members(k.Finished()), "a") {
			t.Error("a repairing host left finished_queue or entered running_queue")
		}
		if err := f.c.Finish(ctx, cl, 1); err != nil {
			t.Fatal(err)
		}
		st, _ = f.c.Status(ctx)
		if st.State != StateDone || len(st.Repairing) != 0 || st.Repairs["a"] != 1 {
			t.Fatalf("after repair: state %s repairing %v repairs %v", st.State, st.Repairing, st.Repairs)
		}
		// A repair that needs no source (a mode changed back) counts too.
		f.c.Drift(ctx, "b", g.Ref(), "mode of 1 file")
		if err := f.c.Finish(ctx, Claim{Host: "b", Gen: g.Ref(), Repair: true}, 1); err != nil {
			t.Fatal(err)
		}
		st, _ = f.c.Status(ctx)
		if st.Repairs["b"] != 1 || len(st.Repairing) != 0 || !hasEvent(t, f, "repaired", "b") || !hasEvent(t, f, "drift", "b") {
			t.Errorf("local repair: repairs %v repairing %v", st.Repairs, st.Repairing)
		}
		// Drift of a host that does not hold the generation marks nothing.
		f.c.Drift(ctx, "c", g.Ref(), "x")
		if slices.Contains(f.members(k.Repairing()), "c") {
			t.Error("drift marked a host that never finished")
		}
	})
}

// A corrupt generation key is named, not read as generation 0.
func TestCorruptGeneration(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		for _, field := range []struct{ name, value string }{{"id", "abc"}, {"id", "99999999999999999999"}, {"state", "bogus"}, {"bytes", "-1"}} {
			f.publish(1)
			f.rdb.HSet(ctx, k.Generation(), field.name, field.value)
			_, err := f.c.Current(ctx)
			if err == nil || !strings.Contains(err.Error(), k.Generation()) || !strings.Contains(err.Error(), field.name) {
				t.Errorf("%s=%q: Current error %v", field.name, field.value, err)
			}
			if _, err := f.c.Status(ctx); err == nil || !strings.Contains(err.Error(), "corrupt") {
				t.Errorf("%s=%q: Status error %v", field.name, field.value, err)
			}
			f.rdb.Del(ctx, k.Generation())
		}
	})
}

// A host whose clock is five minutes off heartbeats like any other: it is
// not expired, and its corrected clock agrees with Redis.
func TestClockSkewIrrelevant(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		f.publish(1)
		for _, skew := range []time.Duration{5 * time.Minute, -5 * time.Minute} {
			c := New(f.rdb, Config{Prefix: "{fanout}:", HostGrace: 2 * time.Second, Now: func() time.Time { return time.Now().Add(skew) }})
			if _, err := c.Heartbeat(ctx, Host{ID: "skewed"}, Beat{Register: true}); err != nil {
				t.Fatal(err)
			}
			if d := c.Now().Sub(time.Now()); d > time.Second || d < -time.Second {
				t.Errorf("skew %v: corrected clock off by %v", skew, d)
			}
			hosts, err := f.c.Hosts(ctx)
			if err != nil || len(hosts) != 1 || !hosts[0].Alive {
				t.Fatalf("skew %v: hosts %+v, %v", skew, hosts, err)
			}
			if _, err := c.Reap(ctx); err != nil {
				t.Fatal(err)
			}
			if hosts, _ := c.Hosts(ctx); !hosts[0].Alive {
				t.Errorf("skew %v: the skewed host judges itself lost", skew)
			}
		}
	})
}

// A host holds several claims at once, each with its own lease: it never
// takes a second slot of a source it pulls from already, an extra claim
// released gives its slot back and leaves the first alone, an extra claim
// expires on its own, and an extra claim, plain or acyclic, takes no
// partial source, here one that pulls from the host through another (see
// TestExtraClaimTakesWholeSources; TestAcyclicClaimSkipsDescendants for
// the cycle check itself).
func TestSeveralClaims(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a", "b", "c")
		first, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.c.OfferSlots(ctx, "master", g.Ref(), 2, true) // master#1 now free too
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Index: 1, Avoid: []string{first.Source}}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("second claim on the same source: %v", err)
		}
		// b streams from a (partial), c from b, and each offers its own
		// slot.
		if err := f.c.OfferSlots(ctx, "a", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"b", "c"} {
			if _, err := f.c.Claim(ctx, h, g.Ref(), ClaimOptions{Avoid: []string{"master"}}); err != nil {
				t.Fatal(err)
			}
			if err := f.c.OfferSlots(ctx, h, g.Ref(), 1, false); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Index: 1, Avoid: []string{"master"}}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a's extra claim took c's slot, a partial source's (and c pulls from a through b): %v", err)
		}
		if cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Index: 1, Avoid: []string{"master"}, Acyclic: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a's acyclic extra claim took %s, a partial source's (and c pulls from a through b): %v", cl.Slot, err)
		}
		// d pulls from the origin, is no descendant of a, and finishes:
		// a whole source (an extra claim takes no other).
		f.heartbeat("d")
		dcl, err := f.c.Claim(ctx, "d", g.Ref(), ClaimOptions{})
		if err != nil || dcl.Slot != "master#1" {
			t.Fatalf("d's claim: %+v, %v; want master#1", dcl, err)
		}
		if err := f.c.OfferSlots(ctx, "d", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Index: 1, Avoid: []string{"master"}, Acyclic: true}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("a's extra claim took %s, a partial source's slot: %v", cl.Slot, err)
		}
		if err := f.c.Finish(ctx, dcl, 1); err != nil {
			t.Fatal(err)
		}
		extra, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Index: 1, Avoid: []string{"master"}, Acyclic: true})
		if err != nil || extra.Source != "d" || extra.Index != 1 {
			t.Fatalf("acyclic extra claim: %+v, %v", extra, err)
		}
		if ttl := f.rdb.PTTL(ctx, k.Lease("a/1")).Val(); ttl <= 0 {
			t.Fatalf("extra claim has no lease of its own: %v", ttl)
		}
		if _, err := f.c.Renew(ctx, extra); err != nil {
			t.Fatal(err)
		}
		if err := f.c.Release(ctx, extra); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(f.members(k.Sync()), "d#0") || !slices.Contains(f.members(k.Running()), "a") {
			t.Fatalf("after release: sync %v running %v", f.members(k.Sync()), f.members(k.Running()))
		}
		if _, err := f.c.Renew(ctx, first); err != nil {
			t.Fatalf("the first claim lost with the extra: %v", err)
		}
		// Extra claims expire on their own; the host stays running.
		f.c = New(f.rdb, Config{Prefix: "{fanout}:", LeaseTTL: 200 * time.Millisecond})
		short, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{Index: 2, Avoid: []string{"master"}, Acyclic: true})
		if err != nil {
			t.Fatal(err)
		}
		expire(t, f, 300*time.Millisecond)
		if n, err := f.c.Reap(ctx); n < 1 || err != nil {
			t.Fatalf("reap of an expired extra claim: %d, %v", n, err)
		}
		if !slices.Contains(f.members(k.Sync()), short.Slot) || !slices.Contains(f.members(k.Running()), "a") {
			t.Errorf("after the extra claim expired: sync %v running %v", f.members(k.Sync()), f.members(k.Running()))
		}
	})
}

// A generation with a destination is of protocol 5 and reads back with
// it; one published after it without a destination is of protocol 4 and
// has none, and a dest field left in the key by a master that predates
// destinations (protocol 4) is not read.
func TestGenerationDest(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g, err := f.c.Publish(ctx, Generation{Path: "/data/m42", Dest: "/srv/app", Digest: strings.Repeat("d", 64), Origin: "master"}, 1)
		if err != nil || g.Proto != ProtoDest {
			t.Fatalf("publish with a destination: %+v, %v", g, err)
		}
		cur, err := f.c.Current(ctx)
		if err != nil || cur.Dest != "/srv/app" || cur.LocalPath() != "/srv/app" || cur.Proto != ProtoDest {
			t.Fatalf("current %+v, %v", cur, err)
		}
		if _, err := f.c.Publish(ctx, Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master"}, 1); err != nil {
			t.Fatal(err)
		}
		if cur, err = f.c.Current(ctx); err != nil || cur.Dest != "" || cur.LocalPath() != "/data/m42" || cur.Proto != ProtoDest-1 {
			t.Fatalf("after a publish without a destination: %+v, %v", cur, err)
		}
		// An older master's publish leaves the field as it was.
		f.rdb.HSet(ctx, f.c.Keys().Generation(), "dest", "/srv/stale")
		if cur, err = f.c.Current(ctx); err != nil || cur.Dest != "" {
			t.Fatalf("a dest field in a protocol-4 generation was read: %+v, %v", cur, err)
		}
	})
}

// An extra claim takes only whole sources' slots (the origin's, finished
// hosts'): a partial source's free slot is most often the end of a chain,
// and at 10,000 simulated hosts one extra claim on the end of the chain as
// it grew left the hosts that came after it without a source until the
// first hosts finished. The newcomer takes it.
func TestExtraClaimTakesWholeSources(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(2)
		f.heartbeat("a", "b", "c", "newcomer")
		// Two chains from the origin: master <- a, master <- b <- c.
		for _, p := range [][2]string{{"a", "master"}, {"b", "master"}, {"c", "b"}} {
			cl, err := f.c.Claim(ctx, p[0], g.Ref(), ClaimOptions{Slots: 2, Offer: 1, Avoid: []string{"a"}})
			if err != nil || cl.Source != p[1] {
				t.Fatalf("%s's claim: %+v, %v; want a slot of %s", p[0], cl, err, p[1])
			}
		}
		// a#0 and c#0 end the two chains; b, serving c, offers b#1 too.
		if err := f.c.OfferSlots(ctx, "b", g.Ref(), 2, false); err != nil {
			t.Fatal(err)
		}
		extra := ClaimOptions{Index: 2, Acyclic: true, Avoid: []string{"master"}}
		for _, h := range []string{"a", "b", "c"} {
			if cl, err := f.c.Claim(ctx, h, g.Ref(), extra); !errors.Is(err, ErrNoSource) {
				t.Fatalf("%s's extra claim took %s (%v); want none: only partial sources' slots are free", h, cl.Slot, err)
			}
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"a#0", "b#1", "c#0"}) {
			t.Fatalf("free slots %v after the extra claims, want a#0 b#1 c#0", got)
		}
		// The newcomer's first claim takes one.
		cl, err := f.c.Claim(ctx, "newcomer", g.Ref(), ClaimOptions{Slots: 2})
		if err != nil || !cl.Partial {
			t.Fatalf("the newcomer's claim: %+v, %v; want a partial source's slot", cl, err)
		}
		// A finished host's free slot is an extra claim's.
		f.heartbeat("whole")
		f.rdb.SAdd(ctx, k.Finished(), "whole")
		if err := f.c.OfferSlots(ctx, "whole", g.Ref(), 1, false); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "c", g.Ref(), extra); err != nil || cl.Slot != "whole#0" {
			t.Fatalf("c's extra claim: %+v, %v; want whole#0", cl, err)
		}
	})
}
