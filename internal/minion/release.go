package minion

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/statedir"
)

// Releases (publish --atomic). The task path is a symlink to the live
// release, a directory beside it named by its tree's digest:
//
//	/data/web -> .web.releases/3f2a9c0d1e2b4a5c
//	/data/.web.releases/3f2a9c0d1e2b4a5c/...   (live)
//	/data/.web.releases/9b8c7d6e5f4a3b2c/...   (kept: rollback switches back)
//
// A pull builds the new release in its own directory: files whose content
// this host holds already are hard-linked from the live release (a link
// that a metadata change would touch is copied first, so nothing of the
// live tree ever changes), the rest is fetched as any pull does; the
// release is verified, then the symlink is replaced by rename(2), which is
// atomic: a reader resolves the path to the old tree or the new one, never
// a mix. A plain tree (the task before its first atomic generation) is
// exchanged for the symlink with renameat2(RENAME_EXCHANGE) and kept as a
// release itself. Once a task's path is released, every generation of it
// is, published with --atomic or not.
//
// The state directory keeps the switch order (releasesFile) and the
// manifest of each kept release (keptDir), so a rollback to a kept release
// verifies it against its own manifest and switches without a source.

const (
	// releasesFile records, per releases directory, the releases this
	// host switched to, oldest first.
	releasesFile = "releases.json"
	// keptDir holds the encoded manifest of each kept release.
	keptDir = "releases"
	// switchName is the symlink made beside the releases and renamed
	// over the task path.
	switchName = ".switch"
	// plainPrefix names a plain tree kept as a release at its first
	// switch.
	plainPrefix = "plain-"
)

// layout is where a released task lives on this host.
type layout struct {
	live string // the task path: a symlink to the live release
	dir  string // the releases, beside it
}

func newLayout(live string) layout {
	return layout{live: live, dir: filepath.Join(filepath.Dir(live), "."+filepath.Base(live)+".releases")}
}

// releaseName names the release of the tree whose manifest digest is
// digest.
func releaseName(digest string) string { return digest[:16] }

func (l layout) path(name string) string { return filepath.Join(l.dir, name) }

// target is the symlink text for release name: relative to the task
// path's directory, so it resolves through any mount of it.
func (l layout) target(name string) string { return filepath.Base(l.dir) + "/" + name }

// errForeignLink refuses a task path that is a symlink fanout did not
// make: replacing it would throw away where the operator pointed it.
var errForeignLink = errors.New("is a symlink fanout did not make")

// current returns the release the task path points at; "" when it is not
// a symlink (a plain tree, or nothing yet). A symlink elsewhere is
// errForeignLink.
func (l layout) current() (string, error) {
	t, err := os.Readlink(l.live)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.EINVAL):
		return "", nil
	case err != nil:
		return "", err
	}
	name, ok := strings.CutPrefix(t, filepath.Base(l.dir)+"/")
	if !ok || name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
		return "", fmt.Errorf("%s -> %s %w: remove it, or publish without --atomic", l.live, t, errForeignLink)
	}
	return name, nil
}

// released reports whether the task path is a symlink to a release.
func (l layout) released() bool {
	name, err := l.current()
	return err == nil && name != ""
}

// ensureDir makes the releases directory, and refuses one that is not a
// directory of this user's (a symlink planted there would make fanout
// build the tree elsewhere).
func (l layout) ensureDir() error {
	if err := os.Mkdir(l.dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", l.dir, err)
	}
	return ownDir(l.dir)
}

// ownDir checks that p is a directory (not a symlink) owned by this
// process's user.
func ownDir(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is not a directory of this user's: move it away so fanout can keep its releases there", p)
	}
	return nil
}

// switchTo points the task path at release name, atomically; a plain
// tree at the task path is kept as a release (its name returned as
// plain). It reports whether anything changed.
func (l layout) switchTo(name string, now time.Time) (changed bool, plain string, err error) {
	want := l.target(name)
	if t, err := os.Readlink(l.live); err == nil && t == want {
		return false, "", nil
	}
	tmp := l.path(switchName)
	if fi, err := os.Lstat(tmp); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		// The plain tree a crash left here between its exchange and its
		// rename: kept as the release it was becoming.
		if err := os.Rename(tmp, l.path(plainPrefix+strconv.FormatInt(now.UnixNano()-1, 10))); err != nil {
			return false, "", err
		}
	}
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, "", err
	}
	if err := os.Symlink(want, tmp); err != nil {
		return false, "", err
	}
	fi, err := os.Lstat(l.live)
	switch {
	case errors.Is(err, fs.ErrNotExist), err == nil && fi.Mode()&fs.ModeSymlink != 0:
		// Nothing there, or our symlink (current() refused any other).
		err = os.Rename(tmp, l.live)
	case err != nil:
	default:
		plain = plainPrefix + strconv.FormatInt(now.UnixNano(), 10)
		err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, l.live, unix.RENAME_EXCHANGE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// No exchange on this file system: the path is missing for
			// the moment between two renames.
			if err = os.Rename(l.live, l.path(plain)); err == nil {
				err = os.Rename(tmp, l.live)
			}
		} else if err == nil {
			err = os.Rename(tmp, l.path(plain)) // tmp is the old tree now
		}
	}
	if err != nil {
		return false, "", err
	}
	for _, d := range []string{filepath.Dir(l.live), l.dir} {
		if err := syncDir(d); err != nil {
			return true, plain, err
		}
	}
	return true, plain, nil
}

func syncDir(p string) error {
	d, err := os.Open(p)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// releaseRecord is one release this host switched to.
type releaseRecord struct {
	Name     string    `json:"name"`
	Digest   string    `json:"digest,omitempty"` // "" for a plain tree
	Gen      int64     `json:"gen,omitempty"`
	Switched time.Time `json:"switched"`
}

// releaseLog is releasesFile: per releases directory, oldest first.
type releaseLog map[string][]releaseRecord

func (m *Minion) loadReleases() releaseLog {
	out := releaseLog{}
	b, err := os.ReadFile(filepath.Join(m.cfg.StateDir, releasesFile))
	if err == nil {
		if err := json.Unmarshal(b, &out); err != nil {
			m.cfg.Log.WithError(err).Warn("release record unreadable; releases are pruned as if none was kept")
			out = releaseLog{}
		}
	}
	return out
}

func (m *Minion) saveReleases(rl releaseLog) error {
	b, err := json.Marshal(rl)
	if err != nil {
		return err
	}
	return statedir.WriteFile(filepath.Join(m.cfg.StateDir, releasesFile), b, manifest.TempPrefix)
}

// keptPath is where the manifest of release name is kept.
func (m *Minion) keptPath(name string) string {
	return filepath.Join(m.cfg.StateDir, keptDir, name+".manifest")
}

// keptManifest returns the kept manifest of the release of digest, if
// this host keeps that release.
func (m *Minion) keptManifest(l layout, digest string) ([]byte, *manifest.Manifest, bool) {
	name := releaseName(digest)
	enc, err := os.ReadFile(m.keptPath(name))
	if err != nil || manifest.Digest(enc) != digest {
		return nil, nil, false
	}
	if _, err := os.Lstat(l.path(name)); err != nil {
		return nil, nil, false
	}
	man, err := manifest.Decode(enc, manifest.DefaultLimits())
	if err != nil {
		return nil, nil, false
	}
	return enc, man, true
}

// releaseRoot prepares the directory a pull of g builds its release in
// (see the package comment above): the release of g's tree, created and
// filled with hard links from the tree live now when it does not exist
// yet. It returns the release's path and the live tree's, the latter ""
// when there is none to take chunks from.
func (m *Minion) releaseRoot(ctx context.Context, g coord.Generation, remote *manifest.Manifest) (root, from string, err error) {
	l := newLayout(taskRoot(m.cfg.Root, g.LocalPath()))
	cur, err := l.current()
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(filepath.Dir(l.live), 0o755); err != nil {
		return "", "", fmt.Errorf("create parent of %s: %w", l.live, err)
	}
	if err := l.ensureDir(); err != nil {
		return "", "", err
	}
	name := releaseName(g.Digest)
	root = l.path(name)
	switch {
	case cur != "" && cur != name:
		from = l.path(cur)
	case cur == "":
		if _, err := os.Lstat(l.live); err == nil {
			from = l.live // a plain tree, before its first switch
		}
	}
	fi, err := os.Lstat(root)
	switch {
	case err == nil:
		// Kept, or left by an interrupted pull: the diff tells what is
		// missing. It must be ours.
		if fi.IsDir() {
			err = ownDir(root)
		} else if !fi.Mode().IsRegular() {
			err = fmt.Errorf("%s is neither a directory nor a file: move it away", root)
		}
		return root, from, err
	case !errors.Is(err, fs.ErrNotExist):
		return "", "", err
	}
	if e, ok := remote.Lookup("."); ok && e.Type == manifest.Dir {
		// Nobody else may write in it while it is built: its mode is
		// the manifest's once the pull applies it.
		if err := os.Mkdir(root, 0o700); err != nil {
			return "", "", fmt.Errorf("create release %s: %w", root, err)
		}
	}
	if from != "" {
		m.linkRelease(ctx, from, root, remote)
		if err := m.carry(ctx, from, root, remote, g.Delete); err != nil {
			return "", "", fmt.Errorf("carry what the task leaves alone into the release: %w", err)
		}
	}
	return root, from, nil
}

// linkRelease hard-links into the new release at root every file of
// remote whose content the tree at from holds at the same path, as the
// hash cache vouches (the file was not touched since it was hashed) or,
// when it has no entry, as hashing the file now shows. The
// links' cache entries are carried over (a link moves the inode's ctime),
// so the pull's scan does not read them again.
func (m *Minion) linkRelease(ctx context.Context, from, root string, remote *manifest.Manifest) {
	linked := 0
	var bytes int64
	dirs := map[string]bool{} // parents in from known to be directories, not symlinks
	for _, e := range remote.Entries {
		if e.Type != manifest.File || !realParents(from, e.Path, dirs) {
			continue
		}
		src, dst := osPath(from, e.Path), osPath(root, e.Path)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != e.Size {
			continue
		}
		hash, chunks, ok := m.cachedHash(src, fi, remote)
		if !ok {
			// Not cached (a restart lost the cache, or the file is too
			// recent to trust a cached hash): reading it costs less than
			// the copy the pull would make of it.
			var err error
			if remote.Chunking != nil {
				hash, chunks, err = manifest.HashChunks(ctx, src, *remote.Chunking)
			} else {
				hash, err = manifest.HashFile(ctx, src)
			}
			if err != nil {
				continue
			}
		}
		if hash != e.Hash {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			continue
		}
		if err := os.Link(src, dst); err != nil {
			continue // another file system, a link limit: fetched or built from chunks instead
		}
		after, err := os.Lstat(dst)
		if err == nil && os.SameFile(fi, after) && after.Size() == fi.Size() && after.ModTime().Equal(fi.ModTime()) {
			m.putHash(dst, after, remote, hash, chunks)
			m.putHash(src, after, remote, hash, chunks)
		}
		linked++
		bytes += e.Size
	}
	if linked > 0 {
		m.cfg.Log.WithFields(map[string]any{"files": linked, "bytes": bytes, "from": from}).Info("release: hard-linked unchanged files from the live tree")
	}
}

// carry brings into the new release at root what a pull in place leaves
// alone in the tree at from: the paths remote excludes and, without
// delete, the entries beyond remote (host-local files). Files are hard
// links (the pull never changes them: excluded paths are protected from
// the plan, and extras are not in it), directories and symlinks are made
// anew. So an atomic switch loses no file a pull in place would keep.
func (m *Minion) carry(ctx context.Context, from, root string, remote *manifest.Manifest, del bool) error {
	ex, err := exclude.Parse(remote.Exclude)
	if err != nil {
		return err
	}
	var excluded []string
	live, err := manifest.Build(ctx, from, manifest.Options{
		Chunking: remote.Chunking,
		Exclude:  ex,
		Excluded: func(p string) { excluded = append(excluded, p) },
		Warn:     func(p string, err error) { m.cfg.Log.WithField("path", p).WithError(err).Debug("skipped live entry") },
	})
	if err != nil {
		return err
	}
	dirs := map[string]bool{}
	n := 0
	place := func(rel string, src string, fi fs.FileInfo) error {
		dst := osPath(root, rel)
		if _, err := os.Lstat(dst); err == nil {
			return nil // the release has it already
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		var err error
		switch {
		case fi.IsDir():
			err = os.Mkdir(dst, fi.Mode().Perm())
		case fi.Mode().IsRegular():
			err = os.Link(src, dst)
		case fi.Mode()&fs.ModeSymlink != 0:
			var t string
			if t, err = os.Readlink(src); err == nil {
				err = os.Symlink(t, dst)
			}
		default:
			return nil // never part of a tree
		}
		if err == nil {
			n++
		}
		return err
	}
	for _, p := range excluded {
		if !realParents(from, p, dirs) {
			continue
		}
		top := osPath(from, p)
		err := filepath.WalkDir(top, func(q string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // vanished or unreadable: not carried
			}
			fi, err := d.Info()
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(top, q)
			return place(path.Join(p, filepath.ToSlash(rel)), q, fi)
		})
		if err != nil {
			return err
		}
	}
	if !del {
		for _, e := range live.Entries {
			if _, ok := remote.Lookup(e.Path); ok || e.Path == "." || !realParents(from, e.Path, dirs) {
				continue
			}
			src := osPath(from, e.Path)
			fi, err := os.Lstat(src)
			if err != nil {
				continue
			}
			if err := place(e.Path, src, fi); err != nil {
				return err
			}
		}
	}
	if n > 0 {
		m.cfg.Log.WithFields(map[string]any{"entries": n, "from": from}).Info("release: carried excluded paths and files the task does not list (without --delete) from the live tree")
	}
	return nil
}

// realParents reports whether every parent directory of manifest path p
// under root is a directory, not a symlink (a link to a file reached
// through one could be a file outside the root); dirs caches the answers.
func realParents(root, p string, dirs map[string]bool) bool {
	for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
		ok, seen := dirs[d]
		if !seen {
			fi, err := os.Lstat(osPath(root, d))
			ok = err == nil && fi.IsDir()
			dirs[d] = ok
		}
		if !ok {
			return false
		}
	}
	return true
}

// cachedHash is the content hash (and, in format 3, the chunk list) of
// the file at p (stat fi) as the hash cache knows it, in remote's format.
func (m *Minion) cachedHash(p string, fi fs.FileInfo, remote *manifest.Manifest) (string, []manifest.Chunk, bool) {
	if remote.Chunking != nil {
		return m.cache.GetChunks(p, fi, *remote.Chunking)
	}
	hash, ok := m.cache.Get(p, fi)
	return hash, nil, ok
}

func (m *Minion) putHash(p string, fi fs.FileInfo, remote *manifest.Manifest, hash string, chunks []manifest.Chunk) {
	if remote.Chunking != nil {
		m.cache.PutChunks(p, fi, *remote.Chunking, hash, chunks)
		return
	}
	m.cache.Put(p, fi, hash)
}

// unshare gives each file of the plan whose metadata the plan changes and
// that shares its inode (a hard link from the live release, made by this
// build or by an earlier attempt of it) an inode of its own first, so the
// change does not reach the live tree.
func unshare(root string, plan *manifest.Plan) error {
	for _, e := range plan.Entries(manifest.OpMeta) {
		if e.Type != manifest.File {
			continue
		}
		p := osPath(root, e.Path)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue // the plan's apply reports it
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink < 2 {
			continue
		}
		if err := copyOver(p); err != nil {
			return fmt.Errorf("release: copy %s before changing its metadata: %w", e.Path, err)
		}
	}
	return nil
}

// copyOver replaces the file at p by a copy of it (a new inode).
func copyOver(p string) error {
	src, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(p), manifest.TempPrefix+"unshare-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// switchHeld points the task path at the release this host holds (when
// it holds one), records the switch and prunes the releases beyond keep.
// The held release is verified: a pull verified it, or a verification
// pass found it equal to its manifest.
func (m *Minion) switchHeld(g coord.Generation) error {
	m.mu.Lock()
	h, enc := m.held, m.heldEnc
	m.mu.Unlock()
	if h == nil || h.Release == "" || g.SwitchPending() {
		return nil // nothing released, or the fleet's switch is not ordered yet
	}
	l := newLayout(taskRoot(m.cfg.Root, h.Path))
	if _, err := l.current(); err != nil {
		return err
	}
	start := time.Now()
	changed, plain, err := l.switchTo(h.Release, start)
	if err != nil {
		return fmt.Errorf("switch %s to release %s: %w", l.live, h.Release, err)
	}
	if !changed {
		if _, err := os.Stat(m.keptPath(h.Release)); err == nil {
			return nil
		}
		// Switched before a crash that left the record unwritten: write
		// it now, so the release can be returned to and is pruned in
		// order.
	} else {
		m.cfg.Log.WithFields(map[string]any{"gen": h.Gen, "path": l.live, "release": h.Release, "elapsed": time.Since(start).Round(time.Microsecond).String()}).
			Info("switched to the new release")
	}
	if err := os.MkdirAll(filepath.Join(m.cfg.StateDir, keptDir), 0o700); err != nil {
		return err
	}
	if err := statedir.WriteFile(m.keptPath(h.Release), enc, manifest.TempPrefix); err != nil {
		return fmt.Errorf("keep the release's manifest: %w", err)
	}
	rl := m.loadReleases()
	recs := slices.DeleteFunc(rl[l.dir], func(r releaseRecord) bool { return r.Name == h.Release })
	if plain != "" {
		recs = append(recs, releaseRecord{Name: plain, Switched: start})
		m.cfg.Log.WithFields(map[string]any{"path": l.live, "kept": l.path(plain)}).
			Info("the tree in place before the first release is kept as a release")
	}
	rl[l.dir] = append(recs, releaseRecord{Name: h.Release, Digest: h.Digest, Gen: h.Gen, Switched: start})
	keep := g.Atomic
	if keep <= 0 {
		keep = coord.DefaultKeep
	}
	pruned := time.Now()
	if m.pruneReleases(l, rl, keep, h.Release) > 0 {
		m.rekeyReleases(l, rl, pruned)
	}
	return m.saveReleases(rl)
}

// rekeyReleases carries the hash cache entries of the kept releases of l
// (the live one first) over the ctime moves that pruning made: an unlink
// of a pruned release's name for an inode the kept ones share moves its
// ctime, part of the cache's key, and the next verification pass (or a
// rollback's) would otherwise read the whole tree again after every
// deploy.
func (m *Minion) rekeyReleases(l layout, rl releaseLog, since time.Time) {
	n := 0
	for _, r := range rl[l.dir] {
		enc, err := os.ReadFile(m.keptPath(r.Name))
		if err != nil {
			continue // a plain tree: no manifest, nothing cached of it
		}
		man, err := manifest.Decode(enc, manifest.DefaultLimits())
		if err != nil {
			continue
		}
		for _, e := range man.Entries {
			if e.Type != manifest.File {
				continue
			}
			p := osPath(l.path(r.Name), e.Path)
			if fi, err := os.Lstat(p); err == nil && m.cache.Rekey(p, fi, since) {
				n++
			}
		}
	}
	if n > 0 {
		m.cfg.Log.WithField("files", n).Debug("release: hash cache carried over the prune's ctime moves")
		m.saveCache()
	}
}

// pruneReleases removes every release of l but the live one and the
// keep-1 switched to last before it, and whatever else is in the releases
// directory (builds of generations never switched to). It returns how
// many it removed.
func (m *Minion) pruneReleases(l layout, rl releaseLog, keep int, live string) int {
	recs := rl[l.dir]
	kept := map[string]bool{live: true, switchName: true}
	for i := len(recs) - 1; i >= 0 && len(kept) < keep+1; i-- {
		kept[recs[i].Name] = true
	}
	rl[l.dir] = slices.DeleteFunc(recs, func(r releaseRecord) bool { return !kept[r.Name] })
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		m.cfg.Log.WithError(err).Warn("cannot list the releases to prune")
		return 0
	}
	removed := 0
	for _, e := range entries {
		if kept[e.Name()] {
			continue
		}
		if err := os.RemoveAll(l.path(e.Name())); err != nil {
			m.cfg.Log.WithError(err).WithField("release", l.path(e.Name())).Warn("cannot prune a release")
			continue
		}
		os.Remove(m.keptPath(e.Name()))
		removed++
		m.cfg.Log.WithFields(map[string]any{"release": l.path(e.Name()), "keep": keep}).Info("pruned a release")
	}
	return removed
}

// adoptKept makes a kept release of g's tree the held tree when a
// verification pass finds it equal to its manifest, so the announce
// switches to it: a rollback, or a republish of a tree this host kept,
// moves no bytes. A kept release that drifted is left to the pull, which
// builds in it and fetches only what differs.
func (m *Minion) adoptKept(ctx context.Context, g coord.Generation) bool {
	l := newLayout(taskRoot(m.cfg.Root, g.LocalPath()))
	if g.Atomic == 0 && !l.released() {
		return false
	}
	if m.adoptFailed == genKey(g) {
		return false // verified once and found different: the pull repairs it
	}
	enc, man, ok := m.keptManifest(l, g.Digest)
	if !ok {
		return false
	}
	h := held{Gen: g.ID, Digest: g.Digest, Path: g.LocalPath(), Delete: g.Delete, Release: releaseName(g.Digest)}
	log := m.cfg.Log.WithFields(map[string]any{"gen": g.ID, "release": h.Release, "rollback": g.Rollback})
	m.forgetHeld()
	m.mu.Lock()
	m.held, m.heldEnc, m.heldMan = &h, enc, man
	m.mu.Unlock()
	plan, err := m.verify(ctx)
	if err == nil && plan.Empty() {
		err = saveHeld(m.cfg.StateDir, h, enc)
	} else if err == nil {
		err = fmt.Errorf("it differs from its manifest: %s", describe(plan))
	}
	if err != nil {
		m.mu.Lock()
		m.held, m.heldEnc, m.heldMan = nil, nil, nil
		m.mu.Unlock()
		m.adoptFailed = genKey(g)
		log.WithError(err).Info("kept release of the generation not usable as it is; pulling what differs")
		return false
	}
	m.setVerified(true)
	log.Info("this host keeps the release of the generation, verified: switching back to it without a transfer")
	return true
}

// fleetSwitch finishes the switch of a generation switched fleet-wide
// (publish --switch fleet), which hold switched to once the master ordered
// it: records the switch (the master calls the generation done once every
// expected host did) and runs the hook, which waits for the switch. Until
// the order, it notes that this host waits for it.
//
// The record is sent again at each hold step while the generation runs
// (a write Redis lost would keep it from done); the hook runs once.
func (m *Minion) fleetSwitch(ctx context.Context, g coord.Generation) error {
	m.awaitSwitch = g.SwitchPending()
	if g.Switch != coord.SwitchFleet || m.awaitSwitch || (m.switched == genKey(g) && g.State != coord.StateRunning) {
		return nil
	}
	var hk *pendingHook
	if m.switched != genKey(g) {
		hk = m.prepareHook(ctx, g, m.pulled)
	}
	if err := m.coord.Switched(ctx, m.cfg.ID, g.Ref()); err != nil && !errors.Is(err, coord.ErrStale) {
		return err
	}
	if m.switched != genKey(g) {
		m.switched = genKey(g)
		m.runHook(ctx, g, hk)
	}
	return nil
}
