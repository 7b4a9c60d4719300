package manifest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLessAndSort(t *testing.T) {
	in := []string{"a-b", "a b", "a/c", ".", "a.b", "a", "a/b", "b", "a/b/c"}
	m := &Manifest{}
	for _, p := range in {
		m.Entries = append(m.Entries, Entry{Path: p})
	}
	m.Sort()
	var got []string
	for _, e := range m.Entries {
		got = append(got, e.Path)
	}
	want := []string{".", "a", "a/b", "a/b/c", "a/c", "a b", "a-b", "a.b", "b"}
	if !slices.Equal(got, want) {
		t.Fatalf("tree order = %q, want %q", got, want)
	}
	for _, p := range want {
		if _, ok := m.Lookup(p); !ok {
			t.Errorf("Lookup(%q) missed", p)
		}
	}
	if _, ok := m.Lookup("a/d"); ok {
		t.Error("Lookup of a missing path succeeded")
	}
}

func TestValidPath(t *testing.T) {
	valid := []string{".", "a", "a/b", "a b", "line\nbreak", "tab\there", "ünïcode/日本", strings.Repeat("x", 255), "..a", "a..", ".hidden"}
	for _, p := range valid {
		if err := ValidPath(p); err != nil {
			t.Errorf("ValidPath(%q) = %v, want nil", p, err)
		}
	}
	invalid := map[string]string{
		"":                         "empty",
		"/etc/passwd":              "absolute",
		"..":                       `".."`,
		"a/../b":                   `".."`,
		"a/./b":                    `"."`,
		"./a":                      `"."`,
		"a//b":                     "empty component",
		"a/":                       "empty component",
		"a\x00b":                   "NUL",
		"bad\xffutf8":              "UTF-8",
		strings.Repeat("x", 256):   "longer than 255",
		strings.Repeat("a/", 3000): "longer than 4096",
	}
	for p, want := range invalid {
		err := ValidPath(p)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidPath(%.30q) = %v, want error mentioning %q", p, err, want)
		}
	}
}

// tree writes a sample tree and returns its root.
func tree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "task")
	mt := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, d := range []string{"a/b", "empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{"a/b/f.txt": "hello", "top.bin": "top content", "a/x": ""}
	for p, c := range files {
		fp := filepath.Join(root, p)
		if err := os.WriteFile(fp, []byte(c), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(fp, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"rel": "a/b/f.txt", "abs": "/etc/hostname", "dangling": "nope"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "a", TempPrefix+"123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestBuild(t *testing.T) {
	root := tree(t)
	var warned, temps []string
	m, err := Build(context.Background(), root, Options{
		Hash: true,
		Warn: func(p string, err error) { warned = append(warned, p) },
		Temp: func(p string) { temps = append(temps, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range m.Entries {
		paths = append(paths, e.Path)
	}
	want := []string{".", "a", "a/b", "a/b/f.txt", "a/x", "abs", "dangling", "empty", "rel", "top.bin"}
	if !slices.Equal(paths, want) {
		t.Fatalf("paths = %q, want %q", paths, want)
	}
	if !slices.Equal(warned, []string{"fifo"}) || !slices.Equal(temps, []string{"a/" + TempPrefix + "123"}) {
		t.Errorf("warned %q, temps %q", warned, temps)
	}
	f, _ := m.Lookup("a/b/f.txt")
	h, err := HashFile(context.Background(), filepath.Join(root, "a/b/f.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != File || f.Size != 5 || f.Mode != 0o640 || f.Hash != h || len(h) != 64 {
		t.Errorf("file entry %+v (hash of file %s)", f, h)
	}
	if f.MTime != time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC).UnixNano() {
		t.Errorf("mtime %d not captured to the nanosecond", f.MTime)
	}
	if l, _ := m.Lookup("abs"); l.Type != Symlink || l.Target != "/etc/hostname" {
		t.Errorf("abs symlink entry %+v", l)
	}
	if d, _ := m.Lookup("dangling"); d.Type != Symlink || d.Target != "nope" {
		t.Errorf("dangling symlink entry %+v", d)
	}
	if err := m.Validate(DefaultLimits()); err != nil {
		t.Errorf("built manifest does not validate: %v", err)
	}
	if files, bytes := m.Totals(); files != 3 || bytes != 16 {
		t.Errorf("Totals = %d files, %d bytes", files, bytes)
	}
}

func TestBuildRoots(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "one.bin")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := Build(context.Background(), file, Options{Hash: true})
	if err != nil || len(m.Entries) != 1 || m.Entries[0].Path != "." || m.Entries[0].Type != File {
		t.Fatalf("file root: %+v, %v", m, err)
	}
	m, err = Build(context.Background(), filepath.Join(dir, "missing"), Options{})
	if err != nil || len(m.Entries) != 0 {
		t.Fatalf("missing root: %+v, %v", m, err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(dir, link)
	if _, err := Build(context.Background(), link, Options{}); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlink root: %v", err)
	}
}

func TestCache(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "f")
	old := time.Now().Add(-time.Hour)
	if err := os.WriteFile(p, []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, old, old)
	fi, _ := os.Lstat(p)
	c := NewCache()
	fake := strings.Repeat("f", 64)
	c.Put(p, fi, fake)
	m, err := Build(context.Background(), root, Options{Hash: true, Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := m.Lookup("f"); e.Hash != fake {
		t.Fatalf("cache not used for an unchanged file: %s", e.Hash)
	}
	newer := old.Add(time.Minute)
	os.Chtimes(p, newer, newer)
	m, _ = Build(context.Background(), root, Options{Hash: true, Cache: c})
	if e, _ := m.Lookup("f"); e.Hash == fake || len(e.Hash) != 64 {
		t.Fatalf("changed mtime did not rehash: %s", e.Hash)
	}

	// Racily clean: a file modified just now is hashed but not cached.
	q := filepath.Join(root, "fresh")
	os.WriteFile(q, []byte("x"), 0o644)
	qi, _ := os.Lstat(q)
	c.Put(q, qi, fake)
	if _, ok := c.Get(q, qi); ok {
		t.Error("a file modified within the racy window was cached")
	}

	// Save and load round trip; a corrupt file is an error naming it.
	cp := filepath.Join(root, "cache")
	if err := c.Save(cp); err != nil {
		t.Fatal(err)
	}
	c2, err := LoadCache(cp)
	if err != nil || c2.Len() != c.Len() || c2.Len() == 0 {
		t.Fatalf("LoadCache: len %d vs %d, %v", c2.Len(), c.Len(), err)
	}
	fi, _ = os.Lstat(p)
	if h, ok := c2.Get(p, fi); !ok || len(h) != 64 {
		t.Error("loaded cache lost an entry")
	}
	os.WriteFile(cp, []byte("garbage"), 0o600)
	if _, err := LoadCache(cp); err == nil || !strings.Contains(err.Error(), cp) {
		t.Errorf("corrupt cache: %v", err)
	}
	if c3, err := LoadCache(filepath.Join(root, "none")); err != nil || c3.Len() != 0 {
		t.Errorf("missing cache: %v", err)
	}
}

func validManifest() *Manifest {
	h := strings.Repeat("ab", 32)
	return &Manifest{Entries: []Entry{
		{Path: ".", Type: Dir, Mode: 0o755, MTime: 1},
		{Path: "a", Type: Dir, Mode: 0o755, MTime: 2},
		{Path: "a/f", Type: File, Mode: 0o644, Size: 3, MTime: 3, Hash: h},
		{Path: "l", Type: Symlink, Mode: 0o777, MTime: 4, Target: "a/f"},
	}}
}

func TestEncodeDecode(t *testing.T) {
	m := validManifest()
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := m.Encode()
	if Digest(b) != Digest(b2) || len(Digest(b)) != 64 {
		t.Fatal("digest not stable")
	}
	got, err := Decode(b, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got.Entries, m.Entries, Entry.Equal) {
		t.Fatalf("round trip: %+v", got.Entries)
	}
}

func TestDecodeRejects(t *testing.T) {
	h := strings.Repeat("ab", 32)
	tests := []struct {
		name   string
		mutate func(m *Manifest)
		want   string
	}{
		{"no root", func(m *Manifest) { m.Entries = m.Entries[1:] }, `want the root`},
		{"symlink root", func(m *Manifest) { m.Entries[0].Type = Symlink }, "want a dir or a file"},
		{"file root with children", func(m *Manifest) { m.Entries[0].Type = File; m.Entries[0].Hash = h }, "other entries"},
		{"dotdot", func(m *Manifest) { m.Entries[2].Path = "a/../f" }, `".."`},
		{"absolute", func(m *Manifest) { m.Entries[1].Path = "/a" }, "absolute"},
		{"nul", func(m *Manifest) { m.Entries[3].Path = "l\x00" }, "NUL"},
		{"duplicate", func(m *Manifest) { m.Entries[3] = m.Entries[2] }, "out of tree order"},
		{"out of order", func(m *Manifest) { m.Entries[1], m.Entries[3] = m.Entries[3], m.Entries[1] }, ""},
		{"child of symlink", func(m *Manifest) {
			m.Entries = append(m.Entries, Entry{Path: "l/passwd", Type: File, Size: 1, Hash: h})
		}, "not a directory"},
		{"missing parent", func(m *Manifest) { m.Entries[2].Path = "b/f" }, ""},
		{"bad type", func(m *Manifest) { m.Entries[1].Type = "fifo" }, "unknown type"},
		{"mode bits", func(m *Manifest) { m.Entries[2].Mode = 0o170000 }, "outside 07777"},
		{"negative size", func(m *Manifest) { m.Entries[2].Size = -1 }, "size"},
		{"huge size", func(m *Manifest) { m.Entries[2].Size = 1 << 50 }, "size"},
		{"bad hash", func(m *Manifest) { m.Entries[2].Hash = "xyz" }, "hash"},
		{"upper hash", func(m *Manifest) { m.Entries[2].Hash = strings.ToUpper(h) }, "hash"},
		{"empty target", func(m *Manifest) { m.Entries[3].Target = "" }, "target"},
		{"dir with hash", func(m *Manifest) { m.Entries[1].Hash = h }, "directory with"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest()
			tt.mutate(m)
			b, _ := json.Marshal(m)
			_, err := Decode(b, DefaultLimits())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode = %v, want error mentioning %q", err, tt.want)
			}
		})
	}
	b, _ := validManifest().Encode()
	if _, err := Decode(b, Limits{MaxEntries: 3, MaxBytes: 1 << 20, MaxFileSize: 10}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("too many entries: %v", err)
	}
	if _, err := Decode(b, Limits{MaxEntries: 10, MaxBytes: 10, MaxFileSize: 10}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("too many bytes: %v", err)
	}
	for _, s := range []string{``, `{}`, `{"entries":[]}`, `{"entries":[{"path":".","type":"dir"}]} x`, `{"entries":[{"path":".","type":"dir","bogus":1}]}`} {
		if _, err := Decode([]byte(s), DefaultLimits()); err == nil {
			t.Errorf("Decode(%q) succeeded", s)
		}
	}
}

func TestDiff(t *testing.T) {
	h1, h2 := strings.Repeat("11", 32), strings.Repeat("22", 32)
	root := Entry{Path: ".", Type: Dir, Mode: 0o755, MTime: 1}
	dir := func(p string, mt int64) Entry { return Entry{Path: p, Type: Dir, Mode: 0o755, MTime: mt} }
	file := func(p, h string, mode uint32, mt int64) Entry {
		return Entry{Path: p, Type: File, Mode: os.FileMode(mode), Size: 5, MTime: mt, Hash: h}
	}
	link := func(p, target string) Entry { return Entry{Path: p, Type: Symlink, Mode: 0o777, Target: target} }
	type step struct {
		op   Op
		path string
	}
	tests := []struct {
		name          string
		local, remote []Entry
		del           bool
		want          []step
	}{
		{"identical", []Entry{root, file("f", h1, 0o644, 5)}, []Entry{root, file("f", h1, 0o644, 5)}, false, nil},
		{"new everything", nil, []Entry{root, dir("d", 2), file("d/f", h1, 0o644, 5), link("l", "d/f")}, false,
			[]step{{OpMkdir, "."}, {OpMkdir, "d"}, {OpSymlink, "l"}, {OpFetch, "d/f"}, {OpMeta, "d"}, {OpMeta, "."}}},
		{"content changed", []Entry{root, file("f", h1, 0o644, 5)}, []Entry{root, file("f", h2, 0o644, 5)}, false, []step{{OpFetch, "f"}, {OpMeta, "."}}},
		{"hash unknown (size differs)", []Entry{root, file("f", "", 0o644, 5)}, []Entry{root, file("f", h2, 0o644, 5)}, false, []step{{OpFetch, "f"}, {OpMeta, "."}}},
		{"mode only", []Entry{root, file("f", h1, 0o600, 5)}, []Entry{root, file("f", h1, 0o644, 5)}, false, []step{{OpMeta, "f"}}},
		{"mtime only", []Entry{root, file("f", h1, 0o644, 4)}, []Entry{root, file("f", h1, 0o644, 5)}, false, []step{{OpMeta, "f"}}},
		{"dir mtime", []Entry{root, dir("d", 1)}, []Entry{root, dir("d", 2)}, false, []step{{OpMeta, "d"}}},
		{"file to dir", []Entry{root, file("x", h1, 0o644, 5)}, []Entry{root, dir("x", 2), file("x/f", h1, 0o644, 5)}, false,
			[]step{{OpRemove, "x"}, {OpMkdir, "x"}, {OpFetch, "x/f"}, {OpMeta, "x"}, {OpMeta, "."}}},
		{"dir to file", []Entry{root, dir("x", 2), file("x/f", h1, 0o644, 5), dir("x/sub", 3)}, []Entry{root, file("x", h1, 0o644, 5)}, true,
			[]step{{OpRemove, "x"}, {OpFetch, "x"}, {OpMeta, "."}}},
		{"dir to symlink", []Entry{root, dir("x", 2), file("x/f", h1, 0o644, 5)}, []Entry{root, link("x", "/etc")}, false,
			[]step{{OpRemove, "x"}, {OpSymlink, "x"}, {OpMeta, "."}}},
		{"symlink target", []Entry{root, link("l", "a")}, []Entry{root, link("l", "b")}, false, []step{{OpSymlink, "l"}, {OpMeta, "."}}},
		{"symlink same target, other mtime", []Entry{root, link("l", "a")}, []Entry{root, {Path: "l", Type: Symlink, Mode: 0o777, MTime: 9, Target: "a"}}, false, nil},
		{"extras kept", []Entry{root, file("keep", h1, 0o644, 5), dir("xd", 1), file("xd/f", h1, 0o644, 5)}, []Entry{root}, false, nil},
		{"extras deleted", []Entry{root, dir("xd", 1), dir("xd/deep", 1), file("xd/deep/f", h1, 0o644, 5), file("z", h1, 0o644, 5), link("a/b", "c")}, []Entry{root}, true,
			[]step{{OpRemove, "a/b"}, {OpRemove, "xd"}, {OpRemove, "z"}, {OpMeta, "."}}},
		{"root dir to file", []Entry{root, file("f", h1, 0o644, 5)}, []Entry{file(".", h2, 0o644, 5)}, false,
			[]step{{OpRemove, "."}, {OpFetch, "."}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustDiff(t, &Manifest{Entries: tt.local}, &Manifest{Entries: tt.remote}, DiffOptions{Delete: tt.del})
			var got []step
			for _, a := range p.Actions {
				got = append(got, step{a.Op, a.Entry.Path})
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("plan = %v, want %v", got, tt.want)
			}
		})
	}
	p := mustDiff(t, &Manifest{}, &Manifest{Entries: []Entry{root, file("a", h1, 0o644, 1), file("b", h2, 0o644, 1)}}, DiffOptions{})
	if p.FetchBytes() != 10 || p.Count(OpFetch) != 2 || p.Empty() {
		t.Errorf("FetchBytes %d Count %d", p.FetchBytes(), p.Count(OpFetch))
	}
}

func TestFillHashes(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "same"), []byte("12345"), 0o644)
	os.WriteFile(filepath.Join(root, "bigger"), []byte("123456789"), 0o644)
	local, err := Build(context.Background(), root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := strings.Repeat("ab", 32)
	remote := &Manifest{Entries: []Entry{
		{Path: ".", Type: Dir}, {Path: "bigger", Type: File, Size: 5, Hash: h}, {Path: "same", Type: File, Size: 5, Hash: h},
	}}
	if err := FillHashes(context.Background(), root, local, remote, NewCache()); err != nil {
		t.Fatal(err)
	}
	same, _ := local.Lookup("same")
	bigger, _ := local.Lookup("bigger")
	want, _ := HashFile(context.Background(), filepath.Join(root, "same"))
	if same.Hash != want || bigger.Hash != "" {
		t.Fatalf("same %q (want %q), bigger %q (want none)", same.Hash, want, bigger.Hash)
	}
}

func TestHashFileCancelled(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, make([]byte, 3<<20), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := HashFile(ctx, p); !errors.Is(err, context.Canceled) {
		t.Fatalf("HashFile with cancelled ctx = %v", err)
	}
}

func benchFile(b *testing.B) string {
	p := filepath.Join(b.TempDir(), "big")
	data := make([]byte, 64<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkHashFile measures BLAKE3 over a 64 MiB file (page cache warm).
func BenchmarkHashFile(b *testing.B) {
	p := benchFile(b)
	b.SetBytes(64 << 20)
	for b.Loop() {
		if _, err := HashFile(context.Background(), p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHashSHA256 is the same read loop with crypto/sha256, the
// alternative the hash choice was measured against.
func BenchmarkHashSHA256(b *testing.B) {
	p := benchFile(b)
	b.SetBytes(64 << 20)
	buf := make([]byte, 1<<20)
	for b.Loop() {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		for {
			n, err := f.Read(buf)
			h.Write(buf[:n])
			if err != nil {
				break
			}
		}
		f.Close()
		h.Sum(nil)
	}
}
