package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/manifest"
	"github.com/sirupsen/logrus"
)

// These tests play a hostile network against the peer server and client:
// oversized requests, floods of refused requests, lying peers.

// fakeClock is a settable clock for ServerConfig.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// syncBuffer is a bytes.Buffer safe for a logger written from handlers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A flood of refused requests with long URIs writes a few short lines, not
// a copy of each URI: the warning is rate-limited, and what it repeats of
// the request is cut.
func TestRefusedRequestLogIsBounded(t *testing.T) {
	var logs syncBuffer
	log := logrus.New()
	log.SetOutput(&logs)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := NewServer(ServerConfig{Secrets: [][]byte{testSecret}, Log: log, Now: clock.Now})
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	client := hs.Client()

	long := "/v1/manifest?gen=1&junk=" + strings.Repeat("A", 60<<10)
	get := func() {
		t.Helper()
		resp, err := client.Get(hs.URL + long)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
		if len(body) > 1024 {
			t.Fatalf("401 body is %d bytes, want a short message", len(body))
		}
	}
	const flood = 100
	for range flood {
		get()
	}
	clock.Add(logInterval)
	get() // the next second: one line, counting the ones held back

	out := logs.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	t.Logf("%d requests of %d bytes logged %d bytes in %d lines", flood+1, len(long), len(out), len(lines))
	if len(out) > 4<<10 {
		t.Errorf("logged %d bytes for %d refused requests, want a few KB at most:\n%.2000s", len(out), flood+1, out)
	}
	if len(lines) != 2 {
		t.Fatalf("logged %d lines, want 2 (the first refusal, then one a second later):\n%.2000s", len(lines), out)
	}
	if !strings.Contains(lines[1], "suppressed="+strconv.Itoa(flood-1)) {
		t.Errorf("second line %q does not count the %d refusals held back", lines[1], flood-1)
	}
	if !strings.Contains(lines[0], strconv.Itoa(len(long))+" bytes") {
		t.Errorf("line %q does not say how long the cut URI was", lines[0])
	}
}

func TestLogLimiter(t *testing.T) {
	var l logLimiter
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{0, true, 0},
		{time.Millisecond, false, 0},
		{logInterval - 1, false, 0},
		{logInterval, true, 2},
		{logInterval + 1, false, 0},
		{10 * logInterval, true, 1},
		{11 * logInterval, true, 0},
	}
	for _, st := range steps {
		ok, n := l.allow(t0.Add(st.at))
		if ok != st.ok || n != st.suppressed {
			t.Errorf("at +%v: allow = %v, %d; want %v, %d", st.at, ok, n, st.ok, st.suppressed)
		}
	}
}

// No error body repeats a long piece of the request: each is a short
// message however large the URI, the method or a header.
func TestErrorBodiesAreBounded(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	big := strings.Repeat("x", 60<<10)
	var spec strings.Builder
	for i := range 50_000 {
		if i > 0 {
			spec.WriteByte(',')
		}
		spec.WriteString(strconv.Itoa(2 * i))
	}
	tests := []struct {
		name   string
		method string
		uri    string
		header http.Header
		signed bool
		code   int
	}{
		{"batch of 50k indices", "GET", "/v1/batch?gen=1&files=" + spec.String(), nil, true, http.StatusBadRequest},
		{"batch index of 60k digits", "GET", "/v1/batch?gen=1&files=1" + strings.Repeat("0", 60<<10), nil, true, http.StatusBadRequest},
		{"batch range of 60k digits", "GET", "/v1/batch?gen=1&files=1-0" + strings.Repeat("0", 60<<10), nil, true, http.StatusBadRequest},
		{"long bad path", "GET", "/v1/file?gen=1&path=" + strings.Repeat("..%2F", 12<<10), nil, true, http.StatusBadRequest},
		{"long missing file", "GET", "/v1/file?gen=1&path=" + big, nil, true, http.StatusNotFound},
		{"many paths", "GET", "/v1/file?gen=1" + strings.Repeat("&path="+strings.Repeat("p", 100), 500), nil, true, http.StatusBadRequest},
		{"long route", "GET", "/" + big, nil, true, http.StatusNotFound},
		{"long gen", "GET", "/v1/manifest?gen=" + big, nil, true, http.StatusBadRequest},
		{"bad query", "GET", "/v1/manifest?gen=1&" + big + "=%zz", nil, true, http.StatusBadRequest},
		{"long method", strings.Repeat("M", 60<<10), "/v1/manifest?gen=1", nil, false, http.StatusMethodNotAllowed},
		{"long unsigned URI", "GET", "/v1/manifest?gen=1&x=" + big, nil, false, http.StatusUnauthorized},
		{"long bad timestamp", "GET", "/v1/manifest?gen=1", http.Header{headerTimestamp: {big}, headerSignature: {"00"}}, false, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, e.http.URL+tt.uri, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header[k] = v
			}
			if tt.signed {
				Sign(req, testSecret, time.Now())
			}
			resp, err := e.http.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d (%.300q), want %d", resp.StatusCode, body, tt.code)
			}
			if len(body) > 1024 {
				t.Fatalf("a %d-byte request got a %d-byte error body, want a short message: %.300q", len(tt.uri)+len(tt.method), len(body), body)
			}
			if !resp.Close {
				t.Errorf("a %d answer kept the connection open", resp.StatusCode)
			}
		})
	}
	for _, entry := range e.logs.AllEntries() {
		if s, _ := entry.String(); len(s) > 4096 {
			t.Errorf("a log line of %d bytes: %.300s", len(s), s)
		}
	}
}

// A peer learns nothing of where the tree lives on this host: no 409 names
// an OS path. The path is logged locally.
func TestConflictsNameNoOSPath(t *testing.T) {
	tr := newTree(t, 1)
	e := startPeer(t, tr.snap)
	base := filepath.Dir(tr.root)

	// The file's size changed.
	mustWrite(t, filepath.Join(tr.root, "a.txt"), []byte("grown since the manifest was built\n"))
	_, err := fetch(t, e.client, e.addr, 1, "a.txt", 0)
	checkNoOSPath(t, "size changed", err, base)
	// A directory on the way became a symlink.
	if err := os.Rename(filepath.Join(tr.root, "sub"), filepath.Join(tr.root, "sub.moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub.moved", filepath.Join(tr.root, "sub")); err != nil {
		t.Fatal(err)
	}
	_, err = fetch(t, e.client, e.addr, 1, "sub/b.bin", 0)
	checkNoOSPath(t, "directory swapped for a symlink", err, base)
	// The task root became a symlink.
	moved := tr.root + ".moved"
	if err := os.Rename(tr.root, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moved, tr.root); err != nil {
		t.Fatal(err)
	}
	_, err = fetch(t, e.client, e.addr, 1, "a.txt", 0)
	checkNoOSPath(t, "task root swapped for a symlink", err, base)
	if !strings.Contains(err.Error(), "task root changed on disk") {
		t.Errorf("task root swapped: %v, want it said", err)
	}
	var logged bool
	for _, entry := range e.logs.AllEntries() {
		if err, ok := entry.Data[logrus.ErrorKey].(error); ok && strings.Contains(err.Error(), tr.root) {
			logged = true
		}
	}
	if !logged {
		t.Errorf("the task root %s is not in the local log", tr.root)
	}
}

func checkNoOSPath(t *testing.T, what string, err error, base string) {
	t.Helper()
	if !errors.Is(err, ErrStale) {
		t.Fatalf("%s: %v, want ErrStale", what, err)
	}
	if strings.Contains(err.Error(), base) {
		t.Errorf("%s: the peer's answer names an OS path: %v", what, err)
	}
}

// The client never allocates by a peer's Content-Length before the bytes
// arrive: a peer announcing a 1.9 GiB manifest and sending 10 bytes costs
// it a few MiB at most.
func TestManifestLengthIsNotTrusted(t *testing.T) {
	const announced = 19 << 30 / 10 // 1.9 GiB, under the manifest limit
	addr := fakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		conn, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		bw.WriteString("HTTP/1.1 200 OK\r\n" + headerGeneration + ": 1\r\nContent-Length: " + strconv.Itoa(announced) + "\r\n\r\n0123456789")
		bw.Flush()
	})
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	t.Cleanup(c.CloseIdleConnections)
	// Once to warm up connections and pools, then measured.
	if _, err := c.Manifest(context.Background(), addr, 1); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Manifest from a peer that lies about its length: %v, want ErrUnavailable", err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := c.Manifest(context.Background(), addr, 1)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Manifest: %v, want ErrUnavailable", err)
	}
	// The body is copied through a buffer of at most copyBuffer bytes into
	// one grown from at most maxPrealloc: allow both, and as much again.
	if d := after.TotalAlloc - before.TotalAlloc; d > 2*(copyBuffer+maxPrealloc) {
		t.Fatalf("Manifest allocated %d KiB for a peer that sent 10 bytes", d>>10)
	}
}

// Nor does it read response headers without bound.
func TestHugeResponseHeadersRefused(t *testing.T) {
	addr := fakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Padding", strings.Repeat("p", 256<<10))
		w.Header().Set(headerGeneration, "1")
		w.Write([]byte("{}"))
	})
	c := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	t.Cleanup(c.CloseIdleConnections)
	_, err := c.Manifest(context.Background(), addr, 1)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "header") {
		t.Fatalf("Manifest from a peer sending 256 KiB of headers: %v, want ErrUnavailable about the headers", err)
	}
}

// rangeGet sends a signed request for uri with the Range header rng (none
// if empty) and returns the response with its body read.
func (e *peerEnv) rangeGet(t *testing.T, method, uri, rng string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.http.URL+uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	Sign(req, testSecret, time.Now())
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// The server honours one byte range a request, exactly, and refuses
// several: a request of a few KB must not fetch a file many times over.
func TestRanges(t *testing.T) {
	tr := newTree(t, 1)
	var served atomic.Int64
	e := startPeerWith(t, tr.snap, ServerConfig{Secrets: [][]byte{testSecret}, Served: func(n int64) { served.Add(n) }})
	content := tr.files["sub/b.bin"]
	size := int64(len(content))
	const uri = "/v1/file?gen=1&path=sub%2Fb.bin"

	t.Run("single", func(t *testing.T) {
		tests := []struct {
			rng        string
			start, end int64 // bytes [start, end)
			partial    bool
		}{
			{"", 0, size, false},
			{"items=0-9", 0, size, false},
			{"bytes=0-", 0, size, true},
			{"bytes=1000-", 1000, size, true},
			{"bytes=10-19", 10, 20, true},
			{"bytes=0-0", 0, 1, true},
			{"bytes=100-99999999999", 100, size, true},
			{"bytes=-30", size - 30, size, true},
			{"bytes=-99999999999", 0, size, true},
			{"bytes=" + strconv.FormatInt(size-1, 10) + "-", size - 1, size, true},
		}
		for _, tt := range tests {
			served.Store(0)
			resp, body := e.rangeGet(t, "GET", uri, tt.rng)
			want := content[tt.start:tt.end]
			wantCode := http.StatusOK
			if tt.partial {
				wantCode = http.StatusPartialContent
			}
			if resp.StatusCode != wantCode || !bytes.Equal(body, want) || resp.ContentLength != int64(len(want)) {
				t.Errorf("Range %q: %d, %d bytes (Content-Length %d); want %d and bytes [%d, %d)",
					tt.rng, resp.StatusCode, len(body), resp.ContentLength, wantCode, tt.start, tt.end)
				continue
			}
			cr := resp.Header.Get("Content-Range")
			if wantCR := fmt.Sprintf("bytes %d-%d/%d", tt.start, tt.end-1, size); tt.partial && cr != wantCR {
				t.Errorf("Range %q: Content-Range %q, want %q", tt.rng, cr, wantCR)
			}
			if !tt.partial && cr != "" {
				t.Errorf("Range %q: Content-Range %q on a whole file", tt.rng, cr)
			}
			// The handler counts after the client has the bytes: wait for it.
			deadline := time.Now().Add(10 * time.Second)
			for served.Load() < int64(len(want)) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if got := served.Load(); got != int64(len(want)) {
				t.Errorf("Range %q: %d bytes counted as served, want %d", tt.rng, got, len(want))
			}
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		resp, body := e.rangeGet(t, "HEAD", uri, "bytes=10-19")
		if resp.StatusCode != http.StatusPartialContent || resp.ContentLength != 10 || len(body) != 0 {
			t.Errorf("HEAD with a range: %d, Content-Length %d, %d body bytes; want 206, 10, none", resp.StatusCode, resp.ContentLength, len(body))
		}
		resp, _ = e.rangeGet(t, "HEAD", uri, "")
		if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
			t.Errorf("HEAD: %d, Content-Length %d; want 200, %d", resp.StatusCode, resp.ContentLength, size)
		}
	})
	var many strings.Builder
	many.WriteString("bytes=0-")
	for range 8000 {
		many.WriteString(",0-")
	}
	unsatisfiable := []struct{ name, rng string }{
		{"8000 ranges", many.String()},
		{"two ranges", "bytes=0-9,10-19"},
		{"a suffix of zero bytes", "bytes=-0"},
		{"past the end", "bytes=" + strconv.FormatInt(size, 10) + "-"},
	}
	for _, tt := range unsatisfiable {
		t.Run(tt.name, func(t *testing.T) {
			served.Store(0)
			resp, body := e.rangeGet(t, "GET", uri, tt.rng)
			if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
				t.Fatalf("status %d with %d body bytes, want 416", resp.StatusCode, len(body))
			}
			if cr, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes */%d", size); cr != want {
				t.Errorf("Content-Range %q, want %q", cr, want)
			}
			if len(body) > 1024 || served.Load() != 0 {
				t.Errorf("a refused range got a %d-byte body, %d file bytes", len(body), served.Load())
			}
		})
	}
	t.Run("empty file", func(t *testing.T) {
		resp, body := e.rangeGet(t, "GET", "/v1/file?gen=1&path=empty", "bytes=-0")
		if resp.StatusCode != http.StatusOK || len(body) != 0 {
			t.Errorf("a range of an empty file: %d, %d bytes; want 200 and nothing", resp.StatusCode, len(body))
		}
	})
}

// A file still being received answers ranges the same way.
func TestRangesOfIncomingFile(t *testing.T) {
	tr := newTree(t, 3)
	content := randomBytes(64 << 10)
	en := manifest.Entry{Path: "new.bin", Type: manifest.File, Mode: 0o644, Size: int64(len(content))}
	m := tr.snap.Manifest
	m.Entries = append(m.Entries, en)
	m.Sort()
	snap := snapshotOf(t, 3, tr.root, m)
	snap.Incoming = NewIncoming([]manifest.Entry{en}, 5*time.Second)
	e := startPeer(t, snap)
	g := newGrowing(t, snap.Incoming, tr.root, en.Path, content)
	g.begin()
	g.write(len(content))
	const uri = "/v1/file?gen=3&path=new.bin"
	for _, rng := range []string{"bytes=0-0,1-1,2-2", "bytes=-0"} {
		resp, body := e.rangeGet(t, "GET", uri, rng)
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(content)) || len(body) > 1024 {
			t.Errorf("Range %q: %d, Content-Range %q, %d bytes; want 416 and bytes */%d", rng, resp.StatusCode, resp.Header.Get("Content-Range"), len(body), len(content))
		}
	}
	resp, body := e.rangeGet(t, "GET", uri, "bytes=-100")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, content[len(content)-100:]) {
		t.Errorf("the last 100 bytes: %d, %d bytes", resp.StatusCode, len(body))
	}
	g.land()
}
