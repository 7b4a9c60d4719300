package manifest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// componentLess is tree order written the slow, obvious way: "." first,
// then the lists of components compared element by element.
func componentLess(a, b string) bool {
	if a == "." || b == "." {
		return a == "." && b != "."
	}
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/")) < 0
}

func TestLessMatchesComponentOrder(t *testing.T) {
	// Names chosen around '/' (0x2f): ' ', '-', '.' sort below it as bytes,
	// '0' and letters above.
	names := []string{"a", "b", "a b", "a-b", "a.b", "a0", "-", ".x", "ab", "é"}
	rng := rand.New(rand.NewPCG(1, 2))
	randPath := func() string {
		if rng.IntN(20) == 0 {
			return "."
		}
		n := 1 + rng.IntN(3)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = names[rng.IntN(len(names))]
		}
		return strings.Join(parts, "/")
	}
	for range 20000 {
		a, b := randPath(), randPath()
		if got, want := Less(a, b), componentLess(a, b); got != want {
			t.Fatalf("Less(%q, %q) = %v, want %v", a, b, got, want)
		}
	}
}

func TestSortTrickyNames(t *testing.T) {
	want := []string{".", "-", ".x", "a", "a/b", "a/b/c", "a/c", "a b", "a b/z", "a-b", "a.b", "a0", "ab", "b"}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		m := &Manifest{}
		for _, i := range rng.Perm(len(want)) {
			m.Entries = append(m.Entries, Entry{Path: want[i]})
		}
		m.Sort()
		var got []string
		for _, e := range m.Entries {
			got = append(got, e.Path)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("sorted = %q, want %q", got, want)
		}
	}
}

func TestLookupAndTotals(t *testing.T) {
	m := &Manifest{Entries: []Entry{
		{Path: ".", Type: Dir},
		{Path: "a", Type: Dir},
		{Path: "a/b", Type: File, Size: 7},
		{Path: "a b", Type: File, Size: 5},
		{Path: "a-b", Type: Symlink, Target: "a"},
		{Path: "a.b", Type: File, Size: 0},
	}}
	for _, e := range m.Entries {
		got, ok := m.Lookup(e.Path)
		if !ok || !got.Equal(e) {
			t.Errorf("Lookup(%q) = %+v, %v", e.Path, got, ok)
		}
	}
	for _, p := range []string{"a/", "a/a", "a/c", "a0", "-", "b", ""} {
		if e, ok := m.Lookup(p); ok {
			t.Errorf("Lookup(%q) found %+v", p, e)
		}
	}
	if files, bytes := m.Totals(); files != 3 || bytes != 12 {
		t.Errorf("Totals = %d files, %d bytes; want 3, 12", files, bytes)
	}
	if files, bytes := (&Manifest{}).Totals(); files != 0 || bytes != 0 {
		t.Errorf("empty Totals = %d, %d", files, bytes)
	}
}

func TestValidPathNamesThePath(t *testing.T) {
	for _, p := range []string{"a/../b", "/abs", "a//b", "x/", "a\x00b", "a\nb/./c"} {
		err := ValidPath(p)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", p)) {
			t.Errorf("ValidPath(%q) = %v, want an error quoting the path", p, err)
		}
	}
}
