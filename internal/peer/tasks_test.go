package peer

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
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
