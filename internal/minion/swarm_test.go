package minion

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/peer"
)

// msClock returns times ms milliseconds after the moment it was called:
// the clock the gate tests step by hand.
func msClock() func(ms int) time.Time {
	t0 := time.Now()
	return func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
}

// The rescue gate opens when, over a window of gateWindow or more
// (firstGateWindow for the first), the grandparent's prefix of the file
// grows gateFactor times as fast as the parent's (and by gateMin at
// least), and closes when the parent keeps up or cannot be asked; a
// shorter window judges nothing.
func TestRescueGate(t *testing.T) {
	const mib = 1 << 20
	at := msClock()
	var g rescueGate
	g.update(8*mib, 0, at(0))
	if g.open {
		t.Fatal("open at the first poll")
	}
	g.update(12*mib, mib/4, at(100)) // 16 times as fast, but within the window
	if g.open {
		t.Fatal("judged before a window passed")
	}
	g.update(13*mib, mib/2, at(150)) // +5 MiB against +0.5 MiB
	if !g.open {
		t.Fatal("closed while the grandparent gains 10 times as fast as the parent")
	}
	g.update(17*mib, mib/2+4*mib, at(300)) // keeping up, 150 ms on
	if !g.open {
		t.Fatal("judged a second window of 150 ms: only the first is that short")
	}
	g.update(17*mib, mib/2+3*mib, at(450)) // +4 MiB against +3 MiB: keeping up
	if g.open {
		t.Fatal("open while the parent keeps up with the grandparent")
	}
	g.update(17*mib+mib/2, mib/2+3*mib, at(750)) // a stall, but under gateMin
	if g.open {
		t.Fatal("open on less than gateMin of growth")
	}
	g.update(30*mib, 4*mib, at(1050))
	if g.open {
		t.Fatal("opened on one window after the first: a parent catching up looks the same")
	}
	g.update(40*mib, 4*mib+mib/2, at(1350))
	if !g.open {
		t.Fatal("closed while the parent stalls for a second window")
	}
	g.update(41*mib, -1, at(1450))
	if g.open || g.known {
		t.Fatal("a parent that cannot be asked leaves the gate open")
	}
	g.update(41*mib, 4*mib, at(1500))
	g.update(45*mib, 4*mib, at(1650))
	if g.open {
		t.Fatal("a gate started again judged a window of 150 ms: only a source's first is that short")
	}
	g.update(46*mib, 4*mib, at(1800))
	if g.open {
		t.Fatal("a gate started again opened on one window: only a source's first is enough")
	}
	g.update(50*mib, 4*mib, at(2100))
	if !g.open {
		t.Fatal("closed while the parent stalls, after two whole windows")
	}
}

// A parent that was slow because its own source was, and catches up once
// that source speeds up (a bypass upstream), lags the grandparent for a
// window: that does not open the gate, which would split the
// grandparent's uplink between the parent and this host.
func TestRescueGateParentCatchingUp(t *testing.T) {
	const mib = 1 << 20
	at := msClock()
	var g rescueGate
	// Both crawl at the slow relay's pace for the first windows.
	g.update(0, 0, at(0))
	g.update(mib/4, mib/5, at(150))
	g.update(mib/2, mib/2, at(450))
	if g.open || !g.judged {
		t.Fatalf("open %v, judged %v after two slow windows in step", g.open, g.judged)
	}
	// The grandparent bypasses the slow relay: +6 MiB; the parent, a hop
	// behind, +1.5 MiB.
	g.update(6*mib+mib/2, 2*mib, at(750))
	if g.open {
		t.Fatal("opened while the parent catches up a hop behind")
	}
	// The parent keeps pace from then on.
	g.update(11*mib, 6*mib+mib/2, at(1050))
	g.update(16*mib, 11*mib, at(1350))
	if g.open {
		t.Fatal("opened while the parent keeps pace")
	}
}

// prefixBytes counts the bytes before the first chunk missing.
func TestPrefixBytes(t *testing.T) {
	cs := []manifest.Chunk{{Off: 0, Len: 10}, {Off: 10, Len: 20}, {Off: 30, Len: 30}, {Off: 60, Len: 40}}
	for _, c := range []struct {
		all  bool
		have []bool
		want int64
	}{
		{true, nil, 100},
		{false, nil, 0},
		{false, []bool{true, true, false, true}, 30},
		{false, []bool{false, true, true, true}, 0},
		{false, []bool{true, true, true}, 60}, // a short bitmap: the rest missing
	} {
		if got := prefixBytes(cs, c.all, c.have); got != c.want {
			t.Errorf("prefixBytes(all %v, %v) = %d, want %d", c.all, c.have, got, c.want)
		}
	}
}

// A whole rescue source whose gate a confirmed probe opened is credited
// with both probes, the one confirmed and the one confirming, and leads
// the pull at once: the two together ask for more than a link's burst,
// which is what the lead otherwise waits quickBusy or leadBytes for.
func TestProbedSourceLeadsAtOnce(t *testing.T) {
	m := testMinion(t, t.TempDir())
	sw := partialSwarm(m, 3)
	primary := sw.peers()[0]
	primary.mu.Lock()
	primary.busy, primary.bytes = time.Second, 2<<20 // 2 MiB/s: a slow first host
	primary.mu.Unlock()
	origin := &feed{cl: coord.Claim{Host: "h", Index: 1, Slot: "master#64", Source: "master"}, rescue: true}
	sw.extras[1] = origin
	a := &assembler{m: m, sw: sw}
	g := rescueGate{growth: 2 << 20, grown: true}
	silent := 0
	// A run of whole chunks comes short of what a probe asks for: these
	// are a netbed run's, 3,060,497 bytes in all, under leadBytes.
	const first, second = 1002366, 2058131
	if !a.probed(context.Background(), origin, &g, first, 5*time.Millisecond, &silent) || g.open {
		t.Fatalf("open %v after the first fast probe: it asks for confirmation first", g.open)
	}
	if r, _, n := origin.measure(); n != 0 || r != 0 {
		t.Fatalf("a probe that did not open the gate counted: %d bytes", n)
	}
	if got := sw.lead(); got != primary {
		t.Fatalf("lead = %s before the confirmation", got.cl.Source)
	}
	if !a.probed(context.Background(), origin, &g, second, 75*time.Millisecond, &silent) || !g.open {
		t.Fatal("the confirming probe, as fast, did not open the gate")
	}
	if _, busy, n := origin.measure(); n != first+second || busy != 80*time.Millisecond {
		t.Fatalf("credited %d bytes in %v, want both probes: %d in 80ms", n, busy, first+second)
	}
	if got := sw.lead(); got != origin {
		t.Fatalf("lead = %s after a confirmed probe at 18 times the parent's rate, want the origin at once", got.cl.Source)
	}
}

// A source leads a pull once it delivers leadFactor times the leader's
// rate: the old leader's requests in flight are cancelled and the change
// counted; a source not yet measured, or not fast enough, does not.
func TestLead(t *testing.T) {
	m := testMinion(t, t.TempDir())
	m.cfg.Bypass = true
	sw := partialSwarm(m, 3)
	primary := sw.peers()[0]
	cancelled := false
	req := primary.begin(func() { cancelled = true })
	primary.mu.Lock()
	primary.busy, primary.bytes = time.Second, 1<<20 // 1 MiB/s
	primary.mu.Unlock()
	rescue := &feed{cl: coord.Claim{Host: "h", Index: 1, Slot: "g#64", Source: "g", Partial: true}, rescue: true}
	sw.extras[1] = rescue
	if got := sw.lead(); got != primary {
		t.Fatalf("lead = %s before the rescue source was measured, want the primary", got.cl.Source)
	}
	rescue.busy, rescue.bytes = time.Second, 3<<19 // 1.5 MiB/s: not twice as fast
	if got := sw.lead(); got != primary {
		t.Fatalf("lead = %s at 1.5 times the primary's rate, want the primary", got.cl.Source)
	}
	if cancelled {
		t.Fatal("the primary's request was cancelled with no new leader")
	}
	rescue.busy, rescue.bytes = 100*time.Millisecond, 2<<20 // 20 MiB/s, but in less than quickBusy and a burst's size
	if got := sw.lead(); got != primary {
		t.Fatalf("lead = %s after 2 MiB in 100 ms, want the primary: a burst is no measure", got.cl.Source)
	}
	rescue.busy, rescue.bytes = 100*time.Millisecond, leadBytes // 30 MiB/s, more than a burst
	if got := sw.lead(); got != rescue {
		t.Fatalf("lead = %s after %d bytes at 30 times the primary's rate in 100 ms, want the rescue source", got.cl.Source, leadBytes)
	}
	if !cancelled {
		t.Fatal("the old leader's request in flight was not cancelled")
	}
	// Again, measured the usual way.
	primary.end(req)
	sw.mu.Lock()
	sw.leader = nil
	sw.bypassAsked = false
	sw.mu.Unlock()
	<-sw.bypass // asked by the change above
	cancelled = false
	req = primary.begin(func() { cancelled = true })
	primary.mu.Lock()
	primary.busy, primary.bytes = time.Second, 1<<20 // 1 MiB/s
	primary.mu.Unlock()
	rescue.busy, rescue.bytes = 500*time.Millisecond, 4<<20 // 8 MiB/s
	if got := sw.lead(); got != rescue {
		t.Fatalf("lead = %s at 8 times the primary's rate, want the rescue source", got.cl.Source)
	}
	if !cancelled {
		t.Fatal("the old leader's request in flight was not cancelled")
	}
	primary.end(req)
	if got := sw.lead(); got != rescue {
		t.Fatalf("lead went back to %s", got.cl.Source)
	}
	if n := metrics.Value(m.cfg.Metrics.LeadChanges); n != 2 {
		t.Fatalf("%v lead changes counted, want 2", n)
	}
	// At 8 times the rate of a partial relay, the rescue source takes its
	// place: the watch loop is asked to bypass it, once.
	select {
	case got := <-sw.bypass:
		if got.rescue != rescue || got.relay.Slot != "p#0" {
			t.Fatalf("bypass asked for %s in favour of %s, want p#0 in favour of the rescue source", got.relay.Slot, got.rescue.cl.Source)
		}
	default:
		t.Fatal("no bypass asked of a relay outrun 8 times")
	}
	sw.askBypass(rescue, primary.cl)
	select {
	case <-sw.bypass:
		t.Fatal("bypass asked twice in one pull")
	default:
	}
}

// With Bypass on, a lead change asks for a bypass only when the new leader
// is a rescue source at bypassFactor times the rate of the pull's own
// source, a partial relay: not a faster extra source, not a whole source's
// claim, not at 2.5 times (then at the next rebalance, once it runs 8
// times as fast); with it off, never.
func TestBypassAsked(t *testing.T) {
	// asked takes the request the swarm made, if any.
	asked := func(sw *swarm) (bypassAsk, bool) {
		select {
		case a := <-sw.bypass:
			return a, true
		default:
			return bypassAsk{}, false
		}
	}
	for _, c := range []struct {
		name                 string
		partial, rescue, off bool
		bytes                int64 // the new leader's in a second, against 1 MiB
		want                 bool
	}{
		{"rescue at 8x of a relay", true, true, false, 8 << 20, true},
		{"rescue at 8x of a relay, bypass off", true, true, true, 8 << 20, false},
		{"rescue at 2.5x", true, true, false, 5 << 19, false},
		{"extra source at 8x", true, false, false, 8 << 20, false},
		{"rescue at 8x of a whole source", false, true, false, 8 << 20, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := testMinion(t, t.TempDir())
			m.cfg.Bypass = !c.off
			src := &source{m: m, cl: &coord.Claim{Host: "h", Slot: "p#0", Source: "p", Partial: c.partial}}
			sw := newSwarm(m, src, 3)
			src.sw = sw
			primary := sw.peers()[0]
			primary.busy, primary.bytes = time.Second, 1<<20
			other := &feed{cl: coord.Claim{Host: "h", Index: 1, Slot: "g#0", Source: "g", Partial: true}, rescue: c.rescue}
			other.busy, other.bytes = time.Second, c.bytes
			sw.extras[1] = other
			if got := sw.lead(); got != other {
				t.Fatalf("lead = %s, want the faster source", got.cl.Source)
			}
			if _, ok := asked(sw); ok != c.want {
				t.Fatalf("bypass asked %v, want %v", ok, c.want)
			}
			sw.checkBypass() // the next rebalance
			if a, ok := asked(sw); ok {
				t.Fatalf("bypass of %s asked again at the rebalance", a.relay.Slot)
			}
			// A rescue source that took the lead below bypassFactor and
			// runs far ahead since is bypassed for at the next rebalance
			// (with Bypass on); not when only the relay's rate fell since
			// (this host's own downlink is what is slow: demoted, the
			// relay gets what the leader leaves of it).
			if c.partial && c.rescue && !c.want {
				primary.busy, primary.bytes = 10*time.Second, 1<<20
				sw.checkBypass()
				if a, ok := asked(sw); ok {
					t.Fatalf("bypass of %s asked when only its rate fell, to a tenth of the leader's", a.relay.Slot)
				}
				other.busy, other.bytes = 2*time.Second, 16<<20
				sw.checkBypass()
				a, ok := asked(sw)
				if ok != !c.off {
					t.Fatalf("bypass asked %v once the leading rescue source ran 8 times as fast, want %v", ok, !c.off)
				}
				if ok && (a.rescue != other || a.relay.Slot != "p#0") {
					t.Fatalf("bypass of %s for %s", a.relay.Slot, a.rescue.cl.Source)
				}
			}
		})
	}
}

// runLimit sizes a source's requests to a quarter second of its rate,
// within minRun and maxRun; take never makes a run longer than the limit
// but always takes one chunk.
func TestRunLimitAndTake(t *testing.T) {
	var p feed
	if got := p.runLimit(); got != firstRun {
		t.Fatalf("runLimit unmeasured = %d, want %d", got, firstRun)
	}
	for _, c := range []struct {
		bytes int64
		want  int64
	}{{2 << 20, 512 << 10}, {100 << 20, maxRun}, {1 << 10, minRun}} {
		p.busy, p.bytes = time.Second, c.bytes
		if got := p.runLimit(); got != c.want {
			t.Errorf("runLimit at %d B/s = %d, want %d", c.bytes, got, c.want)
		}
	}
	chunks := make([]manifest.Chunk, 10)
	for i := range chunks {
		chunks[i] = manifest.Chunk{Off: int64(i) * 100 << 10, Len: 100 << 10}
	}
	j := &job{chunks: chunks, done: make([]bool, 10), inflight: make([]int, 10), first: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, changed: make(chan struct{}, 1)}
	if i, k := j.take(nil, nil, 250<<10, false, endgameBack); i != 0 || k != 2 {
		t.Fatalf("take(limit 250 KiB) = [%d, %d), want [0, 2)", i, k)
	}
	if i, k := j.take(nil, nil, 1, false, endgameBack); i != 2 || k != 3 {
		t.Fatalf("take(limit 1 B) = [%d, %d), want one chunk, [2, 3)", i, k)
	}
	// From the back (a probe): the run ending at the last free chunk,
	// then the one before it; chunks a source does not have are skipped.
	if i, k := j.take(nil, nil, 250<<10, true, endgameBack); i != 8 || k != 10 {
		t.Fatalf("take(back, limit 250 KiB) = [%d, %d), want [8, 10)", i, k)
	}
	have := []bool{true, true, true, true, true, true, false, true, false, false}
	if i, k := j.take(have, nil, 250<<10, true, endgameBack); i != 7 || k != 8 {
		t.Fatalf("take(back, have) = [%d, %d), want [7, 8)", i, k)
	}
	if i, k := j.take(nil, nil, 1<<20, true, endgameBack); i != 3 || k != 7 {
		t.Fatalf("take(back, limit 1 MiB) = [%d, %d), want the free run [3, 7)", i, k)
	}
	// Every chunk asked once: the endgame doubles the run that ends at
	// the last, which its source sends last, or a rescue source the run
	// at the front of the stream.
	if i, k := j.take(nil, nil, 250<<10, false, endgameBack); i != 8 || k != 10 {
		t.Fatalf("endgame take = [%d, %d), want [8, 10)", i, k)
	}
	if i, k := j.take(nil, nil, 250<<10, false, endgameFront); i != 0 || k != 2 {
		t.Fatalf("endgame take (rescue) = [%d, %d), want [0, 2)", i, k)
	}
	if i, k := j.take(nil, nil, 250<<10, false, endgameNone); i != k {
		t.Fatalf("take with no endgame, every chunk asked = [%d, %d), want nothing", i, k)
	}
}

// The endgame is the pull's: a file whose chunks were all asked for is
// not doubled while another file being fetched has chunks nobody was
// asked for, and is once none has.
func TestEndgameIsThePulls(t *testing.T) {
	newJob := func() *job {
		chunks := make([]manifest.Chunk, 4)
		for i := range chunks {
			chunks[i] = manifest.Chunk{Off: int64(i) * 100 << 10, Len: 100 << 10}
		}
		return &job{chunks: chunks, done: make([]bool, 4), inflight: make([]int, 4), first: []int{0, 1, 2, 3}, changed: make(chan struct{}, 1)}
	}
	a := &assembler{jobs: map[*job]bool{}}
	x, y := newJob(), newJob()
	a.jobs[x], a.jobs[y] = true, true
	if i, k := x.take(nil, nil, runBytes, false, endgameBack); i != 0 || k != 4 {
		t.Fatalf("x: took [%d, %d), want all of it, [0, 4)", i, k)
	}
	if !a.othersFresh(x) || a.othersFresh(y) {
		t.Fatalf("othersFresh(x) = %v, othersFresh(y) = %v: y has chunks nobody was asked for, x none", a.othersFresh(x), a.othersFresh(y))
	}
	if i, k := y.take(nil, nil, 200<<10, false, endgameBack); i != 0 || k != 2 {
		t.Fatalf("y: took [%d, %d), want [0, 2)", i, k)
	}
	if !a.othersFresh(x) {
		t.Fatal("othersFresh(x) with y's chunks 2 and 3 not asked for: false")
	}
	y.land(2)
	if i, k := y.take(nil, nil, 200<<10, false, endgameBack); i != 3 || k != 4 {
		t.Fatalf("y: took [%d, %d), want its last, [3, 4)", i, k)
	}
	if a.othersFresh(x) {
		t.Fatal("othersFresh(x) with every chunk of y landed or asked for: true")
	}
	delete(a.jobs, y)
	y.untake(3, 4) // y is no longer fetched: its chunks count for nobody
	if a.othersFresh(x) {
		t.Fatal("othersFresh(x) counts a file no longer being fetched")
	}
}

// The lead moving between three sources, each demoted while the same run
// was in flight, leaves that run asked of all three: the source that leads
// takes it again (skipMine), the others do not. Before, none did, and the
// pull waited for it for good.
func TestLeaderTakesWhatAllWereAsked(t *testing.T) {
	chunks := make([]manifest.Chunk, 4)
	for i := range chunks {
		chunks[i] = manifest.Chunk{Off: int64(i) * 100 << 10, Len: 100 << 10}
	}
	j := &job{chunks: chunks, done: make([]bool, 4), inflight: make([]int, 4), first: []int{0, 1, 2, 3}, changed: make(chan struct{}, 1)}
	mines := []map[int]bool{{}, {}, {}}
	for n, mine := range mines {
		i, k := j.take(nil, skipMine(mine, true), runBytes, false, endgameBack)
		if i != 0 || k != 4 {
			t.Fatalf("source %d leading took [%d, %d), want [0, 4)", n, i, k)
		}
		for x := i; x < k; x++ {
			mine[x] = true
		}
		j.untake(i, k) // demoted: its request cancelled, nothing landed
	}
	for n, mine := range mines {
		if i, k := j.take(nil, skipMine(mine, false), runBytes, false, endgameBack); i != k {
			t.Errorf("source %d, not leading, took [%d, %d) back", n, i, k)
		}
	}
	if i, k := j.take(nil, skipMine(mines[1], true), runBytes, false, endgameBack); i != 0 || k != 4 {
		t.Fatalf("the leader took [%d, %d), want the run every source was asked for, [0, 4)", i, k)
	}
}

// A source that does not answer for the manifest is not waited for: after
// manifestHedge the origin is asked too, and its manifest (the published
// one) is taken; the source's request is cancelled, nothing left behind.
// A source that answers at once with a manifest other than the published
// one fails the fetch (it is a bad source), as without the hedge.
func TestFetchManifestHedges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	secret := [][]byte{[]byte("hedge-secret-0123456789")}
	m := testMinion(t, t.TempDir())
	serve := func(man *manifest.Manifest) (string, string) {
		t.Helper()
		enc, err := man.Encode()
		if err != nil {
			t.Fatal(err)
		}
		s := peer.NewServer(peer.ServerConfig{Secrets: secret, Log: m.cfg.Log})
		s.Set(&peer.Snapshot{Gen: 7, Digest: manifest.Digest(enc), Encoded: enc, Manifest: man, Root: t.TempDir()})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		sctx, stop := context.WithCancel(ctx)
		go func() { done <- s.Serve(sctx, ln) }()
		t.Cleanup(func() { stop(); <-done })
		return ln.Addr().String(), manifest.Digest(enc)
	}
	published := &manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o755}}}
	origin, digest := serve(published)
	other, _ := serve(&manifest.Manifest{Entries: []manifest.Entry{{Path: ".", Type: manifest.Dir, Mode: 0o700}}})

	// A source that accepts and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()

	m.client = peer.NewClient(peer.ClientConfig{Secrets: secret, DialTimeout: 10 * time.Second})
	g := coord.Generation{ID: 7, Digest: digest, OriginAddr: origin, Files: 1}
	enc, err := m.fetchManifest(ctx, g, coord.Claim{SourceAddr: ln.Addr().String()}, "")
	if err != nil || manifest.Digest(enc) != digest {
		t.Fatalf("silent source: fetchManifest = %v; want the origin's manifest", err)
	}
	enc, err = m.fetchManifest(ctx, g, coord.Claim{SourceAddr: ln.Addr().String()}, origin)
	if err != nil || manifest.Digest(enc) != digest {
		t.Fatalf("silent first host of a chain: fetchManifest = %v; want the origin's manifest", err)
	}
	if _, err := m.fetchManifest(ctx, g, coord.Claim{SourceAddr: other}, ""); !errors.Is(err, errBadManifest) {
		t.Fatalf("source with another manifest: fetchManifest = %v; want %v", err, errBadManifest)
	}
	// A large generation is asked of its source only: the silent one
	// fails at the context's end, not with the origin's answer.
	big := g
	big.Files = 1 << 20
	sctx, scancel := context.WithTimeout(ctx, 2*manifestHedge)
	defer scancel()
	if _, err := m.fetchManifest(sctx, big, coord.Claim{SourceAddr: ln.Addr().String()}, ""); err == nil {
		t.Fatal("a large manifest was fetched from the origin, not only from the source")
	}
}

// The host behind a chain's first host (its rescue source is the origin)
// asks the origin for the manifest sooner than the others do.
func TestHedgeAfter(t *testing.T) {
	g := coord.Generation{ID: 7, OriginAddr: "10.0.0.1:7070", Files: 1, Bytes: 32 << 20}
	if got := hedgeAfter(g, g.OriginAddr); got != headHedge {
		t.Errorf("behind the first host: hedge after %v, want %v", got, headHedge)
	}
	if got := hedgeAfter(g, "10.0.0.2:7070"); got != manifestHedge {
		t.Errorf("deeper in the chain: hedge after %v, want %v", got, manifestHedge)
	}
	if got := hedgeAfter(g, ""); got != manifestHedge {
		t.Errorf("no rescue source: hedge after %v, want %v", got, manifestHedge)
	}
	big := g
	big.Files, big.Bytes = 1000, 4<<30 // about 1.7 MB of manifest
	if got := hedgeAfter(big, g.OriginAddr); got != manifestHedge {
		t.Errorf("behind the first host, %d bytes of manifest: hedge after %v, want %v", manifestSize(big), got, manifestHedge)
	}
}

// The manifest's hedge is chosen by the pull's rescue source: the one the
// swarm holds (not an extra that is not a rescue, nor one dropped).
func TestRescueAddr(t *testing.T) {
	m := testMinion(t, t.TempDir())
	sw := partialSwarm(m, 3)
	if got := sw.rescueAddr(); got != "" {
		t.Fatalf("no rescue source: %q", got)
	}
	sw.add(1, coord.Claim{Source: "x", Slot: "x#1", SourceAddr: "10.0.0.9:7070"}, false)
	if got := sw.rescueAddr(); got != "" {
		t.Fatalf("an extra source that is not a rescue: %q", got)
	}
	sw.add(2, coord.Claim{Source: "o", Slot: "o#64", SourceAddr: "10.0.0.1:7070"}, true)
	if got := sw.rescueAddr(); got != "10.0.0.1:7070" {
		t.Fatalf("rescue source at 10.0.0.1:7070: %q", got)
	}
	sw.mu.Lock()
	sw.extras[2].dropped = true
	sw.mu.Unlock()
	if got := sw.rescueAddr(); got != "" {
		t.Fatalf("a dropped rescue source: %q", got)
	}
}

// A rescue source that holds the whole file is judged by probes: one is
// due once a window measured the parent's growth (a window closes after
// gateWindow once probeBytes/2 landed, or after 4 gateWindows); a probe
// that brings gateFactor times the parent's growth, confirmed at once by
// a larger one, opens the gate for probeEvery, a slower one does not, and the pause before the next probe
// doubles after each that left the gate closed.
func TestRescueGateWhole(t *testing.T) {
	const kib = 1 << 10
	at := msClock()
	var g rescueGate
	g.judge(0, flow{}, at(0))
	if g.probe(at(0)) {
		t.Fatal("a probe due before the parent's growth was measured")
	}
	g.judge(100*kib, flow{at(250), 200 * kib}, at(300)) // a slow chunk at a time: the window goes on
	if g.probe(at(300)) {
		t.Fatal("a window of 100 KiB judged")
	}
	g.judge(1536*kib, flow{at(250), 1600 * kib}, at(600)) // 1.6 MiB in the 0.35 s since the stream began: 4.5 MiB/s
	if !g.probe(at(600)) {
		t.Fatal("no probe due at a parent growth of 4.5 MiB/s")
	}
	if g.probe(at(700)) {
		t.Fatal("a second probe due before the first ended")
	}
	// The probe brings 1 MiB in 0.25 s: 4 MiB/s, less than the parent's:
	// a healthy parent sharing the uplink.
	if g.probed(probeBytes, 250*time.Millisecond, at(850)) || g.open {
		t.Fatal("opened on a probe 1.6 times as fast as the parent")
	}
	if g.probe(at(1700)) {
		t.Fatal("a probe due before a new window measured the parent")
	}
	g.judge(1636*kib, flow{}, at(1700))
	g.judge(1736*kib, flow{}, at(2900)) // 100 KiB in 4 windows: it closes anyway
	if !g.probe(at(2900)) {
		t.Fatal("no probe due at a parent growth of 83 KiB/s")
	}
	// A probe fast enough is confirmed at once by a larger one before
	// the gate opens.
	if g.probed(minRun, 100*time.Millisecond, at(3000)) || g.open {
		t.Fatal("opened on one probe 15 times as fast as the parent, unconfirmed")
	}
	if !g.probe(at(3000)) || g.probeSize() != confirmBytes {
		t.Fatalf("no confirming probe of %d bytes due at once (size %d)", confirmBytes, g.probeSize())
	}
	if !g.probed(confirmBytes, 200*time.Millisecond, at(3200)) || !g.open {
		t.Fatal("closed after two probes 15 and 120 times as fast as the parent")
	}
	if g.probeSize() != probeBytes {
		t.Fatal("the probe after a confirmation is not the plain size")
	}
	g.judge(1836*kib, flow{}, at(3700))
	if !g.open {
		t.Fatal("closed within probeEvery of the probe that opened it")
	}
	g.judge(1936*kib, flow{}, at(4300))
	if g.open {
		t.Fatal("still open probeEvery after the probe")
	}
	if g.probed(minRun/2, 50*time.Millisecond, at(4400)) || g.confirm {
		t.Fatal("a probe of less than minRun opened the gate, or asked a confirmation")
	}
	// Closed probes pause longer each time: 1 s, then 2 s.
	g.judge(2000*kib, flow{}, at(4500))
	g.judge(2600*kib, flow{}, at(4900))
	if g.probe(at(4900)) {
		t.Fatal("a probe due within a second of the last")
	}
	if !g.probe(at(5400)) {
		t.Fatal("no probe due a second after the last")
	}
	if g.probed(minRun, 300*time.Millisecond, at(5700)) {
		t.Fatal("a probe slower than the parent opened the gate")
	}
	g.judge(2700*kib, flow{}, at(5800))
	g.judge(3300*kib, flow{}, at(6200))
	if g.probe(at(7600)) {
		t.Fatal("a probe due within 2 s of the second closed one")
	}
	if !g.probe(at(7800)) {
		t.Fatal("no probe due 2 s after the second closed one")
	}
	g.judge(-1, flow{}, at(7900))
	if g.open || g.known || g.grown {
		t.Fatal("a parent that is not partial leaves the gate judging")
	}
}

// claimCounter is a coordinator whose claims find no source and whose
// outlook is o; only Claim and Outlook may be called.
type claimCounter struct {
	Coordinator
	o              coord.Outlook
	claims, probes int
}

func (c *claimCounter) Claim(context.Context, string, coord.Ref, coord.ClaimOptions) (coord.Claim, error) {
	c.claims++
	return coord.Claim{}, &coord.NoSourceError{}
}

func (c *claimCounter) Outlook(context.Context) (coord.Outlook, error) {
	c.probes++
	return c.o, nil
}

// An extra claim is not tried while no slot is free for one (a renewal or
// an outlook counted none, or the last claim found none) or while hosts
// wait for a first source (the claim would yield to them); when a renewal
// counts more than there were at the last miss, the next grow tries at
// once whatever its back-off; while the count stays, the back-off holds.
// Without a count of the last second, grow asks for one (plain commands)
// before it claims.
func TestGrowWaitsForFreeSlots(t *testing.T) {
	ctx := context.Background()
	m := testMinion(t, t.TempDir())
	m.cfg.Poll = time.Second // a queued host's pace: a second or more
	co := &claimCounter{}
	m.coord = co
	sw := partialSwarm(m, 2)
	for _, step := range []struct {
		renewal *coord.Outlook // what a renewal counts before the grow
		stale   bool           // the last count is older than outlookFresh (and its pause, unless paced, over)
		paced   bool           // the pause after a count of waiting hosts runs still
		probe   coord.Outlook  // what an outlook would count
		claims  int            // claims made so far, after the grow
		probes  int            // outlooks asked so far
		what    string
	}{
		{nil, false, false, coord.Outlook{Free: 1}, 1, 1, "before any renewal: asked, then tried"},
		{nil, false, false, coord.Outlook{Free: 1}, 1, 1, "after a claim found nothing, before a renewal: neither"},
		{&coord.Outlook{}, false, false, coord.Outlook{}, 1, 1, "after a renewal counted no slot free: not tried"},
		{&coord.Outlook{Free: 2}, false, false, coord.Outlook{}, 2, 1, "after a renewal counted slots free, backed off far: tried at once"},
		{&coord.Outlook{Free: 2}, false, false, coord.Outlook{}, 2, 1, "with no more slots free than at the miss: the back-off holds"},
		{&coord.Outlook{Free: 3}, false, false, coord.Outlook{}, 3, 1, "after a renewal counted one more slot free: tried"},
		{&coord.Outlook{Free: 9, Starved: 4}, false, false, coord.Outlook{}, 3, 1, "while a renewal counts hosts waiting: not tried"},
		{nil, true, false, coord.Outlook{Free: 9, Starved: 2}, 3, 2, "an outlook counts hosts waiting: not tried"},
		{nil, true, true, coord.Outlook{Free: 9}, 3, 2, "hosts waited at the last count, older than outlookFresh: not asked again before a queued host's pace"},
		{nil, true, false, coord.Outlook{Free: 9}, 4, 3, "an outlook counts none waiting and slots free: tried"},
	} {
		if step.renewal != nil {
			sw.outlook(*step.renewal, time.Now())
		}
		co.o = step.probe
		sw.mu.Lock()
		if step.claims == 2 {
			sw.misses, sw.nextGrow = 5, time.Now().Add(time.Hour)
		}
		if step.stale {
			sw.outlookAt = time.Now().Add(-2 * outlookFresh)
			sw.nextGrow = time.Time{} // the yield's pause is over
			if !step.paced {
				sw.askAfter = time.Time{}
			}
		}
		sw.mu.Unlock()
		sw.grow(ctx)
		if co.claims != step.claims || co.probes != step.probes {
			t.Fatalf("%s: %d claims, %d outlooks; want %d, %d", step.what, co.claims, co.probes, step.claims, step.probes)
		}
	}
}

// A whole rescue source's first window measures from the file's first
// bytes: a healthy parent whose stream starts late is measured at its
// rate, not at what the wait before it makes it look; later windows keep
// the longer rule.
func TestRescueGateWholeFirstWindow(t *testing.T) {
	const kib = 1 << 10
	at := msClock()
	var late rescueGate
	late.judge(0, flow{}, at(0))
	late.judge(0, flow{}, at(150))
	late.judge(200*kib, flow{at(240), 220 * kib}, at(250)) // the stream begins
	if late.probe(at(250)) {
		t.Fatal("a probe due 10 ms after the stream began")
	}
	late.judge(200*kib+2400*kib, flow{at(240), 2700 * kib}, at(400))
	if !late.probe(at(400)) {
		t.Fatal("no probe due after the healthy parent's first window")
	}
	if r := late.growth / (1 << 20); r < 16.2 || r > 16.8 {
		t.Errorf("a healthy parent that began late measured at %.2f MiB/s, want 2700 KiB in 0.16 s, 16.5", r)
	}
	if late.window() != firstGateWindow {
		t.Error("a whole source's window changed the loop's poll")
	}
	// After a probe that left the gate closed, the next window is a full
	// one: 300 KiB in 300 ms is not enough.
	if late.probed(probeBytes, 125*time.Millisecond, at(525)) || late.open {
		t.Fatal("a probe at half the parent's rate opened the gate")
	}
	late.judge(3000*kib, flow{at(240), 3100 * kib}, at(1600))
	late.judge(3300*kib, flow{at(240), 3400 * kib}, at(1900))
	if late.probe(at(1900)) {
		t.Fatal("a later window ended early")
	}
}

// A whole rescue source's first window ends firstGateWindow after the
// file's first bytes arrived, measured in bytes arrived, landed or not (a
// relay's stream starting slowly, on the netbed behind a slow first host,
// is measured at its rate; so is a healthy stream of 1 MiB/s whose first
// chunk has not landed, not at nothing), from the gate's start if the
// stream began before it; with no bytes at all, gateWindow after the gate
// began, at nothing.
func TestRescueGateWholeSlowStream(t *testing.T) {
	const kib = 1 << 10
	at := msClock()
	for _, c := range []struct {
		what           string
		start          flow // at startAt, when the gate starts
		startAt        int
		early, due     flow // judged 20 ms before dueAt (no probe due yet), and at dueAt (one due)
		dueAt          int
		minKiB, maxKiB float64 // the growth measured, KiB/s
	}{
		{"a slow stream, 40 KiB in the 150 ms after its first bytes", flow{}, 0,
			flow{at(100), 20 * kib}, flow{at(100), 40 * kib}, 250, 260, 270},
		{"a healthy stream at 1 MiB/s whose first chunk has not landed", flow{}, 0,
			flow{at(100), 100 * kib}, flow{at(100), 160 * kib}, 250, 1000, 1100},
		{"a stream that began before the gate, 26 KiB in the 150 ms since the gate", flow{at(0), 64 * kib}, 200,
			flow{at(0), 80 * kib}, flow{at(0), 90 * kib}, 350, 170, 180},
		{"no bytes at all", flow{}, 0,
			flow{}, flow{}, 300, 0, 0},
	} {
		var g rescueGate
		g.judge(0, c.start, at(c.startAt))
		g.judge(0, c.early, at(c.dueAt-20))
		if g.probe(at(c.dueAt - 20)) {
			t.Errorf("%s: a probe due 20 ms before the window's end", c.what)
			continue
		}
		g.judge(0, c.due, at(c.dueAt))
		if !g.probe(at(c.dueAt)) {
			t.Errorf("%s: no probe due at the window's end", c.what)
			continue
		}
		if r := g.growth / kib; r < c.minKiB || r > c.maxKiB {
			t.Errorf("%s: measured at %.0f KiB/s, want %.0f-%.0f", c.what, r, c.minKiB, c.maxKiB)
		}
	}
}

// A whole rescue source's worker judges the gate every gateTick until the
// first window ended, so the window ends when it is due; after it, and
// for a partial source (whose judging is a have-poll), once a window.
func TestRescueGatePoll(t *testing.T) {
	const kib = 1 << 10
	at := msClock()
	var g rescueGate
	if g.poll(true) != gateTick || g.poll(false) != firstGateWindow {
		t.Fatalf("before any window: poll %v whole, %v partial; want %v, %v", g.poll(true), g.poll(false), gateTick, firstGateWindow)
	}
	g.judge(0, flow{}, at(0))
	g.judge(64*kib, flow{at(10), 100 * kib}, at(20)) // the parent's stream began at 10
	g.judge(200*kib, flow{at(10), 250 * kib}, at(150))
	if g.probe(at(150)) || g.poll(true) != gateTick {
		t.Fatalf("first window ended 140 ms after the stream began (poll %v)", g.poll(true))
	}
	g.judge(230*kib, flow{at(10), 300 * kib}, at(170))
	if !g.probe(at(170)) {
		t.Fatal("no probe due at the tick after the first window ended")
	}
	if g.poll(true) != g.window() {
		t.Errorf("after the first window: poll %v, want the window %v", g.poll(true), g.window())
	}
}

// A probe that came in a link's burst (1 MiB in 9 ms beside a parent at
// the full rate, on the netbed) asks for a confirmation, which the link's
// sustained rate answers: the gate stays closed, and the next probe waits
// its pause.
func TestRescueGateBurstProbe(t *testing.T) {
	at := msClock()
	var g rescueGate
	g.judge(0, flow{}, at(0))
	g.judge(5<<20, flow{at(10), 5 << 20}, at(300)) // the parent grows at ~17 MiB/s: the full link
	if !g.probe(at(300)) {
		t.Fatal("no probe due after a window")
	}
	if g.probed(probeBytes, 9*time.Millisecond, at(310)) || g.open {
		t.Fatal("a burst-fast probe opened the gate")
	}
	if !g.probe(at(310)) {
		t.Fatal("no confirming probe due at once")
	}
	// 2 MiB at the link's 16 MiB/s (half of it still in the burst).
	if g.probed(confirmBytes, 65*time.Millisecond, at(375)) || g.open {
		t.Fatal("the confirmation at the link's own rate opened the gate")
	}
	if g.probe(at(400)) || g.confirm {
		t.Fatal("a probe due again at once after a confirmation said no")
	}
}

// The gates of two files pulled from one whole rescue source share its
// probe schedule: one probe at a time, and the pause after a probe that
// left a gate closed grows across files; a probe that never reported
// holds the others only until its cap has passed, one not sent not at
// all.
func TestProbeClockShared(t *testing.T) {
	at := msClock()
	var clock probeClock
	grown := func() *rescueGate {
		g := &rescueGate{clock: &clock}
		g.judge(0, flow{}, at(0))
		g.judge(1<<20, flow{at(10), 1 << 20}, at(300)) // a parent at about 3.4 MiB/s
		return g
	}
	a, b := grown(), grown()
	if !a.probe(at(300)) {
		t.Fatal("no probe due after the first window")
	}
	if b.probe(at(300)) {
		t.Fatal("a second file's gate probed the source while the first's probe ran")
	}
	if a.probed(64<<10, 600*time.Millisecond, at(900)) { // slow: the gate stays closed, pause 1 s
		t.Fatal("a slow probe opened the gate")
	}
	if b.probe(at(1000)) {
		t.Fatal("the second file's gate probed within the pause after the first's probe")
	}
	if !b.probe(at(1900)) {
		t.Fatal("no probe due after the pause")
	}
	if b.probed(64<<10, 600*time.Millisecond, at(2500)) || clock.pause != 2*probeEvery {
		t.Fatalf("pause after two slow probes of two files %v, want %v", clock.pause, 2*probeEvery)
	}
	// A confirmation that never reported (its run was not taken).
	c := grown()
	if !c.probe(at(4500)) {
		t.Fatal("no probe due after the doubled pause")
	}
	if c.probed(probeBytes, 10*time.Millisecond, at(4510)) || !c.probe(at(4510)) || c.probeSize() != confirmBytes {
		t.Fatal("no confirmation due at once after a fast probe")
	}
	d := grown()
	if d.probe(at(5000)) {
		t.Fatal("a probe due while another file's confirmation could still run")
	}
	if !d.probe(at(4510 + int((probeTime+probeGrace+probeSlack)/time.Millisecond))) {
		t.Fatal("an unreported confirmation held the source's other gates past its cap")
	}
	// A confirmation allowed but not sent (no run to take) gives the
	// source back at once.
	e, f := grown(), grown()
	if e.probed(probeBytes, 10*time.Millisecond, at(7000)) || !e.probe(at(7000)) {
		t.Fatal("no confirmation due at once after a fast probe")
	}
	e.unprobe()
	if !f.probe(at(7010)) {
		t.Fatal("a confirmation not sent held the source's other gates")
	}
}

// A confirmation due is forgotten when the gate starts over (the parent is
// no longer partial) or when it was not taken at once: the next probe is
// a plain one again, which alone never opens the gate.
func TestRescueGateConfirmationForgotten(t *testing.T) {
	at := msClock()
	slowParent := func(g *rescueGate, from int) {
		g.judge(0, flow{}, at(from))
		g.judge(1<<20, flow{at(from + 10), 1 << 20}, at(from+600)) // 1.7 MiB/s
	}
	for _, c := range []struct {
		what  string
		reset func(g *rescueGate, now int) int // returns when the next window starts
	}{
		{"the parent not partial for a while", func(g *rescueGate, now int) int { g.judge(-1, flow{}, at(now)); return now + 100 }},
		{"the confirmation not taken at once", func(g *rescueGate, now int) int { return now + 2000 }},
	} {
		var g rescueGate
		slowParent(&g, 0)
		if !g.probe(at(600)) || g.probed(probeBytes, 10*time.Millisecond, at(610)) {
			t.Fatalf("%s: no probe, or one probe opened the gate", c.what)
		}
		next := c.reset(&g, 610)
		if !g.grown {
			slowParent(&g, next)
			next += 600
		}
		if !g.probe(at(next)) || g.probeSize() != probeBytes {
			t.Fatalf("%s: the next probe is not a plain one (size %d)", c.what, g.probeSize())
		}
		if g.probed(probeBytes, 10*time.Millisecond, at(next+10)) || g.open {
			t.Fatalf("%s: a single fast probe opened the gate", c.what)
		}
	}
}

// A rescue source that brought a link's burst or less, in less than
// quickBusy, does not lead however fast it seemed, unless a gate opened
// on it (gated): in a tree, the one file whose gate opened first may be
// all the rescue source has to give for a while. The bypass of the relay
// it outran waits until it is measured: a burst is not a rate.
func TestGatedLeadsAtOnce(t *testing.T) {
	m := testMinion(t, t.TempDir())
	sw := partialSwarm(m, 3)
	own := sw.peers()[0]
	own.busy, own.bytes = time.Second, 1<<20 // 1 MiB/s, measured
	sw.add(2, coord.Claim{Source: "o", Slot: "o#64", Partial: true}, true)
	sw.mu.Lock()
	rescue := sw.extras[2]
	sw.mu.Unlock()
	rescue.busy, rescue.bytes = 20*time.Millisecond, 2<<20 // 100 MiB/s over a burst
	if got := sw.lead(); got != own {
		t.Fatalf("lead = %s, want the own source: the rescue source is not measured yet", got.cl.Slot)
	}
	m.cfg.Bypass = true
	rescue.gated.Store(true)
	if got := sw.lead(); got != rescue {
		t.Fatalf("lead = %s, want the gated rescue source", got.cl.Slot)
	}
	select {
	case ask := <-sw.bypass:
		t.Fatalf("bypass of %s asked on a burst", ask.relay.Slot)
	default:
	}
	rescue.mu.Lock()
	rescue.busy, rescue.bytes = quickBusy, 4<<20 // 4 MiB in 150 ms: measured, 26 MiB/s
	rescue.mu.Unlock()
	if got := sw.lead(); got != rescue {
		t.Fatalf("lead = %s, want the rescue source still", got.cl.Slot)
	}
	select {
	case ask := <-sw.bypass:
		if ask.relay.Slot != "p#0" || ask.rescue != rescue {
			t.Fatalf("bypass of %s for %s, want p#0 for the rescue source", ask.relay.Slot, ask.rescue.cl.Slot)
		}
	default:
		t.Fatal("no bypass asked once the rescue source, measured, delivers 26 times the relay's rate")
	}
}

// partialSwarm returns the swarm of a pull of m that takes want sources,
// its own claim on p#0, a partial source.
func partialSwarm(m *Minion, want int) *swarm {
	src := &source{m: m, cl: &coord.Claim{Host: "h", Slot: "p#0", Source: "p", Partial: true}}
	sw := newSwarm(m, src, want)
	src.sw = sw
	return sw
}
