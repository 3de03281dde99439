// Package deploy holds no code: its tests cross-check the files keymux is
// deployed with — docker-compose.yml, Dockerfile, envoy/*.yaml,
// examples/k8s/ and examples/compose-seed/ — against each other and against
// keymux's own flag defaults, so that a port, an address, a socket path or an
// image tag changed in one place and not in the others fails `go test`.
package deploy

import (
	"bytes"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// tree is the repository as the checker reads it: files from disk under
// root, some of them replaced in memory (the drift tests change a copy).
type tree struct {
	root string
	over map[string][]byte // repo-relative slash path → replacement content
}

func newTree(root string) *tree { return &tree{root: root, over: map[string][]byte{}} }

// read returns the content of a repo-relative file.
func (t *tree) read(rel string) ([]byte, error) {
	rel = path.Clean(rel)
	if b, ok := t.over[rel]; ok {
		return b, nil
	}
	return os.ReadFile(filepath.Join(t.root, filepath.FromSlash(rel)))
}

// list returns the regular files under the repo-relative dir (recursively),
// as sorted repo-relative slash paths.
func (t *tree) list(dir string) ([]string, error) {
	dir = path.Clean(dir)
	seen := map[string]bool{}
	base := filepath.Join(t.root, filepath.FromSlash(dir))
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(t.root, p)
			if err != nil {
				return err
			}
			seen[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for p := range t.over {
		if strings.HasPrefix(p, dir+"/") {
			seen[p] = true
		}
	}
	if len(seen) == 0 {
		return nil, &fs.PathError{Op: "list", Path: dir, Err: fs.ErrNotExist}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// replace returns a copy of t where the n-th (1-based) occurrence of old in
// file rel is new. ok is false when the file has fewer occurrences, so a test
// whose anchor text disappeared fails instead of checking nothing.
func (t *tree) replace(rel, old, new string, n int) (*tree, bool) {
	data, err := t.read(rel)
	if err != nil || n < 1 {
		return nil, false
	}
	i := -1
	for k, from := 0, 0; k < n; k++ {
		j := bytes.Index(data[from:], []byte(old))
		if j < 0 {
			return nil, false
		}
		i = from + j
		from = i + len(old)
	}
	out := make([]byte, 0, len(data)-len(old)+len(new))
	out = append(append(append(out, data[:i]...), new...), data[i+len(old):]...)
	c := &tree{root: t.root, over: maps.Clone(t.over)}
	c.over[path.Clean(rel)] = out
	return c, true
}
