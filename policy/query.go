package policy

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrQuery is a query string keymux cannot read safely.
var ErrQuery = errors.New("malformed query")

// paramName reports whether the query part p ("name=value") names
// parameter name. Names are compared percent-decoded, trimmed and
// case-insensitively (model, MODEL, mo%64el), so that no spelling the
// upstream might read reaches it past keymux; bad is set when p's name
// does not decode.
func paramName(p, name string) (match, bad bool) {
	n, _, _ := strings.Cut(p, "=")
	d, err := url.QueryUnescape(n)
	if err != nil {
		return false, true
	}
	return strings.EqualFold(strings.TrimSpace(d), name), false
}

// QueryParam reads parameter name from query ("" or "?…"): its value,
// percent-decoded. It fails (wrapping ErrQuery) when a part's name or the
// value does not decode, or when the parameter appears more than once
// (which one would the upstream take?). ok is false when it is absent.
func QueryParam(query, name string) (value string, ok bool, err error) {
	for p := range strings.SplitSeq(strings.TrimPrefix(query, "?"), "&") {
		if p == "" {
			continue
		}
		match, bad := paramName(p, name)
		if bad {
			return "", false, fmt.Errorf("%w: a query parameter name does not decode", ErrQuery)
		}
		if !match {
			continue
		}
		if ok {
			return "", false, fmt.Errorf("%w: query parameter %s appears more than once", ErrQuery, name)
		}
		_, raw, _ := strings.Cut(p, "=")
		if value, err = url.QueryUnescape(raw); err != nil {
			return "", false, fmt.Errorf("%w: query parameter %s does not decode", ErrQuery, name)
		}
		ok = true
	}
	return value, ok, nil
}

// WithQueryParam returns query ("" or "?…") with every spelling of
// parameter name removed (see paramName; parts whose name does not decode
// go too) and, when value is not "", name=value in the place of the first
// one (at the end when there was none). Every other part is kept as the
// client wrote it. The result is "" or starts with "?".
func WithQueryParam(query, name, value string) string {
	var b strings.Builder
	put := func(p string) {
		if b.Len() == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(p)
	}
	set := value == ""
	for p := range strings.SplitSeq(strings.TrimPrefix(query, "?"), "&") {
		if p == "" {
			continue
		}
		match, bad := paramName(p, name)
		switch {
		case bad:
		case !match:
			put(p)
		case !set:
			put(name + "=" + url.QueryEscape(value))
			set = true
		}
	}
	if !set {
		put(name + "=" + url.QueryEscape(value))
	}
	return b.String()
}
