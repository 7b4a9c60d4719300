package apply

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
)

// chunkedEntry returns a format 3 entry for data at p, cut with small
// chunks, so a few hundred KiB make many.
func chunkedEntry(t *testing.T, p string, data []byte) manifest.Entry {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	hash, cs, err := manifest.HashChunks(context.Background(), src, chunk.Params{Min: chunk.MinSize, Avg: 16 << 10, Max: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) < 8 {
		t.Fatalf("only %d chunks: the test needs several", len(cs))
	}
	e := fileEntry(p, data, 0o644)
	e.Hash, e.Chunks = hash, cs
	return e
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// testAssembler builds a file from data, as the minion's assembler does:
// it keeps every chunk already in f whose bytes hash right (reporting
// which in kept), and writes the others. With stopAfter > 0 it writes that
// many chunks, then waits for ctx and returns its error, as a pull
// interrupted mid-file does.
type testAssembler struct {
	data      []byte
	stopAfter int
	// landed, when set, is closed once stopAfter chunks are written.
	landed chan struct{}
	err    error // returned instead of waiting (a failure that is no interruption)

	mu   sync.Mutex
	kept []int
}

func (a *testAssembler) Assemble(ctx context.Context, e manifest.Entry, f *os.File, sink ChunkSink) error {
	landed := func(i int) {
		if sink != nil {
			sink.Landed(i)
		}
	}
	written := 0
	for i, c := range e.Chunks {
		b := make([]byte, c.Len)
		if _, err := f.ReadAt(b, c.Off); err == nil && chunk.Hash(b).String() == c.Hash {
			a.mu.Lock()
			a.kept = append(a.kept, i)
			a.mu.Unlock()
			landed(i)
			continue
		}
		if a.stopAfter > 0 && written == a.stopAfter {
			close(a.landed)
			if a.err != nil {
				return a.err
			}
			<-ctx.Done()
			return ctx.Err()
		}
		if _, err := f.WriteAt(a.data[c.Off:c.Off+c.Len], c.Off); err != nil {
			return err
		}
		written++
		landed(i)
	}
	return nil
}

// A file built by an Assembler whose Apply is interrupted keeps its part
// file, under the name PartPath gives and readable by its owner only; the
// next Apply of the same content reopens it, its Assembler keeps the
// chunks written, and the file lands whole. The old file is intact until
// then.
func TestPartFileSurvivesInterruption(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	if err := os.MkdirAll(filepath.Join(root, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(512<<10, 1)
	e := chunkedEntry(t, "d/big", data)
	writeFile(t, filepath.Join(root, "d", "big"), "the old version", 0o644)
	p := plan(act(manifest.OpFetch, e))
	part := PartPath(root, e)
	if filepath.Dir(part) != filepath.Join(root, "d") || !manifest.IsTemp(filepath.Base(part)) {
		t.Fatalf("PartPath = %s: want a temporary name in the file's directory", part)
	}

	first := &testAssembler{data: data, stopAfter: len(e.Chunks) / 2, landed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-first.landed
		cancel()
	}()
	_, err := Apply(ctx, root, p, Options{Fetcher: newFetcher(nil), Assembler: first})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Apply: err = %v, want context.Canceled", err)
	}
	fi, err := os.Lstat(part)
	if err != nil {
		t.Fatalf("part file not kept: %v", err)
	}
	if fi.Mode() != 0o600 || fi.Size() != e.Size {
		t.Errorf("part file is %v, %d bytes; want -rw------- and %d", fi.Mode(), fi.Size(), e.Size)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "d", "big")); string(got) != "the old version" {
		t.Errorf("the old file changed before the new one was whole: %q", got)
	}

	second := &testAssembler{data: data}
	if _, err := Apply(context.Background(), root, p, Options{Fetcher: newFetcher(nil), Assembler: second}); err != nil {
		t.Fatal(err)
	}
	if len(second.kept) != first.stopAfter {
		t.Errorf("resumed Apply kept %d chunks (%v), want the %d written before the interruption", len(second.kept), second.kept, first.stopAfter)
	}
	for k, i := range second.kept {
		if i != k {
			t.Errorf("kept chunk %d, want the first %d", i, first.stopAfter)
			break
		}
	}
	if got, _ := os.ReadFile(filepath.Join(root, "d", "big")); !bytes.Equal(got, data) {
		t.Error("resumed file differs from its content")
	}
	noTemps(t, root)
}

// An Apply that fails for another reason than an interruption removes the
// part file, as it removes any temporary file.
func TestPartFileRemovedOnFailure(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(512<<10, 2)
	e := chunkedEntry(t, "big", data)
	asm := &testAssembler{data: data, stopAfter: 2, landed: make(chan struct{}), err: errors.New("no source has it")}
	if _, err := Apply(context.Background(), root, plan(act(manifest.OpFetch, e)), Options{Fetcher: newFetcher(nil), Assembler: asm}); err == nil {
		t.Fatal("Apply succeeded")
	}
	noTemps(t, root)
}

// What sits under a part file's name is reused only when it is a file of
// this user's, private, with one link. A symlink there is replaced, never
// followed; a hard link to another file is replaced, never written
// through; a file others may read starts over.
func TestPartFileNeverFollowed(t *testing.T) {
	data := randomBytes(512<<10, 3)
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, part, outside string)
	}{
		{"symlink", func(t *testing.T, part, outside string) {
			if err := os.Symlink(outside, part); err != nil {
				t.Fatal(err)
			}
		}},
		{"hard link", func(t *testing.T, part, outside string) {
			if err := os.Link(outside, part); err != nil {
				t.Fatal(err)
			}
		}},
		{"readable by others", func(t *testing.T, part, _ string) {
			if err := os.WriteFile(part, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(part, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			root := filepath.Join(base, "task")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			e := chunkedEntry(t, "big", data)
			// A file holding the right bytes: were it reused, its
			// chunks would all be kept.
			outside := filepath.Join(base, "outside")
			if err := os.WriteFile(outside, data, 0o600); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, PartPath(root, e), outside)
			asm := &testAssembler{data: data}
			if _, err := Apply(context.Background(), root, plan(act(manifest.OpFetch, e)), Options{Fetcher: newFetcher(nil), Assembler: asm}); err != nil {
				t.Fatal(err)
			}
			if len(asm.kept) != 0 {
				t.Errorf("kept %d chunks from a %s", len(asm.kept), tc.name)
			}
			if got, _ := os.ReadFile(filepath.Join(root, "big")); !bytes.Equal(got, data) {
				t.Error("file differs from its content")
			}
			fi, err := os.Stat(outside)
			if err != nil || fi.Mode() != 0o600 {
				t.Errorf("the file outside changed: %v, %v", fi, err)
			}
			if got, _ := os.ReadFile(outside); !bytes.Equal(got, data) {
				t.Error("the file outside was written")
			}
			noTemps(t, root)
		})
	}
}

// Sweep keeps the part files of the entries it is told to keep, and only
// those: the part file of another version of a kept path goes, as does
// every other temporary file.
func TestSweepKeepsParts(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "task")
	if err := os.MkdirAll(filepath.Join(root, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := fileEntry("d/a", []byte("a new"), 0o644)
	aOld := fileEntry("d/a", []byte("an old"), 0o644)
	b := fileEntry("b", []byte("b"), 0o644)
	file := fileEntry(".", []byte("a file task"), 0o644) // its part lives beside root
	kept := []string{PartPath(root, a), PartPath(root, file)}
	gone := []string{PartPath(root, aOld), PartPath(root, b), filepath.Join(root, "d", manifest.TempPrefix+"x")}
	if kept[1] != filepath.Join(base, filepath.Base(kept[1])) {
		t.Fatalf("a file task's part file is at %s, want in %s", kept[1], base)
	}
	for _, p := range append(append([]string{}, kept...), gone...) {
		writeFile(t, p, "partial", 0o600)
	}
	sw, err := Sweep(context.Background(), root, []manifest.Entry{a, file})
	if err != nil {
		t.Fatal(err)
	}
	if sw.Removed != len(gone) || len(sw.Kept) != len(kept) {
		t.Errorf("Sweep = %+v; want %d removed, %v kept", sw, len(gone), kept)
	}
	for _, p := range kept {
		if _, err := os.Lstat(p); err != nil || !sw.Kept[p] {
			t.Errorf("%s: not kept (%v, in Kept: %v)", p, err, sw.Kept[p])
		}
	}
	for _, p := range gone {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", p, err)
		}
	}
}
