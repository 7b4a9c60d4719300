package manifest

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"math"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// ownedManifest is sampleManifest with owners: root's, by id 0, on some
// entries, and a user's on others.
func ownedManifest() *Manifest {
	m := sampleManifest()
	for i := range m.Entries {
		e := &m.Entries[i]
		e.User, e.Group, e.UID, e.GID = "root", "root", NewOwnerID(0), NewOwnerID(0)
		if i%2 == 1 {
			e.User, e.Group, e.UID, e.GID = "alice", "staff", NewOwnerID(1000), NewOwnerID(50)
		}
	}
	m.Entries[2].User = "" // an id without a name on the building host
	return m
}

// v1Entry is an entry as a minion before format 2 decodes it.
type v1Entry struct {
	Path   string      `json:"path"`
	Type   Type        `json:"type"`
	Mode   fs.FileMode `json:"mode"`
	Size   int64       `json:"size,omitempty"`
	MTime  int64       `json:"mtime"`
	Hash   string      `json:"hash,omitempty"`
	Target string      `json:"target,omitempty"`
}

// decodeV1 decodes b as a minion before format 2 does: unknown fields are
// refused.
func decodeV1(b []byte) error {
	var m struct {
		Entries []v1Entry `json:"entries"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(&m)
}

func TestOwnerFormats(t *testing.T) {
	m := ownedManifest()
	if err := m.Validate(DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	if m.Format() != Format2 || sampleManifest().Format() != Format1 {
		t.Errorf("Format = %d and %d, want 2 and 1", m.Format(), sampleManifest().Format())
	}

	// Format 2 carries owners, root's id 0 included, and round-trips.
	b2, err := m.EncodeFormat(Format2)
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := m.Encode(); !bytes.Equal(e, b2) {
		t.Error("Encode and EncodeFormat(Format2) differ")
	}
	for _, s := range []string{`"uid":0,"gid":0`, `"user":"alice","group":"staff","uid":1000,"gid":50`, `"group":"root","uid":0`} {
		if !bytes.Contains(b2, []byte(s)) {
			t.Errorf("format 2 lacks %s: %s", s, b2)
		}
	}
	got, err := Decode(b2, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got.Entries, m.Entries, Entry.Equal) {
		t.Errorf("format 2 round trip:\n got %+v\nwant %+v", got.Entries, m.Entries)
	}
	if decodeV1(b2) == nil {
		t.Error("a format 1 decoder accepted owner fields: format 1 would not be needed")
	}

	// Format 1 carries none: old minions decode it, and so does Decode,
	// as entries without owners.
	b1, err := m.EncodeFormat(Format1)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"user"`, `"group"`, `"uid"`, `"gid"`} {
		if bytes.Contains(b1, []byte(k)) {
			t.Errorf("format 1 has %s: %s", k, b1)
		}
	}
	if err := decodeV1(b1); err != nil {
		t.Errorf("a format 1 decoder refused format 1: %v", err)
	}
	old, _ := sampleManifest().Encode()
	if !bytes.Equal(b1, old) {
		t.Errorf("format 1 of a manifest with owners = %s\nwant the manifest without owners = %s", b1, old)
	}
	got, err = Decode(b1, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range got.Entries {
		if e.HasOwner() || e.User != "" || e.Group != "" {
			t.Errorf("format 1 entry %+v carries an owner", e)
		}
	}
	if !slices.EqualFunc(got.Entries, m.WithoutOwners().Entries, Entry.Equal) || !m.Entries[0].HasOwner() {
		t.Error("WithoutOwners is not format 1's manifest, or changed its receiver")
	}
	if _, err := m.EncodeFormat(3); err == nil {
		t.Error("EncodeFormat(3) succeeded")
	}
}

func TestValidateOwner(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(e *Entry)
	}{
		{"uid without gid", func(e *Entry) { e.GID = OwnerID{} }},
		{"gid without uid", func(e *Entry) { e.UID = OwnerID{} }},
		{"names without ids", func(e *Entry) { e.UID, e.GID = OwnerID{}, OwnerID{} }},
		{"negative uid", func(e *Entry) { e.UID = NewOwnerID(-1) }},
		{"gid beyond int32", func(e *Entry) { e.GID = NewOwnerID(math.MaxInt32 + 1) }},
		{"user with a slash", func(e *Entry) { e.User = "a/b" }},
		{"group with a NUL", func(e *Entry) { e.Group = "a\x00b" }},
		{"user with a newline", func(e *Entry) { e.User = "a\nb" }},
		{"user of 65 bytes", func(e *Entry) { e.User = strings.Repeat("u", 65) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := ownedManifest()
			tt.mutate(&m.Entries[1])
			if err := m.Validate(DefaultLimits()); err == nil || !strings.Contains(err.Error(), `entry 1 ("d")`) {
				t.Errorf("Validate = %v, want an error naming entry 1", err)
			}
			b, err := json.Marshal(m)
			if err != nil {
				return // not even encodable
			}
			if _, err := Decode(b, DefaultLimits()); err == nil {
				t.Error("Decode accepted it")
			}
		})
	}
	m := ownedManifest()
	m.Entries[1].User, m.Entries[1].UID = strings.Repeat("u", 64), NewOwnerID(math.MaxInt32)
	if err := m.Validate(DefaultLimits()); err != nil {
		t.Errorf("a 64-byte name and id 2^31-1: %v", err)
	}
	// An id is a JSON integer: null, strings and fractions are refused.
	good, _ := ownedManifest().Encode()
	for _, bad := range []string{`"uid":null`, `"uid":"0"`, `"uid":1.5`} {
		b := bytes.Replace(good, []byte(`"uid":0`), []byte(bad), 1)
		if _, err := Decode(b, DefaultLimits()); err == nil {
			t.Errorf("Decode accepted %s", bad)
		}
	}
}

// me returns this process's effective ids and its user's name.
func me(t *testing.T) (uid, gid int64, name string) {
	t.Helper()
	u, err := user.LookupId(strconv.Itoa(os.Geteuid()))
	if err != nil {
		t.Skipf("this process's user has no name here: %v", err)
	}
	return int64(os.Geteuid()), int64(os.Getegid()), u.Username
}

func TestExpect(t *testing.T) {
	uid, gid, name := me(t)
	other := int64(65534)
	if uid == other {
		other = 0
	}
	const setid = fs.ModeSetuid | fs.ModeSetgid
	file := Entry{Path: "f", Type: File, Mode: setid | fs.ModeSticky | 0o755}
	owned := func(e Entry, u, g int64, user string) Entry {
		e.UID, e.GID, e.User = NewOwnerID(u), NewOwnerID(g), user
		return e
	}
	tests := []struct {
		name     string
		p        OwnerPolicy
		e        Entry
		mode     fs.FileMode
		uid, gid OwnerID
	}{
		{"no owner: setuid and setgid cleared, even with Chown", OwnerPolicy{Chown: true}, file,
			fs.ModeSticky | 0o755, OwnerID{}, OwnerID{}},
		{"another owner, no Chown: cleared", OwnerPolicy{NumericIDs: true}, owned(file, other, gid, ""),
			fs.ModeSticky | 0o755, NewOwnerID(other), NewOwnerID(gid)},
		{"another group, no Chown: cleared", OwnerPolicy{NumericIDs: true}, owned(file, uid, other, ""),
			fs.ModeSticky | 0o755, NewOwnerID(uid), NewOwnerID(other)},
		{"this process's owner, no Chown: kept", OwnerPolicy{}, owned(file, uid, gid, ""),
			file.Mode, NewOwnerID(uid), NewOwnerID(gid)},
		{"another owner with Chown: kept", OwnerPolicy{Chown: true, NumericIDs: true}, owned(file, other, other, ""),
			file.Mode, NewOwnerID(other), NewOwnerID(other)},
		// Names map to local ids: the source host's id 4242 for this
		// user's name is this host's uid.
		{"name maps to the local id", OwnerPolicy{}, owned(file, 4242, gid, name),
			file.Mode, NewOwnerID(uid), NewOwnerID(gid)},
		{"numeric ids ignore the name", OwnerPolicy{NumericIDs: true}, owned(file, 4242, gid, name),
			fs.ModeSticky | 0o755, NewOwnerID(4242), NewOwnerID(gid)},
		{"unknown name falls back to the id", OwnerPolicy{Chown: true}, owned(file, 4242, gid, "no-such-user-fanout"),
			file.Mode, NewOwnerID(4242), NewOwnerID(gid)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := tt.p.Expect(tt.e)
			if x.Mode != tt.mode || x.UID != tt.uid || x.GID != tt.gid {
				t.Errorf("Expect = mode %v, uid %v, gid %v; want %v, %v, %v", x.Mode, x.UID, x.GID, tt.mode, tt.uid, tt.gid)
			}
			if x.User != tt.e.User || x.Path != tt.e.Path || x.Hash != tt.e.Hash {
				t.Errorf("Expect changed other fields: %+v", x)
			}
			if again := tt.p.Expect(x); !again.Equal(x) {
				t.Errorf("Expect is not idempotent: %+v then %+v", x, again)
			}
		})
	}
	if !KeepsSetID(owned(file, 5, 6, ""), 5, 6) || KeepsSetID(owned(file, 5, 6, ""), 5, 7) || KeepsSetID(file, 0, 0) {
		t.Error("KeepsSetID is wrong")
	}
}

func TestDiffOwners(t *testing.T) {
	h := strings.Repeat("ab", 32)
	own := func(e Entry, u, g int64) Entry {
		e.UID, e.GID = NewOwnerID(u), NewOwnerID(g)
		return e
	}
	root := own(Entry{Path: ".", Type: Dir, Mode: 0o755, MTime: 1}, 0, 0)
	f := own(Entry{Path: "f", Type: File, Mode: 0o644, Size: 1, MTime: 2, Hash: h}, 7, 8)
	l := own(Entry{Path: "l", Type: Symlink, Mode: 0o777, MTime: 3, Target: "f"}, 7, 8)
	s := own(Entry{Path: "s", Type: File, Mode: fs.ModeSetuid | 0o755, Size: 1, MTime: 2, Hash: h}, 7, 8)
	remote := &Manifest{Entries: []Entry{root, f, l, s}}
	chown := OwnerPolicy{Chown: true, NumericIDs: true}
	paths := func(p *Plan) []string {
		var out []string
		for _, a := range p.Actions {
			out = append(out, a.Op.String()+" "+a.Entry.Path)
		}
		return out
	}

	// As this host would hold it with Chown: every owner, setuid kept.
	same := &Manifest{Entries: []Entry{root, f, l, s}}
	if p := mustDiff(t, same, remote, DiffOptions{Owner: chown}); !p.Empty() {
		t.Errorf("identical tree: %q", paths(p))
	}
	// Owners differ: with Chown each entry (the symlink too) gets an
	// OpMeta carrying the remote entry; without Chown owners are ignored.
	theirs := &Manifest{Entries: []Entry{own(root, 1, 1), own(f, 1, 1), own(l, 1, 1), own(s, 1, 1)}}
	theirs.Entries[3].Mode = 0o755 // a chown cleared the setuid bit
	p := mustDiff(t, theirs, remote, DiffOptions{Owner: chown})
	if want := []string{"meta f", "meta l", "meta s", "meta ."}; !slices.Equal(paths(p), want) {
		t.Errorf("owners differ, Chown: %q, want %q", paths(p), want)
	}
	if !p.Actions[2].Entry.Equal(s) {
		t.Errorf("plan entry %+v, want the remote entry %+v", p.Actions[2].Entry, s)
	}
	// Without Chown, the local owner (1:1) is not the manifest's: the
	// setuid bit is not expected, and owners are not compared.
	if p := mustDiff(t, theirs, remote, DiffOptions{}); !p.Empty() {
		t.Errorf("owners differ, no Chown: %q", paths(p))
	}
	// A format 1 manifest: the setuid bit is never expected.
	if p := mustDiff(t, theirs.WithoutOwners(), remote.WithoutOwners(), DiffOptions{Owner: chown}); !p.Empty() {
		t.Errorf("format 1: %q", paths(p))
	}
	// ...and a local setuid bit is taken away.
	local := remote.WithoutOwners()
	if p := mustDiff(t, local, remote.WithoutOwners(), DiffOptions{Owner: chown}); !slices.Equal(paths(p), []string{"meta s"}) {
		t.Errorf("format 1, local setuid: %q", paths(p))
	}
}
