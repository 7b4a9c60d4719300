package manifest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Update returns the manifest of the tree at root, given prev, the manifest
// Build (or Update) made of it with the same opts, and the paths (relative
// to root, slash-separated, as in a manifest) that changed since: what an
// inotify watcher reports. Only those are looked at again:
//
//   - each changed path's entry is read again and, if it is a directory,
//     its whole subtree is walked (a directory moved in brings its
//     contents); one that is gone leaves with its subtree;
//   - the parent directory of each changed path gets its own entry read
//     again (its mtime moves when an entry in it is created or removed),
//     without its other children;
//   - every other entry is taken from prev, with its hashes.
//
// Files walked again are hashed unless opts.Cache knows them. The result
// is checked as a whole (Validate); when prev and the changes do not add
// up to a tree (an event was lost: a parent vanished without a word),
// the whole tree is built again, so Update never returns less than the
// truth. A change to "." or a file root also builds it all. Update
// reports whether it fell back to a full Build.
func Update(ctx context.Context, root string, prev *Manifest, changed []string, opts Options) (*Manifest, bool, error) {
	full := func() (*Manifest, bool, error) {
		m, err := Build(ctx, root, opts)
		return m, true, err
	}
	if prev == nil || len(prev.Entries) == 0 || prev.Entries[0].Type != Dir || !sameParams(prev.Chunking, opts.Chunking) ||
		!slices.Equal(prev.Exclude, opts.Exclude.Patterns()) {
		return full()
	}
	deep := map[string]bool{}
	for _, p := range changed {
		if p == "." || ValidPath(p) != nil {
			return full()
		}
		deep[p] = true
	}
	// underDeep reports whether p is below a changed path.
	underDeep := func(p string) bool {
		for q := p; q != "."; {
			q = parent(q)
			if deep[q] {
				return true
			}
		}
		return false
	}
	var walk []string // changed paths not below another one
	for p := range deep {
		if !underDeep(p) {
			walk = append(walk, p)
		}
	}
	slices.SortFunc(walk, func(a, b string) int {
		if Less(a, b) {
			return -1
		}
		return 1
	})
	restat := map[string]bool{} // parents whose own entry is read again
	for _, p := range walk {
		if q := parent(p); !deep[q] && !underDeep(q) {
			restat[q] = true
		}
	}
	kept := make([]Entry, 0, len(prev.Entries))
	for _, e := range prev.Entries {
		if deep[e.Path] || restat[e.Path] || underDeep(e.Path) {
			continue
		}
		kept = append(kept, e)
	}
	b := builder{ctx: ctx, opts: opts}
	if opts.Hash {
		b.pool = newHashPool(ctx, opts.Chunking, opts.WholeHash, opts.Cache)
		b.ctx = b.pool.ctx
	}
	err := func() error {
		for q := range restat {
			osPath := osJoin(root, q)
			fi, err := os.Lstat(osPath)
			if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.IsDir()) {
				return errLost
			}
			if err != nil {
				return fmt.Errorf("stat %s: %w", osPath, err)
			}
			if err := b.add(osPath, q, fi); err != nil {
				return err
			}
		}
		for _, p := range walk {
			if err := b.entry(osJoin(root, parent(p)), parent(p), filepath.Base(filepath.FromSlash(p))); err != nil {
				return err
			}
		}
		return nil
	}()
	if b.pool != nil {
		if err != nil {
			b.pool.fail(err)
		}
		if perr := b.pool.wait(); perr != nil {
			err = perr
		}
	}
	if errors.Is(err, errLost) {
		return full()
	}
	if err != nil {
		return nil, false, err
	}
	for _, p := range b.pending {
		b.entries[p.i].setHash(p.job.res)
	}
	m := &Manifest{Chunking: cloneParams(opts.Chunking), Exclude: opts.Exclude.Patterns(), Entries: append(kept, b.entries...)}
	m.Sort()
	lim := DefaultLimits()
	lim.MaxEntries, lim.MaxChunks = max(lim.MaxEntries, len(m.Entries)), int(^uint(0)>>1)
	if m.Validate(lim) != nil {
		return full() // not a tree: an event was lost
	}
	return m, false, nil
}

// errLost says the changes Update was given do not account for the tree.
var errLost = errors.New("changes do not account for the tree")

// osJoin maps manifest path p to its OS path under root.
func osJoin(root, p string) string {
	if p == "." {
		return root
	}
	return filepath.Join(root, filepath.FromSlash(p))
}
