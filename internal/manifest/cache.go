package manifest

import (
	"encoding/gob"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// racyWindow is how recent a file's mtime may be for its hash to be cached:
// a file written within the same mtime tick as our read could change again
// without its size or mtime changing ("racily clean", as git calls it).
const racyWindow = 2 * time.Second

// Cache remembers file hashes by OS path, valid while the file's size,
// modification time and inode are unchanged, so a large tree is not rehashed
// on every poll. It is safe for concurrent use.
type Cache struct {
	mu      sync.Mutex
	entries map[string]cacheEntry
	now     func() time.Time
}

type cacheEntry struct {
	Size  int64
	MTime int64
	Ino   uint64
	Hash  string
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{entries: map[string]cacheEntry{}, now: time.Now}
}

// LoadCache reads a cache saved by Save. A missing file gives an empty
// cache; a corrupt one is an error naming the file.
func LoadCache(path string) (*Cache, error) {
	c := NewCache()
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open hash cache: %w", err)
	}
	defer f.Close()
	if err := gob.NewDecoder(f).Decode(&c.entries); err != nil {
		return nil, fmt.Errorf("hash cache %s is corrupt (%v): delete it, it is rebuilt by hashing", path, err)
	}
	return c, nil
}

// Save writes the cache to path atomically.
func (c *Cache) Save(path string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, err := os.CreateTemp(filepath.Dir(path), TempPrefix+"cache-*")
	if err != nil {
		return fmt.Errorf("save hash cache: %w", err)
	}
	tmp := f.Name()
	err = gob.NewEncoder(f).Encode(c.entries)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save hash cache %s: %w", path, err)
	}
	return nil
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// Get returns the cached hash of the file at path if fi still matches.
func (c *Cache) Get(path string, fi fs.FileInfo) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[path]
	if !ok || e.Size != fi.Size() || e.MTime != fi.ModTime().UnixNano() || e.Ino != inode(fi) {
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
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[path] = cacheEntry{Size: fi.Size(), MTime: fi.ModTime().UnixNano(), Ino: inode(fi), Hash: hash}
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
