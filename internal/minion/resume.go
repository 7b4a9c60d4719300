package minion

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/apply"
	"github.com/fanout/fanout/internal/chunk"
	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/statedir"
)

// Resume across restarts. A file of several chunks (format 3) is built in
// its part file (apply.PartPath: a temporary name in its directory, derived
// from its path and content hash), which survives a kill, a shutdown and
// any interrupted pull. The next pull that fetches the same content at the
// same path keeps it (apply.Sweep with the plan's files), and indexParts
// offers its chunks to the assembler like any local copy: each one whose
// bytes hash right is kept where it is, the rest fetched. Disk use stays
// bounded: a part file exists only for a file that the last interrupted
// pull was fetching, and every pull sweeps the ones its own plan does not
// fetch, under its task root and, through the pulling record, under the
// root of an interrupted pull of another task.

// pullingFile names, in the state directory, the task root of the pull in
// progress (or interrupted); it is removed once the pull succeeds.
const pullingFile = "pulling"

// sweepAbandoned removes the temporary and part files of an interrupted
// pull of another task root than root (a task changed while this host was
// down or mid-pull: no pull of that root will resume them), then records
// root as the root being pulled. Failing to sweep an old root is logged,
// not fatal.
func (m *Minion) sweepAbandoned(ctx context.Context, root string) error {
	rec := filepath.Join(m.cfg.StateDir, pullingFile)
	b, err := os.ReadFile(rec)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read %s: %w", rec, err)
	default:
		old := string(b)
		if old != root && within(m.cfg.Root, old) {
			sw, err := apply.Sweep(ctx, old, nil)
			if err != nil {
				m.cfg.Log.WithError(err).WithField("root", old).Warn("could not remove the temporary files of an interrupted pull")
			} else if sw.Removed > 0 {
				m.cfg.Log.WithField("root", old).WithField("files", sw.Removed).Info("removed the temporary files of an interrupted pull of another task")
			}
		}
		if old == root {
			return nil
		}
	}
	if err := statedir.WriteFile(rec, []byte(root), manifest.TempPrefix); err != nil {
		return fmt.Errorf("record the pull in progress: %w", err)
	}
	return nil
}

// clearPullRecord forgets the pull record once the pull succeeded: nothing of it is
// left to sweep.
func (m *Minion) clearPullRecord() error {
	if err := statedir.Remove(filepath.Join(m.cfg.StateDir, pullingFile)); err != nil {
		return fmt.Errorf("clear the pull record: %w", err)
	}
	return nil
}

// within reports whether p is root or lies below it, lexically.
func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && filepath.IsLocal(rel)
}

// resumable returns the files of plan that apply builds in part files:
// those of several chunks, when the manifest is chunked (format 3).
func resumable(remote *manifest.Manifest, plan *manifest.Plan) []manifest.Entry {
	if remote.Chunking == nil {
		return nil
	}
	var out []manifest.Entry
	for _, e := range plan.Entries(manifest.OpFetch) {
		if len(e.Chunks) > 0 {
			out = append(out, e)
		}
	}
	return out
}

// partBytes returns the disk space the part files kept (OS paths) take:
// a resumed pull needs that much less free space.
func partBytes(kept map[string]bool) int64 {
	var n int64
	for p := range kept {
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
	}
	return n
}

// indexParts offers the assembler the chunks that the part files kept by
// the sweep (kept, OS paths) may hold for the files es: each chunk of such
// a file that lies wholly in data (a part file is written chunk by chunk,
// in any order, so what was never written is a hole), and that the index
// has no other copy of. Nothing is read here: Assemble keeps a chunk
// only once its bytes hash right (see keepInPlace). It returns how many
// part files it found and the bytes they may give.
func (a *assembler) indexParts(ctx context.Context, kept map[string]bool, es []manifest.Entry) (files int, bytes int64, err error) {
	for _, e := range es {
		if err := ctx.Err(); err != nil {
			return files, bytes, err
		}
		p := apply.PartPath(a.root, e)
		if !kept[p] {
			continue
		}
		n, err := a.indexPart(p, e)
		if err != nil {
			a.m.cfg.Log.WithError(err).WithField("path", e.Path).Debug("part file not reused")
			continue
		}
		files++
		bytes += n
	}
	return files, bytes, nil
}

// indexPart indexes the chunks of e that part file p has data for, and
// returns their bytes.
func (a *assembler) indexPart(p string, e manifest.Entry) (int64, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file", p)
	}
	data := dataExtents(int(f.Fd()), fi.Size())
	var n int64
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range e.Chunks { // in file order, as the extents
		for len(data) > 0 && data[0].end <= c.Off {
			data = data[1:]
		}
		if len(data) == 0 || data[0].start > c.Off || c.Off+c.Len > data[0].end {
			continue // not wholly in data: never written whole
		}
		if _, ok := a.local[c.Hash]; ok {
			continue
		}
		a.local[c.Hash] = chunkAt{path: p, off: c.Off, len: c.Len}
		n += c.Len
	}
	return n, nil
}

// extent is a range [start, end) of a file.
type extent struct{ start, end int64 }

// dataExtents returns the ranges of the file open as fd (size bytes long)
// that hold data, not holes, in order. It walks the file once, one
// SEEK_DATA and one SEEK_HOLE a range: asking for each chunk instead costs
// a scan to the next hole each, quadratic in a large written range (13 s
// for a half-written 1 GiB file on tmpfs). A file system that cannot tell
// says the rest is data.
func dataExtents(fd int, size int64) []extent {
	var out []extent
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole from off to the end
		}
		if err != nil {
			return append(out, extent{off, size})
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil || h > size {
			h = size
		}
		if h <= d {
			return append(out, extent{d, size}) // no progress: take the rest as data, the hash decides
		}
		out = append(out, extent{d, h})
		off = h
	}
	return out
}

// keepInPlace is copyChunk for a chunk that the index found at its own
// offset in f, the part file being assembled (an interrupted pull wrote
// it): it is kept without a write when its bytes hash right.
func (a *assembler) keepInPlace(f *os.File, c manifest.Chunk, buf *[]byte) error {
	b := (*buf)[:c.Len]
	if _, err := f.ReadAt(b, c.Off); err != nil {
		return err
	}
	if chunk.Hash(b).String() != c.Hash {
		return errors.New("not the chunk: written only in part, or not at all")
	}
	a.resumed.Add(c.Len)
	a.m.cfg.Metrics.BytesResumed.Add(float64(c.Len))
	return nil
}
