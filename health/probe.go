package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/policy"
)

// maxProbeBody is how much of a probe answer is read (to tell
// insufficient_quota from other errors); the rest is discarded.
const maxProbeBody = 64 << 10

// NewProbeClient returns the client probes use by default. It ignores
// HTTP_PROXY/HTTPS_PROXY: a proxy would see the secret of every http://
// key (and every key's destination), so probes go straight to the key's
// base URL, as the request path (Envoy) does. It does not follow redirects.
func NewProbeClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// ProbeRequest builds the cheapest request that proves key k works, as the
// provider table says (policy.ProviderSpec.Probe):
//
//	openai, huggingface, openai_compatible   GET {base_url}/models                          authorization: Bearer
//	azure                                     GET {base_url}/openai/models?api-version=V    api-key
//	anthropic                                 GET {base_url}/models                          x-api-key, anthropic-version
//
// None of them costs tokens.
func ProbeRequest(ctx context.Context, k *policy.Key) (*http.Request, error) {
	if k == nil {
		return nil, errors.New("probe: nil key")
	}
	spec := policy.SpecFor(k.Provider)
	u := spec.Shape(k, spec.Probe.Request)
	req, err := http.NewRequestWithContext(ctx, spec.Probe.Method, k.BaseURL+u.Path, nil)
	if err != nil {
		// The URL comes from a validated base_url; do not echo it anyway.
		return nil, fmt.Errorf("probe: key %s: bad base_url", k.ID)
	}
	req.Header.Set(u.Auth.Name, u.Auth.Value)
	if u.Version.Name != "" {
		req.Header.Set(u.Version.Name, u.Version.Value)
	}
	req.Header.Set("accept", "application/json")
	req.Header.Set("user-agent", "keymux-health")
	return req, nil
}

// Result is one probe's verdict.
type Result struct {
	OK      bool               // the key is valid (2xx, 429, other 4xx)
	Kind    policy.OutcomeKind // as policy.Classify says (OutcomeTimeout for no answer in time)
	Status  int                // 0 when no answer came
	Latency time.Duration
	Error   string    // "" when OK without remark; never holds a secret
	RetryAt time.Time // rate limited: cool down until (zero: the default cooldown)
}

// Interpret turns an answer (or a transport error) into a Result:
// 2xx and 3xx pass; 429 passes (the credential is valid) but reports a
// cooldown; 401/403 fail (auth), 403/429 insufficient_quota fail (quota);
// 5xx, 408 and timeouts fail; other 4xx (an endpoint that does not list
// models) pass, since the credential was not refused.
func Interpret(status int, header http.Header, body []byte, err error, latency time.Duration, now time.Time, secret string) Result {
	r := Result{Status: status, Latency: latency}
	if err != nil {
		r.Kind = policy.OutcomeServer
		if isTimeout(err) {
			r.Kind = policy.OutcomeTimeout
		}
		r.Error = sanitize(transportError(err), secret)
		return r
	}
	var hget func(string) string
	if header != nil {
		hget = header.Get
	}
	o := policy.Classify(status, hget, body, now)
	r.Kind = o.Kind
	switch o.Kind {
	case policy.OutcomeSuccess:
		r.OK = true
	case policy.OutcomeClient:
		r.OK = true
		r.Error = sanitize(fmt.Sprintf("probe endpoint answered %d%s; credential not refused", status, errorCode(body)), secret)
	case policy.OutcomeRateLimited:
		r.OK = true
		r.RetryAt = o.RetryAt
		r.Error = "rate limited (429)"
	case policy.OutcomeAuth:
		r.Error = sanitize(fmt.Sprintf("auth: status %d%s", status, errorCode(body)), secret)
	case policy.OutcomeQuota:
		r.Error = sanitize(fmt.Sprintf("quota: status %d%s", status, errorCode(body)), secret)
	default:
		r.Error = sanitize(fmt.Sprintf("upstream: status %d%s", status, errorCode(body)), secret)
	}
	return r
}

// Probe sends ProbeRequest(k) with client, bounded by timeout, and
// interprets the answer.
func Probe(ctx context.Context, client *http.Client, k *policy.Key, timeout time.Duration, now func() time.Time) Result {
	if now == nil {
		now = time.Now
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := ProbeRequest(ctx, k)
	if err != nil {
		return Result{Kind: policy.OutcomeServer, Error: err.Error()}
	}
	start := now()
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timeout after %s: %w", timeout, context.DeadlineExceeded)
		}
		return Interpret(0, nil, nil, err, now().Sub(start), now(), k.Secret.Reveal())
	}
	defer resp.Body.Close()
	var body []byte
	if resp.StatusCode >= 400 { // error bodies say insufficient_quota and the error code
		body, _ = io.ReadAll(io.LimitReader(resp.Body, maxProbeBody))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxProbeBody)) // let the connection be reused
	return Interpret(resp.StatusCode, resp.Header, body, nil, now().Sub(start), now(), k.Secret.Reveal())
}

// errorCode returns " (code)" from an OpenAI/Azure/Anthropic error body:
// error.code, else error.type, when it is a short identifier.
func errorCode(body []byte) string {
	if len(body) == 0 {
		return ""
	}
	res := gjson.GetManyBytes(body, "error.code", "error.type")
	for _, v := range res {
		if v.Type == gjson.String && isIdent(v.Str) {
			return " (" + v.Str + ")"
		}
	}
	return ""
}

func isIdent(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// transportError names a transport failure without the URL (url.Error) and
// without anything the peer sent.
func transportError(err error) string {
	switch {
	case isTimeout(err):
		msg := err.Error()
		if strings.HasPrefix(msg, "timeout after ") {
			if i := strings.Index(msg, ":"); i > 0 {
				return msg[:i]
			}
		}
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before an answer"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return "dns: " + dnsErr.Err
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return "network: " + opErr.Op + " failed"
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	return "transport: " + err.Error()
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// sanitize cuts msg to MaxErrorLen, strips control characters and removes
// the secret should it appear.
func sanitize(msg, secret string) string {
	if secret != "" {
		msg = strings.ReplaceAll(msg, secret, "[redacted]")
	}
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, msg)
	return truncate(msg, MaxErrorLen)
}
