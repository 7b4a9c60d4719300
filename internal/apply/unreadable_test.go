package apply

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/manifest"
)

// unreadableChild holds the directory TestMetaOfUnreadableFile's child
// process works in.
const unreadableChild = "FANOUT_APPLY_UNREADABLE_DIR"

// TestMetaOfUnreadableFile changes the mode of a file its owner may not
// read, as a user that is not root: the OpMeta cannot open it and sets the
// mode by name instead, still without following a symlink. The test needs
// root to start its child as nobody.
func TestMetaOfUnreadableFile(t *testing.T) {
	if dir := os.Getenv(unreadableChild); dir != "" {
		unreadableAsUser(t, dir)
		return
	}
	requireRoot(t)
	// A directory nobody can reach and write, holding a copy of this test
	// binary nobody can run.
	base := t.TempDir()
	dir := filepath.Join(base, "work")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Dir(base), base, dir} {
		if err := os.Chmod(p, 0o777|fs.ModeSticky); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(base, "apply.test")
	copyFile(t, os.Args[0], bin)
	cmd := exec.Command(bin, "-test.run=^TestMetaOfUnreadableFile$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), unreadableChild+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child as nobody: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

// unreadableAsUser is the child: not root, it owns a file of mode 0 and
// applies an OpMeta to it.
func unreadableAsUser(t *testing.T, dir string) {
	if os.Geteuid() == 0 {
		t.Fatal("the child runs as root")
	}
	root, err := os.MkdirTemp(dir, "task")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "f")
	writeFile(t, p, "same", 0o000)
	if _, err := os.Open(p); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("test setup: opening a mode 0 file: %v", err)
	}
	probe := filepath.Join(root, "probe")
	writeFile(t, probe, "", 0o600)
	if err := unix.Fchmodat(unix.AT_FDCWD, probe, 0o600, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Skipf("this kernel has no fchmodat2 (Linux 6.6) to set a mode by name without following a symlink: %v", err)
	}
	os.Remove(probe)
	e := fileEntry("f", []byte("same"), 0o640)
	if _, err := Apply(context.Background(), root, plan(act(manifest.OpMeta, e)), Options{}); err != nil {
		t.Fatal(err)
	}
	checkEntry(t, p, e, []byte("same"))

	// A symlink there is refused, and its target keeps its mode.
	target := filepath.Join(root, "target")
	writeFile(t, target, "x", 0o600)
	if err := os.Symlink("target", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(context.Background(), root, plan(act(manifest.OpMeta, fileEntry("l", []byte("x"), 0o666))), Options{}); err == nil {
		t.Error("OpMeta of a file through a symlink succeeded")
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Errorf("symlink target mode %v", fi.Mode())
	}
}

// copyFile copies src to dst, executable.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
