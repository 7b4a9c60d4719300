package peer

import (
	"container/list"
	"net"
	"net/http"
	"sync"
)

// DefaultMaxConns is how many connections a Server holds open at once
// unless configured.
const DefaultMaxConns = 1024

// connTracker counts the connections a Server holds and caps them. When the
// cap is reached, a new connection takes the place of the one that has
// waited longest without serving a request (new, or idle between requests
// on keep-alive), so connections that send nothing cannot lock out the
// peers that pull. Only when every connection is serving a request does a
// new one wait for a place.
type connTracker struct {
	max int

	mu    sync.Mutex
	conns map[net.Conn]*list.Element // every connection held; nil while serving a request
	idle  *list.List                 // of net.Conn not serving a request, the longest waiting first
	// changed is closed, and replaced, when a connection closes or stops
	// serving a request: a place may have come free.
	changed chan struct{}
}

func newConnTracker(max int) *connTracker {
	return &connTracker{max: max, conns: make(map[net.Conn]*list.Element), idle: list.New(), changed: make(chan struct{})}
}

// count returns how many connections are held.
func (t *connTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// admit makes a place for c, closing the connection that has waited
// longest without serving a request if the tracker is full, or waiting for
// a place while every connection serves one, and then holds c. It returns
// false, without holding c, if done is closed first.
func (t *connTracker) admit(c net.Conn, done <-chan struct{}) bool {
	for {
		t.mu.Lock()
		if len(t.conns) < t.max {
			t.conns[c] = t.idle.PushBack(c)
			t.mu.Unlock()
			return true
		}
		if oldest := t.idle.Front(); oldest != nil {
			victim := t.idle.Remove(oldest).(net.Conn)
			delete(t.conns, victim)
			t.mu.Unlock()
			// The server notices the close and ends the connection; it
			// is no longer counted from now on.
			closeRaw(victim)
			continue
		}
		changed := t.changed
		t.mu.Unlock()
		select {
		case <-changed:
		case <-done:
			return false
		}
	}
}

// closeRaw closes c's underlying connection: a TLS connection without its
// close alert, which could block on a peer that does not read.
func closeRaw(c net.Conn) {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	c.Close()
}

// setState follows a connection through the states http.Server reports
// (it is an http.Server ConnState hook). It never adds a connection: only
// admit does, so a connection closed by admit stays forgotten.
func (t *connTracker) setState(c net.Conn, state http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, held := t.conns[c]
	if !held {
		return
	}
	switch state {
	case http.StateNew, http.StateIdle:
		if e == nil {
			t.conns[c] = t.idle.PushBack(c)
			t.wake()
		} else {
			t.idle.MoveToBack(e)
		}
	case http.StateActive:
		if e != nil {
			t.idle.Remove(e)
			t.conns[c] = nil
		}
	case http.StateClosed, http.StateHijacked:
		if e != nil {
			t.idle.Remove(e)
		}
		delete(t.conns, c)
		t.wake()
	}
}

// wake tells waiting admits that a place may have come free. The caller
// holds t.mu.
func (t *connTracker) wake() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// cappedListener is a listener whose connections a connTracker admits.
// It returns each connection as the inner listener made it (a *tls.Conn
// stays one, and a TCP connection keeps sendfile).
type cappedListener struct {
	net.Listener
	conns     *connTracker
	done      chan struct{} // closed by Close: stop waiting for a place
	closeOnce sync.Once
}

func (l *cappedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if !l.conns.admit(c, l.done) {
		c.Close()
		return nil, net.ErrClosed
	}
	return c, nil
}

func (l *cappedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}
