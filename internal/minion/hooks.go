package minion

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/hook"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/statedir"
)

// Hooks runs the command configured on this host for a task (see package
// hook; *hook.Set provides it). Hooks are configured on the minion only:
// nothing read from Redis chooses a command.
type Hooks interface {
	// Lookup returns the hook of task name; ok false when there is none,
	// an error when one is configured but cannot run.
	Lookup(name string) (c hook.Command, ok bool, err error)
	// Run runs c, bounded by the hook timeout and by ctx.
	Run(ctx context.Context, c hook.Command, in hook.Input) hook.Result
}

// hookFile records, in the state directory, the last generation whose hook
// this host started and whether it ran to its end: a hook runs once per
// generation a host comes to hold, again after a restart that interrupted
// it, and never after a drift repair.
const hookFile = "hook.json"

// hookState is what hookFile holds.
type hookState struct {
	Task   string `json:"task"`
	Gen    int64  `json:"gen"`
	Digest string `json:"digest"`
	// Done: the hook ran to its end (whatever its exit status); false
	// while it runs, so a restart runs it again, with Changed.
	Done    bool     `json:"done"`
	Changed []string `json:"changed,omitempty"`
}

func (s hookState) names(task string, g coord.Generation) bool {
	return s.Task == task && s.Gen == g.ID && s.Digest == g.Digest
}

func loadHookState(dir string) (hookState, error) {
	var s hookState
	b, err := os.ReadFile(filepath.Join(dir, hookFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read hook state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return hookState{}, fmt.Errorf("decode hook state %s: %w (delete it: the hook of the held generation then runs again)", filepath.Join(dir, hookFile), err)
	}
	return s, nil
}

func saveHookState(dir string, s hookState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode hook state: %w", err)
	}
	if err := statedir.WriteFile(filepath.Join(dir, hookFile), b, manifest.TempPrefix); err != nil {
		return fmt.Errorf("save hook state: %w", err)
	}
	return nil
}

// pendingHook is a hook run decided before a finish, run after it.
type pendingHook struct {
	cmd      hook.Command
	lookup   error // the hook is configured but cannot run
	in       hook.Input
	redisErr error // HookStarted failed: report the end anyway
}

// prepareHook decides, before this host records its finish of g (which it
// holds verified on disk), whether the hook of g's task must run: one is
// configured and has not run to its end for g on this host. It then
// records the run as pending in the state directory (a restart runs it
// again) and as running in Redis before the finish, so the master never
// calls g done in between. changed lists the paths this host's pull of g
// changed (nil when it pulled nothing); the hook is told those and the
// paths of an earlier run that never ended.
func (m *Minion) prepareHook(ctx context.Context, g coord.Generation, changed []string) *pendingHook {
	if m.cfg.Hooks == nil {
		return nil
	}
	task := m.cfg.Task
	log := m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "task": task})
	cmd, ok, lerr := m.cfg.Hooks.Lookup(task)
	if !ok {
		return nil
	}
	prev, err := loadHookState(m.cfg.StateDir)
	if err != nil {
		log.WithError(err).Warn("hook state unreadable; the hook runs")
	}
	if prev.names(task, g) && prev.Done {
		return nil // ran for g already: a restart, a republish seen twice, a repair
	}
	if prev.Task == task && !prev.Done {
		// A run that never ended (interrupted, or its generation was
		// superseded first): its paths changed too since the hook last
		// ran to its end.
		changed = mergePaths(prev.Changed, changed)
	}
	if err := saveHookState(m.cfg.StateDir, hookState{Task: task, Gen: g.ID, Digest: g.Digest, Changed: changed}); err != nil {
		log.WithError(err).Warn("cannot record the pending hook; a restart now would not run it again")
	}
	in := hook.Input{
		Task: task, Host: m.cfg.ID, Generation: g.ID, Digest: g.Digest,
		Path: taskRoot(m.cfg.Root, g.LocalPath()), TaskPath: g.Path, Changed: changed,
	}
	m.mu.Lock()
	if h := m.held; h != nil && h.Release != "" && h.Digest == g.Digest {
		in.Release = h.root(m.cfg.Root)
	}
	m.mu.Unlock()
	p := &pendingHook{cmd: cmd, lookup: lerr, in: in}
	rec := coord.HookRecord{Gen: g.ID, Digest: g.Digest, Task: task, Changed: len(changed), Started: time.Now().UTC()}
	if err := m.coord.HookStarted(ctx, m.cfg.ID, rec); err != nil {
		p.redisErr = err
		if !errors.Is(err, coord.ErrStale) {
			log.WithError(err).Warn("could not record the hook as running")
		}
	}
	return p
}

// runHook runs p, once the finish of g is recorded, and records how it
// ended: in Redis (status, events, the completion record) and in the
// state directory. A hook that fails changes nothing about the tree: the
// host holds g and stays finished. One interrupted by the minion stopping
// is not recorded as done, so it runs again at the next start.
func (m *Minion) runHook(ctx context.Context, g coord.Generation, p *pendingHook) {
	if p == nil {
		return
	}
	log := m.cfg.Log.WithFields(logrus.Fields{"gen": g.ID, "task": p.in.Task})
	var res hook.Result
	if p.lookup != nil {
		res = hook.Result{Exit: -1, Error: p.lookup.Error(), Started: time.Now()}
	} else {
		log.WithFields(logrus.Fields{"hook": p.cmd.String(), "changed": len(p.in.Changed)}).Info("running the hook")
		res = m.cfg.Hooks.Run(ctx, p.cmd, p.in)
	}
	rec := coord.HookRecord{
		Gen: g.ID, Digest: g.Digest, Task: p.in.Task, State: coord.HookFailed, Exit: res.Exit, TimedOut: res.TimedOut,
		Error: res.Error, Output: res.Output, Changed: len(p.in.Changed), Started: res.Started.UTC(), Duration: res.Duration,
	}
	if res.OK {
		rec.State = coord.HookOK
	}
	fields := logrus.Fields{"exit": res.Exit, "elapsed": res.Duration.Round(time.Millisecond).String()}
	if res.OK {
		log.WithFields(fields).Info("hook succeeded")
	} else {
		log.WithFields(fields).WithField("output", res.Output).Warn("hook failed: " + res.Error + "; the host still holds the generation")
	}
	interrupted := ctx.Err() != nil
	if !interrupted {
		if err := saveHookState(m.cfg.StateDir, hookState{Task: p.in.Task, Gen: g.ID, Digest: g.Digest, Done: true}); err != nil {
			log.WithError(err).Warn("could not record that the hook ran; a restart will run it again")
		}
	}
	// Recorded even when ctx ended (shutdown), so status does not show the
	// hook running forever.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := m.coord.HookDone(rctx, m.cfg.ID, rec); err != nil && !errors.Is(err, coord.ErrStale) {
		log.WithError(err).Warn("could not record the hook's result")
	}
}

// changedPaths lists the paths a plan changes, each once, sorted.
func changedPaths(plan *manifest.Plan) []string {
	seen := make(map[string]bool, len(plan.Actions))
	out := make([]string, 0, len(plan.Actions))
	for _, a := range plan.Actions {
		if !seen[a.Entry.Path] {
			seen[a.Entry.Path] = true
			out = append(out, a.Entry.Path)
		}
	}
	sort.Strings(out)
	return out
}

// mergePaths is the sorted union of a and b.
func mergePaths(a, b []string) []string {
	seen := make(map[string]bool, len(a)+len(b))
	out := make([]string, 0, len(a)+len(b))
	for _, p := range append(append([]string(nil), a...), b...) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}
