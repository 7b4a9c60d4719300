package manifest

import (
	"context"
	"encoding/gob"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCacheKeyedOnInode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	old := time.Now().Add(-time.Hour)
	mustWrite(t, p, "one", 0o644, old)
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache()
	c.Put(p, fi, "cached")
	if h, ok := c.Get(p, fi); !ok || h != "cached" {
		t.Fatalf("Get after Put = %q, %v", h, ok)
	}
	// Same size and mtime, new inode: replaced by rename, as a transfer does.
	tmp := filepath.Join(dir, "g")
	mustWrite(t, tmp, "two", 0o644, old)
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	fi2, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi2.Size() != fi.Size() || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Fatal("test setup: size or mtime differ")
	}
	if h, ok := c.Get(p, fi2); ok {
		t.Errorf("Get of a replaced file with equal size and mtime = %q, want a miss", h)
	}
}

func TestCacheRacyFilesNotStoredByBuild(t *testing.T) {
	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "old"), "settled", 0o644, time.Now().Add(-time.Minute))
	if err := os.WriteFile(filepath.Join(root, "fresh"), []byte("just written"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := NewCache()
	m, err := Build(context.Background(), root, Options{Hash: true, Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	if c.Len() != 1 {
		t.Fatalf("cache holds %d hashes, want only the settled file's", c.Len())
	}
	fresh, _ := m.Lookup("fresh")
	if want, _ := HashFile(context.Background(), filepath.Join(root, "fresh")); fresh.Hash != want {
		t.Errorf("fresh file hash %q, want %q", fresh.Hash, want)
	}
	fi, _ := os.Lstat(filepath.Join(root, "old"))
	if h, ok := c.Get(filepath.Join(root, "old"), fi); !ok || len(h) != 64 {
		t.Errorf("settled file not cached: %q %v", h, ok)
	}
}

func TestCachePruneAndSave(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	c := NewCache()
	var paths []string
	for i := range 4 {
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		mustWrite(t, p, "x", 0o644, old)
		fi, _ := os.Lstat(p)
		c.Put(p, fi, strings.Repeat(fmt.Sprint(i), 64))
		paths = append(paths, p)
	}
	c.Prune(func(p string) bool { return p != paths[1] && p != paths[3] })
	if c.Len() != 2 {
		t.Fatalf("after Prune Len = %d, want 2", c.Len())
	}
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(state, "hashes")
	for range 2 { // the second Save replaces the first
		if err := c.Save(cp); err != nil {
			t.Fatal(err)
		}
	}
	if des, _ := os.ReadDir(state); len(des) != 1 {
		t.Errorf("Save left %d files in its directory, want 1", len(des))
	}
	c2, err := LoadCache(cp)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		fi, _ := os.Lstat(p)
		h, ok := c2.Get(p, fi)
		if want := i == 0 || i == 2; ok != want || ok && h != strings.Repeat(fmt.Sprint(i), 64) {
			t.Errorf("loaded Get(%s) = %q, %v", p, h, ok)
		}
	}
	if err := c.Save(filepath.Join(dir, "missing", "hashes")); err == nil {
		t.Error("Save into a missing directory succeeded")
	}
	if err := os.WriteFile(cp, []byte("\x00\x01not a cache"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCache(cp); err == nil || !strings.Contains(err.Error(), cp) || !strings.Contains(err.Error(), "delete") {
		t.Errorf("LoadCache of a corrupt file = %v, want an error naming it and saying it can be deleted", err)
	}
}

func TestCacheConcurrent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	mustWrite(t, p, "x", 0o644, time.Now().Add(-time.Hour))
	fi, _ := os.Lstat(p)
	c := NewCache()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 100 {
				key := fmt.Sprintf("%s-%d-%d", p, i, j)
				c.Put(key, fi, "h")
				if _, ok := c.Get(key, fi); !ok {
					t.Errorf("Get(%s) missed", key)
				}
			}
		})
	}
	wg.Wait()
	if c.Len() != 800 {
		t.Errorf("Len = %d, want 800", c.Len())
	}
}

// An edit that keeps the size and restores the mtime (touch -r) leaves the
// size, mtime and inode as they were: only the ctime tells.
func TestCacheMissesSameSizeSameMTimeRewrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	old := time.Now().Add(-time.Hour)
	mustWrite(t, p, "one", 0o644, old)
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache()
	c.Put(p, fi, "hash of one")
	if _, ok := c.Get(p, fi); !ok {
		t.Fatal("Get after Put missed")
	}
	// The ctime has a clock tick's resolution: rewrite until it moved (a
	// deadlock guard bounds the loop, not a speed limit).
	var fi2 os.FileInfo
	for deadline := time.Now().Add(10 * time.Second); ; {
		f, err := os.OpenFile(p, os.O_WRONLY, 0) // in place: same inode
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("two"), 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		if fi2, err = os.Lstat(p); err != nil {
			t.Fatal(err)
		}
		if key(fi2).CTime != key(fi).CTime {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ctime never changed")
		}
		time.Sleep(time.Millisecond)
	}
	if k, k2 := key(fi), key(fi2); k.Size != k2.Size || k.MTime != k2.MTime || k.Ino != k2.Ino {
		t.Fatalf("test setup: size, mtime or inode differ: %+v, %+v", k, k2)
	}
	if h, ok := c.Get(p, fi2); ok {
		t.Errorf("Get of a rewritten file with equal size, mtime and inode = %q, want a miss", h)
	}
}

// A cache saved by a fanout before ctime was in the key is discarded, not
// an error: start-up never fails over it.
func TestLoadCacheOldFormat(t *testing.T) {
	dir := t.TempDir()
	cp := filepath.Join(dir, "hashes")
	f, err := os.Create(cp)
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]cacheEntryV1{"/data/f": {Size: 3, MTime: 1, Ino: 7, Hash: strings.Repeat("a", 64)}}
	if err := gob.NewEncoder(f).Encode(old); err != nil {
		t.Fatal(err)
	}
	f.Close()
	c, err := LoadCache(cp)
	if err != nil || c.Len() != 0 {
		t.Fatalf("LoadCache of a version 1 file = %v entries, %v; want an empty cache", c, err)
	}
	// Saved again, it is the new format, and loads.
	p := filepath.Join(dir, "f")
	mustWrite(t, p, "x", 0o644, time.Now().Add(-time.Hour))
	fi, _ := os.Lstat(p)
	c.Put(p, fi, "h")
	if err := c.Save(cp); err != nil {
		t.Fatal(err)
	}
	c2, err := LoadCache(cp)
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := c2.Get(p, fi); !ok || h != "h" {
		t.Errorf("reloaded Get = %q, %v", h, ok)
	}
}

// TestCacheRekey: a link of another name moves only the ctime, and Rekey
// carries the cached hash over; a write since is not carried over, nor a
// ctime older than the given time.
func TestCacheRekey(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	c := NewCache()
	fi, _ := os.Lstat(p)
	c.Put(p, fi, "h")
	time.Sleep(10 * time.Millisecond)
	before := time.Now()
	if err := os.Link(p, filepath.Join(dir, "g")); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Lstat(p)
	if _, ok := c.Get(p, fi2); ok {
		t.Fatal("a link did not move the ctime: the test proves nothing")
	}
	if c.Rekey(p, fi2, time.Now().Add(time.Hour)) {
		t.Fatal("rekeyed a ctime older than the given time")
	}
	if !c.Rekey(p, fi2, before) {
		t.Fatal("did not rekey a ctime moved by a link")
	}
	if h, ok := c.Get(p, fi2); !ok || h != "h" {
		t.Fatalf("after rekey: %q %v", h, ok)
	}
	if err := os.WriteFile(p, []byte("CONTENT"), 0o644); err != nil {
		t.Fatal(err)
	}
	fi3, _ := os.Lstat(p)
	if c.Rekey(p, fi3, before) {
		t.Fatal("rekeyed a file written since")
	}
}
