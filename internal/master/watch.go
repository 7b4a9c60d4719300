package master

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

// WatchConfig configures watch mode (fanout-master run --watch): the master
// watches the tree of the current task with inotify and publishes a new
// generation when it changes. Zero fields take the defaults named.
type WatchConfig struct {
	// Delay is how long the tree must stay quiet after an event before
	// the changes are published (lsyncd's delay); default 1s.
	Delay time.Duration
	// MaxDelay bounds how long a burst of events that never pauses for
	// Delay holds a publish back; default 10s.
	MaxDelay time.Duration
	// FullEvery: the whole tree is walked again this often even when no
	// event was seen, and published when its digest differs (a missed
	// event cannot leave hosts stale for longer); default 1h.
	FullEvery time.Duration
	// ScanEvery is how often the part of the tree inotify cannot watch
	// (the watch limit) is walked again instead; default 10s.
	ScanEvery time.Duration
	// MaxWatches caps the directories watched (0: as many as the kernel's
	// fs.inotify.max_user_watches allows); past it, as past the kernel's
	// limit, directories are scanned every ScanEvery instead.
	MaxWatches int
}

func (c *WatchConfig) setDefaults() {
	if c.Delay <= 0 {
		c.Delay = time.Second
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = 10 * time.Second
	}
	c.MaxDelay = max(c.MaxDelay, c.Delay)
	if c.FullEvery <= 0 {
		c.FullEvery = time.Hour
	}
	if c.ScanEvery <= 0 {
		c.ScanEvery = 10 * time.Second
	}
}

// errWatchCap is the error of a watch refused by WatchConfig.MaxWatches:
// it is handled as the kernel's ENOSPC is.
var errWatchCap = fmt.Errorf("--max-watches reached: %w", syscall.ENOSPC)

// treeWatcher watches one task tree for the master. Events are gathered as
// changed paths (relative to the root, as in a manifest) until the burst
// settles (Delay after the last event, MaxDelay after the first), then
// ready fires and the master takes them (take) and publishes.
type treeWatcher struct {
	cfg   WatchConfig
	log   logrus.FieldLogger
	w     *fsnotify.Watcher
	add   func(string) error
	ready chan struct{} // a settled batch of changes (or a scan) is waiting

	mu        sync.Mutex
	root      string          // OS path of the task root; "" while not armed
	file      string          // base name of a file task's root (its parent is watched)
	ex        *exclude.List   // what is left out of the tree
	watched   map[string]bool // OS directories watched
	unwatched map[string]bool // tree paths of directories inotify does not watch
	warned    bool
	rootGone  bool            // the root itself was removed or renamed: arm again
	changed   map[string]bool // tree paths changed since the last take
	full      bool            // walk the whole tree at the next take
	first     time.Time       // first event of the pending burst
	last      time.Time       // last event of the pending burst
	kick      chan struct{}   // tells run the burst timer must be looked at

	// Counters for status and metrics (under mu).
	events int64
}

func newTreeWatcher(cfg WatchConfig, log logrus.FieldLogger) (*treeWatcher, error) {
	cfg.setDefaults()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch mode: cannot start inotify: %w", err)
	}
	t := &treeWatcher{
		cfg: cfg, log: log, w: w, ready: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		watched: map[string]bool{}, unwatched: map[string]bool{}, changed: map[string]bool{},
	}
	t.add = func(dir string) error {
		if cfg.MaxWatches > 0 && len(t.watched) >= cfg.MaxWatches {
			return errWatchCap
		}
		return w.Add(dir)
	}
	return t, nil
}

// arm watches the tree at root (a directory or a file), whose manifest is
// man, replacing what was watched before; nothing excluded by ex is
// watched. A full walk follows at once (see take): changes made between
// the build of man and the watches being in place are not missed.
func (t *treeWatcher) arm(root string, man *manifest.Manifest, ex *exclude.List) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for d := range t.watched {
		t.w.Remove(d)
	}
	t.watched, t.unwatched, t.changed = map[string]bool{}, map[string]bool{}, map[string]bool{}
	t.root, t.file, t.ex, t.warned, t.rootGone = root, "", ex, false, false
	if len(man.Entries) > 0 && man.Entries[0].Type == manifest.File {
		t.file = filepath.Base(root)
		t.addLocked(filepath.Dir(root), ".")
	} else {
		for _, e := range man.Entries {
			if e.Type == manifest.Dir {
				t.addLocked(osJoin(root, e.Path), e.Path)
			}
		}
	}
	t.markLocked(".", time.Now())
}

// addLocked watches the directory at osDir (tree path rel). A watch the
// kernel refuses for its limit leaves the directory to the periodic scan,
// with one warning naming the sysctl to raise.
func (t *treeWatcher) addLocked(osDir, rel string) {
	if t.watched[osDir] {
		return
	}
	err := t.add(osDir)
	if err == nil {
		t.watched[osDir] = true
		delete(t.unwatched, rel)
		return
	}
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return // gone already: its parent's event brings it up
	}
	t.unwatched[rel] = true
	if !t.warned {
		t.warned = true
		msg := "cannot watch every directory of the task tree: the inotify watch limit is reached; raise it with " +
			"sysctl fs.inotify.max_user_watches=N (and fs.inotify.max_user_instances). Meanwhile the unwatched part is walked again every --scan-every, so no change is missed, only seen later"
		if errors.Is(err, errWatchCap) {
			msg = "cannot watch every directory of the task tree: --max-watches is reached; the unwatched part is walked again every --scan-every, so no change is missed, only seen later (raise --max-watches, and sysctl fs.inotify.max_user_watches if need be)"
		} else if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EMFILE) {
			msg = "cannot watch a directory of the task tree; it is walked again every --scan-every instead"
		}
		t.log.WithError(err).WithFields(logrus.Fields{"dir": osDir, "watched": len(t.watched)}).Warn(msg)
	}
}

// addTreeLocked watches the directory at osDir and every directory under
// it that ex does not exclude (a directory created or moved in).
func (t *treeWatcher) addTreeLocked(osDir, rel string) {
	t.addLocked(osDir, rel)
	des, err := os.ReadDir(osDir)
	if err != nil {
		return
	}
	for _, de := range des {
		if !de.IsDir() || manifest.IsTemp(de.Name()) {
			continue
		}
		p := joinRel(rel, de.Name())
		if t.ex.Match(p, true) {
			continue
		}
		t.addTreeLocked(filepath.Join(osDir, de.Name()), p)
	}
}

// removeTreeLocked stops watching osDir and every directory under it (moved
// out of the tree: inotify would go on reporting it under its old name).
func (t *treeWatcher) removeTreeLocked(osDir string) {
	prefix := osDir + string(filepath.Separator)
	for d := range t.watched {
		if d == osDir || strings.HasPrefix(d, prefix) {
			t.w.Remove(d)
			delete(t.watched, d)
		}
	}
}

// run handles events and the burst timer until ctx ends, then closes the
// watcher.
func (t *treeWatcher) run(ctx context.Context) {
	defer t.w.Close()
	scan := time.NewTicker(t.cfg.ScanEvery)
	defer scan.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-t.w.Events:
			if !ok {
				return
			}
			t.event(ev)
		case err, ok := <-t.w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				t.log.Warn("inotify queue overflowed: events were lost; walking the whole task tree again")
				t.mu.Lock()
				t.full = true
				t.markLocked(".", time.Now())
				t.mu.Unlock()
			} else {
				t.log.WithError(err).Warn("watching the task tree")
			}
		case <-scan.C:
			t.mu.Lock()
			for p := range t.unwatched {
				t.changed[p] = true
			}
			n := len(t.unwatched)
			t.mu.Unlock()
			if n > 0 {
				t.signal()
			}
			continue
		case <-t.kick:
		case <-timer.C:
			t.signal()
			continue
		}
		t.mu.Lock()
		pending := !t.first.IsZero()
		due := t.last.Add(t.cfg.Delay)
		if limit := t.first.Add(t.cfg.MaxDelay); limit.Before(due) {
			due = limit
		}
		t.mu.Unlock()
		if pending {
			timer.Reset(max(time.Until(due), 0))
		}
	}
}

// signal tells the master a batch is waiting.
func (t *treeWatcher) signal() {
	select {
	case t.ready <- struct{}{}:
	default:
	}
}

// event records one inotify event as changed tree paths.
func (t *treeWatcher) event(ev fsnotify.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.root == "" {
		return
	}
	now := time.Now()
	if t.file != "" {
		if filepath.Base(ev.Name) == t.file && filepath.Dir(ev.Name) == filepath.Dir(t.root) {
			t.events++
			t.markLocked(".", now)
		}
		return
	}
	rel, ok := relPath(t.root, ev.Name)
	if !ok || manifest.IsTemp(filepath.Base(ev.Name)) {
		return
	}
	if rel == "." {
		if ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0 {
			// The watches went with it: a tree at the same path later is
			// another tree, to be armed again when it is published.
			t.events++
			t.full, t.rootGone = true, true
			t.markLocked(".", now)
		}
		return
	}
	if ev.Op&^(fsnotify.Write|fsnotify.Chmod) == 0 && t.ex.Excluded(rel, false) && t.ex.Excluded(rel, true) {
		return // content or mode of an excluded entry: nothing the tree shows
	}
	t.events++
	if ev.Op&fsnotify.Create != 0 {
		if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() && !t.ex.Excluded(rel, true) {
			t.addTreeLocked(ev.Name, rel) // moved in or made: watch it, then walk it
		}
	}
	if ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0 {
		t.removeTreeLocked(ev.Name)
	}
	t.markLocked(rel, now)
}

// markLocked records rel as changed at now and wakes run to (re)arm the
// burst timer.
func (t *treeWatcher) markLocked(rel string, now time.Time) {
	t.changed[rel] = true
	if t.first.IsZero() {
		t.first = now
	}
	t.last = now
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// take returns the paths changed since the last take (sorted), and whether
// the whole tree must be walked again, and starts a new burst.
func (t *treeWatcher) take() (changed []string, full bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p := range t.changed {
		if p == "." {
			full = true
		}
		changed = append(changed, p)
	}
	sort.Strings(changed)
	full = full || t.full
	t.changed, t.full = map[string]bool{}, false
	t.first, t.last = time.Time{}, time.Time{}
	return changed, full
}

// gone reports whether the armed root was removed or renamed since arm.
func (t *treeWatcher) gone() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rootGone
}

// counts returns the events seen and the directories watched and not.
func (t *treeWatcher) counts() (events int64, watched, unwatched int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.events, len(t.watched), len(t.unwatched)
}

// relPath returns osPath as a tree path relative to root.
func relPath(root, osPath string) (string, bool) {
	if osPath == root {
		return ".", true
	}
	rest, ok := strings.CutPrefix(osPath, root+string(filepath.Separator))
	if !ok || rest == "" {
		return "", false
	}
	return filepath.ToSlash(rest), true
}

func joinRel(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}

// osJoin maps tree path p to its OS path under root.
func osJoin(root, p string) string {
	if p == "." {
		return root
	}
	return filepath.Join(root, filepath.FromSlash(p))
}

// watchState is the master's side of watch mode.
type watchState struct {
	t *treeWatcher
	// built is the manifest of the generation served (as encoded, in
	// format), the base of the next incremental update.
	built  *manifest.Manifest
	format int
	root   string // OS path t is armed on
	// Counters shown by status.
	generations, fulls int64
	// published is the Redis time of the last generation published;
	// lastPublish that of the last one watch mode published.
	published, lastPublish time.Time
	// events already added to the events metric.
	eventsCounted int64
	// behindSince is when the fleet last stopped holding the newest
	// generation (the publish time of the first generation some host did
	// not get to); zero while every host holds the newest.
	behindSince time.Time
}

// watchPublished is told of each generation this master serves (a new one
// published, or one resumed): watch mode arms on its tree and keeps its
// manifest for the next incremental update.
func (m *Master) watchPublished(fresh bool, g coord.Generation, snap *peer.Snapshot) {
	w := m.watch
	if w == nil {
		return
	}
	w.built, w.format = snap.Manifest, snap.Manifest.Format()
	if fresh {
		w.published = g.Published
		if w.behindSince.IsZero() {
			w.behindSince = g.Published
		}
	}
	if w.root != snap.Root || w.t.gone() {
		w.root = snap.Root
		ex, err := m.excludes(m.active.Exclude)
		if err != nil {
			ex = nil // the build refused it already
		}
		w.t.arm(snap.Root, snap.Manifest, ex)
		_, watched, unwatched := w.t.counts()
		m.cfg.Log.WithFields(logrus.Fields{"root": snap.Root, "watched": watched, "unwatched": unwatched}).Info("watching the task tree for changes")
	}
}

// watchPublish publishes what changed in the watched tree since the last
// generation: the changed subtrees are walked again (the rest of the
// manifest and the hash cache are reused), and a new generation is
// published when the digest differs.
func (m *Master) watchPublish(ctx context.Context, forceFull bool) error {
	w := m.watch
	changed, full := w.t.take()
	a := m.active
	if a == nil || w.built == nil {
		return nil // nothing served (no task, or a failed one)
	}
	if len(changed) == 0 && (!forceFull || a.Rollback > 0) {
		// A rollback serves a release the hosts kept, not this tree: only
		// a change of the tree publishes it again, not a periodic walk.
		return nil
	}
	_, osPath, err := ResolveTask(m.cfg.Root, a.Path)
	if err != nil {
		// The task root vanished or turned into something else: the
		// publish path records why, as a failed generation.
		w.root = ""
		return m.publish(ctx, a.Path, a.opts())
	}
	ex, err := m.excludes(a.Exclude)
	if err != nil {
		return m.publish(ctx, a.Path, a.opts())
	}
	format := m.format(ctx)
	if !ex.Empty() {
		format = manifest.Format4
	}
	opts := m.buildOptions(format, ex)
	start := time.Now()
	var man *manifest.Manifest
	fell := true
	if full || forceFull || format != w.format || osPath != w.root {
		man, err = manifest.Build(ctx, osPath, opts)
	} else {
		man, fell, err = manifest.Update(ctx, osPath, w.built, changed, opts)
	}
	if err != nil {
		return fmt.Errorf("watch: walk the changed tree: %w", err)
	}
	defer m.saveCache() // once published
	snap, err := encodeSnapshot(man, osPath, format)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	log := m.cfg.Log.WithFields(logrus.Fields{"changed": len(changed), "full": fell, "walk": time.Since(start).Round(time.Millisecond).String()})
	if forceFull {
		w.fulls++
		m.cfg.Metrics.WatchFullResyncs.Inc()
	}
	if snap.Digest == a.Digest {
		log.Debug("watched tree: nothing changed that the manifest shows")
		return nil
	}
	if forceFull && !full && len(changed) == 0 {
		log.Warn("the periodic full walk found changes inotify did not report; publishing them")
	}
	if err := m.offer(ctx, a.Path, a.opts(), snap); err != nil {
		return err
	}
	w.generations++
	w.lastPublish = w.published
	m.cfg.Metrics.WatchGenerations.Inc()
	m.cfg.Metrics.WatchLastPublish.Set(float64(w.published.UnixMilli()) / 1e3)
	return nil
}

// watchTick records, once a tick, whether every alive host holds the
// newest generation (for the lag of the slowest host) and writes the
// watch state to Redis for status.
func (m *Master) watchTick(ctx context.Context, g coord.Generation) error {
	w := m.watch
	if w == nil {
		return nil
	}
	if a := m.active; a != nil && a.ref() == g.Ref() && g.State == coord.StateDone {
		w.behindSince = time.Time{}
	}
	events, watched, unwatched := w.t.counts()
	var lag time.Duration
	if !w.behindSince.IsZero() {
		lag = max(m.now().Sub(w.behindSince), 0)
	}
	m.cfg.Metrics.WatchEvents.Add(float64(events - w.eventsCounted))
	w.eventsCounted = events
	m.cfg.Metrics.WatchLag.Set(lag.Seconds())
	m.cfg.Metrics.WatchUnwatched.Set(float64(unwatched))
	st := coord.WatchState{
		Root: w.root, Events: events, Generations: w.generations, FullResyncs: w.fulls,
		Watched: watched, Unwatched: unwatched, BehindSince: w.behindSince,
		Delay: w.t.cfg.Delay, MaxDelay: w.t.cfg.MaxDelay, FullEvery: w.t.cfg.FullEvery, LastPublish: w.lastPublish,
	}
	if err := m.coord.SetWatch(ctx, st); err != nil {
		return fmt.Errorf("record watch state: %w", err)
	}
	return nil
}

// servedChanged handles a file the peer server found changed on disk
// while serving the generation (its chunks no longer match): the
// generation cannot be served whole any more, so the tree is published as
// it is now. In watch mode the file is one more changed path (inotify has
// most likely reported it already); otherwise the whole tree is walked.
func (m *Master) servedChanged(ctx context.Context, p string) error {
	a := m.active
	if a == nil {
		return nil
	}
	m.cfg.Log.WithFields(logrus.Fields{"path": p, "gen": a.Gen}).
		Warn("a file changed on disk under the generation being served; its changed bytes were not sent; publishing the tree as it is now")
	if w := m.watch; w != nil {
		w.t.mu.Lock()
		w.t.markLocked(p, time.Now())
		w.t.mu.Unlock()
		return nil
	}
	_, osPath, err := ResolveTask(m.cfg.Root, a.Path)
	if err != nil {
		return m.publish(ctx, a.Path, a.opts())
	}
	snap, err := m.build(ctx, osPath, a.Exclude)
	if err != nil {
		return m.publish(ctx, a.Path, a.opts())
	}
	defer m.saveCache()
	if snap.Digest == a.Digest {
		return nil // changed back meanwhile
	}
	return m.offer(ctx, a.Path, a.opts(), snap)
}
