package master

import (
	"path"
	"strings"
	"testing"
)

// FuzzCleanTask: a task value read from Redis is either refused or made
// into a clean absolute path with no "..", no NUL, and not the root, from
// a value of at most MaxTaskLen bytes.
func FuzzCleanTask(f *testing.F) {
	for _, s := range []string{"", "/data/m42", "/data/m42/", "//data//m42", "data/m42", "/data/../etc", "/", "/a\x00b", " /x", "/x\n", "/ünï code/日本",
		"/" + strings.Repeat("a", MaxTaskLen-1), "/" + strings.Repeat("a", MaxTaskLen)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		clean, err := CleanTask(value)
		if err == nil && len(value) > MaxTaskLen {
			t.Fatalf("CleanTask accepted a value of %d bytes, over MaxTaskLen", len(value))
		}
		if err != nil {
			if clean != "" {
				t.Fatalf("CleanTask(%q) returned %q with an error", value, clean)
			}
			return
		}
		if !strings.HasPrefix(clean, "/") || path.Clean(clean) != clean || clean == "/" ||
			strings.ContainsRune(clean, 0) || strings.Contains("/"+clean+"/", "/../") {
			t.Fatalf("CleanTask(%q) = %q: not a clean absolute path inside the root", value, clean)
		}
	})
}
