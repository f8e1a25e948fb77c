package codec_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/activation-engine/activations/internal/codec"
)

func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, codec.KeySize)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

func mustCodec(t *testing.T, spec string) *codec.Codec {
	t.Helper()
	keys, err := codec.ParseKeys(spec)
	require.NoError(t, err)
	c, err := codec.New(keys)
	require.NoError(t, err)
	return c
}

func lookup(env map[string]string) codec.LookupEnv {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

type record struct {
	Email string `json:"email"`
	Name  string `json:"name"`
}

func TestRoundTripHidesEverything(t *testing.T) {
	c := mustCodec(t, "k1:"+newKey(t))
	dc := codec.NewDataConverter(c)
	in := record{Email: "alice@example.com", Name: "Alice Liddell"}

	p, err := dc.ToPayload(in)
	require.NoError(t, err)
	require.Equal(t, codec.MetadataEncodingEncrypted, string(p.Metadata[converter.MetadataEncoding]))
	require.Equal(t, "k1", string(p.Metadata[codec.MetadataKeyID]))
	require.True(t, codec.IsEncrypted(p))
	for _, needle := range []string{"alice@example.com", "Alice", "json/plain"} {
		require.NotContains(t, string(p.Data), needle, "the plaintext, even its encoding, is hidden")
		for _, v := range p.Metadata {
			require.NotContains(t, string(v), needle)
		}
	}

	var out record
	require.NoError(t, dc.FromPayload(p, &out))
	require.Equal(t, in, out)

	// A fresh nonce per payload: the same value never encrypts to the same bytes.
	p2, err := dc.ToPayload(in)
	require.NoError(t, err)
	require.NotEqual(t, p.Data, p2.Data)

	// Several payloads, and nil entries, keep their positions.
	enc, err := c.Encode([]*commonpb.Payload{{Data: []byte("a")}, nil, {Data: []byte("b")}})
	require.NoError(t, err)
	dec, err := c.Decode(enc)
	require.NoError(t, err)
	require.Len(t, dec, 3)
	require.Equal(t, "a", string(dec[0].Data))
	require.Nil(t, dec[1])
	require.Equal(t, "b", string(dec[2].Data))
}

func TestTamperingIsDetected(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	c := mustCodec(t, "k1:"+k1+",k2:"+k2)
	orig, err := c.Encode([]*commonpb.Payload{{Metadata: map[string][]byte{"encoding": []byte("json/plain")}, Data: []byte(`"secret"`)}})
	require.NoError(t, err)

	tests := []struct {
		name   string
		tamper func(p *commonpb.Payload)
		want   string
	}{
		{"flipped ciphertext bit", func(p *commonpb.Payload) { p.Data[len(p.Data)-1] ^= 1 }, `key id "k1": authentication failed`},
		{"flipped nonce bit", func(p *commonpb.Payload) { p.Data[0] ^= 1 }, "authentication failed"},
		{"truncated", func(p *commonpb.Payload) { p.Data = p.Data[:10] }, "too short"},
		// The key id is authenticated data: relabelling a payload to another valid key fails.
		{"key id swapped", func(p *commonpb.Payload) { p.Metadata[codec.MetadataKeyID] = []byte("k2") }, `key id "k2": authentication failed`},
		{"key id removed", func(p *commonpb.Payload) { delete(p.Metadata, codec.MetadataKeyID) }, "no encryption-key-id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &commonpb.Payload{Metadata: map[string][]byte{}, Data: bytes.Clone(orig[0].Data)}
			for k, v := range orig[0].Metadata {
				p.Metadata[k] = bytes.Clone(v)
			}
			tc.tamper(p)
			_, err := c.Decode([]*commonpb.Payload{p})
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), k1)
			require.NotContains(t, err.Error(), k2)
		})
	}
}

func TestRotationOldKeyDecryptsNewKeyEncrypts(t *testing.T) {
	oldKey, newKeyB64 := newKey(t), newKey(t)
	before := mustCodec(t, "2026-01:"+oldKey)
	// Step 1 of a rotation: the new key is added as decrypt-only; the old one still encrypts.
	staged := mustCodec(t, "2026-01:"+oldKey+"\n2026-07:"+newKeyB64)
	// Step 2: the new key moves first.
	after := mustCodec(t, "2026-07:"+newKeyB64+",2026-01:"+oldKey)
	// Step 3: the old key is dropped once nothing retained needs it.
	dropped := mustCodec(t, "2026-07:"+newKeyB64)

	require.Equal(t, "2026-01", staged.ActiveKeyID())
	require.Equal(t, "2026-07", after.ActiveKeyID())
	require.Equal(t, []string{"2026-07", "2026-01"}, after.KeyIDs())

	old, err := before.Encode([]*commonpb.Payload{{Data: []byte("written before")}})
	require.NoError(t, err)
	fresh, err := after.Encode([]*commonpb.Payload{{Data: []byte("written after")}})
	require.NoError(t, err)
	require.Equal(t, "2026-07", string(fresh[0].Metadata[codec.MetadataKeyID]), "the first key encrypts")

	got, err := after.Decode(append(old, fresh...))
	require.NoError(t, err)
	require.Equal(t, "written before", string(got[0].Data), "the old key still decrypts")
	require.Equal(t, "written after", string(got[1].Data))

	// A staged process reads what rotated processes write: that is why step 1 comes first.
	_, err = staged.Decode(fresh)
	require.NoError(t, err)

	_, err = dropped.Decode(old)
	require.ErrorContains(t, err, `key id "2026-01"`)
	require.ErrorContains(t, err, "not configured")
	require.NotContains(t, err.Error(), oldKey)
	require.NotContains(t, err.Error(), newKeyB64)
}

func TestWrongOrMissingKey(t *testing.T) {
	writer := mustCodec(t, "k1:"+newKey(t))
	enc, err := writer.Encode([]*commonpb.Payload{{Data: []byte("x")}})
	require.NoError(t, err)

	otherKey := newKey(t)
	tests := []struct {
		name, keys, want string
	}{
		{"unknown key id", "k9:" + otherKey, `encrypted with key id "k1", which is not configured here (keys: k9`},
		{"same id, another key", "k1:" + otherKey, `key id "k1": authentication failed`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mustCodec(t, tc.keys).Decode(enc)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), otherKey)
		})
	}

	// Without any codec the SDK refuses the payload instead of returning garbage.
	var s string
	err = converter.GetDefaultDataConverter().FromPayload(enc[0], &s)
	require.Error(t, err)
}

func TestUnencryptedPayloadsPassThrough(t *testing.T) {
	c := mustCodec(t, "k1:"+newKey(t))
	plain, err := converter.GetDefaultDataConverter().ToPayload(record{Email: "old@example.com"})
	require.NoError(t, err)
	nilPayload, err := converter.GetDefaultDataConverter().ToPayload(nil)
	require.NoError(t, err)

	got, err := c.Decode([]*commonpb.Payload{plain, nilPayload, {Data: []byte("raw, no metadata")}})
	require.NoError(t, err)
	require.Same(t, plain, got[0], "histories written before encryption stay readable")
	require.Same(t, nilPayload, got[1])
	require.Equal(t, "raw, no metadata", string(got[2].Data))

	var r record
	require.NoError(t, codec.NewDataConverter(c).FromPayload(plain, &r))
	require.Equal(t, "old@example.com", r.Email)
}

func TestParseKeysErrorsNeverEchoKeyMaterial(t *testing.T) {
	good := newKey(t)
	short := base64.StdEncoding.EncodeToString([]byte("sixteen-byte-key"))
	tests := []struct {
		name, text, want string
		secrets          []string
	}{
		{"empty", " \n# only a comment\n", "no key", nil},
		{"no colon (a bare key)", good, "key entry 1: want keyid:base64key", []string{good}},
		{"bad base64", "k1:" + good + ",k2:not*base64*at*all", "key entry 2: the key is not valid base64", []string{good, "not*base64"}},
		{"wrong size", "k1:" + short, "key entry 1: the key is 16 bytes, want 32", []string{short}},
		// A swapped entry puts the secret where the id goes: neither part may be echoed.
		{"swapped", good + ":k1", "key entry 1: invalid key id", []string{good, strings.TrimRight(good, "=")}},
		{"empty id", ":" + good, "key entry 1: invalid key id", []string{good}},
		{"id with spaces", "my key:" + good, "key entry 1: invalid key id", []string{good}},
		{"duplicate id", "k1:" + good + "\nk1:" + newKey(t), `key entry 2: key id "k1" appears twice`, []string{good}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := codec.ParseKeys(tc.text)
			require.ErrorContains(t, err, tc.want)
			for _, s := range tc.secrets {
				require.NotContains(t, err.Error(), s)
			}
		})
	}
}

func TestParseKeysFormats(t *testing.T) {
	raw := make([]byte, codec.KeySize)
	_, err := rand.Read(raw)
	require.NoError(t, err)
	tests := []struct {
		name, text string
		ids        []string
	}{
		{"comma list", "a:" + base64.StdEncoding.EncodeToString(raw) + ", b:" + base64.RawURLEncoding.EncodeToString(raw), []string{"a", "b"}},
		{"file with comments", "# rotated 2026-07\n2026-07:" + base64.StdEncoding.EncodeToString(raw) + "\n\n  2026-01 : " + base64.URLEncoding.EncodeToString(raw) + "  \n", []string{"2026-07", "2026-01"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := codec.ParseKeys(tc.text)
			require.NoError(t, err)
			require.Equal(t, tc.ids, keys.IDs())
			require.Equal(t, tc.ids[0], keys.Active())
			// Printing a key ring, however, shows ids only.
			for _, s := range []string{fmt.Sprint(keys), fmt.Sprintf("%+v", keys), fmt.Sprintf("%#v", keys)} {
				require.NotContains(t, s, base64.StdEncoding.EncodeToString(raw))
				require.NotContains(t, s, string(raw[:8]))
				require.Contains(t, s, tc.ids[0])
			}
		})
	}
}

func TestLoadKeys(t *testing.T) {
	key := newKey(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "keys")
	require.NoError(t, os.WriteFile(file, []byte("# codec keys\nf1:"+key+"\n"), 0o600))
	bad := filepath.Join(dir, "bad")
	require.NoError(t, os.WriteFile(bad, []byte("f1:"+key[:20]+"\n"), 0o600))

	tests := []struct {
		name   string
		env    map[string]string
		active string // "" with no error: encryption off
		err    string
	}{
		{"nothing set: off", map[string]string{}, "", ""},
		{"inline", map[string]string{codec.EnvKeys: "e1:" + key}, "e1", ""},
		{"file", map[string]string{codec.EnvKeysFile: file}, "f1", ""},
		{"both", map[string]string{codec.EnvKeys: "e1:" + key, codec.EnvKeysFile: file}, "", "both ACTIVATIONS_CODEC_KEYS and ACTIVATIONS_CODEC_KEYS_FILE are set"},
		{"set but empty", map[string]string{codec.EnvKeys: " "}, "", "ACTIVATIONS_CODEC_KEYS is set but empty"},
		{"file set but empty", map[string]string{codec.EnvKeysFile: ""}, "", "ACTIVATIONS_CODEC_KEYS_FILE is set but empty"},
		{"missing file", map[string]string{codec.EnvKeysFile: filepath.Join(dir, "nope")}, "", "read codec keys (ACTIVATIONS_CODEC_KEYS_FILE)"},
		{"malformed file", map[string]string{codec.EnvKeysFile: bad}, "", "codec keys in " + bad + " (ACTIVATIONS_CODEC_KEYS_FILE): key entry 1"},
		{"malformed inline", map[string]string{codec.EnvKeys: key}, "", "codec keys in ACTIVATIONS_CODEC_KEYS: key entry 1: want keyid:base64key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := codec.FromEnv(lookup(tc.env))
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.NotContains(t, err.Error(), key)
				require.NotContains(t, err.Error(), key[:20])
				return
			}
			require.NoError(t, err)
			if tc.active == "" {
				require.Nil(t, c)
				return
			}
			require.Equal(t, tc.active, c.ActiveKeyID())
		})
	}
}

func TestFailureConverterEncryptsMessagesAndStacks(t *testing.T) {
	c := mustCodec(t, "k1:"+newKey(t))
	dc, fc := codec.Converters(c)
	f := fc.ErrorToFailure(temporal.NewApplicationError("bulkUpdate refused alice@example.com", "IterableFatal"))
	require.NotContains(t, f.GetMessage(), "alice@example.com", "the message is moved into encoded attributes")
	require.True(t, codec.IsEncrypted(f.GetEncodedAttributes()))
	require.NotContains(t, string(f.GetEncodedAttributes().GetData()), "alice")

	back := fc.FailureToError(f)
	require.ErrorContains(t, back, "bulkUpdate refused alice@example.com")
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(back, &appErr))
	require.Equal(t, "IterableFatal", appErr.Type())
	require.NotNil(t, dc)

	none, noneFC := codec.Converters(nil)
	require.Nil(t, none)
	require.Nil(t, noneFC)
}
