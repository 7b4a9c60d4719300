package minion

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/metrics"
)

func testMinion(t *testing.T, root string) *Minion {
	log := logrus.New()
	log.SetOutput(io.Discard)
	return &Minion{cfg: Config{Root: root, StateDir: t.TempDir(), Log: log, Metrics: metrics.New()}}
}

// The part files of an interrupted pull of another task root are swept
// when a pull of a new root starts; those of the same root are left for
// that pull's own Sweep; a record naming a path outside --root sweeps
// nothing; a pull that succeeds leaves no record.
func TestSweepAbandoned(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	m := testMinion(t, root)
	a, b := filepath.Join(root, "data", "a"), filepath.Join(root, "data", "b")
	for _, d := range []string{a, b} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	partA := filepath.Join(a, manifest.TempPrefix+"part-x")
	write := func(p string) {
		t.Helper()
		if err := os.WriteFile(p, []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(p string) bool {
		_, err := os.Lstat(p)
		return err == nil
	}
	rec := filepath.Join(m.cfg.StateDir, pullingFile)

	if err := m.sweepAbandoned(ctx, a); err != nil {
		t.Fatal(err)
	}
	write(partA)
	if err := m.sweepAbandoned(ctx, a); err != nil {
		t.Fatal(err)
	}
	if !exists(partA) {
		t.Fatal("a pull of the same root swept its part file")
	}
	if err := m.sweepAbandoned(ctx, b); err != nil {
		t.Fatal(err)
	}
	if exists(partA) {
		t.Error("a pull of another root left the part file of the interrupted one")
	}
	if got, _ := os.ReadFile(rec); string(got) != b {
		t.Errorf("record = %q, want %q", got, b)
	}
	if err := m.clearPullRecord(); err != nil {
		t.Fatal(err)
	}
	if exists(rec) {
		t.Error("the record outlived a successful pull")
	}

	outside := t.TempDir()
	tmpOut := filepath.Join(outside, manifest.TempPrefix+"part-y")
	write(tmpOut)
	if err := os.WriteFile(rec, []byte(outside), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.sweepAbandoned(ctx, b); err != nil {
		t.Fatal(err)
	}
	if !exists(tmpOut) {
		t.Error("a record naming a path outside --root swept it")
	}
}

// The assembler offers the chunks a kept part file has data for, and
// keeps in place exactly those whose bytes hash right: a chunk written in
// part (a torn write) is refused and would be fetched.
func TestAssemblerKeepsVerifiedPartChunks(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	hash, cs, err := manifest.HashChunks(context.Background(), src, chunk.Params{Min: 16 << 10, Avg: 32 << 10, Max: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) < 8 {
		t.Fatalf("only %d chunks", len(cs))
	}
	e := manifest.Entry{Path: "big", Type: manifest.File, Mode: 0o644, Size: int64(len(data)), Hash: hash, Chunks: cs}

	// Chunks span several blocks (16 KiB at least), so a hole between two
	// written chunks is a hole to the file system too.
	//
	// What a killed pull leaves: every other chunk written, the last one
	// written in part (its first half only), the rest holes.
	part := apply.PartPath(root, e)
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(e.Size); err != nil {
		t.Fatal(err)
	}
	good := map[int]bool{}
	torn := len(cs) - 1
	for i, c := range cs {
		switch {
		case i == torn:
			if _, err := f.WriteAt(data[c.Off:c.Off+c.Len/2], c.Off); err != nil {
				t.Fatal(err)
			}
		case i%2 == 0:
			if _, err := f.WriteAt(data[c.Off:c.Off+c.Len], c.Off); err != nil {
				t.Fatal(err)
			}
			good[i] = true
		}
	}

	m := testMinion(t, filepath.Dir(root))
	a := newAssembler(m, nil, root)
	files, _, err := a.indexParts(context.Background(), map[string]bool{part: true}, []manifest.Entry{e})
	if err != nil || files != 1 {
		t.Fatalf("indexParts = %d files, %v; want 1", files, err)
	}
	holes := holesShow(t, filepath.Dir(part))
	buf := make([]byte, 0, 128<<10)
	var kept int64
	for i, c := range cs {
		at, ok := a.local[c.Hash]
		if !ok {
			if good[i] {
				t.Errorf("chunk %d, written whole, not offered", i)
			}
			continue
		}
		if holes && !good[i] {
			t.Errorf("chunk %d, a hole or written in part, offered", i)
		}
		err := a.copyChunk(at, f, c, &buf)
		switch {
		case good[i] && err != nil:
			t.Errorf("chunk %d, written whole, not kept: %v", i, err)
		case !good[i] && err == nil:
			t.Errorf("chunk %d, not written whole, kept", i)
		case err == nil:
			kept += c.Len
		}
	}
	// Whatever the file system says of holes, the hash refuses a chunk
	// written in part, and a hole.
	if err := a.copyChunk(chunkAt{path: part, off: cs[torn].Off, len: cs[torn].Len}, f, cs[torn], &buf); err == nil {
		t.Error("a chunk written in part was kept")
	}
	if err := a.copyChunk(chunkAt{path: part, off: cs[1].Off, len: cs[1].Len}, f, cs[1], &buf); err == nil {
		t.Error("a hole was kept as a chunk")
	}
	if got := a.resumed.Load(); got != kept || kept == 0 {
		t.Errorf("resumed %d bytes, want the %d kept", got, kept)
	}
	b := make([]byte, len(data))
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	for i, c := range cs {
		if good[i] && string(b[c.Off:c.Off+c.Len]) != string(data[c.Off:c.Off+c.Len]) {
			t.Errorf("chunk %d changed by being kept", i)
		}
	}
}

// holesShow reports whether the file system of dir tells holes from data
// (SEEK_DATA): where it cannot, every chunk of a part file is offered and
// only its hash decides.
func holesShow(t *testing.T, dir string) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	return len(dataExtents(int(f.Fd()), 1<<20)) == 0
}
