// Package minion is the fanout host daemon: it heartbeats into the host
// registry, watches the current generation, claims a source, pulls the
// difference between its tree and the manifest, and then serves its verified
// copy to the hosts after it.
package minion

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/peer"
)

// Config is a minion's configuration. Zero durations and counts take the
// defaults documented on each field.
type Config struct {
	ID        string // host id in Redis (default: the hostname, set by the caller)
	Advertise string // host:port other hosts use to reach this host's peer server
	Root      string // task paths resolve under this directory
	StateDir  string // held state and the hash cache
	Uploads   int    // source slots offered once this host holds a generation; default 1
	// Source makes this host offer itself as a source after a pull. A
	// one-shot sync with no serve daemon behind its advertised address
	// finishes without becoming a source.
	Source    bool
	Poll      time.Duration // poll interval, jittered by ±20%; default 1s
	Heartbeat time.Duration // heartbeat interval; default 10s
	Workers   int           // concurrent file fetches; default 4
	Version   string
	Log       logrus.FieldLogger
	Metrics   *metrics.Metrics // default: a private registry
	Download  *bwlimit.Limiter // caps this host's download rate; nil: no cap
	// Pipeline makes a pulling host a source at once: it serves each file
	// as its bytes land, so hosts behind it need not wait for the whole
	// file (Run sets it; a one-shot sync has no server of its own).
	Pipeline bool
	// ArrivalWait bounds how long a host streaming a file it is still
	// receiving waits for new bytes; default peer.DefaultArrivalWait.
	ArrivalWait time.Duration
	// VerifyEvery is how often a daemon verifies its whole held tree
	// against the manifest even when inotify saw no change (a safety net
	// for changes inotify cannot see, such as writes through mmap); default
	// 10m.
	VerifyEvery time.Duration
	// ScanEvery is how often it verifies the tree when inotify cannot
	// watch all of it (the watch limit, a file system without inotify);
	// default 10s, so drift is repaired within about 15s either way.
	ScanEvery time.Duration
	// NoWatch turns the inotify watcher off: drift is then found by the
	// VerifyEvery pass only.
	NoWatch bool
	// Sources is how many sources a pull of a format 3 generation takes
	// chunks from at once, each claimed through its own lease; default 3.
	Sources int
	// Bypass lets a pull take the place of its source, a partial relay,
	// on the relay's own source when a rescue source outruns the relay
	// bypassFactor times (see source.bypass), so the relay moves to the
	// end of a chain (fanout-minion turns it on unless told not to).
	Bypass bool
	// Compress makes pulls of format 3 generations ask sources for
	// zstd-compressed chunks (a source sends raw what does not shrink, and
	// one that predates compression sends everything raw). A generation
	// published with compress asks for it whatever this says.
	Compress bool
	// NumericIDs applies owners by uid and gid as the manifest carries
	// them, not by user and group name (rsync's --numeric-ids). Owners are
	// applied only when this process runs as root.
	NumericIDs bool
	// Zone is this host's zone (--zone; empty: none): it is registered,
	// so pullers know the zone of this source, and bytes this host
	// receives from a source of another zone are counted (status, and
	// fanout_cross_zone_bytes_received_total). Which indexes its claims
	// try first is the Coordinator's zone (coord.Config.Zone), which the
	// command line sets to the same.
	Zone string
	// Groups are this host's groups (--group): a generation published for
	// groups is pulled only by hosts in one of them. Registered with each
	// heartbeat.
	Groups []string
	// Hooks runs the command configured for a task once this host holds
	// a new generation of it, verified in place (and its finish is
	// recorded); nil: no hooks.
	Hooks Hooks
	// Model, when set, stands in for the pull's data plane (see Model):
	// the simulator's minions. Nil in every real daemon.
	Model Model
	// Task is the name of the task this minion holds (coord.DefaultTask
	// when empty): its hook is the task's, and its log lines name it.
	// Tasks sets it for each task it runs.
	Task string
}

func (c *Config) setDefaults() {
	if c.Uploads <= 0 {
		c.Uploads = 1
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.VerifyEvery <= 0 {
		c.VerifyEvery = 10 * time.Minute
	}
	if c.Sources <= 0 {
		c.Sources = 3
	}
	c.Sources = min(c.Sources, coord.MaxClaims)
	if c.ScanEvery <= 0 {
		c.ScanEvery = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = logrus.New()
	}
	if c.Task == "" {
		c.Task = coord.DefaultTask
	}
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
}

// Coordinator is the part of the Redis protocol a minion uses.
type Coordinator interface {
	Current(ctx context.Context) (coord.Generation, error)
	TaskKey(ctx context.Context) (string, bool, error)
	Heartbeat(ctx context.Context, h coord.Host, b coord.Beat) (coord.Pulse, error)
	Lookup(ctx context.Context) error
	Claim(ctx context.Context, host string, gen coord.Ref, o coord.ClaimOptions) (coord.Claim, error)
	Renew(ctx context.Context, cl coord.Claim) (bool, error)
	RenewReport(ctx context.Context, cl coord.Claim, p coord.Progress, groups []string, others []coord.Claim) (coord.Renewals, error)
	Outlook(ctx context.Context) (coord.Outlook, error)
	Finish(ctx context.Context, cl coord.Claim, uploads int, others ...coord.Claim) error
	FinishReport(ctx context.Context, cl coord.Claim, uploads int, p coord.Progress, others ...coord.Claim) (coord.Generation, error)
	Fail(ctx context.Context, cl coord.Claim, v coord.Verdict, reason string, uploads int) error
	Switch(ctx context.Context, cl coord.Claim, v coord.Verdict, reason string) error
	Release(ctx context.Context, cl coord.Claim) error
	Bypass(ctx context.Context, main, rescue coord.Claim) (coord.Claim, error)
	OfferSlots(ctx context.Context, host string, gen coord.Ref, uploads int, force bool) error
	OfferPartial(ctx context.Context, host string, gen coord.Ref, uploads int) error
	ReportProgress(ctx context.Context, host string, p coord.Progress, groups []string) (bool, error)
	AddCrossZone(ctx context.Context, host string, gen coord.Ref, n int64) error
	Drift(ctx context.Context, host string, gen coord.Ref, msg string) error
	Refuse(ctx context.Context, host string, gen coord.Ref, reason string) error
	HookStarted(ctx context.Context, host string, rec coord.HookRecord) error
	HookDone(ctx context.Context, host string, rec coord.HookRecord) error
	Switched(ctx context.Context, host string, gen coord.Ref) error
	Keys() coord.Keys
	Subscribe(ctx context.Context, channels ...string) (*coord.Notifications, error)
	Announced(msg string) (coord.Generation, bool)
}

// Snapshots serves what a minion holds of its task to other hosts: a
// peer.Server (the plain task), or its view of a named task (peer.Task).
type Snapshots interface {
	Set(snap *peer.Snapshot)
	Current() *peer.Snapshot
	// Expect makes requests for generation gen wait for its snapshot
	// (see peer.Server.Expect).
	Expect(gen int64, wait time.Duration) (cancel func())
}

// Minion is one host's fanout daemon for one task.
type Minion struct {
	cfg     Config
	coord   Coordinator
	server  Snapshots
	client  *peer.Client
	cache   *manifest.Cache
	owner   manifest.OwnerPolicy // how owners and setuid bits are applied
	started time.Time
	watch   *treeWatch // nil outside Run

	mu sync.Mutex
	// held is the generation the tree was last brought to, with its
	// manifest; verified says the tree matched it at the last check
	// (checked). Only a verified hold is announced, served or re-asserted.
	held     *held
	heldEnc  []byte
	heldMan  *manifest.Manifest
	verified bool
	checked  time.Time
	armed    string // genKey of the tree the watcher watches

	// Generations are told apart by genKey, not by id alone: ids restart
	// when Redis loses its data.
	looked   string // generation whose discovery was counted in lookup
	finished string // generation this host is known to be finished for
	// announced is the generation whose finish this host recorded in
	// Redis (guarded by mu): only that one is re-asserted by heartbeats,
	// never one it holds but has not finished yet.
	announced coord.Ref
	// seen is the generation the last Step read (guarded by mu); beats
	// counts heartbeats; beatWake wakes Run when a heartbeat reports
	// another generation.
	seen     coord.Ref
	beats    int
	beatWake chan struct{}
	drifting string // generation whose drift was reported and is being repaired
	// needSource is the generation whose drift needs content from a source:
	// until a repair pull goes through, the tree is not verified again.
	needSource string
	refused    string // generation refused for its protocol version
	// switched is the generation switched fleet-wide whose switch this
	// host recorded; awaitSwitch says it holds a verified release that
	// waits for the master's order (both Step goroutine only).
	switched    string
	awaitSwitch bool
	// adoptFailed is the generation whose kept release verification
	// found different (it is pulled into, not verified at every step).
	adoptFailed string
	// renewBeat is when (Unix ns) a pull's lease renewal or progress
	// report last recorded this host's heartbeat.
	renewBeat atomic.Int64
	// pulled lists the paths the last successful transfer changed (set
	// and read by the Step goroutine only): the hook is told them.
	pulled []string

	// The pull in flight (or the last one): its generation id, bytes
	// received so far and planned in all.
	pullGen, received, planned atomic.Int64
	// waiting is how many hosts waited for a source, as Redis counted
	// them when this host's last claim found none (0 after a claim).
	waiting atomic.Int64
	// listens: Run holds this host's wake channel, so its claims may
	// queue it for a slot (coord.ClaimOptions.Queue); queued: the last
	// claim did (Step goroutine only).
	listens, queued bool
	// notes receives a (coalesced) message on the subscription Run holds:
	// a pull's watch loop renews at once on one (nil outside Run).
	notes <-chan struct{}
	// knownGen is the current generation as Redis told it, taken for
	// current until knownUntil: the one this host waits for a source for,
	// the one its finish found, or the one an announcement carried (nil
	// when none; Step goroutine only): see current.
	knownGen   *coord.Generation
	knownUntil time.Time
}

// Progress reports the bytes received and planned by the pull in flight (or
// the last one).
func (m *Minion) Progress() (received, planned int64) {
	return m.received.Load(), m.planned.Load()
}

// ProgressOf is Progress for generation gen only: zero while this host has
// not started pulling gen.
func (m *Minion) ProgressOf(gen int64) (received, planned int64) {
	if m.pullGen.Load() != gen {
		return 0, 0
	}
	return m.Progress()
}

// New builds a minion and loads what it held before a restart. Nothing is
// served or announced until the tree on disk is verified against it (the
// first Step does that).
func New(cfg Config, co Coordinator, server Snapshots, client *peer.Client) (*Minion, error) {
	cfg.setDefaults()
	if cfg.ID == "" {
		return nil, errors.New("minion: empty host id (set --id)")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("minion: empty state directory (set --state-dir)")
	}
	cache, err := manifest.LoadCache(filepath.Join(cfg.StateDir, cacheFile))
	if err != nil {
		return nil, err
	}
	m := &Minion{
		cfg: cfg, coord: co, server: server, client: client, cache: cache, started: time.Now(),
		beatWake: make(chan struct{}, 1),
		owner:    manifest.OwnerPolicy{Chown: os.Geteuid() == 0, NumericIDs: cfg.NumericIDs},
	}
	h, enc, man, err := loadHeld(cfg.StateDir)
	if err != nil {
		cfg.Log.WithError(err).Warn("ignoring held state; the next pull re-checks the tree")
	} else if h != nil {
		m.held, m.heldEnc, m.heldMan = h, enc, man
	}
	return m, nil
}

// Outcome is what one poll found.
type Outcome int

// Outcomes of Step.
const (
	Idle     Outcome = iota // no task, or a failed one
	Holding                 // this host holds the current generation, verified on disk
	Waiting                 // no source is free yet, or the pull or repair failed
	Pulled                  // this host pulled the current generation in this step
	Repaired                // this host repaired drift of the generation it holds
	// Superseded: a newer generation was published while this host
	// pulled; what it verified and renamed into place is kept, and it
	// goes on to the newest at once (a live-mirroring master publishes
	// often).
	Superseded
	// NotOurs: the current generation is for host groups this host is
	// not in (publish --group): it neither pulls it nor is expected.
	NotOurs
)

func (o Outcome) String() string {
	return [...]string{"idle", "holding", "waiting", "pulled", "repaired", "superseded", "not ours"}[o]
}

// Run heartbeats and polls until ctx is cancelled. Errors of a single poll
// are logged and retried; Run returns nil once ctx is done.
func (m *Minion) Run(ctx context.Context) error {
	m.watch = newTreeWatch(m.cfg.Log, !m.cfg.NoWatch, func(n int) {
		if m.cfg.Task == coord.DefaultTask { // the gauge is the plain task's
			m.cfg.Metrics.WatchedDirs.Set(float64(n))
		}
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		m.heartbeatLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		m.watch.run(ctx)
	}()
	defer wg.Wait()
	// Told of each new generation at once (pub/sub), an idle host need not
	// poll for it: it looks every idlePoll, for what a lost message hid.
	// A slot handed to this host while it waits for a source comes on its
	// wake channel, on the same subscription.
	var published <-chan struct{}
	k := m.coord.Keys()
	// onlyWakes reports whether the messages since the last call all
	// came on the wake channel (a slot handed to this host): no news of
	// the generation, so the one known stands.
	onlyWakes := func() bool { return false }
	// announced is the generation the last message of the generations
	// channel carried (see announcement).
	announced := func() *coord.Generation { return nil }
	wake := k.WakeChannel(m.cfg.ID)
	if n, err := m.coord.Subscribe(ctx, k.GenerationsChannel(), wake); err != nil {
		m.cfg.Log.WithError(err).Warn("cannot subscribe to new generations; polling every --poll")
	} else {
		defer n.Close()
		published = n.C
		m.listens, m.notes = true, n.C
		defer func() { m.listens, m.notes, m.knownGen = false, nil, nil }()
		onlyWakes = func() bool {
			chs, known := n.Came()
			return known && !slices.ContainsFunc(chs, func(c string) bool { return c != wake })
		}
		announced = func() *coord.Generation {
			msg, ok := n.Last(k.GenerationsChannel())
			if !ok {
				return nil
			}
			return m.announcement(msg)
		}
	}
	failures := 0
	for {
		out, err := m.Step(ctx)
		if err != nil && ctx.Err() == nil {
			m.cfg.Log.WithError(err).Warn("poll failed")
		}
		wait := jitter(m.cfg.Poll)
		switch {
		case out == Pulled || out == Repaired || out == Superseded:
			failures = 0
			wait = 0 // look again at once: a newer generation may be waiting
		case err != nil && out == Waiting:
			// A failed pull: back off, doubling up to a minute, so a host
			// whose disk is full does not download again every poll.
			failures++
			wait = min(wait<<min(failures, 10), max(time.Minute, m.cfg.Poll))
		case out == Holding && m.awaitSwitch:
			// Ready for a fleet switch: the order comes by pub/sub (and
			// is a generation field: a lost message costs ten polls).
			failures = 0
			if published != nil {
				wait = jitter(10 * m.cfg.Poll)
			}
		case (out == Holding || out == Idle || out == NotOurs) && published != nil && err == nil:
			failures = 0
			wait = jitter(max(m.cfg.Poll, idlePoll))
		case out == Waiting && err == nil && m.queued && published != nil:
			// Queued: the next slot freed is handed to this host and it
			// is told (published). It still claims now and then, for a
			// slot of another zone or of an older fanout.
			failures = 0
			wait = jitter(queuedPoll(m.cfg.Poll, m.waiting.Load()))
		case out == Waiting && err == nil:
			// No free source: in a large fleet, space the polls.
			failures = 0
			wait = jitter(waitingPoll(m.cfg.Poll, m.waiting.Load()))
		default:
			failures = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		case <-published:
			if !onlyWakes() {
				// An announcement carries its generation: the Step that
				// follows claims without reading it (10,000 hosts
				// reading it at once held the first claim back by
				// 0.5-1 s). Any other message is read from Redis.
				m.knownGen, m.knownUntil = announced(), time.Now().Add(finishKnown)
			}
		case <-m.beatWake:
			m.knownGen = nil
		case <-m.watch.wake:
			// The held tree changed on disk: let the burst settle, then
			// look (the next Step verifies).
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(settle):
			}
		}
	}
}

// fleetClaims is how many claims a second the waiting hosts of a fleet
// make together at the default --poll of 1s: each waiting host claims
// again after a poll times waiting/fleetClaims (see waitingPoll).
const fleetClaims = 1000

// minWaitingPoll is the shortest wait between two claims of a waiting
// host (unless --poll is shorter).
const minWaitingPoll = 50 * time.Millisecond

// waitingPoll is how long a host waits before it claims again after a
// claim found no source: a poll times waiting/fleetClaims, at least
// minWaitingPoll and at most 30 polls. The waiting hosts of a fleet then
// claim about fleetClaims times a poll together, whatever their number:
// 10,000 waiting hosts cost Redis what 1,000 do, and in a small fleet a
// slot offered by a host that just began to pull (the next link of a
// pipelined chain) is taken within milliseconds, not the second a poll
// would leave it free (16 hosts joining a chain one poll apart added
// 3.9 s to a 2 s transfer on shaped links).
func waitingPoll(poll time.Duration, waiting int64) time.Duration {
	d := time.Duration(float64(poll) * float64(waiting) / fleetClaims)
	return min(max(d, min(minWaitingPoll, poll)), 30*poll)
}

// queuedPoll is how long a queued host (see coord.ClaimOptions.Queue)
// waits before it claims again, unless told of a slot: four times
// waitingPoll, at least a poll, at most 30 polls and maxQueuedPoll. It
// does not wait on that claim for a slot (the queue hands it one): it
// claims for slots no queue hands out (another zone's, an older fanout's,
// a hand-off whose message was lost, which its next claim takes up), and
// to stay in the queue, which drops a host that has not claimed for 35 s.
func queuedPoll(poll time.Duration, waiting int64) time.Duration {
	return min(max(4*waitingPoll(poll, waiting), poll), 30*poll, maxQueuedPoll)
}

// maxQueuedPoll bounds queuedPoll: with jitter's 20 %, within the 35 s a
// queue entry stands after its host's last claim.
const maxQueuedPoll = 25 * time.Second

// settle is how long a burst of changes in the held tree may go on before
// the tree is verified.
const settle = 300 * time.Millisecond

// idlePoll is how often a host that holds the current generation (or has
// no task) and is told of new ones by pub/sub reads the generation anyway.
// Its heartbeat (every 10 s) also reports the current generation, so an
// idle host costs Redis about 0.12 requests a second.
const idlePoll = time.Minute

// Sync runs until this host holds the current generation (nil) or is not in
// its host groups (nil: nothing for it to hold), the task is
// absent or failed, or ctx ends; it is the one-shot mode for cron and
// systemd timers.
func (m *Minion) Sync(ctx context.Context) error {
	if err := m.heartbeat(ctx); err != nil {
		return err
	}
	hctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.heartbeatLoop(hctx)
	}()
	defer func() { stop(); wg.Wait() }()
	var last error
	for {
		out, err := m.Step(ctx)
		switch {
		case err == nil && (out == Holding || out == Pulled || out == Repaired || out == NotOurs) && !m.awaitSwitch:
			return nil
		case err == nil && m.awaitSwitch:
			// Holds the release of a generation switched fleet-wide: a
			// one-shot sync ends once it switched too.
		case err == nil && out == Idle:
			if pending, perr := m.taskPending(ctx); perr != nil {
				last = perr
			} else if !pending {
				return errNoTask
			}
		case err != nil:
			last = err
			m.cfg.Log.WithError(err).Warn("sync attempt failed; retrying")
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("sync gave up: %w", last)
			}
			return fmt.Errorf("sync gave up waiting for a free source: %w", ctx.Err())
		case <-time.After(jitter(m.cfg.Poll)):
		}
	}
}

// errNoTask is Sync's answer when its task has nothing to sync.
var errNoTask = errors.New("no task to sync: the task key is empty or its generation failed (see fanout-master status)")

// taskPending reports whether a task is set that the master has not
// published yet, or has published since Step looked (a sync started right
// after "set task" waits for it).
func (m *Minion) taskPending(ctx context.Context) (bool, error) {
	value, fresh, err := m.coord.TaskKey(ctx)
	if err != nil {
		return false, fmt.Errorf("read task: %w", err)
	}
	if value == "" && !fresh {
		return false, nil
	}
	g, err := m.coord.Current(ctx)
	if err != nil {
		return false, fmt.Errorf("read generation: %w", err)
	}
	// A generation published since Step looked (a race with the master)
	// is work to do, not "no task".
	return fresh || g.ID == 0 || g.State != coord.StateFailed, nil
}

func (m *Minion) heartbeatLoop(ctx context.Context) {
	for {
		// Skipped while a pull's lease renewals and progress reports beat
		// for this host (one within an interval; renewals come about
		// every half lease, 7 s by default, less than the 10 s
		// interval): beats stay at most two intervals apart when the
		// pull ends, within --host-grace (three by default).
		if last := m.renewBeat.Load(); last == 0 || time.Since(time.Unix(0, last)) >= m.cfg.Heartbeat {
			if err := m.heartbeat(ctx); err != nil && ctx.Err() == nil {
				m.cfg.Log.WithError(err).Warn("heartbeat failed")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(m.cfg.Heartbeat):
		}
	}
}

// heartbeat tells Redis this host is alive and, while it holds a verified
// copy of a generation it announced, re-asserts it in finished_queue: a
// finish Redis lost in a failover is announced again within one heartbeat.
// It registers the host on the first beat and every registerEvery beats,
// and wakes the poll loop when the generation it reports is not the one
// the last Step saw (a missed notification).
func (m *Minion) heartbeat(ctx context.Context) error {
	b := coord.Beat{Uploads: m.heldUploads()}
	m.mu.Lock()
	if h := m.held; m.verified && h != nil && m.announced == (coord.Ref{ID: h.Gen, Digest: h.Digest}) {
		b.Held = m.announced
	}
	b.Register = m.beats%registerEvery == 0
	b.Offer = b.Register
	m.beats++
	seen := m.seen
	m.mu.Unlock()
	p, err := m.coord.Heartbeat(ctx, coord.Host{
		ID: m.cfg.ID, Addr: m.cfg.Advertise, Version: m.cfg.Version, Role: "minion", Started: m.started,
		Uploads: m.uploads(), Zone: m.cfg.Zone, Groups: m.cfg.Groups,
	}, b)
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if p.Reasserted {
		m.cfg.Metrics.FinishesReasserted.Inc()
		m.cfg.Log.WithField("gen", b.Held.ID).Warn("Redis had lost this host's finish; announced it again")
	}
	if p.Current != seen {
		select {
		case m.beatWake <- struct{}{}:
		default:
		}
	}
	return nil
}

// registerEvery is how many heartbeats go between two that re-send the
// host's registration and offer its slots (once a minute by default).
const registerEvery = 6

// Step looks at the current generation once. When this host holds it, it
// verifies its tree when due (at start, after a change seen by the watcher,
// periodically) and repairs drift; when it does not, it claims a source and
// pulls.
func (m *Minion) Step(ctx context.Context) (Outcome, error) {
	m.awaitSwitch = false // hold and pull say again when it still waits
	g, err := m.current(ctx)
	if err != nil {
		return Idle, fmt.Errorf("read generation: %w", err)
	}
	m.mu.Lock()
	m.seen = g.Ref()
	m.mu.Unlock()
	if g.ID == 0 || g.State == coord.StateFailed || g.Digest == "" {
		return Idle, nil
	}
	if g.Proto > coord.Proto {
		return Idle, m.refuse(ctx, g, fmt.Sprintf("generation %d was published with protocol %d; this fanout-minion (%s) speaks %d: upgrade fanout on this host",
			g.ID, g.Proto, m.cfg.Version, coord.Proto))
	}
	if !manifest.ValidDigest(g.Digest) {
		return Idle, m.refuse(ctx, g, fmt.Sprintf("generation %d has digest %.80q, not a manifest digest: refused, nothing written (was the generation key written by hand? publish with fanout-master)", g.ID, g.Digest))
	}
	if !coord.InGroups(m.cfg.Groups, g.Groups) {
		// Not for this host: it neither pulls nor counts (the master
		// expects only the groups' hosts). What it holds stays.
		if m.looked != genKey(g) {
			m.looked = genKey(g)
			m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "groups": g.Groups}).Info("generation is for other host groups; not pulling it")
		}
		return NotOurs, nil
	}
	if err := checkPath(g.LocalPath()); err != nil {
		return Idle, m.refuse(ctx, g, fmt.Sprintf("generation %d: %v: refused, nothing written (was the generation key written by hand? publish with fanout-master)", g.ID, err))
	}
	m.mu.Lock()
	h := m.held
	m.mu.Unlock()
	if h.satisfies(g) {
		return m.hold(ctx, g)
	}
	if m.adoptKept(ctx, g) {
		// A release of g's tree is kept here (a rollback): verified, it
		// is switched to and announced, with no source and no transfer.
		if m.looked != genKey(g) {
			// Best effort: the tree is adopted already, and the Steps
			// to come hold it without counting.
			if err := m.coord.Lookup(ctx); err != nil && ctx.Err() == nil {
				m.cfg.Log.WithError(err).Warn("could not count this host's discovery of the generation")
			}
			m.discovered(g)
		}
		return m.hold(ctx, g)
	}
	return m.claimAndPull(ctx, g, false, Pulled)
}

// discovered records that this host's discovery of g was counted in
// lookup: by its first claim of g (coord.ClaimOptions.Lookup), or, for a
// generation adopted from a kept release, on its own.
func (m *Minion) discovered(g coord.Generation) {
	m.looked = genKey(g)
	m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "path": g.Path, "dest": g.Dest}).Info("new generation")
}

// current is the current generation: read from Redis, or the one known
// (knownGen) while it stands. While this host waits for a free source
// that is the generation it waits for, read again every idlePoll: a claim
// of a generation that moved on is refused as stale (and the next Step
// reads it), and a new generation wakes Run, which forgets the one known,
// so a waiting host costs Redis its claims alone, not a generation read
// with each (half the requests of a 1,000-host fleet's waiting hosts).
// Right after a pull it is the generation its finish found, for the Step
// that follows the pull only (finishKnown; under Run, whose subscription
// tells of any change since): that Step reads nothing, and the idle
// Steps after it read as before.
func (m *Minion) current(ctx context.Context) (coord.Generation, error) {
	if g := m.knownGen; g != nil && time.Now().Before(m.knownUntil) {
		return *g, nil
	}
	m.knownGen = nil
	return m.coord.Current(ctx)
}

// announcement is the generation msg, the last message of the
// generations channel, carries (see coord.Client.Announced): nil when it
// carries none, or when it is not newer than the generation the last Step
// saw. That message may have come long ago (a pull's watch loop takes the
// wake-ups meanwhile), and a newer generation may have been published
// since without a message that carries it (one lost while the
// subscription reconnected, a rollback's wake): taken for current, it
// could switch a kept release back.
func (m *Minion) announcement(msg string) *coord.Generation {
	g, ok := m.coord.Announced(msg)
	m.mu.Lock()
	seen := m.seen
	m.mu.Unlock()
	if !ok || g.ID <= seen.ID {
		return nil
	}
	return &g
}

// finishKnown is how long the generation a finish found, or an
// announcement carried, stands (see current): long enough for the Step
// that follows at once, far shorter than the idle wait, so a lost message
// is found no later than before.
const finishKnown = 5 * time.Second

// claimAndPull claims a source for g (with repair, as a host that holds g
// and repairs drift: it stays finished) and pulls through it; done is the
// outcome of a pull that went through.
func (m *Minion) claimAndPull(ctx context.Context, g coord.Generation, repair bool, done Outcome) (Outcome, error) {
	lookup := !repair && m.looked != genKey(g)
	o := coord.ClaimOptions{Repair: repair, Serves: m.uploads() > 0, Slots: m.heldUploads(), Queue: m.listens, Lookup: lookup}
	if m.cfg.Sources > 1 {
		// The rescue claim a chunked pull from a partial source makes as
		// it starts (swarm.rescue), made in the same call: index 1, the
		// first an empty swarm would use (see newSource).
		o.RescueIndex = 1
	}
	unexpect := func() {}
	if m.offersEarly() {
		// The claim offers this host as a partial source (see
		// offerEarly): requests for g wait for its snapshot from now on.
		unexpect = m.server.Expect(g.ID, expectWait)
		o.Offer, o.OfferRescue = m.uploads(), m.cfg.Sources > 1
	}
	defer func() { unexpect() }()
	cl, err := m.coord.Claim(ctx, m.cfg.ID, g.Ref(), o)
	if lookup && (err == nil || errors.Is(err, coord.ErrFinished) || errors.Is(err, coord.ErrNoSource) || errors.Is(err, coord.ErrBusy)) {
		m.discovered(g) // the claim counted it (not when stale, or not answered)
	}
	if errors.Is(err, coord.ErrFinished) {
		// Redis lists this host as holding the generation, but its state
		// does not (the state directory was wiped): verify the tree by
		// pulling its difference, as a repair.
		o.Repair, o.Queue, o.Lookup = true, false, false
		cl, err = m.coord.Claim(ctx, m.cfg.ID, g.Ref(), o)
	}
	if err != nil || !cl.Offered {
		// Nothing offered: requests for g are answered as before.
		unexpect()
		unexpect = func() {}
	}
	var none *coord.NoSourceError
	m.queued = false
	if errors.As(err, &none) {
		m.waiting.Store(none.Waiting)
		m.queued = none.Queued
	} else {
		m.waiting.Store(0)
	}
	if errors.Is(err, coord.ErrNoSource) || errors.Is(err, coord.ErrBusy) {
		if m.knownGen == nil || m.knownGen.Ref() != g.Ref() {
			m.knownGen, m.knownUntil = &g, time.Now().Add(idlePoll)
		}
		return Waiting, nil
	}
	m.knownGen = nil
	switch {
	case errors.Is(err, coord.ErrStale):
		return Idle, nil
	case err != nil:
		return Waiting, fmt.Errorf("claim source: %w", err)
	}
	if err := m.pull(ctx, g, cl); err != nil {
		now, cerr := m.coord.Current(ctx)
		if cerr == nil && now.Ref() == g.Ref() && now.State == coord.StateFailed && ctx.Err() == nil {
			m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "reason": now.Error}).
				Info("generation cancelled while pulling; keeping the files verified so far")
			return Idle, nil
		}
		if cerr == nil && now.ID != 0 && now.Ref() != g.Ref() && ctx.Err() == nil {
			// Not a failure: the master published again (watch mode).
			// Files verified so far stay in place; the next Step diffs
			// against the newest generation, not the ones in between.
			m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "newest": now.ID}).WithError(err).
				Info("generation superseded while pulling; keeping what was verified and going on to the newest")
			return Superseded, nil
		}
		return Waiting, err
	}
	return done, nil
}

// refuse reports, once per generation, a generation this host will not
// pull, for reason: one published by a newer fanout (it is never pulled
// half-understood), or one whose path is not one the master publishes.
func (m *Minion) refuse(ctx context.Context, g coord.Generation, reason string) error {
	if m.refused == genKey(g) {
		return nil
	}
	if err := m.coord.Refuse(ctx, m.cfg.ID, g.Ref(), reason); err != nil {
		return err
	}
	m.refused = genKey(g)
	return errors.New(reason)
}

// hold is Step for a host whose held state names g: verify when due, repair
// drift, announce.
func (m *Minion) hold(ctx context.Context, g coord.Generation) (Outcome, error) {
	if m.needSource == genKey(g) {
		return m.repairFromSource(ctx, g)
	}
	if m.verifyDue() {
		plan, err := m.verify(ctx)
		if err != nil {
			// A tree that cannot be checked cannot be vouched for: serve
			// none of it until it can.
			m.setUnverified()
			m.server.Set(nil)
			var conflict *manifest.ConflictError
			if errors.As(err, &conflict) && m.drifting != genKey(g) {
				// Drift this host will not repair by itself (it would
				// delete excluded paths): listed as repairing, so the
				// generation is not said done of it, with the reason.
				m.drifting = genKey(g)
				if derr := m.coord.Drift(ctx, m.cfg.ID, g.Ref(), conflict.Error()); derr != nil {
					m.cfg.Log.WithError(derr).Warn("could not report the drift")
				}
			}
			return Waiting, err
		}
		if !plan.Empty() {
			return m.repair(ctx, g, plan)
		}
		m.setVerified(false)
	}
	// A released tree is switched to before announce says it is held (a
	// restart between a pull's verification and its switch, a rollback
	// to a kept release), and a task path pointed elsewhere by hand is
	// pointed back at it (a readlink when nothing changed).
	if err := m.switchHeld(g); err != nil {
		return Waiting, err
	}
	if err := m.announce(ctx, g); err != nil {
		return Holding, err
	}
	return Holding, m.fleetSwitch(ctx, g)
}

// announce makes sure Redis lists this host as finished (and as a source)
// for g, which it holds verified (and switched to, when released: hold
// calls switchHeld first): after a restart, a Redis data loss, or a
// republish of identical content.
func (m *Minion) announce(ctx context.Context, g coord.Generation) error {
	if m.finished == genKey(g) {
		return nil
	}
	m.mu.Lock()
	h, enc, man := *m.held, m.heldEnc, m.heldMan
	m.mu.Unlock()
	if h.Gen != g.ID {
		h.Gen = g.ID
		if err := saveHeld(m.cfg.StateDir, h, enc); err != nil {
			return err
		}
		m.mu.Lock()
		m.held = &h
		m.mu.Unlock()
		m.server.Set(snapshot(m.cfg.Root, &h, enc, man))
		if m.cfg.Task == coord.DefaultTask { // the gauge is the plain task's
			m.cfg.Metrics.Generation.Set(float64(g.ID))
		}
	}
	// A hook that has not run for g on this host (a republish of content
	// it held, a restart that interrupted the hook) runs after the finish
	// (after the switch, for a generation switched fleet-wide).
	var hk *pendingHook
	if g.Switch != coord.SwitchFleet {
		hk = m.prepareHook(ctx, g, nil)
	}
	if err := m.coord.Finish(ctx, coord.Claim{Host: m.cfg.ID, Gen: g.Ref()}, m.heldUploads()); err != nil {
		if errors.Is(err, coord.ErrStale) {
			return nil
		}
		return fmt.Errorf("announce held generation: %w", err)
	}
	m.setFinished(g)
	m.cfg.Log.WithField("gen", g.ID).Info("holds the generation, verified on disk; offered as a source")
	m.runHook(ctx, g, hk)
	return nil
}

// setFinished records that Redis lists this host as finished for g.
func (m *Minion) setFinished(g coord.Generation) {
	m.finished = genKey(g)
	m.mu.Lock()
	m.announced = g.Ref()
	m.mu.Unlock()
}

func (m *Minion) uploads() int {
	if !m.cfg.Source {
		return 0
	}
	return m.cfg.Uploads
}

// heldUploads is the slots this host offers once it holds a generation
// whole: one more than --max-uploads when pulls take several sources. Its
// first slots stay with the pullers that streamed from it while it was
// partial; the spare one lets a host stuck behind a slow relay add a
// whole source (swarm.grow claims full sources first). A host with
// coord.MaxUploads slots has no spare: the next number is its rescue
// slot's, which a whole source never offers.
func (m *Minion) heldUploads() int {
	n := m.uploads()
	if n > 0 && n < coord.MaxUploads && m.cfg.Sources > 1 {
		n++
	}
	return n
}

// PeerAnswers reports whether a peer server answers /healthz at addr, over
// TLS when tlsCfg is set: a one-shot sync uses it to decide whether it may
// become a source.
func PeerAnswers(ctx context.Context, addr string, tlsCfg *tls.Config) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	scheme, hc := "http", &http.Client{}
	if tlsCfg != nil {
		scheme, hc = "https", &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// genKey identifies a generation across Redis data loss.
func genKey(g coord.Generation) string {
	return fmt.Sprintf("%d/%d/%s", g.ID, g.Published.UnixMilli(), g.Digest)
}

func jitter(d time.Duration) time.Duration {
	return d*8/10 + rand.N(d*4/10+1)
}

// Serve is the serve-only mode: it heartbeats and serves what this host
// holds, reloading the held state when a one-shot sync changes it, until
// ctx is cancelled.
func (m *Minion) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.heartbeatLoop(ctx)
	}()
	defer wg.Wait()
	for {
		h, enc, man, err := loadHeld(m.cfg.StateDir)
		switch {
		case err != nil:
			m.cfg.Log.WithError(err).Warn("cannot load held state; serving nothing")
			m.server.Set(nil)
		case h == nil:
			m.server.Set(nil)
		case m.server.Current() == nil || m.server.Current().Digest != h.Digest || m.server.Current().Gen != h.Gen:
			m.server.Set(snapshot(m.cfg.Root, h, enc, man))
			m.cfg.Log.WithField("gen", h.Gen).Info("serving held generation")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(m.cfg.Poll):
		}
	}
}
