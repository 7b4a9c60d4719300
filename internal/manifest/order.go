package manifest

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// Less reports whether path a sorts before path b in tree order: "." first,
// then component by component, so a directory comes immediately before its
// children ("a" < "a/b" < "a-b").
func Less(a, b string) bool {
	if a == b {
		return false
	}
	if a == "." {
		return true
	}
	if b == "." {
		return false
	}
	for {
		ca, ra, moreA := strings.Cut(a, "/")
		cb, rb, moreB := strings.Cut(b, "/")
		if ca != cb {
			return ca < cb
		}
		if !moreA || !moreB {
			return !moreA && moreB
		}
		a, b = ra, rb
	}
}

// Sort puts the entries in tree order.
func (m *Manifest) Sort() {
	sort.Slice(m.Entries, func(i, j int) bool { return Less(m.Entries[i].Path, m.Entries[j].Path) })
}

// Lookup finds the entry at path; the manifest must be in tree order.
func (m *Manifest) Lookup(path string) (Entry, bool) {
	i := sort.Search(len(m.Entries), func(i int) bool { return !Less(m.Entries[i].Path, path) })
	if i < len(m.Entries) && m.Entries[i].Path == path {
		return m.Entries[i], true
	}
	return Entry{}, false
}

// Totals counts the regular files and their bytes.
func (m *Manifest) Totals() (files int, bytes int64) {
	for _, e := range m.Entries {
		if e.Type == File {
			files++
			bytes += e.Size
		}
	}
	return files, bytes
}

// Path limits.
const (
	maxComponent = 255
	maxPath      = 4096
)

// ValidPath checks a manifest path, typically one that came from the
// network: "." alone is the task root; anything else is relative,
// slash-separated, with no empty, "." or ".." component, no NUL, valid
// UTF-8, components of at most 255 bytes and 4096 bytes in all. Spaces,
// newlines and any UTF-8 are valid.
func ValidPath(p string) error {
	switch {
	case p == ".":
		return nil
	case p == "":
		return errors.New("empty path")
	case len(p) > maxPath:
		return fmt.Errorf("path %.40q... is longer than %d bytes", p, maxPath)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("path %q contains a NUL byte", p)
	case !utf8.ValidString(p):
		return fmt.Errorf("path %q is not valid UTF-8", p)
	case p[0] == '/':
		return fmt.Errorf("path %q is absolute", p)
	}
	for c := range strings.SplitSeq(p, "/") {
		switch {
		case c == "":
			return fmt.Errorf("path %q has an empty component", p)
		case c == "." || c == "..":
			return fmt.Errorf("path %q has a %q component", p, c)
		case len(c) > maxComponent:
			return fmt.Errorf("path %q has a component longer than %d bytes", p, maxComponent)
		}
	}
	return nil
}

// parent returns the path of p's parent directory ("." for top-level paths).
func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "."
	}
	return p[:i]
}

// depth counts p's components; "." has depth 0.
func depth(p string) int {
	if p == "." {
		return 0
	}
	return strings.Count(p, "/") + 1
}
