package telemetry

import "go.opentelemetry.io/otel/attribute"

// Span attribute keys. The gen_ai.*, server.*, http.* and error.type names
// follow the OpenTelemetry GenAI semantic conventions
// (open-telemetry/semantic-conventions-genai, model/gen-ai/registry.yaml);
// keymux.* are keymux's own. None of them ever carries a secret.
const (
	AttrGenAIOperationName     attribute.Key = "gen_ai.operation.name"
	AttrGenAIProviderName      attribute.Key = "gen_ai.provider.name"
	AttrGenAIRequestModel      attribute.Key = "gen_ai.request.model"
	AttrGenAIRequestStream     attribute.Key = "gen_ai.request.stream"
	AttrGenAIResponseModel     attribute.Key = "gen_ai.response.model"
	AttrGenAIUsageInputTokens  attribute.Key = "gen_ai.usage.input_tokens"
	AttrGenAIUsageOutputTokens attribute.Key = "gen_ai.usage.output_tokens"
	AttrGenAITokenType         attribute.Key = "gen_ai.token.type"
	AttrServerAddress          attribute.Key = "server.address"
	AttrServerPort             attribute.Key = "server.port"
	AttrHTTPResponseStatusCode attribute.Key = "http.response.status_code"
	AttrErrorType              attribute.Key = "error.type"

	AttrKeyID     attribute.Key = "keymux.key.id"
	AttrRuleID    attribute.Key = "keymux.rule.id"
	AttrStrategy  attribute.Key = "keymux.strategy"
	AttrClientID  attribute.Key = "keymux.client.id"
	AttrRequestID attribute.Key = "keymux.request.id"

	// Upstream attempts and key choice (a retried call's span, and its
	// attempts' child spans).
	AttrAttempts    attribute.Key = "keymux.attempts"     // upstream attempts of the call
	AttrAttempt     attribute.Key = "keymux.attempt"      // an attempt span's number, from 1
	AttrRetryReason attribute.Key = "keymux.retry.reason" // why another attempt followed
	AttrCandidates  attribute.Key = "keymux.candidates"   // keys that could take the request
	AttrSkipped     attribute.Key = "keymux.skipped"      // "key: reason [until RFC 3339]", the first MaxSkipped
	AttrSkippedN    attribute.Key = "keymux.skipped.count"
)

// AttemptSpanName names the child span of one upstream attempt.
const AttemptSpanName = "upstream attempt"

// gen_ai.token.type values.
const (
	TokenTypeInput  = "input"
	TokenTypeOutput = "output"
)

// gen_ai.provider.name values (registered ones, plus "huggingface", which the
// registry does not list; the attribute is open-ended).
const (
	ProviderOpenAI      = "openai"
	ProviderAzureOpenAI = "azure.ai.openai"
	ProviderAnthropic   = "anthropic"
	ProviderHuggingFace = "huggingface"
)

// ProviderName maps a keymux provider (a key document's "provider") to its
// gen_ai.provider.name. An OpenAI-compatible upstream speaks OpenAI's API, so
// it is reported as "openai" (server.address tells it apart). Unknown names
// pass through unchanged.
func ProviderName(provider string) string {
	switch provider {
	case "openai", "openai_compatible":
		return ProviderOpenAI
	case "azure":
		return ProviderAzureOpenAI
	case "anthropic":
		return ProviderAnthropic
	case "huggingface":
		return ProviderHuggingFace
	}
	return provider
}

// SpanName is the GenAI span name "{gen_ai.operation.name} {gen_ai.request.model}";
// without a model it is the operation alone, and without an operation (an
// unknown path refused locally) the HTTP method, or "keymux".
func SpanName(operation, model, method string) string {
	switch {
	case operation == "" && method != "":
		return method
	case operation == "":
		return "keymux"
	case model == "":
		return operation
	}
	return operation + " " + model
}

// OpenTelemetry instrument names. In Prometheus text (/metrics) they appear
// translated: dots become underscores, counters gain "_total", the unit "s"
// adds "_seconds" and "us" "_microseconds"; the names are pinned in
// TestMetricNames.
const (
	MetricRequests            = "keymux.requests"                // counter {key, model, status_class}
	MetricErrors              = "keymux.errors"                  // counter {key, class}
	MetricInFlight            = "keymux.requests.in_flight"      // gauge: Begin without End yet
	MetricDuration            = "keymux.request.duration"        // histogram, s {key, model, status_class}
	MetricOverhead            = "keymux.extproc.overhead"        // histogram, µs: Call.Overhead
	MetricTokens              = "keymux.tokens"                  // counter {key, type}
	MetricTokenUsage          = "gen_ai.client.token.usage"      // histogram {token}, GenAI semconv attributes
	MetricKeyUp               = "keymux.key.up"                  // gauge {key}: 1 healthy or half_open, else 0
	MetricKeyState            = "keymux.key.state"               // gauge {key, state} = 1
	MetricKeyEjections        = "keymux.key.ejections"           // counter {key}: ejections after upstream failures
	MetricKeyCooldowns        = "keymux.key.cooldowns"           // counter {key}: 429 cooldowns
	MetricKeyModelState       = "keymux.key.model.state"         // gauge {key, model, state} = 1
	MetricKeyHeadroomRequests = "keymux.key.headroom.requests"   // gauge {key, model}: provider requests left
	MetricKeyHeadroomTokens   = "keymux.key.headroom.tokens"     // gauge {key, model}: provider tokens left
	MetricRateLimitHeaderErrs = "keymux.ratelimit.header_errors" // counter {key}: unparsable rate-limit headers
	MetricConfigGeneration    = "keymux.config.generation"       // gauge {source}
	MetricConfigStale         = "keymux.config.stale"            // gauge 0/1
	MetricConfigStaleDuration = "keymux.config.stale.duration"   // gauge, s since the source went stale
	MetricConfigRefused       = "keymux.config.refused"          // gauge: refused entries
	MetricConfigRefusals      = "keymux.config.refusals"         // counter: refusals since start (Consul)
	MetricConfigReadErrors    = "keymux.config.read_errors"      // counter: failed source reads (Consul)
	MetricCallLogDropped      = "keymux.calllog.dropped"         // counter
	MetricAlertThreshold      = "keymux.alert.threshold"         // gauge {alert}
	MetricAlertActive         = "keymux.alert.active"            // gauge {alert, key} 0/1
	MetricErrorRatio          = "keymux.error.ratio"             // gauge: failed/calls over AlertWindow, as the alert sees them
	MetricRetries             = "keymux.retries"                 // counter {key, reason}: attempts retried on another key
)

// Metric label (attribute) keys of keymux's own metrics.
const (
	LabelKey         = "key"
	LabelModel       = "model"
	LabelStatusClass = "status_class"
	LabelClass       = "class"
	LabelType        = "type"
	LabelState       = "state"
	LabelSource      = "source"
	LabelAlert       = "alert"
	LabelReason      = "reason"
)

// Error classes telemetry adds to the ones the request path puts in
// Call.ErrorCode (rate_limited, auth, server, timeout, client, stream_cut:
// keymux's policy package owns that vocabulary and the status mapping).
const (
	ClassLocal   = "local"   // refused by keymux itself
	ClassUnknown = "unknown" // a failed upstream call that came without a class
)

// Alert names (the "alert" label).
const (
	AlertErrorRate = "error_rate"
	AlertUsage     = "usage"
)

// OtherModel is the model label of every model beyond the first MaxModels
// distinct models served upstream.
const OtherModel = "other"
