package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	jsonparserv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/content_parsers/json/v3"
	jsonmetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	ssemetav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/sse_to_metadata/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Default metadata namespaces of the two filters.
const (
	jsonToMetadataNamespace = "envoy.filters.http.json_to_metadata"
	jsonParserNamespace     = "envoy.content_parsers.json"
	defaultSSEMaxEventSize  = 8192
)

// jsonMetaRule is one json_to_metadata rule: a key path and its actions.
type jsonMetaRule struct {
	keys  []string
	rule  *jsonmetav3.JsonToMetadata_Rule
	limit uint32 // sse_to_metadata: stop_processing_after_matches (0: none)
	count uint32
}

func newJSONMetaRule(r *jsonmetav3.JsonToMetadata_Rule) (*jsonMetaRule, error) {
	if r.GetOnPresent() == nil && r.GetOnMissing() == nil {
		return nil, errors.New("neither `on_present` nor `on_missing` set")
	}
	if r.GetOnMissing() != nil && r.GetOnMissing().GetValue() == nil {
		return nil, errors.New("cannot specify on_missing rule without non-empty value")
	}
	if r.GetOnError() != nil && r.GetOnError().GetValue() == nil {
		return nil, errors.New("cannot specify on_error rule without non-empty value")
	}
	if len(r.GetSelectors()) == 0 {
		return nil, errors.New("a rule needs at least one selector")
	}
	jr := &jsonMetaRule{rule: r}
	for _, s := range r.GetSelectors() {
		jr.keys = append(jr.keys, s.GetKey())
	}
	return jr, nil
}

// jsonMetaFilter is envoy.filters.http.json_to_metadata, response_rules only.
type jsonMetaFilter struct {
	rules        []*jsonMetaRule
	contentTypes map[string]bool
	allowEmpty   bool
}

func newJSONMetaFilter(c *jsonmetav3.JsonToMetadata) (*jsonMetaFilter, error) {
	if c.GetRequestRules() != nil {
		return nil, errors.New("json_to_metadata: request_rules are not emulated (response_rules only)")
	}
	rr := c.GetResponseRules()
	if len(rr.GetRules()) == 0 {
		return nil, errors.New("json_to_metadata: response_rules.rules is empty")
	}
	if rr.GetAllowContentTypesRegex() != nil {
		return nil, errors.New("json_to_metadata: allow_content_types_regex is not emulated")
	}
	f := &jsonMetaFilter{contentTypes: map[string]bool{}, allowEmpty: rr.GetAllowEmptyContentType()}
	for i, r := range rr.GetRules() {
		jr, err := newJSONMetaRule(r)
		if err != nil {
			return nil, fmt.Errorf("json_to_metadata: response_rules.rules[%d]: %w", i, err)
		}
		f.rules = append(f.rules, jr)
	}
	for _, ct := range rr.GetAllowContentTypes() {
		f.contentTypes[ct] = true
	}
	if len(f.contentTypes) == 0 {
		f.contentTypes["application/json"] = true
	}
	return f, nil
}

// encode reads the whole response body (Envoy buffers it) and writes the
// rules' metadata; it returns the body to pass on.
func (f *jsonMetaFilter) encode(li *logInfo, h *headerMap, body io.Reader, limit int) io.Reader {
	ct := h.value("content-type")
	if (ct == "" && !f.allowEmpty) || (ct != "" && !f.contentTypes[ct]) {
		return body
	}
	md := metadataWriter{li: li, defaultNS: jsonToMetadataNamespace}
	if body == nil {
		f.all(&md, (*jsonmetav3.JsonToMetadata_Rule).GetOnMissing)
		md.commit()
		return nil
	}
	data, over, err := readUpTo(body, limit)
	if over || err != nil {
		f.all(&md, (*jsonmetav3.JsonToMetadata_Rule).GetOnError)
		md.commit()
		if err != nil {
			return io.MultiReader(bytes.NewReader(data), errReader{err})
		}
		return io.MultiReader(bytes.NewReader(data), body)
	}
	if len(data) == 0 {
		f.all(&md, (*jsonmetav3.JsonToMetadata_Rule).GetOnMissing)
		md.commit()
		return bytes.NewReader(data)
	}
	doc, ok := decodeJSONObject(data)
	if !ok {
		f.all(&md, (*jsonmetav3.JsonToMetadata_Rule).GetOnError)
		md.commit()
		return bytes.NewReader(data)
	}
	for _, r := range f.rules {
		v, found := selectJSON(doc, r.keys)
		if !found {
			md.put(r.rule.GetOnMissing(), nil)
			continue
		}
		op := r.rule.GetOnPresent()
		if op == nil {
			continue
		}
		if op.GetValue() != nil {
			md.put(op, op.GetValue())
			continue
		}
		pv, ok, empty := jsonToMetadataValue(v, op.GetType())
		switch {
		case empty: // an empty STRING adds nothing
		case !ok:
			md.put(r.rule.GetOnMissing(), nil)
		default:
			md.put(op, pv)
		}
	}
	md.commit()
	return bytes.NewReader(data)
}

func (f *jsonMetaFilter) all(md *metadataWriter, which func(*jsonmetav3.JsonToMetadata_Rule) *jsonmetav3.JsonToMetadata_KeyValuePair) {
	for _, r := range f.rules {
		md.put(which(r.rule), nil)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// metadataWriter collects the values of one pass and writes them per
// namespace (json_to_metadata's StructMap), honouring
// preserve_existing_metadata_value against what is already set.
type metadataWriter struct {
	li        *logInfo
	defaultNS string
	set       map[string]*structpb.Struct
	order     []string
}

// put records kv's key with value v (nil: kv's own value); nil kv is a no-op.
func (m *metadataWriter) put(kv *jsonmetav3.JsonToMetadata_KeyValuePair, v *structpb.Value) {
	if kv == nil {
		return
	}
	if v == nil {
		v = kv.GetValue()
	}
	if v == nil || v.GetKind() == nil {
		return
	}
	ns := kv.GetMetadataNamespace()
	if ns == "" {
		ns = m.defaultNS
	}
	if kv.GetPreserveExistingMetadataValue() && m.li.metadataValue(ns, []string{kv.GetKey()}) != nil {
		return
	}
	if m.set == nil {
		m.set = map[string]*structpb.Struct{}
	}
	s, ok := m.set[ns]
	if !ok {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		m.set[ns] = s
		m.order = append(m.order, ns)
	}
	s.Fields[kv.GetKey()] = v
}

func (m *metadataWriter) commit() {
	for _, ns := range m.order {
		m.li.setMetadata(ns, m.set[ns])
	}
	m.set, m.order = nil, nil
}

// decodeJSONObject parses a JSON object keeping numbers exact.
func decodeJSONObject(data []byte) (map[string]any, bool) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var doc map[string]any
	if err := d.Decode(&doc); err != nil || doc == nil {
		return nil, false
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, false // trailing data
	}
	return doc, true
}

// selectJSON walks keys: every key but the last must name an object.
func selectJSON(doc map[string]any, keys []string) (any, bool) {
	node := doc
	for i, k := range keys {
		v, ok := node[k]
		if !ok {
			return nil, false
		}
		if i == len(keys)-1 {
			return v, v != nil
		}
		if node, ok = v.(map[string]any); !ok {
			return nil, false
		}
	}
	return nil, false
}

// jsonToMetadataValue converts as json_to_metadata's on_present does: ok
// false sends the rule to on_missing; empty: a STRING that is empty.
// Objects and arrays are not values there (Json getValue fails).
func jsonToMetadataValue(v any, t jsonmetav3.JsonToMetadata_ValueType) (pv *structpb.Value, ok, empty bool) {
	switch t {
	case jsonmetav3.JsonToMetadata_NUMBER:
		switch x := v.(type) {
		case bool:
			return structpb.NewNumberValue(b2f(x)), true, false
		case json.Number:
			f, err := x.Float64()
			return structpb.NewNumberValue(f), err == nil, false
		case string:
			f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
			if err != nil {
				return nil, false, false
			}
			return structpb.NewNumberValue(f), true, false
		}
	case jsonmetav3.JsonToMetadata_STRING:
		var s string
		switch x := v.(type) {
		case bool:
			s = "0"
			if x {
				s = "1" // std::to_string(bool)
			}
		case json.Number:
			if i, err := x.Int64(); err == nil {
				s = strconv.FormatInt(i, 10)
			} else {
				f, _ := x.Float64()
				s = strconv.FormatFloat(f, 'f', 6, 64) // std::to_string(double)
			}
		case string:
			s = x
		default:
			return nil, false, false
		}
		if s == "" {
			return nil, true, true
		}
		return structpb.NewStringValue(s), true, false
	default: // PROTOBUF_VALUE
		switch x := v.(type) {
		case bool:
			return structpb.NewBoolValue(x), true, false
		case json.Number:
			f, err := x.Float64()
			return structpb.NewNumberValue(f), err == nil, false
		case string:
			return structpb.NewStringValue(x), true, false
		}
	}
	return nil, false, false
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ---- sse_to_metadata ----

// sseMetaFilter is envoy.filters.http.sse_to_metadata with the JSON
// content parser (envoy.content_parsers.json).
type sseMetaFilter struct {
	rules        []*jsonmetav3.JsonToMetadata_Rule
	limits       []uint32
	maxEventSize int
}

func newSSEMetaFilter(c *ssemetav3.SseToMetadata) (*sseMetaFilter, error) {
	rr := c.GetResponseRules()
	if rr == nil {
		return nil, errors.New("sse_to_metadata: response_rules is required")
	}
	cp := rr.GetContentParser()
	var jp jsonparserv3.JsonContentParser
	if cp.GetTypedConfig() == nil || !cp.GetTypedConfig().MessageIs(&jp) {
		return nil, fmt.Errorf("sse_to_metadata: content parser %q is not emulated (envoy.content_parsers.json only)", cp.GetName())
	}
	if err := cp.GetTypedConfig().UnmarshalTo(&jp); err != nil {
		return nil, fmt.Errorf("sse_to_metadata: content parser: %w", err)
	}
	if len(jp.GetRules()) == 0 {
		return nil, errors.New("sse_to_metadata: the JSON content parser has no rules")
	}
	f := &sseMetaFilter{maxEventSize: defaultSSEMaxEventSize}
	if m := rr.GetMaxEventSize(); m != nil {
		f.maxEventSize = int(m.GetValue())
	}
	for i, r := range jp.GetRules() {
		if len(r.GetRule().GetSelectors()) == 0 {
			return nil, fmt.Errorf("sse_to_metadata: rules[%d]: a rule needs at least one selector", i)
		}
		f.rules = append(f.rules, r.GetRule())
		f.limits = append(f.limits, r.GetStopProcessingAfterMatches())
	}
	return f, nil
}

// encode taps a text/event-stream body: bytes pass on as they are read,
// events are parsed on the way, metadata is written per event and the
// deferred on_error / on_missing actions at the end of the body.
func (f *sseMetaFilter) encode(li *logInfo, h *headerMap, body io.Reader) io.Reader {
	ct := h.value("content-type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	if body == nil || strings.TrimSpace(ct) != "text/event-stream" {
		return body
	}
	return &sseTap{r: body, f: f, li: li, matches: make([]uint32, len(f.rules)),
		errored: make([]bool, len(f.rules)), missing: make([]bool, len(f.rules))}
}

type sseTap struct {
	r    io.Reader
	f    *sseMetaFilter
	li   *logInfo
	buf  []byte
	done bool // processing complete (stop_processing or end of body)

	matches          []uint32
	errored, missing []bool
}

func (t *sseTap) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if !t.done {
		if n > 0 {
			t.buf = append(t.buf, p[:n]...)
		}
		eos := errors.Is(err, io.EOF)
		t.process(eos)
		if eos || t.done {
			t.finalize()
		}
	}
	return n, err
}

// process handles every complete event in the buffer (at the end of the
// body, the last one even without its blank line).
func (t *sseTap) process(eos bool) {
	for len(t.buf) > 0 && !t.done {
		ev, rest, ok := nextSSEEvent(t.buf, eos)
		if !ok {
			if t.f.maxEventSize > 0 && len(t.buf) > t.f.maxEventSize {
				t.buf = nil // event_too_large: discarded
			}
			return
		}
		t.buf = rest
		if t.event(ev) {
			t.done = true
		}
	}
}

// event parses one event's data with the JSON content parser; true: every
// rule reached its stop_processing_after_matches.
func (t *sseTap) event(ev []byte) bool {
	data, ok := sseData(ev)
	if !ok || data == "" {
		return false
	}
	md := metadataWriter{li: t.li, defaultNS: jsonParserNamespace}
	doc, ok := decodeJSONObject([]byte(data))
	if !ok {
		for i := range t.errored {
			t.errored[i] = true
		}
		return false
	}
	for i, r := range t.f.rules {
		if l := t.f.limits[i]; l > 0 && t.matches[i] >= l {
			continue
		}
		v, found := selectParserValue(doc, r)
		if !found {
			t.missing[i] = true
			continue
		}
		if op := r.GetOnPresent(); op != nil {
			if op.GetValue() != nil {
				md.put(op, op.GetValue())
			} else {
				md.put(op, parserValue(v, op.GetType()))
			}
		}
		t.matches[i]++
	}
	// Each action is written at once (setDynamicMetadata per action).
	md.commit()
	for i, l := range t.f.limits {
		if l == 0 || t.matches[i] < l {
			return false
		}
	}
	return true
}

// finalize runs the deferred actions of the rules that never matched:
// on_error when an event failed to parse, else on_missing.
func (t *sseTap) finalize() {
	t.done = true
	md := metadataWriter{li: t.li, defaultNS: jsonParserNamespace}
	for i, r := range t.f.rules {
		if t.matches[i] > 0 {
			continue
		}
		switch {
		case t.errored[i] && r.GetOnError() != nil:
			md.put(r.GetOnError(), nil)
		case t.missing[i] && r.GetOnMissing() != nil:
			md.put(r.GetOnMissing(), nil)
		}
	}
	md.commit()
}

// selectParserValue is the content parser's extraction: strings, numbers,
// booleans, and objects (as their JSON text); arrays and null are missing.
func selectParserValue(doc map[string]any, r *jsonmetav3.JsonToMetadata_Rule) (any, bool) {
	keys := make([]string, 0, len(r.GetSelectors()))
	for _, s := range r.GetSelectors() {
		keys = append(keys, s.GetKey())
	}
	v, ok := selectJSON(doc, keys)
	if !ok {
		return nil, false
	}
	switch x := v.(type) {
	case string, json.Number, bool:
		return x, true
	case map[string]any:
		b, err := json.Marshal(x)
		return string(b), err == nil
	}
	return nil, false
}

// parserValue converts as the JSON content parser does; a value that does
// not convert (a non-numeric string as NUMBER) is not written.
func parserValue(v any, t jsonmetav3.JsonToMetadata_ValueType) *structpb.Value {
	switch t {
	case jsonmetav3.JsonToMetadata_STRING:
		switch x := v.(type) {
		case string:
			return structpb.NewStringValue(x)
		case json.Number:
			return structpb.NewStringValue(x.String())
		case bool:
			return structpb.NewStringValue(strconv.FormatBool(x))
		}
	case jsonmetav3.JsonToMetadata_NUMBER:
		switch x := v.(type) {
		case json.Number:
			if f, err := x.Float64(); err == nil {
				return structpb.NewNumberValue(f)
			}
		case bool:
			return structpb.NewNumberValue(b2f(x))
		case string:
			if f, err := strconv.ParseFloat(x, 64); err == nil {
				return structpb.NewNumberValue(f)
			}
		}
	default:
		switch x := v.(type) {
		case string:
			return structpb.NewStringValue(x)
		case json.Number:
			if f, err := x.Float64(); err == nil {
				return structpb.NewNumberValue(f)
			}
		case bool:
			return structpb.NewBoolValue(x)
		}
	}
	return nil
}

// nextSSEEvent finds the first event in buf: it ends at a blank line (any
// of \n, \r\n, \r line ends); at the end of the body the remainder is an
// event too.
func nextSSEEvent(buf []byte, eos bool) (ev, rest []byte, ok bool) {
	i := 0
	lineStart := 0
	for i < len(buf) {
		c := buf[i]
		if c != '\n' && c != '\r' {
			i++
			continue
		}
		end := i + 1
		if c == '\r' {
			if end == len(buf) && !eos {
				return nil, buf, false // a \n may follow
			}
			if end < len(buf) && buf[end] == '\n' {
				end++
			}
		}
		if i == lineStart { // an empty line ends the event
			return buf[:lineStart], buf[end:], true
		}
		lineStart, i = end, end
	}
	if eos {
		return buf, nil, true
	}
	return nil, buf, false
}

// sseData joins an event's data fields with "\n" (ok false: no data field).
func sseData(ev []byte) (string, bool) {
	var parts []string
	found := false
	for _, line := range strings.FieldsFunc(string(ev), func(r rune) bool { return r == '\n' || r == '\r' }) {
		name, value, _ := strings.Cut(line, ":")
		if name != "data" {
			continue
		}
		found = true
		parts = append(parts, strings.TrimPrefix(value, " "))
	}
	return strings.Join(parts, "\n"), found
}
