package minion

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
)

// The swarm: in a format 3 pull a host holds up to Config.Sources claims at
// once, each through the same claim/lease protocol (index 0 is the pull's
// own claim, which switches on failure; 1.. are extras), fetches different
// runs of chunks from each, and replaces a source that runs far below the
// others. Partial sources serve only chunks they verified, so the claims
// need not avoid cycles (acyclic).

// feed is one source a swarm pull fetches from.
type feed struct {
	cl coord.Claim

	mu      sync.Mutex
	since   time.Time // claimed
	bytes   int64     // received from it
	busy    time.Duration
	dropped bool
}

// rate is the bytes a second this source delivered while a request to it
// was in flight; ok once it has delivered enough to judge.
func (p *feed) rate() (float64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.busy < time.Second || p.bytes < 1<<20 {
		return 0, false
	}
	return float64(p.bytes) / p.busy.Seconds(), true
}

func (p *feed) account(n int64, d time.Duration) {
	p.mu.Lock()
	p.bytes += n
	p.busy += d
	p.mu.Unlock()
}

// swarm holds a pull's extra claims.
type swarm struct {
	m    *Minion
	src  *source
	want int // claims to hold in all, the primary included

	// active: the pull is of a format 3 generation, whose chunks come
	// from several sources (set before the first fetch).
	active atomic.Bool

	mu     sync.Mutex
	extras map[int]*feed // by claim index (1..)
	// primary tracks the pull's own claim (src.claim(), which switching
	// replaces) for its rate.
	primary *feed
	wake    chan struct{} // a source was added

	// misses counts the grows in a row that found no free slot (or were
	// refused while a host waits for its first); grow is not tried again
	// before nextGrow (see growBackoff).
	misses   int
	nextGrow time.Time
}

// growBackoff is how long grow waits after misses attempts in a row found
// no free slot: nothing for the first three (a slow source is replaced
// within seconds, as finished hosts offer their spare slots), then
// doubling from balanceEvery up to maxGrowWait. In a fleet whose slots are
// all taken, a long pull's extra claims were a third of its Redis
// requests, every one finding nothing.
func growBackoff(misses int) time.Duration {
	if misses <= 3 {
		return 0
	}
	return min(balanceEvery<<min(misses-3, 8), maxGrowWait)
}

// maxGrowWait bounds growBackoff.
const maxGrowWait = 16 * time.Second

func newSwarm(m *Minion, src *source, want int) *swarm {
	return &swarm{m: m, src: src, want: max(want, 1), extras: map[int]*feed{}, wake: make(chan struct{}, 1)}
}

// peers returns the sources to fetch from now: the pull's own claim first.
func (s *swarm) peers() []*feed {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*feed
	if cl := s.src.claim(); cl != nil {
		if s.primary == nil || s.primary.cl.Slot != cl.Slot {
			s.primary = &feed{cl: *cl, since: time.Now()}
		}
		out = append(out, s.primary)
	}
	for i := 1; i < s.want; i++ {
		if p := s.extras[i]; p != nil && !p.dropped {
			out = append(out, p)
		}
	}
	return out
}

// holds reports whether p is still one of the pull's sources.
func (s *swarm) holds(p *feed) bool {
	if p.cl.Index == 0 {
		cl := s.src.claim()
		return cl != nil && cl.Slot == p.cl.Slot
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !p.dropped
}

// sources lists the source hosts of every claim held.
func (s *swarm) sources() []string {
	var out []string
	for _, p := range s.peers() {
		out = append(out, p.cl.Source)
	}
	return out
}

// grow claims sources for the free indexes, one attempt each, avoiding the
// sources held already; a missing source is tried again at the next grow.
func (s *swarm) grow(ctx context.Context) {
	s.mu.Lock()
	wait := time.Now().Before(s.nextGrow)
	s.mu.Unlock()
	if wait {
		return
	}
	for i := 1; i < s.want; i++ {
		s.mu.Lock()
		p := s.extras[i]
		held := p != nil && !p.dropped
		s.mu.Unlock()
		if held {
			continue
		}
		cl := s.src.claim()
		if cl == nil {
			return
		}
		ncl, err := s.m.coord.Claim(ctx, s.m.cfg.ID, cl.Gen, coord.ClaimOptions{
			Repair: cl.Repair, Index: i, Acyclic: true, Avoid: s.sources(),
			// Extra sources are for speed, and cross-zone links are what
			// zones spare: only the pull's own claim may cross.
			SameZone: true,
		})
		if err != nil {
			if !errors.Is(err, coord.ErrNoSource) && !errors.Is(err, coord.ErrBusy) && ctx.Err() == nil {
				s.m.cfg.Log.WithError(err).Debug("claim an extra source")
			}
			if errors.Is(err, coord.ErrNoSource) {
				s.mu.Lock()
				s.misses++
				s.nextGrow = time.Now().Add(growBackoff(s.misses))
				s.mu.Unlock()
			}
			return // nothing free now: the next grow tries again
		}
		s.m.cfg.Metrics.Claims.Inc()
		s.mu.Lock()
		s.extras[i] = &feed{cl: ncl, since: time.Now()}
		s.misses, s.nextGrow = 0, time.Time{}
		s.mu.Unlock()
		s.m.cfg.Log.WithFields(logrus.Fields{"source": ncl.Source, "slot": ncl.Slot, "partial": ncl.Partial}).Debug("claimed an extra source")
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// drop ends an extra claim: released (a slow source: its slot returns as
// it was) or, with a verdict, failed over (dead: the slot backs off; bad:
// the source is barred).
func (s *swarm) drop(ctx context.Context, p *feed, v coord.Verdict, reason string) {
	s.mu.Lock()
	if p.dropped || p.cl.Index == 0 {
		s.mu.Unlock()
		return
	}
	p.dropped = true
	s.misses, s.nextGrow = 0, time.Time{} // its replacement is wanted now
	s.mu.Unlock()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var err error
	if v == coord.SourceOK {
		err = s.m.coord.Release(sctx, p.cl)
	} else {
		err = s.m.coord.Switch(sctx, p.cl, v, reason)
	}
	if err != nil {
		s.m.cfg.Log.WithError(err).Warn("could not give back an extra source")
	}
}

// renew renews the extra claims' leases; a lost one is dropped.
func (s *swarm) renew(ctx context.Context) {
	if !s.active.Load() {
		return
	}
	s.mu.Lock()
	var ps []*feed
	for _, p := range s.extras {
		if !p.dropped {
			ps = append(ps, p)
		}
	}
	s.mu.Unlock()
	for _, p := range ps {
		if _, err := s.m.coord.Renew(ctx, p.cl); errors.Is(err, coord.ErrLeaseLost) || errors.Is(err, coord.ErrStale) {
			s.mu.Lock()
			p.dropped = true
			s.mu.Unlock()
		}
	}
}

// balanceEvery is how often a pull looks at its sources' rates and claims
// the ones it lacks.
const balanceEvery = 2 * time.Second

// rebalance replaces an extra source that runs far below the best one (a
// slow link or a slow host must hold back only itself), then claims
// sources for the free indexes. Nothing before the pull is of a format 3
// generation.
func (s *swarm) rebalance(ctx context.Context) {
	if !s.active.Load() {
		return
	}
	best := 0.0
	ps := s.peers()
	for _, p := range ps {
		if r, ok := p.rate(); ok {
			best = max(best, r)
		}
	}
	for _, p := range ps {
		if r, ok := p.rate(); ok && p.cl.Index > 0 && r < best/slowFactor {
			s.m.cfg.Log.WithFields(logrus.Fields{"source": p.cl.Source, "rate": int64(r), "best": int64(best)}).Info("replacing a slow source")
			s.drop(ctx, p, coord.SourceOK, "")
		}
	}
	s.grow(ctx)
}

// slowFactor: a source delivering less than the best one's rate divided by
// it is replaced.
const slowFactor = 4

// close gives back every extra claim.
func (s *swarm) close(ctx context.Context) {
	s.mu.Lock()
	var ps []*feed
	for _, p := range s.extras {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	for _, p := range ps {
		s.drop(ctx, p, coord.SourceOK, "")
	}
}
