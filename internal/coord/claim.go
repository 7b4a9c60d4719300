package coord

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Claim is a host's hold on one source slot for one generation.
type Claim struct {
	Host       string
	Gen        Ref
	Slot       string // "source#n"; empty for a host that already held the content
	Source     string // the host part of Slot
	SourceAddr string
	// Partial is true when the source was itself still pulling when
	// claimed: it streams bytes as they reach it (pipelining).
	Partial bool
	// Repair is true for a host that holds the generation and repairs
	// drift: it stays in finished_queue and is listed as repairing. When
	// finishing, it says the host changed its tree to repair it: one
	// repair is counted.
	Repair bool
	Lease  time.Duration
}

// Claim atomically takes a free slot of another, not-bad source for host,
// enters host in running_queue and starts its lease. Sources that hold the
// whole generation are preferred; a partial source (a host still pulling)
// is taken only when it does not pull, directly or not, from host.
//
// ErrFinished when Redis lists host as holding the generation already;
// with repair, such a host claims all the same, to repair its tree, and
// stays listed as finished (and as repairing).
func (c *Client) Claim(ctx context.Context, host string, gen Ref, repair bool) (Claim, error) {
	res, err := c.run(ctx, claimScript, host,
		host, gen.ID, gen.Digest, c.cfg.LeaseTTL.Milliseconds(), rand.Uint32(), eventsMax, flag(repair)).StringSlice()
	if err != nil {
		return Claim{}, fmt.Errorf("claim source: %w", err)
	}
	switch res[0] {
	case "stale":
		return Claim{}, fmt.Errorf("claim source for generation %s: %w", gen, ErrStale)
	case "finished":
		return Claim{}, ErrFinished
	case "busy":
		return Claim{}, ErrBusy
	case "nosource":
		return Claim{}, ErrNoSource
	}
	src := res[1][:max(strings.LastIndexByte(res[1], '#'), 0)]
	partial := len(res) > 3 && res[3] == "partial"
	return Claim{Host: host, Gen: gen, Slot: res[1], Source: src, SourceAddr: res[2], Partial: partial, Repair: repair, Lease: c.cfg.LeaseTTL}, nil
}

// Renew extends cl's lease; ErrLeaseLost when it expired and the slot was
// taken by another host meanwhile. A lease that merely vanished (Redis lost
// it, or the renewal came late and nobody took the slot) is re-created.
// restored reports that.
func (c *Client) Renew(ctx context.Context, cl Claim) (restored bool, err error) {
	n, err := c.run(ctx, renewScript, cl.Host,
		cl.Host, cl.Gen.ID, cl.Gen.Digest, cl.Slot, c.cfg.LeaseTTL.Milliseconds(), eventsMax, flag(cl.Repair)).Int()
	if err != nil {
		return false, fmt.Errorf("renew lease: %w", err)
	}
	if n == 0 {
		return false, ErrLeaseLost
	}
	return n > 1, nil
}

// Finish releases cl (its slot returns) and records cl.Host as holding the
// generation and as a source with uploads slots (0: not a source). With an
// empty Slot it only records the host. A repair (cl.Repair) is counted in
// the host's repairs. ErrStale when the generation moved on meanwhile (the
// claim is released all the same).
func (c *Client) Finish(ctx context.Context, cl Claim, uploads int) error {
	n, err := c.run(ctx, finishScript, cl.Host,
		cl.Host, cl.Gen.ID, cl.Gen.Digest, cl.Slot, uploads, eventsMax, flag(cl.Repair)).Int()
	if err != nil {
		return fmt.Errorf("finish: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("finish generation %s: %w", cl.Gen, ErrStale)
	}
	return nil
}

// Verdict is what a failed pull says about its source.
type Verdict int

// Verdicts.
const (
	SourceOK   Verdict = iota // our own fault (disk full, shutdown): the slot returns
	SourceDead                // unreachable, stalled or not serving: the slot backs off, then returns
	SourceBad                 // sent bad bytes: barred for the generation, all its slots dropped
)

// Failure is a host's last failure, as status shows it.
type Failure struct {
	Gen    int64     `json:"gen"`
	Error  string    `json:"error"`
	Source string    `json:"source"`
	At     time.Time `json:"at"`
}

// Fail releases cl after a failed pull, per v, and records the failure.
// The uploads slots cl.Host offered while it pulled are withdrawn, unless
// it holds the generation.
func (c *Client) Fail(ctx context.Context, cl Claim, v Verdict, reason string, uploads int) error {
	return c.fail(ctx, cl, v, reason, false, uploads)
}

// Switch releases cl, per v, when cl.Host goes on pulling from another
// source (it resumes where it stopped): like Fail, but the slots cl.Host
// offered stay, for the hosts that stream from it. The host claims again
// next.
func (c *Client) Switch(ctx context.Context, cl Claim, v Verdict, reason string) error {
	return c.fail(ctx, cl, v, reason, true, 0)
}

func (c *Client) fail(ctx context.Context, cl Claim, v Verdict, reason string, switching bool, uploads int) error {
	f, _ := json.Marshal(Failure{Gen: cl.Gen.ID, Error: reason, Source: cl.Source, At: c.Now().UTC()})
	err := c.run(ctx, failScript, cl.Host,
		cl.Host, cl.Gen.ID, cl.Gen.Digest, cl.Slot, int(v), f, eventsMax, reason, flag(switching), uploads,
		c.cfg.DeadBackoff.Milliseconds(), c.cfg.DeadBackoffMax.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("record failure: %w", err)
	}
	return nil
}

// Reap returns the slots of claims whose lease expired, offers again the
// dead slots whose back-off is over, and withdraws the slots of hosts whose
// heartbeat is older than HostGrace, all judged by Redis time. It returns
// how many leases it reaped.
func (c *Client) Reap(ctx context.Context) (int, error) {
	n, err := c.run(ctx, reapScript, "", c.keys.Prefix, c.cfg.HostGrace.Milliseconds(), eventsMax).Int()
	if err != nil {
		return 0, fmt.Errorf("reap leases: %w", err)
	}
	return n, nil
}
