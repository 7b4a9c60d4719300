package minion

import (
	"context"
	"fmt"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

// Model stands in for a pull's data plane. The simulator (test/sim) runs
// thousands of minions whose coordination is this package's own code
// against a real Redis (heartbeats, the poll loop, claims, lease renewal,
// progress reports, the swarm's extra claims and their rebalancing,
// offers, finish), while no manifest crosses a network, no byte moves
// and nothing is written to disk: the model says when the bytes would
// have arrived. Nil in every real daemon.
type Model interface {
	// Manifest returns the encoded manifest of generation gen as the
	// source at addr serves it; the minion checks it against the
	// published digest, as a real pull does.
	Manifest(ctx context.Context, addr string, gen int64) ([]byte, error)
	// Pull returns once the modelled bytes of p have arrived, or with
	// the error a real transfer would have met (a peer error such as
	// peer.ErrUnavailable for a source that stalled).
	Pull(ctx context.Context, p ModelPull) error
}

// ModelPull is one pull as a Model sees it.
type ModelPull struct {
	Host string
	Gen  coord.Generation
	// Sources lists the hosts the pull holds claims on now, the pull's
	// own claim first; it changes as the swarm claims and drops sources.
	Sources func() []string
	// Planned sets the bytes the pull is to receive; Received counts
	// bytes as they arrive (progress reports and ProgressOf show both).
	Planned  func(n int64)
	Received func(n int64)
}

// transferModel is transfer for a minion whose data plane is cfg.Model:
// the same coordination steps in the same order (the manifest checked
// against the digest; for a chunked generation, the swarm's extra claims;
// when pipelining, the host served and offered as a partial source; the
// held state once every byte is in), with no disk and no peer. Keep it in
// step with transfer.
func (m *Minion) transferModel(ctx context.Context, g coord.Generation, src *source) (apply.Stats, error) {
	cl := src.claim()
	offered, unexpect := m.offerEarly(ctx, g, *cl)
	defer unexpect()
	enc, err := askManifest(ctx, m.cfg.Model.Manifest, *cl, g.ID)
	if err != nil {
		return apply.Stats{}, fmt.Errorf("fetch manifest: %w", err)
	}
	remote, err := decodeManifest(enc, g)
	if err != nil {
		return apply.Stats{}, err
	}
	src.setManifest(remote)
	m.forgetHeld()
	m.received.Store(0)
	m.planned.Store(0)
	m.pullGen.Store(g.ID)
	if remote.Chunking != nil {
		src.sw.active.Store(true)
		src.sw.grow(ctx)
	} else {
		src.sw.dropRescue(ctx) // see transfer
	}
	pipelined := m.cfg.Pipeline && m.uploads() > 0
	if pipelined {
		m.server.Set(&peer.Snapshot{Gen: g.ID, Digest: g.Digest, Encoded: enc, Manifest: remote, Root: taskRoot(m.cfg.Root, g.LocalPath())})
		if !offered {
			m.offer(ctx, g, remote.Chunking != nil)
		}
	}
	err = m.cfg.Model.Pull(ctx, ModelPull{
		Host: m.cfg.ID, Gen: g, Sources: src.sw.plainSources,
		Planned: m.planned.Store, Received: m.progress,
	})
	if err != nil {
		if pipelined {
			m.server.Set(nil)
		}
		return apply.Stats{}, err
	}
	files := 0
	for _, e := range remote.Entries {
		if e.Type == manifest.File {
			files++
		}
	}
	h := held{Gen: g.ID, Digest: g.Digest, Path: g.LocalPath(), Delete: g.Delete}
	m.mu.Lock()
	m.held, m.heldEnc, m.heldMan = &h, enc, remote
	m.mu.Unlock()
	m.setVerified(true)
	return apply.Stats{Files: files, Bytes: m.received.Load()}, nil
}
