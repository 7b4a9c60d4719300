package peer

import (
	"context"
	"encoding/hex"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	secret := []byte("0123456789abcdef-secret")
	now := time.Unix(1_700_000_000, 0)
	const uri = "/v1/file?gen=7&path=sub%2Fb.bin"
	const maxSkew = 30 * time.Second

	// signed returns the headers a client signing method and uri at signedAt
	// with key sends.
	signed := func(key []byte, method, uri string, signedAt time.Time) http.Header {
		r, err := http.NewRequest(method, "http://peer.example"+uri, nil)
		if err != nil {
			t.Fatal(err)
		}
		Sign(r, key, signedAt)
		return r.Header
	}
	good := signed(secret, "GET", uri, now)

	tests := []struct {
		name    string
		method  string
		uri     string // as received
		header  http.Header
		wantErr string // "" for success
	}{
		{"good", "GET", uri, good, ""},
		{"at the skew limit, old", "GET", uri, signed(secret, "GET", uri, now.Add(-maxSkew)), ""},
		{"at the skew limit, future", "GET", uri, signed(secret, "GET", uri, now.Add(maxSkew)), ""},
		{"no headers", "GET", uri, http.Header{}, "missing"},
		{"no signature", "GET", uri, http.Header{headerTimestamp: good[headerTimestamp]}, "missing"},
		{"no timestamp", "GET", uri, http.Header{headerSignature: good[headerSignature]}, "missing"},
		{"wrong secret", "GET", uri, signed([]byte("another-secret-of-16+"), "GET", uri, now), "signature mismatch"},
		{"tampered path", "GET", "/v1/manifest?gen=7&path=sub%2Fb.bin", good, "signature mismatch"},
		{"tampered query", "GET", "/v1/file?gen=7&path=sub%2Fc.bin", good, "signature mismatch"},
		{"tampered method", "HEAD", uri, good, "signature mismatch"},
		{"replayed too late", "GET", uri, signed(secret, "GET", uri, now.Add(-maxSkew-time.Second)), "old"},
		{"too far in the future", "GET", uri, signed(secret, "GET", uri, now.Add(maxSkew+time.Second)), "future"},
		{"malformed timestamp", "GET", uri, http.Header{headerTimestamp: {"yesterday"}, headerSignature: good[headerSignature]}, "bad timestamp"},
		{"signature not hex", "GET", uri, http.Header{headerTimestamp: good[headerTimestamp], headerSignature: {"zz"}}, "not hex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.uri, nil)
			r.Header = tt.header.Clone()
			err := Verify(r, [][]byte{secret}, now, maxSkew)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Verify: %v, want success", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Verify succeeded, want an error containing %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Verify: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// signedAt returns a request for uri signed with key as if at Unix time ts,
// which need not be a time time.Unix can represent.
func signedAt(t *testing.T, key []byte, uri string, ts int64) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, uri, nil)
	tsText := strconv.FormatInt(ts, 10)
	r.Header.Set(headerTimestamp, tsText)
	r.Header.Set(headerSignature, hex.EncodeToString(signature(key, r.Method, uri, tsText)))
	return r
}

// A correctly signed request is accepted only when its timestamp is within
// the skew of the server's clock, whatever int64 it carries: a far-future
// timestamp must not pass as recent and become replayable forever.
func TestVerifyTimestampBounds(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	const maxSkew = 30 * time.Second
	const skew = int64(maxSkew / time.Second)
	const uri = "/v1/manifest?gen=1"
	n := now.Unix()
	tests := []struct {
		ts      int64
		wantErr string
	}{
		{1e11, "in the future"},
		{math.MaxInt64, "in the future"},
		{math.MaxInt64 - skew, "in the future"},
		{math.MinInt64, "older"},
		{math.MinInt64 + skew, "older"},
		{-1, "older"},
		{0, "older"},
		{n + skew + 1, "in the future"},
		{n - skew - 1, "older"},
		{n + skew - 1, ""},
		{n - skew + 1, ""},
		{n + skew, ""},
		{n - skew, ""},
		{n, ""},
	}
	for _, tt := range tests {
		t.Run(strconv.FormatInt(tt.ts, 10), func(t *testing.T) {
			err := Verify(signedAt(t, testSecret, uri, tt.ts), [][]byte{testSecret}, now, maxSkew)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Verify: %v, want success", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Verify accepted timestamp %d at %d with a skew of %v", tt.ts, n, maxSkew)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Verify: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	// The bounds saturate instead of overflowing at the ends of the clock.
	edges := []struct {
		clock, ts int64
		ok        bool
	}{
		{math.MaxInt64 - 1, math.MaxInt64, true},
		{math.MaxInt64 - 1, math.MinInt64, false},
		{math.MinInt64 + 1, math.MinInt64, true},
		{math.MinInt64 + 1, math.MaxInt64, false},
	}
	for _, e := range edges {
		err := Verify(signedAt(t, testSecret, uri, e.ts), [][]byte{testSecret}, time.Unix(e.clock, 0), maxSkew)
		if (err == nil) != e.ok {
			t.Errorf("clock at %d, timestamp %d: Verify = %v, want accepted %v", e.clock, e.ts, err, e.ok)
		}
	}
}

// A malformed timestamp is refused without repeating the whole header.
func TestVerifyBadTimestampNotEchoed(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/v1/manifest?gen=1", nil)
	r.Header.Set(headerTimestamp, strings.Repeat("9", 30_000)+"x")
	r.Header.Set(headerSignature, "00")
	err := Verify(r, [][]byte{testSecret}, time.Now(), DefaultMaxSkew)
	if err == nil || !strings.Contains(err.Error(), "bad timestamp") {
		t.Fatalf("Verify: %v, want a bad timestamp error", err)
	}
	if len(err.Error()) > 2*maxEcho {
		t.Fatalf("Verify error is %d bytes long, want at most %d", len(err.Error()), 2*maxEcho)
	}
}

func TestSignKeepsSecretOffTheWire(t *testing.T) {
	secret := []byte("0123456789abcdef-secret")
	r, err := http.NewRequest("GET", "http://peer.example/v1/manifest?gen=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	Sign(r, secret, time.Now())
	if r.Header.Get(headerSignature) == "" || r.Header.Get(headerTimestamp) == "" {
		t.Fatalf("Sign set headers %v, want timestamp and signature", r.Header)
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			if strings.Contains(v, string(secret)) {
				t.Errorf("header %s carries the secret: %q", k, v)
			}
		}
	}
}

func TestLoadSecrets(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
	const next = "bmV4dC1uZXh0LW5leHQtbmV4dC1uZXh0"

	tests := []struct {
		name    string
		path    string
		want    []string // the secrets, on success
		wantErr []string // substrings of the error
	}{
		{"0600 with whitespace", write("ok", "  "+secret+"\n", 0o600), []string{secret}, nil},
		{"0400", write("ro", secret, 0o400), []string{secret}, nil},
		{"0640", write("group", secret, 0o640), []string{secret}, nil},
		{"two lines", write("two", next+"\n"+secret+"\n", 0o600), []string{next, secret}, nil},
		{"blank lines and CRLF", write("blanks", "\n\n  "+next+" \r\n\t\n"+secret+"\r\n\n", 0o600), []string{next, secret}, nil},
		{"0644 refused", write("world-readable", secret, 0o644), nil, []string{"chmod 600 " + filepath.Join(dir, "world-readable")}},
		{"0602 refused", write("world-writable", secret, 0o602), nil, []string{"chmod 600 " + filepath.Join(dir, "world-writable")}},
		{"short refused", write("short", "tooshort\n", 0o600), nil, []string{"line 1", "head -c 32 /dev/urandom", filepath.Join(dir, "short")}},
		{"short second line refused", write("short2", secret+"\n\n  short \n", 0o600), nil, []string{"line 3 of " + filepath.Join(dir, "short2"), "5 bytes"}},
		{"only whitespace", write("blank", " \n\t\n", 0o600), nil, []string{"no secret", "head -c 32 /dev/urandom"}},
		{"too large", write("large", strings.Repeat(secret+"\n", 2000), 0o600), nil, []string{"larger than"}},
		{"missing", filepath.Join(dir, "nope"), nil, []string{filepath.Join(dir, "nope")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadSecrets(tt.path)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("LoadSecrets: %v", err)
				}
				if len(got) != len(tt.want) {
					t.Fatalf("LoadSecrets = %q, want %q", got, tt.want)
				}
				for i := range got {
					if string(got[i]) != tt.want[i] {
						t.Fatalf("LoadSecrets = %q, want %q", got, tt.want)
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadSecrets = %q, want an error", got)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("LoadSecrets error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// Rotation: a server holding the new and the old secret, in either order,
// accepts requests signed with either, and a client signs with its first.
func TestRotateSecrets(t *testing.T) {
	oldS, newS := []byte("the-old-secret-0123456789"), []byte("the-new-secret-9876543210")
	other := []byte("a-third-secret-nobody-has")
	tr := newTree(t, 1)
	for _, server := range [][][]byte{{newS, oldS}, {oldS, newS}} {
		e := startPeerWith(t, tr.snap, ServerConfig{Secrets: server})
		for _, client := range [][][]byte{{oldS}, {newS}, {oldS, newS}, {newS, oldS}, {newS, other}} {
			c := NewClient(ClientConfig{Secrets: client})
			t.Cleanup(c.CloseIdleConnections)
			if _, err := c.Manifest(context.Background(), e.addr, 1); err != nil {
				t.Errorf("server with %q, client with %q: %v", server, client, err)
			}
		}
		// The client signs with its first secret only.
		c := NewClient(ClientConfig{Secrets: [][]byte{other, newS}})
		t.Cleanup(c.CloseIdleConnections)
		if _, err := c.Manifest(context.Background(), e.addr, 1); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("server with %q, client signing with another secret: %v, want ErrUnauthorized", server, err)
		}
	}
}

// No secret, or an empty one, authenticates nothing: an empty HMAC key is
// one anybody can sign with.
func TestEmptySecretsRefuse(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/v1/manifest?gen=1", nil)
	Sign(r, nil, time.Now())
	for _, secrets := range [][][]byte{nil, {}, {nil}, {{}}} {
		if err := Verify(r, secrets, time.Now(), DefaultMaxSkew); err == nil || !strings.Contains(err.Error(), "no secret") {
			t.Errorf("Verify with secrets %q: %v, want a refusal for want of a secret", secrets, err)
		}
	}
	for _, secrets := range [][][]byte{nil, {nil}} {
		c := NewClient(ClientConfig{Secrets: secrets})
		if _, err := c.Manifest(context.Background(), "127.0.0.1:1", 1); err == nil || !strings.Contains(err.Error(), "no secret") {
			t.Errorf("client with secrets %q: %v, want an error for want of a secret", secrets, err)
		}
	}
}
