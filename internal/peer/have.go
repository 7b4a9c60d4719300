package peer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/fanout/fanout/internal/manifest"
)

// haveReply is the answer to GET /v1/have: All when the file is in place
// here (every chunk can be served), else Chunks, a bitmap of the chunks
// verified so far (bit i of byte i/8, least significant first, base64).
type haveReply struct {
	All    bool   `json:"all"`
	Chunks string `json:"chunks,omitempty"`
}

// serveHave answers GET /v1/have?gen=N&path=P: which chunks of the file at
// manifest path P this host can serve, so a puller with several sources
// asks each only for what it has. A host still receiving the file has only
// the chunks it verified.
func (s *Server) serveHave(w http.ResponseWriter, r *http.Request, v *view) error {
	q, sv, err := s.request(r, v)
	if err != nil {
		return err
	}
	paths := q["path"]
	if len(paths) != 1 || !validPath(paths[0]) {
		return errorf(http.StatusBadRequest, "bad path %s", quote(q.Get("path")))
	}
	p := paths[0]
	e, ok := sv.entries[p]
	if !ok || e.Type != manifest.File {
		return errorf(http.StatusNotFound, "generation %d has no file %s", sv.snap.Gen, quote(p))
	}
	reply := haveReply{All: true}
	if in := sv.snap.Incoming; in != nil {
		if have, pending := in.Have(p); pending {
			reply = haveReply{Chunks: base64.StdEncoding.EncodeToString(packBits(have))}
		}
	}
	b, err := json.Marshal(reply)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set(headerGeneration, strconv.FormatInt(sv.snap.Gen, 10))
	w.Write(b)
	return nil
}

func packBits(bits []bool) []byte {
	b := make([]byte, (len(bits)+7)/8)
	for i, v := range bits {
		if v {
			b[i/8] |= 1 << (i % 8)
		}
	}
	return b
}

// Have asks the peer at addr which chunks of the file at path of
// generation gen it can serve: all of them (all), or those set in have
// (indexed like the file's chunk list; n is the number of chunks, so the
// bitmap has a known length). Errors are as for Fetch.
func (c *Client) Have(ctx context.Context, addr string, gen int64, path string, n int) (all bool, have []bool, err error) {
	what := fmt.Sprintf("chunks held of %q of generation %d from %s", path, gen, addr)
	q := url.Values{"gen": {strconv.FormatInt(gen, 10)}, "path": {path}}
	resp, err := c.get(ctx, what, c.url(addr, "/v1/have", q), 0)
	if err != nil {
		return false, nil, err
	}
	defer resp.Body.Close()
	var reply haveReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&reply); err != nil {
		return false, nil, fmt.Errorf("get %s: %w: %v", what, ErrUnavailable, err)
	}
	if reply.All {
		return true, nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(reply.Chunks)
	if err != nil || len(b) != (n+7)/8 {
		return false, nil, fmt.Errorf("get %s: %w: a bitmap of %d bytes for %d chunks", what, ErrUnavailable, len(b), n)
	}
	have = make([]bool, n)
	for i := range have {
		have[i] = b[i/8]&(1<<(i%8)) != 0
	}
	return false, have, nil
}
