package extproc

import (
	"strconv"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// apiError is a client-facing refusal, answered as an OpenAI-style JSON error
// in an ImmediateResponse.
type apiError struct {
	Status     int
	Type       string // OpenAI error "type"
	Code       string // OpenAI error "code"
	Param      string // offending parameter, "" = null
	Message    string
	RetryAfter int               // seconds; > 0 adds a Retry-After header
	Header     map[string]string // extra response headers (e.g. Allow)
}

// Error types, as OpenAI names them.
const (
	typeInvalidRequest = "invalid_request_error"
	typePermission     = "permission_error"
	typeServer         = "server_error"
)

func badRequest(code, param, msg string) *apiError {
	return &apiError{Status: 400, Type: typeInvalidRequest, Code: code, Param: param, Message: msg}
}

// body renders {"error":{"message","type","param","code"}}.
func (e *apiError) body() []byte {
	b := make([]byte, 0, 96+len(e.Message))
	b = append(b, `{"error":{"message":`...)
	b = appendJSONString(b, e.Message)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, e.Type)
	b = append(b, `,"param":`...)
	if e.Param == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, e.Param)
	}
	b = append(b, `,"code":`...)
	if e.Code == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, e.Code)
	}
	return append(b, "}}"...)
}

// response turns the error into the ImmediateResponse Envoy sends to the client.
func (e *apiError) response() *extprocv3.ProcessingResponse {
	return immediateJSON(e.Status, e.body(), e.extraHeaders()...)
}

func (e *apiError) extraHeaders() []*corev3.HeaderValueOption {
	var hs []*corev3.HeaderValueOption
	if e.RetryAfter > 0 {
		hs = append(hs, setHeader("retry-after", strconv.Itoa(e.RetryAfter)))
	}
	for k, v := range e.Header {
		hs = append(hs, setHeader(k, v))
	}
	return hs
}

// immediateJSON answers the client directly with a JSON body.
func immediateJSON(status int, body []byte, extra ...*corev3.HeaderValueOption) *extprocv3.ProcessingResponse {
	hs := append([]*corev3.HeaderValueOption{setHeader("content-type", "application/json")}, extra...)
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ImmediateResponse{
			ImmediateResponse: &extprocv3.ImmediateResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode(status)},
				Headers: &extprocv3.HeaderMutation{SetHeaders: hs},
				Body:    body,
				Details: "keymux",
			},
		},
	}
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		case c >= utf8.RuneSelf:
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				b = append(b, `\ufffd`...) // the JSON stays valid UTF-8
			} else {
				b = append(b, s[i:i+n]...)
			}
			i += n - 1
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
