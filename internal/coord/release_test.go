package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestRenewReport: a renewal that carries progress records it and beats
// for the host (and its groups), in one script; a plain renewal does not.
func TestRenewReport(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a")
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		before := f.rdb.ZScore(ctx, k.Heartbeats(), "a").Val()
		f.advance(3 * time.Second)
		if _, err := f.c.Renew(ctx, cl); err != nil {
			t.Fatal(err)
		}
		if f.rdb.HExists(ctx, k.Progress(), "a").Val() {
			t.Fatal("a plain renewal wrote progress")
		}
		time.Sleep(5 * time.Millisecond) // Redis TIME moves on
		if _, err := f.c.RenewReport(ctx, cl, Progress{Gen: g.ID, Source: cl.Slot, Done: 5, Total: 10}, []string{"web"}, nil); err != nil {
			t.Fatal(err)
		}
		var p Progress
		if err := json.Unmarshal([]byte(f.rdb.HGet(ctx, k.Progress(), "a").Val()), &p); err != nil || p.Done != 5 || p.Total != 10 || p.Gen != g.ID {
			t.Fatalf("progress %+v, %v", p, err)
		}
		if after := f.rdb.ZScore(ctx, k.Heartbeats(), "a").Val(); after <= before {
			t.Errorf("heartbeat score %v, was %v: the renewal did not beat", after, before)
		}
		if _, err := f.rdb.ZScore(ctx, k.GroupHeartbeats("web"), "a").Result(); err != nil {
			t.Errorf("group heartbeat index: %v", err)
		}
	})
}

// TestRenewReportOthers: one call renews the host's other claims too,
// each with its own lease, and says of each whether it was kept: a lease
// that vanished is re-created from its record, and a claim whose record
// and slot went to another host is lost, while the others are renewed.
func TestRenewReportOthers(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(3)
		f.heartbeat("a", "b")
		first, others := f.claimSeveral("a", g, 2)
		// Extra 1's lease vanishes (Redis lost it); extra 2's claim ends
		// and its slot goes to b.
		if err := f.rdb.Del(ctx, k.Lease(others[0].id())).Err(); err != nil {
			t.Fatal(err)
		}
		if err := f.c.Release(ctx, others[1]); err != nil {
			t.Fatal(err)
		}
		if cl, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); err != nil || cl.Slot != others[1].Slot {
			t.Fatalf("b's claim: %+v, %v; want %s", cl, err, others[1].Slot)
		}
		if err := f.rdb.PExpire(ctx, k.Lease(first.id()), time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		res, err := f.c.RenewReport(ctx, first, Progress{Gen: g.ID, Source: first.Slot}, nil, others)
		if err != nil {
			t.Fatal(err)
		}
		if c := res.Claims; len(c) != 3 || c[0].Err != nil || c[0].Restored || c[1].Err != nil || !c[1].Restored || !errors.Is(c[2].Err, ErrLeaseLost) {
			t.Fatalf("renewals %+v; want the first renewed, extra 1 re-created, extra 2 lost", c)
		}
		// The origin's three slots are held (a's two, b's one): none is
		// free for an extra claim; b's release frees one.
		if res.Free != 0 {
			t.Errorf("renewal found %d slots free, want 0", res.Free)
		}
		bcl := Claim{Host: "b", Gen: g.Ref(), Slot: others[1].Slot, Lease: 15 * time.Second}
		if err := f.c.Release(ctx, bcl); err != nil {
			t.Fatal(err)
		}
		if res, err := f.c.RenewReport(ctx, first, Progress{Gen: g.ID, Source: first.Slot}, nil, others[:1]); err != nil || res.Free != 1 {
			t.Errorf("renewal after a release: %d slots free (%v), want 1", res.Free, err)
		}
		for _, cl := range []Claim{first, others[0]} {
			if ttl := f.rdb.PTTL(ctx, k.Lease(cl.id())).Val(); ttl < 10*time.Second {
				t.Errorf("lease of %s: %v left after the renewal", cl.id(), ttl)
			}
		}
	})
}

// TestLightRenewal: once the host's clock offset to Redis is known, a
// renewal is plain commands, no script: every lease extended by Redis's
// clock, the lease-expiry index and the heartbeat scored at Redis time,
// the progress written, the free slots counted. The reaper expires nothing
// a light renewal keeps, whatever the index says. A cancelled generation,
// or a lease gone, takes the script, which reports the claims lost or
// re-creates the lease.
func TestLightRenewal(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(3)
		f.heartbeat("a") // measures the clock offset
		first, others := f.claimSeveral("a", g, 1)
		sent := &sentNames{}
		f.rdb.AddHook(sent)
		scripted := func() bool {
			names := sent.take()
			return slices.Contains(names, "evalsha") || slices.Contains(names, "eval")
		}
		for _, cl := range []Claim{first, others[0]} {
			f.rdb.PExpire(ctx, k.Lease(cl.id()), time.Second)
		}
		f.advance(5 * time.Second)
		at, ok := f.c.beatTime()
		if !ok {
			t.Fatal("clock offset not known after a heartbeat")
		}
		res, err := f.c.RenewReport(ctx, first, Progress{Gen: g.ID, Source: first.Slot, Done: 7, Total: 9}, []string{"web"}, others)
		if err != nil {
			t.Fatal(err)
		}
		if scripted() {
			t.Fatal("the renewal ran a script")
		}
		if c := res.Claims; len(c) != 2 || c[0] != (Renewal{}) || c[1] != (Renewal{}) || res.Free != 1 {
			t.Fatalf("renewals %+v, %d free; want both renewed, 1 slot free", c, res.Free)
		}
		for _, cl := range []Claim{first, others[0]} {
			if ttl := f.rdb.PTTL(ctx, k.Lease(cl.id())).Val(); ttl < 14*time.Second {
				t.Errorf("lease of %s: %v left after the renewal", cl.id(), ttl)
			}
			if s := f.rdb.ZScore(ctx, k.LeaseIndex(), cl.id()).Val(); int64(s) != at.Add(15*time.Second).UnixMilli() {
				t.Errorf("lease index of %s scored %.0f, want %d", cl.id(), s, at.Add(15*time.Second).UnixMilli())
			}
		}
		for _, key := range []string{k.Heartbeats(), k.GroupHeartbeats("web")} {
			if s := f.rdb.ZScore(ctx, key, "a").Val(); int64(s) != at.UnixMilli() {
				t.Errorf("%s scored %.0f, want %d", key, s, at.UnixMilli())
			}
		}
		var p Progress
		if err := json.Unmarshal([]byte(f.rdb.HGet(ctx, k.Progress(), "a").Val()), &p); err != nil || p.Done != 7 {
			t.Fatalf("progress %+v, %v", p, err)
		}

		// The index says due (as a host's estimate of Redis time may lag),
		// the lease says not: the reaper only brings the index up to date.
		f.rdb.ZAdd(ctx, k.LeaseIndex(), redis.Z{Score: 1, Member: first.id()})
		if n, err := f.c.Reap(ctx); n != 0 || err != nil {
			t.Fatalf("reap of a claim kept by light renewals: %d, %v", n, err)
		}
		if s := f.rdb.ZScore(ctx, k.LeaseIndex(), first.id()).Val(); s < float64(time.Now().UnixMilli()) {
			t.Errorf("lease index of %s left at %.0f", first.id(), s)
		}

		// An index entry gone: the renewal writes it again, so the reaper
		// still finds the claim once its lease runs out.
		f.rdb.ZRem(ctx, k.LeaseIndex(), others[0].id())
		sent.take()
		if _, err := f.c.RenewReport(ctx, first, Progress{Gen: g.ID, Source: first.Slot}, nil, others); err != nil || scripted() {
			t.Fatalf("renewal: %v (or it ran a script)", err)
		}
		if _, err := f.rdb.ZScore(ctx, k.LeaseIndex(), others[0].id()).Result(); err != nil {
			t.Errorf("lease index of %s not written again: %v", others[0].id(), err)
		}
		// A lease holding another claim's value (Redis went back to an
		// older state): the script sets it right from the claim record.
		f.rdb.Set(ctx, k.Lease(first.id()), fmt.Sprintf("%d other#0", g.ID), 15*time.Second)
		res, err = f.c.RenewReport(ctx, first, Progress{Gen: g.ID, Source: first.Slot}, nil, others)
		if err != nil || !scripted() || !res.Claims[0].Restored {
			t.Fatalf("renewal of a lease holding another claim: %+v, %v; want the script, the lease re-created", res, err)
		}
		if v := f.rdb.Get(ctx, k.Lease(first.id())).Val(); v != fmt.Sprintf("%d %s", g.ID, first.Slot) {
			t.Fatalf("lease after the renewal: %q", v)
		}
		// A lease gone: the script re-creates it.
		f.rdb.Del(ctx, k.Lease(others[0].id()))
		sent.take()
		res, err = f.c.RenewReport(ctx, first, Progress{Gen: g.ID, Source: first.Slot}, nil, others)
		if err != nil || !scripted() || res.Claims[0] != (Renewal{}) || !res.Claims[1].Restored {
			t.Fatalf("renewal of a vanished lease: %+v, %v; want the script, the lease re-created", res, err)
		}
		// The generation cancelled: the script, and every claim lost.
		if err := f.c.Cancel(ctx, g.Ref(), "bad build"); err != nil {
			t.Fatal(err)
		}
		res, err = f.c.RenewReport(ctx, first, Progress{Gen: g.ID, Source: first.Slot}, nil, others)
		if err != nil || !scripted() || !errors.Is(res.Claims[0].Err, ErrLeaseLost) || !errors.Is(res.Claims[1].Err, ErrLeaseLost) {
			t.Fatalf("renewal in a cancelled generation: %+v, %v; want the script, both claims lost", res, err)
		}
	})
}

// TestOutlook: what an extra claim would find, counted in plain commands,
// by every renewal and by every claim that takes a slot: the free slots
// of whole sources (a partial source's free slot, most often the end of a
// chain, an extra claim leaves to newcomers), and the hosts waiting for a
// first source, to which it would yield.
func TestOutlook(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a", "b")
		a, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{}); !errors.Is(err, ErrNoSource) {
			t.Fatalf("b's claim: %v, want no source", err)
		}
		if err := f.c.OfferSlots(ctx, "master", g.Ref(), 3, true); err != nil {
			t.Fatal(err)
		}
		if err := f.c.OfferPartial(ctx, "a", g.Ref(), 2); err != nil {
			t.Fatal(err)
		}
		check := func(what string, got, want Outlook) {
			t.Helper()
			if got != want {
				t.Errorf("%s: %+v, want %+v", what, got, want)
			}
		}
		o, err := f.c.Outlook(ctx)
		if err != nil {
			t.Fatal(err)
		}
		check("outlook while b waits", o, Outlook{Free: 2, Starved: 1})
		if a.Outlook == nil {
			t.Fatal("a's claim counted no outlook")
		}
		check("a's claim, of the origin's only slot", *a.Outlook, Outlook{})
		r, err := f.c.RenewReport(ctx, a, Progress{Gen: g.ID}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		check("light renewal while b waits", Outlook{r.Free, r.Starved}, Outlook{Free: 2, Starved: 1})
		b, err := f.c.Claim(ctx, "b", g.Ref(), ClaimOptions{})
		if err != nil || b.Source != "master" {
			t.Fatalf("b's claim: %+v, %v; want one of the origin's slots", b, err)
		}
		if b.Outlook == nil {
			t.Fatal("b's claim counted no outlook")
		}
		check("b's claim, of one of the origin's two", *b.Outlook, Outlook{Free: 1})
		if o, err = f.c.Outlook(ctx); err != nil {
			t.Fatal(err)
		}
		check("outlook once b pulls", o, Outlook{Free: 1})
		f.rdb.Del(ctx, k.Lease(a.id())) // the renewal takes the script
		if r, err = f.c.RenewReport(ctx, a, Progress{Gen: g.ID}, nil, nil); err != nil || !r.Claims[0].Restored {
			t.Fatalf("renewal of a vanished lease: %+v, %v", r, err)
		}
		check("scripted renewal once b pulls", Outlook{r.Free, r.Starved}, Outlook{Free: 1})
	})
}

// TestCancelScript: cancel fails the running generation with its reason,
// withdraws its free slots, and the renewal of a claim of it is refused;
// a generation not running cannot be cancelled.
func TestCancelScript(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(2)
		f.heartbeat("a")
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.c.Cancel(ctx, Ref{ID: g.ID, Digest: "other"}, "x"); !errors.Is(err, ErrStale) {
			t.Fatalf("cancel of another digest: %v", err)
		}
		if err := f.c.Cancel(ctx, g.Ref(), "bad build"); err != nil {
			t.Fatal(err)
		}
		cur, _ := f.c.Current(ctx)
		if cur.State != StateFailed || cur.Error != "bad build" || len(f.members(k.Sync())) != 0 {
			t.Fatalf("after cancel: %+v, sync %v", cur, f.members(k.Sync()))
		}
		if _, err := f.c.Renew(ctx, cl); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("renewal of a cancelled generation: %v", err)
		}
		if err := f.c.Cancel(ctx, g.Ref(), "again"); !errors.Is(err, ErrStale) {
			t.Fatalf("cancel of a failed generation: %v", err)
		}
	})
}

// TestFleetSwitchScripts: the switch is ordered once, only for a running
// generation switched fleet-wide; a switch is recorded only for the
// current generation; status is done only once every expected host
// switched, and ready before.
func TestFleetSwitchScripts(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		plain := f.publish(1)
		if at, err := f.c.OrderSwitch(ctx, plain.Ref()); err != nil || !at.IsZero() {
			t.Fatalf("order for a generation switched per host: %v, %v", at, err)
		}
		g, err := f.c.Publish(ctx, Generation{ID: plain.ID, Path: "/data/m42", Digest: "d2", Origin: "master", OriginAddr: "10.0.0.1:7070", Atomic: 2, Switch: SwitchFleet}, 1)
		if err != nil {
			t.Fatal(err)
		}
		f.heartbeat("a", "b")
		for _, h := range []string{"a", "b"} {
			if err := f.c.Finish(ctx, Claim{Host: h, Gen: g.Ref()}, 1); err != nil {
				t.Fatal(err)
			}
		}
		st, err := f.c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Generation.SwitchPending() || st.State != StateRunning || !st.Ready() {
			t.Fatalf("all finished, no order: pending %v state %s ready %v", st.Generation.SwitchPending(), st.State, st.Ready())
		}
		at, err := f.c.OrderSwitch(ctx, g.Ref())
		if err != nil || at.IsZero() {
			t.Fatalf("order: %v, %v", at, err)
		}
		if again, err := f.c.OrderSwitch(ctx, g.Ref()); err != nil || !again.IsZero() {
			t.Fatalf("second order: %v, %v", again, err)
		}
		if err := f.c.Switched(ctx, "a", Ref{ID: g.ID, Digest: "old"}); !errors.Is(err, ErrStale) {
			t.Fatalf("switch of another generation: %v", err)
		}
		if err := f.c.Switched(ctx, "a", g.Ref()); err != nil {
			t.Fatal(err)
		}
		if st, _ = f.c.Status(ctx); st.State != StateRunning || st.Generation.SwitchAt.IsZero() || !slices.Equal(st.Switched, []string{"a"}) {
			t.Fatalf("one of two switched: state %s, %+v, switched %v", st.State, st.Generation, st.Switched)
		}
		if err := f.c.Switched(ctx, "b", g.Ref()); err != nil {
			t.Fatal(err)
		}
		if st, _ = f.c.Status(ctx); st.State != StateDone {
			t.Fatalf("both switched: state %s", st.State)
		}
	})
}

// TestRestoredClaimKeepsZone: a claim record re-created by a renewal (Redis
// lost it) ends with the source's zone, as the claim wrote it: the reaper
// and the rescue rule read it there.
func TestRestoredClaimKeepsZone(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(1)
		f.heartbeat("a")
		cl, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cl.SourceZone = "rack-1"
		f.rdb.HDel(ctx, k.Claims(), "a")
		f.rdb.Del(ctx, k.Lease("a"))
		f.rdb.SAdd(ctx, k.Sync(), cl.Slot) // the slot came back free meanwhile
		if restored, err := f.c.Renew(ctx, cl); !restored || err != nil {
			t.Fatalf("renew: %v, %v", restored, err)
		}
		if rec := f.rdb.HGet(ctx, k.Claims(), "a").Val(); !strings.HasSuffix(rec, " rack-1") {
			t.Fatalf("restored claim record %q lacks the source's zone", rec)
		}
	})
}

// TestFinishReleasesOthers: a finish given the host's other claims ends
// them in the same call, as Release would (lease, record and holder gone,
// the slot free again, a release event each); one of a source in another
// zone is released on its own; the host is then a whole source.
func TestFinishReleasesOthers(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		g := f.publish(3)
		f.heartbeat("a")
		first, others := f.claimSeveral("a", g, 2)
		if n := len(f.members(k.Sync())); n != 0 {
			t.Fatalf("%d slots free with the origin's three claimed", n)
		}
		// The second extra names a source zone of its own (as a claim
		// across zones would): Finish releases it apart.
		others[1].SourceZone = "elsewhere"
		if err := f.c.Finish(ctx, first, 1, others...); err != nil {
			t.Fatal(err)
		}
		for _, cl := range append([]Claim{first}, others...) {
			if n, _ := f.rdb.Exists(ctx, k.Lease(cl.id())).Result(); n != 0 {
				t.Errorf("lease of %s left after the finish", cl.id())
			}
			if v, _ := f.rdb.HGet(ctx, k.Claims(), cl.id()).Result(); v != "" {
				t.Errorf("claim record of %s left: %q", cl.id(), v)
			}
			if v, _ := f.rdb.HGet(ctx, k.Holders(), cl.Slot).Result(); v != "" {
				t.Errorf("slot %s still held by %q", cl.Slot, v)
			}
		}
		if got := f.members(k.Sync()); !slices.Equal(got, []string{"a#0", "master#0", "master#1", "master#2"}) {
			t.Errorf("free slots after the finish: %v, want the origin's three and a's", got)
		}
		events, err := f.rdb.XRange(ctx, k.Events(), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		releases := 0
		for _, e := range events {
			if e.Values["type"] == "release" && e.Values["host"] == "a" {
				releases++
			}
		}
		if releases != 2 {
			t.Errorf("%d release events, want one per extra claim", releases)
		}
		if !slices.Contains(f.members(k.Finished()), "a") {
			t.Error("a is not listed finished")
		}
	})
}

// claimSeveral makes host's first claim of g and then n extra claims (n
// may be 0).
func (f *fixture) claimSeveral(host string, g Generation, n int) (Claim, []Claim) {
	f.t.Helper()
	ctx := context.Background()
	first, err := f.c.Claim(ctx, host, g.Ref(), ClaimOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var others []Claim
	for i := 1; i <= n; i++ {
		cl, err := f.c.Claim(ctx, host, g.Ref(), ClaimOptions{Index: i, Avoid: []string{host}})
		if err != nil {
			f.t.Fatalf("extra claim %d: %v", i, err)
		}
		others = append(others, cl)
	}
	return first, others
}

// A lease that vanished is re-created only while its generation is
// current: after a publish, the renewal of a claim of the old one is lost.
func TestRenewRecreatesOnlyForTheCurrentGeneration(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		k := f.c.Keys()
		f.heartbeat("a")
		cl, _ := f.claimSeveral("a", f.publish(1), 0)
		f.rdb.Del(ctx, k.Lease(cl.id()))
		if restored, err := f.c.Renew(ctx, cl); !restored || err != nil {
			t.Fatalf("renewal of a vanished lease of the current generation: %v, %v; want re-created", restored, err)
		}
		f.rdb.Del(ctx, k.Lease(cl.id()))
		f.publish(1)
		if _, err := f.c.Renew(ctx, cl); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("renewal of a vanished lease of a superseded generation: %v; want ErrLeaseLost", err)
		}
	})
}
