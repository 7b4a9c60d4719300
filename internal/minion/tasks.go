package minion

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/statedir"
)

// TaskList is the part of the protocol that lists the named tasks.
type TaskList interface {
	TaskNames(ctx context.Context) ([]string, error)
	SubscribeTasks(ctx context.Context, host string) (*coord.TaskEvents, error)
}

// Tasks runs one Minion for every task a host holds: the plain task
// always, and each named task of the task list, started when it is listed
// and stopped when it is retired (what it holds stays on disk). The plain
// task keeps the state directory itself; a named task NAME keeps
// STATE/tasks/NAME. Every task's tree is served by one peer server, a
// named one at /v1/t/NAME/.
type Tasks struct {
	cfg     Config
	list    TaskList
	forTask func(name string) Coordinator
	server  *peer.Server
	client  *peer.Client

	// def is the plain task's minion once built (Default), woken by
	// defWake; subscribed says Run holds the one subscription that wakes
	// every task's minion, and listening names the tasks whose wake
	// channel it holds too (see coord.TaskEvents.Wake).
	def        *Minion
	defWake    chan struct{}
	subscribed atomic.Bool
	mu         sync.Mutex
	listening  map[string]bool
}

// NewTasks returns the runner of every task: forTask gives the protocol
// of one task.
func NewTasks(cfg Config, list TaskList, forTask func(name string) Coordinator, server *peer.Server, client *peer.Client) *Tasks {
	cfg.setDefaults()
	return &Tasks{cfg: cfg, list: list, forTask: forTask, server: server, client: client}
}

// Default builds the plain task's minion, which Run and Sync then run
// (once: later calls return the same): the caller learns of a bad state
// directory at once, and may watch the minion's progress.
func (t *Tasks) Default() (*Minion, error) {
	if t.def != nil {
		return t.def, nil
	}
	wake := make(chan struct{}, 1)
	m, err := t.New(coord.DefaultTask, wake)
	if err != nil {
		return nil, err
	}
	t.def, t.defWake = m, wake
	return m, nil
}

// New builds the minion of task name. wake, when not nil, stands in for
// its subscription to new generations while Run feeds it from one
// subscription for every task.
func (t *Tasks) New(name string, wake <-chan struct{}) (*Minion, error) {
	cfg := t.cfg
	cfg.Task = name
	cfg.StateDir = statedir.ForTask(t.cfg.StateDir, name)
	cfg.Log = logFor(t.cfg.Log, name)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("task %s: state directory: %w", name, err)
	}
	var co Coordinator = t.forTask(name)
	if wake != nil {
		co = notified{Coordinator: co, wake: wake, shared: &t.subscribed,
			wakeChannel: co.Keys().WakeChannel(cfg.ID), listening: func() bool { return t.isListening(name) }}
	}
	return New(cfg, co, t.server.Task(name), t.client.ForTask(name))
}

// notified is a task's Coordinator whose subscription is a share of one
// subscription for every task (see Tasks.Run), or its own when that one
// failed, or does not hold the task's wake channel (wakeChannel) that the
// minion asks for.
type notified struct {
	Coordinator
	wake        <-chan struct{}
	shared      *atomic.Bool
	wakeChannel string
	listening   func() bool
}

func (n notified) Subscribe(ctx context.Context, channels ...string) (*coord.Notifications, error) {
	if !n.shared.Load() || (slices.Contains(channels, n.wakeChannel) && !n.listening()) {
		return n.Coordinator.Subscribe(ctx, channels...)
	}
	return coord.SharedNotifications(n.wake, func() error { return nil }), nil
}

// isListening reports whether the shared subscription holds task name's
// wake channel.
func (t *Tasks) isListening(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.listening[name]
}

// setListening records whether the shared subscription holds task name's
// wake channel.
func (t *Tasks) setListening(name string, on bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.listening == nil {
		t.listening = map[string]bool{}
	}
	if on {
		t.listening[name] = true
	} else {
		delete(t.listening, name)
	}
}

// names lists the tasks to run: the plain task first, then the named
// ones, at most coord.MaxTasks of them.
func (t *Tasks) names(ctx context.Context) ([]string, error) {
	named, err := t.list.TaskNames(ctx)
	if err != nil {
		return nil, err
	}
	if len(named) > coord.MaxTasks {
		t.cfg.Log.WithField("tasks", len(named)).Warnf("more named tasks than the limit of %d; running the first %d by name", coord.MaxTasks, coord.MaxTasks)
		named = named[:coord.MaxTasks]
	}
	return append([]string{coord.DefaultTask}, named...), nil
}

// Run runs the minion of every task (Minion.Run) until ctx ends.
func (t *Tasks) Run(ctx context.Context) error {
	return t.each(ctx, (*Minion).Run)
}

// Serve runs every task's serve-only mode (Minion.Serve) until ctx ends.
func (t *Tasks) Serve(ctx context.Context) error {
	return t.each(ctx, (*Minion).Serve)
}

// runner is one task's minion running under Tasks.each.
type runner struct {
	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// each runs fn for the minion of every listed task, starting and stopping
// them as the task list changes, until ctx ends. A task whose minion
// cannot be built is logged and tried again at the next read of the list.
func (t *Tasks) each(ctx context.Context, fn func(*Minion, context.Context) error) error {
	var events <-chan string
	var listChanged <-chan struct{}
	ev, err := t.list.SubscribeTasks(ctx, t.cfg.ID)
	if err != nil {
		t.cfg.Log.WithError(err).Warn("cannot subscribe to the task list; reading it every minute, each task subscribing on its own")
	} else {
		defer ev.Close()
		events, listChanged = ev.C, ev.Changed
		t.subscribed.Store(true)
		defer t.subscribed.Store(false)
	}
	runners := make(map[string]*runner)
	stop := func(name string, r *runner) {
		r.cancel()
		<-r.done
		delete(runners, name)
		if ev != nil && t.isListening(name) {
			t.setListening(name, false)
			if err := ev.Unwake(ctx, name); err != nil && ctx.Err() == nil {
				t.cfg.Log.WithError(err).WithField("task", name).Debug("unsubscribe from the wake channel")
			}
		}
		if name != coord.DefaultTask {
			t.server.Drop(name)
		}
	}
	defer func() {
		for name, r := range runners {
			stop(name, r)
		}
	}()
	start := func(name string) {
		var m *Minion
		var wake chan struct{}
		var err error
		if name == coord.DefaultTask {
			m, err = t.Default()
			wake = t.defWake
		} else {
			wake = make(chan struct{}, 1)
			m, err = t.New(name, wake)
		}
		if err != nil {
			t.cfg.Log.WithError(err).WithField("task", name).Warn("cannot run the task; trying again at the next read of the task list")
			return
		}
		if ev != nil {
			// Slots handed to this host for the task come on its wake
			// channel; without it, the task's minion subscribes on its
			// own (see notified).
			if err := ev.Wake(ctx, name); err != nil {
				t.cfg.Log.WithError(err).WithField("task", name).Warn("cannot listen for slots handed to this host on the shared subscription; the task subscribes on its own")
			} else {
				t.setListening(name, true)
			}
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &runner{wake: wake, cancel: cancel, done: make(chan struct{})}
		runners[name] = r
		go func() {
			defer close(r.done)
			if err := fn(m, rctx); err != nil && rctx.Err() == nil {
				t.cfg.Log.WithError(err).WithField("task", name).Warn("task runner ended")
			}
		}()
		if name != coord.DefaultTask {
			t.cfg.Log.WithField("task", name).Info("running named task")
		}
	}
	reconcile := func() {
		names, err := t.names(ctx)
		if err != nil {
			if ctx.Err() == nil {
				t.cfg.Log.WithError(err).Warn("cannot read the task list; running the tasks it named before")
			}
			if _, ok := runners[coord.DefaultTask]; !ok {
				start(coord.DefaultTask)
			}
			return
		}
		want := make(map[string]bool, len(names))
		for _, name := range names {
			want[name] = true
			if _, ok := runners[name]; !ok {
				start(name)
			}
		}
		for name, r := range runners {
			if !want[name] {
				stop(name, r)
				t.cfg.Log.WithField("task", name).Info("task retired; stopped it (its tree stays on disk)")
			}
		}
	}
	reconcile()
	// The list is read again every idlePoll whatever the events: a lost
	// retire message must not leave a task served for ever.
	tick := time.NewTicker(jitter(max(t.cfg.Poll, idlePoll)))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-listChanged:
			reconcile()
		case <-tick.C:
			reconcile()
		case name := <-events:
			r, ok := runners[name]
			if !ok {
				// A generation of a task not run yet: read the list.
				reconcile()
				continue
			}
			select {
			case r.wake <- struct{}{}:
			default:
			}
		}
	}
}

// Sync runs a one-shot sync (Minion.Sync) of every listed task at once. It
// fails when one fails, or when no task had anything to sync.
func (t *Tasks) Sync(ctx context.Context) error {
	names, err := t.names(ctx)
	if err != nil {
		return err
	}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		var m *Minion
		var err error
		if name == coord.DefaultTask {
			m, err = t.Default()
		} else {
			m, err = t.New(name, nil)
		}
		if err != nil {
			errs[i] = err
			continue
		}
		wg.Go(func() { errs[i] = m.Sync(ctx) })
	}
	wg.Wait()
	var failed []error
	none := 0
	for i, err := range errs {
		switch {
		case errors.Is(err, errNoTask):
			none++
		case err != nil:
			failed = append(failed, fmt.Errorf("task %s: %w", names[i], err))
		}
	}
	if none == len(names) {
		return errNoTask
	}
	if len(failed) > 0 {
		return errors.Join(failed...)
	}
	return nil
}

// logFor is the log of task name's lines.
func logFor(log logrus.FieldLogger, name string) logrus.FieldLogger {
	if name == coord.DefaultTask {
		return log
	}
	return log.WithField("task", name)
}
