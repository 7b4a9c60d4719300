// Package master is the fanout origin daemon: it watches the task key,
// validates the task, builds and publishes its manifest as a new generation,
// serves as the first source, reaps expired leases and records completion.
package master

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/peer"
)

// Config is the master's configuration.
type Config struct {
	ID        string // origin id in Redis (default: the hostname, set by the caller)
	Advertise string // host:port minions use to reach the master's peer server
	Root      string // task paths resolve under this directory
	StateDir  string // the hash cache
	Uploads   int    // origin source slots; default 1
	Poll      time.Duration
	// ForgetAfter: a host whose last heartbeat is older than this is
	// removed from the registry, the queues and the source slots (as
	// fanout-master forget does), at most forgetBatch per tick; 0 keeps
	// every host.
	ForgetAfter time.Duration
	Log         logrus.FieldLogger
	Metrics     *metrics.Metrics // default: a private registry
	// Zone is the origin's zone (--zone; empty: none), recorded with each
	// generation it publishes: pullers of its zone prefer it, and bytes it
	// sends to other zones are counted. Its slots go to the Coordinator's
	// zone indexes (coord.Config.Zone), which the command line sets to the
	// same.
	Zone string
	// Exclude lists rsync exclude patterns (package exclude) left out of
	// every task's manifest, on top of the task's own (fanout-master
	// publish --exclude); run --exclude and --exclude-from.
	Exclude []string
	// Watch, when set, watches the tree of the current task and publishes
	// a new generation when it changes (see WatchConfig).
	Watch *WatchConfig
	// Version is the build's version, in the master's registration.
	Version string
	// Task is the name of the task this master publishes (coord.DefaultTask
	// when empty). Only the plain task's master registers the master
	// and forgets silent hosts from the registry; Tasks sets it for each.
	Task string
	// Overlap, when set, checks that a task writing to path on the hosts
	// would not write into another task's tree (see Tasks): a task it
	// refuses (an *OverlapError) is rejected; another error (Redis) is
	// retried at the next tick. done ends the check's reservation of
	// path, once the task is published or rejected.
	Overlap func(ctx context.Context, path string) (done func(), err error)
	// ForgetTasks, when set, forgets a silent host from the other tasks
	// (their heartbeats, queues and slots) before the plain task's master
	// forgets it from the registry (see ForgetAfter).
	ForgetTasks func(ctx context.Context, host string) error
}

// Snapshots serves what the master publishes: a peer.Server (the plain
// task), or its view of a named task (peer.Task).
type Snapshots interface {
	Set(snap *peer.Snapshot)
	VerifyServed(changed func(path string))
}

// Coordinator is the part of the Redis protocol the master uses.
type Coordinator interface {
	TaskKey(ctx context.Context) (string, bool, error)
	Adopt(ctx context.Context) (coord.TaskOptions, error)
	SetTask(ctx context.Context, path string, opts coord.TaskOptions) error
	Current(ctx context.Context) (coord.Generation, error)
	Publish(ctx context.Context, g coord.Generation, uploads int) (coord.Generation, error)
	LoadScripts(ctx context.Context) error
	PublishFailed(ctx context.Context, path string, task coord.TaskOptions, reason, origin string, floor int64) (coord.Generation, error)
	OfferOrigin(ctx context.Context, origin string, r coord.Ref, uploads int) error
	Announce(ctx context.Context, origin string, r coord.Ref, uploads int) error
	Wake(ctx context.Context, r coord.Ref) error
	Complete(ctx context.Context, g coord.Generation, hosts int) (coord.Completion, bool, error)
	History(ctx context.Context, n int) ([]coord.Completion, error)
	OrderSwitch(ctx context.Context, r coord.Ref) (time.Time, error)
	RegisterMaster(ctx context.Context, m coord.MasterInfo, ttl time.Duration) error
	Reap(ctx context.Context) (int, error)
	Status(ctx context.Context) (coord.Status, error)
	Count(ctx context.Context, groups []string) (coord.Counts, error)
	Hosts(ctx context.Context) ([]coord.Host, error)
	Silent(ctx context.Context, age time.Duration, limit int) ([]string, error)
	Forget(ctx context.Context, host string) error
	Keys() coord.Keys
	Subscribe(ctx context.Context, channels ...string) (*coord.Notifications, error)
	TaskKeyspaceChannel() string
	EnableKeyspaceEvents(ctx context.Context) error
	SetWatch(ctx context.Context, st coord.WatchState) error
	Now() time.Time
}

// Master is the origin daemon.
type Master struct {
	cfg    Config
	coord  Coordinator
	server Snapshots
	cache  *manifest.Cache
	active *published // the generation this master serves now
	// last is the last generation this master published, kept in the
	// state directory: when Redis loses writes (a failover, a restart
	// without persistence) and shows an older generation, the master
	// publishes the task again, and never reuses an id.
	last *published
	// watch is watch mode's state; nil when it is off.
	watch *watchState
	// started is when New ran; registered when the master key was last
	// renewed (see register); rollbackAt when this master published the
	// rollback it serves, rollbackWarned when it last said it was stuck.
	started, registered, rollbackAt, rollbackWarned time.Time
	// changed receives paths the peer server found changed on disk while
	// serving them (see peer.Server.VerifyServed).
	changed chan string
	// census is the registry's protocols as last read (see format); nil
	// before the first read.
	census atomic.Pointer[census]
}

// census is what a read of the registry found of the alive hosts'
// protocols: the manifest format they all read, and the hosts of a
// protocol older than this build's.
type census struct {
	at     time.Time // when it was read
	format int
	old    []string
}

// published is a generation this master published.
type published struct {
	Gen    int64  `json:"gen"`
	Digest string `json:"digest"`
	Path   string `json:"path"`
	Delete bool   `json:"delete"`
	// Compress is the task's compress option.
	Compress bool `json:"compress,omitempty"`
	// Exclude is the task's own exclude patterns (from task_options), not
	// those of Config.Exclude.
	Exclude []string `json:"exclude,omitempty"`
	// Dest is the task's destination on the hosts ("" for its path).
	Dest string `json:"dest,omitempty"`
	// Groups are the host groups the task is for (none: every host).
	Groups []string `json:"groups,omitempty"`
	Failed bool     `json:"failed,omitempty"`
	// Format is the manifest format it was published in (0: unknown).
	Format int `json:"format,omitempty"`
	// Atomic is the releases hosts keep (publish --atomic; 0: in place).
	Atomic int `json:"atomic,omitempty"`
	// Rollback is the generation whose release this one returns to
	// (fanout-master rollback): the master serves none of it. Files and
	// Bytes are kept for a rollback only, to publish it again.
	Rollback int64 `json:"rollback,omitempty"`
	// Switch is the task's switch mode (coord.SwitchFleet or "").
	Switch string `json:"switch,omitempty"`
	Files  int64  `json:"files,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

func (p *published) ref() coord.Ref { return coord.Ref{ID: p.Gen, Digest: p.Digest} }

// opts returns the options the task's tree was published with: a tree
// read again (a change seen by watch mode, a file changed while served) is
// published with them, as a new tree even after a rollback.
func (p *published) opts() coord.TaskOptions {
	return coord.TaskOptions{Delete: p.Delete, Compress: p.Compress, Exclude: p.Exclude, Dest: p.Dest, Groups: p.Groups, Atomic: p.Atomic, Switch: p.Switch}
}

// again returns the options that publish p again as it was, a rollback
// as the same rollback (Redis lost it).
func (p *published) again() coord.TaskOptions {
	o := p.opts()
	if p.Rollback > 0 {
		o.Rollback, o.Digest, o.Files, o.Bytes = p.Rollback, p.Digest, p.Files, p.Bytes
	}
	return o
}

const (
	cacheFile     = "hashes.cache"
	publishedFile = "published.json"
)

// New builds a master.
func New(cfg Config, co Coordinator, server Snapshots) (*Master, error) {
	if cfg.Uploads <= 0 {
		cfg.Uploads = 1
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	if cfg.ID == "" {
		return nil, errors.New("master: empty id (set --id)")
	}
	if cfg.Task == "" {
		cfg.Task = coord.DefaultTask
	}
	cache, err := manifest.LoadCache(filepath.Join(cfg.StateDir, cacheFile))
	if err != nil {
		return nil, err
	}
	m := &Master{cfg: cfg, coord: co, server: server, cache: cache, changed: make(chan string, 1), started: time.Now()}
	if server != nil {
		// The origin serves the operator's tree, which may change under a
		// generation: every chunk is checked against what was published
		// as it is served, and a change makes a new generation rather
		// than bad bytes (which would get the origin barred).
		server.VerifyServed(func(p string) {
			select {
			case m.changed <- p:
			default: // one is pending already
			}
		})
	}
	if m.last, err = loadPublished(filepath.Join(cfg.StateDir, publishedFile)); err != nil {
		return nil, err
	}
	if _, err := exclude.Parse(cfg.Exclude); err != nil {
		return nil, fmt.Errorf("master: %w", err)
	}
	if cfg.Watch != nil {
		t, err := newTreeWatcher(*cfg.Watch, cfg.Log)
		if err != nil {
			return nil, err
		}
		m.watch = &watchState{t: t}
	}
	return m, nil
}

// now is this host's clock corrected to Redis time.
func (m *Master) now() time.Time { return m.coord.Now() }

// Run watches the task key until ctx is cancelled. A failing tick (Redis
// down, say) is logged and retried on the next one.
//
// The master acts on a change at once rather than at its next poll: Redis
// publishes a keyspace notification when an operator sets the task key
// (the master turns them on, CONFIG SET notify-keyspace-events K$, where
// allowed; where not, it reads the task key every taskPoll), and the
// finish script notifies the master channel, so a generation is marked
// done as soon as its last host finishes. Every Poll it ticks anyway
// (reaping, and whatever a lost notification hid).
//
// CONFIG SET does not outlive a node, and a Sentinel failover or a new
// cluster node brings one that never had it: the master sets it again
// every keyspaceRecheck. Until then its ticks read the task key.
func (m *Master) Run(ctx context.Context) error {
	// taskTick, while not nil, reads the task key every 100 ms: keyspace
	// notifications are off or the subscription failed.
	var taskTicker *time.Ticker
	var taskTick <-chan time.Time
	pollTask := func(on bool) {
		switch {
		case on && taskTicker == nil:
			taskTicker = time.NewTicker(min(100*time.Millisecond, m.cfg.Poll))
			taskTick = taskTicker.C
		case !on && taskTicker != nil:
			taskTicker.Stop()
			taskTicker, taskTick = nil, nil
		}
	}
	defer pollTask(false)
	if err := m.coord.EnableKeyspaceEvents(ctx); err != nil {
		pollTask(true)
		m.cfg.Log.WithError(err).Info("reading the task key every 100ms; to be told at once instead: redis-cli config set notify-keyspace-events K$")
	}
	recheck := time.NewTicker(keyspaceRecheck)
	defer recheck.Stop()
	keys := m.coord.Keys()
	var wake <-chan struct{}
	var notes *coord.Notifications
	if n, err := m.coord.Subscribe(ctx, keys.MasterChannel(), m.coord.TaskKeyspaceChannel()); err != nil {
		m.cfg.Log.WithError(err).Warn("cannot subscribe to notifications; polling only")
		pollTask(true)
	} else {
		defer n.Close()
		wake, notes = n.C, n
	}
	subscribed := notes != nil
	cctx, stopCensus := context.WithCancel(ctx)
	censusDone := make(chan struct{})
	go func() {
		defer close(censusDone)
		m.keepCensus(cctx)
	}()
	defer func() { stopCensus(); <-censusDone }()
	lastTask := ""
	tick := time.NewTimer(0)
	defer tick.Stop()
	// Watch mode: the tree watcher's batches, and the periodic full walk.
	var ready <-chan struct{}
	var fullTick <-chan time.Time
	if w := m.watch; w != nil {
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			w.t.run(wctx)
		}()
		defer func() { stop(); <-done }()
		ready = w.t.ready
		full := time.NewTicker(w.t.cfg.FullEvery)
		defer full.Stop()
		fullTick = full.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ready:
			if err := m.watchPublish(ctx, false); err != nil && ctx.Err() == nil {
				m.cfg.Log.WithError(err).Warn("publishing the changes of the watched tree failed; retrying at the next change or --full-every")
			}
			continue
		case p := <-m.changed:
			if err := m.servedChanged(ctx, p); err != nil && ctx.Err() == nil {
				m.cfg.Log.WithError(err).Warn("publishing the changed tree failed")
			}
			continue
		case <-fullTick:
			if err := m.watchPublish(ctx, true); err != nil && ctx.Err() == nil {
				m.cfg.Log.WithError(err).Warn("periodic full walk of the watched tree failed")
			}
			continue
		case <-tick.C:
		case <-recheck.C:
			// CONFIG SET is lost with a node; a failover promotes one
			// that may never have had it.
			err := m.coord.EnableKeyspaceEvents(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil && taskTicker == nil {
				m.cfg.Log.WithError(err).Warn("cannot turn keyspace notifications on again; reading the task key every 100ms")
			}
			pollTask(err != nil || !subscribed)
			continue
		case <-wake:
			// A burst (many hosts finishing at once) makes one tick; a
			// task an operator set is read at once (the wait was a fifth
			// of the time from SET task to the publish).
			if !cameOn(notes, m.coord.TaskKeyspaceChannel()) {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(coalesce):
				}
			}
		case <-taskTick:
			// No keyspace notifications: a cheap read of the task key,
			// and a whole tick only when it changed.
			value, fresh, err := m.coord.TaskKey(ctx)
			if err != nil || (!fresh && value == lastTask) {
				continue
			}
			lastTask = value
		}
		if err := m.Tick(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.WithError(err).Warn("master tick failed")
		}
		tick.Reset(m.cfg.Poll)
	}
}

// coalesce is how long the master lets notifications gather before it
// acts, unless one is the task key's (see cameOn).
const coalesce = 20 * time.Millisecond

// cameOn reports whether a message came on channel among those n received
// since the last call (false when n cannot tell).
func cameOn(n *coord.Notifications, channel string) bool {
	channels, known := n.Came()
	return known && slices.Contains(channels, channel)
}

// keyspaceRecheck is how often the master turns keyspace notifications on
// again (see Run).
const keyspaceRecheck = 10 * time.Second

// forgetBatch bounds the hosts forgotten in one tick (see forgetSilent).
const forgetBatch = 100

// registerEvery is how often the master renews its registration;
// registerTTL how long one lasts.
const (
	registerEvery = 10 * time.Second
	registerTTL   = 30 * time.Second
)

// register renews the master's registration (the master key) every
// registerEvery: publish --dest, --group, --atomic and rollback check it,
// since a master that predates those options would drop them.
func (m *Master) register(ctx context.Context) {
	if m.cfg.Task != coord.DefaultTask || time.Since(m.registered) < registerEvery {
		return
	}
	info := coord.MasterInfo{ID: m.cfg.ID, Addr: m.cfg.Advertise, Version: m.cfg.Version, Started: m.started}
	if err := m.coord.RegisterMaster(ctx, info, registerTTL); err != nil {
		m.cfg.Log.WithError(err).Warn("could not register the master")
		return
	}
	m.registered = time.Now()
}

// Tick does one round of the master's work.
func (m *Master) Tick(ctx context.Context) error {
	m.register(ctx)
	value, fresh, err := m.coord.TaskKey(ctx)
	if err != nil {
		return fmt.Errorf("read task: %w", err)
	}
	g, err := m.coord.Current(ctx)
	if err != nil {
		return fmt.Errorf("read generation: %w", err)
	}
	switch {
	case fresh || (value != "" && g.ID == 0):
		// An operator (or publish) wrote the key since we adopted it, even
		// with the same path or an empty value: that is a new task.
		return m.adopt(ctx, value, g.ID)
	case m.lost(g):
		// Redis went back in time (a failover promoted a replica that had
		// not seen our publish, or it restarted empty): publish the last
		// task again. Hosts that hold it announce themselves without a
		// transfer; the id stays above the lost one.
		m.cfg.Log.WithFields(logrus.Fields{"path": m.last.Path, "lost_gen": m.last.Gen, "redis_gen": g.ID}).
			Warn("Redis lost the last generation this master published; publishing the task again")
		return m.coord.SetTask(ctx, m.last.Path, m.last.again())
	case value == "":
		// No task, or an operator deleted the key: keep serving what we have.
	case !names(value, g):
		// The task names another path than the generation: the publish of
		// that task was lost. Publish it now.
		m.cfg.Log.WithFields(logrus.Fields{"task": value, "gen": g.ID, "gen_path": g.Path}).
			Warn("task does not name the current generation; publishing it")
		return m.adopt(ctx, value, g.ID)
	case g.Origin == m.cfg.ID && g.State != coord.StateFailed && (m.active == nil || m.active.ref() != g.Ref()):
		// Restarted master: serve the generation it published before.
		if err := m.resume(ctx, g); err != nil {
			return err
		}
	}
	if a := m.active; a != nil && a.ref() == g.Ref() && g.State != coord.StateFailed && a.Rollback == 0 {
		// Offer the origin's slots again every tick: a slot a puller judged
		// dead after one transient error, or a write Redis lost, must never
		// leave the generation without its origin. Claimed slots are skipped.
		if err := m.coord.OfferOrigin(ctx, m.cfg.ID, g.Ref(), m.cfg.Uploads); err != nil {
			return fmt.Errorf("offer origin slots: %w", err)
		}
	}
	if n, err := m.coord.Reap(ctx); err != nil {
		return fmt.Errorf("reap leases: %w", err)
	} else if n > 0 {
		m.cfg.Metrics.LeaseExpiries.Add(float64(n))
		m.cfg.Log.WithField("leases", n).Warn("reaped expired leases; their source slots are free again")
	}
	if err := m.forgetSilent(ctx); err != nil {
		return err
	}
	if g.State == coord.StateRunning {
		if err := m.checkDone(ctx); err != nil {
			return err
		}
		if g, err = m.coord.Current(ctx); err != nil {
			return fmt.Errorf("read generation: %w", err)
		}
	}
	return m.watchTick(ctx, g)
}

// forgetSilent forgets up to forgetBatch hosts silent for longer than
// ForgetAfter, so hosts that come and go (autoscaled, renamed, rebuilt)
// do not grow the registry without bound.
func (m *Master) forgetSilent(ctx context.Context) error {
	if m.cfg.ForgetAfter <= 0 {
		return nil
	}
	hosts, err := m.coord.Silent(ctx, m.cfg.ForgetAfter, forgetBatch)
	if err != nil {
		return fmt.Errorf("find hosts to forget: %w", err)
	}
	for _, h := range hosts {
		if m.cfg.ForgetTasks != nil {
			if err := m.cfg.ForgetTasks(ctx, h); err != nil {
				return err
			}
		}
		if err := m.coord.Forget(ctx, h); err != nil {
			return err
		}
		m.cfg.Log.WithField("host", h).WithField("forget_after", m.cfg.ForgetAfter).
			Info("forgot a host silent for longer than --forget-after")
	}
	return nil
}

// lost reports whether Redis shows an older generation than the last one
// this master published: ids only grow, so a smaller id (or the same id
// with another digest) means Redis lost writes.
func (m *Master) lost(g coord.Generation) bool {
	l := m.last
	return l != nil && !l.Failed && (g.ID < l.Gen || (g.ID == l.Gen && g.Digest != l.Digest))
}

// names reports whether the task value names generation g.
func names(value string, g coord.Generation) bool {
	if clean, err := CleanTask(value); err == nil {
		return clean == g.Path
	}
	return storedTask(value) == g.Path // a failed generation records the value as written (cut)
}

// adopt marks the task key seen, takes its options and publishes it; cur
// is the id of the generation current as it was read.
func (m *Master) adopt(ctx context.Context, value string, cur int64) error {
	opts, err := m.coord.Adopt(ctx)
	if err != nil {
		return fmt.Errorf("adopt task: %w", err)
	}
	opts.TaskGen = cur
	if opts.Task != "" {
		value = opts.Task // an operator wrote the key again since the read
	}
	return m.publish(ctx, value, opts)
}

// publish validates a task value, builds its manifest and publishes it as a
// new generation; a bad value becomes a failed generation and changes
// nothing on any disk.
func (m *Master) publish(ctx context.Context, value string, opts coord.TaskOptions) error {
	if opts.Rollback > 0 {
		return m.rollback(ctx, value, opts)
	}
	clean, osPath, err := ResolveTask(m.cfg.Root, value)
	if err == nil && opts.Dest != "" {
		var dest string
		if dest, err = CleanTask(opts.Dest); err != nil {
			err = fmt.Errorf("task option dest: %w", err)
		}
		opts.Dest = dest
	}
	if err == nil {
		if gerr := coord.ValidGroups("task option groups", opts.Groups); gerr != nil {
			err = gerr
		}
	}
	if err == nil && m.cfg.Overlap != nil {
		local := clean
		if opts.Dest != "" {
			local = opts.Dest
		}
		done, oerr := m.cfg.Overlap(ctx, local)
		var overlap *OverlapError
		switch {
		case errors.As(oerr, &overlap):
			err = oerr
		case oerr != nil:
			return fmt.Errorf("check the task's place against the other tasks: %w", oerr)
		default:
			defer done()
		}
	}
	if err == nil {
		var snap *peer.Snapshot
		snap, err = m.build(ctx, osPath, opts.Exclude)
		if err == nil {
			defer m.saveCache() // once published: hosts pull meanwhile
			return m.offer(ctx, clean, opts, snap)
		}
	}
	return m.reject(ctx, value, opts, err)
}

// reject records task value, refused for err, as a failed generation:
// hosts leave their trees alone and status shows why. opts carry the
// task key's value when value was adopted from it (see
// coord.Generation.Task).
func (m *Master) reject(ctx context.Context, value string, opts coord.TaskOptions, err error) error {
	m.cfg.Log.WithField("task", value).WithError(err).Error("task rejected; nothing was changed on any host")
	m.cfg.Metrics.RejectedTasks.Inc()
	m.server.Set(nil)
	m.active = nil
	value = storedTask(value)
	g, perr := m.coord.PublishFailed(ctx, value, opts, err.Error(), m.cfg.ID, m.floor())
	if perr != nil {
		return fmt.Errorf("record failed task: %w", perr)
	}
	return m.remember(&published{Gen: g.ID, Path: value, Failed: true})
}

// maxStoredTask bounds the task value recorded in a failed generation.
const maxStoredTask = 4096

// storedTask is task value as a failed generation records it: cut to
// maxStoredTask bytes.
func storedTask(value string) string {
	if len(value) > maxStoredTask {
		return value[:maxStoredTask] + "..."
	}
	return value
}

// floor is the last id this master published (0 if none).
func (m *Master) floor() int64 {
	if m.last == nil {
		return 0
	}
	return m.last.Gen
}

// remember records p as the last generation published, in the state
// directory, so a restarted master knows it too.
func (m *Master) remember(p *published) error {
	m.last = p
	if err := savePublished(filepath.Join(m.cfg.StateDir, publishedFile), p); err != nil {
		return fmt.Errorf("record the published generation: %w", err)
	}
	return nil
}

// loadScripts loads the protocol's scripts that Redis lacks before a
// publish wakes the fleet (coord.Client.LoadScripts), so the hosts never
// all send a script's text at once. A failure (an ACL without SCRIPT, a
// Cluster node down) costs only that herd: each script still loads on its
// first call.
func (m *Master) loadScripts(ctx context.Context) {
	if err := m.coord.LoadScripts(ctx); err != nil && ctx.Err() == nil {
		m.cfg.Log.WithError(err).Warn("could not load the Lua scripts into Redis before the publish; hosts send each on its first use")
	}
}

func (m *Master) offer(ctx context.Context, clean string, opts coord.TaskOptions, snap *peer.Snapshot) error {
	files, bytes := snap.Manifest.Totals()
	old := m.active
	m.loadScripts(ctx)
	g, err := m.coord.Publish(ctx, coord.Generation{
		ID: m.floor(), Path: clean, Dest: opts.Dest, Groups: opts.Groups, Delete: opts.Delete, Compress: opts.Compress, Digest: snap.Digest,
		Origin: m.cfg.ID, OriginAddr: m.cfg.Advertise, OriginZone: m.cfg.Zone, Files: int64(files), Bytes: bytes, Atomic: opts.Atomic, Switch: opts.Switch,
		Task: opts.Task, TaskGen: opts.TaskGen,
	}, 0)
	if err != nil {
		return fmt.Errorf("publish generation: %w", err)
	}
	// Serve first, offer slots second: a minion that claims the origin must
	// find it serving this generation.
	snap.Gen = g.ID
	m.server.Set(snap)
	m.active = &published{Gen: g.ID, Digest: g.Digest, Path: clean, Dest: g.Dest, Groups: g.Groups, Delete: opts.Delete, Compress: opts.Compress, Exclude: opts.Exclude, Format: snap.Manifest.Format(), Atomic: g.Atomic, Switch: g.Switch}
	m.watchPublished(old == nil || old.ref() != g.Ref(), g, snap)
	m.cfg.Metrics.Published.Inc()
	if m.cfg.Task == coord.DefaultTask { // the gauge is the plain task's
		m.cfg.Metrics.Generation.Set(float64(g.ID))
	}
	if err := m.remember(m.active); err != nil {
		return err
	}
	if err := m.coord.Announce(ctx, m.cfg.ID, g.Ref(), m.cfg.Uploads); err != nil {
		return fmt.Errorf("offer origin slots: %w", err)
	}
	m.cfg.Log.WithFields(logrus.Fields{
		"gen": g.ID, "path": clean, "dest": g.Dest, "groups": g.Groups, "files": files, "bytes": bytes, "delete": opts.Delete, "compress": opts.Compress, "exclude": len(snap.Manifest.Exclude), "digest": snap.Digest[:16],
	}).Info("published generation")
	return nil
}

// resume serves a generation this master published before a restart. If the
// tree changed meanwhile, the changed tree is published as a new generation.
func (m *Master) resume(ctx context.Context, g coord.Generation) error {
	if g.Rollback > 0 {
		// Its release is on the hosts, not under this master's root.
		m.server.Set(nil)
		m.active = rolledBack(g)
		m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "rollback": g.Rollback}).Info("resumed a rollback: the hosts serve it")
		return nil
	}
	opts := coord.TaskOptions{Delete: g.Delete, Compress: g.Compress, Dest: g.Dest, Groups: g.Groups, Atomic: g.Atomic, Switch: g.Switch}
	if l := m.last; l != nil && l.Gen == g.ID && l.Digest == g.Digest {
		opts = l.opts() // the excludes are not in the generation key
	}
	_, osPath, err := ResolveTask(m.cfg.Root, g.Path)
	if err != nil {
		return m.publish(ctx, g.Path, opts)
	}
	format := m.format(ctx)
	if l := m.last; l != nil && l.Gen == g.ID && l.Format != 0 {
		format = l.Format // as it was published
	}
	snap, err := m.buildFormat(ctx, osPath, format, opts.Exclude)
	if err != nil {
		return m.publish(ctx, g.Path, opts)
	}
	defer m.saveCache()
	if snap.Digest != g.Digest {
		m.cfg.Log.WithField("gen", g.ID).Warn("task tree changed since it was published; publishing a new generation")
		return m.offer(ctx, g.Path, opts, snap)
	}
	snap.Gen = g.ID
	m.server.Set(snap)
	m.active = &published{Gen: g.ID, Digest: g.Digest, Path: g.Path, Dest: g.Dest, Groups: g.Groups, Delete: g.Delete, Compress: g.Compress, Exclude: opts.Exclude, Format: snap.Manifest.Format(), Atomic: g.Atomic, Switch: g.Switch}
	m.watchPublished(false, g, snap)
	if m.cfg.Task == coord.DefaultTask { // the gauge is the plain task's
		m.cfg.Metrics.Generation.Set(float64(g.ID))
	}
	if m.last == nil || m.last.Gen < g.ID {
		if err := m.remember(m.active); err != nil {
			return err
		}
	}
	if err := m.coord.OfferOrigin(ctx, m.cfg.ID, g.Ref(), m.cfg.Uploads); err != nil {
		return fmt.Errorf("offer origin slots: %w", err)
	}
	m.cfg.Log.WithField("gen", g.ID).Info("resumed serving generation")
	return nil
}

// build walks and hashes the tree at osPath into a snapshot, in the
// manifest format the fleet reads (see format), leaving out what the
// task's excludes and Config.Exclude match. It does not save the hash
// cache: callers do once the snapshot is published (saveCache), since the
// save of 100,000 entries took 0.3-0.6 s between the walk and the publish.
func (m *Master) build(ctx context.Context, osPath string, taskExclude []string) (*peer.Snapshot, error) {
	return m.buildFormat(ctx, osPath, m.format(ctx), taskExclude)
}

// excludes compiles the task's exclude patterns and Config.Exclude, which
// add up; a bad pattern is an error naming it (the task then fails).
func (m *Master) excludes(taskExclude []string) (*exclude.List, error) {
	l, err := exclude.Parse(exclude.Merge(taskExclude, m.cfg.Exclude))
	if err != nil {
		return nil, fmt.Errorf("task options: %w", err)
	}
	return l, nil
}

// buildOptions are the manifest.Options of a build in format with
// excludes ex.
func (m *Master) buildOptions(format int, ex *exclude.List) manifest.Options {
	opts := manifest.Options{
		Hash:    true,
		Cache:   m.cache,
		Exclude: ex,
		Warn:    func(p string, err error) { m.cfg.Log.WithField("path", p).WithError(err).Warn("skipped entry") },
	}
	if format >= manifest.Format3 {
		p := chunk.DefaultParams()
		opts.Chunking = &p
	}
	return opts
}

// buildFormat is build in the given format: format 3 cuts files into
// content-defined chunks (chunk.DefaultParams), which costs more hashing
// than the whole-file hash of formats 1 and 2. With exclude patterns the
// manifest is of format 4 (format 3 with its excludes), whatever format
// says: an older format cannot carry them, and minions that predate them
// refuse the generation (its protocol) rather than delete excluded files.
func (m *Master) buildFormat(ctx context.Context, osPath string, format int, taskExclude []string) (*peer.Snapshot, error) {
	ex, err := m.excludes(taskExclude)
	if err != nil {
		return nil, err
	}
	if !ex.Empty() {
		format = manifest.Format4
	}
	man, err := manifest.Build(ctx, osPath, m.buildOptions(format, ex))
	if err != nil {
		return nil, fmt.Errorf("build manifest: %w", err)
	}
	return encodeSnapshot(man, osPath, format)
}

// saveCache writes the hash cache to the state directory.
func (m *Master) saveCache() {
	if err := m.cache.Save(filepath.Join(m.cfg.StateDir, cacheFile)); err != nil {
		m.cfg.Log.WithError(err).Warn("could not save the hash cache")
	}
}

// encodeSnapshot encodes man in format as the snapshot of the tree at root.
func encodeSnapshot(man *manifest.Manifest, root string, format int) (*peer.Snapshot, error) {
	if format == manifest.Format1 {
		man = man.WithoutOwners()
	}
	enc, err := man.EncodeFormat(format)
	if err != nil {
		return nil, err
	}
	return &peer.Snapshot{Digest: manifest.Digest(enc), Encoded: enc, Manifest: man, Root: root}, nil
}

// format is the manifest format to publish: the newest every host alive
// in the registry reads. Format 3 (content-defined chunks: delta
// transfers, several sources at once) unless a host of protocol 1 or 2
// is alive; format 2 (owners) once every host speaks 2; format 1 while an
// older minion remains (it would refuse fields it does not know). A fleet
// upgrades host by host while tasks run.
//
// Reading the registry is O(N): at 10,000 simulated hosts it was most of
// the 79-120 ms from SET task to the publish. So a census younger than
// censusFresh that found no alive host of protocol 1 or 2 is taken as it
// is (Run keeps one that recent, see keepCensus); otherwise the registry
// is read now. What a census taken earlier can miss is a host of protocol
// 1 or 2 registered since: a minion of protocol 2 refuses the generation
// with the upgrade message (a protocol 1 one would fail to read its
// manifest), and the next publish, after the next census, is in a format
// it reads.
func (m *Master) format(ctx context.Context) int {
	if c := m.census.Load(); c != nil && c.format == manifest.Format3 && time.Since(c.at) < censusFresh {
		return c.format
	}
	c, err := m.takeCensus(ctx)
	if err != nil {
		m.cfg.Log.WithError(err).Warn("cannot list hosts; publishing the manifest in format 1, which every minion reads")
		return manifest.Format1
	}
	if len(c.old) > 0 && c.format < manifest.Format3 {
		m.cfg.Log.WithFields(logrus.Fields{"hosts": c.old, "format": c.format}).Warn("minions of an older protocol are registered: publishing a manifest they read; upgrade them")
	}
	return c.format
}

// takeCensus reads the registry (see format) and keeps what it found.
func (m *Master) takeCensus(ctx context.Context) (*census, error) {
	at := time.Now()
	hosts, err := m.coord.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	oldest := coord.Proto
	c := &census{at: at, format: manifest.Format3}
	for _, h := range hosts {
		if h.Alive && h.Proto < coord.Proto {
			c.old = append(c.old, h.ID)
			oldest = min(oldest, h.Proto)
		}
	}
	switch {
	case oldest < 2:
		c.format = manifest.Format1
	case oldest < 3:
		c.format = manifest.Format2
	}
	// Kept unless a census read later is kept already (the background
	// one and a publish's may run at once).
	for {
		prev := m.census.Load()
		if prev != nil && prev.at.After(c.at) {
			return c, nil
		}
		if m.census.CompareAndSwap(prev, c) {
			return c, nil
		}
	}
}

// keepCensus takes a census of the registry when Run starts and every
// censusEvery until ctx ends, so that a publish finds one younger than
// censusFresh and reads no registry (see format): at 10,000 hosts a
// census costs Redis about 20 scan pages, once a minute.
func (m *Master) keepCensus(ctx context.Context) {
	t := time.NewTicker(censusEvery)
	defer t.Stop()
	for {
		if _, err := m.takeCensus(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.WithError(err).Debug("census of the registry failed; the next publish reads it")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// censusEvery is how often Run reads the registry's protocols;
// censusFresh how long a publish trusts what it read (a census that
// failed once still leaves one that recent).
const (
	censusEvery = time.Minute
	censusFresh = 150 * time.Second
)

func (m *Master) checkDone(ctx context.Context) error {
	if m.active == nil {
		return nil
	}
	// Cheap counts first: the full status (O(hosts)) is read only when
	// every alive host may have finished.
	n, err := m.coord.Count(ctx, m.active.Groups)
	if err != nil {
		return fmt.Errorf("count hosts: %w", err)
	}
	m.rollbackStuck(n)
	if n.Finished < n.Alive || n.Repairing > 0 || n.Alive == 0 {
		return nil
	}
	st, err := m.coord.Status(ctx)
	if err != nil {
		return fmt.Errorf("read status: %w", err)
	}
	if g := st.Generation; g.Ref() == m.active.ref() && g.SwitchPending() && st.Ready() {
		// Every expected host holds the release: all switch now.
		at, err := m.coord.OrderSwitch(ctx, g.Ref())
		if err != nil {
			return err
		}
		if !at.IsZero() {
			m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "hosts": len(st.Expected), "ready_after": at.Sub(g.Published).Round(time.Millisecond).String()}).
				Info("every expected host holds the release: ordered the fleet to switch")
		}
		return nil
	}
	if st.Generation.Ref() != m.active.ref() || st.Generation.State != coord.StateRunning || st.State != coord.StateDone {
		return nil
	}
	rec, ok, err := m.coord.Complete(ctx, st.Generation, len(st.Finished))
	if err != nil {
		return fmt.Errorf("complete generation: %w", err)
	}
	if ok {
		m.cfg.Log.WithFields(logrus.Fields{
			"gen": rec.Gen, "hosts": rec.Hosts, "bytes": rec.Bytes, "rounds": rec.Rounds,
			"elapsed": rec.Elapsed.Round(time.Millisecond).String(),
		}).Info("generation done: every expected host holds it")
	}
	return nil
}

// rollback publishes again the release of the completed generation
// opts.Rollback (fanout-master rollback), from the digest, counts and
// options the rollback command read in the history: no tree is read, and
// the master serves nothing of it and offers no slot, since its own tree
// may have changed since. Hosts that keep the release switch back to it
// and become its sources; the others pull it from them.
func (m *Master) rollback(ctx context.Context, value string, opts coord.TaskOptions) error {
	clean, err := CleanTask(value)
	if err == nil && opts.Dest != "" {
		if opts.Dest, err = CleanTask(opts.Dest); err != nil {
			err = fmt.Errorf("task option dest: %w", err)
		}
	}
	switch {
	case err != nil:
	case !manifest.ValidDigest(opts.Digest):
		err = fmt.Errorf("rollback to generation %d: task option digest %.80q is not a manifest digest (use fanout-master rollback)", opts.Rollback, opts.Digest)
	case opts.Atomic < 1 || opts.Atomic > coord.MaxKeep:
		err = fmt.Errorf("rollback to generation %d: task option atomic is %d, want 1 to %d releases kept (use fanout-master rollback)", opts.Rollback, opts.Atomic, coord.MaxKeep)
	default:
		err = coord.ValidGroups("task option groups", opts.Groups)
	}
	if err != nil {
		return m.reject(ctx, value, opts, err)
	}
	m.loadScripts(ctx)
	g, err := m.coord.Publish(ctx, coord.Generation{
		ID: m.floor(), Path: clean, Dest: opts.Dest, Groups: opts.Groups, Delete: opts.Delete, Digest: opts.Digest,
		Origin: m.cfg.ID, OriginAddr: m.cfg.Advertise, OriginZone: m.cfg.Zone, Files: opts.Files, Bytes: opts.Bytes,
		Atomic: opts.Atomic, Rollback: opts.Rollback, Switch: opts.Switch, Task: opts.Task, TaskGen: opts.TaskGen,
	}, 0)
	if err != nil {
		return fmt.Errorf("publish rollback: %w", err)
	}
	m.server.Set(nil)
	old := m.active
	m.active = rolledBack(g)
	m.rollbackAt = time.Now()
	if old != nil && old.Path == clean {
		// A tree published after the rollback keeps the task's own
		// options that the generation does not record.
		m.active.Exclude, m.active.Compress = old.Exclude, old.Compress
	}
	m.cfg.Metrics.Published.Inc()
	if m.cfg.Task == coord.DefaultTask { // the gauge is the plain task's
		m.cfg.Metrics.Generation.Set(float64(g.ID))
	}
	if err := m.remember(m.active); err != nil {
		return err
	}
	// Idle hosts learn of it at once (a publish's announce does this,
	// with the origin's slots, which a rollback does not offer).
	if err := m.coord.Wake(ctx, g.Ref()); err != nil {
		m.cfg.Log.WithError(err).Warn("could not wake the minions; they see the rollback at their next heartbeat")
	}
	m.cfg.Log.WithFields(logrus.Fields{
		"gen": g.ID, "rollback": g.Rollback, "path": clean, "dest": g.Dest, "digest": g.Digest[:16], "files": g.Files, "bytes": g.Bytes,
	}).Info("published a rollback: hosts that keep the release switch back to it, the others pull it from them")
	return nil
}

// rollbackPatience is how long a rollback may go without any host
// holding its release before the master says what to do.
const rollbackPatience = 2 * time.Minute

// rollbackStuck warns, once a minute, when a rollback this master
// published has no host holding the release after rollbackPatience: the
// master serves none of it, so if no host kept it, nothing will.
func (m *Master) rollbackStuck(n coord.Counts) {
	a := m.active
	if a == nil || a.Rollback == 0 || n.Finished > 0 || n.Alive == 0 {
		return
	}
	since := time.Since(m.rollbackAt)
	if m.rollbackAt.IsZero() || since < rollbackPatience || time.Since(m.rollbackWarned) < time.Minute {
		return
	}
	m.rollbackWarned = time.Now()
	m.cfg.Log.WithFields(logrus.Fields{"gen": a.Gen, "rollback": a.Rollback, "waiting": since.Round(time.Second).String(), "hosts": n.Alive}).
		Warn("no host holds the rolled-back release yet: if none kept it (pruned, drifted), nothing will serve it; fanout-master cancel, then publish its tree again")
}

// rolledBack is the record of rollback generation g.
func rolledBack(g coord.Generation) *published {
	return &published{Gen: g.ID, Digest: g.Digest, Path: g.Path, Dest: g.Dest, Groups: g.Groups, Delete: g.Delete,
		Atomic: g.Atomic, Rollback: g.Rollback, Switch: g.Switch, Files: g.Files, Bytes: g.Bytes}
}
