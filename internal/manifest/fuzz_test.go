package manifest

import (
	"slices"
	"strings"
	"testing"
)

// FuzzDecode checks that Decode never panics on hostile input and that what
// it accepts is a fixed point of Encode/Decode.
func FuzzDecode(f *testing.F) {
	good, _ := validManifest().Encode()
	f.Add(good)
	owned, _ := ownedManifest().Encode()
	f.Add(owned)
	f.Add([]byte(`{"entries":[{"path":".","type":"file","mode":420,"size":1,"mtime":1,"hash":"` + string(make([]byte, 0)) + `"}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"dir"},{"path":"a","type":"symlink","target":"/etc"},{"path":"a/passwd","type":"file"}]}`))
	f.Add([]byte(`{"entries":[{"path":"../x","type":"dir"}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b, Limits{MaxEntries: 1000, MaxBytes: 1 << 20, MaxFileSize: 1 << 40})
		if err != nil {
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(enc, Limits{MaxEntries: 1000, MaxBytes: 1 << 20, MaxFileSize: 1 << 40})
		if err != nil {
			t.Fatalf("re-decoding an accepted manifest failed: %v", err)
		}
		if !slices.Equal(m.Entries, m2.Entries) {
			t.Fatal("round trip changed the manifest")
		}
	})
}

// FuzzValidPath checks that nothing ValidPath accepts can climb out of the
// task root.
func FuzzValidPath(f *testing.F) {
	for _, s := range []string{".", "a/b", "../x", "/etc", "a//b", "a\x00", "ü/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if ValidPath(p) != nil || p == "." {
			return
		}
		if p[0] == '/' || p == ".." || len(p) >= 3 && (p[:3] == "../" || p[len(p)-3:] == "/..") || strings.Contains(p, "/../") {
			t.Fatalf("ValidPath accepted %q", p)
		}
	})
}
