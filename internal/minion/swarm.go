package minion

import (
	"context"
	"errors"
	"slices"
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
// need not avoid cycles (acyclic). An extra claim takes only a whole
// source's slot (coord.ClaimOptions.Index): a partial source's free slot
// is the end of a chain, the next newcomer's; a rescue claim takes the
// grandparent's rescue slot.

// feed is one source a swarm pull fetches from.
type feed struct {
	cl coord.Claim
	// rescue: claimed with coord.ClaimOptions.Rescue (the grandparent's
	// rescue slot).
	rescue bool

	// judged: a rescue gate judged a window of this source (see
	// rescueGate.window): only its first file's first window is short.
	judged atomic.Bool
	// proven: a rescue gate opened on this source by a confirmed probe
	// (see rescueGate.probed), whose two probes, credited together, ask
	// for more than a link's burst: its rate decides the lead at once
	// (see swarm.lead), and the bypass, without a further quickBusy of
	// requests.
	proven atomic.Bool
	// gated: a rescue gate opened on this partial source, its prefix
	// growing gateFactor times the parent's (see rescueGate.update): its
	// rate decides the lead at once too, on minRun or more, but not a
	// bypass, which waits for it to be measured (see lead): what opened
	// the gate says nothing of its rate, and a shaped link's burst could
	// make it seem fast enough to bypass a healthy relay. In a tree the
	// grandparent's inflow is split over the files pulled at once: the
	// rescue source often had less than leadBytes of the one file whose
	// gate opened first, and the gates of the others opened windows
	// later (each needs gateMin of its file's growth). Before gated, the
	// host behind the netbed's slow relay bypassed it 1.1 s after SET in
	// 2 of 11 runs of tree row 4, about 0.5 s in the others, and the
	// other 15 then took 1.46-1.47 x S/B. With it (and the bypass then
	// asked at once), 1 run in 21 still bypassed after 1 s, at 1.14 s: in
	// that run the first gate itself opened late, which gated does not
	// change.
	gated atomic.Bool
	// probes: when this source, if whole and a rescue, may be probed
	// (see probeClock), whichever file's gate probes it.
	probes probeClock

	mu      sync.Mutex
	bytes   int64 // received from it
	busy    time.Duration
	dropped bool
	// Requests in flight: how many, since when busy was last brought up
	// to date, and how to cancel each (a demoted lead's, see swarm.lead).
	active   int
	activeAt time.Time
	cancels  map[int]context.CancelFunc
	nextReq  int
}

// rate is the bytes a second this source delivered while a request to it
// was in flight; ok once it has delivered enough to judge.
func (p *feed) rate() (float64, bool) {
	r, busy, bytes := p.measure()
	if busy < time.Second || bytes < 1<<20 {
		return 0, false
	}
	return r, true
}

// quick is rate judged sooner: after quickBusy of requests in
// flight, whatever they brought (a source that sends nothing is at 0).
func (p *feed) quick() (float64, bool) {
	r, busy, _ := p.measure()
	return r, busy >= quickBusy
}

// quickBusy is how long requests must have been in flight to a source
// before quick judges its rate.
const quickBusy = 150 * time.Millisecond

// measure returns the rate, the time requests were in flight (up to now)
// and the bytes received.
func (p *feed) measure() (float64, time.Duration, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	busy := p.busy
	if p.active > 0 {
		busy += time.Since(p.activeAt)
	}
	if busy <= 0 {
		return 0, 0, p.bytes
	}
	return float64(p.bytes) / busy.Seconds(), busy, p.bytes
}

// accrue brings busy up to now. Callers hold p.mu.
func (p *feed) accrue(now time.Time) {
	if p.active > 0 {
		p.busy += now.Sub(p.activeAt)
	}
	p.activeAt = now
}

// begin records a request to p in flight, cancelled by cancel if p is
// demoted meanwhile; end(id) records its end.
func (p *feed) begin(cancel context.CancelFunc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.accrue(time.Now())
	p.active++
	if p.cancels == nil {
		p.cancels = map[int]context.CancelFunc{}
	}
	p.nextReq++
	p.cancels[p.nextReq] = cancel
	return p.nextReq
}

func (p *feed) end(id int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.accrue(time.Now())
	p.active--
	delete(p.cancels, id)
}

// credit counts a request that was not recorded as it ran (a probe that
// opened the rescue gate): n bytes received in d.
func (p *feed) credit(n int64, d time.Duration) {
	p.mu.Lock()
	p.accrue(time.Now())
	p.busy += d
	p.bytes += n
	p.mu.Unlock()
}

// got counts n bytes received from p (a chunk verified).
func (p *feed) got(n int64) {
	p.mu.Lock()
	p.accrue(time.Now())
	p.bytes += n
	p.mu.Unlock()
}

// cancelRequests ends p's requests in flight: the chunks they were to
// bring go back to be taken by the other sources.
func (p *feed) cancelRequests() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cancels {
		c()
	}
}

// runLimit bounds the bytes of one request to p when it does not lead the
// pull (see swarm.lead): about a quarter of a second of its rate, so a
// slow source holds few chunks at a time (and the file's next bytes do not
// wait on it), between minRun and maxRun (a source that comes to lead
// turns to the chunks its predecessor was cancelled on within one such
// run); a source not yet measured gets firstRun.
func (p *feed) runLimit() int64 {
	r, ok := p.quick()
	if !ok {
		return firstRun
	}
	return min(max(int64(r/4), minRun), maxRun)
}

const (
	firstRun = 1 << 20
	minRun   = 128 << 10
	maxRun   = 1 << 20
)

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
	// leader is the source asked for the file's next chunks whether it has
	// them or not (see lead); nil: the primary.
	leader *feed
	wake   chan struct{} // a source was added
	// rescueTries counts the rescue claims in a row that found nothing;
	// nextRescue: not tried again before then.
	rescueTries int
	nextRescue  time.Time

	// bypass receives the rescue feed that came to lead the pull many times
	// faster than the pull's own source, a partial relay, with the claim
	// on the relay it outran: the watch loop then moves the pull's own
	// claim off the relay (source.bypass). Asked once a pull.
	bypass      chan bypassAsk
	bypassAsked bool
	// bypassPending: a gated rescue source (see feed.gated) took the lead
	// from outrun at bypassFactor times its rate or more, unmeasured; lead
	// asks for the bypass once it is measured, if it still does.
	bypassPending bool
	// outrun is the pull's own source as a rescue source took the lead
	// from it, and outrunRate its rate then: what checkBypass judges the
	// rescue source against. Its rate since says nothing: demoted, it
	// shares this host's downlink with the leader, and when that downlink
	// is what is slow its rate falls as the leader's rises.
	outrun     *feed
	outrunRate float64

	// misses counts the grows in a row that found no free slot (or were
	// refused while a host waits for its first); grow is not tried again
	// before nextGrow (see growBackoff).
	misses   int
	nextGrow time.Time
	// free is how many slots are free for an extra claim, as the last
	// renewal counted them (coord.Renewals.Free), 0 after a claim found
	// none, freeUnknown until a renewal or a miss tells; freeAtMiss what
	// it was when the last claim found none (not counting refusals while
	// hosts wait: yielded).
	free, freeAtMiss int64
	yielded          bool
	// outlookAt is when a renewal or an outlook (coord.Client.Outlook)
	// last counted the free slots and the hosts waiting for a first
	// source; while that count found hosts waiting, grow neither claims
	// nor asks again before askAfter (a waiting host's pace).
	outlookAt, askAfter time.Time
}

// outlookFresh is how long what a renewal or an outlook counted stands
// before grow asks again, in plain commands, ahead of a claim.
const outlookFresh = time.Second

// freeUnknown is swarm.free before anything counted the free slots.
const freeUnknown = -1

// outlook records what a renewal or an outlook counted at at: the slots
// free for extra claims and the hosts waiting for a first source (while
// any wait, an extra claim would yield to them: see growWaits).
func (s *swarm) outlook(o coord.Outlook, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.free, s.outlookAt = o.Free, at
	s.askAfter = time.Time{}
	if o.Starved > 0 {
		// As a claim that yielded would wait (see grow), so a pull asks
		// about as often as the waiting hosts claim.
		s.askAfter = at.Add(max(queuedPoll(s.m.cfg.Poll, o.Starved), outlookFresh))
	}
}

// growWaits reports whether grow claims nothing now (s.mu held). With no
// slot free it waits: a claim that finds nothing still costs Redis a
// script call, and at 1,000 simulated hosts such claims were a quarter of
// its time. With more slots free than when the last claim missed, it
// tries at once whatever its back-off: a finished host's slots are taken
// within a renewal. While the last count found hosts waiting for a first
// source it waits too, until askAfter: the claim would yield to them.
// Otherwise the back-off (growBackoff) decides.
func (s *swarm) growWaits(now time.Time) bool {
	switch {
	case s.free == 0:
		return true
	case now.Before(s.askAfter):
		return true // hosts waited at the last count: the claim would yield to them
	case !s.yielded && s.free > s.freeAtMiss: // never while unknown
		return false
	}
	return now.Before(s.nextGrow)
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
	return &swarm{m: m, src: src, want: max(want, 1), extras: map[int]*feed{}, wake: make(chan struct{}, 1), bypass: make(chan bypassAsk, 1), free: freeUnknown}
}

// peers returns the sources to fetch from now: the pull's own claim first.
func (s *swarm) peers() []*feed {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*feed
	if cl := s.src.claim(); cl != nil {
		if s.primary == nil || s.primary.cl.Slot != cl.Slot {
			s.primary = &feed{cl: *cl}
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

// rescueAddr returns the address of the rescue source the pull holds, or
// "" when it holds none.
func (s *swarm) rescueAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.extras {
		if p != nil && p.rescue && !p.dropped {
			return p.cl.SourceAddr
		}
	}
	return ""
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

// plainSources lists the sources of every claim but the rescue claims'.
//
// It is what the pull's own claim, switching sources, must avoid: behind a
// dead first host of a chain, the origin is the rescue source and often
// the only one left, and avoiding it, the switch found none until the pull
// failed.
//
// It is also what the simulator's model moves bytes from: the model has
// no rescue gate, and a rescue claim whose gate is closed carries only its
// probes (a MiB every 1 to 8 s); counted as a full puller, the origin's
// rescue claim halved the origin's upload to the head of the chain, and
// with it the whole simulated chain (make sim at 1,000 hosts: 2.08 x S/B,
// against 1.37 before the origin offered one and 1.39 with this).
func (s *swarm) plainSources() []string {
	var out []string
	for _, p := range s.peers() {
		if !p.rescue {
			out = append(out, p.cl.Source)
		}
	}
	return out
}

// grow claims sources for the free indexes, one attempt each, avoiding the
// sources held already; a missing source is tried again at a later grow
// (see growWaits).
func (s *swarm) grow(ctx context.Context) {
	now := time.Now()
	s.mu.Lock()
	wait := s.growWaits(now) || !s.needsSource()
	stale := now.Sub(s.outlookAt) > outlookFresh
	s.mu.Unlock()
	if wait {
		return
	}
	if stale {
		// Ask first, in plain commands: most claims made blind found
		// nothing.
		o, err := s.m.coord.Outlook(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.m.cfg.Log.WithError(err).Debug("count the free slots")
			}
			return
		}
		s.outlook(o, now)
		s.mu.Lock()
		wait = s.growWaits(now)
		s.mu.Unlock()
		if wait {
			return
		}
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
			var none *coord.NoSourceError
			if errors.As(err, &none) {
				wait := growBackoff(s.misses + 1)
				if none.Yielded {
					// Extra claims take nothing while hosts wait for
					// their first source (see coord.ClaimOptions.Index):
					// ask again about when the waiting hosts would.
					wait = max(wait, queuedPoll(s.m.cfg.Poll, none.Waiting))
				}
				s.mu.Lock()
				s.misses++
				s.nextGrow = time.Now().Add(wait)
				s.yielded = none.Yielded
				if !none.Yielded {
					// Nothing this host may take: none until a
					// renewal counts more than there were now.
					s.freeAtMiss, s.free = max(s.free, 0), 0
				}
				s.mu.Unlock()
			}
			return // nothing free now: the next grow tries again
		}
		s.mu.Lock()
		s.misses, s.nextGrow, s.yielded = 0, time.Time{}, false
		s.mu.Unlock()
		s.add(i, ncl, false)
	}
}

// needsSource reports whether an extra index is free (s.mu held).
func (s *swarm) needsSource() bool {
	for i := 1; i < s.want; i++ {
		if p := s.extras[i]; p == nil || p.dropped {
			return true
		}
	}
	return false
}

// add holds ncl as the extra source at index i (a rescue source with
// rescue) and wakes the fetches, which start a worker on it.
func (s *swarm) add(i int, ncl coord.Claim, rescue bool) {
	s.m.cfg.Metrics.Claims.Inc()
	if rescue {
		s.m.cfg.Metrics.RescueClaims.Inc()
	}
	s.mu.Lock()
	s.extras[i] = &feed{cl: ncl, rescue: rescue}
	s.mu.Unlock()
	s.m.cfg.Log.WithFields(logrus.Fields{"source": ncl.Source, "slot": ncl.Slot, "partial": ncl.Partial, "rescue": rescue}).Debug("claimed an extra source")
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// lead returns the source asked for a file's next chunks whether it has
// them yet or not; the others are asked only for chunks they have. It is
// the pull's own source until another of its sources, measured, delivers
// leadFactor times its rate: then that one leads, and the old leader's
// requests in flight are cancelled so their chunks go to the new one. A
// slow relay in the chain then sets the pace of neither this host nor the
// hosts behind it, and a host's chain stays fed in file order.
func (s *swarm) lead() *feed {
	ps := s.peers()
	if len(ps) == 0 {
		return nil
	}
	s.mu.Lock()
	cur := s.leader
	s.mu.Unlock()
	if cur == nil || !slices.Contains(ps, cur) {
		cur = ps[0]
	}
	curRate, ok := cur.quick()
	if !ok {
		return cur
	}
	best, bestRate, measured := cur, curRate, true
	for _, p := range ps {
		r, busy, bytes := p.measure()
		m := busy >= quickBusy || bytes >= leadBytes || p.proven.Load()
		if p != cur && (m || p.gated.Load()) && bytes >= minRun && r >= leadFactor*curRate && r > bestRate {
			best, bestRate, measured = p, r, m
		}
	}
	s.mu.Lock()
	s.leader = best
	pending, was, wasRate := s.bypassPending, s.outrun, s.outrunRate
	pending = pending && was != nil && !was.dropped
	s.mu.Unlock()
	if best != cur {
		s.m.cfg.Metrics.LeadChanges.Inc()
		cur.cancelRequests()
		s.m.cfg.Log.WithFields(logrus.Fields{"source": best.cl.Source, "rate": int64(bestRate), "was": cur.cl.Source, "was_rate": int64(curRate)}).Info("a faster source leads the pull")
		if best.rescue && cur.cl.Index == 0 {
			fast := s.m.cfg.Bypass && cur.cl.Partial && bestRate >= bypassFactor*curRate
			s.mu.Lock()
			s.outrun, s.outrunRate = cur, curRate
			s.bypassPending = fast && !measured
			s.mu.Unlock()
			if fast && measured {
				s.askBypass(best, cur.cl)
			}
		}
	} else if pending && best.rescue {
		// A gated rescue source took the lead before it was measured:
		// the bypass waits until it is, and is asked if it still
		// delivers bypassFactor times the relay's rate then.
		if r, busy, bytes := best.measure(); busy >= quickBusy || bytes >= leadBytes {
			s.mu.Lock()
			s.bypassPending = false
			s.mu.Unlock()
			if r >= bypassFactor*wasRate {
				s.askBypass(best, was.cl)
			}
		}
	}
	return best
}

// leadFactor: another source leads once it delivers this many times the
// leader's rate.
const leadFactor = 2

// leadBytes: a source that delivered this much counts as measured for the
// lead even before quickBusy of requests (more than a link's burst: tc's
// at 16 MiB/s is 2 MiB). Behind a slow relay, the rescue source often has
// only the few megabytes beyond the relay's run to give, in less than
// quickBusy; it then could not lead, its gate closed at the next window,
// and the relay's run held this host and every host behind it for a
// second more (row 4 of the testbed at 1.5 × S/B in half the runs).
const leadBytes = 3 << 20

// bypassFactor: a rescue source that comes to lead delivering this many
// times the rate of the pull's own source, a partial relay, takes the
// relay's place (see coord.Client.Bypass): the relay's uplink is what is
// slow, and the grandparent's, split between the two, is what it leaves
// to the hosts behind.
const bypassFactor = 3

// bypassAsk is a request to bypass relay, the pull's own claim as it was
// measured, in favour of rescue.
type bypassAsk struct {
	rescue *feed
	relay  coord.Claim
}

// askBypass asks the watch loop, once a pull, to bypass relay, the pull's
// own claim, in favour of rescue.
func (s *swarm) askBypass(rescue *feed, relay coord.Claim) {
	s.mu.Lock()
	asked := s.bypassAsked
	s.bypassAsked = true
	s.mu.Unlock()
	if asked {
		return
	}
	select {
	case s.bypass <- bypassAsk{rescue: rescue, relay: relay}:
	default:
	}
}

// forget stops using p, a claim that Redis ended already (see
// source.bypass): nothing to give back. Its requests in flight finish.
func (s *swarm) forget(p *feed) {
	s.mu.Lock()
	p.dropped = true
	s.mu.Unlock()
}

// rescue claims the rescue slot of the pull's grandparent (the source of
// its source, see coord.ClaimOptions.Rescue) as an extra source, when its
// source is partial: if that source is slow, the grandparent's idle uplink
// carries the data this host and the hosts behind it need (see lead); if
// not, the rescue source finds nothing to send (it is asked only for
// chunks it has that no other source was asked for) and costs nothing but
// the claim. Tried when the pull starts and at each rebalance while none
// is held, with a doubling pause after a miss.
func (s *swarm) rescue(ctx context.Context) {
	cl := s.src.claim()
	if !s.active.Load() || cl == nil || !cl.Partial {
		return
	}
	idx := s.rescueIndex()
	if idx == 0 {
		return
	}
	ncl, err := s.m.coord.Claim(ctx, s.m.cfg.ID, cl.Gen, coord.ClaimOptions{
		Repair: cl.Repair, Index: idx, Rescue: true, Acyclic: true, Avoid: s.sources(),
	})
	if err != nil {
		if !errors.Is(err, coord.ErrNoSource) && !errors.Is(err, coord.ErrBusy) && ctx.Err() == nil {
			s.m.cfg.Log.WithError(err).Debug("claim a rescue source")
		}
		s.mu.Lock()
		s.rescueTries++
		s.nextRescue = time.Now().Add(balanceEvery << min(s.rescueTries-1, 3))
		s.mu.Unlock()
		return
	}
	s.add(idx, ncl, true)
}

// rescueIndex is the first free extra index for a rescue claim, or 0 when
// none is free, a rescue source is held already, or a miss's pause runs.
func (s *swarm) rescueIndex() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.nextRescue) {
		return 0
	}
	free := 0
	for i := 1; i < s.want; i++ {
		p := s.extras[i]
		switch {
		case p != nil && !p.dropped && p.rescue:
			return 0
		case (p == nil || p.dropped) && free == 0:
			free = i
		}
	}
	return free
}

// primaryOf returns the feed of cl, the pull's own claim, or nil when the
// pull's own source is another claim's now.
func (s *swarm) primaryOf(cl coord.Claim) *feed {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.primary != nil && s.primary.cl.Slot == cl.Slot {
		return s.primary
	}
	return nil
}

// abandon cancels the requests in flight to p (nil: none), the feed of
// the pull's own claim that Redis ended, once the pull has claimed its
// next source: the slot is another host's now (the host behind this one,
// when it bypassed this host as a slow relay) or will be, and a stream
// this host kept would split the source's uplink with that host. A
// bypassed relay whose downlink is fast had gone on taking half its old
// source's uplink for half a second, until its run ended, from the host
// that took its place (the testbed's row 5). Not before the next claim:
// a relay whose downlink is slow too keeps its link busy meanwhile, and
// loses less. The chunks those requests were to bring go back to be
// taken from the next source.
func (s *swarm) abandon(p *feed) {
	if p != nil {
		p.cancelRequests()
	}
}

// dropRescue gives back the rescue claims, their requests in flight
// cancelled: the pull's own source is whole now (it switched to one,
// maybe to the rescue source itself), so there is no relay left to step
// around, or the pull is not of chunks (format 2), which only the pull's
// own source serves; the slot is for another host.
func (s *swarm) dropRescue(ctx context.Context) {
	s.mu.Lock()
	var rescues []*feed
	for _, p := range s.extras {
		if p != nil && p.rescue && !p.dropped {
			rescues = append(rescues, p)
		}
	}
	s.mu.Unlock()
	for _, p := range rescues {
		p.cancelRequests()
		s.drop(ctx, p, coord.SourceOK, "")
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
	// Its replacement is wanted now, and its slot just went back: the
	// count of free slots is not known.
	s.misses, s.nextGrow, s.free = 0, time.Time{}, freeUnknown
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

// renewable lists the extra claims whose leases are to be renewed: before
// the swarm is active too, for a rescue claim made with the first claim
// (see newSource) outlives a scan of the local tree longer than a lease.
func (s *swarm) renewable() []*feed {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ps []*feed
	for _, p := range s.extras {
		if !p.dropped {
			ps = append(ps, p)
		}
	}
	return ps
}

// renewed takes the renewals of ps (renewable's, in order): a lost lease
// drops its source.
func (s *swarm) renewed(ps []*feed, res []coord.Renewal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range ps {
		if i < len(res) && (errors.Is(res[i].Err, coord.ErrLeaseLost) || errors.Is(res[i].Err, coord.ErrStale)) {
			p.dropped = true
		}
	}
}

// renew renews the extra claims' leases one by one (while the pull's own
// claim switches, it renews none of them); a lost one is dropped.
func (s *swarm) renew(ctx context.Context) {
	ps := s.renewable()
	res := make([]coord.Renewal, len(ps))
	for i, p := range ps {
		_, res[i].Err = s.m.coord.Renew(ctx, p.cl)
	}
	s.renewed(ps, res)
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
	s.checkBypass()
	s.rescue(ctx)
	s.grow(ctx)
}

// checkBypass asks for a bypass when a rescue source that leads the pull
// (it took the lead at less than bypassFactor times the rate of the pull's
// own source, a partial relay) has come to deliver that much more than the
// relay delivered when it lost the lead, measured over a second at least.
// Not than the relay's rate since: a host whose own downlink is slow would
// bypass its healthy parent, whose rate falls as the rescue's stream takes
// the link.
func (s *swarm) checkBypass() {
	if !s.m.cfg.Bypass {
		return
	}
	s.mu.Lock()
	ld, prim, was, wasRate := s.leader, s.primary, s.outrun, s.outrunRate
	s.mu.Unlock()
	if ld == nil || prim == nil || prim != was || wasRate <= 0 || !ld.rescue || !s.holds(ld) || !s.holds(prim) || !prim.cl.Partial {
		return
	}
	if lr, ok := ld.rate(); ok && lr >= bypassFactor*wasRate {
		s.askBypass(ld, prim.cl)
	}
}

// slowFactor: a source delivering less than the best one's rate divided by
// it is replaced.
const slowFactor = 4

// handOver marks every extra claim given back and returns them, for the
// finish call to release (see coord.Client.Finish): a pull that ends well
// ends in one call.
func (s *swarm) handOver() []coord.Claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []coord.Claim
	for _, p := range s.extras {
		if p != nil && !p.dropped && p.cl.Index != 0 {
			p.dropped = true
			out = append(out, p.cl)
		}
	}
	return out
}

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
