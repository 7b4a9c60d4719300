package manifest

import (
	"fmt"
	"sort"
	"strings"
)

// Op is one kind of change a plan makes to a local tree.
type Op int

// The operations of a plan, in the order a plan runs them.
const (
	OpRemove  Op = iota // remove a local entry (a directory with its subtree)
	OpMkdir             // create a directory
	OpSymlink           // create or replace a symlink
	OpFetch             // download a file and put it in place
	OpMeta              // set owner, mode and mtime of an entry whose content matches
)

func (o Op) String() string {
	switch o {
	case OpRemove:
		return "remove"
	case OpMkdir:
		return "mkdir"
	case OpSymlink:
		return "symlink"
	case OpFetch:
		return "fetch"
	case OpMeta:
		return "meta"
	}
	return "op?"
}

// Action is one step of a plan. For OpRemove, Entry is the local entry to
// remove; for every other Op it is the remote entry to realise.
type Action struct {
	Op    Op
	Entry Entry
}

// Plan is the ordered list of actions that turns a local tree into the
// remote one: removals of entries in the way of another type, deepest
// first; directories parent first; symlinks; fetches in tree order; file
// and symlink metadata; removals of extra entries (with Delete: after the
// fetches, since a file renamed or moved in the tree is built from the
// chunks of its old copy); and last directory metadata deepest first
// (writing children changes a directory's mtime).
type Plan struct {
	Actions []Action
}

// FetchBytes is the number of bytes the plan downloads.
func (p *Plan) FetchBytes() int64 {
	var n int64
	for _, a := range p.Actions {
		if a.Op == OpFetch {
			n += a.Entry.Size
		}
	}
	return n
}

// Count returns how many actions of kind op the plan has.
func (p *Plan) Count(op Op) int {
	n := 0
	for _, a := range p.Actions {
		if a.Op == op {
			n++
		}
	}
	return n
}

// Entries returns the entries of the actions of kind op, in plan order.
func (p *Plan) Entries(op Op) []Entry {
	var es []Entry
	for _, a := range p.Actions {
		if a.Op == op {
			es = append(es, a.Entry)
		}
	}
	return es
}

// Empty reports whether the local tree already matches.
func (p *Plan) Empty() bool { return len(p.Actions) == 0 }

// DiffOptions tunes Diff.
type DiffOptions struct {
	// Delete removes local entries that the remote manifest does not have.
	Delete bool
	// Protected lists local paths left out of the scan by exclude
	// patterns (Options.Excluded): a directory holding one is never
	// removed as an extra (its other extras are), so an excluded path is
	// never deleted, as rsync --delete keeps excluded files.
	Protected []string
	// Owner is how this host applies owners; give apply the same policy.
	// Owners are compared only with Owner.Chown, and modes as
	// Owner.Expect gives them.
	Owner OwnerPolicy
}

// ConflictError is Diff's refusal to replace local entries that hold paths
// this host keeps: a directory holding an excluded path where the remote
// tree has a file or a symlink, or an excluded local entry at a path the
// remote tree uses (a pattern such as "cache/" excludes a directory, not a
// file of that name). Replacing them would delete what the excludes
// promise to keep, so the pull fails and names them instead.
type ConflictError struct {
	// Paths are the local entries in the way, in tree order.
	Paths []string
	// Kept are, for each of Paths, the first excluded path it holds (the
	// entry itself when it is excluded).
	Kept []string
}

func (e *ConflictError) Error() string {
	const shown = 3
	var b strings.Builder
	for i, p := range e.Paths {
		if i == shown {
			fmt.Fprintf(&b, " and %d more", len(e.Paths)-shown)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		if e.Kept[i] == p {
			fmt.Fprintf(&b, "%q is excluded here", p)
		} else {
			fmt.Fprintf(&b, "%q holds excluded %q", p, e.Kept[i])
		}
	}
	return fmt.Sprintf("the task has another type of entry where this host keeps excluded paths (%s): "+
		"nothing was replaced; move them aside, or change the task or its excludes", b.String())
}

// Diff compares a local scan (with hashes filled by FillHashes) against the
// remote manifest and returns the plan that makes them equal. Files are
// equal when their hashes are, and hashes compare only within one manifest
// format: a file of two or more chunks has another Hash in format 3 than in
// formats 1 and 2 (see Entry.Hash), so the local scan must be hashed in the
// remote manifest's format, as FillHashes does. Symlinks are equal when
// their targets are (symlink mode and mtime are not compared: Linux
// ignores a symlink's permissions, and changing its times needs lutimes,
// kept out of scope). A directory gets an
// OpMeta when its mode or mtime differ, when it is created, and when the
// plan creates, replaces or removes an entry directly inside it (that
// changes its mtime), so applying the plan once leaves nothing to do.
//
// Modes are compared with what this host should hold under opts.Owner (see
// OwnerPolicy.Expect, and KeepsSetID for an entry whose owner stays as it
// is), and owners, symlinks' included, only with opts.Owner.Chown. The plan's
// entries are the remote ones, unchanged: apply works out the same
// expectation.
//
// Diff fails with a *ConflictError, and no plan, when realising the remote
// tree would remove a path in opts.Protected.
func Diff(local, remote *Manifest, opts DiffOptions) (*Plan, error) {
	expect := opts.Owner.Expecter()
	chown := opts.Owner.Chown
	// metaDiffers reports whether local entry l needs an OpMeta to match
	// remote entry r (of the same type, content equal).
	metaDiffers := func(l, r Entry) bool {
		x := expect(r)
		if chown && x.HasOwner() && (l.UID != x.UID || l.GID != x.GID) {
			return true
		}
		if r.Type == Symlink {
			return false
		}
		want := x.Mode
		if !chown && l.HasOwner() && !KeepsSetID(x, l.UID.n, l.GID.n) {
			want &^= setIDBits // apply makes the same check on the file's owner
		}
		return l.Mode != want || l.MTime != r.MTime
	}
	loc := make(map[string]Entry, len(local.Entries))
	for _, e := range local.Entries {
		loc[e.Path] = e
	}
	var removes, mkdirs, links, fetches, fileMeta, prunes, dirMeta []Action
	removed := map[string]bool{} // local dirs removed with their subtree
	under := func(p string) bool {
		for q := p; q != "."; {
			q = parent(q)
			if removed[q] {
				return true
			}
		}
		return false
	}
	protected := make(map[string]bool, len(opts.Protected))
	holds := map[string]string{} // directory → first protected path under it
	for _, p := range opts.Protected {
		protected[p] = true
		for q := p; q != "."; {
			q = parent(q)
			if _, ok := holds[q]; !ok {
				holds[q] = p
			}
		}
	}
	conflict := &ConflictError{}
	create := func(r Entry) {
		switch r.Type {
		case Dir:
			mkdirs = append(mkdirs, Action{OpMkdir, r})
			dirMeta = append(dirMeta, Action{OpMeta, r})
		case Symlink:
			links = append(links, Action{OpSymlink, r})
		case File:
			fetches = append(fetches, Action{OpFetch, r})
		}
	}
	remoteIdx := make(map[string]int, len(remote.Entries))
	for j, r := range remote.Entries {
		remoteIdx[r.Path] = j
		l, ok := loc[r.Path]
		if ok && under(r.Path) {
			ok = false // its parent goes, and it with it
		}
		switch {
		case !ok && protected[r.Path]:
			conflict.Paths = append(conflict.Paths, r.Path)
			conflict.Kept = append(conflict.Kept, r.Path)
		case !ok:
			create(r)
		case l.Type != r.Type && holds[l.Path] != "":
			conflict.Paths = append(conflict.Paths, l.Path)
			conflict.Kept = append(conflict.Kept, holds[l.Path])
		case l.Type != r.Type:
			removes = append(removes, Action{OpRemove, l})
			if l.Type == Dir {
				removed[l.Path] = true
			}
			create(r)
		case r.Type == Dir:
			if metaDiffers(l, r) {
				dirMeta = append(dirMeta, Action{OpMeta, r})
			}
		case r.Type == File:
			if l.Hash == "" || l.Hash != r.Hash {
				fetches = append(fetches, Action{OpFetch, r})
			} else if metaDiffers(l, r) {
				fileMeta = append(fileMeta, Action{OpMeta, r})
			}
		case r.Type == Symlink:
			if l.Target != r.Target {
				links = append(links, Action{OpSymlink, r})
			} else if metaDiffers(l, r) {
				fileMeta = append(fileMeta, Action{OpMeta, r})
			}
		}
	}
	if len(conflict.Paths) > 0 {
		return nil, conflict
	}
	if opts.Delete {
		for _, l := range local.Entries {
			if _, ok := remoteIdx[l.Path]; ok || under(l.Path) || holds[l.Path] != "" {
				continue
			}
			prunes = append(prunes, Action{OpRemove, l})
			if l.Type == Dir {
				removed[l.Path] = true
			}
		}
	}
	// Creating, replacing or removing an entry changes its parent
	// directory's mtime, so every such parent gets its metadata set again,
	// after its children: one pass of the plan then leaves a tree that
	// diffs empty. The parent of any entry these actions touch is a
	// directory on both sides (else the parent itself would be replaced).
	hasMeta := make(map[string]bool, len(dirMeta))
	for _, a := range dirMeta {
		hasMeta[a.Entry.Path] = true
	}
	for _, group := range [][]Action{removes, mkdirs, links, fetches, prunes} {
		for _, a := range group {
			if a.Entry.Path == "." {
				continue
			}
			dir := parent(a.Entry.Path)
			j, ok := remoteIdx[dir]
			if !ok || hasMeta[dir] || remote.Entries[j].Type != Dir {
				continue
			}
			hasMeta[dir] = true
			dirMeta = append(dirMeta, Action{OpMeta, remote.Entries[j]})
		}
	}
	deepestFirst := func(as []Action) {
		sort.SliceStable(as, func(i, j int) bool {
			di, dj := depth(as[i].Entry.Path), depth(as[j].Entry.Path)
			if di != dj {
				return di > dj
			}
			return strings.Compare(as[i].Entry.Path, as[j].Entry.Path) < 0
		})
	}
	deepestFirst(removes)
	deepestFirst(prunes)
	deepestFirst(dirMeta)
	p := &Plan{}
	for _, group := range [][]Action{removes, mkdirs, links, fetches, fileMeta, prunes, dirMeta} {
		p.Actions = append(p.Actions, group...)
	}
	return p, nil
}
