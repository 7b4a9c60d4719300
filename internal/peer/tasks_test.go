package peer

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestNamedTaskRoutes: a named task's snapshot is served at /v1/t/NAME/
// and only there, the plain task's at /v1/ as before; a task the server
// does not hold (or dropped) is answered 409, a malformed name 404.
func TestNamedTaskRoutes(t *testing.T) {
	plain, named := newTree(t, 3), newTree(t, 7)
	e := startPeer(t, plain.snap)
	e.server.Task("models").Set(named.snap)
	ctx := context.Background()

	if got, err := e.client.Manifest(ctx, e.addr, 3); err != nil || !bytes.Equal(got, plain.snap.Encoded) {
		t.Fatalf("plain manifest: %v", err)
	}
	models := e.client.ForTask("models")
	if got, err := models.Manifest(ctx, e.addr, 7); err != nil || !bytes.Equal(got, named.snap.Encoded) {
		t.Fatalf("named manifest: %v", err)
	}
	if _, err := models.Manifest(ctx, e.addr, 3); err == nil {
		t.Fatal("the named route served the plain task's generation")
	}
	if _, err := e.client.Manifest(ctx, e.addr, 7); err == nil {
		t.Fatal("the plain route served the named task's generation")
	}
	if _, err := e.client.ForTask("default").Manifest(ctx, e.addr, 3); err != nil {
		t.Fatalf("ForTask(default) is the plain task: %v", err)
	}
	if code, body := e.rawGet(t, http.MethodGet, "/v1/t/other/manifest?gen=7", testSecret); code != http.StatusConflict || !strings.Contains(body, "not served") {
		t.Fatalf("unknown task: %d %q", code, body)
	}
	for _, uri := range []string{"/v1/t/../manifest?gen=7", "/v1/t/9x/manifest?gen=7", "/v1/t/models", "/v1/t//manifest?gen=7"} {
		if code, _ := e.rawGet(t, http.MethodGet, uri, testSecret); code != http.StatusNotFound && code != http.StatusMovedPermanently {
			t.Errorf("%s: %d, want 404", uri, code)
		}
	}
	if code, _ := e.rawGet(t, http.MethodGet, "/v1/t/models/manifest?gen=7", nil); code != http.StatusUnauthorized {
		t.Errorf("unsigned named request: %d", code)
	}
	e.server.Drop("models")
	if _, err := models.Manifest(ctx, e.addr, 7); err == nil {
		t.Fatal("a dropped task is still served")
	}
	if e.server.Current() != plain.snap {
		t.Fatal("dropping a named task touched the plain one")
	}
}

// TestExpectedGeneration: a request for a generation the server expects
// (a host that offered itself as a source before it holds the manifest)
// waits for Set and is answered with it; Expect(0) makes the waiting
// requests fail at once; a generation not expected fails at once; and
// Await sees what a request would.
func TestExpectedGeneration(t *testing.T) {
	tr := newTree(t, 4)
	e := startPeer(t, nil)
	ctx := context.Background()
	e.server.Expect(4)
	got := make(chan error, 1)
	go func() {
		b, err := e.client.Manifest(ctx, e.addr, 4)
		if err == nil && !bytes.Equal(b, tr.snap.Encoded) {
			err = errors.New("another manifest")
		}
		got <- err
	}()
	if _, err := e.client.Manifest(ctx, e.addr, 5); err == nil {
		t.Fatal("a generation not expected was answered")
	}
	select {
	case err := <-got:
		t.Fatalf("the request for the expected generation returned before Set: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	e.server.Set(nil) // dropping the old snapshot does not end the wait
	e.server.Set(tr.snap)
	if err := <-got; err != nil {
		t.Fatalf("the waiting request: %v", err)
	}
	if s := e.server.Await(ctx, 4); s != tr.snap {
		t.Fatal("Await does not return the snapshot Set")
	}

	e.server.Expect(6)
	go func() {
		_, err := e.client.Manifest(ctx, e.addr, 6)
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	e.server.Expect(0) // the pull failed before it had the manifest
	if err := <-got; err == nil {
		t.Fatal("a request for a generation no longer expected was answered")
	}
	if s := e.server.Await(ctx, 6); s != tr.snap {
		t.Fatalf("Await of a generation not served returns %v, want the current snapshot", s)
	}
}
