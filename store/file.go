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
	"strconv"
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
	p, err := decodeFile(context.Background(), data)
	if err != nil {
		return nil, err
	}
	f := &File{Settings: p.settings}
	for i, dst := range []*map[string]json.RawMessage{&f.Keys, &f.Rules, &f.Clients} {
		if sec := p.secs[i]; sec.present {
			*dst = make(map[string]json.RawMessage, len(sec.docs))
			for _, d := range sec.docs {
				(*dst)[d.id] = d.raw
			}
		}
	}
	return f, nil
}

// decodeFile is DecodeFile that gives up between the members of a
// section once ctx ends, and hands the documents over as sorted lists.
func decodeFile(ctx context.Context, data []byte) (*fileParts, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%w: the file is empty", ErrBadFile)
	}
	js := data
	if !json.Valid(data) {
		var err error
		if js, err = yamlToJSON(data); err != nil {
			return nil, err
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
	for i, sec := range []map[string]json.RawMessage{f.Keys, f.Rules, f.Clients} {
		for _, id := range slices.Sorted(maps.Keys(sec)) {
			docs = append(docs, FileDoc{Kind: sectionKinds[i], ID: id, Raw: sec[id]})
		}
	}
	return docs
}

// sectionKinds are the by-id sections of a file, in the order they are
// loaded.
var sectionKinds = [3]Kind{KindKeys, KindRules, KindClients}

// fileParts is a decoded file as the builder takes it: the settings and,
// per section (sectionKinds), its documents sorted by id.
type fileParts struct {
	settings json.RawMessage
	secs     [3]fileSection
}

// fileSection is one by-id section of a file.
type fileSection struct {
	present bool      // an object (else absent or null)
	docs    []fileDoc // by id, one per id (the last one of the file)
}

// fileDoc is one document of a section; pos is its place in the file's
// section (for the duplicate named first).
type fileDoc struct {
	id  string
	raw []byte
	pos int
}

// has reports whether the section has a document id (a binary search).
func (s *fileSection) has(id string) bool {
	_, ok := slices.BinarySearchFunc(s.docs, id, func(d fileDoc, id string) int { return strings.Compare(d.id, id) })
	return ok
}

// splitFile splits the valid JSON object js into its sections and their
// documents in one pass. It refuses what the file format refuses, in this
// order: a top-level member that is unknown or appears twice (the first
// such, in the file's order), a section that is neither an object nor
// null, a document id twice within a section (keys, then rules, then
// clients; within one, the id whose second occurrence comes first).
func splitFile(ctx context.Context, js []byte) (*fileParts, error) {
	var p fileParts
	var seen []string
	var nameErr, typeErr error
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
			p.settings = val
			return nil
		}
		if typeErr != nil || string(val) == "null" {
			return nil
		}
		if val[0] != '{' {
			typeErr = fmt.Errorf("%w: field %q: want an object of documents", ErrBadFile, name)
			return nil
		}
		sec := &p.secs[slices.Index(sectionKinds[:], Kind(name))]
		sec.present = true
		_, err := members(val, func(id string, doc []byte) error {
			if err := checkStop(ctx); err != nil {
				return err
			}
			sec.docs = append(sec.docs, fileDoc{id: id, raw: doc, pos: len(sec.docs)})
			return nil
		})
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
	for i := range p.secs {
		if id, dup := p.secs[i].sortByID(); dup {
			return nil, fmt.Errorf("%w: %s appears twice", ErrBadFile, docName(sectionKinds[i], id))
		}
	}
	return &p, nil
}

// sortByID sorts the section's documents by id and keeps the last of each
// id. It reports the duplicate id whose second occurrence comes first in
// the file, if any.
func (s *fileSection) sortByID() (dupID string, dup bool) {
	slices.SortFunc(s.docs, func(a, b fileDoc) int {
		if c := strings.Compare(a.id, b.id); c != 0 {
			return c
		}
		return a.pos - b.pos
	})
	second := -1 // the file position of dupID's second occurrence
	for i := 1; i < len(s.docs); i++ {
		d := s.docs[i]
		isSecond := s.docs[i-1].id == d.id && (i == 1 || s.docs[i-2].id != d.id)
		if isSecond && (second < 0 || d.pos < second) {
			dupID, second, dup = d.id, d.pos, true
		}
	}
	if dupID == "" {
		// The empty id is refused as a document. As the decoder before
		// this one did, a file whose first repeated id is the empty one
		// is not refused for a later repeated id either.
		dup = false
	}
	out := s.docs[:0]
	for _, d := range s.docs {
		if n := len(out); n > 0 && out[n-1].id == d.id {
			out[n-1] = d // the last one of the file stands
			continue
		}
		out = append(out, d)
	}
	s.docs = slices.Clip(out)
	return dupID, dup
}

// fileSections are the top-level members of a file.
var fileSections = []string{"settings", "keys", "rules", "clients"}

// yamlToJSON converts a YAML file to JSON: one document, no key given
// twice in a mapping, and no two keys of a mapping that JSON reads as one
// (4 and "4", true and "true"): the conversion would keep either of them
// at random.
func yamlToJSON(data []byte) ([]byte, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("%w: neither JSON nor valid YAML: %s", ErrBadFile, yamlMsg(err))
	}
	dec := yamlv2.NewDecoder(bytes.NewReader(data))
	var first any
	if err := dec.Decode(&first); err != nil && err != io.EOF {
		return nil, fmt.Errorf("%w: neither JSON nor valid YAML: %s", ErrBadFile, yamlMsg(err))
	}
	var second any
	if err := dec.Decode(&second); err != io.EOF {
		// YAMLToJSONStrict reads the first document only.
		return nil, fmt.Errorf("%w: more than one YAML document", ErrBadFile)
	}
	if k, ok := yamlKeyCollision(first); ok {
		return nil, fmt.Errorf("%w: a mapping has two keys that both read %q in JSON (e.g. 4 and \"4\")", ErrBadFile, truncate(k, 64))
	}
	return js, nil
}

// yamlKeyCollision finds the least key string (as JSON reads it) that two
// keys of one mapping of v share: the result does not depend on the maps'
// order.
func yamlKeyCollision(v any) (string, bool) {
	var least string
	found := false
	var walk func(v any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[any]any:
			seen := make(map[string]bool, len(t))
			for k, e := range t {
				ks := yamlKeyString(k)
				if seen[ks] && (!found || ks < least) {
					least, found = ks, true
				}
				seen[ks] = true
				walk(e)
			}
		case []any:
			for _, e := range t {
				walk(e)
			}
		}
	}
	walk(v)
	return least, found
}

// yamlKeyString is the JSON member name of a YAML key, as the YAML to JSON
// conversion (sigs.k8s.io/yaml) writes it.
func yamlKeyString(k any) string {
	switch t := k.(type) {
	case string:
		return t
	case int:
		return strconv.Itoa(t)
	case int64:
		return strconv.FormatInt(t, 10)
	case float64:
		switch s := strconv.FormatFloat(t, 'g', -1, 32); s {
		case "+Inf":
			return ".inf"
		case "-Inf":
			return "-.inf"
		case "NaN":
			return ".nan"
		default:
			return s
		}
	case bool:
		return strconv.FormatBool(t)
	}
	return fmt.Sprint(k)
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
	p, err := decodeFile(ctx, data)
	if err != nil {
		return err
	}
	for i := range p.secs {
		b.deleteMissing(sectionKinds[i], p.secs[i].has)
	}
	if p.settings == nil {
		b.Delete(KindSettings, "")
	} else {
		_ = b.Put(KindSettings, "", p.settings, string(KindSettings))
	}
	for i, sec := range p.secs {
		kind := sectionKinds[i]
		for _, d := range sec.docs {
			if err := checkStop(ctx); err != nil {
				return err
			}
			path := string(kind) + "/" + d.id
			_ = b.Put(kind, path[len(kind)+1:], d.raw, path) // the id kept shares the path's bytes
		}
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
	size := len(data) // data is not kept alive past the builder's work
	f.logger.Info("applying config file", "path", f.path, "bytes", size)
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
	collectAfterApply(size)
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

// poll reloads when the file's content changed since the last attempt. It
// hashes the file as it reads it and reads it whole only when the hash
// moved: a large file is not copied into memory twice a second.
func (f *FileSource) poll(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sum, err := fileSum(f.path)
	if err == nil && sum == f.lastHash {
		f.readFailed = false
		return
	}
	var data []byte
	if err == nil {
		data, err = os.ReadFile(f.path)
	}
	if err != nil {
		if !f.readFailed {
			_ = f.refuseLocked(ctx, fmt.Errorf("%w: %w", ErrBadFile, err), [sha256.Size]byte{})
		}
		return
	}
	f.readFailed = false
	if sum = sha256.Sum256(data); sum == f.lastHash {
		return // changed back between the two reads
	}
	_ = f.applyLocked(ctx, data, sum)
}

// fileSum is the SHA-256 of the file at path, read in small pieces.
func fileSum(path string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	fh, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
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
