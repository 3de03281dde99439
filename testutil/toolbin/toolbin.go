// Package toolbin finds the external programs the tests start: the ones
// tools/build.sh builds into tools/bin (the real Consul and Jaeger) and the
// ones a system package installs on $PATH (Prometheus, by
// tools/install-prometheus.sh). A missing program is an error that says how
// to get it: tests fail, never skip.
package toolbin

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Tool describes one program of tools/bin.
type Tool struct {
	Name   string // the file in tools/bin, also the argument of tools/build.sh
	EnvVar string // overrides the path when set
	About  string // what tools/build.sh builds, for the error message
	// Install, when set, is the command that installs the program on
	// $PATH (a system package): Path then looks it up there instead of in
	// tools/bin.
	Install string
}

// Path returns the program's path: $EnvVar when set, else
// tools/bin/<Name> under the repository root (or <Name> on $PATH for a
// Tool with Install).
func (t Tool) Path() (string, error) {
	if p := os.Getenv(t.EnvVar); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s binary from $%s: %w", t.Name, t.EnvVar, err)
		}
		return p, nil
	}
	if t.Install != "" {
		p, err := exec.LookPath(t.Name)
		if err != nil {
			return "", fmt.Errorf("%s binary not found on $PATH: install it with `%s` "+
				"(from the repository root; %s) or set $%s", t.Name, t.Install, t.About, t.EnvVar)
		}
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return t.In(root)
}

// In is tools/bin/<Name> under root, or an error that says how to build it.
func (t Tool) In(root string) (string, error) {
	p := filepath.Join(root, "tools", "bin", t.Name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s binary not found at %s: build it with `tools/build.sh %s` "+
			"(from the repository root; %s) or set $%s", t.Name, p, t.Name, t.About, t.EnvVar)
	}
	return p, nil
}

// RepoRoot walks up from the working directory to keymux's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/keymux/keymux\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("keymux repository root (go.mod of github.com/keymux/keymux) not found above the working directory")
		}
		dir = parent
	}
}
