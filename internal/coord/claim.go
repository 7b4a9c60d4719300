package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Claim is a host's hold on one source slot for one generation.
type Claim struct {
	Host       string
	Gen        Ref
	Slot       string // "source#n"; empty for a host that already held the content
	Source     string // the host part of Slot
	SourceAddr string
	// SourceZone is the source's zone as it registered (the origin's as
	// the generation records it); empty when it has none.
	SourceZone string
	// Partial is true when the source was itself still pulling when
	// claimed: it streams bytes as they reach it (pipelining).
	Partial bool
	// Repair is true for a host that holds the generation and repairs
	// drift: it stays in finished_queue and is listed as repairing. When
	// finishing, it says the host changed its tree to repair it: one
	// repair is counted.
	Repair bool
	// Index tells a host's claims held at once apart: 0 is its first (the
	// one running_queue and status follow), 1... its extra sources.
	Index int
	Lease time.Duration
	// Outlook is what an extra claim would have found as the claim was
	// made (see Outlook), counted by the claim itself so that the pull's
	// swarm starts without asking; nil when not counted (a claim not
	// made by Claim).
	Outlook *Outlook
	// Offered: the claim offered the host's slots (ClaimOptions.Offer);
	// false when it could not (a bad host, a relay bypassed as slow).
	Offered bool
	// Rescue is the rescue claim made in the same call
	// (ClaimOptions.RescueIndex); nil when none was.
	Rescue *Claim
}

// id names the claim in Redis: the host for its first claim, "host/n" for
// its n-th extra one (host ids cannot hold a '/').
func (cl Claim) id() string { return claimID(cl.Host, cl.Index) }

func claimID(host string, index int) string {
	if index == 0 {
		return host
	}
	return fmt.Sprintf("%s/%d", host, index)
}

// ClaimOptions tune a claim.
type ClaimOptions struct {
	// Repair: the host holds the generation and repairs drift (see
	// Claim.Repair).
	Repair bool
	// Index is which of the host's claims held at once this is (0: the
	// first; each index has its own lease). A claim of Index > 0 (a
	// swarm's extra source) gets ErrNoSource while any host waits for its
	// first source: a slot starts a pull before it speeds one up. It takes
	// only a whole source's slot (the origin's, a finished host's): a
	// partial source's free slot is most often the end of a chain, which
	// the next host to claim its first source needs. Without SameZone, a
	// zoned host's extra claim takes another zone's whole source before a
	// partial source of its own zone (the minion always sets SameZone).
	Index int
	// Acyclic takes a partial source even if it pulls from this host
	// through more than 16 links of first claims, or through extra
	// claims: for chunked generations, whose partial sources serve only
	// verified chunks. Not one at most 16 links below this host in its
	// chain: what such a descendant has came mostly through this host, and
	// its slot is the end of a chain, which a host without a source needs.
	// It changes nothing for an extra claim, which takes no partial
	// source, nor for a rescue claim, which takes only its grandparent's
	// rescue slot: the minion, which sets it on those, makes no first
	// claim with it any more.
	Acyclic bool
	// Avoid lists sources not to take (the ones this host already pulls
	// from).
	Avoid []string
	// SameZone takes only a source of this client's zone (Config.Zone):
	// ErrNoSource when none is free. Without a zone it has no effect.
	SameZone bool
	// Serves says the host offers its slots while (pipelining) or once it
	// holds the generation: while its claim lasts, another host of its
	// zone that finds no source of the zone free waits for its slots
	// (ErrNoSource) rather than take a source of another zone.
	Serves bool
	// Slots is how many slots the host offers at most (host#0 ..
	// host#Slots-1; 0: not known). While none of them is claimed, nothing
	// pulls from the host, so no partial source can close a cycle and the
	// claim walks no chain: a host's first claim of a generation takes the
	// end of a chain of any length. At most 64.
	Slots int
	// Rescue takes only the rescue slot (RescueSlot) of the source of the
	// host's own source, its grandparent in the chain, for an extra claim
	// (Index > 0), even while hosts wait for their first source. When the
	// host's source is slow (a slow link in the chain), the grandparent,
	// which serves that source, has uplink to spare and the data ahead.
	// Not when the grandparent is in another zone than the source: a
	// rescue brings nothing across zones that the chain did not.
	Rescue bool
	// Queue: when no source is free, a first claim (not a repair) of a
	// host from which nothing pulls enters its zone's waiting queue, and
	// the next slot freed in the zone is handed to it (claimed in its
	// name, NoSourceError.Queued): the host, told on its wake channel
	// (Keys.WakeChannel), claims again to take it up. Only for a host
	// that listens on that channel; it still claims now and then, for
	// slots of other zones and of sources built before hand-offs.
	Queue bool
	// Lookup counts the host in the lookup key (Keys.Lookup: the hosts
	// that discovered the generation, as the original scripts count
	// them) in the same call, unless the generation is stale: a host's
	// first claim of a generation, so discovering one costs Redis no
	// request of its own.
	Lookup bool
	// Offer, when above 0, offers the host's first Offer upload slots as
	// those of a partial source of the generation in the same call, once
	// the claim is made (as OfferSlots, or OfferPartial with
	// OfferRescue): a pipelining host offers itself as soon as it claimed
	// its source, and one script call instead of two is what a link of a
	// chain costs (Claim.Offered says it was done). Not for an extra
	// claim.
	Offer       int
	OfferRescue bool
	// RescueIndex, when above 0, makes a first claim (Index 0) that takes
	// a partial source also make the host's rescue claim at that index,
	// in the same call: as a claim with Rescue and Index RescueIndex
	// made right after would (Claim.Rescue). Not when that index holds a
	// claim already.
	RescueIndex int
}

// MaxUploads is the most upload slots a host may have: "host#0" to
// "host#63" (--max-uploads, and the spare slot a whole source adds when
// its pulls take several sources, within it).
const MaxUploads = 64

// RescueSlot numbers the rescue slot a partial source offers besides its
// upload slots (OfferPartial): "host#64", past the MaxUploads upload
// slots a host may have. It is never in synchronize_queue: the original scripts and
// the claims that form chains do not see it. The origin offers one too
// (OfferOrigin), for the hosts behind the first of a chain; a finished
// host offers none.
const RescueSlot = MaxUploads

// NoSourceError is a claim that found no free source slot (errors.Is
// ErrNoSource); Waiting is how many hosts wait for one, as Redis counts
// them (discovered the generation, neither pulling nor finished), so a
// large fleet's waiting hosts can space their polls.
type NoSourceError struct {
	Waiting int64
	// Queued: the host is in its zone's waiting queue (ClaimOptions.Queue).
	Queued bool
	// Yielded: an extra claim (ClaimOptions.Index > 0) took nothing
	// because hosts wait for their first source.
	Yielded bool
}

// Error says that no slot was free and how many hosts wait.
func (e *NoSourceError) Error() string {
	return fmt.Sprintf("%v (%d hosts waiting)", ErrNoSource, e.Waiting)
}

// Is makes errors.Is(err, ErrNoSource) hold.
func (e *NoSourceError) Is(target error) bool { return target == ErrNoSource }

// Claim atomically takes a free slot of another, not-bad source for host,
// enters host in running_queue and starts its lease. Sources of this
// client's zone (Config.Zone) are preferred when one is free, then sources
// that hold the whole generation; a partial source (a host still pulling)
// is taken only when it does not pull, directly or not, from host.
//
// ErrFinished when Redis lists host as holding the generation already;
// with repair, such a host claims all the same, to repair its tree, and
// stays listed as finished (and as repairing).
func (c *Client) Claim(ctx context.Context, host string, gen Ref, o ClaimOptions) (Claim, error) {
	cid := claimID(host, o.Index)
	var extra []string
	rescueIndex := 0
	if o.Index == 0 && o.RescueIndex > 0 && o.RescueIndex < MaxClaims {
		rescueIndex = o.RescueIndex
		extra = []string{c.keys.Lease(claimID(host, rescueIndex))}
	}
	res, err := c.runExtra(ctx, claimScript, keyCtx{host: cid, zone: c.cfg.Zone}, extra,
		host, gen.ID, gen.Digest, c.cfg.LeaseTTL.Milliseconds(), rand.Uint32(), eventsMax, flag(o.Repair),
		cid, flag(o.Acyclic), strings.Join(o.Avoid, ","), c.cfg.HostGrace.Milliseconds(), flag(o.SameZone), flag(o.Serves), o.Slots, flag(o.Rescue), flag(o.Queue), flag(o.Lookup), o.Offer, flag(o.OfferRescue), rescueIndex).StringSlice()
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
		e := &NoSourceError{}
		if len(res) > 1 {
			e.Waiting, _ = strconv.ParseInt(res[1], 10, 64)
		}
		e.Queued = len(res) > 2 && res[2] == "queued"
		e.Yielded = len(res) > 2 && res[2] == "yield"
		return Claim{}, e
	}
	cl := c.claimed(host, gen, o.Index, o.Repair, res)
	cl.Offered = len(res) > 7 && res[7] == "1"
	if rescueIndex > 0 && len(res) >= 12 {
		r := c.claimed(host, gen, rescueIndex, o.Repair, append([]string{"ok"}, res[8:12]...))
		cl.Rescue = &r
	}
	if len(res) > 6 {
		free, ferr := strconv.ParseInt(res[5], 10, 64)
		starved, serr := strconv.ParseInt(res[6], 10, 64)
		if ferr == nil && serr == nil {
			cl.Outlook = &Outlook{Free: free, Starved: starved}
		}
	}
	return cl, nil
}

// claimed is the claim the reply res of the claim script describes:
// {'ok', slot, source addr, kind, source zone, ...}.
func (c *Client) claimed(host string, gen Ref, index int, repair bool, res []string) Claim {
	src := res[1][:max(strings.LastIndexByte(res[1], '#'), 0)]
	zone := ""
	if len(res) > 4 && ValidZone("zone", res[4]) == nil {
		zone = res[4]
	}
	return Claim{Host: host, Gen: gen, Slot: res[1], Source: src, SourceAddr: res[2], SourceZone: zone,
		Partial: len(res) > 3 && res[3] == "partial", Repair: repair, Index: index, Lease: c.cfg.LeaseTTL}
}

// Renew extends cl's lease; ErrLeaseLost when it expired and the slot was
// taken by another host meanwhile. A lease that merely vanished (Redis lost
// it, or the renewal came late and nobody took the slot) is re-created.
// restored reports that.
func (c *Client) Renew(ctx context.Context, cl Claim) (restored bool, err error) {
	res, err := c.renew(ctx, cl, "", nil, nil)
	if err != nil {
		return false, err
	}
	return res.Claims[0].Restored, res.Claims[0].Err
}

// Renewal is the outcome of one claim's renewal (see RenewReport).
type Renewal struct {
	Restored bool  // its lease, or its claim record, was re-created
	Err      error // ErrLeaseLost: lost
}

// Renewals is what RenewReport tells: each claim's renewal, and how many
// source slots are free for the host's extra claims.
type Renewals struct {
	// Claims are the claims' renewals, the first claim's first.
	Claims []Renewal
	// Free counts the free slots of whole sources (the origin and
	// finished hosts) an extra claim (ClaimOptions.Index > 0, SameZone)
	// could take now: those of the client's zone when it has one, else
	// every one. Some of them may still be refused (this host's own
	// sources'), and a zone's count may include entries whose slot went
	// to another zone (the next claim that samples them drops them). A
	// partial source's free slot is not counted: it is most often the end
	// of a chain, which an extra claim leaves to a newcomer. While Free is
	// 0, an extra claim most likely finds nothing: a script call (at
	// 1,000 simulated hosts, failed extra claims were a quarter of
	// Redis's time) that a puller can spare.
	Free int64
	// Starved counts the hosts waiting for their first source (their
	// last first claim found none within starvedFor): while there are
	// any, an extra claim yields to them and finds nothing.
	Starved int64
}

// starvedFor is how long a first claim that found no source counts its
// host as waiting for one (the claim script's STARVED_MS).
const starvedFor = 35 * time.Second

// Outlook is what an extra claim would find now (see Renewals): the free
// slots it could take and the hosts it would yield to.
type Outlook struct {
	Free, Starved int64
}

// Outlook counts, in plain commands and one round trip, what an extra
// claim would find, so a puller asks before it claims: a claim that finds
// nothing costs Redis a script call, and at 1,000 simulated hosts every
// extra claim found nothing (it yielded to the hosts still waiting for a
// first source).
func (c *Client) Outlook(ctx context.Context) (Outlook, error) {
	at, ok := c.beatTime()
	if !ok {
		at = c.Now()
	}
	var free, starved *redis.IntCmd
	_, err := c.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		free = c.countFree(ctx, pl)
		starved = c.countStarved(ctx, pl, at)
		return nil
	})
	if err != nil {
		return Outlook{}, fmt.Errorf("count free slots: %w", err)
	}
	return Outlook{Free: free.Val(), Starved: starved.Val()}, nil
}

// countFree queues the count of the slots free for an extra claim (see
// Renewals.Free): its zone's index of whole sources' free slots, or the
// global one.
func (c *Client) countFree(ctx context.Context, pl redis.Pipeliner) *redis.IntCmd {
	if c.cfg.Zone != "" {
		return pl.SCard(ctx, c.keys.SyncFullZone(c.cfg.Zone))
	}
	return pl.SCard(ctx, c.keys.SyncFull())
}

// countStarved queues the count of hosts waiting for a first source at
// Redis time at (see Renewals.Starved).
func (c *Client) countStarved(ctx context.Context, pl redis.Pipeliner, at time.Time) *redis.IntCmd {
	return pl.ZCount(ctx, c.keys.Starved(), strconv.FormatInt(at.Add(-starvedFor).UnixMilli(), 10), "+inf")
}

// RenewReport is Renew that also records p, the pull's progress, and a
// heartbeat of cl.Host (in the heartbeat indexes of groups too), and
// renews others, the host's other claims (a swarm's extra and rescue
// sources), all in one script call: a pulling host renews every half of
// its lease (less for a short one), so it needs no progress write, no heartbeat of its own and
// no call per claim meanwhile. Claims holds cl's renewal and then each of
// others', in order; err is a failure of the call itself.
func (c *Client) RenewReport(ctx context.Context, cl Claim, p Progress, groups []string, others []Claim) (Renewals, error) {
	p.Updated = c.Now()
	b, err := json.Marshal(p)
	if err != nil {
		return Renewals{}, err
	}
	return c.renew(ctx, cl, string(b), groups, others)
}

// renew renews cl and others, with a light renewal when it can (see
// lightRenew), else the renew script.
func (c *Client) renew(ctx context.Context, cl Claim, progress string, groups []string, others []Claim) (Renewals, error) {
	if at, ok := c.beatTime(); ok {
		r, ok, err := c.lightRenew(ctx, cl, progress, groups, others, at)
		if err != nil || ok {
			return r, err
		}
	}
	return c.renewScripted(ctx, cl, progress, groups, others)
}

// lightRenew is a renewal in plain commands, one round trip and no script:
// PEXPIRE of each claim's lease key, the lease-expiry index brought up to
// date (at Redis time at, see beatTime), the progress and
// heartbeat writes, the generation's state and the free-slot count.
// Renewals were the most frequent script call of a task (about 5 a host
// at 10,000 simulated hosts), and a script call costs Redis several times
// its commands. The index is only a hint: the reaper expires a claim only
// when its lease key's own TTL, kept by Redis's clock, has run out. Each
// lease is read (GET) in the same round trip, to be checked after.
//
// ok is false, after which the script must run, when a lease key is gone
// (Redis lost it, or the renewal came late: the script re-creates it or
// reports the claim lost), holds another claim's lease than the one
// renewed (Redis went back to an older state, a failover or a replay: the
// script re-takes the slot or reports the claim lost), or the generation
// was cancelled (the script reports every claim lost). The lease keys it
// extended meanwhile are this host's own, which the script then sets
// right. The index entry is written whether or not it was there, as the
// script does: a claim whose entry went missing is reaped all the same
// once its lease runs out.
func (c *Client) lightRenew(ctx context.Context, cl Claim, progress string, groups []string, others []Claim, at time.Time) (r Renewals, ok bool, err error) {
	claims := append([]Claim{cl}, others...)
	ttl := c.cfg.LeaseTTL
	held := make([]*redis.StringCmd, len(claims))
	exp := make([]*redis.BoolCmd, len(claims))
	index := make([]redis.Z, len(claims))
	var gen *redis.SliceCmd
	var free, starved *redis.IntCmd
	cmds, _ := c.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, o := range claims {
			key := c.keys.Lease(o.id())
			held[i] = pl.Get(ctx, key)
			exp[i] = pl.PExpire(ctx, key, ttl)
			index[i] = redis.Z{Score: float64(at.Add(ttl).UnixMilli()), Member: o.id()}
		}
		pl.ZAdd(ctx, c.keys.LeaseIndex(), index...)
		if progress != "" {
			pl.HSet(ctx, c.keys.Progress(), cl.Host, progress)
			c.queueBeat(ctx, pl, cl.Host, groups, at)
		}
		gen = pl.HMGet(ctx, c.keys.Generation(), "id", "state")
		free = c.countFree(ctx, pl)
		starved = c.countStarved(ctx, pl, at)
		return nil
	})
	for _, cmd := range cmds { // every command carries the pipeline's failure
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) { // nil: a GET of a gone lease
			return Renewals{}, false, fmt.Errorf("renew lease: %w", err)
		}
	}
	for i, o := range claims {
		if !exp[i].Val() || held[i].Val() != strconv.FormatInt(o.Gen.ID, 10)+" "+o.Slot {
			return Renewals{}, false, nil
		}
	}
	if g := gen.Val(); g[0] == strconv.FormatInt(cl.Gen.ID, 10) && g[1] == StateFailed {
		return Renewals{}, false, nil
	}
	r.Claims = make([]Renewal, len(claims))
	r.Free, r.Starved = free.Val(), starved.Val()
	return r, true, nil
}

// renewScripted is a renewal by the renew script: it also re-creates a
// lease that vanished, and reports a cancelled generation's claims lost.
func (c *Client) renewScripted(ctx context.Context, cl Claim, progress string, groups []string, others []Claim) (Renewals, error) {
	extra := make([]string, 0, len(groups)+len(others))
	for _, g := range groups {
		extra = append(extra, c.keys.GroupHeartbeats(g))
	}
	args := []any{cl.Host, cl.Gen.ID, cl.Gen.Digest, cl.Slot, c.cfg.LeaseTTL.Milliseconds(), eventsMax, flag(cl.Repair), cl.id(), progress, cl.SourceZone, len(groups)}
	for _, o := range others {
		extra = append(extra, c.keys.Lease(o.id()))
		args = append(args, o.id(), o.Slot, o.SourceZone)
	}
	ns, err := c.runExtra(ctx, renewScript, keyCtx{host: cl.id(), zone: c.cfg.Zone}, extra, args...).Int64Slice()
	if err != nil {
		return Renewals{}, fmt.Errorf("renew lease: %w", err)
	}
	if len(ns) != 3+len(others) {
		return Renewals{}, fmt.Errorf("renew lease: %d results for %d claims", len(ns), 1+len(others))
	}
	out := Renewals{Claims: make([]Renewal, len(ns)-2), Free: ns[len(ns)-2], Starved: ns[len(ns)-1]}
	for i, n := range ns[:len(ns)-2] {
		out.Claims[i].Restored = n > 1
		if n == 0 {
			out.Claims[i].Err = ErrLeaseLost
		}
	}
	return out, nil
}

// Finish releases cl (its slot returns) and records cl.Host as holding the
// generation and as a source with uploads slots (0: not a source). With an
// empty Slot it only records the host. A repair (cl.Repair) is counted in
// the host's repairs. ErrStale when the generation moved on meanwhile (the
// claim is released all the same). others, the host's other claims (a
// swarm's extra and rescue sources), are released first, as Release
// would: those of sources in cl's source's zone in the same call (so a
// pull ends with one script call, not one a claim: at 10,000 simulated
// hosts their releases were 1.8 calls a host), the others one by one, at
// best effort (one that fails ends with its lease; the finish runs all
// the same). When Finish fails with another error than ErrStale, whether
// the others were released is not known: the caller releases them.
func (c *Client) Finish(ctx context.Context, cl Claim, uploads int, others ...Claim) error {
	_, err := c.finish(ctx, cl, uploads, "", others)
	return err
}

// FinishReport is Finish that also records p, the pull's final progress,
// in the same call (unless the generation moved on), and returns the
// current generation as the finish found it (ID 0 when it could not be
// read): a pull's last report and the host's next look at the generation
// cost Redis no request of their own.
func (c *Client) FinishReport(ctx context.Context, cl Claim, uploads int, p Progress, others ...Claim) (Generation, error) {
	p.Updated = c.Now()
	b, err := json.Marshal(p)
	if err != nil {
		return Generation{}, err
	}
	return c.finish(ctx, cl, uploads, string(b), others)
}

func (c *Client) finish(ctx context.Context, cl Claim, uploads int, progress string, others []Claim) (Generation, error) {
	var extra []string
	args := []any{cl.Host, cl.Gen.ID, cl.Gen.Digest, cl.Slot, uploads, eventsMax, flag(cl.Repair), cl.id(), progress}
	for _, o := range others {
		if o.SourceZone != cl.SourceZone {
			_ = c.Release(ctx, o) // best effort: its lease ends it otherwise
			continue
		}
		extra = append(extra, c.keys.Lease(o.id()))
		args = append(args, o.id(), o.Slot)
	}
	res, err := c.runExtra(ctx, finishScript, c.claimKeys(cl), extra, args...).StringSlice()
	if err != nil {
		return Generation{}, fmt.Errorf("finish: %w", err)
	}
	if len(res) == 0 {
		return Generation{}, fmt.Errorf("finish generation %s: %w", cl.Gen, ErrStale)
	}
	h := make(map[string]string, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		h[res[i]] = res[i+1]
	}
	g, err := parseGeneration(c.keys.Generation(), h)
	if err != nil {
		// The finish went through; the next read of the generation
		// reports the corruption.
		return Generation{}, nil
	}
	return g, nil
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
	err := c.runAt(ctx, failScript, c.claimKeys(cl),
		cl.Host, cl.Gen.ID, cl.Gen.Digest, cl.Slot, int(v), f, eventsMax, reason, flag(switching), uploads,
		c.cfg.DeadBackoff.Milliseconds(), c.cfg.DeadBackoffMax.Milliseconds(), cl.id()).Err()
	if err != nil {
		return fmt.Errorf("record failure: %w", err)
	}
	return nil
}

// Release gives back one of a host's extra claims that its pull no longer
// needs (a slow source replaced, the endgame over): the slot returns and
// nothing is recorded against the source or the host.
func (c *Client) Release(ctx context.Context, cl Claim) error {
	if err := c.runAt(ctx, releaseScript, c.claimKeys(cl), cl.Host, cl.Gen.ID, cl.Gen.Digest, cl.Slot, eventsMax, cl.id()).Err(); err != nil {
		return fmt.Errorf("release claim on %s: %w", cl.Slot, err)
	}
	return nil
}

// Bypass moves main, a host's first claim, off its source, a partial host
// that relays too slowly (the relay), onto the relay's own claim: the slot
// of the grandparent, whose rescue slot the host holds with rescue (see
// ClaimOptions.Rescue). It returns the host's first claim now. The relay's
// claim and the rescue claim end; the relay is told on its wake channel
// and finds its lease lost, so it claims again, and, as nothing but
// rescue claims pulls from it now, it may take the end of a chain; its
// slots are not offered again for the generation (Keys.SlowRelays). So a
// slow uplink in a chain stops setting the pace of every host behind it,
// and the grandparent's uplink stops being split between the relay and
// the host. ErrMoved when the claims are no longer as main and rescue say.
func (c *Client) Bypass(ctx context.Context, main, rescue Claim) (Claim, error) {
	if main.Index != 0 || rescue.Index == 0 || main.Host != rescue.Host {
		return Claim{}, fmt.Errorf("bypass %s: needs the host's first claim and one of its rescue claims", main.Source)
	}
	kc := keyCtx{host: main.Host, zone: c.cfg.Zone}
	extra := []string{c.keys.Lease(main.Source), c.keys.Lease(rescue.id())}
	res, err := c.runExtra(ctx, bypassScript, kc, extra, main.Host, main.Gen.ID, main.Gen.Digest, main.Slot,
		rescue.id(), rescue.Slot, c.cfg.LeaseTTL.Milliseconds(), eventsMax).StringSlice()
	if err != nil {
		return Claim{}, fmt.Errorf("bypass %s: %w", main.Source, err)
	}
	switch {
	case len(res) > 0 && res[0] == "stale":
		return Claim{}, fmt.Errorf("bypass %s: generation %s: %w", main.Source, main.Gen, ErrStale)
	case len(res) > 0 && res[0] == "moved":
		return Claim{}, fmt.Errorf("bypass %s: %w", main.Source, ErrMoved)
	case len(res) != 4 || res[0] != "ok":
		return Claim{}, fmt.Errorf("bypass %s: unexpected reply %v", main.Source, res)
	}
	return Claim{Host: main.Host, Gen: main.Gen, Slot: res[1], Source: rescue.Source, SourceAddr: rescue.SourceAddr,
		SourceZone: res[3], Partial: res[2] == "partial", Repair: main.Repair, Lease: c.cfg.LeaseTTL}, nil
}

// reapBatch bounds the claims expired, and the dead slots offered again,
// by one Reap call.
const reapBatch = 100

// Reap returns the slots of claims whose lease expired and offers again
// the dead slots whose back-off is over, a bounded batch of each (the rest
// waits for the next call), all judged by Redis time. It returns how many
// leases it reaped. Slots of hosts whose heartbeat is older than HostGrace
// are dropped by the claims that meet them.
func (c *Client) Reap(ctx context.Context) (int, error) {
	res, err := c.run(ctx, dueScript, "", reapBatch, c.cfg.HostGrace.Milliseconds()).Slice()
	if err != nil {
		return 0, fmt.Errorf("reap leases: %w", err)
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("reap leases: unexpected reply %v", res)
	}
	due, _ := res[0].([]any)
	zones, _ := res[1].([]any)
	n := 0
	for i, v := range due {
		cid := fmt.Sprint(v)
		zone := ""
		if i < len(zones) {
			if z, ok := zones[i].(string); ok && ValidZone("zone", z) == nil {
				zone = z
			}
		}
		ok, err := c.runAt(ctx, expireScript, keyCtx{host: cid, srcZone: zone}, cid, c.cfg.HostGrace.Milliseconds(), eventsMax).Int()
		if err != nil {
			return n, fmt.Errorf("reap lease of %s: %w", cid, err)
		}
		n += ok
	}
	return n, nil
}

// claimKeys names the keys of a script that settles cl: its lease, this
// client's zone indexes (for the slots the host offers) and those of its
// source's zone (for the slot that returns).
func (c *Client) claimKeys(cl Claim) keyCtx {
	return keyCtx{host: cl.id(), zone: c.cfg.Zone, srcZone: cl.SourceZone}
}

// AddCrossZone counts n more bytes that host received from sources in
// other zones (see CrossZone) while pulling generation r; nothing when r
// is no longer current. Status shows the counts per host and in total.
func (c *Client) AddCrossZone(ctx context.Context, host string, r Ref, n int64) error {
	if n <= 0 {
		return nil
	}
	if err := c.run(ctx, zoneBytesScript, host, host, r.ID, r.Digest, n).Err(); err != nil {
		return fmt.Errorf("count cross-zone bytes: %w", err)
	}
	return nil
}
