package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fanout/fanout/internal/minion"
	"github.com/fanout/fanout/internal/peer"
)

// network models the data plane of every simulated host (it is the
// minions' minion.Model): nothing moves, but a pull takes the time its
// bytes would take. Every host has the same link, rate bytes a second up
// and down. Each tick, a puller receives from each of its sources that has
// bytes it lacks a share of that source's upload (divided equally among
// the source's pullers), capped by its own download, and never more than
// the best of those sources holds: a source still pulling (pipelining)
// serves only what it has received, less what it holds back (lag),
// so it delivers no faster than its own source. Within a tick a chain is
// solved source first, so a relay adds its hold-back's delay, as a real one
// does, not a tick's. The model moves the files' bytes as one prefix (a
// chunk a partial source has is a chunk of its prefix).
type network struct {
	size  int64         // S: bytes every pull receives
	rate  float64       // B: bytes a second, each host's upload and download
	hop   time.Duration // a manifest request's latency (round trip, diff of the host's tree)
	stall time.Duration // a pull that receives nothing this long fails (--stall-timeout), unless it is behind living sources
	tick  time.Duration
	lag   float64 // bytes a relay holds back of the chunk it is receiving (see config.Chunk)

	mu      sync.Mutex
	servers map[string]*peer.Server // by advertised address: what each host serves
	origin  string                  // the master's host id: holds everything
	hosts   map[string]*node        // by host id
	pulls   map[*pull]bool
}

// node is one host as the model sees it.
type node struct {
	whole    bool    // holds the generation
	received float64 // bytes of the generation it holds (pulling)
	pulling  bool
}

// pull is one pull in flight.
type pull struct {
	p        minion.ModelPull
	n        *node
	done     chan error // buffered: the tick ends the pull
	progress time.Time  // last time a byte arrived
	reported int64
}

func newNetwork(size int64, sb, hop, stall time.Duration) *network {
	return &network{
		size: size, rate: float64(size) / sb.Seconds(), hop: hop, stall: stall, tick: 100 * time.Millisecond,
		servers: map[string]*peer.Server{}, hosts: map[string]*node{}, pulls: map[*pull]bool{},
	}
}

// addServer registers the peer server a host advertises at addr.
func (nw *network) addServer(addr string, s *peer.Server) {
	nw.mu.Lock()
	nw.servers[addr] = s
	nw.mu.Unlock()
}

// Manifest answers as the host at addr would: the manifest of the
// generation it serves (waiting for it if the host expects it, see
// peer.Server.Expect), after a request's latency; a host that does not
// serve gen answers as a real peer does (ErrStale).
func (nw *network) Manifest(ctx context.Context, addr string, gen int64) ([]byte, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(nw.hop):
	}
	nw.mu.Lock()
	s := nw.servers[addr]
	nw.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("manifest from %s: %w", addr, peer.ErrUnavailable)
	}
	snap := s.Await(ctx, gen)
	if snap == nil || snap.Gen != gen {
		return nil, fmt.Errorf("manifest of generation %d from %s: %w", gen, addr, peer.ErrStale)
	}
	return snap.Encoded, nil
}

// Pull waits until the model has delivered S bytes to p.Host.
func (nw *network) Pull(ctx context.Context, p minion.ModelPull) error {
	p.Planned(nw.size)
	nw.mu.Lock()
	n := nw.hosts[p.Host]
	if n == nil {
		n = &node{}
		nw.hosts[p.Host] = n
	}
	n.whole, n.received, n.pulling = false, 0, true
	pl := &pull{p: p, n: n, done: make(chan error, 1), progress: time.Now()}
	nw.pulls[pl] = true
	nw.mu.Unlock()
	select {
	case err := <-pl.done:
		return err
	case <-ctx.Done():
		nw.mu.Lock()
		delete(nw.pulls, pl)
		n.pulling = false
		nw.mu.Unlock()
		return ctx.Err()
	}
}

// run advances the model every tick until ctx ends.
func (nw *network) run(ctx context.Context) {
	t := time.NewTicker(nw.tick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			nw.step(now, now.Sub(last).Seconds())
			last = now
		}
	}
}

// step moves dt seconds' worth of bytes. Every puller's new amount is
// computed from the amounts before the step, so the order of pulls does
// not matter.
func (nw *network) step(now time.Time, dt float64) {
	nw.mu.Lock()
	pulls := make([]*pull, 0, len(nw.pulls))
	for pl := range nw.pulls {
		pulls = append(pulls, pl)
	}
	nw.mu.Unlock()
	// The sources each pull holds claims on now (the minions' own state,
	// read outside the model's lock).
	srcs := make([][]string, len(pulls))
	for i, pl := range pulls {
		srcs[i] = pl.p.Sources()
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	pullers := map[string]int{}
	for _, ss := range srcs {
		for _, s := range ss {
			pullers[s]++
		}
	}
	size := float64(nw.size)
	pullOf := make(map[*node]int, len(pulls))
	for i, pl := range pulls {
		if nw.pulls[pl] {
			pullOf[pl.n] = i
		}
	}
	// solve computes pull i's amount after the step from its sources'
	// (a source still pulling is solved first: source first along a
	// chain). A cycle, possible among extra sources (a host holding a
	// claim on one of its own descendants), is cut where solve meets a
	// pull it is still solving: that pull counts with its amount from the
	// pass before (the amount before the step in the first). A
	// descendant never holds more than its ancestor, so the link that
	// closes a cycle carries nothing, and a second pass gives every pull
	// of the cycle what a chain without that link would: in one pass, the
	// pulls solved inside the cycle's recursion would see their ancestor's
	// amount from before the step and stall for the step, an artifact
	// that depends on the order of the pulls.
	next := make([]float64, len(pulls))
	prev := make([]float64, len(pulls))
	for i, pl := range pulls {
		prev[i] = pl.n.received
	}
	const (
		unsolved = iota
		solving
		solved
	)
	state := make([]int, len(pulls))
	// behind: every source of the pull is alive (the origin, a host that
	// holds the generation, or one still pulling) and none has a byte it
	// lacks, so its wait is not a stall: a real puller's request to a
	// partial source that lacks the chunk is made again
	// (minion.assembler.behind), and only a source that is gone, or that
	// has bytes and sends none, fails the pull after the stall time.
	behind := make([]bool, len(pulls))
	alive := func(host string) bool {
		n := nw.hosts[host]
		return host == nw.origin || (n != nil && (n.whole || n.pulling))
	}
	var solve func(i int) float64
	avail := func(host string) float64 {
		if host == nw.origin {
			return size
		}
		n := nw.hosts[host]
		switch {
		case n == nil:
			return 0
		case n.whole:
			return size
		case n.pulling:
			got := n.received
			if j, ok := pullOf[n]; ok {
				got = solve(j)
			}
			if got >= size {
				return size
			}
			return max(got-nw.lag, 0)
		}
		return 0
	}
	solve = func(i int) float64 {
		switch state[i] {
		case solved:
			return next[i]
		case solving:
			return prev[i]
		}
		state[i] = solving
		have := pulls[i].n.received
		rate, best := 0.0, have
		behind[i] = len(srcs[i]) > 0
		for _, s := range srcs[i] {
			if a := avail(s); a > have {
				rate += nw.rate / float64(pullers[s])
				best = max(best, a)
				behind[i] = false
			}
			if !alive(s) {
				behind[i] = false
			}
		}
		next[i] = min(have+min(rate, nw.rate)*dt, best)
		state[i] = solved
		return next[i]
	}
	for pass := range 2 {
		if pass > 0 {
			copy(prev, next)
			clear(state)
		}
		for i := range pulls {
			solve(i)
		}
	}
	for i, pl := range pulls {
		if !nw.pulls[pl] {
			continue // ended meanwhile
		}
		got := next[i]
		if got > pl.n.received || behind[i] {
			pl.progress = now
		}
		pl.n.received = got
		if n := int64(got) - pl.reported; n > 0 {
			pl.p.Received(n)
			pl.reported += n
		}
		switch {
		case got >= size:
			pl.n.whole, pl.n.pulling = true, false
			delete(nw.pulls, pl)
			pl.done <- nil
		case now.Sub(pl.progress) > nw.stall:
			pl.n.pulling = false
			delete(nw.pulls, pl)
			pl.done <- fmt.Errorf("no byte from %v for %s: %w", srcs[i], nw.stall, peer.ErrUnavailable)
		}
	}
}

// pulling counts the pulls in flight.
func (nw *network) pulling() int {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return len(nw.pulls)
}
