// Package preview tells what publishing a tree would move: the difference
// between the manifest of the generation the hosts hold and the manifest
// the tree would be published with, as `fanout-master publish --dry-run`
// prints it. Nothing is published and no host is asked anything.
package preview

import (
	"fmt"

	"github.com/fanout/fanout/internal/manifest"
)

// Change is one action a host that holds the base would take.
type Change struct {
	Op   string `json:"op"` // fetch, remove, mkdir, symlink, meta
	Path string `json:"path"`
	Size int64  `json:"size,omitempty"` // a fetched file's size
}

// Preview sums up a tree and what a host holding the base would change to
// hold it.
type Preview struct {
	// The tree as it would be published.
	Files    int   `json:"files"`
	Dirs     int   `json:"dirs"`
	Symlinks int   `json:"symlinks"`
	Bytes    int64 `json:"bytes"`
	// What a host that holds the base generation does: files to fetch
	// and their size, then what crosses the network: with chunk lists
	// (format 3) only the chunks the base lacks (each distinct chunk
	// once), else the whole files.
	Fetch      int   `json:"fetch"`
	FetchBytes int64 `json:"fetch_bytes"`
	MoveBytes  int64 `json:"move_bytes"`
	Remove     int   `json:"remove"`
	Mkdir      int   `json:"mkdir"`
	Symlink    int   `json:"symlink"`
	Meta       int   `json:"meta"`
	// Changes lists the actions in plan order.
	Changes []Change `json:"changes"`
}

// Empty reports whether a host holding the base changes nothing.
func (p Preview) Empty() bool { return len(p.Changes) == 0 }

// Compare previews next against base, the manifest the hosts hold (nil:
// they hold nothing of it, so everything moves). del is the publish's
// --delete: extra entries are removed only with it. Owners are not
// compared (each host maps them by its own policy); modes, times, sizes,
// link targets and hashes are. base and next must be of one format
// (hashes compare within one).
func Compare(base, next *manifest.Manifest, del bool) (Preview, error) {
	var p Preview
	for _, e := range next.Entries {
		switch e.Type {
		case manifest.File:
			p.Files++
			p.Bytes += e.Size
		case manifest.Dir:
			p.Dirs++
		case manifest.Symlink:
			p.Symlinks++
		}
	}
	if base == nil {
		base = &manifest.Manifest{}
	}
	plan, err := manifest.Diff(base, next, manifest.DiffOptions{Delete: del})
	if err != nil {
		return Preview{}, fmt.Errorf("compare with the held generation: %w", err)
	}
	have := map[string]bool{}
	for _, e := range base.Entries {
		for _, c := range e.Chunks {
			have[c.Hash] = true
		}
	}
	p.Changes = make([]Change, 0, len(plan.Actions))
	for _, a := range plan.Actions {
		c := Change{Op: a.Op.String(), Path: a.Entry.Path}
		switch a.Op {
		case manifest.OpFetch:
			p.Fetch++
			p.FetchBytes += a.Entry.Size
			c.Size = a.Entry.Size
			if len(a.Entry.Chunks) == 0 {
				p.MoveBytes += a.Entry.Size
			}
			for _, ch := range a.Entry.Chunks {
				if !have[ch.Hash] {
					have[ch.Hash] = true // fetched once, then built locally
					p.MoveBytes += ch.Len
				}
			}
		case manifest.OpRemove:
			p.Remove++
		case manifest.OpMkdir:
			p.Mkdir++
		case manifest.OpSymlink:
			p.Symlink++
		case manifest.OpMeta:
			p.Meta++
		}
		p.Changes = append(p.Changes, c)
	}
	return p, nil
}
