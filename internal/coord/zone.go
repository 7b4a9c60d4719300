package coord

import (
	"fmt"
	"regexp"
)

// MaxZoneLen bounds a zone name.
const MaxZoneLen = 64

var zoneName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidZone checks a zone name (--zone): empty (no zone), or 1 to
// MaxZoneLen letters, digits, '.', '_' and '-', starting with a letter or
// digit. A zone becomes part of Redis key names (sync_full:ZONE) and of
// space-separated claim records, so nothing else is allowed; flag names
// the flag or variable it came from, for the error.
func ValidZone(flag, zone string) error {
	if zone == "" {
		return nil
	}
	if len(zone) > MaxZoneLen || !zoneName.MatchString(zone) {
		return fmt.Errorf("%s %q: a zone is 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit (such as rack-7 or eu-west-1a); leave it unset for no zone", flag, zone, MaxZoneLen)
	}
	return nil
}

// CrossZone reports whether bytes from a source in zone src to a host in
// zone dst cross zones: both name a zone and the zones differ. A host
// without a zone (or of a fanout that predates zones) is in none, and
// bytes to or from it are not attributed.
func CrossZone(dst, src string) bool { return dst != "" && src != "" && dst != src }
