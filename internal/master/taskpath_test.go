package master

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
