package telemetry

// outcome is how telemetry reads a finished Call.
//
// What counts (in /stats, the alerts and the error metrics):
//   - every exchange that reached End is a request (keymux_requests_total);
//   - a call (total_calls) is every request except keymux's own successful
//     answers (GET /v1/models): upstream calls and local refusals;
//   - a call is successful when Call.Success() holds; every other call failed;
//   - top_keys, latency and token figures only see upstream calls (a key
//     was chosen and the request was forwarded);
//   - the error-rate alert (and keymux_error_ratio) leaves out anonymous
//     refusals: local 401s where no client was identified (no credentials,
//     an unknown or disabled token, no verified JWT). Anyone who can reach
//     the listener can send those, so they would let a stranger page the
//     operator or mask a real failure rate; they stay in /stats and in
//     keymux_errors_total{class="local"}.
type outcome struct {
	counted   bool   // a call in /stats
	failed    bool   // counted and not successful
	anonymous bool   // a local 401 with no client identified: not in the error-rate alert
	upstream  bool   // forwarded to a key
	class     string // error class when failed: Call.ErrorCode of an upstream call, ClassLocal for a refusal
	errType   string // error.type of the span and "error" of the call log: class, or the local refusal's code
}

// classify reads a finished call. The error class of a failed upstream call
// is the one the request path computed (Call.ErrorCode, from policy's single
// status → class mapping); telemetry does not classify statuses itself.
func classify(c *Call) outcome {
	if c.Local {
		if c.Status >= 200 && c.Status < 400 {
			return outcome{} // keymux's own answer, e.g. the model list
		}
		code := c.ErrorCode
		if code == "" {
			code = ClassLocal
		}
		return outcome{counted: true, failed: true, anonymous: c.Status == 401 && c.ClientID == "",
			class: ClassLocal, errType: code}
	}
	o := outcome{counted: true, upstream: c.KeyID != ""}
	if c.Success() {
		return o
	}
	o.failed = true
	o.class = c.ErrorCode
	if o.class == "" {
		o.class = ClassUnknown
	}
	o.errType = o.class
	return o
}

// statusClass is the status_class label: "2xx" … "5xx", "none" without a status,
// "other" for a status outside 100–599.
func statusClass(status int) string {
	switch {
	case status >= 100 && status < 200:
		return "1xx"
	case status >= 200 && status < 300:
		return "2xx"
	case status >= 300 && status < 400:
		return "3xx"
	case status >= 400 && status < 500:
		return "4xx"
	case status >= 500 && status < 600:
		return "5xx"
	case status == 0:
		return "none"
	}
	return "other"
}

// MaxModels bounds the distinct model names in metric labels and /stats.
// A model is admitted when the configuration names it (see
// Telemetry.SetModelFilter; without a filter: when a call for it was
// forwarded upstream); other names, and any name once the set is full, are
// folded to OtherModel.
const MaxModels = 100

// modelSet is the bounded set of admitted model names. Callers hold stats.mu.
type modelSet map[string]struct{}

func (s modelSet) fold(name string, admit bool) string {
	if name == "" {
		return ""
	}
	if _, ok := s[name]; ok {
		return name
	}
	if admit && len(s) < MaxModels {
		s[name] = struct{}{}
		return name
	}
	return OtherModel
}
