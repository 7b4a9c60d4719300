package apply

import (
	"context"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/fanout/fanout/internal/manifest"
)

// diffTree scans root and diffs it against remote under pol, as a minion
// does.
func diffTree(t *testing.T, root string, remote *manifest.Manifest, pol manifest.OwnerPolicy) *manifest.Plan {
	t.Helper()
	ctx := context.Background()
	local, err := manifest.Build(ctx, root, manifest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := manifest.FillHashes(ctx, root, local, remote, nil); err != nil {
		t.Fatal(err)
	}
	plan, err := manifest.Diff(local, remote, manifest.DiffOptions{Owner: pol})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// applyTree brings root to remote under pol and checks that the result
// diffs empty: nothing stays to do, so no OpMeta comes back on every pull.
func applyTree(t *testing.T, root string, remote *manifest.Manifest, content map[string][]byte, pol manifest.OwnerPolicy) {
	t.Helper()
	p := diffTree(t, root, remote, pol)
	if _, err := Apply(context.Background(), root, p, Options{Fetcher: newFetcher(content), Owner: pol}); err != nil {
		t.Fatal(err)
	}
	if again := diffTree(t, root, remote, pol); !again.Empty() {
		t.Errorf("the applied tree does not diff empty: %+v", again.Actions)
	}
}

// setIDTree is a task with a setuid file, a setgid directory and a symlink,
// each with the owner own gives it (or none).
func setIDTree(own func(manifest.Entry) manifest.Entry) (*manifest.Manifest, map[string][]byte) {
	tool := []byte("#!/bin/sh\necho hi\n")
	m := &manifest.Manifest{Entries: []manifest.Entry{
		own(dirEntry(".", 0o755)),
		own(dirEntry("g", fs.ModeSetgid|0o775)),
		own(linkEntry("g/l", "tool")),
		own(fileEntry("g/tool", tool, fs.ModeSetuid|0o755)),
	}}
	return m, map[string][]byte{"g/tool": tool}
}

// owner returns the owner and mode of the entry at p.
func owner(t *testing.T, p string) (uid, gid uint32, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// otherID is a uid that is not this process's.
func otherID() int64 {
	if os.Geteuid() == 65534 {
		return 0
	}
	return 65534
}

func TestSetIDNeedsItsOwner(t *testing.T) {
	other := otherID()
	tests := []struct {
		name string
		own  func(manifest.Entry) manifest.Entry
	}{
		{"no owner carried (format 1)", func(e manifest.Entry) manifest.Entry { return e }},
		{"another owner, no chown", func(e manifest.Entry) manifest.Entry {
			e.UID, e.GID = manifest.NewOwnerID(other), manifest.NewOwnerID(other)
			return e
		}},
	}
	for _, tt := range tests {
		for _, chown := range []bool{false, true} {
			if chown && tt.own(manifest.Entry{}).HasOwner() {
				continue // chown to another owner is TestChownAsRoot's
			}
			t.Run(tt.name+" chown="+strconv.FormatBool(chown), func(t *testing.T) {
				if chown {
					requireRoot(t)
				}
				root := filepath.Join(t.TempDir(), "task")
				remote, content := setIDTree(tt.own)
				pol := manifest.OwnerPolicy{Chown: chown, NumericIDs: true}
				applyTree(t, root, remote, content, pol)
				for _, p := range []string{"g", "g/tool"} {
					uid, gid, mode := owner(t, filepath.Join(root, p))
					if mode&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
						t.Errorf("%s has mode %v: setuid or setgid without its owner", p, mode)
					}
					if uid != uint32(os.Geteuid()) || gid != uint32(os.Getegid()) {
						t.Errorf("%s is owned by %d:%d, want this process's", p, uid, gid)
					}
				}
				// The rest of the mode is kept.
				if _, _, mode := owner(t, filepath.Join(root, "g", "tool")); mode != 0o755 {
					t.Errorf("g/tool mode %v, want 0755", mode)
				}
			})
		}
	}

	// A local setuid file that the manifest gives no owner loses the bit
	// through an OpMeta, and keeps its content.
	t.Run("existing setuid file", func(t *testing.T) {
		root := t.TempDir()
		remote, content := setIDTree(func(e manifest.Entry) manifest.Entry { return e })
		pol := manifest.OwnerPolicy{}
		applyTree(t, root, remote, content, pol)
		p := filepath.Join(root, "g", "tool")
		if err := os.Chmod(p, fs.ModeSetuid|0o755); err != nil {
			t.Fatal(err)
		}
		plan := diffTree(t, root, remote, pol)
		if plan.Count(manifest.OpMeta) != 1 || plan.Count(manifest.OpFetch) != 0 {
			t.Fatalf("plan %+v, want one OpMeta", plan.Actions)
		}
		applyTree(t, root, remote, content, pol)
		if _, _, mode := owner(t, p); mode != 0o755 {
			t.Errorf("mode %v after OpMeta, want 0755", mode)
		}
	})
}

// requireRoot skips a test that needs root (to chown), or fails it when
// FANOUT_REQUIRE_ROOT=1: CI runs as root and sets it, so these tests cannot
// pass there by being skipped.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("FANOUT_REQUIRE_ROOT") == "1" {
		t.Fatal("FANOUT_REQUIRE_ROOT=1 but the test does not run as root: it needs root to chown")
	}
	t.Skip("needs root to chown (CI runs as root; FANOUT_REQUIRE_ROOT=1 makes this a failure)")
}

// TestChownAsRoot applies a tree owned by another user, through name and
// numeric mapping, and checks owners, that setuid and setgid survive only
// then, and that owners changed on disk are put back.
func TestChownAsRoot(t *testing.T) {
	requireRoot(t)
	const nobody = 65534
	nobodyName, nogroupName := "", ""
	if u, err := user.LookupId(strconv.Itoa(nobody)); err == nil {
		nobodyName = u.Username
	}
	if g, err := user.LookupGroupId(strconv.Itoa(nobody)); err == nil {
		nogroupName = g.Name
	}
	tests := []struct {
		name string
		pol  manifest.OwnerPolicy
		// user, group, uid and gid the manifest carries.
		user, group string
		uid, gid    int64
	}{
		// The source host's ids (4242) differ; the names are this host's
		// nobody and nogroup.
		{"by name", manifest.OwnerPolicy{Chown: true}, nobodyName, nogroupName, 4242, 4243},
		// The names are root's, and ignored.
		{"numeric ids", manifest.OwnerPolicy{Chown: true, NumericIDs: true}, "root", "root", nobody, nobody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.user == "" || tt.group == "" {
				t.Skipf("uid or gid %d has no name on this host", nobody)
			}
			own := func(e manifest.Entry) manifest.Entry {
				e.User, e.Group = tt.user, tt.group
				e.UID, e.GID = manifest.NewOwnerID(tt.uid), manifest.NewOwnerID(tt.gid)
				return e
			}
			root := filepath.Join(t.TempDir(), "task")
			remote, content := setIDTree(own)
			applyTree(t, root, remote, content, tt.pol)
			wantMode := map[string]fs.FileMode{".": 0o755, "g": fs.ModeSetgid | 0o775, "g/tool": fs.ModeSetuid | 0o755}
			for _, p := range []string{".", "g", "g/l", "g/tool"} {
				uid, gid, mode := owner(t, filepath.Join(root, p))
				if uid != nobody || gid != nobody {
					t.Errorf("%s is owned by %d:%d, want %d:%d", p, uid, gid, nobody, nobody)
				}
				if want, ok := wantMode[p]; ok && mode != want {
					t.Errorf("%s mode %v, want %v", p, mode, want)
				}
			}

			// Owners changed on disk are put back by an OpMeta; the chown
			// that changes them clears the setuid bit, which comes back
			// because apply chowns before it sets the mode.
			tool, link := filepath.Join(root, "g", "tool"), filepath.Join(root, "g", "l")
			for _, p := range []string{tool, link} {
				if err := os.Lchown(p, 0, 0); err != nil {
					t.Fatal(err)
				}
			}
			if _, _, mode := owner(t, tool); mode&fs.ModeSetuid != 0 {
				t.Fatal("test setup: chown kept the setuid bit")
			}
			plan := diffTree(t, root, remote, tt.pol)
			if plan.Count(manifest.OpMeta) != 2 || len(plan.Actions) != 2 {
				t.Fatalf("plan %+v, want OpMeta of g/l and g/tool", plan.Actions)
			}
			applyTree(t, root, remote, content, tt.pol)
			for _, p := range []string{tool, link} {
				if uid, gid, _ := owner(t, p); uid != nobody || gid != nobody {
					t.Errorf("%s is owned by %d:%d after OpMeta", p, uid, gid)
				}
			}
			if _, _, mode := owner(t, tool); mode != fs.ModeSetuid|0o755 {
				t.Errorf("g/tool mode %v after OpMeta, want setuid 0755", mode)
			}

			// The same tree applied without chown: root's own files, and
			// no setuid, since root is not the manifest's owner.
			plain := filepath.Join(t.TempDir(), "task")
			applyTree(t, plain, remote, content, manifest.OwnerPolicy{NumericIDs: tt.pol.NumericIDs})
			if uid, _, mode := owner(t, filepath.Join(plain, "g", "tool")); uid != 0 || mode != 0o755 {
				t.Errorf("without chown: g/tool owned by %d, mode %v; want 0, 0755", uid, mode)
			}
		})
	}
}
