package minion

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

// errBadManifest marks a manifest from a source that does not match the
// published digest: the source is bad, not merely unreachable.
var errBadManifest = errors.New("manifest does not match the published digest")

// errLeaseLost cancels a pull whose lease could not be renewed.
var errLeaseLost = errors.New("lease lost")

// pull brings this host's copy to generation g from the source claimed in
// cl (or the sources it moves to), then finishes (or fails) the claim.
func (m *Minion) pull(ctx context.Context, g coord.Generation, cl coord.Claim) error {
	log := m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "source": cl.Source, "slot": cl.Slot, "partial": cl.Partial})
	log.Info("claimed source; pulling")
	m.cfg.Metrics.Claims.Inc()
	src := newSource(m, g.ID, cl)
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	renewed := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(renewed)
		m.watchLoop(pctx, src, cancel, done, start)
	}()
	st, err := m.transfer(pctx, g, src)
	done <- err
	<-renewed
	if cause := context.Cause(pctx); err != nil && errors.Is(cause, errLeaseLost) {
		err = fmt.Errorf("%w: %w", cause, err)
	}
	// Settle the claim even when ctx is cancelled (shutdown): the slot must
	// go back and running_queue must not keep this host.
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer scancel()
	var others []coord.Claim // released by the finish
	if err == nil {
		others = src.sw.handOver()
	}
	src.sw.close(sctx)
	// No slot to release: a switch gave it back, and found no other.
	last := coord.Claim{Host: m.cfg.ID, Gen: g.Ref(), Repair: cl.Repair, Source: src.leftSource()}
	if c := src.claim(); c != nil {
		last = *c
	}
	if err != nil {
		v := verdict(ctx, err, mixedMismatch(err, src))
		m.cfg.Metrics.Failures.WithLabelValues([...]string{"ok", "dead", "bad"}[v]).Inc()
		if ferr := m.coord.Fail(sctx, last, v, err.Error(), m.uploads()); ferr != nil {
			log.WithError(ferr).Warn("could not record the failure")
		}
		return fmt.Errorf("pull generation %d from %s: %w", g.ID, last.Source, err)
	}
	// A repair claim that found the tree intact (a wiped state directory)
	// verified it: it repaired nothing.
	last.Repair = cl.Repair && st.Files+st.Dirs+st.Symlinks+st.Removed+st.Meta > 0
	// The hook, if one is due for g, is recorded as running before the
	// finish and runs after it; for a generation switched fleet-wide,
	// after the switch (fleetSwitch).
	var hk *pendingHook
	if g.Switch != coord.SwitchFleet {
		hk = m.prepareHook(sctx, g, m.pulled)
	}
	m.awaitSwitch = g.SwitchPending()
	// The pull's final figures, so status shows what it moved, ride on
	// the finish.
	got, total := m.ProgressOf(g.ID)
	final := coord.Progress{Gen: g.ID, Source: last.Slot, Done: got, Total: total, Started: start}
	now, ferr := m.coord.FinishReport(sctx, last, m.heldUploads(), final, others...)
	if ferr != nil && !errors.Is(ferr, coord.ErrStale) {
		// Whether the finish released the extra claims is not known:
		// release them one by one (a claim released already is left).
		for _, o := range others {
			if err := m.coord.Release(sctx, o); err != nil {
				log.WithError(err).Warn("could not give back an extra source")
			}
		}
		return fmt.Errorf("finish generation %d: %w", g.ID, ferr)
	}
	m.setFinished(g)
	if m.listens && now.Ref() == g.Ref() && now.Switch != coord.SwitchFleet {
		// What the finish found is current until a message on Run's
		// subscription says otherwise: the next Step reads nothing. Not
		// for a generation switched on the master's order, which comes
		// as one message: a host waiting for it reads the generation
		// every ten polls, lest a lost message cost more.
		m.knownGen, m.knownUntil = &now, time.Now().Add(finishKnown)
	}
	m.drifting, m.needSource = "", "" // whatever drifted, the pull brought back
	if last.Repair {
		m.cfg.Metrics.Repairs.Inc()
	}
	m.cfg.Metrics.PullDuration.Observe(time.Since(start).Seconds())
	m.cfg.Metrics.FilesReceived.Add(float64(st.Files))
	if m.cfg.Task == coord.DefaultTask { // the gauge is the plain task's
		m.cfg.Metrics.Generation.Set(float64(g.ID))
	}
	log.WithFields(logrus.Fields{
		"files": st.Files, "bytes": st.Bytes, "removed": st.Removed,
		"elapsed": time.Since(start).Round(time.Millisecond).String(),
	}).Info("holds generation; offered as a source")
	if ferr == nil {
		m.runHook(ctx, g, hk) // not for a generation superseded meanwhile
		if g.Switch == coord.SwitchFleet && !g.SwitchPending() {
			// Ordered before this pull began (a late host): it switched
			// as its release verified; record it and run its hook now,
			// as a one-shot sync returns.
			if err := m.fleetSwitch(ctx, g); err != nil {
				log.WithError(err).Warn("could not record the switch; the next step does")
			}
		}
	}
	return nil
}

// forgetHeld stops serving and watching the held copy and drops the
// in-memory state that vouches for it: a pull is about to change the tree
// (the model's pulls take the same step). The state directory's record is
// the caller's to clear.
func (m *Minion) forgetHeld() {
	m.server.Set(nil)
	if m.watch != nil {
		m.watch.disarm()
	}
	m.mu.Lock()
	m.held, m.verified, m.armed = nil, false, ""
	m.mu.Unlock()
}

// mixedMismatch reports whether err is a bad hash on a file whose bytes came
// from more than one source: it proves no single source bad.
func mixedMismatch(err error, src *source) bool {
	var mismatch *apply.HashMismatchError
	return errors.As(err, &mismatch) && src.wasMixed(mismatch.Path)
}

// renewInterval is how far apart a pull's lease renewals are: half the
// lease, but never so far apart that less than renewSlack (or, for a
// short lease, two thirds of it) remains when a renewal is due: 7.5 s
// for the default 15 s lease, 1 s for the tests' 3 s one. The watch loop
// renews at the last tick (a second) within it: every 7 s by default.
func renewInterval(lease time.Duration) time.Duration {
	return min(lease/2, max(lease/3, lease-renewSlack))
}

// renewSlack is what remains of a lease when its renewal is due, for a
// lease of 11.25 s or more (see renewInterval).
const renewSlack = 7500 * time.Millisecond

// watchLoop renews the pull's lease (see renewInterval) and reports
// progress with each renewal (and once at the start, and at the end of a
// pull that failed: one that went through reports with its finish) until
// the transfer's outcome comes on done; started is when the pull began. A
// lost lease cancels the pull. Progress rides on the renewals, in the
// same script, and so does the host's heartbeat (the
// heartbeat loop skips its beats meanwhile): at 10,000 hosts a report a
// second was a fifth of a task's Redis requests, and the separate
// progress writes and heartbeats of pulling hosts two fifths at a report
// a renewal. Renewals were a third of the TTL apart until 2026-11-30;
// they were then a third of the script calls of a 10,000-host task. A
// renewal that fails is retried every tick (a second) until the lease
// runs out, and a lease that ran out is re-created
// from its claim record (renewScript) until the reaper ends the claim; a
// cancel or a new generation reaches the pull through its subscription,
// not the renewal's timing.
func (m *Minion) watchLoop(ctx context.Context, src *source, cancel context.CancelCauseFunc, done <-chan error, started time.Time) {
	lease := src.claim().Lease
	renewEvery := renewInterval(lease)
	if renewEvery <= 0 {
		renewEvery = time.Second
	}
	tick := min(time.Second, renewEvery)
	// Renewals are counted in ticks, not measured in time: a renewal
	// returns a moment after its tick, so "7.5 s since the last" would
	// fall between two ticks and wait for the later one.
	renewTicks := max(1, int(renewEvery/tick))
	ticks := 0
	t := time.NewTicker(tick)
	defer t.Stop()
	lastBalance := time.Now()
	report := func(ctx context.Context) {
		slot := ""
		if cl := src.claim(); cl != nil {
			slot = cl.Slot
		}
		got, total := m.ProgressOf(src.gen)
		p := coord.Progress{Gen: src.gen, Source: slot, Done: got, Total: total, Started: started}
		beat, err := m.coord.ReportProgress(ctx, m.cfg.ID, p, m.cfg.Groups)
		if beat {
			m.renewBeat.Store(time.Now().UnixNano()) // the heartbeat loop skips its next beat
		}
		if err != nil && ctx.Err() == nil {
			m.cfg.Log.WithError(err).Debug("progress report failed")
		}
		src.flushCrossZone(ctx)
	}
	report(ctx) // status shows the source at once
	for {
		nudged := false
		select {
		case err := <-done:
			// The final figures, so status shows what the pull moved:
			// a pull that went through reports them with its finish,
			// and flushes its count of bytes from other zones here.
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			if err != nil {
				report(rctx)
			} else {
				src.flushCrossZone(rctx)
			}
			rcancel()
			return
		case <-ctx.Done():
			return
		case ask := <-src.sw.bypass:
			src.bypass(ctx, ask.rescue, ask.relay)
			continue
		case <-m.notes:
			// A message on this host's channels while it pulls: a new
			// generation, or the host behind it took its place (see
			// source.bypass). The renewal tells which, now rather than at
			// its time.
			nudged = true
		case <-t.C:
			ticks++
		}
		if time.Since(lastBalance) >= balanceEvery {
			src.sw.rebalance(ctx) // replace a slow source, claim missing ones
			lastBalance = time.Now()
		}
		if !nudged && ticks < renewTicks {
			continue
		}
		cl := src.claim()
		if cl == nil {
			src.sw.renew(ctx)
			report(ctx)
			continue // switching sources: the new claim starts a new lease
		}
		// One call renews every claim and carries the progress and the
		// heartbeat.
		got, total := m.ProgressOf(src.gen)
		extras := src.sw.renewable()
		others := make([]coord.Claim, len(extras))
		for i, p := range extras {
			others[i] = p.cl
		}
		res, err := m.coord.RenewReport(ctx, *cl, coord.Progress{Gen: src.gen, Source: cl.Slot, Done: got, Total: total, Started: started}, m.cfg.Groups, others)
		src.flushCrossZone(ctx)
		restored := false
		if err == nil {
			m.renewBeat.Store(time.Now().UnixNano())
			restored, err = res.Claims[0].Restored, res.Claims[0].Err
			src.sw.renewed(extras, res.Claims[1:])
			src.sw.outlook(coord.Outlook{Free: res.Free, Starved: res.Starved}, time.Now())
		}
		if restored {
			m.cfg.Metrics.LeasesRecreated.Inc()
			m.cfg.Log.WithField("slot", cl.Slot).Warn("Redis had lost this host's lease; re-created it from its claim")
		}
		if errors.Is(err, coord.ErrLeaseLost) || errors.Is(err, coord.ErrStale) {
			if now := src.claim(); now != nil && now.Slot != cl.Slot {
				continue // the pull moved to another source meanwhile
			}
			if errors.Is(err, coord.ErrLeaseLost) {
				// Within a third of a lease, before the extra claims'
				// leases (renewed by this loop, half a lease ago) run
				// out.
				rerr := src.replaceLost(ctx, *cl, lease/3)
				if rerr == nil {
					ticks = 0
					continue
				}
				if ctx.Err() == nil && !errors.Is(rerr, coord.ErrStale) { // stale: cancelled or superseded
					m.cfg.Log.WithError(rerr).Warn("lease lost and no other source claimed; the pull stops")
				}
			}
			cancel(errLeaseLost)
			return
		}
		if err != nil && ctx.Err() == nil {
			m.cfg.Log.WithError(err).Warn("lease renewal failed; retrying")
			continue
		}
		ticks = 0
	}
}

// offerEarly offers this host as a partial source of g as soon as its pull
// claimed a source, before it has the manifest, when it pipelines: the
// next host of a chain claims it while this one fetches the manifest and
// scans its tree (a link of a chain then costs a claim, not a manifest
// request and a scan as well; 20-45 ms a link on the testbed's row 1),
// and its requests for g wait for the snapshot meanwhile (up to
// expectWait: see peer.Server.Expect). Its rescue slot is offered with
// its slots when it takes several sources: the generation's format is not
// known yet, and only chunked pulls claim rescue slots. It returns whether
// it offered, and what ends the server's wait (the pull's Set of the
// snapshot ends it too).
//
// A claim with ClaimOptions.Offer offered in the same call (cl.Offered),
// and its caller, claimAndPull, holds the server's expectation: then
// nothing is left to do here.
func (m *Minion) offerEarly(ctx context.Context, g coord.Generation, cl coord.Claim) (bool, func()) {
	if !m.offersEarly() {
		return false, func() {}
	}
	if cl.Offered {
		return true, func() {}
	}
	unexpect := m.server.Expect(g.ID, expectWait)
	m.offer(ctx, g, true)
	return true, unexpect
}

// offersEarly: this host offers itself as a partial source as soon as
// its pull claimed a source (see offerEarly).
func (m *Minion) offersEarly() bool { return m.cfg.Pipeline && m.uploads() > 0 }

// expectWait bounds how long a request waits for the snapshot of a
// generation this host offered itself for before it had the manifest:
// less than the pullers' header timeout (--connect-timeout, 5 s; the
// lab's 2 s), so a host whose manifest is late answers 409, as one that
// serves nothing, and is not taken for a stalled peer.
const expectWait = time.Second

// offer offers this host's slots as a partial source of g, and its rescue
// slot when chunked (chunked pulls take several sources: the hosts two
// links below this one may claim it, see swarm.rescue) and it takes
// several sources itself.
func (m *Minion) offer(ctx context.Context, g coord.Generation, chunked bool) {
	var err error
	if chunked && m.cfg.Sources > 1 {
		err = m.coord.OfferPartial(ctx, m.cfg.ID, g.Ref(), m.uploads())
	} else {
		err = m.coord.OfferSlots(ctx, m.cfg.ID, g.Ref(), m.uploads(), false)
	}
	if err != nil {
		m.cfg.Log.WithError(err).Warn("could not offer this host as a partial source")
	}
}

// transfer does the pull itself: manifest, diff, apply, then records and
// serves the new copy.
//
// A pipelining host offers its slots as soon as it claimed its source
// (offerEarly), and serves the generation from the moment it has the
// manifest: the manifest at once (requests that came before wait for it),
// each file once the plan says it is in place or as its chunks land
// (peer.Incoming, settled when the plan is known). So the next host of a
// chain claims it while this one fetches the manifest and scans: a hop of
// the chain costs a claim, not a manifest request and a scan of the tree.
func (m *Minion) transfer(ctx context.Context, g coord.Generation, src *source) (_ apply.Stats, err error) {
	if m.cfg.Model != nil {
		return m.transferModel(ctx, g, src)
	}
	cl := src.claim()
	offered, unexpect := m.offerEarly(ctx, g, *cl)
	defer unexpect()
	enc, err := m.fetchManifest(ctx, g, *cl, src.sw.rescueAddr())
	if err != nil {
		return apply.Stats{}, fmt.Errorf("fetch manifest: %w", err)
	}
	remote, err := decodeManifest(enc, g)
	if err != nil {
		return apply.Stats{}, err
	}
	src.setManifest(remote)

	m.mu.Lock()
	prev, prevMan := m.held, m.heldMan
	m.mu.Unlock()
	// From here on the tree changes: keep no state that vouches for the
	// old copy.
	m.forgetHeld()
	if err := clearHeld(m.cfg.StateDir); err != nil {
		return apply.Stats{}, err
	}

	root := taskRoot(m.cfg.Root, g.LocalPath())
	// A released task (publish --atomic, or a path that is a release
	// already) is built in a release beside the live tree, which changes
	// only at the switch (release.go).
	var release, from string
	if g.Atomic > 0 || newLayout(root).released() {
		if root, from, err = m.releaseRoot(ctx, g, remote); err != nil {
			return apply.Stats{}, fmt.Errorf("prepare the release of generation %d: %w", g.ID, err)
		}
		release = releaseName(g.Digest)
	}
	var incoming *peer.Incoming
	if m.cfg.Pipeline && m.uploads() > 0 {
		var files []manifest.Entry
		for _, e := range remote.Entries {
			if e.Type == manifest.File {
				files = append(files, e)
			}
		}
		incoming = peer.NewIncoming(files, m.cfg.ArrivalWait)
		defer func() {
			if err != nil {
				incoming.Abort(err) // readers waiting on this pull fail now
				m.server.Set(nil)
			}
		}()
		m.server.Set(&peer.Snapshot{Gen: g.ID, Digest: g.Digest, Encoded: enc, Manifest: remote, Root: root, Incoming: incoming})
		if !offered {
			m.offer(ctx, g, remote.Chunking != nil)
		}
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return apply.Stats{}, fmt.Errorf("create parent of %s: %w", root, err)
	}
	if err := m.sweepAbandoned(ctx, root); err != nil {
		return apply.Stats{}, err
	}
	ex, err := exclude.Parse(remote.Exclude)
	if err != nil {
		return apply.Stats{}, fmt.Errorf("manifest of generation %d: %w", g.ID, err)
	}
	var protected []string // excluded here: neither fetched nor deleted
	local, err := manifest.Build(ctx, root, manifest.Options{
		Cache:    m.cache,
		Chunking: remote.Chunking, // hashes compare within one format
		Exclude:  ex,
		Excluded: func(p string) { protected = append(protected, p) },
		Warn:     func(p string, err error) { m.cfg.Log.WithField("path", p).WithError(err).Warn("skipped local entry") },
	})
	if err != nil {
		return apply.Stats{}, fmt.Errorf("scan local tree: %w", err)
	}
	if err := manifest.FillHashes(ctx, root, local, remote, m.cache); err != nil {
		return apply.Stats{}, fmt.Errorf("hash local tree: %w", err)
	}
	plan, err := manifest.Diff(local, remote, manifest.DiffOptions{Delete: g.Delete, Owner: m.owner, Protected: protected})
	if err != nil {
		return apply.Stats{}, fmt.Errorf("diff %s against generation %d: %w", root, g.ID, err)
	}
	if release != "" {
		if err := unshare(root, plan); err != nil {
			return apply.Stats{}, err
		}
	}
	// Temporary files of an interrupted pull go, but for the part files of
	// the files this plan fetches: they are resumed (see resume.go).
	parts := resumable(remote, plan)
	swept, err := apply.Sweep(ctx, root, parts)
	if err != nil {
		return apply.Stats{}, fmt.Errorf("remove stale temporary files: %w", err)
	}
	interrupted := swept.Removed+len(swept.Kept) > 0
	if swept.Removed > 0 {
		m.cfg.Log.WithField("files", swept.Removed).Info("removed temporary files left by an interrupted pull")
	}
	need := plan.FetchBytes()
	// Kept part files hold some of it already.
	if err := checkSpace(filepath.Dir(root), max(0, need-partBytes(swept.Kept))); err != nil {
		return apply.Stats{}, err
	}
	m.received.Store(0)
	m.planned.Store(need)
	m.pullGen.Store(g.ID)
	m.cfg.Log.WithFields(logrus.Fields{
		"fetch": plan.Count(manifest.OpFetch), "bytes": need, "remove": plan.Count(manifest.OpRemove),
		"mkdir": plan.Count(manifest.OpMkdir), "meta": plan.Count(manifest.OpMeta),
	}).Info("diffed local tree")
	opts := apply.Options{
		Fetcher:  src,
		Owner:    m.owner,
		Chunking: remote.Chunking,
		Cache:    m.cache,
		Workers:  m.cfg.Workers,
		Progress: m.progress,
		Log:      m.cfg.Log,
	}
	var asm *assembler
	if remote.Chunking != nil {
		// Format 3: files of several chunks are built from the chunks
		// this host has already and the rest fetched as ranges.
		src.sw.active.Store(true)
		src.sw.rescue(ctx)
		src.sw.grow(ctx)
		asm = newAssembler(m, src.sw, root)
		// Compression is asked for by the host (--compress) or by the
		// task (publish --compress): either is enough.
		asm.compress = m.cfg.Compress || g.Compress
		if err := asm.index(ctx, local, remote, plan); err != nil {
			return apply.Stats{}, fmt.Errorf("index local chunks: %w", err)
		}
		if from != "" && prev != nil && prev.root(m.cfg.Root) == from {
			asm.indexTree(from, prevMan, remote.Chunking) // the live release: changed files are built from it
		}
		if n, b, err := asm.indexParts(ctx, swept.Kept, parts); err != nil {
			return apply.Stats{}, fmt.Errorf("index kept part files: %w", err)
		} else if n > 0 {
			m.cfg.Log.WithFields(logrus.Fields{"files": n, "bytes": b}).Info("resuming files an interrupted pull left half done")
		}
		opts.Assembler = asm
	} else {
		// Whole files from the pull's own source alone: a rescue claim
		// made with the first claim serves nothing here.
		src.sw.dropRescue(ctx)
	}
	if incoming != nil {
		// The plan is known: what it does not fetch is in place; hosts
		// behind this one stream the rest as its bytes land.
		incoming.Settle(plan.Entries(manifest.OpFetch))
		opts.Observer = incoming
	}
	m.pulled = nil
	st, err := apply.Apply(ctx, root, plan, opts)
	if asm != nil && asm.compress && asm.fetched.Load() > 0 {
		m.cfg.Log.WithFields(logrus.Fields{"fetched": asm.fetched.Load(), "wire": asm.wire.Load()}).Info("fetched chunks compressed")
	}
	if asm != nil && asm.copied.Load() > 0 {
		m.cfg.Log.WithFields(logrus.Fields{"reused": asm.copied.Load(), "resumed": asm.resumed.Load(), "fetched": asm.fetched.Load()}).Info("built changed files from chunks already on this host")
	}
	if serr := m.cache.Save(filepath.Join(m.cfg.StateDir, cacheFile)); serr != nil {
		m.cfg.Log.WithError(serr).Warn("could not save the hash cache")
	}
	if err != nil {
		return st, err // the deferred Abort stops the readers
	}
	// Every file is durable (Apply fsyncs files and their directories)
	// before the state records the tree as held; so are the renames of an
	// interrupted pull, which this Apply found done and did not sync.
	if interrupted {
		if err := apply.SyncFS(root); err != nil {
			return st, err
		}
	}
	h := held{Gen: g.ID, Digest: g.Digest, Path: g.LocalPath(), Delete: g.Delete, Release: release}
	if err := saveHeld(m.cfg.StateDir, h, enc); err != nil {
		return st, err
	}
	if err := m.clearPullRecord(); err != nil {
		return st, err
	}
	m.pulled = changedPaths(plan)
	m.mu.Lock()
	m.held, m.heldEnc, m.heldMan = &h, enc, remote
	m.mu.Unlock()
	m.setVerified(true)
	if err := m.switchHeld(g); err != nil {
		return st, err
	}
	return st, nil
}

// fetchManifest fetches generation g's manifest from the source of cl. A
// source behind a slow or congested link may take a second to answer, and
// the hosts behind this one in the chain wait for it (this host offers its
// slots once it has the manifest): when the source has not answered within
// its hedge (see hedgeAfter: rescue is the address of the pull's rescue
// source, if any) and the manifest is small (smallManifest), the
// origin is asked too, and the first answer that matches the published
// digest wins.
func (m *Minion) fetchManifest(ctx context.Context, g coord.Generation, cl coord.Claim, rescue string) ([]byte, error) {
	if g.OriginAddr == "" || cl.SourceAddr == g.OriginAddr || !smallManifest(g) {
		return askManifest(ctx, m.client.Manifest, cl, g.ID)
	}
	type answer struct {
		enc []byte
		err error
	}
	answers := make(chan answer, 2)
	var wg sync.WaitGroup
	defer wg.Wait() // after the cancel below: the request left ends at once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ask := func(src coord.Claim) {
		wg.Go(func() {
			enc, err := askManifest(ctx, m.client.Manifest, src, g.ID)
			if err == nil && manifest.Digest(enc) != g.Digest {
				err = fmt.Errorf("%w: from %s", errBadManifest, src.SourceAddr)
			}
			answers <- answer{enc, err}
		})
	}
	ask(cl)
	pending := 1
	hedge := time.NewTimer(hedgeAfter(g, rescue))
	defer hedge.Stop()
	var first error
	for {
		select {
		case <-hedge.C:
			ask(coord.Claim{SourceAddr: g.OriginAddr}) // whole: asked once
			pending++
		case a := <-answers:
			pending--
			if a.err == nil {
				return a.enc, nil
			}
			if first == nil {
				first = a.err
			}
			if pending == 0 {
				// Both failed, or the source failed before the hedge:
				// its error, as without one.
				return nil, first
			}
		}
	}
}

// askManifest asks cl's source for the manifest of generation gen with
// get. A partial source offers itself as soon as it claimed its own, before
// it has the manifest (see offerEarly), and answers ErrStale until it has
// it (after waiting up to its expectWait): in a chain formed faster than
// manifests travel down it, that is seconds. Such a source is asked
// again, up to partialManifestWait in all, rather than taken for dead.
func askManifest(ctx context.Context, get func(context.Context, string, int64) ([]byte, error), cl coord.Claim, gen int64) ([]byte, error) {
	deadline := time.Now().Add(partialManifestWait)
	for {
		enc, err := get(ctx, cl.SourceAddr, gen)
		if err == nil || !cl.Partial || !errors.Is(err, peer.ErrStale) || time.Now().After(deadline) {
			return enc, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(manifestRetry):
		}
	}
}

// partialManifestWait bounds how long a partial source that does not have
// the manifest yet is asked again (askManifest); manifestRetry is the
// pause between two asks (the source's own wait comes before each
// answer).
const (
	partialManifestWait = 15 * time.Second
	manifestRetry       = 50 * time.Millisecond
)

// hedgeAfter is how long fetchManifest waits for the pull's source before
// it asks g's origin too: manifestHedge, or headHedge when the origin is
// the pull's rescue source, at address rescue (the source is the first
// host of a chain, and this host the second), and the manifest is
// headHedgeBytes or less (manifestSize). Behind a slow first host the
// manifest's request queues on that host's downlink, full of the origin's
// data: on the netbed, with that host at B/8, the manifest took 2-306 ms
// to come, and this host, which judges its source only once it has it,
// held every host behind it that long. Behind a healthy first host that
// is still fetching the manifest itself, the origin's uplink pays for
// that much once a pull, beside the first host's own copy.
func hedgeAfter(g coord.Generation, rescue string) time.Duration {
	if rescue != "" && rescue == g.OriginAddr && manifestSize(g) <= headHedgeBytes {
		return headHedge
	}
	return manifestHedge
}

// manifestHedge, headHedge, headHedgeBytes: see hedgeAfter.
const (
	manifestHedge  = 300 * time.Millisecond
	headHedge      = 50 * time.Millisecond
	headHedgeBytes = 256 << 10
)

// manifestSize estimates the size of g's encoded manifest: about 100
// bytes a file and 104 a chunk of the default average size (see
// docs/PERFORMANCE.md, "Chunk list encoding"), at most one chunk a file
// more than the average makes.
func manifestSize(g coord.Generation) int64 {
	return 100*g.Files + 104*(g.Files+g.Bytes/int64(chunk.DefaultParams().Avg))
}

// smallManifest: g's manifest is 3.6 MB at most (see manifestSize: 1,000
// files of 4 GiB in all), a second or less of a fast origin's uplink.
func smallManifest(g coord.Generation) bool {
	return g.Files <= 1000 && g.Bytes <= 4<<30
}

// decodeManifest checks a manifest a source sent against g's published
// digest and decodes it.
func decodeManifest(enc []byte, g coord.Generation) (*manifest.Manifest, error) {
	if got := manifest.Digest(enc); got != g.Digest {
		return nil, fmt.Errorf("%w: got %s, want %s", errBadManifest, got, g.Digest)
	}
	remote, err := manifest.Decode(enc, manifest.DefaultLimits())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadManifest, err)
	}
	return remote, nil
}

// checkSpace refuses a pull that cannot fit before it writes a byte.
func checkSpace(dir string, need int64) error {
	var s unix.Statfs_t
	if err := unix.Statfs(dir, &s); err != nil {
		return fmt.Errorf("check free space in %s: %w", dir, err)
	}
	free := int64(s.Bavail) * int64(s.Bsize)
	if need > free {
		return fmt.Errorf("not enough space in %s: the pull needs %d bytes, %d are free: %w", dir, need, free, unix.ENOSPC)
	}
	return nil
}

// verdict says what a failed pull tells about its source. A bad hash on a
// file that came from several sources (mixed) proves none of them bad.
func verdict(ctx context.Context, err error, mixed bool) coord.Verdict {
	var mismatch *apply.HashMismatchError
	switch {
	case ctx.Err() != nil, errors.Is(err, errLeaseLost):
		return coord.SourceOK
	case errors.As(err, &mismatch) && mixed:
		return coord.SourceOK
	case errors.As(err, &mismatch), errors.Is(err, errBadManifest):
		return coord.SourceBad
	case errors.Is(err, peer.ErrUnauthorized):
		// Most likely our own secret is wrong: dropping the source would
		// let one misconfigured host take the origin away from everyone.
		return coord.SourceOK
	case errors.Is(err, peer.ErrUnavailable), errors.Is(err, peer.ErrStale), errors.Is(err, peer.ErrNotFound):
		return coord.SourceDead
	}
	return coord.SourceOK
}

// progress counts bytes received from sources.
func (m *Minion) progress(n int64) {
	m.received.Add(n)
	m.cfg.Metrics.BytesReceived.Add(float64(n))
}
