package emulator

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

type routeTable struct {
	cfg    *routev3.RouteConfiguration
	vhosts []*vhost
}

type vhost struct {
	cfg    *routev3.VirtualHost
	routes []*route
}

type route struct {
	cfg     *routev3.Route
	vh      *vhost
	regex   *regexp.Regexp
	headers []*headerMatch
}

type headerMatch struct {
	cfg   *routev3.HeaderMatcher
	regex *regexp.Regexp
	str   *stringMatch
}

type stringMatch struct {
	cfg   *matcherv3.StringMatcher
	regex *regexp.Regexp
}

func newStringMatch(m *matcherv3.StringMatcher) (*stringMatch, error) {
	s := &stringMatch{cfg: m}
	if sr := m.GetSafeRegex(); sr != nil {
		re, err := compileRegex(sr)
		if err != nil {
			return nil, err
		}
		s.regex = re
	}
	return s, nil
}

func (s *stringMatch) match(v string) bool {
	ic := s.cfg.GetIgnoreCase()
	eq := func(a, b string) bool {
		if ic {
			return strings.EqualFold(a, b)
		}
		return a == b
	}
	switch p := s.cfg.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return eq(v, p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return len(v) >= len(p.Prefix) && eq(v[:len(p.Prefix)], p.Prefix)
	case *matcherv3.StringMatcher_Suffix:
		return len(v) >= len(p.Suffix) && eq(v[len(v)-len(p.Suffix):], p.Suffix)
	case *matcherv3.StringMatcher_Contains:
		if ic {
			return strings.Contains(strings.ToLower(v), strings.ToLower(p.Contains))
		}
		return strings.Contains(v, p.Contains)
	case *matcherv3.StringMatcher_SafeRegex:
		return s.regex.MatchString(v)
	}
	return false
}

func newRouteTable(rc *routev3.RouteConfiguration) (*routeTable, error) {
	t := &routeTable{cfg: rc}
	for _, vhc := range rc.GetVirtualHosts() {
		vh := &vhost{cfg: vhc}
		if err := checkRetryPolicy(vhc.GetRetryPolicy()); err != nil {
			return nil, fmt.Errorf("virtual_host %q: %w", vhc.GetName(), err)
		}
		for i, rcfg := range vhc.GetRoutes() {
			r := &route{cfg: rcfg, vh: vh}
			if err := r.compileMatch(); err != nil {
				return nil, fmt.Errorf("virtual_host %q route %d: %w", vhc.GetName(), i, err)
			}
			if err := checkRetryPolicy(rcfg.GetRoute().GetRetryPolicy()); err != nil {
				return nil, fmt.Errorf("virtual_host %q route %d: %w", vhc.GetName(), i, err)
			}
			switch rcfg.GetAction().(type) {
			case *routev3.Route_Route, *routev3.Route_DirectResponse:
			default:
				return nil, fmt.Errorf("virtual_host %q route %d: action %T is not emulated", vhc.GetName(), i, rcfg.GetAction())
			}
			vh.routes = append(vh.routes, r)
		}
		t.vhosts = append(t.vhosts, vh)
	}
	return t, nil
}

// selectVirtualHost follows Envoy's domain precedence: exact, then the
// longest suffix wildcard, then the longest prefix wildcard, then "*".
func (t *routeTable) selectVirtualHost(authority string) *vhost {
	host := strings.ToLower(authority)
	type cand struct {
		vh    *vhost
		class int // 0 exact, 1 suffix, 2 prefix, 3 any
		n     int
	}
	var cands []cand
	for _, vh := range t.vhosts {
		for _, d := range vh.cfg.GetDomains() {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				cands = append(cands, cand{vh, 3, 0})
			case strings.HasPrefix(d, "*") && strings.HasSuffix(host, d[1:]) && len(host) > len(d)-1:
				cands = append(cands, cand{vh, 1, len(d)})
			case strings.HasSuffix(d, "*") && strings.HasPrefix(host, d[:len(d)-1]) && len(host) > len(d)-1:
				cands = append(cands, cand{vh, 2, len(d)})
			case d == host:
				cands = append(cands, cand{vh, 0, len(d)})
			}
		}
	}
	if len(cands) == 0 {
		return nil
	}
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].class != cands[j].class {
			return cands[i].class < cands[j].class
		}
		return cands[i].n > cands[j].n
	})
	return cands[0].vh
}

// match selects the route for the request headers, nil when none matches.
func (t *routeTable) match(h *headerMap) *route {
	vh := t.selectVirtualHost(h.value(":authority"))
	if vh == nil {
		return nil
	}
	path := h.value(":path")
	pathOnly := path
	if i := strings.IndexAny(pathOnly, "?#"); i >= 0 {
		pathOnly = pathOnly[:i]
	}
	for _, r := range vh.routes {
		if r.matches(h, path, pathOnly) {
			return r
		}
	}
	return nil
}

func (r *route) matches(h *headerMap, path, pathOnly string) bool {
	m := r.cfg.GetMatch()
	cs := m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()
	eq := func(a, b string) bool {
		if cs {
			return a == b
		}
		return strings.EqualFold(a, b)
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		if len(path) < len(p.Prefix) || !eq(path[:len(p.Prefix)], p.Prefix) {
			return false
		}
	case *routev3.RouteMatch_Path:
		if !eq(pathOnly, p.Path) {
			return false
		}
	case *routev3.RouteMatch_PathSeparatedPrefix:
		pre := p.PathSeparatedPrefix
		if !(eq(pathOnly, pre) || (len(pathOnly) > len(pre) && eq(pathOnly[:len(pre)], pre) && pathOnly[len(pre)] == '/')) {
			return false
		}
	case *routev3.RouteMatch_SafeRegex:
		if !r.regex.MatchString(pathOnly) {
			return false
		}
	}
	for _, hm := range r.headers {
		if !hm.matches(h) {
			return false
		}
	}
	return true
}

func (hm *headerMatch) matches(h *headerMap) bool {
	c := hm.cfg
	name := strings.ToLower(c.GetName())
	vals := h.values(hostKey(name))
	present := len(vals) > 0
	value := strings.Join(vals, ",")
	if !present && c.GetTreatMissingHeaderAsEmpty() {
		present = true
	}
	var ok bool
	switch s := c.GetHeaderMatchSpecifier().(type) {
	case nil:
		ok = present
	case *routev3.HeaderMatcher_PresentMatch:
		// present_match: false matches a missing header.
		ok = present == s.PresentMatch
		if c.GetInvertMatch() {
			return !ok
		}
		return ok
	case *routev3.HeaderMatcher_ExactMatch:
		ok = present && value == s.ExactMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		ok = present && strings.HasPrefix(value, s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		ok = present && strings.HasSuffix(value, s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		ok = present && strings.Contains(value, s.ContainsMatch)
	case *routev3.HeaderMatcher_SafeRegexMatch:
		ok = present && hm.regex.MatchString(value)
	case *routev3.HeaderMatcher_StringMatch:
		ok = present && hm.str.match(value)
	case *routev3.HeaderMatcher_RangeMatch:
		n, err := strconv.ParseInt(value, 10, 64)
		ok = present && err == nil && n >= s.RangeMatch.GetStart() && n < s.RangeMatch.GetEnd()
	}
	if !present {
		// A missing header never matches, inverted or not.
		return false
	}
	if c.GetInvertMatch() {
		return !ok
	}
	return ok
}

// timeouts of a route action: Envoy's default route timeout is 15s; 0 disables.
func (r *route) timeouts() (total, idle time.Duration) {
	ra := r.cfg.GetRoute()
	total = 15 * time.Second
	if ra.GetTimeout() != nil {
		total = ra.GetTimeout().AsDuration()
	}
	if ra.GetIdleTimeout() != nil {
		idle = ra.GetIdleTimeout().AsDuration()
	}
	return total, idle
}

func (r *route) name() string { return r.cfg.GetName() }

// bufferLimit is the route's per_request_buffer_limit_bytes, or def.
func (r *route) bufferLimit(def int) int {
	if r == nil {
		return def
	}
	if v := r.cfg.GetPerRequestBufferLimitBytes(); v != nil {
		return int(v.GetValue())
	}
	if v := r.vh.cfg.GetPerRequestBufferLimitBytes(); v != nil {
		return int(v.GetValue())
	}
	return def
}

// applyHeaderOptions applies a level's removals then additions, as Envoy's
// HeaderParser does. format expands %COMMAND% values.
func applyHeaderOptions(h *headerMap, remove []string, add []*corev3.HeaderValueOption, format func(string) string) {
	for _, k := range remove {
		h.remove(hostKey(strings.ToLower(k)))
	}
	for _, o := range add {
		key := hostKey(strings.ToLower(o.GetHeader().GetKey()))
		v := o.GetHeader().GetValue()
		if v == "" && len(o.GetHeader().GetRawValue()) > 0 {
			v = string(o.GetHeader().GetRawValue())
		}
		if format != nil && strings.Contains(v, "%") {
			v = format(v)
		}
		if v == "" && !o.GetKeepEmptyValue() {
			continue
		}
		action := o.GetAppendAction()
		if o.GetAppend() != nil {
			if o.GetAppend().GetValue() {
				action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			} else {
				action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			}
		}
		switch action {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			h.add(key, v)
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			if !h.has(key) {
				h.add(key, v)
			}
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			h.set(key, v)
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			if h.has(key) {
				h.set(key, v)
			}
		}
	}
}

// perFilterConfig is the most specific typed_per_filter_config for a filter
// (route over virtual host over route configuration).
func (r *route) perFilterConfig(name string) *anypb.Any {
	if a, ok := r.cfg.GetTypedPerFilterConfig()[name]; ok {
		return a
	}
	if a, ok := r.vh.cfg.GetTypedPerFilterConfig()[name]; ok {
		return a
	}
	return nil
}

// filterEnabled applies HttpFilter.disabled and a route's FilterConfig
// (disabled: false, the default, turns a disabled filter on).
func filterEnabled(f *httpFilter, r *route) bool {
	if r == nil {
		return !f.disabled
	}
	a := r.perFilterConfig(f.name)
	var fc routev3.FilterConfig
	if a != nil && a.MessageIs(&fc) && a.UnmarshalTo(&fc) == nil {
		return !fc.GetDisabled()
	}
	return !f.disabled
}

// compileMatch prepares the path and header matchers of r.cfg.match.
func (r *route) compileMatch() error {
	m := r.cfg.GetMatch()
	switch m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix, *routev3.RouteMatch_Path, *routev3.RouteMatch_PathSeparatedPrefix:
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(m.GetSafeRegex())
		if err != nil {
			return fmt.Errorf("safe_regex: %w", err)
		}
		r.regex = re
	default:
		return fmt.Errorf("path specifier %T is not emulated", m.GetPathSpecifier())
	}
	if len(m.GetQueryParameters()) > 0 || m.GetRuntimeFraction() != nil || m.GetGrpc() != nil || m.GetTlsContext() != nil || len(m.GetDynamicMetadata()) > 0 {
		return fmt.Errorf("query_parameters, runtime_fraction, grpc, tls_context and dynamic_metadata matchers are not emulated")
	}
	for _, hm := range m.GetHeaders() {
		h := &headerMatch{cfg: hm}
		if sr := hm.GetSafeRegexMatch(); sr != nil {
			re, err := compileRegex(sr)
			if err != nil {
				return fmt.Errorf("header %q: %w", hm.GetName(), err)
			}
			h.regex = re
		}
		if sm := hm.GetStringMatch(); sm != nil {
			sm2, err := newStringMatch(sm)
			if err != nil {
				return fmt.Errorf("header %q: %w", hm.GetName(), err)
			}
			h.str = sm2
		}
		r.headers = append(r.headers, h)
	}
	return nil
}

// matchesRequest applies r's match to request headers h.
func (r *route) matchesRequest(h *headerMap) bool {
	path := h.value(":path")
	pathOnly := path
	if i := strings.IndexAny(pathOnly, "?#"); i >= 0 {
		pathOnly = pathOnly[:i]
	}
	return r.matches(h, path, pathOnly)
}
