package peer

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Client defaults.
const (
	DefaultDialTimeout  = 5 * time.Second
	DefaultStallTimeout = 30 * time.Second
)

// maxManifest bounds a manifest download, in bytes.
const maxManifest = 2 << 30

// maxPrealloc bounds what the client allocates on a peer's word (its
// Content-Length) before the bytes arrive.
const maxPrealloc = 1 << 20

// ClientConfig configures a Client. Zero fields take their defaults.
type ClientConfig struct {
	// Secrets are the shared secrets, as LoadSecrets returns them: every
	// request is signed with the first. With none, every request fails.
	Secrets [][]byte
	// DialTimeout bounds connecting to a peer, and waiting for its response
	// headers once the request is sent; default DefaultDialTimeout.
	DialTimeout time.Duration
	// StallTimeout fails a body read that receives no byte for this long (a
	// stalled peer); default DefaultStallTimeout.
	StallTimeout time.Duration
	// Now is the clock requests are signed with; default time.Now.
	Now func() time.Time
	// TLS, if not nil, makes the client speak HTTPS with this configuration.
	TLS *tls.Config
}

// Client pulls manifests and files from peers. It is safe for concurrent
// use and keeps connections to peers alive between requests.
type Client struct {
	cfg    ClientConfig
	hc     *http.Client
	scheme string

	dec *lazyDecoder // shared by the clients of every task (see ForTask)
	// task is the named task the client asks for ("": the plain task).
	task string
}

// lazyDecoder is a zstd decoder made on first use.
type lazyDecoder struct {
	once sync.Once
	dec  *zstd.Decoder
}

func (d *lazyDecoder) get() *zstd.Decoder {
	d.once.Do(func() { d.dec = newDecoder() })
	return d.dec
}

// ForTask returns a client sharing c's connections that asks peers for
// the named task name (/v1/t/NAME/...; "" or "default": the plain task).
// A peer that predates named tasks answers 404, one that does not serve
// the task 409.
func (c *Client) ForTask(name string) *Client {
	if name == defaultTask {
		name = ""
	}
	return &Client{cfg: c.cfg, hc: c.hc, scheme: c.scheme, dec: c.dec, task: name}
}

// NewClient returns a Client.
func NewClient(cfg ClientConfig) *Client {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       cfg.TLS,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		ResponseHeaderTimeout: cfg.DialTimeout,
		// Peers answer with a handful of short headers.
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		// Bodies must arrive exactly as served: their lengths are checked.
		DisableCompression: true,
	}
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
	}
	return &Client{cfg: cfg, hc: &http.Client{Transport: tr}, scheme: scheme, dec: &lazyDecoder{}}
}

// CloseIdleConnections closes the connections kept alive to peers.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Manifest fetches the encoded manifest of generation gen from the peer at
// addr (host:port).
func (c *Client) Manifest(ctx context.Context, addr string, gen int64) ([]byte, error) {
	what := fmt.Sprintf("manifest of generation %d from %s", gen, addr)
	q := url.Values{"gen": {strconv.FormatInt(gen, 10)}}
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.get(reqCtx, what, c.url(addr, "/v1/manifest", q), 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: %w: unexpected %s", what, ErrUnavailable, resp.Status)
	}
	if g := resp.Header.Get(headerGeneration); g != strconv.FormatInt(gen, 10) {
		return nil, fmt.Errorf("get %s: %w: answered for generation %q", what, ErrUnavailable, g)
	}
	if resp.ContentLength > maxManifest {
		return nil, fmt.Errorf("get %s: %w: %d bytes, more than the limit of %d", what, ErrUnavailable, resp.ContentLength, int64(maxManifest))
	}
	// The length is the peer's word: grow for it only as bytes arrive.
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		buf.Grow(int(min(resp.ContentLength, maxPrealloc)))
	}
	n, err := c.copyBody(ctx, reqCtx, cancel, what, &buf, io.LimitReader(resp.Body, maxManifest+1), resp.ContentLength)
	if err != nil {
		return nil, err
	}
	if n > maxManifest {
		return nil, fmt.Errorf("get %s: %w: more than the limit of %d bytes", what, ErrUnavailable, int64(maxManifest))
	}
	return buf.Bytes(), nil
}

// Fetch streams the file at path (a manifest path) of generation gen from the
// peer at addr into w, starting at byte offset, and returns the number of
// bytes written. An offset above zero is asked for with a Range request.
//
// An error from w is returned as is; every failure of the peer or of the
// network is ErrUnavailable, and w may then have received part of the file.
func (c *Client) Fetch(ctx context.Context, addr string, gen int64, path string, offset int64, w io.Writer) (int64, error) {
	what := fmt.Sprintf("%q of generation %d from %s", path, gen, addr)
	if offset > 0 {
		what = fmt.Sprintf("%q of generation %d from %s at offset %d", path, gen, addr, offset)
	}
	q := url.Values{"gen": {strconv.FormatInt(gen, 10)}, "path": {path}}
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.get(reqCtx, what, c.url(addr, "/v1/file", q), offset)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("get %s: %w: no Content-Length", what, ErrUnavailable)
	}
	if err := checkRange(resp, offset); err != nil {
		return 0, fmt.Errorf("get %s: %w: %w", what, ErrUnavailable, err)
	}
	return c.copyBody(ctx, reqCtx, cancel, what, w, resp.Body, resp.ContentLength)
}

// FetchRange streams the n bytes from offset of the file at path of
// generation gen from the peer at addr into w (a Range request for exactly
// those bytes: a run of chunks) and returns the bytes written. Errors are
// as for Fetch.
func (c *Client) FetchRange(ctx context.Context, addr string, gen int64, path string, offset, n int64, w io.Writer) (int64, error) {
	if n <= 0 {
		return 0, nil
	}
	what := fmt.Sprintf("%q of generation %d from %s, bytes %d-%d", path, gen, addr, offset, offset+n-1)
	q := url.Values{"gen": {strconv.FormatInt(gen, 10)}, "path": {path}}
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.getRange(reqCtx, what, c.url(addr, "/v1/file", q), fmt.Sprintf("bytes=%d-%d", offset, offset+n-1))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var first, last, size int64
	if resp.StatusCode != http.StatusPartialContent || resp.ContentLength != n {
		return 0, fmt.Errorf("get %s: %w: answered %s with %d bytes", what, ErrUnavailable, resp.Status, resp.ContentLength)
	}
	cr := resp.Header.Get("Content-Range")
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &first, &last, &size); err != nil || first != offset || last != offset+n-1 {
		return 0, fmt.Errorf("get %s: %w: Content-Range %q", what, ErrUnavailable, cr)
	}
	return c.copyBody(ctx, reqCtx, cancel, what, w, resp.Body, n)
}

// ChunkOptions are how FetchChunks asks for and receives a run of chunks.
type ChunkOptions struct {
	// Compress asks the peer for zstd frames (enc=zstd, inside the signed
	// URI). A peer that does not compress, or predates frames, answers
	// with the raw bytes, which are taken as they are.
	Compress bool
	// Wire, when set, is given every body byte as it arrives from the
	// network, before decompression: a download rate limiter's writer, so
	// a limit counts the bytes the link carries.
	Wire io.Writer
}

// Received says what a FetchChunks moved.
type Received struct {
	// Bytes is the chunk bytes written to w.
	Bytes int64
	// Wire is the body bytes that crossed the network: Bytes for a raw
	// answer, the frames (headers and compressed data) for a framed one.
	Wire int64
	// Framed is true when the peer answered with frames.
	Framed bool
}

// FetchChunks streams the run of consecutive chunks of lengths lens,
// starting at byte offset, of the file at path of generation gen from the
// peer at addr into w: w receives exactly the chunks' bytes, whether they
// crossed the network raw or compressed, so the caller verifies them as it
// would any range. With opt.Compress the peer may send each chunk as a
// zstd frame; a frame is decoded into at most its chunk's length, and any
// frame that breaks the format fails the request. Errors are as for Fetch.
func (c *Client) FetchChunks(ctx context.Context, addr string, gen int64, path string, offset int64, lens []int64, opt ChunkOptions, w io.Writer) (Received, error) {
	var n int64
	for _, l := range lens {
		if l <= 0 {
			return Received{}, fmt.Errorf("fetch chunks of %q: a chunk of %d bytes", path, l)
		}
		n += l
	}
	if n == 0 {
		return Received{}, nil
	}
	what := fmt.Sprintf("%q of generation %d from %s, bytes %d-%d", path, gen, addr, offset, offset+n-1)
	q := url.Values{"gen": {strconv.FormatInt(gen, 10)}, "path": {path}}
	if opt.Compress {
		q.Set("enc", EncodingZstd)
	}
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.getRange(reqCtx, what, c.url(addr, "/v1/file", q), fmt.Sprintf("bytes=%d-%d", offset, offset+n-1))
	if err != nil {
		return Received{}, err
	}
	defer resp.Body.Close()
	var first, last, size int64
	cr := resp.Header.Get("Content-Range")
	if resp.StatusCode != http.StatusPartialContent {
		return Received{}, fmt.Errorf("get %s: %w: answered %s", what, ErrUnavailable, resp.Status)
	}
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &first, &last, &size); err != nil || first != offset || last != offset+n-1 {
		return Received{}, fmt.Errorf("get %s: %w: Content-Range %q", what, ErrUnavailable, cr)
	}
	fv := resp.Header.Get(headerFrames)
	if fv == "" {
		if resp.ContentLength != n {
			return Received{}, fmt.Errorf("get %s: %w: answered %s with %d bytes", what, ErrUnavailable, resp.Status, resp.ContentLength)
		}
		if opt.Wire != nil {
			w = io.MultiWriter(opt.Wire, w)
		}
		got, err := c.copyBody(ctx, reqCtx, cancel, what, w, resp.Body, n)
		return Received{Bytes: got, Wire: got}, err
	}
	if !opt.Compress {
		return Received{}, fmt.Errorf("get %s: %w: answered with frames, which were not asked for", what, ErrUnavailable)
	}
	if fv != strconv.Itoa(FramesVersion) {
		return Received{}, fmt.Errorf("get %s: %w: answered with frame format %s, this host reads %d: upgrade fanout on the older of the two", what, ErrUnavailable, quote(fv), FramesVersion)
	}
	got, wire, err := c.copyFrames(ctx, reqCtx, cancel, what, w, resp.Body, lens, opt.Wire)
	return Received{Bytes: got, Wire: wire, Framed: true}, err
}

// copyFrames decodes the frames of a body into w, with the stall timeout
// of copyBody, and gives every body byte to tap (if not nil) once read. It
// returns the chunk bytes written and the body bytes read.
func (c *Client) copyFrames(ctx, reqCtx context.Context, cancel context.CancelCauseFunc, what string, w io.Writer, body io.Reader, lens []int64, tap io.Writer) (int64, int64, error) {
	stalled := fmt.Errorf("no data for %v: stalled", c.cfg.StallTimeout)
	timer := time.AfterFunc(c.cfg.StallTimeout, func() { cancel(stalled) })
	timer.Stop()
	defer timer.Stop()
	sr := &stallReader{r: body, timer: timer, timeout: c.cfg.StallTimeout}
	// The tap (a rate limiter) waits outside the stall timer.
	wire := &countReader{r: sr}
	var r io.Reader = wire
	if tap != nil {
		r = io.TeeReader(wire, tap)
	}
	n, err := readFrames(r, c.dec.get(), lens, w)
	var we *writeError
	switch {
	case err == nil:
		return n, wire.n, nil
	case errors.As(err, &we):
		return n, wire.n, fmt.Errorf("get %s: write: %w", what, we.err)
	case ctx.Err() != nil:
		return n, wire.n, fmt.Errorf("get %s: %w", what, context.Cause(ctx))
	case sr.err != nil && context.Cause(reqCtx) == stalled:
		return n, wire.n, fmt.Errorf("get %s: %w: after %d bytes: %w", what, ErrUnavailable, n, stalled)
	case sr.err != nil:
		return n, wire.n, fmt.Errorf("get %s: %w: after %d bytes: %w", what, ErrUnavailable, n, sr.err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return n, wire.n, fmt.Errorf("get %s: %w: frames cut short after %d bytes", what, ErrUnavailable, n)
	}
	return n, wire.n, fmt.Errorf("get %s: %w: %w", what, ErrUnavailable, err)
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Batch streams the regular files at the manifest indices idx (ascending)
// of generation gen from the peer at addr into w, their contents
// concatenated in order, and returns the bytes written. Errors are as for
// Fetch.
func (c *Client) Batch(ctx context.Context, addr string, gen int64, idx []int, w io.Writer) (int64, error) {
	spec := FormatIndices(idx)
	what := fmt.Sprintf("batch of %d files of generation %d from %s", len(idx), gen, addr)
	q := url.Values{"gen": {strconv.FormatInt(gen, 10)}, "files": {spec}}
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.get(reqCtx, what, c.url(addr, "/v1/batch", q), 0)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
		return 0, fmt.Errorf("get %s: %w: unexpected %s, Content-Length %d", what, ErrUnavailable, resp.Status, resp.ContentLength)
	}
	return c.copyBody(ctx, reqCtx, cancel, what, w, resp.Body, resp.ContentLength)
}

// checkRange checks that resp answers a request for the bytes from offset.
func checkRange(resp *http.Response, offset int64) error {
	if offset == 0 {
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("unexpected %s", resp.Status)
		}
		return nil
	}
	if resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("asked for a range, got %s", resp.Status)
	}
	cr := resp.Header.Get("Content-Range")
	var first, last, size int64
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &first, &last, &size); err != nil {
		return fmt.Errorf("bad Content-Range %q", cr)
	}
	if first != offset || last-first+1 != resp.ContentLength {
		return fmt.Errorf("Content-Range %q does not match offset %d and Content-Length %d", cr, offset, resp.ContentLength)
	}
	return nil
}

func (c *Client) url(addr, route string, q url.Values) string {
	if c.task != "" {
		route = "/v1/t/" + c.task + strings.TrimPrefix(route, "/v1")
	}
	u := url.URL{Scheme: c.scheme, Host: addr, Path: route, RawQuery: q.Encode()}
	return u.String()
}

// get sends a signed GET, asking for the bytes from offset if offset > 0,
// and returns a 200 or 206 response; any other answer becomes an error.
func (c *Client) get(ctx context.Context, what, u string, offset int64) (*http.Response, error) {
	rng := ""
	if offset > 0 {
		rng = fmt.Sprintf("bytes=%d-", offset)
	}
	return c.getRange(ctx, what, u, rng)
}

// getRange is get with the Range header rng ("" for none).
func (c *Client) getRange(ctx context.Context, what, u, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", what, err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	if len(c.cfg.Secrets) == 0 || len(c.cfg.Secrets[0]) == 0 {
		return nil, fmt.Errorf("get %s: no secret to sign the request with", what)
	}
	Sign(req, c.cfg.Secrets[0], c.cfg.Now())
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("get %s: %w", what, context.Cause(ctx))
		}
		return nil, fmt.Errorf("get %s: %w: %w", what, ErrUnavailable, err)
	}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
		return resp, nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	detail := resp.Status
	if m := strings.TrimSpace(string(msg)); m != "" {
		detail += ": " + m
	}
	switch {
	case resp.StatusCode == http.StatusConflict:
		err = ErrStale
	case resp.StatusCode == http.StatusUnauthorized:
		err = ErrUnauthorized
	case resp.StatusCode == http.StatusNotFound:
		err = ErrNotFound
	case resp.StatusCode >= 500:
		err = ErrUnavailable
	default:
		// The peer refused the request itself (400, 405, 416): ours to fix.
		return nil, fmt.Errorf("get %s: peer answered %s", what, detail)
	}
	return nil, fmt.Errorf("get %s: %w: %s", what, err, detail)
}

// copyBody copies a response body to w, failing the request (through cancel)
// when no byte arrives for the stall timeout, and checks that exactly want
// bytes arrived (want < 0: unknown). ctx is the caller's context, reqCtx the
// request's, derived from ctx and cancelled by cancel.
func (c *Client) copyBody(ctx, reqCtx context.Context, cancel context.CancelCauseFunc, what string, w io.Writer, body io.Reader, want int64) (int64, error) {
	stalled := fmt.Errorf("no data for %v: stalled", c.cfg.StallTimeout)
	timer := time.AfterFunc(c.cfg.StallTimeout, func() { cancel(stalled) })
	timer.Stop()
	defer timer.Stop()
	sr := &stallReader{r: body, timer: timer, timeout: c.cfg.StallTimeout}
	// Large reads and writes: fewer system calls, and the hash in the
	// writer works on long runs.
	size := int64(copyBuffer)
	if want >= 0 {
		size = min(max(want, 4<<10), copyBuffer)
	}
	n, err := io.CopyBuffer(writerOnly{w}, sr, make([]byte, size))
	switch {
	case sr.err != nil && ctx.Err() != nil:
		return n, fmt.Errorf("get %s: %w", what, context.Cause(ctx))
	case sr.err != nil && context.Cause(reqCtx) == stalled:
		return n, fmt.Errorf("get %s: %w: after %d bytes: %w", what, ErrUnavailable, n, stalled)
	case sr.err != nil:
		return n, fmt.Errorf("get %s: %w: after %d bytes: %w", what, ErrUnavailable, n, sr.err)
	case err != nil:
		return n, fmt.Errorf("get %s: write: %w", what, err)
	case want >= 0 && n != want:
		return n, fmt.Errorf("get %s: %w: body of %d bytes, Content-Length %d", what, ErrUnavailable, n, want)
	}
	return n, nil
}

// copyBuffer is the largest buffer a body is copied through.
const copyBuffer = 1 << 20

// writerOnly hides a writer's ReadFrom, so io.CopyBuffer uses its buffer.
type writerOnly struct{ io.Writer }

// stallReader reads from r with timer running: a Read that gets no byte
// before the timer fires fails, as the timer cancels the request. The timer
// is stopped between reads, so a slow writer is never taken for a stalled
// peer. It records the first read error other than io.EOF.
type stallReader struct {
	r       io.Reader
	timer   *time.Timer
	timeout time.Duration
	err     error
}

func (s *stallReader) Read(p []byte) (int, error) {
	s.timer.Reset(s.timeout)
	n, err := s.r.Read(p)
	s.timer.Stop()
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}
