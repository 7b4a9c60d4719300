package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/manifest"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

var testSecret = []byte("test-secret-0123456789")

// tree is a task tree on disk and the snapshot describing it.
type tree struct {
	root  string
	files map[string][]byte // manifest path -> content
	snap  *Snapshot
}

// newTree writes a task tree into a temp dir:
//
//	a.txt  sub/  sub/b.bin (200 KiB)  empty  link -> a.txt
//
// and describes it in a generation-gen snapshot. extra entries are appended
// to the manifest as they are.
func newTree(t *testing.T, gen int64, extra ...manifest.Entry) *tree {
	t.Helper()
	root := filepath.Join(t.TempDir(), "task")
	big := make([]byte, 200<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	tr := &tree{root: root, files: map[string][]byte{
		"a.txt":     []byte("hello, peers\n"),
		"sub/b.bin": big,
		"empty":     {},
	}}
	mustMkdir(t, filepath.Join(root, "sub"))
	for p, b := range tr.files {
		mustWrite(t, filepath.Join(root, p), b)
	}
	if err := os.Symlink("a.txt", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Entries: []manifest.Entry{
		{Path: ".", Type: manifest.Dir, Mode: 0o755},
		{Path: "a.txt", Type: manifest.File, Mode: 0o644, Size: int64(len(tr.files["a.txt"]))},
		{Path: "empty", Type: manifest.File, Mode: 0o644},
		{Path: "link", Type: manifest.Symlink, Mode: 0o777, Target: "a.txt"},
		{Path: "sub", Type: manifest.Dir, Mode: 0o755},
		{Path: "sub/b.bin", Type: manifest.File, Mode: 0o644, Size: int64(len(big))},
	}}
	m.Entries = append(m.Entries, extra...)
	tr.snap = snapshotOf(t, gen, root, m)
	return tr
}

func snapshotOf(t *testing.T, gen int64, root string, m *manifest.Manifest) *Snapshot {
	t.Helper()
	enc, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return &Snapshot{Gen: gen, Digest: "not-checked-here", Encoded: enc, Manifest: m, Root: root}
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// peerEnv is a Server listening on a real socket, and a Client for it.
type peerEnv struct {
	server *Server
	http   *httptest.Server
	addr   string
	client *Client
	logs   *logtest.Hook
}

func startPeer(t *testing.T, snap *Snapshot) *peerEnv {
	t.Helper()
	return startPeerWith(t, snap, ServerConfig{Secrets: [][]byte{testSecret}})
}

// startPeerWith is startPeer with a server configured by cfg, whose Log is
// replaced by a test hook.
func startPeerWith(t *testing.T, snap *Snapshot, cfg ServerConfig) *peerEnv {
	t.Helper()
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	cfg.Log = log
	s := NewServer(cfg)
	s.Set(snap)
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	t.Cleanup(c.CloseIdleConnections)
	return &peerEnv{server: s, http: hs, addr: hs.Listener.Addr().String(), client: c, logs: hook}
}

// rawGet sends a GET for uri (path and raw query) to the peer, signed with
// secret unless secret is nil, and returns the status and body.
func (e *peerEnv) rawGet(t *testing.T, method, uri string, secret []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.http.URL+uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	if secret != nil {
		Sign(req, secret, time.Now())
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func fetch(t *testing.T, c *Client, addr string, gen int64, p string, offset int64) ([]byte, error) {
	t.Helper()
	var buf bytes.Buffer
	n, err := c.Fetch(context.Background(), addr, gen, p, offset, &buf)
	if n != int64(buf.Len()) {
		t.Fatalf("Fetch(%q) returned %d bytes written, the writer got %d", p, n, buf.Len())
	}
	return buf.Bytes(), err
}

func TestManifest(t *testing.T) {
	tr := newTree(t, 3)
	e := startPeer(t, tr.snap)
	got, err := e.client.Manifest(context.Background(), e.addr, 3)
	if err != nil {
		t.Fatalf("Manifest: %v", err)
	}
	if !bytes.Equal(got, tr.snap.Encoded) {
		t.Fatalf("Manifest = %q, want %q", got, tr.snap.Encoded)
	}
}

func TestManifestHeaders(t *testing.T) {
	tr := newTree(t, 3)
	e := startPeer(t, tr.snap)
	req, err := http.NewRequest("GET", e.http.URL+"/v1/manifest?gen=3", nil)
	if err != nil {
		t.Fatal(err)
	}
	Sign(req, testSecret, time.Now())
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", got)
	}
	if got := resp.Header.Get(headerGeneration); got != "3" {
		t.Errorf("%s = %q, want 3", headerGeneration, got)
	}
	if resp.ContentLength != int64(len(tr.snap.Encoded)) {
		t.Errorf("Content-Length = %d, want %d", resp.ContentLength, len(tr.snap.Encoded))
	}
}

func TestFetchWhole(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	for p, want := range tr.files {
		t.Run(p, func(t *testing.T) {
			got, err := fetch(t, e.client, e.addr, 1, p, 0)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Fetch got %d bytes, want %d bytes of the file", len(got), len(want))
			}
		})
	}
}

func TestFetchOffset(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	want := tr.files["sub/b.bin"]
	for _, off := range []int64{1, 4096, int64(len(want)) / 2, int64(len(want)) - 1} {
		t.Run(fmt.Sprint(off), func(t *testing.T) {
			got, err := fetch(t, e.client, e.addr, 1, "sub/b.bin", off)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if !bytes.Equal(got, want[off:]) {
				t.Fatalf("Fetch from %d got %d bytes, want the last %d bytes of the file", off, len(got), len(want)-int(off))
			}
		})
	}
}

func TestStale(t *testing.T) {
	tr := newTree(t, 5)
	e := startPeer(t, tr.snap)
	t.Run("manifest of another generation", func(t *testing.T) {
		if _, err := e.client.Manifest(context.Background(), e.addr, 4); !errors.Is(err, ErrStale) {
			t.Fatalf("Manifest: %v, want ErrStale", err)
		}
	})
	t.Run("file of another generation", func(t *testing.T) {
		if _, err := fetch(t, e.client, e.addr, 6, "a.txt", 0); !errors.Is(err, ErrStale) {
			t.Fatalf("Fetch: %v, want ErrStale", err)
		}
	})
	t.Run("nothing served", func(t *testing.T) {
		e.server.Set(nil)
		t.Cleanup(func() { e.server.Set(tr.snap) })
		if e.server.Current() != nil {
			t.Fatalf("Current = %v after Set(nil)", e.server.Current())
		}
		if _, err := e.client.Manifest(context.Background(), e.addr, 5); !errors.Is(err, ErrStale) {
			t.Fatalf("Manifest: %v, want ErrStale", err)
		}
		if _, err := fetch(t, e.client, e.addr, 5, "a.txt", 0); !errors.Is(err, ErrStale) {
			t.Fatalf("Fetch: %v, want ErrStale", err)
		}
	})
}

func TestNoSnapshotYet(t *testing.T) {
	e := startPeer(t, nil)
	if _, err := e.client.Manifest(context.Background(), e.addr, 1); !errors.Is(err, ErrStale) {
		t.Fatalf("Manifest: %v, want ErrStale", err)
	}
}

// A generation the server expects (Expect: the host offered itself before
// its pull had the manifest) is waited for: a request that came before the
// snapshot is answered from it once it is set, a Set(nil) meanwhile (the
// pull dropping the old snapshot) does not end the wait; a request for
// another generation is refused at once; the expectation's cancel, or its
// wait running out, answers as a server that serves nothing (ErrStale).
func TestExpectedGenerationWaits(t *testing.T) {
	tr := newTree(t, 3)
	e := startPeer(t, nil)
	ctx := context.Background()
	cancel := e.server.Expect(3, time.Minute)
	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		b, err := e.client.Manifest(ctx, e.addr, 3)
		got <- result{b, err}
	}()
	if _, err := e.client.Manifest(ctx, e.addr, 2); !errors.Is(err, ErrStale) {
		t.Fatalf("Manifest of generation 2 while 3 is expected: %v, want ErrStale at once", err)
	}
	e.server.Set(nil)
	select {
	case r := <-got:
		t.Fatalf("the request for the expected generation ended before its snapshot: %q, %v", r.b, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	e.server.Set(tr.snap)
	if r := <-got; r.err != nil || !bytes.Equal(r.b, tr.snap.Encoded) {
		t.Fatalf("Manifest once the expected snapshot was set: %q, %v", r.b, r.err)
	}
	cancel() // after the Set: nothing left to end

	e.server.Set(nil)
	cancel = e.server.Expect(4, time.Minute)
	go func() {
		b, err := e.client.Manifest(ctx, e.addr, 4)
		got <- result{b, err}
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if r := <-got; !errors.Is(r.err, ErrStale) {
		t.Fatalf("Manifest after the expectation was cancelled: %v, want ErrStale", r.err)
	}

	e.server.Expect(5, 50*time.Millisecond)
	if _, err := e.client.Manifest(ctx, e.addr, 5); !errors.Is(err, ErrStale) {
		t.Fatalf("Manifest once the expectation's wait ran out: %v, want ErrStale", err)
	}
	if s := e.server.Await(ctx, 6); s != nil {
		t.Fatalf("Await of a generation not expected = %v, want nil at once", s)
	}
}

func TestSetSwapsGeneration(t *testing.T) {
	old := newTree(t, 1)
	e := startPeer(t, old.snap)
	next := newTree(t, 2)
	next.files["a.txt"] = []byte("generation two\n")
	mustWrite(t, filepath.Join(next.root, "a.txt"), next.files["a.txt"])
	next.snap.Manifest.Entries[1].Size = int64(len(next.files["a.txt"]))
	e.server.Set(next.snap)
	if e.server.Current() != next.snap {
		t.Fatalf("Current is not the snapshot just set")
	}
	if _, err := fetch(t, e.client, e.addr, 1, "a.txt", 0); !errors.Is(err, ErrStale) {
		t.Fatalf("Fetch of the old generation: %v, want ErrStale", err)
	}
	got, err := fetch(t, e.client, e.addr, 2, "a.txt", 0)
	if err != nil || !bytes.Equal(got, next.files["a.txt"]) {
		t.Fatalf("Fetch of the new generation = %q, %v; want %q", got, err, next.files["a.txt"])
	}
}

func TestConcurrentSet(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			e.server.Set(nil)
			e.server.Set(tr.snap)
		}
	})
	for range 50 {
		got, err := fetch(t, e.client, e.addr, 1, "a.txt", 0)
		if err != nil && !errors.Is(err, ErrStale) {
			t.Errorf("Fetch during Set: %v, want success or ErrStale", err)
		}
		if err == nil && !bytes.Equal(got, tr.files["a.txt"]) {
			t.Errorf("Fetch during Set = %q", got)
		}
	}
	cancel()
	wg.Wait()
}

func TestNotFound(t *testing.T) {
	tr := newTree(t, 1)
	mustWrite(t, filepath.Join(tr.root, "unlisted"), []byte("on disk, not in the manifest"))
	e := startPeer(t, tr.snap)
	for _, p := range []string{"nope", "unlisted", "sub", ".", "link", "sub/nope"} {
		t.Run(p, func(t *testing.T) {
			got, err := fetch(t, e.client, e.addr, 1, p, 0)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Fetch(%q) = %d bytes, %v; want ErrNotFound", p, len(got), err)
			}
		})
	}
}

func TestBadPaths(t *testing.T) {
	tr := newTree(t, 1)
	// Were the path check missing, these would be found in the manifest.
	tr.snap.Manifest.Entries = append(tr.snap.Manifest.Entries,
		manifest.Entry{Path: "../outside", Type: manifest.File},
		manifest.Entry{Path: "/etc/passwd", Type: manifest.File},
	)
	e := startPeer(t, tr.snap)
	for _, p := range []string{"..", "../outside", "sub/../a.txt", "/etc/passwd", "a\x00.txt", "", "./a.txt", "sub/", "sub//b.bin"} {
		t.Run(fmt.Sprintf("%q", p), func(t *testing.T) {
			code, body := e.rawGet(t, "GET", "/v1/file?gen=1&path="+url.QueryEscape(p), testSecret)
			if code != http.StatusBadRequest {
				t.Fatalf("status %d (%q), want 400", code, body)
			}
		})
	}
	t.Run("no path", func(t *testing.T) {
		if code, body := e.rawGet(t, "GET", "/v1/file?gen=1", testSecret); code != http.StatusBadRequest {
			t.Fatalf("status %d (%q), want 400", code, body)
		}
	})
	t.Run("two paths", func(t *testing.T) {
		if code, body := e.rawGet(t, "GET", "/v1/file?gen=1&path=a.txt&path=empty", testSecret); code != http.StatusBadRequest {
			t.Fatalf("status %d (%q), want 400", code, body)
		}
	})
	t.Run("bad gen", func(t *testing.T) {
		if code, body := e.rawGet(t, "GET", "/v1/manifest?gen=one", testSecret); code != http.StatusBadRequest {
			t.Fatalf("status %d (%q), want 400", code, body)
		}
	})
}

func TestSymlinksNotFollowed(t *testing.T) {
	outside := t.TempDir()
	secretData := []byte("outside the task root\n")
	mustWrite(t, filepath.Join(outside, "secret"), secretData)
	size := int64(len(secretData))
	tr := newTree(t, 1,
		// Listed as files, symlinks on disk.
		manifest.Entry{Path: "evil", Type: manifest.File, Size: size},
		manifest.Entry{Path: "inside", Type: manifest.File, Size: int64(len("hello, peers\n"))},
		// Listed under a directory that is a symlink on disk.
		manifest.Entry{Path: "evildir", Type: manifest.Dir},
		manifest.Entry{Path: "evildir/secret", Type: manifest.File, Size: size},
		manifest.Entry{Path: "subdir", Type: manifest.Dir},
		manifest.Entry{Path: "subdir/b.bin", Type: manifest.File, Size: 200 << 10},
	)
	for link, target := range map[string]string{
		"evil":    filepath.Join(outside, "secret"),
		"inside":  "a.txt",
		"evildir": outside,
		"subdir":  "sub",
	} {
		if err := os.Symlink(target, filepath.Join(tr.root, link)); err != nil {
			t.Fatal(err)
		}
	}
	e := startPeer(t, tr.snap)
	for _, p := range []string{"evil", "inside", "evildir/secret", "subdir/b.bin"} {
		t.Run(p, func(t *testing.T) {
			got, err := fetch(t, e.client, e.addr, 1, p, 0)
			if err == nil || len(got) != 0 {
				t.Fatalf("Fetch(%q) = %d bytes, %v; want an error and nothing written", p, len(got), err)
			}
			if !errors.Is(err, ErrStale) {
				t.Fatalf("Fetch(%q): %v, want ErrStale (tree differs from its manifest)", p, err)
			}
		})
	}
}

func TestSizeChangedOnDisk(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	mustWrite(t, filepath.Join(tr.root, "a.txt"), []byte("grown since the manifest was built\n"))
	got, err := fetch(t, e.client, e.addr, 1, "a.txt", 0)
	if !errors.Is(err, ErrStale) || len(got) != 0 {
		t.Fatalf("Fetch = %d bytes, %v; want nothing and ErrStale", len(got), err)
	}
	if err := os.Remove(filepath.Join(tr.root, "sub", "b.bin")); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(t, e.client, e.addr, 1, "sub/b.bin", 0); !errors.Is(err, ErrStale) {
		t.Fatalf("Fetch of a removed file: %v, want ErrStale", err)
	}
}

func TestSingleFileTask(t *testing.T) {
	dir := t.TempDir()
	content := []byte("a single-file task\n")
	file := filepath.Join(dir, "model.bin")
	mustWrite(t, file, content)
	mustWrite(t, filepath.Join(dir, "neighbour"), []byte("not part of the task"))
	m := &manifest.Manifest{Entries: []manifest.Entry{
		{Path: ".", Type: manifest.File, Mode: 0o644, Size: int64(len(content))},
	}}
	e := startPeer(t, snapshotOf(t, 9, file, m))

	got, err := fetch(t, e.client, e.addr, 9, ".", 0)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("Fetch(.) = %q, %v; want %q", got, err, content)
	}
	got, err = fetch(t, e.client, e.addr, 9, ".", 2)
	if err != nil || !bytes.Equal(got, content[2:]) {
		t.Fatalf("Fetch(., 2) = %q, %v; want %q", got, err, content[2:])
	}
	if _, err := fetch(t, e.client, e.addr, 9, "neighbour", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch(neighbour): %v, want ErrNotFound", err)
	}
}

func TestSingleFileTaskIsSymlink(t *testing.T) {
	dir := t.TempDir()
	content := []byte("the real file\n")
	mustWrite(t, filepath.Join(dir, "real"), content)
	link := filepath.Join(dir, "task")
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Entries: []manifest.Entry{
		{Path: ".", Type: manifest.File, Mode: 0o644, Size: int64(len(content))},
	}}
	e := startPeer(t, snapshotOf(t, 1, link, m))
	if got, err := fetch(t, e.client, e.addr, 1, ".", 0); !errors.Is(err, ErrStale) {
		t.Fatalf("Fetch(.) = %d bytes, %v; want ErrStale", len(got), err)
	}
}

func TestAuthentication(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	t.Run("unsigned", func(t *testing.T) {
		for _, uri := range []string{"/v1/manifest?gen=1", "/v1/file?gen=1&path=a.txt", "/nowhere"} {
			if code, body := e.rawGet(t, "GET", uri, nil); code != http.StatusUnauthorized {
				t.Errorf("GET %s unsigned: status %d (%q), want 401", uri, code, body)
			}
		}
		var warned bool
		for _, entry := range e.logs.AllEntries() {
			remote, _ := entry.Data["remote"].(string)
			if entry.Level == logrus.WarnLevel && strings.HasPrefix(remote, "127.0.0.1:") && entry.Data[logrus.ErrorKey] != nil {
				warned = true
			}
		}
		if !warned {
			t.Errorf("no warning with the remote address and reason logged; logs: %v", e.logs.AllEntries())
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		c := NewClient(ClientConfig{Secrets: [][]byte{[]byte("not-the-shared-secret")}})
		t.Cleanup(c.CloseIdleConnections)
		if _, err := c.Manifest(context.Background(), e.addr, 1); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("Manifest: %v, want ErrUnauthorized", err)
		}
		if _, err := fetch(t, c, e.addr, 1, "a.txt", 0); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("Fetch: %v, want ErrUnauthorized", err)
		}
	})
	t.Run("clock skew", func(t *testing.T) {
		c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}, Now: func() time.Time { return time.Now().Add(-time.Hour) }})
		t.Cleanup(c.CloseIdleConnections)
		if _, err := c.Manifest(context.Background(), e.addr, 1); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("Manifest: %v, want ErrUnauthorized", err)
		}
	})
}

func TestHealthz(t *testing.T) {
	e := startPeer(t, nil)
	code, body := e.rawGet(t, "GET", "/healthz", nil)
	if code != http.StatusOK || body != "ok" {
		t.Fatalf("GET /healthz = %d %q, want 200 \"ok\"", code, body)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		if code, body := e.rawGet(t, m, "/v1/file?gen=1&path=a.txt", testSecret); code != http.StatusMethodNotAllowed {
			t.Errorf("%s: status %d (%q), want 405", m, code, body)
		}
	}
	if code, _ := e.rawGet(t, "HEAD", "/v1/file?gen=1&path=a.txt", testSecret); code != http.StatusOK {
		t.Errorf("HEAD: status %d, want 200", code)
	}
}

// fakePeer serves h on a real socket and returns its address.
func fakePeer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return hs.Listener.Addr().String()
}

func TestStalledPeer(t *testing.T) {
	release := make(chan struct{})
	addr := fakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("0123456789"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}, StallTimeout: 200 * time.Millisecond})
	t.Cleanup(c.CloseIdleConnections)
	var buf bytes.Buffer
	n, err := c.Fetch(context.Background(), addr, 1, "a.txt", 0, &buf)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch from a stalled peer: %v, want ErrUnavailable", err)
	}
	if n != 10 || buf.String() != "0123456789" {
		t.Fatalf("Fetch wrote %d bytes %q, want the 10 bytes sent before the stall", n, buf.String())
	}
}

// slowWriter sleeps before its first write.
type slowWriter struct {
	delay time.Duration
	slept bool
	buf   bytes.Buffer
}

func (w *slowWriter) Write(p []byte) (int, error) {
	if !w.slept {
		time.Sleep(w.delay)
		w.slept = true
	}
	return w.buf.Write(p)
}

func TestSlowWriterIsNotAStall(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	stall := 100 * time.Millisecond
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}, StallTimeout: stall})
	t.Cleanup(c.CloseIdleConnections)
	w := &slowWriter{delay: 3 * stall}
	if _, err := c.Fetch(context.Background(), e.addr, 1, "a.txt", 0, w); err != nil {
		t.Fatalf("Fetch into a slow writer: %v", err)
	}
	if !bytes.Equal(w.buf.Bytes(), tr.files["a.txt"]) {
		t.Fatalf("Fetch wrote %q, want %q", w.buf.Bytes(), tr.files["a.txt"])
	}
}

func TestPeerClosesMidBody(t *testing.T) {
	addr := fakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		conn, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
		bw.Flush()
	})
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	t.Cleanup(c.CloseIdleConnections)
	if _, err := fetch(t, c, addr, 1, "a.txt", 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch: %v, want ErrUnavailable", err)
	}
	if _, err := c.Manifest(context.Background(), addr, 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Manifest: %v, want ErrUnavailable", err)
	}
}

func TestPeerKilled(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	if _, err := fetch(t, e.client, e.addr, 1, "a.txt", 0); err != nil {
		t.Fatalf("Fetch before the kill: %v", err)
	}
	e.http.Close()
	if _, err := fetch(t, e.client, e.addr, 1, "a.txt", 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch after the kill: %v, want ErrUnavailable", err)
	}
	if _, err := e.client.Manifest(context.Background(), e.addr, 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Manifest after the kill: %v, want ErrUnavailable", err)
	}
}

func TestNoListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	if _, err := fetch(t, c, addr, 1, "a.txt", 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch: %v, want ErrUnavailable", err)
	}
}

func TestBrokenPeerAnswers(t *testing.T) {
	tests := []struct {
		name   string
		offset int64
		h      http.HandlerFunc
	}{
		{"server error", 0, func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "boom", http.StatusInternalServerError)
		}},
		{"range ignored", 5, func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("0123456789"))
		}},
		{"wrong range", 5, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-9/10")
			w.Header().Set("Content-Length", "10")
			w.WriteHeader(http.StatusPartialContent)
			w.Write([]byte("0123456789"))
		}},
		{"no content length", 0, func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush() // forces chunked encoding
			w.Write([]byte("0123456789"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := fakePeer(t, tt.h)
			c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
			t.Cleanup(c.CloseIdleConnections)
			if got, err := fetch(t, c, addr, 1, "a.txt", tt.offset); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Fetch = %q, %v; want ErrUnavailable", got, err)
			}
		})
	}
}

func TestCallerCancels(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := e.client.Fetch(ctx, e.addr, 1, "a.txt", 0, io.Discard)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch with a cancelled context: %v, want context.Canceled and not ErrUnavailable", err)
	}
}

func TestWriteErrorIsNotThePeers(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	diskFull := errors.New("disk full")
	_, err := e.client.Fetch(context.Background(), e.addr, 1, "sub/b.bin", 0, failingWriter{diskFull})
	if !errors.Is(err, diskFull) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch into a failing writer: %v, want the write error and not ErrUnavailable", err)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestDirTaskRootSwappedForSymlink(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	moved := tr.root + ".moved"
	if err := os.Rename(tr.root, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moved, tr.root); err != nil {
		t.Fatal(err)
	}
	if got, err := fetch(t, e.client, e.addr, 1, "a.txt", 0); !errors.Is(err, ErrStale) {
		t.Fatalf("Fetch = %d bytes, %v; want ErrStale", len(got), err)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ServerConfig{Secrets: [][]byte{testSecret}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		cancel()
		<-done
		t.Fatalf("GET /healthz: %v", err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel: %v, want nil", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatalf("listener still accepts after Serve returned")
	}
}

// FetchRange asks for exactly a run of bytes, from the start, the middle
// or the end of a file, and refuses an answer for other bytes.
func TestFetchRange(t *testing.T) {
	tr := newTree(t, 2)
	env := startPeer(t, tr.snap)
	want, err := os.ReadFile(filepath.Join(tr.root, "a.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, 5}, {3, 4}, {int64(len(want)) - 2, 2}, {0, int64(len(want))}} {
		var buf bytes.Buffer
		n, err := env.client.FetchRange(context.Background(), env.addr, 2, "a.txt", r[0], r[1], &buf)
		if err != nil || n != r[1] || !bytes.Equal(buf.Bytes(), want[r[0]:r[0]+r[1]]) {
			t.Errorf("range %v: %q (%d), %v; want %q", r, buf.Bytes(), n, err, want[r[0]:r[0]+r[1]])
		}
	}
	var buf bytes.Buffer
	if _, err := env.client.FetchRange(context.Background(), env.addr, 2, "a.txt", int64(len(want)), 1, &buf); err == nil {
		t.Error("a range past the end was answered")
	}
}
