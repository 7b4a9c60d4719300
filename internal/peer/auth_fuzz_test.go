package peer

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// FuzzVerify: whatever the timestamp and signature headers and the URI, a
// request is accepted only when it carries the HMAC of the right secret
// over its method, URI and timestamp, within the allowed skew.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	ts := strconv.FormatInt(now.Unix(), 10)
	f.Add("/v1/file?gen=1&path=a", ts, "00", false)
	f.Add("/v1/manifest?gen=1", ts, "", true)
	f.Add("/v1/batch?gen=2&files=1-3", "-1", "zz", false)
	f.Add("/v1/file?gen=1&path=..%2Fetc", "99999999999999999999", "ff", true)
	f.Add("/", " "+ts, "", true)
	f.Fuzz(func(t *testing.T, uri, tsHeader, sig string, signIt bool) {
		r, err := http.NewRequest(http.MethodGet, "http://peer"+uri, nil)
		if err != nil || r.URL.RawPath != "" {
			return
		}
		if signIt {
			Sign(r, testSecret, now)
			if tsHeader != ts {
				r.Header.Set(headerTimestamp, tsHeader) // a changed timestamp breaks the signature
			}
		} else {
			r.Header.Set(headerTimestamp, tsHeader)
			r.Header.Set(headerSignature, sig)
		}
		err = Verify(r, [][]byte{testSecret}, now, DefaultMaxSkew)
		if err == nil && (!signIt || tsHeader != ts) {
			t.Fatalf("accepted a request not signed with the secret: uri %q ts %q sig %q", uri, tsHeader, sig)
		}
		if err != nil && signIt && tsHeader == ts {
			t.Fatalf("refused a correctly signed request for %q: %v", uri, err)
		}
		// The same through the server: never a panic, 401 without a good
		// signature.
		if !signIt {
			w := httptest.NewRecorder()
			NewServer(ServerConfig{Secrets: [][]byte{testSecret}, Now: func() time.Time { return now }}).ServeHTTP(w, r)
			if r.URL.Path != "/healthz" && r.URL.Path != "/metrics" && w.Code != http.StatusUnauthorized && w.Code != http.StatusMethodNotAllowed {
				t.Fatalf("unsigned request for %q answered %d", uri, w.Code)
			}
		}
	})
}
