package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/keymux/keymux/envoy"
	"github.com/keymux/keymux/store"
)

// errInvalid is returned when validate found problems (already printed).
var errInvalid = errors.New("validation failed")

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var config, envoyFile string
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.StringVar(&config, "config", "", "keymux configuration file to check")
	fs.StringVar(&envoyFile, "envoy", "", "Envoy YAML (bootstrap or snippet) to check against Envoy's v3 protos")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if config == "" && envoyFile == "" {
		return &usageError{msg: "validate needs --config FILE and/or --envoy FILE"}
	}
	failed := false
	if config != "" {
		cfg, refused, err := store.LoadFile(config, store.ResolveSecretRef)
		switch {
		case err != nil:
			fmt.Fprintf(stderr, "%v\n", err) // it names the file
			failed = true
		case len(refused) > 0:
			for _, r := range refused {
				// Reasons name their document already ("keys/k1: field …").
				fmt.Fprintf(stderr, "%s: %s: %s\n", config, r.Path, strings.TrimPrefix(r.Reason, r.Path+": "))
			}
			failed = true
		default:
			fmt.Fprintf(stdout, "%s: ok (%d keys, %d rules, %d clients, strategy %s)\n",
				config, len(cfg.Keys), len(cfg.Rules), len(cfg.Clients), cfg.Settings.Strategy)
		}
	}
	if envoyFile != "" {
		if err := envoy.ValidateFile(envoyFile); err != nil {
			fmt.Fprintf(stderr, "%v\n", err)
			failed = true
		} else {
			fmt.Fprintf(stdout, "%s: ok\n", envoyFile)
		}
	}
	if failed {
		return errInvalid
	}
	return nil
}
