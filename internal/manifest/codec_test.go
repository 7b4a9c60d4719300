package manifest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/chunk"
)

func TestEncodeDecodeBuiltTree(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "dir with space", "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1_650_000_000, 42)
	mustWrite(t, filepath.Join(root, "dir with space", "new\nline"), "a", 0o644, mt)
	mustWrite(t, filepath.Join(root, "日本語 <&>"), "b", 0o600, mt)
	if err := os.Symlink("/abs/target", filepath.Join(root, "abs")); err != nil {
		t.Fatal(err)
	}
	m, err := Build(context.Background(), root, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got.Entries, m.Entries)
	}
	b2, err := got.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if string(b2) != string(b) || Digest(b2) != Digest(b) {
		t.Error("re-encoding a decoded manifest changed its bytes")
	}
}

func TestDigest(t *testing.T) {
	// BLAKE3-256 of the empty input, from the BLAKE3 specification.
	if got := Digest(nil); got != "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" {
		t.Errorf("Digest(nil) = %s", got)
	}
	// The same tree assembled in another order encodes to the same bytes.
	a := sampleManifest()
	b := sampleManifest()
	for i, j := 0, len(b.Entries)-1; i < j; i, j = i+1, j-1 {
		b.Entries[i], b.Entries[j] = b.Entries[j], b.Entries[i]
	}
	b.Sort()
	ea, _ := a.Encode()
	eb, _ := b.Encode()
	if Digest(ea) != Digest(eb) {
		t.Error("equal manifests have different digests")
	}
	b.Entries[2].MTime++
	eb, _ = b.Encode()
	if Digest(ea) == Digest(eb) {
		t.Error("a changed mtime kept the digest")
	}
}

// sampleManifest is a valid manifest with one entry of each type below a
// directory.
func sampleManifest() *Manifest {
	return &Manifest{Entries: []Entry{
		{Path: ".", Type: Dir, Mode: 0o755, MTime: 10},
		{Path: "d", Type: Dir, Mode: 0o700, MTime: 11},
		{Path: "d/f", Type: File, Mode: 0o644, Size: 3, MTime: 12, Hash: strings.Repeat("0f", 32)},
		{Path: "d/l", Type: Symlink, Mode: 0o777, MTime: 13, Target: "f"},
		{Path: "g", Type: File, Mode: 0o755 | os.ModeSetuid, Size: 0, MTime: 14, Hash: strings.Repeat("e", 64)},
	}}
}

func TestDecodeRejectsEachRule(t *testing.T) {
	h := strings.Repeat("0f", 32)
	tests := []struct {
		name   string
		mutate func(m *Manifest)
		want   string // in the error; entry errors also name index and path
	}{
		{"second root", func(m *Manifest) { m.Entries[1] = Entry{Path: ".", Type: Dir} }, `entry 1 (".")`},
		{"trailing slash", func(m *Manifest) { m.Entries[4].Path = "g/" }, `entry 4 ("g/")`},
		{"dot component", func(m *Manifest) { m.Entries[4].Path = "./g" }, `entry 4 ("./g")`},
		{"long component", func(m *Manifest) { m.Entries[4].Path = strings.Repeat("g", 256) }, "255"},
		{"parent is a file", func(m *Manifest) {
			m.Entries = append(m.Entries, Entry{Path: "g/x", Type: File, Hash: h})
		}, `entry 5 ("g/x")`},
		{"mode with type bits", func(m *Manifest) { m.Entries[1].Mode |= os.ModeDir }, "07777"},
		// Setuid is fs.ModeSetuid, as os.Chmod wants it; the C bit 04000
		// would be silently dropped by os.Chmod, so it is refused.
		{"C setuid bit", func(m *Manifest) { m.Entries[4].Mode = 0o4755 }, `entry 4 ("g")`},
		{"empty type", func(m *Manifest) { m.Entries[1].Type = "" }, "unknown type"},
		{"dir with size", func(m *Manifest) { m.Entries[1].Size = 1 }, "directory"},
		{"dir with target", func(m *Manifest) { m.Entries[1].Target = "x" }, "directory"},
		{"file without hash", func(m *Manifest) { m.Entries[2].Hash = "" }, "hash"},
		{"short hash", func(m *Manifest) { m.Entries[2].Hash = h[:62] }, "hash"},
		{"file with target", func(m *Manifest) { m.Entries[2].Target = "x" }, "target"},
		{"symlink with size", func(m *Manifest) { m.Entries[3].Size = 2 }, "symlink"},
		{"symlink with hash", func(m *Manifest) { m.Entries[3].Hash = h }, "symlink"},
		{"symlink target with NUL", func(m *Manifest) { m.Entries[3].Target = "a\x00b" }, "NUL"},
		{"symlink target too long", func(m *Manifest) { m.Entries[3].Target = strings.Repeat("t", 4097) }, "target"},
		{"file bigger than the limit", func(m *Manifest) { m.Entries[2].Size = 16<<40 + 1 }, "size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sampleManifest()
			if err := m.Validate(DefaultLimits()); err != nil {
				t.Fatalf("unmutated manifest invalid: %v", err)
			}
			tt.mutate(m)
			b, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Decode(b, DefaultLimits()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode = %v, want an error containing %q", err, tt.want)
			}
			if err := m.Validate(DefaultLimits()); err == nil {
				t.Error("Validate accepted it")
			}
		})
	}
}

func TestValidateRejectsInvalidUTF8(t *testing.T) {
	m := sampleManifest()
	m.Entries[4].Path = "g\xff"
	if err := m.Validate(DefaultLimits()); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("Validate = %v, want an error about UTF-8", err)
	}
	// JSON cannot carry invalid UTF-8: Decode turns such bytes into U+FFFD,
	// so a decoded path is always valid UTF-8.
	b, _ := sampleManifest().Encode()
	b = []byte(strings.Replace(string(b), `"path":"g"`, "\"path\":\"g\xff\"", 1))
	got, err := Decode(b, DefaultLimits())
	if err != nil || got.Entries[4].Path != "g\uFFFD" {
		t.Errorf("Decode of a raw invalid byte = %+v, %v", got, err)
	}
}

func TestDecodeInputErrors(t *testing.T) {
	good, err := sampleManifest().Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		`null`, `{"entries":null}`, `[]`, `{"entries":{}}`,
		string(good) + `]`, string(good) + `}`, string(good) + string(good),
		strings.Replace(string(good), `"mode":493`, `"mode":-1`, 1),
		strings.Replace(string(good), `"mode":493`, `"mode":"0755"`, 1),
		string(good[:len(good)-1]),
	} {
		if _, err := Decode([]byte(s), DefaultLimits()); err == nil {
			t.Errorf("Decode(%.60q) succeeded", s)
		}
	}
	if _, err := Decode(append(good, " \n"...), DefaultLimits()); err != nil {
		t.Errorf("trailing whitespace rejected: %v", err)
	}
}

func TestDecodeLimitsBoundary(t *testing.T) {
	m := sampleManifest()
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	n, size := len(m.Entries), int64(len(b))
	for _, tt := range []struct {
		lim Limits
		ok  bool
	}{
		{Limits{MaxEntries: n, MaxBytes: size, MaxFileSize: 3}, true},
		{Limits{MaxEntries: n - 1, MaxBytes: size, MaxFileSize: 3}, false},
		{Limits{MaxEntries: n, MaxBytes: size - 1, MaxFileSize: 3}, false},
		{Limits{MaxEntries: n, MaxBytes: size, MaxFileSize: 2}, false},
	} {
		_, err := Decode(b, tt.lim)
		if (err == nil) != tt.ok {
			t.Errorf("Decode with %+v = %v, want ok=%v", tt.lim, err, tt.ok)
		}
	}
	// A file named "path" and a symlink to "path" do not count as entries.
	named := &Manifest{Entries: []Entry{
		{Path: ".", Type: Dir},
		{Path: "path", Type: Symlink, Target: "path"},
	}}
	nb, err := named.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(nb, Limits{MaxEntries: 2, MaxBytes: 1 << 20, MaxFileSize: 1}); err != nil {
		t.Errorf("manifest of exactly MaxEntries rejected: %v", err)
	}
}

func TestDefaultLimits(t *testing.T) {
	got := DefaultLimits()
	want := Limits{MaxEntries: 5_000_000, MaxBytes: 2 * 1024 * 1024 * 1024, MaxFileSize: 16 * 1024 * 1024 * 1024 * 1024, MaxChunks: 20_000_000}
	if got != want {
		t.Errorf("DefaultLimits = %+v, want %+v", got, want)
	}
}

// A hostile manifest with more entries than the limit is refused before
// its entries are decoded, and one larger than the byte limit before it is
// even counted.
func TestDecodeLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"entries":[{"path":".","type":"dir","mode":493}`)
	for i := range 1000 {
		fmt.Fprintf(&b, `,{"path":"f%05d","type":"file","mode":420,"size":1,"hash":"%s"}`, i, strings.Repeat("a", 64))
	}
	b.WriteString(`]}`)
	lim := Limits{MaxEntries: 500, MaxBytes: 1 << 20, MaxFileSize: 1 << 40}
	if _, err := Decode([]byte(b.String()), lim); err == nil || !strings.Contains(err.Error(), "more than the limit of 500") {
		t.Errorf("1001 entries with a limit of 500: %v", err)
	}
	lim.MaxBytes = 1000
	if _, err := Decode([]byte(b.String()), lim); err == nil || !strings.Contains(err.Error(), "bytes, more than the limit") {
		t.Errorf("oversized manifest: %v", err)
	}
	// Within limits, the same manifest decodes.
	lim = Limits{MaxEntries: 2000, MaxBytes: 1 << 20, MaxFileSize: 1 << 40}
	if m, err := Decode([]byte(b.String()), lim); err != nil || len(m.Entries) != 1001 {
		t.Errorf("within limits: %v", err)
	}
}

// TestDecodeCanonicalTakesEncode: whatever Encode writes, Decode's fast
// path decodes, to what encoding/json decodes (a fast path that refused
// every input would pass FuzzDecodeCanonical).
func TestDecodeCanonicalTakesEncode(t *testing.T) {
	escaped := &Manifest{Entries: []Entry{
		{Path: ".", Type: Dir, Mode: 0o755, MTime: 1},
		{Path: "R&D <x> \u2028\ufffd é", Type: File, Mode: 0o644, MTime: 2, Size: 1, Hash: strings.Repeat("a", 64)},
		{Path: "link", Type: Symlink, Mode: 0o777, MTime: 3, Target: "../a\tb\"c\\d"},
	}}
	for name, m := range map[string]*Manifest{"valid": validManifest(), "owned": ownedManifest(), "chunked": chunkedManifest(), "escaped": escaped} {
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodeCanonical(b, 0)
		if !ok {
			t.Fatalf("%s: fast path refused Encode's output %s", name, b)
		}
		var want Manifest
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("%s: fast path decoded\n%#v\nencoding/json\n%#v", name, *got, want)
		}
	}
}

// BenchmarkDecode decodes a manifest of 100,000 small files (100
// directories of 1,000), with and without Decode's fast path.
func BenchmarkDecode(b *testing.B) {
	m := &Manifest{Entries: []Entry{{Path: ".", Type: Dir, Mode: 0o755, MTime: 1}}}
	for d := range 100 {
		dir := fmt.Sprintf("d%03d", d)
		m.Entries = append(m.Entries, Entry{Path: dir, Type: Dir, Mode: 0o755, MTime: 1764480000123456789, User: "root", Group: "root", UID: NewOwnerID(0), GID: NewOwnerID(0)})
		for f := range 1000 {
			m.Entries = append(m.Entries, Entry{Path: fmt.Sprintf("%s/file-%04d.txt", dir, f), Type: File, Mode: 0o644, Size: 4400,
				MTime: 1764480000123456789, Hash: strings.Repeat("3f", 32), User: "root", Group: "root", UID: NewOwnerID(0), GID: NewOwnerID(0)})
		}
	}
	p := chunk.DefaultParams()
	m.Chunking = &p
	enc, err := m.Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if _, err := Decode(enc, DefaultLimits()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeStd(enc, DefaultLimits()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
