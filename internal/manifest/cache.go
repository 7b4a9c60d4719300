package manifest

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

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
type Cache struct {
	mu      sync.Mutex
	entries map[string]cacheEntry
	now     func() time.Time
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
// header: they are gob maps of cacheEntryV1.
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
	return &Cache{entries: map[string]cacheEntry{}, now: time.Now}
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
	if err := gob.NewDecoder(bytes.NewReader(rest)).Decode(&c.entries); err != nil {
		return nil, fmt.Errorf("hash cache %s is corrupt (%v): delete it, it is rebuilt by hashing", path, err)
	}
	return c, nil
}

// Save writes the cache to path atomically and durably.
func (c *Cache) Save(path string) error {
	var b bytes.Buffer
	b.WriteString(cacheMagic)
	c.mu.Lock()
	err := gob.NewEncoder(&b).Encode(c.entries)
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

// Len reports how many hashes the cache holds.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
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
}
