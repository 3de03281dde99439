package emulator

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	extprocsvc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// errInvalidMutation is a mutation Envoy refuses with a 500 local reply.
var errInvalidMutation = errors.New("invalid mutation")

type checkOp int

const (
	opSet checkOp = iota
	opAppend
	opRemove
)

type checkResult int

const (
	checkOK checkResult = iota
	checkIgnore
	checkFail
)

// checker mirrors Envoy's MutationRules::Checker
// (source/extensions/filters/common/mutation_rules/mutation_rules.cc).
type checker struct {
	allowAllRouting, allowEnvoy, disallowSystem, disallowAll, disallowIsError bool
	allow, disallow                                                           *regexp.Regexp
}

func newChecker(r *mutationrulesv3.HeaderMutationRules) (*checker, error) {
	c := &checker{}
	if r == nil {
		return c, nil
	}
	c.allowAllRouting = r.GetAllowAllRouting().GetValue()
	c.allowEnvoy = r.GetAllowEnvoy().GetValue()
	c.disallowSystem = r.GetDisallowSystem().GetValue()
	c.disallowAll = r.GetDisallowAll().GetValue()
	c.disallowIsError = r.GetDisallowIsError().GetValue()
	var err error
	if c.allow, err = compileRegex(r.GetAllowExpression()); err != nil {
		return nil, fmt.Errorf("mutation_rules.allow_expression: %w", err)
	}
	if c.disallow, err = compileRegex(r.GetDisallowExpression()); err != nil {
		return nil, fmt.Errorf("mutation_rules.disallow_expression: %w", err)
	}
	return c, nil
}

// compileRegex compiles an Envoy RegexMatcher (RE2, full match).
func compileRegex(m *matcherv3.RegexMatcher) (*regexp.Regexp, error) {
	if m == nil {
		return nil, nil
	}
	return regexp.Compile("^(?:" + m.GetRegex() + ")$")
}

var routingHeaders = map[string]bool{"host": true, ":authority": true, ":method": true, ":scheme": true}

func (c *checker) check(op checkOp, name, value string) checkResult {
	if c.allowed(op, name) && (op == opRemove || validCheckedValue(name, value)) {
		return checkOK
	}
	if c.disallowIsError {
		return checkFail
	}
	return checkIgnore
}

func (c *checker) allowed(op checkOp, name string) bool {
	if op == opRemove && (strings.HasPrefix(name, ":") || name == "host") {
		return false
	}
	if c.disallow != nil && c.disallow.MatchString(name) {
		return false
	}
	if c.allow != nil && c.allow.MatchString(name) {
		return true
	}
	if c.disallowAll {
		return false
	}
	if !c.allowAllRouting && routingHeaders[name] {
		return false
	}
	if strings.HasPrefix(name, ":") && (op == opAppend || c.disallowSystem) {
		return false
	}
	if !c.allowEnvoy && strings.HasPrefix(name, "x-envoy") {
		return false
	}
	return true
}

func validCheckedValue(name, value string) bool {
	if !strings.HasPrefix(name, ":") && !validHeaderValue(value) {
		return false
	}
	switch name {
	case "host", ":authority":
		return value != "" && !strings.ContainsAny(value, " /?#@")
	case ":scheme":
		return value == "http" || value == "https"
	case ":status":
		n, err := strconv.ParseUint(value, 10, 32)
		return err == nil && n >= 200
	}
	return true
}

// mutationResult counts what a HeaderMutation did.
type mutationResult struct {
	rejected int
}

// applyHeaderMutation applies m to h exactly as Envoy's
// MutationUtils::applyHeaderMutations: removals first, then sets in order;
// the value comes from raw_value (value alone gives an empty header, both is
// an error); only the legacy append flag counts; rules are checked per entry.
// removeContentLength drops any attempt to set content-length.
func applyHeaderMutation(m *extprocsvc.HeaderMutation, h *headerMap, replacing bool, c *checker, removeContentLength bool) (mutationResult, error) {
	var res mutationResult
	if m == nil {
		return res, nil
	}
	for _, raw := range m.GetRemoveHeaders() {
		name := strings.ToLower(raw)
		if !validHeaderName(name) {
			return res, fmt.Errorf("%w: invalid header name %q in remove_headers", errInvalidMutation, raw)
		}
		switch c.check(opRemove, name, "") {
		case checkOK:
			h.remove(name)
		case checkIgnore:
			res.rejected++
		case checkFail:
			res.rejected++
			return res, fmt.Errorf("%w: invalid attempt to remove %s", errInvalidMutation, name)
		}
	}
	for _, sh := range m.GetSetHeaders() {
		hv := sh.GetHeader()
		if hv == nil {
			continue
		}
		name := strings.ToLower(hv.GetKey())
		if !validHeaderName(name) {
			return res, fmt.Errorf("%w: invalid header name %q", errInvalidMutation, hv.GetKey())
		}
		if hv.GetValue() != "" && len(hv.GetRawValue()) > 0 {
			return res, fmt.Errorf("%w: header %s has both value and raw_value", errInvalidMutation, name)
		}
		value := string(hv.GetRawValue())
		if !validHeaderValue(value) {
			return res, fmt.Errorf("%w: invalid value for header %s", errInvalidMutation, name)
		}
		if removeContentLength && name == "content-length" {
			continue
		}
		appendValue := sh.GetAppend().GetValue()
		op := opSet
		if appendValue && h.has(hostKey(name)) {
			op = opAppend
		}
		cr := c.check(op, name, value)
		if replacing && name == ":method" {
			cr = checkOK
		}
		switch cr {
		case checkOK:
			if appendValue {
				h.add(hostKey(name), value)
			} else {
				h.set(hostKey(name), value)
			}
		case checkIgnore:
			res.rejected++
		case checkFail:
			res.rejected++
			return res, fmt.Errorf("%w: invalid attempt to modify %s", errInvalidMutation, name)
		}
	}
	return res, nil
}

// hostKey maps the legacy host header onto :authority, which is the same
// entry in Envoy's request header map.
func hostKey(name string) string {
	if name == "host" {
		return ":authority"
	}
	return name
}

// applyBodyMutation is MutationUtils::applyBodyMutations.
func applyBodyMutation(m *extprocsvc.BodyMutation, body []byte) []byte {
	switch mm := m.GetMutation().(type) {
	case *extprocsvc.BodyMutation_ClearBody:
		if mm.ClearBody {
			return nil
		}
	case *extprocsvc.BodyMutation_Body:
		return append([]byte(nil), mm.Body...)
	}
	return body
}
