package peer

import (
	"strings"
	"testing"
)

func TestValidPath(t *testing.T) {
	tests := []struct {
		p    string
		want bool
	}{
		{".", true},
		{"a", true},
		{"a/b/c.txt", true},
		{"..a/b..", true},
		{".hidden", true},
		{"", false},
		{"..", false},
		{"../etc/passwd", false},
		{"a/../b", false},
		{"a/..", false},
		{"./a", false},
		{"a/./b", false},
		{"/etc/passwd", false},
		{"a/", false},
		{"a//b", false},
		{"/", false},
		{"a\x00b", false},
	}
	for _, tt := range tests {
		if got := validPath(tt.p); got != tt.want {
			t.Errorf("validPath(%q) = %v, want %v", tt.p, got, tt.want)
		}
	}
}

func FuzzValidPath(f *testing.F) {
	for _, s := range []string{".", "a", "a/b", "..", "../x", "/x", "x/", "a//b", "a/./b", "a\x00", "", "...", "a/.../b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if !validPath(p) {
			return
		}
		if strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
			t.Fatalf("validPath accepted %q with a leading or trailing slash", p)
		}
		if strings.IndexByte(p, 0) >= 0 {
			t.Fatalf("validPath accepted %q with a NUL", p)
		}
		for _, c := range strings.Split(p, "/") {
			if c == ".." || (c == "." && p != ".") || c == "" {
				t.Fatalf("validPath accepted %q with component %q", p, c)
			}
		}
	})
}
