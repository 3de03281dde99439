package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	yamlv2 "go.yaml.in/yaml/v2"
	"sigs.k8s.io/yaml"
)

// ErrBadFile is wrapped by errors about a configuration file that cannot be
// used at all.
var ErrBadFile = errors.New("bad config file")

// File is a decoded configuration file: every document in one object,
// each still raw, by id.
type File struct {
	Settings json.RawMessage            `json:"settings"`
	Keys     map[string]json.RawMessage `json:"keys"`
	Rules    map[string]json.RawMessage `json:"rules"`
	Clients  map[string]json.RawMessage `json:"clients"`
}

// DecodeFile reads the file format, JSON or YAML: one object with the
// members settings, keys, rules and clients, no other member, none twice,
// and no document id twice within a section. It is the one decoder of
// configuration files (`serve --config`, `validate`, `kv import`); the
// documents themselves are not validated here. Its errors wrap ErrBadFile
// and never echo document values.
func DecodeFile(data []byte) (*File, error) {
	return decodeFile(context.Background(), data)
}

// decodeFile is DecodeFile that gives up between the members of a
// section once ctx ends.
func decodeFile(ctx context.Context, data []byte) (*File, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%w: the file is empty", ErrBadFile)
	}
	js := data
	if !json.Valid(data) {
		var err error
		if js, err = yaml.YAMLToJSONStrict(data); err != nil {
			return nil, fmt.Errorf("%w: neither JSON nor valid YAML: %s", ErrBadFile, yamlMsg(err))
		}
		if yamlDocuments(data) > 1 {
			// YAMLToJSONStrict reads the first document only.
			return nil, fmt.Errorf("%w: more than one YAML document", ErrBadFile)
		}
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || t[0] != '{' {
		return nil, fmt.Errorf("%w: want an object with settings, keys, rules, clients", ErrBadFile)
	}
	return splitFile(ctx, js)
}

// FileDoc is one document of a File.
type FileDoc struct {
	Kind Kind
	ID   string // "" for the settings
	Raw  json.RawMessage
}

// Docs lists the documents of f: the settings when present (even null),
// then keys, rules and clients, each in id order.
func (f *File) Docs() []FileDoc {
	docs := make([]FileDoc, 0, 1+len(f.Keys)+len(f.Rules)+len(f.Clients))
	if f.Settings != nil {
		docs = append(docs, FileDoc{Kind: KindSettings, Raw: f.Settings})
	}
	for _, sec := range f.sections() {
		for _, id := range slices.Sorted(maps.Keys(sec.docs)) {
			docs = append(docs, FileDoc{Kind: sec.kind, ID: id, Raw: sec.docs[id]})
		}
	}
	return docs
}

// fileSection is one by-id section of a File.
type fileSection struct {
	kind Kind
	docs map[string]json.RawMessage
}

func (f *File) sections() []fileSection {
	return []fileSection{{KindKeys, f.Keys}, {KindRules, f.Rules}, {KindClients, f.Clients}}
}

// splitFile splits the valid JSON object js into its sections and their
// documents in one pass. It refuses what the file format refuses, in this
// order: a top-level member that is unknown or appears twice (the first
// such, in the file's order), a section that is neither an object nor
// null, a document id twice within a section (keys, then rules, then
// clients).
func splitFile(ctx context.Context, js []byte) (*File, error) {
	var d File
	var seen []string
	var nameErr, typeErr error
	dups := map[Kind]string{}
	_, err := members(js, func(name string, val []byte) error {
		if !slices.Contains(fileSections, name) {
			nameErr = fmt.Errorf("%w: unknown top-level field %q (want settings, keys, rules, clients)", ErrBadFile, truncate(name, 64))
			return nameErr
		}
		if slices.Contains(seen, name) {
			nameErr = fmt.Errorf("%w: top-level field %q appears twice", ErrBadFile, name)
			return nameErr
		}
		seen = append(seen, name)
		if name == "settings" {
			d.Settings = val
			return nil
		}
		if typeErr != nil || string(val) == "null" {
			return nil
		}
		if val[0] != '{' {
			typeErr = fmt.Errorf("%w: field %q: want an object of documents", ErrBadFile, name)
			return nil
		}
		docs := map[string]json.RawMessage{}
		kind := Kind(name)
		_, err := members(val, func(id string, doc []byte) error {
			if err := checkStop(ctx); err != nil {
				return err
			}
			if _, dup := docs[id]; dup && id != "" { // the empty id is refused as a document
				if _, had := dups[kind]; !had {
					dups[kind] = id
				}
			}
			docs[id] = doc
			return nil
		})
		switch kind {
		case KindKeys:
			d.Keys = docs
		case KindRules:
			d.Rules = docs
		case KindClients:
			d.Clients = docs
		}
		return err
	})
	switch {
	case nameErr != nil:
		return nil, nameErr
	case err != nil:
		return nil, err
	case typeErr != nil:
		return nil, typeErr
	}
	for _, kind := range []Kind{KindKeys, KindRules, KindClients} {
		if id, dup := dups[kind]; dup {
			return nil, fmt.Errorf("%w: %s appears twice", ErrBadFile, docName(kind, id))
		}
	}
	return &d, nil
}

// fileSections are the top-level members of a file.
var fileSections = []string{"settings", "keys", "rules", "clients"}

// yamlDocuments counts the YAML documents of data, stopping at two (one
// that does not parse counts).
func yamlDocuments(data []byte) int {
	dec := yamlv2.NewDecoder(bytes.NewReader(data))
	n := 0
	for n < 2 {
		var v any
		err := dec.Decode(&v)
		if err == io.EOF {
			break
		}
		n++
		if err != nil {
			break
		}
	}
	return n
}

// yamlMsg keeps the line of a YAML error; the rest may quote document
// values.
func yamlMsg(err error) string {
	msg := err.Error()
	what := "syntax error"
	if strings.Contains(msg, "already set in map") {
		what = "duplicate key"
	}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		return "line " + m[1] + ": " + what
	}
	return what
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// PutFile loads every document of a file (JSON or YAML) into the builder:
// documents present are Put (bad ones refused alone, with paths like
// "keys/k1"), documents absent are deleted. A file that cannot be decoded as
// a whole returns an error wrapping ErrBadFile and leaves the builder
// unchanged.
func (b *Builder) PutFile(data []byte) error {
	return b.PutFileContext(context.Background(), data)
}

// PutFileContext is PutFile that stops between documents once ctx ends,
// with an error that wraps ctx.Err(); the builder then holds part of the
// file (for a source that is stopping).
func (b *Builder) PutFileContext(ctx context.Context, data []byte) error {
	f, err := decodeFile(ctx, data)
	if err != nil {
		return err
	}
	for _, sec := range f.sections() {
		b.deleteMissing(sec.kind, func(id string) bool {
			_, ok := sec.docs[id]
			return ok
		})
	}
	if f.Settings == nil {
		b.Delete(KindSettings, "")
	}
	for _, d := range f.Docs() {
		if err := checkStop(ctx); err != nil {
			return err
		}
		path := string(d.Kind)
		if d.Kind != KindSettings {
			path += "/" + d.ID
		}
		_ = b.Put(d.Kind, d.ID, d.Raw, path)
	}
	return nil
}

// ParseFile decodes a whole configuration file (JSON or YAML). Bad
// documents are refused alone; an error means the file is unusable.
func ParseFile(data []byte, resolve SecretResolver) (*Config, []Refusal, error) {
	b := NewBuilder(resolve)
	if err := b.PutFile(data); err != nil {
		return nil, nil, err
	}
	cfg, refused := b.Build()
	return cfg, refused, nil
}

// LoadFile reads and decodes a configuration file, like ParseFile.
func LoadFile(path string, resolve SecretResolver) (*Config, []Refusal, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadFile, err)
	}
	cfg, refused, err := ParseFile(data, resolve)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, refused, nil
}

// DefaultPollInterval is how often FileSource.Run looks at the file.
const DefaultPollInterval = 500 * time.Millisecond

// FileSource feeds a Store from a local file (the embedded default source).
type FileSource struct {
	path   string
	st     *Store
	logger *slog.Logger
	b      *Builder

	// Interval is the polling period of Run (DefaultPollInterval when 0).
	// Set it before Run.
	Interval time.Duration

	mu         sync.Mutex
	loaded     bool
	readFailed bool // the last attempt could not read the file
	lastHash   [sha256.Size]byte
	refused    []Refusal // of the last good build
	gen        uint64    // the generation of the last apply (0: apply whole next time)
}

// NewFileSource returns a source for path that applies to st.
func NewFileSource(path string, st *Store, logger *slog.Logger) *FileSource {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &FileSource{path: path, st: st, logger: logger, b: NewBuilder(ResolveSecretRef)}
}

// SetScope limits the key documents the source accepts (see Scope). Call
// it before Load.
func (f *FileSource) SetScope(sc *Scope) { f.b.SetScope(sc) }

// Source is the name the source reports in Status.
func (f *FileSource) Source() string { return "file:" + f.path }

// Load applies the file for the first time. It fails when the file cannot
// be used at all, or when ctx ends first (the error wraps ctx.Err()); bad
// entries are refused alone.
func (f *FileSource) Load(ctx context.Context) error {
	return f.Reload(ctx)
}

// Reload re-reads the file and applies it even when unchanged (secret refs
// are resolved again): the SIGHUP path. A file that cannot be used is
// refused: the previous config keeps serving, the refusal is logged and
// shown in Status.Refused, and the error is returned. When ctx ends during
// the apply, the store is left as it was and the error wraps ctx.Err().
func (f *FileSource) Reload(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := os.ReadFile(f.path)
	if err != nil {
		return f.refuseLocked(ctx, fmt.Errorf("%w: %w", ErrBadFile, err), [sha256.Size]byte{})
	}
	f.readFailed = false
	return f.applyLocked(ctx, data, sha256.Sum256(data))
}

func (f *FileSource) applyLocked(ctx context.Context, data []byte, sum [sha256.Size]byte) error {
	f.logger.Info("applying config file", "path", f.path, "bytes", len(data))
	if err := f.b.PutFileContext(ctx, data); err != nil {
		return f.refuseLocked(ctx, err, sum)
	}
	base := f.gen
	f.gen = 0 // until this apply succeeds (ApplyBuilt)
	gen, refused, err := f.st.ApplyBuilt(ctx, f.b, base, SourceInfo{Source: f.Source(), LastSync: time.Now()})
	if err != nil {
		return f.refuseLocked(ctx, err, sum)
	}
	f.lastHash = sum
	for _, r := range refused {
		f.logger.Warn("config entry refused", "source", f.Source(), "path", r.Path, "reason", r.Reason)
	}
	f.gen = gen
	f.loaded = true
	f.refused = refused
	f.logger.Info("config file loaded", "path", f.path, "generation", gen, "refused", len(refused))
	return nil
}

// refuseLocked records a file that cannot be used; an apply stopped by the
// end of ctx is not a refusal and changes nothing.
func (f *FileSource) refuseLocked(ctx context.Context, err error, sum [sha256.Size]byte) error {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return err
	}
	f.lastHash = sum
	f.readFailed = sum == [sha256.Size]byte{}
	f.logger.Error("config file refused, previous config kept", "path", f.path, "error", err)
	refused := append(slices.Clone(f.refused), Refusal{Path: f.path, Reason: err.Error()})
	src := SourceInfo{Source: f.Source(), Refused: refused}
	if st := f.st.Status(); st.Generation > 0 {
		src.LastSync = st.LastSync
	}
	f.st.SetSourceInfo(src)
	return err
}

// poll reloads when the file's content changed since the last attempt.
func (f *FileSource) poll(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, err := os.ReadFile(f.path)
	if err != nil {
		if !f.readFailed {
			_ = f.refuseLocked(ctx, fmt.Errorf("%w: %w", ErrBadFile, err), [sha256.Size]byte{})
		}
		return
	}
	f.readFailed = false
	sum := sha256.Sum256(data)
	if sum == f.lastHash {
		return
	}
	_ = f.applyLocked(ctx, data, sum)
}

// Run watches the file until ctx ends, applying every change. It returns
// nil when ctx is cancelled.
func (f *FileSource) Run(ctx context.Context) error {
	f.mu.Lock()
	loaded := f.loaded
	f.mu.Unlock()
	if !loaded {
		_ = f.Reload(ctx)
	}
	iv := f.Interval
	if iv <= 0 {
		iv = DefaultPollInterval
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f.poll(ctx)
		}
	}
}
