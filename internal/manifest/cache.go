package manifest

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/statedir"
)

// racyWindow is how recent a file's mtime may be for its hash to be cached:
// a file written within the same mtime tick as our read could change again
// without its size or mtime changing ("racily clean", as git calls it).
const racyWindow = 2 * time.Second

// Cache remembers file hashes by OS path, valid while the file's size,
// modification time, inode and inode change time (ctime) are unchanged, so
// a large tree is not rehashed on every poll. Any write, chmod, chown or
// rename sets a file's ctime to the current time, and nothing can set it
// back, so a hit means the file was not touched since it was hashed, even by
// an edit that kept its size and restored its mtime (touch -r). It is safe
// for concurrent use.
//
// It holds a file's whole-content hash (formats 1 and 2: Get, Put) and its
// chunk list (format 3: GetChunks, PutChunks), each when known. A file no
// longer than the minimum chunk size is one chunk whose hash is its
// whole-content hash, so for a tree of small files the chunk lists cost
// nothing; a longer file's list is kept packed, 32 bytes and a varint
// length a chunk (about 36 KiB for 1 GiB at the default sizes).
type Cache struct {
	mu      sync.Mutex
	entries map[string]cacheEntry
	chunks  map[string]chunkEntry
	now     func() time.Time
}

// chunkEntry is the chunk list of a file, under the same key as
// cacheEntry.
type chunkEntry struct {
	Size   int64
	MTime  int64
	Ino    uint64
	CTime  int64
	Params chunk.Params
	// List is the packed chunk list: for each chunk, its length as a
	// uvarint, then its 32-byte hash.
	List []byte
}

type cacheEntry struct {
	Size  int64
	MTime int64
	Ino   uint64
	CTime int64 // Unix nanoseconds
	Hash  string
}

// cacheMagic starts a saved cache; the number after it is the format's
// version. Version 1 files (before ctime was part of the key) have no
// header: they are gob maps of cacheEntryV1. Version 2 is a gob map of
// cacheEntry, then, since chunk lists were cached, a gob map of chunkEntry:
// a fanout that predates them decodes the first value only and keeps its
// whole-content hashes, so the second needs no new version.
const cacheMagic = "fanout-hash-cache 2\n"

// cacheEntryV1 is an entry of a version 1 cache file, kept to tell one from
// a corrupt file.
type cacheEntryV1 struct {
	Size  int64
	MTime int64
	Ino   uint64
	Hash  string
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{entries: map[string]cacheEntry{}, chunks: map[string]chunkEntry{}, now: time.Now}
}

// LoadCache reads a cache saved by Save. A missing file, or one in the
// format of an older fanout (whose key lacks ctime, so its hits cannot be
// trusted), gives an empty cache: the files are hashed again. A corrupt one
// is an error naming the file.
func LoadCache(path string) (*Cache, error) {
	c := NewCache()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open hash cache: %w", err)
	}
	rest, ok := bytes.CutPrefix(b, []byte(cacheMagic))
	if !ok {
		var old map[string]cacheEntryV1
		if gob.NewDecoder(bytes.NewReader(b)).Decode(&old) == nil {
			return c, nil // version 1: discarded
		}
		return nil, fmt.Errorf("hash cache %s is corrupt (no header): delete it, it is rebuilt by hashing", path)
	}
	dec := gob.NewDecoder(bytes.NewReader(rest))
	if err := dec.Decode(&c.entries); err != nil {
		return nil, fmt.Errorf("hash cache %s is corrupt (%v): delete it, it is rebuilt by hashing", path, err)
	}
	if err := dec.Decode(&c.chunks); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("hash cache %s is corrupt (%v): delete it, it is rebuilt by hashing", path, err)
	}
	if c.chunks == nil {
		c.chunks = map[string]chunkEntry{}
	}
	return c, nil
}

// Save writes the cache to path atomically and durably.
func (c *Cache) Save(path string) error {
	var b bytes.Buffer
	b.WriteString(cacheMagic)
	c.mu.Lock()
	enc := gob.NewEncoder(&b)
	err := enc.Encode(c.entries)
	if err == nil {
		err = enc.Encode(c.chunks)
	}
	c.mu.Unlock()
	if err == nil {
		err = statedir.WriteFile(path, b.Bytes(), TempPrefix)
	}
	if err != nil {
		return fmt.Errorf("save hash cache %s: %w", path, err)
	}
	return nil
}

// key returns what the cache keys a file's hash on, from fi: its size,
// mtime, inode and ctime.
func key(fi fs.FileInfo) cacheEntry {
	e := cacheEntry{Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Ino = st.Ino
		e.CTime = st.Ctim.Nano()
	}
	return e
}

// Get returns the cached hash of the file at path if fi still matches.
func (c *Cache) Get(path string, fi fs.FileInfo) (string, bool) {
	k := key(fi)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[path]
	if !ok || e.Size != k.Size || e.MTime != k.MTime || e.Ino != k.Ino || e.CTime != k.CTime {
		return "", false
	}
	return e.Hash, true
}

// Put records the hash of the file at path as described by fi, unless its
// mtime is too recent to trust (see racyWindow).
func (c *Cache) Put(path string, fi fs.FileInfo, hash string) {
	if c.now().Sub(fi.ModTime()) < racyWindow {
		return
	}
	k := key(fi)
	k.Hash = hash
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[path] = k
}

// Rekey moves the hashes cached for the file at path to fi's ctime when
// only the ctime changed, and changed at or after after: what a link or
// an unlink of another name of the same inode does (the releases of
// package minion share inodes between trees, and pruning one moves the
// ctime of the others). The size, mtime and inode must be the cached
// ones, so a write since, which moves the mtime, is not carried over. It
// reports whether it moved anything.
func (c *Cache) Rekey(path string, fi fs.FileInfo, after time.Time) bool {
	k := key(fi)
	// The kernel stamps ctime from a coarse clock, a tick behind the
	// clock time.Now reads.
	if k.CTime < after.Add(-ctimeSlack).UnixNano() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	moved := false
	if e, ok := c.entries[path]; ok && e.Size == k.Size && e.MTime == k.MTime && e.Ino == k.Ino && e.CTime != k.CTime {
		e.CTime = k.CTime
		c.entries[path] = e
		moved = true
	}
	if e, ok := c.chunks[path]; ok && e.Size == k.Size && e.MTime == k.MTime && e.Ino == k.Ino && e.CTime != k.CTime {
		e.CTime = k.CTime
		c.chunks[path] = e
		moved = true
	}
	return moved
}

// ctimeSlack is how far behind the clock a ctime the kernel stamps may be
// (its coarse clock ticks at most every 10 ms).
const ctimeSlack = 20 * time.Millisecond

// GetChunks returns the format 3 Hash and chunk list (nil for a file of
// one chunk) of the file at path, cut with p, if fi still matches what the
// cache holds.
func (c *Cache) GetChunks(path string, fi fs.FileInfo, p chunk.Params) (hash string, chunks []Chunk, ok bool) {
	h, ok := c.getChunks(path, fi, p)
	return h.hash, h.chunks, ok
}

// getChunks returns the format 3 fileHash of the file at path, with its
// whole-content hash when the cache holds that too.
func (c *Cache) getChunks(path string, fi fs.FileInfo, p chunk.Params) (fileHash, bool) {
	whole, wholeOK := c.Get(path, fi)
	if fi.Size() <= int64(p.Min) {
		// One chunk: the whole-content hash is the chunk's.
		return fileHash{hash: whole}, wholeOK
	}
	k := key(fi)
	c.mu.Lock()
	e, ok := c.chunks[path]
	c.mu.Unlock()
	if !ok || e.Size != k.Size || e.MTime != k.MTime || e.Ino != k.Ino || e.CTime != k.CTime || e.Params != p {
		return fileHash{}, false
	}
	lens, sums, err := unpackChunks(e.List)
	var total int64
	for _, n := range lens {
		total += n
	}
	if err != nil || len(sums) == 0 || total != k.Size {
		return fileHash{}, false
	}
	if !wholeOK {
		whole = ""
	}
	if len(sums) == 1 {
		whole = sums[0].String()
	}
	return chunked(lens, sums, whole), true
}

// PutChunks records the format 3 Hash and chunk list of the file at path as
// described by fi, cut with p, unless its mtime is too recent to trust (see
// racyWindow): what GetChunks returns. chunks is nil for a file of one
// chunk, whose hash is then its whole-content hash and is recorded as such
// (Get returns it too).
func (c *Cache) PutChunks(path string, fi fs.FileInfo, p chunk.Params, hash string, chunks []Chunk) {
	c.put(path, fi, &p, fileHash{hash: hash, chunks: chunks})
}

// put records what hashing the file at path gave: its whole-content hash
// when known and, when p is set, its chunk list. The list of a file no
// longer than p.Min is not kept: it is one chunk by its size alone.
func (c *Cache) put(path string, fi fs.FileInfo, p *chunk.Params, h fileHash) {
	list := h.chunks
	switch {
	case p == nil:
		c.Put(path, fi, h.hash)
		return
	case len(h.chunks) == 0:
		c.Put(path, fi, h.hash) // one chunk: its hash is the content's
		if fi.Size() <= int64(p.Min) {
			return
		}
		list = []Chunk{{Len: fi.Size(), Hash: h.hash}}
	case h.whole != "":
		c.Put(path, fi, h.whole)
	}
	if c.now().Sub(fi.ModTime()) < racyWindow {
		return
	}
	packed, err := packChunks(list)
	if err != nil {
		return // not hex: nothing worth keeping
	}
	k := key(fi)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks[path] = chunkEntry{Size: k.Size, MTime: k.MTime, Ino: k.Ino, CTime: k.CTime, Params: *p, List: packed}
}

// packChunks packs a chunk list as chunkEntry.List.
func packChunks(cs []Chunk) ([]byte, error) {
	b := make([]byte, 0, len(cs)*(binary.MaxVarintLen32+len(chunk.Sum{})))
	for _, c := range cs {
		sum, err := chunk.ParseSum(c.Hash)
		if err != nil {
			return nil, err
		}
		b = binary.AppendUvarint(b, uint64(c.Len))
		b = append(b, sum[:]...)
	}
	return b, nil
}

// unpackChunks is the inverse of packChunks.
func unpackChunks(b []byte) (lens []int64, sums []chunk.Sum, err error) {
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || len(b)-k < len(chunk.Sum{}) || n > chunk.MaxSize {
			return nil, nil, errors.New("corrupt chunk list")
		}
		lens = append(lens, int64(n))
		sums = append(sums, chunk.Sum(b[k:k+len(chunk.Sum{})]))
		b = b[k+len(chunk.Sum{}):]
	}
	return lens, sums, nil
}

// Len reports how many hashes and chunk lists the cache holds.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries) + len(c.chunks)
}

// Prune drops the hashes of every path for which keep returns false, for
// example files that no longer exist, so a saved cache does not grow
// forever.
func (c *Cache) Prune(keep func(path string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p := range c.entries {
		if !keep(p) {
			delete(c.entries, p)
		}
	}
	for p := range c.chunks {
		if !keep(p) {
			delete(c.chunks, p)
		}
	}
}
