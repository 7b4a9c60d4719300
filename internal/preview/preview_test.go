package preview

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
)

func build(t *testing.T, root string) *manifest.Manifest {
	t.Helper()
	p := chunk.DefaultParams()
	m, err := manifest.Build(context.Background(), root, manifest.Options{Hash: true, Chunking: &p})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCompare: a byte changed in a big file moves only the chunks around
// it; a new file moves whole; a file gone is removed only with delete; a
// mode change is metadata; an identical tree changes nothing.
func TestCompare(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	big := make([]byte, 8<<20)
	rand.Read(big)
	write(t, filepath.Join(root, "weights/model.bin"), big)
	write(t, filepath.Join(root, "config/a.yaml"), []byte("a: 1\n"))
	write(t, filepath.Join(root, "old.txt"), []byte("old"))
	base := build(t, root)

	if p := compare(t, base, base, true); !p.Empty() || p.Files != 3 || p.Bytes != int64(len(big))+5+3 || p.MoveBytes != 0 {
		t.Fatalf("identical: %+v", p)
	}
	big[4<<20] ^= 0xff
	write(t, filepath.Join(root, "weights/model.bin"), big)
	write(t, filepath.Join(root, "config/b.yaml"), []byte("b: 22\n"))
	if err := os.Remove(filepath.Join(root, "old.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "config/a.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	next := build(t, root)

	kept := compare(t, base, next, false)
	if kept.Fetch != 2 || kept.FetchBytes != int64(len(big))+6 || kept.Remove != 0 {
		t.Fatalf("without delete: %+v", kept)
	}
	// The changed chunk (at most chunk.MaxSize either side of the byte)
	// and the new small file cross the network, not the whole big file.
	if kept.MoveBytes <= 6 || kept.MoveBytes > 2*int64(chunk.DefaultParams().Max)+6 {
		t.Errorf("moves %d bytes of an %d-byte file with one byte changed", kept.MoveBytes, len(big))
	}
	ops := map[string]string{}
	for _, c := range kept.Changes {
		if c.Op != "meta" || c.Path == "config/a.yaml" {
			ops[c.Path] = c.Op
		}
	}
	if ops["weights/model.bin"] != "fetch" || ops["config/b.yaml"] != "fetch" || ops["config/a.yaml"] != "meta" || ops["old.txt"] != "" {
		t.Errorf("changes %+v", kept.Changes)
	}
	del := compare(t, base, next, true)
	if del.Remove != 1 {
		t.Errorf("with delete: %+v", del)
	}
	// Hosts that hold nothing get everything.
	fresh := compare(t, nil, next, false)
	if fresh.Fetch != 3 || fresh.MoveBytes != fresh.FetchBytes || fresh.Mkdir < 3 {
		t.Errorf("from nothing: %+v", fresh)
	}
}

func compare(t *testing.T, base, next *manifest.Manifest, del bool) Preview {
	t.Helper()
	p, err := Compare(base, next, del)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
