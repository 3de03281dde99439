package consul

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
)

// NewClient is api.NewClient whose HTTP client lets the Source read the
// answers of its blocking query on the prefix itself: the Consul client
// still makes the request (address, token, TLS, query options) and reads
// the answer's headers, but the body goes, uncompressed, to the source's
// scanner (scanListing), which decodes only the entries whose ModifyIndex
// moved, instead of decoding every value of a large prefix at each
// change. Other requests are untouched. A Source given a client made
// otherwise decodes the answers with the Consul client, as before.
func NewClient(cfg *api.Config) (*api.Client, error) {
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	// api.NewClient filled cfg.HttpClient, which c shares.
	if hc := cfg.HttpClient; hc != nil {
		next := hc.Transport
		if next == nil {
			next = http.DefaultTransport
		}
		hc.Transport = &divert{next: next}
	}
	return c, nil
}

// captureKey marks, in a request's context, the *capture that takes its
// answer's body.
type captureKey struct{}

// capture is the body of one diverted answer.
type capture struct {
	body  []byte // reused from answer to answer
	taken bool
}

// divert is the RoundTripper of NewClient's clients.
type divert struct{ next http.RoundTripper }

func (d *divert) RoundTrip(req *http.Request) (*http.Response, error) {
	c, _ := req.Context().Value(captureKey{}).(*capture)
	if c == nil {
		return d.next.RoundTrip(req)
	}
	req = req.Clone(req.Context())
	// Uncompressed: unpacking a large answer costs more CPU than the
	// listing's decoding, and the agent is local.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := d.next.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Encoding") != "" {
		return resp, err
	}
	body, err := readBody(resp.Body, c.body[:0], resp.ContentLength)
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read the prefix listing: %w", err)
	}
	c.body, c.taken = body, true
	resp.Body = io.NopCloser(strings.NewReader("[]"))
	resp.ContentLength = 2
	return resp, nil
}

// readBody appends r to buf, which it grows to size first when known.
func readBody(r io.Reader, buf []byte, size int64) ([]byte, error) {
	if size > 0 && size < 1<<31 {
		// With room to spare: the next answer is often a few bytes longer.
		buf = slices.Grow(buf, int(size)+int(size)/16+1)
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(cap(buf), 64<<10))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// entryClass is what an entry of the prefix is to the source.
type entryClass uint8

const (
	classOther  entryClass = iota
	classConfig            // settings, keys/, rules/, clients/
	classHealth            // health/<key id>
)

// listing mirrors the entries of the prefix from answer to answer, and
// turns each answer into what changed since the previous one.
type listing struct {
	prefix  string
	entries map[string]*entry
	order   []*entry // the last answer's entries, in its order
	next    []*entry // this answer's, being built
	pos     int      // where this answer is in order
	round   uint64
	broken  bool // a scan failed midway: order misses the entries it added
	docs    int  // configuration documents in the last answer
	full    bool // the pending changes are a whole answer (first, or after reset)

	changed map[string]*api.KVPair // new or modified since the last take
	removed map[string]*api.KVPair // gone since the last take (their last version)
}

type entry struct {
	pair  *api.KVPair
	pos   int // in order
	round uint64
	class entryClass
	stale bool // reported as changed at the next answer (reset)
}

func newListing(prefix string) *listing {
	return &listing{prefix: prefix, entries: map[string]*entry{}, full: true,
		changed: map[string]*api.KVPair{}, removed: map[string]*api.KVPair{}}
}

// reset makes the next answer report every entry as changed (compared by
// value by the source), deletions still noticed.
func (l *listing) reset() {
	for _, e := range l.entries {
		e.stale = true
	}
	l.full = true
}

// hit reports whether the entry at key is the one seen before (same
// ModifyIndex and session), marking it seen. Answers come sorted and
// mostly unchanged: the entry is looked for at the same place in the
// previous answer before the map.
func (l *listing) hit(key []byte, modifyIndex uint64, session []byte) bool {
	var e *entry
	if l.pos < len(l.order) && l.order[l.pos].pair.Key == string(key) {
		e = l.order[l.pos]
	} else if e = l.entries[string(key)]; e == nil {
		return false
	}
	l.pos = e.pos + 1
	if e.stale || e.pair.ModifyIndex != modifyIndex || e.pair.Session != string(session) {
		return false
	}
	l.seen(e)
	return true
}

// seen marks e as part of this answer.
func (l *listing) seen(e *entry) {
	e.round = l.round
	if e.class == classConfig {
		l.docs++
	}
	e.pos = len(l.next)
	l.next = append(l.next, e)
}

// put records p, new or changed.
func (l *listing) put(p *api.KVPair) {
	e := l.entries[p.Key]
	if e == nil {
		e = &entry{class: l.classify(p.Key)}
		l.entries[p.Key] = e
	}
	e.pair, e.stale = p, false
	l.seen(e)
	l.changed[p.Key] = p
	delete(l.removed, p.Key)
}

func (l *listing) classify(path string) entryClass {
	_, _, health, ok := classify(l.prefix, path)
	switch {
	case !ok:
		return classOther
	case health:
		return classHealth
	}
	return classConfig
}

func (l *listing) begin() {
	l.round++
	l.docs, l.pos = 0, 0
	l.next = l.next[:0]
}

// end notices the entries the answer no longer has.
func (l *listing) end() {
	if l.broken {
		l.broken = false
		l.order = slices.Collect(maps.Values(l.entries))
	}
	for _, e := range l.order {
		if e.round != l.round && l.entries[e.pair.Key] == e {
			key := e.pair.Key
			l.removed[key] = e.pair
			delete(l.changed, key)
			delete(l.entries, key)
		}
	}
	clear(l.order) // drop the pointers, keep the capacity
	l.order, l.next = l.next, l.order[:0]
}

// pairs takes an answer decoded by the Consul client.
func (l *listing) pairs(pairs api.KVPairs) {
	l.begin()
	for _, p := range pairs {
		if p != nil && !l.hit([]byte(p.Key), p.ModifyIndex, []byte(p.Session)) {
			l.put(p)
		}
	}
	l.end()
}

// scan takes an answer's body: a JSON array of KV entries as the Consul
// client decodes it (api.KVPairs); only the entries whose ModifyIndex or
// session moved are decoded.
func (l *listing) scan(body []byte) error {
	l.begin()
	err := scanListing(body, func(r *rawPair) error {
		if l.hit(r.key, r.pair.ModifyIndex, r.session) {
			return nil
		}
		p, err := r.decode()
		if err != nil {
			return err
		}
		l.put(p)
		return nil
	})
	if err != nil {
		l.broken = true
		return err
	}
	l.end()
	return nil
}

// take returns, each sorted by key, the entries changed and removed since
// the last take, and whether they cover a whole answer.
func (l *listing) take() (changed, removed []*api.KVPair, full bool) {
	byKey := func(a, b *api.KVPair) int { return strings.Compare(a.Key, b.Key) }
	changed = slices.SortedFunc(maps.Values(l.changed), byKey)
	removed = slices.SortedFunc(maps.Values(l.removed), byKey)
	full = l.full
	// New maps rather than clear: clearing costs the capacity a whole
	// answer gave them.
	l.changed, l.removed = map[string]*api.KVPair{}, map[string]*api.KVPair{}
	l.full = false
	return changed, removed, full
}

// rawPair is one entry of a listing as scanned: the key, session and
// value still as JSON, the numbers decoded.
type rawPair struct {
	pair                  api.KVPair // the numbers
	key, session          []byte     // JSON string contents (escapes undone by decode)
	keyEsc, sessionEsc    bool
	namespace, partition  []byte
	namespaceEsc, partEsc bool
	value                 []byte // JSON token: a string or null
	has                   uint8  // which strings were present (hasKey…)
}

const (
	hasKey uint8 = 1 << iota
	hasSession
	hasNamespace
	hasPartition
)

// decode returns the entry as the Consul client decodes it.
func (r *rawPair) decode() (*api.KVPair, error) {
	p := r.pair
	if r.has&hasKey != 0 {
		p.Key = jsonString(r.key, r.keyEsc)
	}
	if r.has&hasSession != 0 {
		p.Session = jsonString(r.session, r.sessionEsc)
	}
	if r.has&hasNamespace != 0 {
		p.Namespace = jsonString(r.namespace, r.namespaceEsc)
	}
	if r.has&hasPartition != 0 {
		p.Partition = jsonString(r.partition, r.partEsc)
	}
	if len(r.value) > 0 && r.value[0] == '"' {
		s := r.value[1 : len(r.value)-1]
		if bytes.IndexByte(s, '\\') >= 0 {
			s = []byte(jsonString(s, true))
		}
		v := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
		n, err := base64.StdEncoding.Decode(v, s)
		if err != nil {
			return nil, fmt.Errorf("listing: %s: value: %w", p.Key, err)
		}
		p.Value = v[:n]
	}
	return &p, nil
}

// jsonString is the Go string of the JSON string contents s (between the
// quotes), as encoding/json decodes it.
func jsonString(s []byte, escaped bool) string {
	if !escaped && utf8.Valid(s) {
		return string(s)
	}
	q := make([]byte, 0, len(s)+2)
	q = append(append(append(q, '"'), s...), '"')
	var out string
	_ = json.Unmarshal(q, &out) // the scanner checked the string's syntax
	return out
}

// errListing is wrapped by scanListing's errors.
var errListing = errors.New("bad prefix listing")

// scanListing walks the JSON array of KV entries body (or null) and calls
// fn with each entry (null elements are skipped; what follows the array is
// ignored, as the Consul client's decoder does). fn's *rawPair is reused.
// Member names match case-insensitively, as in encoding/json; unknown
// members are skipped.
func scanListing(body []byte, fn func(*rawPair) error) error {
	s := &jscan{b: body}
	s.space()
	if s.literal("null") {
		return nil
	}
	if !s.take('[') {
		return s.fail("want an array")
	}
	var r rawPair
	s.space()
	if s.take(']') {
		return nil
	}
	for {
		s.space()
		if !s.literal("null") {
			r = rawPair{}
			if err := s.object(&r); err != nil {
				return err
			}
			if err := fn(&r); err != nil {
				return err
			}
		}
		s.space()
		if s.take(']') {
			return nil
		}
		if !s.take(',') {
			return s.fail("want , or ]")
		}
	}
}

// jscan is a cursor over a JSON text.
type jscan struct {
	b []byte
	i int
}

func (s *jscan) fail(what string) error {
	return fmt.Errorf("%w: %s at byte %d", errListing, what, s.i)
}

func (s *jscan) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jscan) take(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *jscan) literal(lit string) bool {
	if bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		s.i += len(lit)
		return true
	}
	return false
}

// str reads a string and returns its contents and whether they hold an
// escape. Control characters are let through (the Consul client would
// refuse them; Consul never sends them).
func (s *jscan) str() ([]byte, bool, error) {
	if !s.take('"') {
		return nil, false, s.fail("want a string")
	}
	start, esc := s.i, false
	for {
		n := bytes.IndexByte(s.b[s.i:], '"')
		if n < 0 {
			return nil, false, s.fail("unterminated string")
		}
		bs := bytes.IndexByte(s.b[s.i:s.i+n], '\\')
		if bs < 0 {
			s.i += n + 1
			return s.b[start : s.i-1], esc, nil
		}
		esc = true
		s.i += bs
		if err := s.escape(); err != nil {
			return nil, false, err
		}
	}
}

func (s *jscan) escape() error {
	s.i++ // '\\'
	if s.i >= len(s.b) {
		return s.fail("unterminated escape")
	}
	switch s.b[s.i] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		s.i++
		return nil
	case 'u':
		if s.i+5 > len(s.b) {
			return s.fail("short \\u escape")
		}
		for _, c := range s.b[s.i+1 : s.i+5] {
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return s.fail("bad \\u escape")
			}
		}
		s.i += 5
		return nil
	}
	return s.fail("bad escape")
}

// uint reads a non-negative integer (null leaves *v alone).
func (s *jscan) uint(v *uint64) error {
	if s.literal("null") {
		return nil
	}
	start := s.i
	var n uint64
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		d := uint64(s.b[s.i] - '0')
		if n > (1<<64-1-d)/10 {
			return s.fail("number out of range")
		}
		n = n*10 + d
		s.i++
	}
	if s.i == start || (s.b[start] == '0' && s.i-start > 1) {
		return s.fail("want an unsigned integer")
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return s.fail("want an unsigned integer")
		}
	}
	*v = n
	return nil
}

// optStr reads a string member value (null leaves it absent).
func (s *jscan) optStr(dst *[]byte, esc *bool, has *uint8, bit uint8) error {
	if s.literal("null") {
		return nil
	}
	v, e, err := s.str()
	if err != nil {
		return err
	}
	*dst, *esc = v, e
	*has |= bit
	return nil
}

// kvMembers are the KVPair members scanListing reads.
var kvMembers = []string{"Key", "ModifyIndex", "Value", "Session", "LockIndex", "Flags", "CreateIndex", "Namespace", "Partition"}

func (s *jscan) object(r *rawPair) error {
	if !s.take('{') {
		return s.fail("want an object")
	}
	s.space()
	if s.take('}') {
		return nil
	}
	for {
		s.space()
		nameRaw, esc, err := s.str()
		if err != nil {
			return err
		}
		name := memberName(nameRaw, esc)
		s.space()
		if !s.take(':') {
			return s.fail("want :")
		}
		s.space()
		switch name {
		case "Key":
			err = s.optStr(&r.key, &r.keyEsc, &r.has, hasKey)
		case "ModifyIndex":
			err = s.uint(&r.pair.ModifyIndex)
		case "Value":
			start := s.i
			if s.literal("null") {
				r.value = nil
				break
			}
			if _, _, err = s.str(); err == nil {
				r.value = s.b[start:s.i]
			}
		case "Session":
			err = s.optStr(&r.session, &r.sessionEsc, &r.has, hasSession)
		case "LockIndex":
			err = s.uint(&r.pair.LockIndex)
		case "Flags":
			err = s.uint(&r.pair.Flags)
		case "CreateIndex":
			err = s.uint(&r.pair.CreateIndex)
		case "Namespace":
			err = s.optStr(&r.namespace, &r.namespaceEsc, &r.has, hasNamespace)
		case "Partition":
			err = s.optStr(&r.partition, &r.partEsc, &r.has, hasPartition)
		default:
			err = s.skip()
		}
		if err != nil {
			return err
		}
		s.space()
		if s.take('}') {
			return nil
		}
		if !s.take(',') {
			return s.fail("want , or }")
		}
	}
}

// memberName is the KVPair member a JSON member name selects (exact, else
// case-insensitive), or "" for none.
func memberName(raw []byte, esc bool) string {
	if !esc {
		switch string(raw) { // no allocation: each case returns its constant
		case "Key":
			return "Key"
		case "ModifyIndex":
			return "ModifyIndex"
		case "Value":
			return "Value"
		case "Session":
			return "Session"
		case "LockIndex":
			return "LockIndex"
		case "Flags":
			return "Flags"
		case "CreateIndex":
			return "CreateIndex"
		}
	}
	name := raw
	if esc {
		name = []byte(jsonString(raw, true))
	}
	for _, m := range kvMembers {
		if bytes.EqualFold(name, []byte(m)) {
			return m
		}
	}
	return ""
}

// skip reads any JSON value (nesting checked by a counter, no recursion).
func (s *jscan) skip() error {
	var stack []byte
	for {
		s.space()
		if s.i >= len(s.b) {
			return s.fail("unexpected end")
		}
		switch c := s.b[s.i]; {
		case c == '"':
			if _, _, err := s.str(); err != nil {
				return err
			}
		case c == '{' || c == '[':
			s.i++
			stack = append(stack, c)
			s.space()
			if c == '{' && s.take('}') || c == '[' && s.take(']') {
				stack = stack[:len(stack)-1]
				break
			}
			if c == '{' {
				if err := s.key(); err != nil {
					return err
				}
			}
			continue
		default:
			start := s.i
			for s.i < len(s.b) && (s.b[s.i] == '-' || s.b[s.i] == '+' || s.b[s.i] == '.' ||
				'0' <= s.b[s.i] && s.b[s.i] <= '9' || 'a' <= s.b[s.i] && s.b[s.i] <= 'z' || 'A' <= s.b[s.i] && s.b[s.i] <= 'Z') {
				s.i++
			}
			if s.i == start {
				return s.fail("want a value")
			}
		}
		// After a value: close containers, or go on to the next member.
		for {
			if len(stack) == 0 {
				return nil
			}
			s.space()
			top := stack[len(stack)-1]
			if top == '{' && s.take('}') || top == '[' && s.take(']') {
				stack = stack[:len(stack)-1]
				continue
			}
			if !s.take(',') {
				return s.fail("want , or the end of a container")
			}
			if top == '{' {
				s.space()
				if err := s.key(); err != nil {
					return err
				}
			}
			break
		}
	}
}

// key reads an object member's name and colon.
func (s *jscan) key() error {
	if _, _, err := s.str(); err != nil {
		return err
	}
	s.space()
	if !s.take(':') {
		return s.fail("want :")
	}
	return nil
}
