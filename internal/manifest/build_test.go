package manifest

import (
	"context"
	"encoding/hex"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

func mustWrite(t *testing.T, p string, data string, mode fs.FileMode, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// withOwner gives e the owner of files this test process creates: its
// effective uid and gid, with their names.
func withOwner(t *testing.T, e Entry) Entry {
	t.Helper()
	uid, gid := os.Geteuid(), os.Getegid()
	e.UID, e.GID = NewOwnerID(int64(uid)), NewOwnerID(int64(gid))
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		e.User = u.Username
	}
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		e.Group = g.Name
	}
	return e
}

func TestBuildSkipsAndReports(t *testing.T) {
	root := t.TempDir()
	mt := time.Unix(1_600_000_000, 123)
	for _, d := range []string{"bad\xffdir", TempPrefix + "dir", "ok"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(root, "bad\xffdir", "inner"), "x", 0o644, mt)
	mustWrite(t, filepath.Join(root, TempPrefix+"dir", "inner"), "x", 0o644, mt)
	mustWrite(t, filepath.Join(root, "bad\xfffile"), "x", 0o644, mt)
	mustWrite(t, filepath.Join(root, "ok", TempPrefix+"123"), "partial", 0o600, mt)
	mustWrite(t, filepath.Join(root, "ok", TempPrefix), "a name that is only the prefix is not a temp file", 0o644, mt)
	if err := syscall.Mkfifo(filepath.Join(root, "ok", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(root, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Symlink("bad\xfftarget", filepath.Join(root, "badlink")); err != nil {
		t.Fatal(err)
	}

	var warned, temps []string
	m, err := Build(context.Background(), root, Options{
		Hash: true,
		Warn: func(p string, err error) {
			if err == nil {
				t.Errorf("Warn(%q) with a nil error", p)
			}
			warned = append(warned, p)
		},
		Temp: func(p string) { temps = append(temps, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range m.Entries {
		paths = append(paths, e.Path)
	}
	if want := []string{".", "ok", "ok/" + TempPrefix}; !slices.Equal(paths, want) {
		t.Errorf("entries %q, want %q", paths, want)
	}
	slices.Sort(warned)
	if want := []string{"badlink", "bad\xffdir", "bad\xfffile", "ok/fifo", "sock"}; !slices.Equal(warned, want) {
		t.Errorf("warned %q, want %q", warned, want)
	}
	slices.Sort(temps)
	if want := []string{TempPrefix + "dir", "ok/" + TempPrefix + "123"}; !slices.Equal(temps, want) {
		t.Errorf("temps %q, want %q", temps, want)
	}
	if err := m.Validate(DefaultLimits()); err != nil {
		t.Errorf("built manifest does not validate: %v", err)
	}
}

func TestBuildModesAndTimes(t *testing.T) {
	root := filepath.Join(t.TempDir(), "task")
	if err := os.MkdirAll(filepath.Join(root, "sticky", "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	fileTime := time.Unix(1_500_000_000, 999_999_999)
	mustWrite(t, filepath.Join(root, "sticky", "setuid"), "#!/bin/sh\n", 0o750|fs.ModeSetuid, fileTime)
	mustWrite(t, filepath.Join(root, "private"), "secret", 0o600, fileTime)
	if err := os.Symlink("../private", filepath.Join(root, "sticky", "up")); err != nil {
		t.Fatal(err)
	}
	// Directory times last: creating children changes them.
	dirTimes := map[string]time.Time{
		"sticky/empty": time.Unix(1_400_000_000, 1),
		"sticky":       time.Unix(1_400_000_001, 2),
		".":            time.Unix(1_400_000_002, 3),
	}
	for _, d := range []string{"sticky/empty", "sticky", "."} {
		if err := os.Chtimes(filepath.Join(root, d), dirTimes[d], dirTimes[d]); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "sticky"), 0o755|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "sticky", "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := Build(context.Background(), root, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	hashOf := func(s string) string {
		sum := blake3.Sum256([]byte(s))
		return hex.EncodeToString(sum[:])
	}
	want := []Entry{
		{Path: ".", Type: Dir, Mode: 0o755, MTime: dirTimes["."].UnixNano()},
		{Path: "private", Type: File, Mode: 0o600, Size: 6, MTime: fileTime.UnixNano(), Hash: hashOf("secret")},
		{Path: "sticky", Type: Dir, Mode: 0o755 | fs.ModeSticky, MTime: dirTimes["sticky"].UnixNano()},
		{Path: "sticky/empty", Type: Dir, Mode: 0o700, MTime: dirTimes["sticky/empty"].UnixNano()},
		{Path: "sticky/setuid", Type: File, Mode: 0o750 | fs.ModeSetuid, Size: 10, MTime: fileTime.UnixNano(), Hash: hashOf("#!/bin/sh\n")},
		{Path: "sticky/up", Type: Symlink, Mode: 0o777, Target: "../private"},
	}
	if len(m.Entries) != len(want) {
		t.Fatalf("entries %+v", m.Entries)
	}
	for i, e := range m.Entries {
		if e.Type == Symlink {
			e.MTime = 0 // a symlink's own mtime is whatever creating it set
		}
		if w := withOwner(t, want[i]); !e.Equal(w) {
			t.Errorf("entry %d = %+v\n          want %+v", i, e, w)
		}
	}
}

func TestBuildRootErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{fifo, link} {
		m, err := Build(context.Background(), root, Options{})
		if err == nil || !strings.Contains(err.Error(), root) {
			t.Errorf("Build(%s) = %+v, %v; want an error naming the root", root, m, err)
		}
	}
}

func TestBuildFileRootHashed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "model.bin")
	mt := time.Unix(1_700_000_000, 5)
	mustWrite(t, p, "weights", 0o640, mt)
	m, err := Build(context.Background(), p, Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	h, err := HashFile(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	want := withOwner(t, Entry{Path: ".", Type: File, Mode: 0o640, Size: 7, MTime: mt.UnixNano(), Hash: h})
	if len(m.Entries) != 1 || !m.Entries[0].Equal(want) {
		t.Fatalf("file root manifest %+v, want [%+v]", m.Entries, want)
	}
	if err := m.Validate(DefaultLimits()); err != nil {
		t.Error(err)
	}
}

func TestBuildCancelled(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		mustWrite(t, filepath.Join(root, n), n, 0o644, time.Unix(1, 0))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Build(ctx, root, Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Build with a cancelled context = %v", err)
	}
}

func TestHashFile(t *testing.T) {
	dir := t.TempDir()
	// 2.5 MiB of varied bytes: several 1 MiB reads and a short last one.
	data := make([]byte, 5<<19)
	for i := range data {
		data[i] = byte(i*31 + i>>11)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := blake3.Sum256(data)
	for p, want := range map[string]string{
		big: hex.EncodeToString(sum[:]),
		// BLAKE3 of the empty input, from the BLAKE3 specification.
		empty: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
	} {
		got, err := HashFile(context.Background(), p)
		if err != nil || got != want {
			t.Errorf("HashFile(%s) = %s, %v; want %s", p, got, err, want)
		}
	}
	h := NewHash()
	h.Write(data)
	if got := hex.EncodeToString(h.Sum(nil)); got != hex.EncodeToString(sum[:]) {
		t.Errorf("NewHash gives %s", got)
	}
}

func TestHashFileRefusesNonFiles(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	// A fifo must fail at once, not wait for a writer.
	for _, p := range []string{link, fifo, dir, filepath.Join(dir, "missing")} {
		if h, err := HashFile(context.Background(), p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("HashFile(%s) = %q, %v; want an error naming it", p, h, err)
		}
	}
}
