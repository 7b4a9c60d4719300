package integration

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/lab"
)

// zoneRun is what one distribution over two zones measured.
type zoneRun struct {
	size        int64            // content bytes of the generation
	crossClaims int              // claims of a source in another zone
	claims      int              // claims in all
	crossBytes  int64            // status: bytes that crossed zones
	perHost     map[string]int64 // status: per host
	zones       map[string]string
}

// runZones distributes a tree from a master in zone a to six minions in
// zones b, a, b, a, b, a. One at a time (together false), each joins once
// the one before holds the generation, so when it claims, a source of its
// own zone is free (but for the first zone-b host, whose zone has none
// yet); together, all six are up when the task is set and claim at once.
// With blind, hosts register their zones (so bytes are attributed the
// same way) but claim without them.
func runZones(t *testing.T, blind, together bool) zoneRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Uploads: 2, BWLimit: 16 << 20, ZoneBlind: blind, MasterZone: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	r := rand.New(rand.NewPCG(11, 12))
	data := make([]byte, 12<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "model.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := lab.SampleTree(filepath.Join(src, "small"), 4<<10, 20); err != nil {
		t.Fatal(err)
	}
	run := zoneRun{zones: map[string]string{l.Master.ID: "a"}}
	var hosts []*lab.Host
	for _, zone := range []string{"b", "a", "b", "a", "b", "a"} {
		h := l.NewHost()
		h.Zone = zone
		run.zones[h.ID] = zone
		hosts = append(hosts, h)
	}
	if together {
		for _, h := range hosts {
			if err := l.StartMinion(ctx, h); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(ctx, t, "the minions to register", func() bool {
			hs, err := l.Coord.Hosts(ctx)
			return err == nil && len(hs) == len(hosts)
		})
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	var g coord.Generation
	waitFor(ctx, t, "the generation", func() bool {
		g, _ = l.Coord.Current(ctx)
		return g.ID > 0
	})
	run.size = g.Bytes
	for _, h := range hosts {
		if together {
			break
		}
		if err := l.StartMinion(ctx, h); err != nil {
			t.Fatal(err)
		}
		waitFor(ctx, t, h.ID+" to hold the generation", func() bool {
			st, err := l.Coord.Status(ctx)
			return err == nil && slices.Contains(st.Finished, h.ID) && !slices.Contains(st.Running, h.ID)
		})
	}
	st, err := l.WaitGeneration(ctx, g.ID-1, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCopies(t, l, src, -1)
	if st.Generation.OriginZone != "a" {
		t.Errorf("generation origin zone %q, want a", st.Generation.OriginZone)
	}
	for _, h := range st.Hosts {
		if h.Zone != run.zones[h.ID] {
			t.Errorf("%s registered zone %q, want %q", h.ID, h.Zone, run.zones[h.ID])
		}
	}
	evs, err := l.Coord.Events(ctx, "0", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type != "claim" {
			continue
		}
		run.claims++
		source := e.Slot[:max(strings.LastIndexByte(e.Slot, '#'), 0)]
		if run.zones[e.Host] != run.zones[source] {
			run.crossClaims++
		}
	}
	run.crossBytes, run.perHost = st.CrossZoneTotal(), st.CrossZone
	return run
}

// TestZonesPreferSameZone: with zones, every host claims a source of its
// own zone whenever one is free, so the content crosses from zone a to
// zone b exactly once (the first zone-b host, whose zone had no source),
// and status counts exactly those bytes, on that host. The same fleet
// claiming blind to zones (zones registered, so the bytes are counted
// alike) moves more across.
func TestZonesPreferSameZone(t *testing.T) {
	zoned := runZones(t, false, false)
	first := "minion-01" // the first zone-b host
	if zoned.crossClaims != 1 {
		t.Errorf("zoned: %d of %d claims crossed zones, want 1 (%s's of the origin)", zoned.crossClaims, zoned.claims, first)
	}
	if zoned.crossBytes != zoned.size || zoned.perHost[first] != zoned.size || len(zoned.perHost) != 1 {
		t.Errorf("zoned: status counts %d bytes across zones (%v); want the content's %d, all by %s", zoned.crossBytes, zoned.perHost, zoned.size, first)
	}
	blind := runZones(t, true, false)
	t.Logf("content %d bytes; zoned: %d of %d claims and %d bytes crossed zones; zone-blind: %d of %d claims and %d bytes (%.1f copies)",
		zoned.size, zoned.crossClaims, zoned.claims, zoned.crossBytes, blind.crossClaims, blind.claims, blind.crossBytes, float64(blind.crossBytes)/float64(zoned.size))
	if blind.crossBytes <= zoned.crossBytes || blind.crossClaims <= zoned.crossClaims {
		t.Errorf("zone-blind claims moved %d bytes (%d claims) across zones, zoned %d (%d): zones should move less", blind.crossBytes, blind.crossClaims, zoned.crossBytes, zoned.crossClaims)
	}
}

// TestZonesUpgrade: a fleet moves to zones host by host. First a master
// without a zone, two minions of a fanout before zones and two upgraded
// ones with zones a and b: the task completes, and only bytes between the
// two zoned hosts can count as crossing zones. Then the old minions are
// upgraded into zones a and b (restarted on their state: nothing moves),
// the master last into zone a: the next task completes too, and zone b
// received the new content from zone a at least once, counted by status.
func TestZonesUpgrade(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Config{Dir: t.TempDir(), Uploads: 2, BWLimit: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	src := filepath.Join(l.Master.Root, task)
	mustMkdir(t, src)
	r := rand.New(rand.NewPCG(21, 22))
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "model.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	old1, old2 := l.NewHost(), l.NewHost()
	old1.PreZones, old2.PreZones = true, true
	za, zb := l.NewHost(), l.NewHost()
	za.Zone, zb.Zone = "a", "b"
	for _, h := range []*lab.Host{old1, old2, za, zb} {
		if err := l.StartMinion(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st, err := l.WaitGeneration(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCopies(t, l, src, -1)
	for h, n := range st.CrossZone {
		if h != za.ID && h != zb.ID {
			t.Errorf("%s, of a fanout before zones, is counted %d bytes across zones", h, n)
		}
	}
	for _, h := range st.Hosts {
		if want := map[string]string{za.ID: "a", zb.ID: "b"}[h.ID]; h.Zone != want {
			t.Errorf("%s registered zone %q, want %q", h.ID, h.Zone, want)
		}
	}
	t.Logf("mixed fleet: generation %d done; %d bytes crossed zones (%v)", st.Generation.ID, st.CrossZoneTotal(), st.CrossZone)

	// Upgrade the old minions, then the master, one at a time.
	for _, up := range []struct {
		h    *lab.Host
		zone string
	}{{old1, "a"}, {old2, "b"}} {
		if err := up.h.Stop(); err != nil {
			t.Fatal(err)
		}
		up.h.PreZones, up.h.Zone = false, up.zone
		if err := l.StartMinion(ctx, up.h); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Master.Stop(); err != nil {
		t.Fatal(err)
	}
	l.Master.Zone = "a"
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the upgraded hosts to register their zones", func() bool {
		hosts, err := l.Coord.Hosts(ctx)
		if err != nil {
			return false
		}
		for _, h := range hosts {
			if h.Zone == "" {
				return false
			}
		}
		return len(hosts) == 4
	})
	// The upgraded master has resumed the generation (before the tree
	// changes under it) when its slots are on offer in its zone's index.
	waitFor(ctx, t, "the upgraded master to offer its slots in zone a", func() bool {
		n, err := l.Redis.SCard(ctx, l.Coord.Keys().SyncFullZone("a")).Result()
		if err != nil || n == 0 {
			return false
		}
		ok, _ := l.Redis.SIsMember(ctx, l.Coord.Keys().SyncFullZone("a"), l.Master.ID+"#0").Result()
		return ok
	})
	changed := make([]byte, 1<<20)
	for i := range changed {
		changed[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "new.bin"), changed, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.Set(ctx, task); err != nil {
		t.Fatal(err)
	}
	st, err = l.WaitGeneration(ctx, st.Generation.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCopies(t, l, src, -1)
	if st.Generation.OriginZone != "a" {
		t.Errorf("generation origin zone %q after the master's upgrade", st.Generation.OriginZone)
	}
	var intoB int64
	for _, h := range []*lab.Host{old2, zb} {
		intoB += st.CrossZone[h.ID]
	}
	t.Logf("all zoned: generation %d done; %d bytes crossed zones (%v); %d changed", st.Generation.ID, st.CrossZoneTotal(), st.CrossZone, len(changed))
	if intoB < int64(len(changed)) {
		t.Errorf("zone b received %d bytes from zone a, less than the %d changed: the cross-zone count is short", intoB, len(changed))
	}
}

// TestZonesCrossOnce: six minions in zones a and b claim at once; one host
// of zone b brings the content across and the other two wait for its
// slots rather than cross too, while zone a pulls from the origin: the
// content crosses exactly once. Blind to zones, the same fleet moves it
// across several times: where the claims happen to chain every host of one
// zone before the other's (now and then), once too, so the blind
// fleet gets three tries to show it.
func TestZonesCrossOnce(t *testing.T) {
	zoned := runZones(t, false, true)
	if zoned.crossBytes != zoned.size || len(zoned.perHost) != 1 {
		t.Errorf("zoned, all at once: status counts %d bytes across zones (%v); want the content's %d, by one host", zoned.crossBytes, zoned.perHost, zoned.size)
	}
	for try := 1; ; try++ {
		blind := runZones(t, true, true)
		t.Logf("content %d bytes, all at once; zoned: %d of %d claims and %d bytes crossed zones; zone-blind (try %d): %d of %d claims and %d bytes (%.1f copies)",
			zoned.size, zoned.crossClaims, zoned.claims, zoned.crossBytes, try, blind.crossClaims, blind.claims, blind.crossBytes, float64(blind.crossBytes)/float64(zoned.size))
		if blind.crossBytes > zoned.crossBytes {
			return
		}
		if try == 3 {
			t.Errorf("zone-blind claims moved %d bytes across zones in each of 3 runs, zoned %d: zones should move less", blind.crossBytes, zoned.crossBytes)
			return
		}
	}
}
