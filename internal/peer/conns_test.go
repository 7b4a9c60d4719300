package peer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/manifest"
	"github.com/sirupsen/logrus"
)

// servePeer runs s.Serve on a loopback listener until the test ends and
// returns its address.
func servePeer(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count open files: %v", err)
	}
	return len(ents)
}

// raiseFDLimit raises this process's soft limit on open files to the hard
// one for the test, and returns it.
func raiseFDLimit(t *testing.T) int {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	old := lim
	// Room for 20,000 idle connections and the server's side of them: a
	// root process (CI) may raise the hard limit too; others go up to it.
	const want = 45_000
	if lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
			return want
		}
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatalf("raise the open-file limit to %d: %v", lim.Max, err)
		}
		t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	}
	return int(min(lim.Cur, 1<<30))
}

// healthzKeepAlive asks for /healthz on c as a keep-alive client would and
// checks that the server answers and then closes the connection.
func healthzKeepAlive(t *testing.T, c net.Conn) {
	t.Helper()
	sendHealthz(t, c)
	checkHealthzClosed(t, c)
}

func sendHealthz(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: peer\r\n\r\n"); err != nil {
		t.Fatalf("send /healthz: %v", err)
	}
}

// checkHealthzClosed reads the answer to a /healthz request sent on c and
// checks that the server closes the connection after it.
func checkHealthzClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(time.Minute))
	defer c.SetDeadline(time.Time{})
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read /healthz answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" || !resp.Close {
		t.Fatalf("/healthz: %d %q, Connection: close %v; want 200 \"ok\" and the connection closed", resp.StatusCode, body, resp.Close)
	}
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after /healthz the connection is still open: read %d, %v", n, err)
	}
}

// A flood of idle connections, as many as this process may open up to
// 20,000, some kept after an unauthenticated /healthz, neither takes the
// peer port down nor makes the server hold more than its cap: signed
// requests made after it succeed.
func TestConnectionFlood(t *testing.T) {
	limit := raiseFDLimit(t)
	base := openFDs(t)
	// Client and server descriptors share the process limit: half each.
	n := min(20_000, (limit-base-256)/2)
	maxConns := DefaultMaxConns
	if n < 2*maxConns {
		maxConns = n / 4
	}
	t.Logf("open-file limit %d, %d open: %d idle connections against a cap of %d", limit, base, n, maxConns)
	if maxConns < 4 {
		t.Fatalf("an open-file limit of %d leaves room for %d connections: too few to test a cap", limit, n)
	}

	tr := newTree(t, 1)
	cfg := ServerConfig{Secrets: [][]byte{testSecret}}
	if maxConns != DefaultMaxConns {
		cfg.MaxConns = maxConns
	}
	s := NewServer(cfg)
	s.Set(tr.snap)
	addr := servePeer(t, s)

	// Watch the count while the flood runs.
	var (
		peak    int
		watchWG sync.WaitGroup
	)
	stopWatch := make(chan struct{})
	watchWG.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, s.Conns())
			select {
			case <-stopWatch:
				return
			case <-tick.C:
			}
		}
	})

	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	d := net.Dialer{Timeout: time.Minute}
	for i := range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, n, err)
		}
		conns = append(conns, c)
		if i%20 == 0 {
			healthzKeepAlive(t, c)
		}
	}
	// The oldest idle connection made room for the newer ones.
	conns[1].SetReadDeadline(time.Now().Add(time.Minute))
	if k, err := conns[1].Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the oldest idle connection: read %d, %v; want it closed by the server", k, err)
	}

	client := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	enc, err := client.Manifest(ctx, addr, 1)
	if err != nil || !bytes.Equal(enc, tr.snap.Encoded) {
		t.Fatalf("Manifest after the flood: %d bytes, %v", len(enc), err)
	}
	var buf bytes.Buffer
	if _, err := client.Fetch(ctx, addr, 1, "sub/b.bin", 0, &buf); err != nil || !bytes.Equal(buf.Bytes(), tr.files["sub/b.bin"]) {
		t.Fatalf("Fetch after the flood: %d bytes, %v", buf.Len(), err)
	}
	buf.Reset()
	if _, err := client.Fetch(ctx, addr, 1, "sub/b.bin", 1000, &buf); err != nil || !bytes.Equal(buf.Bytes(), tr.files["sub/b.bin"][1000:]) {
		t.Fatalf("Fetch from an offset after the flood: %d bytes, %v", buf.Len(), err)
	}

	close(stopWatch)
	watchWG.Wait()
	// The descriptors open now: ours, the flood's client ends, and the
	// server's, which the cap bounds.
	fds := openFDs(t)
	t.Logf("peak %d connections held; %d descriptors open, %d before the flood", peak, fds, base)
	if peak > maxConns || s.Conns() > maxConns {
		t.Errorf("the server held %d connections (now %d), more than its cap of %d", peak, s.Conns(), maxConns)
	}
	if server := fds - base - len(conns); server > maxConns+64 {
		t.Errorf("%d descriptors open beyond the flood's %d client ends: the server holds more than its cap of %d", server, len(conns), maxConns)
	}
}

// The cap closes connections that wait, never one serving a request: a
// pull in flight survives a flood, and while every place is serving, a new
// connection waits for one instead of displacing it.
func TestConnectionCapSparesRequestsInFlight(t *testing.T) {
	tr := newTree(t, 3)
	content := randomBytes(256 << 10)
	e := manifest.Entry{Path: "new.bin", Type: manifest.File, Mode: 0o644, Size: int64(len(content))}
	m := tr.snap.Manifest
	m.Entries = append(m.Entries, e)
	m.Sort()
	snap := snapshotOf(t, 3, tr.root, m)
	snap.Incoming = NewIncoming([]manifest.Entry{e}, time.Minute)
	s := NewServer(ServerConfig{Secrets: [][]byte{testSecret}, MaxConns: 1})
	s.Set(snap)
	addr := servePeer(t, s)
	g := newGrowing(t, snap.Incoming, tr.root, e.Path, content)
	g.begin()
	g.write(64 << 10) // more than the server buffers before sending

	// A pull that streams the file as it arrives: serving a request.
	client := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	defer client.CloseIdleConnections()
	started := make(chan struct{})
	w := &notifyWriter{first: started}
	done := make(chan error, 1)
	go func() {
		_, err := client.Fetch(context.Background(), addr, 3, e.Path, 0, w)
		done <- err
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("Fetch ended before the file arrived: %v", err)
	}

	// A newcomer waits while the only place is serving.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sendHealthz(t, c)
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if k, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection beyond the cap was served while the only place was busy: read %d, %v", k, err)
	}
	if got := s.Conns(); got != 1 {
		t.Errorf("Conns = %d with a cap of 1", got)
	}

	g.write(len(content))
	if err := <-done; err != nil || !bytes.Equal(w.buf.Bytes(), content) {
		t.Fatalf("the pull in flight: %d bytes, %v", w.buf.Len(), err)
	}
	g.land()
	// Its connection now waits for another request: the newcomer takes
	// its place and is answered.
	checkHealthzClosed(t, c)
}

// notifyWriter collects what it is written and closes first on its first
// write.
type notifyWriter struct {
	first chan struct{}
	buf   bytes.Buffer
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	if w.buf.Len() == 0 && len(p) > 0 {
		close(w.first)
	}
	return w.buf.Write(p)
}

// isClosed reports whether c, one end of a net.Pipe, was closed.
func isClosed(c net.Conn) bool {
	c.SetReadDeadline(time.Now())
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.ErrClosedPipe)
}

// The tracker closes the connection idle for longest, never one serving a
// request, and waits while every connection serves one.
func TestConnTrackerEvictsLongestIdle(t *testing.T) {
	tr := newConnTracker(3)
	var c [5]net.Conn
	for i := range c {
		c[i], _ = net.Pipe()
	}
	never := make(chan struct{})
	for _, x := range c[:3] {
		if !tr.admit(x, never) {
			t.Fatal("admit refused a connection under the cap")
		}
		tr.setState(x, http.StateNew)
	}
	// c0 serves a request and goes idle again: c1 now waited longest.
	tr.setState(c[0], http.StateActive)
	tr.setState(c[0], http.StateIdle)
	tr.admit(c[3], never)
	if !isClosed(c[1]) || isClosed(c[0]) || isClosed(c[2]) {
		t.Fatalf("closed c1 %v, c0 %v, c2 %v; want c1 alone", isClosed(c[1]), isClosed(c[0]), isClosed(c[2]))
	}
	if got := tr.count(); got != 3 {
		t.Fatalf("count = %d, want 3", got)
	}
	// A state reported for a connection the tracker closed is ignored.
	tr.setState(c[1], http.StateIdle)
	tr.setState(c[1], http.StateClosed)
	if got := tr.count(); got != 3 {
		t.Fatalf("count = %d after the closed connection's states, want 3", got)
	}

	// Every connection serves a request: a newcomer waits, closing none.
	for _, x := range []net.Conn{c[0], c[2], c[3]} {
		tr.setState(x, http.StateActive)
	}
	admitted := make(chan bool, 1)
	stop := make(chan struct{})
	go func() { admitted <- tr.admit(c[4], stop) }()
	select {
	case <-admitted:
		t.Fatal("admitted a connection while every place serves a request")
	case <-time.After(50 * time.Millisecond):
	}
	// One request ends: its connection makes room.
	tr.setState(c[2], http.StateIdle)
	if !<-admitted {
		t.Fatal("admit failed once a place came free")
	}
	if !isClosed(c[2]) || isClosed(c[0]) || isClosed(c[3]) {
		t.Fatalf("closed c2 %v, c0 %v, c3 %v; want c2 alone", isClosed(c[2]), isClosed(c[0]), isClosed(c[3]))
	}
	// A closed connection frees its place.
	tr.setState(c[0], http.StateClosed)
	if got := tr.count(); got != 2 {
		t.Fatalf("count = %d, want 2", got)
	}
	// A listener closing ends the wait.
	tr.setState(c[4], http.StateActive)
	extra, _ := net.Pipe()
	tr.admit(extra, never)
	tr.setState(extra, http.StateActive)
	last, _ := net.Pipe()
	go func() { admitted <- tr.admit(last, stop) }()
	close(stop)
	if <-admitted {
		t.Fatal("admit succeeded after its listener closed")
	}
}

// Serve takes request headers up to 64 KiB: the longest legitimate URI
// (about 16 KB) passes, a longer one is refused before the handler.
func TestServeHeaderLimit(t *testing.T) {
	tr := newTree(t, 1)
	s := NewServer(ServerConfig{Secrets: [][]byte{testSecret}})
	s.Set(tr.snap)
	addr := servePeer(t, s)
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	for _, tt := range []struct {
		pathLen int
		code    int
	}{
		{16 << 10, http.StatusNotFound}, // signed, read, and not in the manifest
		{128 << 10, http.StatusRequestHeaderFieldsTooLarge},
	} {
		req, err := http.NewRequest("GET", "http://"+addr+"/v1/file?gen=1&path="+strings.Repeat("p", tt.pathLen), nil)
		if err != nil {
			t.Fatal(err)
		}
		Sign(req, testSecret, time.Now())
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("a path of %d bytes: %v", tt.pathLen, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.code {
			t.Errorf("a path of %d bytes: %s, want %d", tt.pathLen, resp.Status, tt.code)
		}
	}
}

// The server's own connection errors, which anyone can cause, reach the
// server's log, cut and at most one line a second.
func TestConnErrorsLogged(t *testing.T) {
	var logs syncBuffer
	log := logrus.New()
	log.SetOutput(&logs)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := NewServer(ServerConfig{Secrets: [][]byte{testSecret}, Log: log, Now: clock.Now})

	// Through http.Server: a client that is not speaking TLS.
	serverCfg, _ := tlsConfigs(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, tls.NewListener(ln, serverCfg)) }()
	defer func() { cancel(); <-done }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write(bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff, 0xff}, 10))
	c.Close()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(logs.String(), "TLS handshake error") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "TLS handshake error") {
		t.Fatalf("no TLS handshake error in the server's log: %q", logs.String())
	}

	// Many more in the same second: none logged; the next second, one
	// line counting them, cut however long.
	before := len(logs.String())
	el := connErrorLog{s}
	for range 100 {
		el.Write([]byte("http: TLS handshake error from 10.0.0.1:1234: " + strings.Repeat("e", 10<<10) + "\n"))
	}
	clock.Add(logInterval)
	el.Write([]byte("http: TLS handshake error from 10.0.0.1:1234: " + strings.Repeat("e", 10<<10) + "\n"))
	out := logs.String()[before:]
	if lines := strings.Count(out, "\n"); lines != 1 || !strings.Contains(out, "suppressed=100") || len(out) > 1024 {
		t.Fatalf("101 connection errors logged %d lines, %d bytes: %q; want one short line counting 100 suppressed", lines, len(out), out)
	}
}
