package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"lukechampine.com/blake3"
)

// Manifest formats. Both are the same JSON object; they differ in whether
// entries carry owners.
//
// Format 1 carries none: it is what masters before owners were carried
// publish, and all that minions of that time decode, since they refuse
// unknown fields. A format 1 manifest still decodes: its entries are applied
// as the local user, without setuid or setgid bits (see OwnerPolicy).
//
// Format 2 adds "user", "group", "uid" and "gid" to entries (all four, or
// the names left out when the building host had none). A master publishes
// format 1, with EncodeFormat(Format1), while minions older than format 2
// remain in the fleet, and format 2 once all are upgraded.
const (
	Format1 = 1
	Format2 = 2
)

// Encode returns the canonical encoding of m as it is: the bytes that are
// served and whose digest is published. A manifest from Build carries owners,
// so it encodes in format 2; see EncodeFormat for format 1.
func (m *Manifest) Encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return b, nil
}

// EncodeFormat returns the canonical encoding of m in the given format:
// Format2 is Encode; Format1 is Encode of WithoutOwners, which minions that
// predate owners can decode.
func (m *Manifest) EncodeFormat(format int) ([]byte, error) {
	switch format {
	case Format1:
		return m.WithoutOwners().Encode()
	case Format2:
		return m.Encode()
	}
	return nil, fmt.Errorf("encode manifest: unknown format %d (want %d or %d)", format, Format1, Format2)
}

// WithoutOwners returns a copy of m whose entries carry no owner: the
// manifest as format 1 describes it.
func (m *Manifest) WithoutOwners() *Manifest {
	es := make([]Entry, len(m.Entries))
	for i, e := range m.Entries {
		e.User, e.Group, e.UID, e.GID = "", "", OwnerID{}, OwnerID{}
		es[i] = e
	}
	return &Manifest{Entries: es}
}

// Format returns Format2 when any entry of m carries an owner, Format1
// otherwise.
func (m *Manifest) Format() int {
	for _, e := range m.Entries {
		if e.HasOwner() {
			return Format2
		}
	}
	return Format1
}

// Digest returns the hex BLAKE3-256 of an encoded manifest.
func Digest(b []byte) string {
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Limits bound what a decoded manifest may claim, so a malicious or broken
// peer cannot exhaust memory or disk.
type Limits struct {
	MaxEntries  int
	MaxBytes    int64 // encoded size
	MaxFileSize int64
}

// DefaultLimits returns the limits fanout uses: 5 million entries, 2 GiB of
// encoded manifest, 16 TiB per file.
func DefaultLimits() Limits {
	return Limits{MaxEntries: 5_000_000, MaxBytes: 2 << 30, MaxFileSize: 16 << 40}
}

// Decode parses and validates an encoded manifest, in either format. Unknown
// fields are refused.
func Decode(b []byte, lim Limits) (*Manifest, error) {
	if int64(len(b)) > lim.MaxBytes {
		return nil, fmt.Errorf("manifest is %d bytes, more than the limit of %d", len(b), lim.MaxBytes)
	}
	// Count entries cheaply before allocating them all. `"path":` only
	// occurs as a key: inside a string a quote is escaped, and a "path"
	// value is followed by ',' or '}'. Whitespace before the colon evades
	// the count, but not Validate's exact one, and MaxBytes bounds memory.
	if n := bytes.Count(b, []byte(`"path":`)); n > lim.MaxEntries {
		return nil, fmt.Errorf("manifest has about %d entries, more than the limit of %d", n, lim.MaxEntries)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if rest := bytes.Trim(b[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return nil, fmt.Errorf("decode manifest: %d bytes of trailing data after the manifest", len(rest))
	}
	if len(m.Entries) == 0 {
		return nil, errors.New("manifest has no entries (a task always has a root)")
	}
	if err := m.Validate(lim); err != nil {
		return nil, err
	}
	return &m, nil
}

const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Validate checks that m is a well-formed tree: a root "." first (a file
// root is the only entry), valid paths in strictly increasing tree order,
// every parent present as a directory (so nothing can be placed under a
// symlink), and sane types, modes, sizes, hashes, targets and owners (ids in
// 0..2^31-1, names of 1..64 bytes without NUL, '/' or newline).
func (m *Manifest) Validate(lim Limits) error {
	if len(m.Entries) > lim.MaxEntries {
		return fmt.Errorf("manifest has %d entries, more than the limit of %d", len(m.Entries), lim.MaxEntries)
	}
	if len(m.Entries) == 0 {
		return nil
	}
	root := m.Entries[0]
	if root.Path != "." {
		return fmt.Errorf("manifest entry 0 is %q, want the root \".\"", root.Path)
	}
	if root.Type != Dir && root.Type != File {
		return fmt.Errorf("manifest root is a %s, want a dir or a file", root.Type)
	}
	if root.Type == File && len(m.Entries) > 1 {
		return errors.New("manifest root is a file but has other entries")
	}
	dirs := map[string]bool{".": root.Type == Dir}
	for i, e := range m.Entries {
		bad := func(format string, a ...any) error {
			return fmt.Errorf("manifest entry %d (%q): %s", i, e.Path, fmt.Sprintf(format, a...))
		}
		if err := ValidPath(e.Path); err != nil {
			return bad("%v", err)
		}
		if i > 0 {
			if e.Path == "." {
				return bad("a second root")
			}
			if !Less(m.Entries[i-1].Path, e.Path) {
				return bad("out of tree order or duplicated after %q", m.Entries[i-1].Path)
			}
			if !dirs[parent(e.Path)] {
				return bad("parent %q is not a directory of the manifest", parent(e.Path))
			}
		}
		if err := validateOwner(e); err != nil {
			return bad("%v", err)
		}
		if e.Mode&^modeBits != 0 {
			return bad("mode %#o has bits outside 07777 (permissions, setuid, setgid, sticky as fs.FileMode bits)", uint32(e.Mode))
		}
		switch e.Type {
		case Dir:
			dirs[e.Path] = true
			if e.Size != 0 || e.Hash != "" || e.Target != "" {
				return bad("a directory with a size, hash or target")
			}
		case File:
			if e.Size < 0 || e.Size > lim.MaxFileSize {
				return bad("size %d outside 0..%d", e.Size, lim.MaxFileSize)
			}
			if len(e.Hash) != 64 || strings.ToLower(e.Hash) != e.Hash {
				return bad("hash %q is not 64 lowercase hex digits", e.Hash)
			}
			if _, err := hex.DecodeString(e.Hash); err != nil {
				return bad("hash %q is not hex", e.Hash)
			}
			if e.Target != "" {
				return bad("a file with a symlink target")
			}
		case Symlink:
			if e.Target == "" || len(e.Target) > maxPath || strings.IndexByte(e.Target, 0) >= 0 {
				return bad("symlink target must be 1..%d bytes without NUL", maxPath)
			}
			if e.Size != 0 || e.Hash != "" {
				return bad("a symlink with a size or hash")
			}
		default:
			return bad("unknown type %q", e.Type)
		}
	}
	return nil
}
