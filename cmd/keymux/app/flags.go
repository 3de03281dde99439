package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// usageError marks a bad command line (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// ExitCode maps an error from Run to a process exit code: 2 for a bad
// command line, 1 otherwise.
func ExitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

// parseFlags parses args into fs, then fills every flag not given on the
// command line from its KEYMUX_* environment variable (--consul-prefix ←
// KEYMUX_CONSUL_PREFIX). A bad value names the flag or the variable.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := EnvName(f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, &usageError{msg: fmt.Sprintf("environment %s: %v", env, err)})
			}
		}
	})
	return errors.Join(errs...)
}

// EnvName is the environment variable that backs a flag.
func EnvName(flagName string) string {
	return "KEYMUX_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
