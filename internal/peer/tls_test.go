package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/fanout/fanout/internal/certtest"
)

func tlsConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	c, err := certtest.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// A peer server behind TLS answers a client that trusts its CA, and a
// client that trusts another CA (or speaks plain HTTP) gets nothing.
func TestTLS(t *testing.T) {
	tr := newTree(t, 4)
	serverCfg, clientCfg := tlsConfigs(t)
	s := NewServer(ServerConfig{Secrets: [][]byte{testSecret}})
	s.Set(tr.snap)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, tls.NewListener(ln, serverCfg)) }()
	defer func() { cancel(); <-done }()
	addr := ln.Addr().String()

	good := NewClient(ClientConfig{Secrets: [][]byte{testSecret}, TLS: clientCfg})
	defer good.CloseIdleConnections()
	if enc, err := good.Manifest(ctx, addr, 4); err != nil || string(enc) != string(tr.snap.Encoded) {
		t.Fatalf("manifest over TLS: %v", err)
	}
	if b, err := fetch(t, good, addr, 4, "a.txt", 0); err != nil || string(b) != "hello, peers\n" {
		t.Fatalf("file over TLS: %q %v", b, err)
	}
	_, otherCA := tlsConfigs(t)
	stranger := NewClient(ClientConfig{Secrets: [][]byte{testSecret}, TLS: otherCA})
	defer stranger.CloseIdleConnections()
	if _, err := stranger.Manifest(ctx, addr, 4); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client trusting another CA: %v, want a certificate error", err)
	}
	// A client left on plain HTTP is told, and gets nothing.
	plain := NewClient(ClientConfig{Secrets: [][]byte{testSecret}})
	defer plain.CloseIdleConnections()
	if enc, err := plain.Manifest(ctx, addr, 4); err == nil || !strings.Contains(err.Error(), "HTTPS") {
		t.Errorf("plain HTTP client: %d bytes, %v", len(enc), err)
	}
}
