package manifest

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
)

// OwnerID is a numeric user or group id as a manifest carries it. The zero
// OwnerID is "not carried"; root is NewOwnerID(0).
type OwnerID struct {
	n  int64
	ok bool
}

// NewOwnerID returns the carried id n.
func NewOwnerID(n int64) OwnerID { return OwnerID{n: n, ok: true} }

// Value returns the id and whether it is carried.
func (id OwnerID) Value() (n int64, ok bool) { return id.n, id.ok }

// IsZero reports whether id is not carried; encoding/json omits it then.
func (id OwnerID) IsZero() bool { return !id.ok }

// String returns the decimal id, or "-" when it is not carried.
func (id OwnerID) String() string {
	if !id.ok {
		return "-"
	}
	return strconv.FormatInt(id.n, 10)
}

// MarshalJSON encodes a carried id as a JSON number.
func (id OwnerID) MarshalJSON() ([]byte, error) {
	if !id.ok {
		return nil, errors.New("encode owner id: not carried (a zero OwnerID must be omitted)")
	}
	return strconv.AppendInt(nil, id.n, 10), nil
}

// UnmarshalJSON decodes a JSON integer; null and other types are refused.
// Validate checks the range.
func (id *OwnerID) UnmarshalJSON(b []byte) error {
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("owner id %.20s is not an integer", b)
	}
	*id = NewOwnerID(n)
	return nil
}

// Owner name limits: what Validate accepts as a user or group name.
const maxOwnerName = 64

// validOwnerName checks a user or group name; empty means no name.
func validOwnerName(s string) error {
	switch {
	case s == "":
		return nil
	case len(s) > maxOwnerName:
		return fmt.Errorf("name %.20q... is longer than %d bytes", s, maxOwnerName)
	case strings.ContainsAny(s, "\x00/\n"):
		return fmt.Errorf("name %q contains a NUL, a slash or a newline", s)
	}
	return nil
}

// validateOwner checks the owner fields of an entry.
func validateOwner(e Entry) error {
	if e.UID.ok != e.GID.ok {
		return errors.New("carries one of uid and gid without the other")
	}
	if !e.UID.ok && (e.User != "" || e.Group != "") {
		return errors.New("names a user or group without uid and gid")
	}
	for _, id := range []OwnerID{e.UID, e.GID} {
		if id.ok && (id.n < 0 || id.n > math.MaxInt32) {
			return fmt.Errorf("owner id %d outside 0..%d", id.n, math.MaxInt32)
		}
	}
	if err := validOwnerName(e.User); err != nil {
		return fmt.Errorf("user %w", err)
	}
	if err := validOwnerName(e.Group); err != nil {
		return fmt.Errorf("group %w", err)
	}
	return nil
}

// ownerNames looks up the names of user and group ids for Build, once per
// id.
type ownerNames struct {
	users, groups map[uint32]string
}

// owner returns the owner fields for uid and gid: ids beyond the int32 range
// are not carried, and an id without a valid local name has no name.
func (o *ownerNames) owner(uid, gid uint32) (usr, grp string, u, g OwnerID) {
	if uid > math.MaxInt32 || gid > math.MaxInt32 {
		return "", "", OwnerID{}, OwnerID{}
	}
	if o.users == nil {
		o.users, o.groups = map[uint32]string{}, map[uint32]string{}
	}
	usr, ok := o.users[uid]
	if !ok {
		if uu, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil && validOwnerName(uu.Username) == nil {
			usr = uu.Username
		}
		o.users[uid] = usr
	}
	grp, ok = o.groups[gid]
	if !ok {
		if gg, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil && validOwnerName(gg.Name) == nil {
			grp = gg.Name
		}
		o.groups[gid] = grp
	}
	return usr, grp, NewOwnerID(int64(uid)), NewOwnerID(int64(gid))
}

// OwnerPolicy is how this host applies the owners a manifest carries. Diff
// (DiffOptions.Owner) and apply (apply.Options.Owner) must be given the same
// policy, so that a tree that was applied diffs empty.
//
// Setuid and setgid bits are never kept without the owner that goes with
// them: an entry keeps them only when it carries an owner and will be owned
// by it on this host (see Expect). A user's setuid file therefore never
// becomes setuid-root on hosts whose daemon runs as root.
type OwnerPolicy struct {
	// Chown sets the owner and group of every entry that carries one. It
	// needs root: the caller sets it from os.Geteuid() == 0. Without it,
	// entries belong to the user applying them and Diff does not compare
	// owners.
	Chown bool
	// NumericIDs uses the manifest's uid and gid as they are, like rsync's
	// --numeric-ids. Without it, the user and group names map to this
	// host's ids, falling back to the numeric id when the manifest carries
	// no name or the name does not exist here (as rsync does).
	NumericIDs bool
}

const setIDBits = fs.ModeSetuid | fs.ModeSetgid

// Expect returns e as this host should end up holding it under p. When e
// carries an owner, UID and GID become this host's ids for it (see
// NumericIDs), the ids Chown sets; the names are kept. The mode loses its
// setuid and setgid bits unless e carries an owner and the entry will be
// owned by that owner here: p.Chown is set, or this process's effective uid
// and gid already are that owner.
//
// Each call looks names up afresh; Diff and Apply use Expecter, which
// caches them.
func (p OwnerPolicy) Expect(e Entry) Entry { return p.Expecter()(e) }

// Expecter returns a function that does what Expect does, caching name
// lookups and this process's ids. It is safe for concurrent use; one Diff or
// one Apply uses one, so that names are looked up once per run.
func (p OwnerPolicy) Expecter() func(Entry) Entry {
	ids := &localIDs{euid: int64(os.Geteuid()), egid: int64(os.Getegid())}
	return func(e Entry) Entry {
		if !e.HasOwner() {
			e.Mode &^= setIDBits
			return e
		}
		uid, gid := e.UID.n, e.GID.n
		if !p.NumericIDs {
			uid = ids.user(e.User, uid)
			gid = ids.group(e.Group, gid)
		}
		e.UID, e.GID = NewOwnerID(uid), NewOwnerID(gid)
		if !p.Chown && (uid != ids.euid || gid != ids.egid) {
			e.Mode &^= setIDBits
		}
		return e
	}
}

// KeepsSetID reports whether an entry expected as x (from Expect) may have
// its setuid and setgid bits set while it is owned by uid and gid: only when
// x carries that very owner. It is the last check before a mode is set, for
// the cases Expect cannot foresee (a file owned by someone else when Chown
// is off, a group inherited from a setgid directory).
func KeepsSetID(x Entry, uid, gid int64) bool {
	return x.HasOwner() && x.UID.n == uid && x.GID.n == gid
}

// localIDs maps user and group names to this host's ids, once per name.
type localIDs struct {
	euid, egid int64

	mu            sync.Mutex
	users, groups map[string]int64 // -1: no such name here
}

func (l *localIDs) user(name string, fallback int64) int64 {
	return l.lookup(&l.users, name, fallback, func(name string) (string, error) {
		u, err := user.Lookup(name)
		if err != nil {
			return "", err
		}
		return u.Uid, nil
	})
}

func (l *localIDs) group(name string, fallback int64) int64 {
	return l.lookup(&l.groups, name, fallback, func(name string) (string, error) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return "", err
		}
		return g.Gid, nil
	})
}

// lookup returns the local id of name, or fallback when the name is empty or
// unknown here.
func (l *localIDs) lookup(cache *map[string]int64, name string, fallback int64, find func(string) (string, error)) int64 {
	if name == "" {
		return fallback
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if *cache == nil {
		*cache = map[string]int64{}
	}
	id, ok := (*cache)[name]
	if !ok {
		id = -1
		if s, err := find(name); err == nil {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 && n <= math.MaxInt32 {
				id = n
			}
		}
		(*cache)[name] = id
	}
	if id < 0 {
		return fallback
	}
	return id
}
