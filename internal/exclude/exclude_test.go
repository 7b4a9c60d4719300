package exclude

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The rsync pattern table: each pattern against paths (a trailing "/"
// marks a directory), with whether the path itself matches.
var table = []struct {
	pattern string
	match   []string
	nomatch []string
}{
	{"*.log", []string{"a.log", "d/a.log", "d/e/.log", "x.log/"}, []string{"a.log.1", "log", "d.log2/f"}},
	{"/top.txt", []string{"top.txt"}, []string{"d/top.txt"}},
	{"cache/", []string{"cache/", "a/cache/"}, []string{"cache", "a/cache", "cachex/"}},
	{"/cache/", []string{"cache/"}, []string{"a/cache/", "cache"}},
	{"d/e", []string{"d/e", "x/d/e", "x/d/e/"}, []string{"xd/e", "d/e/f", "d"}},
	{"/d/e", []string{"d/e"}, []string{"x/d/e"}},
	{"d/*", []string{"d/a", "x/d/b/"}, []string{"d/a/b", "d"}},
	{"d/**", []string{"d/a", "d/a/b", "x/d/a/b"}, []string{"d", "xd/a"}},
	{"/d/**", []string{"d/a", "d/a/b"}, []string{"x/d/a", "d"}},
	{"d/***", []string{"d/", "d/a", "d/a/b"}, []string{"d", "dd/a"}},
	{"**/tmp", []string{"a/tmp", "a/b/tmp"}, []string{"atmp"}},
	{"a/**/z", []string{"a/b/z", "a/b/c/z", "x/a/b/z"}, []string{"a/z/y"}},
	{"?.c", []string{"a.c", "d/b.c"}, []string{"ab.c", ".c"}},
	{"file[0-9]", []string{"file1", "d/file9"}, []string{"filea", "file10"}},
	{"file[!0-9]", []string{"filea"}, []string{"file1"}},
	{"file[^0-9]", []string{"filex"}, []string{"file5"}},
	{"[]]x", []string{"]x"}, []string{"ax"}},
	{`lit\*`, []string{"lit*"}, []string{"litx"}},
	{"*", []string{"a", "a/b", "d/"}, nil},
	{".git/", []string{".git/", "sub/.git/"}, []string{".gitignore", ".git"}},
	{"- *.bak", []string{"a.bak"}, []string{"a.bak2"}},
	{"a*b", []string{"ab", "axxb"}, []string{"a/b"}},
}

func parsePath(p string) (string, bool) {
	if s, ok := strings.CutSuffix(p, "/"); ok {
		return s, true
	}
	return p, false
}

func TestTable(t *testing.T) {
	for _, c := range table {
		l, err := Parse([]string{c.pattern})
		if err != nil {
			t.Fatalf("%q: %v", c.pattern, err)
		}
		for _, p := range c.match {
			path, dir := parsePath(p)
			if !l.Match(path, dir) {
				t.Errorf("%q should match %q", c.pattern, p)
			}
		}
		for _, p := range c.nomatch {
			path, dir := parsePath(p)
			if l.Match(path, dir) {
				t.Errorf("%q should not match %q", c.pattern, p)
			}
		}
	}
}

func TestExcludedByParent(t *testing.T) {
	l, err := Parse([]string{"build/", "/only-top"})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"build/x/y.o":     true,
		"src/build/a":     true,
		"build":           false, // a file called build
		"only-top/a/b":    true,
		"src/only-top/a":  false,
		"src/main.go":     false,
		".":               false,
		"builder/a":       false,
		"src/build/x/y/z": true,
	} {
		if got := l.Excluded(p, false); got != want {
			t.Errorf("Excluded(%q) = %v, want %v", p, got, want)
		}
	}
	var none *List
	if none.Excluded("a", false) || !none.Empty() || none.Patterns() != nil {
		t.Error("a nil list excludes something")
	}
}

func TestBadPatterns(t *testing.T) {
	for _, p := range []string{"", "/", "//", "a[b", `a\`, "+ keep", "a\nb", strings.Repeat("x", MaxPatternLen+1)} {
		if _, err := Parse([]string{p}); err == nil {
			t.Errorf("Parse(%q) accepted a bad pattern", p)
		} else if p != "" && len(p) < 10 && !strings.Contains(err.Error(), "exclude pattern") {
			t.Errorf("Parse(%q): %v does not name the pattern", p, err)
		}
	}
	many := make([]string, MaxPatterns+1)
	for i := range many {
		many[i] = "x"
	}
	if _, err := Parse(many); err == nil {
		t.Error("more than MaxPatterns accepted")
	}
}

func TestReadFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ex")
	os.WriteFile(f, []byte("# comment\n; also\n\n*.tmp\r\n/build/\n"), 0o644)
	got, err := ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"*.tmp", "/build/"}) {
		t.Fatalf("ReadFile = %q", got)
	}
	os.WriteFile(f, []byte("ok\nbad[\n"), 0o644)
	if _, err := ReadFile(f); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("a bad line: %v, want an error naming line 2", err)
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing file read")
	}
	if m := Merge([]string{"a", "b"}, []string{"b", "c"}); !slices.Equal(m, []string{"a", "b", "c"}) {
		t.Fatalf("Merge = %q", m)
	}
}

// TestAgainstRsync runs real rsync --exclude over a tree for each pattern
// of the table (and a few lists) and checks that a walk skipping what
// Match matches leaves exactly the paths rsync copied.
func TestAgainstRsync(t *testing.T) {
	rsync, err := exec.LookPath("rsync")
	if err != nil {
		t.Skip("rsync not on PATH")
	}
	src := t.TempDir()
	var paths []string
	for _, c := range table {
		paths = append(paths, c.match...)
		paths = append(paths, c.nomatch...)
	}
	paths = append(paths, "build/x/y.o", "src/build/a", "keep/file", "d/e/f/g", "a/b/c/z")
	for _, p := range paths {
		path, dir := parsePath(p)
		full := filepath.Join(src, filepath.FromSlash(path))
		if fi, err := os.Lstat(full); err == nil {
			if fi.IsDir() != dir {
				continue // the same name as the other type elsewhere in the table
			}
			continue
		}
		if dir {
			os.MkdirAll(full, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(p), 0o644); err != nil {
			// a parent is a file: skip this path
			continue
		}
	}
	lists := [][]string{{"build/", "*.o"}, {"/d/e", "**/z"}}
	for _, c := range table {
		lists = append(lists, []string{c.pattern})
	}
	for _, pats := range lists {
		dst := t.TempDir()
		args := []string{"-a"}
		for _, p := range pats {
			args = append(args, "--exclude", p)
		}
		out, err := exec.Command(rsync, append(args, src+"/", dst+"/")...).CombinedOutput()
		if err != nil {
			t.Fatalf("rsync %q: %v: %s", pats, err, out)
		}
		l, err := Parse(pats)
		if err != nil {
			t.Fatal(err)
		}
		want := listTree(t, dst, nil)
		got := listTree(t, src, l)
		if !slices.Equal(got, want) {
			t.Errorf("excludes %q: fanout keeps\n%q\nrsync kept\n%q", pats, got, want)
		}
	}
}

// listTree lists the tree at root, skipping (without descending) what l
// matches.
func listTree(t *testing.T, root string, l *List) []string {
	t.Helper()
	var out []string
	var walk func(dir, rel string)
	walk = func(dir, rel string) {
		des, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			p := de.Name()
			if rel != "" {
				p = rel + "/" + p
			}
			if l.Match(p, de.IsDir()) {
				continue
			}
			out = append(out, p)
			if de.IsDir() {
				walk(filepath.Join(dir, de.Name()), p)
			}
		}
	}
	walk(root, "")
	slices.Sort(out)
	return out
}
