package envoy

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// FieldError is one problem found in an Envoy configuration, located by the
// path of the offending field, e.g.
// "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[1].typed_config.processing_mode.request_body_mode".
// Inside a typed_config the path continues with the fields of the message the
// Any holds. Path is empty when the problem concerns the whole document.
type FieldError struct {
	Path   string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Reason
	}
	return e.Path + ": " + e.Reason
}

// Snippet is the document shape of an ingress snippet: the pieces keymux needs
// in an existing Envoy, each to be pasted where its key says.
//
//	early_header_mutation_extensions: [...] # HttpConnectionManager.early_header_mutation_extensions
//	http_filters: [...]                     # HttpConnectionManager.http_filters, before the router
//	routes: [...]                           # the clients' virtual host, before its other routes
//	virtual_hosts: [...]                    # the route configuration (the catch-all keymux re-routes to)
//	access_log: [...]                       # HttpConnectionManager.access_log (keymux's http_grpc logger)
//	clusters: [...]                         # static_resources.clusters (or CDS)
type Snippet struct {
	EarlyHeaderMutationExtensions []*corev3.TypedExtensionConfig
	HTTPFilters                   []*hcmv3.HttpFilter
	Routes                        []*routev3.Route
	VirtualHosts                  []*routev3.VirtualHost
	AccessLog                     []*accesslogv3.AccessLog
	Clusters                      []*clusterv3.Cluster
}

// snippetKeys maps a snippet's top-level keys to the message of one element.
var snippetKeys = map[string]protoreflect.MessageDescriptor{
	"early_header_mutation_extensions": (&corev3.TypedExtensionConfig{}).ProtoReflect().Descriptor(),
	"http_filters":                     (&hcmv3.HttpFilter{}).ProtoReflect().Descriptor(),
	"routes":                           (&routev3.Route{}).ProtoReflect().Descriptor(),
	"virtual_hosts":                    (&routev3.VirtualHost{}).ProtoReflect().Descriptor(),
	"clusters":                         (&clusterv3.Cluster{}).ProtoReflect().Descriptor(),
	"access_log":                       (&accesslogv3.AccessLog{}).ProtoReflect().Descriptor(),
}

// maxErrors bounds how many problems one validation reports.
const maxErrors = 50

// ValidateFile checks an Envoy configuration file the way `keymux validate
// --envoy` does: a v3 Bootstrap, or an ingress snippet (see Snippet), is
// decoded with unknown fields rejected and every typed_config resolved; the
// protoc-gen-validate rules of every message, including each message held in
// an Any, must hold; and the references the protos cannot express must resolve
// (every route's cluster, the ext_proc gRPC cluster, the dynamic metadata
// namespaces the access log reads). The error lists every problem found, each
// a *FieldError naming the offending field path.
func ValidateFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read envoy config: %w", err)
	}
	if err := Validate(data); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// Validate is ValidateFile on a document already read (YAML or JSON).
func Validate(data []byte) error {
	doc, err := decodeDocument(data)
	if err != nil {
		return err
	}
	errs := &errList{}
	if isSnippet(doc) {
		s := decodeSnippet(doc.(map[string]any), errs)
		if errs.empty() {
			checkSnippet(s, errs)
		}
		return errs.err()
	}
	b := &bootstrapv3.Bootstrap{}
	decodeInto(doc, "", b, errs)
	if errs.empty() {
		checkBootstrap(b, errs)
	}
	return errs.err()
}

// LoadSnippet reads an ingress snippet (see Snippet) from a YAML or JSON file,
// with the same decoding rules as Unmarshal. It does not run the cross-reference
// checks of ValidateFile.
func LoadSnippet(path string) (*Snippet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read envoy snippet: %w", err)
	}
	doc, err := decodeDocument(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !isSnippet(doc) {
		return nil, fmt.Errorf("%s: not an ingress snippet: want top-level keys among %s", path, strings.Join(slices.Sorted(maps.Keys(snippetKeys)), ", "))
	}
	errs := &errList{}
	s := decodeSnippet(doc.(map[string]any), errs)
	if err := errs.err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// decodeDocument turns YAML or JSON into generic JSON values (numbers kept as
// json.Number so nothing is rounded before protojson sees it).
func decodeDocument(data []byte) (any, error) {
	// Strict: a key given twice in one mapping is an error, not "the last wins".
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, &FieldError{Reason: strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")}
	}
	dec := json.NewDecoder(strings.NewReader(string(js)))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, &FieldError{Reason: "json: " + err.Error()}
	}
	if doc == nil {
		return nil, &FieldError{Reason: "empty document"}
	}
	if _, ok := doc.(map[string]any); !ok {
		return nil, &FieldError{Reason: "want an object at the top level, got " + describe(doc)}
	}
	return doc, nil
}

// isSnippet tells a snippet from a bootstrap: no Bootstrap field shares a
// name with a snippet key.
func isSnippet(doc any) bool {
	m, ok := doc.(map[string]any)
	if !ok {
		return false
	}
	for k := range m {
		if _, ok := snippetKeys[k]; ok {
			return true
		}
	}
	return false
}

func decodeSnippet(doc map[string]any, errs *errList) *Snippet {
	s := &Snippet{}
	for _, k := range slices.Sorted(maps.Keys(doc)) {
		md, ok := snippetKeys[k]
		if !ok {
			errs.add(k, "unknown field %q in an ingress snippet (want %s)", k, strings.Join(slices.Sorted(maps.Keys(snippetKeys)), ", "))
			continue
		}
		list, ok := doc[k].([]any)
		if !ok {
			errs.add(k, "want a list of %s, got %s", md.FullName(), describe(doc[k]))
			continue
		}
		for i, item := range list {
			p := fmt.Sprintf("%s[%d]", k, i)
			switch k {
			case "early_header_mutation_extensions":
				m := &corev3.TypedExtensionConfig{}
				decodeInto(item, p, m, errs)
				s.EarlyHeaderMutationExtensions = append(s.EarlyHeaderMutationExtensions, m)
			case "http_filters":
				m := &hcmv3.HttpFilter{}
				decodeInto(item, p, m, errs)
				s.HTTPFilters = append(s.HTTPFilters, m)
			case "routes":
				m := &routev3.Route{}
				decodeInto(item, p, m, errs)
				s.Routes = append(s.Routes, m)
			case "virtual_hosts":
				m := &routev3.VirtualHost{}
				decodeInto(item, p, m, errs)
				s.VirtualHosts = append(s.VirtualHosts, m)
			case "clusters":
				m := &clusterv3.Cluster{}
				decodeInto(item, p, m, errs)
				s.Clusters = append(s.Clusters, m)
			case "access_log":
				m := &accesslogv3.AccessLog{}
				decodeInto(item, p, m, errs)
				s.AccessLog = append(s.AccessLog, m)
			}
		}
	}
	return s
}

// Unmarshal decodes YAML or JSON into msg the way Envoy does: unknown fields
// are errors, every typed_config Any must resolve to a registered type, and
// the protoc-gen-validate rules of msg and of every message held in an Any
// must hold. Errors are *FieldError values (joined) naming the field path.
func Unmarshal(data []byte, msg proto.Message) error {
	doc, err := decodeDocument(data)
	if err != nil {
		return err
	}
	errs := &errList{}
	decodeInto(doc, "", msg, errs)
	return errs.err()
}

// decodeInto checks v against msg's schema (locating unknown fields, bad
// enums, wrong JSON kinds and unresolvable Any types by path), then decodes it
// with protojson and runs the PGV rules on msg and on every Any inside it.
func decodeInto(v any, path string, msg proto.Message, errs *errList) {
	n := errs.len()
	(&schemaChecker{errs: errs}).message(path, v, msg.ProtoReflect().Descriptor())
	if errs.len() > n {
		return
	}
	js, err := json.Marshal(v)
	if err != nil {
		errs.add(path, "re-encode: %v", err)
		return
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, msg); err != nil {
		errs.add(path, "%s", cleanProtoErr(err))
		return
	}
	validateDeep(msg, path, errs)
}

// errList collects FieldErrors up to maxErrors.
type errList struct {
	list    []error
	dropped int
}

func (l *errList) add(path, format string, args ...any) {
	if len(l.list) >= maxErrors {
		l.dropped++
		return
	}
	l.list = append(l.list, &FieldError{Path: path, Reason: fmt.Sprintf(format, args...)})
}

func (l *errList) len() int    { return len(l.list) + l.dropped }
func (l *errList) empty() bool { return l.len() == 0 }

func (l *errList) err() error {
	if l.empty() {
		return nil
	}
	list := l.list
	if l.dropped > 0 {
		list = append(list[:len(list):len(list)], fmt.Errorf("… and %d more", l.dropped))
	}
	return errors.Join(list...)
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

var (
	protoErrPrefix = regexp.MustCompile(`^proto:[\s\x{00a0}]+`)
	protoErrPos    = regexp.MustCompile(`\(line \d+:\d+\):[\s\x{00a0}]*`)
)

// cleanProtoErr drops protojson's "proto: (line 1:234):" prefix: the
// position is in re-encoded JSON, not in the user's YAML.
func cleanProtoErr(err error) string {
	s := protoErrPrefix.ReplaceAllString(err.Error(), "")
	s = protoErrPos.ReplaceAllString(s, "")
	return strings.ReplaceAll(s, "\u00a0", " ")
}

func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case json.Number:
		return "number " + x.String()
	case string:
		return fmt.Sprintf("string %q", x)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// schemaChecker walks generic JSON against a message descriptor. protojson
// reports the first problem without a usable position; this walk names the
// field path of every unknown field, bad enum value, wrong JSON kind and
// unresolvable Any type.
type schemaChecker struct {
	errs *errList
}

const anyFullName protoreflect.FullName = "google.protobuf.Any"

// wellKnown are the types with a special JSON form; protojson checks them.
var wellKnown = map[protoreflect.FullName]bool{
	"google.protobuf.Duration": true, "google.protobuf.Timestamp": true, "google.protobuf.FieldMask": true,
	"google.protobuf.Struct": true, "google.protobuf.Value": true, "google.protobuf.ListValue": true,
	"google.protobuf.Empty": true, "google.protobuf.DoubleValue": true, "google.protobuf.FloatValue": true,
	"google.protobuf.Int64Value": true, "google.protobuf.UInt64Value": true, "google.protobuf.Int32Value": true,
	"google.protobuf.UInt32Value": true, "google.protobuf.BoolValue": true, "google.protobuf.StringValue": true,
	"google.protobuf.BytesValue": true,
}

func (c *schemaChecker) message(path string, v any, md protoreflect.MessageDescriptor) {
	if md.FullName() == anyFullName {
		c.anyValue(path, v)
		return
	}
	if wellKnown[md.FullName()] {
		c.wellKnown(path, v, md)
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		c.errs.add(path, "want an object (%s), got %s", md.FullName(), describe(v))
		return
	}
	oneofSeen := map[protoreflect.FullName]string{}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		p := joinPath(path, k)
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		if fd == nil {
			c.errs.add(p, "unknown field %q in %s", k, md.FullName())
			continue
		}
		val := obj[k]
		if val == nil && (fd.Message() == nil || fd.Message().FullName() != "google.protobuf.Value") {
			continue // protojson: null leaves the field unset
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if prev, dup := oneofSeen[od.FullName()]; dup {
				c.errs.add(p, "%q and %q are both set, but they are alternatives (oneof %s)", prev, k, od.Name())
				continue
			}
			oneofSeen[od.FullName()] = k
		}
		c.field(p, fd, val)
	}
}

func (c *schemaChecker) field(path string, fd protoreflect.FieldDescriptor, v any) {
	switch {
	case fd.IsMap():
		obj, ok := v.(map[string]any)
		if !ok {
			c.errs.add(path, "want an object (map), got %s", describe(v))
			return
		}
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			c.single(fmt.Sprintf("%s[%s]", path, k), fd.MapValue(), obj[k])
		}
	case fd.IsList():
		list, ok := v.([]any)
		if !ok {
			c.errs.add(path, "want a list, got %s", describe(v))
			return
		}
		for i, item := range list {
			c.single(fmt.Sprintf("%s[%d]", path, i), fd, item)
		}
	default:
		c.single(path, fd, v)
	}
}

func (c *schemaChecker) single(path string, fd protoreflect.FieldDescriptor, v any) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		c.message(path, v, fd.Message())
	case protoreflect.EnumKind:
		c.enum(path, fd.Enum(), v)
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			c.errs.add(path, "want true or false, got %s", describe(v))
		}
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			c.errs.add(path, "want a string, got %s", describe(v))
		}
	case protoreflect.BytesKind:
		if _, ok := v.(string); !ok {
			c.errs.add(path, "want a base64 string, got %s", describe(v))
		}
	default: // numbers: protojson takes a JSON number or a quoted one
		switch v.(type) {
		case json.Number, string:
		default:
			c.errs.add(path, "want a number, got %s", describe(v))
		}
	}
}

func (c *schemaChecker) enum(path string, ed protoreflect.EnumDescriptor, v any) {
	switch x := v.(type) {
	case string:
		if ed.Values().ByName(protoreflect.Name(x)) != nil {
			return
		}
		c.errs.add(path, "invalid value %q (want one of %s)", x, enumNames(ed))
		return
	case json.Number:
		if _, err := x.Int64(); err == nil {
			return
		}
	case nil:
		if ed.FullName() == "google.protobuf.NullValue" {
			return
		}
	}
	c.errs.add(path, "want one of %s, got %s", enumNames(ed), describe(v))
}

func enumNames(ed protoreflect.EnumDescriptor) string {
	vals := ed.Values()
	names := make([]string, 0, vals.Len())
	for i := 0; i < vals.Len(); i++ {
		names = append(names, string(vals.Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

// anyValue resolves "@type" and checks the rest against the named message.
func (c *schemaChecker) anyValue(path string, v any) {
	obj, ok := v.(map[string]any)
	if !ok {
		c.errs.add(path, "want an object with \"@type\", got %s", describe(v))
		return
	}
	rawType, has := obj["@type"]
	if !has {
		if len(obj) > 0 {
			c.errs.add(path, "missing \"@type\": a typed_config must name its message")
		}
		return
	}
	url, ok := rawType.(string)
	if !ok {
		c.errs.add(joinPath(path, "@type"), "want a string, got %s", describe(rawType))
		return
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil {
		c.errs.add(joinPath(path, "@type"), "unresolvable type %q: not an Envoy v3 message, or its extension is not registered (imports in envoy/config.go)", url)
		return
	}
	md := mt.Descriptor()
	rest := make(map[string]any, len(obj)-1)
	for k, x := range obj {
		if k != "@type" {
			rest[k] = x
		}
	}
	if wellKnown[md.FullName()] || md.FullName() == anyFullName {
		for _, k := range slices.Sorted(maps.Keys(rest)) {
			if k != "value" {
				c.errs.add(joinPath(path, k), "unknown field %q in an Any holding %s (want \"value\")", k, md.FullName())
			}
		}
		if val, ok := rest["value"]; ok {
			c.message(joinPath(path, "value"), val, md)
		}
		return
	}
	c.message(path, rest, md)
}

// wellKnown lets protojson judge a value with a special JSON form
// (durations, wrappers, Struct…), and files its error under path.
func (c *schemaChecker) wellKnown(path string, v any, md protoreflect.MessageDescriptor) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
	if err != nil {
		return // not linked in: protojson will say so
	}
	js, err := json.Marshal(v)
	if err != nil {
		c.errs.add(path, "re-encode: %v", err)
		return
	}
	if err := protojson.Unmarshal(js, mt.New().Interface()); err != nil {
		c.errs.add(path, "invalid %s %s: %s", md.Name(), describe(v), cleanProtoErr(err))
	}
}

// validateDeep runs the PGV rules on msg, then on the message inside every
// Any it holds, recursively: PGV's own ValidateAll never looks into an Any.
func validateDeep(msg proto.Message, path string, errs *errList) {
	if v, ok := msg.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			flattenPGV(err, path, msg.ProtoReflect().Descriptor(), errs)
		}
	}
	walkAnys(msg.ProtoReflect(), path, func(p string, a *anypb.Any) {
		if a.GetTypeUrl() == "" {
			return
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			errs.add(p, "cannot decode %s: %v", a.GetTypeUrl(), err)
			return
		}
		checkVersion(p, inner, errs)
		validateDeep(inner, p, errs)
	})
}

// walkAnys calls fn with the path of every Any reachable from m (not
// descending into the Anys themselves), in field order.
func walkAnys(m protoreflect.Message, path string, fn func(string, *anypb.Any)) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		p := joinPath(path, string(fd.Name()))
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				continue
			}
			mp := m.Get(fd).Map()
			var keys []protoreflect.MapKey
			mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			sort.Slice(keys, func(a, b int) bool { return keys[a].String() < keys[b].String() })
			for _, k := range keys {
				visitAny(fmt.Sprintf("%s[%s]", p, k.String()), mp.Get(k).Message(), fn)
			}
		case fd.IsList():
			if fd.Message() == nil {
				continue
			}
			l := m.Get(fd).List()
			for j := 0; j < l.Len(); j++ {
				visitAny(fmt.Sprintf("%s[%d]", p, j), l.Get(j).Message(), fn)
			}
		case fd.Message() != nil:
			visitAny(p, m.Get(fd).Message(), fn)
		}
	}
}

func visitAny(path string, m protoreflect.Message, fn func(string, *anypb.Any)) {
	if m.Descriptor().FullName() != anyFullName {
		walkAnys(m, path, fn)
		return
	}
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		a = &anypb.Any{}
		b, err := proto.Marshal(m.Interface())
		if err != nil || proto.Unmarshal(b, a) != nil {
			return
		}
	}
	fn(path, a)
}

// pgvError is what protoc-gen-validate generates for every message.
type pgvError interface {
	error
	Field() string
	Reason() string
	Cause() error
	Key() bool
}

// flattenPGV turns PGV's tree of errors (Go field names, "embedded message
// failed validation" wrappers) into one FieldError per violation with the
// proto field path.
func flattenPGV(err error, path string, md protoreflect.MessageDescriptor, errs *errList) {
	if me, ok := err.(interface{ AllErrors() []error }); ok {
		for _, e := range me.AllErrors() {
			flattenPGV(e, path, md, errs)
		}
		return
	}
	ve, ok := err.(pgvError)
	if !ok {
		errs.add(path, "%v", err)
		return
	}
	p, sub := pgvPath(path, ve.Field(), md)
	if ve.Cause() != nil && ve.Reason() == "embedded message failed validation" {
		flattenPGV(ve.Cause(), p, sub, errs)
		return
	}
	reason := ve.Reason()
	if ve.Key() {
		reason = "map key: " + reason
	}
	if ve.Cause() != nil {
		reason += ": " + ve.Cause().Error()
	}
	errs.add(p, "%s", reason)
}

// pgvPath maps a PGV field ("Listeners[0]", "StaticResources",
// "Providers[idp]", a oneof name) to its proto name under md, and returns the
// descriptor to resolve the next level with (nil when unknown).
func pgvPath(path, field string, md protoreflect.MessageDescriptor) (string, protoreflect.MessageDescriptor) {
	name, suffix := field, ""
	if i := strings.IndexByte(field, '['); i >= 0 {
		name, suffix = field[:i], field[i:]
	}
	if md != nil {
		fields := md.Fields()
		for i := 0; i < fields.Len(); i++ {
			fd := fields.Get(i)
			if goCamelCase(string(fd.Name())) != name {
				continue
			}
			var next protoreflect.MessageDescriptor
			switch {
			case fd.IsMap():
				next = fd.MapValue().Message()
			default:
				next = fd.Message()
			}
			return joinPath(path, string(fd.Name())) + suffix, next
		}
		oneofs := md.Oneofs()
		for i := 0; i < oneofs.Len(); i++ {
			if od := oneofs.Get(i); goCamelCase(string(od.Name())) == name {
				return joinPath(path, string(od.Name())) + suffix, nil
			}
		}
	}
	return joinPath(path, snakeCase(name)) + suffix, nil
}

// goCamelCase is protoc-gen-go's Go name for a proto field name.
func goCamelCase(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' && i+1 < len(s) && isLower(s[i+1]):
		case c == '.':
			b = append(b, '_')
		case c == '_' && (i == 0 || s[i-1] == '.'):
			b = append(b, 'X')
		case c == '_' && i+1 < len(s) && isLower(s[i+1]):
		case c >= '0' && c <= '9':
			b = append(b, c)
		default:
			if isLower(c) {
				c -= 'a' - 'A'
			}
			b = append(b, c)
			for ; i+1 < len(s) && isLower(s[i+1]); i++ {
				b = append(b, s[i+1])
			}
		}
	}
	return string(b)
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' }

// snakeCase is the fallback when a PGV field name has no descriptor.
func snakeCase(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 && (isLower(s[i-1]) || (s[i-1] >= '0' && s[i-1] <= '9')) {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}
