package minion

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/manifest"
)

// treeWatch watches the directories of the held tree with inotify, so drift
// (a file deleted, edited or chmod'ed by hand) is seen within a moment.
// Where the kernel does not allow a watch (the fs.inotify.max_user_watches
// limit, a file system without inotify), it says so once and the tree is
// scanned periodically instead: a change is never missed, only seen later.
type treeWatch struct {
	log logrus.FieldLogger
	w   *fsnotify.Watcher // nil: no inotify at all

	mu      sync.Mutex
	root    string             // OS path of the task root; "" while disarmed
	file    string             // base name of a file task's root (its parent is watched)
	watched map[string]bool    // OS directories watched now
	missing bool               // some directory could not be watched
	dirty   bool               // an event arrived since take
	warned  bool               // the watch-limit warning was logged
	wake    chan struct{}      // signalled on each relevant event
	gauge   func(n int)        // told how many directories are watched
	off     bool               // watching turned off by configuration
	add     func(string) error // adds a directory watch: the watcher's Add (tests replace it)
}

// newTreeWatch returns a watcher; with on false it watches nothing and
// counts as complete (the operator chose periodic verification only).
func newTreeWatch(log logrus.FieldLogger, on bool, gauge func(int)) *treeWatch {
	t := &treeWatch{log: log, watched: map[string]bool{}, wake: make(chan struct{}, 1), gauge: gauge, off: !on}
	if !on {
		return t
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.WithError(err).Warn("cannot watch the tree for changes (inotify); it is scanned for drift periodically instead")
		return t
	}
	t.w, t.add = w, w.Add
	return t
}

// arm watches every directory of man's tree at root (for a file task, the
// file's parent directory), replacing what was watched before. It reports
// whether every directory is watched.
func (t *treeWatch) arm(root string, man *manifest.Manifest) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unwatchLocked()
	t.root, t.file, t.missing = root, "", false
	if t.off {
		return true
	}
	if t.w == nil {
		t.missing = true
		return false
	}
	var dirs []string
	if len(man.Entries) > 0 && man.Entries[0].Type == manifest.File {
		dirs = []string{filepath.Dir(root)}
		t.file = filepath.Base(root)
	} else {
		for _, e := range man.Entries {
			if e.Type == manifest.Dir {
				dirs = append(dirs, osPath(root, e.Path))
			}
		}
	}
	for _, d := range dirs {
		if err := t.add(d); err != nil {
			t.missing = true
			if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EMFILE) {
				if !t.warned {
					t.warned = true
					t.log.WithField("watched", len(t.watched)).WithField("directories", len(dirs)).Warn(
						"inotify watch limit reached: raise it with sysctl fs.inotify.max_user_watches=N " +
							"(and fs.inotify.max_user_instances); meanwhile the tree is scanned for drift every few seconds")
				}
				break
			}
			continue // gone already: the next scan sees it
		}
		t.watched[d] = true
	}
	t.report()
	return !t.missing
}

// disarm stops watching: the tree is about to change by our own hand.
func (t *treeWatch) disarm() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unwatchLocked()
	t.root = ""
	t.report()
}

func (t *treeWatch) unwatchLocked() {
	for d := range t.watched {
		if t.w != nil {
			t.w.Remove(d)
		}
		delete(t.watched, d)
	}
}

func (t *treeWatch) report() {
	if t.gauge != nil {
		t.gauge(len(t.watched))
	}
}

// complete reports whether the whole armed tree is watched.
func (t *treeWatch) complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.root != "" && !t.missing
}

// take reports whether anything changed since the last take.
func (t *treeWatch) take() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.dirty
	t.dirty = false
	return d
}

// run delivers events until ctx ends, then closes the watcher.
func (t *treeWatch) run(ctx context.Context) {
	if t.w == nil {
		return
	}
	defer t.w.Close()
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
				t.mark() // events were lost: look at everything
				continue
			}
			t.log.WithError(err).Warn("watching the tree for changes")
		}
	}
}

func (t *treeWatch) event(ev fsnotify.Event) {
	t.mu.Lock()
	relevant := t.root != "" && (t.file == "" || filepath.Base(ev.Name) == t.file)
	t.mu.Unlock()
	if relevant && !manifest.IsTemp(filepath.Base(ev.Name)) {
		t.mark()
	}
}

func (t *treeWatch) mark() {
	t.mu.Lock()
	t.dirty = true
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// osPath maps manifest path p to its OS path under the task root.
func osPath(root, p string) string {
	if p == "." {
		return root
	}
	return filepath.Join(root, filepath.FromSlash(p))
}
