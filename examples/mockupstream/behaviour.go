package mockupstream

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Behaviour tells the mock how to answer one request (Script) or every
// request (SetDefault) of a credential. The zero value is a normal answer.
type Behaviour struct {
	// Status is the HTTP status to answer; 0 (or 200) is a normal answer.
	// An error status gets the provider's error body: OpenAI's
	// {"error":{"message","type","param","code"}} (401 invalid_api_key, 403
	// request_forbidden, 429 rate_limit_exceeded or insufficient_quota, 500
	// and 503 server_error, …), Azure's {"error":{"code","message"}} for
	// 401/403/404/429 on deployment paths, Anthropic's
	// {"type":"error","error":{"type","message"}} on /messages.
	Status int
	// RetryAfter is the Retry-After header value ("" = no header), on any
	// status. On a 429 the x-ratelimit-reset-* headers follow it, and on an
	// Azure path an integer value also gives retry-after-ms and
	// x-ms-retry-after-ms.
	RetryAfter string
	// Delay holds the answer back; it ends early when the client goes away
	// or the server closes.
	Delay time.Duration
	// CutStreamAfter > 0 closes the connection after that many SSE events
	// (the OpenAI role chunk is event 1), without [DONE] and without the
	// chunked terminator, so the client sees a broken stream. A value at or
	// above the number of events of the stream has no effect. On a
	// non-stream answer the connection is closed after half of the body.
	CutStreamAfter int
	// Reset closes the connection before any answer (after Delay): no
	// status line, so the client sees the connection end (HTTP/1.1) or
	// the stream reset (HTTP/2) before response headers. The record has
	// Status 0 and Cut set.
	Reset bool
	// ErrorCode overrides the error "code" (OpenAI, Azure) or the error
	// "type" (Anthropic). On a 429, "insufficient_quota" gives OpenAI's
	// quota error (type and code insufficient_quota).
	ErrorCode string
	// Headers are added to the response (after the mock's own headers, so
	// they can replace them).
	Headers map[string]string
	// ChunkDelay is waited before every SSE event after the first, so a
	// client can observe events arriving one by one.
	ChunkDelay time.Duration
	// HoldStreamAfter > 0 stops a stream after that many SSE events and
	// holds it open until the client goes away (the connection is then
	// closed without [DONE]): a client abort mid-stream without a race
	// against the stream's end.
	HoldStreamAfter int
	// Content replaces the assistant text Reply would give; the usage
	// follows it.
	Content string
	// Body, when not empty, is sent as is (content-type application/json
	// unless Headers set one, e.g. text/event-stream for a scripted stream)
	// with Status (default 200) instead of any generated answer.
	Body string
	// Path, when set, limits the behaviour to requests whose path ends with
	// it (e.g. "/chat/completions", so that health probes of /models still
	// succeed); other requests answer normally and leave a script in place.
	Path string
	// Model, when set, limits the behaviour to requests for that model (as
	// Recorded.Model), as Path does: a provider limits each model apart.
	Model string
}

// appliesTo reports whether b is meant for a request to path for model.
func (b Behaviour) appliesTo(path, model string) bool {
	return (b.Path == "" || strings.HasSuffix(path, b.Path)) && (b.Model == "" || b.Model == model)
}

func (b Behaviour) isError() bool { return b.Status >= 400 }

// dialect is the error and header style of a route.
type dialect int

const (
	dialectOpenAI dialect = iota
	dialectAzure
	dialectAnthropic
)

// apiError is one error answer.
type apiError struct {
	status  int
	typ     string // OpenAI "type" / Anthropic error type
	code    string // "" = null
	param   string // "" = null
	message string
	// azureCode is Azure's error "code" (default: the status as a string).
	azureCode string
}

// openAIError is the OpenAI error body.
type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

type azureError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type anthropicError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// body renders e in the dialect's shape.
func (e apiError) body(d dialect) []byte {
	var v any
	switch {
	case d == dialectAnthropic:
		var a anthropicError
		a.Type = "error"
		a.Error.Type = e.typ
		a.Error.Message = e.message
		v = a
	case d == dialectAzure && (e.status == 401 || e.status == 403 || e.status == 404 || e.status == 429):
		var a azureError
		a.Error.Code = e.azureCode
		if a.Error.Code == "" {
			a.Error.Code = strconv.Itoa(e.status)
		}
		a.Error.Message = e.message
		v = a
	default:
		var o openAIError
		o.Error.Message = e.message
		o.Error.Type = e.typ
		o.Error.Param = nullable(e.param)
		o.Error.Code = nullable(e.code)
		v = o
	}
	out, err := json.Marshal(v)
	if err != nil { // cannot happen: plain structs of strings
		panic(err)
	}
	return out
}

// behaviourError is the error answer of an error Behaviour for model.
func behaviourError(b Behaviour, d dialect, model string) apiError {
	if d == dialectAnthropic {
		return anthropicStatusError(b.Status, b.ErrorCode)
	}
	e := apiError{status: b.Status, code: b.ErrorCode, azureCode: b.ErrorCode}
	switch b.Status {
	case http.StatusBadRequest:
		e.typ, e.message = "invalid_request_error", "Invalid request (mock upstream)."
	case http.StatusUnauthorized:
		e.typ = "invalid_request_error"
		if e.code == "" {
			e.code = "invalid_api_key"
		}
		e.message = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
		if d == dialectAzure {
			e.message = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."
		}
	case http.StatusForbidden:
		e.typ = "request_forbidden"
		if e.code == "" {
			e.code = "unsupported_country_region_territory"
		}
		e.message = "Country, region, or territory not supported"
	case http.StatusNotFound:
		e.typ = "invalid_request_error"
		if e.code == "" {
			e.code = "model_not_found"
		}
		e.message = fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", model)
	case http.StatusTooManyRequests:
		if e.code == "insufficient_quota" {
			e.typ = "insufficient_quota"
			e.message = "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
			break
		}
		e.typ = "requests"
		if e.code == "" {
			e.code = "rate_limit_exceeded"
		}
		wait := b.RetryAfter
		if wait == "" {
			wait = "1"
		}
		e.message = fmt.Sprintf("Rate limit reached for %s in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in %ss.", model, wait)
		if d == dialectAzure {
			e.message = fmt.Sprintf("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after %s seconds.", wait)
		}
	case http.StatusInternalServerError:
		e.typ, e.message = "server_error", "The server had an error while processing your request. Sorry about that!"
	case http.StatusServiceUnavailable:
		e.typ, e.message = "server_error", "The engine is currently overloaded, please try again later."
	default:
		e.typ = "invalid_request_error"
		if b.Status >= 500 {
			e.typ = "server_error"
		}
		e.message = http.StatusText(b.Status) + " (mock upstream)."
	}
	return e
}

// anthropicStatusError is Anthropic's error for status; typ overrides the type.
func anthropicStatusError(status int, typ string) apiError {
	e := apiError{status: status, typ: typ}
	def, msg := "api_error", "Internal server error"
	switch status {
	case http.StatusBadRequest:
		def, msg = "invalid_request_error", "Invalid request (mock upstream)."
	case http.StatusUnauthorized:
		def, msg = "authentication_error", "invalid x-api-key"
	case http.StatusForbidden:
		def, msg = "permission_error", "Your API key does not have permission to use the specified resource."
	case http.StatusNotFound:
		def, msg = "not_found_error", "Not found"
	case http.StatusRequestEntityTooLarge:
		def, msg = "request_too_large", "Request exceeds the maximum allowed number of bytes."
	case http.StatusTooManyRequests:
		def, msg = "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."
	case http.StatusServiceUnavailable, 529:
		def, msg = "overloaded_error", "Overloaded"
	}
	if e.typ == "" {
		e.typ = def
	}
	e.message = msg
	return e
}
