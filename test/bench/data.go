package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// writeBigFile writes size pseudo-random bytes (incompressible) to path.
func writeBigFile(path string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("big file dir: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create big file: %w", err)
	}
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1, 2, 3})
	buf := make([]byte, 4<<20)
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		r.Read(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return fmt.Errorf("write big file: %w", err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close big file: %w", err)
	}
	return nil
}

// writeSmallFiles writes n files of 1–8 KiB of pseudo-random bytes under
// dir, 1,000 to a directory, with a fixed mtime. It returns their total size.
func writeSmallFiles(dir string, n int) (int64, error) {
	r := rand.New(rand.NewPCG(4, 2))
	mtime := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	buf := make([]byte, 8<<10)
	var sum int64
	for i := range n {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/1000))
		if i%1000 == 0 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return sum, fmt.Errorf("small files dir: %w", err)
			}
		}
		size := 1<<10 + r.IntN(7<<10+1)
		for j := 0; j < size; j += 8 {
			v := r.Uint64()
			for k := 0; k < 8 && j+k < size; k++ {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		p := filepath.Join(sub, fmt.Sprintf("f%06d.bin", i))
		if err := writeFile(p, buf[:size]); err != nil {
			return sum, err
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			return sum, fmt.Errorf("small file mtime: %w", err)
		}
		sum += int64(size)
	}
	return sum, nil
}

func writeFile(p string, b []byte) error {
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return fmt.Errorf("write small file: %w", err)
	}
	return nil
}

// treeBytes sums the sizes of the regular files under dir and counts them.
func treeBytes(dir string) (files int, bytes int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			files++
			bytes += info.Size()
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("walk %s: %w", dir, err)
	}
	return files, bytes, err
}

// warmMemory writes size bytes to a file under dir and removes it, so that
// the copy measured next writes into memory the machine has touched. On a
// virtual machine that hands free memory back to its host (free page
// reporting), the first write to a page costs the host a fault: writing a
// GiB to tmpfs took 2 s cold and 0.3 s warm here, which decided a figure
// by which tool ran first. Each tool's run is preceded by the same warm-up.
func warmMemory(dir string, size int64) error {
	f, err := os.CreateTemp(dir, "warm-*")
	if err != nil {
		return fmt.Errorf("warm memory: %w", err)
	}
	defer os.Remove(f.Name())
	buf := make([]byte, 4<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(int64(len(buf)), left)]); err != nil {
			f.Close()
			return fmt.Errorf("warm memory: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("warm memory: %w", err)
	}
	return nil
}
