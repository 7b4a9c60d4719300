package peer

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"
)

// MinSecretLen is the shortest shared secret LoadSecrets accepts, in bytes.
const MinSecretLen = 16

// maxSecretFile bounds the size of a secret file, in bytes.
const maxSecretFile = 64 << 10

// Sign sets the timestamp and signature headers of r: an HMAC-SHA256, keyed
// by secret, over r's method, request URI (path and raw query) and now as a
// Unix timestamp. The secret itself never crosses the wire.
func Sign(r *http.Request, secret []byte, now time.Time) {
	ts := strconv.FormatInt(now.Unix(), 10)
	r.Header.Set(headerTimestamp, ts)
	r.Header.Set(headerSignature, hex.EncodeToString(signature(secret, r.Method, requestURI(r), ts)))
}

// Verify checks that r carries a signature Sign made with one of secrets
// (empty ones never match), and that its timestamp is within maxSkew of now,
// compared in whole seconds. Accepting several secrets lets a fleet rotate
// its secret while it runs. The error says which check failed.
func Verify(r *http.Request, secrets [][]byte, now time.Time, maxSkew time.Duration) error {
	ts := r.Header.Get(headerTimestamp)
	sig := r.Header.Get(headerSignature)
	if ts == "" || sig == "" {
		return fmt.Errorf("missing %s or %s header", headerTimestamp, headerSignature)
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		// Not wrapped: a *strconv.NumError repeats the whole header.
		return fmt.Errorf("bad timestamp %s: not a Unix time in seconds", quote(ts))
	}
	// Bounds in whole seconds, saturated, so that no int64 timestamp can
	// overflow past them: a far-future one must not pass as recent.
	skew := int64(max(maxSkew, 0) / time.Second)
	nowUnix := now.Unix()
	switch {
	case unix < subSat(nowUnix, skew):
		return fmt.Errorf("timestamp %d is more than %v older than this host's clock (%d)", unix, maxSkew, nowUnix)
	case unix > addSat(nowUnix, skew):
		return fmt.Errorf("timestamp %d is more than %v in the future of this host's clock (%d)", unix, maxSkew, nowUnix)
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return errors.New("signature is not hex")
	}
	uri, keys := requestURI(r), 0
	for _, secret := range secrets {
		if len(secret) == 0 {
			continue
		}
		keys++
		if hmac.Equal(got, signature(secret, r.Method, uri, ts)) {
			return nil
		}
	}
	if keys == 0 {
		return errors.New("no secret to verify the signature with")
	}
	return errors.New("signature mismatch")
}

// addSat returns a+b for b >= 0, or math.MaxInt64 if that overflows.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// subSat returns a-b for b >= 0, or math.MinInt64 if that overflows.
func subSat(a, b int64) int64 {
	if a < math.MinInt64+b {
		return math.MinInt64
	}
	return a - b
}

// signature is the MAC over one request's method, URI and timestamp.
func signature(secret []byte, method, uri, ts string) []byte {
	mac := hmac.New(sha256.New, secret)
	// Newlines cannot occur in any of the three, so the message is unambiguous.
	io.WriteString(mac, method+"\n"+uri+"\n"+ts)
	return mac.Sum(nil)
}

// requestURI is the path and raw query of r as it travels on the wire: as
// received on a server, as it will be written on a client.
func requestURI(r *http.Request) string {
	if r.RequestURI != "" {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// LoadSecrets reads the shared secrets from the file at path: one a line,
// without its surrounding whitespace; blank lines are ignored. The first
// signs requests and every one is accepted by Verify, so a fleet rotates its
// secret by adding the new one as a second line, moving it first, then
// dropping the old one, with no request refused at any step. A file with a
// single secret is the common case.
//
// LoadSecrets refuses a file that other users may read or write, a file
// without a secret, and a secret shorter than MinSecretLen bytes, naming its
// line.
func LoadSecrets(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load secret: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load secret: %w", err)
	}
	if fi.Mode().Perm()&0o006 != 0 {
		return nil, fmt.Errorf("secret file %s has mode %v, open to other users: run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secret file %s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, fmt.Errorf("load secret: read %s: %w", path, err)
	}
	if len(b) > maxSecretFile {
		return nil, fmt.Errorf("secret file %s is larger than %d bytes: it should hold one secret a line", path, maxSecretFile)
	}
	var secrets [][]byte
	for i, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if len(line) < MinSecretLen {
			return nil, fmt.Errorf("secret on line %d of %s is %d bytes, need at least %d: make one with head -c 32 /dev/urandom | base64", i+1, path, len(line), MinSecretLen)
		}
		secrets = append(secrets, line)
	}
	if len(secrets) == 0 {
		return nil, fmt.Errorf("secret file %s holds no secret: make one with head -c 32 /dev/urandom | base64 > %s", path, path)
	}
	return secrets, nil
}
