package minion

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/redistest"
)

// A pull whose own claim Redis ended resumes from another source: first
// avoiding the one it lost (after a bypass, a second slot there would
// split that uplink again), then any, the lost one's included. When none
// can be claimed (the generation was cancelled), the pull keeps the lost
// claim to settle with, so the lease key Redis still holds is released.
func TestReplaceLost(t *testing.T) {
	ctx := context.Background()
	_, srv := redistest.Mini(t)
	rdb := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.URL, "redis://")})
	t.Cleanup(func() { rdb.Close() })
	co := coord.New(rdb, coord.Config{Prefix: "{fanout}:"})
	k := co.Keys()
	m := testMinion(t, t.TempDir())
	m.cfg.ID, m.cfg.Poll, m.coord = "h", 10*time.Millisecond, co
	for _, h := range []string{"h", "q"} {
		if _, err := co.Heartbeat(ctx, coord.Host{ID: h, Addr: h + ":7070", Role: "minion"}, coord.Beat{Register: true}); err != nil {
			t.Fatal(err)
		}
	}
	g, err := co.Publish(ctx, coord.Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := co.Claim(ctx, "h", g.Ref(), coord.ClaimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := co.Claim(ctx, "q", g.Ref(), coord.ClaimOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := co.OfferSlots(ctx, "q", g.Ref(), 1, false); err != nil {
		t.Fatal(err)
	}
	// Redis ends h's claim (as a bypass does) and frees its slot (as the
	// reaper would): both master#0 and q#0 are free.
	lose := func(cl coord.Claim) {
		t.Helper()
		rdb.Del(ctx, k.Lease("h"))
		rdb.HDel(ctx, k.Claims(), "h")
		rdb.HDel(ctx, k.Holders(), cl.Slot)
		rdb.SAdd(ctx, k.Sync(), cl.Slot)
	}
	lose(cl)
	src := newSource(m, g.ID, cl)
	// A request in flight to the lost source ends at once: that source's
	// uplink is for the slot's next holder. An extra source's goes on.
	first := src.sw.peers()[0]
	cancelled, extraCancelled := false, false
	req := first.begin(func() { cancelled = true })
	extra := &feed{cl: coord.Claim{Host: "h", Index: 1, Slot: "x#0", Source: "x", Partial: true}}
	src.sw.mu.Lock()
	src.sw.extras[1] = extra
	src.sw.mu.Unlock()
	extra.begin(func() { extraCancelled = true })
	if err := src.replaceLost(ctx, cl, time.Second); err != nil {
		t.Fatal(err)
	}
	if !cancelled || extraCancelled {
		t.Errorf("requests cancelled: to the lost source %v (want true), to an extra source %v (want false)", cancelled, extraCancelled)
	}
	first.end(req)
	src.sw.mu.Lock()
	delete(src.sw.extras, 1)
	src.sw.mu.Unlock()
	now := src.claim()
	if now == nil || now.Source != "q" {
		t.Fatalf("resumed from %+v, want q (not the source it lost)", now)
	}
	// Lost again with only its lost source's slot free: it takes that at
	// the second attempt. Its request there goes on: the slot is its own
	// again.
	lose(*now)
	rdb.SRem(ctx, k.Sync(), cl.Slot) // the master's slot h first lost
	rdb.SRem(ctx, k.SyncFull(), cl.Slot)
	cancelled = false
	req = src.sw.peers()[0].begin(func() { cancelled = true })
	if err := src.replaceLost(ctx, *now, time.Second); err != nil {
		t.Fatal(err)
	}
	if again := src.claim(); again == nil || again.Source != "q" {
		t.Fatalf("resumed from %+v, want q, the only source free", again)
	}
	if cancelled {
		t.Error("the request to a slot claimed again was cancelled")
	}
	src.sw.peers()[0].end(req)

	// A cancelled generation: no claim; the lost claim stays to settle.
	last := *src.claim()
	if err := co.Cancel(ctx, g.Ref(), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := co.Renew(ctx, last); !errors.Is(err, coord.ErrLeaseLost) {
		t.Fatalf("renewal in a cancelled generation: %v, want ErrLeaseLost", err)
	}
	cancelled = false
	src.sw.peers()[0].begin(func() { cancelled = true })
	if err := src.replaceLost(ctx, last, 200*time.Millisecond); !errors.Is(err, coord.ErrStale) {
		t.Fatalf("replace in a cancelled generation: %v, want ErrStale", err)
	}
	if cancelled {
		t.Error("a request was cancelled with no next source claimed: the pull keeps what it has until it settles")
	}
	if c := src.claim(); c == nil || c.Slot != last.Slot {
		t.Fatalf("claim after a failed replace: %+v, want the lost one, %s", c, last.Slot)
	}
	if err := co.Fail(ctx, *src.claim(), coord.SourceOK, "cancelled", 0); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, k.Lease("h")).Val(); n != 0 {
		t.Fatal("the lease key outlived the pull's settling")
	}
}

// A partial source that does not have the manifest yet (it offered itself
// as soon as it claimed its own source) is asked again until it has it; a
// whole source's ErrStale, and any other error, is returned at once.
func TestAskManifestWaitsForAPartialSource(t *testing.T) {
	ctx := context.Background()
	calls := 0
	get := func(_ context.Context, addr string, gen int64) ([]byte, error) {
		calls++
		if calls < 3 {
			return nil, fmt.Errorf("manifest of generation %d from %s: %w", gen, addr, peer.ErrStale)
		}
		return []byte("manifest"), nil
	}
	enc, err := askManifest(ctx, get, coord.Claim{SourceAddr: "p:7070", Partial: true}, 4)
	if err != nil || string(enc) != "manifest" || calls != 3 {
		t.Fatalf("askManifest of a partial source: %q, %v after %d asks; want the manifest at the third", enc, err, calls)
	}
	calls = 0
	if _, err := askManifest(ctx, get, coord.Claim{SourceAddr: "w:7070"}, 4); !errors.Is(err, peer.ErrStale) || calls != 1 {
		t.Fatalf("askManifest of a whole source: %v after %d asks; want ErrStale at once", err, calls)
	}
	calls = 0
	dead := func(context.Context, string, int64) ([]byte, error) { calls++; return nil, peer.ErrUnavailable }
	if _, err := askManifest(ctx, dead, coord.Claim{SourceAddr: "p:7070", Partial: true}, 4); !errors.Is(err, peer.ErrUnavailable) || calls != 1 {
		t.Fatalf("askManifest of an unreachable partial source: %v after %d asks; want ErrUnavailable at once", err, calls)
	}
}

// A rescue claim made with the pull's first claim (coord.Claim.Rescue) is
// the swarm's from the start, and its lease is renewed before the swarm
// is active (a scan of the local tree may outlast a lease).
func TestRescueWithFirstClaimRenewed(t *testing.T) {
	ctx := context.Background()
	_, srv := redistest.Mini(t)
	rdb := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(srv.URL, "redis://")})
	t.Cleanup(func() { rdb.Close() })
	co := coord.New(rdb, coord.Config{Prefix: "{fanout}:", LeaseTTL: time.Minute})
	k := co.Keys()
	m := testMinion(t, t.TempDir())
	m.cfg.ID, m.cfg.Sources, m.coord = "h", 3, co
	for _, h := range []string{"a", "h"} {
		if _, err := co.Heartbeat(ctx, coord.Host{ID: h, Addr: h + ":7070", Role: "minion"}, coord.Beat{Register: true}); err != nil {
			t.Fatal(err)
		}
	}
	g, err := co.Publish(ctx, coord.Generation{Path: "/data/m42", Digest: strings.Repeat("d", 64), Origin: "master", OriginAddr: "10.0.0.1:7070"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := co.OfferOrigin(ctx, "master", g.Ref(), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := co.Claim(ctx, "a", g.Ref(), coord.ClaimOptions{Offer: 1, OfferRescue: true}); err != nil {
		t.Fatal(err)
	}
	cl, err := co.Claim(ctx, "h", g.Ref(), coord.ClaimOptions{RescueIndex: 1})
	if err != nil || cl.Rescue == nil || cl.Rescue.Slot != "master#64" {
		t.Fatalf("h's claim: %+v, %v; want a#0 with the origin's rescue slot", cl, err)
	}
	src := newSource(m, g.ID, cl)
	if src.claim().Rescue != nil {
		t.Fatal("the pull's own claim still carries the rescue claim")
	}
	ps := src.sw.renewable()
	if src.sw.active.Load() || len(ps) != 1 || !ps[0].rescue || ps[0].cl.Slot != "master#64" || ps[0].cl.Index != 1 {
		t.Fatalf("renewable before the swarm is active: %+v, want the rescue claim on master#64", ps)
	}
	if err := rdb.PExpire(ctx, k.Lease("h/1"), 5*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	src.sw.renew(ctx)
	if ttl, err := rdb.PTTL(ctx, k.Lease("h/1")).Result(); err != nil || ttl < 30*time.Second {
		t.Fatalf("rescue lease TTL after a renewal: %s, %v; want about a minute", ttl, err)
	}
	if ps := src.sw.renewable(); len(ps) != 1 {
		t.Fatalf("the rescue claim was dropped by its renewal: %+v", ps)
	}
	src.sw.close(ctx)
	if n, _ := rdb.Exists(ctx, k.Lease("h/1")).Result(); n != 0 {
		t.Fatal("the rescue claim's lease outlived the swarm's close")
	}
}
