package minion

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
)

// maxSwitches bounds how many times one pull moves to another source
// before it gives up and starts over from a fresh claim.
const maxSwitches = 16

// source is the claim a pull holds, and the fetcher that pulls through it.
// When the source dies or stalls mid-file, the fetcher releases the claim,
// claims another source and resumes the file from the byte it has (a Range
// request), so no byte is fetched twice and the pull goes on.
type source struct {
	m   *Minion
	gen int64
	ref coord.Ref // the generation pulled, for the cross-zone count
	log logrus.FieldLogger
	// crossed counts bytes received from sources of another zone and not
	// yet added to the generation's count in Redis (see flushCrossZone).
	crossed atomic.Int64

	// switchMu serialises switching; mu guards the fields below.
	switchMu sync.Mutex
	mu       sync.Mutex
	cl       *coord.Claim // nil while switching, or after a switch failed
	// left is the source the last switch moved off (its slot given
	// back): a pull that then finds no other one fails naming it.
	left     string
	switches int
	// index maps each manifest path to its index, for batch requests; set
	// before the first fetch, read-only after.
	index map[string]int
	// mixed lists the files whose bytes came from more than one source: a
	// bad hash on one of them does not tell which source was bad.
	mixed map[string]bool
	// sw holds the extra sources of a format 3 pull (the swarm).
	sw *swarm
}

func newSource(m *Minion, gen int64, cl coord.Claim) *source {
	rescue := cl.Rescue
	cl.Rescue = nil
	s := &source{m: m, gen: gen, ref: cl.Gen, cl: &cl, mixed: map[string]bool{}, log: m.cfg.Log.WithField("gen", gen)}
	s.sw = newSwarm(m, s, m.cfg.Sources)
	if o := cl.Outlook; o != nil {
		// The claim counted what an extra claim would find: the swarm's
		// first grow need not ask.
		s.sw.outlook(*o, time.Now())
	}
	if rescue != nil {
		// The claim made the rescue claim too (coord.ClaimOptions.RescueIndex):
		// the swarm holds it from the start, as if it had claimed it.
		s.sw.add(rescue.Index, *rescue, true)
	}
	return s
}

// claim returns the claim held now, or nil.
func (s *source) claim() *coord.Claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cl
}

// leftSource returns the source the last switch moved off, or "".
func (s *source) leftSource() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.left
}

// wasMixed reports whether the file at p came from more than one source.
func (s *source) wasMixed(p string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mixed[p]
}

// Fetch implements apply.Fetcher: it streams e from offset through the
// current source, moving to another source and resuming where it stopped
// when the current one fails.
func (s *source) Fetch(ctx context.Context, e manifest.Entry, offset int64, w io.Writer) (int64, error) {
	var total int64
	var from string
	for {
		cl := s.claim()
		if cl == nil {
			return total, errors.New("no source claimed")
		}
		if from != "" && from != cl.Source {
			s.mu.Lock()
			s.mixed[e.Path] = true
			s.mu.Unlock()
		}
		n, err := s.m.client.Fetch(ctx, cl.SourceAddr, s.gen, e.Path, offset+total, s.m.cfg.Download.Writer(ctx, w))
		s.count(*cl, n)
		total += n
		if n > 0 || from == "" {
			from = cl.Source
		}
		if err == nil || ctx.Err() != nil || verdict(ctx, err, false) != coord.SourceDead {
			return total, err
		}
		if serr := s.switchFrom(ctx, *cl, err); serr != nil {
			return total, fmt.Errorf("%w (no other source: %w)", err, serr)
		}
	}
}

// FetchBatch implements apply.BatchFetcher: it streams several small files
// in one request from the current source. A failure is not retried here:
// Apply fetches what the batch did not deliver one file at a time, through
// Fetch and its source switching.
func (s *source) FetchBatch(ctx context.Context, es []manifest.Entry, w io.Writer) (int64, error) {
	cl := s.claim()
	if cl == nil {
		return 0, errors.New("no source claimed")
	}
	idx := make([]int, len(es))
	for i, e := range es {
		j, ok := s.index[e.Path]
		if !ok {
			return 0, fmt.Errorf("%q is not in the manifest", e.Path)
		}
		idx[i] = j
	}
	n, err := s.m.client.Batch(ctx, cl.SourceAddr, s.gen, idx, s.m.cfg.Download.Writer(ctx, w))
	s.count(*cl, n)
	return n, err
}

// count records n bytes received through cl: bytes from a source of
// another zone are counted (see coord.CrossZone).
func (s *source) count(cl coord.Claim, n int64) {
	if n <= 0 || !coord.CrossZone(s.m.cfg.Zone, cl.SourceZone) {
		return
	}
	s.crossed.Add(n)
	s.m.cfg.Metrics.CrossZoneBytes.Add(float64(n))
}

// flushCrossZone adds the bytes counted since the last flush to this
// host's count for the generation in Redis; on failure they wait for the
// next flush.
func (s *source) flushCrossZone(ctx context.Context) {
	n := s.crossed.Swap(0)
	if n == 0 {
		return
	}
	if err := s.m.coord.AddCrossZone(ctx, s.m.cfg.ID, s.ref, n); err != nil {
		s.crossed.Add(n)
		if ctx.Err() == nil {
			s.log.WithError(err).Debug("cross-zone byte count failed; retrying with the next report")
		}
	}
}

// setManifest records the manifest the pull follows.
func (s *source) setManifest(m *manifest.Manifest) {
	s.index = make(map[string]int, len(m.Entries))
	for i, e := range m.Entries {
		s.index[e.Path] = i
	}
}

// switchFrom moves the pull off failed, whose source failed with cause, to
// a newly claimed source. Concurrent callers wait for one switch; a caller
// whose claim was already replaced returns at once.
func (s *source) switchFrom(ctx context.Context, failed coord.Claim, cause error) error {
	s.switchMu.Lock()
	defer s.switchMu.Unlock()
	s.mu.Lock()
	cur := s.cl
	if cur == nil || cur.Slot != failed.Slot {
		s.mu.Unlock()
		if cur == nil {
			return errors.New("an earlier switch failed")
		}
		return nil
	}
	if s.switches >= maxSwitches {
		s.mu.Unlock()
		return fmt.Errorf("gave up after %d switches", s.switches)
	}
	s.switches++
	s.cl = nil
	s.left = failed.Source
	s.mu.Unlock()

	m := s.m
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	err := m.coord.Switch(sctx, failed, coord.SourceDead, cause.Error())
	cancel()
	if err != nil {
		return fmt.Errorf("release source %s: %w", failed.Source, err)
	}
	m.cfg.Metrics.Failures.WithLabelValues("dead").Inc()
	s.log.WithError(cause).WithField("source", failed.Source).Warn("source failed; resuming from another")
	return s.claimAnother(ctx, failed, nil, max(4*failed.Lease, 4*m.cfg.Poll, 10*time.Second))
}

// replaceLost moves the pull off lost, its own claim, which Redis ended
// (a lease lost: reaped under load, or taken by the host behind this one
// when this host relayed too slowly, see bypass), to a newly claimed
// source, keeping what the pull has (its requests in flight to lost's
// source end once the new source is claimed, see swarm.abandon): other
// than lost's at the first attempt (after a bypass, a second slot of the
// same source would split its uplink again), any after. Its rescue
// claims go too: they were for the place in the chain it leaves. An
// error when no source is found within wait, or the generation was
// cancelled or superseded (the claim finds it stale, and so does a
// renewal of a cancelled generation, which reports the lease lost): the
// pull then settles with lost, which releases whatever of it Redis still
// holds (its lease key, after a cancel).
func (s *source) replaceLost(ctx context.Context, lost coord.Claim, wait time.Duration) (err error) {
	s.switchMu.Lock()
	defer s.switchMu.Unlock()
	s.mu.Lock()
	if cur := s.cl; cur == nil || cur.Slot != lost.Slot || s.switches >= maxSwitches {
		s.mu.Unlock()
		return errors.New("the pull's claim changed meanwhile, or it switched too often")
	}
	s.switches++
	s.cl = nil
	s.left = lost.Source
	s.mu.Unlock()
	defer func() {
		if err != nil {
			s.mu.Lock()
			if s.cl == nil {
				s.cl = &lost
			}
			s.mu.Unlock()
		}
	}()
	s.sw.dropRescue(ctx)
	old := s.sw.primaryOf(lost) // before a new claim replaces it
	s.log.WithField("source", lost.Source).Info("lease lost; resuming from another source")
	if err := s.claimAnother(ctx, lost, []string{lost.Source}, wait); err != nil {
		return err
	}
	if now := s.claim(); old != nil && now != nil && now.Slot != old.cl.Slot {
		s.sw.abandon(old) // not when it claimed the same slot again
	}
	return nil
}

// claimAnother claims a source for the pull after its claim on failed
// ended, avoiding the sources in avoid at the first attempt, and waiting
// for a free one as a pull does, up to wait (a source whose puller died
// returns when its lease expires). Callers hold switchMu, with s.cl nil.
func (s *source) claimAnother(ctx context.Context, failed coord.Claim, avoid []string, wait time.Duration) error {
	m := s.m
	deadline := time.Now().Add(wait)
	for first := true; ; first = false {
		o := coord.ClaimOptions{Repair: failed.Repair, Serves: m.uploads() > 0, Slots: m.heldUploads()}
		if first {
			o.Avoid = avoid
		}
		if s.sw.active.Load() {
			// A chunked pull: not a source it holds already (but for a
			// rescue source, see swarm.plainSources). The pull's own source
			// streams chunks it has yet to receive (see assembler.work),
			// so it must not pull from this host: the claim still
			// refuses cycles.
			o.Avoid = append(o.Avoid, s.sw.plainSources()...)
		}
		cl, err := m.coord.Claim(ctx, m.cfg.ID, failed.Gen, o)
		switch {
		case err == nil:
			s.mu.Lock()
			s.cl = &cl
			s.mu.Unlock()
			m.cfg.Metrics.Claims.Inc()
			s.log.WithFields(logrus.Fields{"source": cl.Source, "slot": cl.Slot, "partial": cl.Partial}).Info("claimed another source")
			if !cl.Partial && s.sw.active.Load() {
				s.sw.dropRescue(ctx)
			}
			return nil
		case !errors.Is(err, coord.ErrNoSource) && !errors.Is(err, coord.ErrBusy):
			return fmt.Errorf("claim another source: %w", err)
		case time.Now().After(deadline):
			return fmt.Errorf("claim another source: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(jitter(min(m.cfg.Poll, time.Second))):
		}
	}
}

// bypass moves the pull's own claim off relay, a partial source that
// rescue, a rescue source leading the pull, outran many times, onto the
// relay's own source (see coord.Client.Bypass): the relay is told to claim
// again elsewhere. Nothing changes when the pull's claim is no longer the
// one measured (it switched meanwhile) or the claims moved in Redis.
func (s *source) bypass(ctx context.Context, rescue *feed, relay coord.Claim) {
	s.switchMu.Lock()
	defer s.switchMu.Unlock()
	cur := s.claim()
	if cur == nil || cur.Slot != relay.Slot || !cur.Partial || !s.sw.holds(rescue) {
		return
	}
	ncl, err := s.m.coord.Bypass(ctx, *cur, rescue.cl)
	if err != nil {
		if ctx.Err() == nil {
			s.log.WithError(err).WithField("relay", cur.Source).Debug("could not bypass a slow relay")
		}
		return
	}
	s.sw.forget(rescue)
	s.mu.Lock()
	s.cl = &ncl
	s.mu.Unlock()
	s.m.cfg.Metrics.Bypasses.Inc()
	s.log.WithFields(logrus.Fields{"relay": cur.Source, "source": ncl.Source, "slot": ncl.Slot}).Info("bypassed a slow relay: pulling from its source")
}
