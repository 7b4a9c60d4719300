package master

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/statedir"
)

// TaskList is the part of the protocol that lists the named tasks; the
// task list's channel (Keys.TasksChannel) says when it changed.
type TaskList interface {
	TaskNames(ctx context.Context) ([]string, error)
	Subscribe(ctx context.Context, channels ...string) (*coord.Notifications, error)
	Keys() coord.Keys
}

// Tasks runs one Master for every task: the plain task always (with
// Config.Watch, and the registry upkeep), and each named task of the task
// list, started when it is listed and stopped when it is retired. The
// plain task keeps the state directory itself; a named task NAME keeps
// STATE/tasks/NAME. One peer server serves them all, a named task at
// /v1/t/NAME/.
type Tasks struct {
	cfg     Config
	list    TaskList
	forTask func(name string) Coordinator
	server  *peer.Server

	// pending maps a task to the place on the hosts its master is
	// building a generation for, between the overlap check and the
	// publish (guarded by mu): two tasks checked at once see each other.
	mu      sync.Mutex
	pending map[string]string
}

// OverlapError says a task's place on the hosts overlaps another task's.
type OverlapError struct {
	Path, Other, OtherPath string
}

func (e *OverlapError) Error() string {
	return fmt.Sprintf("path %s on the hosts overlaps task %s, which holds %s: two tasks would write each other's files; publish to another place (--dest), or retire task %s first", e.Path, e.Other, e.OtherPath, e.Other)
}

// NewTasks returns the runner of every task: forTask gives the protocol
// of one task.
func NewTasks(cfg Config, list TaskList, forTask func(name string) Coordinator, server *peer.Server) *Tasks {
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	return &Tasks{cfg: cfg, list: list, forTask: forTask, server: server, pending: make(map[string]string)}
}

// New builds the master of task name.
func (t *Tasks) New(name string) (*Master, error) {
	cfg := t.cfg
	cfg.Task = name
	cfg.StateDir = statedir.ForTask(t.cfg.StateDir, name)
	cfg.Overlap = func(ctx context.Context, path string) (func(), error) { return t.overlap(ctx, name, path) }
	if name == coord.DefaultTask {
		cfg.ForgetTasks = t.forgetNamed
	} else {
		cfg.Watch = nil     // live mirroring is the plain task's
		cfg.ForgetAfter = 0 // the plain task's master forgets for all
		cfg.Log = cfg.Log.WithField("task", name)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("task %s: state directory: %w", name, err)
	}
	return New(cfg, t.forTask(name), t.server.Task(name))
}

// overlap refuses a path for task name on the hosts that is, or is under
// or above, another task's place: that of its current generation (even a
// failed one: hosts still hold the tree before it), of its last completed
// one, or of the generation its master is building now. The two tasks
// would write (and delete) each other's files, and each would repair the
// other's writes as drift. Unless refused, path is reserved for name
// until done is called.
func (t *Tasks) overlap(ctx context.Context, name, path string) (done func(), err error) {
	names, err := t.list.TaskNames(ctx)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	pending := make(map[string]string, len(t.pending))
	for k, v := range t.pending {
		pending[k] = v
	}
	t.mu.Unlock()
	for _, other := range append([]string{coord.DefaultTask}, names...) {
		if other == name {
			continue
		}
		co := t.forTask(other)
		g, err := co.Current(ctx)
		if err != nil {
			return nil, err
		}
		places := []string{g.LocalPath(), pending[other]}
		if hist, err := co.History(ctx, 1); err != nil {
			return nil, err
		} else if len(hist) > 0 {
			places = append(places, hist[0].LocalPath())
		}
		for _, p := range places {
			if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p {
				continue // none, or a rejected task's value as written
			}
			if within(path, p) || within(p, path) {
				return nil, &OverlapError{Path: path, Other: other, OtherPath: p}
			}
		}
	}
	t.mu.Lock()
	t.pending[name] = path
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.pending, name)
		t.mu.Unlock()
	}, nil
}

// forgetNamed forgets host from every named task (its heartbeats, queues
// and slots there), before the plain task's master forgets it from the
// registry, whose record of the host's zone and groups those need.
func (t *Tasks) forgetNamed(ctx context.Context, host string) error {
	names, err := t.list.TaskNames(ctx)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := t.forTask(name).Forget(ctx, host); err != nil {
			return fmt.Errorf("forget %s from task %s: %w", host, name, err)
		}
	}
	return nil
}

// within reports whether path p is dir or under it (both clean and
// absolute).
func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// runner is one task's master running under Run.
type runner struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Run runs the master of every listed task until ctx ends, reading the
// task list every Poll and when told it changed.
func (t *Tasks) Run(ctx context.Context) error {
	// Only the task list's channel: each task's master subscribes to
	// what it acts on itself.
	var listChanged <-chan struct{}
	if n, err := t.list.Subscribe(ctx, t.list.Keys().TasksChannel()); err != nil {
		t.log().WithError(err).Warn("cannot subscribe to the task list; reading it every --poll")
	} else {
		defer n.Close()
		listChanged = n.C
	}
	runners := make(map[string]*runner)
	stop := func(name string, r *runner) {
		r.cancel()
		<-r.done
		delete(runners, name)
		if name != coord.DefaultTask {
			t.server.Drop(name)
		}
	}
	defer func() {
		for name, r := range runners {
			stop(name, r)
		}
	}()
	start := func(name string) error {
		m, err := t.New(name)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &runner{cancel: cancel, done: make(chan struct{})}
		runners[name] = r
		go func() {
			defer close(r.done)
			if err := m.Run(rctx); err != nil && rctx.Err() == nil {
				t.log().WithError(err).WithField("task", name).Warn("task master ended")
			}
		}()
		if name != coord.DefaultTask {
			t.log().WithField("task", name).Info("publishing named task")
		}
		return nil
	}
	// The plain task's master runs whatever the task list says.
	if err := start(coord.DefaultTask); err != nil {
		return err
	}
	reconcile := func() {
		names, err := t.list.TaskNames(ctx)
		if err != nil {
			if ctx.Err() == nil {
				t.log().WithError(err).Warn("cannot read the task list; running the tasks it named before")
			}
			return
		}
		if len(names) > coord.MaxTasks {
			t.log().WithField("tasks", len(names)).Warnf("more named tasks than the limit of %d; running the first %d by name", coord.MaxTasks, coord.MaxTasks)
			names = names[:coord.MaxTasks]
		}
		want := map[string]bool{coord.DefaultTask: true}
		for _, name := range names {
			want[name] = true
			if _, ok := runners[name]; !ok {
				if err := start(name); err != nil {
					t.log().WithError(err).WithField("task", name).Warn("cannot run the task; trying again at the next read of the task list")
				}
			}
		}
		for name, r := range runners {
			if !want[name] {
				stop(name, r)
				t.log().WithField("task", name).Info("task retired; stopped publishing and serving it")
			}
		}
	}
	reconcile()
	tick := time.NewTicker(t.cfg.Poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-listChanged:
			reconcile()
		case <-tick.C:
			reconcile()
		}
	}
}

func (t *Tasks) log() logrus.FieldLogger { return t.cfg.Log }
