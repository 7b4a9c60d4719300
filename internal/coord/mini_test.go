package coord

import (
	"testing"

	"github.com/alicebob/miniredis/v2"
)

func mini(t *testing.T, f *fixture) *miniredis.Miniredis {
	t.Helper()
	if f.srv.Mini == nil {
		t.Fatal("not a miniredis fixture")
	}
	return f.srv.Mini
}
