package manifest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/chunk"
)

func chunkTree(t *testing.T, sizes map[string]int) (string, map[string][]byte) {
	t.Helper()
	root := t.TempDir()
	old := time.Now().Add(-time.Hour)
	content := map[string][]byte{}
	seed := uint64(1)
	for _, name := range slices.Sorted(maps.Keys(sizes)) {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data := randomContent(sizes[name], seed)
		seed++
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		content[name] = data
	}
	return root, content
}

var sizes3 = map[string]int{
	"empty":     0,
	"small":     700,
	"a/one":     1500,
	"a/several": 50 << 10,
	"b/big":     300 << 10,
}

func TestBuildFormat3(t *testing.T) {
	root, content := chunkTree(t, sizes3)
	p := tiny
	m, err := Build(context.Background(), root, Options{Hash: true, Chunking: &p})
	if err != nil {
		t.Fatal(err)
	}
	if m.Format() != Format3 || m.Chunking == nil || *m.Chunking != tiny {
		t.Fatalf("Format %d, Chunking %v", m.Format(), m.Chunking)
	}
	if err := m.Validate(DefaultLimits()); err != nil {
		t.Fatalf("built manifest invalid: %v", err)
	}
	for name, data := range content {
		e, _ := m.Lookup(name)
		wantHash, wantChunks := refChunks(t, data, tiny)
		if e.Hash != wantHash || !slices.Equal(e.Chunks, wantChunks) {
			t.Errorf("%s: hash %.12s, %d chunks; want %.12s, %d chunks", name, e.Hash, len(e.Chunks), wantHash, len(wantChunks))
		}
		if h, cs, err := HashChunks(context.Background(), filepath.Join(root, name), tiny); err != nil || h != e.Hash || !slices.Equal(cs, e.Chunks) {
			t.Errorf("%s: HashChunks = %.12s, %d chunks, %v; Build gave %.12s", name, h, len(cs), err, e.Hash)
		}
	}
	for name, n := range map[string]int{"empty": 0, "small": 0, "a/several": 2, "b/big": 10} {
		if e, _ := m.Lookup(name); len(e.Chunks) < n || (n == 0 && len(e.Chunks) != 0) {
			t.Errorf("%s: %d chunks, want %s %d", name, len(e.Chunks), map[bool]string{true: "exactly", false: "at least"}[n == 0], n)
		}
	}
	// A file of one chunk has the same Hash in formats 2 and 3.
	m2, err := Build(context.Background(), root, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"empty", "small"} {
		e2, _ := m2.Lookup(name)
		e3, _ := m.Lookup(name)
		if e2.Hash != e3.Hash {
			t.Errorf("%s: format 2 hash %.12s, format 3 %.12s", name, e2.Hash, e3.Hash)
		}
	}
}

func TestBuildFormat3OlderFormats(t *testing.T) {
	root, _ := chunkTree(t, sizes3)
	ctx := context.Background()
	m2, err := Build(ctx, root, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	p := tiny
	m3, err := Build(ctx, root, Options{Hash: true, Chunking: &p, WholeHash: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []int{Format1, Format2} {
		want, err := m2.EncodeFormat(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m3.EncodeFormat(f)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("format %d from a format 3 build: %v\n got %.200s\nwant %.200s", f, err, got, want)
		}
	}
	enc3, err := m3.EncodeFormat(Format3)
	if err != nil {
		t.Fatal(err)
	}
	if enc, _ := m3.Encode(); !bytes.Equal(enc, enc3) {
		t.Error("Encode of a format 3 manifest is not EncodeFormat(Format3)")
	}
	d, err := Decode(enc3, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if d.Format() != Format3 || !slices.EqualFunc(d.Entries, m3.Entries, Entry.Equal) {
		t.Error("format 3 round trip changed the manifest")
	}
	// A decoded manifest has no whole-file hashes: it cannot go back.
	if _, err := d.EncodeFormat(Format2); err == nil || !strings.Contains(err.Error(), "WholeHash") {
		t.Errorf("format 2 of a decoded format 3 manifest: %v", err)
	}
	// Without WholeHash, neither can a build.
	m3n, err := Build(ctx, root, Options{Hash: true, Chunking: &p})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m3n.WithoutChunks(); err == nil || !strings.Contains(err.Error(), "no whole-file hash") {
		t.Errorf("WithoutChunks without whole hashes: %v", err)
	}
	if _, err := m2.EncodeFormat(Format3); err == nil {
		t.Error("EncodeFormat(Format3) of a manifest without chunks succeeded")
	}
	if _, err := m2.EncodeFormat(4); err == nil {
		t.Error("EncodeFormat(4) succeeded")
	}
	// A format 3 manifest is refused by a minion that predates it.
	if err := decodeV2(enc3); err == nil {
		t.Error("a format 2 decoder accepted format 3")
	}
}

func decodeV2(b []byte) error {
	type v2Entry struct {
		v1Entry
		User  string  `json:"user,omitempty"`
		Group string  `json:"group,omitempty"`
		UID   OwnerID `json:"uid,omitzero"`
		GID   OwnerID `json:"gid,omitzero"`
	}
	var m struct {
		Entries []v2Entry `json:"entries"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(&m)
}

func TestBuildParallelMatchesSerial(t *testing.T) {
	sizes := map[string]int{}
	for i := range 60 {
		sizes[filepath.Join("d", string(rune('a'+i%26))+strings.Repeat("x", i/26))] = 100 + i*3000
	}
	sizes["big1"] = 400 << 10
	sizes["big2"] = 200 << 10
	root, _ := chunkTree(t, sizes)
	p := tiny
	var want []byte
	for _, procs := range []int{1, 2, 7} {
		m := withProcs(t, procs, func() *Manifest {
			m, err := Build(context.Background(), root, Options{Hash: true, Chunking: &p, WholeHash: true})
			if err != nil {
				t.Fatal(err)
			}
			return m
		})
		enc, _ := m.Encode()
		enc2, err := m.EncodeFormat(Format2)
		if err != nil {
			t.Fatal(err)
		}
		enc = append(enc, enc2...)
		if want == nil {
			want = enc
		} else if !bytes.Equal(enc, want) {
			t.Errorf("GOMAXPROCS %d builds another manifest than GOMAXPROCS 1", procs)
		}
	}
}

func withProcs[T any](t *testing.T, n int, f func() T) T {
	t.Helper()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n))
	return f()
}

func TestEntryRefsVerify(t *testing.T) {
	root, content := chunkTree(t, sizes3)
	p := tiny
	m3, err := Build(context.Background(), root, Options{Hash: true, Chunking: &p})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Build(context.Background(), root, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Manifest{m2, m3} {
		for name, data := range content {
			e, _ := m.Lookup(name)
			refs, err := e.Refs()
			if err != nil {
				t.Fatal(err)
			}
			if len(refs) != len(e.ChunkList()) || (len(e.Chunks) > 0 && len(refs) != len(e.Chunks)) {
				t.Fatalf("%s: %d refs for %d chunks", name, len(refs), len(e.Chunks))
			}
			v := chunk.NewVerifier(refs)
			if _, err := v.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := v.Close(); err != nil {
				t.Errorf("format %d, %s: %v", m.Format(), name, err)
			}
			if len(data) == 0 {
				continue
			}
			bad := bytes.Clone(data)
			bad[len(bad)-1] ^= 1
			v = chunk.NewVerifier(refs)
			v.Write(bad)
			var me *chunk.MismatchError
			if err := v.Close(); !errors.As(err, &me) || me.Index != len(refs)-1 {
				t.Errorf("format %d, %s with its last byte changed: %v, want chunk %d bad", m.Format(), name, err, len(refs)-1)
			}
		}
	}
	if refs, err := (Entry{Type: Dir}).Refs(); err != nil || len(refs) != 0 {
		t.Errorf("a directory's refs: %v, %v", refs, err)
	}
	if _, err := (Entry{Type: File, Hash: "zz"}).Refs(); err == nil {
		t.Error("refs of a bad hash")
	}
}
