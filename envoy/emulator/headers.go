package emulator

import (
	"net/http"
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// field is one header entry. Keys are always lower case, as in Envoy's
// header maps; duplicates stay separate entries.
type field struct {
	key, value string
}

// headerMap is an ordered, multi-valued, lower-case header map, the shape
// Envoy's Http::HeaderMap has: pseudo-headers first, then the rest.
type headerMap struct {
	fields []field
}

func (m *headerMap) get(key string) (string, bool) {
	for _, f := range m.fields {
		if f.key == key {
			return f.value, true
		}
	}
	return "", false
}

func (m *headerMap) value(key string) string {
	v, _ := m.get(key)
	return v
}

func (m *headerMap) has(key string) bool {
	_, ok := m.get(key)
	return ok
}

func (m *headerMap) values(key string) []string {
	var out []string
	for _, f := range m.fields {
		if f.key == key {
			out = append(out, f.value)
		}
	}
	return out
}

// add appends an entry (Envoy addCopy).
func (m *headerMap) add(key, value string) {
	key = strings.ToLower(key)
	if strings.HasPrefix(key, ":") {
		// Pseudo-headers stay in front, as Envoy keeps them.
		i := 0
		for i < len(m.fields) && strings.HasPrefix(m.fields[i].key, ":") {
			i++
		}
		m.fields = append(m.fields, field{})
		copy(m.fields[i+1:], m.fields[i:])
		m.fields[i] = field{key, value}
		return
	}
	m.fields = append(m.fields, field{key, value})
}

// set replaces every value of key with one (Envoy setCopy): the first entry
// keeps its position, the others are removed.
func (m *headerMap) set(key, value string) {
	key = strings.ToLower(key)
	out := m.fields[:0]
	done := false
	for _, f := range m.fields {
		if f.key == key {
			if done {
				continue
			}
			f.value = value
			done = true
		}
		out = append(out, f)
	}
	m.fields = out
	if !done {
		m.add(key, value)
	}
}

func (m *headerMap) remove(key string) {
	key = strings.ToLower(key)
	out := m.fields[:0]
	for _, f := range m.fields {
		if f.key != key {
			out = append(out, f)
		}
	}
	m.fields = out
}

func (m *headerMap) clone() *headerMap {
	return &headerMap{fields: append([]field(nil), m.fields...)}
}

// proto renders the map the way Envoy sends it to an external processor:
// one HeaderValue per entry, lower-case keys, the value in raw_value.
func (m *headerMap) proto() *corev3.HeaderMap {
	out := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(m.fields))}
	for _, f := range m.fields {
		out.Headers = append(out.Headers, &corev3.HeaderValue{Key: f.key, RawValue: []byte(f.value)})
	}
	return out
}

// fromProto reads a header map as an external processor receives it
// (the value in raw_value, or in value).
func fromProto(hm *corev3.HeaderMap) *headerMap {
	m := &headerMap{fields: make([]field, 0, len(hm.GetHeaders()))}
	for _, hv := range hm.GetHeaders() {
		v := string(hv.GetRawValue())
		if v == "" {
			v = hv.GetValue()
		}
		m.add(hv.GetKey(), v)
	}
	return m
}

// httpHeader copies the regular (non-pseudo) entries into an http.Header.
func (m *headerMap) httpHeader() http.Header {
	h := make(http.Header, len(m.fields))
	for _, f := range m.fields {
		if strings.HasPrefix(f.key, ":") {
			continue
		}
		h[http.CanonicalHeaderKey(f.key)] = append(h[http.CanonicalHeaderKey(f.key)], f.value)
	}
	return h
}

// fromHTTP appends every entry of h, lower-cased, in sorted key order (Go's
// http.Header has no order across keys).
func (m *headerMap) fromHTTP(h http.Header) {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			m.fields = append(m.fields, field{strings.ToLower(k), v})
		}
	}
}

// hopByHop are the connection-level headers a proxy never forwards.
var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true, "te": true, "trailer": true,
}

// validHeaderName reports whether name is a valid lower-case HTTP field name
// (or pseudo-header), as Envoy's header_utility checks it.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	s := name
	if s[0] == ':' {
		s = s[1:]
		if s == "" {
			return false
		}
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// validHeaderValue rejects NUL, CR and LF, as Envoy's headerValueIsValid does.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case 0, '\r', '\n':
			return false
		}
	}
	return true
}

// byteSize is Envoy's HeaderMap::byteSize: the length of every key and value.
func (h *headerMap) byteSize() int {
	n := 0
	for _, f := range h.fields {
		n += len(f.key) + len(f.value)
	}
	return n
}
