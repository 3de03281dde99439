package policy

import "time"

// The defaults that Defaults and Settings.WithDefaults fill in.
const (
	DefaultStrategy            = StrategyRoundRobin
	DefaultHealthInterval      = 10 * time.Minute
	DefaultHealthTimeout       = 10 * time.Second
	DefaultConsecutiveFailures = 3
	DefaultEjectionBase        = 30 * time.Second
	DefaultEjectionMax         = 5 * time.Minute
	DefaultCooldown            = 60 * time.Second
	DefaultErrorWindow         = 60 * time.Second
	DefaultSlowStart           = 30 * time.Second
	DefaultAuthMode            = AuthNone
	DefaultClaim               = "role"
	DefaultClaimValue          = "ROLE_API_USER"
	DefaultAlertErrorRate      = 0.2
	DefaultAlertUsage          = 10000
	DefaultMaxBodyBytes        = 8 << 20
	DefaultMaxJSONDepth        = 256
	DefaultRetryMaxAttempts    = 3
	DefaultObjectRetention     = 30 * 24 * time.Hour
	DefaultObjectsMax          = 10000
	DefaultUnknownPaths        = UnknownPathsRefuse
)

// Defaults returns the settings used when the settings document is absent.
func Defaults() Settings {
	s := Settings{StreamUsage: true}
	s.WithDefaults()
	return s
}

// WithDefaults fills every zero field of s with its default (see the Default*
// constants) and returns s. Non-zero fields are left alone, even when they
// are invalid: validation is the parser's job.
func (s *Settings) WithDefaults() *Settings {
	if s.Strategy == "" {
		s.Strategy = DefaultStrategy
	}
	if s.UnknownPaths == "" {
		s.UnknownPaths = DefaultUnknownPaths
	}
	if s.Health.Interval == 0 {
		s.Health.Interval = DefaultHealthInterval
	}
	if s.Health.Timeout == 0 {
		s.Health.Timeout = DefaultHealthTimeout
	}
	s.Ejection.WithDefaults()
	if s.Auth.Mode == "" {
		s.Auth.Mode = DefaultAuthMode
	}
	if s.Auth.Claim == "" {
		s.Auth.Claim = DefaultClaim
	}
	if s.Auth.Value == "" {
		s.Auth.Value = DefaultClaimValue
	}
	if s.Alerts.ErrorRate == 0 {
		s.Alerts.ErrorRate = DefaultAlertErrorRate
	}
	if s.Alerts.Usage == 0 {
		s.Alerts.Usage = DefaultAlertUsage
	}
	if s.Retry.MaxAttempts == 0 {
		s.Retry.MaxAttempts = DefaultRetryMaxAttempts
	}
	if s.Share.CooldownOver == 0 {
		s.Share.CooldownOver = DefaultShareCooldownOver
	}
	if s.MaxBodyBytes == 0 {
		s.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if s.MaxJSONDepth == 0 {
		s.MaxJSONDepth = DefaultMaxJSONDepth
	}
	if s.Objects.Retention == 0 {
		s.Objects.Retention = DefaultObjectRetention
	}
	if s.Objects.Max == 0 {
		s.Objects.Max = DefaultObjectsMax
	}
	return s
}

// WithDefaults fills every zero field of e with its default and returns e.
func (e *EjectionSettings) WithDefaults() *EjectionSettings {
	if e.ConsecutiveFailures == 0 {
		e.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if e.Base == 0 {
		e.Base = DefaultEjectionBase
	}
	if e.Max == 0 {
		e.Max = DefaultEjectionMax
	}
	if e.Cooldown == 0 {
		e.Cooldown = DefaultCooldown
	}
	if e.ErrorWindow == 0 {
		e.ErrorWindow = DefaultErrorWindow
	}
	if e.SlowStart == 0 {
		e.SlowStart = DefaultSlowStart
	}
	return e
}
