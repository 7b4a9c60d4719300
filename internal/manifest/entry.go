// Package manifest describes a task's tree (its entries and their content
// hashes), builds that description from disk, and diffs a local tree against
// it into a plan of actions.
//
// A manifest is the unit of trust in fanout: the master publishes the digest of
// its encoded form in Redis, every host verifies the manifest it downloads
// against that digest, and every file it downloads against the hash the
// manifest names.
package manifest

import "io/fs"

// Type is the kind of a tree entry.
type Type string

// The entry types a manifest can hold. Special files (devices, sockets, fifos)
// are never part of a manifest.
const (
	Dir     Type = "dir"
	File    Type = "file"
	Symlink Type = "symlink"
)

// Entry is one path of a task tree.
type Entry struct {
	// Path is slash-separated and relative to the task root; "." is the task
	// root itself (a directory, or the single file of a file task).
	Path string `json:"path"`
	Type Type   `json:"type"`
	// Mode holds the permission bits only (fs.ModePerm plus setuid, setgid
	// and sticky), never the type bits.
	Mode fs.FileMode `json:"mode"`
	// Size is the length of a file in bytes; zero for other types.
	Size int64 `json:"size,omitempty"`
	// MTime is the modification time in Unix nanoseconds.
	MTime int64 `json:"mtime"`
	// Hash is the hex BLAKE3-256 of a file's content; empty for other types,
	// and empty in a local scan for files whose hash was not needed.
	Hash string `json:"hash,omitempty"`
	// Target is a symlink's target text, never resolved.
	Target string `json:"target,omitempty"`
	// User and Group name the entry's owner and group on the host that built
	// the manifest; either is empty when its id has no name there. They are
	// set only together with UID and GID.
	User  string `json:"user,omitempty"`
	Group string `json:"group,omitempty"`
	// UID and GID are the numeric owner and group. Both are carried or
	// neither: a manifest in format 1 carries no owners (see Format1), and
	// an entry without one is applied as the local user, with its setuid
	// and setgid bits cleared (see OwnerPolicy).
	UID OwnerID `json:"uid,omitzero"`
	GID OwnerID `json:"gid,omitzero"`
}

// HasOwner reports whether e carries its owner and group.
func (e Entry) HasOwner() bool { return e.UID.ok && e.GID.ok }

// Manifest is a task tree: its entries in tree order (see Less), the root
// entry "." first.
type Manifest struct {
	Entries []Entry `json:"entries"`
}

// TempPrefix starts the name of every temporary file fanout writes while a
// transfer is in flight. Scans never report such files as tree entries, and a
// minion removes stale ones left by a crash before it diffs its tree.
const TempPrefix = ".fanout-tmp-"

// IsTemp reports whether a base name is one of fanout's temporary files.
func IsTemp(name string) bool {
	return len(name) > len(TempPrefix) && name[:len(TempPrefix)] == TempPrefix
}
