package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/minion"
	"github.com/fanout/fanout/internal/peer"
)

// startPull starts a modelled pull of host from srcs and returns its
// outcome channel and a reader of the bytes it was told of.
func startPull(t *testing.T, nw *network, host string, srcs ...string) (<-chan error, func() int64) {
	t.Helper()
	var got int64
	done := make(chan error, 1)
	p := minion.ModelPull{Host: host, Gen: coord.Generation{ID: 1}, Sources: func() []string { return srcs },
		Planned: func(int64) {}, Received: func(n int64) { got += n }}
	go func() { done <- nw.Pull(context.Background(), p) }()
	for nw.pulling() == 0 || !nw.isPulling(host) {
		time.Sleep(time.Millisecond)
	}
	return done, func() int64 { return got }
}

func (nw *network) isPulling(host string) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for pl := range nw.pulls {
		if pl.p.Host == host {
			return true
		}
	}
	return false
}

// A chain: a pulls from the origin at B; b pulls from a, still pulling,
// and never holds more than a does; c shares the origin's upload with a.
func TestNetworkChainAndSharing(t *testing.T) {
	nw := newNetwork(1000, 10*time.Second, 0, time.Minute) // B = 100 bytes/s
	nw.origin = "origin"
	aDone, aGot := startPull(t, nw, "a", "origin")
	now := time.Now()
	nw.step(now, 1) // a alone on the origin: B
	if got := aGot(); got != 100 {
		t.Fatalf("a after 1 s alone on the origin: %d bytes, want 100", got)
	}
	bDone, bGot := startPull(t, nw, "b", "a")
	nw.step(now.Add(time.Second), 1)
	if a, b := aGot(), bGot(); a != 200 || b != 100 {
		t.Fatalf("after 2 s: a %d (want 200), b %d (want 100: a's upload, up to what a held)", a, b)
	}
	cDone, cGot := startPull(t, nw, "c", "origin")
	nw.step(now.Add(2*time.Second), 1)
	if a, c := aGot(), cGot(); a != 250 || c != 50 {
		t.Fatalf("a and c share the origin: a %d (want 250), c %d (want 50)", a, c)
	}
	if b := bGot(); b > aGot() {
		t.Fatalf("b holds %d bytes, more than its source a (%d)", b, aGot())
	}
	for i := 3; aGot() < 1000; i++ {
		nw.step(now.Add(time.Duration(i)*time.Second), 1)
	}
	if err := <-aDone; err != nil {
		t.Fatalf("a: %v", err)
	}
	// a holds everything now: b catches up at its link's rate, to S.
	before := bGot()
	nw.step(now.Add(time.Hour), 1)
	if d := bGot() - before; d != min(100, 1000-before) {
		t.Fatalf("b from a whole source: %d bytes in a second from %d, want %d", d, before, min(100, 1000-before))
	}
	for i := 0; bGot() < 1000; i++ {
		nw.step(now.Add(time.Hour+time.Duration(i)*time.Second), 1)
	}
	if err := <-bDone; err != nil || bGot() != 1000 {
		t.Fatalf("b: %v after %d bytes", err, bGot())
	}
	select {
	case err := <-cDone:
		t.Fatalf("c ended early: %v", err)
	default:
	}
}

// A pull whose sources have nothing it lacks fails after the stall time,
// as a peer error a minion judges dead.
func TestNetworkStall(t *testing.T) {
	nw := newNetwork(1000, 10*time.Second, 0, 5*time.Second)
	nw.origin = "origin"
	done, got := startPull(t, nw, "a", "gone")
	now := time.Now()
	nw.step(now, 1)
	nw.step(now.Add(6*time.Second), 1)
	err := <-done
	if !errors.Is(err, peer.ErrUnavailable) || got() != 0 {
		t.Fatalf("stalled pull: %v after %d bytes, want peer.ErrUnavailable after none", err, got())
	}
}

// A pull behind a source that is alive but has nothing it lacks waits, as
// a real puller's request to a relay that has not received the chunk is
// made again: in the chain c ← b ← a, c's own source is gone, so c fails
// after the stall time; b and a, whose sources pull still, wait. Once c
// has failed b's source is gone and b fails a stall time later, then a.
func TestNetworkBehind(t *testing.T) {
	nw := newNetwork(1000, 10*time.Second, 0, 5*time.Second)
	nw.origin = "origin"
	cDone, _ := startPull(t, nw, "c", "gone")
	bDone, _ := startPull(t, nw, "b", "c")
	aDone, aGot := startPull(t, nw, "a", "b")
	now := time.Now()
	// ended waits for a pull that should have ended (its outcome is passed
	// on by startPull's goroutine), or gives one that should not a moment
	// to show it did.
	ended := func(done <-chan error, what string, want bool) {
		t.Helper()
		wait := 50 * time.Millisecond
		if want {
			wait = 5 * time.Second
		}
		select {
		case err := <-done:
			if !want {
				t.Fatalf("%s ended: %v", what, err)
			}
			if !errors.Is(err, peer.ErrUnavailable) {
				t.Fatalf("%s: %v, want peer.ErrUnavailable", what, err)
			}
		case <-time.After(wait):
			if want {
				t.Fatalf("%s still pulls", what)
			}
		}
	}
	for s := 1; s <= 6; s++ {
		nw.step(now.Add(time.Duration(s)*time.Second), 1)
	}
	ended(cDone, "c, whose source is gone, after 6 s", true)
	ended(bDone, "b, behind c, after 6 s", false)
	ended(aDone, "a, behind b, after 6 s", false)
	for s := 7; s <= 12; s++ {
		nw.step(now.Add(time.Duration(s)*time.Second), 1)
	}
	ended(bDone, "b, 6 s after its source c ended", true)
	ended(aDone, "a, behind b until b ended", false)
	for s := 13; s <= 18; s++ {
		nw.step(now.Add(time.Duration(s)*time.Second), 1)
	}
	ended(aDone, "a, 6 s after its source b ended", true)
	if aGot() != 0 {
		t.Fatalf("a received %d bytes from sources that had none", aGot())
	}
}

// Manifest answers with what the host at the address serves, and as a
// real peer does when it serves another generation or nothing.
func TestNetworkManifest(t *testing.T) {
	nw := newNetwork(1000, time.Second, 0, time.Minute)
	s := peer.NewServer(peer.ServerConfig{})
	nw.addServer("a:7070", s)
	ctx := context.Background()
	if _, err := nw.Manifest(ctx, "a:7070", 1); !errors.Is(err, peer.ErrStale) {
		t.Fatalf("host serving nothing: %v, want peer.ErrStale", err)
	}
	s.Set(&peer.Snapshot{Gen: 1, Digest: "d", Encoded: []byte("manifest")})
	if b, err := nw.Manifest(ctx, "a:7070", 1); err != nil || string(b) != "manifest" {
		t.Fatalf("Manifest = %q, %v", b, err)
	}
	if _, err := nw.Manifest(ctx, "a:7070", 2); !errors.Is(err, peer.ErrStale) {
		t.Fatalf("another generation: %v, want peer.ErrStale", err)
	}
	if _, err := nw.Manifest(ctx, "b:7070", 1); !errors.Is(err, peer.ErrUnavailable) {
		t.Fatalf("unknown host: %v, want peer.ErrUnavailable", err)
	}
}

// A chain within one tick: each relay serves what its source holds after
// the step, less the chunk it is receiving, so a relay adds a chunk's
// delay, not a tick's.
func TestNetworkChainInOneTick(t *testing.T) {
	nw := newNetwork(1000, 10*time.Second, 0, time.Minute) // B = 100 bytes/s
	nw.origin = "origin"
	nw.lag = 10
	_, aGot := startPull(t, nw, "a", "origin")
	_, bGot := startPull(t, nw, "b", "a")
	_, cGot := startPull(t, nw, "c", "b")
	nw.step(time.Now(), 1)
	if a, b, c := aGot(), bGot(), cGot(); a != 100 || b != 90 || c != 80 {
		t.Fatalf("after 1 s: a %d, b %d, c %d; want 100, 90, 80 (a chunk of 10 bytes behind each source)", a, b, c)
	}
}

// A cycle through an extra source: a pulls from the origin and from c, a
// descendant of its own (b pulls from a, c from b). The link c → a carries
// nothing, and in whatever order the step meets the pulls, b and c move as
// they would in a chain: one chunk behind their source each.
func TestNetworkCycle(t *testing.T) {
	for range 20 { // the step's order of pulls is a map's
		nw := newNetwork(1000, 10*time.Second, 0, time.Minute) // B = 100 bytes/s
		nw.origin = "origin"
		nw.lag = 10
		_, aGot := startPull(t, nw, "a", "origin", "c")
		_, bGot := startPull(t, nw, "b", "a")
		_, cGot := startPull(t, nw, "c", "b")
		nw.step(time.Now(), 1)
		if a, b, c := aGot(), bGot(), cGot(); a != 100 || b != 90 || c != 80 {
			t.Fatalf("after 1 s: a %d, b %d, c %d; want 100, 90, 80", a, b, c)
		}
	}
}
