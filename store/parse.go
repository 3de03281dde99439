// Package store holds keymux's configuration: the document parsers shared by
// every source (file, Consul), the Builder that keeps the last good version of
// every document, the go-memdb mirror read lock-free by the hot path, the
// per-key Runtime state, and the file source.
package store

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keymux/keymux/policy"
)

// Kind names a document family, the middle part of a KV path.
type Kind string

// The document kinds.
const (
	KindSettings Kind = "settings"
	KindKeys     Kind = "keys"
	KindRules    Kind = "rules"
	KindClients  Kind = "clients"
)

// Valid reports whether k is one of the four document kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindSettings, KindKeys, KindRules, KindClients:
		return true
	}
	return false
}

// MaxIDLen is the longest key, rule or client id.
const MaxIDLen = 128

// MaxErrorWindow is the longest ejection.error_window a Runtime can count.
const MaxErrorWindow = errBuckets * time.Second

// KnownStrategies lists the accepted settings.strategy values: the
// strategies registered with policy.
func KnownStrategies() []string { return policy.Strategies() }

// DocError is a refused document: Doc is "kind/id" (or "settings"), Field
// the JSON field path when one is to blame. It never holds a secret.
type DocError struct {
	Doc    string
	Field  string
	Reason string
}

func (e *DocError) Error() string {
	if e.Field == "" {
		return e.Doc + ": " + e.Reason
	}
	return e.Doc + ": field " + strconv.Quote(e.Field) + ": " + e.Reason
}

func fieldErr(doc, field, format string, args ...any) error {
	return &DocError{Doc: doc, Field: field, Reason: fmt.Sprintf(format, args...)}
}

func docErr(doc, format string, args ...any) error {
	return &DocError{Doc: doc, Reason: fmt.Sprintf(format, args...)}
}

// ValidID reports whether id matches [A-Za-z0-9._-]{1,128}.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func checkID(doc, id string) error {
	if !ValidID(id) {
		return docErr(doc, "invalid id (want 1 to %d of A-Z a-z 0-9 . _ -)", MaxIDLen)
	}
	return nil
}

// docName is "kind/id", quoting an id that is not valid so that the name
// stays readable.
func docName(kind Kind, id string) string {
	if ValidID(id) {
		return string(kind) + "/" + id
	}
	return string(kind) + "/" + strconv.Quote(truncate(id, MaxIDLen))
}

// truncate cuts s to at most n bytes, on a UTF-8 boundary, and marks the cut
// with "…".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return policy.Truncate(s, n) + "…"
}

// decodeStrict decodes one JSON object into v, refusing unknown fields and
// trailing data. Its errors name the field and never echo input bytes.
func decodeStrict(doc string, raw []byte, v any) error {
	if string(bytes.TrimSpace(raw)) == "null" {
		return docErr(doc, "want a JSON object, got null")
	}
	if name, why := checkFieldNames(raw, v); name != "" {
		if why == "unknown" {
			return docErr(doc, "unknown field %q", truncate(name, 128))
		}
		return fieldErr(doc, truncate(name, 128), "appears twice")
	}
	if fd, ok := v.(memberDecoder); ok && json.Valid(raw) && fd.decodeMembers(raw) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonErr(doc, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return docErr(doc, "invalid JSON: data after the document")
	}
	return nil
}

// pathError is returned by the UnmarshalJSON of nested documents, which
// know their own path; the outer decoder passes it through unchanged.
type pathError struct {
	field   string
	reason  string
	unknown bool // field is an unknown field's full path
}

func (e *pathError) Error() string { return e.field + ": " + e.reason }

// decodeNested decodes the object at path prefix strictly.
func decodeNested(prefix string, raw []byte, v any) error {
	if name, why := checkFieldNames(raw, v); name != "" {
		if why == "unknown" {
			return &pathError{field: prefix + "." + name, unknown: true}
		}
		return &pathError{field: prefix + "." + truncate(name, 128), reason: "appears twice"}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		return nil
	}
	var pe *pathError
	if errors.As(err, &pe) {
		return err
	}
	de, ok := jsonErr("", err).(*DocError)
	if !ok {
		return err
	}
	if f, ok := strings.CutPrefix(de.Reason, "unknown field "); ok {
		name, _ := strconv.Unquote(f)
		return &pathError{field: prefix + "." + name, unknown: true}
	}
	if de.Field == "" {
		return &pathError{field: prefix, reason: de.Reason}
	}
	return &pathError{field: prefix + "." + de.Field, reason: de.Reason}
}

func jsonErr(doc string, err error) error {
	var pe *pathError
	if errors.As(err, &pe) {
		if pe.unknown {
			return docErr(doc, "unknown field %q", truncate(pe.field, 128))
		}
		return fieldErr(doc, pe.field, "%s", pe.reason)
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return docErr(doc, "invalid JSON at offset %d", se.Offset)
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return docErr(doc, "want a JSON object, got %s", te.Value)
		}
		want := jsonTypeName(te.Type.String())
		if outOfRange(te) {
			return fieldErr(doc, field, "%s out of range", want)
		}
		return fieldErr(doc, field, "want %s, got %s", want, truncate(te.Value, 64))
	case errors.Is(err, io.EOF):
		return docErr(doc, "empty document")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return docErr(doc, "invalid JSON: unexpected end of input")
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return docErr(doc, "unknown field %s", f)
	}
	// Other decoder errors do not carry input values; keep the message but
	// drop the package prefix.
	return docErr(doc, "invalid JSON: %s", strings.TrimPrefix(msg, "json: "))
}

// outOfRange reports whether a type error is a JSON number too large for
// its Go field: any number for a float, an integer literal for an integer.
func outOfRange(te *json.UnmarshalTypeError) bool {
	lit, ok := strings.CutPrefix(te.Value, "number ")
	if !ok || te.Type == nil {
		return false
	}
	switch te.Type.Kind() {
	case reflect.Float32, reflect.Float64:
		return true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strings.Trim(strings.TrimPrefix(lit, "-"), "0123456789") == ""
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strings.Trim(lit, "0123456789") == "" // a negative one is no unsigned integer at all
	}
	return false
}

// checkFieldNames looks at the member names of the JSON object raw (if it
// is one) and returns the first that is not exactly a json tag of the
// struct v points to ("unknown": encoding/json would match it case-
// insensitively), or that appears twice ("duplicate").
func checkFieldNames(raw []byte, v any) (name, why string) {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return "", ""
	}
	if json.Valid(raw) {
		fields := jsonFields(t)
		var seen []string
		_, _ = members(raw, func(key string, _ []byte) error {
			switch {
			case !slices.Contains(fields, key):
				name, why = key, "unknown"
			case slices.Contains(seen, key):
				name, why = key, "duplicate"
			default:
				seen = append(seen, key)
				return nil
			}
			return errStopWalk
		})
		return name, why
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", "" // not an object: the decoder reports it
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", ""
		}
		key, ok := tok.(string)
		if !ok {
			return "", ""
		}
		if !hasJSONField(t, key) {
			return key, "unknown"
		}
		if seen[key] {
			return key, "duplicate"
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", ""
		}
	}
	return "", ""
}

func hasJSONField(t reflect.Type, name string) bool {
	return slices.Contains(jsonFields(t), name)
}

// errStopWalk ends a walk of members early.
var errStopWalk = errors.New("stop")

// fieldsByType caches jsonFields: reflect.Type → []string.
var fieldsByType sync.Map

// jsonFields are the json tags of the struct type t's fields.
func jsonFields(t reflect.Type) []string {
	if f, ok := fieldsByType.Load(t); ok {
		return f.([]string)
	}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		names = append(names, tag)
	}
	fieldsByType.Store(t, names)
	return names
}

// memberDecoder is a document type that can decode itself from valid JSON
// without encoding/json's reflection, when its input is of the plain form
// (every field of its JSON type or null). It returns false, v untouched,
// for anything else: decodeStrict then decodes with encoding/json, whose
// errors are the ones operators see.
type memberDecoder interface {
	decodeMembers(raw []byte) bool
}

func jsonTypeName(goType string) string {
	switch {
	case strings.HasPrefix(goType, "*"):
		return jsonTypeName(goType[1:])
	case goType == "string":
		return "string"
	case goType == "bool":
		return "boolean"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "integer"
	case strings.HasPrefix(goType, "float"):
		return "number"
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case strings.HasPrefix(goType, "map["):
		return "object"
	}
	return "object"
}

func isNull(raw []byte) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// ---------------------------------------------------------------- settings

type settingsDoc struct {
	Strategy     string       `json:"strategy"`
	Health       *healthDoc   `json:"health"`
	Ejection     *ejectionDoc `json:"ejection"`
	Auth         *authDoc     `json:"auth"`
	Alerts       *alertsDoc   `json:"alerts"`
	MaxBodyBytes *int64       `json:"max_body_bytes"`
	StreamUsage  *bool        `json:"stream_usage"`
	MaxJSONDepth *int         `json:"max_json_depth"`
	Retry        *retryDoc    `json:"retry"`
	Share        *shareDoc    `json:"share"`
	UnknownPaths string       `json:"unknown_paths"`
	Objects      *objectsDoc  `json:"objects"`
}

type objectsDoc struct {
	DefaultAccount *string `json:"default_account"`
	Retention      *string `json:"retention"`
	Max            *int    `json:"max"`
}

func (d *objectsDoc) UnmarshalJSON(b []byte) error {
	type plain objectsDoc
	return decodeNested("objects", b, (*plain)(d))
}

// MaxObjectsLimit bounds objects.max.
const MaxObjectsLimit = 1000000

// parseObjects applies settings.objects.
func parseObjects(doc string, d *objectsDoc, s *policy.ObjectSettings) error {
	if d == nil {
		return nil
	}
	if d.DefaultAccount != nil {
		if *d.DefaultAccount != "" && !ValidID(*d.DefaultAccount) {
			return fieldErr(doc, "objects.default_account", "invalid account (want 1 to %d of A-Z a-z 0-9 . _ -)", MaxIDLen)
		}
		s.DefaultAccount = *d.DefaultAccount
	}
	if err := parseDuration(doc, "objects.retention", d.Retention, &s.Retention); err != nil {
		return err
	}
	if d.Max != nil {
		if n := *d.Max; n < 1 || n > MaxObjectsLimit {
			return fieldErr(doc, "objects.max", "must be between 1 and %d", MaxObjectsLimit)
		}
		s.Max = *d.Max
	}
	return nil
}

type retryDoc struct {
	MaxAttempts *int `json:"max_attempts"`
}

func (d *retryDoc) UnmarshalJSON(b []byte) error {
	type plain retryDoc
	return decodeNested("retry", b, (*plain)(d))
}

// MaxRetryAttemptsLimit bounds retry.max_attempts.
const MaxRetryAttemptsLimit = 10

// parseRetry applies settings.retry.
func parseRetry(doc string, d *retryDoc, s *policy.RetrySettings) error {
	if d == nil || d.MaxAttempts == nil {
		return nil
	}
	if n := *d.MaxAttempts; n < 1 || n > MaxRetryAttemptsLimit {
		return fieldErr(doc, "retry.max_attempts", "must be between 1 and %d", MaxRetryAttemptsLimit)
	}
	s.MaxAttempts = *d.MaxAttempts
	return nil
}

type healthDoc struct {
	Interval *string `json:"interval"`
	Timeout  *string `json:"timeout"`
}

func (d *healthDoc) UnmarshalJSON(b []byte) error {
	type plain healthDoc
	return decodeNested("health", b, (*plain)(d))
}

type ejectionDoc struct {
	ConsecutiveFailures *int    `json:"consecutive_failures"`
	Base                *string `json:"base"`
	Max                 *string `json:"max"`
	Cooldown            *string `json:"cooldown"`
	ErrorWindow         *string `json:"error_window"`
	SlowStart           *string `json:"slow_start"`
}

func (d *ejectionDoc) UnmarshalJSON(b []byte) error {
	type plain ejectionDoc
	return decodeNested("ejection", b, (*plain)(d))
}

type authDoc struct {
	Mode          string  `json:"mode"`
	PayloadHeader *string `json:"payload_header"` // ignored: see checkPayloadHeader
	Claim         *string `json:"claim"`
	Value         *string `json:"value"`
}

func (d *authDoc) UnmarshalJSON(b []byte) error {
	type plain authDoc
	return decodeNested("auth", b, (*plain)(d))
}

type alertsDoc struct {
	ErrorRate *float64 `json:"error_rate"`
	Usage     *uint64  `json:"usage"`
}

func (d *alertsDoc) UnmarshalJSON(b []byte) error {
	type plain alertsDoc
	return decodeNested("alerts", b, (*plain)(d))
}

// DefaultSettings returns the settings used when the document is absent
// (policy.Defaults).
func DefaultSettings() policy.Settings { return policy.Defaults() }

const settingsDocName = "settings"

// ParseSettings validates the settings document and applies defaults. An
// empty or null document yields DefaultSettings.
func ParseSettings(raw []byte) (policy.Settings, error) {
	const doc = settingsDocName
	s := DefaultSettings()
	if isNull(raw) {
		return s, nil
	}
	var d settingsDoc
	if err := decodeStrict(doc, raw, &d); err != nil {
		return policy.Settings{}, err
	}
	if err := parseStrategy(doc, d.Strategy, &s); err != nil {
		return policy.Settings{}, err
	}
	if err := parseHealth(doc, d.Health, &s.Health); err != nil {
		return policy.Settings{}, err
	}
	if err := parseEjection(doc, d.Ejection, &s.Ejection); err != nil {
		return policy.Settings{}, err
	}
	if err := parseAuth(doc, d.Auth, &s.Auth); err != nil {
		return policy.Settings{}, err
	}
	if err := parseAlerts(doc, d.Alerts, &s.Alerts); err != nil {
		return policy.Settings{}, err
	}
	if err := parseBodySettings(doc, &d, &s); err != nil {
		return policy.Settings{}, err
	}
	if err := parseRetry(doc, d.Retry, &s.Retry); err != nil {
		return policy.Settings{}, err
	}
	if err := parseShare(doc, d.Share, &s.Share); err != nil {
		return policy.Settings{}, err
	}
	if err := parseUnknownPaths(doc, d.UnknownPaths, &s); err != nil {
		return policy.Settings{}, err
	}
	if err := parseObjects(doc, d.Objects, &s.Objects); err != nil {
		return policy.Settings{}, err
	}
	return s, nil
}

// parseUnknownPaths applies settings.unknown_paths.
func parseUnknownPaths(doc, v string, s *policy.Settings) error {
	switch v {
	case "":
	case policy.UnknownPathsRefuse, policy.UnknownPathsForward:
		s.UnknownPaths = v
	default:
		return fieldErr(doc, "unknown_paths", "unknown value %q (want %s or %s)", truncate(v, 64), policy.UnknownPathsRefuse, policy.UnknownPathsForward)
	}
	return nil
}

// parseStrategy applies settings.strategy.
func parseStrategy(doc, strategy string, s *policy.Settings) error {
	if strategy == "" {
		return nil
	}
	known := KnownStrategies()
	if !slices.Contains(known, strategy) {
		return fieldErr(doc, "strategy", "unknown strategy %q (want %s)", truncate(strategy, 64), strings.Join(known, ", "))
	}
	s.Strategy = strategy
	return nil
}

// parseDuration sets *dst from the positive duration v, when given.
func parseDuration(doc, field string, v *string, dst *time.Duration) error {
	if v == nil {
		return nil
	}
	d, err := time.ParseDuration(*v)
	if err != nil {
		return fieldErr(doc, field, "want a duration like \"10m\", got %q", truncate(*v, 32))
	}
	if d <= 0 {
		return fieldErr(doc, field, "must be > 0")
	}
	*dst = d
	return nil
}

// parseHealth applies settings.health; the timeout may not exceed the
// interval (defaults included).
func parseHealth(doc string, h *healthDoc, s *policy.HealthSettings) error {
	if h != nil {
		if err := parseDuration(doc, "health.interval", h.Interval, &s.Interval); err != nil {
			return err
		}
		if err := parseDuration(doc, "health.timeout", h.Timeout, &s.Timeout); err != nil {
			return err
		}
	}
	if s.Timeout > s.Interval {
		return fieldErr(doc, "health.timeout", "must not exceed health.interval (%s)", s.Interval)
	}
	return nil
}

// parseEjection applies settings.ejection and checks the result (defaults
// included): max >= base, an error window a Runtime can count.
func parseEjection(doc string, e *ejectionDoc, s *policy.EjectionSettings) error {
	if e != nil {
		if e.ConsecutiveFailures != nil {
			if *e.ConsecutiveFailures < 1 {
				return fieldErr(doc, "ejection.consecutive_failures", "must be >= 1")
			}
			s.ConsecutiveFailures = *e.ConsecutiveFailures
		}
		for _, f := range []struct {
			name string
			v    *string
			dst  *time.Duration
		}{
			{"ejection.base", e.Base, &s.Base},
			{"ejection.max", e.Max, &s.Max},
			{"ejection.cooldown", e.Cooldown, &s.Cooldown},
			{"ejection.error_window", e.ErrorWindow, &s.ErrorWindow},
			{"ejection.slow_start", e.SlowStart, &s.SlowStart},
		} {
			if err := parseDuration(doc, f.name, f.v, f.dst); err != nil {
				return err
			}
		}
	}
	if s.Max < s.Base {
		return fieldErr(doc, "ejection.max", "must be >= ejection.base (%s)", s.Base)
	}
	if s.ErrorWindow < time.Second || s.ErrorWindow > MaxErrorWindow {
		return fieldErr(doc, "ejection.error_window", "must be between 1s and %s", MaxErrorWindow)
	}
	return nil
}

// parseAuth applies settings.auth.
func parseAuth(doc string, a *authDoc, s *policy.AuthSettings) error {
	if a == nil {
		return nil
	}
	switch m := policy.AuthMode(a.Mode); m {
	case "":
	case policy.AuthNone, policy.AuthClientKeys, policy.AuthJWTClaim:
		s.Mode = m
	default:
		return fieldErr(doc, "auth.mode", "unknown mode %q (want none, client_keys, jwt_claim)", truncate(a.Mode, 64))
	}
	if err := checkPayloadHeader(doc, a.PayloadHeader); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *string
	}{
		{"auth.claim", a.Claim, &s.Claim},
		{"auth.value", a.Value, &s.Value},
	} {
		if f.v == nil {
			continue
		}
		if *f.v == "" {
			return fieldErr(doc, f.name, "must not be empty")
		}
		*f.dst = *f.v
	}
	return nil
}

// parseAlerts applies settings.alerts.
func parseAlerts(doc string, a *alertsDoc, s *policy.AlertSettings) error {
	if a == nil {
		return nil
	}
	if a.ErrorRate != nil {
		if r := *a.ErrorRate; r < 0 || r > 1 || math.IsNaN(r) {
			return fieldErr(doc, "alerts.error_rate", "must be between 0 and 1")
		}
		s.ErrorRate = *a.ErrorRate
	}
	if a.Usage != nil {
		s.Usage = *a.Usage
	}
	return nil
}

// parseBodySettings applies settings.max_body_bytes and settings.stream_usage.
func parseBodySettings(doc string, d *settingsDoc, s *policy.Settings) error {
	if d.MaxBodyBytes != nil {
		if *d.MaxBodyBytes <= 0 {
			return fieldErr(doc, "max_body_bytes", "must be > 0")
		}
		s.MaxBodyBytes = *d.MaxBodyBytes
	}
	if d.StreamUsage != nil {
		s.StreamUsage = *d.StreamUsage
	}
	if err := parseMaxJSONDepth(d.MaxJSONDepth, s); err != nil {
		return err
	}
	return nil
}

// MaxJSONDepthLimit is the largest max_json_depth: encoding/json's own
// nesting limit, and a bound on what the libraries that read an accepted
// body recursively may need.
const MaxJSONDepthLimit = 10000

func parseMaxJSONDepth(v *int, s *policy.Settings) error {
	if v == nil {
		return nil
	}
	if *v < 1 || *v > MaxJSONDepthLimit {
		return fieldErr(settingsDocName, "max_json_depth", "must be between 1 and %d", MaxJSONDepthLimit)
	}
	s.MaxJSONDepth = *v
	return nil
}

// validHeaderName accepts lower-case RFC 9110 tokens (Envoy header names are
// lower case).
func validHeaderName(h string) bool {
	if h == "" || len(h) > 128 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- keys

type limitsDoc struct {
	RPM int `json:"rpm"`
	TPM int `json:"tpm"`
}

func (d *limitsDoc) UnmarshalJSON(b []byte) error {
	type plain limitsDoc
	return decodeNested("limits", b, (*plain)(d))
}

type azureDoc struct {
	APIVersion  string            `json:"api_version"`
	Deployments map[string]string `json:"deployments"`
}

func (d *azureDoc) UnmarshalJSON(b []byte) error {
	type plain azureDoc
	return decodeNested("azure", b, (*plain)(d))
}

type keyDoc struct {
	Provider  string            `json:"provider"`
	BaseURL   string            `json:"base_url"`
	Secret    *string           `json:"secret"`
	SecretRef *string           `json:"secret_ref"`
	Models    []string          `json:"models"`
	Weight    *float64          `json:"weight"`
	Priority  int               `json:"priority"`
	Enabled   *bool             `json:"enabled"`
	Azure     *azureDoc         `json:"azure"`
	Limits    *limitsDoc        `json:"limits"`
	Labels    map[string]string `json:"labels"`
	Account   *string           `json:"account"`
}

// SecretResolver turns a secret_ref ("env:NAME", "file:/path") into the
// secret. Its errors must name the ref, never the value.
type SecretResolver func(ref string) (string, error)

// ErrBadSecretRef is returned for a secret_ref that is neither env: nor file:.
var ErrBadSecretRef = errors.New(`want "env:NAME" or "file:/path"`)

// ResolveSecretRef reads "env:NAME" from the environment or "file:/path" from
// disk (one trailing newline trimmed).
func ResolveSecretRef(ref string) (string, error) {
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		if name == "" {
			return "", ErrBadSecretRef
		}
		v, ok := os.LookupEnv(name)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		return v, nil
	}
	if path, ok := strings.CutPrefix(ref, "file:"); ok {
		if path == "" {
			return "", ErrBadSecretRef
		}
		b, err := readSecretFile(path)
		if err != nil {
			return "", err
		}
		s := string(b)
		s = strings.TrimSuffix(s, "\n")
		s = strings.TrimSuffix(s, "\r")
		return s, nil
	}
	return "", ErrBadSecretRef
}

// MaxSecretFile bounds a secret_ref file: an API key is a few hundred bytes.
const MaxSecretFile = 64 << 10

// readSecretFile reads a regular file of at most MaxSecretFile bytes. A
// FIFO, a device or a directory is refused before it is opened (a named
// pipe nobody writes would hold the apply, and the store's lock, forever;
// /dev/zero would fill the memory; opening a terminal or a tape has
// effects of its own), and the open neither blocks nor takes a terminal;
// the open file is checked again.
func readSecretFile(path string) ([]byte, error) {
	fail := func(err error) error {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("cannot read %s: %w", path, pe.Err)
		}
		return fmt.Errorf("cannot read %s", path)
	}
	check := func(fi os.FileInfo) error {
		switch {
		case !fi.Mode().IsRegular():
			return fmt.Errorf("cannot read %s: not a regular file (%s)", path, fi.Mode().Type())
		case fi.Size() > MaxSecretFile:
			return fmt.Errorf("cannot read %s: larger than %d bytes", path, MaxSecretFile)
		}
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fail(err)
	}
	if err := check(fi); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fail(err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, fail(err)
	}
	if err := check(fi); err != nil { // replaced since the first check
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSecretFile+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("cannot read %s", path)
	case len(b) > MaxSecretFile: // grew after the stat
		return nil, fmt.Errorf("cannot read %s: larger than %d bytes", path, MaxSecretFile)
	}
	return b, nil
}

func validSecret(s string) bool { return s != "" && !policy.HasControl(s) }

// ParseKey validates the keys/<id> document, resolves its secret and applies
// defaults (weight 1, enabled, the provider's base URL).
func ParseKey(id string, raw []byte, resolve SecretResolver) (*policy.Key, error) {
	doc := docName(KindKeys, id)
	if err := checkID(doc, id); err != nil {
		return nil, err
	}
	if resolve == nil {
		resolve = ResolveSecretRef
	}
	var d keyDoc
	if err := decodeStrict(doc, raw, &d); err != nil {
		return nil, err
	}
	k := &policy.Key{ID: id, Weight: 1, Enabled: true, Priority: d.Priority}
	spec, err := parseProvider(doc, d.Provider)
	if err != nil {
		return nil, err
	}
	k.Provider = spec.Provider
	if err := parseKeyBaseURL(doc, d.BaseURL, spec, k); err != nil {
		return nil, err
	}
	if err := parseSecret(doc, &d, resolve, k); err != nil {
		return nil, err
	}
	if k.Models, err = parseModels(doc, "models", d.Models); err != nil {
		return nil, err
	}
	if d.Weight != nil {
		if w := *d.Weight; !(w > 0) || math.IsInf(w, 0) {
			return nil, fieldErr(doc, "weight", "must be > 0")
		}
		k.Weight = *d.Weight
	}
	if d.Enabled != nil {
		k.Enabled = *d.Enabled
	}
	if err := parseAzure(doc, d.Azure, spec, k); err != nil {
		return nil, err
	}
	if k.Limits, err = parseLimits(doc, d.Limits); err != nil {
		return nil, err
	}
	if k.Labels, err = parseLabels(doc, d.Labels); err != nil {
		return nil, err
	}
	k.Account = id
	if d.Account != nil {
		if !ValidID(*d.Account) {
			return nil, fieldErr(doc, "account", "invalid account (want 1 to %d of A-Z a-z 0-9 . _ -)", MaxIDLen)
		}
		k.Account = *d.Account
	}
	return k, nil
}

// parseProvider looks the provider up in policy's provider table.
func parseProvider(doc, name string) (policy.ProviderSpec, error) {
	if name == "" {
		return policy.ProviderSpec{}, fieldErr(doc, "provider", "required (want %s)", providerList())
	}
	spec, ok := policy.LookupProvider(policy.Provider(name))
	if !ok {
		return policy.ProviderSpec{}, fieldErr(doc, "provider", "unknown provider %q (want %s)", truncate(name, 64), providerList())
	}
	return spec, nil
}

// parseKeyBaseURL parses the key's base_url, or its provider's default when
// it has none.
func parseKeyBaseURL(doc, raw string, spec policy.ProviderSpec, k *policy.Key) error {
	if raw == "" {
		raw = spec.DefaultBaseURL
		if raw == "" {
			return fieldErr(doc, "base_url", "required for provider %s", spec.Provider)
		}
	}
	return parseBaseURL(doc, raw, k)
}

// parseSecret sets k's secret from exactly one of secret and secret_ref
// (resolved with resolve). Errors name the ref, never the value.
func parseSecret(doc string, d *keyDoc, resolve SecretResolver, k *policy.Key) error {
	switch {
	case d.Secret != nil && d.SecretRef != nil, d.Secret == nil && d.SecretRef == nil:
		return docErr(doc, `need exactly one of "secret" or "secret_ref"`)
	case d.Secret != nil:
		if !validSecret(*d.Secret) {
			return fieldErr(doc, "secret", "must be non-empty without control characters")
		}
		k.Secret = policy.Secret(*d.Secret)
		return nil
	}
	ref := *d.SecretRef
	if !strings.HasPrefix(ref, "env:") && !strings.HasPrefix(ref, "file:") || ref == "env:" || ref == "file:" {
		// Never echoed: a value that is not a reference is often a pasted secret.
		return fieldErr(doc, "secret_ref", "%v (the value is not shown)", ErrBadSecretRef)
	}
	v, err := resolve(ref)
	if err != nil {
		return fieldErr(doc, "secret_ref", "cannot resolve %q: %v", ref, err)
	}
	if !validSecret(v) {
		return fieldErr(doc, "secret_ref", "%q resolves to an empty value or one with control characters", ref)
	}
	k.Secret = policy.Secret(v)
	k.SecretRef = ref
	return nil
}

// parseAzure applies the azure section, which only providers with one take
// (spec.Azure), and requires their api_version.
func parseAzure(doc string, a *azureDoc, spec policy.ProviderSpec, k *policy.Key) error {
	if a != nil {
		if !spec.Azure {
			return fieldErr(doc, "azure", "only for provider azure")
		}
		k.Azure.APIVersion = a.APIVersion
		if len(a.Deployments) > 0 {
			k.Azure.Deployments = make(map[string]string, len(a.Deployments))
			for m, dep := range a.Deployments {
				if m == "" || policy.HasControl(m) {
					return fieldErr(doc, "azure.deployments", "model names must not be empty or contain control characters")
				}
				if !validPathSegment(dep) {
					return fieldErr(doc, "azure.deployments."+truncate(m, 64), "want a deployment name of A-Z a-z 0-9 . _ -")
				}
				k.Azure.Deployments[m] = dep
			}
		}
	}
	if spec.Azure && k.Azure.APIVersion == "" {
		return fieldErr(doc, "azure.api_version", "required for provider %s", k.Provider)
	}
	if k.Azure.APIVersion != "" && !validPathSegment(k.Azure.APIVersion) {
		return fieldErr(doc, "azure.api_version", "want a version like \"2024-10-21\"")
	}
	return nil
}

// parseLabels copies the key's labels; names must not be empty.
func parseLabels(doc string, in map[string]string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(in))
	for name, v := range in {
		if name == "" {
			return nil, fieldErr(doc, "labels", "label names must not be empty")
		}
		out[name] = v
	}
	return out, nil
}

func providerList() string {
	specs := policy.Providers()
	names := make([]string, len(specs))
	for i, p := range specs {
		names[i] = string(p.Provider)
	}
	return strings.Join(names, ", ")
}

// validPathSegment accepts a value that may be put in a URL path or query
// without escaping.
func validPathSegment(s string) bool { return ValidID(s) && !policy.HasDotSegment(s) }

func parseBaseURL(doc, raw string, k *policy.Key) error {
	const field = "base_url"
	// The URL is never echoed: it might carry credentials.
	u, err := url.Parse(raw)
	if err != nil {
		return fieldErr(doc, field, "not a valid URL")
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return fieldErr(doc, field, "want an absolute http or https URL")
	}
	if u.Opaque != "" || u.Host == "" {
		return fieldErr(doc, field, "want an absolute http or https URL with a host")
	}
	if u.User != nil {
		return fieldErr(doc, field, "must not contain userinfo")
	}
	if u.RawQuery != "" || u.ForceQuery {
		return fieldErr(doc, field, "must not contain a query")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return fieldErr(doc, field, "must not contain a fragment")
	}
	host := strings.ToLower(u.Host)
	if u.Port() == "" && strings.HasSuffix(host, ":") {
		return fieldErr(doc, field, "empty port")
	}
	if u.Hostname() == "" {
		return fieldErr(doc, field, "want an absolute http or https URL with a host")
	}
	// Decoded, with "\\" as a separator too: "/v1/../x", "%2f..%2f" and
	// "%2e%2e" could all climb out of the prefix at the upstream.
	if policy.HasDotSegment(strings.ReplaceAll(u.Path, "\\", "/")) {
		return fieldErr(doc, field, "must not contain a \".\" or \"..\" path segment (plain or percent-encoded)")
	}
	path := strings.TrimRight(u.EscapedPath(), "/")
	k.Scheme = scheme
	k.Host = host
	k.PathPrefix = path
	k.BaseURL = scheme + "://" + host + path
	return nil
}

// noControl refuses a name with a control character: it would reach logs,
// metric labels and upstream bodies.
const noControl = "must not contain control characters (NUL, newline, tab, …)"

// ReservedModel is the model name that stands for "every model not listed";
// documents may not use it.
const ReservedModel = "*"

func parseModels(doc, field string, in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(in))
	seen := make(map[string]struct{}, len(in))
	for i, m := range in {
		f := field + "[" + strconv.Itoa(i) + "]"
		if m == "" {
			return nil, fieldErr(doc, f, "must not be empty")
		}
		if m == ReservedModel {
			return nil, fieldErr(doc, f, "%q is reserved", ReservedModel)
		}
		if policy.HasControl(m) {
			return nil, fieldErr(doc, f, noControl)
		}
		if _, dup := seen[m]; dup {
			return nil, fieldErr(doc, f, "duplicate model %q", truncate(m, 128))
		}
		seen[m] = struct{}{}
		out = append(out, m)
	}
	return out, nil
}

func parseLimits(doc string, d *limitsDoc) (policy.Limits, error) {
	if d == nil {
		return policy.Limits{}, nil
	}
	if d.RPM < 0 {
		return policy.Limits{}, fieldErr(doc, "limits.rpm", "must be >= 0")
	}
	if d.TPM < 0 {
		return policy.Limits{}, fieldErr(doc, "limits.tpm", "must be >= 0")
	}
	return policy.Limits{RPM: d.RPM, TPM: d.TPM}, nil
}

// ---------------------------------------------------------------- rules

type ruleDoc struct {
	Key     string `json:"key"`
	From    string `json:"from"`
	To      string `json:"to"`
	Enabled *bool  `json:"enabled"`
}

func (d *ruleDoc) decodeMembers(raw []byte) bool {
	var r ruleDoc
	ok, err := members(raw, func(name string, val []byte) error {
		var dst *string
		switch name {
		case "key":
			dst = &r.Key
		case "from":
			dst = &r.From
		case "to":
			dst = &r.To
		case "enabled":
			r.Enabled = nil
			if string(val) == "null" {
				return nil
			}
			b, isBool := boolValue(val)
			if !isBool {
				return errStopWalk
			}
			r.Enabled = &b
			return nil
		default:
			return errStopWalk
		}
		if string(val) == "null" {
			return nil // encoding/json leaves a string as it is
		}
		s, isString := stringValue(val)
		if !isString {
			return errStopWalk
		}
		*dst = s
		return nil
	})
	if !ok || err != nil {
		return false
	}
	*d = r
	return true
}

// ParseRule validates the rules/<id> document. Whether the key exists is
// checked by Builder.Build.
func ParseRule(id string, raw []byte) (*policy.Rule, error) {
	var d ruleDoc
	if !ValidID(id) || !d.decodePlain(raw) { // the plain form needs no strict decoder (parse_plain.go)
		doc := docName(KindRules, id)
		if err := checkID(doc, id); err != nil {
			return nil, err
		}
		if err := decodeStrict(doc, raw, &d); err != nil {
			return nil, err
		}
	}
	return checkedRule(id, &d)
}

// checkedRule is the rule of the decoded rules/<id> document, once checked.
func checkedRule(id string, d *ruleDoc) (*policy.Rule, error) {
	if err := checkRule(id, d); err != nil {
		return nil, err
	}
	r := &policy.Rule{ID: id, KeyID: d.Key, From: d.From, To: d.To, Enabled: true}
	if d.Enabled != nil {
		r.Enabled = *d.Enabled
	}
	return r, nil
}

// checkRule checks the decoded rules/<id> document.
func checkRule(id string, d *ruleDoc) error {
	fault := func(field, format string, args ...any) error {
		return fieldErr(docName(KindRules, id), field, format, args...)
	}
	switch {
	case d.Key == "":
		return fault("key", "required (a key id or %q)", policy.AnyKey)
	case d.Key != policy.AnyKey && !ValidID(d.Key):
		return fault("key", "want a key id or %q", policy.AnyKey)
	case d.From == "":
		return fault("from", "required")
	case d.From == ReservedModel:
		return fault("from", "%q is reserved", ReservedModel)
	case policy.HasControl(d.From):
		return fault("from", noControl)
	case d.To == "":
		return fault("to", "required")
	case d.To == ReservedModel:
		return fault("to", "%q is reserved", ReservedModel)
	case policy.HasControl(d.To):
		return fault("to", noControl)
	case policy.HasDotSegment(d.To):
		// The model may become a path segment upstream (an Azure deployment).
		return fault("to", "must not have a \".\" or \"..\" path segment")
	case d.To == d.From:
		return fault("to", "same as \"from\"")
	}
	return nil
}

// ---------------------------------------------------------------- clients

type clientDoc struct {
	Name        string     `json:"name"`
	TokenSHA256 string     `json:"token_sha256"`
	Models      []string   `json:"models"`
	Endpoints   []string   `json:"endpoints"`
	Enabled     *bool      `json:"enabled"`
	Limits      *limitsDoc `json:"limits"`
}

// ParseClient validates the clients/<id> document. Name defaults to the id.
func ParseClient(id string, raw []byte) (*policy.Client, error) {
	doc := docName(KindClients, id)
	if err := checkID(doc, id); err != nil {
		return nil, err
	}
	var d clientDoc
	if err := decodeStrict(doc, raw, &d); err != nil {
		return nil, err
	}
	if policy.HasControl(d.Name) {
		return nil, fieldErr(doc, "name", noControl)
	}
	c := &policy.Client{ID: id, Name: d.Name, Enabled: true}
	if c.Name == "" {
		c.Name = id
	}
	if d.TokenSHA256 == "" {
		return nil, fieldErr(doc, "token_sha256", "required (the hex SHA-256 of the client token)")
	}
	if len(d.TokenSHA256) != 64 {
		return nil, fieldErr(doc, "token_sha256", "want 64 hex digits, got %d characters", len(d.TokenSHA256))
	}
	if _, err := hex.Decode(c.TokenSHA256[:], []byte(d.TokenSHA256)); err != nil {
		return nil, fieldErr(doc, "token_sha256", "want 64 hex digits")
	}
	models, err := parseModels(doc, "models", d.Models)
	if err != nil {
		return nil, err
	}
	c.Models = models
	if c.Endpoints, err = parseEndpoints(doc, d.Endpoints); err != nil {
		return nil, err
	}
	if d.Enabled != nil {
		c.Enabled = *d.Enabled
	}
	lim, err := parseLimits(doc, d.Limits)
	if err != nil {
		return nil, err
	}
	c.Limits = lim
	return c, nil
}

// checkPayloadHeader validates the obsolete auth.payload_header. keymux
// reads the verified claims from jwt_authn's dynamic metadata, never from a
// header a client could send, so the value is ignored; it is still accepted
// so that an older settings document keeps parsing (a refused one would
// leave keymux on its defaults, auth mode none).
func checkPayloadHeader(doc string, h *string) error {
	if h != nil && !validHeaderName(*h) {
		return fieldErr(doc, "auth.payload_header", "want a lower-case HTTP header name")
	}
	return nil
}

// parseEndpoints validates a client's endpoints list (policy.Endpoints
// names); absent stays nil (the default rights), [] allows nothing.
func parseEndpoints(doc string, names []string) ([]string, error) {
	if names == nil {
		return nil, nil
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		if !slices.Contains(policy.Endpoints, n) {
			return nil, fieldErr(doc, "endpoints", "unknown endpoint %q (want %s)", truncate(n, 64), strings.Join(policy.Endpoints, ", "))
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}
