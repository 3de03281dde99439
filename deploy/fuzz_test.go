package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The parsers read files a contributor may break in any way: they must
// return an error, never panic, and what they return must be consistent.

func FuzzParseDockerfile(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", dockerfilePath)); err == nil {
		f.Add(data)
	}
	f.Add([]byte("FROM\n"))
	f.Add([]byte("EXPOSE 1\n"))
	f.Add([]byte("ARG X\nFROM a:b AS c\nEXPOSE 1/tcp 2\nCMD [\"x\"]\nRUN a \\\n b\n"))
	f.Add([]byte("FROM a\nCMD x y\n"))
	f.Add([]byte("FROM a\nRUN x \\"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseDockerfile(data)
		if err != nil {
			return
		}
		if len(d.Stages) == 0 {
			t.Fatal("no error and no stage")
		}
		for i, s := range d.Stages {
			if s.Index != i || s.Image == "" {
				t.Fatalf("stage %d: %+v", i, s)
			}
		}
	})
}

func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"10000:10000", "127.0.0.1:9464:9464", "8080", "53:53/udp", "a:b", "1:2:3:4", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pm, err := parsePort(s)
		if err != nil {
			return
		}
		if pm.Raw != s || strings.Count(strings.SplitN(s, "/", 2)[0], ":") > 2 {
			t.Fatalf("parsePort(%q) = %+v", s, pm)
		}
	})
}

func FuzzParseManifests(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", "examples/k8s/keymux-sidecar.yaml")); err == nil {
		f.Add(data)
	}
	f.Add([]byte("---\n# only a comment\n---\nkind: X\n"))
	f.Add([]byte("kind: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := parseManifests("f.yaml", data)
		if err != nil {
			return
		}
		for _, o := range objs {
			if o.Kind == "" || o.File != "f.yaml" {
				t.Fatalf("object %+v", o)
			}
		}
	})
}

func FuzzDockerignore(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", ".dockerignore")); err == nil {
		f.Add(data, "store/store.go")
	}
	f.Add([]byte("**\n!a/**/b?\n[\n"), "a/x/bc")
	f.Fuzz(func(t *testing.T, data []byte, rel string) {
		rules, err := parseDockerignore(data)
		if err != nil {
			return
		}
		_ = ignored(rules, rel)
	})
}
