package deploy

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// ignoreRule is one .dockerignore line, with Docker's matching rules: the
// pattern is anchored at the context root, `*` and `?` stay within a path
// element, `**` spans any number of them, a match on a folder excludes what it
// holds, and a later `!pattern` re-includes.
type ignoreRule struct {
	re     *regexp.Regexp
	negate bool
}

func parseDockerignore(data []byte) ([]ignoreRule, error) {
	var rules []ignoreRule
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := ignoreRule{}
		if rest, ok := strings.CutPrefix(line, "!"); ok {
			r.negate, line = true, rest
		}
		pat := path.Clean(strings.TrimPrefix(line, "/"))
		var b strings.Builder
		b.WriteString("^")
		for i := 0; i < len(pat); i++ {
			switch ch := pat[i]; {
			case strings.HasPrefix(pat[i:], "**/"):
				b.WriteString("(?:.*/)?")
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				b.WriteString(".*")
				i++
			case ch == '*':
				b.WriteString("[^/]*")
			case ch == '?':
				b.WriteString("[^/]")
			default:
				b.WriteString(regexp.QuoteMeta(string(ch)))
			}
		}
		b.WriteString("$")
		re, err := regexp.Compile(b.String())
		if err != nil {
			return nil, err
		}
		r.re = re
		rules = append(rules, r)
	}
	return rules, sc.Err()
}

// ignored reports whether the context-relative slash path rel is left out of
// the build context.
func ignored(rules []ignoreRule, rel string) bool {
	out := false
	for _, r := range rules {
		for p := rel; p != "." && p != "/" && p != ""; p = path.Dir(p) {
			if r.re.MatchString(p) {
				out = !r.negate
				break
			}
		}
	}
	return out
}

func TestDockerignoreMatcher(t *testing.T) {
	rules, err := parseDockerignore([]byte("# c\n.git\n**/*_test.go\ntools\n/e2e\n*.out\n!keep.out\nexamples/k8s\n"))
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]bool{
		".git/HEAD":                   true,
		"store/store_test.go":         true,
		"x_test.go":                   true,
		"store/store.go":              false,
		"tools/bin/consul":            true,
		"e2e/harness_test.go":         true,
		"e2e":                         true,
		"cmd/e2e/x.go":                false,
		"a.out":                       true,
		"keep.out":                    false,
		"sub/a.out":                   false,
		"examples/k8s/x.yaml":         true,
		"examples/mockupstream/x.go":  false,
		"examples/k8sother/thing.txt": false,
	} {
		if got := ignored(rules, rel); got != want {
			t.Errorf("ignored(%q) = %v, want %v", rel, got, want)
		}
	}
}

// TestDockerContext: .dockerignore keeps every file the Dockerfile's two
// `go build`s compile or embed (so the image builds from a clean clone), and
// leaves out the repository's heavy or local-only parts.
func TestDockerContext(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := parseDockerignore(data)
	if err != nil {
		t.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), goBin, "list", "-deps",
		"-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}{{end}}`,
		"./cmd/keymux", "./examples/mockupstream/cmd/mockupstream")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	need := []string{"go.mod", "go.sum"}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dir, err := filepath.Rel(root, f[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range f[1:] {
			need = append(need, path.Join(filepath.ToSlash(dir), name))
		}
	}
	if len(need) < 20 || !containsSuffix(need, "envoy/envoy.yaml") || !containsSuffix(need, "cmd/keymux/main.go") {
		t.Fatalf("go list found too little (%d files): %v", len(need), need)
	}
	for _, rel := range need {
		if ignored(rules, rel) {
			t.Errorf(".dockerignore excludes %s, which the image build needs", rel)
		}
	}
	for _, rel := range []string{".git/HEAD", "tools/bin/consul", "deploy/crosscheck_test.go", "store/store_test.go", "e2e/harness_test.go"} {
		if !ignored(rules, rel) {
			t.Errorf(".dockerignore lets %s into the build context", rel)
		}
	}
}

func containsSuffix(list []string, suffix string) bool {
	for _, s := range list {
		if strings.HasSuffix(s, suffix) {
			return true
		}
	}
	return false
}
