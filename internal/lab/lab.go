// Package lab runs a whole fanout deployment inside one process: a Redis
// (embedded miniredis, or any URL), a master and N minions, each with its own
// root directory and its own peer server on a loopback socket. The demo and
// the integration tests are built on it.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/master"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/minion"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/statedir"
)

// Config describes a lab deployment.
type Config struct {
	Dir      string        // base directory; every host gets Dir/<id>/root and Dir/<id>/state
	Minions  int           // number of minions
	RedisURL string        // empty: start an embedded miniredis
	Prefix   string        // Redis key prefix
	Uploads  int           // --max-uploads of every host
	Poll     time.Duration // poll interval; default 100ms
	BWLimit  int64         // per-host upload and download cap, bytes/s; 0: none
	// WholeFile turns pipelining off: a minion becomes a source only once
	// it holds the whole generation (the seed's doubling).
	WholeFile bool
	// NoWatch turns the minions' inotify watchers off (drift is then found
	// by VerifyEvery only); VerifyEvery defaults to the minion's.
	NoWatch     bool
	VerifyEvery time.Duration
	// ZoneBlind: hosts register their Zone and count the bytes that
	// cross zones, but claim as hosts without one (no zone index): the
	// zone-blind choice that zones are measured against.
	ZoneBlind bool
	// MasterZone is the master's --zone (minions: Host.Zone).
	MasterZone string
	// Compress makes every minion ask its sources for compressed chunks
	// (fanout-minion --compress).
	Compress bool
	// NoBypass stops minions taking the place of a slow relay
	// (fanout-minion --bypass-slow-relays=false).
	NoBypass bool
	Log      logrus.FieldLogger
	// MasterExclude is the master's own exclude patterns (run --exclude).
	MasterExclude []string
	// Watch runs the master in watch mode (run --watch) with this
	// configuration; nil: off.
	Watch *master.WatchConfig
}

// Lab is a running deployment.
type Lab struct {
	cfg    Config
	secret []byte
	Mini   *miniredis.Miniredis // nil when RedisURL was given
	Redis  *redis.Client
	Coord  *coord.Client

	Master  *Host
	Minions []*Host
}

// Host is one master or minion of a lab.
type Host struct {
	ID       string
	Root     string // this host's --root
	StateDir string
	Addr     string // its peer server, once started
	Minion   *minion.Minion
	// Skew offsets this host's clock from the machine's (set before
	// StartMinion): the protocol must not care.
	Skew time.Duration
	// Zone is this host's --zone (set before StartMinion or StartMaster).
	Zone string
	// PreZones makes a minion act, towards Redis, as one of protocol 3
	// built before zones (set before StartMinion; Zone is then ignored):
	// it registers no zone, claims from the global indexes only and
	// returns the slots it held to those only, as its scripts knew no
	// zone keys.
	PreZones bool
	// WrapMaster, when set on the master (before StartMaster), wraps
	// the coordinator of each of its tasks: a test puts faults between
	// the master and Redis.
	WrapMaster func(master.Coordinator) master.Coordinator
	// Groups are this minion's --group names (set before StartMinion).
	Groups []string
	// BWLimit caps this host's upload and download, bytes/s, in place of
	// the lab's (set before starting it; 0: the lab's).
	BWLimit int64
	// UploadLimit caps this host's upload alone, bytes/s, in place of
	// BWLimit (set before starting it; 0: as BWLimit says): a slow uplink
	// beside a fast downlink.
	UploadLimit int64
	// Sources is this minion's --sources (set before StartMinion; 0: the
	// default).
	Sources int
	// Metrics are a minion's metrics (set by StartMinion).
	Metrics *metrics.Metrics
	// Hooks are this minion's hooks (set before StartMinion); nil: none.
	Hooks minion.Hooks
	// Served counts the body bytes its peer server sent: what crossed
	// the network, compressed or not.
	Served atomic.Int64
	// CompressedRaw and CompressedSent count the chunks its peer server
	// sent compressed: their bytes, and the bytes of their zstd form.
	CompressedRaw, CompressedSent atomic.Int64

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

// Start brings up Redis, the master and the minions. Stop ends them.
func Start(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Poll <= 0 {
		cfg.Poll = 100 * time.Millisecond
	}
	if cfg.Uploads <= 0 {
		cfg.Uploads = 1
	}
	if cfg.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.WarnLevel)
		cfg.Log = l
	}
	// A printable secret (hex), so a test can write it to a --secret-file,
	// which holds one secret a line.
	raw := make([]byte, 32)
	rand.Read(raw)
	l := &Lab{cfg: cfg, secret: []byte(hex.EncodeToString(raw))}
	url := cfg.RedisURL
	if url == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("start embedded redis: %w", err)
		}
		mr.ClockTTL(true) // leases expire by the clock, as in Redis
		l.Mini = mr
		url = "redis://" + mr.Addr()
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	l.Redis = redis.NewClient(opts)
	l.Coord = l.newCoord()
	l.Master = l.newHost("master")
	l.Master.Zone = cfg.MasterZone
	if err := l.StartMaster(ctx); err != nil {
		l.Stop()
		return nil, err
	}
	for i := range cfg.Minions {
		h := l.newHost(fmt.Sprintf("minion-%02d", i+1))
		l.Minions = append(l.Minions, h)
		if err := l.StartMinion(ctx, h); err != nil {
			l.Stop()
			return nil, err
		}
	}
	return l, nil
}

// Config returns the lab's configuration, defaults filled in.
func (l *Lab) Config() Config { return l.cfg }

func (l *Lab) newCoord() *coord.Client { return l.hostCoord(&Host{}) }

// hostCoord is the protocol client of host h: its clock is off by h.Skew,
// its claims prefer h.Zone (unless ZoneBlind).
func (l *Lab) hostCoord(h *Host) *coord.Client {
	skew, zone := h.Skew, h.Zone
	if l.cfg.ZoneBlind {
		zone = ""
	}
	return coord.New(l.Redis, coord.Config{
		Prefix: l.cfg.Prefix, DB: l.Redis.Options().DB, LeaseTTL: 3 * time.Second, HostGrace: 5 * time.Second,
		DeadBackoff: 500 * time.Millisecond, DeadBackoffMax: 5 * time.Second,
		Now:  func() time.Time { return time.Now().Add(skew) },
		Zone: zone,
	})
}

func (l *Lab) newHost(id string) *Host {
	base := filepath.Join(l.cfg.Dir, id)
	return &Host{ID: id, Root: filepath.Join(base, "root"), StateDir: filepath.Join(base, "state")}
}

// AddMinion starts one more minion with an empty root.
func (l *Lab) AddMinion(ctx context.Context) (*Host, error) {
	h := l.NewHost()
	return h, l.StartMinion(ctx, h)
}

// NewHost adds a minion host with an empty root, not started: set its
// fields (Skew), then StartMinion.
func (l *Lab) NewHost() *Host {
	h := l.newHost(fmt.Sprintf("minion-%02d", len(l.Minions)+1))
	l.Minions = append(l.Minions, h)
	return h
}

// StartMaster starts (or restarts) the master.
func (l *Lab) StartMaster(ctx context.Context) error {
	h := l.Master
	co := l.hostCoord(h)
	return h.start(ctx, l, co, func(ctx context.Context, ln net.Listener, server *peer.Server) (func(context.Context) error, error) {
		// As fanout-master run does: the plain task and every named one.
		tasks := master.NewTasks(master.Config{
			ID: h.ID, Advertise: ln.Addr().String(), Root: h.Root, StateDir: h.StateDir,
			Uploads: l.cfg.Uploads, Poll: l.cfg.Poll, Log: l.cfg.Log.WithField("host", h.ID), Zone: h.Zone,
			Exclude: l.cfg.MasterExclude, Watch: l.cfg.Watch,
		}, co, func(name string) master.Coordinator {
			if h.WrapMaster != nil {
				return h.WrapMaster(co.ForTask(name))
			}
			return co.ForTask(name)
		}, server)
		return tasks.Run, nil
	})
}

// StartMinion starts (or restarts) a minion.
func (l *Lab) StartMinion(ctx context.Context, h *Host) error {
	zone := h.Zone
	if h.PreZones {
		zone = ""
	}
	co := l.hostCoord(&Host{Skew: h.Skew, Zone: zone})
	h.Metrics = metrics.New()
	forTask := func(name string) minion.Coordinator {
		if h.PreZones {
			return preZones{co.ForTask(name)}
		}
		return co.ForTask(name)
	}
	return h.start(ctx, l, co, func(ctx context.Context, ln net.Listener, server *peer.Server) (func(context.Context) error, error) {
		client := peer.NewClient(peer.ClientConfig{Secrets: [][]byte{l.secret}, DialTimeout: 2 * time.Second, StallTimeout: 2 * time.Second, Now: co.Now})
		// As fanout-minion run does: the plain task and every named one.
		tasks := minion.NewTasks(minion.Config{
			ID: h.ID, Advertise: ln.Addr().String(), Root: h.Root, StateDir: h.StateDir,
			Uploads: l.cfg.Uploads, Source: true, Poll: l.cfg.Poll, Heartbeat: time.Second,
			Pipeline: !l.cfg.WholeFile, ArrivalWait: 2 * time.Second,
			Log: l.cfg.Log.WithField("host", h.ID), Version: "lab",
			Download: bwlimit.New(h.bwLimit(l)), Metrics: h.Metrics,
			NoWatch: l.cfg.NoWatch, VerifyEvery: l.cfg.VerifyEvery, ScanEvery: 2 * time.Second,
			Zone: zone, Groups: h.Groups, Hooks: h.Hooks, Compress: l.cfg.Compress,
			Bypass: !l.cfg.NoBypass, Sources: h.Sources,
		}, co, forTask, server, client)
		m, err := tasks.Default()
		if err != nil {
			return nil, err
		}
		h.Minion = m
		return tasks.Run, nil
	})
}

// bwLimit is h's upload and download cap in l.
func (h *Host) bwLimit(l *Lab) int64 {
	if h.BWLimit > 0 {
		return h.BWLimit
	}
	return l.cfg.BWLimit
}

// uploadLimit is h's upload cap in l.
func (h *Host) uploadLimit(l *Lab) int64 {
	if h.UploadLimit > 0 {
		return h.UploadLimit
	}
	return h.bwLimit(l)
}

// preZones is the protocol client of a minion built before zones: its
// claims carry no source zone, so the slots it returns go to the global
// indexes only.
type preZones struct{ *coord.Client }

func (p preZones) Claim(ctx context.Context, host string, gen coord.Ref, o coord.ClaimOptions) (coord.Claim, error) {
	cl, err := p.Client.Claim(ctx, host, gen, o)
	cl.SourceZone = ""
	return cl, err
}

type runner func(ctx context.Context, ln net.Listener, server *peer.Server) (func(context.Context) error, error)

func (h *Host) start(ctx context.Context, l *Lab, co *coord.Client, build runner) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cancel != nil {
		return fmt.Errorf("%s is running already", h.ID)
	}
	for _, d := range []string{h.Root, h.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// As the commands do: one writer per state directory.
	lock, err := statedir.Acquire(h.StateDir, h.ID, false)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		lock.Release()
		return fmt.Errorf("listen for %s: %w", h.ID, err)
	}
	h.Addr = ln.Addr().String()
	server := peer.NewServer(peer.ServerConfig{Secrets: [][]byte{l.secret}, Log: l.cfg.Log.WithField("host", h.ID), Upload: bwlimit.New(h.uploadLimit(l)), Now: co.Now,
		Served: func(n int64) { h.Served.Add(n) },
		Compressed: func(raw, sent int64) {
			h.CompressedRaw.Add(raw)
			h.CompressedSent.Add(sent)
		}})
	run, err := build(ctx, ln, server)
	if err != nil {
		ln.Close()
		lock.Release()
		return fmt.Errorf("start %s: %w", h.ID, err)
	}
	hctx, cancel := context.WithCancel(ctx)
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		var serr, rerr error
		wg.Add(2)
		go func() { defer wg.Done(); serr = server.Serve(hctx, ln) }()
		go func() { defer wg.Done(); rerr = run(hctx) }()
		wg.Wait()
		lock.Release()
		h.done <- errors.Join(serr, rerr)
	}()
	return nil
}

// Stop ends the host and waits for it. Stopping a stopped host is a no-op.
func (h *Host) Stop() error {
	h.mu.Lock()
	cancel, done := h.cancel, h.done
	h.cancel = nil
	h.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	return <-done
}

// Set sets the task key the way an operator does: a plain SET.
func (l *Lab) Set(ctx context.Context, task string) error {
	return l.Redis.Set(ctx, l.Coord.Keys().Task(), task, 0).Err()
}

// WaitGeneration waits until a generation newer than after is done (or
// failed) and returns its final status.
func (l *Lab) WaitGeneration(ctx context.Context, after int64, progress func(coord.Status)) (coord.Status, error) {
	return l.WaitTask(ctx, coord.DefaultTask, after, progress)
}

// Publish sets named task name to path with opts, as fanout-master
// publish --name does: the task list, then the task key.
func (l *Lab) Publish(ctx context.Context, name, path string, opts coord.TaskOptions) error {
	co := l.Coord.ForTask(name)
	if err := co.AddTask(ctx); err != nil {
		return err
	}
	return co.SetTask(ctx, path, opts)
}

// WaitTask is WaitGeneration for task name.
func (l *Lab) WaitTask(ctx context.Context, name string, after int64, progress func(coord.Status)) (coord.Status, error) {
	co := l.Coord.ForTask(name)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := co.Status(ctx)
		if err == nil && st.Generation.ID > after {
			if progress != nil {
				progress(st)
			}
			if st.State == coord.StateDone && st.Generation.State == coord.StateDone {
				return st, nil
			}
			if st.State == coord.StateFailed {
				return st, fmt.Errorf("generation %d failed: %s", st.Generation.ID, st.Generation.Error)
			}
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("waiting for generation after %d of task %s: %w (last state %q, %d/%d finished)",
				after, name, ctx.Err(), st.State, len(st.Finished), len(st.Expected))
		case <-t.C:
		}
	}
}

// Received sums the bytes the minions received for generation gen.
func (l *Lab) Received(gen int64) int64 {
	var n int64
	for _, h := range l.Minions {
		if h.Minion != nil {
			r, _ := h.Minion.ProgressOf(gen)
			n += r
		}
	}
	return n
}

// Stop ends every host and the embedded Redis.
func (l *Lab) Stop() {
	var wg sync.WaitGroup
	for _, h := range append([]*Host{l.Master}, l.Minions...) {
		if h == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); h.Stop() }()
	}
	wg.Wait()
	if l.Redis != nil {
		l.Redis.Close()
	}
	if l.Mini != nil {
		l.Mini.Close()
	}
}

// HoldSlot claims slot of generation g for a placeholder host with a long
// lease, so no puller can take it (the master's re-offers skip a claimed
// slot): a test's way to steer pullers to other sources. release returns
// the slot.
func HoldSlot(ctx context.Context, rdb redis.UniversalClient, prefix string, g coord.Ref, slot string) (release func() error, err error) {
	co := coord.New(rdb, coord.Config{Prefix: prefix, LeaseTTL: 10 * time.Minute})
	const holder = "test-slot-holder"
	for range 500 {
		cl, err := co.Claim(ctx, holder, g, coord.ClaimOptions{})
		if err != nil {
			if errors.Is(err, coord.ErrNoSource) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return nil, err
		}
		if cl.Slot == slot {
			return func() error {
				return co.Fail(context.WithoutCancel(ctx), cl, coord.SourceOK, "released by the test", 0)
			}, nil
		}
		if err := co.Fail(ctx, cl, coord.SourceOK, "not the slot to hold", 0); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("could not claim %s", slot)
}

// Secret returns the peer secret every host of the lab shares: printable,
// one line.
func (l *Lab) Secret() []byte { return l.secret }
