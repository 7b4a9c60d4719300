package peer

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/fanout/fanout/internal/manifest"
)

// MaxBatchFiles is the most files one batch request may ask for.
const MaxBatchFiles = 1024

// FormatIndices writes manifest indices, ascending, in the compact form a
// batch request carries: "3-10,12,15-20".
func FormatIndices(idx []int) string {
	var b strings.Builder
	for i := 0; i < len(idx); {
		j := i
		for j+1 < len(idx) && idx[j+1] == idx[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(idx[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(idx[j]))
		}
		i = j + 1
	}
	return b.String()
}

// ParseIndices reads the form FormatIndices writes. Indices must be
// strictly ascending, below n, and at most max in all.
func ParseIndices(spec string, n, max int) ([]int, error) {
	if spec == "" {
		return nil, fmt.Errorf("no file indices")
	}
	var idx []int
	for part := range strings.SplitSeq(spec, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil || first < 0 || (lo != "0" && strings.HasPrefix(lo, "0")) {
			return nil, fmt.Errorf("bad index %s", quote(lo))
		}
		last := first
		if isRange {
			last, err = strconv.Atoi(hi)
			if err != nil || last <= first || strings.HasPrefix(hi, "0") {
				return nil, fmt.Errorf("bad range %s", quote(part))
			}
		}
		if last >= n {
			return nil, fmt.Errorf("index %d out of range: the manifest has %d entries", last, n)
		}
		if len(idx) > 0 && first <= idx[len(idx)-1] {
			return nil, fmt.Errorf("indices not ascending at %s", quote(part))
		}
		if len(idx)+last-first+1 > max {
			return nil, fmt.Errorf("more than %d files in one batch", max)
		}
		for i := first; i <= last; i++ {
			idx = append(idx, i)
		}
	}
	return idx, nil
}

// serveBatch answers GET /v1/batch?gen=N&files=SPEC: the contents of the
// regular files at the manifest indices SPEC lists, concatenated in that
// order. The client splits the stream by the manifest's sizes and verifies
// each file. A file that cannot be sent whole breaks the response.
func (s *Server) serveBatch(w http.ResponseWriter, r *http.Request, v *view) error {
	q, sv, err := s.request(r, v)
	if err != nil {
		return err
	}
	entries := sv.snap.Manifest.Entries
	idx, err := ParseIndices(q.Get("files"), len(entries), MaxBatchFiles)
	if err != nil {
		return errorf(http.StatusBadRequest, "bad files parameter: %v", err)
	}
	var total int64
	for _, i := range idx {
		if entries[i].Type != manifest.File {
			return errorf(http.StatusBadRequest, "entry %d (%s) is not a regular file", i, quote(entries[i].Path))
		}
		total += entries[i].Size
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(headerGeneration, strconv.FormatInt(sv.snap.Gen, 10))
	h.Set("Content-Length", strconv.FormatInt(total, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	body := s.bodyWriter(w, r)
	rc := http.NewResponseController(w)
	var o opener
	defer o.close()
	for _, i := range idx {
		e := entries[i]
		var out io.Writer = body
		if in := sv.snap.Incoming; in != nil && in.Pending(e.Path) {
			// This host is still receiving e: what the batch holds so
			// far goes out before it waits, and e's bytes as they land.
			// Left in the response's buffers, the files before e would
			// wait for it, and a relay of small files would pass them on
			// a batch at a time (each hop of a chain adding a batch's
			// whole time) instead of file by file.
			rc.Flush()
			out = flushWriter{w: body, rc: rc}
		}
		if err := s.sendWhole(out, r, sv, e, &o); err != nil {
			if r.Context().Err() == nil {
				s.cfg.Log.WithError(err).WithField("path", e.Path).Warn("batch broken off")
			}
			panic(http.ErrAbortHandler) // the length is promised
		}
	}
	return nil
}

// sendWhole writes the whole content of file e to w: from disk, opened with
// o, or as it lands when it is still being received.
func (s *Server) sendWhole(w io.Writer, r *http.Request, sv *served, e manifest.Entry, o *opener) error {
	snap := sv.snap
	var body io.ReadCloser
	if in := snap.Incoming; in != nil && in.Pending(e.Path) {
		rc, err := in.Open(r.Context(), e.Path, e.Size, 0, func() (*os.File, error) { return openEntry(snap.Root, e.Path) })
		if err != nil {
			return err
		}
		body = rc
	} else {
		f, err := o.open(snap.Root, e.Path)
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err == nil && fi.Size() != e.Size {
			err = fmt.Errorf("%q changed on disk: %d bytes, manifest says %d", e.Path, fi.Size(), e.Size)
		}
		if err != nil {
			f.Close()
			return err
		}
		body = f
	}
	defer body.Close()
	var n int64
	var err error
	if f, ok := body.(*os.File); ok && sv.verifier() != nil && verifiable(e, 0, e.Size) {
		if n, err = copyVerified(w, f, e, 0, e.Size, nil); errors.Is(err, errChanged) {
			sv.verifier()(e.Path)
		}
	} else if f, ok := body.(*os.File); ok {
		n, err = io.CopyN(w, f, e.Size) // from disk: sendfile
	} else {
		n, err = io.CopyBuffer(writerOnly{w}, io.LimitReader(body, e.Size), make([]byte, min(max(e.Size, 4<<10), copyBuffer)))
		if err == nil && n < e.Size {
			err = io.ErrUnexpectedEOF
		}
	}
	if err != nil {
		return fmt.Errorf("send %q: %d of %d bytes: %w", e.Path, n, e.Size, err)
	}
	return nil
}
