package minion

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

// verifyDue reports whether the held tree must be verified before this host
// may say it holds it: never verified since start (or since drift), changed
// on disk as the watcher saw, or not verified for a while (VerifyEvery, or
// ScanEvery where the watcher cannot see the whole tree).
func (m *Minion) verifyDue() bool {
	m.mu.Lock()
	verified, checked := m.verified, m.checked
	m.mu.Unlock()
	if !verified {
		return true
	}
	if m.watch == nil {
		return false // a one-shot sync verifies once
	}
	if m.watch.take() {
		return true
	}
	every := m.cfg.VerifyEvery
	if !m.watch.complete() {
		every = m.cfg.ScanEvery
	}
	return time.Since(checked) >= every
}

// verify compares the tree on disk with the held manifest: type, size,
// mtime, mode and link target of every entry (and, with delete, no extra
// entry), and the content hash of every file from the hash cache, keyed by
// size, mtime, inode and ctime, so a file is rehashed only when it was
// touched since it was hashed. It returns the plan that repairs the tree:
// empty when it matches.
func (m *Minion) verify(ctx context.Context) (*manifest.Plan, error) {
	m.mu.Lock()
	h, man := m.held, m.heldMan
	m.mu.Unlock()
	start := time.Now()
	root := h.root(m.cfg.Root)
	temps := 0
	ex, err := exclude.Parse(man.Exclude)
	if err != nil {
		return nil, fmt.Errorf("held manifest: %w", err)
	}
	var protected []string // excluded: not part of the held tree
	local, err := manifest.Build(ctx, root, manifest.Options{
		Cache:    m.cache,
		Chunking: man.Chunking,
		Exclude:  ex,
		Excluded: func(p string) { protected = append(protected, p) },
		Warn:     func(p string, err error) { m.cfg.Log.WithField("path", p).WithError(err).Debug("skipped local entry") },
		Temp:     func(string) { temps++ },
	})
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", root, err)
	}
	if temps > 0 {
		// Left by an interrupted pull: not part of the tree, and not drift.
		if _, err := apply.Sweep(ctx, root, nil); err != nil {
			return nil, fmt.Errorf("remove stale temporary files: %w", err)
		}
	}
	before := m.cache.Len()
	if err := manifest.FillHashes(ctx, root, local, man, m.cache); err != nil {
		return nil, fmt.Errorf("verify %s: %w", root, err)
	}
	if m.cache.Len() != before {
		m.saveCache()
	}
	plan, err := manifest.Diff(local, man, manifest.DiffOptions{Delete: h.Delete, Owner: m.owner, Protected: protected})
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", root, err)
	}
	m.cfg.Metrics.Verifications.Inc()
	m.cfg.Metrics.VerifyDuration.Observe(time.Since(start).Seconds())
	m.mu.Lock()
	m.checked = time.Now()
	m.mu.Unlock()
	return plan, nil
}

// setVerified records that the tree on disk matches the held generation:
// it is served, announced and re-asserted from now on. rearm makes the
// watcher watch the tree afresh (after this host changed it).
func (m *Minion) setVerified(rearm bool) {
	m.mu.Lock()
	h, enc, man := m.held, m.heldEnc, m.heldMan
	wasVerified := m.verified
	m.verified = true
	m.checked = time.Now()
	key := fmt.Sprintf("%d/%s", h.Gen, h.Digest)
	rearm = rearm || m.armed != key
	m.armed = key
	m.mu.Unlock()
	if cur := m.server.Current(); !wasVerified || cur == nil || cur.Gen != h.Gen || cur.Digest != h.Digest || cur.Incoming != nil {
		m.server.Set(snapshot(m.cfg.Root, h, enc, man))
		if m.cfg.Task == coord.DefaultTask { // the gauge is the plain task's
			m.cfg.Metrics.Generation.Set(float64(h.Gen))
		}
	}
	if m.watch != nil && rearm {
		m.watch.arm(h.root(m.cfg.Root), man)
		m.watch.take() // events of our own writes
	}
}

// setUnverified records that the tree can no longer be vouched for.
func (m *Minion) setUnverified() {
	m.mu.Lock()
	m.verified = false
	m.mu.Unlock()
}

// repair brings a tree that drifted from the generation it holds back to
// it. Drift that needs no bytes (a mode or mtime changed, an extra file, a
// symlink or directory) is repaired on the spot; changed or missing file
// content comes from a source, through a repair claim: the host stays in
// finished_queue and is listed as repairing meanwhile.
func (m *Minion) repair(ctx context.Context, g coord.Generation, plan *manifest.Plan) (Outcome, error) {
	m.setUnverified()
	m.mu.Lock()
	h, man := *m.held, m.heldMan
	m.mu.Unlock()
	key := genKey(g)
	summary := describe(plan)
	if m.drifting != key {
		m.drifting = key
		m.cfg.Metrics.DriftEntries.Add(float64(len(plan.Actions)))
		m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "entries": len(plan.Actions)}).Warn("held tree drifted from its generation: " + summary + "; repairing")
		// Listed as repairing (if Redis lists it finished): the
		// generation is not said done of this host meanwhile.
		if err := m.coord.Drift(ctx, m.cfg.ID, g.Ref(), summary); err != nil {
			m.cfg.Log.WithError(err).Warn("could not report the drift")
		}
	}
	root := h.root(m.cfg.Root)
	if plan.Count(manifest.OpFetch) == 0 {
		if _, err := apply.Apply(ctx, root, plan, apply.Options{Cache: m.cache, Log: m.cfg.Log, Owner: m.owner, Chunking: man.Chunking}); err != nil {
			return Waiting, fmt.Errorf("repair drift: %w", err)
		}
		m.setVerified(true)
		if err := m.coord.Finish(ctx, coord.Claim{Host: m.cfg.ID, Gen: g.Ref(), Repair: true}, m.heldUploads()); err != nil && !errors.Is(err, coord.ErrStale) {
			m.cfg.Log.WithError(err).Warn("could not record the repair")
		}
		m.drifting = ""
		m.setFinished(g)
		m.cfg.Metrics.Repairs.Inc()
		m.repaired(g)
		return Repaired, nil
	}
	// File content changed or went missing: until it is back, serve
	// nothing of it, and keep no state that vouches for the tree.
	m.serveWithout(plan.Entries(manifest.OpFetch))
	if err := clearHeld(m.cfg.StateDir); err != nil {
		return Waiting, err
	}
	m.needSource = key
	return m.repairFromSource(ctx, g)
}

// repairFromSource pulls the drifted content of g from a source (the pull
// diffs the tree again, so it moves what differs then). While no source is
// free, each Step comes back here without verifying the tree again.
func (m *Minion) repairFromSource(ctx context.Context, g coord.Generation) (Outcome, error) {
	out, err := m.claimAndPull(ctx, g, true, Repaired)
	if err != nil {
		return out, fmt.Errorf("repair drift: %w", err)
	}
	if out == Repaired {
		m.repaired(g)
	}
	return out, nil
}

// repaired logs a finished repair (pull and Finish did the bookkeeping).
func (m *Minion) repaired(g coord.Generation) {
	m.cfg.Log.WithField("gen", g.ID).Info("repaired drift: the tree matches its generation again")
}

// serveWithout keeps serving the held tree except the files in gone,
// whose content on disk is not the manifest's: a puller asking for one
// gets a 404 and moves to another source, rather than bad bytes.
func (m *Minion) serveWithout(gone []manifest.Entry) {
	m.mu.Lock()
	h, enc, man := m.held, m.heldEnc, m.heldMan
	m.mu.Unlock()
	drop := make(map[string]bool, len(gone))
	for _, e := range gone {
		drop[e.Path] = true
	}
	kept := &manifest.Manifest{Entries: make([]manifest.Entry, 0, len(man.Entries))}
	for _, e := range man.Entries {
		if !drop[e.Path] {
			kept.Entries = append(kept.Entries, e)
		}
	}
	m.server.Set(&peer.Snapshot{Gen: h.Gen, Digest: h.Digest, Encoded: enc, Manifest: kept, Root: h.root(m.cfg.Root)})
}

// describe sums up a repair plan for logs and events: counts per action
// and the first few paths.
func describe(plan *manifest.Plan) string {
	var parts []string
	for _, op := range []manifest.Op{manifest.OpFetch, manifest.OpRemove, manifest.OpMkdir, manifest.OpSymlink, manifest.OpMeta} {
		if n := plan.Count(op); n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, op))
		}
	}
	var paths []string
	for _, a := range plan.Actions {
		if len(paths) == 3 {
			paths = append(paths, "...")
			break
		}
		paths = append(paths, a.Entry.Path)
	}
	return strings.Join(parts, ", ") + " (" + strings.Join(paths, ", ") + ")"
}

func (m *Minion) saveCache() {
	if err := m.cache.Save(filepath.Join(m.cfg.StateDir, cacheFile)); err != nil {
		m.cfg.Log.WithError(err).Warn("could not save the hash cache")
	}
}
