package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/fanout/fanout/internal/chunk"
)

// FuzzDecode checks that Decode never panics on hostile input and that what
// it accepts is a fixed point of Encode/Decode.
func FuzzDecode(f *testing.F) {
	good, _ := validManifest().Encode()
	f.Add(good)
	owned, _ := ownedManifest().Encode()
	f.Add(owned)
	chunked, _ := chunkedManifest().Encode()
	f.Add(chunked)
	f.Add([]byte(`{"chunking":{"min":64,"avg":256,"max":1024},"entries":[{"path":".","type":"file","mode":420,"size":2000,"mtime":1,"hash":"` +
		strings.Repeat("0", 64) + `","chunks":[{"off":0,"len":1000,"hash":"` + strings.Repeat("1", 64) + `"},{"off":1000,"len":1000,"hash":"` + strings.Repeat("2", 64) + `"}]}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"file","mode":420,"size":1,"mtime":1,"hash":"` + string(make([]byte, 0)) + `"}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"dir"},{"path":"a","type":"symlink","target":"/etc"},{"path":"a/passwd","type":"file"}]}`))
	f.Add([]byte(`{"entries":[{"path":"../x","type":"dir"}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := Limits{MaxEntries: 1000, MaxBytes: 1 << 20, MaxFileSize: 1 << 40, MaxChunks: 1000}
		m, err := Decode(b, lim)
		if err != nil {
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(enc, lim)
		if err != nil {
			t.Fatalf("re-decoding an accepted manifest failed: %v", err)
		}
		if !slices.EqualFunc(m.Entries, m2.Entries, Entry.Equal) || m.Format() != m2.Format() {
			t.Fatal("round trip changed the manifest")
		}
		// Every file's chunk list is one a Verifier can take.
		for _, e := range m.Entries {
			if _, err := e.Refs(); e.Type == File && err != nil {
				t.Fatalf("%s: refs of an accepted entry: %v", e.Path, err)
			}
		}
	})
}

// FuzzDecodeCanonical checks that decodeCanonical, Decode's fast path,
// decodes what it accepts exactly as encoding/json does, and that Decode
// accepts exactly what encoding/json alone would.
func FuzzDecodeCanonical(f *testing.F) {
	for _, m := range []*Manifest{validManifest(), ownedManifest(), chunkedManifest()} {
		b, _ := m.Encode()
		f.Add(b)
	}
	f.Add([]byte(`{"entries":[{"path":".","type":"dir","mode":493,"mtime":1,"Path":"x"}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"dir","mode":493,"mtime":1,"path":"y"}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"dir","mode":493,"mtime":1,"uid":null,"gid":1}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"dir","mode":-1,"mtime":01}]}`))
	f.Add([]byte(`{"entries":[{"path":".\u0000","type":"dir","mode":1e3,"mtime":-0}]} `))
	f.Add([]byte("{\"entries\":[{\"path\":\".\",\"type\":\"dir\",\"user\":\"\xff\"}]}"))
	f.Add([]byte(`{"chunking":{},"exclude":[],"entries":[{"path":".","type":"file","chunks":[]}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"dir","mode":-0,"mtime":1}]}`))
	f.Add([]byte(`{"entries":[{"path":".","type":"dir","mode":493,"mtime":1},{"path":"R\u0026D \u003cx\u003e\t\u2028\ufffd\ud800\/","type":"file"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, ok := decodeCanonical(b, 0); ok {
			var want Manifest
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&want); err != nil || dec.InputOffset() != int64(len(b)) {
				t.Fatalf("fast path accepted what encoding/json refuses (%v, %d of %d bytes)", err, dec.InputOffset(), len(b))
			}
			if !reflect.DeepEqual(*m, want) {
				t.Fatalf("fast path and encoding/json disagree:\n%#v\n%#v", *m, want)
			}
		}
		lim := Limits{MaxEntries: 1000, MaxBytes: 1 << 20, MaxFileSize: 1 << 40, MaxChunks: 1000}
		m, err := Decode(b, lim)
		want, werr := decodeStd(b, lim)
		if (err == nil) != (werr == nil) {
			t.Fatalf("Decode: %v; encoding/json alone: %v", err, werr)
		}
		if err == nil && !reflect.DeepEqual(m, want) {
			t.Fatalf("Decode and encoding/json alone disagree:\n%#v\n%#v", m, want)
		}
	})
}

// decodeStd is Decode with encoding/json alone.
func decodeStd(b []byte, lim Limits) (*Manifest, error) {
	if int64(len(b)) > lim.MaxBytes {
		return nil, errors.New("too large")
	}
	if n := bytes.Count(b, []byte(`"path":`)); n > lim.MaxEntries {
		return nil, errors.New("too many entries")
	}
	if n := bytes.Count(b, []byte(`"off":`)); n > lim.MaxChunks {
		return nil, errors.New("too many chunks")
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if rest := bytes.Trim(b[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return nil, errors.New("trailing data")
	}
	if len(m.Entries) == 0 {
		return nil, errors.New("no entries")
	}
	if err := m.Validate(lim); err != nil {
		return nil, err
	}
	return &m, nil
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

// chunkedManifest is a valid format 3 manifest: a file of several chunks
// and one of one.
func chunkedManifest() *Manifest {
	p := chunk.Params{Min: 64, Avg: 256, Max: 1024}
	data := make([]byte, 3000)
	for i := range data {
		data[i] = byte(i * i >> 3)
	}
	c, _ := chunk.New(bytes.NewReader(data), p)
	var cs []Chunk
	for {
		ch, err := c.Next()
		if err != nil {
			break
		}
		cs = append(cs, Chunk{Off: ch.Off, Len: int64(ch.Len()), Hash: chunk.Hash(ch.Data).String()})
	}
	h, _ := ChunkListHash(cs)
	return &Manifest{Chunking: &p, Entries: []Entry{
		{Path: ".", Type: Dir, Mode: 0o755, MTime: 1},
		{Path: "f", Type: File, Mode: 0o644, Size: int64(len(data)), MTime: 2, Hash: h, Chunks: cs},
		{Path: "g", Type: File, Mode: 0o644, Size: 5, MTime: 3, Hash: chunk.Hash([]byte("hello")).String()},
	}}
}
