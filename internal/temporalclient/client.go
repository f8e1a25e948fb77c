// Package temporalclient dials Temporal the way every Temporal user expects: the SDK's envconfig
// (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, profiles), defaulting
// to a local dev server on localhost:7233 and the "default" namespace. On top of it: payload
// encryption when codec keys are configured (internal/codec), the API key from a file
// (TEMPORAL_API_KEY_FILE, re-read when it changes) and client certificates re-read when they are
// renewed. The worker and every starter command get their options here, so they all speak to
// Temporal the same way.
package temporalclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
	"go.temporal.io/sdk/converter"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/codec"
)

// Options loads client options from the environment and the Temporal config file, with payload
// encryption when codec keys are configured. Callers may add interceptors and then Connect.
func Options(logger *slog.Logger) (client.Options, error) {
	return LoadOptions(logger, envconfig.EnvLookupOS)
}

// LoadOptions is Options reading another environment (tests); nil reads the process's.
func LoadOptions(logger *slog.Logger, env envconfig.EnvLookup) (client.Options, error) {
	if env == nil {
		env = envconfig.EnvLookupOS
	}
	log := logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	prof, err := envconfig.LoadClientConfigProfile(envconfig.LoadClientConfigProfileOptions{EnvLookup: env})
	if err != nil {
		return client.Options{}, fmt.Errorf("temporal client config: %w", err)
	}
	apiKeyFile, err := apiKeyFileOf(env, prof.APIKey)
	if err != nil {
		return client.Options{}, err
	}
	opts, err := prof.ToClientOptions(envconfig.ToClientOptionsRequest{})
	if err != nil {
		return client.Options{}, fmt.Errorf("temporal client config: %w", err)
	}
	if opts.HostPort == "" {
		opts.HostPort = client.DefaultHostPort
	}
	if opts.Namespace == "" {
		opts.Namespace = client.DefaultNamespace
	}
	if apiKeyFile != "" {
		creds, err := apiKeyFromFile(apiKeyFile)
		if err != nil {
			return client.Options{}, err
		}
		opts.Credentials = creds
		// As envconfig does for TEMPORAL_API_KEY: an API key implies TLS unless TLS is configured.
		if prof.TLS == nil {
			opts.ConnectionOptions.TLS = defaultTLS()
		}
	}
	if prof.TLS != nil && !prof.TLS.Disabled && prof.TLS.ClientCertPath != "" && opts.ConnectionOptions.TLS != nil {
		// envconfig loaded the pair once; re-read it when renewed (cert-manager and the like), so
		// that reconnections of a long-running worker present a valid certificate.
		reloadClientCertificate(opts.ConnectionOptions.TLS, prof.TLS.ClientCertPath, prof.TLS.ClientKeyPath, log)
	}
	hasAPIKey := prof.APIKey != "" || apiKeyFile != ""
	if hasAPIKey && opts.ConnectionOptions.TLSDisabled {
		log.Warn("the Temporal API key is sent without TLS (TEMPORAL_TLS=false): use this only with a local server")
	}
	c, err := codec.FromEnv(env.LookupEnv)
	if err != nil {
		return client.Options{}, fmt.Errorf("payload encryption: %w", err)
	}
	opts.DataConverter, opts.FailureConverter = codec.Converters(c)
	log.Debug("temporal connection", "address", opts.HostPort, "namespace", opts.Namespace,
		"tls", opts.ConnectionOptions.TLS != nil && !opts.ConnectionOptions.TLSDisabled,
		"mtls", hasClientCert(prof), "api_key", hasAPIKey)
	if c != nil {
		log.Info("payload encryption: on", "active_key_id", c.ActiveKeyID(), "key_ids", strings.Join(c.KeyIDs(), ","))
	} else {
		log.Info("payload encryption: off", "hint", "set "+codec.EnvKeys+" or "+codec.EnvKeysFile+" to encrypt payloads")
	}
	if logger != nil {
		opts.Logger = sdklog.NewStructuredLogger(logger)
	}
	return opts, nil
}

func hasClientCert(prof envconfig.ClientConfigProfile) bool {
	return prof.TLS != nil && !prof.TLS.Disabled && (prof.TLS.ClientCertPath != "" || len(prof.TLS.ClientCertData) > 0)
}

// DataConverter is the data converter of opts: the encrypting one when payload keys are
// configured, else the SDK's default. Use it for payloads the SDK hands over raw (memo values of
// listed workflows and schedules, schedule action arguments): with encryption on they are
// encrypted too, and converter.GetDefaultDataConverter() cannot read them.
func DataConverter(opts client.Options) converter.DataConverter {
	if opts.DataConverter != nil {
		return opts.DataConverter
	}
	return converter.GetDefaultDataConverter()
}

// Connect dials with opts (from Options, possibly with interceptors added).
func Connect(ctx context.Context, opts client.Options) (client.Client, error) {
	c, err := client.DialContext(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("connect to Temporal at %s (namespace %s): %w", opts.HostPort, opts.Namespace, err)
	}
	return c, nil
}

// Dial connects with Options.
func Dial(ctx context.Context, logger *slog.Logger) (client.Client, client.Options, error) {
	opts, err := Options(logger)
	if err != nil {
		return nil, opts, err
	}
	c, err := Connect(ctx, opts)
	if err != nil {
		return nil, opts, err
	}
	return c, opts, nil
}

// EnsureSearchAttributes registers the keyword search attributes that are missing. Temporal Cloud
// and locked-down clusters refuse this call; the error then says which attributes to create.
func EnsureSearchAttributes(ctx context.Context, c client.Client, namespace string, keys []temporal.SearchAttributeKey) error {
	list, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return fmt.Errorf("list search attributes of namespace %s: %w", namespace, err)
	}
	missing := map[string]enumspb.IndexedValueType{}
	for _, k := range keys {
		if _, ok := list.GetCustomAttributes()[k.GetName()]; !ok {
			missing[k.GetName()] = k.GetValueType()
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, err = c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
		Namespace: namespace, SearchAttributes: missing,
	})
	var exists *serviceerror.AlreadyExists
	if err != nil && !errors.As(err, &exists) {
		names := make([]string, 0, len(missing))
		for n := range missing {
			names = append(names, n+"=Keyword")
		}
		return fmt.Errorf("register search attributes %s in namespace %s (ask an admin to run `temporal operator search-attribute create`): %w",
			strings.Join(names, ", "), namespace, err)
	}
	return nil
}
