package minion

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/exclude"
	"github.com/fanout/fanout/internal/manifest"
)

func readDirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestSwitchTo: the first switch of a plain tree exchanges it for the
// symlink and keeps it as a release; later switches replace the symlink;
// a switch to the live release changes nothing; a symlink fanout did not
// make is refused, not replaced.
func TestSwitchTo(t *testing.T) {
	dir := t.TempDir()
	l := newLayout(filepath.Join(dir, "app"))
	if l.dir != filepath.Join(dir, ".app.releases") || l.target("r1") != ".app.releases/r1" {
		t.Fatalf("layout %+v", l)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(l.live, 0o755))
	must(os.WriteFile(filepath.Join(l.live, "old"), []byte("plain"), 0o644))
	must(l.ensureDir())
	for _, r := range []string{"r1", "r2"} {
		must(os.Mkdir(l.path(r), 0o755))
		must(os.WriteFile(filepath.Join(l.path(r), "file"), []byte(r), 0o644))
	}
	if cur, err := l.current(); cur != "" || err != nil || l.released() {
		t.Fatalf("plain tree: current %q, %v", cur, err)
	}
	changed, plain, err := l.switchTo("r1", time.Unix(1, 0))
	if err != nil || !changed || !strings.HasPrefix(plain, plainPrefix) {
		t.Fatalf("first switch: %v %q %v", changed, plain, err)
	}
	if b, err := os.ReadFile(filepath.Join(l.live, "file")); err != nil || string(b) != "r1" {
		t.Fatalf("after the first switch the task path reads %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(l.path(plain), "old")); err != nil || string(b) != "plain" {
		t.Fatalf("the plain tree was not kept: %q, %v", b, err)
	}
	if cur, err := l.current(); cur != "r1" || err != nil || !l.released() {
		t.Fatalf("current %q, %v", cur, err)
	}
	if changed, _, err := l.switchTo("r1", time.Now()); changed || err != nil {
		t.Fatalf("switch to the live release: %v %v", changed, err)
	}
	if changed, plain, err := l.switchTo("r2", time.Now()); !changed || plain != "" || err != nil {
		t.Fatalf("second switch: %v %q %v", changed, plain, err)
	}
	if b, _ := os.ReadFile(filepath.Join(l.live, "file")); string(b) != "r2" {
		t.Fatalf("after the second switch the task path reads %q", b)
	}
	if slices.Contains(readDirNames(t, l.dir), switchName) {
		t.Errorf("the switch left %s behind", switchName)
	}
	// A crash between the exchange and the rename left the plain tree at
	// the switch name: kept as a release, and the switch goes on.
	must(os.Mkdir(l.path(switchName), 0o755))
	must(os.WriteFile(filepath.Join(l.path(switchName), "orphan"), []byte("x"), 0o644))
	if changed, _, err := l.switchTo("r1", time.Now()); !changed || err != nil {
		t.Fatalf("switch over a leftover tree: %v %v", changed, err)
	}
	kept := 0
	for _, n := range readDirNames(t, l.dir) {
		if b, err := os.ReadFile(filepath.Join(l.path(n), "orphan")); err == nil && string(b) == "x" && strings.HasPrefix(n, plainPrefix) {
			kept++
		}
	}
	if kept != 1 {
		t.Fatalf("the leftover tree was not kept as a release: %v", readDirNames(t, l.dir))
	}
	// The operator's own symlink.
	other := newLayout(filepath.Join(dir, "linked"))
	must(os.Symlink("/srv/elsewhere", other.live))
	if _, err := other.current(); !errors.Is(err, errForeignLink) {
		t.Fatalf("foreign symlink: %v", err)
	}
	// A releases directory that is a symlink is refused.
	planted := newLayout(filepath.Join(dir, "planted"))
	must(os.Symlink(dir, planted.dir))
	if err := planted.ensureDir(); err == nil {
		t.Fatal("a symlinked releases directory was accepted")
	}
}

// TestPruneReleases: the live release and the keep-1 switched to last
// stay; older ones, unfinished builds and their kept manifests go.
func TestPruneReleases(t *testing.T) {
	dir := t.TempDir()
	m := testMinion(t, dir)
	l := newLayout(filepath.Join(dir, "app"))
	if err := l.ensureDir(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(m.cfg.StateDir, keptDir), 0o700); err != nil {
		t.Fatal(err)
	}
	rl := releaseLog{}
	for _, r := range []string{"plain-1", "r1", "r2", "r3", "partial"} {
		if err := os.MkdirAll(filepath.Join(l.path(r), "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(m.keptPath(r), []byte("m"), 0o600); err != nil {
			t.Fatal(err)
		}
		if r != "partial" {
			rl[l.dir] = append(rl[l.dir], releaseRecord{Name: r})
		}
	}
	m.pruneReleases(l, rl, 3, "r2") // r2 live (a rollback), r3 and r1 switched to last
	if got, want := readDirNames(t, l.dir), []string{"r1", "r2", "r3"}; !slices.Equal(got, want) {
		t.Fatalf("releases %v, want %v", got, want)
	}
	if _, err := os.Stat(m.keptPath("plain-1")); !os.IsNotExist(err) {
		t.Errorf("the pruned release's manifest stays: %v", err)
	}
	if _, err := os.Stat(m.keptPath("r1")); err != nil {
		t.Errorf("a kept release's manifest went: %v", err)
	}
	if n := len(rl[l.dir]); n != 3 {
		t.Errorf("%d records kept, want 3", n)
	}
	m.pruneReleases(l, rl, 1, "r3")
	if got := readDirNames(t, l.dir); !slices.Equal(got, []string{"r3"}) {
		t.Fatalf("keep 1: releases %v", got)
	}
}

// TestHeldRelease: a held release is under the releases beside its path,
// and only a release satisfies an atomic generation.
func TestHeldRelease(t *testing.T) {
	h := held{Gen: 3, Digest: "d", Path: "/srv/app", Release: "0123456789abcdef"}
	if got := h.root("/r"); got != "/r/srv/.app.releases/0123456789abcdef" {
		t.Fatalf("root %q", got)
	}
	g := coord.Generation{ID: 4, Digest: "d", Path: "/srv/app", Atomic: 2}
	if !h.satisfies(g) {
		t.Error("a release does not satisfy the atomic generation of its tree")
	}
	h.Release = ""
	if h.satisfies(g) || !h.satisfies(coord.Generation{ID: 4, Digest: "d", Path: "/srv/app"}) {
		t.Error("a tree in place must satisfy a plain generation only")
	}
}

// TestUnshare: a hard-linked file whose metadata the plan changes gets
// its own inode (whoever linked it: this build or an earlier attempt), so
// the change does not reach the live tree; others stay linked.
func TestUnshare(t *testing.T) {
	dir := t.TempDir()
	live, rel := filepath.Join(dir, "live"), filepath.Join(dir, "rel")
	for _, d := range []string{live, rel} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(live, f), []byte("content "+f), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(live, f), filepath.Join(rel, f)); err != nil {
			t.Fatal(err)
		}
	}
	plan := &manifest.Plan{Actions: []manifest.Action{{Op: manifest.OpMeta, Entry: manifest.Entry{Path: "a", Type: manifest.File}}}}
	if err := unshare(rel, plan); err != nil {
		t.Fatal(err)
	}
	same := func(f string) bool {
		a, _ := os.Stat(filepath.Join(live, f))
		b, _ := os.Stat(filepath.Join(rel, f))
		return os.SameFile(a, b)
	}
	if same("a") || !same("b") {
		t.Fatalf("a shared %v (want false), b shared %v (want true)", same("a"), same("b"))
	}
	if b, err := os.ReadFile(filepath.Join(rel, "a")); err != nil || string(b) != "content a" {
		t.Fatalf("unshared copy reads %q, %v", b, err)
	}
	if names := readDirNames(t, rel); !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("left behind: %v", names)
	}
}

// TestCarryAndLink: building a release from the live tree hard-links the
// files the new tree holds unchanged, never through a symlinked parent
// (it could reach a file outside the root), and carries what a pull in
// place would keep: excluded paths, and without delete the files the task
// does not list.
func TestCarryAndLink(t *testing.T) {
	dir := t.TempDir()
	m := testMinion(t, dir)
	m.cache = manifest.NewCache()
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pub, live, outside, rel := filepath.Join(dir, "pub"), filepath.Join(dir, "live"), filepath.Join(dir, "outside"), filepath.Join(dir, "rel")
	write(filepath.Join(pub, "a/f1"), "same")
	write(filepath.Join(pub, "certs/ca.pem"), "cert")
	write(filepath.Join(live, "a/f1"), "same")
	write(filepath.Join(live, "local.txt"), "host-local")
	write(filepath.Join(live, "logs/app.log"), "log line")
	write(filepath.Join(outside, "ca.pem"), "cert")
	if err := os.Symlink(outside, filepath.Join(live, "certs")); err != nil {
		t.Fatal(err)
	}
	ex, err := exclude.Parse([]string{"/logs/"})
	if err != nil {
		t.Fatal(err)
	}
	remote, err := manifest.Build(t.Context(), pub, manifest.Options{Hash: true, Exclude: ex})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(rel, 0o700); err != nil {
		t.Fatal(err)
	}
	m.linkRelease(t.Context(), live, rel, remote)
	if err := m.carry(t.Context(), live, rel, remote, false); err != nil {
		t.Fatal(err)
	}
	same := func(a, b string) bool {
		x, err1 := os.Lstat(a)
		y, err2 := os.Lstat(b)
		return err1 == nil && err2 == nil && os.SameFile(x, y)
	}
	if !same(filepath.Join(live, "a/f1"), filepath.Join(rel, "a/f1")) {
		t.Error("a/f1 was not hard-linked from the live tree")
	}
	if _, err := os.Lstat(filepath.Join(rel, "certs/ca.pem")); !os.IsNotExist(err) {
		t.Errorf("certs/ca.pem was linked through the live tree's symlinked parent: %v", err)
	}
	if !same(filepath.Join(live, "logs/app.log"), filepath.Join(rel, "logs/app.log")) || !same(filepath.Join(live, "local.txt"), filepath.Join(rel, "local.txt")) {
		t.Error("the excluded path or the host-local file was not carried")
	}
	if _, err := os.Lstat(filepath.Join(rel, "certs")); !os.IsNotExist(err) {
		t.Errorf("the live tree's symlink certs, which the task lists as a directory, was carried: %v", err)
	}
	// With delete, host-local files are not carried; excluded paths are.
	rel2 := filepath.Join(dir, "rel2")
	if err := os.Mkdir(rel2, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.carry(t.Context(), live, rel2, remote, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(rel2, "local.txt")); !os.IsNotExist(err) || !same(filepath.Join(live, "logs/app.log"), filepath.Join(rel2, "logs/app.log")) {
		t.Errorf("with delete: local.txt %v, excluded log carried %v", err, same(filepath.Join(live, "logs/app.log"), filepath.Join(rel2, "logs/app.log")))
	}
}
