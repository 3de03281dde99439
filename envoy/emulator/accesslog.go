package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// defaultLogFormat is Envoy's default access log format.
const defaultLogFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// logInfo is what Envoy's StreamInfo holds for one request.
type logInfo struct {
	start             time.Time
	end               time.Time
	firstUpstreamByte time.Time
	reqHeaders        *headerMap
	respHeaders       *headerMap
	status            int
	bytesReceived     int64
	bytesSent         int64
	upstreamHost      string
	upstreamCluster   string
	routeName         string
	responseFlags     string
	details           string
	upstreamFailure   string
	downstreamRemote  string
	downstreamLocal   string
	protocol          string
	attempts          uint32 // upstream requests made

	// Set by the upstream transport's goroutines too: guarded by mu.
	mu                sync.Mutex
	metadata          map[string]*structpb.Struct
	firstUpstreamTx   time.Time
	lastUpstreamTx    time.Time
	lastUpstreamRx    time.Time
	firstDownstreamTx time.Time
	lastDownstreamTx  time.Time
	lastDownstreamRx  time.Time
	upstreamRemote    string
	upstreamLocal     string
}

// at records now into one of the guarded timestamps, once.
func (li *logInfo) at(t *time.Time) {
	li.mu.Lock()
	defer li.mu.Unlock()
	if t.IsZero() {
		*t = time.Now()
	}
}

func (li *logInfo) setMetadata(ns string, s *structpb.Struct) {
	li.mu.Lock()
	defer li.mu.Unlock()
	if li.metadata == nil {
		li.metadata = map[string]*structpb.Struct{}
	}
	// Envoy merges the fields of a namespace set more than once.
	cur, ok := li.metadata[ns]
	if !ok {
		li.metadata[ns] = proto.Clone(s).(*structpb.Struct)
		return
	}
	for k, v := range s.GetFields() {
		cur.Fields[k] = v
	}
}

func (li *logInfo) metadataValue(ns string, path []string) *structpb.Value {
	li.mu.Lock()
	defer li.mu.Unlock()
	s, ok := li.metadata[ns]
	if !ok {
		return nil
	}
	v := structpb.NewStructValue(s)
	for _, p := range path {
		sv := v.GetStructValue()
		if sv == nil {
			return nil
		}
		if v, ok = sv.GetFields()[p]; !ok {
			return nil
		}
	}
	return v
}

// formatter is a parsed Envoy substitution format string.
type formatter struct {
	parts []fmtPart
}

type fmtPart struct {
	literal string
	cmd     string
	args    []string // REQ: name, alt; DYNAMIC_METADATA: ns, path...
	maxLen  int
	isCmd   bool
}

var knownCommands = map[string]bool{
	"REQ": true, "RESP": true, "TRAILER": true, "DYNAMIC_METADATA": true, "START_TIME": true,
	"RESPONSE_CODE": true, "RESPONSE_FLAGS": true, "RESPONSE_FLAGS_LONG": true, "RESPONSE_CODE_DETAILS": true,
	"BYTES_RECEIVED": true, "BYTES_SENT": true, "DURATION": true, "REQUEST_DURATION": true,
	"RESPONSE_DURATION": true, "RESPONSE_TX_DURATION": true, "UPSTREAM_HOST": true, "UPSTREAM_CLUSTER": true,
	"UPSTREAM_CLUSTER_RAW": true, "ROUTE_NAME": true, "PROTOCOL": true, "UPSTREAM_PROTOCOL": true,
	"DOWNSTREAM_REMOTE_ADDRESS": true, "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": true,
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS": true, "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": true,
	"DOWNSTREAM_LOCAL_ADDRESS": true, "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": true,
	"UPSTREAM_TRANSPORT_FAILURE_REASON": true, "UPSTREAM_REMOTE_ADDRESS": true, "UPSTREAM_LOCAL_ADDRESS": true,
	"UPSTREAM_REQUEST_ATTEMPT_COUNT": true, "HOSTNAME": true, "REQUESTED_SERVER_NAME": true,
	"ENVIRONMENT": true, "FILTER_STATE": true, "CONNECTION_TERMINATION_DETAILS": true,
	"CONNECTION_ID": true, "STREAM_ID": true, "LOCAL_REPLY_BODY": true,
}

func parseFormat(s string) (*formatter, error) {
	f := &formatter{}
	var lit strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '%' {
			lit.WriteByte(s[i])
			i++
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			lit.WriteByte('%')
			i += 2
			continue
		}
		// %NAME%, %NAME:N%, %NAME(args)%, %NAME(args):N%; args may hold '%'
		// (START_TIME formats) but not ')'.
		k := i + 1
		for k < len(s) && (s[k] == '_' || (s[k] >= 'A' && s[k] <= 'Z') || (s[k] >= '0' && s[k] <= '9')) {
			k++
		}
		if k < len(s) && s[k] == '(' {
			c := strings.IndexByte(s[k:], ')')
			if c < 0 {
				return nil, fmt.Errorf("format %q: command without ')'", s)
			}
			k += c
		}
		j := strings.IndexByte(s[k:], '%')
		if j < 0 {
			return nil, fmt.Errorf("format %q: unterminated %%COMMAND%%", s)
		}
		j += k - (i + 1)
		tok := s[i+1 : i+1+j]
		p, err := parseCommand(tok)
		if err != nil {
			return nil, fmt.Errorf("format %q: %w", s, err)
		}
		if lit.Len() > 0 {
			f.parts = append(f.parts, fmtPart{literal: lit.String()})
			lit.Reset()
		}
		f.parts = append(f.parts, p)
		i += j + 2
	}
	if lit.Len() > 0 {
		f.parts = append(f.parts, fmtPart{literal: lit.String()})
	}
	return f, nil
}

func parseCommand(tok string) (fmtPart, error) {
	p := fmtPart{isCmd: true}
	name, rest := tok, ""
	if k := strings.IndexByte(tok, '('); k >= 0 {
		end := strings.LastIndexByte(tok, ')')
		if end < k {
			return p, fmt.Errorf("command %q: missing ')'", tok)
		}
		name = tok[:k]
		arg := tok[k+1 : end]
		rest = tok[end+1:]
		switch name {
		case "REQ", "RESP", "TRAILER":
			a, b, _ := strings.Cut(arg, "?")
			p.args = []string{strings.ToLower(a), strings.ToLower(b)}
		case "DYNAMIC_METADATA", "FILTER_STATE":
			p.args = strings.Split(arg, ":")
		default:
			p.args = []string{arg}
		}
	} else if k := strings.IndexByte(tok, ':'); k >= 0 {
		name, rest = tok[:k], tok[k:]
	}
	if rest != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(rest, ":"))
		if err != nil || !strings.HasPrefix(rest, ":") {
			return p, fmt.Errorf("command %q: bad max length", tok)
		}
		p.maxLen = n
	}
	if !knownCommands[name] {
		return p, fmt.Errorf("command %%%s%% is not emulated", name)
	}
	p.cmd = name
	return p, nil
}

// value evaluates one command: nil means "not available" ("-" in text).
func (p fmtPart) value(li *logInfo) any {
	ms := func(d time.Duration) any { return d.Milliseconds() }
	switch p.cmd {
	case "REQ", "RESP", "TRAILER":
		var h *headerMap
		switch p.cmd {
		case "REQ":
			h = li.reqHeaders
		case "RESP":
			h = li.respHeaders
		}
		if h == nil {
			return nil
		}
		for _, k := range p.args {
			if k == "" {
				continue
			}
			if v, ok := h.get(hostKey(k)); ok {
				return v
			}
		}
		return nil
	case "DYNAMIC_METADATA":
		if len(p.args) == 0 {
			return nil
		}
		v := li.metadataValue(p.args[0], p.args[1:])
		if v == nil {
			return nil
		}
		return v
	case "START_TIME":
		if len(p.args) == 1 && p.args[0] != "" {
			return strftime(li.start.UTC(), p.args[0])
		}
		return li.start.UTC().Format("2006-01-02T15:04:05.000Z")
	case "RESPONSE_CODE":
		return int64(li.status)
	case "RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG":
		if li.responseFlags == "" {
			return nil
		}
		return li.responseFlags
	case "RESPONSE_CODE_DETAILS":
		return nonEmpty(li.details)
	case "BYTES_RECEIVED":
		return li.bytesReceived
	case "BYTES_SENT":
		return li.bytesSent
	case "DURATION", "REQUEST_DURATION", "RESPONSE_TX_DURATION":
		return ms(li.end.Sub(li.start))
	case "RESPONSE_DURATION":
		if li.firstUpstreamByte.IsZero() {
			return nil
		}
		return ms(li.firstUpstreamByte.Sub(li.start))
	case "UPSTREAM_HOST", "UPSTREAM_REMOTE_ADDRESS":
		return nonEmpty(li.upstreamHost)
	case "UPSTREAM_CLUSTER", "UPSTREAM_CLUSTER_RAW":
		return nonEmpty(li.upstreamCluster)
	case "ROUTE_NAME":
		return nonEmpty(li.routeName)
	case "PROTOCOL":
		return nonEmpty(li.protocol)
	case "UPSTREAM_PROTOCOL":
		if li.upstreamHost == "" {
			return nil
		}
		return "HTTP/1.1"
	case "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
		return nonEmpty(li.downstreamRemote)
	case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
		return nonEmpty(hostOnly(li.downstreamRemote))
	case "DOWNSTREAM_LOCAL_ADDRESS":
		return nonEmpty(li.downstreamLocal)
	case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
		return nonEmpty(hostOnly(li.downstreamLocal))
	case "UPSTREAM_TRANSPORT_FAILURE_REASON":
		return nonEmpty(li.upstreamFailure)
	case "UPSTREAM_REQUEST_ATTEMPT_COUNT":
		return int64(li.attempts)
	case "HOSTNAME":
		h, _ := os.Hostname()
		return nonEmpty(h)
	case "ENVIRONMENT":
		if len(p.args) == 1 {
			if v, ok := os.LookupEnv(p.args[0]); ok {
				return v
			}
		}
		return nil
	}
	return nil
}

func nonEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

func truncate(s string, n int) string {
	if n > 0 && len(s) > n {
		return s[:n]
	}
	return s
}

// text renders a value the way Envoy's text formatter does.
func text(v any, maxLen int) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		return truncate(x, maxLen)
	case int64:
		return strconv.FormatInt(x, 10)
	case *structpb.Value:
		if s, ok := x.GetKind().(*structpb.Value_StringValue); ok {
			return truncate(s.StringValue, maxLen)
		}
		b, err := protojson.Marshal(x)
		if err != nil {
			return "-"
		}
		return truncate(string(b), maxLen)
	}
	return "-"
}

func (f *formatter) format(li *logInfo) string {
	var b strings.Builder
	for _, p := range f.parts {
		if !p.isCmd {
			b.WriteString(p.literal)
			continue
		}
		b.WriteString(text(p.value(li), p.maxLen))
	}
	return b.String()
}

// typed returns the JSON value of a format string: a lone command keeps its
// type (numbers stay numbers, metadata stays structured), anything else is
// the text rendering.
func (f *formatter) typed(li *logInfo) any {
	if len(f.parts) == 1 && f.parts[0].isCmd {
		p := f.parts[0]
		switch v := p.value(li).(type) {
		case nil:
			return nil
		case *structpb.Value:
			return v.AsInterface()
		case string:
			return truncate(v, p.maxLen)
		default:
			return v
		}
	}
	return f.format(li)
}

// jsonFormatter renders an Envoy json_format.
type jsonFormatter struct {
	fields map[string]any // *formatter, nested map[string]any, or a literal
}

func newJSONFormatter(s *structpb.Struct) (*jsonFormatter, error) {
	var conv func(*structpb.Struct) (map[string]any, error)
	conv = func(s *structpb.Struct) (map[string]any, error) {
		out := map[string]any{}
		for k, v := range s.GetFields() {
			switch x := v.GetKind().(type) {
			case *structpb.Value_StringValue:
				f, err := parseFormat(x.StringValue)
				if err != nil {
					return nil, fmt.Errorf("json_format %q: %w", k, err)
				}
				out[k] = f
			case *structpb.Value_StructValue:
				m, err := conv(x.StructValue)
				if err != nil {
					return nil, err
				}
				out[k] = m
			default:
				out[k] = v.AsInterface()
			}
		}
		return out, nil
	}
	m, err := conv(s)
	if err != nil {
		return nil, err
	}
	return &jsonFormatter{fields: m}, nil
}

func (j *jsonFormatter) format(li *logInfo) string {
	var eval func(map[string]any) map[string]any
	eval = func(m map[string]any) map[string]any {
		out := make(map[string]any, len(m))
		for k, v := range m {
			switch x := v.(type) {
			case *formatter:
				out[k] = x.typed(li)
			case map[string]any:
				out[k] = eval(x)
			default:
				out[k] = x
			}
		}
		return out
	}
	b, err := json.Marshal(eval(j.fields))
	if err != nil {
		return "{}\n"
	}
	return string(b) + "\n"
}

type lineFormatter interface{ format(*logInfo) string }

// accessLogger is one HCM access_log entry.
type accessLogger struct {
	f     lineFormatter
	mu    sync.Mutex
	w     io.Writer
	close func()
}

func newAccessLogger(al *accesslogv3.AccessLog, override io.Writer) (*accessLogger, error) {
	if al.GetTypedConfig() == nil {
		return nil, errors.New("access log without typed_config")
	}
	m, err := anypb.UnmarshalNew(al.GetTypedConfig(), proto.UnmarshalOptions{})
	if err != nil {
		return nil, err
	}
	a := &accessLogger{close: func() {}}
	var path string
	switch c := m.(type) {
	case *filev3.FileAccessLog:
		path = c.GetPath()
		switch {
		case c.GetLogFormat() != nil:
			a.f, err = substitutionFormatter(c.GetLogFormat())
		case c.GetJsonFormat() != nil:
			a.f, err = newJSONFormatter(c.GetJsonFormat())
		case c.GetTypedJsonFormat() != nil:
			a.f, err = newJSONFormatter(c.GetTypedJsonFormat())
		case c.GetFormat() != "":
			a.f, err = parseFormat(c.GetFormat())
		default:
			a.f, err = parseFormat(defaultLogFormat)
		}
	case *streamv3.StdoutAccessLog:
		path = "/dev/stdout"
		a.f, err = substitutionFormatter(c.GetLogFormat())
	case *streamv3.StderrAccessLog:
		path = "/dev/stderr"
		a.f, err = substitutionFormatter(c.GetLogFormat())
	default:
		return nil, fmt.Errorf("access logger %s is not emulated", m.ProtoReflect().Descriptor().FullName())
	}
	if err != nil {
		return nil, err
	}
	switch {
	case override != nil:
		a.w = override
	case path == "/dev/stdout":
		a.w = os.Stdout
	case path == "/dev/stderr":
		a.w = os.Stderr
	default:
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("access log file: %w", err)
		}
		a.w = fh
		a.close = func() { _ = fh.Close() }
	}
	return a, nil
}

func substitutionFormatter(sf *corev3.SubstitutionFormatString) (lineFormatter, error) {
	if sf == nil {
		return parseFormat(defaultLogFormat)
	}
	switch {
	case sf.GetJsonFormat() != nil:
		return newJSONFormatter(sf.GetJsonFormat())
	case sf.GetTextFormatSource() != nil:
		b, err := dataSource(sf.GetTextFormatSource())
		if err != nil {
			return nil, err
		}
		return parseFormat(string(b))
	case sf.GetTextFormat() != "":
		return parseFormat(sf.GetTextFormat())
	}
	return parseFormat(defaultLogFormat)
}

func (a *accessLogger) log(li *logInfo) {
	line := a.f.format(li)
	a.mu.Lock()
	defer a.mu.Unlock()
	_, _ = io.WriteString(a.w, line)
}

// strftime implements the subset of Envoy's START_TIME format specifiers
// that configs commonly use.
func strftime(t time.Time, f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 >= len(f) {
			b.WriteByte(f[i])
			continue
		}
		i++
		switch f[i] {
		case 'Y':
			b.WriteString(t.Format("2006"))
		case 'm':
			b.WriteString(t.Format("01"))
		case 'd':
			b.WriteString(t.Format("02"))
		case 'H':
			b.WriteString(t.Format("15"))
		case 'M':
			b.WriteString(t.Format("04"))
		case 'S':
			b.WriteString(t.Format("05"))
		case 'z':
			b.WriteString(t.Format("-0700"))
		case 'Z':
			b.WriteString(t.Format("MST"))
		case 's':
			b.WriteString(strconv.FormatInt(t.Unix(), 10))
		case 'E', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			// %E3S / %3f style sub-second precision.
			j := i
			for j < len(f) && (f[j] == 'E' || (f[j] >= '0' && f[j] <= '9')) {
				j++
			}
			digits := strings.TrimPrefix(f[i:j], "E")
			n, _ := strconv.Atoi(digits)
			if n <= 0 || n > 9 {
				n = 9
			}
			frac := fmt.Sprintf("%09d", t.Nanosecond())[:n]
			if j < len(f) && f[j] == 'S' {
				b.WriteString(t.Format("05") + "." + frac)
			} else {
				b.WriteString(frac)
			}
			i = j
		default:
			b.WriteByte('%')
			b.WriteByte(f[i])
		}
	}
	return b.String()
}
