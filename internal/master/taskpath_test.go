package master

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/fanout/fanout/internal/coord"
)

func TestResolveTask(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "data/m42/sub"), 0o755))
	must(os.WriteFile(filepath.Join(root, "data/file.bin"), []byte("x"), 0o644))
	must(os.Symlink("m42", filepath.Join(root, "data/link")))
	must(os.Symlink(outside, filepath.Join(root, "escape")))
	must(os.MkdirAll(filepath.Join(outside, "secret"), 0o755))
	must(syscall.Mkfifo(filepath.Join(root, "data/fifo"), 0o644))
	must(os.Symlink("data", filepath.Join(root, "inside")))

	tests := []struct {
		value, clean, wantErr string
	}{
		{value: "/data/m42", clean: "/data/m42"},
		{value: "/data/m42/", clean: "/data/m42"},
		{value: "//data//m42", clean: "/data/m42"},
		{value: "/data/file.bin", clean: "/data/file.bin"},
		{value: "/inside/m42", clean: "/inside/m42"}, // a symlinked ancestor inside --root is fine
		{value: "", wantErr: "empty"},
		{value: "   ", wantErr: "empty"},
		{value: "data/m42", wantErr: "relative"},
		{value: "/data/../etc", wantErr: "'..'"},
		{value: "/data/nope", wantErr: "does not exist"},
		{value: "/escape/secret", wantErr: "outside --root"},
		{value: "/data/link", wantErr: "symlink"},
		{value: "/data/fifo", wantErr: "special file"},
		{value: "/", wantErr: "whole root"},
		{value: "/data/m\x0042", wantErr: "NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			clean, osPath, err := ResolveTask(root, tt.value)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResolveTask(%q) error = %v, want one mentioning %q", tt.value, err, tt.wantErr)
				}
				if tt.value != "" && strings.TrimSpace(tt.value) != "" && !strings.Contains(err.Error(), "task") {
					t.Errorf("error %q does not name the task", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ResolveTask(%q): %v", tt.value, err)
			}
			if clean != tt.clean {
				t.Errorf("clean = %q, want %q", clean, tt.clean)
			}
			if want := filepath.Join(root, tt.clean); osPath != want {
				t.Errorf("osPath = %q, want %q", osPath, want)
			}
		})
	}
}

// TestCleanTaskLength: a value up to MaxTaskLen bytes is a path like any
// other; a longer one is refused with its length and the limit, quoting
// only its first bytes.
func TestCleanTaskLength(t *testing.T) {
	tail := "TAIL-NOT-QUOTED"
	tests := []struct {
		name  string
		value string
		clean string // "" when refused
	}{
		{"at the limit", "/" + strings.Repeat("a", MaxTaskLen-1), "/" + strings.Repeat("a", MaxTaskLen-1)},
		{"at the limit with slashes", "/a" + strings.Repeat("/", MaxTaskLen-2), "/a"},
		{"one over", "/" + strings.Repeat("a", MaxTaskLen), ""},
		{"long tail", "/" + strings.Repeat("a", 99) + strings.Repeat(tail, 400), ""},
		{"a mebibyte", "/" + strings.Repeat("b/", 1<<19), ""},
		{"over and otherwise bad", strings.Repeat("x\x00/..", 1000), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clean, err := CleanTask(tt.value)
			if tt.clean != "" {
				if err != nil || clean != tt.clean {
					t.Fatalf("CleanTask(%d bytes) = %q, %v; want %q", len(tt.value), clean, err, tt.clean)
				}
				return
			}
			if err == nil {
				t.Fatalf("CleanTask accepted %d bytes", len(tt.value))
			}
			msg := err.Error()
			for _, want := range []string{fmt.Sprintf("%d bytes long", len(tt.value)), fmt.Sprintf("limit of %d bytes", MaxTaskLen)} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
			if !strings.Contains(msg, strconv.Quote(tt.value[:20])[1:20]) {
				t.Errorf("error %q does not quote the value's start", msg)
			}
			if len(msg) > 300 || strings.Contains(msg, tail) {
				t.Errorf("error echoes more than the value's start (%d bytes): %q", len(msg), msg)
			}
		})
	}
	// The quoted start ends before a rune that does not fit whole: "/a"
	// and 32 three-byte runes are 98 bytes, the 33rd would end at 101.
	_, err := CleanTask("/a" + strings.Repeat("日", 2000))
	if err == nil || !strings.Contains(err.Error(), `begins "/a`+strings.Repeat("日", 32)+`"`) {
		t.Errorf("error %v: want it to quote \"/a\" and 32 whole runes", err)
	}
}

// A task value too long to record whole still names the failed generation
// that records it cut: the master does not take it for a new task at
// every tick and publish a failed generation each time.
func TestNamesALongRejectedTask(t *testing.T) {
	long := "relative/" + strings.Repeat("x", maxStoredTask)
	g := coord.Generation{Path: storedTask(long), State: coord.StateFailed}
	if !names(long, g) {
		t.Fatalf("a %d-byte rejected task does not name its failed generation", len(long))
	}
	if names("relative/x", g) {
		t.Fatal("another value names the failed generation of a long one")
	}
}
