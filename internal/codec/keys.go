package codec

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Where the keys come from. Secrets are read only from the environment or a file, never from
// flags, which end up in shell history and `ps`.
const (
	// EnvKeys holds the keys: "id:base64key" entries separated by commas or newlines, the first
	// being the active key (it encrypts), the others only decrypting (rotation).
	EnvKeys = "ACTIVATIONS_CODEC_KEYS"
	// EnvKeysFile names a file with the same content (one entry a line, # comments allowed),
	// e.g. a mounted Kubernetes secret.
	EnvKeysFile = "ACTIVATIONS_CODEC_KEYS_FILE"
)

// KeySize is the size of an AES-256 key.
const KeySize = 32

const maxKeyIDLen = 64

// keyIDPattern keeps ids printable and short: they are stored in plaintext payload metadata and
// appear in error messages.
var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Keys is a parsed key ring: the active key encrypts, every key decrypts. Its String never shows
// key material, so printing or logging it is safe.
type Keys struct {
	active string
	ids    []string
	aeads  map[string]cipher.AEAD
}

// Active is the id of the key new payloads are encrypted with.
func (k *Keys) Active() string { return k.active }

// IDs lists every key id, the active one first.
func (k *Keys) IDs() []string { return append([]string(nil), k.ids...) }

// String names the key ids only.
func (k *Keys) String() string {
	return fmt.Sprintf("codec keys (active %s, all %s)", k.active, strings.Join(k.ids, ","))
}

// GoString keeps %#v from dumping the ciphers' key schedules.
func (k *Keys) GoString() string { return k.String() }

// ParseKeys parses "id:base64key" entries separated by commas or newlines; blank entries and
// lines starting with # are ignored. Errors name the entry by position, never by content, so
// that a malformed secret is not copied into logs.
func ParseKeys(text string) (*Keys, error) {
	keys := &Keys{aeads: map[string]cipher.AEAD{}}
	n := 0
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for entry := range strings.SplitSeq(line, ",") {
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			n++
			id, aead, err := parseEntry(entry)
			if err != nil {
				return nil, fmt.Errorf("key entry %d: %w", n, err)
			}
			if _, dup := keys.aeads[id]; dup {
				return nil, fmt.Errorf("key entry %d: key id %q appears twice", n, id)
			}
			keys.aeads[id] = aead
			keys.ids = append(keys.ids, id)
		}
	}
	if len(keys.ids) == 0 {
		return nil, errors.New("no key: want entries of the form keyid:base64key (e.g. 2026-01:$(openssl rand -base64 32))")
	}
	keys.active = keys.ids[0]
	return keys, nil
}

func parseEntry(entry string) (string, cipher.AEAD, error) {
	id, b64, ok := strings.Cut(entry, ":")
	if !ok {
		return "", nil, errors.New("want keyid:base64key")
	}
	id, b64 = strings.TrimSpace(id), strings.TrimSpace(b64)
	// Neither part is echoed in errors: in a swapped entry ("key:id") the id is the secret.
	if id == "" || len(id) > maxKeyIDLen || !keyIDPattern.MatchString(id) {
		return "", nil, fmt.Errorf("invalid key id: want 1-%d characters of letters, digits, '.', '_' or '-', starting with a letter or digit", maxKeyIDLen)
	}
	raw, err := decodeBase64(b64)
	if err != nil {
		// The decoder's error is dropped on purpose: it can quote the input.
		return "", nil, errors.New("the key is not valid base64 (generate one with `openssl rand -base64 32`)")
	}
	if len(raw) != KeySize {
		return "", nil, fmt.Errorf("the key is %d bytes, want %d (AES-256; `openssl rand -base64 32`)", len(raw), KeySize)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return "", nil, fmt.Errorf("aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return "", nil, fmt.Errorf("gcm: %w", err)
	}
	return id, aead, nil
}

// decodeBase64 accepts standard and URL-safe alphabets, padded or not: keys are pasted from
// many tools.
func decodeBase64(s string) ([]byte, error) {
	var lastErr error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(s)
		if err == nil {
			return b, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// LookupEnv reads one environment variable; os.LookupEnv in programs, a map in tests.
type LookupEnv func(string) (string, bool)

// LoadKeys reads the keys from EnvKeys or from the file EnvKeysFile names. It returns nil, nil
// when neither is set (encryption off). A variable that is set but empty is an error rather
// than a silent "off": a missing secret must not downgrade a deployment to plaintext.
func LoadKeys(lookup LookupEnv) (*Keys, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	inline, hasInline := lookup(EnvKeys)
	file, hasFile := lookup(EnvKeysFile)
	switch {
	case hasInline && hasFile:
		return nil, fmt.Errorf("both %s and %s are set: use one", EnvKeys, EnvKeysFile)
	case hasFile:
		if strings.TrimSpace(file) == "" {
			return nil, fmt.Errorf("%s is set but empty: unset it to run without payload encryption", EnvKeysFile)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read codec keys (%s): %w", EnvKeysFile, err)
		}
		keys, err := ParseKeys(string(b))
		if err != nil {
			return nil, fmt.Errorf("codec keys in %s (%s): %w", file, EnvKeysFile, err)
		}
		return keys, nil
	case hasInline:
		if strings.TrimSpace(inline) == "" {
			return nil, fmt.Errorf("%s is set but empty: unset it to run without payload encryption", EnvKeys)
		}
		keys, err := ParseKeys(inline)
		if err != nil {
			return nil, fmt.Errorf("codec keys in %s: %w", EnvKeys, err)
		}
		return keys, nil
	}
	return nil, nil
}
