// Package manifest describes a task's tree (its entries and their content
// hashes), builds that description from disk, and diffs a local tree against
// it into a plan of actions.
//
// A manifest is the unit of trust in fanout: the master publishes the digest of
// its encoded form in Redis, every host verifies the manifest it downloads
// against that digest, and every file it downloads against the hash the
// manifest names.
package manifest

import (
	"fmt"
	"io/fs"
	"slices"

	"github.com/fanout/fanout/internal/chunk"
)

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
	// Hash identifies a file's content, in hex; empty for other types, and
	// empty in a local scan for files whose hash was not needed. In formats
	// 1 and 2 it is the BLAKE3-256 of the content. In format 3 it is that
	// too for a file of one chunk (Chunks empty), and the hash of the chunk
	// list for a file of two or more (see ChunkListHash): verifying every
	// chunk verifies the file. So the same content can have two Hashes, one
	// per format; compare Hashes of one format only.
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
	// Chunks lists, in format 3, the content-defined chunks of a file of
	// two or more chunks, in order, contiguous from offset 0 to Size. A
	// file of one chunk lists none: its chunk is the whole file, and its
	// Hash is that chunk's hash (see ChunkList).
	Chunks []Chunk `json:"chunks,omitempty"`

	// whole is the BLAKE3-256 of a file whose Hash is a chunk list hash,
	// when Build computed it (Options.WholeHash): the Hash WithoutChunks
	// gives it. Never encoded.
	whole string
}

// Chunk is a piece of a file's content in a format 3 manifest.
type Chunk struct {
	// Off is the offset of the chunk's first byte in the file, Len its
	// length.
	Off int64 `json:"off"`
	Len int64 `json:"len"`
	// Hash is the hex BLAKE3-256 of the chunk's bytes.
	Hash string `json:"hash"`
}

// Equal reports whether e and f are the same entry: every field a manifest
// encodes is equal, chunk lists included.
func (e Entry) Equal(f Entry) bool {
	return e.Path == f.Path && e.Type == f.Type && e.Mode == f.Mode && e.Size == f.Size &&
		e.MTime == f.MTime && e.Hash == f.Hash && e.Target == f.Target &&
		e.User == f.User && e.Group == f.Group && e.UID == f.UID && e.GID == f.GID &&
		slices.Equal(e.Chunks, f.Chunks)
}

// ChunkList returns the chunks of a file entry in any format: its Chunks,
// or, when it lists none, the one chunk that is the whole file, hashed by
// Hash. It returns nil for other types.
func (e Entry) ChunkList() []Chunk {
	if e.Type != File {
		return nil
	}
	if len(e.Chunks) > 0 {
		return e.Chunks
	}
	return []Chunk{{Off: 0, Len: e.Size, Hash: e.Hash}}
}

// Refs returns ChunkList as the refs a chunk.Verifier checks a stream
// against. A receiver of bytes first to last of chunks i to j verifies them
// with chunk.NewVerifier(refs[i:j+1]); a Verifier of all of them verifies
// the file, in any format.
func (e Entry) Refs() ([]chunk.Ref, error) {
	cs := e.ChunkList()
	refs := make([]chunk.Ref, len(cs))
	for i, c := range cs {
		sum, err := chunk.ParseSum(c.Hash)
		if err != nil {
			return nil, fmt.Errorf("%s: chunk %d: %w", e.Path, i, err)
		}
		refs[i] = chunk.Ref{Len: c.Len, Sum: sum}
	}
	return refs, nil
}

// HasOwner reports whether e carries its owner and group.
func (e Entry) HasOwner() bool { return e.UID.ok && e.GID.ok }

// Manifest is a task tree: its entries in tree order (see Less), the root
// entry "." first.
type Manifest struct {
	// Chunking is set in format 3 only: the parameters files were cut into
	// chunks with. A host that hashes its own files to compare them with
	// this manifest cuts them with the same (see FillHashes).
	Chunking *chunk.Params `json:"chunking,omitempty"`
	// Exclude, in format 4 only, lists the exclude patterns (rsync's
	// rules, see package exclude) the tree was built with: no entry
	// matches them, and a host neither fetches, compares nor deletes a
	// path they match (see Options.Exclude and DiffOptions.Protected).
	Exclude []string `json:"exclude,omitempty"`
	Entries []Entry  `json:"entries"`
}

// TempPrefix starts the name of every temporary file fanout writes while a
// transfer is in flight. Scans never report such files as tree entries, and a
// minion removes stale ones left by a crash before it diffs its tree.
const TempPrefix = ".fanout-tmp-"

// IsTemp reports whether a base name is one of fanout's temporary files.
func IsTemp(name string) bool {
	return len(name) > len(TempPrefix) && name[:len(TempPrefix)] == TempPrefix
}
