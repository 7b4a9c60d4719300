package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/fanout/fanout/internal/manifest"
	"github.com/fanout/fanout/internal/statedir"
)

// loadPublished reads the last generation a master published; nil when it
// never did.
func loadPublished(path string) (*published, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var p published
	if err := json.Unmarshal(b, &p); err != nil || p.Gen < 1 {
		return nil, fmt.Errorf("%s is corrupt (%v): delete it; the master then takes the generation from Redis", path, err)
	}
	return &p, nil
}

func savePublished(path string, p *published) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return statedir.WriteFile(path, b, manifest.TempPrefix)
}
