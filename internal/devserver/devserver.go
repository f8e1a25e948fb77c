// Package devserver builds (once) and starts the Temporal CLI's dev server, with its Web UI and
// our search attributes, for the demo and the integration tests.
package devserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
)

// CLIVersion is the Temporal CLI release we build: newer ones do not build from the module proxy.
const CLIVersion = "v1.5.1"

// CLIModule is the package `go install` builds.
const CLIModule = "github.com/temporalio/cli/cmd/temporal"

// FindCLI returns the path of a Temporal CLI binary: $TEMPORAL_CLI when set, else binDir/temporal
// when it exists. It does not build.
func FindCLI(binDir string) (string, bool) {
	if p := os.Getenv("TEMPORAL_CLI"); p != "" {
		_, err := os.Stat(p)
		return p, err == nil
	}
	p := filepath.Join(binDir, "temporal")
	_, err := os.Stat(p)
	return p, err == nil
}

// EnsureCLI returns a Temporal CLI, building CLIVersion into binDir with `go install` when it is
// missing (about 6 minutes on a cold module cache).
func EnsureCLI(ctx context.Context, binDir string, logger *slog.Logger) (string, error) {
	if p, ok := FindCLI(binDir); ok {
		return p, nil
	}
	abs, err := filepath.Abs(binDir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", abs, err)
	}
	logger.Info("building the Temporal CLI (first time only, several minutes)", "version", CLIVersion, "into", abs)
	cmd := exec.CommandContext(ctx, "go", "install", CLIModule+"@"+CLIVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+abs)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %w\n%s", CLIModule, CLIVersion, err, out.String())
	}
	return filepath.Join(abs, "temporal"), nil
}

// Options configures Start.
type Options struct {
	CLIPath string
	// HostPort of the frontend; "" picks a free port.
	HostPort  string
	Namespace string
	// UIPort enables the Web UI on that port when non-empty.
	UIPort string
	// DBFile persists the server's state; "" keeps it in memory.
	DBFile           string
	SearchAttributes []temporal.SearchAttributeKey
	Logger           *slog.Logger
	// Output receives the server's own logs; nil discards them.
	Output io.Writer
	// DataConverter and FailureConverter, when set, are the client's (payload encryption).
	DataConverter    converter.DataConverter
	FailureConverter converter.FailureConverter
	// UICodecEndpoint, when set, is the codec server the Web UI decodes payloads with.
	UICodecEndpoint string
}

// Server is a running dev server.
type Server struct {
	dev *testsuite.DevServer
	// HostPort is the frontend address clients dial.
	HostPort string
	// UIURL is the Web UI's address, when enabled.
	UIURL string
}

// Start starts the dev server and waits until it answers.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.CLIPath == "" {
		return nil, errors.New("devserver: CLIPath is required (see EnsureCLI)")
	}
	if o.Namespace == "" {
		o.Namespace = client.DefaultNamespace
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	out := o.Output
	if out == nil {
		out = io.Discard
	}
	// The dev server registers the keys of this set (their values are ignored).
	var keys []temporal.SearchAttributeUpdate
	for _, k := range o.SearchAttributes {
		if kw, ok := k.(temporal.SearchAttributeKeyKeyword); ok {
			keys = append(keys, kw.ValueSet(""))
		}
	}
	sa := temporal.NewSearchAttributes(keys...)
	opts := testsuite.DevServerOptions{
		ExistingPath: o.CLIPath,
		ClientOptions: &client.Options{
			HostPort:         o.HostPort,
			Namespace:        o.Namespace,
			Logger:           sdklog.NewStructuredLogger(o.Logger),
			DataConverter:    o.DataConverter,
			FailureConverter: o.FailureConverter,
		},
		DBFilename:       o.DBFile,
		EnableUI:         o.UIPort != "",
		UIPort:           o.UIPort,
		LogLevel:         "warn",
		SearchAttributes: sa,
		Stdout:           out,
		Stderr:           out,
	}
	if o.UICodecEndpoint != "" {
		opts.ExtraArgs = append(opts.ExtraArgs, "--ui-codec-endpoint", o.UICodecEndpoint)
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dev, err := testsuite.StartDevServer(startCtx, opts)
	if err != nil {
		return nil, fmt.Errorf("start Temporal dev server (%s): %w", o.CLIPath, err)
	}
	s := &Server{dev: dev, HostPort: dev.FrontendHostPort()}
	if o.UIPort != "" {
		s.UIURL = "http://localhost:" + o.UIPort
	}
	return s, nil
}

// Client is a client of the server's namespace.
func (s *Server) Client() client.Client { return s.dev.Client() }

// Stop stops the server process.
func (s *Server) Stop() error {
	err := s.dev.Stop()
	if err != nil && strings.Contains(err.Error(), "signal: killed") {
		return nil
	}
	return err
}
