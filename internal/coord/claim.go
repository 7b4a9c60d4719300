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
	Gen        int64
	Slot       string // "source#n"; empty for a host that already held the content
	Source     string // the host part of Slot
	SourceAddr string
	// Partial is true when the source was itself still pulling when
	// claimed: it streams bytes as they reach it (pipelining).
	Partial bool
	Lease   time.Duration
}

func (cl Claim) leaseValue() string { return fmt.Sprintf("%d %s", cl.Gen, cl.Slot) }

// Claim atomically takes a free slot of another, not-bad source for host,
// enters host in running_queue and starts its lease. Sources that hold the
// whole generation are preferred; a partial source (a host still pulling)
// is taken only when it does not pull, directly or not, from host.
func (c *Client) Claim(ctx context.Context, host string, gen int64) (Claim, error) {
	k := c.keys
	res, err := claimScript.Run(ctx, c.rdb,
		[]string{k.Generation(), k.Finished(), k.Lease(host), k.Sync(), k.BadSources(), k.Running(), k.Claims(), k.Hosts(), k.Events()},
		host, gen, c.cfg.LeaseTTL.Milliseconds(), rand.Uint32(), ms(c.cfg.Now()), eventsMax).StringSlice()
	if err != nil {
		return Claim{}, fmt.Errorf("claim source: %w", err)
	}
	switch res[0] {
	case "stale":
		return Claim{}, fmt.Errorf("claim source for generation %d: %w", gen, ErrStale)
	case "finished":
		return Claim{}, ErrFinished
	case "busy":
		return Claim{}, ErrBusy
	case "nosource":
		return Claim{}, ErrNoSource
	}
	src := res[1][:max(strings.LastIndexByte(res[1], '#'), 0)]
	partial := len(res) > 3 && res[3] == "partial"
	return Claim{Host: host, Gen: gen, Slot: res[1], Source: src, SourceAddr: res[2], Partial: partial, Lease: c.cfg.LeaseTTL}, nil
}

// Renew extends cl's lease; ErrLeaseLost when it expired or was taken.
func (c *Client) Renew(ctx context.Context, cl Claim) error {
	n, err := renewScript.Run(ctx, c.rdb, []string{c.keys.Lease(cl.Host)}, cl.leaseValue(), c.cfg.LeaseTTL.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

func (c *Client) settleKeys(host string) []string {
	k := c.keys
	return []string{k.Lease(host), k.Claims(), k.Sync(), k.BadSources(), k.Generation(), k.Running(), k.Finished(), k.Failures(), k.Events()}
}

// Finish releases cl (its slot returns) and records cl.Host as holding the
// generation and as a source with uploads slots (0: not a source). With an
// empty Slot it only records the host. ErrStale when the generation moved
// on meanwhile (the claim is released all the same).
func (c *Client) Finish(ctx context.Context, cl Claim, uploads int) error {
	n, err := finishScript.Run(ctx, c.rdb, c.settleKeys(cl.Host), cl.Host, cl.Gen, cl.Slot, uploads, eventsMax).Int()
	if err != nil {
		return fmt.Errorf("finish: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("finish generation %d: %w", cl.Gen, ErrStale)
	}
	return nil
}

// Verdict is what a failed pull says about its source.
type Verdict int

// Verdicts.
const (
	SourceOK   Verdict = iota // our own fault (disk full, shutdown): the slot returns
	SourceDead                // unreachable, stalled or not serving: the slot is dropped
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
// The slots cl.Host offered while it pulled are withdrawn, unless it holds
// the generation.
func (c *Client) Fail(ctx context.Context, cl Claim, v Verdict, reason string) error {
	return c.fail(ctx, cl, v, reason, false)
}

// Switch releases cl, per v, when cl.Host goes on pulling from another
// source (it resumes where it stopped): like Fail, but the slots cl.Host
// offered stay, for the hosts that stream from it. The host claims again
// next.
func (c *Client) Switch(ctx context.Context, cl Claim, v Verdict, reason string) error {
	return c.fail(ctx, cl, v, reason, true)
}

func (c *Client) fail(ctx context.Context, cl Claim, v Verdict, reason string, switching bool) error {
	f, _ := json.Marshal(Failure{Gen: cl.Gen, Error: reason, Source: cl.Source, At: c.cfg.Now().UTC()})
	sw := 0
	if switching {
		sw = 1
	}
	err := failScript.Run(ctx, c.rdb, c.settleKeys(cl.Host), cl.Host, cl.Gen, cl.Slot, int(v), f, eventsMax, reason, sw).Err()
	if err != nil {
		return fmt.Errorf("record failure: %w", err)
	}
	return nil
}

// Reap returns the slots of claims whose lease expired and withdraws the
// slots of hosts whose heartbeat is older than HostGrace. It returns how
// many leases it reaped.
func (c *Client) Reap(ctx context.Context) (int, error) {
	k := c.keys
	n, err := reapScript.Run(ctx, c.rdb,
		[]string{k.Claims(), k.Running(), k.Sync(), k.BadSources(), k.Generation(), k.Heartbeats(), k.Events()},
		c.keys.Prefix, ms(c.cfg.Now()), c.cfg.HostGrace.Milliseconds(), eventsMax).Int()
	if err != nil {
		return 0, fmt.Errorf("reap leases: %w", err)
	}
	return n, nil
}
