package peer

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"
)

// ShutdownGrace bounds how long Serve waits for uploads in flight once its
// context is cancelled; connections still open after it are closed.
const ShutdownGrace = 5 * time.Second

// Connection lifetimes. A peer sends its request at once and, between
// requests of one pull, keeps its connection for moments; nothing else
// gets to hold one.
const (
	// readHeaderTimeout bounds reading a request's headers (and a TLS
	// handshake).
	readHeaderTimeout = 5 * time.Second
	// idleTimeout bounds an authenticated keep-alive connection waiting
	// for its next request. Unauthenticated and refused requests end
	// their connection (see fail).
	idleTimeout = 30 * time.Second
	// maxHeaderBytes bounds a request's line and headers. The longest
	// legitimate request URI, a batch of MaxBatchFiles indices or a file
	// path of 4,096 bytes escaped, is about 16 KB.
	maxHeaderBytes = 64 << 10
)

// Serve answers peer requests on ln until ctx is cancelled, then shuts down,
// giving uploads in flight ShutdownGrace to finish. It returns nil after a
// shutdown caused by ctx.
//
// The server holds at most ServerConfig.MaxConns connections at once, over
// all its Serve calls. A connection beyond that takes the place of the one
// that has waited longest without serving a request, so idle connections
// cannot lock out the peers that pull; it waits only while every connection
// is serving a request. See Conns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	protocols := new(http.Protocols)
	// HTTP/1.1 only: the connection cap follows each connection's state,
	// which HTTP/2 connections do not report.
	protocols.SetHTTP1(true)
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         s.conns.setState,
		Protocols:         protocols,
		ErrorLog:          log.New(connErrorLog{s}, "", 0),
	}
	cl := &cappedListener{Listener: ln, conns: s.conns, done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(cl) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve peers on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve peers on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Conns returns how many connections the server holds open, over all its
// Serve calls: never more than ServerConfig.MaxConns.
func (s *Server) Conns() int { return s.conns.count() }

// connErrorLog takes the lines http.Server logs about connections (failed
// TLS handshakes, accept errors): anyone can cause them, so they go to the
// server's log at warn through the same limit as refused requests.
type connErrorLog struct{ s *Server }

func (l connErrorLog) Write(p []byte) (int, error) {
	if ok, suppressed := l.s.connErrors.allow(l.s.cfg.Now()); ok {
		entry := l.s.cfg.Log
		if suppressed > 0 {
			entry = entry.WithField("suppressed", suppressed)
		}
		entry.Warn(clip(strings.TrimSpace(string(p))))
	}
	return len(p), nil
}
