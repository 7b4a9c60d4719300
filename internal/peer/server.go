package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/sirupsen/logrus"
)

// DefaultMaxSkew is the clock difference a server accepts between a
// request's signature timestamp and its own clock unless configured.
const DefaultMaxSkew = 30 * time.Second

// ServerConfig configures a Server. Zero fields take their defaults.
type ServerConfig struct {
	// Secrets are the shared secrets a request may be signed with, as
	// LoadSecrets returns them; any one is accepted. With none, every
	// signed route is refused.
	Secrets [][]byte
	// MaxSkew is the accepted clock difference for signatures; default
	// DefaultMaxSkew.
	MaxSkew time.Duration
	// Log receives refused requests and server errors; default discards.
	Log logrus.FieldLogger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Metrics, when set, is served unauthenticated at /metrics.
	Metrics http.Handler
	// Served, when set, is told of file bytes sent to peers.
	Served func(n int64)
	// Compressed, when set, is told of each chunk sent compressed: its
	// length and the length of its zstd form (Served counts the latter).
	Compressed func(raw, sent int64)
	// Unauthorized, when set, is told of each request refused for its
	// signature.
	Unauthorized func()
	// Upload, when set, caps the rate of file bytes this host sends, all
	// peers together.
	Upload *bwlimit.Limiter
	// MaxConns caps the connections Serve holds open at once; default
	// DefaultMaxConns.
	MaxConns int
	// CompressWorkers caps the chunks compressed at once for peers that
	// ask for zstd frames (enc=zstd): a chunk waits for a free worker, so
	// serving compressed never takes more than this many cores. Default half of GOMAXPROCS, at least 1: the other half is
	// left to the network stack, which on a busy source needs it; negative:
	// never compress (the answer is the raw range, as from a server that
	// predates frames).
	CompressWorkers int
}

// Server answers peer requests for the snapshot it currently holds. It is an
// http.Handler; Set may be called at any time, concurrently with requests.
type Server struct {
	cfg ServerConfig
	// def is the plain task's view (/v1/...); tasks are the named tasks'
	// (/v1/t/NAME/..., see Task), guarded by mu.
	def   *view
	mu    sync.Mutex
	tasks map[string]*view
	// conns caps the connections the server holds (see Serve).
	conns *connTracker
	// refused and connErrors limit the warnings about refused signatures
	// and about connections.
	refused, connErrors logLimiter
	// comp compresses chunks for peers that ask; nil: never.
	comp *compressor
}

// view is what the server serves of one task.
type view struct {
	cur atomic.Pointer[served]
	// exp is the generation whose snapshot is being prepared (see
	// Server.Expect), nil if none: requests for it wait for the next set.
	exp atomic.Pointer[expected]
	// verify, when set, checks served bytes against the manifest (see
	// VerifyServed) and is told of a file that changed on disk.
	verify atomic.Pointer[func(string)]
}

// expected is a generation a view is about to serve. ready is closed
// when the expectation ends: by the next set, or by its cancel. Whoever
// swaps it out of view.exp closes it, so it is closed once.
type expected struct {
	gen   int64
	wait  time.Duration
	ready chan struct{}
}

// served is a snapshot prepared for serving.
type served struct {
	snap    *Snapshot
	entries map[string]manifest.Entry
	view    *view
}

// NewServer returns a Server that serves nothing until Set is called.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = DefaultMaxSkew
	}
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		cfg.Log = l
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	s := &Server{cfg: cfg, conns: newConnTracker(cfg.MaxConns), def: &view{}, tasks: make(map[string]*view)}
	if cfg.CompressWorkers >= 0 {
		n := cfg.CompressWorkers
		if n == 0 {
			n = max(1, runtime.GOMAXPROCS(0)/2)
		}
		s.comp = newCompressor(n)
	}
	return s
}

// Set atomically replaces what the server serves of the plain task; nil
// serves nothing. Requests in flight finish with the snapshot they
// started with. The server keeps snap: the caller must not modify it
// afterwards.
func (s *Server) Set(snap *Snapshot) { s.def.set(snap) }

// Current returns the plain task's snapshot being served, or nil.
func (s *Server) Current() *Snapshot { return s.def.current() }

// Expect tells the server that a snapshot of generation gen is being
// prepared: this host offered itself as a source as soon as it claimed
// its own, before its pull had the manifest, so the next host of a chain
// claims it meanwhile. Requests for gen then wait for the next Set of a
// snapshot (Set(nil) does not end the wait), up to wait each (shorter
// than the pullers' header timeout, so a host whose manifest is late is
// refused, 409, as one that serves nothing, and not taken for a stalled
// peer), until cancel is called.
func (s *Server) Expect(gen int64, wait time.Duration) (cancel func()) {
	return s.def.expect(gen, wait)
}

// Await returns the plain task's snapshot being served once it is of
// generation gen, or once the wait for an expected one (Expect) or ctx
// ends: what a request for gen would be answered from.
func (s *Server) Await(ctx context.Context, gen int64) *Snapshot {
	return snapOf(s.def.await(ctx, gen))
}

func snapOf(sv *served) *Snapshot {
	if sv == nil {
		return nil
	}
	return sv.snap
}

// Task is what a Server serves of one task: the plain task's at /v1/...,
// a named task's at /v1/t/NAME/... (see Client.ForTask). Its methods are
// the Server's, for that task.
type Task struct{ v *view }

// Task returns the view of the task called name ("" or "default": the
// plain task's, which Set and Current reach too), made on first use.
func (s *Server) Task(name string) *Task {
	if name == "" || name == defaultTask {
		return &Task{v: s.def}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.tasks[name]
	if !ok {
		v = &view{}
		s.tasks[name] = v
	}
	return &Task{v: v}
}

// Drop ends serving the named task name: its requests are answered 409,
// as for a task this host never held.
func (s *Server) Drop(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.tasks[name]; ok {
		v.set(nil)
		delete(s.tasks, name)
	}
}

// defaultTask is the plain task's name (coord.DefaultTask).
const defaultTask = "default"

// Set is Server.Set for this task.
func (t *Task) Set(snap *Snapshot) { t.v.set(snap) }

// Expect is Server.Expect for this task.
func (t *Task) Expect(gen int64, wait time.Duration) (cancel func()) { return t.v.expect(gen, wait) }

// Await is Server.Await for this task.
func (t *Task) Await(ctx context.Context, gen int64) *Snapshot { return snapOf(t.v.await(ctx, gen)) }

// Current is Server.Current for this task.
func (t *Task) Current() *Snapshot { return t.v.current() }

// VerifyServed is Server.VerifyServed for this task.
func (t *Task) VerifyServed(changed func(path string)) { t.v.verifyServed(changed) }

func (v *view) set(snap *Snapshot) {
	if snap == nil {
		// Not the end of an expectation: a pull drops the old snapshot
		// before it sets the new one.
		v.cur.Store(nil)
		return
	}
	defer v.endExpect(nil)
	sv := &served{snap: snap, entries: make(map[string]manifest.Entry), view: v}
	if snap.Manifest != nil {
		for _, e := range snap.Manifest.Entries {
			sv.entries[e.Path] = e
		}
	}
	v.cur.Store(sv)
}

// expect makes requests for generation gen wait, up to wait each, for the
// next set, until the returned cancel is called.
func (v *view) expect(gen int64, wait time.Duration) (cancel func()) {
	e := &expected{gen: gen, wait: wait, ready: make(chan struct{})}
	if old := v.exp.Swap(e); old != nil {
		close(old.ready)
	}
	return func() { v.endExpect(e) }
}

// endExpect ends the expectation e (any, when e is nil), if it is the
// current one, releasing its waiting requests.
func (v *view) endExpect(e *expected) {
	cur := v.exp.Load()
	if cur == nil || (e != nil && cur != e) {
		return
	}
	if v.exp.CompareAndSwap(cur, nil) {
		close(cur.ready)
	}
}

// await returns what the view serves once it serves generation gen, or
// the wait for an expected one ends (Expect), or ctx ends.
func (v *view) await(ctx context.Context, gen int64) *served {
	sv := v.cur.Load()
	if sv != nil && sv.snap.Gen == gen {
		return sv
	}
	e := v.exp.Load()
	if e == nil || e.gen != gen {
		// Loaded again: a Set between the two loads ends the expectation
		// after storing its snapshot.
		return v.cur.Load()
	}
	t := time.NewTimer(e.wait)
	defer t.Stop()
	select {
	case <-e.ready:
	case <-t.C:
	case <-ctx.Done():
	}
	return v.cur.Load()
}

func (v *view) current() *Snapshot {
	if sv := v.cur.Load(); sv != nil {
		return sv.snap
	}
	return nil
}

// resolve maps a request path to the view it asks for and the route
// within it: /v1/t/NAME/ROUTE is the named task's /v1/ROUTE.
func (s *Server) resolve(path string) (*view, string, error) {
	rest, ok := strings.CutPrefix(path, "/v1/t/")
	if !ok {
		return s.def, path, nil
	}
	name, route, ok := strings.Cut(rest, "/")
	if !ok || !validTaskName(name) {
		return nil, "", errorf(http.StatusNotFound, "no route %s", quote(path))
	}
	s.mu.Lock()
	v := s.tasks[name]
	s.mu.Unlock()
	if v == nil {
		return nil, "", errorf(http.StatusConflict, "task %s not served here", quote(name))
	}
	return v, "/v1/" + route, nil
}

// validTaskName is coord.ValidTaskName's syntax (peer does not import
// coord).
func validTaskName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && (r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
		if !ok {
			return false
		}
	}
	return true
}

// ServeHTTP answers one peer request:
//
//	GET /healthz                    200 "ok", unauthenticated
//	GET /metrics                    Prometheus metrics when configured, unauthenticated
//	GET /v1/manifest?gen=N          the encoded manifest of generation N
//	GET /v1/file?gen=N&path=P       the file at manifest path P, or one byte range of it
//	    &enc=zstd                   a range of whole chunks as frames, zstd where it shrinks (see FramesVersion)
//	GET /v1/batch?gen=N&files=I     the files at manifest indices I ("3-10,12"), concatenated
//	GET /v1/have?gen=N&path=P       which chunks of file P this host can serve (all, or a bitmap of the verified ones)
//	GET /v1/t/NAME/...              the same, of the named task NAME (see Task)
//
// Every request but /healthz and /metrics must carry a valid signature (see
// Verify). Unauthenticated and refused requests end their connection, and
// error bodies repeat at most a few hundred bytes of the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := s.route(w, r); err != nil {
		s.fail(w, r, err)
	}
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return errorf(http.StatusMethodNotAllowed, "method %s not allowed", quote(r.Method))
	}
	// Unauthenticated answers end their connection: whoever is not a peer
	// gets no keep-alive connection to hold.
	if r.URL.Path == "/healthz" {
		w.Header().Set("Connection", "close")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
		return nil
	}
	if r.URL.Path == "/metrics" && s.cfg.Metrics != nil {
		w.Header().Set("Connection", "close")
		s.cfg.Metrics.ServeHTTP(w, r)
		return nil
	}
	if err := Verify(r, s.cfg.Secrets, s.cfg.Now(), s.cfg.MaxSkew); err != nil {
		if s.cfg.Unauthorized != nil {
			s.cfg.Unauthorized()
		}
		return &httpError{code: http.StatusUnauthorized, msg: "unauthorized: " + err.Error()}
	}
	v, route, err := s.resolve(r.URL.Path)
	if err != nil {
		return err
	}
	switch route {
	case "/v1/manifest":
		return s.serveManifest(w, r, v)
	case "/v1/file":
		return s.serveFile(w, r, v)
	case "/v1/batch":
		return s.serveBatch(w, r, v)
	case "/v1/have":
		return s.serveHave(w, r, v)
	}
	return errorf(http.StatusNotFound, "no route %s", quote(r.URL.Path))
}

// request parses r's query and returns it with the prepared snapshot, if
// that is of the generation the "gen" parameter names.
func (s *Server) request(r *http.Request, v *view) (url.Values, *served, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, nil, errorf(http.StatusBadRequest, "bad query: %s", clip(err.Error()))
	}
	sv, err := snapshotFor(r.Context(), v, q)
	return q, sv, err
}

// snapshotFor returns the prepared snapshot if it is of the generation the
// request's "gen" parameter names (waiting for it if it is expected, see
// Server.Expect).
func snapshotFor(ctx context.Context, v *view, q url.Values) (*served, error) {
	gen, err := strconv.ParseInt(q.Get("gen"), 10, 64)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "bad gen %s", quote(q.Get("gen")))
	}
	sv := v.await(ctx, gen)
	switch {
	case sv == nil:
		return nil, errorf(http.StatusConflict, "generation %d not served: serving nothing", gen)
	case sv.snap.Gen != gen:
		return nil, errorf(http.StatusConflict, "generation %d not served: serving %d", gen, sv.snap.Gen)
	}
	return sv, nil
}

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, v *view) error {
	_, sv, err := s.request(r, v)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(sv.snap.Encoded)))
	h.Set(headerGeneration, strconv.FormatInt(sv.snap.Gen, 10))
	if r.Method == http.MethodHead {
		return nil
	}
	w.Write(sv.snap.Encoded)
	return nil
}

func (s *Server) serveFile(w http.ResponseWriter, r *http.Request, v *view) error {
	q, sv, err := s.request(r, v)
	if err != nil {
		return err
	}
	paths := q["path"]
	if len(paths) != 1 {
		return errorf(http.StatusBadRequest, "want one path parameter, got %d", len(paths))
	}
	p := paths[0]
	if !validPath(p) {
		return errorf(http.StatusBadRequest, "bad path %s", quote(p))
	}
	e, ok := sv.entries[p]
	if !ok || e.Type != manifest.File {
		return errorf(http.StatusNotFound, "generation %d has no file %s", sv.snap.Gen, quote(p))
	}
	if in := sv.snap.Incoming; in != nil && in.Pending(p) {
		return s.serveIncoming(w, r, q, sv.snap, e)
	}
	f, err := openEntry(sv.snap.Root, p)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if fi.Size() != e.Size {
		return errorf(http.StatusConflict, "%s changed on disk: %d bytes, manifest says %d", quote(p), fi.Size(), e.Size)
	}
	start, end, partial, err := parseRange(r.Header.Get("Range"), e.Size)
	if err != nil {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", e.Size))
		return errorf(http.StatusRequestedRangeNotSatisfiable, "%v", err)
	}
	if start > 0 {
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("seek %s: %w", f.Name(), err)
		}
	}
	if chunks := s.framedChunks(q, e, start, end, partial); chunks != nil {
		var src io.Reader = f
		if changed := sv.verifier(); changed != nil && r.Method != http.MethodHead && verifiable(e, start, end) {
			// The origin checks each chunk before it is framed: a chunk
			// changed on disk cuts the frames off, never sends bad bytes.
			pr, pw := io.Pipe()
			var wg sync.WaitGroup
			var verr error
			wg.Go(func() {
				_, verr = copyVerified(pw, f, e, start, end, nil)
				pw.CloseWithError(verr)
			})
			defer func() {
				pr.Close()
				wg.Wait()
				if errors.Is(verr, errChanged) {
					changed(p)
				}
			}()
			src = pr
		}
		return s.serveFrames(w, r, sv.snap.Gen, e, start, end, chunks, src)
	}
	if changed := sv.verifier(); changed != nil && r.Method != http.MethodHead && verifiable(e, start, end) {
		sent := false
		n, err := copyVerified(s.bodyWriter(w, r), f, e, start, end, func() {
			sent = true
			writeFileHeader(w, sv.snap.Gen, start, end, e.Size, partial)
		})
		if err == nil {
			return nil
		}
		if errors.Is(err, errChanged) {
			changed(p)
			if !sent {
				return errorf(http.StatusConflict, "%s changed on disk since generation %d was published", quote(p), sv.snap.Gen)
			}
		}
		if r.Context().Err() == nil {
			s.cfg.Log.WithError(err).WithField("path", p).Warnf("sending a file broke off after %d of %d bytes", n, end-start)
		}
		panic(http.ErrAbortHandler)
	}
	writeFileHeader(w, sv.snap.Gen, start, end, e.Size, partial)
	if r.Method == http.MethodHead {
		return nil
	}
	// From an *os.File through writers that keep ReadFrom: sendfile.
	if n, err := io.CopyN(s.bodyWriter(w, r), f, end-start); err != nil {
		if r.Context().Err() == nil {
			s.cfg.Log.WithError(err).WithField("path", p).Warnf("sending a file broke off after %d of %d bytes", n, end-start)
		}
		// The length is promised: only a broken connection tells the
		// client the body is incomplete.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// writeFileHeader sends the status and headers of an answer with the bytes
// [start, end) of a file of size bytes of generation gen: 206 with their
// Content-Range when partial, 200 otherwise.
func writeFileHeader(w http.ResponseWriter, gen, start, end, size int64, partial bool) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(headerGeneration, strconv.FormatInt(gen, 10))
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	code := http.StatusOK
	if partial {
		code = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
	}
	w.WriteHeader(code)
}

// bodyWriter wraps w with the upload limit and the byte counter.
func (s *Server) bodyWriter(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	if s.cfg.Upload != nil {
		w = limitedWriter{ResponseWriter: w, w: s.cfg.Upload.Writer(r.Context(), w)}
	}
	if s.cfg.Served != nil {
		w = countingWriter{ResponseWriter: w, add: s.cfg.Served}
	}
	return w
}

// serveIncoming streams a file this host is still receiving, from the
// offset a Range header asks for, as its bytes land (a chunked file's as
// they arrive, but for each chunk's tail: see Incoming.Arriving). The
// status and length are sent at once; if the file is discarded or stops
// growing, or bytes of a chunk sent before it landed are dropped, the
// response is cut short and the client sees a broken transfer. Compressed
// frames hold whole chunks and wait for each to land.
func (s *Server) serveIncoming(w http.ResponseWriter, r *http.Request, q url.Values, snap *Snapshot, e manifest.Entry) error {
	start, end, partial, err := parseRange(r.Header.Get("Range"), e.Size)
	if err != nil {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", e.Size))
		return errorf(http.StatusRequestedRangeNotSatisfiable, "%v", err)
	}
	onDisk := func() (*os.File, error) { return openEntry(snap.Root, e.Path) }
	if chunks := s.framedChunks(q, e, start, end, partial); chunks != nil {
		// A frame holds a whole chunk: read each once it landed.
		body, err := snap.Incoming.OpenLanded(r.Context(), e.Path, end, start, onDisk)
		if err != nil {
			return err
		}
		defer body.Close()
		return s.serveFrames(w, r, snap.Gen, e, start, end, chunks, body)
	}
	body, err := snap.Incoming.Open(r.Context(), e.Path, end, start, onDisk)
	if err != nil {
		return err
	}
	defer body.Close()
	writeFileHeader(w, snap.Gen, start, end, e.Size, partial)
	if r.Method == http.MethodHead {
		return nil
	}
	// Send the headers now: the bytes may trickle in more slowly than the
	// puller waits for response headers.
	http.NewResponseController(w).Flush()
	// Each write is flushed: a read ends where the verified bytes end, and
	// a chunk's tail left in the response's buffers would wait for the
	// next chunk to land here, adding a chunk's time to every relay.
	out := flushWriter{w: s.bodyWriter(w, r), rc: http.NewResponseController(w)}
	if _, err := io.CopyBuffer(out, body, make([]byte, min(max(end-start, 4<<10), copyBuffer))); err != nil {
		if r.Context().Err() == nil {
			s.cfg.Log.WithError(err).WithField("path", e.Path).Warn("streaming a file still being received failed")
		}
		// The length is promised: only a broken connection tells the
		// client the body is incomplete.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// framedChunks returns the chunks of e that the bytes [start, end) are,
// when the request asks for zstd frames (enc=zstd), this server
// compresses, and the range is a run of whole chunks of a file listed by
// chunks; otherwise nil, and the range goes raw. An encoding it does not
// know is answered raw too: the client reads the absence of the frames
// header as "raw".
func (s *Server) framedChunks(q url.Values, e manifest.Entry, start, end int64, partial bool) []manifest.Chunk {
	if s.comp == nil || !partial || len(e.Chunks) == 0 || q.Get("enc") != EncodingZstd {
		return nil
	}
	cs := e.Chunks
	i := sort.Search(len(cs), func(i int) bool { return cs[i].Off >= start })
	k := sort.Search(len(cs), func(k int) bool { return cs[k].Off+cs[k].Len >= end })
	if i == len(cs) || k == len(cs) || cs[i].Off != start || cs[k].Off+cs[k].Len != end || i > k {
		return nil
	}
	return cs[i : k+1]
}

// serveFrames answers a request for the bytes [start, end) of e, the
// chunks listed, with one frame per chunk (see FramesVersion), read from
// src positioned at start. The length is not known in advance: the body is
// chunked, and the frames delimit it.
func (s *Server) serveFrames(w http.ResponseWriter, r *http.Request, gen int64, e manifest.Entry, start, end int64, chunks []manifest.Chunk, src io.Reader) error {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(headerGeneration, strconv.FormatInt(gen, 10))
	h.Set(headerFrames, strconv.Itoa(FramesVersion))
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, e.Size))
	w.WriteHeader(http.StatusPartialContent)
	if r.Method == http.MethodHead {
		return nil
	}
	// Send the headers now: a file still arriving may trickle in.
	http.NewResponseController(w).Flush()
	lens := make([]int64, len(chunks))
	for i, c := range chunks {
		lens[i] = c.Len
	}
	fw := &frameWriter{w: s.bodyWriter(w, r), c: s.comp, done: r.Context().Done(), compressed: s.cfg.Compressed}
	if err := fw.chunks(src, lens); err != nil {
		if r.Context().Err() == nil {
			s.cfg.Log.WithError(err).WithField("path", e.Path).Warn("sending chunk frames broke off")
		}
		// A frame cut short is what tells the client the body is
		// incomplete.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// parseRange reads the Range header h of a request for a file of size
// bytes and returns the bytes [start, end) to send; partial is false when
// the whole file is sent.
//
// One range is honoured: "bytes=N-", "bytes=N-M" or "bytes=-N". A header
// this server cannot parse, or of another unit, is ignored (the whole file
// is sent), as HTTP allows; so is any range of an empty file. The error
// (answered 416) is for several ranges, which would let a few bytes of
// request ask for the same bytes many times over, for a suffix of zero
// bytes, and for a range that starts past the end.
func parseRange(h string, size int64) (start, end int64, partial bool, err error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, size, false, nil
	}
	if strings.Contains(spec, ",") {
		return 0, 0, false, fmt.Errorf("range %s asks for several ranges: one a request", quote(h))
	}
	if size == 0 {
		return 0, 0, false, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, size, false, nil
	}
	if first == "" { // the last N bytes
		n, ok := parseDigits(last)
		if !ok {
			return 0, size, false, nil
		}
		if n == 0 {
			return 0, 0, false, fmt.Errorf("range %s selects no byte of %d", quote(h), size)
		}
		return size - min(n, size), size, true, nil
	}
	start, ok = parseDigits(first)
	if !ok {
		return 0, size, false, nil
	}
	end = size
	if last != "" {
		l, ok := parseDigits(last)
		if !ok || l < start {
			return 0, size, false, nil
		}
		end = min(l, size-1) + 1
	}
	if start >= size {
		return 0, 0, false, fmt.Errorf("range %s starts past the end of %d bytes", quote(h), size)
	}
	return start, end, true, nil
}

// parseDigits reads a non-negative decimal number of digits only (no sign,
// no space) that fits an int64.
func parseDigits(s string) (int64, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// flushWriter flushes the response after each write, so bytes read from a
// file still being received reach the puller without waiting for more.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// limitedWriter sends the body through a rate limiter.
type limitedWriter struct {
	http.ResponseWriter
	w io.Writer
}

func (l limitedWriter) Write(b []byte) (int, error) { return l.w.Write(b) }

// countingWriter reports the bytes written through it. It keeps the
// underlying writer's ReadFrom, so file bodies still go out by sendfile.
type countingWriter struct {
	http.ResponseWriter
	add func(int64)
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.add(int64(n))
	return n, err
}

func (c countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(c.ResponseWriter, r)
	c.add(n)
	return n, err
}

// httpError is an error with the HTTP status it answers with.
type httpError struct {
	code int
	msg  string // what the client is told
	err  error  // the cause, for the log; may be nil
}

func errorf(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

func (e *httpError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *httpError) Unwrap() error { return e.err }

// fail answers a request with the status err carries (500 for an untyped
// error) and ends its connection. It logs it: refused signatures at warn, at
// most one line a second (see logLimiter), server faults at error, other
// refusals at debug. Whatever the request says is cut to maxEcho bytes in
// the log.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := http.StatusInternalServerError, "internal error"
	var he *httpError
	if errors.As(err, &he) {
		code, msg = he.code, he.msg
	}
	log := s.cfg.Log.WithFields(logrus.Fields{
		"remote": r.RemoteAddr,
		"method": clip(r.Method),
		"uri":    clip(r.RequestURI),
		"status": code,
	})
	switch {
	case code == http.StatusUnauthorized:
		if ok, suppressed := s.refused.allow(s.cfg.Now()); ok {
			if suppressed > 0 {
				log = log.WithField("suppressed", suppressed)
			}
			log.WithError(err).Warn("peer request refused")
		}
	case code >= 500:
		log.WithError(err).Error("peer request failed")
	default:
		log.WithError(err).Debug("peer request rejected")
	}
	w.Header().Set("Connection", "close")
	http.Error(w, msg, code)
}

// logInterval is the shortest time between two lines a logLimiter lets
// through.
const logInterval = time.Second

// logLimiter bounds a log line anyone can cause (such as a refused
// signature) to one per logInterval, and counts the lines it holds back.
type logLimiter struct {
	mu         sync.Mutex
	next       time.Time // when the next line may be logged
	suppressed int       // lines held back since the last one logged
}

// allow reports whether a line may be logged at now and, if so, how many
// were held back since the last one.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	suppressed, l.suppressed = l.suppressed, 0
	l.next = now.Add(logInterval)
	return true, suppressed
}
