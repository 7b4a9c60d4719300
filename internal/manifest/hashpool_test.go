package manifest

import (
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCacheChunkLists checks that a format 3 build reads no file the cache
// holds, that lists survive Save and LoadCache, and that a fanout that
// predates chunk lists still reads its whole-content hashes from the file.
func TestCacheChunkLists(t *testing.T) {
	root, _ := chunkTree(t, sizes3)
	ctx := context.Background()
	p := tiny
	c := NewCache()
	m, err := Build(ctx, root, Options{Hash: true, Chunking: &p, Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	// Cached: the three files longer than the minimum chunk have lists;
	// the three of one chunk their whole-content hash, which is that
	// chunk's hash. The two of several chunks have none: WholeHash is off.
	if c.Len() != 6 {
		t.Errorf("cache holds %d hashes and lists, want 6", c.Len())
	}
	// Fake lists prove the next build reads the cache, not the files.
	big := filepath.Join(root, "b", "big")
	fi, _ := os.Lstat(big)
	e, _ := m.Lookup("b/big")
	fake := slices.Clone(e.Chunks)
	fake[0].Hash = strings.Repeat("0f", 32)
	fakeHash, _ := ChunkListHash(fake)
	c.PutChunks(big, fi, tiny, fakeHash, fake)
	m2, err := Build(ctx, root, Options{Hash: true, Chunking: &p, Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	if e2, _ := m2.Lookup("b/big"); e2.Hash != fakeHash || !slices.Equal(e2.Chunks, fake) {
		t.Error("a format 3 build hashed a file the cache holds")
	}
	// Other parameters miss.
	q := tiny
	q.Max *= 2
	if _, _, ok := c.GetChunks(big, fi, q); ok {
		t.Error("a list cut with other parameters was a hit")
	}

	cp := filepath.Join(t.TempDir(), "cache")
	if err := c.Save(cp); err != nil {
		t.Fatal(err)
	}
	c2, err := LoadCache(cp)
	if err != nil || c2.Len() != c.Len() {
		t.Fatalf("LoadCache: %d entries, want %d: %v", c2.Len(), c.Len(), err)
	}
	if h, cs, ok := c2.GetChunks(big, fi, tiny); !ok || h != fakeHash || !slices.Equal(cs, fake) {
		t.Error("chunk list lost by Save and LoadCache")
	}
	// An older fanout decodes the first value only.
	b, _ := os.ReadFile(cp)
	var old map[string]cacheEntry
	if err := gob.NewDecoder(bytes.NewReader(b[len(cacheMagic):])).Decode(&old); err != nil || len(old) != 3 {
		t.Errorf("the whole-hash map as an older fanout reads it: %d entries, %v", len(old), err)
	}
	// A cache saved by an older fanout (no second value) loads.
	var ob bytes.Buffer
	ob.WriteString(cacheMagic)
	gob.NewEncoder(&ob).Encode(old)
	if err := os.WriteFile(cp, ob.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if c3, err := LoadCache(cp); err != nil || c3.Len() != 3 {
		t.Errorf("LoadCache of an older cache: %v", err)
	}
}

// TestCacheWholeHashLater checks that a file cached without its
// whole-content hash is read again when one is asked for, and that the
// hash is right.
func TestCacheWholeHashLater(t *testing.T) {
	root, _ := chunkTree(t, sizes3)
	ctx := context.Background()
	p := tiny
	c := NewCache()
	if _, err := Build(ctx, root, Options{Hash: true, Chunking: &p, Cache: c}); err != nil {
		t.Fatal(err)
	}
	m, err := Build(ctx, root, Options{Hash: true, Chunking: &p, Cache: c, WholeHash: true})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Build(ctx, root, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.EncodeFormat(Format2)
	want, _ := m2.Encode()
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("format 2 of a build with cached lists: %v", err)
	}
	// And now both are cached.
	big := filepath.Join(root, "b", "big")
	fi, _ := os.Lstat(big)
	e2, _ := m2.Lookup("b/big")
	if h, ok := c.Get(big, fi); !ok || h != e2.Hash {
		t.Errorf("whole-content hash not cached: %.12s, %v", h, ok)
	}
	if h, ok := cached(c, big, fi, &p, true); !ok || h.whole != e2.Hash {
		t.Error("a build with WholeHash would read the file again")
	}
}

// TestFillHashesFormat3 checks that a minion's scan, made in format 2 with
// hashes from its cache, is compared with a format 3 manifest in format 3.
func TestFillHashesFormat3(t *testing.T) {
	src, _ := chunkTree(t, sizes3)
	dst, _ := chunkTree(t, sizes3) // the same names, sizes and content
	ctx := context.Background()
	p := tiny
	remote, err := Build(ctx, src, Options{Hash: true, Chunking: &p})
	if err != nil {
		t.Fatal(err)
	}
	cache := NewCache()
	// An earlier verification in format 2 filled the cache.
	if _, err := Build(ctx, dst, Options{Hash: true, Cache: cache}); err != nil {
		t.Fatal(err)
	}
	local, err := Build(ctx, dst, Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := local.Lookup("b/big"); e.Hash == "" {
		t.Fatal("test setup: the scan did not take format 2 hashes from the cache")
	}
	if err := FillHashes(ctx, dst, local, remote, cache); err != nil {
		t.Fatal(err)
	}
	if local.Format() != Format3 {
		t.Errorf("local scan in format %d after FillHashes", local.Format())
	}
	for _, r := range remote.Entries {
		l, _ := local.Lookup(r.Path)
		if l.Hash != r.Hash || !slices.Equal(l.Chunks, r.Chunks) {
			t.Errorf("%s: local hash %.12s (%d chunks), remote %.12s (%d)", r.Path, l.Hash, len(l.Chunks), r.Hash, len(r.Chunks))
		}
	}
	// Modes and times may differ between the trees; content does not.
	if n := mustDiff(t, local, remote, DiffOptions{}).Count(OpFetch); n != 0 {
		t.Errorf("%d fetches between trees of the same content", n)
	}
	// A byte changed in the middle of a big file, size kept: fetched.
	big := filepath.Join(dst, "b", "big")
	data, _ := os.ReadFile(big)
	data[len(data)/2] ^= 1
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	local, _ = Build(ctx, dst, Options{Cache: cache, Chunking: &p})
	if err := FillHashes(ctx, dst, local, remote, cache); err != nil {
		t.Fatal(err)
	}
	fetches := mustDiff(t, local, remote, DiffOptions{}).Entries(OpFetch)
	if len(fetches) != 1 || fetches[0].Path != "b/big" {
		t.Fatalf("fetches %v, want b/big only", fetches)
	}
	l, _ := local.Lookup("b/big")
	r, _ := remote.Lookup("b/big")
	differ := 0
	for i := range l.Chunks {
		if i < len(r.Chunks) && l.Chunks[i] != r.Chunks[i] {
			differ++
		}
	}
	if len(l.Chunks) != len(r.Chunks) || differ != 1 {
		t.Errorf("one byte changed: %d of %d chunks differ, want 1", differ, len(r.Chunks))
	}
	// And back to a format 2 remote: the scan's format 3 hashes go.
	remote2, _ := Build(ctx, src, Options{Hash: true})
	if err := FillHashes(ctx, dst, local, remote2, cache); err != nil {
		t.Fatal(err)
	}
	if local.Format() == Format3 {
		t.Error("local scan still in format 3")
	}
	if n := mustDiff(t, local, remote2, DiffOptions{}).Count(OpFetch); n != 1 {
		t.Errorf("%d fetches against format 2, want 1", n)
	}
}

// TestHashErrors checks that Build reports the error of a file that cannot
// be hashed, not the cancellation that stopped the others, and leaves no
// goroutine behind.
func TestHashErrors(t *testing.T) {
	root, _ := chunkTree(t, sizes3)
	before := runtime.NumGoroutine()
	p := tiny
	for _, opts := range []Options{{Hash: true}, {Hash: true, Chunking: &p, WholeHash: true}} {
		pool := newHashPool(context.Background(), opts.Chunking, opts.WholeHash, nil)
		// Each file with its own listing, so the missing one is the only
		// error whichever worker reports first (with big's listing for
		// all, a/several also "shrank", and could be reported instead).
		big, several := filepath.Join(root, "b", "big"), filepath.Join(root, "a", "several")
		bigFI, _ := os.Lstat(big)
		severalFI, _ := os.Lstat(several)
		missing := filepath.Join(root, "missing")
		for _, j := range []*hashJob{{osPath: big, fi: bigFI}, {osPath: missing, fi: bigFI}, {osPath: several, fi: severalFI}} {
			if err := pool.submit(j); err != nil {
				break
			}
		}
		if err := pool.wait(); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("pool error %v, want one naming %s", err, missing)
		}
		// A file shorter than the walk saw.
		w := newHashWorker(context.Background(), opts.Chunking, false)
		if _, err := w.hash(filepath.Join(root, "small"), 701); err == nil || !strings.Contains(err.Error(), "shrank") {
			t.Errorf("hash of a file shorter than listed: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Build(ctx, root, opts); !errors.Is(err, context.Canceled) {
			t.Errorf("Build with a cancelled context: %v", err)
		}
	}
	for range 100 {
		if runtime.NumGoroutine() <= before {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after the builds, %d before", n, before)
	}
}
