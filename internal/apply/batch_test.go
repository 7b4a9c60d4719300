package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/peer"
)

// batchFetcher adds batches to the fake fetcher: it streams the files'
// contents concatenated, breaking off after breakAfter bytes when set, and
// flipping a byte of the file named wrong.
type batchFetcher struct {
	*fakeFetcher
	batches    [][]string
	breakAfter int
	wrong      string
}

func (b *batchFetcher) FetchBatch(ctx context.Context, es []manifest.Entry, w io.Writer) (int64, error) {
	var paths []string
	var stream []byte
	for _, e := range es {
		paths = append(paths, e.Path)
		data := bytes.Clone(b.content[e.Path])
		if e.Path == b.wrong && len(data) > 0 {
			data[0] ^= 1
		}
		stream = append(stream, data...)
	}
	b.batches = append(b.batches, paths)
	var err error
	if b.breakAfter > 0 && b.breakAfter < len(stream) {
		stream, err = stream[:b.breakAfter], errors.New("connection reset")
	}
	var sent int64
	for len(stream) > 0 { // small writes that straddle file boundaries
		k := min(5, len(stream))
		n, werr := w.Write(stream[:k])
		sent += int64(n)
		if werr != nil {
			return sent, werr
		}
		stream = stream[k:]
	}
	return sent, err
}

// smallTree is a plan of n small files (some empty) in one directory.
func smallTree(n int) (*manifest.Plan, map[string][]byte, []manifest.Entry) {
	content := map[string][]byte{}
	acts := []manifest.Action{act(manifest.OpMkdir, dirEntry("d", 0o755))}
	var es []manifest.Entry
	for i := range n {
		p := fmt.Sprintf("d/f%03d", i)
		data := bytes.Repeat([]byte{byte('a' + i%26)}, (i*37)%300)
		content[p] = data
		e := fileEntry(p, data, 0o644)
		es = append(es, e)
		acts = append(acts, act(manifest.OpFetch, e))
	}
	return plan(acts...), content, es
}

func TestBatchesSmallFiles(t *testing.T) {
	root := t.TempDir()
	p, content, es := smallTree(40)
	f := &batchFetcher{fakeFetcher: newFetcher(content)}
	st, err := Apply(context.Background(), root, p, Options{Fetcher: f, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 40 {
		t.Errorf("Files = %d, want 40", st.Files)
	}
	if len(f.batches) != 1 || len(f.batches[0]) != 40 {
		t.Errorf("batches = %d (first of %d files), want one of 40", len(f.batches), len(f.batches[0]))
	}
	for _, e := range es {
		checkEntry(t, filepath.Join(root, e.Path), e, content[e.Path])
	}
	noTemps(t, root)
}

// A batch that breaks off mid-stream keeps the files it delivered whole;
// the rest come one by one.
func TestBrokenBatchFallsBackToSingleFetches(t *testing.T) {
	root := t.TempDir()
	p, content, es := smallTree(30)
	f := &batchFetcher{fakeFetcher: newFetcher(content), breakAfter: 1000}
	if _, err := Apply(context.Background(), root, p, Options{Fetcher: f, Workers: 2}); err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		checkEntry(t, filepath.Join(root, e.Path), e, content[e.Path])
	}
	noTemps(t, root)
}

// A bad file in a batch is a hash mismatch naming that file: the source
// is bad. Files before it landed; it left no temporary file.
func TestBatchHashMismatch(t *testing.T) {
	root := t.TempDir()
	p, content, es := smallTree(20)
	f := &batchFetcher{fakeFetcher: newFetcher(content), wrong: "d/f010"}
	_, err := Apply(context.Background(), root, p, Options{Fetcher: f, Workers: 1})
	var mismatch *HashMismatchError
	if !errors.As(err, &mismatch) || mismatch.Path != "d/f010" {
		t.Fatalf("err = %v, want a hash mismatch on d/f010", err)
	}
	checkEntry(t, filepath.Join(root, es[9].Path), es[9], content[es[9].Path])
	noTemps(t, root)
}

func TestBatchGrouping(t *testing.T) {
	a := newApplier(t.TempDir(), Options{Fetcher: &batchFetcher{fakeFetcher: newFetcher(nil)}})
	var acts []manifest.Action
	add := func(p string, size int64) {
		acts = append(acts, act(manifest.OpFetch, manifest.Entry{Path: p, Type: manifest.File, Size: size}))
	}
	add("a", 10)
	add("b", 10)
	add("big", batchFileMax+1)
	for i := range batchFiles + 1 {
		add(fmt.Sprintf("s%d", i), 1)
	}
	var sizes []int
	for _, b := range a.batches(acts) {
		sizes = append(sizes, len(b))
	}
	want := []int{2, 1, batchFiles, 1}
	if fmt.Sprint(sizes) != fmt.Sprint(want) {
		t.Errorf("batch sizes %v, want %v", sizes, want)
	}
	// A fetcher that cannot batch gets every file alone.
	single := newApplier(t.TempDir(), Options{Fetcher: newFetcher(nil)})
	if n := len(single.batches(acts)); n != len(acts) {
		t.Errorf("%d batches for %d files without BatchFetcher", n, len(acts))
	}
}

// The files of a batch are made durable together: one syncfs for every
// durableFiles of them (and one for the rest) before their renames, not an
// fsync each; every file is in place, and no temporary file is left, also
// when the batch breaks off midway (the files it finished are placed, the
// rest fetched alone).
func TestBatchSyncsOncePerFiles(t *testing.T) {
	for _, broken := range []bool{false, true} {
		root := t.TempDir()
		n := 2*durableFiles + 5
		p, content, es := smallTree(n)
		f := &batchFetcher{fakeFetcher: newFetcher(content)}
		if broken {
			f.breakAfter = int(es[0].Size + es[1].Size + es[2].Size + 3) // in the fourth file
		}
		a := newApplier(root, Options{Fetcher: f, Workers: 1})
		var rec syncRecorder
		var placedAt []int // files in place at each syncfs: renamed only after one
		a.synced = func(op, path string) {
			rec.record(op, path)
			if op == "syncfs" {
				names, _ := filepath.Glob(filepath.Join(root, "d", "f*"))
				placedAt = append(placedAt, len(names))
			}
		}
		st, err := a.apply(context.Background(), p)
		if err != nil {
			t.Fatalf("broken %v: %v", broken, err)
		}
		if st.Files != n {
			t.Errorf("broken %v: Files = %d, want %d", broken, st.Files, n)
		}
		syncfs := 0
		for _, s := range rec.synced() {
			if s == "syncfs "+filepath.Join(root, "d") {
				syncfs++
			}
		}
		// One batch of all n (batchFiles allows), synced in three; broken,
		// the batch's three finished files once, the rest one by one
		// (fsynced alone).
		want := 3
		if broken {
			want = 1
		}
		if syncfs != want {
			t.Errorf("broken %v: %d syncfs of the batch's directory, want %d: %q", broken, syncfs, want, rec.synced())
		}
		if !broken && !slices.Equal(placedAt, []int{0, durableFiles, 2 * durableFiles}) {
			t.Errorf("files in place at each syncfs: %v, want 0, %d, %d: a file was renamed before its sync", placedAt, durableFiles, 2*durableFiles)
		}
		for _, e := range es {
			checkEntry(t, filepath.Join(root, filepath.FromSlash(e.Path)), e, content[e.Path])
		}
		noTemps(t, root)
	}
}

// midBatch is a batchFetcher that calls mid once the batch's first file is
// streamed, before the rest.
type midBatch struct {
	*batchFetcher
	mid func()
}

func (m *midBatch) FetchBatch(ctx context.Context, es []manifest.Entry, w io.Writer) (int64, error) {
	n, err := w.Write(m.content[es[0].Path])
	if err != nil {
		return int64(n), err
	}
	m.mid()
	rest, err := m.batchFetcher.FetchBatch(ctx, es[1:], w)
	return int64(n) + rest, err
}

// A verified file of several chunks in a batch is served on to other hosts
// at once, before the batch's sync and its rename: a pipelining host's
// Incoming streams it whole while the rest of the batch still arrives.
func TestBatchServesVerifiedFilesBeforeTheirSync(t *testing.T) {
	root := t.TempDir()
	data := randomBytes(200<<10, 3)
	big := chunkedEntry(t, "d/big", data)
	p, content, es := smallTree(3)
	content[big.Path] = data
	p.Actions = append(p.Actions[:1], append([]manifest.Action{act(manifest.OpFetch, big)}, p.Actions[1:]...)...)
	in := peer.NewIncoming(append([]manifest.Entry{big}, es...), 300*time.Millisecond)
	served := false
	f := &midBatch{batchFetcher: &batchFetcher{fakeFetcher: newFetcher(content)}}
	f.mid = func() {
		if _, err := os.Lstat(filepath.Join(root, "d", "big")); err == nil {
			t.Error("the file was in place before the rest of its batch came")
		}
		r, err := in.Open(context.Background(), big.Path, big.Size, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("a host streaming it read %d of %d bytes (%v) before the batch's sync", len(got), len(data), err)
		}
		served = true
	}
	if _, err := Apply(context.Background(), root, p, Options{Fetcher: f, Workers: 1, Observer: in}); err != nil {
		t.Fatal(err)
	}
	if !served || len(f.batches) != 1 {
		t.Fatalf("batches %v: want the chunked file first in one batch", f.batches)
	}
	checkEntry(t, filepath.Join(root, "d", "big"), big, data)
}

// A batch whose files are on two filesystems (a mount point inside the
// task root) syncs each filesystem: one syncfs of one of them would leave
// the other's files renamed before they are durable. Needs root (mount).
func TestBatchSyncsEachFilesystem(t *testing.T) {
	root := t.TempDir()
	m := filepath.Join(root, "m")
	if err := os.Mkdir(m, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", m, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(m, unix.MNT_DETACH) })
	content := map[string][]byte{}
	acts := []manifest.Action{act(manifest.OpMkdir, dirEntry("d", 0o755)), act(manifest.OpMkdir, dirEntry("m", 0o755))}
	for i := range 6 {
		dir := "d"
		if i%2 == 1 {
			dir = "m"
		}
		p := fmt.Sprintf("%s/f%d", dir, i)
		content[p] = []byte(p)
		acts = append(acts, act(manifest.OpFetch, fileEntry(p, content[p], 0o644)))
	}
	f := &batchFetcher{fakeFetcher: newFetcher(content)}
	a := newApplier(root, Options{Fetcher: f, Workers: 1})
	var rec syncRecorder
	a.synced = rec.record
	if _, err := a.apply(context.Background(), plan(acts...)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range rec.synced() {
		if strings.HasPrefix(s, "syncfs ") {
			got = append(got, s)
		}
	}
	want := []string{"syncfs " + filepath.Join(root, "d"), "syncfs " + m}
	if !slices.Equal(got, want) {
		t.Fatalf("syncfs %q, want %q", got, want)
	}
}
