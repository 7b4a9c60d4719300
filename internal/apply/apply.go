// Package apply carries out a manifest plan on a host's tree. Every fetched
// file is written under a temporary name, verified against its hash, given
// its owner, mode and mtime, fsynced and only then renamed into place, so a
// reader never sees a half-written file and a failed transfer leaves the old
// version intact: after a failure or a crash, every file is either its old
// version or its new one. Before Apply reports success, what it did is
// durable: fetched files were fsynced, every directory whose entries changed
// (renames, creations, removals, symlink replacements) is fsynced, once per
// Apply, and metadata-only changes are synced with their filesystem.
//
// Nothing is ever written through a symlink, and no path is checked and then
// used. Apply opens directories one component at a time from the task root
// down, each relative to its parent's handle with O_NOFOLLOW (the task root
// itself must be a real directory; its parent belongs to the operator and
// is opened by path). It keeps the handles open for the call, up to a
// bound past which the least recently used are closed and reopened when
// needed again, and acts on the final component with the *at system calls
// relative to its directory's handle: openat, mkdirat, symlinkat, renameat,
// unlinkat, fchownat and utimensat, none of which follows a symlink there. A
// directory swapped for a symlink after the plan was made is refused (an
// error wrapping syscall.ENOTDIR); one opened before the swap stays the
// directory it was. os.Root is not used: it follows symlinks that stay
// inside the root, and fanout never writes through a symlink.
//
// Owners follow Options.Owner (see manifest.OwnerPolicy): with Chown, every
// entry that carries an owner gets it, before its mode is set; setuid and
// setgid bits are set only on an entry owned by the owner the manifest gives
// it.
package apply

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
)

// Fetcher streams a file's content, from offset, into w and returns the
// bytes written. It should return promptly, with ctx's error, once ctx is
// done.
type Fetcher interface {
	Fetch(ctx context.Context, e manifest.Entry, offset int64, w io.Writer) (int64, error)
}

// Assembler builds the content of a file of several chunks (format 3) in
// a temporary file, instead of a Fetcher streaming it whole: it takes the
// chunks it can from copies already on this host (an older version, a
// renamed or duplicate file) and the rest from sources, in any order. It
// writes each chunk at its offset in f (which is e.Size long) only once the
// chunk's bytes are verified against its hash, then tells sink (when not
// nil) the chunk's index (from several goroutines at once, possibly); it
// returns nil only when every chunk is in f, verified. It may also write a
// chunk's bytes as they arrive, before it verified them, when it tells sink
// so (ChunkSink.Arriving): a host serving the file on then streams them.
//
// f is the file's part file (see PartPath): after an interrupted Apply it
// holds what that Apply wrote, unverified. An Assembler may keep the
// chunks of f whose bytes hash right (and only those) instead of writing
// them again.
type Assembler interface {
	Assemble(ctx context.Context, e manifest.Entry, f *os.File, sink ChunkSink) error
}

// ChunkSink hears of the chunks of one file as an Assembler writes them.
type ChunkSink interface {
	// Arriving: the first n bytes of chunk i are in the file, written but
	// not verified yet; an n below the last (0 in this package's
	// assemblers) drops those past it: they are not the chunk's, or other
	// bytes will be written there. The chunk lands (Landed) with the bytes
	// announced, unless they were dropped first.
	Arriving(i int, n int64)
	// Landed: chunk i is in the file, verified.
	Landed(i int)
}

// ChunkObserver is an Observer also told of each chunk an Assembler lands,
// verified, and of its bytes as they arrive, so it can serve the chunk on
// before the file is complete.
type ChunkObserver interface {
	Observer
	Landed(e manifest.Entry, i int)
	Arriving(e manifest.Entry, i int, n int64)
}

// Observer watches fetched files as they are written, so they can be served
// on before they are complete (pipelining). Its methods are called from
// several goroutines at once, for different entries.
type Observer interface {
	// Begin is called once the temporary file f of e is created, before
	// any byte is written; f is open for reading and writing and is
	// closed by Apply after End.
	Begin(e manifest.Entry, f *os.File)
	// Wrote is called after each write with the bytes f now holds in all.
	Wrote(e manifest.Entry, n int64)
	// End is called once e is verified and renamed into place (err nil),
	// or discarded.
	End(e manifest.Entry, err error)
}

// Options tunes Apply.
type Options struct {
	// Fetcher downloads file content; it is required when the plan fetches.
	Fetcher Fetcher
	// Cache, when set, learns the hash of every file written, keyed by its
	// OS path and final FileInfo (stat after the rename, checked to be the
	// file written).
	Cache *manifest.Cache
	// Workers is how many files are fetched at once; default 4.
	Workers int
	// Progress, when set, is told of every chunk of bytes received. It is
	// called from several goroutines at once and must be safe for
	// concurrent use.
	Progress func(n int64)
	// Log receives debug lines for each action; nil discards them.
	Log logrus.FieldLogger
	// Observer, when set, watches every fetched file as it is written.
	Observer Observer
	// Owner is how owners and setuid/setgid bits are applied; it must be
	// the policy the plan was diffed with (manifest.DiffOptions.Owner).
	Owner manifest.OwnerPolicy
	// Chunking is the manifest's (format 3): the cache learns each file's
	// chunk list under it. Nil for formats 1 and 2.
	Chunking *chunk.Params
	// Assembler, when set, builds the files of several chunks that are not
	// fetched in a batch (see Assembler); Fetcher streams the others.
	Assembler Assembler
}

// Stats counts what Apply did.
type Stats struct {
	Files, Dirs, Symlinks, Removed, Meta int
	// Bytes is the content written by successful fetches.
	Bytes int64
}

// Apply realises plan under root, the absolute OS path of the task root on
// this host: a directory, or the file itself for a single-file task (entry
// "." is root). root's parent must exist. The plan must come ordered as
// manifest.Diff orders it; Apply runs its actions in that order, fetching a
// run of consecutive fetches Options.Workers at a time and finishing them all
// before the next action starts.
//
// Apply checks the whole plan first (paths must be clean and relative, each
// action's entry of the right type) and then stops at the first error,
// cancelling the fetches in flight and waiting for them; the error names the
// entry. The stats so far are returned either way. Whether it succeeds or
// fails, what it changed is synced to disk before it returns (see the
// package doc); success means that sync succeeded too.
func Apply(ctx context.Context, root string, plan *manifest.Plan, opts Options) (Stats, error) {
	if plan == nil {
		return Stats{}, nil
	}
	if err := check(plan, opts); err != nil {
		return Stats{}, err
	}
	return newApplier(root, opts).apply(ctx, plan)
}

// apply is Apply once the plan is checked.
func (a *applier) apply(ctx context.Context, plan *manifest.Plan) (Stats, error) {
	defer a.close()
	err := a.run(ctx, plan.Actions)
	// Even after a failure: what was done is made durable, so a later
	// Apply that finds it already right has nothing left unsynced.
	if serr := a.syncDirs(); err == nil {
		err = serr
	} else if serr != nil {
		a.log.WithError(serr).Warn("could not sync the changes made before the failure")
	}
	return a.snapshot(), err
}

// run carries out the actions in order.
func (a *applier) run(ctx context.Context, acts []manifest.Action) error {
	for i := 0; i < len(acts); {
		if err := ctx.Err(); err != nil {
			return err
		}
		if acts[i].Op != manifest.OpFetch {
			if err := a.do(acts[i]); err != nil {
				return err
			}
			i++
			continue
		}
		j := i + 1
		for j < len(acts) && acts[j].Op == manifest.OpFetch {
			j++
		}
		if err := a.fetchAll(ctx, acts[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// check rejects a plan that could reach outside the task root or that asks
// for an entry of the wrong type, before anything is written.
func check(plan *manifest.Plan, opts Options) error {
	want := map[manifest.Op]manifest.Type{
		manifest.OpMkdir:   manifest.Dir,
		manifest.OpSymlink: manifest.Symlink,
		manifest.OpFetch:   manifest.File,
	}
	for _, act := range plan.Actions {
		p := act.Entry.Path
		if p != "." && (!filepath.IsLocal(p) || path.Clean(p) != p) {
			return fmt.Errorf("%s %q: not a clean path inside the task root", act.Op, p)
		}
		switch act.Op {
		case manifest.OpRemove, manifest.OpMeta:
		case manifest.OpMkdir, manifest.OpSymlink, manifest.OpFetch:
			if act.Entry.Type != want[act.Op] {
				return fmt.Errorf("%s %s: entry is a %s", act.Op, p, act.Entry.Type)
			}
			if act.Op == manifest.OpFetch && opts.Fetcher == nil {
				return fmt.Errorf("%s %s: no Fetcher", act.Op, p)
			}
		default:
			return fmt.Errorf("%s %s: unknown operation", act.Op, p)
		}
	}
	return nil
}

// debugEnabled reports whether log writes debug entries, when it can
// tell (a logrus Entry or Logger): a debug line per file costs its fields'
// allocations even when its level drops it (0.19 s of CPU for 100,000
// files).
func debugEnabled(log logrus.FieldLogger) bool {
	switch l := log.(type) {
	case *logrus.Entry:
		return l.Logger.IsLevelEnabled(logrus.DebugLevel)
	case *logrus.Logger:
		return l.IsLevelEnabled(logrus.DebugLevel)
	}
	return true
}

// applier is the state of one Apply call.
type applier struct {
	root string // OS path of the task root
	opts Options
	log  logrus.FieldLogger
	// debug: log writes debug entries (see debugEnabled).
	debug  bool
	expect func(manifest.Entry) manifest.Entry // Options.Owner's Expecter
	// maxDirs is how many directory handles stay open; maxOpenDirs but
	// in tests.
	maxDirs int

	mu       sync.Mutex
	stats    Stats
	dirs     map[string]*dirHandle // open directories (see operatorDir)
	clock    uint64                // counts acquires, to find the least recently used
	touched  map[string]bool       // directories to fsync
	metaFS   map[uint64]metaFS     // filesystems to sync, by device
	syncErrs []error               // failures to sync so far

	// hashes holds whole-content hashers (hash.Hash) for reuse: a BLAKE3
	// hasher is about 10 KiB, allocated per file otherwise.
	hashes sync.Pool

	// synced, when set (by tests), is told of every sync: "fsync" or
	// "syncfs", and the directory's OS path.
	synced func(op, osPath string)
}

func newApplier(root string, opts Options) *applier {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	return &applier{
		root:    filepath.Clean(root),
		opts:    opts,
		log:     log,
		debug:   debugEnabled(log),
		expect:  opts.Owner.Expecter(),
		maxDirs: maxOpenDirs,
		dirs:    map[string]*dirHandle{},
		touched: map[string]bool{},
		metaFS:  map[uint64]metaFS{},
	}
}

// snapshot returns the stats so far.
func (a *applier) snapshot() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

// done counts a completed action; bytes is what a fetch wrote.
func (a *applier) done(op manifest.Op, bytes int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch op {
	case manifest.OpRemove:
		a.stats.Removed++
	case manifest.OpMkdir:
		a.stats.Dirs++
	case manifest.OpSymlink:
		a.stats.Symlinks++
	case manifest.OpFetch:
		a.stats.Files++
		a.stats.Bytes += bytes
	case manifest.OpMeta:
		a.stats.Meta++
	}
}

// osPath maps a checked manifest path to this host's OS path; operatorDir
// maps to the root's parent.
func (a *applier) osPath(p string) string {
	switch p {
	case operatorDir:
		return filepath.Dir(a.root)
	case ".":
		return a.root
	}
	return filepath.Join(a.root, filepath.FromSlash(p))
}
